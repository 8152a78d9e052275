r"""Graves' pathwise gradient for samples of a diagonal Gaussian mixture.

Graves (2016), "Stochastic backpropagation through mixture density distributions"; generalised as implicit
reparameterization by Figurnov, Mohamed & Mnih (2018). For one sample z of

    q(z) = sum_k pi_k prod_d N(z_d; mu_kd, sigma_kd)

the distributional transform u = F(z; theta), u_d = F_d(z_d | z_<d), maps z to independent uniforms. Holding u
fixed, J dz/dtheta = -du/dtheta with J = du/dz lower triangular, so the vector-Jacobian product of a loss L is

    dL/dtheta = -v^T du/dtheta,     J^T v = dL/dz.

Because J's off-diagonal entries factor through the component index (J_ed = sum_k c_ke s_kd for e > d), the
triangular solve needs no D x D matrix: one backward sweep over d carries C_k = sum_{e>d} v_e c_ke, O(K D) per
sample. We solve it in blocks of ``block_size`` dimensions: inside a block the system is a small unit-triangular
solve (one batched call), between blocks only the K running sums C_k are carried, so the number of sequential
steps is D / block_size and the cost stays linear in D.

Numerics: every quantity that underflows in a tail (the conditional density f_d, phi_kd, Phi_kd - u_d) is only
ever used as a ratio (log-space weights; the normal tails through the Mills ratio):
    r_kd    = w_kd phi_kd / f_d                      (a softmax over k)
    chat_kd = c_kd / f_d = w_kd (Phi_kd - u_d) / f_d (Phi - u below the conditional median, (1-u) - (1-Phi) above)
and the sweep is written for v'_d = v_d f_d, which is finite wherever the ratios are.

Four implementations of the backward pass are kept:
- the C kernel (``graves_native.c`` through :mod:`mixvae.distributions.native`; the default on CPU), the same
  coefficients and one sweep step per dimension, vectorised across samples;
- the Triton kernel (:mod:`mixvae.distributions.graves_triton`; the default on CUDA when Triton is installed),
  the same two passes over d, one program per block of samples;
- :func:`blocked_vjp` (blocked, vectorised PyTorch; compiled by torch.compile on CUDA), and
- :func:`graves_vjp_reference` (one plain step per dimension, straight from the notes), which the tests hold the
  others against and which documents the algorithm.
:func:`graves_vjp` dispatches between them (see the backends section below).
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import os
import warnings

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable
from torch.distributions import Distribution

from mixvae.distributions import native

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
_INV_SQRT2 = 1 / math.sqrt(2)

#: Dimensions solved together in one triangular solve of the blocked backward pass (the notes suggest 16-64).
DEFAULT_BLOCK_SIZE = 32


# R(t) = sqrt(pi/2) u g(u) with u = 1 / (1 + y / 2), y = t / sqrt 2, and g(u) = erfcx(y) / u a polynomial of degree 10
# in u (lowest first), fitted by scripts/fit_mills.py: relative error < 3.6e-7 evaluated in float32 at every t >= 0.
_MILLS_POLY = (2.820947948e-01, 2.820938525e-01, 2.468805942e-01, 1.753767094e-01, 9.300151267e-02, -5.723649210e-02,
               1.270998497e-01, -4.469938343e-01, 4.861942737e-01, -2.308655805e-01, 4.235430938e-02)
_SQRT_HALF_PI = math.sqrt(math.pi / 2)


def mills_ratio(t: torch.Tensor) -> torch.Tensor:
    """R(t) = (1 - Phi(t)) / phi(t) for t >= 0 (standard normal), in (0, sqrt(pi/2)], about 1/t for large t.

    The smaller normal tail at x is then Phi(-|x|) = phi(x) R(|x|), which never has to be formed on its own.
    float64: ``torch.special.erfcx`` (exact to the precision); lower precisions: the polynomial fit above
    (relative error < 3.6e-7 in float32): a division and a polynomial, no transcendental function."""
    if t.dtype == torch.float64:
        return _SQRT_HALF_PI * torch.special.erfcx(t * _INV_SQRT2)
    u = 1.0 / (1.0 + 0.5 * _INV_SQRT2 * t)
    poly = _MILLS_POLY[-1]
    for coefficient in reversed(_MILLS_POLY[:-1]):
        poly = coefficient + u * poly
    return _SQRT_HALF_PI * u * poly


def graves_coefficients(z: torch.Tensor, logits: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor):
    """Per-sample coefficients of the Graves backward pass.

    Args:
        z: samples ``[N, D]``.
        logits: ``[N, K]`` (unnormalised; only their softmax matters).
        loc, scale: ``[N, K, D]``.

    Returns:
        ``(r, chat, s, x)``, each ``[N, K, D]``:
        r = w phi / f (responsibilities of dimension d given z_<=d), chat = w (Phi - u) / f,
        s = d log N(z_d; mu_kd, sigma_kd) / dz_d = -x / sigma, x = (z - mu) / sigma.
    """
    x, r, w, w_over_f = _conditional_weights(z, logits, loc, scale)
    chat, s = _tail_coefficients(x, r, w, w_over_f, scale)
    return r, chat, s, x


def log_conditional_weights(z, logits, loc, scale):
    """x = (z - mu) / sigma, log phi_kd and log w_kd = log p(k | z_<d), each ``[..., K, D]`` for z ``[..., D]``."""
    x = (z.unsqueeze(-2) - loc) / scale  # [..., K, D]
    log_phi = -0.5 * x * x - scale.log() - _HALF_LOG_2PI  # [..., K, D]
    # a_kd = log pi_k + sum_{j<d} log phi_kj: the exclusive cumulative sum, built by shifting so that no
    # cancellation (cumsum - log_phi) loses digits once the sum has grown large.
    a = F.pad(log_phi[..., :-1], (1, 0)).cumsum(-1) + logits.unsqueeze(-1)  # [..., K, D]
    return x, log_phi, a - a.logsumexp(-2, keepdim=True)


def _conditional_weights(z, logits, loc, scale):
    """x, r = w phi / f, w and w / f, each ``[N, K, D]`` (w_kd = p(k | z_<d), f_d the conditional density)."""
    x, log_phi, log_w = log_conditional_weights(z, logits, loc, scale)
    log_w_phi = log_w + log_phi
    log_f = log_w_phi.logsumexp(-2, keepdim=True)  # [N, 1, D], conditional density f_d
    return x, (log_w_phi - log_f).exp(), log_w.exp(), (log_w - log_f).exp()


def _tail_coefficients(x, r, w, w_over_f, scale):
    """chat = w (Phi - u) / f and s = -x / sigma, each ``[N, K, D]``.

    Phi_k - u = Phi_k - u (left of the conditional median) = (1 - u) - (1 - Phi_k) (right of it): the form whose
    terms are small keeps the difference's digits in either tail. Both forms are exact; the side only needs to be
    roughly right, so a crude Phi(x) ~ (1 + x / (1 + |x|)) / 2 picks it. The tail masses and f underflow far out;
    only their ratios are formed: with T_k = Phi(-|x_k|), w_k T_k / f = r_k sigma_k R(|x_k|) (R the Mills ratio)
    and the larger tail w_k (1 - T_k) / f = w_k / f - that. (Kept apart from the weights so that a compiler does
    not recompute them inside each of these reductions over k.)"""
    left = (w * (x / (1 + x.abs()))).sum(-2, keepdim=True) < 0  # u_d < 1/2 (roughly), [N, 1, D]
    small = r * scale * mills_ratio(x.abs())  # w T / f, [N, K, D]
    tail = torch.where(left == (x < 0), small, w_over_f - small)  # w Phi / f (left), w (1 - Phi) / f (right)
    tail_sum = tail.sum(-2, keepdim=True)  # u / f or (1 - u) / f
    chat = torch.where(left, tail - w * tail_sum, w * tail_sum - tail)
    return chat, -x / scale


def _compiled_coefficients(z, logits, loc, scale):
    """graves_coefficients as two compiled graphs (weights, then tails), intermediates materialised between."""
    x, r, w, w_over_f = _compiled(_conditional_weights)(z, logits, loc, scale)
    chat, s = _compiled(_tail_coefficients)(x, r, w, w_over_f, scale)
    return r, chat, s, x


def _parameter_grads(v, big_c, r, chat, s, x, scale):
    """dL/dtheta from v'_d [N, D] and C_kd = sum_{e>d} v'_e chat_ke [N, K, D]."""
    v = v.unsqueeze(-2)  # [N, 1, D]
    v_r = v * r
    grad_loc = v_r + big_c * s
    grad_scale = v_r * x - big_c * (x * x - 1) / scale
    grad_logits = -(v * chat).sum(-1)
    return grad_logits, grad_loc, grad_scale


# ---- backends ----------------------------------------------------------------------------------------------------
# "native" (the default on CPU): the whole backward pass in C (graves_native.c via native.py), vectorised across
# samples (one vector register of samples: 16 float32 with AVX-512, 8 with AVX2): the coefficients one dimension at a
# time, then the sweep back over the dimensions, O(K) per step; several times faster than the compiled graphs below.
# Built with the system C compiler on first use (about a second).
# "compile": the elementwise work over [N, K, D] (about 25 passes in eager mode) fused by torch.compile; the path
# for CUDA. For small problems with one or two blocks (a VAE's batch: N K D of a few 10^4) the whole backward
# compiles into one graph; otherwise only the coefficients and the final gradients are compiled, since a whole
# graph then recomputes the coefficients inside every block (scripts/bench_rsample.py measured both).
# "triton" (the default on CUDA when triton imports): the C kernel's two passes over d as one fused Triton kernel
# (graves_triton.py), one program per block of samples, float32; the forward draw z = mu_k + sigma_k eps is a second
# small kernel. Under TRITON_INTERPRET=1 it also runs (slowly) on CPU tensors, which is how the tests check it;
# "auto" still never takes it for CPU tensors.
# "eager": plain PyTorch, the blocked sweep below. "auto" takes native for CPU tensors; for CUDA float32 tensors
# triton, when triton imports, else compile; otherwise compile. It falls back with one warning each: from triton
# (a kernel that fails to build or launch) to compile, and from compile to eager when compiling fails, e.g.
# without a C++ compiler.
#
# Choosing one: DiagGaussianMixture(..., backend=NAME) for one distribution; ``with backend(NAME):`` for the
# distributions made inside the block (a context variable: per thread and per asyncio task, restored on exit);
# otherwise the process default, $MIXVAE_GRAVES_BACKEND or "auto" (set_backend changes it; train.py's
# graves_backend key is a backend(...) block around the run, not a change of the default). A distribution keeps
# the backend it was made with, so its backward pass runs there wherever .backward() is called.
_WHOLE_GRAPH_MAX_ELEMENTS = 1 << 17
BACKENDS = ("auto", "native", "compile", "eager", "triton")
_state = {"backend": os.environ.get("MIXVAE_GRAVES_BACKEND", "auto"), "compiled": {}, "failed": False,
          "native_warned": False, "triton_failed": False, "triton_verified": {}}
_scoped: contextvars.ContextVar[str | None] = contextvars.ContextVar("mixvae_graves_backend", default=None)


def check_backend(name, what: str = "Graves backend") -> str:
    if name not in BACKENDS:
        raise ValueError(f"unknown {what} {name!r}; choose one of {', '.join(BACKENDS)}")
    return name


@contextlib.contextmanager
def backend(name: str):
    """``with backend("eager"): ...``: distributions made inside the block run their Graves backward pass on
    ``name`` ("auto", "native", "compile", "eager" or "triton"); the previous choice returns on exit."""
    token = _scoped.set(check_backend(name))
    try:
        yield
    finally:
        _scoped.reset(token)


def set_backend(name: str) -> None:
    """Set the process default backend (what distributions made outside any :func:`backend` block, with no
    ``backend=`` argument, use): "auto" (native C on CPU, Triton or compiled on CUDA, eager if those fail),
    "native", "compile", "eager" or "triton"."""
    _state["backend"] = check_backend(name)


def get_backend() -> str:
    """The backend a distribution made here and now would use (the innermost :func:`backend` block, else the
    process default)."""
    name = _scoped.get() or _state["backend"]
    if name not in BACKENDS:
        raise ValueError(
            f"MIXVAE_GRAVES_BACKEND={name!r} is not a Graves backend; choose one of {', '.join(BACKENDS)}"
        )
    return name


def describe_backend(name: str | None = None, device: torch.device | str | None = None) -> str:
    """``name`` (default :func:`get_backend`) with what runs on ``device`` (default CPU), e.g. "auto (CPU: native
    C, avx512)" or "auto (CUDA: triton for float32, compile for float64)" (for summary.json and the benchmarks)."""
    name = name or get_backend()
    if device is not None and torch.device(device).type == "cuda":
        if name not in ("auto", "triton"):
            return name
        if _state["triton_failed"]:
            return f"{name} (CUDA: compile; the Triton kernel failed or disagreed with the reference)"
        triton_imports = _triton().triton is not None
        if name == "triton":
            return "triton (CUDA)" if triton_imports else "triton (CUDA: triton does not import here)"
        return ("auto (CUDA: triton for float32, compile for float64)" if triton_imports
                else "auto (CUDA: compile; triton does not import)")
    if name in ("auto", "native") and native.available():
        wide = "; avx2 for problems past 3/4 of the L2 cache" if (
            native.isa() == "avx512" and "avx2" in native.runnable_isas()) else ""
        return f"{name} (CPU: native C, {native.isa()}{wide})"
    if name == "auto":
        return "auto (CPU: compile; the C kernel is unavailable)"
    return name


