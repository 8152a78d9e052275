r"""VonMises(loc, concentration) with implicit reparameterization gradients (Figurnov, Mohamed & Mnih 2018).

torch's and Pyro's von Mises have no ``rsample``. A sample is drawn exactly (Best & Fisher 1979 rejection, torch's
sampler) as x in [-pi, pi) around 0, and z = loc + x wrapped into [-pi, pi). With the CDF of x taken from -pi,
F(x; kappa) = int_{-pi}^x p(t) dt, p(t) = e^(kappa cos t) / (2 pi I_0(kappa)), the implicit gradient
(Figurnov et al. 2018, eq. 6; their section 4 treats the von Mises case) is dz/dloc = 1 and

    dz/dkappa = -(dF/dkappa)(x) / p(x) = -int_{-pi}^x e^(kappa (cos t - cos x)) (cos t - A) dt,
    A = A(kappa) = I_1(kappa) / I_0(kappa)   (d log p / dkappa = cos t - A).

F(-pi) = 0 and F(pi) = 1 for every kappa, so the velocity vanishes at x = +-pi (continuous around the circle); it
is odd in x. Because int_{-pi}^{pi} p (cos t - A) dt = 0 and the integrand is even, for y = |x|

    dz/dkappa = sign(x) G(y),   G(y) = -int_0^y e^(kappa (cos t - cos y)) (cos t - A) dt        (bulk)
                                     =  int_y^pi e^(kappa (cos t - cos y)) (cos t - A) dt        (tail).

Regimes (:func:`von_mises_concentration_grad`), split at y0 = arccos(A), where cos t - A changes sign: for
y <= y0 the bulk form's integrand is positive (no cancellation) and its weight e^(kappa (cos t - cos y)) lies in
[1, e^(kappa (1 - A))], at most e^(1/2) for large kappa (1 - A ~ 1/(2 kappa)); Gauss-Legendre on [0, y] is
then exact to rounding. For y > y0 the tail form's integrand is negative throughout and its weight
e^(-kappa (cos y - cos t)) <= 1 decays from t = y on the scale L = 1 / (kappa sin y + sqrt(kappa)); a
geometric change of variable t = y + W expm1(beta v) / expm1(beta), W = pi - y, beta = log(1 + W / L), puts
Gauss-Legendre nodes on that scale. Both are computed as ratios p(t) / p(y) = e^(kappa (cos t - cos y)), with
cos t - cos y = -2 sin((t + y)/2) sin((t - y)/2), so nothing underflows in the tails: unlike a CDF difference,
a tail sample never gets a zero gradient because F rounded to 0 or 1 (what a float32 CDF difference does
far enough into the tails). This replaces both classical regimes (Hill 1977, Algorithm 518: a Bessel/Fourier
series for small kappa, a corrected normal approximation for large kappa) with one quadrature, accurate to
~1e-11 relative (measured against mpmath) for kappa in [1e-2, 1e3]; float32 inputs are computed in float64
and rounded once.

:func:`von_mises_concentration_grad_reference` is the float64 reference the tests hold this to: mpmath
quadrature of the same integral at 20 digits (from -pi for x <= 0, the complement to pi for x > 0).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from torch.autograd.function import once_differentiable

from mixvae.distributions import _special, native

_PI_HI = math.pi  # the float64 nearest pi (below it)
_PI_LO = 1.2246467991473532e-16  # pi - _PI_HI
_BULK_NODES = 24
_TAIL_NODES = 48


@functools.cache
def _gauss_legendre(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes and weights on [0, 1], float64 ``[n]``."""
    nodes, weights = np.polynomial.legendre.leggauss(n)
    return torch.from_numpy((nodes + 1) / 2), torch.from_numpy(weights / 2)


def _log_ratio(t: torch.Tensor, y: torch.Tensor, kappa: torch.Tensor) -> torch.Tensor:
    """kappa (cos t - cos y), without the cancellation of cos t - cos y for t near y."""
    return -2 * kappa * torch.sin(0.5 * (t + y)) * torch.sin(0.5 * (t - y))


