"""The model skeleton shared by VRWKV (v4) and VRWKV6: patch embed + learned position embedding, a stack of
:class:`~vision_rwkv.models._layers.Block`, final LayerNorm, global-average-pool classifier, and the timm model
API (``forward_features``, ``forward_head``, ``forward_intermediates``, ``prune_intermediate_layers``,
``group_matcher``, ``no_weight_decay``, ``set_grad_checkpointing``, ``get_classifier``, ``reset_classifier``,
``feature_info``).

Any input size works: images are zero-padded to whole patches and the position embedding is resized
(bicubic, no antialias) on every forward whose token grid differs from the stored one.
"""
from __future__ import annotations

import contextlib
import warnings
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Optional, Set, Tuple, Union

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint
from timm.layers import to_2tuple, trunc_normal_
from timm.models._features import feature_take_indices


def _record_input_size(model: nn.Module, img_size, **model_args) -> None:
    """Record a resize in ``model._traits['img_size']`` and ``model._model_args``, as timm >= 1.0.31 does (its
    ``update_model_input_size``); the fallback for older timm 1.0.x. ``_nominal_img_size`` reads it."""
    size = tuple(to_2tuple(img_size)) if img_size is not None else None
    model._traits = {**getattr(model, "_traits", {}), "img_size": size}
    args = {**getattr(model, "_model_args", {}), **{k: v for k, v in model_args.items() if v is not None}}
    args.pop("img_size", None)
    if size is not None:
        args["img_size"] = size
    model._model_args = args


try:  # timm >= 1.0.31 (its hub export reads the record)
    from timm.models._input import update_model_input_size
except ImportError:
    update_model_input_size = _record_input_size

from vision_rwkv.ops import fused
from vision_rwkv.ops.cast_weights import cast_weight_groups

from ._layers import Block, GridSize, PatchEmbed, check_image_batch, resample_pos_embed

__all__ = ['VisionRWKVBase']

# (layer_id, num_layers, drop_path) -> (spatial_mix, channel_mix)
MixerFactory = Callable[[int, int], Tuple[nn.Module, nn.Module]]

GLOBAL_POOLS = ('', 'avg', 'max', 'avgmax')  # over the tokens (no class token: timm's 'token' / 'map' do not apply)


def _check_pool(global_pool: str) -> None:
    if global_pool not in GLOBAL_POOLS:
        raise ValueError(f"global_pool must be one of {GLOBAL_POOLS}, got {global_pool!r}")


