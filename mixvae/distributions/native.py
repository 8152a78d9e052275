"""The Graves backward pass in C on the CPU (``graves_native.c``), built on first use and called through ctypes.

The C file is compiled once per machine with the system C compiler (``$CC``, else ``cc``/``gcc``/``clang``) into
a cache directory (``$MIXVAE_CACHE_DIR``, else ``$XDG_CACHE_HOME/mixvae`` or ``~/.cache/mixvae``), keyed by the
source, the compiler and the flags; when that folder cannot be written, the temp directory serves. No PyTorch
headers are involved: the build takes about a second. Without a compiler :func:`available` is False and says why;
the PyTorch backends then run instead.

Kernel paths (:data:`ISA_FLAGS`): the vector ISA is detected at run time (:func:`detect_isa`: torch's cpuinfo probe,
on x86-64 only) and the file is compiled with that ISA's flags, never ``-march=native`` (which not every compiler or
architecture accepts): ``avx512`` (16 float lanes), ``avx2`` (8 lanes, with FMA) or ``plain`` (portable C, 4 lanes,
what any C compiler builds, aarch64 included). ``$MIXVAE_GRAVES_ISA`` forces a path; :func:`isa` names the one
loaded. A path whose flags the compiler rejects falls back to ``plain``.

ctypes releases the GIL during the call, so large batches are split over ``torch.get_num_threads()`` threads.
Large gradient buffers are reused across calls once nothing refers to them (:func:`_output`), so a training loop
does not pay page faults for fresh memory every step.

Subnormal numbers: on x86 the backward pass runs with the FPU's flush-to-zero mode on (set on entry, restored on
exit, per calling thread), so a result that would fall below the smallest normal number (1.2e-38 in float,
2.2e-308 in double) is 0. Such values arise where a component's weight given z_<d has decayed to ~1e-38, and every
operation on them costs a microcode assist of about a hundred cycles: at B = 100, K = 40, D = 200 they made the
backward pass 1.4-2x slower. What changes is below 1e-34 absolute in float (the loc and scale gradients of
components of negligible weight; measured on random problems against the unflushed kernel); inputs are read as
they are (no denormals-are-zero). The PyTorch backends keep IEEE gradual underflow.
"""

from __future__ import annotations

import ctypes
import hashlib
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

SOURCE = Path(__file__).resolve().with_name("graves_native.c")  # absolute: the file includes itself
_FLAGS = ["-O3", "-fPIC", "-shared", "-fno-math-errno", "-fno-trapping-math"]
#: Compiler flags of each kernel path; graves_native.c takes its vector width from what the compiler targets.
ISA_FLAGS = {
    "avx512": ["-mavx512f", "-mavx512dq", "-mavx512bw", "-mavx512vl", "-mavx2", "-mfma",
               "-mprefer-vector-width=512"],  # gcc otherwise splits the lane loops in two 256-bit halves on some
    "avx2": ["-mavx2", "-mfma"],
    "plain": [],
}
_X86 = ("x86_64", "amd64", "i386", "i686", "x86")
#: Batches with fewer (sample x component x dimension) elements than this run on one thread.
PARALLEL_MIN_ELEMENTS = 1 << 16

_lock = threading.Lock()
_state: dict = {"libs": {}, "errors": {}, "pool": None}


class NativeUnavailable(RuntimeError):
    """The C backend could not be built or loaded here (no compiler, or the build failed)."""


