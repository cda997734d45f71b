"""Triton GEMM whose operand is the Q-Shift interpolation of a token / channel mix, computed while it is loaded.

``mix_linear``: ``act(mix @ W^T)`` with ``mix = x + (q_shift(x) - x) * coef`` and ``coef = a`` (``1 - a`` for the v4
``mu``), plus the RWKV-6 LoRA offset ``h @ W2`` when given. The separate pass that writes the mixed input (one
plane per projection, read back by the GEMM) disappears: each K step of the GEMM loads the x tile and, per channel
quarter, the neighbour token's values (left / right / up / down on the token grid, zero outside the image), forms
the mixed tile in registers (the LoRA offset by a rank-R ``tl.dot`` on an h tile loaded once per program) and feeds
it to the tensor-core product. Per projection this reads x (the neighbours mostly hit L2) instead of writing and
reading a mixed plane: 2 plane transfers fewer per projection, ~7 per VRWKV block, ~8 per VRWKV6 block.

The epilogues are those of ``linear_triton.py`` (none, relu^2, sigmoid gate on y, tanh), by the same helper.

Backward (training): the mixed input is recomputed by the ``token_shift_mix`` kernels (one projection), then
the activation's derivative, two cuBLAS GEMMs (d mix, d W) and the ``token_shift_mix`` backward (d x, d a and,
with the LoRA, d h and d W2). The models use this op for inference (``VRWKV_FUSED_MIX=1``); in training only with
``VRWKV_FUSED_MIX_TRAIN=1`` (less activation memory: by default the stored mixed inputs of the separate pass are
cheaper than one recompute per projection).

Launch settings: ``CONFIG`` (``VRWKV_TRITON_MIX="bm=..,bn=..,bk=..,warps=..,stages=..,group_m=.."``; bm, bn, warps 0
= chosen from the dtype and N by ``_tiles``). Outputs come from :func:`vision_rwkv.ops._triton_utils.new_empty`
(NaN-poisoned in debug mode).
"""
from __future__ import annotations

from typing import Optional

import torch
import triton.language as tl

from .._triton_utils import cdiv, config_from_env, new_empty, next_pow2, run_op
from ..triton_jit import jit
from .elementwise_triton import (_elem_grid, _relu_square_bwd_from_out_kernel, _sigmoid_mul_bwd_kernel,
                                 _tanh_bwd_from_out_kernel)
from .linear_triton import (EPI_NONE, EPI_RELU_SQUARE, EPI_SIGMOID_MUL, EPI_TANH, _activate, _epilogue_store,
                            _gemm_tile_of, _like_weight, _precision, _residual_norm_store, _weight_grad,
                            residual_launch)
from .shift_triton import _by_quarter, _edges, _quarters, _tsm_bwd, _tsm_fwd, _tsm_lora_bwd, _tsm_lora_fwd

__all__ = ["mix_linear_triton", "mix_linear_residual_triton", "CONFIG", "ACT_EPILOGUES"]

# bm / bn / warps 0: chosen from the operand dtype and N by _tiles (the mixing is redone by every column tile of a
# row block, so wide column tiles do less of it); bk 32: fewer registers than 64 at every width
# with the residual epilogue a program holds whole rows: bn = next_pow2(N), bm = res_elems / bn (16..bm), res_warps
# warps (sm_90, bf16: 128-186 registers, no spill, for C 192 / 384; rows of 1024 spill: the public ops take <= 512)
CONFIG = config_from_env(dict(bm=0, bn=0, bk=32, warps=0, stages=2, group_m=8, res_warps=8, res_elems=8192),
                         "VRWKV_TRITON_MIX")