class VisionRWKVBase(nn.Module):
    """Backbone + classifier common to both RWKV families; subclasses supply the token/channel mixers.

    Args:
        mixer_factory: ``f(layer_id, num_layers) -> (spatial_mix, channel_mix)`` for each block.
        img_size: nominal input size; with ``patch_size`` it fixes the stored position-embedding grid unless
            ``pos_embed_grid`` is given.
        patch_size: patch (and stride) of the conv patch embedding.
        in_chans: input channels.
        num_classes: classifier outputs (0 = no classifier, ``forward`` returns pooled features).
        global_pool: 'avg' (mean over tokens), 'max', 'avgmax' (their mean, as timm's) or '' (no pooling;
            ``forward_head`` works per token).
        embed_dim: width C.
        depth: number of blocks.
        post_norm: post-norm blocks (norm on the mixer outputs) instead of pre-norm.
        init_values: layer-scale init (None or False = no layer scale; ``timm.create_model`` drops None kwargs,
            so pass False there).
        final_norm: final LayerNorm on the output tokens.
        drop_rate: dropout before the classifier.
        pos_drop_rate: dropout after adding the position embedding.
        drop_path_rate: stochastic depth, linearly increasing from 0 to this over the blocks.
        head_hidden_size: if set (non-zero), a Linear(C, hidden) + Tanh "pre-logits" layer before the classifier
            (VRWKV-L); 0 = none.
        pos_embed_grid: (rows, cols) of the stored position embedding, overriding ``img_size // patch_size``
            (0 = derive from img_size).
        dynamic_img_size, dynamic_img_pad: accepted for timm ViT compatibility; these models always resample the
            position embedding to the input's token grid and pad the image to whole patches (False warns that the
            model stays dynamic).
        device, dtype: where and in what dtype the parameters are made (timm's ``create_model(device=, dtype=)``).
    """

    def __init__(
            self,
            mixer_factory: MixerFactory,
            img_size: Union[int, Tuple[int, int]] = 224,
            patch_size: Union[int, Tuple[int, int]] = 16,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            embed_dim: int = 192,
            depth: int = 12,
            post_norm: bool = False,
            init_values: Optional[float] = None,
            final_norm: bool = True,
            drop_rate: float = 0.0,
            pos_drop_rate: float = 0.0,
            drop_path_rate: float = 0.0,
            head_hidden_size: Optional[int] = None,
            pos_embed_grid: Optional[Union[int, Tuple[int, int]]] = None,
            dynamic_img_size: bool = True,
            dynamic_img_pad: bool = True,
            device: Optional[Union[str, torch.device]] = None,
            dtype: Optional[torch.dtype] = None,
    ):
        super().__init__()
        if not (dynamic_img_size and dynamic_img_pad):
            warnings.warn(f'{type(self).__name__} always takes any image size (the position embedding is resampled '
                          f'and the image zero-padded to whole patches): dynamic_img_size=False / '
                          f'dynamic_img_pad=False leave it so', stacklevel=2)
        with torch.device(device) if device is not None else contextlib.nullcontext():
            self._build(mixer_factory, img_size, patch_size, in_chans, num_classes, global_pool, embed_dim, depth,
                        post_norm, init_values, final_norm, drop_rate, pos_drop_rate, drop_path_rate,
                        head_hidden_size, pos_embed_grid)
        if dtype is not None:
            self.to(dtype=dtype)

    def _build(self, mixer_factory: MixerFactory, img_size: Union[int, Tuple[int, int]],
               patch_size: Union[int, Tuple[int, int]], in_chans: int, num_classes: int, global_pool: str,
               embed_dim: int, depth: int, post_norm: bool, init_values: Optional[float], final_norm: bool,
               drop_rate: float, pos_drop_rate: float, drop_path_rate: float, head_hidden_size: Optional[int],
               pos_embed_grid: Optional[Union[int, Tuple[int, int]]]) -> None:
        self.dynamic_img_size = True  # (timm ViT's flag: any input size; always so here)
        _check_pool(global_pool)
        if depth < 1:
            raise ValueError(f'depth must be >= 1, got {depth}')
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.in_chans = in_chans
        self.num_features = self.embed_dim = embed_dim
        self.head_hidden_size = head_hidden_size or embed_dim
        self.num_prefix_tokens = 0
        self.grad_checkpointing = False
        # training under autocast: the fused mixers' matrices cast once per step for this many blocks together (0:
        # the whole model; None: each mixer in its own node) - see _step_casts
        self.step_cast_blocks: Optional[int] = 0

        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim, img_size=img_size)
        self.patch_size = self.patch_embed.patch_size
        if not pos_embed_grid:
            self.pos_grid = self.patch_embed.feat_size(to_2tuple(img_size))
        else:
            self.pos_grid = tuple(to_2tuple(pos_embed_grid))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.pos_grid[0] * self.pos_grid[1], embed_dim))
        self.pos_drop = nn.Dropout(pos_drop_rate)

        dpr = torch.linspace(0, drop_path_rate, depth, device='cpu').tolist()
        blocks = []
        for i in range(depth):
            spatial_mix, channel_mix = mixer_factory(i, depth)
            blocks.append(Block(
                embed_dim, spatial_mix, channel_mix, first=i == 0, post_norm=post_norm,
                init_values=init_values, drop_path=dpr[i]))
        self.blocks = nn.ModuleList(blocks)
        self.norm = nn.LayerNorm(embed_dim) if final_norm else nn.Identity()

        if head_hidden_size:
            self.pre_logits = nn.Sequential(OrderedDict([
                ('fc', nn.Linear(embed_dim, head_hidden_size)),
                ('act', nn.Tanh()),
            ]))
        else:
            self.pre_logits = nn.Identity()
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.head_hidden_size, num_classes) if num_classes > 0 else nn.Identity()

        r = max(self.patch_size)  # (timm ViT: the larger side of a non-square patch)
        self.feature_info = [dict(module=f'blocks.{i}', num_chs=embed_dim, reduction=r) for i in range(depth)]
        if not self.pos_embed.is_meta:  # meta-device builds (size counting, deferred init) have nothing to fill
            self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        """Linear: trunc normal std .02, zero bias; LayerNorm: weight 1, bias 0 (the original recipe)."""
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    # ------------------------------------------------------------------ timm API
    @torch.jit.ignore
    def no_weight_decay(self) -> Set[str]:
        """Position embedding and every decay / bonus / token-mix interpolation parameter."""
        skip = {'pos_embed'}
        for name, _ in self.named_parameters():
            leaf = name.rsplit('.', 1)[-1]
            if leaf.startswith('spatial_') or leaf.startswith('time_'):
                skip.add(name)
        return skip

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict:
        """Parameter groups for timm's layer-wise lr decay: stem, one group per block, final norm (head last)."""
        return dict(
            stem=r'^pos_embed|^patch_embed',
            blocks=[(r'^blocks\.(\d+)', None), (r'^norm', (99999,))],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block in backward (torch.utils.checkpoint, non-reentrant)."""
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """Replace the final Linear classifier (the VRWKV-L pre-logits layer is kept)."""
        self.num_classes = num_classes
        if global_pool is not None:
            _check_pool(global_pool)
            self.global_pool = global_pool
        ref = self.patch_embed.proj.weight  # (the new classifier on the model's device, in its dtype, as timm's)
        self.head = nn.Linear(self.head_hidden_size, num_classes, device=ref.device, dtype=ref.dtype) \
            if num_classes > 0 else nn.Identity()

    def set_input_size(
            self,
            img_size: Optional[Union[int, Tuple[int, int]]] = None,
            patch_size: Optional[Union[int, Tuple[int, int]]] = None,
    ) -> None:
        """Make ``img_size`` (and ``patch_size``) the model's nominal input, as timm's ``set_input_size``.

        The stored position embedding is resampled once to the new token grid (so forwards at that size skip the
        per-call resize; other sizes still work), and a new patch size resamples the patch-embedding kernel.
        ``img_size=None`` keeps the current nominal size.
        """
        if img_size is None:
            img_size = self._nominal_img_size()
        img_size = tuple(to_2tuple(img_size))
        if len(img_size) != 2 or any(int(s) <= 0 for s in img_size):
            raise ValueError(f'img_size must be a positive (H, W), got {img_size}')
        if patch_size is not None:
            patch_size = tuple(to_2tuple(patch_size))
            if any(int(p) <= 0 for p in patch_size):
                raise ValueError(f'patch_size must be positive, got {patch_size}')
            self.patch_embed.set_patch_size(patch_size)
            self.patch_size = self.patch_embed.patch_size
            for info in self.feature_info:
                info['reduction'] = max(self.patch_size)
        self.patch_embed.img_size = img_size
        new_grid = self.patch_embed.feat_size(img_size)
        if new_grid != tuple(self.pos_grid):
            with torch.no_grad():
                pos = resample_pos_embed(self.pos_embed.detach(), self.pos_grid, new_grid)
            self.pos_embed = nn.Parameter(pos.contiguous(), requires_grad=self.pos_embed.requires_grad)
            self.pos_grid = new_grid
        update_model_input_size(self, img_size, patch_size=patch_size)  # the checkpoint's pretrained_cfg is kept

    def _nominal_img_size(self) -> Tuple[int, int]:
        size = getattr(self, '_traits', {}).get('img_size')
        if size is not None:
            return tuple(size)
        return tuple(g * p for g, p in zip(self.pos_grid, self.patch_size))

    # ------------------------------------------------------------------ forward
    def feature_grid(self, img_size: Tuple[int, int]) -> GridSize:
        """Token grid (rows, cols) for an input image of (H, W)."""
        return self.patch_embed.feat_size(img_size)

    def _embed(self, x: torch.Tensor) -> Tuple[torch.Tensor, GridSize]:
        x = check_image_batch(x, self.in_chans, type(self).__name__, self.patch_embed.proj.weight)
        if fused.fused_enabled(x):
            x, grid = self.patch_embed.forward_tokens(x)
        else:
            x = self.patch_embed(x)
            grid = (x.shape[-2], x.shape[-1])
            x = x.flatten(2).transpose(1, 2)
        x = x + resample_pos_embed(self.pos_embed, self.pos_grid, grid)
        return self.pos_drop(x), grid

    def _run_block(self, block: nn.Module, x: torch.Tensor, grid: GridSize, casts=(None, None)) -> torch.Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled() and not torch.jit.is_scripting():
            return checkpoint(block, x, grid, use_reentrant=False)
        return block(x, grid) if casts == (None, None) else block(x, grid, casts=casts)

    def _chain_fusable(self, x: torch.Tensor) -> bool:
        """Whether the fused pre-norm chain applies: fused kernels on, pre-norm LayerNorm blocks, no checkpointing."""
        if self.grad_checkpointing and torch.is_grad_enabled():
            return False
        if not fused.fused_enabled(x):
            return False
        return all(not b.post_norm and b._fusable() for b in self.blocks)

    @staticmethod
    def _in_place_ok(x: torch.Tensor) -> bool:
        """Whether the residual stream x (this forward's own tensor) may be updated in place: eager inference, x
        contiguous."""
        return not torch.is_grad_enabled() and not torch.compiler.is_compiling() and x.is_contiguous()

    def _owns_residual(self, x: torch.Tensor) -> bool:
        """Whether the post-norm blocks may update the residual stream in place (:meth:`_in_place_ok`) on the fused
        path: fusable blocks without module hooks (they are called without ``__call__``)."""
        if not fused.fused_enabled(x) or not self._in_place_ok(x):  # (fused_enabled first: it answers a fx Proxy)
            return False
        return all(b._fusable() and not (b._forward_hooks or b._forward_pre_hooks) for b in self.blocks)

    def _forward_chain(self, x: torch.Tensor, grid: GridSize) -> torch.Tensor:
        """Pre-norm blocks from ``x = norm0(embedding)`` with every residual add fused with the LayerNorm that follows
        it (the next block's ``norm1``, the final ``norm`` after the last block), the normalised activations written
        once (in the compute dtype, the final ones in the residual's). Returns the final-norm tokens. In eager
        inference the adds write into x (one residual buffer; x is this chain's own tensor)."""
        blocks = self.blocks
        inplace = self._in_place_ok(x)
        # (in the compute dtype, as every later block's norm1 output from the fused adds: half the bytes held
        # through block 0 under autocast)
        h = blocks[0].norm1(x).to(fused.compute_dtype(x))
        final = self.norm if isinstance(self.norm, nn.LayerNorm) else None
        casts = self._step_casts(h)
        for i, block in enumerate(blocks):
            if i + 1 < len(blocks):
                x, h = block.forward_chain(x, h, grid, blocks[i + 1].norm1, inplace=inplace, casts=casts[i])
            else:
                x, h = block.forward_chain(x, h, grid, final, x.dtype, inplace=inplace, casts=casts[i])
        return h if final is not None else self.norm(x)

    def _step_casts(self, h: torch.Tensor) -> List[Tuple[Optional[tuple], Optional[tuple]]]:
        """Per block, the (token mix's, channel mix's) step matrices of a training step under autocast, for
        activations like ``h`` (the mixers' inputs: device, and the compute dtype under autocast) on the fused path
        of fusable blocks (pre-norm chain or post-norm; not with activation checkpointing): every fused mixer's
        weights cast in ONE launch per ``step_cast_blocks`` blocks (0: the whole model) and their gradients cast
        back in one (:func:`~vision_rwkv.ops.cast_weights.cast_weight_groups`) - instead of one launch each way per
        mixer, in its node. A mixer that does not run as one step (``step_cast_request`` None) gets None and casts
        its own; so do all of them outside grad mode (eager inference keeps its casts across forwards), when the
        weights already are in the compute dtype, or with ``step_cast_blocks = None``. With all of a group's
        gradients cast back at once, a DDP all-reduce can start only after the group's backward:
        ``step_cast_blocks = 1`` keeps it per block."""
        none = [(None, None)] * len(self.blocks)
        per = self.step_cast_blocks
        if (per is None or not torch.is_grad_enabled() or torch.compiler.is_compiling() or self.grad_checkpointing
                or not fused.fused_enabled(h)):
            return none
        dtype = fused.compute_dtype(h)
        mixers = [(m if b._fusable() else None) for b in self.blocks for m in (b.spatial_mix, b.channel_mix)]
        requests = [m.step_cast_request(h) if hasattr(m, 'step_cast_request') else None for m in mixers]
        if not any(r is not None and any(w.dtype != dtype for w in r[0]) for r in requests):
            return none
        casts: List[Optional[tuple]] = [None] * len(mixers)
        span = 2 * per if per > 0 else len(mixers)
        for start in range(0, len(mixers), span):
            chunk = [(i, r) for i, r in enumerate(requests[start:start + span], start) if r is not None]
            if not chunk:
                continue
            out = cast_weight_groups([w for _, r in chunk for w in r[0]], dtype, [g for _, r in chunk for g in r[1]])
            pos = 0
            for i, (_, groups, tail) in chunk:
                casts[i] = out[pos:pos + len(groups)] + tail
                pos += len(groups)
        return [(casts[2 * i], casts[2 * i + 1]) for i in range(len(self.blocks))]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Image batch (B, in_chans, H, W) -> final-norm tokens (B, N, C), N = ceil(H/p) * ceil(W/p)."""
        x, grid = self._embed(x)
        if self._chain_fusable(x):
            x = self.blocks[0].norm0(x)  # (rebound: the embedding's output is not held while the chain runs)
            return self._forward_chain(x, grid)
        if self._owns_residual(x):  # post-norm blocks, eager inference: one residual buffer
            x = self.blocks[0].norm0(x)
            for block in self.blocks:
                x = block.forward_body(x, grid, inplace=True)
            return self.norm(x)
        casts = self._step_casts(x)
        for block, cast in zip(self.blocks, casts):
            x = self._run_block(block, x, grid, cast)
        return self.norm(x)

    def forward_features_map(self, x: torch.Tensor) -> torch.Tensor:
        """Image batch -> final-norm feature map (B, C, ceil(H/p), ceil(W/p)) (the original backbone output)."""
        rows, cols = self.feature_grid(x.shape[-2:])
        tokens = self.forward_features(x)
        return tokens.reshape(tokens.shape[0], rows, cols, tokens.shape[-1]).permute(0, 3, 1, 2).contiguous()

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Tokens (B, N, C) -> logits (or the pooled / pre-logits features when ``pre_logits``)."""
        if self.global_pool == 'avg':
            x = x.mean(dim=1)
        elif self.global_pool == 'max':
            x = x.amax(dim=1)
        elif self.global_pool == 'avgmax':
            x = 0.5 * (x.mean(dim=1) + x.amax(dim=1))
        x = self.pre_logits(x)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
            output_dict: bool = False,
            return_prefix_tokens: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]], Dict[str, Any]]:
        """Forward returning block outputs (timm semantics).

        Args:
            x: image batch (B, in_chans, H, W).
            indices: last n blocks if int, all if None, these block indices if a sequence (negative from the end).
            norm: apply the final norm to every intermediate.
            stop_early: stop after the last requested block.
            output_fmt: 'NCHW' (B, C, rows, cols) maps or 'NLC' (B, N, C) tokens.
            intermediates_only: return only the list of intermediates.
            output_dict: return ``{'image_intermediates': [...], 'image_features': final-norm tokens}`` (the
                features left out with ``intermediates_only``), as timm's ViT does.
            return_prefix_tokens: accepted for timm's ViT callers; these models have no prefix tokens.
        Returns:
            the list of intermediates, or (final-norm tokens (B, N, C), intermediates), or the dict.
        """
        if output_fmt not in ('NCHW', 'NLC'):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        x, grid = self._embed(x)
        blocks = self.blocks[:max_index + 1] if stop_early else self.blocks
        intermediates = []
        for i, block in enumerate(blocks):
            x = self._run_block(block, x, grid)
            if i in take_indices:
                intermediates.append(self.norm(x) if norm else x)
        if output_fmt == 'NCHW':
            batch = x.shape[0]
            intermediates = [
                y.reshape(batch, grid[0], grid[1], y.shape[-1]).permute(0, 3, 1, 2).contiguous() for y in intermediates]
        if output_dict:
            return {'image_intermediates': intermediates,
                    **({} if intermediates_only else {'image_features': self.norm(x)})}
        if intermediates_only:
            return intermediates
        return self.norm(x), intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Drop the blocks after the last of ``indices`` (and optionally the final norm / head)."""
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[:max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.pre_logits = nn.Identity()
            self.head_hidden_size = self.embed_dim
            self.reset_classifier(0, '')
        return take_indices
