"""Property tests of every registered gradient estimator against closed-form and quadrature references.

Estimators are discovered from configs/estimator/*.yaml (and every value of a `baseline` option), so a new
estimator joins every test here without editing it. Statistical checks: float64, a fixed seed per test, and
a tolerance in standard errors (|mean - reference| / se < Z_MAX for every gradient coordinate).
R independent gradient estimates come from ONE call: the problem's parameters are copied into R leaf rows
(batch shape [R]); the gradient of surrogate.sum() with respect to row r is the r-th estimate.
"""

from __future__ import annotations

import inspect
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

import hydra.utils
import numpy as np
import pytest
import torch
from estimator_state import nontrivial_state
from omegaconf import OmegaConf

from mixvae.diagnostics import summarize_gradients
from mixvae.distributions import DiagGaussianMixture
from mixvae.estimators import Estimator, EstimatorOutput, available, build, config_dir
from mixvae.estimators.base import reduce_samples
from mixvae.estimators.baselines import BASELINES
from mixvae.estimators.score_function import ScoreFunction

Z_MAX = 5.0  # per-coordinate tolerance in standard errors (about 16 coordinates per test)
CONTEXT_DIM = 3
R_FAST = 10_000
DTYPE = torch.float64


# ----------------------------------------------------------------------------------------------- discovery
def _fits_a_mixture(name: str) -> bool:
    from mixvae.distributions import DiagGaussianMixture

    q = DiagGaussianMixture(torch.zeros(2), torch.zeros(2, 1), torch.ones(2, 1))
    return build(name, context_dim=CONTEXT_DIM).fits(q)


def _configurations() -> list[tuple[str, dict]]:
    """(name, options) for every yaml whose estimator fits a mixture posterior (the discrete-only ones are tested
    in tests/test_discrete.py); one entry per baseline where the estimator has a `baseline` option."""
    out = []
    for name in filter(_fits_a_mixture, available()):
        target = hydra.utils.get_class(OmegaConf.load(config_dir() / f"{name}.yaml")._target_)
        if "baseline" in inspect.signature(target).parameters:
            out += [(name, {"baseline": b}) for b in BASELINES]
        else:
            out.append((name, {}))
    return out


def _param(name, options):
    return pytest.param(name, options, id="-".join([name, *map(str, options.values())]))


CONFIGS = [_param(n, o) for n, o in _configurations()]
UNBIASED = [_param(n, o) for n, o in _configurations() if build(n, context_dim=CONTEXT_DIM, **o).unbiased]
BIASED = [_param(n, o) for n, o in _configurations() if not build(n, context_dim=CONTEXT_DIM, **o).unbiased]
# the relaxations (est.relaxed): biased, with a bias that vanishes as their temperature falls
RELAXED = [_param(n, o) for n, o in _configurations() if build(n, context_dim=CONTEXT_DIM, **o).relaxed]


def make_estimator(name: str, options: dict, cls=None) -> Estimator:
    """Build in float64 with every stateful / learnable part in a non-trivial state, so that a baseline that
    leaked the current sample, or a wrongly-centred one, would show up as bias."""
    est = cls(context_dim=CONTEXT_DIM, **options) if cls else build(name, context_dim=CONTEXT_DIM, **options)
    return nontrivial_state(est, DTYPE, seed=123)


# ------------------------------------------------------------------------------------------------ problems
@dataclass
class Problem:
    """A mixture (logits [K], loc [K, D], scale [K, D]), a parameter c of f, and f(z, c) -> z.shape[:-1]."""

    logits: torch.Tensor
    loc: torch.Tensor
    scale: torch.Tensor
    c: torch.Tensor
    f: Callable
    elbo: Callable  # closed form of E_q f(z, c) as a function of (logits, loc, scale, c)

    @property
    def params(self):
        return (self.logits, self.loc, self.scale, self.c)


def _exp_moment(loc, scale, a):
    """E exp(a.z) for z ~ N(loc, diag scale^2): [..., K, D] -> [..., K]."""
    return torch.exp(loc @ a + 0.5 * scale.pow(2) @ a.pow(2))


def _cos_moment(loc, scale, a):
    """E cos(a.z) for z ~ N(loc, diag scale^2): [..., K, D] -> [..., K]."""
    return torch.cos(loc @ a) * torch.exp(-0.5 * scale.pow(2) @ a.pow(2))


