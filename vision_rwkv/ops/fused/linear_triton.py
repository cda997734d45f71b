"""Triton GEMMs with the RWKV activations fused into their epilogue, forward and backward, as torch custom ops.

* ``linear_relu_square``: ``relu(x @ W^T) ** 2`` - the channel-mix key projection and its squared ReLU. The hidden
  (4C wide, the largest activation of a block) is written once, already activated: the separate relu^2 pass (one
  read and one write of the hidden) disappears.
* ``linear_sigmoid_mul``: ``sigmoid(x @ W^T) * y`` - a receptance projection and its gate on ``y`` (the WKV output
  or the channel-mix value). The receptance never round-trips through memory in inference; in training it is
  written once beside the product (the backward needs it).
* ``linear_tanh``: ``tanh(x @ W^T)`` - the first stage of the RWKV-6 LoRAs (ddlerp and decay).
* ``linear_decay``: ``-exp(w0 + x @ W^T)`` in float32 - the RWKV-6 log decay from the decay LoRA's second stage
  (the pre-activation never stored, and never rounded to 16 bits).

One kernel serves both: (BM x BN) output tiles over a K loop of ``tl.dot`` (tensor cores for 16-bit inputs), program
ids grouped along M so neighbouring programs share W tiles in L2, and the activation applied to the fp32 accumulator
before the single store. x may be any (M, K) strided view; W is the (N, K) ``nn.Linear`` weight (no transpose copy).

Backward: the activation's derivative is one elementwise pass (``relu^2`` from its output, ``2 sqrt(out)``; the
sigmoid gate from the saved receptance, the kernels of ``triton.py``; tanh ``1 - out^2`` and the decay ``out``, both
from the output), then two cuBLAS GEMMs (dx, dW).

Launch settings live in ``CONFIG`` (``VRWKV_TRITON_GEMM="bm=..,bn=..,bk=..,warps=..,stages=..,group_m=.."``); 0 for
bn picks 64 or 128 from N. Outputs are allocated with :func:`vision_rwkv.ops._triton_utils.new_empty` (NaN-poisoned
when ``VRWKV_TRITON_DEBUG=1``). Shapes and dtypes are checked by the public wrappers in ``__init__.py``.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import triton.language as tl

from .._triton_utils import cdiv, config_from_env, new_empty, next_pow2, run_op
from ..triton_jit import jit
from .elementwise_triton import (_elem_grid, _relu_square_bwd_from_out_kernel, _sigmoid_mul_bwd_kernel,
                                 _tanh_bwd_from_out_kernel, decay_grads)

__all__ = ["linear_relu_square_triton", "linear_sigmoid_mul_triton", "linear_tanh_triton", "linear_decay_triton",
           "CONFIG"]

CONFIG = config_from_env(dict(bm=128, bn=0, bk=64, warps=8, stages=3, group_m=8), "VRWKV_TRITON_GEMM")

EPI_RELU_SQUARE = 0
EPI_SIGMOID_MUL = 1
EPI_TANH = 2
EPI_DECAY = 3  # AUX holds w0 (N,)
EPI_NONE = 4


@jit
def _gemm_tile(M, N, BM: tl.constexpr, BN: tl.constexpr, GROUP_M: tl.constexpr):
    """Rows rm (int64), columns rn and their in-bounds masks of this program's output tile: program ids run down
    GROUP_M row tiles before moving to the next column tile, so neighbouring programs share W tiles in L2."""
    return _gemm_tile_of(tl.program_id(0), M, N, BM, BN, GROUP_M)


@jit
def _gemm_tile_of(pid, M, N, BM: tl.constexpr, BN: tl.constexpr, GROUP_M: tl.constexpr):
    """:func:`_gemm_tile` of tile index ``pid`` (a kernel whose program ids also enumerate something else)."""
    num_m = tl.cdiv(M, BM)
    num_n = tl.cdiv(N, BN)
    per_group = GROUP_M * num_n
    first_m = (pid // per_group) * GROUP_M
    group_rows = tl.minimum(num_m - first_m, GROUP_M)
    rm = (first_m + (pid % per_group) % group_rows).to(tl.int64) * BM + tl.arange(0, BM)
    rn = ((pid % per_group) // group_rows) * BN + tl.arange(0, BN)
    return rm, rn, rm < M, rn < N


@jit
def _epilogue_store(acc, AUX, OUT, PRE, rm, rn, m_ok, n_ok, N, EPI: tl.constexpr, SAVE_PRE: tl.constexpr):
    """Apply epilogue EPI to the fp32 accumulator tile (rows rm, columns rn) and store it (and, with SAVE_PRE, the
    pre-activation) into the row-major (M, N) outputs."""
    mask = m_ok[:, None] & n_ok[None, :]
    offs = rm[:, None] * N + rn[None, :]
    if SAVE_PRE:
        tl.store(PRE + offs, acc.to(PRE.dtype.element_ty), mask=mask)
    tl.store(OUT + offs, _activate(acc, AUX, offs, mask, rn, n_ok, EPI).to(OUT.dtype.element_ty), mask=mask)


@jit
def _activate(acc, AUX, offs, mask, rn, n_ok, EPI: tl.constexpr):
    """Epilogue EPI of the fp32 accumulator tile, in fp32 (AUX: the gated tensor of EPI 1, w0 of EPI 3)."""
    if EPI == 0:
        pos = tl.maximum(acc, 0.0)
        res = pos * pos
    elif EPI == 1:
        res = tl.sigmoid(acc) * tl.load(AUX + offs, mask=mask, other=0.0).to(tl.float32)
    elif EPI == 2:
        res = 2.0 * tl.sigmoid(2.0 * acc) - 1.0  # tanh, saturating to +-1 for large |acc|
    elif EPI == 3:
        res = -tl.exp(acc + tl.load(AUX + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :])
    else:
        res = acc
    return res


@jit
def _row_norm(v, mask, N, eps):
    """LayerNorm statistics of the rows of v (BM x BN, columns >= N masked): (v - mean) * rstd, zero outside mask."""
    v = tl.where(mask, v, 0.0)
    mean = tl.sum(v, axis=1) / N
    d = tl.where(mask, v - mean[:, None], 0.0)
    return d * (1.0 / tl.sqrt(tl.sum(d * d, axis=1) / N + eps))[:, None]


@jit
def _residual_norm_store(val, RX, GAMMA, LNW, LNB, SOUT, NOUT, rm, rn, m_ok, n_ok, N, eps, POST: tl.constexpr,
                         HAS_GAMMA: tl.constexpr):
    """The block's residual add + LayerNorm on a GEMM's fp32 branch tile ``val`` holding whole rows (BN >= N), as
    ``add_norm`` computes it: post-norm ``s = x + gamma * LN(val)``; pre-norm ``s = x + gamma * val`` and
    ``n = LN(s)``. x is read from RX, s written to SOUT (x's dtype), n to NOUT."""
    mask = m_ok[:, None] & n_ok[None, :]
    offs = rm[:, None] * N + rn[None, :]
    x = tl.load(RX + offs, mask=mask, other=0.0).to(tl.float32)
    w = tl.load(LNW + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    b = tl.load(LNB + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    if HAS_GAMMA:
        gamma = tl.load(GAMMA + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    else:
        gamma = w * 0.0 + 1.0  # same shape in both branches (the GPU compiler requires it)
    if POST:
        tl.store(SOUT + offs, (x + gamma * (_row_norm(val, mask, N, eps) * w + b)).to(SOUT.dtype.element_ty),
                 mask=mask)
    else:
        s = (x + gamma * val).to(SOUT.dtype.element_ty)
        tl.store(SOUT + offs, s, mask=mask)
        tl.store(NOUT + offs, (_row_norm(s.to(tl.float32), mask, N, eps) * w + b).to(NOUT.dtype.element_ty),
                 mask=mask)


@jit
def _linear_act_kernel(X, WT, AUX, OUT, PRE, M, N, K, sxm, sxk, swn, swk,
                       EPI: tl.constexpr, SAVE_PRE: tl.constexpr, EVEN_K: tl.constexpr, PREC: tl.constexpr,
                       BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr):
    rm, rn, m_ok, n_ok = _gemm_tile(M, N, BM, BN, GROUP_M)
    rk = tl.arange(0, BK)
    px = X + rm[:, None] * sxm + rk[None, :] * sxk
    pw = WT + rn[None, :] * swn + rk[:, None] * swk
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, K, BK):
        if EVEN_K:
            a = tl.load(px, mask=m_ok[:, None], other=0.0)
            b = tl.load(pw, mask=n_ok[None, :], other=0.0)
        else:
            k_ok = (k0 + rk) < K
            a = tl.load(px, mask=m_ok[:, None] & k_ok[None, :], other=0.0)
            b = tl.load(pw, mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        acc = tl.dot(a, b, acc, input_precision=PREC)
        px += BK * sxk
        pw += BK * swk

    _epilogue_store(acc, AUX, OUT, PRE, rm, rn, m_ok, n_ok, N, EPI, SAVE_PRE)


class ResidualLaunch(NamedTuple):
    """Outputs and launch settings of a GEMM kernel with the residual epilogue (``_residual_norm_store``)."""

    s: torch.Tensor  # (rows, N) the new residual stream, in x_res's dtype (the kernel's OUT)
    n: torch.Tensor  # (rows, N) pre-norm: the next LayerNorm's output; post-norm: empty
    args: tuple  # the kernel's RX, GAMMA, LNW, LNB, NOUT
    meta: dict  # RES (1 pre-norm, 2 post-norm), HAS_GAMMA
    eps: float
    bm: int
    bn: int
    warps: int

    def results(self, shape):
        """What the op returns: ``(s, n)`` viewed as ``shape``, n None for post-norm."""
        s = self.s.view(shape)
        return s, (self.n.view(shape) if self.meta["RES"] == 1 else None)


def residual_launch(residual, rows: int, n: int, cfg: dict, device, inplace: bool = False) -> ResidualLaunch:
    """Allocate the outputs of the residual epilogue and pick its tiles: one program holds whole rows, bn =
    next_pow2(N), bm = ``cfg["res_elems"]`` / bn (between 16 and ``cfg["bm"]``, 64 when that is 0),
    ``cfg["res_warps"]`` warps.
    ``residual`` = (x_res, gamma, ln_weight, ln_bias, eps, post, n_dtype). ``inplace``: s is x_res itself (each
    program reads its rows of x_res before writing them; x_res must not be the GEMM's operand)."""
    x_res, gamma, lnw, lnb, eps, post, n_dtype = residual
    s = x_res.view(rows, n) if inplace else new_empty((rows, n), x_res.dtype, device)
    nout = new_empty((0 if post else rows, n), n_dtype, device)
    bn = next_pow2(max(n, 16))
    bm = max(16, min(cfg["bm"] or 64, cfg["res_elems"] // bn))  # (bm 0, chosen per kernel elsewhere: a cap of 64)
    return ResidualLaunch(s, nout, (x_res, s if gamma is None else gamma, lnw, lnb, nout),
                          dict(RES=2 if post else 1, HAS_GAMMA=gamma is not None), float(eps), bm, bn,
                          cfg["res_warps"])


def _precision(dtype: torch.dtype) -> str:
    """fp32 inputs follow torch's matmul setting (full fp32 unless TF32 is allowed); 16-bit inputs use the tensor
    cores whatever this says."""
    if dtype != torch.float32 or torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "ieee"


def _launch(x2, w, aux, out, pre, epi: int):
    M, K = x2.shape
    N = w.shape[0]
    cfg = CONFIG
    bn = cfg["bn"] or (128 if N % 128 == 0 else 64)
    grid = (cdiv(M, cfg["bm"]) * cdiv(N, bn),)
    _linear_act_kernel[grid](x2, w, out if aux is None else aux, out, out if pre is None else pre, M, N, K,
                             x2.stride(0), x2.stride(1), w.stride(0), w.stride(1),
                             EPI=epi, SAVE_PRE=pre is not None, EVEN_K=K % cfg["bk"] == 0,
                             PREC=_precision(x2.dtype), BM=cfg["bm"], BN=bn, BK=cfg["bk"], GROUP_M=cfg["group_m"],
                             num_warps=cfg["warps"], num_stages=cfg["stages"])


def _rows(x: torch.Tensor) -> torch.Tensor:
    """x (..., K) as an (M, K) matrix (a view when the leading dims collapse, else a copy)."""
    return x.reshape(-1, x.shape[-1])


def _transposed(w: torch.Tensor) -> bool:
    """Whether w (N, K) is the transposed view of a contiguous (K, N) tensor (a LoRA matrix passed as ``w1.t()``)."""
    return w.shape[0] > 1 and w.stride() == (1, w.shape[0])


def _like_weight(w: torch.Tensor) -> torch.Tensor:
    """An empty tensor of w's shape in the layout :func:`_weight_grad` gives its gradient (the fake kernels' dW)."""
    return w.new_empty(w.shape[::-1]).t() if _transposed(w) else w.new_empty(w.shape)


def _weight_grad(g2: torch.Tensor, x2: torch.Tensor, x: torch.Tensor, w: torch.Tensor):
    """dx (x's shape) and dW from the pre-activation gradient g2 (M, N). dW comes in w's layout when w is a
    transposed view (``x2^T g2`` transposed back), so the (K, N) parameter's gradient needs no layout copy."""
    gw = (x2.t() @ g2).t() if _transposed(w) else g2.t() @ x2
    return (g2 @ w).view(x.shape), gw


# ------------------------------------------------------------------- relu^2 and tanh epilogues (backward from y)
def _output_activation(name: str, epi: int, bwd_kernel, doc: str):
    """The torch op of ``act(x @ w^T)`` for an activation whose derivative is a function of its output (relu^2:
    ``2 sqrt(y)``, tanh: ``1 - y^2``, one elementwise ``bwd_kernel``): forward / backward host code, the custom ops
    ``vision_rwkv::<name>`` (+ ``_bwd``) with fake implementations and autograd, the eager autograd Function, and
    the entry point (x (..., K), w (N, K) of x's dtype, any strides -> (..., N) in x's dtype, fp32 accumulation)."""

    def fwd(x, w):
        x2 = _rows(x)
        out = new_empty((x2.shape[0], w.shape[0]), x.dtype, x.device)
        _launch(x2, w, None, out, None, epi)
        return out.view(*x.shape[:-1], w.shape[0])

    def bwd(x, w, y, g):
        x2 = _rows(x)
        y2, g2 = y.reshape(-1, y.shape[-1]), g.reshape(-1, g.shape[-1]).contiguous()
        gpre = new_empty(y2.shape, x.dtype, x.device)
        grid, meta = _elem_grid(y2.numel())
        bwd_kernel[grid](y2, g2, gpre, y2.numel(), **meta)
        return _weight_grad(gpre, x2, x, w)

    def op_fn(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return fwd(x, w)

    def bwd_op_fn(x: torch.Tensor, w: torch.Tensor, y: torch.Tensor,
                  g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return bwd(x, w, y, g)

    op = torch.library.custom_op(f"vision_rwkv::{name}", op_fn, mutates_args=())
    op.register_fake(lambda x, w: x.new_empty((*x.shape[:-1], w.shape[0])))
    bwd_op = torch.library.custom_op(f"vision_rwkv::{name}_bwd", bwd_op_fn, mutates_args=())
    bwd_op.register_fake(lambda x, w, y, g: (x.new_empty(x.shape), _like_weight(w)))

    def setup(ctx, inputs, output):
        ctx.save_for_backward(*inputs, output)

    torch.library.register_autograd(f"vision_rwkv::{name}", lambda ctx, g: bwd_op(*ctx.saved_tensors, g),
                                    setup_context=setup)

    class Function(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, w):
            y = fwd(x, w)
            ctx.save_for_backward(x, w, y)
            return y

        @staticmethod
        def backward(ctx, g):
            return bwd(*ctx.saved_tensors, g)

    def entry(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return run_op(op, Function, fwd, x, w)

    entry.__name__ = f"{name}_triton"
    entry.__doc__ = doc
    return entry


linear_relu_square_triton = _output_activation(
    "linear_relu_square", EPI_RELU_SQUARE, _relu_square_bwd_from_out_kernel,
    "``relu(x @ w^T) ** 2``: x (..., K), w (N, K) of x's dtype -> (..., N) in x's dtype (fp32 accumulation).")
linear_tanh_triton = _output_activation(
    "linear_tanh", EPI_TANH, _tanh_bwd_from_out_kernel,
    "``tanh(x @ w^T)``: x (..., K), w (N, K) of x's dtype, any strides (a transposed LoRA matrix needs no copy) "
    "-> (..., N) in x's dtype (fp32 accumulation).")


# ---------------------------------------------------------------------------------------------- sigmoid-gate epilogue
def _sigmoid_mul_fwd(x, w, y, save_pre: bool = False):
    x2 = _rows(x)
    n = w.shape[0]
    out = new_empty((x2.shape[0], n), torch.promote_types(x.dtype, y.dtype), x.device)
    pre = new_empty((x2.shape[0], n), x.dtype, x.device) if save_pre else None
    _launch(x2, w, y.reshape(-1, n), out, pre, EPI_SIGMOID_MUL)
    out = out.view(*x.shape[:-1], n)
    return (out, pre.view(out.shape)) if save_pre else out


def _sigmoid_mul_bwd(x, w, y, pre, g):
    x2 = _rows(x)
    n = w.shape[0]
    pre2, y2, g2 = pre.reshape(-1, n), y.reshape(-1, n), g.reshape(-1, n).contiguous()
    gpre = new_empty(pre2.shape, x.dtype, x.device)
    gy = new_empty(y2.shape, y.dtype, y.device)
    grid, meta = _elem_grid(y2.numel())
    _sigmoid_mul_bwd_kernel[grid](pre2, y2, g2, gpre, gy, y2.numel(), **meta)
    gx, gw = _weight_grad(gpre, x2, x, w)
    return gx, gw, gy.view(y.shape)


@torch.library.custom_op("vision_rwkv::linear_sigmoid_mul", mutates_args=())
def _sigmoid_mul_op(x: torch.Tensor, w: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return _sigmoid_mul_fwd(x, w, y, save_pre=True)


@_sigmoid_mul_op.register_fake
def _(x, w, y):
    shape = (*x.shape[:-1], w.shape[0])
    return x.new_empty(shape, dtype=torch.promote_types(x.dtype, y.dtype)), x.new_empty(shape)


@torch.library.custom_op("vision_rwkv::linear_sigmoid_mul_bwd", mutates_args=())
def _sigmoid_mul_bwd_op(x: torch.Tensor, w: torch.Tensor, y: torch.Tensor, pre: torch.Tensor,
                        g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _sigmoid_mul_bwd(x, w, y, pre, g)


@_sigmoid_mul_bwd_op.register_fake
def _(x, w, y, pre, g):
    return x.new_empty(x.shape), _like_weight(w), y.new_empty(y.shape)


def _sm_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs, output[1])
    ctx.mark_non_differentiable(output[1])


def _sm_backward(ctx, g, _gpre):
    return _sigmoid_mul_bwd_op(*ctx.saved_tensors, g)


torch.library.register_autograd("vision_rwkv::linear_sigmoid_mul", _sm_backward, setup_context=_sm_setup)


class _LinearSigmoidMul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, y):
        out, pre = _sigmoid_mul_fwd(x, w, y, save_pre=True)
        ctx.save_for_backward(x, w, y, pre)
        return out

    @staticmethod
    def backward(ctx, g):
        return _sigmoid_mul_bwd(*ctx.saved_tensors, g)


def _compiled_sigmoid_mul(x, w, y):
    return _sigmoid_mul_op(x, w, y)[0]


def linear_sigmoid_mul_triton(x: torch.Tensor, w: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``sigmoid(x @ w^T) * y``: x (..., K), w (N, K) of x's dtype, y (..., N) -> ``result_type(x, y)``."""
    return run_op(_compiled_sigmoid_mul, _LinearSigmoidMul, _sigmoid_mul_fwd, x, w.contiguous(), y.contiguous())


# ---------------------------------------------------------------------------------------------- decay epilogue
def _decay_fwd(x, w, w0):
    x2 = _rows(x)
    out = new_empty((x2.shape[0], w.shape[0]), torch.float32, x.device)
    _launch(x2, w, w0, out, None, EPI_DECAY)
    return out.view(*x.shape[:-1], w.shape[0])


def _decay_bwd(x, w, w0, y, g):
    """d z = g * y (the decay is its own derivative, as for ``decay_logd``), then d x, d w and d w0."""
    gw0, gz = decay_grads(g, y, w0.dtype, x.dtype)
    gx, gw = _weight_grad(gz.reshape(-1, gz.shape[-1]), _rows(x), x, w)
    return gx, gw, gw0


@torch.library.custom_op("vision_rwkv::linear_decay", mutates_args=())
def _decay_op(x: torch.Tensor, w: torch.Tensor, w0: torch.Tensor) -> torch.Tensor:
    return _decay_fwd(x, w, w0)


@_decay_op.register_fake
def _(x, w, w0):
    return x.new_empty((*x.shape[:-1], w.shape[0]), dtype=torch.float32)


@torch.library.custom_op("vision_rwkv::linear_decay_bwd", mutates_args=())
def _decay_bwd_op(x: torch.Tensor, w: torch.Tensor, w0: torch.Tensor, y: torch.Tensor,
                  g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _decay_bwd(x, w, w0, y, g)


@_decay_bwd_op.register_fake
def _(x, w, w0, y, g):
    return x.new_empty(x.shape), _like_weight(w), w0.new_empty(w0.shape)


def _decay_backward(ctx, g):
    return _decay_bwd_op(*ctx.saved_tensors, g)


def _decay_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs, output)


torch.library.register_autograd("vision_rwkv::linear_decay", _decay_backward, setup_context=_decay_setup)


class _LinearDecay(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, w0):
        y = _decay_fwd(x, w, w0)
        ctx.save_for_backward(x, w, w0, y)
        return y

    @staticmethod
    def backward(ctx, g):
        return _decay_bwd(*ctx.saved_tensors, g)


def linear_decay_triton(x: torch.Tensor, w: torch.Tensor, w0: torch.Tensor) -> torch.Tensor:
    """``-exp(w0 + x @ w^T)`` in float32: x (..., K), w (N, K) of x's dtype (any strides), w0 (N,) -> (..., N)."""
    return run_op(_decay_op, _LinearDecay, _decay_fwd, x, w, w0.contiguous())
