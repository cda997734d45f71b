"""Vision-RWKV (v4) backbones, timm-registered.

Paper: "Vision-RWKV: Efficient and Scalable Visual Perception with RWKV-Like Architectures" (arXiv:2403.02308).
Written from the paper's description and the released checkpoints (no code from the original repository).

Each block mixes tokens with a Q-Shift + bidirectional WKV ("spatial mix") and channels with a squared-ReLU MLP
("channel mix"). The Bi-WKV operator has two modes: ``'exact'`` (the paper's Eq. 5, default for new models) and
``'original'`` (the function the released checkpoints were trained with; ``wkv_chunks`` = its chunk count P).
With ``pretrained=True`` the model runs the weights with the function they were trained with: ``wkv_mode`` /
``wkv_chunks`` passed to create_model or set in ``pretrained_cfg_overlay``, else the mode a local file records
(our training checkpoints and converted files record it; the original layout means ``'original'``), else for the
hub files ``'original'`` with P=32 (P=16 for VRWKV-L), and for a local plain state dict ``'exact'`` (with a
warning). E.g. ``pretrained_cfg_overlay=dict(file=PATH, wkv_chunks=16)`` for the segmentation backbones.
``set_wkv_mode`` switches an existing model. The model records its mode in timm's reconstruction arguments, so
``save_for_hf`` exports reload (``local-dir:``) in it; timm's ``checkpoint_path=`` / ``load_checkpoint`` load
weights into a model built as asked (``'exact'`` unless ``wkv_mode=`` is given).
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Dict, Optional, Tuple, Union

import torch
import torch.nn as nn
from timm.models import PretrainedCfg, generate_default_cfgs, register_model

from vision_rwkv.ops import bi_wkv, fused, q_shift
from vision_rwkv.ops.dispatch import resolve_backend

from ._base import VisionRWKVBase
from ._factory import build_backbone, hub_cfg
from ._layers import GridSize
from ._projections import (_epilogue_ready, _fold, _linear, derived_in_inference, linear_stack, mix_gemm_ready,
                           mix_gemm_weights, plain_weights, receptance_gate, stackable, step_linear_weights,
                           step_matrices, step_weights, mix_gemm_enabled, refuse_cast, StepCastRequest)
from .mixing import ChannelMix, FusedPathMixer, channel_position, channel_ratio, layer_ratios, lerp_mix

__all__ = ['VRWKV', 'SpatialMix', 'WKV_MODES', 'VARIANT_ARGS']

WKV_MODES = ('exact', 'original')


def _check_wkv_mode(mode: str, chunks: int) -> None:
    if mode not in WKV_MODES:
        raise ValueError(f'wkv_mode must be one of {WKV_MODES}, got {mode!r}')
    if not isinstance(chunks, int) or isinstance(chunks, bool) or chunks < 1:
        raise ValueError(f'wkv_chunks must be a positive int, got {chunks!r}')


class _DivPair(torch.autograd.Function):
    """``(a / n, b / n)`` with one foreach launch forward and one backward (autograd's own backward of a foreach
    division launches one division per gradient)."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, b: torch.Tensor, n: int):
        ctx.n = n
        return tuple(torch._foreach_div([a, b], n))

    @staticmethod
    def backward(ctx, ga: torch.Tensor, gb: torch.Tensor):
        ga, gb = torch._foreach_div([ga, gb], ctx.n)
        return ga, gb, None


