"""Gamma, Beta, Dirichlet and von Mises with implicit reparameterization gradients.

Three kinds of test:
- accuracy of the per-sample derivative against a float64 mpmath reference (max relative error over every
  point of a grid and every drawn sample; float64 <= 1e-6, float32 <= 1e-4 for Gamma/Beta/Dirichlet and 1e-2 for
  von Mises), each with a twin showing that a less accurate derivative (torch's own, a coarse quadrature)
  fails the same tolerance;
- unbiasedness of the gradient as users get it, torch.autograd.grad(f(q.rsample((n,))).mean(), params), against
  closed forms, in standard errors over R independent repetitions (float64, fixed seed), each with a twin whose
  gradient is deliberately scaled and must fail;
- the Distribution API: shapes, expand, validation messages, G-REP transforms.

Relative errors are taken where the reference is a normal number of the dtype; below that the derivative is not
representable and only |ours - ref| <= tiny is asked.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import scipy.special as sc
import torch

from mixvae.distributions import Beta, Dirichlet, Gamma, VonMises, native
from mixvae.distributions import von_mises as vm
from mixvae.distributions.dirichlet import dirichlet_jacobian_reference, sample_standard_gamma
from mixvae.distributions.gamma import (
    standard_gamma_grad,
    standard_gamma_grad_reference,
    standard_gamma_grad_torch,
)

GAMMA_TOL = {torch.float64: 1e-6, torch.float32: 1e-4}
VON_MISES_TOL = {torch.float64: 1e-6, torch.float32: 1e-2}
DTYPES = [torch.float64, torch.float32]
K_SE = 4.0  # |z-score| bound of the unbiasedness tests; the twins must exceed it


def max_rel_error(ours: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> float:
    """Max relative error where |ref| is a normal number of ``dtype``; elsewhere the absolute error over tiny."""
    ours, ref = ours.double(), ref.double()
    tiny = torch.finfo(dtype).tiny
    normal = ref.abs() >= tiny
    rel = torch.where(normal, (ours - ref).abs() / ref.abs().clamp(min=tiny), (ours - ref).abs() / tiny)
    assert torch.isfinite(ours).all()
    return rel.max().item()


# ---- Gamma: accuracy ------------------------------------------------------------------------------------------
GAMMA_ALPHAS = np.logspace(-2, 3, 11)
GAMMA_U = np.array([1e-12, 1e-6, 1e-3, 0.02, 0.1, 0.3, 0.5, 0.7, 0.9, 0.98, 1 - 1e-3, 1 - 1e-6, 1 - 1e-10])


@functools.cache
def gamma_grid(dtype: torch.dtype):
    """(alpha, x, reference dx/dalpha): quantiles of every alpha plus both sides of the regime seam x = alpha + 1,
    x rounded to ``dtype`` (and clamped to its tiny, as samples are) before the reference is taken."""
    a = np.repeat(GAMMA_ALPHAS, len(GAMMA_U))
    x = sc.gammaincinv(a, np.tile(GAMMA_U, len(GAMMA_ALPHAS)))
    seam = np.concatenate([GAMMA_ALPHAS + 1 - 1e-7, GAMMA_ALPHAS + 1, GAMMA_ALPHAS + 1 + 1e-7])
    a = torch.tensor(np.concatenate([a, np.tile(GAMMA_ALPHAS, 3)]), dtype=dtype)
    x = torch.tensor(np.concatenate([x, seam]), dtype=dtype).clamp(min=torch.finfo(dtype).tiny)
    return a, x, standard_gamma_grad_reference(a.double(), x.double())


@pytest.mark.parametrize("path", ["default", "torch"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_gamma_grad_matches_mpmath_on_grid(dtype, path):
    """Both paths: the default (the C kernel on CPU when it builds) and the PyTorch one (other devices, no C
    compiler)."""
    if path == "default" and not native.available():
        pytest.skip(f"C kernel unavailable: {native.unavailable_reason()}")
    a, x, ref = gamma_grid(dtype)
    ours = (standard_gamma_grad if path == "default" else standard_gamma_grad_torch)(a, x)
    assert ours.dtype == dtype
    assert max_rel_error(ours, ref, dtype) <= GAMMA_TOL[dtype]


def test_gamma_grad_c_kernel_is_used_and_agrees_with_the_torch_path(monkeypatch):
    """On CPU the default path is the C kernel, and it agrees with the PyTorch path to float64 rounding on samples
    from alpha in [1e-2, 1e3] (each element converging on its own there, the whole batch at once here)."""
    if not native.available():
        pytest.skip(f"C kernel unavailable: {native.unavailable_reason()}")
    gen = torch.Generator().manual_seed(3)
    a = torch.exp(torch.empty(3000, dtype=torch.float64).uniform_(math.log(1e-2), math.log(1e3), generator=gen))
    x = torch._standard_gamma(a, generator=gen).clamp(min=torch.finfo(torch.float64).tiny)
    calls, kernel = [], native.gamma_grad
    monkeypatch.setattr(native, "gamma_grad", lambda *args: calls.append(1) or kernel(*args))
    ours, theirs = standard_gamma_grad(a, x), standard_gamma_grad_torch(a, x)
    assert calls
    assert ((ours - theirs).abs() <= 1e-12 * theirs.abs()).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_torch_gamma_grad_fails_the_same_tolerance(dtype):
    """The twin: torch's own derivative on the same grid misses the tolerance, so the test above can fail."""
    a, x, ref = gamma_grid(dtype)
    theirs = torch._standard_gamma_grad(a, x)
    assert max_rel_error(theirs, ref, dtype) > GAMMA_TOL[dtype]


