"""Distributions with reparameterized (pathwise) samples.

- :class:`DiagGaussianMixture`: mixture of diagonal Gaussians, Graves' transform gradients (Graves 2016).
"""

from mixvae.distributions.diag_gaussian_mixture import DiagGaussianMixture

__all__ = ["DiagGaussianMixture"]
