"""A module's weights cast to the compute dtype in one launch, and their gradients cast back in one.

Under autocast each fp32 weight is cast where a GEMM uses it: one launch per weight in the forward and one per
weight gradient in the backward (the cast's own backward). A fused token or channel mix uses 3-10 such weights per
block, and a 224-px training step is launch-bound on the host, so :func:`cast_weights` casts all of a module's weights
with one ``torch._foreach_copy_`` and their gradients back with another. On CUDA that is one multi-tensor launch as
long as the sources share a dtype, the destinations share a dtype and each pair shares its strides (else PyTorch
copies them one by one: the same values, one launch each); a list longer than one launch holds (64 tensors, ~20 M
elements) takes a few.

``stack``: the first ``stack`` weights (one shape) come back as ONE stacked (stack, ...) tensor, the operand of a
batched projection (:func:`vision_rwkv.ops.stacked_linear.stacked_linear`): no separate ``torch.stack`` launch, and
its gradient - the batched GEMM's (stack, ...) weight gradient - is cast back slice by slice in the same launch.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch

__all__ = ["cast_weights", "cast_all", "cast_back"]


def _copy_all(dst: List[torch.Tensor], src: List[torch.Tensor]) -> None:
    if dst:
        torch._foreach_copy_(dst, src)


def cast_all(weights: Sequence[torch.Tensor], dtype: torch.dtype, stack: int = 0) -> Tuple[torch.Tensor, ...]:
    """The casts of :func:`cast_weights` without autograd (one ``_foreach_copy_``): the stacked tensor first when
    ``stack`` > 0, then the casts of the remaining weights (each with its weight's strides). For callers that
    differentiate through the casts themselves (:func:`cast_back` casts the gradients)."""
    outs: List[torch.Tensor] = []
    dst: List[torch.Tensor] = []
    if stack:
        stacked = torch.empty((stack, *weights[0].shape), dtype=dtype, device=weights[0].device)
        outs.append(stacked)
        dst.extend(stacked.unbind(0))
    for w in weights[stack:]:
        cast = torch.empty_like(w, dtype=dtype)  # (the weight's strides: a pair the fast path takes)
        outs.append(cast)
        dst.append(cast)
    _copy_all(dst, [w if i >= stack else w.contiguous() for i, w in enumerate(weights)])
    return tuple(outs)


def cast_back(grads: Sequence[Optional[torch.Tensor]], dtypes: Sequence[torch.dtype]) -> List[Optional[torch.Tensor]]:
    """Each gradient in its weight's dtype (``dtypes``, in order): the ones that need a cast in one
    ``_foreach_copy_``, the others (and None) as they are."""
    out: List[Optional[torch.Tensor]] = list(grads)
    dst, src = [], []
    for i, (g, dtype) in enumerate(zip(grads, dtypes)):
        if g is not None and g.dtype != dtype:
            out[i] = torch.empty_like(g, dtype=dtype)
            dst.append(out[i])
            src.append(g)
    _copy_all(dst, src)
    return out


class _CastWeights(torch.autograd.Function):
    @staticmethod
    def forward(ctx, dtype: torch.dtype, stack: int, *weights: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        ctx.set_materialize_grads(False)
        ctx.dtypes = tuple(w.dtype for w in weights)
        ctx.stack = stack
        return cast_all(weights, dtype, stack)

    @staticmethod
    def backward(ctx, *grads: Optional[torch.Tensor]):
        stack = ctx.stack
        per_weight: List[Optional[torch.Tensor]] = []
        if stack:
            g = grads[0]
            per_weight.extend(g.unbind(0) if g is not None else (None,) * stack)
        per_weight.extend(grads[1 if stack else 0:])
        per_weight = [g if need else None for g, need in zip(per_weight, ctx.needs_input_grad[2:])]
        return (None, None, *cast_back(per_weight, ctx.dtypes))


def cast_weights(weights: Sequence[torch.Tensor], dtype: torch.dtype, stack: int = 0) -> Tuple[torch.Tensor, ...]:
    """``tuple(w.to(dtype) for w in weights)`` in one launch, differentiable (the gradients are cast back to each
    weight's dtype in one launch).

    Args:
        weights: the tensors to cast (a module's parameters; any shapes and devices one ``_foreach_copy_`` takes).
        dtype: the floating-point dtype to cast to.
        stack: how many of the first weights (all of one shape) to return as one stacked (stack, ...) tensor.
    Returns:
        the stacked tensor (when ``stack`` > 0), then the casts of the remaining weights, in order.
    """
    weights = tuple(weights)
    if not weights:
        raise ValueError("cast_weights: no weights given")
    if not dtype.is_floating_point:
        raise ValueError(f"cast_weights: dtype must be a floating-point dtype, got {dtype}")
    for i, w in enumerate(weights):
        if not isinstance(w, torch.Tensor) or not w.is_floating_point():
            raise TypeError(f"cast_weights: weight {i} must be a floating-point tensor, got "
                            f"{w.dtype if isinstance(w, torch.Tensor) else type(w).__name__}")
        if w.device != weights[0].device:
            raise ValueError(f"cast_weights: weight {i} is on {w.device}, weight 0 on {weights[0].device}")
    if not 0 <= stack <= len(weights):
        raise ValueError(f"cast_weights: stack={stack} for {len(weights)} weights")
    for i in range(1, stack):
        if weights[i].shape != weights[0].shape:
            raise ValueError(f"cast_weights: the {stack} stacked weights must share one shape, weight {i} is "
                             f"{tuple(weights[i].shape)} (weight 0: {tuple(weights[0].shape)})")
    return _CastWeights.apply(dtype, stack, *weights)