@contextlib.contextmanager
def _keep_validation():
    validate = Distribution._validate_args
    try:
        yield
    finally:
        Distribution.set_default_validate_args(validate)


def _own_inductor_cache() -> str | None:
    """Under ``ATEN_CPU_CAPABILITY`` (e.g. ``avx2`` on an AVX-512 machine, to measure AVX2 code), keep
    torch.compile's on-disk cache in a folder of its own, ``<default>_aten_<capability>``, unless the user chose
    one (``TORCHINDUCTOR_CACHE_DIR``). The cache does not tell the two apart: with torch 2.14.1 a later process at
    the CPU's own capability loaded the code compiled under ``avx2`` and crashed with a segmentation fault in the
    compiled Graves coefficients (B = 1000, K = 10, D = 50, AMD EPYC Zen 4). Returns the folder it chose, or None."""
    capability = os.environ.get("ATEN_CPU_CAPABILITY", "").strip().lower()
    if not capability or capability == "default":
        return None
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    default = os.path.abspath(default_cache_dir())
    if os.environ.get("TORCHINDUCTOR_CACHE_DIR") not in (None, default):  # the user's own choice
        return None
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = folder = f"{default}_aten_{capability}"
    return folder


def _compiled(fn):
    """``torch.compile(fn)``, keeping the user's torch.distributions validation setting: dynamo turns it off for
    the whole process (``Distribution.set_default_validate_args(False)``, in its one-time set-up on the first
    torch.compile and its first compiled call), after which invalid parameters would pass silently. Under
    ``ATEN_CPU_CAPABILITY`` the compiled code goes to a cache folder of its own (:func:`_own_inductor_cache`)."""
    if fn not in _state["compiled"]:
        _own_inductor_cache()
        with _keep_validation():
            compiled = torch.compile(fn, dynamic=None)

        def call(*args, **kwargs):
            with _keep_validation():
                return compiled(*args, **kwargs)

        _state["compiled"][fn] = call
    return _state["compiled"][fn]


