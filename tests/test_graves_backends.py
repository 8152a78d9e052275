"""Every Graves backward backend (native C, compiled, eager) agrees with the plain PyTorch reference loop."""

import contextlib
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mixvae.distributions import DiagGaussianMixture, native
from mixvae.distributions import graves_transform as gt


@pytest.fixture
def backend():
    """``backend(name)`` chooses the backend for the rest of the test (a ``gt.backend`` block, left on teardown)."""
    with contextlib.ExitStack() as stack:
        yield lambda name: stack.enter_context(gt.backend(name))


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
    with pytest.raises(ValueError, match="choose one of auto, native, compile, eager, triton"):
        gt.set_backend("tpu")
    with pytest.raises(ValueError, match="choose one of auto, native, compile, eager, triton"):
        with gt.backend("tpu"):
            pass
    p = [torch.randn(2, 3), torch.randn(2, 3, 4), torch.ones(2, 3, 4)]
    with pytest.raises(ValueError, match=r"^unknown DiagGaussianMixture backend 'tpu'; choose one of auto"):
        DiagGaussianMixture(*p, backend="tpu")


def test_backend_is_chosen_per_distribution_and_per_block(monkeypatch):
    """The argument beats the block, the block beats the process default; a distribution keeps its backend, so
    its backward pass runs there even when called outside the block; nothing global changes."""
    ran = []
    original = gt.graves_vjp

    def spy(grad_z, z, logits, loc, scale, block_size=gt.DEFAULT_BLOCK_SIZE, backend=None):
        ran.append(backend)
        return original(grad_z, z, logits, loc, scale, block_size, backend)

    monkeypatch.setattr(gt, "graves_vjp", spy)
    default = gt.get_backend()
    p = [t.requires_grad_() for t in (torch.randn(3, 2), torch.randn(3, 2, 4), torch.rand(3, 2, 4).add(0.5))]
    with gt.backend("eager"):
        assert gt.get_backend() == "eager"
        q_block = DiagGaussianMixture(*p)
        q_arg = DiagGaussianMixture(*p, backend="native")
    assert gt.get_backend() == default
    for q in (q_block, q_arg, DiagGaussianMixture(*p)):
        q.rsample().sum().backward()
    assert ran == ["eager", "native", default]
    assert q_block.expand((3,)).backend == "eager"


def test_compiled_backend_keeps_the_users_validation_setting():
    """torch.compile turns torch.distributions validation off for the whole process when a compiled frame runs
    (dynamo's eval frame calls Distribution.set_default_validate_args(False)); after the compile backend ran, a
    default DiagGaussianMixture must still refuse a negative scale."""
    from torch.distributions import Distribution

    assert Distribution._validate_args  # torch's default
    p = [t.requires_grad_() for t in (torch.randn(4, 2), torch.randn(4, 2, 3), torch.rand(4, 2, 3).add(0.5))]
    DiagGaussianMixture(*p, backend="compile").rsample().sum().backward()
    assert Distribution._validate_args
    with pytest.raises(ValueError, match="scale must be > 0"):
        DiagGaussianMixture(p[0], p[1], -p[2])


