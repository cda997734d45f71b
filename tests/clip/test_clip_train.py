"""Contrastive training: a tiny model overfits a small caption set; kill/resume reproduces the loss; precision,
grad checkpointing, optimiser groups and schedules."""
import math

import pytest
import torch
from clip_helpers import TINY_MODEL_KW, tiny_model

from rwkv_clip.train import build_optimizer, build_scheduler, load_clip_config, train_clip
from vision_rwkv.engine import ConfigError, read_metrics_csv


def _cfg(run_dir, *overrides):
    cfg = load_clip_config(None, [
        f"run_dir={run_dir}", "data.kind=shapes", "data.shapes_image_size=16", "data.augment=false",
        "train.log_every=1", "train.show_progress=false", "train.tensorboard=false", "train.ckpt_every_epochs=0",
        "eval.zero_shot.data=none", "eval.retrieval.data=none", "eval.shapes_image_size=16", *overrides])
    cfg.model.kwargs = TINY_MODEL_KW
    return cfg


def test_tiny_model_overfits_small_caption_set(tmp_path):
    """16 image-caption pairs: after training, retrieval on the same pairs is (nearly) perfect."""
    cfg = _cfg(tmp_path / "overfit", "data.shapes_length=16", "data.shapes_num_captions=1", "train.batch_size=16",
               "train.max_steps=30", "optim.lr=1e-2", "optim.weight_decay=0.0", "sched.name=constant",
               "sched.warmup_steps=5", "eval.retrieval.data=shapes", "eval.retrieval.split=train",
               "eval.retrieval.length=16", "eval.retrieval.num_captions=1", "eval.every_epochs=1000",
               "eval.grid_png=true")
    result = train_clip(cfg)
    assert result["step"] == 30
    losses = [h["loss"] for h in result["history"]]
    assert losses[-1] < 0.2 * losses[0]
    assert result["image_retrieval_recall@1"] >= 0.9, result
    assert result["text_retrieval_recall@1"] >= 0.9, result
    assert 1 / 0.07 < result["logit_scale"] <= 100 + 1e-3  # learned upwards, clamped at 100
    run = tmp_path / "overfit"
    assert (run / "curves.png").is_file() and (run / "retrieval_grid.png").is_file()
    assert len(read_metrics_csv(run / "train_metrics.csv")) == 30
    assert list((run / "checkpoints").glob("ckpt_*.pt"))


def test_training_leaves_the_process_as_it_found_it(tmp_path, modules_left_by, process_snapshot):
    """No reference cycle keeps the model after train_clip returns (the loss objective counts skipped images in the
    trainer, which holds the objective), and the caller's threads and random states come back."""
    cfg = _cfg(tmp_path, "data.shapes_length=8", "train.batch_size=4", "train.max_steps=2", "train.threads=1")
    before = process_snapshot()
    assert modules_left_by(lambda: train_clip(cfg)) == []
    assert process_snapshot() == before


def test_kill_and_resume_reproduces_the_loss(tmp_path):
    common = ["data.shapes_length=24", "train.batch_size=8", "train.max_steps=7", "train.ckpt_every_steps=2",
              "data.augment=true", "optim.lr=2e-3", "sched.name=cosine", "sched.warmup_steps=2"]
    full = train_clip(_cfg(tmp_path / "full", *common))
    crashed = train_clip(_cfg(tmp_path / "resumed", *common, "train.stop_after_steps=5"))
    assert crashed.get("stopped") and crashed["step"] == 5  # last checkpoint: step 4
    resumed = train_clip(_cfg(tmp_path / "resumed", *common), resume="latest")
    assert resumed["step"] == 7
    full_loss = {h["step"]: h["loss"] for h in full["history"]}
    res_loss = {h["step"]: h["loss"] for h in resumed["history"]}
    assert sorted(res_loss) == [5, 6, 7]  # resumed after step 4, crossing an epoch boundary (3 steps/epoch)
    for step, loss in res_loss.items():
        assert loss == pytest.approx(full_loss[step], rel=1e-5, abs=1e-6), step
    # the CSV of the resumed run continues the crashed one without duplicates
    steps = [int(r["step"]) for r in read_metrics_csv(tmp_path / "resumed" / "train_metrics.csv")]
    assert steps == list(range(1, 8))


def test_bf16_autocast_and_grad_checkpointing(tmp_path):
    cfg = _cfg(tmp_path / "bf16", "data.shapes_length=8", "train.batch_size=4", "train.max_steps=2",
               "train.precision=bf16", "model.grad_checkpointing=true")
    result = train_clip(cfg)
    assert result["step"] == 2 and math.isfinite(result["train_loss"])


