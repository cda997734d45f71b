"""ImageFolder / CSV datasets: RGB conversion, unreadable images skipped and counted, clear errors."""
import numpy as np
import pytest
from PIL import Image

from vision_rwkv.data.folder import AnnFileDataset, CsvImageDataset, ImageFolderDataset, load_rgb
from vision_rwkv.engine import EpochLoader


def _save(path, mode):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    if mode == "RGB":
        Image.fromarray(rng.integers(0, 255, (9, 7, 3), dtype=np.uint8)).save(path)
    elif mode == "L":
        Image.fromarray(rng.integers(0, 255, (9, 7), dtype=np.uint8)).save(path)
    elif mode == "RGBA":
        a = rng.integers(0, 255, (9, 7, 4), dtype=np.uint8)
        a[..., 3] = 0  # fully transparent: alpha dropped, the colours kept (as timm / open_clip / mmseg read it)
        Image.fromarray(a, "RGBA").save(path)
    elif mode == "P":
        Image.fromarray(rng.integers(0, 255, (9, 7, 3), dtype=np.uint8)).convert("P").save(path)
    elif mode == "I;16":
        Image.fromarray(rng.integers(0, 65535, (9, 7), dtype=np.uint16)).save(path)
    elif mode == "corrupt":
        path.write_bytes(b"\xff\xd8\xff garbage, not a jpeg")
    elif mode == "truncated":
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
        path.write_bytes(path.read_bytes()[:200])


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "train"
    for i, mode in enumerate(["RGB", "L", "RGBA", "P", "I;16"]):
        _save(root / "cat" / f"{i}.png", mode)
    _save(root / "dog" / "a.png", "RGB")
    _save(root / "dog" / "sub" / "b.png", "L")
    _save(root / "dog" / "broken.jpg", "corrupt")
    _save(root / "dog" / "cut.png", "truncated")
    (root / "dog" / "notes.txt").write_text("not an image")
    return root


def test_image_folder_rgb_and_skips(tree):
    ds = ImageFolderDataset(tree)
    assert ds.classes == ["cat", "dog"] and len(ds) == 9
    for i in range(len(ds)):
        path, label = ds.samples[i]
        if path.endswith(("broken.jpg", "cut.png")):
            with pytest.warns(UserWarning, match="unreadable"):
                assert ds[i] is None
        else:
            img, y = ds[i]
            assert img.mode == "RGB" and img.size == (7, 9) and y == label
    assert ds.num_failed == 2
    rgba = load_rgb(tree / "cat" / "2.png")  # alpha dropped, not composited onto black (every pixel was 0)
    assert np.array_equal(np.asarray(rgba), np.asarray(Image.open(tree / "cat" / "2.png"))[..., :3])
    with Image.open(tree / "cat" / "2.png") as im:
        assert np.array_equal(np.asarray(rgba), np.asarray(im.convert("RGB")))  # timm's loader
    loader = EpochLoader(ImageFolderDataset(tree, transform=lambda im: np.asarray(im).mean()), 3, shuffle=False,
                         drop_last=False)
    with pytest.warns(UserWarning):
        n = sum(len(b[1]) for _, b in loader.iter_epoch(0))
    assert n == 7 and loader.num_skipped == 2


def test_decompression_bomb_is_skipped(tmp_path):
    """PIL's DecompressionBombError is not an OSError: a 48 KB PNG declaring 400 Mpx is skipped like any
    unreadable image, not a crash of the loader."""
    from PIL import Image
    (tmp_path / "c").mkdir()
    Image.new("1", (20000, 20000)).save(tmp_path / "c" / "bomb.png")
    ds = ImageFolderDataset(tmp_path)
    with pytest.warns(UserWarning, match="DecompressionBombError"):
        assert ds[0] is None


def test_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        ImageFolderDataset(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no class sub-folders"):
        ImageFolderDataset(tmp_path / "empty")
    (tmp_path / "noimg" / "a").mkdir(parents=True)
    with pytest.raises(ValueError, match="no images"):
        ImageFolderDataset(tmp_path / "noimg")
    (tmp_path / "x" / "a").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="b"):
        ImageFolderDataset(tmp_path / "x", classes=["a", "b"])
    # a class folder with images outside the given classes (a validation class training never saw) is named;
    # an empty one is ignored
    _save(tmp_path / "val" / "cat" / "0.png", "RGB")
    (tmp_path / "val" / "fish").mkdir()
    assert len(ImageFolderDataset(tmp_path / "val", classes=["cat"])) == 1
    _save(tmp_path / "val" / "bird" / "0.png", "RGB")
    with pytest.raises(ValueError, match=r"not among the 1 classes given: \['bird'\]"):
        ImageFolderDataset(tmp_path / "val", classes=["cat"])


