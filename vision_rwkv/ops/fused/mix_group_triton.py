"""Several projections of one token mix in one launch: ``mix_linear_group``.

``out[p] = mix_p @ W_p^T`` with ``mix_p = x + (q_shift(x) - x) * coef_p`` and ``coef_p = a[p]`` (``1 - a[p]`` for
the v4 ``mu``), plus the RWKV-6 LoRA offset ``h[..., pR:(p+1)R] @ W2[p]``: the v4 token mix's key and value, the
RWKV-6 token mix's key, value, receptance and gate. It is the kernel of ``mix_linear_triton.py`` with a projection
index in the program id, fastest-varying: the P programs of one output tile run side by side and read the same x
rows (and shifted rows), so x comes from DRAM once per tile instead of once per projection (the other P - 1 reads
hit L2), and the host launches once instead of P times. Outputs are one (P, B, T, N) tensor (each projection a
contiguous slice).

Backward (training): the P mixed inputs are recomputed by one ``token_shift_mix`` pass, then two batched cuBLAS
products (d mix, d W) and one ``token_shift_mix`` backward (d x, d a and, with the LoRA, d h and d W2).
"""
from __future__ import annotations

from typing import Optional

import torch

from .._triton_utils import autograd_needed
from .mix_linear_triton import _fwd
from .shift_triton import _tsm_bwd, _tsm_fwd, _tsm_lora_bwd, _tsm_lora_fwd

__all__ = ["mix_linear_group_triton", "MAX_GROUP"]

MAX_GROUP = 4  # projections per launch (the kernel takes one coefficient and one weight pointer per projection)


def _group_fwd(x, H, W, head_size, h, w2, one_minus, coefs, weights):
    group = tuple(zip(coefs[1:], weights[1:]))
    out = _fwd(x, H, W, head_size, coefs[0], h, w2, weights[0], None, one_minus, "none", group=group)[0]
    return out if group else out.unsqueeze(0)


def _group_bwd(x, H, W, head_size, h, w2, one_minus, coefs, weights, g):
    """Gradients (x, a, h, w2, weight) of the group: a (P, C) and weight (P, N, C) stacked; h, w2 empty tensors
    without the LoRA."""
    a, weight = torch.stack(coefs), torch.stack(weights)
    P, n, C = weight.shape
    if h is None:
        mix = _tsm_fwd(x, H, W, head_size, a, None, weight.dtype, one_minus)
    else:
        h = h.contiguous()
        mix = _tsm_lora_fwd(x, H, W, head_size, a, h, w2, weight.dtype)
    g3 = g.reshape(P, -1, n).to(weight.dtype)
    gmix = torch.bmm(g3, weight).view(mix.shape)
    gw = torch.bmm(g3.transpose(1, 2), mix.view(P, -1, C))
    if h is None:
        gx, ga, _ = _tsm_bwd(x, H, W, head_size, a, None, gmix, one_minus)
        return gx, ga, x.new_empty((0,)), x.new_empty((0,)), gw
    gx, ga, gh, gw2 = _tsm_lora_bwd(x, H, W, head_size, a, h, w2, gmix)
    return gx, ga, gh, gw2, gw


@torch.library.custom_op("vision_rwkv::mix_linear_group", mutates_args=())
def _group_op(x: torch.Tensor, H: int, W: int, head_size: int, h: Optional[torch.Tensor], w2: Optional[torch.Tensor],
              one_minus: bool, coefs: list[torch.Tensor], weights: list[torch.Tensor]) -> torch.Tensor:
    return _group_fwd(x, H, W, head_size, h, w2, one_minus, coefs, weights)


@_group_op.register_fake
def _(x, H, W, head_size, h, w2, one_minus, coefs, weights):
    return x.new_empty((len(weights), *x.shape[:-1], weights[0].shape[0]), dtype=weights[0].dtype)


