"""VIMCO (Mnih & Rezende 2016, "Variational inference for Monte Carlo objectives", eqs. 8-10).
estimators.md section 4. Needs S >= 2.

Index k_s ~ Cat(pi) and z_s = mu_k + sigma_k eps (pathwise in loc/scale) as in score_function. With
values f_s and L = reduce(f_1..f_S), the signal of sample s is L - L_{-s}, where L_{-s} is L with f_s replaced
by the mean of the others' values (for IWAE: exp f_s replaced by their geometric mean):
    surrogate = L + sum_s stopgrad(L - L_{-s}) log pi_{k_s}        (every term by logsumexp; S = 2 works)
Designed for the IWAE objective. For objective="elbo" the same rule gives signal (f_s - mean_{t!=s} f_t)/S,
i.e. score_function with baseline="loo". Unbiased for both; S evaluations of f.
"""

from __future__ import annotations

import torch

from mixvae.estimators.base import Estimator, EstimatorOutput, log_weight_of, reduce_samples


class Vimco(Estimator):
    name = "vimco"
    min_samples = 2

    def estimate(self, q, f, num_samples, objective, context):
        S = num_samples
        k = q.sample_index((S,))  # [S, *batch]
        z = q.rsample_component(k)  # [S, *batch, D]
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
        surrogate = L + (signal * log_weight_of(q, k)).sum(0)
        return EstimatorOutput(L.detach(), surrogate, {"signal_abs": signal.abs().mean()}, v.new_zeros(()))
