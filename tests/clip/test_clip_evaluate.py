"""Retrieval / zero-shot metrics against brute force, the zero-shot classifier definition, eval data formats, and
evaluation of a plain open_clip model."""
import json

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from clip_helpers import tiny_model
from PIL import Image

import rwkv_clip
from rwkv_clip.evaluate import (EvalCfg, KarpathyJsonDataset, classification_metrics, collate_retrieval,
                                load_classnames_templates, recall_at_k, retrieval_metrics, run_evaluation,
                                save_retrieval_grid, zero_shot_classifier)


def _brute_force_recalls(sim: np.ndarray, text_to_image: list[int], k: int) -> tuple[float, float]:
    """sim: (texts, images). Text->image: rank of the text's image; image->text: best rank of its captions."""
    n_texts, n_images = sim.shape
    t2i_hits = 0
    for t in range(n_texts):
        order = sorted(range(n_images), key=lambda i: -sim[t, i])
        t2i_hits += text_to_image[t] in order[:k]
    i2t_hits, queries = 0, 0
    for i in range(n_images):
        if i not in text_to_image:  # an image without captions has nothing to find
            continue
        order = sorted(range(n_texts), key=lambda t: -sim[t, i])
        i2t_hits += any(text_to_image[t] == i for t in order[:k])
        queries += 1
    return t2i_hits / n_texts, i2t_hits / queries


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_recall_at_k_matches_brute_force_with_several_captions_per_image(seed):
    g = torch.Generator().manual_seed(seed)
    n_images = 13
    caps_per_image = torch.randint(1, 6, (n_images,), generator=g)  # 1..5 captions, uneven
    caps_per_image[[3, 7]] = 0  # two gallery images without a caption
    text_to_image = torch.repeat_interleave(torch.arange(n_images), caps_per_image)
    text_to_image = text_to_image[torch.randperm(len(text_to_image), generator=g)]  # texts in any order
    img = F.normalize(torch.randn(n_images, 8, generator=g), dim=-1)
    txt = F.normalize(torch.randn(len(text_to_image), 8, generator=g), dim=-1)
    # make some texts close to their image so recalls are neither 0 nor 1
    txt = F.normalize(txt + 0.8 * img[text_to_image] * (torch.rand(len(txt), 1, generator=g) > 0.5), dim=-1)
    ks = (1, 2, 5, 10, 50)
    got = retrieval_metrics(img, txt, text_to_image, ks)
    sim = (txt @ img.T).numpy()
    for k in ks:
        t2i, i2t = _brute_force_recalls(sim, text_to_image.tolist(), k)
        assert got[f"image_retrieval_recall@{k}"] == pytest.approx(t2i)
        assert got[f"text_retrieval_recall@{k}"] == pytest.approx(i2t)
    assert got["image_retrieval_recall@50"] == 1.0 and got["text_retrieval_recall@50"] == 1.0
    assert 0 < got["text_retrieval_recall@1"] < 1


def test_recall_over_query_blocks_matches_the_dense_score_matrix():
    """More queries than one block (1024 rows): the top-k of every block agrees with the dense (texts x images)
    scores and positive mask that were held before (2.5x the score matrix in memory)."""
    g = torch.Generator().manual_seed(0)
    n_images = 1100
    t2i = torch.arange(n_images).repeat_interleave(2)[:-3]  # the last image has no caption
    img = F.normalize(torch.randn(n_images, 16, generator=g), dim=-1)
    txt = F.normalize(img[t2i] + 0.3 * torch.randn(len(t2i), 16, generator=g), dim=-1)
    got = retrieval_metrics(img, txt, t2i, (1, 5))
    scores = txt @ img.T
    positive = torch.zeros_like(scores, dtype=torch.bool)
    positive[torch.arange(len(t2i)), t2i] = True
    for k in (1, 5):
        assert got[f"image_retrieval_recall@{k}"] == pytest.approx(recall_at_k(scores, positive, k).mean().item())
        i2t = recall_at_k(scores.T[:-1], positive.T[:-1], k).mean().item()
        assert got[f"text_retrieval_recall@{k}"] == pytest.approx(i2t)
    assert 0.05 < got["image_retrieval_recall@1"] < 0.95


