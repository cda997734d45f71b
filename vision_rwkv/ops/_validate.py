"""Input checks shared by the operators (clear errors that name the problem)."""
from __future__ import annotations

import contextlib
import operator

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def is_symbolic(*sizes) -> bool:
    """Whether any of ``sizes`` is a symbolic int (a dynamic dimension while torch.export / torch.compile traces):
    branching on it would specialise the program to the example's value."""
    return any(isinstance(s, torch.SymInt) for s in sizes)


def check_tensors(op: str, **tensors: torch.Tensor) -> torch.device:
    """Every argument is a floating tensor of a supported dtype on one device; returns that device."""
    device = None
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{op}: {name} has dtype {t.dtype}; expected one of float16, bfloat16, float32, float64")
        if device is None:
            device, first = t.device, name
        elif t.device != device:
            raise ValueError(f"{op}: {name} is on {t.device} but {first} is on {device}; move all inputs to one device")
    return device


def check_shape(op: str, name: str, t: torch.Tensor, shape: tuple) -> None:
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{op}: {name} has shape {tuple(t.shape)}, expected {tuple(shape)}")


def check_chunks(op: str, chunks) -> int:
    """``chunks`` (the "original" mode's chunk count P) as an int >= 1: any integer type (a NumPy integer too), not a
    bool; else a ValueError naming ``op``."""
    if not isinstance(chunks, bool):
        try:
            value = chunks if type(chunks) is int else operator.index(chunks)
        except TypeError:
            value = None
        if value is not None and value >= 1:
            return value
    raise ValueError(f"{op}: chunks must be an int >= 1, got {chunks!r}")


def no_autocast(t: torch.Tensor):
    """Context that switches autocast off on ``t``'s device: the references accumulate in fp32 (or float64)
    whatever autocast region the model runs in."""
    if t.device.type in ("cpu", "cuda"):
        return torch.autocast(device_type=t.device.type, enabled=False)
    return contextlib.nullcontext()


def reference_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """The dtype a reference computes in (not ``fused.compute_dtype``, the autocast dtype of a matmul): fp32, or
    float64 when any input is float64 (one float64 argument among
    fp32 ones gave a float64 output of fp32 accuracy)."""
    dt = torch.float32
    for t in tensors:
        dt = torch.promote_types(dt, t.dtype)
    return dt
