"""VAEs with discrete latents (Jang et al. 2017, section 4.3): Bernoulli or one-hot categorical codes, an MLP
encoder and a Bernoulli MLP decoder, a uniform prior; and the layered posterior that multi-layer models use.

The model interface is the one the training loop and the estimators use for every model of the suite:
    posterior(x) -> Distribution (batch [B]);  log_weight_fn(x, q) -> f: z [S', B, *event] -> [S', B];
    forward(x, estimator, num_samples, objective) -> EstimatorOutput;  evaluate_batch(x, S, chunk) -> dict.

Relaxed codes. The relaxation estimators (gumbel_softmax) evaluate f at points of [0, 1]^n or of the simplex.
f extends log q(z) and log p(z) from the vertices by linearity in z (z.log sigmoid(a) + (1 - z).log sigmoid(-a)
per bit, z.log softmax(l) per one-hot variable), exact at every discrete z; the decoder reads the relaxed z as
it is. With ``analytic_kl`` (Jang et al.'s objective) the ELBO's f is log p(x | z) - KL(q || p), the KL in
closed form, so only the reconstruction term sees the relaxation; the IWAE objective and every evaluation use
the exact log-weight log p(x | z) + log p(z) - log q(z).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.distributions import Bernoulli, Distribution, Independent, OneHotCategorical
from torch.nn import functional as F

from mixvae.models.decoder import BernoulliDecoder
from mixvae.models.mlp import mlp

LATENTS = ("bernoulli", "categorical")


class LayeredPosterior(Distribution):
    """q(h_1 | x) q(h_2 | h_1) ... q(h_L | h_{L-1}) as ONE distribution over z = [h_1, ..., h_L].

    first: the distribution of h_1, batch [*batch], event [n_1];
    conditionals: callables h_{l-1} [*S, *batch, n_{l-1}] -> the distribution of h_l (batch [*S, *batch],
        event [n_l]);
    sizes: [n_1, ..., n_L].
    sample(shape) -> [*shape, *batch, sum n_l], drawn layer by layer (no gradient); log_prob(z) splits z into
    its layers and sums log q(h_l | h_{l-1}), differentiable in every layer's parameters. The support is the
    first layer's kind (binary for a sigmoid belief net). Only sample() and log_prob(): the score-function
    estimators (score_function, vimco, rws) fit it, the relaxations and pathwise ones refuse it.
    """

    arg_constraints: dict = {}
    has_rsample = False

    def __init__(self, first: Distribution, conditionals: Sequence[Callable[[Tensor], Distribution]],
                 sizes: Sequence[int]):
        if len(sizes) != len(conditionals) + 1:
            raise ValueError(f"LayeredPosterior: {len(sizes)} layer sizes for {len(conditionals) + 1} layers")
        self.first, self.conditionals, self.sizes = first, list(conditionals), [int(n) for n in sizes]
        super().__init__(first.batch_shape, torch.Size([sum(self.sizes)]), validate_args=False)

    @property
    def support(self):
        return self.first.support

    def layers(self, value: Tensor) -> list[Tensor]:
        """z [..., sum n_l] -> [h_1 [..., n_1], ..., h_L [..., n_L]]."""
        return list(value.split(self.sizes, -1))

    @torch.no_grad()
    def sample(self, sample_shape=torch.Size()) -> Tensor:
        h = self.first.sample(sample_shape)  # [*shape, *batch, n_1]
        out = [h]
        for conditional in self.conditionals:
            h = conditional(h).sample()  # [*shape, *batch, n_l]
            out.append(h)
        return torch.cat(out, -1)

    def log_prob(self, value: Tensor) -> Tensor:
        """value [*S, *batch, sum n_l] -> [*S, *batch]."""
        hs = self.layers(value)
        total = self.first.log_prob(hs[0])
        for conditional, prev, h in zip(self.conditionals, hs[:-1], hs[1:], strict=True):
            total = total + conditional(prev).log_prob(h)
        return total

    def expand(self, batch_shape, _instance=None):
        raise NotImplementedError("LayeredPosterior cannot be expanded (its layers are built from inputs)")

    def __repr__(self):
        return f"LayeredPosterior(sizes={self.sizes}, batch_shape={tuple(self.batch_shape)})"


def bernoulli_code_log_prob(logits: Tensor, z: Tensor) -> Tensor:
    """sum_i z_i log sigmoid(a_i) + (1 - z_i) log sigmoid(-a_i) = sum_i z_i a_i - softplus(a_i) over the last
    axis: log Bernoulli(z; sigmoid(a)) at z in {0, 1}, linear in z in between. Broadcasts."""
    return (z * logits - F.softplus(logits)).sum(-1)


class DiscreteVAE(nn.Module):
    """A VAE with ``latent_dim`` Bernoulli latents, or ``latent_dim`` one-hot variables of ``num_classes`` classes.

    Jang et al. (2017, section 4.3): 784-512-256 ReLU encoder, the mirror decoder, 200 Bernoulli or 20 x 10
    categorical latents, a uniform prior (Bernoulli(1/2) per bit, 1/K per class).

    Args:
        x_dim: data dimension (784).
        latent: "bernoulli" | "categorical".
        latent_dim: number of latent variables (bits, or categorical variables).
        num_classes: classes per categorical variable (unused for bernoulli).
        hidden: encoder hidden sizes; the decoder uses them reversed.
        activation: see ``mixvae.models.mlp.ACTIVATIONS``.
        analytic_kl: for objective="elbo", f(z) = log p(x | z) - KL(q || p) (closed form), as Jang et al.
        train_mean: [x_dim] mean training image, for the decoder's initial output bias.
    """

    def __init__(self, x_dim: int, latent: str = "bernoulli", latent_dim: int = 200, num_classes: int = 10,
                 hidden: Sequence[int] = (512, 256), activation: str = "relu", analytic_kl: bool = True,
                 train_mean: Tensor | None = None):
        super().__init__()
        if latent not in LATENTS:
            raise ValueError(f"model.latent must be one of {', '.join(LATENTS)}, got {latent!r}")
        if latent_dim < 1 or (latent == "categorical" and num_classes < 2):
            raise ValueError(f"model.latent_dim must be >= 1 and model.num_classes >= 2, got {latent_dim}, "
                             f"{num_classes}")
        hidden = list(hidden)
        self.latent, self.latent_dim, self.analytic_kl = latent, int(latent_dim), bool(analytic_kl)
        self.num_classes = int(num_classes) if latent == "categorical" else 1
        code = self.latent_dim * self.num_classes
        self.encoder = nn.Sequential(mlp([x_dim, *hidden], activation), nn.Linear(hidden[-1] if hidden else x_dim,
                                                                                  code))
        self.decoder = BernoulliDecoder(code, hidden[::-1], x_dim, activation, train_mean)

    def posterior(self, x: Tensor) -> Distribution:
        """q(z | x) for x [B, x_dim]: Independent(Bernoulli) with event [n], or Independent(OneHotCategorical)
        with event [n, K]; batch shape [B]."""
        logits = self.encoder(x)  # [B, n * K]
        if self.latent == "bernoulli":
            return Independent(Bernoulli(logits=logits, validate_args=False), 1)
        logits = logits.unflatten(-1, (self.latent_dim, self.num_classes))  # [B, n, K]
        return Independent(OneHotCategorical(logits=logits, validate_args=False), 1)

    def _logits(self, q: Distribution) -> Tensor:
        return q.base_dist.logits  # [B, n] or [B, n, K] (OneHotCategorical's are normalized)

    def code_log_prob(self, q: Distribution, z: Tensor) -> tuple[Tensor, Tensor]:
        """(log q(z), log p(z)) [S', B] for z [S', B, *event], linear in z between the vertices."""
        logits = self._logits(q)
        if self.latent == "bernoulli":
            # log Bernoulli(z; 1/2) = z log 1/2 + (1 - z) log 1/2 = -log 2 per bit, for every z in [0, 1]
            return bernoulli_code_log_prob(logits, z), z.new_full(z.shape[:-1], -z.shape[-1] * math.log(2.0))
        log_q = (z * torch.log_softmax(logits, -1)).sum((-1, -2))
        return log_q, z.sum((-1, -2)) * -math.log(self.num_classes)

    def kl(self, q: Distribution) -> Tensor:
        """KL(q || uniform prior) [B], in closed form."""
        logits = self._logits(q)
        if self.latent == "bernoulli":
            p = torch.sigmoid(logits)
            return (p * F.logsigmoid(logits) + (1 - p) * F.logsigmoid(-logits) + math.log(2.0)).sum(-1)
        log_p = torch.log_softmax(logits, -1)
        return (log_p.exp() * (log_p + math.log(self.num_classes))).sum((-1, -2))

    def log_likelihood(self, x: Tensor, z: Tensor) -> Tensor:
        """log p(x | z): x [B, x_dim], z [S', B, *event] -> [S', B]."""
        return self.decoder.log_prob(x, z.flatten(-2) if self.latent == "categorical" else z)

    def log_weight_fn(self, x: Tensor, q: Distribution, analytic_kl: bool = False) -> Callable[[Tensor], Tensor]:
        """f(z) = log p(x | z) + log p(z) - log q(z | x): z [S', B, *event] -> [S', B];
        with analytic_kl, f(z) = log p(x | z) - KL(q || p) (the same expectation under q)."""
        if analytic_kl:
            kl = self.kl(q)  # [B]
            return lambda z: self.log_likelihood(x, z) - kl

        def f(z):
            log_q, log_p = self.code_log_prob(q, z)
            return self.log_likelihood(x, z) + log_p - log_q

        return f

    def forward(self, x: Tensor, estimator: nn.Module, num_samples: int, objective: str, **kwargs):
        q = self.posterior(x)
        f = self.log_weight_fn(x, q, analytic_kl=self.analytic_kl and objective == "elbo")
        return estimator(q, f, num_samples=num_samples, objective=objective, context=x, **kwargs)

    @torch.no_grad()
    def evaluate_batch(self, x: Tensor, num_samples: int, chunk: int) -> dict[str, Tensor]:
        """ELBO and IWAE-S from the same S draws of q with the exact log-weight; mean [B, n * K] = E_q[z]."""
        q = self.posterior(x)
        out = importance_sampled(q, self.log_weight_fn(x, q), x.shape[0], num_samples, chunk)
        return {"elbo": out["elbo"], "iwae": out["iwae"], "mean": q.mean.flatten(1)}


def importance_sampled(q: Distribution, log_weight: Callable[[Tensor], Tensor], batch: int, num_samples: int,
                       chunk: int) -> dict[str, Tensor]:
    """{"elbo": (1/S) sum_s f(z_s), "iwae": log (1/S) sum_s exp f(z_s), "sample_mean": (1/S) sum_s z_s}
    ([B], [B], [B, *event]) from S = num_samples draws of q, ``chunk`` at a time (f in blocks of ~1024 rows)."""
    per_block = max(1, 1024 // batch)
    f_sum = torch.zeros(batch, dtype=torch.float64)
    z_sum = None
    lse = []
    for start in range(0, num_samples, chunk):
        z = q.sample((min(chunk, num_samples - start),))  # [s, B, *event]
        f = torch.cat([log_weight(z[i:i + per_block]) for i in range(0, z.shape[0], per_block)])  # [s, B]
        f_sum = f_sum.to(f.device) + f.sum(0, dtype=torch.float64)
        z_sum = z.sum(0) if z_sum is None else z_sum + z.sum(0)
        lse.append(torch.logsumexp(f, 0))
    iwae = torch.logsumexp(torch.stack(lse), 0) - math.log(num_samples)
    return {"elbo": (f_sum / num_samples).to(iwae.dtype), "iwae": iwae, "sample_mean": z_sum / num_samples}
