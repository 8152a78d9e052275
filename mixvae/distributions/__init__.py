"""Distributions with reparameterized (pathwise) samples.

- :class:`DiagGaussianMixture`: mixture of diagonal Gaussians, Graves' transform gradients (Graves 2016).
- :class:`Gamma`, :class:`Beta`, :class:`Dirichlet`, :class:`VonMises`: implicit reparameterization gradients
  (Figurnov, Mohamed & Mnih 2018); Gamma and Beta offer ``grep_transform()`` (Ruiz, Titsias & Blei 2016).
"""

from mixvae.distributions.beta import Beta
from mixvae.distributions.diag_gaussian_mixture import DiagGaussianMixture
from mixvae.distributions.dirichlet import Dirichlet
from mixvae.distributions.gamma import Gamma
from mixvae.distributions.von_mises import VonMises

__all__ = ["Beta", "DiagGaussianMixture", "Dirichlet", "Gamma", "VonMises"]