def _problem(kind: str, K: int, D: int, seed: int) -> Problem:
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(K, generator=gen, dtype=DTYPE) * 0.7
    loc = torch.randn(K, D, generator=gen, dtype=DTYPE) * 0.7  # off-origin, distinct means
    scale = 0.5 + 0.7 * torch.rand(K, D, generator=gen, dtype=DTYPE)  # anisotropic
    a = torch.linspace(0.8, -0.6, D, dtype=DTYPE)
    b = torch.linspace(-0.4, 0.7, D, dtype=DTYPE)
    c = torch.tensor(1.3, dtype=DTYPE)

    def mix(logits, per_component):
        return (torch.softmax(logits, -1) * per_component).sum(-1)

    if kind == "exp":  # f = c exp(a.z): couples all dimensions, non-polynomial
        return Problem(
            logits,
            loc,
            scale,
            c,
            f=lambda z, c: c * torch.exp(z @ a),
            elbo=lambda lg, m, s, c: mix(lg, c * _exp_moment(m, s, a)),
        )
    if kind == "cos_exp":  # f = c cos(a.z) + 0.3 exp(b.z): oscillating and growing parts
        return Problem(
            logits,
            loc,
            scale,
            c,
            f=lambda z, c: c * torch.cos(z @ a) + 0.3 * torch.exp(z @ b),
            elbo=lambda lg, m, s, c: mix(lg, c * _cos_moment(m, s, a) + 0.3 * _exp_moment(m, s, b)),
        )
    raise KeyError(kind)


def exact_gradient(value_fn: Callable, problem: Problem) -> torch.Tensor:
    """Gradient of value_fn(logits, loc, scale, c) flattened in the order (logits, loc, scale, c)."""
    leaves = [t.detach().clone().requires_grad_() for t in problem.params]
    grads = torch.autograd.grad(value_fn(*leaves), leaves)
    return torch.cat([g.reshape(-1) for g in grads])


def sampled_gradients(est, problem: Problem, *, R: int, S: int, objective: str, seed: int = 0, f=None):
    """R independent gradient estimates [R, n] (one call, params copied into R rows) and the EstimatorOutput."""
    torch.manual_seed(seed)
    leaves = [t.detach().expand(R, *t.shape).clone().requires_grad_() for t in problem.params]
    q = DiagGaussianMixture(*leaves[:3])
    context = torch.linspace(-1, 1, CONTEXT_DIM, dtype=DTYPE).expand(R, CONTEXT_DIM)
    f = f or problem.f
    out = est(q, lambda z: f(z, leaves[3]), num_samples=S, objective=objective, context=context)
    if out.surrogate.requires_grad:
        grads = torch.autograd.grad(out.surrogate.sum(), leaves, allow_unused=True)
    else:  # e.g. graves with a constant f: nothing depends on the parameters
        grads = [None] * len(leaves)
    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(leaves, grads, strict=True)]
    return torch.cat([g.reshape(R, -1) for g in grads], 1), out