def test_recall_with_repeated_captions_ranks_ties_as_clip_benchmark():
    """Shapes-like captions repeat word for word, so their embeddings tie exactly; the order topk gives tied entries
    depends on k, so every k takes its own top-k of the same (text @ image^T) scores as clip_benchmark (a top-10's
    first entries moved the demo's image->text R@1 / R@5 from 47.0 / 79.5 to 46.5 / 79.0)."""
    g = torch.Generator().manual_seed(0)
    t2i = torch.arange(200).repeat_interleave(5)
    img = F.normalize(torch.randn(200, 8, generator=g), dim=-1)
    txt = F.normalize(torch.randn(8, 8, generator=g), dim=-1)[torch.randint(0, 8, (len(t2i),), generator=g)]
    got = retrieval_metrics(img, txt, t2i, (1, 5, 10))
    scores = txt @ img.T
    positive = torch.zeros_like(scores, dtype=torch.bool)
    positive[torch.arange(len(t2i)), t2i] = True
    for k in (1, 5, 10):
        assert got[f"text_retrieval_recall@{k}"] == recall_at_k(scores.T, positive.T, k).mean().item()
        assert got[f"image_retrieval_recall@{k}"] == recall_at_k(scores, positive, k).mean().item()


def test_classification_metrics_brute_force():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(50, 7, generator=g)
    target = torch.randint(0, 6, (50,), generator=g)  # class 6 never occurs
    m = classification_metrics(logits, target, 7)
    top1 = logits.argmax(1)
    assert m["acc1"] == pytest.approx((top1 == target).float().mean().item())
    top5 = logits.argsort(1, descending=True)[:, :5]
    assert m["acc5"] == pytest.approx(np.mean([t in row for t, row in zip(target.tolist(), top5.tolist())]))
    per_class = [((top1 == target) & (target == c)).sum().item() / (target == c).sum().item()
                 for c in range(7) if (target == c).any()]
    assert m["mean_per_class_recall"] == pytest.approx(np.mean(per_class))
    with pytest.raises(ValueError, match="no samples"):
        classification_metrics(logits[:0], target[:0], 7)


def test_zero_shot_classifier_definition():
    torch.manual_seed(0)
    m = tiny_model().eval()
    tok = rwkv_clip.get_tokenizer("RWKV-CLIP-Tiny-demo", context_length=16)
    classes = ["circle", "square", "star"]
    templates = ["a photo of a {}.", "a drawing of a {c}", lambda c: f"{c}!"]
    W = zero_shot_classifier(m, tok, classes, templates)
    with torch.no_grad():
        for j, c in enumerate(classes):
            texts = [f"a photo of a {c}.", f"a drawing of a {c}", f"{c}!"]
            e = F.normalize(m.encode_text(tok(texts)), dim=-1).mean(0)
            assert torch.allclose(W[:, j], F.normalize(e, dim=0), atol=1e-5)
    with pytest.raises(ValueError, match="placeholder"):
        zero_shot_classifier(m, tok, classes, ["no placeholder"])


def test_class_sets_and_files(tmp_path):
    names, templates = load_classnames_templates("shapes")
    assert "circle" in names and len(names) == 8 and all("{}" in t for t in templates)
    names, templates = load_classnames_templates("imagenet")
    assert len(names) == 1000 and len(templates) == 80
    (tmp_path / "c.json").write_text(json.dumps({"classnames": ["a", "b"], "templates": ["x {}"]}))
    assert load_classnames_templates(str(tmp_path / "c.json")) == (["a", "b"], ["x {}"])
    (tmp_path / "c.txt").write_text("apple\n\npear\n")
    names, templates = load_classnames_templates(str(tmp_path / "c.txt"))
    assert names == ["apple", "pear"] and len(templates) == 80
    with pytest.raises(FileNotFoundError, match="built-in"):
        load_classnames_templates("no-such-set")


def _write_images(folder, n, size=20):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        p = folder / f"im{i}.png"
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


