"""Caption data: CSV/TSV, webdataset-style tar shards, unreadable images, per-sample caption draws."""
import json
import tarfile
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from clip_helpers import png_bytes, write_tar
from rwkv_clip.data import (CsvCaptionDataset, RandomCaptionDataset, ShapesCaptionSamples, TarCaptionDataset,
                            UnreadableImage, expand_shards)
from vision_rwkv.engine import EpochLoader


def _to_tensor(img):
    return torch.from_numpy(np.array(img)).permute(2, 0, 1).float()


def _csv(tmp_path, sep=","):
    (tmp_path / "img").mkdir()
    rows = []
    for i in range(5):
        (tmp_path / "img" / f"{i}.png").write_bytes(png_bytes(10 * i))
        rows.append([f"img/{i}.png", f"raw {i}", f"syn {i}" if i != 2 else "", f"llm {i}"])
    (tmp_path / "img" / "3.png").write_bytes(b"\x89PNG corrupt")  # corrupt
    rows[4][0] = "img/missing.png"  # missing
    path = tmp_path / ("data.tsv" if sep == "\t" else "data.csv")
    path.write_text("\n".join([sep.join(["filepath", "raw", "syn", "llm"])] + [sep.join(r) for r in rows]) + "\n")
    return path


@pytest.mark.parametrize("sep", [",", "\t"])
def test_csv_several_captions_and_unreadable_images_are_skipped_and_counted(tmp_path, sep):
    ds = CsvCaptionDataset(_csv(tmp_path, sep), caption_keys="raw,syn,llm", transform=_to_tensor)
    assert len(ds) == 5
    assert ds.captions[0] == ["raw 0", "syn 0", "llm 0"] and ds.captions[2] == ["raw 2", "llm 2"]
    s = ds[1]
    assert s["skipped"] == 0 and s["captions"][0] == "raw 1" and s["image"][0, 0, 0] == 10
    s = ds[3]  # corrupt -> 4 missing -> wraps to 0
    assert s["skipped"] == 2 and s["captions"][0] == "raw 0" and s["image"][0, 0, 0] == 0
    (tmp_path / "b").mkdir()
    strict = CsvCaptionDataset(_csv(tmp_path / "b", sep), caption_keys=["raw"], skip_unreadable=False)
    with pytest.raises(UnreadableImage, match="3.png"):
        strict[3]


def test_csv_errors(tmp_path):
    path = _csv(tmp_path)
    with pytest.raises(KeyError, match="nope"):
        CsvCaptionDataset(path, caption_keys=["nope"])
    with pytest.raises(FileNotFoundError):
        CsvCaptionDataset(tmp_path / "none.csv")
    path.write_text("filepath,raw\nimg/0.png,\n")
    with pytest.raises(ValueError, match="no caption"):
        CsvCaptionDataset(path, caption_keys=["raw"])


def test_tar_shards(tmp_path):
    write_tar(tmp_path / "shard-000.tar", [
        ("a/0001.jpg", png_bytes(1)), ("a/0001.txt", b"raw one"), ("a/0001.syn.txt", b"syn one"),
        ("a/0002.png", png_bytes(2)), ("a/0002.json", json.dumps({"captions": ["j1", "j2"]}).encode()),
        ("a/0003.txt", b"caption without image"),
    ])
    write_tar(tmp_path / "shard-001.tar", [
        ("0004.jpg", b"broken image bytes"), ("0004.txt", b"four"),
        ("0005.webp", png_bytes(5)), ("0005.txt", b"five"), ("0005.llm.txt", b"five llm"),
    ])
    spec = str(tmp_path / "shard-{000..001}.tar")
    assert expand_shards(spec) == [str(tmp_path / "shard-000.tar"), str(tmp_path / "shard-001.tar")]
    ds = TarCaptionDataset(spec, transform=_to_tensor)
    assert len(ds) == 4 and ds.incomplete == 1
    assert ds[0]["captions"] == ["syn one", "raw one"]  # caption members in extension order (syn.txt < txt)
    assert ds[1]["captions"] == ["j1", "j2"] and ds[1]["image"][0, 0, 0] == 2
    s = ds[2]  # broken -> next sample
    assert s["skipped"] == 1 and sorted(s["captions"]) == ["five", "five llm"] and s["image"][0, 0, 0] == 5
    with pytest.raises(FileNotFoundError, match="shard"):
        TarCaptionDataset(str(tmp_path / "nope-{0..1}.tar"))


