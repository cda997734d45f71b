"""Distributed helpers: one code path for a single process and for ``torchrun`` (DDP; gloo on CPU, nccl on CUDA).

``init_distributed()`` reads torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``); without it (or with ``WORLD_SIZE=1``) it returns a single-process :class:`DistInfo`. All the
reduce helpers are no-ops in a single process, so callers never branch on it.
"""
from __future__ import annotations

import builtins
import gc
import os
import sys
import warnings
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "DistInfo", "init_distributed", "cleanup_distributed", "is_dist", "get_rank", "get_world_size", "is_main_process",
    "barrier", "all_reduce_sum", "all_reduce_mean", "reduce_dict", "all_gather_object", "broadcast_object",
    "print_rank0", "warn_rank0", "per_block_weight_casts", "wrap_ddp", "unwrap_model", "convert_sync_batchnorm",
    "launch_rank", "launch_local_rank",
]


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: rank, world size, local rank and its device."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _pick_device(device: str | torch.device | None, local_rank: int) -> torch.device:
    if device is None or str(device) == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
    return device


# Whether the process group was created by init_distributed (and so is destroyed by cleanup_distributed); a group
# the caller created is adopted and left to the caller.
_CREATED_GROUP = False


def init_distributed(device: str | torch.device | None = "auto", backend: str | None = None,
                     timeout_s: float = 1800.0) -> DistInfo:
    """Initialise the process group when launched by torchrun; else single process. A group the caller already
    initialised is adopted: :func:`cleanup_distributed` leaves it to the caller.

    ``device``: "auto" (CUDA if available), "cpu", "cuda"; under torchrun CUDA ranks use ``cuda:LOCAL_RANK``.
    ``backend``: default nccl for CUDA, gloo for CPU.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = _pick_device(device, local_rank)
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, dev)
    if world_size <= 1:
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        return DistInfo(0, 1, 0, dev)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    backend = backend or ("nccl" if dev.type == "cuda" else "gloo")
    dist.init_process_group(backend=backend, rank=rank, world_size=world_size, timeout=timedelta(seconds=timeout_s))
    global _CREATED_GROUP
    _CREATED_GROUP = True
    return DistInfo(rank, world_size, local_rank, dev)


def cleanup_distributed() -> None:
    """End a run: destroy the process group :func:`init_distributed` created (one the caller created before the run
    was adopted and stays, e.g. for several runs in one torchrun process: PyTorch cannot reliably create a group
    again in a process), in an order that lets every rank exit cleanly, and free what the run left in reference
    cycles (every trainer and evaluator calls it last).

    1. Garbage is collected first. A run's model can sit in a reference cycle after its function has returned:
       the first plot of a process imports matplotlib, whose import-time exceptions keep their tracebacks, and those
       frames hold the training function's. Uncollected, it would keep its memory (on a GPU too) until some later
       collection, and a DDP model's reducer would keep the group's gloo threads alive into interpreter shutdown,
       where they can abort the process (``terminate called without an active exception``; pytorch/pytorch#179291).
    2. Unless an exception is on its way out, the ranks meet at a barrier, so no rank closes its connections while
       another still talks to it. A rank that fails skips it; a peer's failure there is a warning, not an error.
    """
    global _CREATED_GROUP
    gc.collect()
    if not is_dist() or not _CREATED_GROUP:
        return
    if sys.exc_info()[0] is None:
        _final_barrier()
    dist.destroy_process_group()
    _CREATED_GROUP = False


def _final_barrier() -> None:
    """Wait for every rank before the group goes; a rank that left or failed is reported, not raised."""
    try:
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()
    except Exception as e:  # (a peer that raised already reports its own error)
        warnings.warn(f"rank {dist.get_rank()}: the final barrier before destroying the process group failed "
                      f"({type(e).__name__}: {e}); another rank probably stopped early", RuntimeWarning, stacklevel=3)


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_dist() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def _launch_env(name: str, default: int) -> int:
    """torchrun's integer variable ``name`` (``default`` when unset or not an integer)."""
    try:
        return int(os.environ.get(name) or default)
    except ValueError:
        return default


def launch_rank() -> int:
    """This process's rank in its launch: torchrun's ``RANK`` (0 when not launched by torchrun). Unlike
    :func:`get_rank` it holds before the process group is initialised and after it is destroyed: the tools' final
    summaries and error lines use it."""
    return _launch_env("RANK", 0)


def launch_local_rank() -> tuple[int, int]:
    """This process's place on its node: torchrun's ``(LOCAL_RANK, LOCAL_WORLD_SIZE)`` ((0, 1) without torchrun)."""
    return _launch_env("LOCAL_RANK", 0), _launch_env("LOCAL_WORLD_SIZE", 1)


def barrier() -> None:
    if is_dist():
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum of ``t`` over ranks (a new tensor; ``t`` itself is left unchanged)."""
    t = t.detach().clone()
    if is_dist():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_max(t: torch.Tensor) -> torch.Tensor:
    """Elementwise maximum of ``t`` over ranks (a new tensor)."""
    t = t.detach().clone()
    if is_dist():
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean of ``t`` over ranks (a new tensor)."""
    return all_reduce_sum(t) / get_world_size()


def reduce_dict(values: dict[str, float], device: torch.device | str = "cpu", average: bool = True) -> dict[str, float]:
    """All-reduce a dict of python numbers (mean or sum over ranks); same keys on every rank required."""
    if not is_dist() or not values:
        return {k: float(v) for k, v in values.items()}
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    t = all_reduce_sum(t)
    if average:
        t /= get_world_size()
    return dict(zip(keys, t.tolist()))


def all_gather_object(obj: Any) -> list[Any]:
    """List of ``obj`` from every rank (``[obj]`` in a single process)."""
    if not is_dist():
        return [obj]
    out: list[Any] = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` of rank ``src`` on every rank."""
    if not is_dist():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def print_rank0(*args: Any, **kwargs: Any) -> None:
    """``print`` on rank 0 only."""
    if is_main_process():
        builtins.print(*args, **kwargs, flush=True)


def warn_rank0(message: str, category: type[Warning] = UserWarning, stacklevel: int = 2) -> None:
    """``warnings.warn`` on rank 0 only: for what every rank would say alike (a resume's changed settings), so
    that torchrun prints it once."""
    if is_main_process():
        warnings.warn(message, category, stacklevel=stacklevel + 1)


def per_block_weight_casts(model: nn.Module) -> int:
    """Set every Vision-RWKV backbone inside ``model`` that casts its mixers' weights once per training step for the
    whole model (``step_cast_blocks == 0``) to one cast per block, so that DDP can all-reduce a block's gradients
    while the backward goes on (a whole-model cast hands every weight gradient over at the backward's end). Returns
    how many it changed."""
    changed = 0
    for m in model.modules():
        if getattr(m, "step_cast_blocks", None) == 0:
            m.step_cast_blocks = 1
            changed += 1
    return changed


def wrap_ddp(model: nn.Module, info: DistInfo, find_unused_parameters: bool = False, **kwargs: Any) -> nn.Module:
    """Move ``model`` to ``info.device`` and wrap it in DistributedDataParallel when distributed (then with the
    backbones' weight casts per block: :func:`per_block_weight_casts`)."""
    model = model.to(info.device)
    if not info.distributed:
        return model
    per_block_weight_casts(model)
    device_ids = [info.device.index] if info.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids,
                                               find_unused_parameters=find_unused_parameters, **kwargs)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module inside DDP / torch.compile wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def convert_sync_batchnorm(model: nn.Module, info: DistInfo | None = None) -> nn.Module:
    """BatchNorm -> SyncBatchNorm when running distributed on CUDA. A no-op in a single process, and on CPU, where
    PyTorch's DDP refuses SyncBatchNorm ("only work with GPU modules"): CPU ranks keep per-rank BatchNorm."""
    distributed = info.distributed if info is not None else is_dist()
    device = info.device if info is not None else next(model.parameters(), torch.empty(0)).device
    if distributed and torch.device(device).type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model
