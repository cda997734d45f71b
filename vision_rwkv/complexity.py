"""Parameters and multiply-accumulates (MACs, the "FLOPs" of the Vision-RWKV and DeiT papers) of one backbone forward.

Counted as the original repo's ``get_flops_backbone.py`` counts (mmcv's ``get_model_complexity_info`` plus its own
terms for the operators mmcv cannot see):

- every matrix product and convolution, from torch's FLOP counter (its FLOPs halved: one multiply-add is one MAC),
  including attention's ``q k^T`` and ``attn v`` (2 N^2 C a block; timm's fused attention is switched off on the
  counted copy so that they show as products) and the RWKV-6 LoRA products;
- normalisation layers as mmcv counts them: their input elements, twice with an affine transform;
- each WKV by the original's per-token formula instead of its implementation's own arithmetic: ``29 C`` per token
  for the v4 Bi-WKV (with the Q-Shift and mixing around it), ``(7 N + 17) C + 5 r_mix + r_decay`` for RWKV-6
  (head size N, LoRA ranks r).

The model is built and run on the ``meta`` device (shapes only), so any resolution is counted in well under a second.
Activations, softmax, residual adds and the head are not counted (mmcv counts neither GELU nor the squared ReLU).
"""
from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass
from typing import Any, Iterator, Sequence

import torch
import torch.nn as nn

__all__ = ["ModelComplexity", "count_complexity", "v4_wkv_macs", "v6_wkv_macs"]


@dataclass
class ModelComplexity:
    """One model at one input size: ``params`` (all of the model's parameters, head included), ``tokens`` (of the
    backbone's sequence), and the forward's MACs split by where they come from (``total`` = their sum)."""
    model: str
    img_size: tuple[int, int]
    params: int
    tokens: int
    matmul_macs: int
    norm_macs: int
    wkv_macs: int

    @property
    def total(self) -> int:
        return self.matmul_macs + self.norm_macs + self.wkv_macs

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "img_size": list(self.img_size), "total_macs": self.total,
                "params_M": self.params / 1e6, "GMACs": self.total / 1e9}


def v4_wkv_macs(tokens: int, channels: int) -> int:
    """The original's count of one v4 spatial mix outside its products: 29 per token and channel."""
    return 29 * tokens * channels


def v6_wkv_macs(tokens: int, channels: int, head_size: int, mix_rank: int, decay_rank: int) -> int:
    """The original's count of one RWKV-6 time mix outside its products: ``(7 head_size + 17)`` per token and
    channel, and the LoRAs' tanh, ``5 mix_rank + decay_rank`` per token."""
    return tokens * channels * (7 * head_size + 17) + tokens * (5 * mix_rank + decay_rank)


@contextlib.contextmanager
def _formula_hooks(model: nn.Module, counts: dict[str, int]) -> Iterator[None]:
    """Forward hooks that add the norms' and the WKVs' counts, and WKV stand-ins (the value tensor back, no
    arithmetic) so that the operators' own products are not counted."""
    from unittest import mock

    from vision_rwkv.models import mixing, vrwkv
    from vision_rwkv.models._layers import NORM_LAYERS

    def norm_hook(module: nn.Module, inputs: tuple, _out: Any) -> None:
        affine = any(p is not None for p in (getattr(module, "weight", None), getattr(module, "bias", None)))
        counts["norm"] += inputs[0].numel() * (2 if affine else 1)

    def v4_hook(module: nn.Module, inputs: tuple, _out: Any) -> None:
        b, t, c = inputs[0].shape
        counts["wkv"] += b * v4_wkv_macs(t, c)

    def v6_hook(module: nn.Module, inputs: tuple, _out: Any) -> None:
        b, t, c = inputs[0].shape
        counts["wkv"] += b * v6_wkv_macs(t, c, module.head_size, module.mix_rank, module.time_decay_w1.shape[1])

    handles, unfused = [], []
    for module in model.modules():
        if isinstance(module, NORM_LAYERS):
            handles.append(module.register_forward_hook(norm_hook))
        elif isinstance(module, vrwkv.SpatialMix):
            handles.append(module.register_forward_hook(v4_hook))
        elif isinstance(module, mixing.TimeMixV6):
            handles.append(module.register_forward_hook(v6_hook))
        if getattr(module, "fused_attn", None) is True:  # (timm's Attention: count q k^T and attn v as products)
            module.fused_attn = False
            unfused.append(module)

    def no_arithmetic(*args: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return _value_of(args)

    try:
        with mock.patch.object(vrwkv, "bi_wkv", no_arithmetic), mock.patch.object(mixing, "bi_wkv6", no_arithmetic):
            yield
    finally:
        for h in handles:
            h.remove()
        for module in unfused:
            module.fused_attn = True


def _value_of(args: Sequence[torch.Tensor]) -> torch.Tensor:
    """The value tensor of a WKV call (v4: ``(w, u, k, v)``; v6: ``(r, k, v, logd, u)``): the output's shape."""
    return (args[3] if args[0].dim() <= 2 else args[2]).clone()


def count_complexity(model: str | nn.Module, img_size: int | Sequence[int] = 224, batch: int = 1,
                     **kwargs: Any) -> ModelComplexity:
    """Parameters and MACs (module docstring) of ``forward_features`` on a ``batch`` of ``img_size`` images.

    ``model``: a timm model name (built on the meta device at ``img_size``, with ``kwargs``; a model without an
    ``img_size`` argument, a CNN, is built without one) or a built model (counted as it is, and left as it was:
    give it on the meta device to avoid computing). Raises ValueError for an unknown name."""
    import timm
    from torch.utils.flop_counter import FlopCounterMode

    h, w = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    if isinstance(model, str):
        name = model
        if not timm.is_model(name):
            raise ValueError(f"unknown model {name!r} (not a timm model name; vision_rwkv registers vrwkv_* / "
                             f"vrwkv6_*)")
        with torch.device("meta"):
            try:
                net = timm.create_model(name, img_size=(h, w), **kwargs)
            except TypeError as err:
                if "img_size" not in str(err):
                    raise
                net = timm.create_model(name, **kwargs)
    else:
        name, net = type(model).__name__, model
    was_training = net.training
    net.eval()
    device = next(net.parameters()).device
    x = torch.empty(batch, 3, h, w, device=device)
    counts = {"norm": 0, "wkv": 0}
    flops = FlopCounterMode(display=False)
    try:
        with torch.no_grad(), _formula_hooks(net, counts), flops:
            feats = net.forward_features(x)
    finally:
        net.train(was_training)
    tokens = int(feats.shape[1]) if feats.dim() == 3 else int(feats.shape[-1] * feats.shape[-2])
    return ModelComplexity(model=name, img_size=(h, w), params=sum(p.numel() for p in net.parameters()),
                           tokens=tokens, matmul_macs=flops.get_total_flops() // 2 // batch,
                           norm_macs=counts["norm"] // batch, wkv_macs=counts["wkv"] // batch)
