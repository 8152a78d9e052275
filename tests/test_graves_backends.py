"""The compiled Graves backward (the default backend) agrees with the plain PyTorch reference loop."""

import pytest
import torch

from mixvae.distributions import DiagGaussianMixture
from mixvae.distributions import graves_transform as gt


@pytest.fixture
def backend():
    before = gt.get_backend()
    yield gt.set_backend
    gt.set_backend(before)


def _problem(dtype, device="cpu", n=64, k=5, d=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, generator=g, dtype=dtype)
    loc = 2 * torch.randn(n, k, d, generator=g, dtype=dtype)
    scale = 0.3 + torch.rand(n, k, d, generator=g, dtype=dtype)
    idx = torch.randint(k, (n,), generator=g)
    z = loc[torch.arange(n), idx] + scale[torch.arange(n), idx] * torch.randn(n, d, generator=g, dtype=dtype)
    grad_z = torch.randn(n, d, generator=g, dtype=dtype)
    return [t.to(device) for t in (grad_z, z, logits, loc, scale)]


@pytest.mark.parametrize("d", [40, 100])  # one compiled graph (D <= 2 blocks); compiled coefficients (more blocks)
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-4), (torch.float64, 1e-9)])
def test_compiled_backend_matches_reference(backend, dtype, tol, d):
    backend("compile")
    args = _problem(dtype, d=d)
    got = gt.graves_vjp(*args)
    ref = gt.graves_vjp_reference(*args)  # always eager, one step per dimension
    for a, b in zip(got, ref):
        assert torch.allclose(a, b.to(a.dtype), rtol=tol, atol=tol)


def test_eager_float32_matches_float64_reference(backend):
    backend("eager")
    args = _problem(torch.float32)
    got = gt.graves_vjp(*args)
    ref = gt.graves_vjp_reference(*(t.double() for t in args))
    for a, b in zip(got, ref):
        assert torch.allclose(a.double(), b, rtol=1e-3, atol=1e-3)


def test_unknown_backend_is_a_clear_error():
    with pytest.raises(ValueError, match="choose one of auto, compile, eager"):
        gt.set_backend("triton")


@pytest.mark.cuda
def test_compiled_cuda_matches_cpu_reference(backend):
    backend("auto")
    args = _problem(torch.float32, "cuda")
    got = gt.graves_vjp(*args)
    ref = gt.graves_vjp_reference(*(t.cpu().double() for t in args))
    for a, b in zip(got, ref):
        assert torch.allclose(a.cpu().double(), b, rtol=1e-3, atol=1e-3)
    q = DiagGaussianMixture(*(t.requires_grad_() for t in args[2:]))
    q.rsample((2,)).sum().backward()