def test_karpathy_json_and_list_formats(tmp_path):
    (tmp_path / "imgs").mkdir()
    _write_images(tmp_path / "imgs", 3)
    karpathy = {"images": [
        {"filepath": "imgs", "filename": "im0.png", "split": "test", "sentences": [{"raw": "a"}, {"raw": "b"}]},
        {"filepath": "imgs", "filename": "im1.png", "split": "train", "sentences": [{"raw": "c"}]},
        {"filepath": "imgs", "filename": "im2.png", "split": "test", "sentences": [{"raw": "d"}]},
    ]}
    (tmp_path / "k.json").write_text(json.dumps(karpathy))
    ds = KarpathyJsonDataset(tmp_path / "k.json", split="test")
    assert [c for _, c in ds.items] == [["a", "b"], ["d"]]
    (tmp_path / "l.json").write_text(json.dumps([{"image": "imgs/im1.png", "caption": ["x", "y"]},
                                                 {"image": "imgs/im2.png", "caption": "z"}]))
    ds = KarpathyJsonDataset(tmp_path / "l.json")
    assert [c for _, c in ds.items] == [["x", "y"], ["z"]]
    # a null caption names its entry (it used to fail in the tokenizer, naming nothing)
    karpathy["images"][2]["sentences"].append({"raw": None})
    (tmp_path / "k.json").write_text(json.dumps(karpathy))
    with pytest.raises(ValueError, match=r"images\[2\] \('im2.png'\): a caption is None"):
        KarpathyJsonDataset(tmp_path / "k.json", split="test")
    (tmp_path / "n.json").write_text(json.dumps([{"image": "imgs/im1.png", "caption": ["x", 3]}]))
    with pytest.raises(ValueError, match=r"entry 0 \('imgs/im1.png'\): a caption is 3"):
        KarpathyJsonDataset(tmp_path / "n.json")
    ds.transform = lambda img: torch.from_numpy(np.array(img)).permute(2, 0, 1)
    images, caps = collate_retrieval([ds[0], ds[1]])
    assert images.shape == (2, 3, 20, 20) and caps == [["x", "y"], ["z"]]


def test_run_evaluation_csv_and_imagefolder_with_plain_open_clip_model(tmp_path):
    """The evaluation works for any open_clip-interface model: here a tiny open_clip ViT with random weights."""
    cfg_path = tmp_path / "Tiny-ViT-test.json"
    cfg_path.write_text(json.dumps({"embed_dim": 16,
                                    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16,
                                                   "patch_size": 16},
                                    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2,
                                                 "layers": 1}}))
    open_clip.add_model_config(cfg_path)
    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms("Tiny-ViT-test")
    tok = open_clip.get_tokenizer("Tiny-ViT-test")
    # ImageFolder for zero-shot, CSV with two caption columns for retrieval
    for c in ("circle", "red_square"):
        (tmp_path / "zs" / c).mkdir(parents=True)
        _write_images(tmp_path / "zs" / c, 3)
    (tmp_path / "rt").mkdir()
    paths = _write_images(tmp_path / "rt", 4)
    with open(tmp_path / "rt.csv", "w") as f:
        f.write("filepath,cap_a,cap_b\n")
        for i, p in enumerate(paths):
            f.write(f"rt/{p.name},caption {i},{'other ' + str(i) if i % 2 else ''}\n")
    from omegaconf import OmegaConf
    cfg = OmegaConf.structured(EvalCfg)
    cfg.batch_size = 3
    cfg.zero_shot.data, cfg.zero_shot.path, cfg.zero_shot.classes = "imagefolder", str(tmp_path / "zs"), "folders"
    cfg.retrieval.data, cfg.retrieval.path = "csv", str(tmp_path / "rt.csv")
    cfg.retrieval.caption_keys = ["cap_a", "cap_b"]
    out = run_evaluation(model, tok, preprocess, cfg, out_dir=tmp_path / "out")
    assert out["zeroshot_num_samples"] == 6 and out["zeroshot_classnames"] == ["circle", "red square"]
    assert out["num_images"] == 4 and out["num_texts"] == 6  # two rows have a second caption
    assert 0 <= out["image_retrieval_recall@1"] <= 1 and out["text_retrieval_recall@10"] == 1.0
    assert (tmp_path / "out" / "retrieval_grid.png").stat().st_size > 1000
    # the grid's queries skip images without a caption (a Karpathy image with no sentences)
    (tmp_path / "k.json").write_text(json.dumps({"images": [
        {"filepath": "rt", "filename": p.name, "split": "test", "sentences": [{"raw": f"c{i}"}] if i else []}
        for i, p in enumerate(paths)]}))
    cfg.retrieval.data, cfg.retrieval.path, cfg.retrieval.root = "karpathy", str(tmp_path / "k.json"), str(tmp_path)
    out = run_evaluation(model, tok, preprocess, cfg, out_dir=tmp_path / "out2")
    assert out["num_images"] == 4 and out["num_texts"] == 3 and (tmp_path / "out2" / "retrieval_grid.png").is_file()
    cfg.retrieval.data, cfg.retrieval.path = "csv", str(tmp_path / "rt.csv")
    # an unreadable image is an error in evaluation (a substitute would skew the metrics)
    paths[2].write_bytes(b"not an image")
    with pytest.raises(Exception, match="cannot read image"):
        run_evaluation(model, tok, preprocess, cfg)