@torch.library.custom_op("vision_rwkv::mix_linear_group_bwd", mutates_args=())
def _group_bwd_op(x: torch.Tensor, H: int, W: int, head_size: int, h: Optional[torch.Tensor],
                  w2: Optional[torch.Tensor], one_minus: bool, coefs: list[torch.Tensor], weights: list[torch.Tensor],
                  g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return _group_bwd(x, H, W, head_size, h, w2, one_minus, coefs, weights, g)


@_group_bwd_op.register_fake
def _(x, H, W, head_size, h, w2, one_minus, coefs, weights, g):
    def like(t):
        return x.new_empty((0,)) if t is None else t.new_empty(t.shape)

    P = len(weights)
    return (like(x), coefs[0].new_empty((P, coefs[0].shape[0])), like(h), like(w2),
            weights[0].new_empty((P, *weights[0].shape)))


def _group_setup(ctx, inputs, output):
    x, H, W, head_size, h, w2, one_minus, coefs, weights = inputs
    ctx.meta = (H, W, head_size, one_minus, len(coefs))
    ctx.save_for_backward(x, h, w2, *coefs, *weights)


def _saved(ctx):
    x, h, w2, *rest = ctx.saved_tensors
    P = ctx.meta[-1]
    return x, h, w2, rest[:P], rest[P:]


def _group_backward(ctx, g):
    x, h, w2, coefs, weights = _saved(ctx)
    H, W, head_size, one_minus, _ = ctx.meta
    gx, ga, gh, gw2, gw = _group_bwd_op(x, H, W, head_size, h, w2, one_minus, coefs, weights, g)
    has_h = h is not None
    return (gx, None, None, None, gh if has_h else None, gw2 if has_h else None, None, list(ga.unbind(0)),
            list(gw.unbind(0)))


torch.library.register_autograd("vision_rwkv::mix_linear_group", _group_backward, setup_context=_group_setup)


class _MixLinearGroup(torch.autograd.Function):
    """Eager autograd of the group: inputs (x, H, W, head_size, h, w2, one_minus, *coefs, *weights)."""

    @staticmethod
    def forward(ctx, x, H, W, head_size, h, w2, one_minus, *tensors):
        P = len(tensors) // 2
        ctx.meta = (H, W, head_size, one_minus, P)
        ctx.save_for_backward(x, h, w2, *tensors)
        return _group_fwd(x, H, W, head_size, h, w2, one_minus, tensors[:P], tensors[P:])

    @staticmethod
    def backward(ctx, g):
        x, h, w2, coefs, weights = _saved(ctx)
        H, W, head_size, one_minus, _ = ctx.meta
        gx, ga, gh, gw2, gw = _group_bwd(x, H, W, head_size, h, w2, one_minus, coefs, weights, g)
        has_h = h is not None
        return (gx, None, None, None, gh if has_h else None, gw2 if has_h else None, None, *ga.unbind(0),
                *gw.unbind(0))


def mix_linear_group_triton(x: torch.Tensor, grid_size: tuple[int, int], coefs: list[torch.Tensor],
                            weights: list[torch.Tensor], head_size: Optional[int] = None,
                            h: Optional[torch.Tensor] = None, w2: Optional[torch.Tensor] = None,
                            one_minus: bool = False) -> torch.Tensor:
    """P <= :data:`MAX_GROUP` projections of one x with their interpolations in one launch: x (B, T, C), coefs P
    (C,) vectors, weights P (N, C) tensors of one dtype (the compute dtype), h (B, T, P * R) (a column slice of the
    LoRA hidden is fine), w2 (P, R, C). Returns (P, B, T, N) in the weights' dtype."""
    if not 1 <= len(weights) <= MAX_GROUP or len(coefs) != len(weights):
        raise ValueError(f"mix_linear_group_triton: 1 to {MAX_GROUP} projections with one coefficient vector each, "
                         f"got {len(coefs)} vectors and {len(weights)} weights")
    coefs = [c.contiguous() for c in coefs]
    weights = [w.contiguous() for w in weights]
    x, H, W, hs = x.contiguous(), int(grid_size[0]), int(grid_size[1]), int(head_size or 0)
    w2 = None if w2 is None else w2.contiguous()
    if torch.compiler.is_compiling():
        return _group_op(x, H, W, hs, h, w2, bool(one_minus), coefs, weights)
    if autograd_needed((x, h, w2, *coefs, *weights)):
        return _MixLinearGroup.apply(x, H, W, hs, h, w2, bool(one_minus), *coefs, *weights)
    return _group_fwd(x, H, W, hs, h, w2, bool(one_minus), coefs, weights)
