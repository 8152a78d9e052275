"""Posterior families and priors of the VAE, chosen in the config (``model/posterior=...``, ``model/prior=...``).

A posterior family knows three things about its latent space:
    build_encoder(x_dim, hidden, latent_dim, activation, top_linear) -> nn.Module mapping x [*batch, x_dim] to a
        torch Distribution q(z | x) with batch shape [*batch] and event shape (latent_dim,);
    embed(z) -> the decoder's input features (z itself, or (cos z, sin z) on the circle), embed_dim(D) their size.
A prior is an nn.Module with log_prob(z) [..., D] -> [...] (summed over the latent dimensions) and sample(shape).

Adding a family is one class here (plus the distribution, if torch lacks it) and one yaml in
configs/model/posterior/; the estimators read what they need of q from the distribution itself (see
``mixvae.estimators.base.Needs``), so a family never names an estimator.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, Independent

from mixvae.models.encoder import MixtureEncoder
from mixvae.models.mlp import mlp
from mixvae.models.ops import softplus

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


# ---- posterior families ------------------------------------------------------------------------------------------
class GaussianMixture:
    """q(z | x) = sum_k pi_k N(z; mu_k, diag sigma_k^2), K = ``num_components`` (K = 1: the Gaussian VAE)."""

    def __init__(self, num_components: int = 1, min_scale: float = 1e-3, init_spread: float = 1.0):
        if int(num_components) < 1:
            raise ValueError(f"model.num_components (K) must be >= 1, got {num_components}")
        self.num_components, self.min_scale, self.init_spread = int(num_components), min_scale, init_spread

    def build_encoder(self, x_dim, hidden, latent_dim, activation, top_linear) -> nn.Module:
        return MixtureEncoder(x_dim, hidden, self.num_components, latent_dim, activation, self.min_scale,
                              self.init_spread, top_linear=top_linear)

    def embed(self, z: Tensor) -> Tensor:
        return z

    def embed_dim(self, latent_dim: int) -> int:
        return latent_dim


class _FactorizedFamily:
    """A family of D independent univariate distributions whose parameters are heads on the encoder's last layer.

    Subclasses set ``params`` (the parameter names, in head order) and implement ``distribution(*raw)``: the
    raw head outputs [*batch, D] each -> the univariate torch distribution with batch [*batch, D].
    """

    params: tuple[str, ...] = ()

    def __init__(self, min_param: float = 1e-3):
        self.min_param = float(min_param)

    def positive(self, raw: Tensor) -> Tensor:
        return softplus(raw) + self.min_param

    def distribution(self, *raw: Tensor) -> Distribution:
        raise NotImplementedError

    def build_encoder(self, x_dim, hidden, latent_dim, activation, top_linear) -> nn.Module:
        return FactorizedEncoder(self, x_dim, hidden, latent_dim, activation, top_linear)

    def embed(self, z: Tensor) -> Tensor:
        return z

    def embed_dim(self, latent_dim: int) -> int:
        return latent_dim


class NormalFamily(_FactorizedFamily):
    """q(z | x) = prod_d N(z_d; mu_d, sigma_d^2) as a plain torch Normal (the mixture with K = 1, without Graves)."""

    params = ("loc", "scale")

    def distribution(self, loc, scale):
        return torch.distributions.Normal(loc, self.positive(scale), validate_args=False)


class GammaFamily(_FactorizedFamily):
    """q(z | x) = prod_d Gamma(z_d; alpha_d, beta_d) (shape, rate), with implicit reparameterization gradients."""

    params = ("concentration", "rate")

    def distribution(self, concentration, rate):
        from mixvae.distributions import Gamma

        return Gamma(self.positive(concentration), self.positive(rate), validate_args=False)


class BetaFamily(_FactorizedFamily):
    """q(z | x) = prod_d Beta(z_d; a_d, b_d), reparameterized through two Gamma variables."""

    params = ("concentration1", "concentration0")

    def distribution(self, a, b):
        from mixvae.distributions import Beta

        return Beta(self.positive(a), self.positive(b), validate_args=False)


class VonMisesFamily(_FactorizedFamily):
    """q(z | x) = prod_d VonMises(z_d; mu_d, kappa_d) on the circle; the decoder sees (cos z, sin z)."""

    params = ("loc", "concentration")

    def distribution(self, loc, concentration):
        from mixvae.distributions import VonMises

        return VonMises(loc, self.positive(concentration), validate_args=False)

    def embed(self, z: Tensor) -> Tensor:
        return torch.cat([torch.cos(z), torch.sin(z)], -1)

    def embed_dim(self, latent_dim: int) -> int:
        return 2 * latent_dim


class FactorizedEncoder(nn.Module):
    """x [*batch, x_dim] -> Independent(family.distribution(heads(body(x))), 1): one Linear head per parameter."""

    def __init__(self, family: _FactorizedFamily, x_dim, hidden, latent_dim, activation, top_linear):
        super().__init__()
        self.family, self.latent_dim = family, latent_dim
        self.body = mlp([x_dim, *hidden], activation, last_activation=not top_linear)
        h = hidden[-1] if hidden else x_dim
        self.heads = nn.ModuleDict({name: nn.Linear(h, latent_dim) for name in family.params})

    def forward(self, x: Tensor) -> Distribution:
        h = self.body(x)
        raw = [self.heads[name](h) for name in self.family.params]  # each [*batch, D]
        return Independent(self.family.distribution(*raw), 1)


# ---- priors -----------------------------------------------------------------------------------------------------
class StandardNormal(nn.Module):
    """p(z) = N(0, I)."""

    def log_prob(self, z: Tensor) -> Tensor:
        """[..., D] -> [...]."""
        return -0.5 * z.pow(2).sum(-1) - z.shape[-1] * _HALF_LOG_2PI

    def sample(self, shape, latent_dim: int) -> Tensor:
        return torch.randn(*shape, latent_dim)


class _TorchPrior(nn.Module):
    """A fixed prior of independent, identical univariate factors given by a torch distribution."""

    def factor(self, like: Tensor) -> Distribution:
        raise NotImplementedError

    def log_prob(self, z: Tensor) -> Tensor:
        return self.factor(z).log_prob(z).sum(-1)

    def sample(self, shape, latent_dim: int) -> Tensor:
        return self.factor(torch.zeros(())).sample((*shape, latent_dim))


class GammaPrior(_TorchPrior):
    """p(z) = prod_d Gamma(z_d; concentration, rate); Gamma(0.3, 0.3) in Figurnov et al.'s VAE experiments."""

    def __init__(self, concentration: float = 0.3, rate: float = 0.3):
        super().__init__()
        if not (concentration > 0 and rate > 0):
            raise ValueError(f"model.prior needs concentration > 0 and rate > 0, got {concentration}, {rate}")
        self.concentration, self.rate = float(concentration), float(rate)

    def factor(self, like):
        c = torch.tensor(self.concentration, dtype=like.dtype, device=like.device)
        return torch.distributions.Gamma(c, torch.tensor(self.rate, dtype=like.dtype, device=like.device))


class BetaPrior(_TorchPrior):
    """p(z) = prod_d Beta(z_d; a, b); Beta(1, 1) is the uniform prior on (0, 1)."""

    def __init__(self, concentration1: float = 1.0, concentration0: float = 1.0):
        super().__init__()
        if not (concentration1 > 0 and concentration0 > 0):
            raise ValueError(f"model.prior needs concentrations > 0, got {concentration1}, {concentration0}")
        self.a, self.b = float(concentration1), float(concentration0)

    def factor(self, like):
        return torch.distributions.Beta(torch.tensor(self.a, dtype=like.dtype, device=like.device),
                                        torch.tensor(self.b, dtype=like.dtype, device=like.device))


class UniformCircle(nn.Module):
    """p(z) = prod_d 1 / (2 pi) on [-pi, pi): the uniform prior for von Mises latents."""

    def log_prob(self, z: Tensor) -> Tensor:
        return torch.full(z.shape[:-1], -z.shape[-1] * math.log(2 * math.pi), dtype=z.dtype, device=z.device)

    def sample(self, shape, latent_dim: int) -> Tensor:
        return (torch.rand(*shape, latent_dim) * 2 - 1) * math.pi
