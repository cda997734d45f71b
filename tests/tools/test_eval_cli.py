"""tools/eval.py: a training checkpoint or a timm model name, any resolution; metrics, per-class CSV, PNG."""
import json

import pytest

from tool_helpers import DEMO, TINY, load_tool


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    result = load_tool("train").main([str(DEMO), *TINY, f"run_dir={run}", "train.plot=false"])
    return run, result


def test_eval_checkpoint_reproduces_training_metric(trained, tmp_path):
    run, result = trained
    r = load_tool("eval").main([str(DEMO), *TINY, f"run_dir={run}", "eval.weights=model",
                                f"eval.out_dir={tmp_path}", "--checkpoint", str(run / "checkpoints" / "best.pt")])
    assert r["top1"] == pytest.approx(result["top1"]) and r["loss"] == pytest.approx(result["loss"], rel=1e-5)
    assert r["num_samples"] == 16 and r["throughput"] > 0
    assert len(r["per_class_accuracy"]) == 8 and sum(r["per_class_count"]) == 16
    assert sum(map(sum, r["confusion_matrix"])) == 16
    assert (tmp_path / "confusion_matrix.png").stat().st_size > 1000
    assert len((tmp_path / "per_class.csv").read_text().splitlines()) == 9
    assert json.loads((tmp_path / "metrics.json").read_text())["top1"] == r["top1"]


def test_eval_other_resolution_and_test_split(trained, tmp_path):
    run, _ = trained
    r = load_tool("eval").main([str(DEMO), *TINY, f"run_dir={run}", "eval.input_size=28", "eval.split=test",
                                f"eval.out_dir={tmp_path}", "--checkpoint", str(run / "checkpoints" / "best.pt")])
    assert r["input_size"] == 28 and r["num_samples"] == 16


def test_eval_plain_timm_model(tmp_path):
    r = load_tool("eval").main([str(DEMO), *TINY, "model.name=resnet10t", "~model.kwargs.img_size",
                                "~model.kwargs.patch_size", "~model.kwargs.embed_dim", "~model.kwargs.depth",
                                f"eval.out_dir={tmp_path}", f"run_dir={tmp_path}"])
    assert r["num_samples"] == 16 and 0 <= r["top1"] <= 100


def test_eval_wrong_checkpoint_names_keys(trained, tmp_path):
    run, _ = trained
    with pytest.raises(RuntimeError, match="missing keys"):
        load_tool("eval").main([str(DEMO), *TINY, "model.kwargs.depth=2", f"eval.out_dir={tmp_path}",
                                "--checkpoint", str(run / "checkpoints" / "best.pt")])


@pytest.mark.parametrize("argv_tail", [["--checkpoint", "runs/x/best.pt", "eval.input_size=40"],
                                       ["eval.input_size=40", "--checkpoint", "runs/x/best.pt"]])
@pytest.mark.parametrize("config_form", ["positional", "option"])
def test_eval_command_line_forms(monkeypatch, config_form, argv_tail):
    """CONFIG positionally or with --config; --checkpoint PATH is eval.checkpoint=PATH, anywhere on the line."""
    mod = load_tool("eval")
    seen = []
    monkeypatch.setattr(mod, "evaluate_classifier", lambda cfg: seen.append(cfg) or {})
    head = [str(DEMO)] if config_form == "positional" else ["--config", str(DEMO)]
    mod.main([*head, *argv_tail])
    (cfg,) = seen
    assert cfg.eval.checkpoint == "runs/x/best.pt" and cfg.eval.input_size == 40


def test_eval_command_line_errors(monkeypatch, capsys):
    mod = load_tool("eval")
    monkeypatch.setattr(mod, "evaluate_classifier", lambda cfg: pytest.fail("must not evaluate"))
    for argv, message in [([str(DEMO), "eval.checkpoint=a.pt", "--checkpoint", "b.pt"], "both set eval.checkpoint"),
                          (["eval.split=test"], "CONFIG file is required")]:
        with pytest.raises(SystemExit) as exc:
            mod.main(argv)
        assert exc.value.code == 2 and message in capsys.readouterr().err