def test_compile_under_another_cpu_capability_keeps_its_own_cache(monkeypatch, tmp_path):
    """Under ATEN_CPU_CAPABILITY the compiled code goes to <default>_aten_<capability>, so a later process at the
    CPU's own capability never loads it; the user's own TORCHINDUCTOR_CACHE_DIR is left alone."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr("tempfile.tempdir", None)  # tempfile.gettempdir() reads TMPDIR again
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    assert gt._own_inductor_cache() is None and "TORCHINDUCTOR_CACHE_DIR" not in os.environ
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "AVX2")
    default = os.path.abspath(default_cache_dir())
    assert default.startswith(str(tmp_path))
    assert gt._own_inductor_cache() == os.environ["TORCHINDUCTOR_CACHE_DIR"] == default + "_aten_avx2"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default)  # set by inductor itself earlier in the process
    assert gt._own_inductor_cache() == default + "_aten_avx2"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    assert gt._own_inductor_cache() is None and os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "mine")


@pytest.mark.slow
def test_compiled_backend_runs_after_a_process_under_another_capability(tmp_path):
    """End to end, the case that crashed: the compile backend at B = 1000, K = 10, D = 50 in a process under
    ATEN_CPU_CAPABILITY=avx2, then in one at the CPU's own capability with the same temporary folder (on an
    AVX-512 machine, before the fix, the second process died of a segmentation fault)."""
    code = ("import torch; from mixvae.distributions import DiagGaussianMixture as M; torch.manual_seed(0);"
            "p = [torch.randn(1000, 10).requires_grad_(), torch.randn(1000, 10, 50).requires_grad_(),"
            " torch.rand(1000, 10, 50).add(0.5).requires_grad_()];"
            "[M(*p, validate_args=False, backend='compile').rsample().sum().backward() for _ in range(3)];"
            "print('ok', float(p[0].grad.abs().sum()))")
    base = {k: v for k, v in os.environ.items() if k not in ("TORCHINDUCTOR_CACHE_DIR", "ATEN_CPU_CAPABILITY")}
    base["TMPDIR"] = str(tmp_path)
    outs = []
    for extra in ({"ATEN_CPU_CAPABILITY": "avx2"}, {}):
        out = subprocess.run([sys.executable, "-c", code], env={**base, **extra}, capture_output=True, text=True,
                             timeout=600)
        assert out.returncode == 0 and out.stdout.startswith("ok"), (extra, out.returncode, out.stderr[-2000:])
        outs.append(float(out.stdout.split()[1]))
    assert outs[0] == pytest.approx(outs[1], rel=1e-4)  # the same gradients at either capability
    assert [p.is_dir() for p in tmp_path.glob("torchinductor_*_aten_avx2")] == [True]  # the avx2 process's own


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


# ---- the C kernel (the default on CPU) --------------------------------------------------------------------------
@pytest.mark.parametrize("k,d", [(1, 1), (2, 1), (3, 7), (5, 40), (10, 50), (4, 129)])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-4), (torch.float64, 1e-10)])
def test_native_backend_matches_reference(backend, dtype, tol, k, d):
    backend("native")
    args = _problem(dtype, n=37, k=k, d=d, seed=k + d)
    got = gt.graves_vjp(*args)
    ref = gt.graves_vjp_reference(*(t.double() for t in args))
    for a, b in zip(got, ref):
        assert a.dtype == dtype
        assert torch.allclose(a.double(), b, rtol=tol, atol=tol), (a.double() - b).abs().max()


def test_native_threads_split_the_batch_exactly(monkeypatch):
    args = _problem(torch.float32, n=50, k=4, d=30)
    one = native.graves_vjp(*args)
    monkeypatch.setattr(native, "PARALLEL_MIN_ELEMENTS", 1)
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        split = native.graves_vjp(*args)
    finally:
        torch.set_num_threads(before)
    for a, b in zip(one, split):
        assert torch.equal(a, b)


def test_native_takes_strided_and_expanded_inputs(backend):
    backend("native")
    grad_z, z, logits, loc, scale = _problem(torch.float64, n=8, k=3, d=6)
    got = gt.graves_vjp(grad_z[:1].expand(8, 6), z.t().contiguous().t(), logits, loc, scale)
    ref = gt.graves_vjp_reference(grad_z[:1].expand(8, 6).contiguous(), z, logits, loc, scale)
    for a, b in zip(got, ref):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_native_compose_picks_the_component_and_refuses_bad_indices(dtype):
    _, _, _, loc, scale = _problem(dtype, n=9, k=4, d=5)
    index, eps = torch.tensor([0, 3, 1, 2, 3, 0, 1, 1, 2]), torch.randn(9, 5, dtype=dtype)
    rows = torch.arange(9)
    z = native.compose(loc, scale, index, eps)  # mu + sigma * eps, possibly fused (one rounding fewer)
    rtol = 1e-6 if dtype == torch.float32 else 1e-14
    assert torch.allclose(z, loc[rows, index] + scale[rows, index] * eps, rtol=rtol)
    for bad in (4, -1):
        index[6] = bad
        with pytest.raises(IndexError, match=r"component index out of range \[0, 4\)"):
            native.compose(loc, scale, index, eps)

def test_native_gradient_buffers_are_reused_only_when_free(monkeypatch):
    """Large gradients come from a pool (no fresh pages per call), but a gradient someone still holds is never
    handed out again: here the first call's results stay intact through later calls on other inputs."""
    monkeypatch.setattr(native, "POOL_MIN_BYTES", 1)
    monkeypatch.setattr(native, "_pools", native.OrderedDict())
    first_args = _problem(torch.float32, n=20, k=3, d=4, seed=1)
    kept = native.graves_vjp(*first_args)
    snapshot = [t.clone() for t in kept]
    other_args = _problem(torch.float32, n=20, k=3, d=4, seed=2)
    for _ in range(3):
        again = native.graves_vjp(*other_args)
        assert all(a.data_ptr() != b.data_ptr() for a in again[1:] for b in kept[1:])
    for a, b in zip(kept, snapshot):
        assert torch.equal(a, b)
    ptr = kept[1].data_ptr()
    del kept, again
    reused = native.graves_vjp(*other_args)
    assert ptr in {t.data_ptr() for t in reused[1:]}  # a buffer nobody holds any more comes back
    ref = gt.graves_vjp_reference(*(t.double() for t in other_args))
    for a, b in zip(reused, ref):
        assert torch.allclose(a.double(), b, rtol=2e-4, atol=2e-4)
    for n in range(21, 21 + 2 * native._POOL_SIZES):  # many batch sizes: the pool keeps only the recent ones
        native.graves_vjp(*_problem(torch.float32, n=n, k=3, d=4))
    assert len(native._pools) == native._POOL_SIZES

