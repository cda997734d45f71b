"""RWKV-CLIP text tower: a bidirectional RWKV-6 encoder over CLIP BPE tokens.

Token embedding (no position embedding) -> blocks (pre-norm, `ln0` on block 0) -> `ln_out`; each block is a
time mix (per-head 1-D bidirectional shift, RWKV-6 "ddlerp" token mixing, bidirectional WKV-6, GroupNorm
`ln_x`) and a channel mix (squared-ReLU feed-forward with a sigmoid receptance gate). Both mixers are the classes
of the vision backbones (`vision_rwkv.models.mixing.TimeMixV6` / `ChannelMix`) with the text tower's token shift,
parameter layout, init and eps, so the text tower also runs the fused CUDA kernels where they apply.

The sentence embedding is the mean over ALL positions (padding included) of the L2-normalised token features;
it is not re-normalised. Parameter names follow the original checkpoints (`emb`, `blocks.{i}.att.time_maa_x`, ...)
so original weights load without renaming.
"""
from __future__ import annotations

import math
from typing import Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from vision_rwkv.models.mixing import ChannelMix, TimeMixV6, fused_prenorm_step
from vision_rwkv.ops import fused

__all__ = ["TextBlock", "TextRWKV"]

class TextBlock(nn.Module):
    """Pre-norm block: x += att(ln1(x)); x += ffn(ln2(x)); block 0 first applies `ln0` to the embeddings.

    `att` is the shared RWKV-6 time mix and `ffn` the shared channel mix (`vision_rwkv.models.mixing`) with the
    text tower's settings: per-head 1-D bidirectional shift, the original text parameter layout and init
    (`param_style="rwkv_clip_text"`: (1, 1, C) vectors, `time_maa_{k,r}` weighting the shifted token), no key norm,
    `ln_x` eps `ln_x_eps`, WKV in float32. On CUDA (fused path) the decay, GroupNorm * gate, relu^2, sigmoid gate and
    residual + LayerNorm run as fused kernels; the 1-D shift and its interpolations stay plain PyTorch.
    """

    def __init__(
            self,
            dim: int,
            hidden_dim: int,
            head_size: int,
            layer_idx: int,
            depth: int,
            ln_x_eps: float = 6.4e-4,
            wkv_backend: Optional[str] = None,
    ):
        super().__init__()
        if dim % head_size != 0:
            raise ValueError(f"text width {dim} is not a multiple of head_size {head_size}")
        self.layer_idx = layer_idx
        self.ln0 = nn.LayerNorm(dim) if layer_idx == 0 else None
        self.ln1 = nn.LayerNorm(dim)
        self.ln2 = nn.LayerNorm(dim)
        self.att = TimeMixV6(dim, layer_idx, depth, head_size, key_norm=False, ln_x_eps=ln_x_eps,
                             token_shift="bi_shift_1d", param_style="rwkv_clip_text", fp32_wkv=True,
                             wkv_backend=wkv_backend)
        self.ffn = ChannelMix(dim, layer_idx, depth, hidden_dim, key_norm=False, head_size=head_size,
                              token_shift="bi_shift_1d", param_style="rwkv_clip_text")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.ln0 is not None:
            x = self.ln0(x)
        if fused.fused_enabled(x):
            return self.forward_chain(x, self.ln1(x), None)[0]
        x = x + self.att(self.ln1(x))
        x = x + self.ffn(self.ln2(x))
        return x

    def forward_chain(self, x: torch.Tensor, h: torch.Tensor, next_norm: Optional[nn.LayerNorm],
                      next_dtype: Optional[torch.dtype] = None) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Fused path: residual `x` and `h = ln1(x)` -> (new residual, `next_norm` of it in `next_dtype` or None),
        each residual add fused with the LayerNorm that follows it (`ln2`, then the next block's `ln1` or `ln_out`)."""
        return fused_prenorm_step(x, h, self.att, self.ffn, self.ln2, next_norm=next_norm, next_dtype=next_dtype)


class TextRWKV(nn.Module):
    """Bidirectional RWKV-6 text encoder with the open_clip text-tower interface.

    Args:
        vocab_size: token vocabulary (49408 for CLIP BPE).
        context_length: tokens per text (77); longer inputs are an error, shorter ones are zero-padded to it (as
            the tokenizer pads: the pooled embedding covers every position).
        width: model width C (= joint embedding dim; there is no projection).
        layers: number of blocks.
        head_size: channels per head (64).
        hidden_dim: channel-mix hidden width (default int(3.5 C) rounded down to a multiple of 32).
        head_size_divisor: sets the ln_x GroupNorm eps = 1e-5 * divisor**2 (8 -> 6.4e-4).
        wkv_backend: backend for `bi_wkv6` (None = auto).
    """

    def __init__(
            self,
            vocab_size: int = 49408,
            context_length: int = 77,
            width: int = 640,
            layers: int = 6,
            head_size: int = 64,
            hidden_dim: Optional[int] = None,
            head_size_divisor: float = 8,
            wkv_backend: Optional[str] = None,
    ):
        super().__init__()
        if hidden_dim is None:
            hidden_dim = int((width * 3.5) // 32 * 32)
        self.vocab_size = vocab_size
        self.context_length = context_length
        self.width = width
        self.output_dim = width
        self.head_size = head_size
        self.ln_x_eps = 1e-5 * head_size_divisor ** 2
        self.grad_checkpointing = False

        self.emb = nn.Embedding(vocab_size, width)
        self.blocks = nn.ModuleList([
            TextBlock(width, hidden_dim, head_size, i, layers, ln_x_eps=self.ln_x_eps, wkv_backend=wkv_backend)
            for i in range(layers)
        ])
        self.ln_out = nn.LayerNorm(width)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """Original text init: emb U(+-1e-4); orthogonal Linear weights with per-role gains (att.key/gate 0.1,
        ffn.key 0.5, zero att.output / ffn.value / ffn.receptance); ln_x.weight = ((i+1)/L)^0.7."""
        nn.init.uniform_(self.emb.weight, -1e-4, 1e-4)
        depth = len(self.blocks)
        scales = {"att.key": 0.1, "att.gate": 0.1, "ffn.key": 0.5,
                  "att.output": 0.0, "ffn.value": 0.0, "ffn.receptance": 0.0}
        for i, block in enumerate(self.blocks):
            block.att.reset_parameters()
            block.att.ln_x.reset_parameters()
            block.ffn.reset_parameters()
            for name, module in block.named_modules():
                if not isinstance(module, nn.Linear):
                    continue
                scale = scales.get(name, 1.0)
                out_f, in_f = module.weight.shape
                if scale == 0.0:
                    nn.init.zeros_(module.weight)
                else:
                    gain = math.sqrt(out_f / in_f) if out_f > in_f else 1.0
                    nn.init.orthogonal_(module.weight, gain=gain * scale)
            block.att.ln_x.weight.fill_(((i + 1) / depth) ** 0.7)

    def lock(self, unlocked_layers: int = 0, freeze_layer_norm: bool = True) -> None:
        """Freeze the tower except the last `unlocked_layers` blocks (and `ln_out` when any are unlocked; the token
        embedding too when more than the blocks are, as open_clip's text towers unlock their embedding group last).
        With freeze_layer_norm=False the LayerNorm/GroupNorm parameters of the frozen part stay trainable."""
        frozen = [self.emb, *self.blocks[: max(len(self.blocks) - unlocked_layers, 0)]]
        if unlocked_layers > len(self.blocks):
            frozen = []
        if unlocked_layers <= 0:
            frozen = [self.emb, *self.blocks, self.ln_out]
        for p in self.parameters():  # (each call sets the whole tower, as open_clip's lock does)
            p.requires_grad = True
        for module in frozen:
            for sub in module.modules():
                is_norm = isinstance(sub, (nn.LayerNorm, nn.GroupNorm))
                for p in sub.parameters(recurse=False):
                    p.requires_grad = not freeze_layer_norm and is_norm

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Per-channel mixing/decay/bonus parameters and their low-rank adapters (RWKV practice)."""
        return {n for n, _ in self.named_parameters() if ".time_" in n}

    def _padded(self, text: torch.Tensor) -> torch.Tensor:
        """Checked (B, context_length) token ids (fewer tokens are zero-padded as the tokenizer pads)."""
        if text.dim() != 2:
            raise ValueError(f"text must be (batch, tokens) token ids, got shape {tuple(text.shape)}")
        if text.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"text token ids must be int64 or int32, got dtype {text.dtype}")
        if text.shape[1] > self.context_length:
            raise ValueError(f"text has {text.shape[1]} tokens, more than context_length {self.context_length}")
        if text.device.type == "cpu" and text.numel() and not torch.compiler.is_compiling():
            # (checked where it costs no device sync: on CUDA the embedding's own bounds assert stops a bad id)
            low, high = (int(v) for v in torch.aminmax(text))
            if low < 0 or high >= self.vocab_size:
                raise ValueError(f"text holds token ids outside the vocabulary [0, {self.vocab_size}): min {low}, "
                                 f"max {high} (ids from another tokenizer?)")
        if text.shape[1] < self.context_length:
            # the tokenizer's zero padding: the tower is bidirectional and pools over every position, so a shorter
            # input would otherwise embed differently from its tokenizer output
            text = F.pad(text, (0, self.context_length - text.shape[1]), value=0)
        return text

    def forward_tokens(self, text: torch.Tensor) -> torch.Tensor:
        """(B, T) token ids -> (B, context_length, C) token features after `ln_out` (T < context_length: the ids
        are zero-padded as the tokenizer pads)."""
        x = self.emb(self._padded(text))
        if fused.fused_enabled(x) and not (self.grad_checkpointing and torch.is_grad_enabled()):
            return self._forward_chain(x)
        for block in self.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return self.ln_out(x)

    def _forward_chain(self, x: torch.Tensor) -> torch.Tensor:
        """Fused path: every residual add carries the LayerNorm that follows it (the next block's `ln1`, then
        `ln_out`); returns the `ln_out` tokens (in the residual's dtype, as the LayerNorm would)."""
        blocks = self.blocks
        x = blocks[0].ln0(x)
        h = blocks[0].ln1(x)
        for i, block in enumerate(blocks):
            last = i + 1 == len(blocks)
            x, h = block.forward_chain(x, h, self.ln_out if last else blocks[i + 1].ln1, x.dtype if last else None)
        return h

    def forward_intermediates(
            self,
            text: torch.Tensor,
            indices: Optional[Union[int, list[int]]] = None,
            stop_early: bool = False,
            normalize_intermediates: bool = False,
            intermediates_only: bool = False,
            output_fmt: str = "NLC",
            output_extra_tokens: bool = False,
    ) -> dict[str, Union[torch.Tensor, list[torch.Tensor]]]:
        """open_clip's text-tower `forward_intermediates`: the block outputs picked by timm's `indices` (last n if
        an int, all if None) as (B, context_length, C) `text_intermediates` (`normalize_intermediates`: through
        `ln_out`) and, unless `intermediates_only`, the pooled `text_features` (of the last block run: with
        `stop_early`, of the last one asked for, as open_clip's). No extra (class) tokens: `output_extra_tokens`
        adds nothing."""
        from timm.models._features import feature_take_indices
        if output_fmt != "NLC":
            raise ValueError(f"text intermediates come as NLC, got output_fmt={output_fmt!r}")
        take, last = feature_take_indices(len(self.blocks), indices)
        x = self.emb(self._padded(text))
        intermediates = []
        for i, block in enumerate(self.blocks[: last + 1] if stop_early else self.blocks):
            x = block(x)
            if i in take:
                intermediates.append(self.ln_out(x) if normalize_intermediates else x)
        output: dict[str, Union[torch.Tensor, list[torch.Tensor]]] = {"text_intermediates": intermediates}
        if not intermediates_only:
            output["text_features"] = self.pool(self.ln_out(x))
        return output

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """Sentence embedding: mean over all positions of L2-normalised token features (not re-normalised)."""
        return F.normalize(tokens, dim=-1).mean(dim=1)

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        return self.pool(self.forward_tokens(text))
