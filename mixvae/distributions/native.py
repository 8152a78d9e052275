"""The Graves backward pass in C on the CPU (``graves_native.c``), built on first use and called through ctypes.

The C file is compiled once per machine with the system C compiler (``$CC``, else ``cc``/``gcc``/``clang``) into
a cache directory (``$MIXVAE_CACHE_DIR``, else ``$XDG_CACHE_HOME/mixvae`` or ``~/.cache/mixvae``), keyed by the
source, the compiler, the flags and the CPU (the build uses ``-march=native``), so a shared home directory on
machines with different CPUs keeps one build each; when that folder cannot be written, the temp directory
serves. No PyTorch headers are involved: the build takes about a
second. Without a compiler :func:`available` is False and says why; the PyTorch backends then run instead.

ctypes releases the GIL during the call, so large batches are split over ``torch.get_num_threads()`` threads.
Large gradient buffers are reused across calls once nothing refers to them (:func:`_output`), so a training loop
does not pay page faults for fresh memory every step.
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
_ARCH_FLAGS = ["-march=native"]
#: Batches with fewer (sample x component x dimension) elements than this run on one thread.
PARALLEL_MIN_ELEMENTS = 1 << 16

_lock = threading.Lock()
_state: dict = {"lib": None, "error": None, "pool": None}


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


def _cpu_signature() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            lines = [line for line in f if line.startswith(("model name", "flags"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return platform.processor() + platform.machine()


def _build() -> Path:
    cc = _compiler()
    source = SOURCE.read_bytes()
    key = hashlib.sha256(b"\0".join([source, cc.encode(), " ".join(_FLAGS + _ARCH_FLAGS).encode(),
                                     _cpu_signature().encode()])).hexdigest()[:16]
    name = f"graves_native-{key}.so"
    for folder in (cache_dir(), Path(tempfile.gettempdir()) / f"mixvae-{os.getuid() if hasattr(os, 'getuid') else 0}"):
        if (folder / name).exists():
            return folder / name
        try:  # a read-only cache (e.g. a home directory mounted read-only on a cluster): the temp directory
            folder.mkdir(parents=True, exist_ok=True)
            if os.access(folder, os.W_OK):
                break
        except OSError:
            continue
    else:
        raise NativeUnavailable(f"no writable folder for the C Graves kernel (tried {cache_dir()} and the temp "
                                "directory); set $MIXVAE_CACHE_DIR")
    target = folder / name
    errors = []
    for arch in (_ARCH_FLAGS, []):  # -march=native is not known to every compiler/architecture
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


def _load():
    if _state["lib"] is not None:
        return _state["lib"]
    if _state["error"] is not None:
        raise NativeUnavailable(_state["error"])
    with _lock:
        if _state["lib"] is None and _state["error"] is None:
            try:
                lib = ctypes.CDLL(str(_build()))
                for suffix in ("f32", "f64"):
                    fn = getattr(lib, f"graves_vjp_{suffix}")
                    fn.argtypes = [ctypes.c_int64] * 4 + [ctypes.c_void_p] * 9
                    fn.restype = None
                    size = getattr(lib, f"graves_scratch_{suffix}")
                    size.argtypes = [ctypes.c_int64, ctypes.c_int64]
                    size.restype = ctypes.c_int64
                    draw = getattr(lib, f"graves_sample_index_{suffix}")
                    draw.argtypes = [ctypes.c_int64] * 2 + [ctypes.c_void_p] * 3
                    draw.restype = None
                    compose = getattr(lib, f"graves_compose_{suffix}")
                    compose.argtypes = [ctypes.c_int64] * 3 + [ctypes.c_void_p] * 5
                    compose.restype = ctypes.c_int64
                _state["lib"] = lib
            except (NativeUnavailable, OSError) as err:
                _state["error"] = str(err)
    return _load()


def available() -> bool:
    """True when the C kernel is built (or can be) and loaded."""
    try:
        _load()
        return True
    except NativeUnavailable:
        return False


def unavailable_reason() -> str | None:
    return None if available() else _state["error"]


def supports(t: torch.Tensor) -> bool:
    """Whether the C kernel handles tensors like ``t`` (CPU, float32 or float64)."""
    return t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64)


def _suffix(t: torch.Tensor) -> str:
    if not supports(t):
        raise NativeUnavailable(f"the C Graves kernel runs on CPU float32/float64, not {t.device} {t.dtype}")
    return "f32" if t.dtype == torch.float32 else "f64"


def sample_index(logits: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Component indices ``[N]`` (int64) from logits ``[N, K]`` and uniforms ``u [N]``: the inverse CDF, as
    ``DiagGaussianMixture.index_from_uniform``."""
    fn = getattr(_load(), f"graves_sample_index_{_suffix(logits)}")
    n, k = logits.shape
    logits, u = logits.detach().contiguous(), u.to(logits.dtype).contiguous()
    index = torch.empty(n, dtype=torch.int64)
    fn(n, k, logits.data_ptr(), u.data_ptr(), index.data_ptr())
    return index


def compose(loc: torch.Tensor, scale: torch.Tensor, index: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """z = loc[n, index[n]] + scale[n, index[n]] * eps[n]: ``[N, D]`` from loc, scale ``[N, K, D]``."""
    fn = getattr(_load(), f"graves_compose_{_suffix(loc)}")
    n, k, d = loc.shape
    loc, scale = loc.detach().contiguous(), scale.detach().to(loc.dtype).contiguous()
    index, eps = index.to(torch.int64).contiguous(), eps.to(loc.dtype).contiguous()
    z = torch.empty(n, d, dtype=loc.dtype)
    if fn(n, k, d, loc.data_ptr(), scale.data_ptr(), index.data_ptr(), eps.data_ptr(), z.data_ptr()):
        raise IndexError(f"component index out of range [0, {k})")
    return z


def graves_vjp(grad_z, z, logits, loc, scale):
    """dL/d(logits, loc, scale) from dL/dz: the same contract as ``graves_transform.graves_vjp`` (no blocks:
    the C sweep takes one dimension at a time, O(K) per step, for 16 float32 or 8 float64 samples at once).
    CPU float32/float64 only."""
    lib, suffix = _load(), _suffix(loc)
    n, k, d = loc.shape
    dtype = loc.dtype
    fn = getattr(lib, f"graves_vjp_{suffix}")
    scratch_size = getattr(lib, f"graves_scratch_{suffix}")(k, d)
    inputs = [t.detach().to(dtype).contiguous() for t in (grad_z, z, logits, loc, scale)]
    grad_logits = torch.empty(n, k, dtype=dtype)
    grad_loc = _output((n, k, d), dtype)
    grad_scale = _output((n, k, d), dtype)
    pointers = [t.data_ptr() for t in (*inputs, grad_logits, grad_loc, grad_scale)]
    threads = min(torch.get_num_threads(), n) if n * k * d >= PARALLEL_MIN_ELEMENTS else 1
    scratch = _scratch(threads * scratch_size, dtype).view(threads, scratch_size)
    if threads == 1:
        fn(0, n, k, d, *pointers, scratch.data_ptr())
    else:
        # whole groups of 16 samples (the kernel's lanes) per thread, the remainder with the last
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
