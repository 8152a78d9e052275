"""Gradient diagnostics: variance and signal-to-noise ratio of an estimator's gradient at fixed parameters.

    stats = gradient_variance(est, q, f, params, repetitions=500, num_samples=1, objective="elbo")
    stats["grad/var_loc"], stats["grad/snr_loc"], ...

The same call works for a bare mixture with leaf parameters (tests) and for a VAE encoder:
    q:      a DiagGaussianMixture whose parameters are leaves (reused every repetition), or a zero-argument
            callable returning a fresh one (e.g. `lambda: encoder(x)`), rebuilt every repetition so each
            backward pass has its own graph.
    params: {group name: tensor or list of tensors}, or a list of tensors (one group, "params").
            Parameters of a group that receive no gradient count as zeros.
Per group, over R repetitions of the gradient g [R, n] at the same parameters:
    var = mean over coordinates of the per-coordinate variance (unbiased, over R);
    snr = mean over coordinates of |mean g_i| / std g_i (coordinates with std 0 left out),
the per-coordinate signal-to-noise ratio of Rainforth et al. (2018, "Tighter variational bounds are not
necessarily better", section 3). Same problem, same R and seed -> comparable across estimators.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping

import torch
from torch import Tensor


def _groups(params) -> dict[str, list[Tensor]]:
    if isinstance(params, Tensor):
        return {"params": [params]}
    if isinstance(params, Mapping):
        return {name: [p] if isinstance(p, Tensor) else list(p) for name, p in params.items()}
    return {"params": list(params)}


def gradient_samples(
    estimator,
    q,
    f: Callable[[Tensor], Tensor],
    params,
    *,
    repetitions: int = 200,
    num_samples: int = 1,
    objective: str = "elbo",
    context: Tensor | None = None,
    seed: int | None = 0,
) -> tuple[dict[str, Tensor], dict[str, float]]:
    """R independent gradients of surrogate.sum() at fixed parameters.

    Returns ({group: g [R, n_group] (float64, flattened over the group's tensors)},
             {"objective/mean", "objective/std", "time/per_call_s"}).
    The estimator is put in eval mode for the duration (stateful parts must not move: parameters are fixed),
    and the global RNG state is restored afterwards when a seed is given.
    """
    groups = _groups(params)
    flat = [p for ps in groups.values() for p in ps]
    make_q = q if callable(q) else (lambda: q)
    grads: list[list[Tensor]] = []
    objectives = []
    was_training = estimator.training
    estimator.eval()
    devices = [flat[0].device] if flat and flat[0].device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices, enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            start = time.perf_counter()
            for _ in range(repetitions):
                out = estimator(make_q(), f, num_samples=num_samples, objective=objective, context=context)
                if out.surrogate.requires_grad:
                    g = torch.autograd.grad(out.surrogate.sum(), flat, allow_unused=True)
                else:  # nothing depends on the parameters (e.g. a constant f)
                    g = [None] * len(flat)
                grads.append(
                    [torch.zeros_like(p) if gi is None else gi for p, gi in zip(flat, g, strict=True)]
                )
                objectives.append(out.objective.detach().sum())
            elapsed = time.perf_counter() - start
    finally:
        estimator.train(was_training)
    samples, i = {}, 0
    for name, ps in groups.items():
        samples[name] = torch.stack(
            [torch.cat([rep[j].reshape(-1) for j in range(i, i + len(ps))]) for rep in grads]
        ).double()  # [R, n_group]
        i += len(ps)
    obj = torch.stack(objectives).double()
    info = {
        "objective/mean": obj.mean().item(),
        "objective/std": obj.std().item() if repetitions > 1 else math.nan,
        "time/per_call_s": elapsed / max(repetitions, 1),
    }
    return samples, info


def summarize_gradients(samples: Mapping[str, Tensor]) -> dict[str, float]:
    """{group: g [R, n]} -> {"grad/var_<group>", "grad/snr_<group>"} as floats (see module docstring)."""
    stats = {}
    for name, g in samples.items():
        mean, std = g.mean(0), g.std(0)  # [n]
        stats[f"grad/var_{name}"] = std.pow(2).mean().item()
        keep = std > 0
        stats[f"grad/snr_{name}"] = (mean[keep].abs() / std[keep]).mean().item() if keep.any() else math.nan
    return stats


def gradient_variance(
    estimator,
    q,
    f: Callable[[Tensor], Tensor],
    params: Mapping[str, Tensor | Iterable[Tensor]] | Iterable[Tensor],
    *,
    repetitions: int = 200,
    num_samples: int = 1,
    objective: str = "elbo",
    context: Tensor | None = None,
    seed: int | None = 0,
) -> dict[str, float]:
    """Variance and SNR of the estimator's gradient per parameter group, plus the objective and time per call.

    q: DiagGaussianMixture with leaf parameters, or a callable returning one (rebuilt every repetition).
    f: z [S', *batch, D] -> [S', *batch]. params: {group: tensor(s)} or a list of tensors.
    Returns {"grad/var_<group>", "grad/snr_<group>", "objective/mean", "objective/std", "time/per_call_s"}.
    """
    samples, info = gradient_samples(
        estimator,
        q,
        f,
        params,
        repetitions=repetitions,
        num_samples=num_samples,
        objective=objective,
        context=context,
        seed=seed,
    )
    return {**summarize_gradients(samples), **info}
