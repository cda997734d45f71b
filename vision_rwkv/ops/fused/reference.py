"""Plain-PyTorch references of the fused elementwise kernels (``shift_triton.py``, ``elementwise_triton.py``,
``group_norm_triton.py``, ``add_norm_triton.py`` beside this file).

* :func:`token_shift_mix_reference` - Q-Shift + (data-dependent) interpolation, the mixed inputs of a token mix:
  ``out[i] = x + (q_shift(x) - x) * (a[i] + m[i])`` for i < M, written in ``out_dtype``. With ``a = 1 - mu`` and
  no ``m`` this is the v4 / channel-mix lerp ``x * mu + shift(x) * (1 - mu)``; with ``a = maa`` and ``m`` the
  RWKV-6 "ddlerp".
* :func:`sigmoid_mul_reference` - ``sigmoid(r) * y`` (receptance gating).
* :func:`relu_square_reference` - ``relu(x) ** 2`` (channel-mix hidden activation).
* :func:`linear_relu_square_reference` / :func:`linear_sigmoid_mul_reference` - a bias-free projection followed by
  those two activations (the GEMM-epilogue kernels of ``linear_triton.py``).
* :func:`mix_linear_reference` - one mixed input of a token / channel mix and its projection (+ activation): the
  Q-Shift interpolation as the GEMM's operand (``mix_linear_triton.py``).
* :func:`mix_linear_group_reference` - several such projections of one x, each with its own interpolation
  (``mix_group_triton.py``).
* :func:`mix_mlp_reference` - the channel mix's key-value MLP on the interpolated input (``mix_mlp_triton.py``).
* :func:`group_norm_mul_linear_reference` - ``group_norm_mul`` fed to a projection (``norm_linear_triton.py``).
* :func:`group_norm_mul_reference` - ``GroupNorm(y) * act(g)`` per token (the VRWKV6 ``ln_x`` + gate epilogue).
* :func:`decay_logd_reference` - ``-exp(w0 + z)`` (the VRWKV6 per-token log decay).
* :func:`add_norm_reference` - residual + LayerNorm (post-norm ``x + gamma * LN(y)``; pre-norm ``s = x + gamma * y``,
  ``LN(s)``).

All compute in float32 (float64 inputs stay float64) and are differentiable through autograd.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from ..shift import q_shift

__all__ = ["token_shift_mix_reference", "sigmoid_mul_reference", "relu_square_reference",
           "linear_relu_square_reference", "linear_sigmoid_mul_reference", "linear_tanh_reference",
           "linear_decay_reference", "mix_linear_reference", "mix_linear_group_reference", "mix_mlp_reference",
           "group_norm_mul_reference", "group_norm_mul_linear_reference", "decay_logd_reference",
           "add_norm_reference"]

MIX_ACTS = ("none", "relu_square", "sigmoid_mul", "tanh")


def _acc(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype == torch.float64 else t.float()


def token_shift_mix_reference(x: torch.Tensor, grid_size: Tuple[int, int], a: torch.Tensor,
                              m: Optional[torch.Tensor] = None, head_size: Optional[int] = None,
                              out_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """``out[i] = x + (q_shift(x, grid_size, head_size) - x) * (a[i] + m[i])``.

    Args:
        x: (B, N, C) tokens, row-major on ``grid_size`` = (H, W).
        a: (M, C) per-channel interpolation weights (of the shifted token).
        m: optional (M, B, N, C) data-dependent offsets added to ``a``.
        head_size: None = v4 whole-channel quarters, else per-head quarters (v6).
        out_dtype: dtype of the result (default x's).
    Returns:
        (M, B, N, C) tensor in ``out_dtype``.
    """
    out_dtype = out_dtype or x.dtype
    xf = _acc(x)
    xx = q_shift(xf, grid_size, head_size) - xf
    coef = _acc(a)[:, None, None, :]
    if m is not None:
        coef = coef + _acc(m)
    return (xf.unsqueeze(0) + xx.unsqueeze(0) * coef).to(out_dtype)


def sigmoid_mul_reference(r: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``sigmoid(r) * y`` computed in float32, returned in ``result_type(r, y)``."""
    out_dtype = torch.promote_types(r.dtype, y.dtype)
    return (torch.sigmoid(_acc(r)) * _acc(y)).to(out_dtype)


def relu_square_reference(x: torch.Tensor) -> torch.Tensor:
    """``relu(x) ** 2`` in x's dtype (as ``r * r``: on CPU ``torch.square`` is ~3x slower than one multiply)."""
    r = torch.relu(_acc(x))
    return (r * r).to(x.dtype)


def linear_relu_square_reference(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``relu(x @ weight^T) ** 2`` (weight cast to x's dtype, as autocast does), result in x's dtype."""
    return relu_square_reference(F.linear(x, weight.to(x.dtype)))


def linear_sigmoid_mul_reference(x: torch.Tensor, weight: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``sigmoid(x @ weight^T) * y`` (weight cast to x's dtype), result in ``result_type(x, y)``."""
    return sigmoid_mul_reference(F.linear(x, weight.to(x.dtype)), y)


def linear_tanh_reference(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``tanh(x @ weight^T)`` (weight cast to x's dtype), result in x's dtype."""
    return torch.tanh(_acc(F.linear(x, weight.to(x.dtype)))).to(x.dtype)


def lora_mlp_reference(x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    """``tanh(x @ w1) @ w2`` (the RWKV-6 decay LoRA; the weights cast to x's dtype), the hidden rounded to x's dtype
    as a stored product would be, result in x's dtype."""
    h = torch.tanh(_acc(x @ w1.to(x.dtype))).to(x.dtype)
    return h @ w2.to(x.dtype)


def linear_decay_reference(x: torch.Tensor, weight: torch.Tensor, w0: torch.Tensor) -> torch.Tensor:
    """``-exp(w0 + x @ weight^T)`` in float32 (float64 stays float64): the product in x's dtype, then the decay."""
    return decay_logd_reference(w0, F.linear(x, weight.to(x.dtype)))


def mix_linear_reference(x: torch.Tensor, grid_size: Tuple[int, int], a: torch.Tensor, weight: torch.Tensor,
                         head_size: Optional[int] = None, h: Optional[torch.Tensor] = None,
                         w2: Optional[torch.Tensor] = None, one_minus: bool = False, act: str = "none",
                         y: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``act(mix @ weight^T)`` with ``mix = x + (q_shift(x) - x) * coef`` written in weight's dtype, where
    ``coef = a`` (``1 - a`` with ``one_minus``: a weights the unshifted token) plus ``h @ w2`` when h is given
    (w2 cast to h's dtype, the product in h's dtype, as under autocast). a (C,), weight (N, C), h (B, N, R),
    w2 (R, C); act one of ``MIX_ACTS`` (``'sigmoid_mul'`` multiplies ``sigmoid(.)`` into y)."""
    coef = (1 - a) if one_minus else a
    m = None if h is None else (h @ w2.to(h.dtype)).unsqueeze(0)
    mix = token_shift_mix_reference(x, grid_size, coef.reshape(1, -1), m, head_size, out_dtype=weight.dtype)[0]
    if act == "relu_square":
        return linear_relu_square_reference(mix, weight)
    if act == "sigmoid_mul":
        return linear_sigmoid_mul_reference(mix, weight, y)
    if act == "tanh":
        return linear_tanh_reference(mix, weight)
    return F.linear(mix, weight)


def mix_linear_group_reference(x: torch.Tensor, grid_size: Tuple[int, int], a: torch.Tensor,
                               weights: Tuple[torch.Tensor, ...], head_size: Optional[int] = None,
                               h: Optional[torch.Tensor] = None, w2: Optional[torch.Tensor] = None,
                               one_minus: bool = False) -> Tuple[torch.Tensor, ...]:
    """P projections of one x, each :func:`mix_linear_reference` with its own interpolation: a (P, C), weights P
    (N, C) tensors, h (B, N, P * R) (projection p takes columns p R to (p + 1) R), w2 (P, R, C)."""
    rank = None if h is None else h.shape[-1] // len(weights)
    return tuple(mix_linear_reference(x, grid_size, a[p], w, head_size,
                                      None if h is None else h[..., p * rank:(p + 1) * rank],
                                      None if w2 is None else w2[p], one_minus)
                 for p, w in enumerate(weights))


def mix_mlp_reference(x: torch.Tensor, grid_size: Tuple[int, int], a: torch.Tensor, key_weight: torch.Tensor,
                      value_weight: torch.Tensor, head_size: Optional[int] = None,
                      one_minus: bool = False) -> torch.Tensor:
    """``relu(mix @ key_weight^T)^2 @ value_weight^T`` with the interpolation of :func:`mix_linear_reference`; the
    hidden in key_weight's dtype (as the fused path stores it), the result in value_weight's dtype."""
    hidden = mix_linear_reference(x, grid_size, a, key_weight, head_size, one_minus=one_minus, act="relu_square")
    return F.linear(hidden, value_weight.to(hidden.dtype))


def group_norm_mul_reference(y: torch.Tensor, g: torch.Tensor, num_groups: int, weight: torch.Tensor,
                             bias: torch.Tensor, eps: float = 1e-5, gate_act: Optional[str] = None,
                             out_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """``GroupNorm(num_groups)(y) * act(g)`` with every token (row of the last dim C) normalised on its own.

    y, g: (..., C); weight, bias: (C,); gate_act None or 'silu'. Result in ``out_dtype`` (default
    ``result_type(y, g)``).
    """
    out_dtype = out_dtype or torch.promote_types(y.dtype, g.dtype)
    c = y.shape[-1]
    yn = F.group_norm(_acc(y).reshape(-1, c), num_groups, _acc(weight), _acc(bias), eps).reshape(y.shape)
    gate = _acc(g)
    if gate_act == "silu":
        gate = F.silu(gate)
    return (yn * gate).to(out_dtype)


def group_norm_mul_linear_reference(y: torch.Tensor, g: torch.Tensor, num_groups: int, gn_weight: torch.Tensor,
                                    gn_bias: torch.Tensor, eps: float, gate_act: Optional[str],
                                    weight: torch.Tensor) -> torch.Tensor:
    """``(GroupNorm(y) * act(g)) @ weight^T``: the gated tensor written in weight's dtype (as the fused path's
    ``group_norm_mul`` pass writes it in the compute dtype), then the projection; result in weight's dtype."""
    gated = group_norm_mul_reference(y, g, num_groups, gn_weight, gn_bias, eps, gate_act, out_dtype=weight.dtype)
    return F.linear(gated, weight)


def decay_logd_reference(w0: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """``-exp(w0 + z)`` in float32 (float64 stays float64): the VRWKV6 log decay, w0 (C,) broadcast over z."""
    return -torch.exp(_acc(w0) + _acc(z))


def add_norm_reference(x: torch.Tensor, y: torch.Tensor, gamma: Optional[torch.Tensor], weight: torch.Tensor,
                       bias: torch.Tensor, eps: float = 1e-5, post: bool = False,
                       out_dtype: Optional[torch.dtype] = None,
                       sample_scale: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Residual + LayerNorm over the last dim C.

    post=True: ``s = x + gamma * LN(y)`` (post-norm block), returns ``(s, None)``;
    post=False: ``s = x + gamma * y`` and ``n = LN(s)`` (pre-norm block: the next mixer's input), returns
    ``(s, n)`` with n in ``out_dtype`` (default x's). s is in x's dtype; gamma None = no layer scale.
    sample_scale: optional (B,) factor of sample b's branch (``gamma * LN(y)`` or ``gamma * y``; drop path), for x
    of shape (B, ..., C).
    """
    c = x.shape[-1]
    g = _acc(gamma) if gamma is not None else 1.0
    if sample_scale is not None:
        g = g * _acc(sample_scale).view((-1,) + (1,) * (x.dim() - 1))
    if post:
        s = _acc(x) + g * F.layer_norm(_acc(y), (c,), _acc(weight), _acc(bias), eps)
        return s.to(x.dtype), None
    s = (_acc(x) + g * _acc(y)).to(x.dtype)
    n = F.layer_norm(_acc(s), (c,), _acc(weight), _acc(bias), eps)
    return s, n.to(out_dtype or x.dtype)
