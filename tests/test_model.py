"""The VAE (mixvae/models) and its evaluation (mixvae/training/evaluate.py)."""

import math

import pytest
import torch
import torch.nn.functional as F

from mixvae.data.core import Dataset
from mixvae.estimators import build
from mixvae.models import MixtureVAE, log_prior
from mixvae.training.evaluate import evaluate


def tiny(K=3, D=2, x_dim=20, hidden=(8,), seed=0, **kw):
    torch.manual_seed(seed)
    return MixtureVAE(x_dim, num_components=K, latent_dim=D, hidden=list(hidden), **kw)


def binary(n, x_dim=20, seed=1):
    return torch.bernoulli(torch.rand(n, x_dim, generator=torch.Generator().manual_seed(seed)))


def test_posterior_shapes_and_positive_scales():
    model = tiny(K=4, D=3)
    q = model.posterior(binary(7))
    assert q.logits.shape == (7, 4) and q.loc.shape == (7, 4, 3) and q.scale.shape == (7, 4, 3)
    assert (q.scale >= 1e-3).all()
    z = q.rsample((5,))
    assert z.shape == (5, 7, 3)
    # f accepts any leading sample size (enumerate folds K into it) and extra leading axes
    f = model.log_weight_fn(binary(7), q)
    assert f(z).shape == (5, 7)
    assert f(z.reshape(5, 1, 7, 3).expand(5, 2, 7, 3)).shape == (5, 2, 7)


def test_log_weight_is_joint_minus_marginal_mixture_density():
    model = tiny(K=3, D=2)
    x = binary(4)
    q = model.posterior(x)
    z = q.sample((6,))
    logits = model.decoder(z)
    log_px_z = -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(-1)
    log_pz = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    comp = torch.distributions.Normal(q.loc, q.scale).log_prob(z.unsqueeze(-2)).sum(-1)  # [6, 4, K]
    log_q = torch.logsumexp(comp + q.logits.log_softmax(-1), -1)
    expected = log_px_z + log_pz - log_q
    torch.testing.assert_close(model.log_weight_fn(x, q)(z), expected, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(log_prior(z), log_pz)


def test_k1_is_exactly_the_gaussian_vae():
    """With K = 1 the Graves estimator's objective and gradients equal the Gaussian VAE's reparameterized ELBO."""
    model = tiny(K=1, D=3)
    x = binary(5)
    torch.manual_seed(3)
    out = model(x, build("graves"), num_samples=2, objective="elbo")
    (-out.surrogate.mean()).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()

    torch.manual_seed(3)
    h = model.encoder.body(x)
    loc, scale = model.encoder.loc(h), F.softplus(model.encoder.scale(h)) + model.encoder.min_scale
    normal = torch.distributions.Normal(loc, scale)
    z = normal.rsample((2,))
    elbo = model.decoder.log_prob(x, z) + log_prior(z) - normal.log_prob(z).sum(-1)
    (-elbo.mean(0).mean()).backward()
    torch.testing.assert_close(out.objective, elbo.mean(0).detach(), rtol=0, atol=1e-5)
    for p, g in zip(model.parameters(), grads, strict=True):
        torch.testing.assert_close(g, p.grad if p.grad is not None else torch.zeros_like(g), rtol=1e-5, atol=1e-6)


def test_components_start_apart_and_k1_starts_unshifted():
    model = tiny(K=5, D=4, init_spread=1.0)
    q = model.posterior(binary(3))
    gaps = (q.loc.unsqueeze(1) - q.loc.unsqueeze(2)).norm(dim=-1)  # [B, K, K]
    off_diagonal = gaps[:, ~torch.eye(5, dtype=torch.bool)]
    assert off_diagonal.min() > 0.1
    # the offsets are centred over components, so the mean of the initial means is that of a plain init
    torch.manual_seed(0)
    plain = tiny(K=5, D=4, init_spread=0.0)
    torch.testing.assert_close(model.encoder.loc.bias.view(5, 4).mean(0), plain.encoder.loc.bias.view(5, 4).mean(0))
    one = tiny(K=1, D=4, init_spread=1.0)
    assert torch.equal(one.encoder.loc.bias, tiny(K=1, D=4, init_spread=0.0).encoder.loc.bias)


def test_decoder_bias_starts_at_logit_of_the_training_mean():
    mean = torch.rand(20) * 0.8 + 0.1
    model = tiny(train_mean=mean)
    torch.testing.assert_close(model.decoder.out.bias, torch.logit(mean))


def test_invalid_sizes_raise_one_line():
    with pytest.raises(ValueError, match="num_components"):
        MixtureVAE(20, num_components=0)
    with pytest.raises(ValueError, match="latent_dim"):
        MixtureVAE(20, latent_dim=0)
    with pytest.raises(ValueError, match="activation"):
        MixtureVAE(20, activation="sigmoidish")


def exact_log_px(model, x, lo=-12.0, hi=12.0, n=20001):
    """log p(x) for a D = 1 model by quadrature on a grid: [B]."""
    z = torch.linspace(lo, hi, n).view(n, 1, 1).expand(n, x.shape[0], 1)
    return torch.logsumexp(model.log_joint(x, z), 0) + math.log((hi - lo) / (n - 1))


def test_iwae_bound_approaches_log_px_and_elbo_is_below():
    """IWAE-5000 (chunked in uneven pieces) is within a few hundredths of a nat of log p(x) by quadrature."""
    model = tiny(K=3, D=1, x_dim=20, hidden=(8,))
    x = binary(6)
    with torch.no_grad():
        truth = exact_log_px(model, x)
        torch.manual_seed(0)
        out = model.evaluate_batch(x, num_samples=5000, chunk=123)
        torch.manual_seed(0)
        few = model.evaluate_batch(x, num_samples=5, chunk=2)
    assert (out["iwae"] - truth).abs().max() < 0.05, (out["iwae"], truth)
    assert (out["elbo"] < truth - 1e-3).all()  # the gap is KL(q || p(z|x)) > 0 for an untrained encoder
    assert (few["elbo"] <= few["iwae"]).all()  # Jensen, on the same draws


def test_active_units_count_dimensions_whose_mean_varies():
    model = tiny(K=1, D=4, x_dim=20, hidden=(8,))
    with torch.no_grad():
        W = model.encoder.loc.weight  # [K*D, hidden]
        W[2:].zero_()                     # dims 2, 3: E_q[z] does not depend on x
        W[:2] *= 20                       # dims 0, 1: it does, strongly
    data = binary(300)
    ds = Dataset("toy", "test", data[:200], data[:0], data[200:], dynamic=False)
    out = evaluate(model, ds, "test", num_samples=3, chunk=2, batch_size=32, seed=0)
    assert out["test/active_units"] == 2
    assert set(out) == {"test/elbo", "test/nll_iwae3", "test/active_units"}
    again = evaluate(model, ds, "test", num_samples=3, chunk=2, batch_size=32, seed=0)
    assert again == out  # evaluation depends only on the parameters and its own seed
