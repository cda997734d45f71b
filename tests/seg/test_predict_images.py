"""vision_rwkv.seg.predict_images and tools/predict_seg.py: label maps of image files via the test pipeline."""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vision_rwkv.data.shapes import make_sample
from vision_rwkv.seg.inference import inference
from vision_rwkv.seg.predict_images import (class_fractions, config_classes, load_segmentor, save_label_png,
                                            segment_files)

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "configs" / "segmentation" / "demo_shapes.yaml"


def _tool():
    spec = importlib.util.spec_from_file_location("tool_predict_seg", ROOT / "tools" / "predict_seg.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    model, _, _ = load_segmentor(DEMO)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.decode_head.parameters():
            p.add_(0.1 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("seg") / "best.pt"
    torch.save({"model": model.state_dict()}, path)
    return path


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, size in enumerate([(32, 32), (40, 56), (27, 33)]):
        Image.fromarray(np.asarray(make_sample(i, "val", image_size=size).image)).save(folder / f"im{i}.png")
    (folder / "bad.png").write_bytes(b"\x89PNG broken")
    return folder


def test_label_png_round_trip(tmp_path):
    labels = np.random.default_rng(0).integers(0, 9, (6, 11))
    img = Image.open(save_label_png(labels, tmp_path / "a.png", 9))
    assert img.mode == "P" and np.array_equal(np.asarray(img), labels)
    wide = np.random.default_rng(1).integers(0, 300, (4, 5))
    assert np.array_equal(np.asarray(Image.open(save_label_png(wide, tmp_path / "b.png", 300))), wide)


def test_class_fractions_and_config_classes():
    from vision_rwkv.seg import load_seg_config
    assert class_fractions(np.array([[0, 0, 0, 2]]), ["bg", "a", "b"]) == {"bg": 0.75, "b": 0.25}
    cfg = load_seg_config(DEMO, ["data.type=ade20k"])
    assert len(config_classes(cfg)) == 150
    cfg = load_seg_config(DEMO, ["data.type=folder", "data.classes=[x,y]"])
    assert config_classes(cfg) == ["x", "y"]


def test_segment_files_follow_the_test_pipeline(checkpoint, images):
    model, cfg, classes = load_segmentor(DEMO, checkpoint, ["test.flip=true", "test.scales=[0.75,1.0]"])
    assert len(classes) == 9 and classes[0] == "background"
    errors = {}
    out = list(segment_files(model, cfg, sorted(images.iterdir()), show_progress=False, errors=errors))
    assert [Path(f).name for f, _, _ in out] == ["im0.png", "im1.png", "im2.png"] and list(errors) == [
        str(images / "bad.png")]
    for f, image, labels in out:
        assert labels.shape == image.shape[:2] and labels.dtype == np.int64 and labels.max() < 9
    # each image read as evaluation reads it (read_seg_image: an RGBA file's alpha dropped)
    from vision_rwkv.seg.datasets import read_seg_image
    assert all(np.array_equal(image, read_seg_image(f)) for f, image, _ in out)
    rgba = np.random.default_rng(1).integers(0, 255, (20, 24, 4), dtype=np.uint8)
    Image.fromarray(rgba).save(images.parent / "rgba.png")
    (_, image, _), = segment_files(model, cfg, [images.parent / "rgba.png"], show_progress=False)
    assert np.array_equal(image, rgba[..., :3])
    # the same as the test loop's inference on the dataset transform of the image
    from vision_rwkv.seg.transforms import SegTestTransform
    image = out[1][1]
    sample = SegTestTransform(None, list(cfg.data.mean), list(cfg.data.std), ratios=[0.75, 1.0])(image)
    assert [tuple(t.shape) for t in sample["scaled"]] == [(3, 30, 42), (3, 40, 56)]
    ref = inference(model, sample["image"][None], out_size=image.shape[:2], mode="whole", flip=True,
                    scales=[0.75, 1.0], scaled=[t[None] for t in sample["scaled"]]).argmax(1)[0].numpy()
    assert np.array_equal(out[1][2], ref)


def test_multi_scale_evaluation_scores_what_prediction_predicts(checkpoint, images, tmp_path):
    """test_seg / the training evaluation with test.scales ran every ratio on a resize of the test-resized tensor
    (the dataset dropped the transform's resizes of the original image), so they disagreed with predict_seg and
    mmseg's MultiScaleFlipAug; now both score the same label maps."""
    from vision_rwkv.seg.datasets import FolderSegDataset
    from vision_rwkv.seg.metrics import SegMetric
    from vision_rwkv.seg.train import _test_kwargs, evaluate_segmentor, test_transform
    model, cfg, classes = load_segmentor(DEMO, checkpoint, ["test.flip=true", "test.scales=[0.5,0.75,1.25]"])
    (images / "bad.png").unlink()
    rng = np.random.default_rng(0)
    (tmp_path / "ann").mkdir()
    for f in images.iterdir():
        w, h = Image.open(f).size
        Image.fromarray(rng.integers(0, 9, (h, w), dtype=np.uint8)).save(tmp_path / "ann" / f.name)
    ds = FolderSegDataset(images, tmp_path / "ann", classes, img_suffix=".png", transform=test_transform(cfg))
    assert len(ds[0]["scaled"]) == 3
    got = evaluate_segmentor(model, ds, show_progress=False, **_test_kwargs(cfg))
    metric = SegMetric(len(classes), 255, classes)
    for f, _, labels in segment_files(model, cfg, sorted(images.iterdir()), show_progress=False):
        mask = np.asarray(Image.open(tmp_path / "ann" / Path(f).name)).astype(np.int64)
        metric.update(torch.from_numpy(labels)[None], torch.from_numpy(mask)[None])
    want = metric.compute()
    assert got["aAcc"] == pytest.approx(100 * want["aAcc"]) and got["mIoU"] == pytest.approx(100 * want["mIoU"])


def test_tool_writes_labels_overlays_and_summary(checkpoint, images, tmp_path, capsys):
    out = tmp_path / "out"
    assert _tool().main([str(DEMO), "--checkpoint", str(checkpoint), "--images", str(images), "--out-dir", str(out),
                         "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["images"] == 4 and summary["segmented"] == 3 and list(summary["unreadable"]) == [
        str(images / "bad.png")]
    assert sorted(p.name for p in out.glob("im*.png")) == ["im0.png", "im1.png", "im2.png"]
    assert Image.open(out / "im1.png").size == (56, 40)
    assert (out / "overlays.png").stat().st_size > 1000
    per_image = json.loads((out / "predictions.json").read_text())["per_image"]
    assert abs(sum(per_image[str(images / "im0.png")]["classes"].values()) - 1) < 1e-5
    # --label-offset 1 (ADE20K's 1..150); an image named overlays.png no longer overwrites (or is overwritten by)
    # the overlay grid
    (images / "bad.png").rename(images / "overlays.png")
    Image.open(images / "im0.png").save(images / "overlays.png")
    out2 = tmp_path / "out2"
    assert _tool().main([str(DEMO), "--checkpoint", str(checkpoint), "--images", str(images), "--out-dir", str(out2),
                         "--no-progress", "--label-offset", "1"]) == 0
    capsys.readouterr()
    labels = json.loads((out2 / "predictions.json").read_text())["per_image"][str(images / "overlays.png")]["labels"]
    assert Path(labels).name == "overlays_.png"
    shifted, plain = np.asarray(Image.open(labels)), np.asarray(Image.open(out / "im0.png"))
    assert np.array_equal(shifted, plain + 1)
    assert Image.open(labels).getpalette()[3:6] == Image.open(out / "im0.png").getpalette()[:3]  # class 0's colour


def test_tool_errors(tmp_path, images, capsys):
    tool = _tool()
    headless = tmp_path / "headless.pt"  # weights without a decode head: no class count from the checkpoint
    torch.save({"model": {"backbone.pos_embed": torch.zeros(1), "neck.conv.weight": torch.zeros(1)}}, headless)
    assert tool.main([str(DEMO), "data.type=folder", "--checkpoint", str(headless), "--images", str(images)]) == 2
    assert "class count" in capsys.readouterr().err
    backbone = tmp_path / "backbone.pt"  # a classification / backbone file: said what it is
    torch.save({"model": {"backbone.pos_embed": torch.zeros(1)}}, backbone)
    assert tool.main([str(DEMO), "data.type=folder", "--checkpoint", str(backbone), "--images", str(images)]) == 2
    assert f"checkpoint {backbone} is not a segmentation checkpoint" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError):
        tool.main([str(DEMO), "--checkpoint", str(tmp_path / "no.pt"), "--images", str(images)])
    with pytest.raises(SystemExit) as exc:  # the option and the config key it sets: one of them
        tool.main([str(DEMO), "--checkpoint", "a.pt", "test.checkpoint=b.pt", "--images", str(images)])
    assert exc.value.code == 2 and "both set test.checkpoint" in capsys.readouterr().err


def _run_tool(tool, argv, monkeypatch):
    """The tool as a command (run_tool: expected errors become one `error:` line and an exit status)."""
    from vision_rwkv.engine.cli import run_tool
    monkeypatch.setattr("sys.argv", ["predict_seg.py", *map(str, argv)])
    with pytest.raises(SystemExit) as exc:
        run_tool(tool.main)
    return exc.value.code


def test_tool_takes_the_checkpoint_test_seg_tests(checkpoint, images, tmp_path, capsys, monkeypatch):
    """No --checkpoint: the run's best.pt, else its newest ckpt_*.pt (resolve_checkpoint, shared with test_seg);
    test.checkpoint=PATH is --checkpoint PATH; no checkpoint at all is an error (exit 1), not random heads."""
    import shutil

    from vision_rwkv.seg import load_seg_config
    from vision_rwkv.seg.train import resolve_checkpoint
    tool = _tool()
    run = tmp_path / "run"
    common = [str(DEMO), f"train.run_dir={run}", "--images", str(images / "im1.png"), "--no-progress"]
    assert _run_tool(tool, [*common, "--out-dir", tmp_path / "none"], monkeypatch) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: no checkpoint to load") and str(run / "checkpoints") in err
    assert not (tmp_path / "none").exists()

    (run / "checkpoints").mkdir(parents=True)
    latest = run / "checkpoints" / "ckpt_00000002.pt"
    shutil.copy(checkpoint, latest)
    torch.save({"model": {}}, run / "checkpoints" / "ckpt_00000001.pt")  # older; would not load
    assert tool.main([*common, "--out-dir", str(tmp_path / "latest")]) == 0
    assert json.loads(capsys.readouterr().out)["checkpoint"] == str(latest)
    best = run / "checkpoints" / "best.pt"
    shutil.copy(checkpoint, best)
    assert resolve_checkpoint(load_seg_config(DEMO, [f"train.run_dir={run}"])) == best  # test_seg's choice
    assert tool.main([*common, "--out-dir", str(tmp_path / "best")]) == 0
    assert json.loads(capsys.readouterr().out)["checkpoint"] == str(best)
    assert tool.main([*common, f"test.checkpoint={checkpoint}", "--out-dir", str(tmp_path / "explicit")]) == 0
    assert json.loads(capsys.readouterr().out)["checkpoint"] == str(checkpoint)
    for out in ("latest", "best"):  # the same weights as the explicit file
        assert np.array_equal(np.asarray(Image.open(tmp_path / out / "im1.png")),
                              np.asarray(Image.open(tmp_path / "explicit" / "im1.png")))


def test_tool_without_images_is_an_error_line(checkpoint, tmp_path, capsys, monkeypatch):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    argv = [DEMO, "--checkpoint", checkpoint, "--images", tmp_path / "empty", "--out-dir", tmp_path / "out"]
    assert _run_tool(_tool(), argv, monkeypatch) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: no image files in") and str(tmp_path / "empty") in err and err.count("\n") == 1


def test_mismatched_checkpoint_error_is_capped(checkpoint, images, tmp_path, capsys):
    """A checkpoint of another model: one error line with the counts of missing / unexpected keys and the first 20
    of each, not every key."""
    from vision_rwkv.models.convert import CheckpointMismatchError
    from vision_rwkv.seg.convert import load_segmentor_weights
    state = torch.load(checkpoint)["model"]
    renamed = {k.replace("backbone.", "encoder."): v for k, v in state.items()}
    n = sum(k.startswith("backbone.") for k in state)
    assert n > 40
    bad = tmp_path / "other_model.pt"
    torch.save(renamed, bad)
    assert _tool().main([str(DEMO), "--checkpoint", str(bad), "--images", str(images), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: checkpoint {bad} does not match the config's model: {n} missing keys (")
    assert f"; {n} unexpected keys (encoder." in err and f"... and {n - 20} more)" in err
    assert err.count("backbone.") == 20 and err.count("encoder.") == 20 and len(err) < 4000
    model, _, _ = load_segmentor(DEMO)
    with pytest.raises(CheckpointMismatchError, match=r"^checkpoint x\.pt does not match the config's model: 2 shape "
                                                      r"mismatches \(decode_head\.conv_seg\.bias: checkpoint \(5,\) "
                                                      r"vs model \(9,\), decode_head\.conv_seg\.weight: "
                                                      r"checkpoint \(5, 32, 1, 1\) vs model \(9, 32, 1, 1\)\)$"):
        load_segmentor_weights(model, "x.pt", {**state, "decode_head.conv_seg.weight": torch.zeros(5, 32, 1, 1),
                                               "decode_head.conv_seg.bias": torch.zeros(5)})
    with pytest.raises(RuntimeError, match="missing keys"):  # a RuntimeError too (as tools/export.py catches)
        load_segmentor_weights(model, "x.pt", {})
    load_segmentor_weights(model, "x.pt", state)
    torch.testing.assert_close(model.state_dict(), state)


def test_overlays_without_ground_truth_have_two_panels(tmp_path):
    from vision_rwkv.seg.visualize import save_overlays
    img, lab = np.zeros((8, 8, 3), np.uint8), np.ones((8, 8), np.int64)
    with_gt = Image.open(save_overlays(tmp_path / "a.png", [img], [lab], [lab], ["a", "b"]))
    without = Image.open(save_overlays(tmp_path / "b.png", [img], [None], [lab], ["a", "b"]))
    assert without.size[0] * 3 == with_gt.size[0] * 2


@pytest.mark.parametrize("num_present", [2, 150])
def test_overlay_legend_leaves_the_panels_free(tmp_path, monkeypatch, num_present):
    """With ADE20K's 150 classes present, the legend (25 rows) covered the bottom row of panels: it had a fixed 6%
    of the figure."""
    from vision_rwkv.seg import visualize
    figures = []
    real = visualize.save_figure
    monkeypatch.setattr(visualize, "save_figure", lambda fig, path: figures.append(fig) or real(fig, path))
    rng = np.random.default_rng(0)
    labels = [rng.integers(0, num_present, (24, 24)) for _ in range(2)]
    labels[0].flat[:num_present] = np.arange(num_present)
    names = [f"class {i}" for i in range(150)]
    visualize.save_overlays(tmp_path / "o.png", [np.zeros((24, 24, 3), np.uint8)] * 2, labels, labels, names)
    fig = figures[0]
    fig.canvas.draw()
    legend = fig.legends[0].get_window_extent()
    assert len(fig.legends[0].get_texts()) == num_present
    assert all(legend.y1 <= ax.get_window_extent().y0 for ax in fig.axes)


def test_palette_tells_every_class_apart():
    """Golden-ratio hues gave classes i and i + 144 the same colour (ADE20K: wall and bulletin board, floor and
    glass, ... 51 pairs closer than 20 in RGB). Now every pair of 150 is >= 15 apart in CIELAB and from black (the
    ignored pixels); up to 20 classes keep tab10 / tab20, and the first 20 of any larger palette are tab20's."""
    from vision_rwkv.seg.visualize import _cielab, make_palette
    pal = make_palette(150)
    lab = _cielab(pal / 255.0)
    dist = np.linalg.norm(lab[:, None] - lab[None], axis=-1) + np.eye(150) * 1e9
    assert pal.shape == (150, 3) and pal.dtype == np.uint8 and dist.min() > 15
    assert np.linalg.norm(lab, axis=-1).min() > 15  # (black: L*a*b* 0, 0, 0)
    assert np.array_equal(pal[:20], make_palette(20)) and np.array_equal(make_palette(150), pal)
    assert len(make_palette(8)) == 8


def test_overlay_row_titles_keep_long_names_inside(tmp_path, captured_figures):
    from vision_rwkv.seg import visualize
    figures = captured_figures(visualize)
    img, lab = np.zeros((8, 8, 3), np.uint8), np.ones((8, 8), np.int64)
    name = "/data/photos/" + "x" * 80 + "/IMG_0001.jpg"
    visualize.save_overlays(tmp_path / "a.png", [img], [None], [lab], ["a", "b"], titles=[name])
    title = figures[0].axes[0].get_title()
    assert len(title) == 40 and title.endswith("IMG_0001.jpg")


def test_class_names_that_do_not_fit_warn_and_recorded_names_win(checkpoint, images, tmp_path, capsys):
    """data.classes of 3 names for a 9-class checkpoint were dropped silently ('class <i>' labels); now a warning
    says so. A checkpoint recording its classes (extra.classes, as tools/train_seg.py writes) names the labels,
    with a warning when the config's names differ."""
    one = ["--images", str(images / "im0.png"), "--no-progress"]
    assert _tool().main([str(DEMO), "data.type=folder", "data.classes=[a,b,c]", "--checkpoint", str(checkpoint),
                         "--out-dir", str(tmp_path / "o1"), *one]) == 0
    err = capsys.readouterr().err
    assert "warning: the config names 3 classes (a, b, c) but the model has 9" in err and err.count("\n") == 1
    named = tmp_path / "named.pt"
    recorded = [f"thing{i}" for i in range(9)]
    torch.save({"model": torch.load(checkpoint)["model"], "extra": {"classes": recorded}}, named)
    assert _tool().main([str(DEMO), "data.type=folder", "data.classes=[a,b,c]", "--checkpoint", str(named),
                         "--out-dir", str(tmp_path / "o2"), *one]) == 0
    err = capsys.readouterr().err
    assert "warning: the config's 3 class names differ from the 9 that checkpoint" in err and "class <i>" not in err
    per_image = json.loads((tmp_path / "o2" / "predictions.json").read_text(encoding="utf-8"))["per_image"]
    assert set(per_image[str(images / "im0.png")]["classes"]) <= set(recorded)
    with pytest.warns(UserWarning, match="differ from the 9"):  # (the shapes config's own 9 names)
        _, _, classes = load_segmentor(DEMO, named)
    assert classes == recorded


def test_a_file_given_twice_is_segmented_once(checkpoint, images, tmp_path, capsys):
    """The same file twice gave two label PNGs (im0.png, im0_.png) but one per_image entry; now it is deduplicated
    (also when named by two paths), keeping the order given."""
    im0, im1 = images / "im0.png", images / "im1.png"
    assert _tool().main([str(DEMO), "--checkpoint", str(checkpoint), "--images", str(im1), str(im0), str(im1),
                         str(images / ".." / "imgs" / "im0.png"), "--out-dir", str(tmp_path / "o"),
                         "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["images"] == 2 and summary["segmented"] == 2
    assert sorted(p.name for p in (tmp_path / "o").glob("im*.png")) == ["im0.png", "im1.png"]
    assert list(json.loads((tmp_path / "o" / "predictions.json").read_text())["per_image"]) == [str(im1), str(im0)]


def test_unwritable_out_dir_is_one_line_before_the_model(images, tmp_path, capsys, monkeypatch):
    """--out-dir naming a file (or a folder under one): a FileExistsError traceback after every image was run."""
    tool = _tool()
    import vision_rwkv.seg.predict_images as lib
    monkeypatch.setattr(lib, "load_trained_segmentor", lambda *a, **k: pytest.fail("must not load the model"))
    (tmp_path / "afile").write_text("")
    for out, message in [(tmp_path / "afile", "is a file, not a folder"),
                         (tmp_path / "afile" / "sub", f"{tmp_path / 'afile'} is a file")]:
        assert tool.main([str(DEMO), "--images", str(images), "--out-dir", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: --out-dir ") and message in err and err.count("\n") == 1


def test_no_readable_image_exits_1_after_listing_them(checkpoint, images, tmp_path, capsys):
    out = tmp_path / "o"
    assert _tool().main([str(DEMO), "--checkpoint", str(checkpoint), "--images", str(images / "bad.png"),
                         "--out-dir", str(out), "--no-progress"]) == 1
    assert "error: not one of the 1 images could be read" in capsys.readouterr().err
    assert list(json.loads((out / "predictions.json").read_text(encoding="utf-8"))["unreadable"]) == [
        str(images / "bad.png")]


def test_tool_channels_last_labels_as_the_plain_model(checkpoint, images, tmp_path, capsys, monkeypatch):
    """--channels-last (the config's test.channels_last) makes the model channels-last; the label maps are the
    plain model's."""
    import vision_rwkv.seg.train as seg_train
    converted = []
    real = seg_train.to_channels_last
    monkeypatch.setattr(seg_train, "to_channels_last", lambda m: converted.append(m) or real(m))
    for flag in ([], ["--channels-last"]):
        out = tmp_path / ("cl" if flag else "plain")
        assert _tool().main([str(DEMO), "--checkpoint", str(checkpoint), "--images", str(images), "--out-dir",
                             str(out), "--no-progress", *flag]) == 0
        assert len(converted) == len(flag)
    capsys.readouterr()
    for name in ("im0.png", "im1.png", "im2.png"):
        assert np.array_equal(np.asarray(Image.open(tmp_path / "cl" / name)),
                              np.asarray(Image.open(tmp_path / "plain" / name))), name