def _tiles(n: int, dtype: torch.dtype, cfg: dict, act: str = "none") -> tuple[int, int, int]:
    """(bm, bn, warps) of a mixed-operand GEMM with N = n outputs and epilogue ``act``; a nonzero ``cfg`` entry wins.

    Every program forms the mixed operand of its row block again, so the mixing work is N / bn times that of one
    pass: 16-bit operands take 128 x 256 tiles and 8 warps (a whole row of N <= 256; for VRWKV6-T's five
    projections at 1024 px, batch 16, sm_90 static counts give 63 against 177 M warp instructions with the former
    64 x 64 tiles on 4 warps, no spill at 229 registers: ``tools/kernel_report.py --op mix_v6x5``); fp32 operands
    take 64-row tiles of 64 or 128 columns on 8 warps (wider tiles spill; 4 warps spill with the RWKV-6 LoRA). The
    sigmoid-gate and tanh epilogues hold more per output (the gate's y and the saved pre-activation; tanh's
    polynomial): at most 128 columns there (256 spill with the gate, and reach 255 registers with tanh)."""
    wide = dtype != torch.float32
    bm = cfg["bm"] or (128 if wide else 64)
    widest = 256 if act in ("none", "relu_square") else 128
    bn = cfg["bn"] or (min(widest, max(64, next_pow2(n))) if wide else (128 if n % 128 == 0 else 64))
    # (a 16-bit 64-row tile on 8 warps would form its operand twice, once per warpgroup)
    warps = cfg["warps"] or (8 if bm >= 128 or not wide else 4)
    return bm, bn, warps


ACT_EPILOGUES = {"none": EPI_NONE, "relu_square": EPI_RELU_SQUARE, "sigmoid_mul": EPI_SIGMOID_MUL, "tanh": EPI_TANH}


@jit
def _mix_linear_kernel(X, A, HH, W2, WT, AUX, OUT, PRE, RX, GAMMA, LNW, LNB, NOUT, A1, A2, A3, WT1, WT2, WT3, M, N,
                       K, P, NTOK, H, W, shm, swn, swk, ln_eps, EPI: tl.constexpr,
                       SAVE_PRE: tl.constexpr, HAS_LORA: tl.constexpr, ONE_MINUS: tl.constexpr, RES: tl.constexpr,
                       HAS_GAMMA: tl.constexpr, SHIFT: tl.constexpr, R: tl.constexpr, GROUP: tl.constexpr,
                       PREC: tl.constexpr, LORA_PREC: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
                       BK: tl.constexpr, GROUP_M: tl.constexpr, HS: tl.constexpr, Q1: tl.constexpr,
                       Q2: tl.constexpr, Q3: tl.constexpr):
    # GROUP: P <= 4 projections of one x (mix_linear_group), projection p with coefficients A_p and weight WT_p (A,
    # WT for p = 0): the P programs of an output tile are neighbours, so x and its shifted rows come from DRAM once
    # and from L2 for the other projections. Pointer arguments a call does not use are None (constexpr: no host-side
    # specialization cost per launch), and only read under the constexpr flags that need them.
    pid = tl.program_id(0)
    if GROUP:
        proj = pid % P
        rm, rn, m_ok, n_ok = _gemm_tile_of(pid // P, M, N, BM, BN, GROUP_M)
        A = tl.where(proj == 1, A1, tl.where(proj == 2, A2, tl.where(proj == 3, A3, A)))
        WT = tl.where(proj == 1, WT1, tl.where(proj == 2, WT2, tl.where(proj == 3, WT3, WT)))
        OUT += proj.to(tl.int64) * M * N
        if HAS_LORA:
            HH += proj * R
            W2 += proj.to(tl.int64) * R * K
    else:
        rm, rn, m_ok, n_ok = _gemm_tile_of(pid, M, N, BM, BN, GROUP_M)
    rk = tl.arange(0, BK)
    n_img = rm % NTOK  # token index inside its image
    ok_l, ok_r, ok_u, ok_d = _edges(n_img[:, None], H, W)  # (once per program: the K loop picks by quarter)
    rr = tl.arange(0, R)
    if HAS_LORA:  # this program's rows of the LoRA hidden, exactly in fp32 (16-bit values are exact in tf32)
        hrow = tl.load(HH + rm[:, None] * shm + rr[None, :], mask=m_ok[:, None], other=0.0)
        hf = hrow.to(tl.float32)
    pw = WT + rn[None, :] * swn + rk[:, None] * swk
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, K, BK):
        c = k0 + rk
        c_ok = c < K
        ok = m_ok[:, None] & c_ok[None, :]
        offs = rm[:, None] * K + c[None, :]
        b = tl.load(pw, mask=c_ok[:, None] & n_ok[None, :], other=0.0)
        if SHIFT:
            cc = c % HS if HS > 0 else c
            q = ((cc >= Q1).to(tl.int32) + (cc >= Q2).to(tl.int32) + (cc >= Q3).to(tl.int32))[None, :]
            delta = _by_quarter(q, -1, 1, -W, W)
            valid = _by_quarter(q, ok_l, ok_r, ok_u, ok_d) & ok
            x = tl.load(X + offs, mask=ok, other=0.0).to(tl.float32)
            xx = tl.load(X + offs + tl.where(valid, delta, 0).to(tl.int64) * K, mask=valid,
                         other=0.0).to(tl.float32) - x
            coef = tl.load(A + c, mask=c_ok, other=0.0).to(tl.float32)[None, :]
            if ONE_MINUS:
                coef = 1.0 - coef
            if HAS_LORA:
                w2 = tl.load(W2 + rr[:, None] * K + c[None, :], mask=c_ok[None, :], other=0.0)
                coef = coef + tl.dot(hf, w2.to(hrow.dtype).to(tl.float32), input_precision=LORA_PREC)
            operand = (x + xx * coef).to(b.dtype)
        else:  # a plain projection of x (the residual epilogue on an ordinary Linear)
            operand = tl.load(X + offs, mask=ok, other=0.0).to(b.dtype)
        acc = tl.dot(operand, b, acc, input_precision=PREC)
        pw += BK * swk
    if RES == 0:
        _epilogue_store(acc, AUX, OUT, PRE, rm, rn, m_ok, n_ok, N, EPI, SAVE_PRE)
    else:  # whole rows (one column tile): the block's residual add + LayerNorm, OUT = the new residual
        val = _activate(acc, AUX, rm[:, None] * N + rn[None, :], m_ok[:, None] & n_ok[None, :], rn, n_ok, EPI)
        _residual_norm_store(val, RX, GAMMA, LNW, LNB, OUT, NOUT, rm, rn, m_ok, n_ok, N, ln_eps, RES == 2,
                             HAS_GAMMA)


