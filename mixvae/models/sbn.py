"""Sigmoid belief networks (Neal 1992) with a mirrored inference network, as trained by NVIL (Mnih & Gregor
2014) and VIMCO (Mnih & Rezende 2016, section 6: SBNs with 1 and 3 layers of 200 units on binarized MNIST).

Generative model, L stochastic layers of n binary units each (h_1 nearest the data):
    p(h_L) = prod_i Bernoulli(sigmoid(b_i))                   (learned prior biases b [n])
    p(h_l | h_{l+1}) = Bernoulli(sigmoid(g_l(h_{l+1})))      (l = L-1 .. 1)
    p(x | h_1) = Bernoulli(sigmoid(g_0(h_1)))                 (output bias starts at logit(train_mean))
Inference network, the mirror image:
    q(h_1 | x) q(h_2 | h_1) ... q(h_L | h_{L-1}),  q(h_{l+1} | h_l) = Bernoulli(sigmoid(r_l(h_l)))
Every g and r is affine (the papers' linear SBN) unless ``hidden`` adds deterministic layers inside each one.
q is one LayeredPosterior (mixvae.models.discrete) over z = [h_1, ..., h_L] ([B, L * n]); f splits z again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.distributions import Bernoulli, Distribution, Independent

from mixvae.models.decoder import BernoulliDecoder
from mixvae.models.discrete import LayeredPosterior, bernoulli_code_log_prob, importance_sampled
from mixvae.models.mlp import mlp


def _affine(n_in: int, hidden: list[int], n_out: int, activation: str) -> nn.Module:
    return nn.Sequential(mlp([n_in, *hidden], activation), nn.Linear(hidden[-1] if hidden else n_in, n_out))


def _bernoulli(logits: Tensor) -> Distribution:
    return Independent(Bernoulli(logits=logits, validate_args=False), 1)


class SigmoidBeliefNet(nn.Module):
    """An L-layer SBN (``num_layers`` layers of ``latent_dim`` units) over x [B, x_dim] with its inference net.

    Args:
        x_dim: visible units (784).
        latent_dim: units per stochastic layer (200).
        num_layers: stochastic layers L (1 or 3 in VIMCO's table).
        hidden: deterministic hidden sizes inside each conditional (empty: the linear SBN).
        activation: for those hidden layers (``mixvae.models.mlp.ACTIVATIONS``).
        train_mean: [x_dim] mean training image, for the initial output bias of p(x | h_1).
    """

    def __init__(self, x_dim: int, latent_dim: int = 200, num_layers: int = 1, hidden: Sequence[int] = (),
                 activation: str = "tanh", train_mean: Tensor | None = None):
        super().__init__()
        if latent_dim < 1 or num_layers < 1:
            raise ValueError(f"model.latent_dim and model.num_layers must be >= 1, got {latent_dim}, {num_layers}")
        hidden = list(hidden)
        self.latent_dim, self.num_layers = int(latent_dim), int(num_layers)
        n = self.latent_dim
        self.inference = nn.ModuleList([_affine(x_dim, hidden, n, activation)] +
                                       [_affine(n, hidden, n, activation) for _ in range(num_layers - 1)])
        self.generative = nn.ModuleList([_affine(n, hidden, n, activation) for _ in range(num_layers - 1)])
        self.decoder = BernoulliDecoder(n, hidden[::-1], x_dim, activation, train_mean)  # p(x | h_1)
        self.prior_logits = nn.Parameter(torch.zeros(n))  # b: p(h_L)

    def posterior(self, x: Tensor) -> LayeredPosterior:
        """q(h_1..L | x) for x [B, x_dim]: batch [B], event [L * latent_dim]."""
        first = _bernoulli(self.inference[0](x))
        conditionals = [lambda h, r=r: _bernoulli(r(h)) for r in self.inference[1:]]
        return LayeredPosterior(first, conditionals, [self.latent_dim] * self.num_layers)

    def log_joint(self, x: Tensor, z: Tensor) -> Tensor:
        """log p(x, h_1..L): x [B, x_dim], z [S', B, L * n] -> [S', B]."""
        hs = z.split(self.latent_dim, -1)
        total = self.decoder.log_prob(x, hs[0]) + bernoulli_code_log_prob(self.prior_logits, hs[-1])
        for l, g in enumerate(self.generative):  # p(h_{l+1} | h_{l+2}), 0-based: h_l given h_{l+1}
            total = total + bernoulli_code_log_prob(g(hs[l + 1]), hs[l])
        return total

    def log_weight_fn(self, x: Tensor, q: Distribution) -> Callable[[Tensor], Tensor]:
        """f(z) = log p(x, z) - log q(z | x): z [S', B, L * n] -> [S', B]."""
        return lambda z: self.log_joint(x, z) - q.log_prob(z)

    def forward(self, x: Tensor, estimator: nn.Module, num_samples: int, objective: str, **kwargs):
        q = self.posterior(x)
        return estimator(q, self.log_weight_fn(x, q), num_samples=num_samples, objective=objective,
                         context=x, **kwargs)

    @torch.no_grad()
    def evaluate_batch(self, x: Tensor, num_samples: int, chunk: int) -> dict[str, Tensor]:
        """ELBO and IWAE-S (the importance-sampled bound of the papers' tables) from the same S draws of q;
        mean [B, L * n]: the Monte Carlo mean of those draws (a layered q has no closed-form mean)."""
        q = self.posterior(x)
        out = importance_sampled(q, self.log_weight_fn(x, q), x.shape[0], num_samples, chunk)
        return {"elbo": out["elbo"], "iwae": out["iwae"], "mean": out["sample_mean"]}
