"""tools/train_clip.py: YAML config with _base_, overrides, --resume latest, and DDP under torchrun (2 gloo
processes) giving the same loss curve as one process at the same global batch, with colour-grouped batches."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from vision_rwkv.engine import read_metrics_csv

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))

TINY_YAML = """\
_base_: {base}
run_dir: {run_dir}
model:
  kwargs:
    embed_dim: 32
    vision_cfg: {{embed_dim: 32, depth: 1, image_size: 16, patch_size: 4, head_size: 16, mlp_ratio: 2.0}}
    text_cfg: {{width: 32, layers: 1, head_size: 16, hidden_dim: 64, context_length: 16}}
data:
  shapes_length: 96
  shapes_image_size: 16
  shapes_group_by: color     # hard-negative groups of 4 (one per rank and step under DDP)
  shapes_group_size: 4
  augment: true
train:
  batch_size: 8
  max_steps: 4
  ckpt_every_steps: 2
  log_every: 1
  tensorboard: false
  show_progress: false
  threads: 1
  device: cpu
eval:
  shapes_image_size: 16
  zero_shot: {{data: none}}
  retrieval: {{data: none}}
"""


def _write_cfg(tmp_path: Path, run_dir: Path) -> Path:
    p = tmp_path / f"{run_dir.name}.yaml"
    p.write_text(TINY_YAML.format(base=ROOT / "configs" / "clip" / "demo_shapes.yaml", run_dir=run_dir))
    return p


def test_cli_config_overrides_and_resume_latest(tmp_path):
    import train_clip as cli
    run = tmp_path / "run"
    cfg = _write_cfg(tmp_path, run)
    first = cli.main(["--config", str(cfg), "train.max_steps=2"])
    assert first["step"] == 2 and (run / "result.json").is_file() and (run / "config.yaml").is_file()
    with pytest.warns(UserWarning, match="schedule follows the new length"):
        second = cli.main(["--config", str(cfg), "train.max_steps=4", "--resume", "latest"])
    assert second["step"] == 4
    assert [h["step"] for h in second["history"]] == [3, 4]
    assert json.loads((run / "result.json").read_text())["step"] == 4
    assert [int(r["step"]) for r in read_metrics_csv(run / "train_metrics.csv")] == [1, 2, 3, 4]
    with pytest.raises(Exception, match="optim.nope"):
        cli.main(["--config", str(cfg), "optim.nope=1"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ddp_two_gloo_processes_match_one_process(tmp_path):
    import train_clip as cli
    one, two = tmp_path / "one", tmp_path / "two"
    cli.main(["--config", str(_write_cfg(tmp_path, one))])  # one process, global batch 8
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    script = str(ROOT / "tools" / "train_clip.py")
    proc = subprocess.run(  # two gloo processes with 4 samples each
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
         "--master_port", str(_free_port()), script, "--config", str(_write_cfg(tmp_path, two))],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = read_metrics_csv(one / "train_metrics.csv")
    b = read_metrics_csv(two / "train_metrics.csv")
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2, 3, 4]
    for ra, rb in zip(a, b):
        assert rb["loss"] == pytest.approx(ra["loss"], rel=2e-5, abs=1e-6)
        assert rb["logit_scale"] == pytest.approx(ra["logit_scale"], rel=1e-5)
    # both runs checkpointed the same weights
    import torch
    from vision_rwkv.engine import find_latest_checkpoint
    wa = torch.load(find_latest_checkpoint(one / "checkpoints"), weights_only=True)["model"]
    wb = torch.load(find_latest_checkpoint(two / "checkpoints"), weights_only=True)["model"]
    for k in wa:
        assert torch.allclose(wa[k], wb[k], rtol=1e-4, atol=1e-6), k


def test_best_metric_keeps_the_best_evaluation_as_best_pt(tmp_path):
    """train_clip kept no best.pt (the docs pointed to one): train.best_metric names the evaluation metric for it."""
    import torch

    import train_clip as cli
    run = tmp_path / "run"
    cfg = _write_cfg(tmp_path, run)
    over = ["eval.retrieval.data=shapes", "eval.retrieval.length=24", "eval.every_epochs=0",
            "eval.every_steps=1", "train.best_metric=image_retrieval_recall@5", "train.ckpt_every_steps=4"]
    result = cli.main(["--config", str(cfg), *over])
    rows = read_metrics_csv(run / "val_metrics.csv")
    values = [r["image_retrieval_recall@5"] for r in rows]
    assert len(values) == 4 and result["best"]["value"] == pytest.approx(max(values))
    best = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    assert best["step"] == rows[values.index(max(values))]["step"] == result["best"]["step"]
    for bad, message in (("train.best_metric=zeroshot_acc1", "eval.zero_shot.data is none"),
                         ("train.best_metric=loss", "not an evaluation metric")):
        with pytest.raises(Exception, match=message):
            cli.main(["--config", str(cfg), f"run_dir={tmp_path / 'other'}", *over, bad])