def test_retrieval_grid_png(tmp_path, captured_figures):
    import rwkv_clip.evaluate as evaluate
    figures = captured_figures(evaluate)
    scores = torch.randn(4, 6)
    images = [torch.rand(3, 8, 8) for _ in range(6)]
    long = "a small blue square on the left of a striped background, next to a large red circle"
    p = save_retrieval_grid(tmp_path / "g.png", ["q0", long, "q2", "q3"], images, scores,
                            torch.tensor([0, 1, 2, 3]), top_k=3)
    assert p.is_file() and Image.open(p).size[0] > 100
    # the whole caption, wrapped (it was cut at 57 characters, losing the words that decide a match)
    assert figures[0].axes[3].get_ylabel().replace("\n", " ") == long


def test_shapes_evaluation_of_rwkv_clip(tmp_path):
    from omegaconf import OmegaConf
    torch.manual_seed(0)
    m = tiny_model()
    _, _, preprocess = rwkv_clip.create_model_and_transforms("RWKV-CLIP-Tiny-demo", vision_cfg={"image_size": 16})
    cfg = OmegaConf.structured(EvalCfg)
    cfg.shapes_image_size = 16
    cfg.zero_shot.length, cfg.retrieval.length, cfg.retrieval.num_captions = 16, 8, 3
    tok = rwkv_clip.get_tokenizer("RWKV-CLIP-Tiny-demo", context_length=16)
    out = run_evaluation(m, tok, preprocess, cfg, out_dir=tmp_path)
    assert out["zeroshot_num_samples"] == 16 and out["zeroshot_chance_acc1"] == 1 / 8
    assert out["num_images"] == 8 and out["num_texts"] == 24
    assert (tmp_path / "retrieval_grid.png").is_file()


def test_zero_shot_csv_without_a_path_is_named():
    from omegaconf import OmegaConf

    from rwkv_clip.evaluate import _retrieval_loader, _zero_shot_loader
    from vision_rwkv.engine import ConfigError
    cfg = OmegaConf.structured(EvalCfg)
    cfg.zero_shot.data = "csv"
    with pytest.raises(ValueError, match="zero_shot.path"):
        _zero_shot_loader(cfg.zero_shot, cfg, lambda x: x)
    for kind in ("csv", "karpathy"):
        cfg.retrieval.data = kind
        with pytest.raises(ConfigError, match=f"retrieval.data={kind} needs retrieval.path"):
            _retrieval_loader(cfg.retrieval, cfg, lambda x: x)


def test_class_names_of_the_folders_in_another_order_are_matched_by_name(capsys):
    from rwkv_clip.evaluate import names_in_folder_order
    folders = ["blue", "green", "red_fox", "yellow"]  # ImageFolder's sorted labels
    assert names_in_folder_order(folders, ["Red fox", "green", "blue", "yellow"]) == ["blue", "green", "Red fox",
                                                                                      "yellow"]
    assert "matched by name" in capsys.readouterr().out
    readable = ["tench", "goldfish", "shark", "ray"]  # not the folder names: taken in the given order
    assert names_in_folder_order(folders, readable) == readable
    # the folders' names with one typo: their order would label images with the wrong class (it did, silently)
    from vision_rwkv.engine import ConfigError
    with pytest.raises(ConfigError, match=r"3 of the 4 class names name image folders but \['yelow'\] name none"):
        names_in_folder_order(folders, ["red fox", "green", "blue", "yelow"])


def test_class_files_with_a_bom_read_as_their_names(tmp_path):
    from rwkv_clip.evaluate import load_classnames_templates, names_in_folder_order
    (tmp_path / "c.txt").write_text("\ufeffdog\ncat\n", encoding="utf-8")
    names, _ = load_classnames_templates(str(tmp_path / "c.txt"))
    assert names == ["dog", "cat"] and names_in_folder_order(["cat", "dog"], names) == ["cat", "dog"]


def test_a_run_folder_of_another_tool_or_no_model_is_named(tmp_path):
    from rwkv_clip.evaluate import load_model_for_eval
    from vision_rwkv.engine import ConfigError
    (tmp_path / "config.yaml").write_text("model:\n  backbone: vrwkv_tiny_patch16_224\ntrain:\n  run_dir: x\n")
    with pytest.raises(ConfigError, match="is not a train_clip run folder"):
        load_model_for_eval(None, None, tmp_path)
    with pytest.raises(ConfigError, match="give a model name"):
        load_model_for_eval(None, None, None)


