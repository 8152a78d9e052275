"""Reweighted wake-sleep, RWS (Bornschein & Bengio 2015, "Reweighted wake-sleep": its importance-sampled model
gradient and its "wake-phase Q update"). NOT an unbiased gradient of any bound: ``unbiased`` is False. Needs S >= 2.

With z_1..S ~ q (no gradient), f_s = f(z_s) and self-normalized importance weights w_s = softmax_s(f_s):
    the model (everything f depends on besides q): the gradient of the objective with the samples held fixed,
        iwae: sum_s w_s grad log p(x, z_s)   (the IWAE-S bound's gradient for the model)
        elbo: (1/S) sum_s grad log p(x, z_s)
    q (wake phase):       sum_s w_s grad log q(z_s), the self-normalized importance-sampling estimate of
        -grad KL(p(z | x) || q), which RWS follows instead of the bound's gradient.
f is taken to be log p(x, z) - log q(z), a VAE's log-weight: log p(x, z) = f + log q (so q's parameters enter
it through log q only). The surrogate
    objective(f(z_s) + log q(z_s) - stopgrad log q(z_s)) + sum_s stopgrad(w_s) log q(z_s)
has exactly these gradients: the first term is the objective of log p(x, z_s) with z held fixed (the -log q
inside f and the added log q cancel for q), the second is the wake-phase q update. The sleep-phase update
(fitting q to samples of the model) is not included.
Works on any q with sample() and log_prob() (discrete, layered, mixtures). S evaluations of f.
metrics: ess, the effective sample size 1 / sum_s w_s^2 (mean over the batch).
"""

from __future__ import annotations

import torch

from mixvae.estimators.base import Estimator, EstimatorOutput, reduce_samples


class ReweightedWakeSleep(Estimator):
    name = "rws"
    unbiased = False
    min_samples = 2

    def estimate(self, q, f, num_samples, objective, context):
        z = q.sample((num_samples,))  # [S, *batch, *event], no gradient
        log_q = q.log_prob(z)  # [S, *batch], differentiable in q's parameters
        values = f(z)  # [S, *batch]
        w = torch.softmax(values.detach(), 0)  # [S, *batch], self-normalized importance weights
        model_part = reduce_samples(values + log_q - log_q.detach(), objective)  # [*batch]
        surrogate = model_part + (w * log_q).sum(0)
        ess = 1.0 / w.pow(2).sum(0)
        return EstimatorOutput(reduce_samples(values.detach(), objective), surrogate, {"ess": ess.mean()},
                               values.new_zeros(()))
