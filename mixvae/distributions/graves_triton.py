r"""The Graves backward pass (and the forward draw) as fused Triton kernels, for CUDA.

The algorithm is the one of :func:`graves_transform.graves_vjp_reference` and of the C kernel
(``graves_native.c``): per sample, a pass forward over the dimensions builds the coefficients r_kd and chat_kd
from a running state (the unnormalised log responsibilities b_k = log pi_k + sum_{j<=d} log phi_kj, the weights
of the previous dimension and logsumexp_k b_k, so that 1 / f_d costs one exp per dimension), then a sweep back
over the dimensions carries C_k = sum_{e>d} v'_e chat_ke and writes the parameter gradients of each dimension;
the final C_k is minus the gradient of the logits.

Layout. One program owns a tile of BLOCK_N samples by BLOCK_K components (BLOCK_K the next power of two >= K;
the components beyond K and the samples beyond N are masked: their logits read as -inf, so their weights, and
everything derived from them, are exactly 0). Both loops over d are sequential inside the program, and every
reduction over k is a reduction along the tile's second axis, so the whole state of a sample (K running sums)
stays in registers; programs are independent, one per block of samples.

Scratch. The sweep needs r and chat of dimension d after the forward pass has moved past it, and they cannot be
recomputed walking backwards without undoing the running sums (subtracting log phi from a grown sum loses the
digits the forward pass kept). So the forward pass stores them, and it stores them in the output buffers
themselves: r_kd where grad_loc_kd will go, chat_kd where grad_scale_kd will go. The sweep reads both at (k, d)
and then overwrites them with the gradients of (k, d), so the kernel needs no memory beyond its outputs. x,
1 / sigma and s = -x / sigma are cheap (one division) and are recomputed in the sweep from z, loc and scale
rather than stored. The same program and the same tile shape write and then read each entry; a barrier between
the two loops makes the writes visible across the program's threads whatever layout the compiler chose.

Precision: float32 only (the Mills ratio is the float32 polynomial of :func:`graves_transform.mills_ratio`;
float64 would need erfcx). Other dtypes take the existing backends.

Without a GPU, Triton's interpreter (``TRITON_INTERPRET=1``) runs the same kernels on the CPU, slowly; the tests
use it. Triton reads that variable when a function is decorated, and its own library (tl.sum, tl.max, ...) is
decorated when triton is imported, so the variable must be set before the first ``import triton`` (before
starting Python, in practice; the tests run the kernels in a child process). :func:`available` holds to that.
"""

from __future__ import annotations

import os

import torch


