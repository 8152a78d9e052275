"""Control variates (baselines) for the score-function terms of `score_function` and `grep`.

A baseline b_s for sample s is subtracted from the learning signal that multiplies grad log p(sample s).
It keeps the estimator unbiased as long as it does not depend on sample s itself (Williams 1992;
Mnih & Gregor 2014, NVIL, section 3.3). The learning signal is
    ELBO: signal_s = f(z_s)                     IWAE: signal_s = L = log (1/S) sum_t exp f(z_t)  (every s)

Every baseline maps (signal [S, *batch], values f(z) [S, *batch], objective, context [*batch, C] | None)
to (b [S, *batch] detached, aux_loss 0-d). The name -> class table `BASELINES` is the registry of options.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from mixvae.estimators.base import Estimator, leave_one_out, reduce_samples


class Baseline(nn.Module):
    min_samples: int = 1

    def forward(self, signal: Tensor, values: Tensor, objective: str, context: Tensor | None):
        raise NotImplementedError


class NoBaseline(Baseline):
    """b = 0: the plain score function (REINFORCE, Williams 1992)."""

    def forward(self, signal, values, objective, context):
        return torch.zeros_like(signal), signal.new_zeros(())


class RunningMeanBaseline(Baseline):
    """b = exponential moving average of the signal over past batches (a buffer; updated in training mode).

    The value used for a batch is the one from before that batch, so it never depends on the sample it corrects.
    """

    def __init__(self, momentum: float = 0.9):
        super().__init__()
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"baseline momentum must be in [0, 1), got {momentum}")
        self.momentum = momentum
        self.register_buffer("value", torch.zeros(()))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    def forward(self, signal, values, objective, context):
        b = self.value.to(signal.dtype, copy=True).expand_as(signal)  # a copy: update() writes in place
        if self.training:
            self.update(signal.detach().mean())
        return b, signal.new_zeros(())

    @torch.no_grad()
    def update(self, batch_mean: Tensor) -> None:
        batch_mean = batch_mean.to(self.value.dtype)
        # torch.where instead of an `if` on a GPU tensor: no host sync.
        new = torch.where(
            self.initialized, self.momentum * self.value + (1 - self.momentum) * batch_mean, batch_mean
        )
        self.value.copy_(new)
        self.initialized.fill_(True)


class LearnedBaseline(Baseline):
    """Input-dependent baseline b(x) = c + net(x) (Mnih & Gregor 2014, NVIL, eqs. 10-11).

    c is a running mean of the signal (a buffer) so that the network only fits the residual: without it the
    network would spend thousands of steps learning the scale of f (hundreds of nats for a VAE).
    net: context [*batch, C] -> [*batch], fitted by aux_loss = mean (signal - b(x))^2 with the signal and
    the context detached, so the loss reaches only the network's parameters.
    """

    def __init__(self, context_dim: int | None, hidden: int = 100, momentum: float = 0.9):
        super().__init__()
        if context_dim is None:
            raise ValueError("baseline='learned' needs context_dim (the size of the input features x)")
        self.center = RunningMeanBaseline(momentum)
        self.net = nn.Sequential(nn.Linear(context_dim, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        nn.init.zeros_(self.net[-1].weight)  # start at b(x) = c: never worse than the running mean at step 0
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, signal, values, objective, context):
        if context is None:
            raise ValueError("baseline='learned' needs context=<input features [*batch, C]> in the call")
        c, _ = self.center(signal, values, objective, context)  # [S, *batch], value from before this batch
        param = self.net[0].weight
        residual = self.net(context.detach().to(param.dtype)).squeeze(-1).to(signal.dtype)  # [*batch]
        b = c + residual  # [S, *batch] by broadcasting
        aux_loss = (signal.detach() - b).pow(2).mean()
        return b.detach(), aux_loss


class LeaveOneOutBaseline(Baseline):
    """b_s = the objective computed from the other S-1 samples (needs S >= 2).

    ELBO: b_s = mean_{t != s} f(z_t) (Kool et al. 2019, "Buy 4 REINFORCE samples").
    IWAE: b_s = log (1/(S-1)) sum_{t != s} exp f(z_t), i.e. L with exp f(z_s) replaced by the arithmetic mean
    of the others (VIMCO, Mnih & Rezende 2016, uses the geometric mean instead; see vimco.py).
    """

    min_samples = 2

    def forward(self, signal, values, objective, context):
        return leave_one_out(values.detach(), objective), signal.new_zeros(())


class SignalNormalizer(nn.Module):
    """NVIL's variance normalization (Mnih & Gregor 2014, section 3.3): the centred learning signal is divided
    by max(1, sqrt(v)), v a running estimate of its variance (exponential moving averages of the batch mean and
    mean square of signal - b, updated in training mode).

    The divisor used for a batch is the one from before that batch (1 at the first), so it never depends on the
    sample it scales. It rescales the score-function part of the gradient only, so the estimator is no longer
    unbiased for the objective's gradient: on q's parameters it is unbiased for that gradient divided by the
    divisor when f depends on them only through terms of zero mean (a discrete q's -log q(z) in the ELBO).
    """

    def __init__(self, momentum: float = 0.9):
        super().__init__()
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"normalize momentum must be in [0, 1), got {momentum}")
        self.momentum = momentum
        self.register_buffer("mean", torch.zeros(()))
        self.register_buffer("mean_square", torch.zeros(()))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    def divisor(self) -> Tensor:
        """0-d max(1, running std); 1 before the first update."""
        var = (self.mean_square - self.mean.pow(2)).clamp_min(0.0)
        return torch.where(self.initialized, var.sqrt().clamp_min(1.0), torch.ones_like(var))

    def forward(self, centred: Tensor) -> Tensor:
        """centred [S, *batch] (detached) -> the divisor 0-d (detached, from before this batch)."""
        d = self.divisor().to(centred.dtype, copy=True)
        if self.training:
            with torch.no_grad():
                c = centred.detach().to(self.mean.dtype)
                m, ms = c.mean(), c.pow(2).mean()
                a = self.momentum
                self.mean.copy_(torch.where(self.initialized, a * self.mean + (1 - a) * m, m))
                self.mean_square.copy_(torch.where(self.initialized, a * self.mean_square + (1 - a) * ms, ms))
                self.initialized.fill_(True)
        return d


# name -> factory(context_dim, momentum, hidden): the registry of baseline options.
BASELINES: dict[str, Callable[[int | None, float, int], Baseline]] = {
    "none": lambda context_dim, momentum, hidden: NoBaseline(),
    "mean": lambda context_dim, momentum, hidden: RunningMeanBaseline(momentum),
    "learned": lambda context_dim, momentum, hidden: LearnedBaseline(context_dim, hidden, momentum),
    "loo": lambda context_dim, momentum, hidden: LeaveOneOutBaseline(),
}


def make_baseline(kind: str, context_dim: int | None, momentum: float, hidden: int) -> Baseline:
    """Build the baseline named `kind`; a one-line ValueError lists the valid names."""
    if kind not in BASELINES:
        raise ValueError(f"unknown baseline {kind!r}; valid: {', '.join(BASELINES)}")
    return BASELINES[kind](context_dim, momentum, hidden)


def score_surrogate(
    values: Tensor, log_prob: Tensor, objective: str, baseline: Baseline, context: Tensor | None,
    normalizer: SignalNormalizer | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Surrogate with one score-function term per sample (REINFORCE with a baseline).

    values [S, *batch]: f at the samples, carrying whatever pathwise graph the estimator built;
    log_prob [S, *batch]: log density of each sample's non-reparameterized randomness (log pi_k for the index,
    log pi(eps; theta) for G-REP), differentiable in the parameters.
        ELBO: surrogate = L + (1/S) sum_s stopgrad(f_s - b_s) log_prob_s,   L = mean_s f_s
        IWAE: surrogate = L +       sum_s stopgrad(L   - b_s) log_prob_s,   L = log mean_s exp f_s
    (each f_t with t != s is independent of sample s, so the ELBO's signal for s needs only f_s).
    With a ``normalizer`` the centred signal (signal - b) is divided by its divisor (NVIL, see SignalNormalizer).
    Returns (L detached [*batch], surrogate [*batch], aux_loss 0-d, baseline b [S, *batch]).
    """
    S = values.shape[0]
    L = reduce_samples(values, objective)  # [*batch]
    if objective == "elbo":
        signal, weight = values.detach(), 1.0 / S
    else:
        signal, weight = L.detach().expand_as(values), 1.0
    b, aux_loss = baseline(signal, values, objective, context)  # [S, *batch], detached
    centred = signal - b
    if normalizer is not None:
        centred = centred / normalizer(centred)
    surrogate = L + weight * (centred * log_prob).sum(0)
    return L.detach(), surrogate, aux_loss, b


class BaselineEstimator(Estimator):
    """An estimator with a score-function term and one of the `BASELINES` (score_function, grep)."""

    def __init__(
        self,
        baseline: str = "none",
        baseline_momentum: float = 0.9,
        baseline_hidden: int = 100,
        context_dim: int | None = None,
    ):
        super().__init__(context_dim)
        self.baseline_name = baseline
        self.baseline = make_baseline(baseline, context_dim, baseline_momentum, baseline_hidden)

    @property
    def min_samples(self) -> int:
        return self.baseline.min_samples

    def extra_repr(self) -> str:
        return f"name={self.name!r}, baseline={self.baseline_name!r}"
