"""Generalized reparameterization, G-REP (Ruiz, Titsias & Blei 2016, eqs. 5-8). estimators.md section 6.

Standardization T(eps; theta) = m + s * eps with m, s^2 the mixture's per-dimension mean and variance.
Sample z ~ q (no gradient), eps = stopgrad((z - m) / s), z' = T(eps; theta) (equal to z, with a graph);
the density of eps is pi(eps; theta) = q(T(eps; theta); theta) prod_d s_d, so
    grad E_q[f] = E[grad_z f(z') dT/dtheta]  (g_rep, through z')  +  E[f(z') grad log pi(eps; theta)]  (g_corr)
    surrogate   = objective(f(z')) + stopgrad(signal - b) * log pi(eps; theta)      (baselines as in baselines.py)
E[grad log pi(eps; theta)] = 0 for every theta, so any baseline independent of the sample keeps it unbiased.
Unbiased for both objectives; S evaluations of f (plus one log q per sample).
"""

from __future__ import annotations

from mixvae.estimators.base import EstimatorOutput
from mixvae.estimators.baselines import BaselineEstimator, score_surrogate


class GRep(BaselineEstimator):
    name = "grep"

    def estimate(self, q, f, num_samples, objective, context):
        m = q.mean  # [*batch, D]
        s = q.variance.clamp_min(1e-30).sqrt()  # [*batch, D]; the clamp only guards a degenerate q
        z = q.sample((num_samples,))  # [S, *batch, D], no gradient
        eps = ((z - m) / s).detach()  # [S, *batch, D]
        z_theta = m + s * eps  # [S, *batch, D], = z in value, differentiable in theta
        log_pi = q.log_prob(z_theta) + s.log().sum(-1)  # [S, *batch]: log q(T(eps)) + log |dT/deps|
        values = f(z_theta)  # [S, *batch]
        value, surrogate, aux_loss, b = score_surrogate(values, log_pi, objective, self.baseline, context)
        return EstimatorOutput(value, surrogate, {"baseline": b.mean()}, aux_loss)
