"""Graves' pathwise estimator (Graves 2016, "Stochastic backpropagation through mixture density
distributions"; Figurnov et al. 2018, implicit reparameterization). estimators.md section 1.

z ~ q exactly; the gradient to (logits, loc, scale) flows through the distributional transform, which the
distribution owns (`q.rsample`). The estimator only averages: surrogate = objective(f(z_1..S)).
Unbiased for both objectives; S evaluations of f.
"""

from __future__ import annotations

from mixvae.estimators.base import Estimator, EstimatorOutput, reduce_samples


class Graves(Estimator):
    name = "graves"

    def estimate(self, q, f, num_samples, objective, context):
        z = q.rsample((num_samples,))  # [S, *batch, D], pathwise in logits, loc, scale
        values = f(z)  # [S, *batch]
        surrogate = reduce_samples(values, objective)  # [*batch]
        return EstimatorOutput(
            objective=surrogate.detach(), surrogate=surrogate, aux_loss=values.new_zeros(())
        )
