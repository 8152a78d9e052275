"""DiagGaussianMixture: exact per-sample Graves derivatives, unbiasedness against closed forms, numerics, API.

The statistical tests use float64, a fixed seed each, and tolerances in standard errors; each has a twin that
runs it against a deliberately wrong gradient and asserts that it fails.
"""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path

import pytest
import torch
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal

from mixvae.distributions import DiagGaussianMixture, native
from mixvae.distributions import graves_transform as gt

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
import fit_mills  # noqa: E402

F64 = torch.float64


def make_params(batch, k, d, seed, dtype=F64, spread=2.0):
    """Off-origin means, anisotropic scales, unequal weights."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(*batch, k, generator=g, dtype=dtype)
    loc = spread * torch.randn(*batch, k, d, generator=g, dtype=dtype) + 0.7
    scale = 0.3 + 1.2 * torch.rand(*batch, k, d, generator=g, dtype=dtype)
    return logits, loc, scale


# ---- per-sample exactness -------------------------------------------------------------------------------------


def inverse_jacobian_fd(u, logits, loc, scale, h=1e-5):
    """dz/dtheta with u = F(z) held fixed, by central differences through the bisection inverse (float64).

    Every parameter entry is perturbed at once, each in its own batch element, so one bisection run does all.
    Returns the Jacobians [D, *param.shape] for logits, loc, scale."""
    out = []
    for name in ("logits", "loc", "scale"):
        base = {"logits": logits, "loc": loc, "scale": scale}
        p = base[name]
        m = p.numel()
        eye = torch.eye(m, dtype=F64).reshape(m, *p.shape)
        cols = []
        for sign in (1.0, -1.0):
            params = {key: val.expand(m, *val.shape).clone() for key, val in base.items()}
            params[name] = params[name] + sign * h * eye
            q = DiagGaussianMixture(params["logits"], params["loc"], params["scale"], validate_args=False)
            cols.append(q.inverse_cdf_conditional(u.expand(m, -1), iterations=200))  # [m, D]
        jac = (cols[0] - cols[1]) / (2 * h)  # [m, D]
        out.append(jac.t().reshape(-1, *p.shape))
    return out


def autograd_jacobian(logits, loc, scale, index, eps):
    params = [t.clone().requires_grad_() for t in (logits, loc, scale)]
    z = gt.GravesSample.apply(params[0][None], params[1][None], params[2][None], index, eps, 4)[0]
    rows = [[] for _ in params]
    for j in range(z.shape[0]):
        grads = torch.autograd.grad(z[j], params, retain_graph=True)
        for r, g in zip(rows, grads):
            r.append(g)
    return z.detach(), [torch.stack(r) for r in rows]


@pytest.mark.parametrize("k,d", [(1, 1), (1, 3), (3, 1), (2, 2), (3, 5), (4, 7)])
def test_per_sample_derivative_is_the_inverse_transform_derivative(k, d):
    logits, loc, scale = make_params((), k, d, seed=10 * k + d)
    g = torch.Generator().manual_seed(k + d)
    for _ in range(2):  # two samples, from different components
        index = torch.randint(k, (1,), generator=g)
        eps = torch.randn(1, d, generator=g, dtype=F64)
        z, jac = autograd_jacobian(logits, loc, scale, index, eps)
        u = DiagGaussianMixture(logits, loc, scale).cdf_conditional(z)
        fd = inverse_jacobian_fd(u, logits, loc, scale)
        for name, a, b in zip(("logits", "loc", "scale"), jac, fd):
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), f"{name}: max err {(a - b).abs().max():.3g}"


def test_per_sample_check_fails_for_a_wrong_derivative(monkeypatch):
    """The exactness test can fail: drop the cross-dimension term (C_k := 0) and the loc Jacobian is wrong."""
    logits, loc, scale = make_params((), 3, 4, seed=3)
    index, eps = torch.tensor([1]), torch.randn(1, 4, dtype=F64, generator=torch.Generator().manual_seed(0))
    monkeypatch.setitem(gt._state, "backend", "eager")  # the PyTorch path, whose pieces can be broken
    real = gt._parameter_grads
    monkeypatch.setattr(gt, "_parameter_grads", lambda v, c, *rest: real(v, torch.zeros_like(c), *rest))
    z, jac = autograd_jacobian(logits, loc, scale, index, eps)
    u = DiagGaussianMixture(logits, loc, scale).cdf_conditional(z)
    fd = inverse_jacobian_fd(u, logits, loc, scale)
    assert not torch.allclose(jac[1], fd[1], rtol=1e-5, atol=1e-6)


def test_k1_is_exactly_the_gaussian_reparameterization():
    logits, loc, scale = make_params((6,), 1, 4, seed=1, dtype=torch.float32)
    loc.requires_grad_()
    scale.requires_grad_()
    torch.manual_seed(5)
    z = DiagGaussianMixture(logits, loc, scale).rsample((3,))
    (z.sin().sum()).backward()
    gl, gs = loc.grad.clone(), scale.grad.clone()
    loc.grad = scale.grad = None
    torch.manual_seed(5)
    z2 = Normal(loc[..., 0, :], scale[..., 0, :]).rsample((3,))
    (z2.sin().sum()).backward()
    assert torch.equal(z, z2)
    assert torch.equal(gl, loc.grad) and torch.equal(gs, scale.grad)


@pytest.mark.parametrize("batch", [(6,), (), (2, 3)])
@pytest.mark.parametrize("k", [1, 5])
def test_one_sample_axis_gives_the_unbatched_values_and_gradients_bit_for_bit(k, batch):
    """rsample((1,)) and log_prob of a [1, B, D] value (the training loop's S = 1) hand the parameters their
    gradients through views, not reductions over the size-1 axis: the same bits as rsample() on [B, D]."""
    logits, loc, scale = make_params(batch, k, 4, seed=2, dtype=torch.float32)
    grads = []
    for shape in [(), (1,), (1, 1)]:
        params = [t.detach().clone().requires_grad_() for t in (logits, loc, scale)]
        q = DiagGaussianMixture(*params)
        torch.manual_seed(7)
        z = q.rsample(shape)
        (q.log_prob(z).exp().sum() + z.sin().sum()).backward()
        grads.append([z.reshape(*batch, 4), *(p.grad for p in params)])
    for other in grads[1:]:
        for a, b in zip(grads[0], other, strict=True):
            assert torch.equal(a, b)


@pytest.mark.parametrize("block", [1, 3, 8, 64])
def test_blocked_sweep_equals_reference_loop(block):
    n, k, d = 20, 4, 37
    logits, loc, scale = make_params((n,), k, d, seed=block)
    g = torch.Generator().manual_seed(1)
    z = loc[torch.arange(n), torch.randint(k, (n,), generator=g)] + torch.randn(n, d, generator=g, dtype=F64)
    grad_z = torch.randn(n, d, generator=g, dtype=F64)
    got = gt.graves_vjp(grad_z, z, logits, loc, scale, block_size=block)
    ref = gt.graves_vjp_reference(grad_z, z, logits, loc, scale)
    for a, b in zip(got, ref):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-9)


def test_gradcheck_of_the_transform_function():
    """gradcheck on a Function whose forward is the exact inverse of the transform (u fixed) and whose backward is
    the Graves vector-Jacobian product. (GravesSample itself holds eps, not u, fixed in its forward, so finite
    differences of its forward measure a different derivative by design.)"""

    class InverseTransform(torch.autograd.Function):
        @staticmethod
        def forward(ctx, logits, loc, scale, u):
            z = DiagGaussianMixture(logits, loc, scale, validate_args=False).inverse_cdf_conditional(u, 200)
            ctx.save_for_backward(z, logits, loc, scale)
            return z

        @staticmethod
        def backward(ctx, grad_z):
            z, logits, loc, scale = ctx.saved_tensors
            return (*gt.graves_vjp(grad_z, z, logits, loc, scale, block_size=2), None)

    logits, loc, scale = make_params((1,), 3, 3, seed=7)
    u = torch.rand(1, 3, dtype=F64, generator=torch.Generator().manual_seed(2)) * 0.9 + 0.05
    inputs = (logits.requires_grad_(), loc.requires_grad_(), scale.requires_grad_(), u)
    assert torch.autograd.gradcheck(InverseTransform.apply, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)


# ---- unbiasedness against closed forms ------------------------------------------------------------------------

# Closed forms for z ~ N(mu, diag sigma^2):  E exp(a.z) = exp(a.mu + |a sigma|^2 / 2),
# E cos(a.z) = cos(a.mu) exp(-|a sigma|^2 / 2). Both couple all dimensions and neither is a polynomial.
def closed_form(kind, a, logits, loc, scale):
    mean_dot = (loc * a).sum(-1)  # [K]
    var_dot = ((scale * a) ** 2).sum(-1)
    per_comp = {
        "exp": lambda: torch.exp(mean_dot + 0.5 * var_dot),
        "cos": lambda: torch.cos(mean_dot) * torch.exp(-0.5 * var_dot),
        "mix": lambda: torch.cos(mean_dot) * torch.exp(-0.5 * var_dot)
        + 0.3 * torch.exp(0.5 * mean_dot + 0.125 * var_dot),
    }[kind]()
    return (logits.softmax(-1) * per_comp).sum(-1)


def integrand(kind, a, z):
    dot = (z * a).sum(-1)
    return {"exp": lambda: dot.exp(), "cos": lambda: dot.cos(), "mix": lambda: dot.cos() + 0.3 * (0.5 * dot).exp()}[
        kind
    ]()


def gradient_z_scores(kind, k, d, seed, m=20000):
    """(MC mean - exact) / standard error, for every parameter coordinate, from m independent samples."""
    logits, loc, scale = make_params((), k, d, seed=seed, spread=0.8)
    scale = scale * 0.6
    a = torch.linspace(-0.6, 0.5, d, dtype=F64)
    exact_params = [t.clone().requires_grad_() for t in (logits, loc, scale)]
    exact = torch.autograd.grad(closed_form(kind, a, *exact_params), exact_params, allow_unused=True)
    exact = [torch.zeros_like(p) if g is None else g for g, p in zip(exact, exact_params)]
    # m independent copies of the parameters, one sample each: per-sample gradients without a loop
    copies = [t.expand(m, *t.shape).clone().requires_grad_() for t in (logits, loc, scale)]
    torch.manual_seed(seed)
    z = DiagGaussianMixture(*copies).rsample()
    grads = torch.autograd.grad(integrand(kind, a, z).sum(), copies, allow_unused=True)
    grads = [torch.zeros_like(c) if g is None else g for g, c in zip(grads, copies)]  # K = 1: logits unused
    scores = []
    for g, e in zip(grads, exact):
        se = g.std(0) / math.sqrt(m)
        err = (g.mean(0) - e).abs()
        # a coordinate whose gradient is exactly zero in every sample (the logits when K = 1) must be exact
        scores.append(torch.where(se > 0, err / se.clamp_min(1e-300), err * 1e12).max())
    return torch.stack(scores)


@pytest.mark.parametrize("kind", ["exp", "cos", "mix"])
@pytest.mark.parametrize("k,d", [(1, 3), (3, 2), (4, 5)])
def test_rsample_gradient_is_unbiased(kind, k, d):
    scores = gradient_z_scores(kind, k, d, seed=100 + 7 * k + d)
    # max over up to ~45 coordinates of |N(0,1)|: 5 standard errors is a false-alarm rate of ~3e-5
    assert scores.max() < 5.0, scores


def test_unbiasedness_check_fails_for_a_wrong_gradient(monkeypatch):
    """Drop the component-weight path (chat := 0): the logits get no gradient and the test must notice."""
    monkeypatch.setitem(gt._state, "backend", "eager")  # the PyTorch path, whose pieces can be broken
    real = gt.graves_coefficients

    def broken(*args):
        r, chat, s, x = real(*args)
        return r, torch.zeros_like(chat), s, x

    monkeypatch.setattr(gt, "graves_coefficients", broken)
    assert gradient_z_scores("mix", 3, 2, seed=121).max() > 5.0


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["exp", "cos", "mix"])
def test_rsample_gradient_is_unbiased_large(kind):
    assert gradient_z_scores(kind, 8, 12, seed=5, m=200000).max() < 5.0


# ---- numerics -------------------------------------------------------------------------------------------------


def _finite_grads(logits, loc, scale, sample_shape=(4,)):
    params = [t.clone().requires_grad_() for t in (logits, loc, scale)]
    z = DiagGaussianMixture(*params).rsample(sample_shape)
    assert torch.isfinite(z).all()
    (z.tanh() * torch.linspace(-1, 1, z.shape[-1])).sum().backward()
    for name, p in zip(("logits", "loc", "scale"), params):
        assert torch.isfinite(p.grad).all(), f"non-finite gradient for {name}"
    return params


def test_float32_high_dimension():
    _finite_grads(*make_params((16,), 5, 400, seed=1, dtype=torch.float32))


def test_float32_coincident_components():
    logits, loc, scale = make_params((8,), 4, 20, seed=2, dtype=torch.float32)
    loc = loc[..., :1, :].expand_as(loc).clone()  # every component has the same mean
    scale = scale[..., :1, :].expand_as(scale).clone()
    p = _finite_grads(logits, loc, scale)
    # identical components: the weights cannot matter, the transform's weight gradient is exactly zero
    assert p[0].grad.abs().max() < 1e-4


def test_float32_tiny_weights_and_scales():
    logits, loc, scale = make_params((8,), 3, 30, seed=3, dtype=torch.float32, spread=5.0)
    logits[..., 0] = math.log(1e-30)
    scale[..., 1, :] = 1e-4
    _finite_grads(logits, loc, scale, sample_shape=(64,))


def test_far_tail_ratios_are_finite_and_match_float64():
    """A sample 30 standard deviations out: f, phi and Phi - u underflow in float32, their ratios do not."""
    logits, loc, scale = make_params((), 3, 6, seed=4)
    z = (loc[0] - 30 * scale[0]).unsqueeze(0)
    grad_z = torch.ones(1, 6, dtype=F64)
    ref = gt.graves_vjp_reference(grad_z, z, logits[None], loc[None], scale[None])
    got = gt.graves_vjp(grad_z.float(), z.float(), logits[None].float(), loc[None].float(), scale[None].float())
    for a, b in zip(got, ref):
        assert torch.isfinite(a).all()
        assert torch.allclose(a.double(), b, rtol=1e-3, atol=1e-3)


def test_mills_ratio_against_log_ndtr():
    t = torch.linspace(0, 80, 3201, dtype=F64)
    exact = (torch.special.log_ndtr(-t) + 0.5 * t * t + 0.5 * math.log(2 * math.pi)).exp()  # (1 - Phi) / phi
    assert torch.allclose(gt.mills_ratio(t), exact, rtol=1e-12)
    assert torch.allclose(gt.mills_ratio(t.float()).double(), exact, rtol=3.6e-7)  # scripts/fit_mills.py



def test_mills_polynomial_is_what_the_fit_script_gives():
    """The committed coefficients (PyTorch path; the C kernel carries the same) come from scripts/fit_mills.py."""
    coef = fit_mills.fit(len(gt._MILLS_POLY) - 1)
    assert torch.allclose(torch.tensor(coef), torch.tensor(gt._MILLS_POLY, dtype=F64), rtol=1e-8, atol=1e-9)
    assert fit_mills.float32_error(coef) < 3.6e-7
    # the C kernel's copy, highest degree first in its Horner steps
    source = (REPO / "mixvae" / "distributions" / "graves_native.c").read_text()
    body = source[source.index("static inline float mills_f32"):].split("}")[0]
    c_coef = [float(sign.replace(" ", "") + value)
              for sign, value in re.findall(r"([-+ ]) ?([0-9.]+e[-+][0-9]+)f", body)]
    assert c_coef[::-1] == list(gt._MILLS_POLY)

# ---- the distribution API -------------------------------------------------------------------------------------


def reference_mixture(logits, loc, scale):
    return MixtureSameFamily(Categorical(logits=logits), Independent(Normal(loc, scale), 1))


def test_log_prob_mean_variance_match_mixture_same_family():
    logits, loc, scale = make_params((3, 2), 4, 5, seed=8)
    q, ref = DiagGaussianMixture(logits, loc, scale), reference_mixture(logits, loc, scale)
    z = torch.randn(7, 3, 2, 5, dtype=F64)
    assert torch.allclose(q.log_prob(z), ref.log_prob(z))
    assert torch.allclose(q.mean, ref.mean)
    assert torch.allclose(q.variance, ref.variance)
    assert isinstance(q.mixture_distribution, Categorical)
    assert torch.allclose(q.component_distribution.log_prob(z.unsqueeze(-2)), q.component_log_prob(z))


def test_samples_have_the_right_distribution():
    """Sample moments match, and the transform maps samples to uniforms (a KS check per coordinate)."""
    logits, loc, scale = make_params((), 3, 2, seed=9)
    q = DiagGaussianMixture(logits, loc, scale)
    torch.manual_seed(0)
    n = 40000
    for z in (q.sample((n,)), q.rsample((n,))):
        se = (q.variance / n).sqrt()
        assert ((z.mean(0) - q.mean).abs() / se).max() < 5
        u = q.cdf_conditional(z)
        grid = torch.linspace(0, 1, 101, dtype=F64)
        ecdf = (u.unsqueeze(-1) <= grid).double().mean(0)  # [D, 101]
        assert (ecdf - grid).abs().max() < 1.63 / math.sqrt(n) * 1.5  # KS 1% critical value, with margin


@pytest.mark.parametrize(
    "shapes,batch",
    [
        (((5,), (5, 3), (5, 3)), ()),
        (((2, 4), (2, 4, 3), (1, 4, 3)), (2,)),  # scale broadcasts over the batch
        (((6, 1, 4), (5, 4, 2), (4, 2)), (6, 5)),  # logits and loc broadcast against each other
        (((4,), (7, 4, 2), (7, 4, 2)), (7,)),
    ],
)
def test_shapes_and_broadcasting(shapes, batch):
    ls, cs, ss = shapes
    q = DiagGaussianMixture(torch.zeros(ls), torch.zeros(cs), torch.ones(ss))
    d = cs[-1]
    assert q.batch_shape == torch.Size(batch) and q.event_shape == torch.Size([d])
    assert q.rsample((3, 2)).shape == (3, 2, *batch, d)
    assert q.sample().shape == (*batch, d)
    assert q.log_prob(q.sample((3,))).shape == (3, *batch)
    assert q.sample_index((5,)).shape == (5, *batch)
    assert q.cdf_conditional(q.sample()).shape == (*batch, d)


def test_gradients_reach_broadcast_parameters():
    logits = torch.zeros(3, requires_grad=True)
    loc = torch.randn(4, 3, 2, requires_grad=True)
    scale = torch.ones(3, 2, requires_grad=True)  # shared by the whole batch
    DiagGaussianMixture(logits, loc, scale).rsample((5,)).pow(2).sum().backward()
    assert logits.grad.shape == (3,) and loc.grad.shape == (4, 3, 2) and scale.grad.shape == (3, 2)


def test_expand():
    logits, loc, scale = make_params((1,), 3, 2, seed=11)
    q = DiagGaussianMixture(logits, loc, scale).expand((4,))
    assert q.batch_shape == (4,) and q.rsample().shape == (4, 2)
    assert torch.allclose(q.log_prob(torch.zeros(4, 2, dtype=F64)), q.log_prob(torch.zeros(2, dtype=F64)))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(logits=torch.zeros(3), loc=torch.zeros(4, 2), scale=torch.ones(4, 2)), r"K=3.*\b4\b|K\)"),
        (dict(logits=torch.zeros(3), loc=torch.zeros(3), scale=torch.ones(3, 2)), "loc must have shape"),
        (dict(logits=torch.zeros(3), loc=torch.zeros(3, 2), scale=torch.ones(3, 5)), "loc and scale"),
        (dict(logits=torch.zeros(2, 3), loc=torch.zeros(4, 3, 2), scale=torch.ones(3, 2)), "batch shapes"),
        (dict(logits=torch.zeros(3), loc=torch.zeros(3, 2), scale=-torch.ones(3, 2)), "scale must be > 0"),
        (dict(logits=torch.zeros(3), loc=torch.zeros(3, 2), scale=torch.zeros(3, 2)), "scale must be > 0"),
        (dict(logits=torch.tensor([0.0, math.nan, 1.0]), loc=torch.zeros(3, 2), scale=torch.ones(3, 2)), "logits"),
        (dict(logits=torch.zeros(3), loc=torch.full((3, 2), math.inf), scale=torch.ones(3, 2)), "loc contains"),
        (dict(logits=torch.zeros(3), loc=torch.zeros(3, 2), scale=torch.full((3, 2), math.nan)), "scale contains"),
        (dict(logits=torch.tensor([[0.0, 1.0], [-math.inf, -math.inf]]), loc=torch.zeros(2, 2, 3),
              scale=torch.ones(2, 2, 3)), "every logit of some mixture is -inf"),
        (dict(logits=torch.tensor([0.0, math.inf]), loc=torch.zeros(2, 3), scale=torch.ones(2, 3)), "logits contain"),
        (dict(logits=torch.zeros(2), loc=torch.zeros(2, 19), scale=torch.ones(2, 19).index_put_(
            (torch.tensor(1), torch.tensor(17)), torch.tensor(-0.0))), "scale must be > 0"),  # -0, in the tail
        (dict(logits=torch.zeros(2), loc=torch.zeros(2, 40).index_put_((torch.tensor(1), torch.tensor(33)),
                                                                        torch.tensor(-math.inf)),
              scale=torch.ones(2, 40)), "loc contains"),
    ],
)
@pytest.mark.parametrize("path", ["native", "torch"])
def test_validate_args_errors(kwargs, match, path, monkeypatch):
    """The same one-line errors from the C check (one pass per parameter) and from the PyTorch reductions."""
    if path == "torch":
        monkeypatch.setattr(native, "supports", lambda t: False)
    for dtype in (torch.float32, torch.float64):
        with pytest.raises(ValueError, match=match) as info:
            DiagGaussianMixture(**{k: v.to(dtype) for k, v in kwargs.items()}, validate_args=True)
        assert "\n" not in str(info.value)


def test_valid_parameters_pass_both_checks(monkeypatch):
    p = make_params((37,), 5, 21, seed=4, dtype=torch.float32)
    p[0][3, 1] = -math.inf  # a masked component is valid
    DiagGaussianMixture(*p, validate_args=True)
    monkeypatch.setattr(native, "supports", lambda t: False)
    DiagGaussianMixture(*p, validate_args=True)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_parameters_are_differentiated_in_float32(dtype):
    """float16 / bfloat16 parameters: the sample and the gradients come back in that dtype, and equal the float32
    computation on the rounded parameters (rounded to dtype) for the same draws. Before, the backward raised
    NotImplementedError ("triangular_solve_cpu" not implemented for 'Half')."""
    logits, loc, scale = (t.to(dtype) for t in make_params((6,), 3, 5, seed=2, dtype=torch.float32))
    low = [t.clone().requires_grad_() for t in (logits, loc, scale)]
    high = [t.float().requires_grad_() for t in (logits, loc, scale)]
    g = torch.randn(2, 6, 5)
    torch.manual_seed(0)
    z = DiagGaussianMixture(*low).rsample((2,))
    (z.float() * g).sum().backward()
    torch.manual_seed(0)
    z32 = DiagGaussianMixture(*high).rsample((2,))
    (z32.to(dtype).float() * g).sum().backward()
    assert z.dtype == dtype and torch.equal(z, z32.to(dtype))
    for a, b in zip(low, high):
        assert a.grad.dtype == dtype
        assert torch.equal(a.grad, b.grad.to(dtype))


def test_log_prob_validates_samples():
    q = DiagGaussianMixture(torch.zeros(3), torch.zeros(3, 2), torch.ones(3, 2), validate_args=True)
    with pytest.raises(ValueError):
        q.log_prob(torch.zeros(2, 5))


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_matches_cpu(dtype):
    logits, loc, scale = make_params((50,), 4, 20, seed=12, dtype=dtype)
    g = torch.Generator().manual_seed(0)
    z = loc[torch.arange(50), torch.randint(4, (50,), generator=g)] + torch.randn(50, 20, generator=g, dtype=dtype)
    grad_z = torch.randn(50, 20, generator=g, dtype=dtype)
    cpu = gt.graves_vjp(grad_z, z, logits, loc, scale)
    gpu = gt.graves_vjp(*(t.cuda() for t in (grad_z, z, logits, loc, scale)))
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    for a, b in zip(cpu, gpu):
        assert torch.allclose(a, b.cpu(), rtol=tol, atol=tol)
    q = DiagGaussianMixture(logits.cuda().requires_grad_(), loc.cuda(), scale.cuda())
    q.rsample((3,)).sum().backward()