def test_eval_zeroshot_checkpoint_is_an_alias_of_pretrained():
    parser = load_tool("eval_zeroshot").build_parser()
    assert parser.parse_args(["--model", "ViT-B-32", "--checkpoint", "w.pt"]).pretrained == "w.pt"
    assert parser.parse_args(["--model", "ViT-B-32", "--pretrained", "w.pt"]).pretrained == "w.pt"


def test_eval_weights_ema_without_ema_weights_is_one_error_line(trained, tmp_path, capsys):
    """eval.weights=ema on a checkpoint trained without EMA, or on a plain state dict: status 2 and one line naming
    the file and saying it holds no EMA weights (it was an AttributeError / KeyError 'ema' traceback)."""
    import torch

    from vision_rwkv.engine import load_checkpoint
    run, _ = trained
    best = run / "checkpoints" / "best.pt"
    plain = tmp_path / "plain.pth"
    torch.save(load_checkpoint(best)["model"], plain)
    for path, reason in [(best, "its 'ema' entry is empty"), (plain, "it is a plain state dict")]:
        with pytest.raises(SystemExit) as exc:
            load_tool("eval").main([str(DEMO), *TINY, "eval.weights=ema", f"eval.out_dir={tmp_path}",
                                    "--checkpoint", str(path)])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and err.startswith(f"error: checkpoint {path} holds no EMA weights: {reason}")
        assert len(err.strip().splitlines()) == 1


def test_checkpoint_and_model_checkpoint_load_a_file_alike(trained, tmp_path, monkeypatch):
    """--checkpoint and model.checkpoint= take the same files the same way: an original-layout .pth (the released
    checkpoints' layout) and its conversion load on both routes, and a v4 model runs them in "original" mode (the
    function they were trained with) on both, unless the config names wkv_mode; a training checkpoint records the
    mode its model ran in."""
    import torch

    from vision_rwkv.engine import classification, load_checkpoint
    from vision_rwkv.models import ours_to_original
    from vision_rwkv.models.convert import convert_file
    run, _ = trained
    ckpt = load_checkpoint(run / "checkpoints" / "best.pt")
    assert ckpt["extra"]["wkv_mode"] == "exact" and ckpt["extra"]["wkv_chunks"] == 32
    released = tmp_path / "released.pth"
    torch.save({"meta": {"epoch": 1}, "state_dict": {("" if k.startswith("head.") else "backbone.") + k: v
                                                     for k, v in ours_to_original(ckpt["model"]).items()}}, released)
    converted = tmp_path / "released.safetensors"
    convert_file(released, converted)
    modes = []
    real = classification.evaluate_loader
    monkeypatch.setattr(classification, "evaluate_loader", lambda model, *a, **k: modes.append(
        (model.wkv_mode, model.wkv_chunks)) or real(model, *a, **k))
    results = []
    for path in (released, converted):
        for route in (["--checkpoint", str(path)], [f"model.checkpoint={path}"]):
            results.append(load_tool("eval").main([str(DEMO), *TINY, f"eval.out_dir={tmp_path}", *route]))
    assert modes == [("original", 32)] * 4
    assert all(r["loss"] == results[0]["loss"] and r["top1"] == results[0]["top1"] for r in results)
    load_tool("eval").main([str(DEMO), *TINY, "+model.kwargs.wkv_mode=exact", f"eval.out_dir={tmp_path}",
                            "--checkpoint", str(released)])
    assert modes[-1] == ("exact", 32)


def test_eval_without_a_checkpoint_takes_the_runs_or_warns(trained, tmp_path, capsys):
    """No --checkpoint: the config's run (best.pt) is evaluated, as tools/test_seg.py does; with no run there the
    tool says the weights are untrained."""
    run, result = trained
    r = load_tool("eval").main([str(DEMO), *TINY, f"run_dir={run}", "eval.weights=model", f"eval.out_dir={tmp_path}"])
    assert r["top1"] == pytest.approx(result["top1"]) and r["loss"] == pytest.approx(result["loss"], rel=1e-5)
    assert f"evaluating the run's {run / 'checkpoints' / 'best.pt'}" in capsys.readouterr().err
    load_tool("eval").main([str(DEMO), *TINY, f"run_dir={tmp_path / 'none'}", f"eval.out_dir={tmp_path}"])
    err = capsys.readouterr().err
    assert "warning: no --checkpoint" in err and "random, untrained weights" in err


