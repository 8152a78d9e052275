"""The VAE: an MLP encoder giving q(z | x), an MLP decoder p(x | z), and a prior p(z), each chosen in the config.

Training goes through an estimator (mixvae/estimators), which owns the gradient: the model only supplies the
posterior q and the log-weight f(z) = log p(x | z) + log p(z) - log q(z | x). Evaluation (ELBO, the IWAE
bound on log p(x), active units) needs no estimator and is here.

The default is the suite's subject, a K-component diagonal Gaussian mixture posterior with an N(0, I) prior;
``posterior`` and ``prior`` take any family and prior of ``mixvae.models.families`` (configs/model/posterior/,
configs/model/prior/), ``decoder`` any decoder factory (configs/model/decoder/).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from mixvae.models.decoder import BernoulliDecoder
from mixvae.models.families import GaussianMixture, StandardNormal

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def log_prior(z: Tensor) -> Tensor:
    """log N(z; 0, I): [..., D] -> [...]."""
    return -0.5 * z.pow(2).sum(-1) - z.shape[-1] * _HALF_LOG_2PI


class MixtureVAE(nn.Module):
    """A one-stochastic-layer VAE; by default with a K-component diagonal Gaussian mixture posterior.

    Default sizes are the IWAE MNIST architecture (Burda et al. 2016, section 5.1): 784-200-200-D encoder and
    D-200-200-784 decoder with tanh units. K = 1 is exactly the Gaussian VAE.

    Args:
        x_dim: data dimension (784).
        num_components: K >= 1 mixture components of q(z | x) (used when ``posterior`` is None).
        latent_dim: D >= 1.
        hidden: encoder hidden sizes; the decoder uses them reversed.
        activation: see ``mixvae.models.mlp.ACTIVATIONS``.
        min_scale: floor added to every component scale (mixture posterior).
        init_spread: std of the per-component offsets of the initial means (see MixtureEncoder).
        train_mean: [x_dim] mean training image, for the decoder's initial output bias (None: zero bias).
        encoder_top_linear: the encoder's last hidden layer is linear (Nalisnick et al. 2016's layout).
        posterior: a family of ``mixvae.models.families`` (None: GaussianMixture(num_components, ...)).
        prior: an nn.Module with ``log_prob(z) [..., D] -> [...]`` (None: N(0, I)).
        decoder: factory (latent features, hidden, x_dim, activation, train_mean) -> decoder module with
            ``log_prob(x, features)`` (None: BernoulliDecoder); it sees ``posterior.embed(z)``.
        kl_warmup_steps: KL warm-up (Sonderby et al. 2016; Bowman et al. 2016): in training, the first N steps
            use f = log p(x | z) + beta (log p(z) - log q(z | x)) with beta rising linearly from 0 to 1 (a
            checkpointed step counter); evaluation always uses beta = 1. 0: none (the plain f).
    """

    def __init__(self, x_dim: int, num_components: int = 1, latent_dim: int = 50,
                 hidden: list[int] | tuple[int, ...] = (200, 200), activation: str = "tanh",
                 min_scale: float = 1e-3, init_spread: float = 1.0, train_mean: Tensor | None = None,
                 encoder_top_linear: bool = False, posterior=None, prior: nn.Module | None = None,
                 decoder: Callable[..., nn.Module] | None = None, kl_warmup_steps: int = 0):
        super().__init__()
        if num_components < 1:
            raise ValueError(f"model.num_components (K) must be >= 1, got {num_components}")
        if latent_dim < 1:
            raise ValueError(f"model.latent_dim (D) must be >= 1, got {latent_dim}")
        hidden = list(hidden)
        self.family = posterior if posterior is not None else GaussianMixture(num_components, min_scale,
                                                                              init_spread)
        self.encoder = self.family.build_encoder(x_dim, hidden, latent_dim, activation, encoder_top_linear)
        self.decoder = (decoder or BernoulliDecoder)(self.family.embed_dim(latent_dim), hidden[::-1], x_dim,
                                                     activation, train_mean)
        self.prior = prior if prior is not None else StandardNormal()
        if kl_warmup_steps < 0:
            raise ValueError(f"model.kl_warmup_steps must be >= 0, got {kl_warmup_steps}")
        self.kl_warmup_steps = int(kl_warmup_steps)
        if self.kl_warmup_steps:  # only then: checkpoints of models without warm-up keep their keys
            self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def kl_weight(self) -> Tensor | None:
        """beta of the KL warm-up for the current step (None: no warm-up, or not training)."""
        if not (self.kl_warmup_steps and self.training):
            return None
        return (self.step.double() / self.kl_warmup_steps).clamp(max=1.0)

    def posterior(self, x: Tensor) -> Distribution:
        """q(z | x) for x [B, x_dim]: batch shape [B], event shape (D,)."""
        return self.encoder(x)

    def log_joint(self, x: Tensor, z: Tensor) -> Tensor:
        """log p(x | z) + log p(z): x [B, x_dim], z [S, B, D] -> [S, B] (any leading S)."""
        return self.decoder.log_prob(x, self.family.embed(z)) + self.prior.log_prob(z)

    def log_weight_fn(self, x: Tensor, q: Distribution) -> Callable[[Tensor], Tensor]:
        """f(z) = log p(x, z) - log q(z | x), the estimators' integrand: z [S', B, D] -> [S', B].

        log q is the marginal mixture density (logsumexp over components), never the density of the component
        a sample came from. S' is free: enumeration evaluates f at K * S points.
        """
        beta = self.kl_weight()
        if beta is None:
            return lambda z: self.log_joint(x, z) - q.log_prob(z)
        return lambda z: (self.decoder.log_prob(x, self.family.embed(z))
                          + beta.to(z.dtype) * (self.prior.log_prob(z) - q.log_prob(z)))

    def forward(self, x: Tensor, estimator: nn.Module, num_samples: int, objective: str, **kwargs):
        """One estimator call on a batch x [B, x_dim]; returns its EstimatorOutput (objective/surrogate [B])."""
        q = self.posterior(x)
        out = estimator(q, self.log_weight_fn(x, q), num_samples=num_samples, objective=objective,
                        context=x, **kwargs)
        if self.kl_warmup_steps and self.training:
            out.metrics["train/kl_weight"] = self.kl_weight().detach()
            self.step += 1
        return out

    @torch.no_grad()
    def evaluate_batch(self, x: Tensor, num_samples: int, chunk: int) -> dict[str, Tensor]:
        """ELBO and IWAE bound from the same ``num_samples`` draws z_s ~ q(z | x), with no gradient.

        x [B, x_dim] -> dict of [B] tensors:
            elbo: (1/S) sum_s f(z_s), an S-sample estimate of the ELBO;
            iwae: log (1/S) sum_s exp f(z_s), the IWAE-S bound on log p(x) (Burda et al. 2016, eq. 8);
            mean: [B, D] the posterior mean E_q[z] (for active units).
        The samples are drawn ``chunk`` at a time (memory ~ B * chunk * D floats); the log-mean-exp is
        accumulated over chunks exactly. Each chunk goes through f in blocks of about 1024 (sample, image)
        rows, so that the decoder's [rows, x_dim] pixel logits stay in cache while the likelihood reads them (a
        whole chunk's, 500 x 100 x 784 floats, went through memory once per elementwise pass: 771 s -> see
        results/benchmarks/train_throughput.md for IWAE-5000 of the MNIST test set on one core).
        """
        q = self.posterior(x)
        log_weight = self.log_weight_fn(x, q)
        per_block = max(1, 1024 // x.shape[0])  # samples per block: about 1024 rows ([1024, 784] float32: 3 MiB)
        f_sum = torch.zeros(x.shape[0], device=x.device, dtype=torch.float64)
        lse = []
        for start in range(0, num_samples, chunk):
            z = q.sample((min(chunk, num_samples - start),))  # [s, B, D]
            f = torch.cat([log_weight(z[i:i + per_block]) for i in range(0, z.shape[0], per_block)])  # [s, B]
            f_sum += f.sum(0, dtype=torch.float64)
            lse.append(torch.logsumexp(f, 0))
        iwae = torch.logsumexp(torch.stack(lse), 0) - math.log(num_samples)
        return {"elbo": (f_sum / num_samples).to(x.dtype), "iwae": iwae, "mean": q.mean}
