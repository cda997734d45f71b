"""tools/train.py: config + overrides -> a run directory with config dump, logs, curves, checkpoints, metrics."""
import json

import pytest

from tool_helpers import DEMO, ROOT, TINY, load_tool


def test_train_cli_writes_run(tmp_path, capsys):
    train = load_tool("train")
    result = train.main([str(DEMO), *TINY, f"run_dir={tmp_path}", "train.tensorboard=true"])
    assert result["step"] == 4 and 0.0 <= result["top1"] <= 100.0
    for name in ("config.yaml", "train_metrics.csv", "val_metrics.csv", "curves.png", "final_metrics.json",
                 "checkpoints/best.pt", "checkpoints/ckpt_00000004.pt"):
        assert (tmp_path / name).is_file(), name
    assert list((tmp_path / "tb").iterdir())
    dumped = (tmp_path / "config.yaml").read_text()
    assert "embed_dim: 16" in dumped and "${" not in dumped
    final = json.loads((tmp_path / "final_metrics.json").read_text())
    assert final["top1"] == result["top1"]
    assert '"top1"' in capsys.readouterr().out


def test_train_cli_unknown_key_exits_with_its_name(tmp_path, capsys):
    train = load_tool("train")
    with pytest.raises(SystemExit) as exc:
        train.main([str(DEMO), "train.epoch=3"])
    assert exc.value.code == 2
    assert "train.epoch" in capsys.readouterr().err


def test_train_cli_missing_data_root_is_clear(tmp_path):
    train = load_tool("train")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        train.main([str(DEMO), *TINY, f"run_dir={tmp_path}", "data.type=imagefolder",
                    f"data.train_dir={tmp_path / 'nowhere'}"])


# --------------------------------------------------------------------------- one command-line form for all trainers
CLIP = ROOT / "configs" / "clip" / "demo_shapes.yaml"
SEG = ROOT / "configs" / "segmentation" / "demo_shapes.yaml"


def _capture(tool: str, monkeypatch) -> tuple:
    """(module, calls): the tool with its library training function replaced by a recorder of (cfg, resume)."""
    calls = []
    mod = load_tool(tool)
    if tool == "train":
        def fake(cfg):
            calls.append((cfg, cfg.resume))
            return {"stopped": True}
        monkeypatch.setattr(mod, "train_classifier", fake)
    elif tool == "train_seg":
        import vision_rwkv.seg

        def fake(cfg):
            calls.append((cfg, cfg.train.resume))
            return {}
        monkeypatch.setattr(vision_rwkv.seg, "train_segmentor", fake)
    else:
        import rwkv_clip.train

        def fake(cfg, resume=None):
            calls.append((cfg, resume))
            return {"stopped": True}
        monkeypatch.setattr(rwkv_clip.train, "train_clip", fake)
    return mod, calls


# tool -> (config, an override, how to read it back, the config key --resume stands for)
TOOLS = {
    "train": (DEMO, "train.epochs=7", lambda c: c.train.epochs, "resume"),
    "train_seg": (SEG, "train.log_every=7", lambda c: c.train.log_every, "train.resume"),
    "train_clip": (CLIP, "train.max_steps=7", lambda c: c.train.max_steps, None),
}


FORMS = ["positional", "config_option", "resume_latest", "resume_first", "resume_path", "resume_key"]


@pytest.mark.parametrize("tool,form", [(t, f) for t in sorted(TOOLS) for f in FORMS
                                       if not (f == "resume_key" and TOOLS[t][3] is None)])  # CLIP: --resume only
def test_trainers_accept_the_same_command_line(tool, form, monkeypatch, tmp_path):
    config, override, read, key = TOOLS[tool]
    ckpt = str(tmp_path / "a dir" / "ckpt_00000002.pt")
    argv, resume = {
        "positional": ([str(config), override], None),
        "config_option": (["--config", str(config), override], None),
        "resume_latest": ([str(config), override, "--resume", "latest"], "latest"),
        "resume_first": (["--resume", "latest", str(config), override], "latest"),
        "resume_path": ([str(config), "--resume", ckpt, override], ckpt),
        "resume_key": ([str(config), override, f"{key}=latest"], "latest"),
    }[form]
    mod, calls = _capture(tool, monkeypatch)
    mod.main(argv)
    (cfg, got_resume), = calls
    assert read(cfg) == 7 and got_resume == resume