def _image_folder(root, classes, per_class=2):
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def test_per_class_csv_is_real_csv_and_classes_without_images_have_no_accuracy(tmp_path):
    """A class name with a comma broke per_class.csv (an f-string row); a class with no evaluation images was
    reported at 0% (a too-low mean per-class accuracy), where test_seg writes null."""
    import csv
    val = _image_folder(tmp_path / "val", ["a,b", "c"])
    r = load_tool("eval").main([str(DEMO), *TINY, "data.type=imagefolder", f"data.val_dir={val}",
                                "data.classes=['a,b',c,d]", f"eval.out_dir={tmp_path / 'out'}",
                                f"run_dir={tmp_path}"])
    rows = list(csv.reader(open(tmp_path / "out" / "per_class.csv")))
    assert rows[0] == ["class", "accuracy", "count"] and [row[0] for row in rows[1:]] == ["a,b", "c", "d"]
    assert rows[3][1:] == ["", "0"] and r["per_class_accuracy"][2] != r["per_class_accuracy"][2]  # (NaN)
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert saved["per_class_accuracy"][2] is None and saved["checkpoint"] is None


def test_data_classes_the_checkpoint_does_not_know_are_a_config_error(trained, tmp_path, monkeypatch, capsys):
    """A data folder with a class the checkpoint was not trained on: one error line and status 2 (a traceback)."""
    import sys

    from vision_rwkv.engine.cli import run_tool
    run, _ = trained
    val = _image_folder(tmp_path / "val", ["zebra"])
    monkeypatch.setattr(sys, "argv", ["eval.py", str(DEMO), *TINY, "data.type=imagefolder", f"data.val_dir={val}",
                                      f"eval.out_dir={tmp_path}", "--checkpoint", str(run / "checkpoints" / "best.pt")])
    with pytest.raises(SystemExit) as exc:
        run_tool(load_tool("eval").main)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "error: the evaluation data's classes ['zebra']" in err


@pytest.mark.parametrize("device", ["gpu", "cuda:x"] + ([] if __import__("torch").cuda.is_available() else ["cuda"]))
def test_prediction_tools_refuse_a_device_this_machine_lacks(device, capsys):
    """--device cuda on a CPU machine, or a misspelt device, was an 11-frame traceback with status 1."""
    import argparse

    from vision_rwkv.engine.cli import add_predict_options
    parser = argparse.ArgumentParser()
    add_predict_options(parser)
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(["--images", "x.png", "--device", device])
    assert exc.value.code == 2 and "--device" in capsys.readouterr().err


def _plain_state_dict(trained, tmp_path):
    """The trained run's weights as a plain state dict: no recorded class names, only the 8-row classifier."""
    import torch

    from vision_rwkv.engine import load_checkpoint
    run, _ = trained
    path = tmp_path / "plain.pt"
    torch.save(load_checkpoint(run / "checkpoints" / "best.pt")["model"], path)
    return path


def _label_list(tmp_path, labels, name="val.csv"):
    """(image folder tmp_path/val, a CSV next to it listing its images with integer ``labels``)."""
    val = _image_folder(tmp_path / "val", ["x"], per_class=len(labels))
    path = tmp_path / name
    path.write_text("path,label\n" + "".join(f"val/x/{i}.png,{y}\n" for i, y in enumerate(labels)))
    return val, path


def _run_eval(argv, monkeypatch):
    """tools/eval.py as a command: (exit status, stderr lines) via run_tool."""
    import sys

    from vision_rwkv.engine.cli import run_tool
    monkeypatch.setattr(sys, "argv", ["eval.py", *map(str, argv)])
    with pytest.raises(SystemExit) as exc:
        run_tool(load_tool("eval").main)
    return exc.value.code


