"""tools/predict.py: a training run's checkpoint or a timm model -> top-k table, PNG grid; unreadable files reported."""
import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from tool_helpers import DEMO, TINY, load_tool
from vision_rwkv.data.shapes import make_sample


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    load_tool("train").main([str(DEMO), *TINY, f"run_dir={run}", "train.plot=false"])
    return run / "checkpoints" / "best.pt"


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    for i in range(5):
        Image.fromarray(np.asarray(make_sample(i, "val", image_size=16).image)).save(
            folder / ("sub" if i % 2 else "") / f"s{i}.png")
    (folder / "broken.jpg").write_bytes(b"not an image")
    (folder / "notes.txt").write_text("ignored: not an image extension")
    return folder


def test_predict_from_training_checkpoint(trained, images, tmp_path, capsys):
    from vision_rwkv.engine import load_config
    from vision_rwkv.engine.predict import load_classifier
    classes = load_classifier(str(DEMO), trained, TINY).classes
    out, grid = tmp_path / "p.csv", tmp_path / "p.png"
    assert load_tool("predict").main([str(DEMO), *TINY, "--checkpoint", str(trained), "--images", str(images),
                                      "--topk", "3", "--output", str(out), "--grid", str(grid),
                                      "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["images"] == 6 and summary["unreadable"] == [str(images / "broken.jpg")]
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 6 and rows[0]["file"].endswith("broken.jpg") and "Error" in rows[0]["error"]
    good = rows[1:]
    assert all(r["class_1"] in classes and not r["error"] for r in good)
    for r in good:  # probabilities of a softmax, best first
        p = [float(r[f"prob_{k}"]) for k in (1, 2, 3)]
        assert p == sorted(p, reverse=True) and 0 < sum(p) <= 1 + 1e-6
    assert grid.stat().st_size > 1000
    # the table's top-1 is the model's argmax on the eval transform of the image
    clf = load_classifier(str(DEMO), trained, TINY)
    assert load_config(DEMO, TINY).data.input_size == clf.input_size[0]
    x = clf.transform(Image.open(good[0]["file"]).convert("RGB"))[None]
    assert int(clf.model(x).argmax()) == int(good[0]["index_1"])


def test_predict_channels_last_ranks_as_the_plain_model(trained, images, tmp_path, capsys, monkeypatch):
    """--channels-last (timm's), or the config's eval.channels_last, makes the model channels-last; the table is
    the plain model's."""
    import vision_rwkv.engine.predict as predict
    converted = []
    real = predict.to_channels_last
    monkeypatch.setattr(predict, "to_channels_last", lambda m: converted.append(m) or real(m))
    tables = {}
    for flag in ([], ["--channels-last"]):
        out = tmp_path / f"p{len(flag)}.json"
        assert load_tool("predict").main([str(DEMO), *TINY, "--checkpoint", str(trained), "--images", str(images),
                                          "--output", str(out), "--grid", "", "--no-progress", *flag]) == 0
        assert len(converted) == len(flag)
        tables[bool(flag)] = json.loads(out.read_text())
    capsys.readouterr()
    out = tmp_path / "config.json"  # (the config's eval.channels_last, as predict_seg follows test.channels_last)
    assert load_tool("predict").main([str(DEMO), *TINY, "eval.channels_last=true", "--checkpoint", str(trained),
                                      "--images", str(images), "--output", str(out), "--grid", "",
                                      "--no-progress"]) == 0
    assert len(converted) == 2 and json.loads(out.read_text()) == tables[True]
    plain, cl = tables[False], tables[True]
    assert len(cl) == len(plain) == 6 and sum("topk" in r for r in cl) == 5
    for a, b in zip(plain, cl):
        assert a["file"] == b["file"] and [t[0] for t in a.get("topk", [])] == [t[0] for t in b.get("topk", [])]
        assert [t[2] for t in a.get("topk", [])] == pytest.approx([t[2] for t in b.get("topk", [])], abs=1e-5)


def test_checkpoint_weights_are_read_once(trained, tmp_path, monkeypatch):
    """load_classifier reads the weights once for the classifier rows and the loading (config or timm name)."""
    import timm
    from vision_rwkv.engine import checkpoint
    from vision_rwkv.engine.predict import load_classifier
    reads = []
    real = checkpoint.read_model_state
    monkeypatch.setattr(checkpoint, "read_model_state", lambda *a, **k: reads.append(a[0]) or real(*a, **k))
    assert load_classifier(str(DEMO), trained, TINY).model.num_classes > 1 and len(reads) == 1
    src = timm.create_model("vrwkv_tiny_patch16_224", num_classes=3)
    torch.save(src.state_dict(), tmp_path / "w.pth")
    reads.clear()
    clf = load_classifier("vrwkv_tiny_patch16_224", tmp_path / "w.pth")  # class count from the head rows
    assert clf.model.num_classes == 3 and len(reads) == 1
    torch.testing.assert_close(clf.model.head.weight, src.head.weight)


def test_predict_timm_name_json_and_imagenet_names(images, tmp_path, capsys):
    from vision_rwkv.engine.predict import load_classifier, predict_files
    clf = load_classifier("vrwkv_tiny_patch16_224")
    assert len(clf.classes) == 1000 and clf.input_size == (224, 224)
    clf.model = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, 1000))
    rows = predict_files(clf, [images / "s0.png"], topk=2, show_progress=False)
    assert len(rows[0]["topk"]) == 2 and all(isinstance(name, str) for _, name, _ in rows[0]["topk"])