def test_optimizer_groups_and_schedules():
    m = tiny_model()
    cfg = load_clip_config(None)
    opt = build_optimizer(m, cfg.optim)
    decay, no_decay = opt.param_groups
    names = {id(p): n for n, p in m.named_parameters()}
    assert decay["weight_decay"] == 0.2 and no_decay["weight_decay"] == 0.0
    nd = {names[id(p)] for p in no_decay["params"]}
    assert "logit_scale" in nd and "text.blocks.0.att.time_decay" in nd and "text.ln_out.weight" in nd
    assert "text.blocks.0.att.key.weight" in {names[id(p)] for p in decay["params"]}
    cfg.optim.wd_all_params = True
    assert len(build_optimizer(m, cfg.optim).param_groups) == 1  # the original recipe: decay everything

    def lrs(name, steps=20, **kw):
        o = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        sc = load_clip_config(None, [f"sched.name={name}"] + [f"sched.{k}={v}" for k, v in kw.items()]).sched
        s = build_scheduler(o, sc, 1.0, steps)
        out = []
        for _ in range(steps):
            out.append(o.param_groups[0]["lr"])
            o.step()
            s.step()
        return out

    cos = lrs("cosine", warmup_steps=4)
    assert cos[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0]) and cos[-1] < 0.05 and cos == sorted(cos[:4]) + cos[4:]
    one = lrs("onecycle", warmup_frac=0.1)
    assert one[0] == pytest.approx(1 / 25) and max(one) == pytest.approx(1.0, rel=1e-3) and one[-1] < 1e-3
    for short in (dict(warmup_frac=0.1), dict(warmup_steps=1), dict(warmup_steps=0)):  # a 1-step warm-up divided
        flat = lrs("onecycle", steps=10, **short)                                       # 0 by 0 in OneCycleLR
        assert flat[0] > 0.95 and flat == sorted(flat, reverse=True), short  # no warm-up: annealing from ~max
    assert lrs("constant", warmup_steps=2)[2:] == [1.0] * 18


def test_unknown_config_keys_are_errors(tmp_path):
    with pytest.raises(ConfigError, match="optim.lrr"):
        load_clip_config(None, ["optim.lrr=1"])
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  batchsize: 3\n")
    with pytest.raises(ConfigError, match="batchsize"):
        load_clip_config(p)


@pytest.mark.parametrize("override,message", [
    ("optim.lr=-1", "optim.lr must be positive"), ("data.kind=tar", "data.train must name the tar shards"),
    ("data.kind=parquet", "unknown data.kind"), ("train.compile=true train.compile_mode=bogus", "compile_mode"),
    ("sched.name=const", "open_clip's 'const' is 'constant'")])
def test_bad_values_are_config_errors(tmp_path, override, message):
    """Values only checkable when the optimizer, the data or the compile step is built are config errors too (the
    tools print them as one line, status 2)."""
    with pytest.raises(ConfigError, match=message):
        train_clip(_cfg(tmp_path / "bad", "train.max_steps=1", *override.split()))


def test_csv_columns_the_table_lacks_are_a_config_error(tmp_path):
    table = tmp_path / "t.csv"
    table.write_text("path,caption\na.png,a red circle\n")
    with pytest.raises(ConfigError, match=r"column\(s\) \['filepath'\] not found.*data.img_key='filepath'"):
        train_clip(_cfg(tmp_path / "csv", "train.max_steps=1", "data.kind=csv", f"data.train={table}",
                        "data.caption_keys=caption"))


def test_batch_sizes_that_do_not_split_are_config_errors(tmp_path):
    """The global batch must split evenly over the processes, and each process's share into whole hard-negative
    groups: config errors naming the keys (one line from the tools), not a ValueError about a per-process size."""
    with pytest.raises(ConfigError, match="train.batch_size .*positive multiple"):
        train_clip(_cfg(tmp_path / "zero", "train.batch_size=0", "train.max_steps=1"))
    with pytest.raises(ConfigError, match="train.batch_size 12 gives 12 samples per process .*"
                                          "data.shapes_group_size 8"):
        train_clip(_cfg(tmp_path / "groups", "train.batch_size=12", "train.max_steps=1", "data.shapes_length=256",
                        "data.shapes_group_by=color", "data.shapes_group_size=8"))
    with pytest.raises(ConfigError, match="^train.batch_size: dataset of 64 samples gives no batch of 128"):
        train_clip(_cfg(tmp_path / "large", "train.batch_size=128", "train.max_steps=1", "data.shapes_length=64"))


def test_csv_training_skips_and_counts_unreadable_images(tmp_path):
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(0)
    lines = ["filepath,raw,syn"]
    for i in range(8):
        p = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(p)
        lines.append(f"{p.name},picture {i},a photo number {i}")
    (tmp_path / "2.png").write_bytes(b"corrupt")
    (tmp_path / "5.png").unlink()
    (tmp_path / "pairs.csv").write_text("\n".join(lines) + "\n")
    cfg = _cfg(tmp_path / "run", "data.kind=csv", f"data.train={tmp_path / 'pairs.csv'}", "data.caption_keys=[raw,syn]",
               "train.batch_size=4", "train.max_steps=2")
    result = train_clip(cfg)
    assert result["step"] == 2 and result["skipped_images"] == 2  # one epoch: each bad image met once
    rows = read_metrics_csv(tmp_path / "run" / "train_metrics.csv")
    assert sum(r["skipped_images"] for r in rows) == 2
    # the caption columns as a comma-separated string, as the eval CLI and CsvCaptionDataset take them
    from rwkv_clip.train import build_train_dataset
    for keys in ("raw,syn", "[raw,syn]"):
        data = _cfg(tmp_path / "run2", "data.kind=csv", f"data.train={tmp_path / 'pairs.csv'}",
                    f"data.caption_keys={keys}").data
        ds = build_train_dataset(data, None, lambda caps: caps)
        assert ds.dataset.captions[0] == ["picture 0", "a photo number 0"], keys


