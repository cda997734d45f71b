"""Whole mixers as ONE step each: one autograd node in eager training, one call in eager inference.

A 224-px training step is bound by host time, not by the GPU: on the per-op fused path an RWKV-6 time mix is 7
Python ``autograd.Function``s and ~40 C++ autograd nodes (LoRA products, tanh, views, the unbind of the batched
projection, the weight casts), each with its wrapper checks, context and saved-tensor bookkeeping. Here each mixer
is one ``torch.autograd.Function`` whose forward launches the same kernels as the per-op path (the Triton kernels of
``triton.py`` and the WKV operators, the same GEMMs) and whose backward calls their backward kernels and the GEMMs
of the products in order - the same kernels, the same saved tensors, far less host work per launch. Without grad
mode (eager inference, also host-bound at 224 px) the same forward runs as a plain call that frees each
intermediate after its last use (as the per-op inference path does), on matrices the model keeps cast across
forwards (``cast=``, :func:`time_mix6_matrices` & co.) - no per-op wrapper checks or dispatch:

* :func:`time_mix6_step` - the RWKV-6 time mix (Q-Shift, ddlerp with its LoRA, decay LoRA in one kernel each way
  (``lora_triton.py``), k/v/r/g in one batched GEMM, WKV-6, GroupNorm * SiLU gate, output projection).
* :func:`spatial_mix_step` - the v4 token mix (Q-Shift lerp, k/v/r in one batched GEMM, Bi-WKV with 1 / T scaling,
  sigmoid gate, output projection).
* :func:`channel_mix_step` - the channel mix (Q-Shift lerp, key + relu^2, value, sigmoid(receptance) gate).

Each takes an optional ``residual`` (:class:`~vision_rwkv.ops.fused.ResidualNorm`): the block's residual add + layer
scale + drop-path factors + LayerNorm of the mixer's output (pre- or post-norm), which then runs in the same node
(the ``add_norm`` kernels) and the step returns the block's ``(x, norm(x))`` - one ``autograd.Function`` per half
block instead of two.

The weight matrices come in their own dtype (the fp32 parameters under autocast) and are cast to the compute dtype
in one ``_foreach_copy_`` (their gradients back in one), as :func:`vision_rwkv.ops.cast_weights.cast_weights` does
for the per-op path - or come already cast (``cast=``: a backbone casts every mixer's at once per training step,
:func:`vision_rwkv.ops.cast_weights.cast_weight_groups`), and the node returns their gradients as computed.
Only the default fused configuration is covered (Q-Shift, plain projections, no key norm, the cuBLAS GEMMs); the
models fall back to the per-op path otherwise (see ``vision_rwkv/models/_projections.py``,
``step_linear_weights``), and the tests check every output and gradient against that path and the plain models.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from ..bi_wkv import triton as wkv4
from ..bi_wkv6 import triton as wkv6
from .._triton_utils import coef_grads, new_empty, split_param_grads
from ..cast_weights import cast_all, cast_back
from ..stacked_linear import batched_linear_grads
from .add_norm_triton import _add_norm_bwd, _add_norm_fwd, _add_norm_needs_y
from .elementwise_triton import _relu_square_bwd_from_out, _relu_square_inplace_fwd, _sigmoid_mul_bwd, _sigmoid_mul_fwd
from .group_norm_triton import _gn_mul_bwd
from .lora_triton import lora_mlp_bwd, lora_mlp_fwd
from .shift_triton import _tsm_bwd, _tsm_fwd, _tsm_lora_bwd, _tsm_lora_fwd

__all__ = ["time_mix6_step", "spatial_mix_step", "channel_mix_step", "time_mix6_matrices", "spatial_mix_matrices",
           "channel_mix_matrices"]

_tanh_bwd = torch.ops.aten.tanh_backward


def _cast(weights: Sequence[torch.Tensor], dtype: torch.dtype, stack: int) -> Tuple[torch.Tensor, ...]:
    """``weights`` in ``dtype`` (the first ``stack`` as one stacked tensor), one launch; as they are when already
    in ``dtype`` (then the stack is one ``torch.stack``)."""
    if all(w.dtype == dtype for w in weights):
        head = (torch.stack(tuple(weights[:stack])),) if stack else ()
        return head + tuple(weights[stack:])
    return cast_all(weights, dtype, stack)


def _weight_grads(ctx, grads: List[torch.Tensor], stack: int) -> List[torch.Tensor]:
    """The weights' gradients in their dtypes: ``grads`` in :func:`_cast`'s order (the stack's gradient first, as
    one (stack, ...) tensor), cast back in one launch. A node given its matrices (``ctx.weight_dtypes`` None, see
    :func:`_node_weights`) returns ``grads`` as they are: the caller's cast takes them back."""
    if ctx.weight_dtypes is None:
        return grads
    per_weight = list(grads[0].unbind(0)) + grads[1:] if stack else grads
    return cast_back(per_weight, ctx.weight_dtypes)


