"""The pathwise estimator through q.rsample: Graves' transform for mixtures (Graves 2016, "Stochastic
backpropagation through mixture density distributions"), implicit reparameterization for the other families
(Figurnov, Mohamed & Mnih 2018, "Implicit reparameterization gradients").

z ~ q exactly; the gradient to q's parameters flows through the sample, which the distribution owns
(`q.rsample`): for a mixture it holds the distributional transform u = F(z) fixed (dz/dtheta = -(dF/dtheta) / q(z),
one conditional CDF per dimension), for Gamma, Beta, Dirichlet and von Mises the CDF of each variable.
The estimator only averages: surrogate = objective(f(z_1..S)). Needs q.has_rsample; works on any torch
Distribution that has it. Unbiased for both objectives; S evaluations of f.
"""

from __future__ import annotations

from mixvae.estimators.base import PATHWISE, Estimator, EstimatorOutput, reduce_samples


class Graves(Estimator):
    name = "graves"
    needs = (PATHWISE,)

    def estimate(self, q, f, num_samples, objective, context):
        z = q.rsample((num_samples,))  # [S, *batch, *event], pathwise in q's parameters
        values = f(z)  # [S, *batch]
        surrogate = reduce_samples(values, objective)  # [*batch]
        return EstimatorOutput(
            objective=surrogate.detach(), surrogate=surrogate, aux_loss=values.new_zeros(())
        )
