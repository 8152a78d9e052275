"""Generalized reparameterization, G-REP (Ruiz, Titsias & Blei 2016, "The generalized reparameterization
gradient", eqs. 5-8).

A standardization T(eps; theta) maps a weakly parameter-dependent variable eps to z. Sample z ~ q (no gradient),
eps = stopgrad(T^{-1}(z)), z' = T(eps; theta) (equal to z, with a graph); the density of eps is
pi(eps; theta) = q(T(eps; theta); theta) |dT/deps|, so
    grad E_q[f] = E[grad_z f(z') dT/dtheta]  (g_rep, through z')  +  E[f(z') grad log pi(eps; theta)]  (g_corr)
    surrogate   = objective(f(z')) + stopgrad(signal - b) * log pi(eps; theta)      (baselines as in baselines.py)
E[grad log pi(eps; theta)] = 0 for every theta, so any baseline independent of the sample keeps it unbiased.

The standardization (`standardization`) is the distribution's own when it has one (``q.grep_transform()``: for
Gamma, log z standardized by psi(alpha) - log(rate) and sqrt(psi'(alpha)); for Beta, logit z by psi(a) - psi(b)
and sqrt(psi'(a) + psi'(b)), as in the paper), applied per factor of an ``Independent``; otherwise, on a real
support, z standardized by q's mean and standard deviation (the mixture's per-dimension moments). A family
with a standardization also gives log pi(eps; theta) in the standardized coordinate (``q.grep_log_prob(eps)``):
equal to log q(T(eps)) + log |dT/deps|, but without the 1/z of d log q / dz, which at z ~ 1e-38 (a Beta or
Gamma concentration << 1 in float32) times the weight f - b overflows, making the gradient NaN.
Unbiased for both objectives; S evaluations of f (plus one log q per sample).
"""

from __future__ import annotations

from torch.distributions import constraints
from torch.distributions.transforms import AffineTransform, IndependentTransform, Transform

from mixvae.estimators.base import EstimatorOutput, Need
from mixvae.estimators.baselines import BaselineEstimator, score_surrogate


def _own(q):
    """The distribution's own standardization method, looking through Independent wrappers; or None."""
    while q is not None:
        if callable(getattr(q, "grep_transform", None)):
            return q
        q = getattr(q, "base_dist", None)
    return None


def _real(q) -> bool:
    support = getattr(q, "support", None)
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    return support is constraints.real or support is constraints.real_vector


def standardization(q) -> Transform:
    """T: eps -> z for G-REP, with event_dim equal to len(q.event_shape)."""
    if callable(getattr(q, "grep_transform", None)):
        return q.grep_transform()
    base = getattr(q, "base_dist", None)
    if base is not None and _own(base) is not None:
        return IndependentTransform(standardization(base), q.reinterpreted_batch_ndims)
    s = q.variance.clamp_min(1e-30).sqrt()  # the clamp only guards a degenerate q
    return AffineTransform(q.mean, s, event_dim=len(q.event_shape))


def log_density(q, T: Transform, eps, z_theta):
    """log pi(eps; theta) [S, *batch]: the family's own ``grep_log_prob(eps)`` when it has one (computed in the
    standardized coordinate, stable where z underflows; summed over an Independent's reinterpreted dims),
    else log q(T(eps)) + log |dT/deps|."""
    if callable(getattr(q, "grep_log_prob", None)):
        return q.grep_log_prob(eps)
    base = getattr(q, "base_dist", None)
    if base is not None and callable(getattr(base, "grep_log_prob", None)):
        lp = base.grep_log_prob(eps)
        n = q.reinterpreted_batch_ndims
        return lp.sum(tuple(range(-n, 0))) if n else lp
    return q.log_prob(z_theta) + T.log_abs_det_jacobian(eps, z_theta)


STANDARDIZABLE = Need("a G-REP standardization (grep_transform(), or mean and variance on a real support)",
                      lambda q: _own(q) is not None or _real(q))


class GRep(BaselineEstimator):
    name = "grep"
    needs = (STANDARDIZABLE,)

    def estimate(self, q, f, num_samples, objective, context):
        T = standardization(q)
        z = q.sample((num_samples,))  # [S, *batch, *event], no gradient
        eps = T.inv(z).detach()  # [S, *batch, *event]
        z_theta = T(eps)  # [S, *batch, *event], = z in value, differentiable in theta
        log_pi = log_density(q, T, eps, z_theta)  # [S, *batch]
        values = f(z_theta)  # [S, *batch]
        value, surrogate, aux_loss, b = score_surrogate(values, log_pi, objective, self.baseline, context)
        return EstimatorOutput(value, surrogate, {"baseline": b.mean()}, aux_loss)