def von_mises_concentration_grad(kappa: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    r"""dx/dkappa of a von Mises sample x in [-pi, pi) around 0 at fixed F(x; kappa) (see the module docstring).

    Args:
        kappa: concentration ``[...]`` (> 0), broadcast against ``x``.
        x: samples ``[...]`` centred at the location, in [-pi, pi].

    Returns the derivative, broadcast shape, in the promoted dtype of the inputs; computed in float64. CPU
    float32/float64 inputs go through the C kernel (``native.von_mises_grad``: per element only the form it
    needs); otherwise :func:`von_mises_concentration_grad_torch`.
    """
    kappa, x = torch.broadcast_tensors(kappa, x)
    if native.supports(x) and kappa.device == x.device and native.available():
        k = kappa.detach().to(torch.float64).reshape(-1)
        a = torch.special.i1e(k) / torch.special.i0e(k)
        grad = native.von_mises_grad(k, x.detach().reshape(-1).to(torch.float64), a,
                                     _gauss_legendre(_BULK_NODES), _gauss_legendre(_TAIL_NODES), x.dtype)
        return grad.reshape(x.shape)
    return von_mises_concentration_grad_torch(kappa, x)


def von_mises_concentration_grad_torch(kappa: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """:func:`von_mises_concentration_grad` in PyTorch (any device): both forms for every element, ``[N, 48]``
    quadrature tensors. What CUDA tensors and a machine without a C compiler use."""
    kappa, x = torch.broadcast_tensors(kappa, x)
    out_dtype = x.dtype
    k = kappa.detach().to(torch.float64).reshape(-1, 1)  # [N, 1]
    xx = x.detach().to(torch.float64).reshape(-1)
    # pi = _PI_HI + _PI_LO: a float can lie above pi (float32 pi does) or a few ulps below it; wrap such x to
    # the other side and measure the distance to pi in double-double, so that dz/dkappa -> 0 continuously there
    y = xx.abs()
    sign = torch.sign(xx)
    over = y > _PI_HI
    y = torch.where(over, (2 * _PI_HI - y) + 2 * _PI_LO, y)
    sign = torch.where(over, -sign, sign)
    width = ((_PI_HI - y) + _PI_LO).clamp(min=1e-300).unsqueeze(-1)  # pi - y, [N, 1]
    y = y.unsqueeze(-1)  # [N, 1]
    a = torch.special.i1e(k) / torch.special.i0e(k)  # A(kappa), [N, 1]
    one_minus_a = 1 - a
    bulk = y <= torch.arccos(a)

    # bulk: -int_0^y w(t) (cos t - A) dt, cos t - A = (1 - A) - 2 sin^2(t/2) (keeps the digits near A ~ 1)
    v, wts = _gauss_legendre(_BULK_NODES)
    t = y * v  # [N, nodes]
    f = _log_ratio(t, y, k).exp() * (one_minus_a - 2 * torch.sin(0.5 * t) ** 2)
    g_bulk = -y.squeeze(-1) * (f * wts).sum(-1)

    # tail: int_y^pi w(t) (cos t - A) dt on a geometric grid from t = y
    v, wts = _gauss_legendre(_TAIL_NODES)
    scale = 1 / (k * torch.sin(y) + k.sqrt())
    beta = torch.log1p(width / scale).clamp(min=1e-30)
    denom = torch.expm1(beta)
    t = y + width * torch.expm1(beta * v) / denom
    dt_dv = width * beta * torch.exp(beta * v) / denom
    f = _log_ratio(t, y, k).exp() * (one_minus_a - 2 * torch.sin(0.5 * t) ** 2) * dt_dv
    g_tail = (f * wts).sum(-1)

    grad = torch.where(bulk.squeeze(-1), g_bulk, g_tail) * sign
    return grad.reshape(x.shape).to(out_dtype)


def von_mises_concentration_grad_reference(kappa, x, dps: int = 20) -> torch.Tensor:
    """The float64 reference for :func:`von_mises_concentration_grad`: -(dF/dkappa)(x) / p(x) by mpmath quadrature
    of p(t) (cos t - A) / p(x) at ``dps`` digits, with breakpoints graded towards x (where the integrand peaks)."""
    import mpmath

    kappa, x = torch.broadcast_tensors(torch.as_tensor(kappa, dtype=torch.float64),
                                       torch.as_tensor(x, dtype=torch.float64))
    out = torch.empty(x.shape, dtype=torch.float64)
    flat_k, flat_x, flat_out = kappa.reshape(-1).tolist(), x.reshape(-1).tolist(), out.view(-1)
    for i, (ki, xi) in enumerate(zip(flat_k, flat_x)):
        near_pi = abs(abs(xi) - math.pi)  # digits lost in x + pi or pi - x are made up by working precision
        extra = 0 if near_pi > 1e-3 else 3 + math.ceil(-math.log10(max(near_pi, 1e-300)))
        if 0 < abs(xi) < 1e-3:  # the integral from the far end cancels to ~ |x| (1 - A)
            extra += 3 + math.ceil(-math.log10(abs(xi)))
        with mpmath.workdps(dps + extra):
            kap, v = mpmath.mpf(ki), mpmath.mpf(xi)
            a = mpmath.besseli(1, kap) / mpmath.besseli(0, kap)
            cv = mpmath.cos(v)

            def integrand(t, kap=kap, cv=cv, a=a):
                return mpmath.exp(kap * (mpmath.cos(t) - cv)) * (mpmath.cos(t) - a)

            step = 1 / (kap + 1)
            if v <= 0:  # -int_{-pi}^x, breakpoints x - step 4^j
                pts = [v - step * 4 ** j for j in range(7) if v - step * 4 ** j > -mpmath.pi]
                flat_out[i] = float(-mpmath.quad(integrand, [-mpmath.pi, *reversed(pts), v]))
            else:  # int_x^pi (the complement: the integral over the circle is 0)
                pts = [v + step * 4 ** j for j in range(7) if v + step * 4 ** j < mpmath.pi]
                flat_out[i] = float(mpmath.quad(integrand, [v, *pts, mpmath.pi]))
    return out


class VonMisesSample(torch.autograd.Function):
    """Identity on a given centred sample x ``[...]``, with the implicit gradient to kappa ``[...]`` (same shape:
    expand kappa before the call) in the backward pass."""

    @staticmethod
    def forward(ctx, kappa: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(kappa, x)
        return x.clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_x):
        kappa, x = ctx.saved_tensors
        return grad_x * von_mises_concentration_grad(kappa, x).to(grad_x.dtype), None


class VonMises(torch.distributions.VonMises):
    r"""von Mises on the circle: p(z) = e^(kappa cos(z - loc)) / (2 pi I_0(kappa)).

    Args:
        loc: ``[*batch]`` location (any real; samples are wrapped into [-pi, pi)).
        concentration: ``[*batch]`` kappa (> 0); broadcasts with ``loc``.
        validate_args: check the parameters, raising a one-line ``ValueError`` naming the argument (None:
            torch's global default).

    ``rsample(sample_shape)`` returns ``[*sample_shape, *batch]`` in [-pi, pi) with the implicit
    reparameterization gradient (module docstring): dz/dloc = 1 and dz/dkappa from the CDF centred at loc.
    ``log_prob``, ``mean`` (= loc) and ``variance`` (the circular variance 1 - A(kappa)) are torch's (a subclass
    of ``torch.distributions.VonMises``); ``entropy`` is log(2 pi I_0(kappa)) - kappa A(kappa).
    """

    has_rsample = True

    def __init__(self, loc, concentration, validate_args=None):
        validate = torch.distributions.Distribution._validate_args if validate_args is None else bool(validate_args)
        loc, concentration = _special.float_params("VonMises", loc=loc, concentration=concentration)
        if validate:
            _special.check_finite("VonMises", "loc", loc)
            _special.check_positive("VonMises", "concentration", concentration)
        super().__init__(loc, concentration, validate_args=False)
        self._validate_args = validate

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(VonMises, _instance)
        return super().expand(batch_shape, _instance=new)

    def rsample(self, sample_shape=torch.Size()) -> torch.Tensor:
        """Exact sample ``[*sample_shape, *batch]`` in [-pi, pi), differentiable in loc and concentration."""
        shape = self._extended_shape(sample_shape)
        with torch.no_grad():
            kappa = self.concentration.detach()
            x = torch.distributions.VonMises(torch.zeros_like(kappa), kappa, validate_args=False).sample(sample_shape)
        return self.rsample_from_centred(x.expand(shape))

    def rsample_from_centred(self, x: torch.Tensor) -> torch.Tensor:
        """z = loc + x wrapped into [-pi, pi) for given centred draws x ``[*S, *batch]`` in [-pi, pi) (the noise;
        the seam the tests use to fix it), differentiable in loc and concentration."""
        if torch.is_grad_enabled() and self.concentration.requires_grad:
            x = VonMisesSample.apply(self.concentration.expand(x.shape), x)
        z = x + self.loc
        with torch.no_grad():
            turns = torch.floor((z + math.pi) / (2 * math.pi))
            wrapped = z - 2 * math.pi * turns
            turns = turns + (wrapped >= math.pi).to(turns.dtype)  # rounding can land on +pi
        return z - 2 * math.pi * turns

    def entropy(self) -> torch.Tensor:
        """``[*batch]``: log(2 pi I_0(kappa)) - kappa A(kappa) = log(2 pi i0e(kappa)) + kappa (1 - A(kappa))."""
        k = self.concentration
        a = torch.special.i1e(k) / torch.special.i0e(k)
        return math.log(2 * math.pi) + torch.special.i0e(k).log() + k * (1 - a)

    def __repr__(self):
        return f"VonMises(batch_shape={tuple(self.batch_shape)})"


__all__ = ["VonMises", "VonMisesSample", "von_mises_concentration_grad", "von_mises_concentration_grad_reference"]
