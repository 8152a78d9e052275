"""Exact enumeration over the K components of a mixture posterior (the Rao-Blackwellised reference).

One eps ~ N(0, I) per sample, shared by all components (common random numbers): z_sk = mu_k + sigma_k eps_s.
f is called once on all S*K points, with K folded into the sample axis, so f keeps its contract.

ELBO:  surrogate = sum_k pi_k (1/S) sum_s f(z_sk)     -- unbiased for grad E_q[f]; it is E[score function | eps],
       so its variance is never above the score function's with the same S (Rao-Blackwell).
IWAE:  there is no enumeration of IWAE-S itself. The objective returned is the STRATIFIED bound
           log sum_k pi_k (1/S) sum_s exp f(z_sk)
       (its argument is unbiased for exp-marginal, so it is a lower bound on log p(x); a different objective from
       IWAE-S, flagged by metrics["stratified"] = 1). surrogate = that bound, whose gradient is exact for it.
Cost: S*K evaluations of f.
"""

from __future__ import annotations

import torch

from mixvae.estimators.base import MIXTURE, Estimator, EstimatorOutput, reduce_samples


class Enumerate(Estimator):
    name = "enumerate"
    needs = (MIXTURE,)

    def estimate(self, q, f, num_samples, objective, context):
        S, K = num_samples, q.num_components
        loc, scale = q.loc, q.scale  # [*batch, K, D]
        eps = torch.randn(
            (S, *loc.shape[:-2], loc.shape[-1]), dtype=loc.dtype, device=loc.device
        )  # [S, *batch, D]
        z = loc + scale * eps.unsqueeze(-2)  # [S, *batch, K, D]
        z = z.movedim(-2, 0).reshape(K * S, *z.shape[1:-2], z.shape[-1])  # [K*S, *batch, D]
        values = f(z).reshape(K, S, *z.shape[1:-1])  # [K, S, *batch]
        per_component = reduce_samples(values, objective, dim=1)  # [K, *batch]
        log_w = q.log_weights.movedim(-1, 0)  # [K, *batch]
        if objective == "iwae":  # log sum_k pi_k mean_s exp f: the stratified bound
            surrogate = torch.logsumexp(log_w + per_component, 0)  # [*batch]
        else:  # sum_k pi_k mean_s f
            surrogate = (log_w.exp() * per_component).sum(0)  # [*batch]
        metrics = {"stratified": float(objective == "iwae")}
        return EstimatorOutput(surrogate.detach(), surrogate, metrics, values.new_zeros(()))
