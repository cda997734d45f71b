"""tools/train_seg.py and tools/test_seg.py run in-process on a tiny Shapes config; bad configs exit with 2."""
import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "configs" / "segmentation" / "demo_shapes.yaml"
TINY = ["model.backbone_kwargs.img_size=32", "model.backbone_kwargs.embed_dim=32", "model.backbone_kwargs.depth=2",
        "model.neck_channels=32", "model.decode_channels=16", "model.aux_channels=8", "data.image_size=32",
        "data.crop_size=[32,32]", "data.scale=[32,32]", "data.train_length=16", "data.val_length=4",
        "data.batch_size=4", "data.num_workers=0", "optim.max_iters=3", "optim.warmup_iters=1",
        "train.ckpt_every=null", "train.show_progress=false", "test.num_visualize=1"]


def _tool(name):
    spec = importlib.util.spec_from_file_location(f"seg_tool_{name}", ROOT / "tools" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_train_then_test_cli(tmp_path, capsys):
    run = f"train.run_dir={tmp_path}"
    assert _tool("train_seg").main([str(DEMO), *TINY, run]) == 0
    out = capsys.readouterr().out
    assert '"step": 3' in out
    assert (tmp_path / "checkpoints" / "best.pt").is_file() and (tmp_path / "val_metrics.json").is_file()
    from vision_rwkv.data.shapes import SEG_CLASS_NAMES
    from vision_rwkv.engine import load_checkpoint  # the class names predict_seg labels with (it had none)
    assert load_checkpoint(tmp_path / "checkpoints" / "best.pt")["extra"]["classes"] == list(SEG_CLASS_NAMES)
    assert _tool("test_seg").main([str(DEMO), *TINY, run, "test.mode=slide", "test.crop_size=[16,16]",
                                   "test.stride=[8,8]"]) == 0
    metrics = json.loads((tmp_path / "test" / "metrics.json").read_text())
    assert set(metrics) >= {"mIoU", "mAcc", "aAcc", "per_class"}
    assert (tmp_path / "test" / "overlays.png").is_file()


def test_cli_config_errors(tmp_path, capsys):
    assert _tool("train_seg").main([str(DEMO), "optim.learning_rate=1"]) == 2
    assert "optim.learning_rate" in capsys.readouterr().err
    assert _tool("test_seg").main([str(tmp_path / "nope.yaml")]) == 2
    assert _tool("test_seg").main([str(DEMO), f"train.run_dir={tmp_path / 'none'}"]) == 1
    assert "no checkpoint to load: give --checkpoint PATH" in capsys.readouterr().err
    assert _tool("train_seg").main([str(DEMO), "test.mode=sliding"]) == 2  # before any training
    assert "test.mode" in capsys.readouterr().err
    run = f"train.run_dir={tmp_path / 'folder'}"
    assert _tool("train_seg").main([str(DEMO), run, "data.type=folder", "data.classes=[a,b]"]) == 2
    assert "data.img_dir" in capsys.readouterr().err


def test_train_seg_resume_latest_and_test_seg_checkpoint_option(tmp_path, capsys):
    """train_seg: a run stopped (without saving) at step 2 resumes from its step-1 checkpoint with --resume latest;
    test_seg --checkpoint PATH tests that file (same as test.checkpoint=PATH)."""
    run = f"train.run_dir={tmp_path}"
    args = [str(DEMO), *TINY, run, "train.ckpt_every=1", "train.eval_every=null"]
    assert _tool("train_seg").main([*args, "train.stop_after_steps=2"]) == 0
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("ckpt_*.pt")) == ["ckpt_00000001.pt"]
    capsys.readouterr()
    assert _tool("train_seg").main(["--resume", "latest", *args]) == 0
    assert '"step": 3' in capsys.readouterr().out
    ckpt = tmp_path / "checkpoints" / "ckpt_00000002.pt"  # not the default choice (best.pt)
    out = tmp_path / "test_ckpt2"
    assert _tool("test_seg").main(["--config", str(DEMO), *TINY, run, "--checkpoint", str(ckpt),
                                   f"test.out_dir={out}"]) == 0
    assert json.loads((out / "metrics.json").read_text())["checkpoint"] == str(ckpt)


def test_seg_tools_command_line_errors(tmp_path, capsys):
    import pytest
    cases = [("train_seg", [str(DEMO), "train.resume=latest", "--resume", "latest"], "both set train.resume"),
             ("test_seg", [str(DEMO), "test.checkpoint=a.pt", "--checkpoint", "b.pt"], "both set test.checkpoint"),
             ("test_seg", ["test.flip=true"], "CONFIG file is required"),
             ("train_seg", [str(DEMO), "--config", str(DEMO)], "config is given twice")]
    for tool, argv, message in cases:
        with pytest.raises(SystemExit) as exc:
            _tool(tool).main(argv)
        assert exc.value.code == 2 and message in capsys.readouterr().err, argv


def test_test_seg_mismatched_checkpoint_is_one_capped_error_line(tmp_path, capsys):
    """A checkpoint of another model: exit 2 and one `error:` line with the key counts and the first 20 keys of each
    kind (not a traceback listing every key)."""
    import torch

    from vision_rwkv.seg import load_seg_config
    from vision_rwkv.seg.train import build_segmentor
    cfg = load_seg_config(DEMO, TINY)
    state = build_segmentor(cfg, 9, load_pretrained=False).state_dict()
    n = sum(k.startswith(("backbone.", "decode_head.")) for k in state)
    assert n > 40
    bad = tmp_path / "other.pt"
    torch.save({k.replace("backbone.", "encoder.").replace("decode_head.", "head."): v for k, v in state.items()}, bad)
    argv = [str(DEMO), *TINY, f"train.run_dir={tmp_path}", "--checkpoint", str(bad)]
    assert _tool("test_seg").main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: checkpoint {bad} does not match the config's model: {n} missing keys (")
    assert f"... and {n - 20} more); {n} unexpected keys (" in err and err.count("\n") == 1 and len(err) < 4000


def test_test_seg_names_a_classification_checkpoint_as_such(tmp_path, capsys):
    """A classification file as the segmentation checkpoint: "the segmentation checkpoint has 2 unexpected keys
    (head.fc.*)" (an original one) or a key count (ours) - now what the file is, and where it goes instead."""
    import timm
    import torch
    src = timm.create_model("vrwkv_tiny_patch16_224", img_size=32, embed_dim=32, depth=2, num_classes=5)
    ours, original = tmp_path / "cls.pt", tmp_path / "cls_original.pth"
    torch.save({"model": src.state_dict()}, ours)
    from vision_rwkv.models import ours_to_original
    torch.save({"state_dict": {("backbone." + k if not k.startswith("head.") else "head.fc." + k[5:]): v
                               for k, v in ours_to_original(src.state_dict()).items()}}, original)
    for path in (ours, original):
        argv = [str(DEMO), *TINY, f"train.run_dir={tmp_path}", "--checkpoint", str(path)]
        assert _tool("test_seg").main(argv) == 2
        err = capsys.readouterr().err
        assert f"checkpoint {path} is not a segmentation checkpoint" in err and "model.pretrained" in err, err