def per_sample_grads(make, params, n, seed, draw=None):
    """Per-sample dz/dparam from rsample: each parameter expanded to a batch of n leaves, so that autograd of
    z.sum() returns every sample's own derivative. ``draw(q)`` replaces ``q.rsample()`` (to fix the noise)."""
    torch.manual_seed(seed)
    leaves = [p.expand(n).clone().requires_grad_() for p in params]
    q = make(*leaves)
    z = q.rsample() if draw is None else draw(q)
    grads = torch.autograd.grad(z.sum(), leaves)
    return z.detach(), [leaf.detach() for leaf in leaves], grads


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("alpha", [0.01, 0.7, 25.0, 1000.0])
def test_gamma_rsample_grad_matches_mpmath_on_samples(dtype, alpha):
    """Every sample of Gamma(alpha, rate).rsample: dz/dalpha = (dx/dalpha) / rate and dz/drate = -z / rate."""
    rate = 0.5  # z * rate recovers the standard gamma sample exactly (and z cannot underflow below x)
    params = [torch.tensor(alpha, dtype=dtype), torch.tensor(rate, dtype=dtype)]
    z, _, (g_alpha, g_rate) = per_sample_grads(Gamma, params, 40, seed=1)
    x = (z.double() * rate)
    ref = standard_gamma_grad_reference(torch.full_like(x, alpha), x) / rate
    assert max_rel_error(g_alpha, ref, dtype) <= GAMMA_TOL[dtype]
    assert max_rel_error(g_rate, -z.double() / rate, dtype) <= 10 * torch.finfo(dtype).eps


@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES)
def test_gamma_rsample_grad_matches_mpmath_on_many_samples(dtype):
    """100 samples at each of 26 concentrations spanning [1e-2, 1e3], all through rsample."""
    alphas = torch.tensor(np.logspace(-2, 3, 26), dtype=dtype).repeat(100)
    z, _, (g,) = per_sample_grads(lambda a: Gamma(a, 1.0), [alphas], alphas.shape, seed=2)
    ref = standard_gamma_grad_reference(alphas.double(), z.double())
    assert max_rel_error(g, ref, dtype) <= GAMMA_TOL[dtype]