def _linear_bwd(gy: torch.Tensor, x: torch.Tensor, w: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Gradients of ``y = x @ w^T`` (2-D x, gy): (d x, d w) - d w in w's layout. Each one GEMM through ``F.linear``
    (``a @ b^T``; the transposed views cost no copy), as the projections' forward: one entry point for every
    projection GEMM (the host-time and roofline tools stub it)."""
    return F.linear(gy, w.t()), F.linear(gy.t(), x.t())


def _product_bwd(gy: torch.Tensor, x: torch.Tensor, w: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Gradients of ``y = x @ w`` (2-D, the LoRA products): (d x, d w)."""
    return torch.mm(gy, w.t()), torch.mm(x.t(), gy)


_NO_RESIDUAL = (None,) * 6


def _node_weights(ctx, tensors: tuple, precast: bool, make) -> Tuple[tuple, tuple]:
    """(the matrices, the residual's six inputs) of a step Function from its trailing inputs ``tensors`` - the weights
    then the residual's. ``precast``: the weights are the matrices as the kernels read them (the caller cast them,
    e.g. for every mixer of a model at once), and their gradients are returned as computed; else ``make(weights)``
    casts them here and the gradients are cast back to the weights' dtypes (:func:`_weight_grads`)."""
    weights, residual = tensors[:-6], tensors[-6:]
    ctx.weight_dtypes = None if precast else tuple(w.dtype for w in weights)
    return (tuple(weights) if precast else make(weights)), residual


def _check_cast(fn: str, cast, expected: int) -> tuple:
    """``cast=`` of a step: its matrices as a tuple, or a ValueError naming the step."""
    cast = tuple(cast)
    if len(cast) != expected:
        raise ValueError(f"{fn}: cast= takes the {expected} matrices of its *_matrices function, got {len(cast)}")
    return cast


def _residual_inputs(residual, x: torch.Tensor) -> tuple:
    """A :class:`~vision_rwkv.ops.fused.ResidualNorm` of the mixer with input ``x`` as a step Function's last six
    inputs: ``(x, gamma, weight, bias, sample_scale, (eps, post, out_dtype))`` - tensors as direct inputs, so autograd
    tracks their gradients."""
    if residual is None:
        return _NO_RESIDUAL
    if residual.inplace:
        raise ValueError("mixer steps: an inplace residual is for eager inference, the steps run in training")
    if residual.x.shape != x.shape:
        raise ValueError(f"mixer steps: residual x of shape {tuple(residual.x.shape)} does not match the mixer's "
                         f"input {tuple(x.shape)}")
    return (residual.x, residual.gamma, residual.weight, residual.bias, residual.sample_scale,
            (float(residual.eps), bool(residual.post), residual.out_dtype))


def _add_residual(out: torch.Tensor, x, gamma, weight, bias, scale, eps: float, post: bool, out_dtype,
                  inplace: bool = False, gate: Optional[torch.Tensor] = None):
    """The block's ``add_norm`` of the residual ``x`` and the mixer's output ``out`` (the training node and the
    inference call alike; ``gate``: the output is ``sigmoid(gate) * out``, formed by the kernel): ``(s, n, (gamma,
    weight, bias, scale))`` - the operands as the kernels read them."""
    gamma = None if gamma is None else gamma.contiguous()
    weight, bias = weight.contiguous(), bias.contiguous()
    scale = None if scale is None else scale.contiguous()
    s, n = _add_norm_fwd(x.contiguous(), out.contiguous(), gamma, weight, bias, float(eps), bool(post),
                         out_dtype or x.dtype, scale, inplace=inplace,
                         gate=None if gate is None else gate.contiguous())
    return s, n, (gamma, weight, bias, scale)


_KEPT = 7  # the residual's tensors a step saves first: (y, s, gamma, weight, bias, sample scale, gate)


def _residual_fwd(ctx, out: torch.Tensor, x, gamma, weight, bias, scale, meta, gate=None):
    """The end of a step's forward: ``out`` (the mixer's output), or with a residual (``x`` not None) the block's
    ``add_norm`` of it in the same node - ``(s, n)``; ``gate`` (with a residual only): the mixer's output is
    ``sigmoid(gate) * out``, formed inside the residual kernels (forward and backward; never stored). Returns that
    and the tensors the backward reads (saved first, in :func:`_node_grads`'s order)."""
    ctx.residual = None
    if x is None:
        if gate is not None:
            raise ValueError("mixer steps: a gate inside the residual kernels needs a residual")
        return out, ()
    eps, post, out_dtype = meta
    s, n, (gamma, weight, bias, scale) = _add_residual(out, x, gamma, weight, bias, scale, eps, post, out_dtype,
                                                       gate=gate)
    ctx.residual = (eps, post, x.dtype, out.dtype)
    if post:
        ctx.mark_non_differentiable(n)
    y = out if gate is not None or _add_norm_needs_y(post, gamma) else None
    return (s, n), (y, None if post else s, gamma, weight, bias, scale, gate)


def _node_out(ctx, out: torch.Tensor, saved: tuple, mats: tuple, residual: tuple, gate=None):
    """The end of a step Function's forward: ``out``, or the block's ``(s, n)`` with a residual
    (:func:`_residual_fwd`; ``gate`` as there); saves ``(*the residual's tensors, *saved, *mats)`` for
    :func:`_node_grads`."""
    out, keep = _residual_fwd(ctx, out, *residual, gate=gate)
    ctx.save_for_backward(*keep, *saved, *mats)
    return out


def _node_grads(ctx, grads: tuple) -> Tuple[tuple, torch.Tensor, tuple]:
    """The start of a step Function's backward: (its own saved tensors - ``saved`` then ``mats`` of
    :func:`_node_out` -, d out, the gradients of the six residual inputs) from the node's output gradients. With a
    gate inside the residual kernels d out is ``(d out, d gate)``."""
    saved = ctx.saved_tensors
    if ctx.residual is None:
        return saved, grads[0], _NO_RESIDUAL
    keep, saved = saved[:_KEPT], saved[_KEPT:]
    eps, post, x_dtype, y_dtype = ctx.residual
    y, s, gamma, weight, bias, scale, gate = keep
    gs, gn = grads
    gx, gy, sums = _add_norm_bwd(y, s if s is not None else y, gamma, weight, bias, eps, post, gs,
                                 None if post else gn, x_dtype, scale, y_dtype, gate=gate)
    return saved, gy, (gx, *split_param_grads(sums, gamma, weight, bias), None, None)


def _step_result(out, residual):
    """A step Function's result as the mixers return it: the branch, or ``(s, n)`` (n None for post-norm)."""
    return out if residual is None or not residual.post else (out[0], None)


def _residual_infer(out: torch.Tensor, residual, gate: Optional[torch.Tensor] = None):
    """Inference: ``out``, or with a residual the block's ``(s, n)`` (n None for post-norm; s written into the
    residual x when it is ``inplace``). ``gate`` (with a residual only): the mixer's output is ``sigmoid(gate) *
    out``, formed inside the residual kernel."""
    if residual is None:
        return out
    r = residual
    s, n, _ = _add_residual(out, r.x, r.gamma, r.weight, r.bias, r.sample_scale, r.eps, r.post, r.out_dtype,
                            r.inplace, gate)
    return (s, None) if r.post else (s, n)


def _time_mix6_fwd(x, grid, head_size, eps, dtype, vectors, u, ln_w, ln_b, mats, save: bool):
    """The time mix's forward on its cast matrices ``mats`` (:func:`time_mix6_matrices`): (output, the tensors its
    backward reads - or None without ``save``, when each intermediate is freed after its last use, as the per-op
    inference path does)."""
    maa_x, maa_w, maa_k, maa_v, maa_r, maa_g, w0 = vectors
    stack, wo, w1c, d1c, d2c, w2c = mats
    B, N, C = x.shape
    H, W = grid
    heads = C // head_size
    x = x.contiguous()
    a_x = maa_x.reshape(1, -1).contiguous()
    maa = tuple(v.contiguous() for v in (maa_w, maa_k, maa_v, maa_r, maa_g))
    xxx = _tsm_fwd(x, H, W, head_size, a_x, None, dtype).view(-1, C)
    lora = torch.mm(xxx, w1c)  # (B N, 5 R): tanh'd in place for the backward, else by the kernel as it loads it
    if save:
        lora = lora.tanh_()
    mixed = _tsm_lora_fwd(x, H, W, head_size, maa, lora.view(B, N, -1), w2c, dtype, tanh=not save)  # (5, B, N, C)
    if not save:
        del xxx, lora
    xw, xkvrg = mixed[0].view(-1, C), mixed[1:].view(4, -1, C)
    # the log decay's pre-activation z = tanh(xw d1) d2 in one kernel (the WKV kernels form -exp(w0 + z) as they
    # load it); its tanh'd hidden hd written only for the backward
    z, hd = lora_mlp_fwd(xw, d1c, d2c, save)
    kvrg = torch.bmm(xkvrg, stack.transpose(1, 2))  # k, v, r, g
    del xw, xkvrg
    if not save:
        del mixed
    shape = (B, N, heads, head_size)
    k, v, r, g = (t.view(shape) for t in kvrg.unbind(0))
    u = u.contiguous()
    ln_w, ln_b = ln_w.contiguous(), ln_b.contiguous()
    # y and its GroupNorm * silu(g) in one pass (y kept for the backward only)
    y, gated = wkv6._fwd(r, k, v, z.view(shape), u, w0=_flat(w0), norm=(g, ln_w, ln_b, eps, dtype, save))
    gated = gated.view(B, N, C)
    del k, v, r, g
    if save:
        y = y.view(B, N, C)
    else:
        del y, kvrg, z
        return F.linear(gated, wo), None
    return F.linear(gated, wo), (x, a_x, *maa, xxx, lora, mixed, hd, z, kvrg, u, y, ln_w, ln_b, gated)


def _flat(w0: torch.Tensor) -> torch.Tensor:
    """``time_decay`` as the WKV kernels read it: (C,) contiguous."""
    return w0.reshape(-1).contiguous()


def w2_cast(w2: torch.Tensor, dtype: torch.dtype) -> bool:
    """Whether the time mix casts W2 with its other matrices: in bf16 only - under fp16 the kernels read it in its
    dtype (its gradient sums every token in fp32, which could leave fp16's range)."""
    return w2.dtype != dtype and dtype == torch.bfloat16


def time_mix6_matrices(projections: Sequence[torch.Tensor], lora: Sequence[torch.Tensor],
                       dtype: torch.dtype) -> Tuple[torch.Tensor, ...]:
    """The time mix's matrices as its forward reads them, cast to ``dtype`` in one launch: (key, value, receptance,
    gate stacked (4, C, C), output, ``time_maa_w1``, ``time_decay_w1``, ``time_decay_w2``, ``time_maa_w2``) - W2 cast
    in bf16 only (see :func:`time_mix6_step`). Eager inference keeps them across forwards (``cast=``)."""
    w1, d1, d2, w2 = lora
    cast_w2 = w2_cast(w2, dtype)
    cast = _cast(tuple(projections) + (w1, d1, d2) + ((w2,) if cast_w2 else ()), dtype, 4)
    return tuple(cast[:5]) + (cast[5] if cast_w2 else w2.contiguous(),)


class _TimeMix6Step(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, grid, head_size, eps, dtype, cast_w2, precast, maa_x, maa_w, maa_k, maa_v, maa_r, maa_g, w0,
                u, ln_w, ln_b, *tensors):
        # the weights (key, value, receptance, gate, output, w1, d1, d2, w2; precast: the six matrices), the residual's
        mats, residual = _node_weights(ctx, tensors, precast,
                                       lambda w: time_mix6_matrices(w[:5], w[5:], dtype))
        if not precast and not cast_w2:
            ctx.weight_dtypes = ctx.weight_dtypes[:-1]  # (W2 is read in its dtype: nothing to cast back)
        vectors = (maa_x, maa_w, maa_k, maa_v, maa_r, maa_g, w0)
        out, saved = _time_mix6_fwd(x, grid, head_size, eps, dtype, vectors, u, ln_w, ln_b, mats, True)
        ctx.meta = (grid, head_size, eps, cast_w2)
        ctx.vectors = vectors
        return _node_out(ctx, out, saved, mats, residual)

    @staticmethod
    def backward(ctx, *grads):
        saved, gout, g_residual = _node_grads(ctx, grads)
        (x, a_x, m_w, m_k, m_v, m_r, m_g, xxx, lora, mixed, hd, z, kvrg, u, y, ln_w, ln_b, gated, stack, wo, w1c,
         d1c, d2c, w2c) = saved
        (H, W), head_size, eps, cast_w2 = ctx.meta
        B, N, C = x.shape
        heads = C // head_size
        shape = (B, N, heads, head_size)
        g_gated, g_wo = _linear_bwd(gout.reshape(-1, C), gated.view(-1, C), wo)
        k, v, r, g = kvrg.unbind(0)
        g_kvrg = new_empty((4, B * N, C), kvrg.dtype, kvrg.device)  # (d k, d v, d r, d g written into it: no stack)
        g_k, g_v, g_r, g_g = g_kvrg.unbind(0)
        g_y, _, g_ln = _gn_mul_bwd(y, g.view(B, N, C), heads, ln_w, ln_b, eps, True, g_gated.view(B, N, C),
                                   gg_out=g_g.view(B, N, C))
        w0 = ctx.vectors[6]
        _, _, _, g_z, g_u = wkv6._bwd(r.view(shape), k.view(shape), v.view(shape), z.view(shape), u, g_y.view(shape),
                                      out=(g_r.view(shape), g_k.view(shape), g_v.view(shape)), w0=_flat(w0))
        del g_gated, g_y, g_k, g_v, g_r, g_g  # (each frees its buffer: less memory at the backward's peak)
        xkvrg = mixed[1:].view(4, -1, C)
        g_xkvrg, g_stack = batched_linear_grads(g_kvrg, xkvrg, stack)
        del g_kvrg
        g_z = g_z.view(-1, C)
        g_w0 = g_z.sum(0, dtype=torch.float32).to(w0.dtype)
        g_xw, g_d1, g_d2 = lora_mlp_bwd(g_z, mixed[0].view(-1, C), hd, d1c, d2c)
        del g_z
        planes = [g_xw.view(B, N, C)] + [t.view(B, N, C) for t in g_xkvrg.unbind(0)]
        g_x, g_maa, g_lora, g_w2 = _tsm_lora_bwd(x, H, W, head_size, (m_w, m_k, m_v, m_r, m_g), lora.view(B, N, -1),
                                                 w2c, planes)
        del planes, g_xkvrg, g_xw
        g_lora = _tanh_bwd(g_lora.view(lora.shape), lora)
        g_xxx, g_w1 = _product_bwd(g_lora, xxx, w1c)
        g_x, g_ax, _ = _tsm_bwd(x, H, W, head_size, a_x, None, [g_xxx.view(B, N, C)], gx=g_x)  # (added in place)
        if ctx.weight_dtypes is None:
            g_weights = (g_stack, g_wo, g_w1, g_d1, g_d2, g_w2)
        else:
            g_weights = _weight_grads(ctx, [g_stack, g_wo, g_w1, g_d1, g_d2] + ([g_w2] if cast_w2 else []), 4)
            g_weights = tuple(g_weights) + (() if cast_w2 else (g_w2,))
        vecs = ctx.vectors
        g_vectors = (coef_grads(g_ax, vecs[:1], True) + coef_grads(g_maa, vecs[1:6], True)
                     + (g_w0.view(vecs[6].shape),))
        return (g_x, None, None, None, None, None, None, *g_vectors, g_u.to(u.dtype), g_ln[0].to(ln_w.dtype),
                g_ln[1].to(ln_b.dtype), *g_weights, *g_residual)


def time_mix6_step(x: torch.Tensor, grid_size: Tuple[int, int], head_size: int, eps: float, dtype: torch.dtype,
                   vectors: Sequence[torch.Tensor], u: torch.Tensor, ln_weight: torch.Tensor, ln_bias: torch.Tensor,
                   projections: Sequence[torch.Tensor], lora: Sequence[torch.Tensor], residual=None,
                   cast: Optional[Sequence[torch.Tensor]] = None
                   ) -> Union[torch.Tensor, Tuple[torch.Tensor, Optional[torch.Tensor]]]:
    """The RWKV-6 time mix of ``TimeMixV6._forward_fused`` (Q-Shift) as one autograd node (grad mode), or as one
    call launching its kernels (inference: no per-op wrappers, intermediates freed after their last use).

    Args:
        x: (B, N, C) tokens on the row-major ``grid_size``; head_size: channels per head; eps: the GroupNorm's.
        dtype: the compute dtype (the autocast dtype, or the parameters' without autocast).
        vectors: ``time_maa_x, time_maa_w, _k, _v, _r, _g, time_decay`` (C elements each, any shape).
        u: ``time_faaaa`` (H, head_size); ln_weight, ln_bias: the GroupNorm's (C,).
        projections: the key, value, receptance, gate and output weights (C, C).
        lora: ``time_maa_w1`` (C, 5R), ``time_decay_w1`` (C, D), ``time_decay_w2`` (D, C), ``time_maa_w2`` (5, R, C).
        residual: optional :class:`~vision_rwkv.ops.fused.ResidualNorm` - the block's residual add + LayerNorm of
            the output, in the same node (``inplace`` in inference only).
        cast: :func:`time_mix6_matrices` of these weights when the caller has them (else cast here, one launch):
            kept across eager inference forwards, or in training cast for many mixers at once
            (:func:`~vision_rwkv.ops.cast_weights.cast_weight_groups`) - their gradients then come back as the
            matrices' (the stack's as one (4, C, C) tensor) and the caller's cast takes them back.
    Returns:
        (B, N, C) in ``dtype`` (with ``residual``: the block's ``(s, n)``, n None for post-norm); differentiable in x
        and every parameter. W2 is cast to ``dtype`` with the other matrices in bf16 only: under fp16 the kernels
        read it in its dtype (its gradient sums every token in fp32).
    """
    grid_size, head_size, eps = tuple(grid_size), int(head_size), float(eps)
    if not torch.is_grad_enabled():
        mats = time_mix6_matrices(projections, lora, dtype) if cast is None else tuple(cast)
        out, _ = _time_mix6_fwd(x, grid_size, head_size, eps, dtype, vectors, u, ln_weight, ln_bias, mats, False)
        return _residual_infer(out, residual)
    weights = tuple(projections) + tuple(lora) if cast is None else _check_cast("time_mix6_step", cast, 6)
    return _step_result(_TimeMix6Step.apply(x, grid_size, head_size, eps, dtype, w2_cast(lora[3], dtype),
                                            cast is not None, *vectors, u, ln_weight, ln_bias, *weights,
                                            *_residual_inputs(residual, x)), residual)


def _spatial_mix_fwd(x, grid, mode, chunks, dtype, decay, first, mu, mats, save: bool):
    """The v4 token mix's forward on its cast matrices ``mats`` (:func:`spatial_mix_matrices`): (output, the tensors
    its backward reads, or None without ``save``: intermediates freed after their last use)."""
    stack, wo = mats
    B, N, C = x.shape
    H, W = grid
    x = x.contiguous()
    mu = tuple(v.contiguous() for v in mu)
    mixed = _tsm_fwd(x, H, W, 0, mu, None, dtype, one_minus=True).view(3, -1, C)
    kvr = torch.bmm(mixed, stack.transpose(1, 2))
    if not save:
        del mixed
    k, v, r = (t.view(B, N, C) for t in kvr.unbind(0))
    decay, first = decay.contiguous(), first.contiguous()
    if not save:  # inference: the WKV kernel stores sigmoid(r) * y (y is never written on its own)
        gated = wkv4._fwd(decay, first, k, v, mode, chunks, 1.0 / N, gate=r)[0]
        del k, v, r, kvr
        return F.linear(gated, wo), None
    if wkv4.gated_backward(N, mode, chunks):  # the gate formed as y is stored, and its gradient by the WKV backward
        gated, m, car = wkv4._fwd(decay, first, k, v, mode, chunks, 1.0 / N, gate=r)
        y = None  # (recomputed by the backward: not kept)
    else:
        y, m, car = wkv4._fwd(decay, first, k, v, mode, chunks, 1.0 / N)
        gated = _sigmoid_mul_fwd(r, y)
    del k, v, r
    return F.linear(gated, wo), (x, *mu, mixed, kvr, decay, first, y, m, car, gated)


def spatial_mix_matrices(weights: Sequence[torch.Tensor], dtype: torch.dtype) -> Tuple[torch.Tensor, ...]:
    """The v4 token mix's matrices as its forward reads them, cast to ``dtype`` in one launch: (key, value,
    receptance stacked (3, C, C), output). Eager inference keeps them across forwards (``cast=``)."""
    return tuple(_cast(tuple(weights), dtype, 3))


class _SpatialMixStep(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, grid, mode, chunks, dtype, precast, decay, first, mu_k, mu_v, mu_r, *tensors):
        # the key, value, receptance and output weights (precast: the stack and the output), the residual's
        mats, residual = _node_weights(ctx, tensors, precast, lambda w: spatial_mix_matrices(w, dtype))
        out, saved = _spatial_mix_fwd(x, grid, mode, chunks, dtype, decay, first, (mu_k, mu_v, mu_r), mats, True)
        ctx.meta = (grid, mode, chunks)
        return _node_out(ctx, out, saved, mats, residual)

    @staticmethod
    def backward(ctx, *grads):
        saved, gout, g_residual = _node_grads(ctx, grads)
        x, mu_k, mu_v, mu_r, mixed, kvr, decay, first, y, m, car, gated, stack, wo = saved
        (H, W), mode, chunks = ctx.meta
        B, N, C = x.shape
        g_gated, g_wo = _linear_bwd(gout.reshape(-1, C), gated.view(-1, C), wo)
        k, v, r = (t.view(B, N, C) for t in kvr.unbind(0))
        g_kvr = new_empty((3, B * N, C), kvr.dtype, kvr.device)  # (the kernels write d k, d v, d r into it: no stack)
        g_k, g_v, g_r = (t.view(B, N, C) for t in g_kvr.unbind(0))
        if y is None:  # (the forward's WKV kernel formed the gate: its backward forms d r too)
            g_wu = wkv4._bwd(decay, first, k, v, m, car, g_gated.view(B, N, C), mode, chunks, 1.0 / N,
                             out=(g_k, g_v), gate=r, gate_out=g_r)[0]
        else:
            _, g_y = _sigmoid_mul_bwd(r, y, g_gated.view(B, N, C), gr_out=g_r)
            g_wu = wkv4._bwd(decay, first, k, v, m, car, g_y, mode, chunks, 1.0 / N, out=(g_k, g_v))[0]
            del g_y
        del g_gated, g_k, g_v, g_r
        g_mixed, g_stack = batched_linear_grads(g_kvr, mixed, stack)
        del g_kvr
        g_x, g_mu, _ = _tsm_bwd(x, H, W, 0, (mu_k, mu_v, mu_r), None, g_mixed.view(3, B, N, C), one_minus=True)
        return (g_x, None, None, None, None, None, g_wu[0].to(decay.dtype), g_wu[1].to(first.dtype),
                *coef_grads(g_mu, (mu_k, mu_v, mu_r), True), *_weight_grads(ctx, [g_stack, g_wo], 3), *g_residual)


def spatial_mix_step(x: torch.Tensor, grid_size: Tuple[int, int], mode: str, chunks: int, dtype: torch.dtype,
                     decay: torch.Tensor, first: torch.Tensor, mu: Sequence[torch.Tensor],
                     weights: Sequence[torch.Tensor], residual=None, cast: Optional[Sequence[torch.Tensor]] = None
                     ) -> Union[torch.Tensor, Tuple[torch.Tensor, Optional[torch.Tensor]]]:
    """The v4 token mix of ``SpatialMix._forward_fused`` as one autograd node (grad mode), or as one call launching
    its kernels (inference).

    Args:
        x: (B, N, C) tokens on the row-major ``grid_size``; mode, chunks: the Bi-WKV's.
        dtype: the compute dtype; decay, first: ``spatial_decay``, ``spatial_first`` (C,) (divided by T in the
            kernels); mu: ``spatial_mix_k, _v, _r`` (C,) (weights of the unshifted token).
        weights: the key, value, receptance and output weights (C, C).
        residual: optional block residual add + LayerNorm, as for :func:`time_mix6_step`.
        cast: :func:`spatial_mix_matrices` of ``weights`` when the caller has them, as for
            :func:`time_mix6_step`.
    Returns:
        (B, N, C) in ``dtype`` (with ``residual``: the block's ``(s, n)``); differentiable in x and every parameter.
    """
    grid_size, chunks = tuple(grid_size), int(chunks)
    if not torch.is_grad_enabled():
        mats = spatial_mix_matrices(weights, dtype) if cast is None else tuple(cast)
        out, _ = _spatial_mix_fwd(x, grid_size, mode, chunks, dtype, decay, first, mu, mats, False)
        return _residual_infer(out, residual)
    weights = tuple(weights) if cast is None else _check_cast("spatial_mix_step", cast, 2)
    return _step_result(_SpatialMixStep.apply(x, grid_size, mode, chunks, dtype, cast is not None, decay, first, *mu,
                                              *weights, *_residual_inputs(residual, x)), residual)


def _channel_mix_fwd(x, grid, head_size, one_minus, dtype, mix, mats, save: bool, gate: bool = True):
    """The channel mix's forward on its cast matrices ``mats`` (key, value, receptance in ``dtype``): (output, the
    tensors its backward reads, or None without ``save``: intermediates freed after their last use). ``gate=False``
    (into residual kernels that apply the gate): the output is ``(value, receptance)`` ungated."""
    wk, wv, wr = mats
    B, N, C = x.shape
    H, W = grid
    x = x.contiguous()
    mix = tuple(v.contiguous() for v in mix)
    mixed = _tsm_fwd(x, H, W, head_size, mix, None, dtype, one_minus=one_minus)
    xk, xr = mixed[0].view(-1, C), mixed[1].view(-1, C)
    k = _relu_square_inplace_fwd(F.linear(xk, wk))  # (B N, hidden)
    del xk
    v = F.linear(k, wv)
    if not save:
        del k  # (the 4C-wide hidden is not held through the gate)
    r = F.linear(xr, wr)
    del xr
    saved = (x, *mix, mixed, k, v, r) if save else None
    if not gate:
        return (v.view(B, N, C), r.view(B, N, C)), saved
    out = _sigmoid_mul_fwd(r, v).view(B, N, C)
    return out, saved


def channel_mix_matrices(weights: Sequence[torch.Tensor], dtype: torch.dtype) -> Tuple[torch.Tensor, ...]:
    """The channel mix's key, value and receptance weights cast to ``dtype`` in one launch (as they are when already
    in it). Eager inference keeps them across forwards (``cast=``)."""
    return tuple(_cast(tuple(weights), dtype, 0))


class _ChannelMixStep(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, grid, head_size, one_minus, dtype, precast, mix_k, mix_r, *tensors):
        # the key, value and receptance weights (precast: as the kernels read them), the residual's
        mats, residual = _node_weights(ctx, tensors, precast, lambda w: channel_mix_matrices(w, dtype))
        gated = residual[0] is not None  # (with a residual its kernels apply the receptance gate, both ways)
        out, saved = _channel_mix_fwd(x, grid, head_size, one_minus, dtype, (mix_k, mix_r), mats, True,
                                      gate=not gated)
        ctx.meta = (grid, head_size, one_minus)
        if gated:
            v, r = out
            return _node_out(ctx, v, saved, mats, residual, gate=r)
        return _node_out(ctx, out, saved, mats, residual)

    @staticmethod
    def backward(ctx, *grads):
        saved, gout, g_residual = _node_grads(ctx, grads)
        x, mix_k, mix_r, mixed, k, v, r, wk, wv, wr = saved
        (H, W), head_size, one_minus = ctx.meta
        B, N, C = x.shape
        if ctx.residual is not None:  # (d value and d receptance from the residual kernel, which formed the gate)
            g_v, g_r = (t.reshape(-1, C) for t in gout)
        else:
            g_r, g_v = _sigmoid_mul_bwd(r, v, gout.reshape(-1, C))
        g_xr, g_wr = _linear_bwd(g_r, mixed[1].view(-1, C), wr)
        del g_r
        g_k, g_wv = _linear_bwd(g_v, k, wv)
        del g_v
        g_k = _relu_square_bwd_from_out(k, g_k)
        g_xk, g_wk = _linear_bwd(g_k, mixed[0].view(-1, C), wk)
        g_x, g_mix, _ = _tsm_bwd(x, H, W, head_size, (mix_k, mix_r), None,
                                 [g_xk.view(B, N, C), g_xr.view(B, N, C)], one_minus=one_minus)
        return (g_x, None, None, None, None, None, *coef_grads(g_mix, (mix_k, mix_r), True),
                *_weight_grads(ctx, [g_wk, g_wv, g_wr], 0), *g_residual)


def channel_mix_step(x: torch.Tensor, grid_size: Tuple[int, int], head_size: int, one_minus: bool,
                     dtype: torch.dtype, mix: Sequence[torch.Tensor], weights: Sequence[torch.Tensor], residual=None,
                     cast: Optional[Sequence[torch.Tensor]] = None
                     ) -> Union[torch.Tensor, Tuple[torch.Tensor, Optional[torch.Tensor]]]:
    """The channel mix of ``ChannelMix._forward_fused`` (Q-Shift, no key norm) as one autograd node (grad mode), or
    as one call launching its kernels (inference).

    Args:
        x: (B, N, C) tokens on the row-major ``grid_size``; head_size: 0 = whole-channel quarters (v4), else per
            head; one_minus: ``mix`` weights the unshifted token (the v4 ``mu``), else the shifted one (``maa``).
        dtype: the compute dtype; mix: the key's and the receptance's interpolation vectors (C elements each).
        weights: the key (hidden, C), value (C, hidden) and receptance (C, C) weights.
        residual: optional block residual add + LayerNorm, as for :func:`time_mix6_step`.
        cast: :func:`channel_mix_matrices` of ``weights`` when the caller has them, as for
            :func:`time_mix6_step`.
    Returns:
        (B, N, C) in ``dtype`` (with ``residual``: the block's ``(s, n)``); differentiable in x and every parameter.
    """
    grid_size, head_size, one_minus = tuple(grid_size), int(head_size), bool(one_minus)
    if not torch.is_grad_enabled():
        mats = channel_mix_matrices(weights, dtype) if cast is None else tuple(cast)
        if residual is not None:  # the receptance gate inside the residual kernel: one pass over (B, N, C) less
            (v, r), _ = _channel_mix_fwd(x, grid_size, head_size, one_minus, dtype, mix, mats, False, gate=False)
            return _residual_infer(v, residual, gate=r)
        return _channel_mix_fwd(x, grid_size, head_size, one_minus, dtype, mix, mats, False)[0]
    weights = tuple(weights) if cast is None else _check_cast("channel_mix_step", cast, 3)
    return _step_result(_ChannelMixStep.apply(x, grid_size, head_size, one_minus, dtype, cast is not None, *mix,
                                              *weights, *_residual_inputs(residual, x)), residual)