def test_double_backward_is_refused_not_wrong():
    """The forward graph of z is the fixed-index one, so differentiating the backward would silently give the
    wrong second derivative; it raises instead."""
    logits = torch.randn(2, 3, requires_grad=True)
    loc, scale = torch.randn(2, 3, 4, requires_grad=True), torch.rand(2, 3, 4).add(0.5).requires_grad_()
    z = DiagGaussianMixture(logits, loc, scale).rsample()
    (g,) = torch.autograd.grad(z.pow(2).sum(), loc, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        g.sum().backward()


def test_without_a_compiler_auto_falls_back_with_one_warning(tmp_path):
    """No C compiler: the native backend says why in one line, "auto" warns once and trains on PyTorch."""
    code = (
        "import warnings, torch\n"
        "from mixvae.distributions import DiagGaussianMixture, native\n"
        "from mixvae.distributions import graves_transform as gt\n"
        "assert not native.available() and 'no C compiler' in native.unavailable_reason()\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    p = [torch.randn(4, 2).requires_grad_(), torch.randn(4, 2, 3).requires_grad_(),\n"
        "         torch.rand(4, 2, 3).add(0.5).requires_grad_()]\n"
        "    for _ in range(2):\n"
        "        DiagGaussianMixture(*p).rsample().sum().backward()\n"
        "assert sum('C Graves kernel is unavailable' in str(x.message) for x in w) == 1, [str(x.message) for x in w]\n"
        "try:\n"
        "    DiagGaussianMixture(*p, backend='native').rsample().sum().backward()\n"
        "except native.NativeUnavailable as err:\n"
        "    print('ERR', err)\n"
    )
    env = {**os.environ, "PATH": str(tmp_path), "CC": "", "MIXVAE_CACHE_DIR": str(tmp_path / "cache"),
           "MIXVAE_GRAVES_BACKEND": "auto", "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "ERR no C compiler found" in out.stdout


def test_native_build_is_cached_per_source(tmp_path, monkeypatch):
    monkeypatch.setenv("MIXVAE_CACHE_DIR", str(tmp_path))
    first = native._build()
    assert first.parent == tmp_path and first.exists()
    assert native._build() == first  # a second call reuses the build


@pytest.mark.parametrize("isa", list(native.ISA_FLAGS))
@pytest.mark.parametrize("k,d,n", [(3, 21, 37), (10, 50, 40), (2, 1, 5), (4, 17, 16)])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-4), (torch.float64, 1e-10)])
def test_every_kernel_path_this_machine_runs_matches_reference(isa, dtype, tol, k, d, n):
    """Each kernel path (AVX-512: 16 float lanes, AVX2: 8, plain C: 4) built with its own flags, against the
    float64 reference; n not a multiple of the lanes leaves a partial group, d not a multiple a partial tile."""
    if isa not in native.runnable_isas():
        pytest.skip(f"this CPU does not run the {isa} path (it runs {', '.join(native.runnable_isas())})")
    args = _problem(dtype, n=n, k=k, d=d, seed=5 + k + d)
    got = native.graves_vjp(*args, isa=isa)
    assert native._load(isa).isa == isa  # the flags gave the path asked for
    ref = gt.graves_vjp_reference(*(t.double() for t in args))
    for a, b in zip(got, ref):
        assert torch.allclose(a.double(), b, rtol=tol, atol=tol), (isa, (a.double() - b).abs().max())