def test_integer_labels_count_the_checkpoints_classifier_not_the_data(trained, tmp_path):
    """A subset of a split without its highest class (labels 0 and 3) against an 8-class checkpoint without names:
    the model was built with max(label)+1 = 4 outputs (a shape-mismatch error), and model.num_classes=8 was
    overridden. Now the class count is the classifier's rows (else model.num_classes)."""
    plain = _plain_state_dict(trained, tmp_path)
    val, csv_path = _label_list(tmp_path, [0, 3, 3])
    common = [str(DEMO), *TINY, f"eval.out_dir={tmp_path / 'out'}", f"run_dir={tmp_path}"]
    r = load_tool("eval").main([*common, "data.type=csv", f"data.val_csv={csv_path}", "--checkpoint", str(plain)])
    assert r["classes"] == [str(i) for i in range(8)] and r["per_class_count"] == [1, 0, 0, 2, 0, 0, 0, 0]
    ann = tmp_path / "val.txt"
    ann.write_text("x/0.png 0\nx/1.png 3\nx/2.png 3\n")
    r2 = load_tool("eval").main([*common, "data.type=imagefolder", f"data.val_dir={val}", f"data.val_ann_file={ann}",
                                 "--checkpoint", str(plain)])
    assert r2["per_class_count"] == r["per_class_count"] and r2["top1"] == r["top1"] and r2["loss"] == r["loss"]
    r3 = load_tool("eval").main([*common, "data.type=csv", f"data.val_csv={csv_path}", "model.num_classes=8"])
    assert len(r3["per_class_count"]) == 8  # (no checkpoint: model.num_classes)
    from vision_rwkv.engine import ConfigError
    _, past = _label_list(tmp_path / "past", [0, 8])
    with pytest.raises(ConfigError, match="class index 8 is past the model's 8 classes"):
        load_tool("eval").main([*common, "data.type=csv", f"data.val_csv={past}", "--checkpoint", str(plain)])


def test_integer_csv_labels_index_the_checkpoints_class_names(trained, tmp_path, monkeypatch, capsys):
    """An integer-labelled CSV against a checkpoint recording class names was refused ('0'..'7' are not the model's
    classes); data.classes of YAML integers were not matched against the CSV's labels (a traceback); a label past
    the classes was a ValueError traceback. Now: indices, as an annotation list's; strings; one error line."""
    run, _ = trained
    best = run / "checkpoints" / "best.pt"
    from vision_rwkv.engine.classification import checkpoint_classes
    names = checkpoint_classes(best)
    val, csv_path = _label_list(tmp_path, [0, 3, 7])
    common = [str(DEMO), *TINY, "data.type=csv", f"eval.out_dir={tmp_path / 'out'}", f"run_dir={tmp_path}"]
    r = load_tool("eval").main([*common, f"data.val_csv={csv_path}", "--checkpoint", str(best)])
    assert r["classes"] == names and r["per_class_count"] == [1, 0, 0, 1, 0, 0, 0, 1]
    r2 = load_tool("eval").main([*common, f"data.val_csv={csv_path}", f"data.classes=[{','.join(names)}]",
                                 "--checkpoint", str(best)])
    assert r2["classes"] == names and r2["top1"] == r["top1"] and r2["loss"] == r["loss"]
    plain = _plain_state_dict(trained, tmp_path)
    r3 = load_tool("eval").main([*common, f"data.val_csv={csv_path}", "data.classes=[0,1,2,3,4,5,6,7]",
                                 "--checkpoint", str(plain)])
    assert r3["classes"] == [str(i) for i in range(8)] and r3["loss"] == pytest.approx(r["loss"])
    _, past = _label_list(tmp_path / "past", [0, 9])
    capsys.readouterr()
    assert _run_eval([*common, f"data.val_csv={past}", "--checkpoint", best], monkeypatch) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: data.val_csv: CSV ") and "label 9, past the 8 classes" in err
    assert err.count("\n") == 1


