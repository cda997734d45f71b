"""Mixed precision: one name ("fp32" | "bf16" | "fp16") -> an autocast context and a GradScaler.

fp16 uses a GradScaler (dynamic loss scaling); fp32 and bf16 get a disabled scaler, so callers always call
``scaler.scale(loss).backward()`` / ``scaler.step(opt)`` / ``scaler.update()`` the same way.
"""
from __future__ import annotations

import contextlib
from typing import ContextManager

import torch

__all__ = ["PRECISIONS", "check_precision", "autocast", "make_grad_scaler", "precision_dtype"]

PRECISIONS = ("fp32", "bf16", "fp16")
_ALIASES = {"float32": "fp32", "32": "fp32", "bfloat16": "bf16", "float16": "fp16", "16": "fp16", "amp": "fp16",
            "amp_bf16": "bf16", "amp_bfloat16": "bf16"}


def check_precision(precision: str) -> str:
    """Normalise a precision name; unknown names raise ValueError."""
    p = _ALIASES.get(str(precision).lower(), str(precision).lower())
    if p not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected one of {PRECISIONS}")
    return p


def precision_dtype(precision: str) -> torch.dtype:
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[check_precision(precision)]


def autocast(precision: str, device: torch.device | str = "cpu") -> ContextManager:
    """Autocast context for ``precision`` on ``device`` (a no-op for fp32)."""
    p = check_precision(precision)
    if p == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=precision_dtype(p))


def make_grad_scaler(precision: str, device: torch.device | str = "cpu") -> torch.amp.GradScaler:
    """GradScaler enabled only for fp16."""
    p = check_precision(precision)
    return torch.amp.GradScaler(torch.device(device).type, enabled=(p == "fp16"))