def test_expand_shards_lists():
    assert expand_shards("a{1..3}.tar::b.tar") == ["a1.tar", "a2.tar", "a3.tar", "b.tar"]
    assert expand_shards(["x{08..10}"]) == ["x08", "x09", "x10"]
    # as braceexpand (webdataset) reads them: padded to the wider bound, descending ranges, comma lists (they were
    # not expanded, "{00..100}" padded to 2 digits and a descending range gave no shard)
    assert expand_shards("s-{00..100}.tar")[:2] == ["s-000.tar", "s-001.tar"]
    assert expand_shards("s-{0..10}.tar")[-2:] == ["s-9.tar", "s-10.tar"]
    assert expand_shards("a.tar::s{3..1}") == ["a.tar", "s3", "s2", "s1"]
    assert expand_shards("s{000,007}.tar") == ["s000.tar", "s007.tar"]
    assert expand_shards("{a,b}-{0..1}") == ["a-0", "a-1", "b-0", "b-1"]
    assert expand_shards("x{y}-{1..2}") == ["x{y}-1", "x{y}-2"]


class _Captions(torch.utils.data.Dataset):
    def __len__(self):
        return 6

    def __getitem__(self, i):
        return {"image": torch.full((3, 2, 2), float(i)), "captions": [f"{i}-{j}" for j in range(3)], "skipped": 0,
                "index": i}


def test_random_caption_draw_is_uniform_and_reproducible_per_epoch():
    drawn = []
    tok = lambda texts: torch.tensor([[int(t[0]) * 10 + int(t[-1])] for t in texts])  # noqa: E731
    ds = RandomCaptionDataset(_Captions(), tok)
    loader = EpochLoader(ds, batch_size=3, seed=7)
    epochs = [[b[1].flatten().tolist() for _, b in loader.iter_epoch(e)] for e in range(60)]
    again = [[b[1].flatten().tolist() for _, b in loader.iter_epoch(e)] for e in (3, 17)]
    assert again == [epochs[3], epochs[17]]  # same (seed, epoch) -> same draws
    for ep in epochs:
        drawn += [v % 10 for batch in ep for v in batch]
    counts = Counter(drawn)
    assert set(counts) == {0, 1, 2}
    assert all(abs(c / len(drawn) - 1 / 3) < 0.05 for c in counts.values())
    # resuming in the middle of an epoch gives the same batches
    assert [b[1].flatten().tolist() for _, b in loader.iter_epoch(5, start_batch=1)] == epochs[5][1:]
    images, tokens, skipped = next(iter(loader.iter_epoch(0)))[1]
    assert images.shape == (3, 3, 2, 2) and tokens.shape == (3, 1) and skipped.tolist() == [0, 0, 0]


def test_shapes_caption_samples():
    ds = ShapesCaptionSamples("test", length=4, image_size=16, num_captions=3)
    s = ds[2]
    assert s["image"].shape == (3, 16, 16) and len(s["captions"]) == 3 and len(set(s["captions"])) == 3
    assert len(ds.targets) == 4


def test_shapes_grouped_by_colour_for_hard_negative_batches():
    from vision_rwkv.data.shapes import CLASS_NAMES, drawn_attributes
    ds = ShapesCaptionSamples("train", length=120, image_size=12, num_captions=2, group_by="color", group_size=4)
    assert ds.group_size == 4 and len(ds) % 4 == 0 and 120 - 8 * 3 <= len(ds) <= 120  # < 4 left over per colour
    order = [ds[i]["index"] for i in range(len(ds))]
    assert len(set(order)) == len(order) and all(0 <= i < 120 for i in order)
    colours = [drawn_attributes(i, "train", 0)["color"] for i in order]
    blocks = [colours[j:j + 4] for j in range(0, len(colours), 4)]
    assert all(len(set(b)) == 1 for b in blocks)
    assert len({b[0] for b in blocks}) > 1
    assert ds.targets == [CLASS_NAMES.index(drawn_attributes(i, "train", 0)["shape"]) for i in order]
    # the loader keeps groups whole: every batch of 8 = two same-colour groups of 4
    loader = EpochLoader(ds, 8, seed=0, group_size=4, collate_fn=lambda b: [s["index"] for s in b])
    for _, idx in loader.iter_epoch(1):
        cols = [drawn_attributes(i, "train", 0)["color"] for i in idx]
        assert len(set(cols[:4])) == 1 and len(set(cols[4:])) == 1
    with pytest.raises(ValueError, match="group_by"):
        ShapesCaptionSamples("train", length=8, group_by="shade")
    with pytest.raises(ValueError, match="multiple of group_size"):
        EpochLoader(ds, 6, group_size=4)


