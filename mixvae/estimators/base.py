"""The estimator base class, its output, the two objectives, and what an estimator may need of q.

See the contract at the top of `mixvae/estimators/__init__.py`.

The posterior protocol: an estimator lists in ``needs`` the capabilities it uses, each a `Need` that reads
the distribution's own flags and methods (torch's ``has_rsample``; the mixture's index sampler; a G-REP
standardization). ``est.check(q, num_samples, objective)`` raises one line naming the first missing capability
and the distribution it was given. An estimator with several ways to work (the score function on a mixture's
index, or on the sample itself) reads the capabilities again to choose, never a class or family name.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributions import constraints


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


@dataclass(frozen=True)
class Need:
    """One capability an estimator needs of the posterior q: words for the error message, and a test of q."""

    what: str
    test: Callable[[Any], bool]

    def __call__(self, q) -> bool:
        return bool(self.test(q))


def describe(q) -> str:
    """A distribution's name for messages: 'Independent(Gamma)', 'DiagGaussianMixture', ..."""
    base = getattr(q, "base_dist", None)
    return f"{type(q).__name__}({describe(base)})" if base is not None else type(q).__name__


_MIXTURE_API = ("num_components", "log_weights", "loc", "scale", "sample_index", "rsample_component")

# torch's own flag: rsample() carries a pathwise gradient (reparameterization, implicit or Graves').
PATHWISE = Need("a pathwise rsample (has_rsample = True)", lambda q: getattr(q, "has_rsample", False))
# sample() and a log_prob() differentiable in q's parameters: what the score function needs of any q.
SAMPLE_LOG_PROB = Need("sample() and log_prob()",
                       lambda q: callable(getattr(q, "sample", None)) and callable(getattr(q, "log_prob", None)))
# a mixture whose component index can be sampled, scored and summed over, with reparameterizable Gaussian
# components (DiagGaussianMixture): enumeration, the index relaxation and the index score function use it.
MIXTURE = Need("enumerable mixture components (" + ", ".join(_MIXTURE_API) + ")",
               lambda q: all(hasattr(q, a) for a in _MIXTURE_API))


def innermost(q):
    """The distribution inside any Independent wrappers (q itself if there are none)."""
    while getattr(q, "base_dist", None) is not None:
        q = q.base_dist
    return q


def _relaxable(q) -> bool:
    base = innermost(q)
    return (getattr(base, "has_enumerate_support", False) and isinstance(getattr(base, "logits", None), Tensor)
            and getattr(base, "support", None) in (constraints.boolean, constraints.one_hot))


# a discrete distribution with a continuous relaxation (Bernoulli or OneHotCategorical with logits, also inside
# Independent): read from torch's own flags and support, never from the class name.
DISCRETE_RELAXABLE = Need("a relaxable discrete distribution (logits, has_enumerate_support, support boolean "
                          "or one_hot: Bernoulli, OneHotCategorical, also in Independent)", _relaxable)


def check_values(values: Tensor, z: Tensor, q, name: str) -> Tensor:
    """f's contract: one value per sample, shape [S', *batch] for z [S', *batch, *event]; else a ValueError."""
    event = len(q.event_shape)
    lead = z.shape[: z.dim() - event]
    if not isinstance(values, Tensor) or values.shape != lead:
        got = tuple(values.shape) if isinstance(values, Tensor) else type(values).__name__
        raise ValueError(f"estimator {name!r}: f(z) must return one value per sample, shape [S', *batch] = "
                         f"{tuple(lead)} for z of shape {tuple(z.shape)}; got {got}")
    return values


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
        name: the registry name (the yaml stem in mixvae/configs/estimator/); `build` sets it too.
        needs: the capabilities of q it uses (`Need`s); `check` tests q against them.
        unbiased: whether E[grad surrogate] equals grad E[objective] exactly (tests discover this).
        relaxed: a relaxation whose bias vanishes as its temperature falls (tests discover this).
        min_samples: smallest num_samples the estimator is defined for.
        objectives: the objectives it supports.
    """

    name: str = "estimator"
    needs: tuple[Need, ...] = (SAMPLE_LOG_PROB,)
    unbiased: bool = True
    relaxed: bool = False  # f is evaluated at relaxed (continuous) points whose bias vanishes as a temperature -> 0
    min_samples: int = 1
    objectives: tuple[str, ...] = tuple(OBJECTIVES)

    def __init__(self, context_dim: int | None = None):
        super().__init__()
        self.context_dim = context_dim

    def fits(self, q) -> bool:
        """Whether q has every capability this estimator needs."""
        return all(need(q) for need in self.needs)

    def check(self, q=None, num_samples: int = 1, objective: str = "elbo") -> None:
        """Raise a one-line ValueError if (q, num_samples, objective) is not supported; else return None.

        q may be None (only the settings are checked, e.g. before any posterior exists).
        """
        if q is not None:
            for need in self.needs:
                if not need(q):
                    raise ValueError(f"estimator {self.name!r} needs a posterior with {need.what}; "
                                     f"got {describe(q)}")
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
        """q: a Distribution, batch [*batch]; f: z [S', *batch, *event] -> [S', *batch]; context [*batch, C]."""
        self.check(q, num_samples, objective)
        return self.estimate(q, lambda z: check_values(f(z), z, q, self.name), int(num_samples), objective,
                             context)

    def estimate(self, q, f, num_samples: int, objective: str, context: Tensor | None) -> EstimatorOutput:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"name={self.name!r}"