def test_predict_errors(trained, images, tmp_path, capsys):
    tool = load_tool("predict")
    with pytest.raises(FileNotFoundError):
        tool.main(["vrwkv_tiny_patch16_224", "--images", str(tmp_path / "missing.png")])
    (tmp_path / "empty").mkdir()
    capsys.readouterr()
    assert tool.main(["vrwkv_tiny_patch16_224", "--images", str(tmp_path / "empty")]) == 1
    assert "error: no image files in" in capsys.readouterr().err
    seg = DEMO.parents[1] / "segmentation" / "demo_shapes.yaml"
    assert tool.main([str(seg), "--images", str(images)]) == 2
    assert "segmentation config" in capsys.readouterr().err
    names = tmp_path / "names.txt"
    names.write_text("a\nb\n")
    assert tool.main([str(DEMO), *TINY, "--checkpoint", str(trained), "--class-names", str(names),
                      "--images", str(images)]) == 2
    assert "2 names for a classifier of 8 classes" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        tool.main([str(DEMO), "--images", str(images), "--topk", "0"])


def test_predict_output_suffix_and_help(capsys):
    """--output must be .csv or .json (no CSV written under another name); the --help epilog keeps its lines."""
    tool = load_tool("predict")
    assert tool.parse_args(["m", "--images", "x.png", "--output", "d/p.json"]).output == "d/p.json"
    for output, message in (("p.txt", "unknown suffix '.txt'"), ("p", "no suffix")):
        with pytest.raises(SystemExit):
            tool.parse_args(["m", "--images", "x.png", "--output", output])
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        tool.parse_args(["--help"])
    assert "best.pt \\\n        --images photos/ --topk 3\n" in capsys.readouterr().out


def test_predict_warns_on_untrained_weights(trained, images, tmp_path, capsys):
    """A timm name, or a config without initial weights, and no --checkpoint: a warning line on stderr."""
    tool = load_tool("predict")
    common = ["--images", str(images / "s0.png"), "--output", str(tmp_path / "p.csv"), "--grid", "", "--no-progress"]
    assert tool.main(["vrwkv_tiny_patch16_224", *common]) == 0
    assert "warning: no --checkpoint for model vrwkv_tiny_patch16_224" in capsys.readouterr().err
    assert tool.main([str(DEMO), *TINY, *common]) == 0
    assert "random, untrained weights" in capsys.readouterr().err
    assert tool.main([str(DEMO), *TINY, "--checkpoint", str(trained), *common]) == 0
    assert "warning" not in capsys.readouterr().err
    from vision_rwkv.engine.predict import untrained_warning
    assert untrained_warning(str(DEMO), None, ["model.checkpoint=w.pt"]) is None
    seg = DEMO.parents[1] / "segmentation" / "demo_shapes.yaml"
    assert "segmentation config" in untrained_warning(str(seg), None, ["model.pretrained=w.pt"])


def test_predict_takes_original_layout_files_in_their_mode(trained, tmp_path):
    """A config with --checkpoint, like a timm name with --checkpoint, takes an original-layout .pth (the released
    checkpoints' layout): converted, with its classifier, and a v4 model running the "original" Bi-WKV function."""
    import timm

    from vision_rwkv.engine import load_checkpoint
    from vision_rwkv.engine.predict import load_classifier
    from vision_rwkv.models import ours_to_original

    def released(sd, name):
        path = tmp_path / name
        torch.save({"state_dict": {("" if k.startswith("head.") else "backbone.") + k: v
                                   for k, v in ours_to_original(sd).items()}}, path)
        return path

    sd = load_checkpoint(trained)["model"]
    from_config = load_classifier(str(DEMO), released(sd, "tiny.pth"), TINY)
    full = timm.create_model("vrwkv_tiny_patch16_224", num_classes=3)
    from_name = load_classifier("vrwkv_tiny_patch16_224", released(full.state_dict(), "full.pth"))
    for clf, head in ((from_config, sd["head.weight"]), (from_name, full.head.weight)):
        assert clf.model.wkv_mode == "original" and clf.model.num_classes == head.shape[0]
        torch.testing.assert_close(clf.model.head.weight, head)


def test_a_file_given_twice_is_listed_twice_in_the_summary(trained, images, tmp_path, capsys):
    """The printed summary's top-1 was a dict keyed by file: a file given twice appeared once (the CSV has both)."""
    one = str(images / "s0.png")
    assert load_tool("predict").main([str(DEMO), *TINY, "--checkpoint", str(trained), "--images", one, one,
                                      "--output", str(tmp_path / "p.csv"), "--grid", "", "--no-progress"]) == 0
    top1 = json.loads(capsys.readouterr().out)["top1"]
    assert [pair[0] for pair in top1] == [one, one] and top1[0][1] == top1[1][1]


