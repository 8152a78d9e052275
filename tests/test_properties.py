"""Property tests (hypothesis) for the library's distributions over random shapes and parameters.

For every distribution in ``mixvae.distributions``: rsample has shape [*sample, *batch, *event], finite values
inside the support, finite log_prob and finite gradients to every parameter; and every invalid argument (a
non-positive positive parameter, NaN or inf, shapes that do not broadcast) is rejected with a one-line
ValueError that names the argument.
"""

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mixvae.distributions import Beta, DiagGaussianMixture, Dirichlet, Gamma, VonMises

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True,  # the same examples in every CI run
                    suppress_health_check=[HealthCheck.too_slow])

batch_shapes = st.lists(st.integers(1, 3), min_size=0, max_size=2).map(tuple)
positive = st.floats(0.05, 20.0)
real = st.floats(-3.0, 3.0)


def tensor(shape, values, draw):
    return torch.tensor([draw(values) for _ in range(math.prod(shape))], dtype=torch.float64).reshape(shape)


@st.composite
def cases(draw):
    """(name, constructor, {argument: leaf tensor}) for a random distribution with random shapes."""
    batch = draw(batch_shapes)
    kind = draw(st.sampled_from(["mixture", "gamma", "beta", "dirichlet", "von_mises"]))
    if kind == "mixture":
        K, D = draw(st.integers(1, 4)), draw(st.integers(1, 4))
        args = {"logits": tensor((*batch, K), real, draw), "loc": tensor((*batch, K, D), real, draw),
                "scale": tensor((*batch, K, D), positive, draw)}
        return kind, DiagGaussianMixture, args
    if kind == "dirichlet":
        K = draw(st.integers(2, 4))
        return kind, Dirichlet, {"concentration": tensor((*batch, K), positive, draw)}
    if kind == "von_mises":
        return kind, VonMises, {"loc": tensor(batch, real, draw), "concentration": tensor(batch, positive, draw)}
    cls, names = {"gamma": (Gamma, ("concentration", "rate")),
                  "beta": (Beta, ("concentration1", "concentration0"))}[kind]
    return kind, cls, {n: tensor(batch, positive, draw) for n in names}


@SETTINGS
@given(case=cases(), sample_shape=st.lists(st.integers(1, 3), max_size=2).map(tuple))
def test_rsample_shapes_support_and_finite_gradients(case, sample_shape):
    kind, cls, args = case
    leaves = {k: v.clone().requires_grad_() for k, v in args.items()}
    q = cls(**leaves, validate_args=True)
    torch.manual_seed(0)
    z = q.rsample(sample_shape)
    assert z.shape == (*sample_shape, *q.batch_shape, *q.event_shape)
    assert torch.isfinite(z).all()
    assert q.support.check(z).all()
    log_q = q.log_prob(z)
    assert log_q.shape == (*sample_shape, *q.batch_shape) and torch.isfinite(log_q).all()
    grads = torch.autograd.grad((z.sin().sum() + log_q.sum()), list(leaves.values()))
    for name, g in zip(leaves, grads):
        assert g.shape == leaves[name].shape and torch.isfinite(g).all(), (kind, name)


BAD = [("nonpositive", 0.0), ("negative", -1.0), ("nan", float("nan")), ("inf", float("inf"))]


@SETTINGS
@given(case=cases(), bad=st.sampled_from(BAD), data=st.data())
def test_every_invalid_argument_is_a_one_line_value_error_naming_it(case, bad, data):
    kind, cls, args = case
    positive_args = [n for n in args if n not in ("loc", "logits")]
    what, value = bad
    # real-valued arguments reject only NaN and inf; positive ones reject all four
    candidates = positive_args + ([n for n in args if n in ("loc", "logits")] if what in ("nan", "inf") else [])
    name = data.draw(st.sampled_from(candidates))
    broken = dict(args)
    broken[name] = args[name].clone()
    broken[name].view(-1)[0] = value
    with pytest.raises(ValueError) as err:
        cls(**broken, validate_args=True)
    message = str(err.value)
    assert name in message and "\n" not in message, message


@SETTINGS
@given(case=cases())
def test_shapes_that_do_not_broadcast_are_a_one_line_value_error(case):
    kind, cls, args = case
    name = next(iter(args))
    broken = dict(args)
    broken[name] = torch.cat([args[name], args[name]], 0) if args[name].dim() else args[name].expand(5)
    if args[name].dim() and args[name].shape[0] * 2 in (1,):  # a doubled size-1 axis could still broadcast
        return
    others = [v for k, v in args.items() if k != name]
    if not others and kind == "dirichlet":  # one argument: any shape is valid
        return
    try:
        if kind == "mixture":  # logits [..., K] align with loc, scale [..., K, D] without their D axis
            torch.broadcast_shapes(broken["logits"].shape, broken["loc"].shape[:-1], broken["scale"].shape[:-1])
            torch.broadcast_shapes(broken["loc"].shape, broken["scale"].shape)
        else:
            torch.broadcast_shapes(broken[name].shape, *(v.shape for v in others))
        return  # still broadcastable (e.g. a size-1 axis against a doubled one): nothing to reject
    except RuntimeError:
        pass
    with pytest.raises(ValueError) as err:
        cls(**broken, validate_args=True)
    assert "\n" not in str(err.value) and "broadcast" in str(err.value)
