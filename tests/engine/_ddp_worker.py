"""Shared by test_engine_ddp.py: train a tiny conv net (GroupNorm: SyncBN needs CUDA) on Shapes for a few steps, 1 or 2 processes."""
import os
import signal

import torch
from torch import nn

from vision_rwkv.data.shapes import ShapesClassification
from vision_rwkv.engine import (EpochLoader, Trainer, cleanup_distributed, compile_for_training, convert_sync_batchnorm,
                                init_distributed, seed_everything, unwrap_model, wrap_ddp)


def flip_half(img):
    import random
    import torchvision.transforms.functional as F
    t = F.to_tensor(img)
    return t.flip(-1) if random.random() < 0.5 else t


def build_model() -> nn.Module:
    seed_everything(0)  # same init on every rank
    return nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.GroupNorm(2, 8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 8))


def build_and_train(run_dir: str, global_batch: int, steps: int, accum: int = 1, compile: bool = False,
                    signal_at: tuple[int, int] | None = None, results: list | None = None) -> dict:
    """Train; returns the state dict plus ``allreduce_calls`` (gradient buckets all-reduced, DDP only).
    ``signal_at=(rank, step)``: that rank sends itself SIGTERM after that optimizer step; ``results`` gets fit's
    result appended."""
    info = init_distributed("cpu")
    model = build_model()
    model = wrap_ddp(convert_sync_batchnorm(model, info), info)
    calls = torch.zeros(())
    if info.distributed:
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

        def counting_hook(state, bucket):
            calls.add_(1)
            return allreduce_hook(state, bucket)

        model.register_comm_hook(None, counting_hook)
    model = compile_for_training(model, compile, backend="aot_eager")
    ds = ShapesClassification("train", length=64, image_size=16, transform=flip_half)
    per_rank = global_batch // info.world_size // accum
    loader = EpochLoader(ds, per_rank, seed=5, info=info)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    def loss_fn(m, batch):
        return nn.functional.cross_entropy(m(batch[0]), batch[1])

    def send_signal(t: Trainer) -> None:
        if signal_at is not None and (info.rank, t.step) == tuple(signal_at):
            os.kill(os.getpid(), signal.SIGTERM)

    trainer = Trainer(model, opt, loader, loss_fn, run_dir=run_dir, info=info, max_steps=steps,
                      grad_accum_steps=accum, show_progress=False, ckpt_every_epochs=0, plot=False,
                      after_step=send_signal)
    result = trainer.fit()
    if results is not None:
        results.append(result)
    state = {k: v.clone() for k, v in unwrap_model(model).state_dict().items()}
    state["allreduce_calls"] = calls
    cleanup_distributed()
    return state


def spawn_entry(rank: int, world: int, port: int, run_dir: str, out_path: str, global_batch: int, steps: int,
                accum: int = 1, compile: bool = False):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    state = build_and_train(run_dir, global_batch, steps, accum, compile)
    if rank == 0:
        torch.save(state, out_path)


def spawn_stop_entry(rank: int, world: int, port: int, run_dir: str, out_path: str, signal_at: tuple[int, int],
                     slow_save: float = 0.0):
    """One rank of a 2-process run in which rank ``signal_at[0]`` alone gets SIGTERM after step ``signal_at[1]``;
    each rank saves fit's result to ``out_path.<rank>``, with ``returned_at`` (when fit returned) and, on rank 0,
    ``saved_at`` (when its checkpoint write ended, ``slow_save`` seconds late)."""
    import time

    from vision_rwkv.engine.checkpoint import CheckpointManager
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    saved_at = []
    if rank == 0 and slow_save:
        save = CheckpointManager.save

        def slow(self, *args, **kwargs):
            path = save(self, *args, **kwargs)
            time.sleep(slow_save)
            saved_at.append(time.time())
            return path
        CheckpointManager.save = slow
    results: list = []
    build_and_train(run_dir, 16, 6, signal_at=signal_at, results=results)
    record = {k: v for k, v in results[0].items() if isinstance(v, (int, str, bool))}
    record.update(returned_at=time.time(), saved_at=saved_at[-1] if saved_at else None)
    torch.save(record, f"{out_path}.{rank}")


def spawn_cleanup_entry(rank: int, world: int, port: int, out_path: str, fail_rank: int | None = None,
                        callers_group: bool = False):
    """One rank of a 2-process check of ``cleanup_distributed``: a DDP model, left unreachable in its reference
    cycle by the function that trained it, must be gone when the group is destroyed. Rank ``fail_rank`` calls it with
    an exception on its way out. ``callers_group``: the group is created here, before ``init_distributed`` adopts it
    (cleanup must leave it, and a collective after works). Each rank saves what it saw to ``out_path.<rank>``."""
    import gc
    import json
    import warnings
    import weakref
    from datetime import timedelta

    import torch.distributed as dist
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    gc.disable()  # (the collection must come from cleanup_distributed, not from chance)
    if callers_group:
        dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=60))
    info = init_distributed("cpu", timeout_s=60)

    def train_one_step() -> weakref.ref:
        model = wrap_ddp(build_model(), info)
        model(torch.randn(2, 3, 8, 8)).sum().backward()
        run = {"model": model}
        run["run"] = run  # a cycle, as tools/train.py's training leaves one (its DDP model outlived the function)
        return weakref.ref(model)

    ddp = train_one_step()
    seen = {"alive_before_cleanup": ddp() is not None, "barriers": 0}
    destroy, barrier = dist.destroy_process_group, dist.barrier

    def recording_destroy(*args, **kwargs):
        seen["alive_at_destroy"] = ddp() is not None
        return destroy(*args, **kwargs)

    def counting_barrier(*args, **kwargs):
        seen["barriers"] += 1
        return barrier(*args, **kwargs)

    dist.destroy_process_group, dist.barrier = recording_destroy, counting_barrier
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            try:
                if rank == fail_rank:
                    raise KeyError("this rank failed")
            finally:
                cleanup_distributed()
        except KeyError:
            seen["raised"] = True
    seen["warnings"] = [str(w.message) for w in caught]
    seen["group_left"] = dist.is_initialized()
    if seen["group_left"]:
        total = torch.ones(())
        dist.all_reduce(total)
        seen["all_reduce_after"] = float(total)
        dist.destroy_process_group()
    with open(f"{out_path}.{rank}", "w") as f:
        json.dump(seen, f)