def test_csv_dataset(tree, tmp_path):
    csv = tmp_path / "list.csv"
    csv.write_text(f"path,label\ntrain/cat/0.png,cat\n{tree}/dog/a.png,dog\ntrain/dog/missing.png,dog\n")
    ds = CsvImageDataset(csv)
    assert ds.classes == ["cat", "dog"] and len(ds) == 3
    assert ds[0][1] == 0 and ds[1][1] == 1
    with pytest.warns(UserWarning, match="missing.png"):
        assert ds[2] is None
    csv2 = tmp_path / "ints.csv"
    csv2.write_text("file,y\ntrain/cat/1.png,2\n")
    ds2 = CsvImageDataset(csv2, path_col="file", label_col="y")
    assert ds2.classes == ["0", "1", "2"] and ds2[0][1] == 2 and ds2[0][0].mode == "RGB"
    with pytest.raises(ValueError, match="no column 'path'"):
        CsvImageDataset(csv2)
    with pytest.raises(FileNotFoundError, match="CSV file not found"):
        CsvImageDataset(tmp_path / "nope.csv")
    with pytest.raises(ValueError, match="not in classes"):
        CsvImageDataset(csv, classes=["cat"])


def test_real_world_folders_and_tables(tmp_path):
    """Hidden files and folders (.ipynb_checkpoints, macOS ._ files) and symlink loops add no samples; a CSV with a
    BOM, a .tsv, and rows without a label or path (an error naming the line, not a class named '')."""
    import os
    root = tmp_path / "train"
    _save(root / "cat" / "a.png", "RGB")
    _save(root / "cat" / ".ipynb_checkpoints" / "a-checkpoint.png", "RGB")
    _save(root / "cat" / "._a.png", "RGB")
    _save(root / "dog" / "b.png", "RGB")
    os.symlink(root / "dog", root / "dog" / "loop")
    ds = ImageFolderDataset(root)
    assert sorted(os.path.basename(p) for p, _ in ds.samples) == ["a.png", "b.png"]
    (tmp_path / "bom.csv").write_text("\ufeffpath,label\ntrain/cat/a.png,cat\n", encoding="utf-8")
    assert CsvImageDataset(tmp_path / "bom.csv").classes == ["cat"]
    (tmp_path / "t.tsv").write_text("path\tlabel\ntrain/cat/a.png\tcat\ntrain/dog/b.png\tdog\n")
    assert CsvImageDataset(tmp_path / "t.tsv").classes == ["cat", "dog"]
    rows = "path,label\ntrain/cat/a.png,cat\n"
    for name, text, message in (("empty.csv", rows + "train/dog/b.png,\n", "line 3: no label"),
                                ("short.csv", rows + "train/dog/b.png\n", "line 3: no label"),
                                ("nopath.csv", "path,label\n,cat\n", "line 2: no path")):
        (tmp_path / name).write_text(text)
        with pytest.raises(ValueError, match=rf"{name} {message}"):
            CsvImageDataset(tmp_path / name)


