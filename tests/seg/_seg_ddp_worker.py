"""Spawned by test_ddp.py: one rank of a 2-process (gloo, CPU) train_segmentor run."""
import json
import os


def spawn_entry(rank: int, world: int, port: int, overrides: list, out: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    import torch
    torch.set_num_threads(1)
    from vision_rwkv.seg import load_seg_config, train_segmentor
    from test_train import DEMO  # noqa: the tiny config lives with the single-process tests
    result = train_segmentor(load_seg_config(DEMO, overrides))
    if rank == 0:
        with open(out, "w") as f:
            json.dump({k: v for k, v in result.items() if k in ("step", "mIoU", "mAcc", "aAcc")}, f)
