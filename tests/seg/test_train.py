"""Config-driven training / testing on tiny Shapes runs: kill + resume reproduces the uninterrupted run, test
outputs (JSON, per-class table, overlay PNG), the demo's baseline helper."""
import json
from pathlib import Path

import pytest
import torch

from seg_folders import write_seg_folders
from vision_rwkv.engine import load_checkpoint, read_metrics_csv
from vision_rwkv.seg import load_seg_config, test_segmentor, train_segmentor

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "configs" / "segmentation" / "demo_shapes.yaml"

TINY = [
    "model.backbone_kwargs.img_size=32", "model.backbone_kwargs.embed_dim=32", "model.backbone_kwargs.depth=2",
    "model.neck_channels=32", "model.decode_channels=16", "model.aux_channels=8",
    "data.image_size=32", "data.crop_size=[32,32]", "data.scale=[32,32]", "data.train_length=40",
    "data.val_length=6", "data.batch_size=4", "data.num_workers=0", "optim.max_iters=6", "optim.warmup_iters=2",
    "optim.lr=1e-3",
    "train.log_every=1", "train.ckpt_every=2", "train.eval_every=null", "train.show_progress=false",
    "test.crop_size=[32,32]", "test.stride=[16,16]", "test.num_visualize=2",
]


def _cfg(run_dir, *extra):
    return load_seg_config(DEMO, [*TINY, f"train.run_dir={run_dir}", *extra])


def _final_state(run_dir):
    ckpts = sorted((Path(run_dir) / "checkpoints").glob("ckpt_*.pt"))
    return load_checkpoint(ckpts[-1])


def test_kill_and_resume_reproduces_the_uninterrupted_run(tmp_path):
    full = train_segmentor(_cfg(tmp_path / "full"))
    assert full["step"] == 6 and "mIoU" in full

    crashed = train_segmentor(_cfg(tmp_path / "crash", "train.stop_after_steps=3"))  # dies after step 3
    assert crashed.get("stopped") and crashed["step"] == 3
    assert sorted(p.name for p in (tmp_path / "crash" / "checkpoints").glob("ckpt_*.pt")) == ["ckpt_00000002.pt"]
    resumed = train_segmentor(_cfg(tmp_path / "crash", "train.resume=latest"))
    assert resumed["step"] == 6

    a, b = _final_state(tmp_path / "full"), _final_state(tmp_path / "crash")
    assert a["step"] == b["step"] == 6
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=0, atol=0, msg=k)
    assert a["scheduler"] == b["scheduler"]
    loss_a = [r["loss"] for r in read_metrics_csv(tmp_path / "full" / "train_metrics.csv")]
    loss_b = [r["loss"] for r in read_metrics_csv(tmp_path / "crash" / "train_metrics.csv")]
    assert loss_a == loss_b and len(loss_a) == 6
    assert full["mIoU"] == resumed["mIoU"]
    assert json.dumps(full["per_class"]) == json.dumps(resumed["per_class"])  # NaN for absent classes


def test_training_and_testing_leave_the_process_as_they_found_it(tmp_path, modules_left_by, process_snapshot):
    """No reference cycle keeps the segmentor after train_segmentor returns (the evaluation records its result in
    the trainer, which holds the evaluation), and both entry points put back the caller's threads, random states
    and determinism settings."""
    cfg = _cfg(tmp_path, "optim.max_iters=2", "train.eval_every=2", "train.num_threads=1", "train.deterministic=true")
    before = process_snapshot()
    assert modules_left_by(lambda: train_segmentor(cfg)) == []
    assert process_snapshot() == before
    test_segmentor(cfg)
    assert process_snapshot() == before


def test_resuming_a_finished_run_keeps_its_per_class_results(tmp_path):
    """`--resume latest` of a finished run (or of one killed after its last checkpoint) wrote train_result.json
    without per_class / files and no val_metrics files: the full evaluation lived in the process only."""
    full = train_segmentor(_cfg(tmp_path))
    table = (tmp_path / "val_metrics_per_class.txt").read_text()
    for name in ("val_metrics.json", "val_metrics_per_class.txt"):
        (tmp_path / name).unlink()
    again = train_segmentor(_cfg(tmp_path, "train.resume=latest"))
    assert again["step"] == 6 and json.dumps(again["per_class"]) == json.dumps(full["per_class"])
    assert (tmp_path / "val_metrics_per_class.txt").read_text() == table
    saved = json.loads((tmp_path / "train_result.json").read_text())
    assert set(saved["files"]) == {"json", "table"} and saved["mIoU"] == full["mIoU"]


