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

:func:`cast_weight_groups` does the same for many modules at once - a backbone casts every one-node mixer's matrices
in one launch per training step (``VisionRWKVBase.step_cast_blocks``) - with any number of stacks.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch

__all__ = ["cast_weights", "cast_weight_groups", "cast_all", "cast_back"]


def _copy_all(dst: List[torch.Tensor], src: List[torch.Tensor]) -> None:
    if dst:
        torch._foreach_copy_(dst, src)


def _layout(n: int, stack: int) -> Tuple[Tuple[int, ...], Tuple[bool, ...]]:
    """(group sizes, whether each group is stacked) of ``n`` weights whose first ``stack`` are one stacked tensor
    (see :func:`_cast_groups`)."""
    groups = ((stack,) if stack else ()) + (1,) * (n - stack)
    return groups, tuple(i == 0 and stack > 0 for i in range(len(groups)))


def _cast_groups(weights: Sequence[torch.Tensor], dtype: torch.dtype,
                 groups: Sequence[int], stacked: Sequence[bool]) -> Tuple[torch.Tensor, ...]:
    """One output per group of ``groups[i]`` consecutive weights: a (size, ...) stack where ``stacked[i]``, else the
    group's one weight cast with its strides; all written by one ``_foreach_copy_``."""
    outs: List[torch.Tensor] = []
    dst: List[torch.Tensor] = []
    src: List[torch.Tensor] = []
    start = 0
    for size, stack in zip(groups, stacked):
        group = weights[start:start + size]
        start += size
        if stack:
            out = torch.empty((size, *group[0].shape), dtype=dtype, device=group[0].device)
            dst.extend(out.unbind(0))
            src.extend(w.contiguous() for w in group)
        else:
            out = torch.empty_like(group[0], dtype=dtype)  # (the weight's strides: a pair the fast path takes)
            dst.append(out)
            src.append(group[0])
        outs.append(out)
    _copy_all(dst, src)
    return tuple(outs)


def cast_all(weights: Sequence[torch.Tensor], dtype: torch.dtype, stack: int = 0) -> Tuple[torch.Tensor, ...]:
    """The casts of :func:`cast_weights` without autograd (one ``_foreach_copy_``): the stacked tensor first when
    ``stack`` > 0, then the casts of the remaining weights (each with its weight's strides). For callers that
    differentiate through the casts themselves (:func:`cast_back` casts the gradients)."""
    return _cast_groups(weights, dtype, *_layout(len(weights), stack))


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
    def forward(ctx, dtype: torch.dtype, groups: Tuple[int, ...], stacked: Tuple[bool, ...],
                *weights: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        ctx.set_materialize_grads(False)
        ctx.dtypes = tuple(w.dtype for w in weights)
        ctx.groups, ctx.stacked = groups, stacked
        return _cast_groups(weights, dtype, groups, stacked)

    @staticmethod
    def backward(ctx, *grads: Optional[torch.Tensor]):
        per_weight: List[Optional[torch.Tensor]] = []
        for g, size, stack in zip(grads, ctx.groups, ctx.stacked):
            if stack:
                per_weight.extend(g.unbind(0) if g is not None else (None,) * size)
            else:
                per_weight.append(g)
        per_weight = [g if need else None for g, need in zip(per_weight, ctx.needs_input_grad[3:])]
        return (None, None, None, *cast_back(per_weight, ctx.dtypes))


def _check_weights(fn: str, weights: Tuple[torch.Tensor, ...], dtype: torch.dtype) -> None:
    if not weights:
        raise ValueError(f"{fn}: no weights given")
    if not dtype.is_floating_point:
        raise ValueError(f"{fn}: dtype must be a floating-point dtype, got {dtype}")
    for i, w in enumerate(weights):
        if not isinstance(w, torch.Tensor) or not w.is_floating_point():
            raise TypeError(f"{fn}: weight {i} must be a floating-point tensor, got "
                            f"{w.dtype if isinstance(w, torch.Tensor) else type(w).__name__}")
        if w.device != weights[0].device:
            raise ValueError(f"{fn}: weight {i} is on {w.device}, weight 0 on {weights[0].device}")


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
    _check_weights("cast_weights", weights, dtype)
    if not 0 <= stack <= len(weights):
        raise ValueError(f"cast_weights: stack={stack} for {len(weights)} weights")
    for i in range(1, stack):
        if weights[i].shape != weights[0].shape:
            raise ValueError(f"cast_weights: the {stack} stacked weights must share one shape, weight {i} is "
                             f"{tuple(weights[i].shape)} (weight 0: {tuple(weights[0].shape)})")
    return _CastWeights.apply(dtype, *_layout(len(weights), stack), *weights)


def cast_weight_groups(weights: Sequence[torch.Tensor], dtype: torch.dtype,
                       groups: Sequence[int]) -> Tuple[torch.Tensor, ...]:
    """Several modules' weights cast to ``dtype`` in one launch each way (e.g. every mixer of a model once per
    training step), differentiable: ``groups`` splits ``weights`` into consecutive groups; a group of one weight
    comes back as its cast, a group of ``n > 1`` weights (one shape) as one stacked (n, ...) tensor.

    Args:
        weights: the tensors to cast, group after group.
        dtype: the floating-point dtype to cast to.
        groups: the group sizes (each >= 1, summing to ``len(weights)``).
    Returns:
        one tensor per group, in order.
    """
    weights, groups = tuple(weights), tuple(int(g) for g in groups)
    _check_weights("cast_weight_groups", weights, dtype)
    if any(g < 1 for g in groups) or sum(groups) != len(weights):
        raise ValueError(f"cast_weight_groups: groups {groups} must be sizes >= 1 summing to the {len(weights)} "
                         f"weights")
    start = 0
    for g in groups:
        for i in range(start + 1, start + g):
            if weights[i].shape != weights[start].shape:
                raise ValueError(f"cast_weight_groups: the stacked weights {start}..{start + g - 1} must share one "
                                 f"shape, weight {i} is {tuple(weights[i].shape)} (weight {start}: "
                                 f"{tuple(weights[start].shape)})")
        start += g
    return _CastWeights.apply(dtype, groups, tuple(g > 1 for g in groups), *weights)