def test_load_rgb_integer_images_and_pillows_truncation_setting(tmp_path):
    """A 32-bit integer image holding 0..255 keeps its values (it was divided by 256: black); 16-bit images are
    scaled to 8 bits; importing the package leaves Pillow's LOAD_TRUNCATED_IMAGES as the process set it."""
    import subprocess
    import sys
    values = np.arange(0, 256, dtype=np.int32).reshape(16, 16)
    Image.fromarray(values, "I").save(tmp_path / "i32.tif")
    assert np.array_equal(np.asarray(load_rgb(tmp_path / "i32.tif"))[..., 0], values.astype(np.uint8))
    Image.fromarray((values * 256).astype(np.uint16)).save(tmp_path / "i16.png")
    assert np.array_equal(np.asarray(load_rgb(tmp_path / "i16.png"))[..., 1], values.astype(np.uint8))
    code = ("from PIL import ImageFile; ImageFile.LOAD_TRUNCATED_IMAGES = True; import vision_rwkv.data.folder; "
            "print(ImageFile.LOAD_TRUNCATED_IMAGES)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "True"


def test_a_validation_split_may_lack_a_class_folder(tmp_path):
    """Small validation splits often lack a class: with allow_missing (the tools' validation split) its label is
    kept and it has no images; without (training), or when no class has a folder, it is an error."""
    _save(tmp_path / "val" / "cat" / "a.png", "RGB")
    ds = ImageFolderDataset(tmp_path / "val", classes=["cat", "dog"], allow_missing=True)
    assert ds.classes == ["cat", "dog"] and [y for _, y in ds.samples] == [0]
    with pytest.raises(FileNotFoundError, match=r"class folders missing under .*: \['dog'\]"):
        ImageFolderDataset(tmp_path / "val", classes=["cat", "dog"])
    with pytest.raises(FileNotFoundError, match="missing"):
        ImageFolderDataset(tmp_path / "val", classes=["ant", "dog"], allow_missing=True)


def test_mmcls_annotation_lists(tmp_path):
    """mmcls's ann_file: '<path> <class index>' lines under data_prefix (ImageNet's meta/val.txt over a flat val
    folder); names with spaces; the indices count the classes given (the training folder's)."""
    for name in ("a.png", "b c.png"):
        Image.fromarray(np.full((4, 4, 3), 9, np.uint8)).save(tmp_path / name)
    (tmp_path / "val.txt").write_text("a.png 1\n\nb c.png 0\n")
    ds = AnnFileDataset(tmp_path / "val.txt", tmp_path, classes=["cat", "dog"])
    assert ds.samples == [(str(tmp_path / "a.png"), 1), (str(tmp_path / "b c.png"), 0)] and ds[1][1] == 0
    assert AnnFileDataset(tmp_path / "val.txt", tmp_path).classes == ["0", "1"]
    with pytest.raises(ValueError, match=r"val.txt line 1: class index 1 is past the 1 classes \(cat\)"):
        AnnFileDataset(tmp_path / "val.txt", tmp_path, classes=["cat"])
    (tmp_path / "bad.txt").write_text("a.png 1\na.png cat\n")
    with pytest.raises(ValueError, match=r"bad.txt line 2: expected '<path> <class index>'"):
        AnnFileDataset(tmp_path / "bad.txt", tmp_path)
    with pytest.raises(FileNotFoundError, match="annotation file not found"):
        AnnFileDataset(tmp_path / "missing.txt", tmp_path)
    with pytest.raises(FileNotFoundError, match="image folder root not found"):  # (every image would be skipped)
        AnnFileDataset(tmp_path / "val.txt", tmp_path / "nope")


def test_csv_integer_labels_as_indices_into_given_classes(tmp_path):
    """label_indices: integer labels index the classes given (as an annotation list's do); labels that are all
    class names still map by name; a label past the classes is an error naming it."""
    (tmp_path / "l.csv").write_text("path,label\na.png,0\nb.png,2\n")
    ds = CsvImageDataset(tmp_path / "l.csv", classes=["cat", "dog", "owl"], label_indices=True)
    assert ds.classes == ["cat", "dog", "owl"] and ds.targets == [0, 2] and ds.integer_labels
    with pytest.raises(ValueError, match="labels not in classes"):  # (without label_indices: names only)
        CsvImageDataset(tmp_path / "l.csv", classes=["cat", "dog", "owl"])
    by_name = CsvImageDataset(tmp_path / "l.csv", classes=[2, 0], label_indices=True)  # (YAML ints: strings)
    assert by_name.classes == ["2", "0"] and by_name.targets == [1, 0]
    with pytest.raises(ValueError, match="has label 2, past the 2 classes"):
        CsvImageDataset(tmp_path / "l.csv", classes=["cat", "dog"], label_indices=True)


def test_class_names_are_the_same_under_every_locale(tmp_path):
    """Under LC_ALL=C (PYTHONUTF8=0) Python lists a UTF-8 folder name ``café`` as ``'caf\\udcc3\\udca9'``: the class
    names a run recorded depended on the training machine's locale (a model trained there refused the same folders
    elsewhere). Class names are decoded as UTF-8; the images are still read through the names as listed."""
    import os
    import subprocess
    import sys
    for name in ("caf\u00e9", "plain"):
        _save(tmp_path / name / "\u00efmg.png", "RGB")
    code = ("import sys; from vision_rwkv.data.folder import ImageFolderDataset\n"
            "ds = ImageFolderDataset(sys.argv[1])\n"
            "print(ascii(ds.classes), len(ds.samples), ds[0][0].size, sys.getfilesystemencoding())\n")
    env = {**os.environ, "LANG": "C", "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONIOENCODING": "ascii"}
    out = subprocess.run([sys.executable, "-c", code, os.fsencode(tmp_path)], capture_output=True, env=env)
    assert out.returncode == 0, out.stderr.decode()
    assert out.stdout.decode().split() == ["['caf\\xe9',", "'plain']", "2", "(7,", "9)", "ascii"]
    assert ImageFolderDataset(tmp_path).classes == ["caf\u00e9", "plain"]