def _use_native(backend: str, loc: torch.Tensor) -> bool:
    if backend not in ("auto", "native"):
        return False
    if not native.supports(loc):
        if backend == "native":
            raise native.NativeUnavailable(
                f"the native Graves backend runs on CPU float32/float64 tensors, not {loc.device} {loc.dtype}; "
                "use backend='auto'")
        return False
    if native.available():
        return True
    if backend == "native":
        raise native.NativeUnavailable(native.unavailable_reason())
    if not _state["native_warned"]:
        _state["native_warned"] = True
        warnings.warn(f"mixvae: the C Graves kernel is unavailable ({native.unavailable_reason()}); "
                      "using torch.compile / PyTorch", stacklevel=3)
    return False


def _triton():
    """mixvae.distributions.graves_triton, imported on first need (importing triton costs about 0.4 s, which a
    CPU-only user should not pay)."""
    from mixvae.distributions import graves_triton

    return graves_triton


def _on_cuda(t: torch.Tensor) -> bool:
    return t.is_cuda


def _use_triton(backend: str, loc: torch.Tensor) -> bool:
    """Whether ``backend`` runs ``loc``'s problem on the Triton kernel: "triton" always (raising one line when it
    cannot), "auto" for CUDA float32 tensors when triton imports and has not failed in this process."""
    if backend == "triton":
        _triton().check(loc)
        return True
    return (backend == "auto" and not _state["triton_failed"] and _on_cuda(loc) and _triton().supports(loc)
            and _triton().available(loc) and _triton_verified(loc.device))


