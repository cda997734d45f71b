"""RWKV-CLIP text tower: a bidirectional RWKV-6 encoder over CLIP BPE tokens (DESIGN.md §5).

Token embedding (no position embedding) -> blocks (pre-norm, `ln0` on block 0) -> `ln_out`; each block is a
time mix (per-head 1-D bidirectional shift, RWKV-6 "ddlerp" token mixing, bidirectional WKV-6, GroupNorm
`ln_x`) and a channel mix (squared-ReLU feed-forward with a sigmoid receptance gate).

The sentence embedding is the mean over ALL positions (padding included) of the L2-normalised token features;
it is not re-normalised. Parameter names follow the original checkpoints (`emb`, `blocks.{i}.att.time_maa_x`, ...)
so original weights load without renaming.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from vision_rwkv.ops import bi_shift_1d, bi_wkv6

__all__ = ["TextTimeMix", "TextChannelMix", "TextBlock", "TextRWKV"]

MIX_EXTRA_DIM = 32  # low-rank width of the data-dependent token-shift mix (5 targets: w, k, v, r, g)
DECAY_EXTRA_DIM = 64  # low-rank width of the data-dependent decay


def _channel_ratio(dim: int) -> torch.Tensor:
    """x_c = c / C for c in [0, C), shaped (1, 1, C) (the 'fancy' init's channel ratio)."""
    return (torch.arange(dim, dtype=torch.float32) / dim).view(1, 1, dim)


class TextTimeMix(nn.Module):
    """RWKV-6 token mixing with a per-head 1-D bidirectional shift and a bidirectional WKV-6.

    Args:
        dim: model width C.
        head_size: channels per head N (C must be a multiple of N).
        layer_idx, depth: position of the block (used by the init only).
        ln_x_eps: epsilon of the GroupNorm over each head's output (1e-5 * head_size_divisor**2).
        wkv_backend: passed to `vision_rwkv.ops.bi_wkv6` (None = auto).
    """

    def __init__(
            self,
            dim: int,
            head_size: int,
            layer_idx: int,
            depth: int,
            ln_x_eps: float = 6.4e-4,
            wkv_backend: Optional[str] = None,
    ):
        super().__init__()
        if dim % head_size != 0:
            raise ValueError(f"text width {dim} is not a multiple of head_size {head_size}")
        self.dim = dim
        self.head_size = head_size
        self.num_heads = dim // head_size
        self.layer_idx = layer_idx
        self.depth = depth
        self.wkv_backend = wkv_backend

        self.time_maa_x = nn.Parameter(torch.empty(1, 1, dim))
        self.time_maa_w = nn.Parameter(torch.empty(1, 1, dim))
        self.time_maa_k = nn.Parameter(torch.empty(1, 1, dim))
        self.time_maa_v = nn.Parameter(torch.empty(1, 1, dim))
        self.time_maa_r = nn.Parameter(torch.empty(1, 1, dim))
        self.time_maa_g = nn.Parameter(torch.empty(1, 1, dim))
        self.time_maa_w1 = nn.Parameter(torch.empty(dim, 5 * MIX_EXTRA_DIM))
        self.time_maa_w2 = nn.Parameter(torch.empty(5, MIX_EXTRA_DIM, dim))
        self.time_decay = nn.Parameter(torch.empty(1, 1, dim))
        self.time_decay_w1 = nn.Parameter(torch.empty(dim, DECAY_EXTRA_DIM))
        self.time_decay_w2 = nn.Parameter(torch.empty(DECAY_EXTRA_DIM, dim))
        self.time_faaaa = nn.Parameter(torch.empty(self.num_heads, head_size))

        self.receptance = nn.Linear(dim, dim, bias=False)
        self.key = nn.Linear(dim, dim, bias=False)
        self.value = nn.Linear(dim, dim, bias=False)
        self.output = nn.Linear(dim, dim, bias=False)
        self.gate = nn.Linear(dim, dim, bias=False)
        self.ln_x = nn.GroupNorm(self.num_heads, dim, eps=ln_x_eps)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The original 'fancy' init of the text tower (layer-dependent mixes, decays and bonuses)."""
        dim, i, depth = self.dim, self.layer_idx, self.depth
        ratio_0_to_1 = i / max(depth - 1, 1)
        ratio_1_to_almost0 = 1.0 - i / depth
        x = _channel_ratio(dim)
        self.time_maa_x.copy_(1.0 - x.pow(ratio_1_to_almost0))
        self.time_maa_w.copy_(1.0 - x.pow(ratio_1_to_almost0))
        self.time_maa_k.copy_(1.0 - x.pow(ratio_1_to_almost0))
        self.time_maa_v.copy_(1.0 - (x.pow(ratio_1_to_almost0) + 0.3 * ratio_0_to_1))
        self.time_maa_r.copy_(1.0 - x.pow(0.5 * ratio_1_to_almost0))
        self.time_maa_g.copy_(1.0 - x.pow(0.5 * ratio_1_to_almost0))
        self.time_maa_w1.zero_()
        self.time_maa_w2.uniform_(-0.01, 0.01)
        n = torch.arange(dim, dtype=torch.float32) / max(dim - 1, 1)
        self.time_decay.copy_((-6.0 + 5.0 * n.pow(0.7 + 1.3 * ratio_0_to_1)).view(1, 1, dim))
        self.time_decay_w1.zero_()
        self.time_decay_w2.uniform_(-0.01, 0.01)
        zigzag = 0.1 * (((torch.arange(dim) + 1) % 3) - 1).float()
        self.time_faaaa.copy_((ratio_0_to_1 * (1.0 - n) + zigzag).view(self.num_heads, self.head_size))
        self.ln_x.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        H, N = self.num_heads, self.head_size
        xx = bi_shift_1d(x, N) - x
        xxx = x + xx * self.time_maa_x
        # data-dependent lerp amounts for the five targets (w, k, v, r, g), each (B, T, C)
        mix = torch.tanh(xxx @ self.time_maa_w1).view(B * T, 5, MIX_EXTRA_DIM).transpose(0, 1)
        mw, mk, mv, mr, mg = torch.bmm(mix, self.time_maa_w2).view(5, B, T, C).unbind(0)
        xw = x + xx * (self.time_maa_w + mw)
        xk = x + xx * (self.time_maa_k + mk)
        xv = x + xx * (self.time_maa_v + mv)
        xr = x + xx * (self.time_maa_r + mr)
        xg = x + xx * (self.time_maa_g + mg)

        r = self.receptance(xr)
        k = self.key(xk)
        v = self.value(xv)
        g = F.silu(self.gate(xg))
        w = self.time_decay + torch.tanh(xw @ self.time_decay_w1) @ self.time_decay_w2

        # the WKV runs in fp32 (decays near 1 need it); log of the per-step decay is -exp(w)
        logd = -torch.exp(w.float())
        y = bi_wkv6(
            r.float().view(B, T, H, N),
            k.float().view(B, T, H, N),
            v.float().view(B, T, H, N),
            logd.view(B, T, H, N),
            self.time_faaaa.float(),
            backend=self.wkv_backend,
        )
        y = self.ln_x(y.reshape(B * T, C)).view(B, T, C)
        return self.output(y.to(g.dtype) * g)


class TextChannelMix(nn.Module):
    """Feed-forward with the bidirectional shift: sigmoid(R xr) * V relu(K xk)^2."""

    def __init__(self, dim: int, hidden_dim: int, head_size: int, layer_idx: int, depth: int):
        super().__init__()
        self.dim = dim
        self.head_size = head_size
        self.layer_idx = layer_idx
        self.depth = depth
        self.time_maa_k = nn.Parameter(torch.empty(1, 1, dim))
        self.time_maa_r = nn.Parameter(torch.empty(1, 1, dim))
        self.key = nn.Linear(dim, hidden_dim, bias=False)
        self.receptance = nn.Linear(dim, dim, bias=False)
        self.value = nn.Linear(hidden_dim, dim, bias=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        x = _channel_ratio(self.dim)
        ratio_1_to_almost0 = 1.0 - self.layer_idx / self.depth
        self.time_maa_k.copy_(1.0 - x.pow(ratio_1_to_almost0))
        self.time_maa_r.copy_(1.0 - x.pow(ratio_1_to_almost0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xx = bi_shift_1d(x, self.head_size) - x
        xk = x + xx * self.time_maa_k
        xr = x + xx * self.time_maa_r
        k = torch.relu(self.key(xk)).square()
        return torch.sigmoid(self.receptance(xr)) * self.value(k)


class TextBlock(nn.Module):
    """Pre-norm block: x += att(ln1(x)); x += ffn(ln2(x)); block 0 first applies `ln0` to the embeddings."""

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
        self.layer_idx = layer_idx
        self.ln0 = nn.LayerNorm(dim) if layer_idx == 0 else None
        self.ln1 = nn.LayerNorm(dim)
        self.ln2 = nn.LayerNorm(dim)
        self.att = TextTimeMix(dim, head_size, layer_idx, depth, ln_x_eps=ln_x_eps, wkv_backend=wkv_backend)
        self.ffn = TextChannelMix(dim, hidden_dim, head_size, layer_idx, depth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.ln0 is not None:
            x = self.ln0(x)
        x = x + self.att(self.ln1(x))
        x = x + self.ffn(self.ln2(x))
        return x


class TextRWKV(nn.Module):
    """Bidirectional RWKV-6 text encoder with the open_clip text-tower interface.

    Args:
        vocab_size: token vocabulary (49408 for CLIP BPE).
        context_length: tokens per text (77); longer inputs are an error.
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
        """Freeze the tower except the last `unlocked_layers` blocks (and `ln_out` when any are unlocked).
        With freeze_layer_norm=False the LayerNorm/GroupNorm parameters of the frozen part stay trainable."""
        frozen = [self.emb, *self.blocks[: len(self.blocks) - unlocked_layers]]
        if unlocked_layers <= 0:
            frozen = [self.emb, *self.blocks, self.ln_out]
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

    def forward_tokens(self, text: torch.Tensor) -> torch.Tensor:
        """(B, T) token ids -> (B, T, C) token features after `ln_out`."""
        if text.dim() != 2:
            raise ValueError(f"text must be (batch, tokens) token ids, got shape {tuple(text.shape)}")
        if text.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"text must hold integer token ids, got dtype {text.dtype}")
        if text.shape[1] > self.context_length:
            raise ValueError(f"text has {text.shape[1]} tokens, more than context_length {self.context_length}")
        x = self.emb(text)
        for block in self.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return self.ln_out(x)

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """Sentence embedding: mean over all positions of L2-normalised token features (not re-normalised)."""
        return F.normalize(tokens, dim=-1).mean(dim=1)

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        return self.pool(self.forward_tokens(text))