def _out_dtype(weight: torch.Tensor, y: Optional[torch.Tensor]) -> torch.dtype:
    return weight.dtype if y is None else torch.promote_types(weight.dtype, y.dtype)


def _fwd(x, H, W, head_size, a, h, w2, weight, y, one_minus, act, save_pre=False, residual=None, shift=True,
         group=(), inplace=False):
    """(out, pre): out (B, T, N); pre the saved pre-activation (sigmoid gate in training) or an empty tensor.
    ``residual`` = (x_res, gamma, ln_weight, ln_bias, eps, post, n_dtype): the block's residual add + LayerNorm in the
    epilogue (whole rows per program); then (s, n) with n None for post-norm. ``shift=False``: the operand is x itself
    (a plain projection; a, h, w2 unused). ``group`` = ((a_1, weight_1), ...): up to 3 more projections in the same
    launch (``act='none'``, no residual; weights with weight's shape and strides), with w2 (P, R, C) and h (B, T,
    P * R); then out is (P, B, T, N)."""
    B, T, C = x.shape
    P = 1 + len(group)
    rows, n = B * T, weight.shape[0]
    cfg = CONFIG
    if residual is None:
        out = new_empty((P * rows, n), _out_dtype(weight, y), x.device)
        pre = new_empty((rows, n), weight.dtype, x.device) if save_pre else None  # None: not a kernel argument
        bm, bn, warps = _tiles(n, weight.dtype, cfg, act)
        res_args, res_meta, eps = (None,) * 5, dict(RES=0, HAS_GAMMA=False), 0.0
    else:
        rl = residual_launch(residual, rows, n, cfg, x.device, inplace)
        out, pre, res_args, res_meta, eps, bm, bn, warps = rl.s, rl.n, rl.args, rl.meta, rl.eps, rl.bm, rl.bn, rl.warps
    h2 = h.reshape(rows, h.shape[-1]) if h is not None else None  # a view for a column slice of the LoRA hidden
    if h2 is not None and h2.stride(1) != 1:
        h2 = h2.contiguous()
    more = list(group) + [(a, weight) if group else (None, None)] * (3 - len(group))  # unused group slots: p = 0's
    hs, q1, q2, q3 = _quarters(C, head_size)
    grid = (P * cdiv(rows, bm) * cdiv(n, bn),)
    _mix_linear_kernel[grid](
        x, a if shift else None, h2, w2, weight, None if y is None else y.reshape(rows, n), out, pre, *res_args,
        *(m[0] for m in more), *(m[1] for m in more), rows, n, C, P, T, H, W,
        0 if h2 is None else h2.stride(0), weight.stride(0), weight.stride(1), float(eps),
        EPI=ACT_EPILOGUES[act], SAVE_PRE=save_pre and residual is None, HAS_LORA=h2 is not None,
        ONE_MINUS=one_minus, SHIFT=shift, R=16 if h2 is None else h2.shape[1] // P, GROUP=bool(group), **res_meta,
        PREC=_precision(weight.dtype), LORA_PREC="ieee" if h2 is None or h2.dtype == torch.float32 else "tf32",
        BM=bm, BN=bn, BK=cfg["bk"], GROUP_M=cfg["group_m"], HS=0 if hs == C else hs, Q1=q1, Q2=q2, Q3=q3,
        num_warps=warps, num_stages=cfg["stages"])
    if residual is not None:
        return rl.results(residual[0].shape)
    return (out.view(P, B, T, n) if group else out.view(B, T, n)), (out.new_empty((0,)) if pre is None else pre)