def _triton_verified(device: torch.device) -> bool:
    """auto's guard on a kernel that is compiled for this GPU only now: once per device, the Triton backward on a
    small fixed problem (37 samples, K = 5, D = 9, some far in the tails) against the float64 reference; a
    mismatch (or an error) warns once and leaves auto on the other paths, rather than risk wrong gradients."""
    key = str(device)
    if key not in _state["triton_verified"]:
        gen = torch.Generator().manual_seed(0)
        n, k, d = 37, 5, 9
        logits, loc = torch.randn(n, k, generator=gen), torch.randn(n, k, d, generator=gen)
        scale = torch.rand(n, k, d, generator=gen) + 0.3
        index = torch.randint(0, k, (n,), generator=gen)
        z = loc[torch.arange(n), index] + scale[torch.arange(n), index] * torch.randn(n, d, generator=gen)
        z[::6] += 6.0  # tail samples
        grad_z = torch.randn(n, d, generator=gen)
        args = (grad_z, z, logits, loc, scale)
        ref = graves_vjp_reference(*(t.double() for t in args))
        try:
            got = _triton().graves_vjp(*(t.to(device) for t in args))
            bad = [name for name, a, b in zip(("logits", "loc", "scale"), got, ref)
                   if not torch.allclose(a.double().cpu(), b, rtol=2e-4, atol=2e-4 * (1 + b.abs().max().item()))]
        except Exception as err:  # noqa: BLE001 - any failure of the kernel means: do not use it
            _triton_failed(err, "backward kernel (self-check)")
            return False
        _state["triton_verified"][key] = not bad
        if bad:
            _state["triton_failed"] = True
            warnings.warn(f"mixvae: the Triton Graves backward kernel disagrees with the reference on {key} "
                          f"(gradients of {', '.join(bad)}); using torch.compile / PyTorch. Please report this "
                          "with your GPU and triton version", stacklevel=4)
    return _state["triton_verified"][key]


