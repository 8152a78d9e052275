"""Score function for the component index, pathwise for the component's Gaussian. estimators.md section 3.

Augment q with the index: k ~ Cat(pi), z = mu_k + sigma_k eps. loc/scale get the pathwise gradient through
z (`q.rsample_component`), the logits the score-function term (Williams 1992, REINFORCE), with a baseline
(Mnih & Gregor 2014, NVIL):  surrogate = objective(f) + stopgrad(signal - b) * log pi_k  (see baselines.py).
Baselines: none, mean (running mean), learned (input-dependent b(x), fitted by out.aux_loss),
loo (leave-one-out over the S samples, S >= 2). Unbiased for both objectives; S evaluations of f.
"""

from __future__ import annotations

from mixvae.estimators.base import EstimatorOutput, log_weight_of
from mixvae.estimators.baselines import BaselineEstimator, score_surrogate


class ScoreFunction(BaselineEstimator):
    name = "score_function"

    def estimate(self, q, f, num_samples, objective, context):
        k = q.sample_index((num_samples,))  # [S, *batch], no gradient
        z = q.rsample_component(k)  # [S, *batch, D], pathwise in loc and scale only
        values = f(z)  # [S, *batch]
        log_pi = log_weight_of(q, k)  # [S, *batch]
        value, surrogate, aux_loss, b = score_surrogate(values, log_pi, objective, self.baseline, context)
        return EstimatorOutput(value, surrogate, {"baseline": b.mean()}, aux_loss)
