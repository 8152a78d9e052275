"""Gumbel-softmax / Concrete relaxation (Jang et al. 2017; Maddison et al. 2017). BIASED: its bias is measured
by the tests, not hidden.

On a mixture posterior (the `MIXTURE` capability) it relaxes the component index:
    y = softmax((log pi + g) / tau),  g ~ Gumbel(0, 1) [K];   z = sum_k y_k (mu_k + sigma_k eps)  (eps shared by k)
f is evaluated at the relaxed z (f, not the estimator, uses the true mixture log q).
On a discrete posterior (`DISCRETE_RELAXABLE`: Bernoulli or OneHotCategorical logits, in Independent or not) it
relaxes the variables themselves: the Gumbel-softmax sample of each one-hot variable (Jang et al. 2017, eq. 2),
the binary Concrete sample of each bit (Maddison et al. 2017, section 3.3), see relax.py; f is evaluated at the
relaxed z, so the model's f must accept points of the simplex / of [0, 1] (mixvae.models.discrete does).
Straight-through (Jang et al. 2017, section 2.2): forward with the exact sample the same noise gives
(one_hot(argmax y), or y > 1/2), backward through y.
Temperature: tau_t = max(tau_min, tau0 exp(-anneal_rate t')), updated every ``anneal_every`` training-mode calls
(relax.py; a checkpointed buffer); anneal_rate = 0 keeps tau = tau0.
out.objective is the objective of the relaxed samples (exact samples with straight_through); S evaluations of f.
As tau -> 0 the relaxed sample tends to the exact one and the (non-straight-through) bias vanishes, while the
variance of the gradient grows (about 1/tau).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from mixvae.estimators.base import (
    DISCRETE_RELAXABLE,
    MIXTURE,
    EstimatorOutput,
    Need,
    innermost,
    reduce_samples,
)
from mixvae.estimators.relax import Annealed, relaxed_sample

RELAXABLE = Need(f"{MIXTURE.what}, or {DISCRETE_RELAXABLE.what}", lambda q: MIXTURE(q) or DISCRETE_RELAXABLE(q))


class GumbelSoftmax(Annealed):
    name = "gumbel_softmax"
    needs = (RELAXABLE,)
    unbiased = False
    relaxed = True  # f is evaluated at relaxed points: the bias vanishes as tau -> 0

    def __init__(
        self,
        temperature: float = 1.0,
        temperature_min: float = 0.5,
        anneal_rate: float = 0.0,
        straight_through: bool = False,
        anneal_every: int = 1,
        context_dim: int | None = None,
    ):
        super().__init__(temperature, temperature_min, anneal_rate, anneal_every, context_dim)
        self.straight_through = bool(straight_through)

    def estimate(self, q, f, num_samples, objective, context):
        if MIXTURE(q):
            z, tau = self._relax_index(q, num_samples)
        else:
            tau = self.temperature().to(innermost(q).logits.dtype)
            z = relaxed_sample(q, num_samples, tau, self.straight_through)  # [S, *batch, *event]
        values = f(z)  # [S, *batch]
        surrogate = reduce_samples(values, objective)
        self.tick()
        return EstimatorOutput(
            surrogate.detach(), surrogate, {"temperature": tau.detach()}, values.new_zeros(())
        )

    def _relax_index(self, q, num_samples):
        log_w = q.log_weights  # [*batch, K]
        loc, scale = q.loc, q.scale  # [*batch, K, D]
        tau = self.temperature().to(log_w.dtype)
        u = torch.rand((num_samples, *log_w.shape), dtype=log_w.dtype, device=log_w.device)
        g = -torch.log(-torch.log(u.clamp_min(torch.finfo(u.dtype).tiny)))  # [S, *batch, K] ~ Gumbel(0, 1)
        y = torch.softmax((log_w + g) / tau, -1)  # [S, *batch, K]
        if self.straight_through:
            hard = F.one_hot(y.argmax(-1), y.shape[-1]).to(y.dtype)
            y = hard + y - y.detach()  # value: one-hot; gradient: that of y
        eps = torch.randn((num_samples, *loc.shape[:-2], loc.shape[-1]), dtype=loc.dtype, device=loc.device)
        z = (y.unsqueeze(-1) * (loc + scale * eps.unsqueeze(-2))).sum(-2)  # [S, *batch, D]
        return z, tau

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, straight_through={self.straight_through}"