def test_grid_defaults_next_to_the_output(trained, images, tmp_path, capsys, monkeypatch):
    """The grid defaulted to ./predictions.png whatever --output said (overwriting a file in the working folder);
    now it is <output stem>.png next to --output, and --grid '' writes none."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "res" / "d.csv"
    assert load_tool("predict").main([str(DEMO), *TINY, "--checkpoint", str(trained), "--images",
                                      str(images / "s0.png"), "--output", str(out), "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out)["grid"] == str(out.with_suffix(".png"))
    assert (tmp_path / "res" / "d.png").is_file() and not (tmp_path / "predictions.png").exists()
    assert load_tool("predict").parse_args(["m", "--images", "x.png", "--grid", ""]).grid == ""


def test_unwritable_output_is_one_line_before_the_model(tmp_path, capsys, monkeypatch):
    """--output naming a folder, or under a file: a traceback after every image had been predicted; now one error
    line (status 2) before the model is loaded."""
    from vision_rwkv.engine import predict
    monkeypatch.setattr(predict, "load_classifier", lambda *a, **k: pytest.fail("must not load the model"))
    (tmp_path / "isdir.csv").mkdir()
    (tmp_path / "afile").write_text("")
    for output, grid, message in [(tmp_path / "isdir.csv", "", "is a folder"),
                                  (tmp_path / "afile" / "x.csv", "", f"{tmp_path / 'afile'} is a file"),
                                  (tmp_path / "ok.csv", tmp_path / "afile" / "g.png", "--grid")]:
        argv = ["vrwkv_tiny_patch16_224", "--images", "x.png", "--output", str(output), "--grid", str(grid)]
        assert load_tool("predict").main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1, err


def test_no_readable_image_exits_1_after_writing_the_table(trained, images, tmp_path, capsys):
    """Every image unreadable: status 0 (and the requested grid silently missing); now 1, after the table."""
    out = tmp_path / "bad.csv"
    argv = [str(DEMO), *TINY, "--checkpoint", str(trained), "--images", str(images / "broken.jpg"),
            "--output", str(out), "--no-progress"]
    assert load_tool("predict").main(argv) == 1
    captured = capsys.readouterr()
    assert "error: not one of the 1 images could be read" in captured.err
    assert json.loads(captured.out)["unreadable"] == [str(images / "broken.jpg")]
    assert "Error" in list(csv.DictReader(out.open(encoding="utf-8")))[0]["error"]


def test_predictions_are_written_utf8_and_atomically(tmp_path):
    """write_predictions opened the table in place in the locale's encoding: under LANG=C a Unicode file name was a
    UnicodeEncodeError and the previous table was left cut off. Now UTF-8, through a temporary file."""
    import os
    import subprocess
    import sys
    from pathlib import Path
    out = tmp_path / "p.csv"
    out.write_text("previous\n")
    code = ("import sys; from vision_rwkv.engine.predict import write_predictions as w; "
            "w([{'file': 'sub dir/\\u00f1ame \\u65e5\\u672c.png', 'topk': [(0, 'caf\\u00e9', 0.5)]}], "
            "sys.argv[1])")  # (an ASCII command line: the escapes are decoded by the child)
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0",
           "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    subprocess.run([sys.executable, "-c", code, str(out)], check=True, env=env)
    assert list(csv.DictReader(out.open(encoding="utf-8")))[0]["file"] == "sub dir/\u00f1ame \u65e5\u672c.png"
    from vision_rwkv.engine.predict import write_predictions
    # a name as the C locale decodes a UTF-8 file name (surrogate escapes): its original bytes are written back
    write_predictions([{"file": "\udcc3\udcb1.png", "topk": [(0, None, 0.5)]}], tmp_path / "s.json")
    assert json.loads((tmp_path / "s.json").read_text(encoding="utf-8"))[0]["file"] == "\u00f1.png"
    with pytest.raises(ValueError):  # a failure while writing keeps the previous table whole
        write_predictions([{"file": "a.png", "topk": [(0, None, "not a number")]}], out)
    assert "\u65e5" in out.read_text(encoding="utf-8") and not list(tmp_path.glob(".*tmp*"))


def test_a_config_with_a_1000_class_file_without_names_gets_imagenets_with_a_warning(tmp_path):
    """A shipped *_in1k config and a released 1000-class file: the class columns were empty, with no word."""
    import timm

    from vision_rwkv.engine.predict import load_classifier
    src = timm.create_model("vrwkv_tiny_patch16_224", img_size=16, patch_size=4, embed_dim=16, depth=1)
    path = tmp_path / "in1k.pth"
    torch.save(src.state_dict(), path)
    with pytest.warns(UserWarning, match="records no class names: the 1000 classes are named as ImageNet-1k's"):
        clf = load_classifier(str(DEMO), path, TINY)
    assert len(clf.classes) == 1000 and clf.classes[1] == "goldfish, Carassius auratus"