# ---- Beta and Dirichlet: accuracy -------------------------------------------------------------------------------
BETA_PARAMS = [(0.01, 0.01), (0.01, 1000.0), (0.5, 3.0), (4.0, 4.0), (1000.0, 0.02), (900.0, 1000.0)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("a", "b"), BETA_PARAMS)
def test_beta_grad_matches_mpmath_construction(dtype, a, b):
    """dz/da, dz/db of every sample against the same two-gamma construction evaluated with mpmath."""
    n = 30
    torch.manual_seed(4)
    conc = torch.tensor([a, b], dtype=dtype)
    noise = sample_standard_gamma(conc, torch.Size([n, 2]))
    _, _, (ga, gb) = per_sample_grads(Beta, [conc[0], conc[1]], n, seed=4,
                                      draw=lambda q: q.rsample_from_standard_gamma(noise))
    jac = dirichlet_jacobian_reference(conc.double(), noise)  # [n, 2, 2]
    assert max_rel_error(ga, jac[:, 0, 0], dtype) <= GAMMA_TOL[dtype]
    assert max_rel_error(gb, jac[:, 0, 1], dtype) <= GAMMA_TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
def test_dirichlet_jacobian_matches_mpmath_construction(dtype):
    """The full per-sample Jacobian dz_i/dalpha_j (one backward pass per i), K = 4 with a wide spread of alpha."""
    n, alpha = 25, torch.tensor([0.02, 0.9, 30.0, 800.0], dtype=dtype)
    torch.manual_seed(5)
    noise = sample_standard_gamma(alpha, torch.Size([n, 4]))
    leaf = alpha.expand(n, 4).clone().requires_grad_()
    z = Dirichlet(leaf).rsample_from_standard_gamma(noise)
    assert z.shape == (n, 4) and z.dtype == dtype
    jac = torch.stack([torch.autograd.grad(z[:, i].sum(), leaf, retain_graph=True)[0] for i in range(4)], -2)
    ref = dirichlet_jacobian_reference(alpha.double(), noise)
    assert max_rel_error(jac, ref, dtype) <= GAMMA_TOL[dtype]


def test_torch_beta_gradient_agrees_in_mean():
    """torch's Beta holds I_z(a, b) fixed (another noise, another per-sample derivative); at a = 3 its
    gradient of E[z] agrees with ours to Monte Carlo precision (both unbiased)."""
    a, b = torch.tensor(3.0, dtype=torch.float64, requires_grad=True), torch.tensor(1.5, dtype=torch.float64)
    torch.manual_seed(6)
    ours = torch.autograd.grad(Beta(a, b).rsample((20000,)).mean(), a)[0]
    theirs = torch.autograd.grad(torch.distributions.Beta(a, b).rsample((20000,)).mean(), a)[0]
    truth = b / (a + b) ** 2
    assert abs(ours - truth) < 0.05 * truth and abs(theirs - truth) < 0.05 * truth


# ---- von Mises: accuracy ----------------------------------------------------------------------------------------
VM_KAPPAS = [0.01, 0.3, 2.0, 10.0, 60.0, 1000.0]


@functools.cache
def von_mises_points(kappa: float, dtype: torch.dtype):
    """Drawn samples plus the hard points: x = 0 side, the regime seam arccos(A), far tails, and +-pi."""
    torch.manual_seed(7)
    x = torch.distributions.VonMises(torch.tensor(0.0, dtype=torch.float64),
                                     torch.tensor(kappa, dtype=torch.float64)).sample((12,))
    a = sc.i1e(kappa) / sc.i0e(kappa)
    sd = 1 / math.sqrt(kappa)
    hard = [1e-9, -1e-4, math.acos(a) * (1 - 1e-9), -math.acos(a) * (1 + 1e-9), 4 * sd, -8 * sd, 3.0, -3.1,
            math.pi - 1e-7, -math.pi, math.pi]
    x = torch.cat([x, torch.tensor(hard, dtype=torch.float64).clamp(-math.pi, math.pi)]).to(dtype)
    return x, vm.von_mises_concentration_grad_reference(torch.full(x.shape, kappa, dtype=torch.float64), x.double())


