"""mixvae.diagnostics.gradient_variance: both calling forms (bare q with leaves; encoder closure), its
summaries against direct computation, and a guaranteed ordering (Rao-Blackwell) seen through it."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mixvae.diagnostics import gradient_samples, gradient_variance, summarize_gradients
from mixvae.distributions import DiagGaussianMixture
from mixvae.estimators import build

DTYPE = torch.float64


def _leaves():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, generator=gen, dtype=DTYPE).requires_grad_()
    loc = torch.randn(3, 2, generator=gen, dtype=DTYPE).requires_grad_()
    scale = (0.5 + torch.rand(3, 2, generator=gen, dtype=DTYPE)).requires_grad_()
    return logits, loc, scale


def f(z):
    return torch.cos(z @ torch.tensor([0.7, -0.4], dtype=z.dtype)) + 0.2 * z.pow(2).sum(-1)


def test_summaries_match_direct_computation():
    g = torch.tensor([[1.0, 0.0, 2.0], [3.0, 0.0, 2.0], [2.0, 0.0, 2.0]], dtype=DTYPE)
    stats = summarize_gradients({"a": g})
    assert stats["grad/var_a"] == pytest.approx((1.0 + 0.0 + 0.0) / 3)
    assert stats["grad/snr_a"] == pytest.approx(2.0 / 1.0)  # zero-variance coordinates are left out


def test_bare_q_groups_seed_and_state():
    logits, loc, scale = _leaves()
    q = DiagGaussianMixture(logits, loc, scale)
    est = build("score_function", baseline="mean").to(DTYPE)
    params = {"logits": logits, "loc": loc, "scale": scale}
    rng_before = torch.get_rng_state()
    a = gradient_variance(est, q, f, params, repetitions=50, num_samples=2)
    b = gradient_variance(est, q, f, params, repetitions=50, num_samples=2)
    assert torch.equal(torch.get_rng_state(), rng_before)  # the global RNG is left alone
    assert a["grad/var_loc"] == b["grad/var_loc"]  # same seed, same numbers
    assert (
        float(est.baseline.value) == 0.0 and est.training
    )  # fixed parameters: no state update, mode restored
    for group in params:
        assert a[f"grad/var_{group}"] > 0 and math.isfinite(a[f"grad/snr_{group}"])
    assert {"objective/mean", "objective/std", "time/per_call_s"} <= set(a)


def test_encoder_closure_and_rao_blackwell_ordering():
    """A VAE-like encoder: q is rebuilt from a closure each repetition, params are the encoder's. The
    Rao-Blackwell ordering enumerate <= score_function holds for any linear map of the (logits, loc, scale)
    gradient, hence for the encoder's parameters too."""
    torch.manual_seed(0)
    K, D, B = 3, 2, 4
    encoder = nn.Linear(5, K + 2 * K * D).to(DTYPE)
    x = torch.randn(B, 5, dtype=DTYPE)

    def make_q():
        h = encoder(x)
        logits, loc, log_scale = h.split([K, K * D, K * D], -1)
        return DiagGaussianMixture(logits, loc.reshape(B, K, D), log_scale.reshape(B, K, D).exp())

    params = {"encoder": list(encoder.parameters())}
    stats = {
        name: gradient_variance(build(name).to(DTYPE), make_q, f, params, repetitions=300, seed=1)
        for name in ("enumerate", "score_function", "graves")
    }
    assert stats["enumerate"]["grad/var_encoder"] < stats["score_function"]["grad/var_encoder"]
    samples, _ = gradient_samples(build("graves").to(DTYPE), make_q, f, params, repetitions=3)
    assert samples["encoder"].shape == (3, sum(p.numel() for p in encoder.parameters()))


def test_constant_f_has_zero_variance_for_graves():
    logits, loc, scale = _leaves()
    q = DiagGaussianMixture(logits, loc, scale)
    const = lambda z: torch.ones(z.shape[:-1], dtype=z.dtype) + 0 * z.sum(-1)  # noqa: E731
    stats = gradient_variance(build("graves"), q, const, [logits, loc, scale], repetitions=10)
    assert stats["grad/var_params"] == pytest.approx(0.0, abs=1e-20)
