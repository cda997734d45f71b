"""RWKV mixers shared by the vision backbones (VRWKV v4 / VRWKV6) and the RWKV-CLIP text tower.

* :func:`token_shift` - the token shift of a mixer: ``'q_shift'`` (2-D Q-Shift on the token grid, whole-channel
  quarters for v4, per-head quarters for v6) or ``'bi_shift_1d'`` (per-head 1-D bidirectional shift of the text
  tower). Only the Q-Shift has fused shift + interpolation kernels; the other fused kernels do not depend on it.
* :class:`FusedPathMixer` - the forward dispatch of every mixer (mixed-operand GEMMs, fused, plain PyTorch).
* :class:`ChannelMix` - ``sigmoid(R xr) * V relu(K xk)^2`` on token-shift interpolations.
* :class:`TimeMixV6` - the RWKV-6 time mix: data-dependent interpolation ("ddlerp"), per-token decay,
  bidirectional WKV-6, per-head GroupNorm and SiLU gate.
* :func:`fused_prenorm_step` - the fused-path residual adds of a pre-norm block (each add carries a LayerNorm).
* :func:`drop_path_scale` / :func:`fusable_drop_path` - the per-sample branch factor a timm ``DropPath`` draws, for
  the fused residual adds.
* the fused projections (:func:`key_relu_square`, :func:`receptance_gate`, :func:`lora_tanh`, :func:`lora_decay`,
  :func:`linear_stack`, :func:`step_weights`, :func:`mix_gemm_ready`) live in :mod:`._projections` and are
  re-exported here.
* ``layer_ratios`` / ``channel_ratio`` / ``channel_position`` / ``lerp_mix`` - the "fancy" init ratios and the
  v4-style interpolation.

What differs between the models stays a constructor argument: the token shift, ``param_style`` (the names, shapes,
parameterisation and init the original checkpoints use), ``key_norm``, ``ln_x_eps`` and ``fp32_wkv``. Linear
layers and the ``ln_x`` affine parameters are initialised by the models (trunc normal for the backbones,
orthogonal with per-role gains for the text tower).
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath

from vision_rwkv.ops import bi_shift_1d, bi_wkv6, fused, q_shift
from vision_rwkv.ops.dispatch import resolve_backend

from ._projections import (_fold, _linear, _plain_linear, key_relu_square, linear_stack, lora_decay, lora_tanh,
                           mix_gemm_ready, mix_gemm_weights, plain_weights, receptance_gate, stackable, step_weights,
                           step_linear_weights, step_matrices, mix_gemm_enabled, refuse_cast, StepCastRequest)

__all__ = [
    'TOKEN_SHIFTS', 'token_shift', 'FusedPathMixer', 'ChannelMix', 'TimeMixV6', 'fused_prenorm_step', 'drop_path_scale',
    'fusable_drop_path', 'fuses_residual', 'takes_residual', 'key_relu_square', 'receptance_gate', 'lora_tanh',
    'lora_decay', 'mix_gemm_ready', 'step_weights', 'plain_weights',
    'layer_ratios', 'channel_ratio', 'channel_position', 'lerp_mix',
]

GridSize = Tuple[int, int]
TOKEN_SHIFTS = ('q_shift', 'bi_shift_1d')
CHANNEL_MIX_STYLES = ('vrwkv', 'rwkv_clip_text')
TIME_MIX_STYLES = ('vrwkv6', 'rwkv_clip_text')


def layer_ratios(layer_id: int, num_layers: int) -> Tuple[float, float]:
    """Return the "fancy" init ratios ``(i / (L - 1), 1 - i / L)`` of layer ``i`` out of ``L``.

    A single-layer model uses 0 for the first ratio (the original divides by zero there).
    """
    ratio_0_to_1 = layer_id / (num_layers - 1) if num_layers > 1 else 0.0
    ratio_1_to_almost0 = 1.0 - layer_id / num_layers
    return ratio_0_to_1, ratio_1_to_almost0


def channel_ratio(dim: int) -> torch.Tensor:
    """``c / C`` for every channel c (float32, shape (C,)): the base of the token-mix fancy init."""
    return torch.arange(dim, dtype=torch.float32) / dim


def channel_position(dim: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``c / (C - 1)`` for every channel (0 for C == 1), in ``dtype``: the base of the decay fancy init."""
    return torch.arange(dim, dtype=dtype) / max(dim - 1, 1)


def lerp_mix(x: torch.Tensor, shifted: torch.Tensor, mix: torch.Tensor) -> torch.Tensor:
    """``x * mix + shifted * (1 - mix)``: the token-shift interpolation (``mix`` weights the unshifted token), as one
    ``torch.lerp`` pass where the dtypes agree (on CPU ~5x faster than the three elementwise passes)."""
    if x.dtype == shifted.dtype == mix.dtype:
        return torch.lerp(x, shifted, 1 - mix)
    return x * mix + shifted * (1 - mix)


def _relu_square(x: torch.Tensor) -> torch.Tensor:
    """``relu(x) ** 2`` as ``r * r`` (on CPU ``torch.square`` / ``pow`` is ~3x slower than one multiply)."""
    r = torch.relu(x)
    return r * r


def _check_choice(what: str, value: str, choices: Tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f'{what} must be one of {choices}, got {value!r}')


def _check_shift(kind: str, head_size: Optional[int]) -> None:
    _check_choice('token_shift', kind, TOKEN_SHIFTS)
    if kind == 'bi_shift_1d' and head_size is None:
        raise ValueError("token_shift 'bi_shift_1d' is per head: it needs a head_size")


def token_shift(x: torch.Tensor, kind: str, head_size: Optional[int], grid_size: Optional[GridSize]) -> torch.Tensor:
    """Shift tokens ``x`` (B, N, C): ``'q_shift'`` on the row-major ``grid_size`` (head_size None = whole-channel
    quarters) or ``'bi_shift_1d'`` along the sequence (``grid_size`` unused)."""
    if kind == 'q_shift':
        if grid_size is None:
            raise ValueError("token_shift 'q_shift' needs the token grid: pass grid_size=(rows, cols)")
        return q_shift(x, grid_size, head_size)
    return bi_shift_1d(x, head_size)


