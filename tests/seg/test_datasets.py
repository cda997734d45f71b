"""Segmentation datasets: folder pairs, ADE20K / Cityscapes layouts, Shapes masks, and their errors."""
import re

import numpy as np
import pytest
import torch
from PIL import Image

from vision_rwkv.seg.datasets import ADE20KDataset, CityscapesDataset, FolderSegDataset, ShapesSegDataset


def _write(path, array, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format=fmt)


def _pair(root, name, h=12, w=16, labels=(0, 1, 2), img_ext=".jpg", ann_ext=".png"):
    rng = np.random.default_rng(abs(hash(name)) % 1000)
    _write(root / "img" / f"{name}{img_ext}", rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    _write(root / "ann" / f"{name}{ann_ext}", rng.choice(np.array(labels, dtype=np.uint8), size=(h, w)))


def test_folder_dataset_loads_pairs(tmp_path):
    _pair(tmp_path, "a")
    _pair(tmp_path, "sub/b", labels=(0, 2, 255))
    ds = FolderSegDataset(tmp_path / "img", tmp_path / "ann", ["bg", "x", "y"])
    assert len(ds) == 2 and ds.num_classes == 3
    s = ds[1]
    assert s["name"] == "sub/b.jpg" and s["image"].shape == (3, 12, 16) and s["mask"].dtype == torch.int64
    assert set(s["mask"].unique().tolist()) <= {0, 2, 255}
    assert s["ori_size"].tolist() == [12, 16]


def test_negative_ignore_index_is_kept(tmp_path):
    """reduce_zero_label maps 0 to the ignore index as it is, also a negative one (no wrap into uint8)."""
    _pair(tmp_path, "a", labels=(0, 1, 3))
    ds = FolderSegDataset(tmp_path / "img", tmp_path / "ann", ["x", "y", "z"], reduce_zero_label=True,
                          ignore_index=-1)
    ann = np.asarray(Image.open(tmp_path / "ann" / "a.png")).astype(np.int64)
    np.testing.assert_array_equal(ds[0]["mask"].numpy(), np.where(ann == 0, -1, ann - 1))


def test_size_mismatch_is_an_error(tmp_path):
    _pair(tmp_path, "a")
    _write(tmp_path / "ann" / "a.png", np.zeros((10, 16), dtype=np.uint8))
    ds = FolderSegDataset(tmp_path / "img", tmp_path / "ann", ["bg", "x", "y"])
    with pytest.raises(ValueError, match=r"a.jpg: image size 16x12 .* mask size 16x10"):
        ds[0]


def test_label_out_of_range_is_an_error(tmp_path):
    """The error names the annotation file (not the image) and the values as stored in it."""
    _pair(tmp_path, "a", labels=(0, 1, 7))
    ds = FolderSegDataset(tmp_path / "img", tmp_path / "ann", ["bg", "x", "y"])
    ann = re.escape(str(tmp_path / "ann" / "a.png"))
    with pytest.raises(ValueError, match=rf"label map {ann}: stored label values \[7\] are outside the class range "
                                         rf"\[0, 3\) and are not the ignore index 255"):
        ds[0]


def test_label_out_of_range_with_reduce_zero_label_reports_stored_values(tmp_path):
    """ADE20K (reduce_zero_label): a stored 200 is reported as 200 (not the shifted 199), with the PNG's path; the
    stored range is [1, 150] plus 0 (ignored) and the ignore index. A stored 256 (16-bit PNG) would become 255 after
    the shift and be silently ignored: it is reported too."""
    img = np.zeros((4, 6, 3), dtype=np.uint8)
    _write(tmp_path / "images" / "validation" / "x.jpg", img)
    ann_path = tmp_path / "annotations" / "validation" / "x.png"
    _write(ann_path, np.array([[0, 1, 150, 255, 200, 200]] * 4, dtype=np.uint8))
    ds = ADE20KDataset(tmp_path, "validation")
    with pytest.raises(ValueError, match=rf"label map {re.escape(str(ann_path))}: stored label values \[200\] are "
                                         rf"outside \[1, 150\] \(classes 0..149 stored as 1..150"):
        ds[0]
    _write(ann_path, np.array([[0, 1, 150, 255, 256, 256]] * 4, dtype=np.uint16))
    with pytest.raises(ValueError, match=r"stored label values \[256\]"):
        ds[0]
    _write(ann_path, np.array([[0, 1, 150, 255, 3, 3]] * 4, dtype=np.uint8))
    assert ds[0]["mask"][0].tolist() == [255, 0, 149, 255, 2, 2]


def test_missing_files_are_named(tmp_path):
    _pair(tmp_path, "a")
    _write(tmp_path / "img" / "orphan.jpg", np.zeros((4, 4, 3), dtype=np.uint8))
    with pytest.raises(FileNotFoundError, match="orphan.png"):
        FolderSegDataset(tmp_path / "img", tmp_path / "ann", ["bg"])
    with pytest.raises(FileNotFoundError, match="annotation directory not found"):
        FolderSegDataset(tmp_path / "img", tmp_path / "nothing", ["bg"])
    with pytest.raises(FileNotFoundError, match="no images ending in '.tif'"):
        FolderSegDataset(tmp_path / "img", tmp_path / "ann", ["bg"], img_suffix=".tif")


def test_rgb_mask_and_corrupt_image_are_errors(tmp_path):
    _pair(tmp_path, "a")
    _write(tmp_path / "ann" / "a.png", np.zeros((12, 16, 3), dtype=np.uint8))
    ds = FolderSegDataset(tmp_path / "img", tmp_path / "ann", ["bg", "x", "y"])
    with pytest.raises(ValueError, match="single-channel"):
        ds[0]
    _pair(tmp_path, "a")
    (tmp_path / "img" / "a.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match="cannot read image .*a.jpg"):
        ds[0]


def test_ade20k_layout_reduces_zero_label(tmp_path):
    for split in ("training", "validation"):
        img = np.full((6, 8, 3), 100, dtype=np.uint8)
        ann = np.array([[0, 1, 150, 255] * 2] * 6, dtype=np.uint8)
        _write(tmp_path / "images" / split / f"ADE_{split}_1.jpg", img)
        _write(tmp_path / "annotations" / split / f"ADE_{split}_1.png", ann)
    ds = ADE20KDataset(tmp_path, "validation")
    assert ds.num_classes == 150 and ds.classes[0] == "wall"
    assert ds[0]["mask"][0, :4].tolist() == [255, 0, 149, 255]  # 0 ("other") and 255 ignored, others shifted
    assert len(ADE20KDataset(tmp_path, "train")) == 1
    with pytest.raises(ValueError, match="split"):
        ADE20KDataset(tmp_path, "test")


def test_cityscapes_layout(tmp_path):
    img = np.zeros((4, 8, 3), dtype=np.uint8)
    ann = np.array([[0, 18, 255, 3] * 2] * 4, dtype=np.uint8)
    _write(tmp_path / "leftImg8bit" / "val" / "ulm" / "ulm_000001_000019_leftImg8bit.png", img)
    _write(tmp_path / "gtFine" / "val" / "ulm" / "ulm_000001_000019_gtFine_labelTrainIds.png", ann)
    ds = CityscapesDataset(tmp_path, "val")
    assert ds.num_classes == 19 and ds[0]["mask"][0, :4].tolist() == [0, 18, 255, 3]


def test_shapes_masks():
    ds = ShapesSegDataset("val", length=3, image_size=32)
    s = ds[2]
    assert ds.num_classes == 9 and ds.classes[0] == "background"
    assert s["image"].shape == (3, 32, 32) and s["mask"].shape == (32, 32)
    labels = set(s["mask"].unique().tolist())
    assert 0 in labels and len(labels) == 2  # background + one shape


def test_folder_suffix_in_any_case_hidden_files_left_out_and_one_image_reader(tmp_path):
    """img_suffix='.jpg' finds b.JPG too; an image under a hidden folder (.ipynb_checkpoints) is no sample (it was
    an error: "has no mask"); prediction reads an image as evaluation does (an RGBA file: alpha dropped, as the
    classification and RWKV-CLIP loaders do)."""
    from vision_rwkv.seg.datasets import read_seg_image
    _pair(tmp_path, "a")
    _pair(tmp_path, "b", img_ext=".JPG")
    _write(tmp_path / "img" / ".ipynb_checkpoints" / "a-checkpoint.jpg", np.zeros((4, 4, 3), dtype=np.uint8))
    ds = FolderSegDataset(tmp_path / "img", tmp_path / "ann", ["bg", "x", "y"])
    assert [p.name for p, _ in ds.samples] == ["a.jpg", "b.JPG"]
    rgba = np.random.default_rng(0).integers(0, 255, (6, 5, 4), dtype=np.uint8)
    _write(tmp_path / "rgba.png", rgba)
    assert np.array_equal(read_seg_image(tmp_path / "rgba.png"), rgba[..., :3])
    _write(tmp_path / "i16.png", (rgba[..., 0].astype(np.uint16) * 256))
    assert np.array_equal(read_seg_image(tmp_path / "i16.png")[..., 2], rgba[..., 0])
    # a phone photo stored sideways (EXIF orientation 6) is read upright, as OpenCV (mmseg) reads it
    import cv2
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(rgba[..., :3].repeat(8, 0).repeat(8, 1)).save(tmp_path / "turned.jpg", exif=exif.tobytes())
    upright = read_seg_image(tmp_path / "turned.jpg")
    assert upright.shape == cv2.imread(str(tmp_path / "turned.jpg")).shape == (40, 48, 3)


def test_ade20k_root_one_folder_up_is_named(tmp_path):
    """data.root at the folder holding ADEChallengeData2016 (the unpacked zip): the error says where the data is."""
    from vision_rwkv.seg.datasets import ADE20KDataset
    (tmp_path / "ADEChallengeData2016" / "images" / "training").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"its ADEChallengeData2016/ has: data.root=.*ADEChallengeData2016"):
        ADE20KDataset(tmp_path, "training")


def test_big_endian_16_bit_masks_load(tmp_path):
    """A 16-bit big-endian TIFF mask (ImageJ's) was refused as "not single-channel"."""
    _pair(tmp_path, "a", labels=(0, 1, 2))
    labels = np.asarray(Image.open(tmp_path / "ann" / "a.png")).astype(np.uint16)
    Image.frombytes("I;16B", (16, 12), labels.astype(">u2").tobytes()).save(tmp_path / "ann" / "a.tif")
    ds = FolderSegDataset(tmp_path / "img", tmp_path / "ann", ["bg", "x", "y"], seg_map_suffix=".tif")
    np.testing.assert_array_equal(ds[0]["mask"].numpy(), labels)


def test_binary_masks_of_0_and_255_warn_that_the_foreground_is_ignored(tmp_path):
    """2 classes stored as 0 / 255: every object pixel is the ignore index (mmseg's convention), and a model
    predicting background scored 100% mIoU without a word."""
    _pair(tmp_path, "a", labels=(0, 255))
    _pair(tmp_path, "b", labels=(0, 255))
    ds = FolderSegDataset(tmp_path / "img", tmp_path / "ann", ["bg", "object"])
    with pytest.warns(UserWarning, match=r"holds only 0 and 255 in a 2-class dataset.*store a binary mask as 0 / 1"):
        ds[0]
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds[1]  # (once per dataset)


def test_a_size_mismatch_from_exif_orientation_says_so(tmp_path):
    _pair(tmp_path, "a", h=12, w=16)
    image = Image.open(tmp_path / "img" / "a.jpg")
    exif = image.getexif()
    exif[0x0112] = 6  # rotated 90 degrees: read upright as 12 x 16
    image.save(tmp_path / "img" / "a.jpg", exif=exif)
    ds = FolderSegDataset(tmp_path / "img", tmp_path / "ann", ["bg", "x", "y"])
    with pytest.raises(ValueError, match=r"differ \(the image is turned upright by its EXIF orientation"):
        ds[0]
