"""The Triton Graves kernels (graves_triton.py) against the float64 reference, and the dispatch that picks them
("auto" on CUDA float32, "triton" when asked).

Without a GPU the kernels run in Triton's interpreter, which has to be switched on (TRITON_INTERPRET=1) before
triton is first imported: one child process started with it runs every kernel call these tests need (inputs and
outputs through torch.save), and the comparisons happen here, against the reference run in float64."""

import os
import subprocess
import sys
import warnings

import pytest
import torch
from test_graves_backends import _problem as _backends_problem

from mixvae.distributions import DiagGaussianMixture, graves_triton, native
from mixvae.distributions import graves_transform as gt

pytest.importorskip("triton")

SIZES = [(5, 1, 3), (7, 3, 5), (33, 5, 9), (3, 17, 4)]  # (N, K, D): K = 1, K not a power of two, N % 4 != 0
TOL = 2e-4  # float32 against the float64 reference, as for the C kernel in test_graves_backends.py


def _problem(dtype, n, k, d, seed=0):
    """test_graves_backends._problem: z drawn from the mixture, unit-scale random dL/dz."""
    return tuple(_backends_problem(dtype, n=n, k=k, d=d, seed=seed))


def _tail_problem(n, k, d, tails):
    grad_z, z, logits, loc, scale = _problem(torch.float32, n=n, k=k, d=d, seed=n + k + d)
    if tails:  # some samples far to the right of every component, some far to the left in every other dimension
        z = z.clone()
        z[::3] += 25.0
        z[1::3, ::2] -= 18.0
    return grad_z, z, logits, loc, scale


def _jobs():
    """name -> (what the child runs, its tensors, keyword arguments)."""
    jobs = {f"vjp-{n}-{k}-{d}-{tails}": ("vjp", _tail_problem(n, k, d, tails), {"block_n": 4})
            for n, k, d in SIZES for tails in (False, True)}
    for perturb in (1, 2):
        jobs[f"perturbed-{perturb}"] = ("vjp", _tail_problem(7, 3, 5, False), {"block_n": 4, "_perturb": perturb})
    jobs["strided"] = ("vjp_strided", _problem(torch.float32, n=9, k=3, d=6, seed=2), {})
    _, _, _, loc, scale = _problem(torch.float32, n=9, k=4, d=5)
    index, eps = torch.tensor([0, 3, 1, 2, 3, 0, 1, 1, 2]), torch.randn(9, 5, generator=torch.Generator().manual_seed(1))
    jobs["compose"] = ("compose", (loc, scale, index, eps), {})
    jobs["compose-bad"] = ("compose", (loc, scale, index.clone().index_fill_(0, torch.tensor([6]), 4), eps), {})
    grad_z, _, logits, loc, scale = _problem(torch.float32, n=6, k=3, d=4, seed=4)
    jobs["draw"] = ("draw", (grad_z, logits, loc, scale), {})
    jobs["float64"] = ("dispatch", tuple(t.double() for t in _problem(torch.float32, n=4, k=2, d=3)), {})
    return jobs


CHILD = r"""
import sys, warnings
import numpy as np
import torch
from mixvae.distributions import DiagGaussianMixture, graves_triton
from mixvae.distributions import graves_transform as gt

assert graves_triton.available(torch.zeros(1)), "the interpreter is not on"
calls = {"graves_vjp": 0, "compose": 0}
for name in calls:
    def counted(*args, _name=name, _fn=getattr(graves_triton, name), **kwargs):
        calls[_name] += 1
        return _fn(*args, **kwargs)
    setattr(graves_triton, name, counted)
out = {}
with np.errstate(all="ignore"):  # exp overflowing to inf where f underflows (then masked by where), as on a GPU
    for name, (kind, args, kwargs) in torch.load(sys.argv[1]).items():
        try:
            if kind == "vjp":
                out[name] = graves_triton.graves_vjp(*args, **kwargs)
            elif kind == "vjp_strided":
                grad_z, z, logits, loc, scale = args
                d = z.shape[1]
                out[name] = graves_triton.graves_vjp(grad_z[:1].expand(z.shape[0], d), z.t().contiguous().t(),
                                                     logits, loc[:, :, :].transpose(1, 2).contiguous().transpose(1, 2),
                                                     scale)
            elif kind == "compose":
                out[name] = graves_triton.compose(*args)
            elif kind == "dispatch":
                out[name] = gt.graves_vjp(*args, backend="triton")
            elif kind == "draw":
                grad_z, logits, loc, scale = args
                before = dict(calls)
                p = [t.clone().requires_grad_() for t in (logits, loc, scale)]
                torch.manual_seed(0)
                z = DiagGaussianMixture(*p, backend="triton").rsample()
                (z * grad_z).sum().backward()
                out[name] = (z.detach(), *(t.grad for t in p),
                             {k: calls[k] - before[k] for k in calls})
        except Exception as err:
            out[name] = f"{type(err).__name__}: {err}"
torch.save(out, sys.argv[2])
"""


