"""2-process DDP (gloo, CPU) segmentation training: it runs, and the distributed mIoU (confusion matrices of the
two evaluation shards summed) equals a single-process evaluation of rank 0's final weights (so rank 1, which
evaluated its own shard, held the same weights)."""
import json
import socket
import sys
from pathlib import Path

import pytest
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).parent))
import _seg_ddp_worker  # noqa: E402
from test_train import DEMO, TINY  # noqa: E402

from vision_rwkv.engine import load_model_weights  # noqa: E402
from vision_rwkv.seg import evaluate_segmentor, load_seg_config  # noqa: E402
from vision_rwkv.seg.train import build_datasets, build_segmentor  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # two spawned interpreters import torch + timm + albumentations
def test_two_process_training_and_distributed_metrics(tmp_path):
    overrides = [*TINY, f"train.run_dir={tmp_path}", "data.batch_size=2", "optim.max_iters=3",
                 "train.ckpt_every=null", "data.val_length=5"]  # 5 images: shards of 3 and 2
    out = tmp_path / "result.json"
    mp.spawn(_seg_ddp_worker.spawn_entry, args=(2, _free_port(), overrides, str(out)), nprocs=2, join=True)
    ddp = json.loads(out.read_text())
    assert ddp["step"] == 3
    cfg = load_seg_config(DEMO, overrides)
    val = build_datasets(cfg, ("val",))["val"]
    model = build_segmentor(cfg, val.num_classes, load_pretrained=False)
    load_model_weights(model, tmp_path / "checkpoints" / "best.pt")
    single = evaluate_segmentor(model, val, mode=cfg.test.mode, crop_size=list(cfg.test.crop_size),
                                stride=list(cfg.test.stride), show_progress=False)
    for k in ("mIoU", "mAcc", "aAcc"):
        assert ddp[k] == pytest.approx(single[k], rel=1e-9, abs=1e-9), k
