"""Two elementwise functions of the model with hand-written backward passes, for speed on CPU.

``torch.nn.functional.softplus`` on CPU goes through a scalar ``log1p`` (about 10 ns per float32 element on one
thread, 12 times an ``exp``); the Bernoulli log-likelihood of the decoder evaluates it on every pixel of every
sample, [S, B, 784], which made it as costly as a matrix product of the network. Here

    softplus(a) = max(a, 0) + log(1 + exp(-|a|))

uses the vectorised ``exp`` and ``log``. Writing log(1 + y) instead of log1p(y) for y = exp(-|a|) in (0, 1]
loses only absolute digits, at most 2^-24 per element (float32's rounding of 1 + y), which is the working
precision of a sum of pixels anyway (tests/test_bench_train.py holds both functions to float64). The
backward passes use d softplus(a) / da = sigmoid(a), one pass instead of autograd's chain through
max/abs/exp/log.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mixvae.distributions import native


def _softplus_forward(a: Tensor) -> Tensor:
    # log(1 + e^{-|a|}) + max(a, 0); the in-place chain allocates one temporary besides the result
    return a.abs().neg_().exp_().add_(1).log_().add_(a.clamp(min=0))


class _Softplus(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a):
        ctx.save_for_backward(a)
        return _softplus_forward(a)

    @staticmethod
    def backward(ctx, grad):
        (a,) = ctx.saved_tensors
        return grad * torch.sigmoid(a)


def softplus(a: Tensor) -> Tensor:
    """log(1 + exp(a)), elementwise, any shape; same values as F.softplus to float32 rounding."""
    return _Softplus.apply(a)


class _BernoulliLogProb(torch.autograd.Function):
    """sum_i x_i a_i - softplus(a_i) over the last axis; d/da_i = x_i - sigmoid(a_i), d/dx_i = a_i."""

    @staticmethod
    def forward(ctx, logits, x):
        ctx.save_for_backward(logits, x)
        ll = _softplus_forward(logits)  # [*, x_dim]
        ll.neg_().addcmul_(x, logits)  # x a - softplus(a), x broadcast over the leading axes
        return ll.sum(-1)

    @staticmethod
    def backward(ctx, grad):
        logits, x = ctx.saved_tensors
        grad = grad.unsqueeze(-1)
        grad_logits = grad_x = None
        if ctx.needs_input_grad[0]:
            grad_logits = (x - torch.sigmoid(logits)).mul_(grad)
        if ctx.needs_input_grad[1]:
            grad_x = grad * logits
            grad_x = grad_x.sum_to_size(x.shape)  # x was broadcast against the sample axes
        return grad_logits, grad_x


def bernoulli_log_prob(logits: Tensor, x: Tensor) -> Tensor:
    """log prod_i Bernoulli(x_i; sigmoid(a_i)) = sum_i x_i a_i - softplus(a_i).

    logits a [*S, *batch, x_dim], x [*batch, x_dim] (broadcast against a, never copied) -> [*S, *batch].
    With no gradient to take (evaluation: ``torch.no_grad()``, or inputs that do not require grad) on CPU
    float32/float64, one pass of the C kernel (``native.bernoulli_log_prob``: no [*S, *batch, x_dim]
    intermediate, one log per 8 pixels) instead of the elementwise passes; both are held to float64 in the tests.
    """
    if _native_fits(logits, x):
        dim = logits.shape[-1]
        out = native.bernoulli_log_prob(logits.reshape(-1, dim), x.reshape(-1, dim))
        return out.reshape(logits.shape[:-1])
    return _BernoulliLogProb.apply(logits, x)


def _native_fits(logits: Tensor, x: Tensor) -> bool:
    """The C pass applies: nothing needs a gradient, CPU float32/float64 of one dtype, and x is exactly the
    trailing axes of the logits (each logits row then pairs with x's row r % len(x))."""
    if torch.is_grad_enabled() and (logits.requires_grad or x.requires_grad):
        return False
    if not native.supports(logits) or x.dtype is not logits.dtype or not x.is_cpu or x.dim() == 0:
        return False
    if logits.shape[logits.dim() - x.dim():] != x.shape or x.numel() == 0:
        return False
    return native.available()