@pytest.fixture(scope="module")
def interpreted(tmp_path_factory):
    """Every kernel call of _jobs(), run once by the interpreter in a child process: name -> its outputs (or the
    error it raised, as "Type: message")."""
    folder = tmp_path_factory.mktemp("triton")
    torch.save(_jobs(), folder / "jobs.pt")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-c", CHILD, str(folder / "jobs.pt"), str(folder / "out.pt")], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return torch.load(folder / "out.pt")


def _reference(*args):
    return gt.graves_vjp_reference(*(t.double() for t in args))


def _close(got, ref):
    return all(torch.allclose(a.double(), b, rtol=TOL, atol=TOL) for a, b in zip(got, ref))


def _max_errors(got, ref):
    return [f"{(a.double() - b).abs().max().item():.1e}" for a, b in zip(got, ref)]


@pytest.mark.parametrize("tails", [False, True], ids=["near", "tails"])
@pytest.mark.parametrize("n,k,d", SIZES)
def test_triton_backward_matches_float64_reference(interpreted, n, k, d, tails):
    """float32 kernel, float64 reference; four samples per program leaves a partial block of samples."""
    got = interpreted[f"vjp-{n}-{k}-{d}-{tails}"]
    assert not isinstance(got, str), got
    ref = _reference(*_tail_problem(n, k, d, tails))
    for a, b in zip(got, ref):
        assert a.dtype == torch.float32 and a.shape == b.shape
    assert _close(got, ref), _max_errors(got, ref)


@pytest.mark.parametrize("perturb", [1, 2], ids=["chat_sign", "grad_loc_drops_C"])
def test_a_perturbed_kernel_fails_the_comparison(interpreted, perturb):
    """The twin of the test above: the same comparison, with a wrong sign in chat (1) or grad_loc's C_k term
    dropped (2) inside the kernel, fails; the unperturbed kernel on the same problem passes it."""
    ref = _reference(*_tail_problem(7, 3, 5, False))
    assert _close(interpreted["vjp-7-3-5-False"], ref)
    wrong = interpreted[f"perturbed-{perturb}"]
    assert not isinstance(wrong, str), wrong
    assert not _close(wrong, ref), _max_errors(wrong, ref)


def test_default_blocks_and_strided_inputs(interpreted):
    """The default samples per program (one partial block) and expanded / non-contiguous inputs."""
    grad_z, z, logits, loc, scale = _problem(torch.float32, n=9, k=3, d=6, seed=2)
    got = interpreted["strided"]
    assert not isinstance(got, str), got
    ref = _reference(grad_z[:1].expand(9, 6), z, logits, loc, scale)
    assert _close(got, ref), _max_errors(got, ref)


def test_compose_picks_the_component_and_marks_bad_indices(interpreted):
    _, _, _, loc, scale = _problem(torch.float32, n=9, k=4, d=5)
    _, (_, _, index, eps), _ = _jobs()["compose"]
    rows = torch.arange(9)
    assert torch.allclose(interpreted["compose"], loc[rows, index] + scale[rows, index] * eps, rtol=1e-6, atol=1e-6)
    bad = interpreted["compose-bad"]
    assert bad[6].isnan().all() and not bad[rows != 6].isnan().any()


def test_backend_triton_runs_a_whole_draw_and_backward(interpreted):
    """DiagGaussianMixture(backend="triton"): the draw goes through the compose kernel, the backward through the
    backward kernel, and the gradients are the reference's at the drawn z."""
    grad_z, _, logits, loc, scale = _problem(torch.float32, n=6, k=3, d=4, seed=4)
    result = interpreted["draw"]
    assert not isinstance(result, str), result
    z, *grads, calls = result
    assert calls == {"graves_vjp": 1, "compose": 1}
    ref = _reference(grad_z, z, logits, loc, scale)
    assert _close(grads, ref), _max_errors(grads, ref)


def test_backend_triton_refuses_what_it_cannot_run_in_one_line(interpreted, monkeypatch):
    assert interpreted["float64"].startswith(  # in the child, with the interpreter on
        "TritonUnavailable: the triton Graves backend runs float32 tensors, not torch.float64; use backend='auto'")
    args = _problem(torch.float32, n=4, k=2, d=3)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(graves_triton.TritonUnavailable,
                       match=r"^the triton Graves backend runs CUDA tensors \(or any with TRITON_INTERPRET=1\), "
                             r"not cpu; use backend='auto' or 'native' on CPU$"):
        gt.graves_vjp(*args, backend="triton")
    if not graves_triton._INTERPRET_AT_IMPORT:
        monkeypatch.setenv("TRITON_INTERPRET", "1")  # too late for this process: said so, not a crash inside triton
        with pytest.raises(graves_triton.TritonUnavailable, match=r"^TRITON_INTERPRET=1 was set after triton was "
                           r"imported .*; use backend='auto' or 'native' on CPU$"):
            gt.graves_vjp(*args, backend="triton")
    monkeypatch.setattr(graves_triton, "triton", None)
    monkeypatch.setattr(graves_triton, "_IMPORT_ERROR", "ModuleNotFoundError: No module named 'triton'")
    with pytest.raises(graves_triton.TritonUnavailable, match=r"^the triton Graves backend needs the triton package"):
        gt.graves_vjp(*args, backend="triton")


