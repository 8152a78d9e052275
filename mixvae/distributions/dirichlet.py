r"""Dirichlet(concentration) through Gamma variables, with implicit reparameterization gradients.

With independent x_i ~ Gamma(alpha_i, 1), z_i = x_i / sum_j x_j is Dirichlet(alpha) distributed. The pathwise
derivative holds the K gamma CDF values u_i = P(alpha_i, x_i) fixed (Figurnov, Mohamed & Mnih 2018, section 3.3):

    dz_i/dalpha_j = (dz_i/dx_j) (dx_j/dalpha_j),     dz_i/dx_j = (delta_ij - z_i) / s,    s = sum_k x_k,

with dx_j/dalpha_j from :func:`mixvae.distributions.gamma.standard_gamma_grad`. This is an unbiased gradient but
not the per-sample derivative of any single inverse CDF of z (that would be another, equally valid, choice of
the noise); so the per-sample reference is the same construction evaluated in mpmath
(:func:`dirichlet_jacobian_reference`).

Numerics. The gammas are drawn and normalised in float64 (also for float32 parameters) and z is rounded once.
The backward pass of the normalisation never forms 1 - z_i or s - x_j (they cancel when one component holds
almost all the mass, e.g. Beta(1e3, 1e-2)): for an upstream gradient v,

    dL/dx_j = (v_j sum_{i != j} z_i - sum_{i != j} v_i z_i) / s,

with the sums over i != j taken as exclusive prefix + suffix sums (no subtraction), O(K) per sample.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from mixvae.distributions import _special
from mixvae.distributions.gamma import StandardGammaSample, standard_gamma_grad_reference


def _exclusive_sum(t: torch.Tensor) -> torch.Tensor:
    """sum_{i != j} t_i over the last axis, without subtracting t_j: ``[..., K] -> [..., K]``."""
    zero = torch.zeros_like(t[..., :1])
    before = torch.cat([zero, t[..., :-1].cumsum(-1)], -1)
    after = torch.cat([t[..., 1:].flip(-1).cumsum(-1).flip(-1), zero], -1)
    return before + after


class Normalize(torch.autograd.Function):
    """z = x / sum(x) over the last axis ``[..., K]`` (x > 0), with the cancellation-free backward above."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        s = x.sum(-1, keepdim=True)
        z = x / s
        ctx.save_for_backward(z, s)
        return z

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_z):
        z, s = ctx.saved_tensors  # in z = x / s the sums stay representable where s^2 would underflow
        return (grad_z * _exclusive_sum(z) - _exclusive_sum(grad_z * z)) / s


def dirichlet_from_standard_gamma(concentration: torch.Tensor, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """z = x / sum(x) for given standard gamma draws x ``[*S, *batch, K]`` (the noise, float64), differentiable
    in ``concentration`` ``[*batch, K]``; returned in ``dtype``, clamped to its smallest normal number."""
    alpha = concentration.to(torch.float64).expand(x.shape)
    if torch.is_grad_enabled() and concentration.requires_grad:
        x = StandardGammaSample.apply(alpha, x)
    z = Normalize.apply(x).to(dtype)
    tiny = torch.finfo(dtype).tiny
    return z + (z.detach().clamp(min=tiny) - z.detach())


def sample_standard_gamma(concentration: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Standard gamma draws ``shape`` = ``[*S, *batch, K]`` in float64, no gradient (the noise of rsample)."""
    with torch.no_grad():
        alpha = concentration.detach().to(torch.float64).expand(shape)
        return torch._standard_gamma(alpha).clamp_(min=torch.finfo(torch.float64).tiny)


def dirichlet_jacobian_reference(concentration, x, dps: int = 40) -> torch.Tensor:
    """Per-sample J_ij = dz_i/dalpha_j of :func:`dirichlet_from_standard_gamma`, float64 ``[..., K, K]``, from
    x ``[..., K]``: the gamma derivatives by :func:`~mixvae.distributions.gamma.standard_gamma_grad_reference`
    (mpmath), the normalisation's Jacobian (delta_ij s - x_i) / s^2 in exact rational arithmetic on the floats."""
    from fractions import Fraction

    alpha = torch.as_tensor(concentration, dtype=torch.float64).expand(x.shape)
    x = torch.as_tensor(x, dtype=torch.float64)
    dx = standard_gamma_grad_reference(alpha, x, dps=dps)  # [..., K]
    k = x.shape[-1]
    out = torch.empty(*x.shape, k, dtype=torch.float64)
    flat_x, flat_dx, flat_out = x.reshape(-1, k).tolist(), dx.reshape(-1, k).tolist(), out.view(-1, k, k)
    for n, (xs, ds) in enumerate(zip(flat_x, flat_dx)):
        fx = [Fraction(v) for v in xs]
        s = sum(fx)
        for i in range(k):
            for j in range(k):
                dz = ((s if i == j else 0) - fx[i]) / (s * s)
                flat_out[n, i, j] = float(dz * Fraction(ds[j]))
    return out


class Dirichlet(torch.distributions.Dirichlet):
    r"""Dirichlet(alpha) on the simplex: p(z) = Gamma(sum_i alpha_i) / prod_i Gamma(alpha_i) prod_i z_i^(alpha_i-1).

    Args:
        concentration: ``[*batch, K]`` alpha (> 0), K >= 2.
        validate_args: check the parameters, raising a one-line ``ValueError`` naming the argument (None:
            torch's global default); samples passed to ``log_prob`` are then checked too.

    ``rsample(sample_shape)`` returns ``[*sample_shape, *batch, K]`` with the implicit reparameterization gradient
    through Gamma variables (module docstring). ``log_prob``, ``mean``, ``variance``, ``entropy`` and KL
    registrations are torch's (a subclass of ``torch.distributions.Dirichlet``).
    """

    has_rsample = True

    def __init__(self, concentration, validate_args=None):
        validate = torch.distributions.Distribution._validate_args if validate_args is None else bool(validate_args)
        (concentration,) = _special.float_params("Dirichlet", concentration=concentration)
        if concentration.dim() < 1 or concentration.shape[-1] < 2:
            raise ValueError(
                f"Dirichlet: concentration must have shape [..., K] with K >= 2, got {tuple(concentration.shape)}")
        if validate:
            _special.check_positive("Dirichlet", "concentration", concentration)
        super().__init__(concentration, validate_args=False)
        self._validate_args = validate

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(Dirichlet, _instance)
        return super().expand(batch_shape, _instance=new)

    def rsample(self, sample_shape=torch.Size()) -> torch.Tensor:
        """Exact sample ``[*sample_shape, *batch, K]``, differentiable in concentration."""
        x = sample_standard_gamma(self.concentration, self._extended_shape(sample_shape))
        return self.rsample_from_standard_gamma(x)

    def rsample_from_standard_gamma(self, x: torch.Tensor) -> torch.Tensor:
        """The sample built from given standard gamma draws x ``[*S, *batch, K]`` (x_i ~ Gamma(alpha_i, 1)): the
        seam the tests and benchmarks use to fix the noise."""
        return dirichlet_from_standard_gamma(self.concentration, x, self.concentration.dtype)

    def __repr__(self):
        return f"Dirichlet(batch_shape={tuple(self.batch_shape)}, K={self.event_shape[0]})"


__all__ = ["Dirichlet", "Normalize", "dirichlet_from_standard_gamma", "dirichlet_jacobian_reference",
           "sample_standard_gamma"]