def test_unreadable_tar_captions_are_skipped_and_counted_like_images(tmp_path):
    """A caption member that is not UTF-8, a malformed json or a json caption that is not text: the sample is
    unreadable (the next one stands in, counted), with the shard named; a compressed shard says so."""
    write_tar(tmp_path / "s.tar", [
        ("0.png", png_bytes(1)), ("0.txt", "café".encode("latin-1")),
        ("1.png", png_bytes(2)), ("1.json", b"{not json"),
        ("2.png", png_bytes(3)), ("2.json", json.dumps({"caption": None}).encode()),
        ("3.png", png_bytes(4)), ("3.txt", b"fine"),
    ])
    ds = TarCaptionDataset(str(tmp_path / "s.tar"), transform=_to_tensor)
    s = ds[0]
    assert s["skipped"] == 3 and s["captions"] == ["fine"] and s["image"][0, 0, 0] == 4
    strict = TarCaptionDataset(str(tmp_path / "s.tar"), skip_unreadable=False)
    for i, why in ((0, "codec can't decode"), (1, "Expecting property name"), (2, "not text")):
        with pytest.raises(UnreadableImage, match=rf"sample {i} of .*s\.tar: unreadable caption: .*{why}"):
            strict[i]
    import gzip
    (tmp_path / "z.tar.gz").write_bytes(gzip.compress((tmp_path / "s.tar").read_bytes()))
    with pytest.warns(UserWarning, match="compressed shards are not supported"), \
            pytest.raises(ValueError, match=r"no image\+caption samples"):
        TarCaptionDataset(str(tmp_path / "z.tar.gz"))


def test_damaged_tar_shards_are_read_as_far_as_they_can_be(tmp_path):
    """A corrupt header mid-shard lost every member after it without a word (tarfile reads it as the end of the
    archive); a truncated or empty shard stopped training. Now each keeps what can be read, warns and is listed
    in `damaged`, as webdataset's warn_and_continue handler does."""
    samples = [(f"{i:04d}.{ext}", png_bytes(i) if ext == "png" else f"caption {i}".encode())
               for i in range(10) for ext in ("png", "txt")]
    write_tar(tmp_path / "good.tar", samples)
    data = bytearray((tmp_path / "good.tar").read_bytes())
    with tarfile.open(tmp_path / "good.tar") as tar:
        members = tar.getmembers()
    bad = members[8]  # the 5th sample's image header
    data[bad.offset:bad.offset + 512] = b"\x17" * 512
    (tmp_path / "corrupt.tar").write_bytes(bytes(data))
    with pytest.warns(UserWarning, match=rf"corrupt.tar: bytes {bad.offset}-{members[9].offset} are no valid"):
        ds = TarCaptionDataset(str(tmp_path / "corrupt.tar"))
    assert len(ds) == 9 and ds.incomplete == 1 and len(ds.damaged) == 1  # only sample 4 (its caption alone) lost
    assert [ds.members(i)[1]["png"] for i in (4, 8)] == [(m.offset_data, m.size) for m in (members[10], members[18])]
    cut = (tmp_path / "good.tar").read_bytes()[: members[13].offset_data + 5]  # inside sample 6's caption
    (tmp_path / "cut.tar").write_bytes(cut)
    (tmp_path / "empty.tar").write_bytes(b"")
    spec = [str(tmp_path / n) for n in ("good.tar", "cut.tar", "empty.tar")]
    with pytest.warns(UserWarning) as caught:
        ds = TarCaptionDataset(spec, transform=_to_tensor)
    said = " | ".join(str(w.message) for w in caught)
    assert "cut.tar: unreadable from byte" in said and "empty.tar: unreadable from byte 0 (empty file)" in said
    assert len(ds) == 10 + 6 and ds.incomplete == 1 and len(ds.damaged) == 2  # sample 6 of cut.tar lost its caption
    assert ds[15]["captions"] == ["caption 5"] and ds[15]["image"][0, 0, 0] == 5
    with pytest.warns(UserWarning), pytest.raises(ValueError, match=r"no image\+caption samples"):
        TarCaptionDataset(str(tmp_path / "empty.tar"))