def test_no_readable_image_is_an_error_not_zero_percent(trained, tmp_path, monkeypatch, capsys):
    """Every image unreadable: top-1 0.00% with exit 0 (and metrics.json as if real); now exit 1, one line."""
    run, _ = trained
    bad = tmp_path / "val" / "circle"
    bad.mkdir(parents=True)
    (bad / "a.png").write_bytes(b"\x89PNG broken")
    (bad / "b.jpg").write_bytes(b"")
    argv = [DEMO, *TINY, "data.type=imagefolder", f"data.val_dir={tmp_path / 'val'}", f"eval.out_dir={tmp_path / 'o'}",
            "--checkpoint", run / "checkpoints" / "best.pt"]
    with pytest.warns(UserWarning, match="skipping unreadable image"):
        assert _run_eval(argv, monkeypatch) == 1
    err = capsys.readouterr().err
    assert "error: no evaluation image could be read: all 2 images" in err
    assert not (tmp_path / "o" / "metrics.json").exists()


def test_empty_validation_folder_is_one_error_line(trained, tmp_path, monkeypatch, capsys):
    run, _ = trained
    (tmp_path / "val" / "circle").mkdir(parents=True)
    argv = [DEMO, *TINY, "data.type=imagefolder", f"data.val_dir={tmp_path / 'val'}", f"eval.out_dir={tmp_path / 'o'}",
            "--checkpoint", run / "checkpoints" / "best.pt"]
    assert _run_eval(argv, monkeypatch) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: data.val_dir: image folder ") and "has no images" in err and err.count("\n") == 1


def test_eval_outputs_are_utf8_and_replaced_atomically(tmp_path, monkeypatch, capsys):
    """metrics.json and per_class.csv went through open() in the locale's encoding, in place; now a temporary file
    and os.replace, UTF-8 (a class named in Unicode). An eval.out_dir that is a file: one line, before the model."""
    from vision_rwkv.engine import classification
    written = []
    real = classification.write_text_atomic
    monkeypatch.setattr(classification, "write_text_atomic", lambda p, t: written.append(p.name) or real(p, t))
    val = _image_folder(tmp_path / "val", ["ünï", "b"])
    out = tmp_path / "out"
    common = [str(DEMO), *TINY, "data.type=imagefolder", f"data.val_dir={val}", f"run_dir={tmp_path}"]
    load_tool("eval").main([*common, f"eval.out_dir={out}"])
    assert written == ["metrics.json", "per_class.csv"] and not list(out.glob(".*tmp*"))
    assert (out / "per_class.csv").read_bytes().decode("utf-8").splitlines()[2].startswith("ünï,")
    (tmp_path / "afile").write_text("")
    mod = load_tool("eval")
    monkeypatch.setattr(mod, "evaluate_classifier", lambda cfg: pytest.fail("must not evaluate"))
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        mod.main([*common, f"eval.out_dir={tmp_path / 'afile'}"])
    assert exc.value.code == 2 and capsys.readouterr().err == f"error: eval.out_dir {tmp_path / 'afile'} is a file, " \
                                                              "not a folder\n"


def test_a_segmentation_checkpoint_is_named_as_such(tmp_path):
    """eval.py / predict.py given a train_seg checkpoint blamed its class names ("the evaluation data's classes are
    not the model's") or its missing classifier; a released mmseg file the same."""
    import torch

    from vision_rwkv.engine.predict import load_classifier
    from vision_rwkv.models.convert import CheckpointFileMismatchError
    ours, original = tmp_path / "seg.pt", tmp_path / "upernet.pth"
    torch.save({"model": {"backbone.pos_embed": torch.zeros(1, 4, 16), "decode_head.conv_seg.weight": torch.zeros(3)},
                "extra": {"classes": ["bg", "circle", "rect"]}}, ours)
    torch.save({"state_dict": {"backbone.layers.0.ln1.weight": torch.zeros(16),
                               "decode_head.conv_seg.weight": torch.zeros(3)}}, original)
    for path in (ours, original):  # (run_tool prints these errors as one line, exit 2)
        with pytest.raises(CheckpointFileMismatchError, match=f"checkpoint {path} is a segmentation checkpoint .*"
                                                              "tools/test_seg.py"):
            load_tool("eval").main([str(DEMO), *TINY, f"eval.out_dir={tmp_path / 'out'}", "--checkpoint", str(path)])
        with pytest.raises(CheckpointFileMismatchError, match="is a segmentation checkpoint"):
            load_classifier(str(DEMO), path, TINY)
