r"""Beta(a, b) through Gamma variables, with implicit reparameterization gradients.

z = x / (x + y) with independent x ~ Gamma(a, 1), y ~ Gamma(b, 1) (the K = 2 case of
:mod:`mixvae.distributions.dirichlet`). Holding the two gamma CDF values fixed (Figurnov, Mohamed & Mnih 2018,
section 3.3),

    dz/da = y / (x + y)^2 * dx/da,        dz/db = -x / (x + y)^2 * dy/db,

with dx/da, dy/db the implicit gamma derivatives of :func:`mixvae.distributions.gamma.standard_gamma_grad`.
Per sample this differs from the implicit derivative of Beta's own CDF, -(dI_z(a, b)/da) / p(z) (I the
regularized incomplete beta): the two hold different noise fixed, and both are unbiased. The per-sample
reference is the same two-gamma construction evaluated with mpmath's gamma derivatives
(:func:`mixvae.distributions.dirichlet.dirichlet_jacobian_reference`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.distributions import transforms as T
from torch.distributions.utils import lazy_property

from mixvae.distributions import _special
from mixvae.distributions.dirichlet import dirichlet_from_standard_gamma, sample_standard_gamma


def beta_implicit_grad_reference(a, b, z, dps: int = 30) -> tuple[torch.Tensor, torch.Tensor]:
    """The implicit derivative of Beta's own CDF, (-(dI_z/da) / p(z), -(dI_z/db) / p(z)), float64, by mpmath
    (``mpmath.diff`` of the regularized incomplete beta ``betainc``) at ``dps`` digits: the per-sample reference
    for a Beta sampler that holds u = I_z(a, b) fixed (torch's does), not for the two-gamma construction here."""
    import mpmath

    a, b, z = torch.broadcast_tensors(*(torch.as_tensor(v, dtype=torch.float64) for v in (a, b, z)))
    da, db = torch.empty(z.shape, dtype=torch.float64), torch.empty(z.shape, dtype=torch.float64)
    with mpmath.workdps(dps):
        for i, (ai, bi, zi) in enumerate(zip(a.reshape(-1).tolist(), b.reshape(-1).tolist(), z.reshape(-1).tolist())):
            ai, bi, zi = mpmath.mpf(ai), mpmath.mpf(bi), mpmath.mpf(zi)
            log_p = (ai - 1) * mpmath.log(zi) + (bi - 1) * mpmath.log1p(-zi) - mpmath.log(mpmath.beta(ai, bi))
            p = mpmath.exp(log_p)
            da.view(-1)[i] = float(-mpmath.diff(lambda s, b=bi, v=zi: mpmath.betainc(s, b, 0, v, regularized=True), ai) / p)
            db.view(-1)[i] = float(-mpmath.diff(lambda s, a=ai, v=zi: mpmath.betainc(a, s, 0, v, regularized=True), bi) / p)
    return da, db


class Beta(torch.distributions.Beta):
    r"""Beta(a, b) on (0, 1): p(z) = z^(a-1) (1-z)^(b-1) / B(a, b).

    Args:
        concentration1: ``[*batch]`` a (> 0).
        concentration0: ``[*batch]`` b (> 0); broadcasts with ``concentration1``.
        validate_args: check the parameters, raising a one-line ``ValueError`` naming the argument (None:
            torch's global default); samples passed to ``log_prob`` are then checked too.

    ``rsample(sample_shape)`` returns ``[*sample_shape, *batch]`` with the implicit reparameterization gradient
    through two Gamma variables (module docstring). ``log_prob``, ``mean``, ``variance``, ``entropy`` and KL
    registrations are torch's (a subclass of ``torch.distributions.Beta``).
    """

    has_rsample = True

    def __init__(self, concentration1, concentration0, validate_args=None):
        validate = torch.distributions.Distribution._validate_args if validate_args is None else bool(validate_args)
        a, b = _special.float_params("Beta", concentration1=concentration1, concentration0=concentration0)
        if validate:
            _special.check_positive("Beta", "concentration1", a)
            _special.check_positive("Beta", "concentration0", b)
        super().__init__(a, b, validate_args=False)
        self._validate_args = validate

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(Beta, _instance)
        return super().expand(batch_shape, _instance=new)

    def rsample(self, sample_shape=torch.Size()) -> torch.Tensor:
        """Exact sample ``[*sample_shape, *batch]``, differentiable in both concentrations."""
        shape = self._extended_shape(sample_shape) + (2,)
        return self.rsample_from_standard_gamma(sample_standard_gamma(self._dirichlet.concentration, shape))

    def rsample_from_standard_gamma(self, x: torch.Tensor) -> torch.Tensor:
        """z = x_0 / (x_0 + x_1) from given standard gamma draws ``[*S, *batch, 2]`` (x_0 ~ Gamma(a, 1),
        x_1 ~ Gamma(b, 1)), differentiable in a and b: ``[*S, *batch]``."""
        conc = self._dirichlet.concentration  # [*batch, 2], differentiable in a and b
        z = dirichlet_from_standard_gamma(conc, x, conc.dtype)[..., 0]
        below_one = 1 - torch.finfo(z.dtype).eps / 2  # z rounded to 1 would give log_prob = inf for b < 1
        return z + (z.detach().clamp(max=below_one) - z.detach())

    @lazy_property
    def _grep_location_scale(self):
        """(m, s) of the G-REP standardization, computed once per distribution (torch's ``lazy_property``):
        ``grep_transform`` and ``grep_log_prob`` of one G-REP step share them."""
        a, b = self.concentration1, self.concentration0
        return (torch.special.digamma(a) - torch.special.digamma(b),
                (_special.trigamma(a) + _special.trigamma(b)).sqrt())

    def grep_transform(self) -> T.Transform:
        r"""G-REP standardization (Ruiz, Titsias & Blei 2016, section 3): z = T(eps) = sigmoid(m + s eps) with
        m = E[logit z] = psi(a) - psi(b) and s^2 = Var[logit z] = psi'(a) + psi'(b) (logit z = log x - log y of
        two independent gammas), so that eps = T^-1(z) has mean 0 and variance 1. ``T = Sigmoid o Affine(m, s)``,
        event_dim 0; m and s are differentiable in the parameters."""
        m, s = self._grep_location_scale
        return T.ComposeTransform([T.AffineTransform(m, s), T.SigmoidTransform()])

    def grep_log_prob(self, eps: torch.Tensor) -> torch.Tensor:
        r"""log pi(eps; a, b), the density of eps = T^-1(z) under ``grep_transform``, in the standardized
        coordinate u = m + s eps: log q(sigmoid(u)) + log sigmoid'(u) + log s, which simplifies to

            a log sigmoid(u) + b log sigmoid(-u) - log B(a, b) + log s.

        Equal to ``log_prob(T(eps)) + T.log_abs_det_jacobian(eps, T(eps))``, but without the factor 1/z of
        d log q / dz: at a sample z ~ 1e-38 (a << 1 in float32) that factor times the score-function weight
        f(z) - b overflows to inf, and the gradient to NaN. Here d/du = a sigmoid(-u) - b sigmoid(u) is bounded.
        ``eps [*S, *batch]`` -> ``[*S, *batch]``."""
        a, b = self.concentration1, self.concentration0
        m, s = self._grep_location_scale
        u = m + s * eps
        log_beta = torch.lgamma(a) + torch.lgamma(b) - torch.lgamma(a + b)
        return a * F.logsigmoid(u) + b * F.logsigmoid(-u) - log_beta + s.log()

    def __repr__(self):
        return f"Beta(batch_shape={tuple(self.batch_shape)})"


__all__ = ["Beta", "beta_implicit_grad_reference"]