def test_isa_detection_and_override(monkeypatch):
    assert native.detect_isa() == native.runnable_isas()[0]
    assert native.runnable_isas()[-1] == "plain"  # every machine runs the portable path
    monkeypatch.setenv("MIXVAE_GRAVES_ISA", "plain")
    assert native.detect_isa() == "plain"
    monkeypatch.setenv("MIXVAE_GRAVES_ISA", "sse9")
    with pytest.raises(ValueError, match=r"^MIXVAE_GRAVES_ISA='sse9' is not a kernel path; choose one of"):
        native.detect_isa()
    monkeypatch.setattr(native.platform, "machine", lambda: "aarch64")
    monkeypatch.delenv("MIXVAE_GRAVES_ISA")
    assert native.detect_isa() == "plain"  # no x86 flags are ever passed to another architecture's compiler


def test_flags_a_compiler_rejects_fall_back_to_the_plain_path(tmp_path, monkeypatch):
    monkeypatch.setenv("MIXVAE_CACHE_DIR", str(tmp_path))
    monkeypatch.setitem(native.ISA_FLAGS, "avx2", ["-mno-such-flag-anywhere"])
    monkeypatch.setattr(native, "_state", {"libs": {}, "errors": {}, "pool": None})
    assert native._load("avx2").isa == "plain"


_AARCH64_CC, _QEMU = shutil.which("aarch64-linux-gnu-gcc"), shutil.which("qemu-aarch64")


@pytest.mark.skipif(not (_AARCH64_CC and _QEMU), reason="needs aarch64-linux-gnu-gcc and qemu-aarch64 "
                    "(apt-get install gcc-aarch64-linux-gnu qemu-user)")