@pytest.mark.parametrize("path", ["default", "torch"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kappa", VM_KAPPAS)
def test_von_mises_grad_matches_mpmath(dtype, kappa, path):
    """Both paths: the default (the C kernel on CPU when it builds) and the PyTorch one."""
    if path == "default" and not native.available():
        pytest.skip(f"C kernel unavailable: {native.unavailable_reason()}")
    x, ref = von_mises_points(kappa, dtype)
    grad = vm.von_mises_concentration_grad if path == "default" else vm.von_mises_concentration_grad_torch
    ours = grad(torch.tensor(kappa, dtype=dtype), x)
    assert ours.dtype == dtype
    assert max_rel_error(ours, ref, dtype) <= VON_MISES_TOL[dtype]


def test_von_mises_grad_c_kernel_is_used_and_agrees_with_the_torch_path(monkeypatch):
    """On CPU the default path is the C kernel; it agrees with the PyTorch path to float64 rounding on samples
    from kappa in [1e-2, 1e3], and float32 results are the same floats."""
    if not native.available():
        pytest.skip(f"C kernel unavailable: {native.unavailable_reason()}")
    gen = torch.Generator().manual_seed(4)
    kappa = torch.exp(torch.empty(2000, dtype=torch.float64).uniform_(math.log(1e-2), math.log(1e3), generator=gen))
    torch.manual_seed(4)
    x = torch.distributions.VonMises(torch.zeros_like(kappa), kappa).sample()
    calls, kernel = [], native.von_mises_grad
    monkeypatch.setattr(native, "von_mises_grad", lambda *args: calls.append(1) or kernel(*args))
    ours, theirs = vm.von_mises_concentration_grad(kappa, x), vm.von_mises_concentration_grad_torch(kappa, x)
    assert calls
    assert ((ours - theirs).abs() <= 1e-12 * theirs.abs() + 1e-300).all()
    ours32 = vm.von_mises_concentration_grad(kappa.float(), x.float())
    theirs32 = vm.von_mises_concentration_grad_torch(kappa.float(), x.float())
    assert ours32.dtype == torch.float32 and (ours32 == theirs32).float().mean() > 0.99


def test_coarse_von_mises_quadrature_fails_the_same_tolerance(monkeypatch):
    """The twin: with 6 tail nodes instead of 48 the derivative misses the float64 tolerance at large kappa."""
    monkeypatch.setattr(vm, "_TAIL_NODES", 6)
    worst = 0.0
    for kappa in (60.0, 1000.0):
        x, ref = von_mises_points(kappa, torch.float64)
        worst = max(worst, max_rel_error(vm.von_mises_concentration_grad(torch.tensor(kappa, dtype=torch.float64),
                                                                         x), ref, torch.float64))
    assert worst > VON_MISES_TOL[torch.float64]


@pytest.mark.parametrize("dtype", DTYPES)
def test_von_mises_rsample_grad_is_the_centred_derivative(dtype):
    """Through rsample: dz/dloc = 1 and dz/dkappa = G(x) with x = z - loc wrapped, for a loc that wraps."""
    loc, kappa = torch.tensor(3.0, dtype=dtype), torch.tensor(5.0, dtype=dtype)
    z, _, (g_loc, g_kappa) = per_sample_grads(VonMises, [loc, kappa], 50, seed=8)
    assert ((z >= -math.pi) & (z < math.pi)).all()
    x = torch.remainder(z.double() - 3.0 + math.pi, 2 * math.pi) - math.pi
    ref = vm.von_mises_concentration_grad_reference(torch.full_like(x, 5.0), x)
    assert torch.equal(g_loc, torch.ones_like(g_loc))
    assert max_rel_error(g_kappa, ref, dtype) <= VON_MISES_TOL[dtype]


@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES)
def test_von_mises_grad_matches_mpmath_on_many_samples(dtype):
    kappas = torch.tensor(np.logspace(-2, 3, 16), dtype=torch.float64)
    torch.manual_seed(9)
    x = torch.distributions.VonMises(torch.zeros_like(kappas), kappas).sample((40,)).to(dtype)
    ref = vm.von_mises_concentration_grad_reference(kappas.expand(x.shape), x.double())
    ours = vm.von_mises_concentration_grad(kappas.to(dtype), x)
    assert max_rel_error(ours, ref, dtype) <= VON_MISES_TOL[dtype]


# ---- unbiasedness against closed forms ------------------------------------------------------------------------
def z_scores(make, params, f, truth, n, reps, seed, scale=1.0):
    """|mean - truth| / SE per parameter over ``reps`` estimates of d/dparams E[f(z)], each
    torch.autograd.grad(f(q.rsample((n,))).mean(), params). ``scale`` != 1 multiplies dz/dparams (the twins)."""
    torch.manual_seed(seed)
    estimates = []
    for _ in range(reps):
        z = make(*params).rsample((n,))
        if scale != 1.0:
            z = z.detach() + scale * (z - z.detach())
        estimates.append(torch.stack(torch.autograd.grad(f(z).mean(), params)))
    est = torch.stack(estimates)  # [reps, P]
    se = est.std(0) / math.sqrt(reps)
    return ((est.mean(0) - truth) / se).abs()


def closed_form_grad(fn, params):
    params = [p.detach().clone().requires_grad_() for p in params]
    return torch.stack(torch.autograd.grad(fn(*params), params))


def f64(*values):
    return [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in values]


UNBIASED_CASES = {
    # name: (make, params, f(z), closed form E[f] of the parameters, samples per repetition)
    "gamma_laplace": (Gamma, f64(0.4, 1.7), lambda z: torch.exp(-0.8 * z),
                      lambda a, r: (r / (r + 0.8)) ** a, 4000),
    "gamma_moment": (Gamma, f64(3.0, 0.5), lambda z: z ** 2,
                     lambda a, r: torch.exp(torch.lgamma(a + 2) - torch.lgamma(a)) / r ** 2, 4000),
    "beta_moments": (Beta, f64(0.6, 2.5), lambda z: z ** 2 * (1 - z),
                     lambda a, b: torch.exp(torch.lgamma(a + 2) + torch.lgamma(b + 1) + torch.lgamma(a + b)
                                            - torch.lgamma(a) - torch.lgamma(b) - torch.lgamma(a + b + 3)), 4000),
    "von_mises_cos": (VonMises, f64(2.5, 1.3), lambda z: torch.cos(z - 0.4),
                      lambda loc, k: torch.special.i1e(k) / torch.special.i0e(k) * torch.cos(loc - 0.4), 4000),
}
DIRICHLET_POWERS = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)


