"""Small helpers shared by the Gamma, Beta, Dirichlet and von Mises families (validation, special functions)."""

from __future__ import annotations

import torch
from torch.distributions.utils import broadcast_all


def trigamma(x: torch.Tensor) -> torch.Tensor:
    """psi'(x) = d^2 log Gamma(x) / dx^2, differentiable (torch's polygamma has a backward)."""
    return torch.polygamma(1, x)


def check_positive(cls: str, name: str, value: torch.Tensor) -> None:
    """One-line ``ValueError`` naming ``name`` unless every entry of ``value`` is finite and > 0."""
    if not torch.isfinite(value).all():
        raise ValueError(f"{cls}: {name} contains NaN or inf")
    if not (value > 0).all():
        raise ValueError(f"{cls}: {name} must be > 0 (use softplus or exp of a network output)")


def check_finite(cls: str, name: str, value: torch.Tensor) -> None:
    if not torch.isfinite(value).all():
        raise ValueError(f"{cls}: {name} contains NaN or inf")


def float_params(cls: str, **params) -> tuple[torch.Tensor, ...]:
    """The parameters as broadcast tensors of one floating dtype; a one-line ``TypeError`` / ``ValueError``
    naming the arguments otherwise."""
    for name, value in params.items():
        if not isinstance(value, torch.Tensor | float | int):
            raise TypeError(f"{cls}: {name} must be a torch.Tensor or a number, got {type(value).__name__}")
    try:
        values = broadcast_all(*params.values())
    except (RuntimeError, ValueError):
        shapes = ", ".join(f"{n} {tuple(torch.as_tensor(v).shape)}" for n, v in params.items())
        raise ValueError(f"{cls}: parameters do not broadcast ({shapes})") from None
    if not values[0].dtype.is_floating_point:
        raise ValueError(f"{cls}: parameters must be floating point, got {values[0].dtype}")
    return values
