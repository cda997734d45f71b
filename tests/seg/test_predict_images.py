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
from vision_rwkv.seg.predict_images import class_fractions, config_classes, load_segmentor, save_label_png, segment_files

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
    # the same as the test loop's inference on the dataset transform of the image
    from vision_rwkv.seg.transforms import SegTestTransform
    image = out[1][1]
    sample = SegTestTransform(None, list(cfg.data.mean), list(cfg.data.std), ratios=[0.75, 1.0])(image)
    assert [tuple(t.shape) for t in sample["scaled"]] == [(3, 30, 42), (3, 40, 56)]
    ref = inference(model, sample["image"][None], out_size=image.shape[:2], mode="whole", flip=True,
                    scales=[0.75, 1.0], scaled=[t[None] for t in sample["scaled"]]).argmax(1)[0].numpy()
    assert np.array_equal(out[1][2], ref)


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


def test_tool_errors(tmp_path, images, capsys):
    tool = _tool()
    assert tool.main([str(DEMO), "data.type=folder", "--images", str(images)]) == 2
    assert "class count" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError):
        tool.main([str(DEMO), "--checkpoint", str(tmp_path / "no.pt"), "--images", str(images)])


def test_overlays_without_ground_truth_have_two_panels(tmp_path):
    from vision_rwkv.seg.visualize import save_overlays
    img, lab = np.zeros((8, 8, 3), np.uint8), np.ones((8, 8), np.int64)
    with_gt = Image.open(save_overlays(tmp_path / "a.png", [img], [lab], [lab], ["a", "b"]))
    without = Image.open(save_overlays(tmp_path / "b.png", [img], [None], [lab], ["a", "b"]))
    assert without.size[0] * 3 == with_gt.size[0] * 2