@pytest.mark.parametrize("tool", sorted(TOOLS))
def test_trainers_reject_ambiguous_command_lines(tool, monkeypatch, capsys):
    config, override, _, key = TOOLS[tool]
    mod, calls = _capture(tool, monkeypatch)
    bad = [([str(config), "--config", str(config)], "config is given twice"),
           ([str(config), override, str(config)], "not a key=value override")]
    if key is not None:
        bad += [([override], "CONFIG file is required"),
                ([str(config), f"{key}=latest", "--resume", "latest"], f"both set {key}")]
    for argv, message in bad:
        with pytest.raises(SystemExit) as exc:
            mod.main(argv)
        assert exc.value.code == 2 and message in capsys.readouterr().err, argv
    assert not calls


def test_train_clip_without_config_uses_the_schema_defaults(monkeypatch):
    mod, calls = _capture("train_clip", monkeypatch)
    mod.main(["train.max_steps=3", "--resume", "latest"])
    (cfg, resume), = calls
    from rwkv_clip.train import load_clip_config
    assert cfg.train.max_steps == 3 and resume == "latest" and cfg.run_dir == load_clip_config(None).run_dir


def test_train_cli_resume_latest_continues_a_stopped_run(tmp_path):
    """A run stopped without saving after step 3 (checkpoint at step 2) resumes with --resume latest to step 4."""
    train = load_tool("train")
    base = [str(DEMO), *TINY, f"run_dir={tmp_path}", "train.ckpt_every_steps=2", "train.plot=false",
            "train.log_every=1", "train.tensorboard=false"]
    assert train.main([*base, "train.stop_after_steps=3"])["stopped"]
    result = train.main([*base, "--resume", "latest"])
    assert result["step"] == 4
    from vision_rwkv.engine import read_metrics_csv
    assert [int(r["step"]) for r in read_metrics_csv(tmp_path / "train_metrics.csv")] == [1, 2, 3, 4]
    # a resume with another model width fails with the differences named, and the run folder's config.yaml still
    # describes its checkpoints (it was rewritten before the checkpoint was found not to fit)
    config = (tmp_path / "config.yaml").read_text()
    from vision_rwkv.models.convert import CheckpointFileMismatchError
    with pytest.raises(CheckpointFileMismatchError, match="cannot resume from .*shape mismatches"):
        train.main([*base, "model.kwargs.embed_dim=24", "--resume", "latest"])
    assert (tmp_path / "config.yaml").read_text() == config


@pytest.mark.parametrize("rank", ["0", "1"])
def test_under_torchrun_rank_0_alone_reports_the_result(monkeypatch, tmp_path, capsys, rank):
    """Every process of a torchrun job returns the result, but only rank 0 prints it (and train_clip writes its
    result.json): the tools ask torchrun's RANK, which still holds after the library has torn the process group
    down (is_main_process() is then True everywhere)."""
    import rwkv_clip.train
    import vision_rwkv.seg
    monkeypatch.setenv("RANK", rank)
    result = {"step": 4, "top1": 50.0, "run_dir": str(tmp_path), "mIoU": 1.0}
    jobs = {"train": [("train_classifier", None)], "eval": [("evaluate_classifier", None)],
            "train_clip": [("train_clip", rwkv_clip.train)],
            "train_seg": [("train_segmentor", vision_rwkv.seg)], "test_seg": [("test_segmentor", vision_rwkv.seg)]}
    configs = {"train": DEMO, "eval": DEMO, "train_clip": CLIP, "train_seg": SEG, "test_seg": SEG}
    for tool, patches in jobs.items():
        mod = load_tool(tool)
        for name, owner in patches:
            monkeypatch.setattr(owner or mod, name, lambda *a, **k: dict(result))
        argv = [str(configs[tool]), f"run_dir={tmp_path}"] if tool in ("train", "eval", "train_clip") else \
            [str(configs[tool]), f"train.run_dir={tmp_path}"]
        if tool == "eval":
            argv += ["--checkpoint", str(tmp_path / "x.pt")]
        mod.main(argv)
        out = capsys.readouterr().out
        assert ('"top1": 50.0' in out) == (rank == "0"), (tool, out)
    assert (tmp_path / "result.json").is_file() == (rank == "0")