def _bwd(x, H, W, head_size, a, h, w2, weight, y, out, pre, one_minus, act, g):
    """Gradients (x, a, h, w2, weight, y) of ``mix_linear`` (None where the input is None)."""
    n = weight.shape[0]
    g2 = g.reshape(-1, n).contiguous()
    gy = None
    if act == "none":
        gpre = g2
    else:
        gpre = new_empty(g2.shape, weight.dtype, x.device)
        grid, meta = _elem_grid(g2.numel())
        if act == "sigmoid_mul":
            y2 = y.reshape(-1, n)
            gy = new_empty(y2.shape, y.dtype, y.device)
            _sigmoid_mul_bwd_kernel[grid](pre, y2, g2, gpre, gy, g2.numel(), **meta)
            gy = gy.view(y.shape)
        else:
            kernel = _relu_square_bwd_from_out_kernel if act == "relu_square" else _tanh_bwd_from_out_kernel
            kernel[grid](out.reshape(-1, n), g2, gpre, g2.numel(), **meta)
    a1 = a.reshape(1, -1)
    if h is None:
        mix = _tsm_fwd(x, H, W, head_size, a1, None, weight.dtype, one_minus)[0]
    else:
        mix = _tsm_lora_fwd(x, H, W, head_size, a1, h.contiguous(), w2.unsqueeze(0), weight.dtype)[0]
    gmix, gw = _weight_grad(gpre, mix.reshape(-1, mix.shape[-1]), mix, weight)
    if h is None:
        gx, ga, _ = _tsm_bwd(x, H, W, head_size, a1, None, gmix.unsqueeze(0), one_minus)
        return gx, ga.view(a.shape), None, None, gw, gy
    gx, ga, gh, gw2 = _tsm_lora_bwd(x, H, W, head_size, a1, h, w2.unsqueeze(0), gmix.unsqueeze(0))
    return gx, ga.view(a.shape), gh, gw2.view(w2.shape), gw, gy


