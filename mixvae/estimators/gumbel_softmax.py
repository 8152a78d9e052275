"""Gumbel-softmax / Concrete relaxation of the component index (Jang et al. 2017; Maddison et al. 2017).
Needs a mixture posterior. BIASED: its bias is measured by the tests, not hidden.

    y = softmax((log pi + g) / tau),  g ~ Gumbel(0, 1) [K];   z = sum_k y_k (mu_k + sigma_k eps)  (eps shared by k)
f is evaluated at the relaxed z (f, not the estimator, uses the true mixture log q). Straight-through
(Jang et al. 2017, section 2.2): forward with one_hot(argmax y), i.e. an exact sample of q, backward through y.
Temperature: tau_t = max(tau_min, tau0 exp(-anneal_rate t)), t = number of training-mode calls so far
(a buffer, so it is checkpointed); anneal_rate = 0 keeps tau = tau0.
out.objective is the objective of the relaxed samples (exact samples with straight_through); S evaluations of f.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from mixvae.estimators.base import MIXTURE, Estimator, EstimatorOutput, reduce_samples


class GumbelSoftmax(Estimator):
    name = "gumbel_softmax"
    needs = (MIXTURE,)
    unbiased = False

    def __init__(
        self,
        temperature: float = 1.0,
        temperature_min: float = 0.5,
        anneal_rate: float = 0.0,
        straight_through: bool = False,
        context_dim: int | None = None,
    ):
        super().__init__(context_dim)
        if not (temperature > 0 and temperature_min > 0 and anneal_rate >= 0):
            raise ValueError(
                f"gumbel_softmax needs temperature > 0, temperature_min > 0, anneal_rate >= 0; got "
                f"temperature={temperature}, temperature_min={temperature_min}, anneal_rate={anneal_rate}"
            )
        self.temperature0 = float(temperature)
        self.temperature_min = float(min(temperature_min, temperature))
        self.anneal_rate = float(anneal_rate)
        self.straight_through = bool(straight_through)
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def temperature(self) -> torch.Tensor:
        """0-d tensor tau_t (on the buffer's device; no host sync)."""
        tau = self.temperature0 * torch.exp(-self.anneal_rate * self.step.double())
        return tau.clamp_min(self.temperature_min)

    def estimate(self, q, f, num_samples, objective, context):
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
        values = f(z)  # [S, *batch]
        surrogate = reduce_samples(values, objective)
        if self.training:
            self.step += 1
        return EstimatorOutput(
            surrogate.detach(), surrogate, {"temperature": tau.detach()}, values.new_zeros(())
        )

    def extra_repr(self) -> str:
        return (
            f"name={self.name!r}, temperature={self.temperature0}, temperature_min={self.temperature_min}, "
            f"anneal_rate={self.anneal_rate}, straight_through={self.straight_through}"
        )