def _triton_failed(err: Exception, what: str) -> None:
    """auto: the Triton kernel failed (once per process): warn once, use the other paths from now on."""
    _state["triton_failed"] = True
    first_line = str(err).splitlines()[0] if str(err) else ""
    warnings.warn(f"mixvae: the Triton Graves {what} failed ({type(err).__name__}: {first_line}); "
                  "using torch.compile / PyTorch", stacklevel=3)


def use_native(t: torch.Tensor, backend: str | None = None) -> bool:
    """Whether ``backend`` (default :func:`get_backend`) runs tensors like ``t`` through the C kernel."""
    return _use_native(backend or get_backend(), t)


def graves_vjp(grad_z, z, logits, loc, scale, block_size: int = DEFAULT_BLOCK_SIZE, backend: str | None = None):
    """dL/d(logits, loc, scale) given dL/dz, on ``backend`` (default :func:`get_backend`).

    Args:
        grad_z, z: ``[N, D]``; logits ``[N, K]``; loc, scale ``[N, K, D]``.
        block_size: dimensions per triangular solve of the PyTorch paths (time O(K D block_size),
            D / block_size sequential steps); the native path has no blocks.

    Returns:
        ``(grad_logits [N, K], grad_loc [N, K, D], grad_scale [N, K, D])``.
    """
    backend = check_backend(backend) if backend else get_backend()
    if _use_native(backend, loc):
        return native.graves_vjp(grad_z, z, logits, loc, scale)
    if _use_triton(backend, loc):
        if backend == "triton":
            return _triton().graves_vjp(grad_z, z, logits, loc, scale)
        try:
            return _triton().graves_vjp(grad_z, z, logits, loc, scale)
        except Exception as err:  # a kernel that fails to build or launch must not stop training
            _triton_failed(err, "backward kernel")
    args = (grad_z, z, logits, loc, scale, block_size)
    if backend == "eager" or (backend == "auto" and _state["failed"]):
        return blocked_vjp(*args)
    try:
        if z.shape[-1] <= 2 * block_size and loc.numel() <= _WHOLE_GRAPH_MAX_ELEMENTS:
            return _compiled(blocked_vjp)(*args)
        return blocked_vjp(*args, coefficients=_compiled_coefficients, grads=_compiled(_parameter_grads))
    except Exception as err:  # a compiler missing or failing must not stop training
        if backend != "auto":
            raise
        _state["failed"] = True
        first_line = str(err).splitlines()[0] if str(err) else ""
        warnings.warn(f"mixvae: torch.compile of the Graves backward failed ({type(err).__name__}: {first_line}); "
                      "using eager PyTorch", stacklevel=2)
        return blocked_vjp(*args)