def z_scores(samples: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """(mean - reference) / standard error per coordinate; exact zeros where the estimate has no noise."""
    diff = samples.mean(0) - reference
    se = samples.std(0) / math.sqrt(samples.shape[0])
    exact = torch.where(diff.abs() < 1e-10, 0.0, math.inf)
    return torch.where(se > 0, diff / se.clamp_min(1e-300), exact)


def max_z(samples, reference) -> float:
    return z_scores(samples, reference).abs().max().item()


# ------------------------------------------------------------------------------ IWAE quadrature references
def _gauss_hermite(n: int, dims: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Tensor-product Gauss-Hermite rule for N(0, I_dims): nodes [n^dims, dims], weights [n^dims] (sum 1)."""
    x, w = np.polynomial.hermite_e.hermegauss(n)
    x, w = torch.tensor(x, dtype=DTYPE), torch.tensor(w / math.sqrt(2 * math.pi), dtype=DTYPE)
    nodes = torch.cartesian_prod(*[x] * dims).reshape(-1, dims)
    weights = torch.cartesian_prod(*[w] * dims).reshape(-1, dims).prod(-1)
    return nodes, weights


def iwae_quadrature(problem: Problem, S: int, n: int = 12):
    """E log (1/S) sum_s exp f(z_s), z_s iid ~ q: sum over the K^S index tuples, Gauss-Hermite over the
    S*D-dimensional eps. Returns a function of (logits, loc, scale, c) for autograd."""
    D = problem.loc.shape[-1]
    nodes, weights = _gauss_hermite(n, S * D)
    eps = nodes.reshape(-1, S, D)  # [N, S, D]

    def value(logits, loc, scale, c):
        log_pi = torch.log_softmax(logits, -1)
        total = 0.0
        for ks in itertools.product(range(len(logits)), repeat=S):
            z = torch.stack([loc[k] + scale[k] * eps[:, s] for s, k in enumerate(ks)])  # [S, N, D]
            L = reduce_samples(problem.f(z, c), "iwae")  # [N]
            total = total + log_pi[list(ks)].sum().exp() * (weights * L).sum()
        return total

    return value


def stratified_quadrature(problem: Problem, S: int, n: int = 12):
    """E log sum_k pi_k (1/S) sum_s exp f(mu_k + sigma_k eps_s), eps_s iid N(0, I) shared by the k
    (the objective enumerate optimizes under objective="iwae", see mixvae/estimators/enumerate.py)."""
    D = problem.loc.shape[-1]
    nodes, weights = _gauss_hermite(n, S * D)
    eps = nodes.reshape(-1, S, D)  # [N, S, D]

    def value(logits, loc, scale, c):
        z = loc[:, None, None] + scale[:, None, None] * eps  # [K, N, S, D]
        per_component = reduce_samples(problem.f(z, c), "iwae", dim=-1)  # [K, N]
        return (weights * torch.logsumexp(torch.log_softmax(logits, -1)[:, None] + per_component, 0)).sum()

    return value


def iwae_reference(out: EstimatorOutput, problem: Problem, S: int):
    """The objective the estimator says it estimates: IWAE-S, or the stratified bound when flagged."""
    return stratified_quadrature(problem, S) if out.metrics.get("stratified") else iwae_quadrature(problem, S)


_CACHE: dict = {}


def cached_gradient_and_value(value_fn, problem: Problem, key) -> tuple[torch.Tensor, torch.Tensor]:
    """(exact gradient, value) of a quadrature reference, computed once per key (they cost ~0.3 s each)."""
    if key not in _CACHE:
        _CACHE[key] = (exact_gradient(value_fn, problem), value_fn(*problem.params).detach())
    return _CACHE[key]


PROBLEMS = {kind: _problem(kind, K=3, D=2, seed=seed) for seed, kind in enumerate(["exp", "cos_exp"])}
TINY = _problem("cos_exp", K=2, D=2, seed=7)  # IWAE with S = 2: a 4-dimensional quadrature


# ------------------------------------------------------------------------------------------------ registry
@pytest.mark.parametrize("name", available())
def test_registry_builds_every_yaml_with_its_name(name):
    est = build(name, context_dim=CONTEXT_DIM)
    assert isinstance(est, Estimator) and est.name == name
    via_hydra = hydra.utils.instantiate(
        OmegaConf.load(config_dir() / f"{name}.yaml"), context_dim=CONTEXT_DIM
    )
    assert type(via_hydra) is type(est) and via_hydra.name == name


def test_registry_has_the_issue_estimators():
    assert {"graves", "enumerate", "score_function", "vimco", "gumbel_softmax", "grep"} <= set(available())


@pytest.mark.parametrize(
    ("name", "options", "must_mention"),
    [
        ("nope", {}, available()),
        ("graves", {"temperature": 1.0}, ["context_dim"]),
        ("score_function", {"baseline": "bogus"}, list(BASELINES)),
        ("score_function", {"baseline": "learned", "context_dim": None}, ["context_dim"]),
        ("gumbel_softmax", {"temperature": -1.0}, ["temperature > 0"]),
    ],
)
def test_build_errors_are_one_line_and_list_valid_choices(name, options, must_mention):
    with pytest.raises(ValueError) as info:
        build(name, **options)
    message = str(info.value)
    assert "\n" not in message
    for word in must_mention:
        assert word in message


# --------------------------------------------------------------------------------------- contract, shapes
@pytest.mark.parametrize("objective", ["elbo", "iwae"])
@pytest.mark.parametrize("S", [1, 2])
@pytest.mark.parametrize(("name", "options"), CONFIGS)
def test_num_samples_one_and_two_shapes_and_output(name, options, S, objective):
    est = make_estimator(name, options)
    torch.manual_seed(0)
    batch = (2, 3)
    p = PROBLEMS["cos_exp"]
    q = DiagGaussianMixture(
        p.logits.expand(*batch, -1),
        p.loc.expand(*batch, -1, -1),
        p.scale.expand(*batch, -1, -1).clone().requires_grad_(),
    )
    context = torch.randn(*batch, CONTEXT_DIM, dtype=DTYPE)
    f = lambda z: p.f(z, p.c)  # noqa: E731
    if S < est.min_samples:
        with pytest.raises(ValueError, match="num_samples"):
            est.check(None, S, objective)
        with pytest.raises(ValueError, match="num_samples"):
            est(q, f, num_samples=S, objective=objective, context=context)
        return
    est.check(None, S, objective)
    out = est(q, f, num_samples=S, objective=objective, context=context)
    assert out.objective.shape == batch and out.surrogate.shape == batch
    assert not out.objective.requires_grad and out.surrogate.requires_grad
    assert torch.isfinite(out.objective).all() and torch.isfinite(out.surrogate).all()
    assert out.aux_loss.shape == () and torch.isfinite(out.aux_loss)
    for key, value in out.metrics.items():
        assert isinstance(value, float) or (
            isinstance(value, torch.Tensor) and value.dim() == 0 and not value.requires_grad
        ), key
        assert math.isfinite(float(value)), key


@pytest.mark.parametrize(("name", "options"), CONFIGS)
def test_unknown_objective_is_rejected(name, options):
    with pytest.raises(ValueError, match="objective"):
        make_estimator(name, options).check(None, 2, "elbo_typo")


# ------------------------------------------------------------------------------------------- unbiasedness
@pytest.mark.parametrize("kind", list(PROBLEMS))
@pytest.mark.parametrize(("name", "options"), UNBIASED)
def test_unbiased_elbo_gradient_matches_closed_form(name, options, kind):
    problem = PROBLEMS[kind]
    est = make_estimator(name, options)
    S = est.min_samples
    samples, out = sampled_gradients(est, problem, R=R_FAST, S=S, objective="elbo", seed=1)
    assert max_z(samples, exact_gradient(problem.elbo, problem)) < Z_MAX
    # the objective estimate is unbiased for E_q f too (a standard-error check on its mean)
    value = problem.elbo(*problem.params)
    assert abs(out.objective.mean() - value) / (out.objective.std() / math.sqrt(R_FAST)) < Z_MAX


@pytest.mark.parametrize(("name", "options"), UNBIASED)
def test_unbiased_iwae_gradient_matches_quadrature(name, options):
    S = 2
    est = make_estimator(name, options)
    samples, out = sampled_gradients(est, TINY, R=R_FAST, S=S, objective="iwae", seed=2)
    gradient, value = cached_gradient_and_value(
        iwae_reference(out, TINY, S), TINY, ("tiny", S, bool(out.metrics.get("stratified")))
    )
    assert max_z(samples, gradient) < Z_MAX
    assert abs(out.objective.mean() - value) / (out.objective.std() / math.sqrt(R_FAST)) < Z_MAX


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["elbo", "iwae"])
@pytest.mark.parametrize(("name", "options"), UNBIASED)
def test_unbiased_heavy(name, options, objective):
    """Bigger problem (K=4, D=3; IWAE: K=3, D=1, S=3) and 10x the repetitions: a 3x sharper check."""
    est = make_estimator(name, options)
    if objective == "elbo":
        problem, S = _problem("cos_exp", K=4, D=3, seed=11), max(est.min_samples, 2)
        reference = problem.elbo
    else:
        problem, S = _problem("exp", K=3, D=1, seed=12), 3
    samples, out = sampled_gradients(est, problem, R=100_000, S=S, objective=objective, seed=3)
    if objective == "iwae":
        reference = iwae_reference(out, problem, S)
    assert max_z(samples, exact_gradient(reference, problem)) < Z_MAX


class BrokenScoreFunction(ScoreFunction):
    """Deliberately wrong: the score-function term for the component index is dropped (pathwise part only).
    Not registered; it exists to show that the unbiasedness tests can fail."""

    name = "broken"

    def estimate(self, q, f, num_samples, objective, context):
        k = q.sample_index((num_samples,))
        values = f(q.rsample_component(k))
        surrogate = reduce_samples(values, objective)
        return EstimatorOutput(surrogate.detach(), surrogate, {}, values.new_zeros(()))


@pytest.mark.parametrize("objective", ["elbo", "iwae"])
def test_broken_estimator_fails_the_unbiasedness_check(objective):
    est = make_estimator("broken", {}, cls=BrokenScoreFunction)
    problem = PROBLEMS["cos_exp"] if objective == "elbo" else TINY
    samples, out = sampled_gradients(est, problem, R=R_FAST, S=2, objective=objective, seed=1)
    if objective == "elbo":
        gradient = exact_gradient(problem.elbo, problem)
    else:
        gradient, _ = cached_gradient_and_value(iwae_quadrature(problem, 2), problem, ("tiny", 2, False))
    assert max_z(samples, gradient) > 3 * Z_MAX


# -------------------------------------------------------------------------------------------- constant f
@pytest.mark.parametrize("objective", ["elbo", "iwae"])
@pytest.mark.parametrize(("name", "options"), CONFIGS)
def test_constant_f_gives_zero_mean_gradient(name, options, objective):
    est = make_estimator(name, options)
    samples, out = sampled_gradients(
        est,
        PROBLEMS["exp"],
        R=2000,
        S=2,
        objective=objective,
        seed=4,
        f=lambda z, c: torch.full(z.shape[:-1], 3.0, dtype=z.dtype),
    )
    assert max_z(samples, torch.zeros(samples.shape[1], dtype=DTYPE)) < Z_MAX
    assert torch.allclose(out.objective, torch.full_like(out.objective, 3.0))


# -------------------------------------------------------------------------------------- variance ordering
@pytest.mark.parametrize("S", [1, 2])
def test_enumeration_variance_below_score_function(S):
    """Rao-Blackwell: for the ELBO, enumerate's gradient is E[score-function gradient | eps], so its variance
    is lower for every coordinate. (Under iwae they target different objectives: no guaranteed ordering.)"""
    objective = "elbo"
    problem = PROBLEMS["cos_exp"]
    var = {}
    for name in ("enumerate", "score_function"):
        samples, _ = sampled_gradients(
            make_estimator(name, {}), problem, R=R_FAST, S=S, objective=objective, seed=5
        )
        var[name] = samples.var(0)
    # per coordinate; the F-ratio of two variances from 10^4 draws is within ~5% of its mean
    assert (var["enumerate"] <= 1.05 * var["score_function"]).all()
    assert var["enumerate"][:3].sum() < 0.5 * var["score_function"][:3].sum()  # logits: far below


# -------------------------------------------------------------------------------- biased: gumbel-softmax
@pytest.mark.parametrize(("name", "options"), RELAXED)
def test_relaxation_bias_shrinks_and_variance_grows_as_temperature_falls(name, options):
    problem = PROBLEMS["exp"]
    reference = exact_gradient(problem.elbo, problem)
    bias, variance, noise = [], [], []
    for tau in (2.0, 0.7, 0.25):
        est = make_estimator(name, {**options, "temperature": tau, "temperature_min": tau})
        samples, out = sampled_gradients(est, problem, R=R_FAST, S=1, objective="elbo", seed=8)
        assert float(out.metrics["temperature"]) == pytest.approx(tau)
        bias.append((samples.mean(0) - reference).norm().item())
        noise.append((samples.std(0) / math.sqrt(R_FAST)).norm().item())
        variance.append(samples[:, :3].var(0).mean().item())  # logits: the relaxed part
    assert bias[0] > 10 * noise[0]  # the bias is real: measured, not noise
    assert bias[0] > bias[1] + 3 * (noise[0] + noise[1]) and bias[1] > bias[2] + 3 * (noise[1] + noise[2])
    assert variance[0] < variance[1] < variance[2]


def test_gumbel_straight_through_forward_is_an_exact_sample():
    """Forward values of straight-through are f at exact mixture samples: the objective estimate is unbiased,
    while the gradient stays biased."""
    problem = PROBLEMS["cos_exp"]
    est = make_estimator("gumbel_softmax", {"straight_through": True, "temperature": 0.5})
    samples, out = sampled_gradients(est, problem, R=R_FAST, S=1, objective="elbo", seed=9)
    value = problem.elbo(*problem.params)
    assert abs(out.objective.mean() - value) / (out.objective.std() / math.sqrt(R_FAST)) < Z_MAX
    assert max_z(samples, exact_gradient(problem.elbo, problem)) > Z_MAX


def test_gumbel_annealing_schedule_is_a_checkpointed_buffer():
    est = build("gumbel_softmax", temperature=2.0, temperature_min=0.5, anneal_rate=0.1)
    assert "step" in est.state_dict()
    q = DiagGaussianMixture(torch.zeros(2), torch.zeros(2, 1), torch.ones(2, 1))
    f = lambda z: z.sum(-1)  # noqa: E731
    taus = [float(est(q, f).metrics["temperature"]) for _ in range(30)]
    expected = [max(0.5, 2.0 * math.exp(-0.1 * t)) for t in range(30)]
    assert taus == pytest.approx(expected, rel=1e-6)
    est.eval()
    frozen = [float(est(q, f).metrics["temperature"]) for _ in range(3)]
    assert frozen == pytest.approx([0.5] * 3) and int(est.step) == 30
    again = build("gumbel_softmax", temperature=2.0, temperature_min=0.5, anneal_rate=0.1)
    again.load_state_dict(est.state_dict())
    assert float(again.temperature()) == pytest.approx(0.5)


# --------------------------------------------------------------------------------- stateful / learnable parts
@pytest.mark.parametrize("name", [n for n, o in _configurations() if o.get("baseline") == "mean"])
def test_running_mean_baseline_updates_only_in_training(name):
    est = build(name, baseline="mean")
    assert any(k.endswith("value") for k in est.state_dict())
    q = DiagGaussianMixture(torch.zeros(4, 2), torch.zeros(4, 2, 1), torch.ones(4, 2, 1))
    f = lambda z: torch.full(z.shape[:-1], 5.0)  # noqa: E731
    est.eval()
    est(q, f)
    assert float(est.baseline.value) == 0.0
    est.train()
    first = est(q, f)
    assert float(first.metrics["baseline"]) == 0.0  # the value from BEFORE this batch
    assert float(est.baseline.value) == 5.0
    est(q, lambda z: torch.full(z.shape[:-1], 15.0))
    assert float(est.baseline.value) == pytest.approx(0.9 * 5.0 + 0.1 * 15.0)


@pytest.mark.parametrize("name", [n for n, o in _configurations() if o.get("baseline") == "learned"])
def test_learned_baseline_trains_on_aux_loss_and_touches_only_its_parameters(name):
    torch.manual_seed(0)
    est = build(name, baseline="learned", context_dim=2, baseline_hidden=16)
    loc = torch.zeros(64, 2, 1, requires_grad=True)
    x = torch.randn(64, 2)
    f = lambda z: 3.0 * x[:, 0] + z.sum(-1)  # noqa: E731 -- the signal depends on the input
    with pytest.raises(ValueError, match="context"):
        est(DiagGaussianMixture(torch.zeros(64, 2), loc, torch.ones(64, 2, 1)), f)
    optimizer = torch.optim.Adam(est.parameters(), lr=1e-2)
    losses = []
    for _ in range(200):
        q = DiagGaussianMixture(torch.zeros(64, 2), loc, torch.ones(64, 2, 1))
        out = est(q, f, num_samples=2, context=x)
        assert out.aux_loss.requires_grad
        assert torch.autograd.grad(out.aux_loss, loc, allow_unused=True, retain_graph=True)[0] is None
        optimizer.zero_grad()
        out.aux_loss.backward()
        optimizer.step()
        losses.append(out.aux_loss.item())
    assert np.mean(losses[-20:]) < 0.2 * np.mean(losses[:20])


@pytest.mark.parametrize(("name", "options"), CONFIGS)
def test_group_summary_is_finite(name, options):
    """summarize_gradients (the diagnostics' reducer) on every estimator's gradient samples."""
    est = make_estimator(name, options)
    samples, _ = sampled_gradients(est, PROBLEMS["exp"], R=200, S=2, objective="elbo", seed=10)
    stats = summarize_gradients({"logits": samples[:, :3], "loc": samples[:, 3:9], "scale": samples[:, 9:15]})
    assert all(math.isfinite(v) for v in stats.values())
