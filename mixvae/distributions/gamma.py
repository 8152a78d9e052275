r"""Gamma(concentration, rate) with implicit reparameterization gradients (Figurnov, Mohamed & Mnih 2018).

A sample is drawn exactly (torch's Marsaglia-Tsang sampler, no gradient), x ~ Gamma(alpha, 1), z = x / rate.
The gradient holds the CDF value u = P(alpha, x) fixed (Figurnov et al. 2018, eq. 6):

    dx/dalpha = -(dP/dalpha)(alpha, x) / p(x; alpha),      p(x; alpha) = x^(alpha-1) e^-x / Gamma(alpha),

with P the regularized lower incomplete gamma function; dz/drate = -z / rate follows by autograd.
torch's own derivative (``_standard_gamma_grad``) is an approximation with relative errors up to ~6e-4; the one
here is accurate to ~1e-13 in float64 (the tests hold it to 1e-6 against mpmath; float32 inputs are computed in
float64 and rounded once).

The derivative (:func:`standard_gamma_grad`), in two regimes split at x = alpha + 1 (Numerical Recipes' split for
P itself, section 6.2; Moore 1982, AS 187, differentiates the same two expansions):

- **Series** (x < alpha + 1). P = x^alpha e^-x / Gamma(alpha + 1) * S with S = sum_n t_n,
  t_0 = 1, t_n = t_(n-1) x / (alpha + n) (Abramowitz & Stegun 6.5.29). Differentiating term by term,
  dt_n/dalpha = t_n h_n with h_n = -sum_{k<=n} 1 / (alpha + k), and dividing by p(x) (the prefactor over p(x)
  is x / alpha):

      dx/dalpha = -(x / alpha) * [ S (log x - psi(alpha + 1)) + sum_n t_n h_n ].

  For x < alpha + 1 both bracketed terms are negative or small (log x < psi(alpha + 1) ~ log(alpha + 1/2) up to
  O(1) terms), so there is no cancellation; the terms fall geometrically once alpha + n > x, i.e. after
  O(sqrt(alpha)) terms near the mode (~300 at alpha = 1e3).
- **Continued fraction** (x >= alpha + 1). Q = 1 - P = x^alpha e^-x / Gamma(alpha) * C with
  1/C = b_0 + a_1 / (b_1 + a_2 / (b_2 + ...)), b_n = x + 2n + 1 - alpha, a_n = -n (n - alpha) (A&S 6.5.31,
  Legendre's fraction). The convergents A_n / B_n obey Wallis' recurrence, which is differentiated alongside
  (d b_n / dalpha = -1, d a_n / dalpha = n) and renormalised by B_n each step; since dP/dalpha = -dQ/dalpha,

      dx/dalpha = x * [ C (log x - psi(alpha)) + dC/dalpha ],

  both terms positive for x > alpha + 1. It converges in 20-60 steps in the upper tail, O(sqrt(alpha)) near
  the mode; each element stops updating once its convergent settles (the forward recurrence would otherwise
  drift by a few ulps per step).

No separate Temme-type asymptotic regime is used: for alpha <= 1e3 the two expansions converge in at most
~600 terms everywhere, and the iteration count grows only as sqrt(alpha) (``max_iter`` caps it).
As x -> 0 the derivative tends to 0 (x log x); samples are clamped to the dtype's smallest normal number.

:func:`standard_gamma_grad_reference` is the float64 reference the tests hold this to: mpmath's regularized
incomplete gamma differentiated numerically at 40 digits.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable
from torch.distributions import transforms as T
from torch.distributions.utils import broadcast_all, lazy_property

from mixvae.distributions import _special, native

_EPS = 2.0 ** -53


def _series_grad(a: torch.Tensor, x: torch.Tensor, max_iter: int) -> torch.Tensor:
    """dx/dalpha by the differentiated power series (x < alpha + 1), float64 ``[N] -> [N]``."""
    t = torch.ones_like(x)
    s = torch.ones_like(x)
    h = torch.zeros_like(x)
    ds = torch.zeros_like(x)
    for n in range(1, max_iter + 1):
        an = a + n
        t = t * x / an
        h = h - 1 / an
        s = s + t
        ds = ds + t * h
        # t_n h_n shrinks geometrically once alpha + n > x; stop when the last term is below an ulp of both sums
        if n % 8 == 0 and bool(((t <= _EPS * s) & (t * h.abs() <= _EPS * ds.abs())).all()):
            break
    return -(x / a) * (s * (x.log() - torch.special.digamma(a + 1)) + ds)


def _continued_fraction_grad(a: torch.Tensor, x: torch.Tensor, max_iter: int) -> torch.Tensor:
    """dx/dalpha by the differentiated continued fraction of Q (x >= alpha + 1), float64 ``[N] -> [N]``."""
    one = torch.ones_like(x)
    a_prev, b_prev, da_prev, db_prev = one, torch.zeros_like(x), torch.zeros_like(x), torch.zeros_like(x)
    a_cur, b_cur, da_cur, db_cur = x + 1 - a, one, -one, torch.zeros_like(x)
    k, dk = a_cur.clone(), da_cur.clone()  # the convergent K_n = A_n / B_n of 1 / C and its alpha-derivative
    done = torch.zeros_like(x, dtype=torch.bool)
    for n in range(1, max_iter + 1):
        bn = x + (2 * n + 1) - a
        an = -n * (n - a)
        a_new = bn * a_cur + an * a_prev
        b_new = bn * b_cur + an * b_prev
        da_new = -a_cur + bn * da_cur + n * a_prev + an * da_prev
        db_new = -b_cur + bn * db_cur + n * b_prev + an * db_prev
        scale = 1 / b_new  # renormalise so that B_n = 1: K_n = A_n, dK_n = dA_n - A_n dB_n
        a_prev, b_prev, da_prev, db_prev = a_cur * scale, b_cur * scale, da_cur * scale, db_cur * scale
        a_cur, b_cur, da_cur, db_cur = a_new * scale, one, da_new * scale, db_new * scale
        k_new, dk_new = a_cur, da_cur - a_cur * db_cur
        # dK is a difference: its rounding noise is relative to its two terms, not to itself
        settled = (((k_new - k).abs() <= 4 * _EPS * k_new.abs())
                   & ((dk_new - dk).abs() <= 4 * _EPS * (da_cur.abs() + (a_cur * db_cur).abs())))
        k = torch.where(done, k, k_new)
        dk = torch.where(done, dk, dk_new)
        done = done | settled
        if n % 8 == 0 and bool(done.all()):
            break
    c, dc = 1 / k, -dk / (k * k)
    return x * (c * (x.log() - torch.special.digamma(a)) + dc)


def standard_gamma_grad(alpha: torch.Tensor, x: torch.Tensor, max_iter: int = 20000) -> torch.Tensor:
    r"""dx/dalpha of a standard gamma sample x ~ Gamma(alpha, 1) at fixed P(alpha, x) (see the module docstring).

    Args:
        alpha: concentration ``[...]`` (> 0), broadcast against ``x``.
        x: samples ``[...]`` (> 0).
        max_iter: cap on the terms of either expansion (needed: ~10 sqrt(alpha) near the mode).

    Returns the derivative, broadcast shape, in the promoted dtype of the inputs; computed in float64. CPU
    float32/float64 inputs go through the C kernel (``native.gamma_grad``: the same expansions, each element
    stopping at its own convergence, 6-55x faster than :func:`standard_gamma_grad_torch` as measured, the fallback
    and what other devices use).
    """
    alpha, x = broadcast_all(alpha, x)
    if native.supports(x) and alpha.dtype is x.dtype and alpha.device == x.device and native.available():
        return native.gamma_grad(alpha.contiguous(), x.contiguous(), max_iter)
    return standard_gamma_grad_torch(alpha, x, max_iter)


def standard_gamma_grad_torch(alpha: torch.Tensor, x: torch.Tensor, max_iter: int = 20000) -> torch.Tensor:
    """:func:`standard_gamma_grad` in PyTorch (any device): both expansions over the whole batch at once, in
    float64, until the slowest element has converged. What CUDA tensors and a machine without a C compiler use."""
    alpha, x = broadcast_all(alpha, x)
    out_dtype = x.dtype
    a = alpha.detach().to(torch.float64).reshape(-1)
    xx = x.detach().to(torch.float64).reshape(-1).clamp(min=torch.finfo(torch.float64).tiny)
    grad = torch.empty_like(xx)
    lower = xx < a + 1
    if bool(lower.any()):
        grad[lower] = _series_grad(a[lower], xx[lower], max_iter)
    if not bool(lower.all()):
        upper = ~lower
        grad[upper] = _continued_fraction_grad(a[upper], xx[upper], max_iter)
    return grad.reshape(x.shape).to(out_dtype)


def standard_gamma_grad_reference(alpha, x, dps: int = 40) -> torch.Tensor:
    """The float64 reference for :func:`standard_gamma_grad`: -(dP/dalpha) / p(x) with mpmath at ``dps`` digits.

    dP/dalpha is mpmath's numerical derivative (``mpmath.diff``) of the regularized lower incomplete gamma
    ``mpmath.gammainc(alpha, 0, x, regularized=True)``. A plain loop; slow (~ms per point)."""
    import mpmath

    alpha, x = broadcast_all(torch.as_tensor(alpha, dtype=torch.float64), torch.as_tensor(x, dtype=torch.float64))
    out = torch.empty(alpha.shape, dtype=torch.float64)
    flat_a, flat_x, flat_out = alpha.reshape(-1).tolist(), x.reshape(-1).tolist(), out.view(-1)
    with mpmath.workdps(dps):
        for i, (ai, xi) in enumerate(zip(flat_a, flat_x)):
            a, v = mpmath.mpf(ai), mpmath.mpf(xi)
            dp = mpmath.diff(lambda s, v=v: mpmath.gammainc(s, 0, v, regularized=True), a)
            log_p = (a - 1) * mpmath.log(v) - v - mpmath.loggamma(a)
            flat_out[i] = float(-dp / mpmath.exp(log_p))
    return out


class StandardGammaSample(torch.autograd.Function):
    """Identity on a given standard gamma sample x ``[...]``, with the implicit gradient to alpha ``[...]``
    (same shape: expand alpha before the call) in the backward pass."""

    @staticmethod
    def forward(ctx, alpha: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(alpha, x)
        return x.clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_x):
        alpha, x = ctx.saved_tensors
        return grad_x * standard_gamma_grad(alpha, x).to(grad_x.dtype), None


def rsample_standard_gamma(alpha: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One sample x ~ Gamma(alpha, 1) per element of ``alpha`` ``[...]`` (clamped to the dtype's smallest normal
    number), with the implicit gradient to alpha."""
    with torch.no_grad():
        x = torch._standard_gamma(alpha.detach(), generator=generator).clamp_(min=torch.finfo(alpha.dtype).tiny)
    if not (torch.is_grad_enabled() and alpha.requires_grad):
        return x
    return StandardGammaSample.apply(alpha, x)