def interpreting() -> bool:
    """Whether ``TRITON_INTERPRET`` asks for Triton's CPU interpreter now."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")


_INTERPRET_AT_IMPORT = interpreting()  # as triton saw it (imported here, or earlier with the same environment)
try:
    import triton
    import triton.language as tl
except Exception as err:  # noqa: BLE001 - any failure to import means "not available", with the reason kept
    triton = tl = None
    _IMPORT_ERROR = f"{type(err).__name__}: {err}"
else:
    _IMPORT_ERROR = ""


class TritonUnavailable(RuntimeError):
    """backend="triton" was asked for tensors (or on a machine) the kernel cannot run."""


def _interpreter_ready() -> bool:
    return _INTERPRET_AT_IMPORT and interpreting()


def available(t: torch.Tensor | None = None) -> bool:
    """Triton imports and can run kernels on ``t``'s device (default: on some device): CUDA, or anywhere under
    the interpreter (TRITON_INTERPRET=1, set before triton was imported)."""
    if triton is None:
        return False
    if t is None:
        return torch.cuda.is_available() or _interpreter_ready()
    return t.is_cuda or _interpreter_ready()


def supports(t: torch.Tensor) -> bool:
    """The dtypes the kernels are written for (float32)."""
    return t.dtype == torch.float32


def unavailable_reason(t: torch.Tensor) -> str:
    """One line: why backend="triton" cannot run tensors like ``t`` here, and what to use instead."""
    if triton is None:
        return (f"the triton Graves backend needs the triton package ({_IMPORT_ERROR}); "
                "use backend='auto' (native C on CPU, torch.compile on CUDA)")
    if not supports(t):
        return (f"the triton Graves backend runs float32 tensors, not {t.dtype}; "
                "use backend='auto' (native C on CPU, torch.compile on CUDA)")
    if interpreting():
        return ("TRITON_INTERPRET=1 was set after triton was imported (it must be set before, e.g. when starting "
                "Python), so the triton Graves backend cannot run CPU tensors; use backend='auto' or 'native' on CPU")
    return (f"the triton Graves backend runs CUDA tensors (or any with TRITON_INTERPRET=1), not {t.device}; "
            "use backend='auto' or 'native' on CPU")


def check(*tensors: torch.Tensor) -> None:
    """Raise :class:`TritonUnavailable` (one line) unless the kernels can run on all of ``tensors``."""
    for t in tensors:
        if not (available(t) and supports(t)):
            raise TritonUnavailable(unavailable_reason(t))


# ---- kernels ------------------------------------------------------------------------------------------------------
# Plain functions here, decorated by _kernels() on first use. Constants are written out (a jitted function may
# only read globals that are tl.constexpr): 0.9189385 = log sqrt(2 pi), 0.35355339 = 1 / (2 sqrt 2),
# 1.2533141 = sqrt(pi / 2), and the Mills-ratio coefficients of graves_transform._MILLS_POLY (highest first).
def _graves_backward(gz_ptr, z_ptr, logit_ptr, loc_ptr, scale_ptr, gl_ptr, gm_ptr, gs_ptr,
                     N, K, D,
                     s_gn, s_gd, s_zn, s_zd, s_ln, s_lk, s_mn, s_mk, s_md, s_sn, s_sk, s_sd,
                     PERTURB: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    n = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)  # [BN]
    k = tl.arange(0, BLOCK_K).to(tl.int64)  # [BK]
    n_ok = n < N
    k_ok = k < K
    ok = n_ok[:, None] & k_ok[None, :]
    mu_base = loc_ptr + n[:, None] * s_mn + k[None, :] * s_mk  # [BN, BK] pointers at d = 0
    sg_base = scale_ptr + n[:, None] * s_sn + k[None, :] * s_sk
    out_base = (n[:, None] * K + k[None, :]) * D  # contiguous [N, K, D] outputs
    z_base = z_ptr + n * s_zn
    g_base = gz_ptr + n * s_gn

    # state at d = 0: b_k = log pi_k (unnormalised), the weights w_k0 = softmax(logits), logsumexp_k b_k
    lg = tl.load(logit_ptr + n[:, None] * s_ln + k[None, :] * s_lk, mask=ok, other=0.0).to(tl.float32)
    b = tl.where(k_ok[None, :], lg, float("-inf"))
    m0 = tl.max(b, axis=1)
    e0 = tl.exp(b - m0[:, None])
    s0 = tl.sum(e0, axis=1)
    lse_prev = m0 + tl.log(s0)
    w_prev = e0 / s0[:, None]

    # forward over d: r_kd -> grad_loc's storage, chat_kd -> grad_scale's
    for d in range(0, D):
        zd = tl.load(z_base + d * s_zd, mask=n_ok, other=0.0)
        mu = tl.load(mu_base + d * s_md, mask=ok, other=0.0)
        sg = tl.load(sg_base + d * s_sd, mask=ok, other=1.0)
        x = (zd[:, None] - mu) * (1.0 / sg)
        b = b + (-0.5 * x * x - tl.log(sg))  # + log phi_kd up to the constant, which cancels in every ratio
        mx = tl.max(b, axis=1)
        e = tl.exp(b - mx[:, None])
        total = tl.sum(e, axis=1)
        lse = mx + tl.log(total)
        inv_f = tl.exp(lse_prev - lse + 0.9189385332046727)  # 1 / f_d
        lse_prev = lse
        r = e / total[:, None]  # w phi / f; also the weights of the next dimension
        w = w_prev
        w_prev = r
        w_f = tl.where(w > 0, w * inv_f[:, None], 0.0)  # w / f (0 where w is, even if f underflowed)
        left = tl.sum(w * (x / (1.0 + tl.abs(x))), axis=1) < 0  # u_d < 1/2, roughly: picks the tail form
        # the smaller normal tail over phi, the Mills ratio R(|x|) (float32 polynomial in u)
        u = 1.0 / (1.0 + 0.35355339059327373 * tl.abs(x))
        p = 4.235430938e-02
        p = -2.308655805e-01 + u * p
        p = 4.861942737e-01 + u * p
        p = -4.469938343e-01 + u * p
        p = 1.270998497e-01 + u * p
        p = -5.723649210e-02 + u * p
        p = 9.300151267e-02 + u * p
        p = 1.753767094e-01 + u * p
        p = 2.468805942e-01 + u * p
        p = 2.820938525e-01 + u * p
        p = 2.820947948e-01 + u * p
        small = r * sg * (1.2533141373155001 * u * p)  # w T / f
        same_side = left[:, None] == (x < 0)
        tail = tl.where(same_side, small, w_f - small)  # w Phi / f (left), w (1 - Phi) / f (right)
        wt = w * tl.sum(tail, axis=1)[:, None]
        chat = tl.where(left[:, None], tail - wt, wt - tail)
        if PERTURB == 1:  # tests only: a wrong sign in chat, to show that the comparison catches it
            chat = -chat
        tl.store(gm_ptr + out_base + d, r, mask=ok)
        tl.store(gs_ptr + out_base + d, chat, mask=ok)

    tl.debug_barrier()

    # the sweep back over d: v'_d = g_d - sum_k s_kd C_k, the gradients of dimension d, then C_k += v'_d chat_kd
    c = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    for i in range(0, D):
        d = D - 1 - i
        zd = tl.load(z_base + d * s_zd, mask=n_ok, other=0.0)
        mu = tl.load(mu_base + d * s_md, mask=ok, other=0.0)
        sg = tl.load(sg_base + d * s_sd, mask=ok, other=1.0)
        inv = 1.0 / sg
        x = (zd[:, None] - mu) * inv
        s = -x * inv
        r = tl.load(gm_ptr + out_base + d, mask=ok, other=0.0)
        chat = tl.load(gs_ptr + out_base + d, mask=ok, other=0.0)
        g = tl.load(g_base + d * s_gd, mask=n_ok, other=0.0)
        v = g - tl.sum(s * c, axis=1)
        vr = v[:, None] * r
        if PERTURB == 2:  # tests only: the C_k term of grad_loc dropped
            grad_mu = vr
        else:
            grad_mu = vr + c * s
        grad_sg = vr * x - c * (x * x - 1.0) * inv
        c = c + v[:, None] * chat
        tl.store(gm_ptr + out_base + d, grad_mu, mask=ok)
        tl.store(gs_ptr + out_base + d, grad_sg, mask=ok)
    tl.store(gl_ptr + n[:, None] * K + k[None, :], -c, mask=ok)  # dL/dlogits = -sum_d v'_d chat_kd


def _compose(loc_ptr, scale_ptr, index_ptr, eps_ptr, z_ptr, N, K, D,
             s_mn, s_mk, s_md, s_sn, s_sk, s_sd, s_in, s_en, s_ed,
             BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    n = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
    d = tl.program_id(1).to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D).to(tl.int64)
    n_ok = n < N
    idx = tl.load(index_ptr + n * s_in, mask=n_ok, other=0)
    good = (idx >= 0) & (idx < K)
    ok = n_ok[:, None] & (d < D)[None, :]
    read = ok & good[:, None]
    idx = tl.where(good, idx, 0)
    mu = tl.load(loc_ptr + n[:, None] * s_mn + idx[:, None] * s_mk + d[None, :] * s_md, mask=read, other=0.0)
    sg = tl.load(scale_ptr + n[:, None] * s_sn + idx[:, None] * s_sk + d[None, :] * s_sd, mask=read, other=0.0)
    ep = tl.load(eps_ptr + n[:, None] * s_en + d[None, :] * s_ed, mask=ok, other=0.0)
    z = tl.where(good[:, None], mu + sg * ep, float("nan"))  # an index outside [0, K): NaN, not a stray read
    tl.store(z_ptr + n[:, None] * D + d[None, :], z, mask=ok)


_jitted: list = []


def _kernels():
    """(backward, compose) as Triton kernels, decorated on first use (an import without triton stays cheap)."""
    if not _jitted:
        _jitted.extend((triton.jit(_graves_backward), triton.jit(_compose)))
    return _jitted


def _block_n(n: int, k_block: int) -> int:
    """Samples per program: enough programs to fill a large GPU (about 256 where N allows), tiles of at least
    one warp's 32 entries and at most 1024 (sample, component) entries (the loops keep a few tiles live in
    registers). A first choice, not tuned on hardware."""
    widest = max(1, 1024 // k_block)
    narrowest = min(widest, max(1, 32 // k_block))
    return min(widest, max(narrowest, triton.next_power_of_2(triton.cdiv(n, 256))))


def _num_warps(entries: int) -> int:
    return max(1, min(4, entries // 256))


def graves_vjp(grad_z, z, logits, loc, scale, block_n: int | None = None, _perturb: int = 0):
    """dL/d(logits, loc, scale) given dL/dz, as :func:`graves_transform.graves_vjp` (float32, CUDA or the
    interpreter); ``block_n`` (a power of two) overrides the samples per program."""
    check(grad_z, z, logits, loc, scale)
    n, k, d = loc.shape
    if tuple(scale.shape) != (n, k, d) or tuple(z.shape) != (n, d) or tuple(grad_z.shape) != (n, d) \
            or tuple(logits.shape) != (n, k):
        raise ValueError(f"graves_triton.graves_vjp: shapes do not pair: grad_z {tuple(grad_z.shape)}, "
                         f"z {tuple(z.shape)}, logits {tuple(logits.shape)}, loc {tuple(loc.shape)}, "
                         f"scale {tuple(scale.shape)}")
    grad_loc = torch.empty((n, k, d), dtype=loc.dtype, device=loc.device)
    grad_scale = torch.empty_like(grad_loc)
    grad_logits = torch.empty((n, k), dtype=loc.dtype, device=loc.device)
    if n == 0 or k == 0:
        return grad_logits, grad_loc, grad_scale
    block_k = triton.next_power_of_2(k)
    block_n = block_n or _block_n(n, block_k)
    backward, _ = _kernels()
    grid = (triton.cdiv(n, block_n),)
    backward[grid](grad_z, z, logits, loc, scale, grad_logits, grad_loc, grad_scale, n, k, d,
                   *grad_z.stride(), *z.stride(), *logits.stride(), *loc.stride(), *scale.stride(),
                   PERTURB=_perturb, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=_num_warps(block_n * block_k))
    return grad_logits, grad_loc, grad_scale


def compose(loc, scale, index, eps):
    """z = loc[n, index[n]] + scale[n, index[n]] * eps[n] in one kernel, ``[N, D]`` (a row whose index lies
    outside [0, K) comes out NaN: checking would cost a device synchronisation)."""
    check(loc, scale, eps)
    n, k, d = loc.shape
    z = torch.empty((n, d), dtype=loc.dtype, device=loc.device)
    if n == 0 or d == 0:
        return z
    _, kernel = _kernels()
    block_d = min(128, triton.next_power_of_2(d))
    block_n = max(1, 2048 // block_d)
    grid = (triton.cdiv(n, block_n), triton.cdiv(d, block_d))
    kernel[grid](loc, scale, index, eps, z, n, k, d, *loc.stride(), *scale.stride(), *index.stride(),
                 *eps.stride(), BLOCK_N=block_n, BLOCK_D=block_d, num_warps=4)
    return z