def dirichlet_moment(alpha):
    p = DIRICHLET_POWERS
    return torch.exp(torch.lgamma(alpha.sum()) - torch.lgamma((alpha + p).sum())
                     + (torch.lgamma(alpha + p) - torch.lgamma(alpha)).sum())


def dirichlet_case():
    return (Dirichlet, f64([0.7, 2.0, 5.0]), lambda z: (z ** DIRICHLET_POWERS).prod(-1), dirichlet_moment, 4000)


def get_case(name):
    return dirichlet_case() if name == "dirichlet_product" else UNBIASED_CASES[name]


CASE_NAMES = [*UNBIASED_CASES, "dirichlet_product"]


@pytest.mark.parametrize("name", CASE_NAMES)
def test_gradient_is_unbiased(name):
    make, params, f, expectation, n = get_case(name)
    truth = closed_form_grad(expectation, params)
    assert (z_scores(make, params, f, truth, n, reps=24, seed=10) < K_SE).all()


@pytest.mark.parametrize("name", CASE_NAMES)
def test_scaled_gradient_fails_unbiasedness(name):
    """The twin: dz/dtheta scaled by 1.15 must be detected, so the test above can fail."""
    make, params, f, expectation, n = get_case(name)
    truth = closed_form_grad(expectation, params)
    assert (z_scores(make, params, f, truth, n, reps=24, seed=10, scale=1.15) > K_SE).any()


