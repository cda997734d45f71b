"""Layers shared by the VRWKV (v4) and VRWKV6 backbones.

* :class:`PatchEmbed` - non-overlapping conv patch embedding that zero-pads the bottom/right edge when the image is
  not a multiple of the patch size (an image smaller than one patch becomes one padded patch).
* :func:`resample_pos_embed` - bicubic resize of a (1, N, C) token grid embedding (align_corners=False, no
  antialias: the interpolation the original models were trained and evaluated with).
* :func:`check_image_batch` - clear errors for malformed image batches.
* :class:`Block` - one residual block: optional ``norm0`` (block 0 only), pre- or post-norm spatial / channel
  mixing, optional layer scale and drop path.

For torch.fx (timm's ``features_only=True, feature_cls='fx'`` and ``timm.models.create_feature_extractor``),
:class:`PatchEmbed` and :class:`Block` are leaf modules and :func:`check_image_batch` / :func:`resample_pos_embed`
leaf functions (timm's ``register_notrace_*``): their shape-dependent code and their kernel dispatch run when the
traced graph runs, so the graph takes any image size and still uses the fused kernels on a GPU.

The mixers (:class:`~vision_rwkv.models.mixing.ChannelMix`, :class:`~vision_rwkv.models.mixing.TimeMixV6`) and the
fancy-init helpers live in :mod:`vision_rwkv.models.mixing` (shared with the RWKV-CLIP text tower); the helpers are
re-exported here.
"""
from __future__ import annotations

import math
from typing import Any, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import (DropPath, LayerScale, register_notrace_function, register_notrace_module,
                         resample_patch_embed, to_2tuple)

from vision_rwkv.ops import fused
from vision_rwkv.ops._validate import is_symbolic

from .mixing import (channel_position, channel_ratio, drop_path_scale, fusable_drop_path, fused_prenorm_step,
                     fuses_residual, layer_ratios, lerp_mix, takes_residual)

__all__ = [
    'PatchEmbed', 'resample_pos_embed', 'check_image_batch', 'Block',
    'layer_ratios', 'channel_ratio', 'channel_position', 'lerp_mix', 'NORM_LAYERS',
]

GridSize = Tuple[int, int]
# the layers mmcv counts as normalisation (its norm_decay_mult, its FLOP counter's norm cost)
NORM_LAYERS = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)


