"""Optimizer and learning-rate schedule of the segmentation recipe: AdamW over layer-decayed parameter groups,
iteration-based poly decay with a linear warm-up (mmseg's `poly` policy with `warmup='linear'`)."""
from __future__ import annotations

from typing import Any, Sequence

import torch

from .segmentor import Segmentor, seg_param_groups

__all__ = ["poly_warmup_factor", "PolyWarmupLR", "build_optimizer"]


def poly_warmup_factor(step: int, max_iters: int, warmup_iters: int = 0, warmup_ratio: float = 1e-6,
                       power: float = 1.0) -> float:
    """Multiplier of the base lr after `step` optimizer steps: (1 - step/max_iters)^power, and during the first
    `warmup_iters` steps additionally 1 - (1 - step/warmup_iters)(1 - warmup_ratio) (linear from warmup_ratio)."""
    step = min(max(step, 0), max_iters)
    factor = (1.0 - step / max_iters) ** power
    if warmup_iters > 0 and step < warmup_iters:
        factor *= 1.0 - (1.0 - step / warmup_iters) * (1.0 - warmup_ratio)
    return factor


class PolyWarmupLR:
    """Per-iteration poly schedule with linear warm-up; each param group decays from its own initial lr
    (base lr x its layer-decay scale) towards `min_lr`. `step()` once per optimizer step; state_dict for resume."""

    def __init__(self, optimizer: torch.optim.Optimizer, max_iters: int, warmup_iters: int = 0,
                 warmup_ratio: float = 1e-6, power: float = 1.0, min_lr: float = 0.0):
        if max_iters < 1:
            raise ValueError(f"max_iters must be >= 1, got {max_iters}")
        if not 0 <= warmup_iters <= max_iters:
            raise ValueError(f"warmup_iters {warmup_iters} must be in [0, max_iters={max_iters}]")
        self.optimizer = optimizer
        self.max_iters, self.warmup_iters = int(max_iters), int(warmup_iters)
        self.warmup_ratio, self.power, self.min_lr = float(warmup_ratio), float(power), float(min_lr)
        for g in optimizer.param_groups:
            g.setdefault("initial_lr", g["lr"])
        self.last_step = 0
        self._apply()

    def lr_at(self, initial_lr: float, step: int) -> float:
        poly = poly_warmup_factor(step, self.max_iters, 0, 1.0, self.power)
        lr = (initial_lr - self.min_lr) * poly + self.min_lr
        if self.warmup_iters > 0 and step < self.warmup_iters:
            lr *= 1.0 - (1.0 - step / self.warmup_iters) * (1.0 - self.warmup_ratio)
        return lr

    def _apply(self) -> None:
        for g in self.optimizer.param_groups:
            g["lr"] = self.lr_at(g["initial_lr"], self.last_step)

    def step(self) -> None:
        self.last_step += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        return {"last_step": self.last_step, "max_iters": self.max_iters, "warmup_iters": self.warmup_iters,
                "warmup_ratio": self.warmup_ratio, "power": self.power, "min_lr": self.min_lr}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.last_step = int(state["last_step"])
        self._apply()


def build_optimizer(model: Segmentor, lr: float, weight_decay: float = 0.01, layer_decay: float | None = None,
                    betas: Sequence[float] = (0.9, 0.999), eps: float = 1e-8,
                    decay_exempt: str = "timm") -> torch.optim.AdamW:
    """AdamW over `seg_param_groups` (``decay_exempt``: the parameters without weight decay) with each group's
    lr = lr x its `lr_scale`."""
    groups = seg_param_groups(model, weight_decay, layer_decay, decay_exempt)
    for g in groups:
        g["lr"] = lr * g["lr_scale"]
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)