def test_kernel_constants_are_the_reference_ones():
    """The kernel spells out the Mills-ratio polynomial (a jitted function reads no plain globals): the same
    coefficients as graves_transform._MILLS_POLY, log sqrt(2 pi), sqrt(pi / 2) and 1 / (2 sqrt 2)."""
    import inspect
    import math

    source = inspect.getsource(graves_triton._graves_backward)
    for c in gt._MILLS_POLY:
        assert f"{c:.9e}" in source
    for constant in (0.5 * math.log(2 * math.pi), math.sqrt(math.pi / 2), 0.5 * gt._INV_SQRT2):
        assert repr(constant) in source


def test_kernels_compile_for_cuda_without_a_gpu():
    """The interpreter runs the kernels' Python, not Triton's compiler: compile both here for an sm_90 GPU (up to
    the cubin, with triton's own ptxas; no driver needed), at the block shapes a K = 5 problem takes."""
    if graves_triton._INTERPRET_AT_IMPORT:
        pytest.skip("this process runs triton's interpreter")
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    def signature(kernel):
        return {p.name: "constexpr" if p.is_constexpr else "*i64" if p.name == "index_ptr"
                else "*fp32" if p.name.endswith("_ptr") else "i32" for p in kernel.params}

    backward, compose = graves_triton._kernels()
    block_n = graves_triton._block_n(1 << 14, 8)
    for kernel, constants, warps in [
            (backward, {"PERTURB": 0, "BLOCK_N": block_n, "BLOCK_K": 8}, graves_triton._num_warps(block_n * 8)),
            (compose, {"BLOCK_N": 16, "BLOCK_D": 128}, 4)]:
        source = ASTSource(kernel, signature=signature(kernel), constexprs=constants)
        built = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps})
        assert "cubin" in built.asm and built.metadata.num_warps == warps


@pytest.fixture
def fake_cuda(monkeypatch):
    """Pretend CPU tensors are on CUDA with triton available; the kernel is a spy returning the reference (its
    calls in .calls; it raises when .fail is set); torch.compile is skipped (the compiled path runs eagerly)."""
    calls = []

    def spy(*args, **kwargs):
        calls.append(args[3].shape)
        if spy.fail:
            raise RuntimeError("PTX assembly failed\nsecond line")
        return gt.graves_vjp_reference(*args)

    spy.fail, spy.calls = False, calls
    monkeypatch.setattr(gt, "_on_cuda", lambda t: True)
    monkeypatch.setattr(graves_triton, "available", lambda t=None: True)
    monkeypatch.setattr(graves_triton, "graves_vjp", spy)
    monkeypatch.setattr(gt, "_compiled", lambda fn: fn)
    monkeypatch.setitem(gt._state, "triton_failed", False)
    monkeypatch.setitem(gt._state, "triton_verified", {"cpu": True})  # auto's self-check: passed (tested apart)
    monkeypatch.setitem(gt._state, "failed", False)
    monkeypatch.setattr(native, "supports", lambda t: False)  # as for a CUDA tensor
    return spy


def test_auto_self_check_refuses_a_kernel_that_disagrees_with_the_reference(fake_cuda, monkeypatch):
    """Before auto first uses the kernel on a device it checks it once against the float64 reference: a wrong
    kernel (here 1 % off in grad_loc) is never used; one warning, and the compiled / eager path gives the
    reference's gradients. A correct kernel passes the check and is used."""
    monkeypatch.setitem(gt._state, "triton_verified", {})
    args = _problem(torch.float32, n=4, k=2, d=3)
    ref = gt.graves_vjp_reference(*args)

    def wrong(*a, **k):
        g_logits, g_loc, g_scale = gt.graves_vjp_reference(*a)
        return g_logits, g_loc * 1.01, g_scale

    monkeypatch.setattr(graves_triton, "graves_vjp", wrong)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = gt.graves_vjp(*args, backend="auto")
        gt.graves_vjp(*args, backend="auto")
    messages = [str(w.message) for w in caught if "Triton" in str(w.message)]
    assert len(messages) == 1 and "disagrees with the reference" in messages[0] and "loc" in messages[0]
    for a, b in zip(got, ref):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-5)

    monkeypatch.setitem(gt._state, "triton_verified", {})
    monkeypatch.setitem(gt._state, "triton_failed", False)
    monkeypatch.setattr(graves_triton, "graves_vjp", fake_cuda)
    gt.graves_vjp(*args, backend="auto")
    assert gt._state["triton_verified"] == {"cpu": True} and len(fake_cuda.calls) == 2  # the check, then the call