def test_plain_path_builds_and_runs_on_aarch64(tmp_path):
    """The plain path cross-compiled for aarch64 with native.py's flags (no -march), run under qemu: a small C
    driver compares its float32 and float64 gradients with the float64 reference computed here."""
    args = _problem(torch.float64, n=19, k=3, d=9, seed=3)
    ref = gt.graves_vjp_reference(*args)
    data = tmp_path / "data.bin"
    np_args = [t.contiguous().numpy() for t in (*args, *ref)]
    with open(data, "wb") as fh:
        for a in np_args:
            fh.write(a.tobytes())
    driver = Path(__file__).with_name("aarch64_driver.c")
    exe = tmp_path / "driver"
    flags = [f for f in native._FLAGS if f != "-shared"]  # the library's flags, linked into a program instead
    cmd = [_AARCH64_CC, *flags, *native.ISA_FLAGS["plain"], "-static", f"-DKERNEL=\"{native.SOURCE}\"", str(driver), "-o", str(exe), "-lm"]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    out = subprocess.run([_QEMU, str(exe), str(data), "19", "3", "9"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    fields = dict(line.split(" ", 1) for line in out.stdout.strip().splitlines())
    assert fields["isa"] == "plain"
    assert float(fields["f64_max_error"]) < 1e-10 and float(fields["f32_max_error"]) < 2e-4, out.stdout


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_index_sampler_native_matches_pytorch(backend, dtype):
    """Both backends draw k by the inverse CDF of the same uniform; a zero-weight component is never drawn and
    the frequencies are the weights."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 5, generator=g, dtype=dtype)
    logits[:, 0] = -math.inf  # zero weight first, inside and last
    logits[1, 2] = -math.inf
    logits[2, 4] = -math.inf
    q = DiagGaussianMixture(logits, torch.zeros(4, 5, 1, dtype=dtype), torch.ones(4, 5, 1, dtype=dtype))
    u = torch.rand(20000, 4, generator=g, dtype=dtype)
    backend("native")
    fast = q.index_from_uniform(u)
    backend("eager")
    slow = q.index_from_uniform(u)
    assert (fast != slow).float().mean() < 1e-3  # only where u sits on a boundary, up to rounding
    assert not (fast == 0).any() and not (fast[:, 1] == 2).any() and not (fast[:, 2] == 4).any()
    freq = torch.nn.functional.one_hot(fast, 5).to(dtype).mean(0)  # [4, 5]
    probs = logits.softmax(-1)
    se = (probs * (1 - probs) / u.shape[0]).sqrt().clamp_min(1e-12)
    assert ((freq - probs).abs() / se).max() < 5


def test_native_build_falls_back_to_the_temp_dir_when_the_cache_is_unusable(tmp_path, monkeypatch):
    """A cache folder that cannot be made (here: below a file; on clusters: a read-only home) -> the temp dir."""
    (tmp_path / "a_file").write_text("")
    monkeypatch.setenv("MIXVAE_CACHE_DIR", str(tmp_path / "a_file" / "cache"))
    monkeypatch.setattr(native.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    built = native._build()
    assert built.exists() and built.parent.parent == tmp_path / "tmp"


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-3), (torch.float64, 1e-9)])
def test_native_bernoulli_log_prob_matches_float64(dtype, tol):
    """The fused evaluation likelihood: sum_i x_i a_i - softplus(a_i), row r paired with x's row r % B (one pass;
    within 2^-24 per pixel of float64 for float32, 784 pixels: < 1e-3 in all)."""
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(3, 789, generator=g) < 0.4).to(torch.float64)  # 789: a partial vector at the end of a row
    a = 6 * torch.randn(4 * 3, 789, generator=g, dtype=torch.float64)
    a[0, :3] = torch.tensor([-100.0, 100.0, 0.0])
    got = native.bernoulli_log_prob(a.to(dtype), x.to(dtype))
    ref = (x.repeat(4, 1) * a - a.clamp(min=0) - torch.log1p(torch.exp(-a.abs()))).sum(-1)  # F.softplus cuts at 20
    assert got.dtype == dtype and torch.allclose(got.double(), ref, rtol=0, atol=tol), (got.double() - ref).abs().max()
    with pytest.raises(ValueError, match="do not pair"):
        native.bernoulli_log_prob(a[:5].to(dtype), x.to(dtype))


def test_native_flush_to_zero_is_scoped_to_the_kernel():
    """The C backward pass runs with flush-to-zero on (subnormal results are 0: each costs a microcode assist) and
    gives the caller's floating-point mode back: after it, float32 still underflows gradually. What the flush changes
    stays inside the float32 kernel's usual tolerance against the float64 reference, on a problem whose far
    components' weights decay through the subnormal range (K = 6, D = 120, means 2 sigma apart)."""
    if not native.available():
        pytest.skip(native.unavailable_reason())

    def underflow():
        return (torch.tensor([1e-30]) * torch.tensor([1e-10])).item()

    before = underflow()
    assert before != 0.0  # gradual underflow
    args = _problem(torch.float32, n=40, k=6, d=120, seed=11)
    got = native.graves_vjp(*args)
    assert underflow() == before  # the caller's mode is back
    ref = gt.graves_vjp_reference(*(t.double() for t in args))
    for a, b in zip(got, ref):
        assert torch.allclose(a.double(), b, rtol=2e-4, atol=2e-4), (a.double() - b).abs().max()


def test_wide_problems_take_the_narrower_kernel_on_avx512(monkeypatch):
    """On an AVX-512 machine a problem whose 16-lane scratch would overflow 3/4 of the L2 cache runs on the
    8-lane AVX2 build (half the scratch; faster there, see native._vjp_library); smaller ones, and any call that
    names its path, run where they were asked."""
    if not native.available():
        pytest.skip(native.unavailable_reason())
    if native.isa() != "avx512" or "avx2" not in native.runnable_isas():
        pytest.skip(f"this machine's kernel path is {native.isa()}: nothing narrower to hand wide problems to")
    assert native.l2_cache_bytes() > 0
    args = _problem(torch.float32, n=20, k=6, d=30, seed=5)  # 4 * 6 * 30 * 16 floats: 46 KB of scratch
    monkeypatch.setitem(native._state, "l2", 1 << 30)
    assert native._vjp_library(None, 6, 30, torch.float32).isa == "avx512"
    wide = native.graves_vjp(*args)
    assert all(torch.equal(a, b) for a, b in zip(wide, native.graves_vjp(*args, isa="avx512")))
    monkeypatch.setitem(native._state, "l2", 32 << 10)  # now 46 KB is past 3/4 of the "L2"
    assert native._vjp_library(None, 6, 30, torch.float32).isa == "avx2"
    assert native._vjp_library("avx512", 6, 30, torch.float32).isa == "avx512"
    monkeypatch.setenv("MIXVAE_GRAVES_ISA", "avx512")  # a path forced by the environment is kept too
    assert native._vjp_library(None, 6, 30, torch.float32).isa == "avx512"
    monkeypatch.delenv("MIXVAE_GRAVES_ISA")
    narrow = native.graves_vjp(*args)
    assert all(torch.equal(a, b) for a, b in zip(narrow, native.graves_vjp(*args, isa="avx2")))
    ref = gt.graves_vjp_reference(*(t.double() for t in args))
    for a, b in zip(narrow, ref):
        assert torch.allclose(a.double(), b, rtol=2e-4, atol=2e-4)
