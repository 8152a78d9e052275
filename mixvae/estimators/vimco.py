"""VIMCO (Mnih & Rezende 2016, "Variational inference for Monte Carlo objectives", eqs. 8-10). Needs S >= 2.

On a mixture, index k_s ~ Cat(pi) and z_s = mu_k + sigma_k eps (pathwise in loc/scale), scoring log pi_k, as in
score_function; on any other distribution z_s ~ q without a gradient, scoring log q(z_s). With
values f_s and L = reduce(f_1..f_S), the signal of sample s is L - L_{-s}, where L_{-s} is L with f_s replaced
by the mean of the others' values (for IWAE: exp f_s replaced by their geometric mean):
    surrogate = L + sum_s stopgrad(L - L_{-s}) log pi_{k_s}        (every term by logsumexp; S = 2 works)
(log q(z_s) in place of log pi_{k_s} without a mixture).
Designed for the IWAE objective. For objective="elbo" the same rule gives signal (f_s - mean_{t!=s} f_t)/S,
i.e. score_function with baseline="loo". Unbiased for both; S evaluations of f.
"""

from __future__ import annotations

import torch

from mixvae.estimators.base import MIXTURE, Estimator, EstimatorOutput, log_weight_of, reduce_samples


class Vimco(Estimator):
    name = "vimco"
    min_samples = 2

    def estimate(self, q, f, num_samples, objective, context):
        S = num_samples
        if MIXTURE(q):
            k = q.sample_index((S,))  # [S, *batch]
            z = q.rsample_component(k)  # [S, *batch, D]
        else:
            z = q.sample((S,))  # [S, *batch, *event], no gradient
        values = f(z)  # [S, *batch]
        L = reduce_samples(values, objective)  # [*batch]
        v = values.detach()
        mean_others = (v.sum(0, keepdim=True) - v) / (S - 1)  # [S, *batch]
        eye = torch.eye(S, dtype=torch.bool, device=v.device).reshape(S, S, *([1] * (v.dim() - 1)))
        replaced = torch.where(
            eye, mean_others.unsqueeze(1), v.unsqueeze(0)
        )  # [s, t, *batch]: row s has f_s replaced
        L_minus = reduce_samples(replaced, objective, dim=1)  # [S, *batch]
        signal = L.detach() - L_minus  # [S, *batch]
        log_p = log_weight_of(q, k) if MIXTURE(q) else q.log_prob(z)  # [S, *batch]
        surrogate = L + (signal * log_p).sum(0)
        return EstimatorOutput(L.detach(), surrogate, {"signal_abs": signal.abs().mean()}, v.new_zeros(()))