def test_auto_takes_triton_on_cuda_float32(fake_cuda):
    args = _problem(torch.float32, n=4, k=2, d=3)
    gt.graves_vjp(*args, backend="auto")
    assert len(fake_cuda.calls) == 1
    gt.graves_vjp(*(t.double() for t in args), backend="auto")  # float64: the compiled path, not the kernel
    gt.graves_vjp(*args, backend="compile")
    assert len(fake_cuda.calls) == 1


def test_auto_falls_back_from_a_failing_kernel_with_one_warning(fake_cuda):
    fake_cuda.fail = True
    args = _problem(torch.float32, n=4, k=2, d=3)
    ref = gt.graves_vjp_reference(*args)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            got = gt.graves_vjp(*args, backend="auto")
            for a, b in zip(got, ref):
                assert torch.allclose(a, b, rtol=1e-5, atol=1e-5)
    messages = [str(w.message) for w in caught if "Triton" in str(w.message)]
    assert messages == ["mixvae: the Triton Graves backward kernel failed (RuntimeError: PTX assembly failed); "
                        "using torch.compile / PyTorch"]
    assert len(fake_cuda.calls) == 1  # not tried again
    with pytest.raises(RuntimeError, match="PTX assembly failed"):  # asked for by name: the error, no fallback
        gt.graves_vjp(*args, backend="triton")


def test_auto_on_cpu_stays_native(monkeypatch):
    """CPU tensors never take the Triton kernel under "auto", even where it could run (the interpreter)."""
    if not native.available():
        pytest.skip(native.unavailable_reason())
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(graves_triton, "available", lambda t=None: True)
    monkeypatch.setattr(graves_triton, "graves_vjp", lambda *a, **k: pytest.fail("auto took triton on CPU"))
    monkeypatch.setattr(graves_triton, "compose", lambda *a, **k: pytest.fail("auto took triton on CPU"))
    args = _problem(torch.float32, n=4, k=2, d=3)
    for a, b in zip(gt.graves_vjp(*args, backend="auto"), native.graves_vjp(*args)):
        assert torch.equal(a, b)
    p = [t.requires_grad_() for t in (torch.randn(3, 2), torch.randn(3, 2, 4), torch.rand(3, 2, 4).add(0.5))]
    DiagGaussianMixture(*p, backend="auto").rsample().sum().backward()


def test_describe_backend_names_what_runs_on_cuda(monkeypatch):
    """summary.json's graves_backend for a CUDA run says Triton (float32) / compile (float64), and compile once
    the kernel has failed or disagreed with the reference."""
    monkeypatch.setitem(gt._state, "triton_failed", False)
    assert gt.describe_backend("auto", device="cuda") == "auto (CUDA: triton for float32, compile for float64)"
    assert gt.describe_backend("eager", device="cuda") == "eager"
    assert gt.describe_backend("auto", device="cpu").startswith("auto (CPU:")
    monkeypatch.setitem(gt._state, "triton_failed", True)
    assert gt.describe_backend("auto", device="cuda").startswith("auto (CUDA: compile;")


@pytest.mark.cuda
@pytest.mark.parametrize("n,k,d", [*SIZES, (1000, 10, 50), (100, 40, 200), (257, 5, 50)])
@pytest.mark.parametrize("tails", [False, True])
def test_triton_kernel_on_cuda_matches_the_reference(n, k, d, tails):
    """On a GPU: the compiled Triton kernel (default block sizes) against the float64 reference, and auto taking
    it (after its self-check) for a DiagGaussianMixture's rsample + backward."""
    args = _tail_problem(n, k, d, tails)
    ref = gt.graves_vjp_reference(*(t.double() for t in args))
    got = graves_triton.graves_vjp(*(t.cuda() for t in args))
    for a, b in zip(got, ref):
        err = ((a.cpu().double() - b).abs() / (1 + b.abs())).max().item()
        assert err <= TOL, err
    got_auto = gt.graves_vjp(*(t.cuda() for t in args), backend="auto")
    assert not gt._state["triton_failed"] and gt._state["triton_verified"].get("cuda:0", True)
    for a, b in zip(got_auto, got):
        assert torch.equal(a, b)
    p = [t.cuda().requires_grad_() for t in (args[2], args[3], args[4])]
    DiagGaussianMixture(*p).rsample((3,)).sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in p)
