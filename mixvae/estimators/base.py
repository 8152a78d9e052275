"""The estimator base class, its output, and the two objectives.

See the contract at the top of `mixvae/estimators/__init__.py`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn


def _mean(values: Tensor, dim: int = 0) -> Tensor:
    return values.mean(dim)


def _log_mean_exp(values: Tensor, dim: int = 0) -> Tensor:
    return torch.logsumexp(values, dim) - math.log(values.shape[dim])


# objective name -> reduction of per-sample values f(z_s) over the sample axis.
# ELBO-type: mean_s f(z_s);  IWAE-type (Burda et al. 2016, eq. 8): log (1/S) sum_s exp f(z_s).
OBJECTIVES: dict[str, Callable[..., Tensor]] = {"elbo": _mean, "iwae": _log_mean_exp}


def reduce_samples(values: Tensor, objective: str, dim: int = 0) -> Tensor:
    """Reduce per-sample values [..., S (at dim), ...] to the objective's estimate (S removed)."""
    return OBJECTIVES[objective](values, dim)


def leave_one_out(values: Tensor, objective: str) -> Tensor:
    """The objective recomputed without sample s, for every s.

    values [S, *batch] -> [S, *batch]; entry s is reduce(values with row s removed), an (S-1)-sample estimate
    that does not depend on sample s (so it is a valid baseline for it). Needs S >= 2.
    """
    S = values.shape[0]
    others = torch.tensor(
        [[t for t in range(S) if t != s] for s in range(S)], device=values.device
    )  # [S, S-1]
    return reduce_samples(values[others], objective, dim=1)  # values[others]: [S, S-1, *batch]


def log_weight_of(q, k: Tensor) -> Tensor:
    """log pi_{k} for indices k [S, *batch] -> [S, *batch] (differentiable in the logits)."""
    log_w = q.log_weights.expand(*k.shape, q.num_components)  # [S, *batch, K]
    return log_w.gather(-1, k.unsqueeze(-1)).squeeze(-1)


@dataclass
class EstimatorOutput:
    """What every estimator returns; shapes use the batch shape [*batch] of q.

    objective: [*batch] the objective's estimate, detached (never the surrogate).
    surrogate: [*batch] whose gradient, summed over the batch, is the estimator's gradient; its value is
        meaningless and must not be logged as the objective.
    metrics: floats or 0-d detached tensors for logging (0-d tensors so that GPU training need not sync).
    aux_loss: 0-d loss of the estimator's own learnable parts (zero if none); its gradient reaches only the
        estimator's parameters. The training loop adds it to the loss it backpropagates.
    """

    objective: Tensor
    surrogate: Tensor
    metrics: dict[str, float | Tensor] = field(default_factory=dict)
    aux_loss: Tensor = field(default_factory=lambda: torch.zeros(()))


class Estimator(nn.Module):
    """Base class: subclasses implement `estimate`; `forward` validates the arguments first.

    Class attributes a subclass may override:
        name: the registry name (the yaml stem in configs/estimator/); `build` sets it too.
        unbiased: whether E[grad surrogate] equals grad E[objective] exactly (tests discover this).
        min_samples: smallest num_samples the estimator is defined for.
        objectives: the objectives it supports.
    """

    name: str = "estimator"
    unbiased: bool = True
    min_samples: int = 1
    objectives: tuple[str, ...] = tuple(OBJECTIVES)

    def __init__(self, context_dim: int | None = None):
        super().__init__()
        self.context_dim = context_dim

    def check(self, num_samples: int, objective: str) -> None:
        """Raise a one-line ValueError if (num_samples, objective) is not supported; else return None."""
        if objective not in self.objectives:
            raise ValueError(
                f"estimator {self.name!r} supports objective in {list(self.objectives)}, got {objective!r}"
            )
        if int(num_samples) < self.min_samples:
            raise ValueError(
                f"estimator {self.name!r} needs num_samples >= {self.min_samples}, got {num_samples}; "
                f"raise num_samples or pick another estimator/baseline"
            )

    def forward(
        self,
        q,
        f: Callable[[Tensor], Tensor],
        num_samples: int = 1,
        objective: str = "elbo",
        context: Tensor | None = None,
    ) -> EstimatorOutput:
        """q: DiagGaussianMixture, batch [*batch]; f: z [S', *batch, D] -> [S', *batch]; context [*batch, C]."""
        self.check(num_samples, objective)
        return self.estimate(q, f, int(num_samples), objective, context)

    def estimate(self, q, f, num_samples: int, objective: str, context: Tensor | None) -> EstimatorOutput:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"name={self.name!r}"