def blocked_vjp(grad_z, z, logits, loc, scale, block_size: int = DEFAULT_BLOCK_SIZE, coefficients=None, grads=None):
    """The blocked back-substitution itself, in plain PyTorch (see :func:`graves_vjp` for the arguments);
    ``coefficients`` and ``grads`` replace :func:`graves_coefficients` and the final gradient formulas."""
    grads = grads or _parameter_grads
    r, chat, s, x = (coefficients or graves_coefficients)(z, logits, loc, scale)
    n, k, d = r.shape
    v = torch.empty_like(grad_z)  # v'_d = v_d f_d, [N, D]
    big_c = torch.empty_like(r)  # C_kd, [N, K, D]
    carry = grad_z.new_zeros(n, k)  # C_k from the blocks already solved (dimensions to the right)
    for stop in range(d, 0, -block_size):
        start = max(stop - block_size, 0)
        s_b, c_b = s[..., start:stop], chat[..., start:stop]  # [N, K, b]
        # v'_d + sum_{e in block, e>d} (sum_k s_kd chat_ke) v'_e = g_d - sum_k s_kd C_k
        rhs = grad_z[:, start:stop] - (s_b * carry.unsqueeze(-1)).sum(-2)  # [N, b]
        # M_de = sum_k s_kd chat_ke; the solve reads only the strict upper triangle (e > d) of M and takes a
        # unit diagonal, so the rest of the product is never masked out
        coupling = torch.bmm(s_b.transpose(1, 2).contiguous(), c_b.contiguous())  # [N, b, b]; dense is faster
        v_b = torch.linalg.solve_triangular(coupling, rhs.unsqueeze(-1), upper=True, unitriangular=True)
        v_b = v_b.squeeze(-1)  # [N, b]
        contrib = c_b * v_b.unsqueeze(-2)  # [N, K, b]
        suffix = contrib.flip(-1).cumsum(-1).flip(-1)  # sum_{e >= d within block}
        big_c[..., start:stop] = carry.unsqueeze(-1) + suffix - contrib
        carry = carry + suffix[..., 0]
        v[:, start:stop] = v_b
    return grads(v, big_c, r, chat, s, x, scale)


def graves_vjp_reference(grad_z, z, logits, loc, scale):
    """The same vector-Jacobian product, one dimension at a time (the notes' loop), in eager PyTorch: the
    reference the tests hold the blocked and compiled paths to."""
    r, chat, s, x = graves_coefficients(z, logits, loc, scale)
    n, k, d = r.shape
    v = torch.empty_like(grad_z)
    big_c = torch.empty_like(r)
    carry = grad_z.new_zeros(n, k)
    for j in range(d - 1, -1, -1):
        big_c[..., j] = carry
        v[:, j] = grad_z[:, j] - (s[..., j] * carry).sum(-1)
        carry = carry + v[:, j : j + 1] * chat[..., j]
    return _parameter_grads(v, big_c, r, chat, s, x, scale)


class GravesSample(torch.autograd.Function):
    """z = loc[k] + scale[k] * eps forward; Graves' implicit-reparameterization gradient backward.

    Inputs: logits ``[N, K]``, loc and scale ``[N, K, D]``, the drawn component index ``[N]`` (int64) and the
    standard normal noise ``[N, D]``, the block size and the backend (None: :func:`get_backend`). Output z
    ``[N, D]``. The gradient with respect to the index and noise is None: they are the sample's randomness, held
    fixed (as u is) while the parameters move.
    """

    @staticmethod
    def forward(ctx, logits, loc, scale, index, eps, block_size, backend=None):
        backend = backend or get_backend()
        z = None
        if _use_native(backend, loc):
            z = native.compose(loc, scale, index, eps)
        elif _use_triton(backend, loc):
            try:
                z = _triton().compose(loc, scale, index, eps)
            except Exception as err:
                if backend == "triton":
                    raise
                _triton_failed(err, "draw kernel")
        if z is None:
            rows = torch.arange(index.shape[0], device=index.device)
            z = loc[rows, index] + scale[rows, index] * eps  # [N, D]
        ctx.save_for_backward(z, logits, loc, scale)
        ctx.block_size, ctx.backend = block_size, backend
        return z

    @staticmethod
    @once_differentiable  # Graves' transform has no second derivative here: z's graph is the fixed-index one
    def backward(ctx, grad_z):
        z, logits, loc, scale = ctx.saved_tensors
        grads = graves_vjp(grad_z, z, logits, loc, scale, ctx.block_size, ctx.backend)
        return (*grads, None, None, None, None)