SLOW_CASES = {
    "gamma_small_alpha": (Gamma, f64(0.02, 1.0), lambda z: torch.exp(-2.0 * z),
                          lambda a, r: (r / (r + 2.0)) ** a),
    "gamma_large_alpha": (Gamma, f64(800.0, 3.0), lambda z: z ** 3,
                          lambda a, r: torch.exp(torch.lgamma(a + 3) - torch.lgamma(a)) / r ** 3),
    "beta_skewed": (Beta, f64(0.05, 30.0), lambda z: z,
                    lambda a, b: a / (a + b)),
    "von_mises_small_kappa": (VonMises, f64(-1.0, 0.05), lambda z: torch.cos(z - 2.0),
                              lambda loc, k: torch.special.i1e(k) / torch.special.i0e(k) * torch.cos(loc - 2.0)),
    "von_mises_large_kappa": (VonMises, f64(0.5, 400.0), lambda z: torch.cos(z - 0.3),
                              lambda loc, k: torch.special.i1e(k) / torch.special.i0e(k) * torch.cos(loc - 0.3)),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SLOW_CASES))
def test_gradient_is_unbiased_at_extreme_parameters(name):
    make, params, f, expectation = SLOW_CASES[name]
    truth = closed_form_grad(expectation, params)
    assert (z_scores(make, params, f, truth, 20000, reps=32, seed=11) < K_SE).all()
    assert (z_scores(make, params, f, truth, 20000, reps=32, seed=11, scale=1.15) > K_SE).any()


# ---- the Distribution API ---------------------------------------------------------------------------------------
def make_families(dtype=torch.float64):
    """One instance per family with batch shape (2, 3), built from broadcasting parameters."""
    c = torch.tensor([0.5, 2.0, 30.0], dtype=dtype)
    return {
        "gamma": Gamma(c, torch.tensor([[1.0], [3.0]], dtype=dtype)),
        "beta": Beta(c, torch.tensor([[0.2], [4.0]], dtype=dtype)),
        "von_mises": VonMises(torch.tensor([[0.0], [3.0]], dtype=dtype), c),
        "dirichlet": Dirichlet(torch.stack([c, c.flip(0) + 1, c + 2], -1).expand(2, 3, 3)),
    }


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("family", ["gamma", "beta", "von_mises", "dirichlet"])
def test_shapes_expand_and_log_prob(family, dtype):
    q = make_families(dtype)[family]
    assert q.has_rsample and q.batch_shape == (2, 3)
    z = q.rsample((4, 5))
    assert z.shape == (4, 5, 2, 3, *q.event_shape) and z.dtype == dtype
    lp = q.log_prob(z)
    assert lp.shape == (4, 5, 2, 3) and torch.isfinite(lp).all()
    big = q.expand((7, 2, 3))
    assert type(big) is type(q) and big.batch_shape == (7, 2, 3)
    assert big.rsample((2,)).shape == (2, 7, 2, 3, *q.event_shape)
    for stat in ("mean", "variance", "entropy"):
        value = getattr(q, stat) if stat != "entropy" else q.entropy()
        assert value.shape == q.batch_shape + (q.event_shape if stat != "entropy" else ())
        assert torch.isfinite(value).all()


@pytest.mark.parametrize("family", ["gamma", "beta", "von_mises", "dirichlet"])
def test_entropy_matches_monte_carlo(family):
    q = make_families()[family]
    torch.manual_seed(12)
    lp = q.log_prob(q.sample((20000,)))
    est, se = -lp.mean(0), lp.std(0) / math.sqrt(lp.shape[0])
    assert ((est - q.entropy()).abs() < K_SE * se + 1e-12).all()


def test_von_mises_mean_and_variance():
    q = VonMises(torch.tensor(0.7, dtype=torch.float64), torch.tensor(3.0, dtype=torch.float64))
    torch.manual_seed(13)
    z = q.sample((20000,))
    resultant = torch.complex(torch.cos(z), torch.sin(z)).mean()
    assert abs(resultant.angle().item() - 0.7) < 0.02
    assert abs((1 - resultant.abs()).item() - q.variance.item()) < 0.01


