"""The straight-through estimator (Bengio, Leonard & Courville 2013, section 4) with slope annealing
(Chung, Ahn & Bengio 2017, section 4). BIASED, and the bias does not vanish with the temperature.

The forward pass uses an exact sample of q; the backward pass treats the sample as if it were the
(tempered) mean of its distribution:
    Bernoulli logits a:        z = b + p - stopgrad(p),  b ~ Bernoulli(sigmoid(a)),  p = sigmoid(a / tau)
    OneHotCategorical logits:  z = h + p - stopgrad(p),  h ~ OneHotCategorical,      p = softmax(logits / tau)
    mixture index (MIXTURE):   the same for the one-hot index k ~ Cat(pi), p = softmax(log pi / tau), and
                               z = sum_k z_k (mu_k + sigma_k eps) (eps shared by k): pathwise in mu, sigma.
surrogate = objective(f(z)). With tau = 1 this is Jang et al.'s (2017, table 2) "ST"; "annealed ST" is the
slope-annealing trick, a slope 1/tau that grows as tau falls, on the schedule of relax.py
(tau_t = max(tau_min, tau0 exp(-anneal_rate t'))). The objective estimate is unbiased (exact samples); the
gradient is not. S evaluations of f.
"""

from __future__ import annotations

import torch
from torch.distributions import constraints
from torch.nn import functional as F

from mixvae.estimators.base import MIXTURE, EstimatorOutput, innermost, reduce_samples
from mixvae.estimators.gumbel_softmax import RELAXABLE
from mixvae.estimators.relax import Annealed, straight_through


class StraightThrough(Annealed):
    name = "straight_through"
    needs = (RELAXABLE,)
    unbiased = False

    def __init__(self, temperature: float = 1.0, temperature_min: float = 1.0, anneal_rate: float = 0.0,
                 anneal_every: int = 1, context_dim: int | None = None):
        super().__init__(temperature, temperature_min, anneal_rate, anneal_every, context_dim)

    def estimate(self, q, f, num_samples, objective, context):
        if MIXTURE(q):
            tau = self.temperature().to(q.log_weights.dtype)
            k = q.sample_index((num_samples,))  # [S, *batch]
            p = torch.softmax(q.log_weights / tau, -1)  # [*batch, K]
            y = straight_through(F.one_hot(k, q.num_components).to(p.dtype), p)  # [S, *batch, K]
            eps = torch.randn((num_samples, *q.loc.shape[:-2], q.loc.shape[-1]), dtype=q.loc.dtype,
                              device=q.loc.device)  # [S, *batch, D]
            z = (y.unsqueeze(-1) * (q.loc + q.scale * eps.unsqueeze(-2))).sum(-2)  # [S, *batch, D]
        else:
            base = innermost(q)
            logits = base.logits.expand(q.batch_shape + q.event_shape)  # [*batch, *event]
            tau = self.temperature().to(logits.dtype)
            sample = q.sample((num_samples,))  # [S, *batch, *event], exact, no gradient
            if base.support is constraints.boolean:
                p = torch.sigmoid(logits / tau)
            else:
                p = torch.softmax(logits / tau, -1)
            z = straight_through(sample, p)
        values = f(z)  # [S, *batch]
        surrogate = reduce_samples(values, objective)
        self.tick()
        return EstimatorOutput(surrogate.detach(), surrogate, {"temperature": tau.detach()},
                               values.new_zeros(()))