class SpatialMix(FusedPathMixer):
    """v4 token mix: Q-Shift interpolation, k/v/r projections, Bi-WKV with per-step decay and bonus
    ``spatial_decay / T``, ``spatial_first / T``, optional LayerNorm, sigmoid(r) gate, output projection."""

    def __init__(
            self,
            dim: int,
            layer_id: int,
            num_layers: int,
            key_norm: bool = False,
            wkv_mode: str = 'exact',
            wkv_chunks: int = 32,
    ):
        super().__init__()
        self._folded: dict = {}  # values derived from the parameters, kept in eager inference (derived_in_inference)
        _check_wkv_mode(wkv_mode, wkv_chunks)
        self.wkv_mode = wkv_mode
        self.wkv_chunks = wkv_chunks
        ratio_0_to_1, ratio_1_to_almost0 = layer_ratios(layer_id, num_layers)
        pos = channel_position(dim)
        self.spatial_decay = nn.Parameter((-5 + 8 * pos.pow(0.7 + 1.3 * ratio_0_to_1)).float())
        zigzag = 0.5 * (((torch.arange(dim) + 1) % 3) - 1).float()
        self.spatial_first = nn.Parameter(math.log(0.3) + zigzag)
        base = channel_ratio(dim)
        self.spatial_mix_k = nn.Parameter(base.pow(ratio_1_to_almost0))
        self.spatial_mix_v = nn.Parameter(base.pow(ratio_1_to_almost0) + 0.3 * ratio_0_to_1)
        self.spatial_mix_r = nn.Parameter(base.pow(0.5 * ratio_1_to_almost0))
        self.key = nn.Linear(dim, dim, bias=False)
        self.value = nn.Linear(dim, dim, bias=False)
        self.receptance = nn.Linear(dim, dim, bias=False)
        self.key_norm = nn.LayerNorm(dim) if key_norm else None
        self.output = nn.Linear(dim, dim, bias=False)

    def per_step(self, num_tokens: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Per-step decay and bonus ``(spatial_decay / T, spatial_first / T)``, both from one foreach division (one
        kernel launch on a GPU instead of two; in training their gradients too; in eager inference kept while the
        parameters and T are unchanged). While compiling or exporting: two plain divisions (inductor fuses them; the
        ONNX exporter has no foreach ops)."""
        pair = (self.spatial_decay, self.spatial_first)
        if torch.compiler.is_compiling():
            return pair[0] / num_tokens, pair[1] / num_tokens
        if torch.is_grad_enabled() and any(p.requires_grad for p in pair):
            return _DivPair.apply(*pair, num_tokens)
        return derived_in_inference(pair, self._folded, 'per_step',
                                    lambda: tuple(torch._foreach_div(list(pair), num_tokens)), key=num_tokens)

    def _bi_wkv_scaled(self, k: torch.Tensor, v: torch.Tensor, num_tokens: int) -> torch.Tensor:
        """Fused paths: the Bi-WKV of the stored decay and bonus with ``scale = 1 / T`` - the Triton kernels scale
        them as they load them and return their gradients, so no division is launched (two launches per block fewer
        in a training step; :meth:`per_step` divides for the plain path)."""
        return bi_wkv(self.spatial_decay, self.spatial_first, k, v, mode=self.wkv_mode, chunks=self.wkv_chunks,
                      scale=1.0 / num_tokens)

    def fuses_residual(self) -> bool:
        """The mixed-operand inference path: the output projection runs as a Triton GEMM with the residual add +
        LayerNorm in its epilogue."""
        return mix_gemm_enabled() and mix_gemm_ready(self.key, self.value, self.receptance, self.output)

    def _forward_plain(self, x: torch.Tensor, grid_size: GridSize) -> torch.Tensor:
        shifted = q_shift(x, grid_size)
        k = self.key(lerp_mix(x, shifted, self.spatial_mix_k))
        v = self.value(lerp_mix(x, shifted, self.spatial_mix_v))
        r = self.receptance(lerp_mix(x, shifted, self.spatial_mix_r))
        y = bi_wkv(*self.per_step(x.shape[1]), k, v, mode=self.wkv_mode, chunks=self.wkv_chunks)
        if self.key_norm is not None:
            y = self.key_norm(y)
        return self.output(torch.sigmoid(r) * y)

    def _step_weights_or_none(self, x: torch.Tensor, dtype: torch.dtype) -> Optional[Tuple[torch.Tensor, ...]]:
        """The key, value, receptance and output weights when the fused forward runs as one step (k, v, r of one
        shape: one batched GEMM; the Bi-WKV on its Triton kernels), else None."""
        if self.key_norm is not None:
            return None
        weights = step_linear_weights(x, dtype, (self.key, self.value, self.receptance, self.output))
        if weights is None or any(w.shape != weights[0].shape for w in weights[1:3]):
            return None
        return weights if resolve_backend('bi_wkv', x.device, None, (x.dtype, dtype)) == 'triton' else None

    def step_cast_request(self, x: torch.Tensor) -> Optional[StepCastRequest]:
        """What this mixer's one-step forward of ``x`` casts (:data:`StepCastRequest`: k, v, r as one stack and the
        output weight), for a caller that casts many mixers' matrices at once and passes them as ``cast=``; None
        when the forward does not run as one step."""
        if not fused.fused_enabled(x) or self.fuses_residual() or (
                mix_gemm_enabled() and mix_gemm_ready(self.key, self.value, self.receptance)):
            return None
        weights = self._step_weights_or_none(x, fused.compute_dtype(x))
        return None if weights is None else (weights, (3, 1), ())

    def _forward_fused(self, x: torch.Tensor, grid_size: GridSize, residual: Optional[fused.ResidualNorm] = None,
                       cast: Optional[Tuple[torch.Tensor, ...]] = None):
        """Same function with fused kernels (with ``residual``: the block's ``(x, norm(x))``): one step with the
        residual add + LayerNorm inside (:func:`fused.mixer_steps`: one autograd node in eager training, one call
        in eager inference) when :func:`step_linear_weights` allows, else :meth:`_forward_per_op` (or the
        mixed-operand GEMMs) and :func:`fused.add_norm`. ``cast``: the step's matrices from a caller that checked
        :meth:`step_cast_request` (its conditions are not evaluated again)."""
        if mix_gemm_enabled() and mix_gemm_ready(self.key, self.value, self.receptance):  # (output with hooks)
            refuse_cast(self, cast)
            out = self._forward_mix_gemm(x, grid_size)
            return out if residual is None else residual.apply(out)
        dtype = fused.compute_dtype(x)
        if cast is not None:
            weights = (self.key.weight, self.value.weight, self.receptance.weight, self.output.weight)
        else:
            weights = self._step_weights_or_none(x, dtype)
        if weights is not None:  # one step
            steps = fused.mixer_steps()
            if cast is None:
                cast = step_matrices(self, weights, lambda: steps.spatial_mix_matrices(weights, dtype), dtype)
            return steps.spatial_mix_step(
                x, grid_size, self.wkv_mode, self.wkv_chunks, dtype, self.spatial_decay, self.spatial_first,
                (self.spatial_mix_k, self.spatial_mix_v, self.spatial_mix_r), weights, residual=residual, cast=cast)
        out = self._forward_per_op(x, grid_size, dtype)
        return out if residual is None else residual.apply(out)

    def _forward_per_op(self, x: torch.Tensor, grid_size: GridSize, dtype: torch.dtype) -> torch.Tensor:
        """The fused kernels one op each: one Q-Shift + lerp pass writes xk, xv, xr in the compute dtype (one
        tensor), and one batched GEMM projects them (:func:`linear_stack`; plain projections); the WKV output feeds
        one sigmoid-gate pass, or the receptance GEMM's epilogue (:func:`receptance_gate`)."""
        mix = _fold((self.spatial_mix_k, self.spatial_mix_v, self.spatial_mix_r), self._folded, 'kvr')
        gate_epilogue = _epilogue_ready(self.receptance)  # sigmoid(r) * y in the receptance GEMM, after the WKV
        names = ('key', 'value') if gate_epilogue else ('key', 'value', 'receptance')
        together = tuple(getattr(self, n) for n in names)
        stacked = stackable(*together)  # k, v (and r) in one batched GEMM of their mixed inputs (one tensor)
        w = step_weights(dtype, plain_weights(self, ('key', 'value', 'receptance', 'output')),
                         stack=names if stacked else (), cache=self._folded)
        if stacked:
            if gate_epilogue:
                xkv, xr = fused.shift_lerp(x, grid_size, mix, out_dtype=dtype, split=(2, 1))
                k, v = linear_stack(together, xkv, self._folded, 'w_kv', stacked=w.get('stack'))
                r = None
                del xkv
            else:
                k, v, r = linear_stack(together, fused.shift_lerp(x, grid_size, mix, out_dtype=dtype), self._folded,
                                       'w_kvr', stacked=w.get('stack'))
                xr = None
        else:
            xk, xv, xr = fused.shift_lerp(x, grid_size, mix, out_dtype=dtype, split=True)
            k = _linear(self.key, xk, w.get('key'))
            v = _linear(self.value, xv, w.get('value'))
            # without the gate epilogue the receptance runs before the WKV, so the mixed inputs (in inference one
            # (3, B, N, C) buffer) are not held through it: less peak memory
            r = None if gate_epilogue else _linear(self.receptance, xr, w.get('receptance'))
            if r is not None:
                del xr
            del xk, xv
        y = self._bi_wkv_scaled(k, v, x.shape[1])
        if self.key_norm is not None:
            y = self.key_norm(y)
        gated = receptance_gate(self.receptance, xr, y, w.get('receptance')) if r is None else fused.sigmoid_mul(r, y)
        return _linear(self.output, gated, w.get('output'))

    def _forward_mix_gemm(self, x: torch.Tensor, grid_size: GridSize, residual: Optional[fused.ResidualNorm] = None):
        """Fused inference path with the Q-Shift lerps inside the k, v, r GEMMs (k and v in one launch that reads x
        once; the sigmoid gate on the WKV output in the receptance GEMM's epilogue): xk, xv, xr are never written.
        With ``residual`` the output projection also does the block's residual add + LayerNorm
        (:func:`fused.linear_add_norm`)."""
        w = mix_gemm_weights(self, fused.compute_dtype(x), ('key', 'value', 'receptance', 'output'))
        k, v = fused.mix_linear_group(x, grid_size, (self.spatial_mix_k, self.spatial_mix_v),
                                      (w.get('key', self.key.weight), w.get('value', self.value.weight)),
                                      one_minus=True)
        y = self._bi_wkv_scaled(k, v, x.shape[1])
        if self.key_norm is not None:
            y = self.key_norm(y)
        gated = fused.mix_linear(x, grid_size, self.spatial_mix_r, w.get('receptance', self.receptance.weight),
                                 one_minus=True, act='sigmoid_mul', y=y)
        if residual is None:
            return _linear(self.output, gated, w.get('output'))
        return fused.linear_add_norm(gated, w.get('output', self.output.weight), residual)

    def extra_repr(self) -> str:
        return f'wkv_mode={self.wkv_mode!r}, wkv_chunks={self.wkv_chunks}'


class VRWKV(VisionRWKVBase):
    """Vision-RWKV (v4) with a global-average-pool classifier.

    Args (beyond :class:`~vision_rwkv.models._base.VisionRWKVBase`):
        mlp_ratio: channel-mix hidden width / C (the original ``hidden_rate``).
        key_norm: LayerNorm on the WKV output and on the channel-mix hidden.
        wkv_mode: 'exact' (Eq. 5) or 'original' (the released checkpoints' kernel function).
        wkv_chunks: chunk count P of the 'original' mode (32; 16 for the segmentation and VRWKV-L weights).
    """

    def __init__(
            self,
            img_size: Union[int, Tuple[int, int]] = 224,
            patch_size: Union[int, Tuple[int, int]] = 16,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            embed_dim: int = 192,
            depth: int = 12,
            mlp_ratio: float = 4.0,
            post_norm: bool = False,
            init_values: Optional[float] = None,
            key_norm: bool = False,
            final_norm: bool = True,
            drop_rate: float = 0.0,
            pos_drop_rate: float = 0.0,
            drop_path_rate: float = 0.0,
            head_hidden_size: Optional[int] = None,
            pos_embed_grid: Optional[Union[int, Tuple[int, int]]] = None,
            dynamic_img_size: bool = True,
            dynamic_img_pad: bool = True,
            wkv_mode: str = 'exact',
            wkv_chunks: int = 32,
            device: Optional[Union[str, torch.device]] = None,
            dtype: Optional[torch.dtype] = None,
    ):
        _check_wkv_mode(wkv_mode, wkv_chunks)
        hidden_dim = int(embed_dim * mlp_ratio)

        def mixers(layer_id: int, num_layers: int) -> Tuple[nn.Module, nn.Module]:
            return (
                SpatialMix(embed_dim, layer_id, num_layers, key_norm, wkv_mode, wkv_chunks),
                ChannelMix(embed_dim, layer_id, num_layers, hidden_dim, key_norm, head_size=None),
            )

        super().__init__(
            mixers, img_size=img_size, patch_size=patch_size, in_chans=in_chans, num_classes=num_classes,
            global_pool=global_pool, embed_dim=embed_dim, depth=depth, post_norm=post_norm,
            init_values=init_values, final_norm=final_norm, drop_rate=drop_rate, pos_drop_rate=pos_drop_rate,
            drop_path_rate=drop_path_rate, head_hidden_size=head_hidden_size, pos_embed_grid=pos_embed_grid,
            dynamic_img_size=dynamic_img_size, dynamic_img_pad=dynamic_img_pad, device=device, dtype=dtype)
        self.family = 'vrwkv'
        self._record_wkv_args()

    @property
    def wkv_mode(self) -> str:
        return self.blocks[0].spatial_mix.wkv_mode

    @property
    def wkv_chunks(self) -> int:
        return self.blocks[0].spatial_mix.wkv_chunks

    def set_wkv_mode(self, mode: str, chunks: Optional[int] = None) -> None:
        """Switch every block's Bi-WKV to ``mode`` ('exact' | 'original'); ``chunks`` (P) keeps its value if None."""
        chunks = self.wkv_chunks if chunks is None else chunks
        _check_wkv_mode(mode, chunks)
        for block in self.blocks:
            block.spatial_mix.wkv_mode = mode
            block.spatial_mix.wkv_chunks = chunks
        self._record_wkv_args()

    def _record_wkv_args(self) -> None:
        # timm's reconstruction arguments (create_model adds its kwargs; save_for_hf writes them to config.json)
        self._model_args = dict(getattr(self, '_model_args', {}), wkv_mode=self.wkv_mode, wkv_chunks=self.wkv_chunks)


# ---------------------------------------------------------------------- pretrained configs
# The Bi-WKV function of the released hub files (timm's PretrainedCfg takes no fields of ours: a cfg turned into a
# dict and passed back, as timm's validate.py and save_for_hf / local-dir do, must stay a plain timm cfg).
RELEASED_WKV_MODE = 'original'
RELEASED_WKV_CHUNKS = {'vrwkv_large_patch16_384': 16}  # (P = 32 for the others)
WKV_KEYS = ('wkv_mode', 'wkv_chunks')


def _cfg(file: str = '', **kwargs: Any) -> PretrainedCfg:
    return PretrainedCfg(**hub_cfg(file, **kwargs))


default_cfgs = generate_default_cfgs({
    'vrwkv_tiny_patch16_224.in1k': _cfg('vrwkv_t_in1k_224.pth'),
    'vrwkv_small_patch16_224.in1k': _cfg('vrwkv_s_in1k_224.pth'),
    'vrwkv_base_patch16_224.in1k': _cfg('vrwkv_b_in1k_224.pth'),
    'vrwkv_large_patch16_384.in22k_ft_in1k': _cfg('vrwkv_l_22kto1k_384.pth', input_size=(3, 384, 384), crop_pct=1.0),
})


def _pretrained_wkv_kwargs(variant: str, record: Optional[tuple], kwargs: dict, overlay: dict,
                           file: Optional[str] = None) -> dict:
    """The Bi-WKV function pretrained weights run with: ``wkv_mode`` / ``wkv_chunks`` each from the first that gives
    it of create_model's kwargs, the ``pretrained_cfg_overlay`` (``overlay``: its wkv keys), the function a local
    weights file records (``record``: (mode, chunks or None); the original layout counts as 'original'), then for
    the hub files 'original' (P = 32, 16 for VRWKV-L) and for a local file that records nothing (a plain state
    dict) the default of new models, 'exact', with a warning (timm's ``checkpoint_path=`` runs it so too). A file
    recorded as exact-trained warns when 'original' is chosen."""
    chosen = kwargs.get('wkv_mode') or overlay.get('wkv_mode')
    released_chunks = RELEASED_WKV_CHUNKS.get(variant, 32)
    if file is None:
        mode = chosen or RELEASED_WKV_MODE
    else:
        mode = chosen or (record[0] if record else 'exact')
    if file is not None and record is None and not chosen:
        warnings.warn(f"{file} does not record the Bi-WKV function its weights were trained with (a plain state "
                      "dict): running them in 'exact', the default of new models (as timm's checkpoint_path= does); "
                      f"pass wkv_mode='original' (and wkv_chunks={released_chunks}) for weights fine-tuned from the "
                      "released checkpoints", stacklevel=5)
    if file is not None and record is not None and record[0] == 'exact' and mode == 'original':  # (chosen)
        warnings.warn(f"{file} records Bi-WKV mode 'exact' (the function its weights were trained with) but the "
                      "model runs 'original'; pass wkv_mode='exact' (or pretrained_cfg_overlay=dict(file=..., "
                      "wkv_mode='exact')) to run them as trained", stacklevel=5)
    recorded_chunks = record[1] if record and record[0] == mode else None
    chunks = kwargs.get('wkv_chunks') or overlay.get('wkv_chunks') or recorded_chunks or released_chunks
    return dict(wkv_mode=mode, wkv_chunks=chunks)


def _create_vrwkv(variant: str, pretrained: bool = False, **kwargs: Any) -> VRWKV:
    overlay = {}  # the wkv keys of pretrained_cfg_overlay / a pretrained_cfg dict (not timm cfg fields)
    for key in ('pretrained_cfg', 'pretrained_cfg_overlay'):
        if isinstance(kwargs.get(key), dict) and any(k in kwargs[key] for k in WKV_KEYS):
            given = dict(kwargs[key])
            overlay.update({k: given.pop(k) for k in WKV_KEYS if k in given})
            kwargs[key] = given

    def wkv_kwargs(cfg: Any, record: Optional[tuple], model_kwargs: dict, file: Optional[str] = None) -> dict:
        return _pretrained_wkv_kwargs(variant, record, model_kwargs, overlay, file)

    return build_backbone(VRWKV, variant, pretrained, pretrained_kwargs=wkv_kwargs, **kwargs)


# the registered models' constructor arguments (their entry points below; the mmseg config converter matches them)
VARIANT_ARGS: Dict[str, Dict[str, Any]] = {
    'vrwkv_tiny_patch16_224': dict(patch_size=16, embed_dim=192, depth=12),
    'vrwkv_small_patch16_224': dict(
        patch_size=16, embed_dim=384, depth=12, post_norm=True, init_values=1.0, drop_path_rate=0.3),
    'vrwkv_base_patch16_224': dict(
        patch_size=16, embed_dim=768, depth=12, post_norm=True, init_values=1e-5, drop_path_rate=0.5),
    'vrwkv_large_patch16_384': dict(
        img_size=384, patch_size=16, embed_dim=1024, depth=24, post_norm=True, init_values=1e-5, key_norm=True,
        drop_path_rate=0.1, head_hidden_size=3072, pos_embed_grid=12),
}


@register_model
def vrwkv_tiny_patch16_224(pretrained: bool = False, **kwargs: Any) -> VRWKV:
    """VRWKV-T: C 192, 12 blocks, pre-norm, no layer scale (6.2M params)."""
    model_args = VARIANT_ARGS['vrwkv_tiny_patch16_224']
    return _create_vrwkv('vrwkv_tiny_patch16_224', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def vrwkv_small_patch16_224(pretrained: bool = False, **kwargs: Any) -> VRWKV:
    """VRWKV-S: C 384, 12 blocks, post-norm, layer scale 1.0, drop path 0.3 (23.8M params)."""
    model_args = VARIANT_ARGS['vrwkv_small_patch16_224']
    return _create_vrwkv('vrwkv_small_patch16_224', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def vrwkv_base_patch16_224(pretrained: bool = False, **kwargs: Any) -> VRWKV:
    """VRWKV-B: C 768, 12 blocks, post-norm, layer scale 1e-5, drop path 0.5 (93.7M params)."""
    model_args = VARIANT_ARGS['vrwkv_base_patch16_224']
    return _create_vrwkv('vrwkv_base_patch16_224', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def vrwkv_large_patch16_384(pretrained: bool = False, **kwargs: Any) -> VRWKV:
    """VRWKV-L: C 1024, 24 blocks, post-norm, layer scale 1e-5, key norm, Linear-Tanh-Linear head; position
    embedding stored on the 12x12 grid of its 192px pre-training and resized to the 384px input (334.9M params)."""
    model_args = VARIANT_ARGS['vrwkv_large_patch16_384']
    return _create_vrwkv('vrwkv_large_patch16_384', pretrained=pretrained, **dict(model_args, **kwargs))
