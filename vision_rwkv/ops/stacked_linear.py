"""Several bias-free projections of the same shape as one batched GEMM, with weight gradients in the weights' layout.

A token mix projects M mixed inputs, produced by one kernel as one (M, tokens, C) tensor, with M weights of one shape
(v4: key, value, receptance; v6: key, value, receptance, gate). ``stacked_linear`` runs them as one ``bmm`` in the
forward and two in the backward, instead of M and 2M GEMMs, and casts the stacked weight once (as autocast casts a
Linear's weight): fewer launches per training step, where a 224-px step is launch-bound on the host.

Its backward writes the weight gradient as ``gy^T @ x`` (M, C_out, C): each parameter's gradient is a contiguous
slice in the parameter's layout, which autograd's accumulation takes as it is (autograd's own ``bmm`` backward of
``x @ stack(W)^T`` gives transposed views, which it would copy: one launch per weight).
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch

__all__ = ["stacked_linear", "batched_linear_grads"]


class _BatchedLinear(torch.autograd.Function):
    """``x @ w^T`` for x (M, R, C), w (M, C_out, C); the weight gradient ``gy^T @ x`` comes out in w's layout."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, w)
        return torch.bmm(x, w.transpose(1, 2))

    @staticmethod
    def backward(ctx, gy: torch.Tensor):
        x, w = ctx.saved_tensors
        return batched_linear_grads(gy.to(x.dtype), x, w, *ctx.needs_input_grad)


def batched_linear_grads(gy: torch.Tensor, x: torch.Tensor, w: torch.Tensor, need_x: bool = True,
                         need_w: bool = True) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """Gradients of the batched projection ``y = x @ w^T`` (x (M, R, C), w (M, C_out, C), gy (M, R, C_out)):
    (d x, d w), one ``bmm`` each (None where not needed); d w = gy^T @ x comes out in w's layout."""
    gx = torch.bmm(gy, w) if need_x else None
    gw = torch.bmm(gy.transpose(1, 2), x) if need_w else None
    return gx, gw


def stacked_linear(x: torch.Tensor, weights: Sequence[torch.Tensor],
                   stacked: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``stack([x[i] @ weights[i].T for i in range(M)])`` as one batched GEMM.

    Args:
        x: (M, ..., C) inputs, one per projection (the compute dtype: weights are cast to ``x.dtype``).
        weights: M weights of one shape (C_out, C) (bias-free ``nn.Linear`` weights).
        stacked: ``stack(weights)`` in x's dtype when the caller has it (eager inference keeps one; a training step
            gets it from :func:`~vision_rwkv.ops.cast_weights.cast_weights`): used instead of stacking and casting
            here, and while autograd records the weight gradient goes to it (as one (M, C_out, C) tensor).
    Returns:
        (M, ..., C_out) in ``x.dtype``; differentiable in x and every weight (weight gradients in the weights'
        dtypes and layouts).
    """
    if not isinstance(x, torch.Tensor) or x.dim() < 2:
        raise ValueError(f"stacked_linear: x must be an (M, ..., C) tensor, got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    m, c = x.shape[0], x.shape[-1]
    if len(weights) != m:
        raise ValueError(f"stacked_linear: {len(weights)} weights for the {m} inputs of x {tuple(x.shape)}")
    shape = weights[0].shape
    for i, w in enumerate(weights):
        if w.dim() != 2 or w.shape != shape or w.shape[1] != c:
            raise ValueError(f"stacked_linear: weights must all be (C_out, {c}) of one shape, weight {i} is "
                             f"{tuple(w.shape)} (weight 0: {tuple(shape)})")
        if w.device != x.device:
            raise ValueError(f"stacked_linear: weight {i} is on {w.device}, x on {x.device}")
    if stacked is not None and (stacked.shape != (m, *shape) or stacked.dtype != x.dtype):
        raise ValueError(f"stacked_linear: stacked must be the ({m}, {shape[0]}, {c}) stack of the weights in "
                         f"{x.dtype}, got {tuple(stacked.shape)} {stacked.dtype}")
    x2 = x.reshape(m, -1, c)
    # one stack and one cast of the weights (autograd's backward of both: one cast of the (M, C_out, C) gradient
    # and unbind views, each weight's gradient a contiguous slice in its layout)
    w = torch.stack(tuple(weights)).to(x.dtype) if stacked is None else stacked
    if torch.is_grad_enabled() and (x.requires_grad or w.requires_grad):
        y = _BatchedLinear.apply(x2, w)
    else:
        y = torch.bmm(x2, w.transpose(1, 2))
    return y.view(*x.shape[:-1], shape[0])