def test_zero_shot_image_folders_leave_hidden_folders_and_files_out(tmp_path):
    """A .ipynb_checkpoints folder at the root was a class (or, empty, an error); inside a class, hidden files and
    folders were samples. They are left out, as the classification loader leaves them."""
    import numpy as np
    from PIL import Image

    from rwkv_clip.evaluate import VisibleImageFolder
    for name in ("cat/a.png", "dog/b.png", "cat/.ipynb_checkpoints/a-checkpoint.png", "dog/._b.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / name)
    (tmp_path / ".ipynb_checkpoints").mkdir()
    ds = VisibleImageFolder(str(tmp_path))
    assert ds.classes == ["cat", "dog"] and [p.rsplit("/", 1)[-1] for p, _ in ds.samples] == ["a.png", "b.png"]


def test_zero_shot_csv_labels_as_indices_or_names(tmp_path):
    """Numeric class names ("1", "2", "3": 1-based, or years) are names when every label is one (they were read as
    indices: "1" became the second class); `label_type` forces either reading."""
    from rwkv_clip.evaluate import _CsvLabels
    from vision_rwkv.engine import ConfigError
    names = ["1", "2", "3"]

    def labels(rows, **kw):
        (tmp_path / "z.csv").write_text("filepath,label\n" + "".join(f"{i}.png,{lab}\n" for i, lab in enumerate(rows)))
        return [y for _, y in _CsvLabels(str(tmp_path / "z.csv"), "filepath", "label", names, None, **kw).items]

    assert labels(["1", "3", "2"]) == [0, 2, 1]                      # all are names
    assert labels(["0", "1", "2"]) == [0, 1, 2]                      # "0" is no name: indices
    assert labels(["1", "2", "1"], label_type="index") == [1, 2, 1]
    assert labels(["0", "2"], label_type="index") == [0, 2]
    with pytest.raises(ValueError, match=r"line 3: label '0' is not one of the 3 class names"):
        labels(["1", "0"], label_type="name")
    with pytest.raises(ValueError, match=r"line 2: label 3 out of range for 3 classes"):
        labels(["3", "0"])
    with pytest.raises(ValueError, match=r"line 3: label 'cat' is neither a class index"):
        labels(["0", "cat"])
    with pytest.raises(ConfigError, match="label_type 'names'"):
        labels(["1"], label_type="names")
    # one typo among names is named, on its own line (it switched the file to indices and blamed line 2's valid name)
    names[:] = ["circle", "square"]
    assert labels(["circle", "square"]) == [0, 1]
    with pytest.raises(ValueError, match=r"line 3: label 'triangle' is not one of the 2 class names"):
        labels(["circle", "triangle", "square"])
    with pytest.raises(ValueError, match=r"z.csv: no rows"):  # (a torch.cat error of the empty encoding before)
        labels([])


def test_zero_shot_folder_names_are_text_under_any_locale(tmp_path):
    """A class folder whose name is not text in the locale's encoding (``café`` under LANG=C, here Latin-1 bytes
    under UTF-8) lists with surrogates: its class name is decoded (name_text), so the prompts and a UTF-8 class file
    match it, and its images are still read."""
    import os

    from omegaconf import OmegaConf

    from rwkv_clip.evaluate import EvalCfg, _zero_shot_loader
    for name in (b"caf\xe9", b"plain"):
        folder = os.path.join(os.fsencode(tmp_path), name)
        os.mkdir(folder)
        _write_images(type(tmp_path)(os.fsdecode(folder)), 2)
    cfg = OmegaConf.structured(EvalCfg)
    cfg.zero_shot.data, cfg.zero_shot.path, cfg.zero_shot.classes = "imagefolder", str(tmp_path), "folders"
    loader, classnames, _ = _zero_shot_loader(cfg.zero_shot, cfg, transform=None)
    assert classnames == ["caf\ufffd", "plain"] and len(loader.dataset) == 4 and loader.dataset[0][1] == 0
    (tmp_path / "classes.txt").write_text("plain\ncaf\ufffd\n", encoding="utf-8")
    cfg.zero_shot.classes = str(tmp_path / "classes.txt")
    assert _zero_shot_loader(cfg.zero_shot, cfg, transform=None)[1] == ["caf\ufffd", "plain"]