@pytest.mark.slow
def test_compiled_training_matches_eager(tmp_path):
    """``train.compile=true``: the step runs through torch.compile and gives the eager run's losses; the checkpoint
    keeps the plain model's keys."""
    import torch._dynamo

    from vision_rwkv.engine import load_checkpoint

    common = ["data.shapes_length=8", "train.batch_size=4", "train.max_steps=3", "train.ckpt_every_steps=3"]
    eager = train_clip(_cfg(tmp_path / "eager", *common))
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compiled = train_clip(_cfg(tmp_path / "compiled", *common, "train.compile=true", "train.compile_backend=aot_eager"))
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1
    assert [h["loss"] for h in compiled["history"]] == pytest.approx([h["loss"] for h in eager["history"]],
                                                                     rel=1e-5, abs=1e-6)
    keys = [sorted(load_checkpoint(next((tmp_path / r / "checkpoints").glob("ckpt_*.pt")))["model"])
            for r in ("eager", "compiled")]
    assert keys[0] == keys[1]


def test_failed_checks_leave_no_run_folder_and_a_used_folder_is_refused(tmp_path):
    """Config checks run before anything is written; a fresh run never starts in a folder with checkpoints."""
    with pytest.raises(ValueError, match="set train.epochs or train.max_steps"):
        train_clip(_cfg(tmp_path / "new", "train.epochs=0"))
    assert not (tmp_path / "new").exists()
    used = tmp_path / "used"
    (used / "checkpoints").mkdir(parents=True)
    (used / "checkpoints" / "ckpt_00000004.pt").write_bytes(b"")
    with pytest.raises(FileExistsError, match="ckpt_00000004.pt.*--resume latest"):
        train_clip(_cfg(used, "train.max_steps=2"))
    assert sorted(p.name for p in used.rglob("*")) == ["checkpoints", "ckpt_00000004.pt"]


def test_a_logit_bias_is_a_config_error_here(tmp_path):
    """model.kwargs.init_logit_bias (SigLIP's) crashed train_clip's step (4 outputs for 3); the softmax loss has no
    use for it, so it is a config error that says where SigLIP training runs."""
    cfg = _cfg(tmp_path / "bias", "train.max_steps=1")
    cfg.model.kwargs = {**TINY_MODEL_KW, "init_logit_bias": -10.0}
    with pytest.raises(ConfigError, match="init_logit_bias.*train_open_clip.py --siglip"):
        train_clip(cfg)


def test_channels_last_training_matches_the_plain_run(tmp_path, monkeypatch):
    """train.channels_last=true converts the image tower (once, before the wrappers): the losses and the weights are
    the plain run's up to the convolution's summation order, through the in-training evaluation; the checkpoint's
    weights stay contiguous."""
    import rwkv_clip.train as clip_train
    from vision_rwkv.engine import load_checkpoint

    converted = []
    real = clip_train.to_channels_last
    monkeypatch.setattr(clip_train, "to_channels_last", lambda m: converted.append(m) or real(m))
    runs = {}
    for flag in ("false", "1"):
        runs[flag] = train_clip(_cfg(tmp_path / flag, "data.shapes_length=8", "train.batch_size=4",
                                     "train.max_steps=3", "train.ckpt_every_steps=3", "eval.retrieval.data=shapes",
                                     "eval.retrieval.length=8", "eval.every_steps=3", "eval.grid_png=false",
                                     f"train.channels_last={flag}"))
    assert len(converted) == 1 and converted[0].__class__.__name__ == "ImageTower"
    conv = next(m for m in converted[0].modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    loss = {f: [h["loss"] for h in r["history"]] for f, r in runs.items()}
    assert len(loss["1"]) == 3 and loss["1"] == pytest.approx(loss["false"], rel=1e-4, abs=1e-6)
    assert runs["1"]["image_retrieval_recall@1"] == runs["false"]["image_retrieval_recall@1"]
    states = {f: load_checkpoint(tmp_path / f / "checkpoints" / "ckpt_00000003.pt")["model"] for f in runs}
    assert all(v.is_contiguous() for v in states["1"].values())
    for k, v in states["false"].items():
        torch.testing.assert_close(states["1"][k], v, rtol=1e-4, atol=1e-5, msg=k)
    with pytest.raises(ConfigError, match="train.channels_last"):
        load_clip_config(None, ["train.channels_last=sometimes"])
