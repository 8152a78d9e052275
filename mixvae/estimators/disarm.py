"""DisARM (Dong, Mnih & Tucker 2020, "DisARM: an antithetic gradient estimator for binary latent variables",
eq. 6 and its factorized multivariate form) for Bernoulli latents. ELBO objective; 2 S evaluations of f.

For b ~ prod_i Bernoulli(sigmoid(a_i)) drawn as b_i = 1[u_i < sigmoid(a_i)], u ~ U(0, 1)^n, the antithetic
partner is b~_i = 1[1 - u_i < sigmoid(a_i)] (each of b, b~ is an exact sample of q; together they are negatively
correlated). With f held fixed, an unbiased estimate of d/da_i E_q[f(b)] is
    g_i = 1/2 (f(b) - f(b~)) (-1)^(b~_i) 1[b_i != b~_i] sigmoid(|a_i|),
the ARM estimator (Yin & Zhou 2019) Rao-Blackwellized over the noise that b and b~ do not resolve. f's own
dependence on the parameters (the decoder, -log q(z) in a VAE) gets its pathwise part at both samples:
    surrogate = (1/2S) sum_s (f(b_s) + f(b~_s)) + sum_i stopgrad(mean_s g_{s,i}) a_i .
Needs Independent(Bernoulli) (or Bernoulli) with logits: ``BINARY``. Unbiased for the ELBO; the paper's
multi-sample (IWAE) variant is not implemented here (objective="iwae" is refused with one line).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import constraints

from mixvae.estimators.base import Estimator, EstimatorOutput, Need, innermost, reduce_samples

BINARY = Need("binary latents with logits (Bernoulli, also in Independent)",
              lambda q: innermost(q).support is constraints.boolean
              and isinstance(getattr(innermost(q), "logits", None), Tensor))


class DisARM(Estimator):
    name = "disarm"
    needs = (BINARY,)
    objectives = ("elbo",)

    @staticmethod
    def weight(a: Tensor) -> Tensor:
        """sigmoid(|a|): the factor that makes the antithetic difference unbiased (Dong et al. 2020, eq. 6)."""
        return torch.sigmoid(a.abs())

    def estimate(self, q, f, num_samples, objective, context):
        S = num_samples
        logits = innermost(q).logits.expand(q.batch_shape + q.event_shape)  # [*batch, *event]
        u = torch.rand((S, *logits.shape), dtype=logits.dtype, device=logits.device)  # [S, *batch, *event]
        a = logits.detach()
        p = torch.sigmoid(a)
        b = (u < p).to(a.dtype)
        b_anti = (1 - u < p).to(a.dtype)
        values = f(torch.cat([b, b_anti]))  # [2S, *batch]
        f_b, f_anti = values.detach()[:S], values.detach()[S:]  # [S, *batch]
        event_dims = tuple(range(-len(q.event_shape), 0))
        diff = (0.5 * (f_b - f_anti)).reshape(*f_b.shape, *([1] * len(q.event_shape)))  # [S, *batch, 1..]
        sign = 1 - 2 * b_anti  # (-1)^(b~_i)
        coef = (diff * sign * (b != b_anti).to(a.dtype) * self.weight(a)).mean(0)  # [*batch, *event]
        term = coef * logits  # [*batch, *event]: its gradient in the logits is coef
        surrogate = reduce_samples(values, "elbo") + (term.sum(event_dims) if event_dims else term)
        return EstimatorOutput(reduce_samples(values.detach(), "elbo"), surrogate,
                               {"pairs_differ": (b != b_anti).to(a.dtype).mean()}, values.new_zeros(()))