@register_notrace_function
def check_image_batch(x: torch.Tensor, in_chans: int, model_name: str = 'model',
                      weight: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Raise a clear error when ``x`` is not a non-empty floating point (B, in_chans, H, W) batch, or (``weight``: the
    model's first weight) is on another device than the model, or of another floating dtype outside autocast.
    Returns ``x`` (so a traced graph, where this is a leaf call, keeps the check on its data path)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f'{model_name} expects a torch.Tensor image batch, got {type(x).__name__}')
    if x.ndim != 4:
        raise ValueError(
            f'{model_name} expects a 4-D image batch (B, C, H, W); got a {x.ndim}-D tensor of shape '
            f'{tuple(x.shape)}' + (' (add a batch dimension with x.unsqueeze(0))' if x.ndim == 3 else ''))
    if x.shape[1] != in_chans:
        raise ValueError(
            f'{model_name} expects {in_chans} input channels, got {x.shape[1]} (input shape {tuple(x.shape)}); '
            f'create the model with in_chans={x.shape[1]} to change it')
    if x.shape[2] == 0 or x.shape[3] == 0:
        raise ValueError(f'{model_name} got a zero-sized image: input shape {tuple(x.shape)} has H={x.shape[2]}, '
                         f'W={x.shape[3]}')
    if not x.is_floating_point():
        raise TypeError(f'{model_name} expects a floating point image batch, got dtype {x.dtype} '
                        f'(convert with x.float() and normalise first)')
    if weight is None:
        return x
    if x.device != weight.device:
        raise ValueError(f'{model_name} is on {weight.device} but the input batch is on {x.device}; move one of them '
                         f'(x.to("{weight.device}") or model.to("{x.device}"))')
    if x.dtype != weight.dtype and not torch.is_autocast_enabled(x.device.type):
        raise TypeError(f'{model_name} has {weight.dtype} weights but the input batch is {x.dtype}; convert one of '
                        f'them (x.to({weight.dtype}) or model.to({x.dtype})), or run under torch.autocast')
    return x


@register_notrace_module
class PatchEmbed(nn.Module):
    """Conv patch embedding with bottom/right zero padding to a whole number of patches.

    Returns the (B, C, H/p, W/p) feature map (H/p, W/p rounded up). ``img_size`` is the nominal input size: the
    ``grid_size`` / ``num_patches`` timm's ``PatchEmbed`` reports (any other size is taken as well).
    """

    dynamic_img_pad = True  # (timm PatchEmbed's flags: inputs padded to whole patches, any size accepted)
    strict_img_size = False

    def __init__(self, patch_size: int | Tuple[int, int] = 16, in_chans: int = 3, embed_dim: int = 768,
                 img_size: int | Tuple[int, int] = 224):
        super().__init__()
        self.patch_size = to_2tuple(patch_size)
        self.img_size = tuple(to_2tuple(img_size))
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=self.patch_size, stride=self.patch_size, bias=True)

    @property
    def grid_size(self) -> GridSize:
        """Token grid of the nominal ``img_size``."""
        return self.feat_size(self.img_size)

    @property
    def num_patches(self) -> int:
        return self.grid_size[0] * self.grid_size[1]

    def feat_ratio(self, as_scalar: bool = True) -> int | Tuple[int, int]:
        """Input pixels per token (timm's ``PatchEmbed.feat_ratio``)."""
        return max(self.patch_size) if as_scalar else self.patch_size

    def dynamic_feat_size(self, img_size: Tuple[int, int]) -> GridSize:
        """Token grid of an ``img_size`` input (timm's name for :meth:`feat_size`)."""
        return self.feat_size(img_size)

    def set_patch_size(self, patch_size: int | Tuple[int, int]) -> None:
        """Switch to a new patch size, resampling the kernel so patches keep their embeddings as far as possible
        (timm's pseudo-inverse ``resample_patch_embed``, FlexiViT)."""
        patch_size = to_2tuple(patch_size)
        if patch_size == self.patch_size:
            return
        old = self.proj
        new = nn.Conv2d(old.in_channels, old.out_channels, kernel_size=patch_size, stride=patch_size,
                        bias=old.bias is not None, device=old.weight.device, dtype=old.weight.dtype)
        with torch.no_grad():
            new.weight.copy_(resample_patch_embed(old.weight, list(patch_size)))
            if old.bias is not None:
                new.bias.copy_(old.bias)
        new.weight.requires_grad_(old.weight.requires_grad)
        if new.bias is not None:
            new.bias.requires_grad_(old.bias.requires_grad)
        new.train(old.training)
        self.proj = new
        self.patch_size = patch_size

    def feat_size(self, img_size: Tuple[int, int]) -> GridSize:
        """Token grid (rows, cols) produced for an image of ``img_size`` = (H, W)."""
        return tuple(math.ceil(s / p) for s, p in zip(img_size, self.patch_size))

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` zero-padded at the bottom / right to whole patches. (The padding is written as
        ``ceil(h / p) * p - h``: torch.compile with dynamic shapes fails on ``(-h) % p`` once it resizes.)"""
        (h, w), (ph, pw) = x.shape[-2:], self.patch_size
        pad_h, pad_w = (h + ph - 1) // ph * ph - h, (w + pw - 1) // pw * pw - w
        # a symbolic size (torch.export with a dynamic H / W): pad unconditionally (a zero pad is a copy), so the
        # program does not specialise on whether the size is a patch multiple
        if is_symbolic(pad_h, pad_w) or pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self._pad(x))

    def forward_tokens(self, x: torch.Tensor) -> Tuple[torch.Tensor, GridSize]:
        """The same embedding as one GEMM straight into token layout: (B, in_chans, H, W) -> ((B, N, C), grid).

        Patches are cut with a reshape (in the compute dtype) and multiplied by the flattened conv weight, which
        avoids cuDNN's slow implicit-GEMM path for this stride = kernel convolution and the (B, C, H, W) ->
        (B, N, C) transpose copy. Used on the fused GPU path.
        """
        x = self._pad(x)
        b, c, h, w = x.shape
        ph, pw = self.patch_size
        grid = (h // ph, w // pw)
        view = x.reshape(b, c, grid[0], ph, grid[1], pw).permute(0, 2, 4, 1, 3, 5)
        # one copy: cut the patches and cast to the compute dtype together (no intermediate cast of the image)
        patches = torch.empty(view.shape, dtype=fused.compute_dtype(x), device=x.device).copy_(view)
        return F.linear(patches.view(b, grid[0] * grid[1], c * ph * pw), self.proj.weight.flatten(1),
                        self.proj.bias), grid


@register_notrace_function
def resample_pos_embed(pos_embed: torch.Tensor, src_grid: GridSize, dst_grid: GridSize) -> torch.Tensor:
    """Resize a (1, Hs*Ws, C) row-major position embedding to (1, Hd*Wd, C).

    Bicubic, ``align_corners=False``, ``antialias=False`` (what the original models use; timm's
    ``resample_abs_pos_embed`` antialiases by default and differs by ~3e-3). Returns the input when the grids match.
    """
    src_grid, dst_grid = tuple(src_grid), tuple(dst_grid)
    if not is_symbolic(*dst_grid) and src_grid == dst_grid:  # (symbolic: always resize, exact at the same size)
        return pos_embed
    num_tokens, dim = pos_embed.shape[-2:]
    if num_tokens != src_grid[0] * src_grid[1]:
        raise ValueError(f'position embedding has {num_tokens} tokens, not a {src_grid[0]}x{src_grid[1]} grid')
    grid = pos_embed.reshape(1, src_grid[0], src_grid[1], dim).permute(0, 3, 1, 2)
    orig_dtype = grid.dtype
    grid = F.interpolate(grid.float(), size=dst_grid, mode='bicubic', align_corners=False, antialias=False)
    # (cast last: a cast of the NCHW map before the transpose puts a stride guard into a dynamic-size bf16 program)
    return grid.flatten(2).transpose(1, 2).to(orig_dtype)


@register_notrace_module
class Block(nn.Module):
    """One VRWKV block around a spatial (token) mix and a channel mix.

    Pre-norm:  ``x += dp(ls1(spatial(norm1(x))))``; ``x += dp(ls2(channel(norm2(x))))``.
    Post-norm: ``x += dp(ls1(norm1(spatial(x))))``; ``x += dp(ls2(norm2(channel(x))))``.
    Block 0 first applies ``norm0`` to its input. Layer scale exists unless ``init_values`` is None or False
    (pass False through ``timm.create_model``, which drops None-valued kwargs).
    """

    def __init__(
            self,
            dim: int,
            spatial_mix: nn.Module,
            channel_mix: nn.Module,
            first: bool = False,
            post_norm: bool = False,
            init_values: Optional[float] = None,
            drop_path: float = 0.0,
    ):
        super().__init__()
        self.post_norm = post_norm
        self.norm0 = nn.LayerNorm(dim) if first else nn.Identity()
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.spatial_mix = spatial_mix
        self.channel_mix = channel_mix
        layer_scale = init_values is not None and init_values is not False
        self.ls1 = LayerScale(dim, init_values) if layer_scale else nn.Identity()
        self.ls2 = LayerScale(dim, init_values) if layer_scale else nn.Identity()
        self.drop_path1 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.drop_path2 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: torch.Tensor, grid_size: GridSize, casts: Optional[Tuple[Any, Any]] = None) -> torch.Tensor:
        return self.forward_body(self.norm0(x), grid_size, casts=casts)

    def forward_body(self, x: torch.Tensor, grid_size: GridSize, inplace: bool = False,
                     casts: Optional[Tuple[Any, Any]] = None) -> torch.Tensor:
        """The block after ``norm0``. ``inplace`` (eager inference, x handed over by the caller): the fused post-norm
        residual adds write into x. ``casts``: the mixers' step matrices, cast by the caller (see
        :meth:`forward_chain`; the fused path only)."""
        if fused.fused_enabled(x) and self._fusable():
            return self._forward_fused(x, grid_size, inplace, casts)
        if casts is not None and any(c is not None for c in casts):
            raise RuntimeError("Block: casts= given, but the block does not run its fused path")
        if self.post_norm:
            x = x + self.drop_path1(self.ls1(self.norm1(self.spatial_mix(x, grid_size))))
            x = x + self.drop_path2(self.ls2(self.norm2(self.channel_mix(x, grid_size))))
        else:
            x = x + self.drop_path1(self.ls1(self.spatial_mix(self.norm1(x), grid_size)))
            x = x + self.drop_path2(self.ls2(self.channel_mix(self.norm2(x), grid_size)))
        return x

    def _fusable(self) -> bool:
        """The fused residual + LayerNorm kernel covers LayerNorm, LayerScale / Identity and timm DropPath /
        Identity (drop path becomes a per-sample factor of the fused add)."""
        drops_ok = all(fusable_drop_path(m) for m in (self.drop_path1, self.drop_path2))
        scales_ok = all(isinstance(m, (nn.Identity, LayerScale)) for m in (self.ls1, self.ls2))
        return drops_ok and scales_ok and isinstance(self.norm1, nn.LayerNorm) and isinstance(self.norm2, nn.LayerNorm)

    def _gammas(self) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        return tuple(ls.gamma if isinstance(ls, LayerScale) else None for ls in (self.ls1, self.ls2))

    def _forward_fused(self, x: torch.Tensor, grid_size: GridSize, inplace: bool = False,
                       casts: Optional[Tuple[Any, Any]] = None) -> torch.Tensor:
        """Same function with the residual add, layer scale, drop path and LayerNorm of each half fused in one pass
        (post-norm: ``x + dp(g * LN(mix(x)))``; pre-norm: the spatial-mix residual add and ``norm2`` together, whose
        output, read only by the channel mix, is written in the compute dtype) - or, in inference with
        ``VRWKV_FUSED_MIX=1``, in the epilogue of the mixer's last GEMM (:func:`fuses_residual`)."""
        g1, g2 = self._gammas()
        n1, n2 = self.norm1, self.norm2
        if self.post_norm:
            for mixer, gamma, norm, drop_path, cast in ((self.spatial_mix, g1, n1, self.drop_path1, (casts or ())[:1]),
                                                        (self.channel_mix, g2, n2, self.drop_path2, (casts or ())[1:])):
                scale = drop_path_scale(drop_path, x)  # (the mixers draw no random numbers: same draws)
                kw = {'cast': cast[0]} if cast and cast[0] is not None else {}
                # the add + LayerNorm in the mixer's last GEMM (inference) or its one-node step (training); an
                # inplace add (eager inference) only after the mixer, whose operand x is
                if (not inplace and takes_residual(mixer)) or (scale is None and fuses_residual(mixer)):
                    x, _ = mixer(x, grid_size, residual=fused.ResidualNorm(x, gamma, norm.weight, norm.bias, norm.eps,
                                                                           post=True, sample_scale=scale), **kw)
                else:
                    x, _ = fused.add_norm(x, mixer(x, grid_size, **kw), gamma, norm.weight, norm.bias, norm.eps,
                                          post=True, sample_scale=scale, inplace=inplace)
            return x
        return self.forward_chain(x, n1(x), grid_size, None, casts=casts)[0]

    def forward_chain(self, x: torch.Tensor, h: torch.Tensor, grid_size: GridSize,
                      next_norm: Optional[nn.LayerNorm], next_dtype: Optional[torch.dtype] = None,
                      inplace: bool = False, casts: Optional[Tuple[Any, Any]] = None
                      ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Fused pre-norm block inside a chain (see ``VisionRWKVBase.forward_features``): takes the residual ``x``
        and ``h = norm1(x)``, returns the new residual and ``next_norm`` of it (the next block's ``norm1`` or the
        model's final norm, fused into this block's last residual add, output in ``next_dtype``; None: a plain add).
        Needs ``_fusable()`` and pre-norm. ``inplace``: the residual adds write into x (eager inference on a chain
        that owns x). ``casts``: the token and channel mixes' step matrices, cast by the caller (their ``cast=``;
        None for a mixer that casts its own)."""
        g1, g2 = self._gammas()
        kw1, kw2 = ({} if c is None else {'cast': c} for c in (casts or (None, None)))
        return fused_prenorm_step(x, h, lambda t, **kw: self.spatial_mix(t, grid_size, **kw1, **kw),
                                  lambda t, **kw: self.channel_mix(t, grid_size, **kw2, **kw), self.norm2, g1, g2,
                                  next_norm, next_dtype, self.drop_path1, self.drop_path2,
                                  take_residual=(takes_residual(self.spatial_mix), takes_residual(self.channel_mix)),
                                  inplace=inplace)
