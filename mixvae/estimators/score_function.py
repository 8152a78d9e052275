"""The score function (Williams 1992, REINFORCE) with a baseline (Mnih & Gregor 2014, NVIL).

On a mixture posterior (the `MIXTURE` capability) it scores only the discrete part: augment q with the index,
k ~ Cat(pi), z = mu_k + sigma_k eps; loc/scale get the pathwise gradient through z (`q.rsample_component`), the
logits the score-function term:  surrogate = objective(f) + stopgrad(signal - b) * log pi_k  (see baselines.py).
On any other distribution (discrete ones included: Bernoulli, OneHotCategorical, a layered posterior) it scores
the sample itself: z ~ q without a gradient, and
    surrogate = objective(f(z)) + stopgrad(signal - b) * log q(z),
whose gradient is unbiased because E_q[grad log q(z)] = 0 and f's own dependence on the parameters (through
-log q(z) in a VAE) is kept by the first term.
Baselines: none, mean (running mean), learned (input-dependent b(x), fitted by out.aux_loss),
loo (leave-one-out over the S samples, S >= 2). Unbiased for both objectives; S evaluations of f.
normalize=True adds NVIL's variance normalization (Mnih & Gregor 2014, section 3.3): the centred signal
signal - b is divided by max(1, running std of it) (baselines.SignalNormalizer, momentum baseline_momentum).
That rescales the score-function part of the gradient against the rest, so the estimator is then not
unbiased for the objective's gradient (``unbiased`` is False); NVIL is baseline=learned with normalize=True.
"""

from __future__ import annotations

from mixvae.estimators.base import MIXTURE, EstimatorOutput, log_weight_of
from mixvae.estimators.baselines import BaselineEstimator, SignalNormalizer, score_surrogate


class ScoreFunction(BaselineEstimator):
    name = "score_function"

    def __init__(
        self,
        baseline: str = "none",
        baseline_momentum: float = 0.9,
        baseline_hidden: int = 100,
        normalize: bool = False,
        context_dim: int | None = None,
    ):
        super().__init__(baseline, baseline_momentum, baseline_hidden, context_dim)
        self.normalizer = SignalNormalizer(baseline_momentum) if normalize else None
        self.unbiased = not normalize

    def estimate(self, q, f, num_samples, objective, context):
        if MIXTURE(q):
            k = q.sample_index((num_samples,))  # [S, *batch], no gradient
            z = q.rsample_component(k)  # [S, *batch, D], pathwise in loc and scale only
            log_p = log_weight_of(q, k)  # [S, *batch]
        else:
            z = q.sample((num_samples,))  # [S, *batch, *event], no gradient
            log_p = q.log_prob(z)  # [S, *batch]
        values = f(z)  # [S, *batch]
        value, surrogate, aux_loss, b = score_surrogate(values, log_p, objective, self.baseline, context,
                                                        self.normalizer)
        metrics = {"baseline": b.mean()}
        if self.normalizer is not None:
            metrics["signal_divisor"] = self.normalizer.divisor().detach().clone()
        return EstimatorOutput(value, surrogate, metrics, aux_loss)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, normalize={self.normalizer is not None}"
