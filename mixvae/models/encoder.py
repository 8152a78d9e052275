"""The encoder: an MLP whose heads parameterize a K-component diagonal Gaussian mixture q(z | x)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mixvae.distributions import DiagGaussianMixture
from mixvae.models.mlp import mlp
from mixvae.models.ops import softplus


class MixtureEncoder(nn.Module):
    """x [B, x_dim] -> q(z | x) = sum_k pi_k N(z; mu_k, diag sigma_k^2) in D dimensions.

    Heads on the last hidden layer h: logits = W_l h [B, K], mu = W_mu h [B, K, D],
    sigma = softplus(W_s h) + min_scale [B, K, D] (the floor keeps log q finite far from the data).

    With K = 1 the logits head is a constant (log_softmax of one logit is 0), so q is exactly the Gaussian
    encoder of the VAE (Kingma & Welling 2014) and of IWAE (Burda et al. 2016).

    ``top_linear``: the last hidden layer has no activation (the heads see a linear layer of the one below), the
    layout of Nalisnick et al.'s code (784-500 ReLU-500 linear, then the heads).

    Symmetry breaking: components that start identical receive identical gradients through mu and sigma
    (only their weights differ), so the loc head's bias gets a fixed offset per component, drawn
    N(0, init_spread^2) and centred over k (zero when K = 1).
    """

    def __init__(self, x_dim: int, hidden: list[int], num_components: int, latent_dim: int,
                 activation: str = "tanh", min_scale: float = 1e-3, init_spread: float = 1.0,
                 top_linear: bool = False):
        super().__init__()
        self.num_components, self.latent_dim, self.min_scale = num_components, latent_dim, min_scale
        self.body = mlp([x_dim, *hidden], activation, last_activation=not top_linear)
        h = hidden[-1] if hidden else x_dim
        self.logits = nn.Linear(h, num_components)
        self.loc = nn.Linear(h, num_components * latent_dim)
        self.scale = nn.Linear(h, num_components * latent_dim)
        with torch.no_grad():
            offset = init_spread * torch.randn(num_components, latent_dim)
            self.loc.bias += (offset - offset.mean(0)).flatten()

    def forward(self, x: Tensor) -> DiagGaussianMixture:
        """x [*batch, x_dim] -> DiagGaussianMixture with batch shape [*batch], event shape (D,)."""
        h = self.body(x)
        kd = (*h.shape[:-1], self.num_components, self.latent_dim)
        loc = self.loc(h).reshape(kd)
        scale = softplus(self.scale(h)).reshape(kd) + self.min_scale
        # no validation: the heads give finite loc and scale > 0 by construction, and its checks would read
        # the device every step; a non-finite value is caught by the training loop (Trainer.check_finite)
        return DiagGaussianMixture(self.logits(h), loc, scale, validate_args=False)
