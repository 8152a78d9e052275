"""The VAE with a mixture posterior: MLP encoder (K-component diagonal Gaussian mixture), Bernoulli MLP decoder,
N(0, I) prior. ``MixtureVAE`` is the ``_target_`` of configs/model/*.yaml."""

from mixvae.models.decoder import BernoulliDecoder
from mixvae.models.encoder import MixtureEncoder
from mixvae.models.mlp import ACTIVATIONS, mlp
from mixvae.models.vae import MixtureVAE, log_prior

__all__ = ["ACTIVATIONS", "BernoulliDecoder", "MixtureEncoder", "MixtureVAE", "log_prior", "mlp"]