def test_test_segmentor_writes_metrics_table_and_overlays(tmp_path):
    cfg = _cfg(tmp_path / "run", "optim.max_iters=2", "train.ckpt_every=null")
    train_segmentor(cfg)
    res = test_segmentor(load_seg_config(DEMO, [*TINY, f"train.run_dir={tmp_path / 'run'}", "test.mode=slide",
                                                "test.flip=true", "test.scales=[0.75,1.0]"]))
    assert res["checkpoint"].endswith("best.pt")
    assert set(res["per_class"]) == {"background", "circle", "square", "triangle", "star", "cross", "hexagon",
                                     "crescent", "ring"}
    saved = json.loads(Path(res["files"]["json"]).read_text())
    assert saved["mIoU"] == pytest.approx(res["mIoU"]) and 0 <= saved["mIoU"] <= 100
    assert "mIoU" in Path(res["files"]["table"]).read_text()
    png = Path(res["files"]["overlay"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000
    with pytest.raises(FileNotFoundError, match="no checkpoint to load"):
        test_segmentor(_cfg(tmp_path / "empty"))


def test_periodic_evaluation_runs_once_per_step(tmp_path, monkeypatch):
    """eval_every dividing max_iters: the trainer asks again at the last step; the segmentor evaluates once."""
    import vision_rwkv.seg.train as seg_train
    calls = []
    real = seg_train.evaluate_segmentor

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(seg_train, "evaluate_segmentor", counting)
    res = train_segmentor(_cfg(tmp_path, "optim.max_iters=4", "train.eval_every=2", "train.ckpt_every=null"))
    assert res["step"] == 4 and len(calls) == 2
    val_rows = read_metrics_csv(tmp_path / "val_metrics.csv")
    assert [int(r["step"]) for r in val_rows][:2] == [2, 4]


def test_constant_baseline_matches_definition():
    from vision_rwkv.seg.datasets import ShapesSegDataset
    from vision_rwkv.seg.demo import constant_baseline
    ds = ShapesSegDataset("val", length=5, image_size=32)
    masks = torch.stack([ds[i]["mask"] for i in range(5)])
    bg = (masks == 0).sum().item()
    res = constant_baseline(ds)
    present = len(masks.unique())  # classes with ground-truth pixels: IoU 0 except background
    assert res["aAcc"] == pytest.approx(100 * bg / masks.numel())
    assert res["mIoU"] == pytest.approx(100 * bg / masks.numel() / present)


@pytest.mark.slow  # a subprocess (fresh interpreter: torch + timm + albumentations imports)
def test_sigkill_and_resume_reproduces_the_uninterrupted_run(tmp_path):
    """A real crash: tools/train_seg.py is SIGKILLed once its second checkpoint exists; resuming from the newest
    checkpoint left on disk ends with exactly the uninterrupted run's weights."""
    import os
    import signal
    import subprocess
    import sys
    import time

    steps = ["optim.max_iters=30", "train.ckpt_every=4", "train.keep_last=3"]
    crash_dir = tmp_path / "crash"
    proc = subprocess.Popen([sys.executable, str(ROOT / "tools" / "train_seg.py"), str(DEMO), *TINY, *steps,
                             f"train.run_dir={crash_dir}"], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.time() + 300
        while not (crash_dir / "checkpoints" / "ckpt_00000008.pt").exists():
            assert proc.poll() is None, "training ended before it could be killed"
            assert time.time() < deadline, "no checkpoint after 300 s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    left = sorted(p.name for p in (crash_dir / "checkpoints").iterdir())
    assert "ckpt_00000030.pt" not in left and not any(".tmp" in n and not n.startswith(".") for n in left)
    resumed = train_segmentor(_cfg(crash_dir, *steps, "train.resume=latest"))
    full = train_segmentor(_cfg(tmp_path / "full", *steps))
    assert resumed["step"] == full["step"] == 30
    a, b = _final_state(tmp_path / "full"), _final_state(crash_dir)
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=0, atol=0, msg=k)
    assert full["mIoU"] == resumed["mIoU"]


@pytest.mark.slow
def test_compiled_training_matches_eager(tmp_path):
    """``train.compile=true``: the segmentor's training forward runs through torch.compile, gives the eager run's
    losses and writes a plain checkpoint."""
    import torch._dynamo

    steps = ["optim.max_iters=3", "train.ckpt_every=3"]
    train_segmentor(_cfg(tmp_path / "eager", *steps))
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    train_segmentor(_cfg(tmp_path / "compiled", *steps, "train.compile=true", "train.compile_backend=aot_eager"))
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1
    loss = {r: [x["loss"] for x in read_metrics_csv(tmp_path / r / "train_metrics.csv")] for r in ("eager", "compiled")}
    assert len(loss["eager"]) == 3 and loss["compiled"] == pytest.approx(loss["eager"], rel=1e-5, abs=1e-6)
    assert sorted(_final_state(tmp_path / "compiled")["model"]) == sorted(_final_state(tmp_path / "eager")["model"])


def test_a_fresh_run_refuses_a_folder_with_checkpoints_before_writing(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "best.pt").write_bytes(b"")
    with pytest.raises(FileExistsError, match="best.pt.*--resume latest"):
        train_segmentor(_cfg(tmp_path))
    assert not (tmp_path / "config.yaml").exists()


FOLDER = ["data.type=folder", "data.img_suffix=.png", "data.classes=[a,b,c]", "model.class_weight=null",
          "data.train_length=2000", "data.val_length=200"]


def _folder_cfg(tmp_path, *extra):
    return _cfg(tmp_path / "run", *FOLDER, f"data.root={tmp_path / 'data'}", "data.img_dir=img_dir/train",
                "data.ann_dir=ann_dir/train", *extra)


def test_unreadable_validation_images_are_skipped_and_listed(tmp_path):
    """One corrupt validation image stopped training's evaluation and test_seg with a DataLoader traceback: it is
    skipped, counted and named (metrics.json), the others scored; none readable is a one-line config error."""
    from vision_rwkv.engine import ConfigError
    write_seg_folders(tmp_path / "data")
    (tmp_path / "data" / "img_dir" / "val" / "2.png").write_bytes(b"not an image")
    val = ("data.val_img_dir=img_dir/val", "data.val_ann_dir=ann_dir/val")
    with pytest.warns(UserWarning, match="evaluation skipped 1 unreadable image"):
        result = train_segmentor(_folder_cfg(tmp_path, "optim.max_iters=2", "train.ckpt_every=2", *val))
    assert "mIoU" in result
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        tested = test_segmentor(_folder_cfg(tmp_path, *val, f"test.out_dir={tmp_path / 'test'}"))
    written = json.loads((tmp_path / "test" / "metrics.json").read_text())
    assert written["skipped_samples"] == tested["skipped_samples"] == 1
    assert "img_dir/val/2.png" in written["skipped_files"][0] and written["mIoU"] == tested["mIoU"]
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):  # (a Subset's batch fetch bypassed the skip)
        first3 = test_segmentor(_folder_cfg(tmp_path, *val, "data.max_val_images=3",
                                            f"test.out_dir={tmp_path / 'test3'}"))
    assert first3["skipped_samples"] == 1
    for i in (0, 1, 3):
        (tmp_path / "data" / "img_dir" / "val" / f"{i}.png").write_bytes(b"")
    with pytest.raises(ConfigError, match="no evaluation image could be read: all 4 are unreadable"):
        test_segmentor(_folder_cfg(tmp_path, *val, f"test.out_dir={tmp_path / 'test2'}"))


def test_an_unreadable_training_image_is_skipped_and_counted(tmp_path):
    """A corrupt training image stopped segmentation training (UnreadableImageError from a worker); it is dropped
    from its batch and counted, as the classification trainer does."""
    write_seg_folders(tmp_path / "data", n=4)
    (tmp_path / "data" / "img_dir" / "train" / "1.png").write_bytes(b"junk")
    with pytest.warns(UserWarning, match="skipping an unreadable training sample"):
        result = train_segmentor(_folder_cfg(tmp_path, "optim.max_iters=4", "train.ckpt_every=4",
                                             "data.batch_size=4"))
    assert result["step"] == 4 and result["skipped_samples"] >= 1


def test_a_folder_dataset_under_data_root_trains_with_or_without_validation(tmp_path):
    """Folder datasets read img_dir / ann_dir relative to data.root (mmseg's data_root: it was ignored), and may
    train without validation folders (it was a config error)."""
    write_seg_folders(tmp_path / "data")
    result = train_segmentor(_folder_cfg(tmp_path, "optim.max_iters=2", "train.ckpt_every=2"))
    assert result["step"] == 2 and "mIoU" not in result
    assert not (tmp_path / "run" / "checkpoints" / "best.pt").exists()
    with_val = train_segmentor(_folder_cfg(tmp_path, "optim.max_iters=2", "train.ckpt_every=2",
                                           "data.val_img_dir=img_dir/val", "data.val_ann_dir=ann_dir/val",
                                           f"train.run_dir={tmp_path / 'run2'}"))
    assert "mIoU" in with_val and len(with_val["per_class"]) == 3


@pytest.mark.parametrize("extra,message", [
    (["data.classes=[a,b,a]"], r"data.classes names 'a' more than once"),
    (["model.class_weight=[1.0,2.0]"], r"model.class_weight has 2 entries, the data 3 classes"),
    (["data.palette=[[0,0,0],[1,2,3]]"], r"data.palette needs one \[r, g, b\]"),
    (["data.batch_size=64"], r"data.batch_size: dataset of \d+ samples gives no batch of 64"),
])
def test_folder_dataset_config_errors(tmp_path, extra, message):
    """Repeated class names dropped per-class rows (results are keyed by name); a class_weight of another length
    was a traceback."""
    from vision_rwkv.engine import ConfigError
    write_seg_folders(tmp_path / "data")
    cfg = _folder_cfg(tmp_path, *extra)
    with pytest.raises(ConfigError, match=message):
        train_segmentor(cfg)  # (before training: a palette was checked only by the test / predict tools)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_folder_keys_with_another_dataset_type_are_errors(tmp_path):
    """data.reduce_zero_label / classes / suffixes set with type=ade20k were silently ignored."""
    from vision_rwkv.engine import ConfigError
    cfg = _cfg(tmp_path, "data.type=ade20k", f"data.root={tmp_path}", "data.reduce_zero_label=true",
               "data.classes=[a,b]")
    with pytest.raises(ConfigError, match=r"data.classes, data.reduce_zero_label only apply to data.type=folder"):
        train_segmentor(cfg)


def test_predictions_use_the_config_palette(tmp_path):
    import numpy as np
    from PIL import Image

    from vision_rwkv.seg.predict_images import save_label_png
    from vision_rwkv.seg.train import config_palette
    write_seg_folders(tmp_path / "data")
    palette = config_palette(_folder_cfg(tmp_path, "data.palette=[[10,20,30],[40,50,60],[70,80,90]]"), 3)
    path = save_label_png(np.array([[0, 1], [2, 0]]), tmp_path / "p.png", 3, palette=palette)
    img = Image.open(path)
    assert img.mode == "P" and img.getpalette()[:9] == [10, 20, 30, 40, 50, 60, 70, 80, 90]


def test_test_segmentor_saves_a_label_png_per_image_as_mmseg_out(tmp_path):
    """test.save_labels (mmseg's tools/test.py --out): one label PNG per test image, class id + test.label_offset,
    the same predictions the metrics counted; test.save_overlays (--show-dir): an overlay PNG per image."""
    import numpy as np
    from PIL import Image

    from vision_rwkv.engine import ConfigError
    train_segmentor(_cfg(tmp_path / "run", "optim.max_iters=2", "train.ckpt_every=null"))
    cfg = load_seg_config(DEMO, [*TINY, f"train.run_dir={tmp_path / 'run'}", "test.mode=whole",
                                 "test.save_labels=true", "test.label_offset=1", "test.save_overlays=true"])
    res = test_segmentor(cfg)
    labels = sorted((tmp_path / "run" / "test" / "labels").rglob("*.png"))
    assert len(labels) == 6
    overlays = sorted((tmp_path / "run" / "test" / "overlays").rglob("*.png"))  # (mmseg's --show-dir)
    assert [p.name for p in overlays] == [p.name for p in labels] and overlays[0].stat().st_size > 1000
    values = np.concatenate([np.asarray(Image.open(p)).ravel() for p in labels])
    assert values.min() >= 1 and values.max() <= 9  # (classes 0..8 stored as 1..9)
    assert all(Image.open(p).size == (32, 32) for p in labels) and "mIoU" in res  # (at the images' size)
    with pytest.raises(ConfigError, match="test.label_offset"):
        load_seg_config(DEMO, [*TINY, "test.label_offset=-1"])