def test_csv_tables_as_spreadsheets_and_cc3m_write_them(tmp_path):
    """A UTF-8 BOM before the header is not part of a column name; in a TSV an unbalanced quote is an ordinary
    character (it swallowed the rows after it); a row without an image path is an error naming its line."""
    for i in range(3):
        (tmp_path / f"{i}.png").write_bytes(png_bytes(i))
    bom = tmp_path / "bom.csv"
    bom.write_text("\ufefffilepath,title\n0.png,zero\n", encoding="utf-8")
    assert CsvCaptionDataset(bom).captions == [["zero"]]
    tsv = tmp_path / "t.tsv"
    tsv.write_text('filepath\ttitle\n0.png\t"start quote only\n1.png\tplain\n2.png\tthird\n')
    ds = CsvCaptionDataset(tsv)
    assert ds.images == ["0.png", "1.png", "2.png"] and ds.captions[0] == ['"start quote only']
    short = tmp_path / "short.csv"
    short.write_text("title,filepath\nx,0.png\ny\n")
    with pytest.raises(ValueError, match=r"short.csv line 3: no image path in column 'filepath'"):
        CsvCaptionDataset(short)


def test_training_reports_tar_samples_left_out(tmp_path, capsys, monkeypatch):
    """Keys without an image of a known type or without a caption are left out of the shards' samples; the
    training data says how many, so a set whose captions sit under another key does not shrink silently."""
    from types import SimpleNamespace

    from rwkv_clip.train import build_train_dataset
    write_tar(tmp_path / "s.tar", [("0.png", png_bytes(1)), ("0.txt", b"zero"), ("1.tif", png_bytes(2)),
                              ("1.txt", b"one"), ("2.png", png_bytes(3)), ("2.caption", b"two")])
    data = SimpleNamespace(kind="tar", train=str(tmp_path / "s.tar"), index_cache=None)
    ds = build_train_dataset(data, None, lambda texts: texts)
    assert len(ds) == 1
    assert "[clip] 2 tar sample(s) without an image" in capsys.readouterr().out
    # data.train as a YAML list of specs (it was refused), one shard of it damaged (named)
    from rwkv_clip.train import load_clip_config
    (tmp_path / "e.tar").write_bytes(b"")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data:\n  kind: tar\n  train:\n    - {tmp_path / 's.tar'}\n    - {tmp_path / '{s,e}.tar'}\n")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    for _ in range(2):  # the second time from the index cache (by default under $XDG_CACHE_HOME), damage reported alike
        with pytest.warns(UserWarning, match="e.tar: unreadable from byte 0"):
            ds = build_train_dataset(load_clip_config(cfg).data, None, lambda texts: texts)
        assert len(ds) == 2 and "1 of 3 tar shard(s) damaged, read in part" in capsys.readouterr().out
    assert len(list((tmp_path / "xdg" / "vision_rwkv" / "tar_index").glob("*.npz"))) == 2  # s.tar and e.tar


def test_images_read_as_the_classification_and_segmentation_loaders_read_them(tmp_path):
    """One RGB conversion for every loader: a 16-bit greyscale PNG is scaled to 8 bits (RWKV-CLIP's reader
    saturated it to white), alpha is dropped (as open_clip reads it) and a palette with transparency converts
    without Pillow's warning."""
    import warnings

    from rwkv_clip.data import load_image
    from vision_rwkv.data.folder import load_rgb
    from vision_rwkv.seg.datasets import read_seg_image
    rng = np.random.default_rng(0)
    i16 = rng.integers(0, 65535, (6, 5), dtype=np.uint16)
    Image.fromarray(i16).save(tmp_path / "i16.png")
    rgba = rng.integers(0, 255, (6, 5, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    pal = Image.fromarray(rng.integers(0, 255, (6, 5, 3), dtype=np.uint8)).convert("P")
    pal.info["transparency"] = 3
    pal.save(tmp_path / "pal.png", transparency=3)
    for name in ("i16.png", "rgba.png", "pal.png"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            got = np.asarray(load_image(tmp_path / name))
            assert np.array_equal(got, np.asarray(load_rgb(tmp_path / name)))
            assert np.array_equal(got, read_seg_image(tmp_path / name))
            assert np.array_equal(got, np.asarray(load_image((tmp_path / name).read_bytes())))
    assert np.array_equal(np.asarray(load_image(tmp_path / "i16.png"))[..., 0], (i16 >> 8).astype(np.uint8))
    assert np.array_equal(np.asarray(load_image(tmp_path / "rgba.png")), rgba[..., :3])