BAD_ARGS = [
    (lambda: Gamma(torch.tensor([1.0, -1.0]), 1.0, validate_args=True), "concentration"),
    (lambda: Gamma(1.0, torch.tensor(float("nan")), validate_args=True), "rate"),
    (lambda: Gamma(torch.ones(3), torch.ones(2)), "do not broadcast"),
    (lambda: Gamma(torch.ones(3, dtype=torch.int64), 1.0), "floating point"),
    (lambda: Beta(torch.tensor(0.0), 1.0, validate_args=True), "concentration1"),
    (lambda: Beta(1.0, torch.tensor(-2.0), validate_args=True), "concentration0"),
    (lambda: Dirichlet(torch.tensor([1.0]), validate_args=True), "concentration"),
    (lambda: Dirichlet(torch.tensor([1.0, float("inf")]), validate_args=True), "concentration"),
    (lambda: VonMises(torch.tensor(float("inf")), 1.0, validate_args=True), "loc"),
    (lambda: VonMises(0.0, torch.tensor([1.0, 0.0]), validate_args=True), "concentration"),
]


@pytest.mark.parametrize(("build", "name"), BAD_ARGS)
def test_validation_raises_one_line_value_error_naming_the_argument(build, name):
    with pytest.raises(ValueError) as info:
        build()
    message = str(info.value)
    assert name in message and "\n" not in message


@pytest.mark.parametrize("family", ["gamma", "beta"])
def test_grep_transform_standardizes_and_is_differentiable(family):
    params = f64(2.5, 0.7) if family == "gamma" else f64(0.8, 3.0)
    q = (Gamma if family == "gamma" else Beta)(*params)
    t = q.grep_transform()
    assert t.event_dim == 0
    torch.manual_seed(14)
    z = q.sample((40000,))
    eps = t.inv(z).detach()
    assert abs(eps.mean().item()) < K_SE / math.sqrt(len(eps))
    assert abs(eps.var().item() - 1) < 0.03
    z2 = t(eps)
    assert torch.allclose(z2, z, rtol=1e-10, atol=1e-300)
    log_pi = q.log_prob(z2) + t.log_abs_det_jacobian(eps, z2)
    grads = torch.autograd.grad(z2.sum() + log_pi.sum(), params)
    assert all(torch.isfinite(g) and g != 0 for g in grads)
    # pi(eps) = q(T(eps)) |T'(eps)| is a density of eps: it integrates to 1 (trapezoid rule on a wide grid)
    e = torch.linspace(-40.0, 40.0, 160001, dtype=torch.float64)
    with torch.no_grad():
        pi = (q.log_prob(t(e)) + t.log_abs_det_jacobian(e, t(e))).exp()
    assert abs(torch.trapezoid(torch.nan_to_num(pi), e).item() - 1) < 1e-6


@pytest.mark.parametrize("family", ["gamma", "beta"])
@pytest.mark.parametrize("params", [(0.01, 0.5), (0.7, 3.0), (2.5, 0.7), (300.0, 40.0)])
def test_grep_log_prob_equals_the_change_of_variables(family, params):
    """grep_log_prob(eps) is log q(T(eps)) + log |dT/deps| (float64), in value and in its parameter gradient."""
    p = f64(*params)
    q = (Gamma if family == "gamma" else Beta)(*p)
    eps = torch.linspace(-3.0, 3.0, 13, dtype=torch.float64)
    t = q.grep_transform()
    z = t(eps).detach()
    ok = (z > 1e-300) & ((1 - z > 1e-12) if family == "beta" else (z < 1e300))
    eps = eps[ok]  # where float64 z itself is exact enough for the generic formula (a Beta z rounds to 1 past it)
    assert len(eps) >= 5
    generic = q.log_prob(t(eps)) + t.log_abs_det_jacobian(eps, t(eps))
    ours = q.grep_log_prob(eps)
    assert torch.allclose(ours, generic, rtol=1e-10, atol=1e-10)
    for g_ours, g_generic in zip(torch.autograd.grad(ours.sum(), p, retain_graph=True),
                                 torch.autograd.grad(generic.sum(), p), strict=True):
        assert torch.allclose(g_ours, g_generic, rtol=1e-8, atol=1e-8)


