"""The decoder: an MLP giving independent Bernoulli pixels, p(x | z) = prod_i Bernoulli(x_i; sigmoid(a_i(z)))."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mixvae.models.mlp import mlp
from mixvae.models.ops import bernoulli_log_prob


class BernoulliDecoder(nn.Module):
    """z [*, D] -> pixel logits a(z) [*, x_dim]; works for any leading shape (samples, batch, ...).

    The output bias starts at logit(train_mean), as in IWAE (Burda et al. 2016): the decoder then begins at
    the best image-independent model and the first steps are not spent learning the mean digit.
    """

    def __init__(self, latent_dim: int, hidden: list[int], x_dim: int, activation: str = "tanh",
                 train_mean: Tensor | None = None):
        super().__init__()
        self.body = mlp([latent_dim, *hidden], activation)
        self.out = nn.Linear(hidden[-1] if hidden else latent_dim, x_dim)
        if train_mean is not None:
            with torch.no_grad():
                self.out.bias.copy_(torch.logit(train_mean.detach().float().cpu().clamp(1e-3, 1 - 1e-3)))

    def forward(self, z: Tensor) -> Tensor:
        return self.out(self.body(z))

    def log_prob(self, x: Tensor, z: Tensor) -> Tensor:
        """log p(x | z): x [*batch, x_dim] in {0, 1} (or [0, 1]), z [*S, *batch, D] -> [*S, *batch].

        Bernoulli log-likelihood with logits a: x a - softplus(a) summed over pixels (= -BCE with logits),
        written so that x broadcasts against the sample axes without being copied (see models/ops.py for why it
        is not F.softplus).
        """
        return bernoulli_log_prob(self(z), x)