class Gamma(torch.distributions.Gamma):
    r"""Gamma(concentration alpha, rate beta): p(z) = beta^alpha z^(alpha-1) e^(-beta z) / Gamma(alpha), z > 0.

    Args:
        concentration: ``[*batch]`` shape alpha (> 0).
        rate: ``[*batch]`` inverse scale beta (> 0); broadcasts with ``concentration``.
        validate_args: check the parameters, raising a one-line ``ValueError`` naming the argument (None:
            torch's global default); samples passed to ``log_prob`` are then checked too.

    ``rsample(sample_shape)`` returns ``[*sample_shape, *batch]`` with the implicit reparameterization gradient
    (module docstring) to both parameters. ``log_prob``, ``cdf``, ``mean``, ``variance``, ``entropy`` and KL
    registrations are torch's (this is a subclass of ``torch.distributions.Gamma``).
    """

    has_rsample = True

    def __init__(self, concentration, rate, validate_args=None):
        validate = torch.distributions.Distribution._validate_args if validate_args is None else bool(validate_args)
        concentration, rate = _special.float_params("Gamma", concentration=concentration, rate=rate)
        if validate:
            _special.check_positive("Gamma", "concentration", concentration)
            _special.check_positive("Gamma", "rate", rate)
        super().__init__(concentration, rate, validate_args=False)
        self._validate_args = validate

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(Gamma, _instance)
        return super().expand(batch_shape, _instance=new)

    def rsample(self, sample_shape=torch.Size(), generator: torch.Generator | None = None) -> torch.Tensor:
        """Exact sample ``[*sample_shape, *batch]``, differentiable in concentration and rate."""
        shape = self._extended_shape(sample_shape)
        x = rsample_standard_gamma(self.concentration.expand(shape), generator=generator)
        z = x / self.rate.expand(shape)
        tiny = torch.finfo(z.dtype).tiny
        return z + (z.detach().clamp(min=tiny) - z.detach())  # keep z > 0 where x / rate underflows

    @lazy_property
    def _grep_location_scale(self):
        """(m, s) of the G-REP standardization, computed once per distribution (torch's ``lazy_property``):
        ``grep_transform`` and ``grep_log_prob`` of one G-REP step share them."""
        return (torch.special.digamma(self.concentration) - self.rate.log(),
                _special.trigamma(self.concentration).sqrt())

    def grep_transform(self) -> T.Transform:
        r"""G-REP standardization (Ruiz, Titsias & Blei 2016, section 3): z = T(eps) = exp(m + s eps) with
        m = E[log z] = psi(alpha) - log(rate) and s^2 = Var[log z] = psi'(alpha), so that eps = T^-1(z) has
        mean 0 and variance 1 for every (alpha, rate). ``T = Exp o Affine(m, s)``, event_dim 0; m and s are
        differentiable in the parameters."""
        m, s = self._grep_location_scale
        return T.ComposeTransform([T.AffineTransform(m, s), T.ExpTransform()])

    def grep_log_prob(self, eps: torch.Tensor) -> torch.Tensor:
        r"""log pi(eps; alpha, rate), the density of eps = T^-1(z) under ``grep_transform``, in the coordinate
        u = m + s eps = log z: log q(exp(u)) + u + log s, which simplifies to

            alpha (log rate + u) - rate exp(u) - lgamma(alpha) + log s.

        Equal to ``log_prob(T(eps)) + T.log_abs_det_jacobian(eps, T(eps))``, without the factor 1/z of
        d log q / dz (which overflows in float32 at the tiny samples of alpha << 1 once multiplied by the
        score-function weight). ``eps [*S, *batch]`` -> ``[*S, *batch]``."""
        alpha, rate = self.concentration, self.rate
        m, s = self._grep_location_scale
        u = m + s * eps
        return alpha * (rate.log() + u) - rate * u.exp() - torch.lgamma(alpha) + s.log()

    def __repr__(self):
        return f"Gamma(batch_shape={tuple(self.batch_shape)})"


__all__ = ["Gamma", "StandardGammaSample", "rsample_standard_gamma", "standard_gamma_grad",
           "standard_gamma_grad_reference"]