# found in a latent_families Beta VAE (D = 2) after 600 graves steps: a << 1, a float32 sample at 2.8e-38, and
# the score-function weight f - b of that image, -230
_TINY_CASE = dict(a=0.0022238879464566708, b=180.83729553222656, z=2.753356982171417e-38, weight=-230.6)


def _weighted_log_pi_grad(dtype, stable: bool):
    c = _TINY_CASE
    a = torch.tensor(c["a"], dtype=dtype, requires_grad=True)
    b = torch.tensor(c["b"], dtype=dtype, requires_grad=True)
    q = Beta(a, b)
    t = q.grep_transform()
    eps = t.inv(torch.tensor(c["z"], dtype=dtype)).detach()
    if stable:
        log_pi = q.grep_log_prob(eps)
    else:
        z = t(eps)
        log_pi = q.log_prob(z) + t.log_abs_det_jacobian(eps, z)
    return torch.stack(torch.autograd.grad(c["weight"] * log_pi, (a, b)))


def test_grep_log_prob_keeps_the_float32_gradient_finite_at_a_tiny_sample():
    """The G-REP correction weight * d log pi / d(a, b) at the sample that made training's gradient NaN:
    in float64 equal to the change of variables (which does not overflow there); in float32 finite and within
    2% of it. d/da sums terms of size psi(a) ~ -450 that cancel to ~0.01, so float32 keeps about two digits:
    the precision float32 has at such a, whichever formula computes it."""
    reference = _weighted_log_pi_grad(torch.float64, stable=False)
    assert torch.allclose(_weighted_log_pi_grad(torch.float64, stable=True), reference, rtol=1e-8)
    ours = _weighted_log_pi_grad(torch.float32, stable=True).double()
    assert torch.isfinite(ours).all()
    assert torch.allclose(ours, reference, rtol=0.02, atol=1e-3)


def test_twin_the_change_of_variables_in_float32_overflows_there():
    """The broken twin: log q(T(eps)) + log |T'| in float32 carries d log q / dz = (a - 1) / z ~ -3.6e37, and
    times the weight it overflows, so its gradient is not finite; the check above would fail on it."""
    assert not torch.isfinite(_weighted_log_pi_grad(torch.float32, stable=False)).all()


def test_grep_estimator_gradient_is_finite_at_tiny_beta_samples():
    """Through the estimator (Independent Beta, as the VAE's posterior): every one of many draws at the found
    parameters gives a finite gradient, and the f - b weight is that of a VAE (about -230)."""
    from mixvae.estimators.grep import GRep

    c = _TINY_CASE
    a = torch.tensor([[0.66, c["a"]]], requires_grad=True)
    b = torch.tensor([[0.34, c["b"]]], requires_grad=True)
    torch.manual_seed(0)
    est = GRep()
    for _ in range(200):
        q = torch.distributions.Independent(Beta(a, b), 1)
        out = est(q, lambda z: c["weight"] + 0.0 * z.sum(-1), num_samples=1)
        grads = torch.autograd.grad(out.surrogate.sum(), (a, b))
        assert all(torch.isfinite(g).all() for g in grads)


def test_float32_tails_keep_a_gradient():
    """Far-tail and boundary samples in float32 get the (nonzero, finite) derivative of their own value."""
    kappa = torch.tensor(30.0)
    x = torch.tensor([-math.pi, -3.0, -1.0, 1.0, 3.1, math.pi], dtype=torch.float32)
    g = vm.von_mises_concentration_grad(kappa, x)
    assert torch.isfinite(g).all() and (g[1:-1] != 0).all() and (g[1:-1].sign() == -x[1:-1].sign()).all()
    # float32 +-pi lie just beyond +-pi: they are points near the other end, with a derivative ~ their distance
    assert (g[[0, -1]].abs() < 1e-6).all() and (g[[0, -1]].sign() == x[[0, -1]].sign()).all()
    a = torch.tensor(0.01)
    x = torch.tensor([torch.finfo(torch.float32).tiny, 1e-30, 20.0], dtype=torch.float32)
    assert torch.isfinite(standard_gamma_grad(a, x)).all()