@torch.library.custom_op("vision_rwkv::mix_linear", mutates_args=())
def _mix_op(x: torch.Tensor, H: int, W: int, head_size: int, a: torch.Tensor, h: Optional[torch.Tensor],
            w2: Optional[torch.Tensor], weight: torch.Tensor, y: Optional[torch.Tensor], one_minus: bool,
            act: str) -> tuple[torch.Tensor, torch.Tensor]:
    return _fwd(x, H, W, head_size, a, h, w2, weight, y, one_minus, act, save_pre=act == "sigmoid_mul")


@_mix_op.register_fake
def _(x, H, W, head_size, a, h, w2, weight, y, one_minus, act):
    out = x.new_empty((*x.shape[:-1], weight.shape[0]), dtype=_out_dtype(weight, y))
    pre = x.new_empty((out.numel() // out.shape[-1], out.shape[-1]) if act == "sigmoid_mul" else (0,),
                      dtype=weight.dtype)
    return out, pre


@torch.library.custom_op("vision_rwkv::mix_linear_bwd", mutates_args=())
def _mix_bwd_op(x: torch.Tensor, H: int, W: int, head_size: int, a: torch.Tensor, h: Optional[torch.Tensor],
                w2: Optional[torch.Tensor], weight: torch.Tensor, y: Optional[torch.Tensor], out: torch.Tensor,
                pre: torch.Tensor, one_minus: bool, act: str, g: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    grads = _bwd(x, H, W, head_size, a, h, w2, weight, y, out, pre, one_minus, act, g)
    return tuple(x.new_empty((0,)) if t is None else t for t in grads)  # custom ops return tensors, not None


@_mix_bwd_op.register_fake
def _(x, H, W, head_size, a, h, w2, weight, y, out, pre, one_minus, act, g):
    def like(t):
        return x.new_empty((0,)) if t is None else t.new_empty(t.shape)

    return like(x), like(a), like(h), like(w2), _like_weight(weight), like(y)


def _mix_setup(ctx, inputs, output):
    x, H, W, head_size, a, h, w2, weight, y, one_minus, act = inputs
    ctx.meta = (H, W, head_size, h is not None, y is not None, one_minus, act)
    ctx.save_for_backward(x, a, h, w2, weight, y, output[0], output[1])
    ctx.mark_non_differentiable(output[1])


def _mix_backward(ctx, g, _gpre):
    x, a, h, w2, weight, y, out, pre = ctx.saved_tensors
    H, W, head_size, has_h, has_y, one_minus, act = ctx.meta
    return _input_grads(_mix_bwd_op(x, H, W, head_size, a, h, w2, weight, y, out, pre, one_minus, act, g),
                        has_h, has_y)


torch.library.register_autograd("vision_rwkv::mix_linear", _mix_backward, setup_context=_mix_setup)


class _MixLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, H, W, head_size, a, h, w2, weight, y, one_minus, act):
        out, pre = _fwd(x, H, W, head_size, a, h, w2, weight, y, one_minus, act, save_pre=act == "sigmoid_mul")
        ctx.meta = (H, W, head_size, one_minus, act)
        ctx.save_for_backward(x, a, h, w2, weight, y, out, pre)
        return out

    @staticmethod
    def backward(ctx, g):
        x, a, h, w2, weight, y, out, pre = ctx.saved_tensors
        H, W, head_size, one_minus, act = ctx.meta
        return _input_grads(_bwd(x, H, W, head_size, a, h, w2, weight, y, out, pre, one_minus, act, g),
                            h is not None, y is not None)


def _input_grads(grads, has_h: bool, has_y: bool):
    """The gradients of (x, H, W, head_size, a, h, w2, weight, y, one_minus, act) from ``_bwd``'s six."""
    gx, ga, gh, gw2, gw, gy = grads
    return (gx, None, None, None, ga, gh if has_h else None, gw2 if has_h else None, gw, gy if has_y else None,
            None, None)


def _compiled(*args):
    return _mix_op(*args)[0]


def _eager(*args):
    return _fwd(*args)[0]


def mix_linear_triton(x: torch.Tensor, grid_size: tuple[int, int], a: torch.Tensor, weight: torch.Tensor,
                      head_size: Optional[int] = None, h: Optional[torch.Tensor] = None,
                      w2: Optional[torch.Tensor] = None, one_minus: bool = False, act: str = "none",
                      y: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``act((x + (q_shift(x) - x) * coef) @ weight^T)`` (see the module docstring): x (B, T, C) contiguous, a (C,),
    weight (N, C) in the compute dtype (any strides), h (B, T, R) (a column slice of the LoRA hidden is fine), w2
    (R, C), y (B, T, N) for ``act='sigmoid_mul'``. Returns (B, T, N) in weight's dtype (``sigmoid_mul``: promoted
    with y's)."""
    args = (x.contiguous(), int(grid_size[0]), int(grid_size[1]), int(head_size or 0), a.contiguous(), h,
            None if w2 is None else w2.contiguous(), weight, None if y is None else y.contiguous(), bool(one_minus),
            act)
    return run_op(_compiled, _MixLinear, _eager, *args)


# ------------------------------------------------------------ with the block's residual add + LayerNorm (inference)
@torch.library.custom_op("vision_rwkv::mix_linear_residual", mutates_args=())
def _mix_res_op(x: torch.Tensor, H: int, W: int, head_size: int, a: torch.Tensor, h: Optional[torch.Tensor],
                w2: Optional[torch.Tensor], weight: torch.Tensor, y: Optional[torch.Tensor], one_minus: bool, act: str,
                x_res: torch.Tensor, gamma: Optional[torch.Tensor], ln_weight: torch.Tensor, ln_bias: torch.Tensor,
                eps: float, post: bool, n_dtype: torch.dtype, shift: bool) -> tuple[torch.Tensor, torch.Tensor]:
    s, n = _fwd(x, H, W, head_size, a, h, w2, weight, y, one_minus, act,
                residual=(x_res, gamma, ln_weight, ln_bias, eps, post, n_dtype), shift=shift)
    return s, (s.new_empty((0,)) if n is None else n)  # custom ops return tensors, not None


@_mix_res_op.register_fake
def _(x, H, W, head_size, a, h, w2, weight, y, one_minus, act, x_res, gamma, ln_weight, ln_bias, eps, post, n_dtype,
      shift):
    return x_res.new_empty(x_res.shape), x_res.new_empty((0,) if post else x_res.shape, dtype=n_dtype)


def mix_linear_residual_triton(x: torch.Tensor, grid_size: tuple[int, int], a: torch.Tensor, weight: torch.Tensor,
                               head_size: Optional[int], h: Optional[torch.Tensor], w2: Optional[torch.Tensor],
                               one_minus: bool, act: str, y: Optional[torch.Tensor], x_res: torch.Tensor,
                               gamma: Optional[torch.Tensor], ln_weight: torch.Tensor, ln_bias: torch.Tensor,
                               eps: float, post: bool, n_dtype: torch.dtype, shift: bool = True,
                               inplace: bool = False):
    """:func:`mix_linear_triton` whose epilogue is the block's residual add + LayerNorm (``add_norm`` of x_res and
    the projection's output; whole rows per program) -> ``(s, n)`` (n None for post-norm). Inference only: no
    autograd (the public wrapper composes ``mix_linear`` and ``add_norm`` when a gradient is needed). ``shift=False``:
    a plain projection of x (``fused.linear_add_norm``). ``inplace``: s written into x_res (eager; x_res must not be
    x: other programs read x's shifted rows)."""
    args = (x.contiguous(), int(grid_size[0]), int(grid_size[1]), int(head_size or 0), a.contiguous(), h,
            None if w2 is None else w2.contiguous(), weight, None if y is None else y.contiguous(), bool(one_minus),
            act, x_res.contiguous(), None if gamma is None else gamma.contiguous(), ln_weight.contiguous(),
            ln_bias.contiguous(), float(eps), bool(post), n_dtype, bool(shift))
    if torch.compiler.is_compiling():
        s, n = _mix_res_op(*args)
        return s, (None if post else n)
    return _fwd(*args[:11], residual=args[11:18], shift=args[18], inplace=inplace)