def cache_dir() -> Path:
    if os.environ.get("MIXVAE_CACHE_DIR"):
        return Path(os.environ["MIXVAE_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "mixvae"


def _compiler() -> str:
    for name in filter(None, (os.environ.get("CC"), "cc", "gcc", "clang")):
        path = shutil.which(name)
        if path:
            return path
    raise NativeUnavailable("no C compiler found (set $CC or install gcc)")


def detect_isa() -> str:
    """The fastest kernel path this CPU runs: ``$MIXVAE_GRAVES_ISA`` when set, else ``avx512``/``avx2`` from
    ``torch.backends.cpu.get_cpu_capability()`` (cpuinfo, read at run time) on x86-64, else ``plain``."""
    forced = os.environ.get("MIXVAE_GRAVES_ISA")
    if forced:
        if forced not in ISA_FLAGS:
            raise ValueError(f"MIXVAE_GRAVES_ISA={forced!r} is not a kernel path; choose one of {', '.join(ISA_FLAGS)}")
        return forced
    if platform.machine().lower() not in _X86:
        return "plain"
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except Exception:  # an old or unusual torch build: the portable path is always safe
        return "plain"
    return {"AVX512": "avx512", "AVX2": "avx2"}.get(capability, "plain")


def runnable_isas() -> list[str]:
    """The kernel paths this machine can run, fastest first (the detected one and every narrower one)."""
    order = list(ISA_FLAGS)
    return order[order.index(detect_isa()):]


def _build(isa: str | None = None) -> Path:
    """The shared library of kernel path ``isa`` (default: :func:`detect_isa`), compiled if not cached; the
    ``plain`` path when the compiler rejects the ISA's flags."""
    cc = _compiler()
    isa = isa or detect_isa()
    source = SOURCE.read_bytes()
    candidates = [ISA_FLAGS[isa]] + ([[]] if isa != "plain" else [])
    folder = _writable_cache()
    errors = []
    for arch in candidates:
        key = hashlib.sha256(b"\0".join([source, cc.encode(), " ".join(_FLAGS + arch).encode(),
                                         platform.machine().encode()])).hexdigest()[:16]
        target = folder / f"graves_native-{key}.so"
        if target.exists():
            return target
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
        os.close(fd)
        cmd = [cc, *_FLAGS, *arch, str(SOURCE), "-o", tmp, "-lm"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode == 0:
            os.replace(tmp, target)  # atomic: concurrent first uses (e.g. a joblib sweep) are safe
            return target
        os.unlink(tmp)
        errors.append(f"{' '.join(cmd)}: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ''}")
    raise NativeUnavailable("building the C Graves kernel failed: " + " | ".join(errors))


def _writable_cache() -> Path:
    for folder in (cache_dir(), Path(tempfile.gettempdir()) / f"mixvae-{os.getuid() if hasattr(os, 'getuid') else 0}"):
        try:  # a read-only cache (e.g. a home directory mounted read-only on a cluster): the temp directory
            folder.mkdir(parents=True, exist_ok=True)
            if os.access(folder, os.W_OK):
                return folder
        except OSError:
            continue
    raise NativeUnavailable(f"no writable folder for the C Graves kernel (tried {cache_dir()} and the temp "
                            "directory); set $MIXVAE_CACHE_DIR")


_SIGNATURES = {  # name -> (argument types, result type); each exists as name_f32 and name_f64
    "vjp": ([ctypes.c_int64] * 4 + [ctypes.c_void_p] * 9, None),
    "scratch": ([ctypes.c_int64] * 2, ctypes.c_int64),
    "sample_index": ([ctypes.c_int64] * 2 + [ctypes.c_void_p] * 3, None),
    "compose": ([ctypes.c_int64] * 3 + [ctypes.c_void_p] * 5, ctypes.c_int64),
    "check": ([ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64,
               ctypes.c_void_p], ctypes.c_int64),
    "bernoulli": ([ctypes.c_int64] * 3 + [ctypes.c_void_p] * 3, None),
    "gamma_grad": ([ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p], None),
    "von_mises_grad": ([ctypes.c_int64] + [ctypes.c_void_p] * 3 + [ctypes.c_int64] + [ctypes.c_void_p] * 2
                       + [ctypes.c_int64] + [ctypes.c_void_p] * 3, None),
}


class _Library:
    """A loaded build: ``fns[(name, dtype)]`` are its C functions, ``isa`` the path it was compiled for."""

    def __init__(self, path: Path):
        self.cdll = ctypes.CDLL(str(path))
        self.cdll.graves_isa.restype = ctypes.c_char_p
        self.isa = self.cdll.graves_isa().decode()
        self.fns = {}
        for name, (argtypes, restype) in _SIGNATURES.items():
            for suffix, dtype in (("f32", torch.float32), ("f64", torch.float64)):
                fn = getattr(self.cdll, f"graves_{name}_{suffix}")
                fn.argtypes, fn.restype = argtypes, restype
                self.fns[(name, dtype)] = fn


def _load(isa: str | None = None) -> _Library:
    """The kernel of path ``isa`` (default: the detected one), built and loaded once per process."""
    key = isa or "default"
    lib = _state["libs"].get(key)
    if lib is not None:
        return lib
    if key in _state["errors"]:
        raise NativeUnavailable(_state["errors"][key])
    with _lock:
        if key not in _state["libs"] and key not in _state["errors"]:
            try:
                _state["libs"][key] = _Library(_build(isa))
            except (NativeUnavailable, OSError, ValueError) as err:
                _state["errors"][key] = str(err)
    return _load(isa)


def available() -> bool:
    """True when the C kernel is built (or can be) and loaded."""
    if "default" in _state["libs"]:  # the per-call case, without the exception machinery
        return True
    try:
        _load()
        return True
    except NativeUnavailable:
        return False


def unavailable_reason() -> str | None:
    return None if available() else _state["errors"].get("default")


def isa() -> str | None:
    """The kernel path loaded by default (``avx512``, ``avx2`` or ``plain``), None when the kernel is unavailable."""
    return _load().isa if available() else None


def supports(t: torch.Tensor) -> bool:
    """Whether the C kernel handles tensors like ``t`` (CPU, float32 or float64)."""
    return t.is_cpu and (t.dtype is torch.float32 or t.dtype is torch.float64)


def _check_type(t: torch.Tensor) -> None:
    if not supports(t):
        raise NativeUnavailable(f"the C Graves kernel runs on CPU float32/float64, not {t.device} {t.dtype}")


def _ready(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``t`` as a contiguous tensor of ``dtype`` (no copy, and no op at all, when it already is one)."""
    if t.dtype is not dtype:
        t = t.to(dtype)
    return t if t.is_contiguous() else t.contiguous()


def sample_index(logits: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Component indices ``[N]`` (int64) from logits ``[N, K]`` and uniforms ``u [N]``: the inverse CDF, as
    ``DiagGaussianMixture.index_from_uniform``."""
    _check_type(logits)
    fn = _load().fns[("sample_index", logits.dtype)]
    n, k = logits.shape
    logits, u = _ready(logits.detach(), logits.dtype), _ready(u.detach(), logits.dtype)
    index = torch.empty(n, dtype=torch.int64)
    fn(n, k, logits.data_ptr(), u.data_ptr(), index.data_ptr())
    return index


def compose(loc: torch.Tensor, scale: torch.Tensor, index: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """z = loc[n, index[n]] + scale[n, index[n]] * eps[n]: ``[N, D]`` from loc, scale ``[N, K, D]``."""
    _check_type(loc)
    dtype = loc.dtype
    fn = _load().fns[("compose", dtype)]
    n, k, d = loc.shape
    loc, scale = _ready(loc.detach(), dtype), _ready(scale.detach(), dtype)
    index, eps = _ready(index, torch.int64), _ready(eps, dtype)
    z = torch.empty(n, d, dtype=dtype)
    if fn(n, k, d, loc.data_ptr(), scale.data_ptr(), index.data_ptr(), eps.data_ptr(), z.data_ptr()):
        raise IndexError(f"component index out of range [0, {k})")
    return z


#: check() bits, in the order DiagGaussianMixture reports them.
CHECK_BITS = (1, 2, 4, 8, 16)


def check(logits: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> int:
    """DiagGaussianMixture's value checks in one vectorised pass over each parameter (CPU, one dtype, contiguous;
    logits ``[..., K]``): a set of bits, 1 a logit NaN or +inf, 2 a row of logits all -inf, 4 loc not finite,
    8 scale not finite, 16 a scale <= 0. 0 when every value is valid."""
    dtype = loc.dtype
    fn = _load().fns[("check", dtype)]
    k = logits.shape[-1]
    return fn(logits.numel() // max(k, 1), k, logits.data_ptr(), loc.numel(), loc.data_ptr(), scale.numel(),
              scale.data_ptr())


def bernoulli_log_prob(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """sum_i x_i a_i - softplus(a_i) per row in one C pass (no gradient; for evaluation): logits a ``[R, dim]``,
    x ``[B, dim]`` with R a multiple of B, row r of a paired with row r % B of x (samples-major rows, as
    ``z.reshape(S * B, D)`` gives) -> ``[R]``. CPU float32/float64."""
    _check_type(logits)
    dtype = logits.dtype
    rows, dim = logits.shape
    logits, x = _ready(logits.detach(), dtype), _ready(x.detach(), dtype)
    if x.shape[-1] != dim or rows % x.shape[0]:
        raise ValueError(f"bernoulli_log_prob: logits {tuple(logits.shape)} do not pair with x {tuple(x.shape)}")
    out = torch.empty(rows, dtype=dtype)
    _load().fns[("bernoulli", dtype)](rows, x.shape[0], dim, logits.data_ptr(), x.data_ptr(), out.data_ptr())
    return out


def gamma_grad(alpha: torch.Tensor, x: torch.Tensor, max_iter: int) -> torch.Tensor:
    """dx/dalpha of standard gamma samples at fixed CDF (``gamma.standard_gamma_grad``'s contract for CPU
    float32/float64 tensors of one shape and dtype): computed in double per element, returned in their dtype."""
    _check_type(x)
    dtype = x.dtype
    alpha, x = _ready(alpha.detach(), dtype), _ready(x.detach(), dtype)
    if alpha.shape != x.shape:
        raise ValueError(f"gamma_grad: alpha {tuple(alpha.shape)} and x {tuple(x.shape)} differ in shape")
    out = torch.empty_like(x)
    _load().fns[("gamma_grad", dtype)](x.numel(), alpha.data_ptr(), x.data_ptr(), int(max_iter), out.data_ptr())
    return out


def von_mises_grad(kappa: torch.Tensor, x: torch.Tensor, a: torch.Tensor, bulk: tuple, tail: tuple,
                   dtype: torch.dtype) -> torch.Tensor:
    """dx/dkappa of centred von Mises samples (``von_mises.von_mises_concentration_grad``'s quadratures): kappa,
    x and a = I1(kappa) / I0(kappa) float64 ``[n]``, ``bulk`` and ``tail`` the (nodes, weights) float64 of the two
    Gauss-Legendre rules on [0, 1]; the result ``[n]`` in ``dtype`` (float32 or float64)."""
    if dtype not in (torch.float32, torch.float64):
        raise NativeUnavailable(f"von_mises_grad returns float32/float64, not {dtype}")
    args = [_ready(t.detach(), torch.float64) for t in (kappa, x, a, *bulk, *tail)]
    if not all(t.is_cpu for t in args) or len({t.numel() for t in args[:3]}) != 1:
        raise ValueError("von_mises_grad: kappa, x and a must be CPU tensors of one size")
    out = torch.empty(args[0].numel(), dtype=dtype)
    ptr = [t.data_ptr() for t in args]
    _load().fns[("von_mises_grad", dtype)](args[0].numel(), ptr[0], ptr[1], ptr[2], args[3].numel(), ptr[3],
                                           ptr[4], args[5].numel(), ptr[5], ptr[6], out.data_ptr())
    return out


def l2_cache_bytes() -> int:
    """This CPU's level-2 cache per core in bytes (sysconf, else sysfs; 1 MiB when neither says)."""
    if "l2" not in _state:
        size = 0
        try:
            size = int(os.sysconf("SC_LEVEL2_CACHE_SIZE") or 0)
        except (ValueError, OSError, AttributeError):
            pass
        if size <= 0:
            try:
                text = Path("/sys/devices/system/cpu/cpu0/cache/index2/size").read_text().strip().upper()
                size = int(text.rstrip("KMB")) * {"K": 1 << 10, "M": 1 << 20}.get(text[-1:], 1)
            except (OSError, ValueError):
                size = 0
        _state["l2"] = size if size > 0 else 1 << 20
    return _state["l2"]


#: The share of the L2 cache past which the 16-lane (AVX-512) kernel hands a problem to the 8-lane (AVX2) one.
WIDE_SCRATCH_SHARE = 0.75


def _vjp_library(isa: str | None, k: int, d: int, dtype: torch.dtype) -> _Library:
    """The build that runs a backward pass of K = k, D = d: the one asked for, else the detected one, except that
    an AVX-512 machine gives problems whose per-group scratch (4 K D values a lane) would exceed 3/4 of the L2
    cache to the AVX2 build: half the lanes, half the scratch. Measured side by side (Xeon, 2 MB L2, float32,
    kernel alone): at K D = 4000 (1 MB of scratch) the 16-lane build is 10-30% faster; at 6000 (1.5 MB) the two
    are even; at 8000 (2 MB; K = 40, D = 200 or K = 80, D = 100) the 8-lane one is 25-35% faster (5.4 against
    7.2 ms at B = 100, K = 40, D = 200). The two give the same results but for rounding (the same C, built with
    other vector widths). A path named by the caller or by ``$MIXVAE_GRAVES_ISA`` is kept whatever the size."""
    lib = _load(isa)
    if isa is not None or lib.isa != "avx512" or os.environ.get("MIXVAE_GRAVES_ISA"):
        return lib
    scratch_bytes = lib.fns[("scratch", dtype)](k, d) * torch.finfo(dtype).bits // 8
    # the CPU probe only for wide problems: the common small ones pay two comparisons on this hot path
    if scratch_bytes <= WIDE_SCRATCH_SHARE * l2_cache_bytes() or "avx2" not in runnable_isas():
        return lib
    try:
        return _load("avx2")
    except NativeUnavailable:
        return lib


def graves_vjp(grad_z, z, logits, loc, scale, isa: str | None = None):
    """dL/d(logits, loc, scale) from dL/dz: the same contract as ``graves_transform.graves_vjp`` (no blocks:
    the C sweep takes one dimension at a time, O(K) per step, for one vector of samples at once). CPU
    float32/float64 only; ``isa`` picks a kernel path (default: the detected one, see :func:`detect_isa`, with
    problems too wide for its cache on a narrower one: :func:`_vjp_library`)."""
    _check_type(loc)
    n, k, d = loc.shape
    dtype = loc.dtype
    lib = _vjp_library(isa, k, d, dtype)
    fn = lib.fns[("vjp", dtype)]
    scratch_size = lib.fns[("scratch", dtype)](k, d)
    inputs = [_ready(t, dtype) for t in (grad_z, z, logits, loc, scale)]
    grad_logits = torch.empty(n, k, dtype=dtype)
    grad_loc = _output((n, k, d), dtype)
    grad_scale = _output((n, k, d), dtype)
    pointers = [t.data_ptr() for t in (*inputs, grad_logits, grad_loc, grad_scale)]
    threads = min(torch.get_num_threads(), n) if n * k * d >= PARALLEL_MIN_ELEMENTS else 1
    scratch = _scratch(threads * scratch_size, dtype)
    if threads == 1:
        fn(0, n, k, d, *pointers, scratch.data_ptr())
    else:
        # whole groups of 16 samples (a multiple of every path's lanes) per thread, the remainder with the last
        scratch = scratch.view(threads, scratch_size)
        bounds = [min(n, (n * i // threads + 15) // 16 * 16) if i < threads else n for i in range(threads + 1)]
        pool = _pool(threads)
        jobs = [pool.submit(fn, bounds[i], bounds[i + 1], k, d, *pointers, scratch[i].data_ptr())
                for i in range(threads)]
        for job in jobs:
            job.result()
    return grad_logits, grad_loc, grad_scale


_local = threading.local()

#: Gradient buffers of at least this many bytes come from :func:`_output`'s pool.
POOL_MIN_BYTES = 1 << 18
_POOL_PER_SIZE = 4
_POOL_SIZES = 8  # distinct (size, dtype) kept, least recently used dropped first
_pool_lock = threading.Lock()
_pools: OrderedDict = OrderedDict()


def _output(shape, dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised CPU tensor for a gradient, its memory reused from an earlier call's output that nothing
    references any more.

    Fresh memory for a large tensor is often new pages from the OS (glibc returns freed blocks above its mmap or
    trim thresholds), and their page faults cost as much as the kernel itself at B=1000, K=10, D=50 when the
    previous step's gradients are still alive (e.g. accumulated into ``.grad``). The pool keeps up to
    ``_POOL_PER_SIZE`` numpy buffers for each of the ``_POOL_SIZES`` most recent (size, dtype); a buffer is handed
    out again only once no tensor refers to it (its reference count is back to the pool's own), so a gradient a
    caller keeps is never overwritten."""
    numel = math.prod(shape)
    np_dtype = np.float32 if dtype == torch.float32 else np.float64
    if numel * np.dtype(np_dtype).itemsize < POOL_MIN_BYTES:
        return torch.empty(shape, dtype=dtype)
    with _pool_lock:
        pool = _pools.setdefault((numel, dtype), [])
        _pools.move_to_end((numel, dtype))
        while len(_pools) > _POOL_SIZES:  # tensors still using a dropped buffer keep it alive themselves
            _pools.popitem(last=False)
        for i in range(len(pool)):
            if sys.getrefcount(pool[i]) == 2:  # the list's reference and getrefcount's argument: free
                return torch.from_numpy(pool[i]).view(shape)
        buf = np.empty(numel, dtype=np_dtype)
        if len(pool) < _POOL_PER_SIZE:
            pool.append(buf)
        return torch.from_numpy(buf).view(shape)


def _scratch(size: int, dtype: torch.dtype) -> torch.Tensor:
    """A work buffer kept between calls (per calling thread and dtype): allocating it afresh each call costs
    more than the kernel at small sizes (new pages are faulted in and zeroed by the OS)."""
    buffers = _local.__dict__.setdefault("buffers", {})
    buf = buffers.get(dtype)
    if buf is None or buf.numel() < size:
        buf = buffers[dtype] = torch.empty(size, dtype=dtype)
    return buf[:size]


def _pool(threads: int) -> ThreadPoolExecutor:
    """The worker threads, made again after a fork (a forked child inherits the pool but not its threads)."""
    pool, pid = _state["pool"], os.getpid()
    if pool is None or pool._max_workers < threads or _state.get("pool_pid") != pid:
        pool = _state["pool"] = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="mixvae-graves")
        _state["pool_pid"] = pid
    return pool
