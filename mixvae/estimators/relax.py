"""Shared parts of the relaxation estimators (gumbel_softmax, straight_through): the temperature schedule and
relaxed samples of Bernoulli and one-hot categorical variables.

Temperature (Jang et al. 2017, section 4.1): tau_t = max(tau_min, tau0 exp(-r t')), t' = every * floor(t / every),
t = number of training-mode calls so far (a buffer ``step``, so it is checkpointed); the paper uses tau0 = 1,
tau_min = 0.5, r in {1e-5, 1e-4} and updates tau every N = 500 steps. anneal_rate = 0 keeps tau = tau0.

Relaxed samples (for z [S, *batch, *event] of a Bernoulli or OneHotCategorical q, inside Independent or not):
    one-hot (Jang et al. 2017, eq. 2; Maddison et al. 2017, eq. 10):
        y = softmax((logits + g) / tau),  g ~ Gumbel(0, 1) per class
    binary (Maddison et al. 2017, section 3.3, the binary Concrete):
        y = sigmoid((logits + l) / tau),  l = log u - log(1 - u) ~ Logistic(0, 1)
With ``hard`` (straight-through Gumbel, Jang et al. 2017, section 2.2) the value is the exact sample the same
noise gives (argmax, or y > 1/2, i.e. logits + l > 0, which has probability sigmoid(logits)), and the gradient
is that of y.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import constraints
from torch.nn import functional as F

from mixvae.estimators.base import Estimator, innermost


def straight_through(hard: Tensor, soft: Tensor) -> Tensor:
    """Value exactly ``hard``, gradient that of ``soft`` (the difference is an exact zero in the forward pass)."""
    return hard + (soft - soft.detach())


def _uniform(shape, like: Tensor) -> Tensor:
    u = torch.rand(shape, dtype=like.dtype, device=like.device)
    return u.clamp(torch.finfo(u.dtype).tiny, 1 - torch.finfo(u.dtype).eps)


def relaxed_sample(q, num_samples: int, tau: Tensor, hard: bool) -> Tensor:
    """z [S, *batch, *event] from the relaxation of a Bernoulli / OneHotCategorical q at temperature tau (0-d)."""
    base = innermost(q)
    logits = base.logits.expand(q.batch_shape + q.event_shape)  # [*batch, *event]
    u = _uniform((num_samples, *logits.shape), logits)  # [S, *batch, *event]
    if base.support is constraints.boolean:
        x = logits + (torch.log(u) - torch.log1p(-u))  # logistic noise
        y = torch.sigmoid(x / tau)
        return straight_through((x > 0).to(y.dtype), y) if hard else y
    x = logits - torch.log(-torch.log(u))  # Gumbel noise, one per class (last axis)
    y = torch.softmax(x / tau, -1)
    return straight_through(F.one_hot(x.argmax(-1), x.shape[-1]).to(y.dtype), y) if hard else y


class Annealed(Estimator):
    """An estimator with the temperature schedule above (buffer ``step``)."""

    def __init__(self, temperature: float = 1.0, temperature_min: float = 0.5, anneal_rate: float = 0.0,
                 anneal_every: int = 1, context_dim: int | None = None):
        super().__init__(context_dim)
        if not (temperature > 0 and temperature_min > 0 and anneal_rate >= 0):
            raise ValueError(
                f"{self.name} needs temperature > 0, temperature_min > 0, anneal_rate >= 0; got "
                f"temperature={temperature}, temperature_min={temperature_min}, anneal_rate={anneal_rate}"
            )
        if isinstance(anneal_every, bool) or int(anneal_every) != anneal_every or anneal_every < 1:
            raise ValueError(f"{self.name} needs anneal_every >= 1 (steps between temperature updates), "
                             f"got {anneal_every}")
        self.temperature0 = float(temperature)
        self.temperature_min = float(min(temperature_min, temperature))
        self.anneal_rate = float(anneal_rate)
        self.anneal_every = int(anneal_every)
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def temperature(self) -> Tensor:
        """0-d tensor tau_t (on the buffer's device; no host sync)."""
        step = self.step if self.anneal_every == 1 else torch.div(self.step, self.anneal_every,
                                                                     rounding_mode="floor") * self.anneal_every
        tau = self.temperature0 * torch.exp(-self.anneal_rate * step.double())
        return tau.clamp_min(self.temperature_min)

    def tick(self) -> None:
        if self.training:
            self.step += 1

    def extra_repr(self) -> str:
        return (
            f"name={self.name!r}, temperature={self.temperature0}, temperature_min={self.temperature_min}, "
            f"anneal_rate={self.anneal_rate}, anneal_every={self.anneal_every}"
        )