def _norm_in(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``norm(x)``, in fp32 for an fp32 ``x`` and 16-bit norm parameters: the fp32 WKV output of a model whose
    weights were cast to bf16 / fp16 (``precision=``) is normalised in fp32, as autocast runs these norms."""
    weight = getattr(norm, 'weight', None)
    if weight is None or weight.dtype == x.dtype or x.dtype != torch.float32:
        return norm(x)
    bias = None if norm.bias is None else norm.bias.to(x.dtype)
    if isinstance(norm, nn.GroupNorm):
        return F.group_norm(x, norm.num_groups, weight.to(x.dtype), bias, norm.eps)
    return F.layer_norm(x, norm.normalized_shape, weight.to(x.dtype), bias, norm.eps)


def torchscript_unsupported(what: str, api: str) -> RuntimeError:
    """The error for TorchScript (``torch.jit.script`` / ``torch.jit.trace``, and torch.onnx's TorchScript-based
    exporter), which cannot capture the mixers: they choose kernels and chunking from the input at run time."""
    return RuntimeError(
        f"{what}: vision-rwkv models do not support TorchScript ({api}): the token and channel mixers choose their "
        "kernels and chunking from the input at run time. For a program use torch.export (`python tools/export.py`, "
        "vision_rwkv.export.export_program) or torch.onnx.export(..., dynamo=True); for speed use torch.compile.")


class FusedPathMixer(nn.Module):
    """A mixer's forward dispatch, shared by the channel mix, the RWKV-6 time mix and the v4 spatial mix: the
    mixed-operand GEMM path (:meth:`fuses_residual`), the fused path (one step or op by op), or the plain PyTorch
    path. Subclasses define ``fuses_residual``, ``_forward_mix_gemm``, ``_forward_fused`` and ``_forward_plain``."""

    def __prepare_scriptable__(self):
        # torch.jit.script calls this on every submodule before compiling: any module holding a mixer (a backbone,
        # a features_only wrapper, an RWKV-CLIP tower) fails here with a clear message instead of deep in TorchScript
        raise torchscript_unsupported(type(self).__name__, "torch.jit.script")

    def train(self, mode: bool = True):
        """Set the mode, and forget the values kept for eager inference (``derived_in_inference``): ``model.eval()``
        refreshes them after parameters were written through ``.data``, which no version counter sees (an EMA
        swapped in before validation, as mmengine's EMAHook does)."""
        self._folded.clear()
        return super().train(mode)

    def forward(self, x: torch.Tensor, grid_size: Optional[GridSize] = None,
                residual: Optional[fused.ResidualNorm] = None, cast: Optional[Tuple[torch.Tensor, ...]] = None):
        """The mix of x (``grid_size``: the token grid, which the Q-Shift needs); with ``residual`` (see
        :func:`fuses_residual`) the block's ``(x, norm(x))``. ``cast``: the step's matrices, cast by the caller
        (:meth:`step_cast_request`)."""
        if torch.jit.is_tracing():
            raise torchscript_unsupported(type(self).__name__,
                                          "torch.jit.trace, also behind torch.onnx.export(dynamo=False)")
        if grid_size is None and getattr(self, 'token_shift', 'q_shift') == 'q_shift':
            raise ValueError(f"{type(self).__name__}: the Q-Shift needs the token grid: pass grid_size=(rows, cols)")
        if fused.fused_enabled(x):
            if self.fuses_residual():  # the mixed-operand path, with the residual epilogue when one is given
                refuse_cast(self, cast)
                return self._forward_mix_gemm(x, grid_size, residual)
            return self._forward_fused(x, grid_size, residual, cast)
        refuse_cast(self, cast)
        out = self._forward_plain(x, grid_size)
        return out if residual is None else residual.apply(out)


class ChannelMix(FusedPathMixer):
    """RWKV channel mix: ``sigmoid(R xr) * V relu(K xk)^2`` (optional LayerNorm on the hidden).

    Args:
        dim, hidden_dim: width C and feed-forward width.
        layer_id, num_layers: block position (fancy init).
        key_norm: LayerNorm on the hidden (VRWKV-L).
        head_size: None = v4 whole-channel Q-Shift quarters; an int = per-head shift.
        token_shift: ``'q_shift'`` (backbones; forward needs ``grid_size``) or ``'bi_shift_1d'`` (text tower).
        param_style: the interpolation parameters, as the original checkpoints store them:
            ``'vrwkv'``: ``spatial_mix_{k,r}`` (C,) weight the UNshifted token, ``xk = x * mu + shift(x) * (1 - mu)``,
            init ``x_c^(1-i/L)``; ``'rwkv_clip_text'``: ``time_maa_{k,r}`` (1, 1, C) weight the shifted token,
            ``xk = x + (shift(x) - x) * maa``, init ``1 - x_c^(1-i/L)`` (the same function, reparameterised).
    """

    def __init__(
            self,
            dim: int,
            layer_id: int,
            num_layers: int,
            hidden_dim: int,
            key_norm: bool = False,
            head_size: Optional[int] = None,
            token_shift: str = 'q_shift',
            param_style: str = 'vrwkv',
    ):
        super().__init__()
        self._folded: dict = {}  # values derived from the parameters, kept in eager inference (derived_in_inference)
        _check_shift(token_shift, head_size)
        _check_choice('param_style', param_style, CHANNEL_MIX_STYLES)
        self.head_size = head_size
        self.token_shift = token_shift
        self.param_style = param_style
        self.dim = dim
        self.layer_id, self.num_layers = layer_id, num_layers
        if param_style == 'vrwkv':
            self.spatial_mix_k = nn.Parameter(torch.empty(dim))
            self.spatial_mix_r = nn.Parameter(torch.empty(dim))
        else:
            self.time_maa_k = nn.Parameter(torch.empty(1, 1, dim))
            self.time_maa_r = nn.Parameter(torch.empty(1, 1, dim))
        self.reset_parameters()
        self.key = nn.Linear(dim, hidden_dim, bias=False)
        self.key_norm = nn.LayerNorm(hidden_dim) if key_norm else None
        self.receptance = nn.Linear(dim, dim, bias=False)
        self.value = nn.Linear(hidden_dim, dim, bias=False)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Fancy init of the interpolation vectors (the Linear layers are initialised by the model)."""
        _, ratio_1_to_almost0 = layer_ratios(self.layer_id, self.num_layers)
        mu = channel_ratio(self.dim).pow(ratio_1_to_almost0)
        if self.param_style == 'vrwkv':
            self.spatial_mix_k.copy_(mu)
            self.spatial_mix_r.copy_(mu)
        else:
            self.time_maa_k.copy_((1.0 - mu).view_as(self.time_maa_k))
            self.time_maa_r.copy_((1.0 - mu).view_as(self.time_maa_r))

    def shift_weights(self) -> torch.Tensor:
        """(2, C) weights of the shifted token for (k, r): ``1 - mu`` or ``maa``."""
        if self.param_style == 'vrwkv':
            return 1 - torch.stack((self.spatial_mix_k, self.spatial_mix_r))
        return torch.stack((self.time_maa_k, self.time_maa_r)).reshape(2, -1)

    def _mixed_inputs(self, x: torch.Tensor, grid_size: Optional[GridSize]) -> Tuple[torch.Tensor, torch.Tensor]:
        shifted = token_shift(x, self.token_shift, self.head_size, grid_size)
        if self.param_style == 'vrwkv':
            return lerp_mix(x, shifted, self.spatial_mix_k), lerp_mix(x, shifted, self.spatial_mix_r)
        xx = shifted - x
        return torch.addcmul(x, xx, self.time_maa_k), torch.addcmul(x, xx, self.time_maa_r)

    def _forward_plain(self, x: torch.Tensor, grid_size: Optional[GridSize]) -> torch.Tensor:
        xk, xr = self._mixed_inputs(x, grid_size)
        k = _relu_square(self.key(xk))
        if self.key_norm is not None:
            k = self.key_norm(k)
        return torch.sigmoid(self.receptance(xr)) * self.value(k)

    def fuses_residual(self) -> bool:
        """The mixed-operand inference path: the receptance GEMM's epilogue can take the residual add + LayerNorm."""
        return self.token_shift == 'q_shift' and mix_gemm_enabled() and mix_gemm_ready(self.key, self.receptance)

    def _step_weights_or_none(self, x: torch.Tensor, dtype: torch.dtype) -> Optional[Tuple[torch.Tensor, ...]]:
        """The key, value and receptance weights when the fused forward runs as one step, else None."""
        if self.token_shift != 'q_shift' or self.key_norm is not None:
            return None
        return step_linear_weights(x, dtype, (self.key, self.value, self.receptance))

    def step_cast_request(self, x: torch.Tensor) -> Optional[StepCastRequest]:
        """What this mixer's one-step forward of ``x`` casts (:data:`StepCastRequest`: the key, value and
        receptance weights, one group each), for a caller that casts many mixers' matrices at once and passes them
        as ``cast=``; None when the forward does not run as one step."""
        if not fused.fused_enabled(x) or self.fuses_residual():
            return None
        weights = self._step_weights_or_none(x, fused.compute_dtype(x))
        return None if weights is None else (weights, (1, 1, 1), ())

    def _forward_fused(self, x: torch.Tensor, grid_size: Optional[GridSize],
                       residual: Optional[fused.ResidualNorm] = None, cast: Optional[Tuple[torch.Tensor, ...]] = None):
        """Same function with fused kernels (with ``residual``: the block's ``(x, norm(x))``): one step with the
        residual add + LayerNorm inside (:func:`fused.mixer_steps`: one autograd node in eager training, one call
        in eager inference) when :func:`step_linear_weights` allows, else :meth:`_forward_per_op` and
        :func:`fused.add_norm`. ``cast``: the step's matrices from a caller that checked :meth:`step_cast_request`
        (its conditions are not evaluated again)."""
        out_dtype = fused.compute_dtype(x)
        if cast is not None:
            weights = (self.key.weight, self.value.weight, self.receptance.weight)
        else:
            weights = self._step_weights_or_none(x, out_dtype)
        if weights is not None:
            one_minus = self.param_style == 'vrwkv'
            mix = (self.spatial_mix_k, self.spatial_mix_r) if one_minus else (self.time_maa_k, self.time_maa_r)
            steps = fused.mixer_steps()
            if cast is None:
                cast = step_matrices(self, weights, lambda: steps.channel_mix_matrices(weights, out_dtype), out_dtype)
            return steps.channel_mix_step(x, grid_size, self.head_size or 0, one_minus, out_dtype, mix, weights,
                                          residual=residual, cast=cast)
        out = self._forward_per_op(x, grid_size, out_dtype)
        return out if residual is None else residual.apply(out)

    def _forward_per_op(self, x: torch.Tensor, grid_size: Optional[GridSize], out_dtype: torch.dtype) -> torch.Tensor:
        """The fused kernels one op each: with the Q-Shift one shift + interpolation pass writes xk, xr in the
        compute dtype (the 1-D shift has no such kernel: plain PyTorch); relu^2 and the sigmoid gate as single
        elementwise passes or in the epilogues of the key / receptance GEMMs (:func:`key_relu_square`,
        :func:`receptance_gate`)."""
        if self.token_shift == 'q_shift':
            if self.param_style == 'vrwkv':  # mu weights the unshifted token: the kernel takes 1 - mu itself
                mix = _fold((self.spatial_mix_k, self.spatial_mix_r), self._folded, 'kr')
                xk, xr = fused.shift_lerp(x, grid_size, mix, self.head_size, out_dtype, split=True)
            else:
                maa = _fold((self.time_maa_k, self.time_maa_r), self._folded, 'kr')
                xk, xr = fused.token_shift_mix(x, grid_size, maa, None, self.head_size, out_dtype,
                                               split=True)
        else:
            xk, xr = self._mixed_inputs(x, grid_size)
        w = step_weights(out_dtype, plain_weights(self, ('key', 'value', 'receptance')), cache=self._folded)
        k = key_relu_square(self.key, xk, w.get('key'))
        if self.key_norm is not None:
            k = self.key_norm(k)
        v = _linear(self.value, k, w.get('value'))
        del k  # (the 4C-wide hidden is not held through the gate: less peak memory)
        return receptance_gate(self.receptance, xr, v, w.get('receptance'))

    def _forward_mix_gemm(self, x: torch.Tensor, grid_size: GridSize,
                          residual: Optional[fused.ResidualNorm] = None):
        """Fused inference path with the Q-Shift interpolations inside the key and receptance GEMMs (relu^2 and the
        sigmoid gate in their epilogues): xk, xr are never written. With ``VRWKV_FUSED_MLP=1`` key, relu^2 and value
        run as one kernel (:func:`fused.mix_mlp`, unless a key norm sits between them): nor is the hidden. With
        ``residual`` the receptance GEMM also does the block's residual add + LayerNorm and returns ``(x, n)``."""
        one_minus = self.param_style == 'vrwkv'  # mu weights the unshifted token: the kernel takes 1 - mu itself
        mu_k, mu_r = ((self.spatial_mix_k, self.spatial_mix_r) if one_minus else (self.time_maa_k, self.time_maa_r))
        w = mix_gemm_weights(self, fused.compute_dtype(x), ('key', 'value', 'receptance'))
        w_key, w_rec = w.get('key', self.key.weight), w.get('receptance', self.receptance.weight)
        if self.key_norm is None and _plain_linear(self.value) and fused.fused_mlp_enabled():  # one kernel
            v = fused.mix_mlp(x, grid_size, mu_k.reshape(-1), w_key, w.get('value', self.value.weight),
                              self.head_size, one_minus=one_minus)
        else:
            k = fused.mix_linear(x, grid_size, mu_k.reshape(-1), w_key, self.head_size, one_minus=one_minus,
                                 act='relu_square')
            v = _linear(self.value, k if self.key_norm is None else self.key_norm(k), w.get('value'))
        return fused.mix_linear(x, grid_size, mu_r.reshape(-1), w_rec, self.head_size, one_minus=one_minus,
                                act='sigmoid_mul', y=v, residual=residual)

    def extra_repr(self) -> str:
        return f'token_shift={self.token_shift!r}, head_size={self.head_size}, param_style={self.param_style!r}'


class TimeMixV6(FusedPathMixer):
    """RWKV-6 time mix, parameterised by its token shift (VRWKV6 / RWKV-CLIP image tower and RWKV-CLIP text tower).

    ``xx = shift(x) - x``; five data-dependent interpolations (w, k, v, r, g) through a rank-``mix_rank`` tanh
    bottleneck; per-token decay ``w = time_decay + tanh(x_w D1) D2`` with per-step ``d = exp(-exp(w))``;
    ``y = BiWKV6(r, k, v, d, u=time_faaaa)``; optional ``key_norm`` LayerNorm; ``out = W_o(ln_x(y) * silu(W_g x_g))``
    with ``ln_x`` a GroupNorm over the heads of each token.

    Args:
        dim: width C (a multiple of head_size).
        layer_id, num_layers: block position (fancy init).
        head_size: channels per head N (64; 80 in the RWKV-CLIP image tower).
        key_norm: LayerNorm(C) on the WKV output (VRWKV6 option; the text tower has none).
        ln_x_eps: GroupNorm eps (1e-5 backbones; 1e-5 * head_size_divisor^2 = 6.4e-4 text tower).
        mix_rank, decay_rank: LoRA ranks of the interpolation (32) and of the decay (64).
        token_shift: ``'q_shift'`` (per-head 2-D Q-Shift; forward needs ``grid_size``) or ``'bi_shift_1d'``.
        param_style: ``'vrwkv6'``: vectors ``time_maa_*``, ``time_decay`` stored (C,), all four LoRA matrices
            U(-1e-4, 1e-4), decay / bonus init computed in float64; ``'rwkv_clip_text'``: vectors stored (1, 1, C)
            (the original text checkpoints' shape), down-projections ``time_maa_w1`` / ``time_decay_w1`` zero and
            up-projections U(-0.01, 0.01), decay / bonus init computed in float32, ``output`` registered before
            ``gate`` (the text tower's parameter order, which index-based optimizer states depend on).
        fp32_wkv: run the WKV on float32 r, k, v, u (the text tower) and cast the normalised output back to the
            gate's dtype; False (backbones) runs it in the activations' dtype (it accumulates in fp32 anyway).
        wkv_backend: backend of :func:`vision_rwkv.ops.bi_wkv6` (None = auto).
    """

    def __init__(
            self,
            dim: int,
            layer_id: int,
            num_layers: int,
            head_size: int = 64,
            key_norm: bool = False,
            ln_x_eps: float = 1e-5,
            mix_rank: int = 32,
            decay_rank: int = 64,
            token_shift: str = 'q_shift',
            param_style: str = 'vrwkv6',
            fp32_wkv: bool = False,
            wkv_backend: Optional[str] = None,
    ):
        super().__init__()
        self._folded: dict = {}  # values derived from the parameters, kept in eager inference (derived_in_inference)
        if dim % head_size:
            raise ValueError(f'width {dim} is not a multiple of head_size {head_size}')
        _check_shift(token_shift, head_size)
        _check_choice('param_style', param_style, TIME_MIX_STYLES)
        self.dim = dim
        self.head_size = head_size
        self.num_heads = dim // head_size
        self.mix_rank = mix_rank
        self.layer_id, self.num_layers = layer_id, num_layers
        self.token_shift = token_shift
        self.param_style = param_style
        self.fp32_wkv = fp32_wkv
        self.wkv_backend = wkv_backend
        vec = (dim,) if param_style == 'vrwkv6' else (1, 1, dim)
        self.time_maa_x = nn.Parameter(torch.empty(vec))
        self.time_maa_w = nn.Parameter(torch.empty(vec))
        self.time_maa_k = nn.Parameter(torch.empty(vec))
        self.time_maa_v = nn.Parameter(torch.empty(vec))
        self.time_maa_r = nn.Parameter(torch.empty(vec))
        self.time_maa_g = nn.Parameter(torch.empty(vec))
        self.time_maa_w1 = nn.Parameter(torch.empty(dim, 5 * mix_rank))
        self.time_maa_w2 = nn.Parameter(torch.empty(5, mix_rank, dim))
        self.time_decay = nn.Parameter(torch.empty(vec))
        self.time_decay_w1 = nn.Parameter(torch.empty(dim, decay_rank))
        self.time_decay_w2 = nn.Parameter(torch.empty(decay_rank, dim))
        self.time_faaaa = nn.Parameter(torch.empty(self.num_heads, head_size))
        self.reset_parameters()
        self.receptance = nn.Linear(dim, dim, bias=False)
        self.key = nn.Linear(dim, dim, bias=False)
        self.value = nn.Linear(dim, dim, bias=False)
        if param_style == 'vrwkv6':
            self.gate = nn.Linear(dim, dim, bias=False)
            self.key_norm = nn.LayerNorm(dim) if key_norm else None
            self.output = nn.Linear(dim, dim, bias=False)
        else:  # the text tower's registration order (optimizer states are saved by parameter index)
            self.output = nn.Linear(dim, dim, bias=False)
            self.gate = nn.Linear(dim, dim, bias=False)
            self.key_norm = nn.LayerNorm(dim) if key_norm else None
        self.ln_x = nn.GroupNorm(self.num_heads, dim, eps=ln_x_eps)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """RWKV-6's layer- and channel-dependent init of the interpolation, decay and bonus parameters, per
        ``param_style``."""
        dim = self.dim
        ratio_0_to_1, ratio_1_to_almost0 = layer_ratios(self.layer_id, self.num_layers)
        base = channel_ratio(dim)
        for param, value in (
                (self.time_maa_x, 1.0 - base.pow(ratio_1_to_almost0)),
                (self.time_maa_w, 1.0 - base.pow(ratio_1_to_almost0)),
                (self.time_maa_k, 1.0 - base.pow(ratio_1_to_almost0)),
                (self.time_maa_v, 1.0 - (base.pow(ratio_1_to_almost0) + 0.3 * ratio_0_to_1)),
                (self.time_maa_r, 1.0 - base.pow(0.5 * ratio_1_to_almost0)),
                (self.time_maa_g, 1.0 - base.pow(0.5 * ratio_1_to_almost0))):
            param.copy_(value.view_as(param))
        if self.param_style == 'vrwkv6':
            self.time_maa_w1.uniform_(-1e-4, 1e-4)
            self.time_maa_w2.uniform_(-1e-4, 1e-4)
            self.time_decay_w1.uniform_(-1e-4, 1e-4)
            self.time_decay_w2.uniform_(-1e-4, 1e-4)
            dtype = torch.float64
        else:
            self.time_maa_w1.zero_()
            self.time_maa_w2.uniform_(-0.01, 0.01)
            self.time_decay_w1.zero_()
            self.time_decay_w2.uniform_(-0.01, 0.01)
            dtype = torch.float32
        pos = channel_position(dim, dtype)
        self.time_decay.copy_((-6 + 5 * pos.pow(0.7 + 1.3 * ratio_0_to_1)).view_as(self.time_decay))
        zigzag = 0.1 * (((torch.arange(dim) + 1) % 3) - 1).to(dtype)
        self.time_faaaa.copy_((ratio_0_to_1 * (1 - pos) + zigzag).view_as(self.time_faaaa))

    def _ddlerp(self, x: torch.Tensor, grid_size: Optional[GridSize]) -> Tuple[torch.Tensor, ...]:
        """The five interpolated inputs (x_w, x_k, x_v, x_r, x_g) in plain PyTorch."""
        batch, num_tokens, dim = x.shape
        xx = token_shift(x, self.token_shift, self.head_size, grid_size) - x
        xxx = torch.addcmul(x, xx, self.time_maa_x)
        m = torch.tanh(xxx @ self.time_maa_w1).view(batch * num_tokens, 5, self.mix_rank).transpose(0, 1)
        # (contiguous: a strided batch is ~1.5x slower on CPU)
        m = torch.bmm(m.contiguous(), self.time_maa_w2).view(5, batch, num_tokens, dim)
        mw, mk, mv, mr, mg = m.unbind(dim=0)
        maas = (self.time_maa_w, self.time_maa_k, self.time_maa_v, self.time_maa_r, self.time_maa_g)
        return tuple(torch.addcmul(x, xx, maa + mi) for maa, mi in zip(maas, (mw, mk, mv, mr, mg)))

    def _wkv(self, r: torch.Tensor, k: torch.Tensor, v: torch.Tensor, logd: torch.Tensor) -> torch.Tensor:
        """BiWKV6 of (B, T, C) r, k, v and log decay -> (B, T, C), then the optional key norm."""
        batch, num_tokens, dim = r.shape
        shape = (batch, num_tokens, self.num_heads, self.head_size)
        u = self.time_faaaa
        if self.fp32_wkv:
            r, k, v, u = r.float(), k.float(), v.float(), u.float()
        y = bi_wkv6(r.view(shape), k.view(shape), v.view(shape), logd.view(shape), u, backend=self.wkv_backend)
        y = y.reshape(batch, num_tokens, dim)
        return y if self.key_norm is None else _norm_in(self.key_norm, y)

    def fuses_residual(self) -> bool:
        """The mixed-operand inference path: the output GEMM (GroupNorm * gate operand) can take the residual add +
        LayerNorm into its epilogue."""
        return (self.token_shift == 'q_shift' and mix_gemm_enabled()
                and mix_gemm_ready(self.receptance, self.key, self.value, self.gate)
                and _plain_linear(self.output))

    def _forward_plain(self, x: torch.Tensor, grid_size: Optional[GridSize]) -> torch.Tensor:
        batch, num_tokens, dim = x.shape
        xw, xk, xv, xr, xg = self._ddlerp(x, grid_size)
        r = self.receptance(xr)
        k = self.key(xk)
        v = self.value(xv)
        g = F.silu(self.gate(xg))
        w = self.time_decay.float() + (torch.tanh(xw @ self.time_decay_w1) @ self.time_decay_w2).float()
        y = self._wkv(r, k, v, -torch.exp(w))
        y = _norm_in(self.ln_x, y.reshape(batch * num_tokens, dim)).view(batch, num_tokens, dim)
        if self.fp32_wkv:
            y = y.to(g.dtype)
        return self.output(y * g)

    def step_cast_request(self, x: torch.Tensor) -> Optional[StepCastRequest]:
        """What this mixer's one-step forward of ``x`` casts (:data:`StepCastRequest`: k, v, r, g as one stack, the
        output weight, ``time_maa_w1``, ``time_decay_w1``, ``time_decay_w2``, and ``time_maa_w2`` in bf16 - under
        fp16 it is appended uncast), for a caller that casts many mixers' matrices at once and passes them as
        ``cast=``; None when the forward does not run as one step."""
        if not fused.fused_enabled(x) or self.fuses_residual():
            return None
        dtype = fused.compute_dtype(x)
        step = self._step_inputs(x, dtype, (self.key, self.value, self.receptance, self.gate))
        if step is None:
            return None
        weights, (w1, d1, d2, w2) = step
        if fused.mixer_steps().w2_cast(w2, dtype):
            return weights + (w1, d1, d2, w2), (4, 1, 1, 1, 1, 1), ()
        return weights + (w1, d1, d2), (4, 1, 1, 1, 1), (w2.contiguous(),)

    def _forward_fused(self, x: torch.Tensor, grid_size: Optional[GridSize],
                       residual: Optional[fused.ResidualNorm] = None, cast: Optional[Tuple[torch.Tensor, ...]] = None):
        """Same function with fused kernels (with ``residual``: the block's ``(x, norm(x))``): one step with the
        residual add + LayerNorm inside (:func:`fused.mixer_steps`: one autograd node in eager training, one call
        in eager inference) when :meth:`_steps_as_one_node`, else :meth:`_forward_per_op` and
        :func:`fused.add_norm`. ``cast``: the step's matrices from a caller that checked :meth:`step_cast_request`
        (its conditions are not evaluated again)."""
        dtype = fused.compute_dtype(x)
        projections = (self.key, self.value, self.receptance, self.gate)
        if cast is not None:
            step = (tuple(m.weight for m in projections + (self.output,)),
                    (self.time_maa_w1, self.time_decay_w1, self.time_decay_w2, self.time_maa_w2))
        else:
            step = self._step_inputs(x, dtype, projections)
        if step is not None:
            steps, (weights, lora) = fused.mixer_steps(), step
            if cast is None:
                cast = step_matrices(self, weights + lora, lambda: steps.time_mix6_matrices(weights, lora, dtype),
                                     dtype)
            return steps.time_mix6_step(
                x, grid_size, self.head_size, self.ln_x.eps, dtype,
                (self.time_maa_x, self.time_maa_w, self.time_maa_k, self.time_maa_v, self.time_maa_r, self.time_maa_g,
                 self.time_decay), self.time_faaaa, self.ln_x.weight, self.ln_x.bias, weights, lora,
                residual=residual, cast=cast)
        stacked = self.token_shift == 'q_shift' and stackable(*projections)  # k, v, r, g: one batched GEMM
        out = self._forward_per_op(x, grid_size, dtype, stacked)
        return out if residual is None else residual.apply(out)

    def _forward_per_op(self, x: torch.Tensor, grid_size: Optional[GridSize], dtype: torch.dtype,
                        stacked: bool) -> torch.Tensor:
        """The fused kernels one op (autograd node) each. Q-Shift: shift + first interpolation in one pass, the five
        data-dependent interpolations with their LoRA up-projection in one pass (x read once, the (5, B, N, C)
        offsets never stored, outputs in the compute dtype), then k, v, r and the gate in one batched GEMM
        (:func:`linear_stack`; plain projections, ``stacked``); the 1-D shift has no such kernel (plain PyTorch).
        Both: the log decay in one pass and GroupNorm * SiLU(gate) in one pass; with the fused GEMMs the LoRAs' tanh
        and the decay ride in their GEMMs' epilogues (:func:`lora_tanh`, :func:`lora_decay`)."""
        head_size = self.head_size
        q_shift = self.token_shift == 'q_shift'
        projections = (self.key, self.value, self.receptance, self.gate)
        w = self._step_weights(dtype, stacked)
        w1, w2 = w.get('time_maa_w1', self.time_maa_w1), w.get('time_maa_w2', self.time_maa_w2)
        d1, d2 = w.get('time_decay_w1', self.time_decay_w1), w.get('time_decay_w2', self.time_decay_w2)
        if q_shift:
            xxx, = fused.token_shift_mix(x, grid_size, _fold((self.time_maa_x,)), None, head_size, out_dtype=dtype,
                                         split=True)
            lora = lora_tanh(xxx, w1)  # (B, N, 5 * mix_rank); its W2 product stays in the kernel
            del xxx
            maa = _fold((self.time_maa_w, self.time_maa_k, self.time_maa_v, self.time_maa_r, self.time_maa_g),
                        self._folded, 'wkvrg')
            if stacked:
                xw, xkvrg = fused.token_shift_mix_lora(x, grid_size, maa, lora, w2, head_size, out_dtype=dtype,
                                                       split=(1, 4))
                del lora
                logd = lora_decay(xw, d1, d2, self.time_decay.reshape(-1))
                del xw
                k, v, r, g = linear_stack(projections, xkvrg, self._folded, 'w_kvrg', stacked=w.get('stack'))
                del xkvrg
                return self._wkv_out(r, k, v, g, logd, dtype, w.get('output'))
            xw, xk, xv, xr, xg = fused.token_shift_mix_lora(x, grid_size, maa, lora, w2, head_size, out_dtype=dtype,
                                                            split=True)
            del lora
        else:
            xw, xk, xv, xr, xg = self._ddlerp(x, grid_size)
        # (order and dels for peak memory: the decay's intermediates are freed before the projections allocate, and
        # the five mixed inputs - in inference one (5, B, N, C) buffer - are not held through the WKV)
        logd = lora_decay(xw, d1, d2, self.time_decay.reshape(-1))
        r = _linear(self.receptance, xr, w.get('receptance'))
        k = _linear(self.key, xk, w.get('key'))
        v = _linear(self.value, xv, w.get('value'))
        g = _linear(self.gate, xg, w.get('gate'))
        del xw, xk, xv, xr, xg
        return self._wkv_out(r, k, v, g, logd, dtype, w.get('output'))

    def _steps_as_one_node(self, x: torch.Tensor, dtype: torch.dtype) -> bool:
        """Whether this fused forward runs as one step (:func:`fused.mixer_steps`; :meth:`_step_inputs`)."""
        return self._step_inputs(x, dtype, (self.key, self.value, self.receptance, self.gate)) is not None

    def _step_inputs(self, x: torch.Tensor, dtype: torch.dtype, projections: Tuple[nn.Module, ...]):
        """(the key, value, receptance, gate and output weights, the LoRA matrices ``time_maa_w1``,
        ``time_decay_w1``, ``time_decay_w2``, ``time_maa_w2``), each read once, when this fused forward runs as one
        step (:func:`fused.mixer_steps`; :func:`step_linear_weights`), else None: the Q-Shift, no key norm, k, v, r, g
        of one shape (one batched GEMM), the WKV in the activations' dtype on its Triton kernels, a LoRA rank the
        Q-Shift + LoRA kernel takes (a power of two >= 16) and LoRA matrices in the projections' dtype."""
        rank = self.mix_rank
        if (self.token_shift != 'q_shift' or self.key_norm is not None or self.fp32_wkv or rank < 16
                or rank & (rank - 1)):
            return None
        weights = step_linear_weights(x, dtype, projections + (self.output,))
        if weights is None or any(w.shape != weights[0].shape for w in weights[1:4]):
            return None
        lora = (self.time_maa_w1, self.time_decay_w1, self.time_decay_w2, self.time_maa_w2)
        w = weights[4]
        if any(m.dtype != w.dtype or m.device != w.device for m in lora):
            return None
        if resolve_backend('bi_wkv6', x.device, self.wkv_backend, (x.dtype, dtype)) != 'triton':
            return None
        return weights, lora

    def _step_weights(self, dtype: torch.dtype, stacked: bool) -> Dict[str, torch.Tensor]:
        """The fused forward's matrices in ``dtype``, cast in one launch (:func:`step_weights`): the plain
        projections (k, v, r, g as one stack when ``stacked``), the LoRA matrices (the interpolation's only with the
        Q-Shift kernels: the 1-D shift's plain ddlerp casts its own)."""
        names = ('key', 'value', 'receptance', 'gate', 'output')
        weights = plain_weights(self, names)
        # W2 only in bf16: under fp16 the Q-Shift + LoRA kernel's backward sums W2's gradient over every token in
        # fp32 (it can leave fp16's range), which a fp16 cast of W2 would round into fp16
        w2 = ('time_maa_w2',) if dtype == torch.bfloat16 else ()
        lora = ('time_maa_w1',) + w2 if self.token_shift == 'q_shift' else ()
        weights.update((n, getattr(self, n)) for n in lora + ('time_decay_w1', 'time_decay_w2'))
        return step_weights(dtype, weights, stack=names[:4] if stacked else (), cache=self._folded)

    def _wkv_out(self, r: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, logd: torch.Tensor,
                 dtype: torch.dtype, out_weight: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Fused path after the projections: the WKV, GroupNorm * SiLU(gate) in one pass, the output projection
        (``out_weight``: its weight from :func:`step_weights`)."""
        y = self._wkv(r, k, v, logd)
        y = fused.group_norm_mul(y, g, self.num_heads, self.ln_x.weight, self.ln_x.bias, self.ln_x.eps,
                                 gate_act='silu', out_dtype=dtype)
        return _linear(self.output, y, out_weight)

    def _forward_mix_gemm(self, x: torch.Tensor, grid_size: GridSize, residual: Optional[fused.ResidualNorm] = None):
        """Fused inference path: the projections with the ddlerp in their GEMMs, the WKV, and the output GEMM with
        GroupNorm * SiLU(gate) in its operand load (and, with ``residual``, the block's residual add + LayerNorm in
        its epilogue: then ``(x, n)``)."""
        w = mix_gemm_weights(self, fused.compute_dtype(x), ('key', 'value', 'receptance', 'gate', 'output'),
                             ('time_maa_w1', 'time_maa_w2', 'time_decay_w1', 'time_decay_w2'))
        r, k, v, g, logd = self._projections_mix_gemm(x, grid_size, w)
        return fused.group_norm_mul_linear(self._wkv(r, k, v, logd), g, self.num_heads, self.ln_x.weight,
                                           self.ln_x.bias, w.get('output', self.output.weight), self.ln_x.eps,
                                           gate_act='silu', residual=residual)

    def _projections_mix_gemm(self, x: torch.Tensor, grid_size: GridSize,
                              w: Dict[str, torch.Tensor]) -> Tuple[torch.Tensor, ...]:
        """Fused inference path: r, k, v, gate and the log decay with the ddlerp inside the GEMMs - the first
        interpolation in the LoRA down-projection (tanh epilogue), each of the five data-dependent ones (with its
        rank-R LoRA offset) in its projection (k, v, r and the gate in one launch that reads x once); the
        interpolated inputs are never written. ``w``: weights by name from :func:`mix_gemm_weights` (else the
        parameters)."""
        hs, rank = self.head_size, self.mix_rank
        p = lambda name: w.get(name, getattr(self, name))  # noqa: E731
        projection = lambda name: w.get(name, getattr(self, name).weight)  # noqa: E731
        w2 = p('time_maa_w2')
        lora = fused.mix_linear(x, grid_size, self.time_maa_x.reshape(-1), p('time_maa_w1').t(), hs, act='tanh')
        # the LoRA hidden's slices are ordered w, k, v, r, g: k, v, r, g are its last four, contiguous
        maa = tuple(m.reshape(-1) for m in (self.time_maa_k, self.time_maa_v, self.time_maa_r, self.time_maa_g))
        k, v, r, g = fused.mix_linear_group(x, grid_size, maa, tuple(projection(n) for n in ('key', 'value',
                                                                                            'receptance', 'gate')),
                                            hs, h=lora[..., rank:], w2=w2[1:])
        w0 = self.time_decay.reshape(-1)
        hidden = fused.mix_linear(x, grid_size, self.time_maa_w.reshape(-1), p('time_decay_w1').t(), hs,
                                  h=lora[..., :rank], w2=w2[0], act='tanh')
        if fused.fused_gemm_enabled():
            logd = fused.linear_decay(hidden, p('time_decay_w2').t(), w0)
        else:
            logd = fused.decay_logd(w0, hidden @ p('time_decay_w2'))
        return r, k, v, g, logd

    def extra_repr(self) -> str:
        return (f'token_shift={self.token_shift!r}, head_size={self.head_size}, param_style={self.param_style!r}, '
                f'fp32_wkv={self.fp32_wkv}')


def drop_path_scale(drop_path: Optional[nn.Module], branch: torch.Tensor) -> Optional[torch.Tensor]:
    """The (B,) float32 factor that ``drop_path`` (a timm ``DropPath``, ``nn.Identity`` or None) applies to the samples
    of ``branch`` (B, ...) in this call - ``bernoulli(keep_prob) / keep_prob`` (without the division when
    ``scale_by_keep`` is off) - or None when it is the identity (eval mode, rate 0). Draws from the RNG exactly
    when and as much as the module itself would, so the fused residual adds reproduce its masks."""
    if type(drop_path) is not DropPath or not drop_path.training or drop_path.drop_prob == 0.0:
        return None
    keep_prob = 1.0 - drop_path.drop_prob
    scale = branch.new_empty((branch.shape[0],), dtype=torch.float32).bernoulli_(keep_prob)
    if keep_prob > 0.0 and drop_path.scale_by_keep:
        scale.div_(keep_prob)
    return scale


def takes_residual(mixer: nn.Module) -> bool:
    """Whether ``mixer`` takes its block's residual add + LayerNorm: ``mixer(x, grid_size, residual=ResidualNorm(...))``
    returns ``(x, norm(x))``, fusing the add where it can - the epilogue of its last GEMM (:func:`fuses_residual`),
    its one-node training step (:func:`vision_rwkv.ops.fused.mixer_steps`) - else through
    :func:`~vision_rwkv.ops.fused.add_norm` (the token and channel mixes of this package)."""
    return callable(getattr(mixer, 'fuses_residual', None))


def fuses_residual(mixer: nn.Module) -> bool:
    """Whether ``mixer`` (a token or channel mix) takes its block's residual add + LayerNorm into the epilogue of its
    last GEMM right now: ``mixer(x, grid_size, residual=ResidualNorm(...))`` then returns ``(x, norm(x))`` (the
    inference path of ``VRWKV_FUSED_MIX=1``)."""
    check = getattr(mixer, 'fuses_residual', None)
    return bool(check is not None and check())


def fusable_drop_path(drop_path: nn.Module) -> bool:
    """Whether the fused residual adds can stand in for ``drop_path``: ``nn.Identity`` or a plain timm ``DropPath``."""
    return type(drop_path) in (nn.Identity, DropPath)


def fused_prenorm_step(
        x: torch.Tensor,
        h: torch.Tensor,
        token_mix: Callable[[torch.Tensor], torch.Tensor],
        channel_mix: Callable[[torch.Tensor], torch.Tensor],
        norm2: nn.LayerNorm,
        gamma1: Optional[torch.Tensor] = None,
        gamma2: Optional[torch.Tensor] = None,
        next_norm: Optional[nn.LayerNorm] = None,
        next_dtype: Optional[torch.dtype] = None,
        drop_path1: Optional[nn.Module] = None,
        drop_path2: Optional[nn.Module] = None,
        take_residual: Tuple[bool, bool] = (False, False),
        inplace: bool = False,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """One pre-norm block on the fused path from the residual ``x`` and ``h = norm1(x)``.

    ``x += drop_path1(gamma1 * token_mix(h))`` fused with ``norm2``; ``x += drop_path2(gamma2 *
    channel_mix(norm2(x)))`` fused with ``next_norm`` (the next block's ``norm1``, or the model's final norm; None =
    plain add). Returns ``(x, next_norm(x) or None)``. ``norm2``'s output is written in the compute dtype (only the
    channel mix reads it); ``next_norm``'s in ``next_dtype`` (None = the compute dtype; the final norm passes the
    residual's dtype, what ``nn.LayerNorm`` returns under autocast). gamma None = no layer scale; the drop paths
    (timm ``DropPath``, ``nn.Identity`` or None) become per-sample factors of the fused adds
    (:func:`drop_path_scale`). ``take_residual``: whether the token / channel mix takes the residual add + LayerNorm
    (``mixer(t, residual=ResidualNorm)`` returns ``(x, norm(x))``; see :func:`takes_residual`) - into its last GEMM
    in inference, into its one autograd node in training - else :func:`fused.add_norm` runs here. ``inplace``
    (eager inference, x owned by the caller): the residual adds write into x (see :func:`fused.add_norm`), one
    residual buffer for the whole chain.
    """
    dtype = fused.compute_dtype(x)
    scale = drop_path_scale(drop_path1, x)  # (the mixers draw no random numbers: same draws as after token_mix)
    if take_residual[0]:
        x, h = token_mix(h, residual=fused.ResidualNorm(x, gamma1, norm2.weight, norm2.bias, norm2.eps, False, dtype,
                                                        inplace, scale))
    else:
        x, h = fused.add_norm(x, token_mix(h), gamma1, norm2.weight, norm2.bias, norm2.eps, post=False,
                              out_dtype=dtype, sample_scale=scale, inplace=inplace)
    scale = drop_path_scale(drop_path2, x)
    if take_residual[1] and next_norm is not None:
        return channel_mix(h, residual=fused.ResidualNorm(x, gamma2, next_norm.weight, next_norm.bias, next_norm.eps,
                                                          False, next_dtype or dtype, inplace, scale))
    y = channel_mix(h)
    if next_norm is None:
        branch = y if gamma2 is None else y * gamma2
        if scale is not None:
            branch = branch * scale.view((-1,) + (1,) * (branch.dim() - 1))
        return (x.add_(branch) if inplace else x + branch), None
    return fused.add_norm(x, y, gamma2, next_norm.weight, next_norm.bias, next_norm.eps, post=False,
                          out_dtype=next_dtype or dtype, sample_scale=scale, inplace=inplace)
