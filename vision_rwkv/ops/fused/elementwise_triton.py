"""Triton kernels for the elementwise ops around the projections, forward and backward, as torch custom ops:
``sigmoid_mul`` (``sigmoid(r) * y``), ``relu_square`` (``relu(x)^2``, also written over x), the backwards from an
output that the GEMM epilogues use (relu^2, tanh), and ``decay_logd`` (``-exp(w0[c] + z)`` in float32: the VRWKV6
per-token log decay from the decay LoRA's output). fp32 math, I/O in the tensors' dtypes.
"""
from __future__ import annotations

import torch
import triton.language as tl

from .._triton_utils import cdiv, new_empty, run_op
from ..triton_jit import jit
from ._config import CONFIG

__all__ = ["sigmoid_mul_triton", "relu_square_triton", "relu_square_inplace_triton", "decay_logd_triton", "decay_grads"]


@jit
def _offsets(n, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    return offs, offs < n


@jit
def _sigmoid_mul_fwd_kernel(R, Y, OUT, n, BLOCK: tl.constexpr):
    offs, mask = _offsets(n, BLOCK)
    r = tl.load(R + offs, mask=mask, other=0.0).to(tl.float32)
    y = tl.load(Y + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(OUT + offs, (tl.sigmoid(r) * y).to(OUT.dtype.element_ty), mask=mask)


@jit
def _sigmoid_mul_bwd_kernel(R, Y, G, GR, GY, n, BLOCK: tl.constexpr):
    offs, mask = _offsets(n, BLOCK)
    r = tl.load(R + offs, mask=mask, other=0.0).to(tl.float32)
    y = tl.load(Y + offs, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(G + offs, mask=mask, other=0.0).to(tl.float32)
    s = tl.sigmoid(r)
    tl.store(GY + offs, (g * s).to(GY.dtype.element_ty), mask=mask)
    tl.store(GR + offs, (g * y * s * (1.0 - s)).to(GR.dtype.element_ty), mask=mask)


@jit
def _relu_square_fwd_kernel(X, OUT, n, BLOCK: tl.constexpr):
    offs, mask = _offsets(n, BLOCK)
    x = tl.maximum(tl.load(X + offs, mask=mask, other=0.0).to(tl.float32), 0.0)
    tl.store(OUT + offs, (x * x).to(OUT.dtype.element_ty), mask=mask)


@jit
def _relu_square_bwd_kernel(X, G, GX, n, BLOCK: tl.constexpr):
    offs, mask = _offsets(n, BLOCK)
    x = tl.maximum(tl.load(X + offs, mask=mask, other=0.0).to(tl.float32), 0.0)
    g = tl.load(G + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(GX + offs, (2.0 * x * g).to(GX.dtype.element_ty), mask=mask)


def _elem_grid(n: int):
    return (cdiv(n, CONFIG["block_elem"]),), dict(BLOCK=CONFIG["block_elem"], num_warps=CONFIG["elem_warps"])


def _sigmoid_mul_fwd(r, y):
    out = new_empty(y.shape, torch.promote_types(r.dtype, y.dtype), y.device)
    grid, meta = _elem_grid(y.numel())
    _sigmoid_mul_fwd_kernel[grid](r, y, out, y.numel(), **meta)
    return out


@torch.library.custom_op("vision_rwkv::sigmoid_mul", mutates_args=())
def _sigmoid_mul_op(r: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return _sigmoid_mul_fwd(r, y)


@_sigmoid_mul_op.register_fake
def _(r, y):
    return y.new_empty(y.shape, dtype=torch.promote_types(r.dtype, y.dtype))


def _sigmoid_mul_bwd(r, y, g, gr_out=None):
    """(d r, d y) of ``sigmoid(r) * y`` (contiguous operands); ``gr_out``: a contiguous buffer of r's shape and dtype
    to write d r into (e.g. a slice of one stacked gradient)."""
    g = g.contiguous()
    gr = new_empty(r.shape, r.dtype, r.device) if gr_out is None else gr_out
    gy = new_empty(y.shape, y.dtype, y.device)
    grid, meta = _elem_grid(y.numel())
    _sigmoid_mul_bwd_kernel[grid](r, y, g, gr, gy, y.numel(), **meta)
    return gr, gy


@torch.library.custom_op("vision_rwkv::sigmoid_mul_bwd", mutates_args=())
def _sigmoid_mul_bwd_op(r: torch.Tensor, y: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return _sigmoid_mul_bwd(r, y, g)


@_sigmoid_mul_bwd_op.register_fake
def _(r, y, g):
    return r.new_empty(r.shape), y.new_empty(y.shape)


def _sm_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _sm_backward(ctx, g):
    r, y = ctx.saved_tensors
    return _sigmoid_mul_bwd_op(r, y, g)


torch.library.register_autograd("vision_rwkv::sigmoid_mul", _sm_backward, setup_context=_sm_setup)


class _SigmoidMul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, r, y):
        ctx.save_for_backward(r, y)
        return _sigmoid_mul_fwd(r, y)

    @staticmethod
    def backward(ctx, g):
        return _sigmoid_mul_bwd(*ctx.saved_tensors, g)


def sigmoid_mul_triton(r: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Fused ``sigmoid(r) * y`` (same shapes), fp32 math, result in ``result_type(r, y)``."""
    r, y = r.contiguous(), y.contiguous()
    return run_op(_sigmoid_mul_op, _SigmoidMul, _sigmoid_mul_fwd, r, y)


def _relu_square_fwd(x):
    out = new_empty(x.shape, x.dtype, x.device)
    grid, meta = _elem_grid(x.numel())
    _relu_square_fwd_kernel[grid](x, out, x.numel(), **meta)
    return out


@torch.library.custom_op("vision_rwkv::relu_square", mutates_args=())
def _relu_square_op(x: torch.Tensor) -> torch.Tensor:
    return _relu_square_fwd(x)


@_relu_square_op.register_fake
def _(x):
    return x.new_empty(x.shape)


def _elem_bwd(kernel, t, g):
    """One elementwise backward launch ``kernel(t, g, gx, n)``: the input gradient gx (t's shape and dtype) from a
    saved tensor t and the output gradient g."""
    g = g.contiguous()
    gx = new_empty(t.shape, t.dtype, t.device)
    grid, meta = _elem_grid(t.numel())
    kernel[grid](t, g, gx, t.numel(), **meta)
    return gx


def _relu_square_bwd(x, g):
    return _elem_bwd(_relu_square_bwd_kernel, x, g)


@torch.library.custom_op("vision_rwkv::relu_square_bwd", mutates_args=())
def _relu_square_bwd_op(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return _relu_square_bwd(x, g)


@_relu_square_bwd_op.register_fake
def _(x, g):
    return x.new_empty(x.shape)


def _rs_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])


def _rs_backward(ctx, g):
    (x,) = ctx.saved_tensors
    return _relu_square_bwd_op(x, g)


torch.library.register_autograd("vision_rwkv::relu_square", _rs_backward, setup_context=_rs_setup)


class _ReluSquare(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return _relu_square_fwd(x)

    @staticmethod
    def backward(ctx, g):
        return _relu_square_bwd(ctx.saved_tensors[0], g)


@jit
def _relu_square_bwd_from_out_kernel(Y, G, GX, n, BLOCK: tl.constexpr):
    offs, mask = _offsets(n, BLOCK)
    y = tl.load(Y + offs, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(G + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(GX + offs, (2.0 * tl.sqrt(y) * g).to(GX.dtype.element_ty), mask=mask)


@jit
def _tanh_bwd_from_out_kernel(Y, G, GX, n, BLOCK: tl.constexpr):
    """d tanh from its output: g * (1 - y^2) (the GEMM-epilogue tanh's backward)."""
    offs, mask = _offsets(n, BLOCK)
    y = tl.load(Y + offs, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(G + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(GX + offs, (g * (1.0 - y * y)).to(GX.dtype.element_ty), mask=mask)


def _relu_square_inplace_fwd(x):
    grid, meta = _elem_grid(x.numel())
    _relu_square_fwd_kernel[grid](x, x, x.numel(), **meta)
    return x


class _ReluSquareInplace(torch.autograd.Function):
    """``relu(x)^2`` written over x (saves one hidden-sized buffer); backward from the output, relu(x) = sqrt(y)."""

    @staticmethod
    def forward(ctx, x):
        _relu_square_inplace_fwd(x)
        ctx.mark_dirty(x)
        ctx.save_for_backward(x)
        return x

    @staticmethod
    def backward(ctx, g):
        return _relu_square_bwd_from_out(ctx.saved_tensors[0], g)


def _relu_square_bwd_from_out(y, g):
    """d relu(x)^2 from the output y = relu(x)^2 (relu(x) = sqrt(y)) and the output gradient g."""
    return _elem_bwd(_relu_square_bwd_from_out_kernel, y, g)


def relu_square_inplace_triton(x: torch.Tensor) -> torch.Tensor:
    """``relu(x) ** 2`` written over a contiguous x in eager mode (out of place while torch.compile traces)."""
    if torch.compiler.is_compiling() or not x.is_contiguous():
        return relu_square_triton(x)
    return run_op(None, _ReluSquareInplace, _relu_square_inplace_fwd, x)


def relu_square_triton(x: torch.Tensor) -> torch.Tensor:
    """Fused ``relu(x) ** 2`` in x's dtype (fp32 math)."""
    x = x.contiguous()
    return run_op(_relu_square_op, _ReluSquare, _relu_square_fwd, x)

@jit
def _decay_fwd_kernel(W0, Z, OUT, n, C, BLOCK: tl.constexpr):
    offs, mask = _offsets(n, BLOCK)
    w0 = tl.load(W0 + offs % C, mask=mask, other=0.0).to(tl.float32)
    z = tl.load(Z + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(OUT + offs, -tl.exp(w0 + z), mask=mask)


def _decay_fwd(w0, z):
    out = new_empty(z.shape, torch.float32, z.device)
    grid, meta = _elem_grid(z.numel())
    _decay_fwd_kernel[grid](w0, z, out, z.numel(), z.shape[-1], **meta)
    return out


@torch.library.custom_op("vision_rwkv::decay_logd", mutates_args=())
def _decay_op(w0: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    return _decay_fwd(w0, z)


@_decay_op.register_fake
def _(w0, z):
    return z.new_empty(z.shape, dtype=torch.float32)


def _decay_setup(ctx, inputs, output):
    ctx.z_dtype = inputs[1].dtype
    ctx.w0_dtype = inputs[0].dtype
    ctx.save_for_backward(output)


def decay_grads(g: torch.Tensor, logd: torch.Tensor, w0_dtype: torch.dtype, z_dtype: torch.dtype):
    """Gradients of ``logd = -exp(w0 + z)`` from its output (its own derivative): d w0 (the column sums, in
    w0_dtype) and d z (in z_dtype). Shared with the decay GEMM epilogue's backward (``linear_triton.py``)."""
    gz = torch.mul(g, logd, out=new_empty(logd.shape, z_dtype, logd.device))  # in z's dtype in one launch
    return gz.reshape(-1, gz.shape[-1]).sum(0, dtype=torch.float32).to(w0_dtype), gz


def _decay_backward(ctx, g):
    (logd,) = ctx.saved_tensors
    return decay_grads(g, logd, ctx.w0_dtype, ctx.z_dtype)


torch.library.register_autograd("vision_rwkv::decay_logd", _decay_backward, setup_context=_decay_setup)


class _DecayLogd(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w0, z):
        out = _decay_fwd(w0, z)
        _decay_setup(ctx, (w0, z), out)
        return out

    @staticmethod
    def backward(ctx, g):
        return _decay_backward(ctx, g)


def decay_logd_triton(w0: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Fused ``-exp(w0 + z)`` (w0 (C,) broadcast over z (..., C)), float32 result."""
    w0, z = w0.contiguous(), z.contiguous()
    return run_op(_decay_op, _DecayLogd, _decay_fwd, w0, z)
