"""Zero-shot classification and image-text retrieval for any model with the open_clip interface
(`encode_image(x, normalize=True)`, `encode_text(tokens, normalize=True)`): RWKV-CLIP or plain open_clip models.

Definitions (as clip_benchmark computes them):
* zero-shot class embedding = normalise(mean over templates of normalised text features); logits =
  100 * image_features @ W; metrics `acc1`, `acc5`, `mean_per_class_recall`.
* retrieval with several captions per image: text->image ("image_retrieval_recall@k") is a hit when the text's
  image is among the top-k images; image->text ("text_retrieval_recall@k") is a hit when ANY of the image's
  captions is among the top-k texts (averaged over the images that have a caption).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from open_clip import build_zero_shot_classifier
from torch.utils.data import DataLoader, Dataset
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS as _TV_IMAGE_EXTENSIONS
from tqdm import tqdm

from vision_rwkv.engine.config import ConfigError
from vision_rwkv.engine.files import name_text
from vision_rwkv.engine.logger import save_figure, subplots, wrapped_text
from vision_rwkv.engine.stopping import ignore_stop_signals

from .data import CsvCaptionDataset, load_image

__all__ = [
    "retrieval_metrics", "recall_at_k", "classification_metrics", "zero_shot_classifier", "encode_images",
    "zero_shot_evaluate", "retrieval_evaluate", "KarpathyJsonDataset", "ImageCaptionsList",
    "load_classnames_templates", "save_retrieval_grid", "collate_retrieval",
    "EvalCfg", "ZeroShotCfg", "RetrievalCfg", "run_evaluation", "load_model_for_eval",
]


# ----------------------------------------------------------------------------------------------- metrics

def recall_at_k(scores: torch.Tensor, positive_pairs: torch.Tensor, k: int) -> torch.Tensor:
    """Per query (row of `scores`), 1.0 if any positive candidate is among the top-k scores else 0.0."""
    k = min(k, scores.shape[1])
    topk = scores.topk(k, dim=1).indices
    return positive_pairs.gather(1, topk).any(dim=1).float()


def retrieval_metrics(
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        text_to_image: torch.Tensor,
        ks: Sequence[int] = (1, 5, 10),
) -> dict[str, float]:
    """Recall@k of text->image and image->text retrieval with several captions per image.

    Args:
        image_features: (I, D) normalised image embeddings.
        text_features: (T, D) normalised text embeddings.
        text_to_image: (T,) index of each text's image. Images with no text are gallery items for text->image
            retrieval but not queries of image->text retrieval (they have nothing to find).
    Returns:
        {"image_retrieval_recall@k": ..., "text_retrieval_recall@k": ...} for every k (clip_benchmark names).
    """
    if text_to_image.shape[0] != text_features.shape[0]:
        raise ValueError(f"text_to_image has {text_to_image.shape[0]} entries for {text_features.shape[0]} texts")
    img, txt, t2i = image_features.float(), text_features.float(), text_to_image.long()
    captioned = torch.zeros(img.shape[0], dtype=torch.bool)
    captioned[t2i] = True  # images without a caption stay in the gallery but are no image->text query
    if not captioned.any():
        raise ValueError("retrieval_metrics: no texts (no image has a caption)")
    # recall_at_k over blocks of queries (no texts x images matrix or mask is held: a dense positive mask next to
    # the scores took 2.5x their size, 750 MB for 4000 images x 5 captions). Image->text scores are the columns of
    # text @ image^T and each k has its own top-k, as clip_benchmark ranks them: captions whose embeddings tie
    # (repeated captions) then fall in the same order (a top-10's first entry is not always the top-1 among ties).
    hits: dict[str, list[torch.Tensor]] = {f"{d}@{k}": [] for d in ("t2i", "i2t") for k in ks}
    for i, rows in _blocks(txt.shape[0]):
        scores = txt[i:i + rows] @ img.T  # (rows, I)
        positive = t2i[i:i + rows, None] == torch.arange(img.shape[0])
        for k in ks:
            hits[f"t2i@{k}"].append(recall_at_k(scores, positive, k))
    for i, rows in _blocks(img.shape[0]):
        scores = (txt @ img[i:i + rows].T).T  # (rows, T)
        positive = t2i[None, :] == torch.arange(i, i + rows)[:, None]
        for k in ks:
            hits[f"i2t@{k}"].append(recall_at_k(scores, positive, k))
    metrics = {}
    for k in ks:
        metrics[f"image_retrieval_recall@{k}"] = torch.cat(hits[f"t2i@{k}"]).mean().item()
        metrics[f"text_retrieval_recall@{k}"] = torch.cat(hits[f"i2t@{k}"])[captioned].mean().item()
    return metrics


def _blocks(n: int, rows: int = 1024) -> list[tuple[int, int]]:
    """(start, length) of consecutive blocks of at most `rows` rows."""
    return [(i, min(rows, n - i)) for i in range(0, n, rows)]


def classification_metrics(logits: torch.Tensor, target: torch.Tensor, num_classes: Optional[int] = None) -> dict:
    """Top-1, top-5 accuracy and mean per-class recall (classes absent from `target` are left out)."""
    if target.numel() == 0:
        raise ValueError("classification_metrics: no samples (the evaluation set is empty)")
    num_classes = num_classes or logits.shape[1]
    pred = logits.topk(min(5, logits.shape[1]), dim=1).indices
    correct = pred.eq(target.view(-1, 1))
    recalls = []
    for c in range(num_classes):
        mask = target == c
        if mask.any():
            recalls.append(correct[mask, 0].float().mean().item())
    return {
        "acc1": correct[:, 0].float().mean().item(),
        "acc5": correct.any(dim=1).float().mean().item(),
        "mean_per_class_recall": sum(recalls) / len(recalls),
        "num_samples": int(target.numel()),
    }


# ----------------------------------------------------------------------------------------------- zero-shot

def _as_callables(templates: Sequence[Union[str, Callable]]) -> list[Callable[[str], str]]:
    out = []
    for t in templates:
        if callable(t):
            out.append(t)
        elif "{c}" in t:
            out.append(lambda c, t=t: t.replace("{c}", c))
        elif "{}" in t:
            out.append(lambda c, t=t: t.replace("{}", c))
        else:
            raise ValueError(f"template {t!r} has no '{{}}' or '{{c}}' placeholder for the class name")
    return out


def zero_shot_classifier(model, tokenizer, classnames: Sequence[str], templates: Sequence[Union[str, Callable]],
                         device: Union[str, torch.device] = "cpu") -> torch.Tensor:
    """(D, num_classes) classifier: per class, the normalised mean of its normalised template embeddings."""
    return build_zero_shot_classifier(model, tokenizer, list(classnames), _as_callables(templates),
                                      num_classes_per_batch=10, device=device, use_tqdm=False)


@torch.no_grad()
def encode_images(model, loader: DataLoader, device: Union[str, torch.device] = "cpu", autocast: str = "fp32",
                  desc: str = "images") -> tuple[torch.Tensor, list]:
    """Normalised image features of every batch (loader yields (images, targets)); returns (features, targets)."""
    feats, targets = [], []
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(autocast)
    for images, target in tqdm(loader, desc=desc, leave=False):
        with torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype is not None):
            f = model.encode_image(images.to(device), normalize=True)
        feats.append(F.normalize(f.float(), dim=-1).cpu())
        targets.extend(target.tolist() if isinstance(target, torch.Tensor) else list(target))
    return torch.cat(feats), targets


@torch.no_grad()
def zero_shot_evaluate(model, tokenizer, loader: DataLoader, classnames: Sequence[str],
                       templates: Sequence[Union[str, Callable]], device: Union[str, torch.device] = "cpu",
                       autocast: str = "fp32") -> dict:
    """Zero-shot classification of a loader of (images, labels): logits = 100 * img @ W."""
    model.eval()
    W = zero_shot_classifier(model, tokenizer, classnames, templates, device).float().cpu()
    feats, labels = encode_images(model, loader, device, autocast, desc="zero-shot")
    logits = 100.0 * feats @ W
    out = classification_metrics(logits, torch.tensor(labels), len(classnames))
    out["predictions"] = logits.argmax(1).tolist()
    return out


# ----------------------------------------------------------------------------------------------- retrieval

def collate_retrieval(batch: list[dict]) -> tuple[torch.Tensor, list[list[str]]]:
    return torch.stack([b["image"] for b in batch]), [list(b["captions"]) for b in batch]


@torch.no_grad()
def retrieval_evaluate(model, tokenizer, loader: DataLoader, device: Union[str, torch.device] = "cpu",
                       autocast: str = "fp32", ks: Sequence[int] = (1, 5, 10), return_features: bool = False) -> dict:
    """Image-text retrieval over a loader yielding (images, list of caption lists) (see `collate_retrieval`)."""
    model.eval()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(autocast)
    img_feats, txt_feats, text_to_image, texts = [], [], [], []
    n_images = 0
    for images, captions in tqdm(loader, desc="retrieval", leave=False):
        flat = [c for caps in captions for c in caps]
        with torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype is not None):
            fi = model.encode_image(images.to(device), normalize=True)
            ft = model.encode_text(tokenizer(flat).to(device), normalize=True)
        img_feats.append(F.normalize(fi.float(), dim=-1).cpu())
        txt_feats.append(F.normalize(ft.float(), dim=-1).cpu())
        for i, caps in enumerate(captions):
            text_to_image += [n_images + i] * len(caps)
        texts += flat
        n_images += len(captions)
    fi, ft, t2i = torch.cat(img_feats), torch.cat(txt_feats), torch.tensor(text_to_image)
    out: dict[str, Any] = retrieval_metrics(fi, ft, t2i, ks)
    out["num_images"], out["num_texts"] = n_images, len(texts)
    if return_features:
        out["_features"] = {"image": fi, "text": ft, "text_to_image": t2i, "texts": texts}
    return out


class ImageCaptionsList(Dataset):
    """(image path, [captions]) pairs -> samples for `collate_retrieval`."""

    def __init__(self, items: Sequence[tuple[Union[str, Path], Sequence[str]]], transform: Optional[Callable] = None):
        self.items = [(Path(p), list(c)) for p, c in items]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, idx: int) -> dict:
        path, caps = self.items[idx]
        img = load_image(path)
        return {"image": self.transform(img) if self.transform else img, "captions": caps, "skipped": 0,
                "index": idx}


class KarpathyJsonDataset(ImageCaptionsList):
    """Karpathy-split JSON (`{"images": [{"filepath", "filename", "split", "sentences": [{"raw"}]}]}`) or a
    plain list of `{"image": path, "caption": str | [str]}` entries (clip_benchmark / open_clip style)."""

    def __init__(self, path: Union[str, Path], root: Optional[Union[str, Path]] = None, split: str = "test",
                 transform: Optional[Callable] = None):
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"retrieval annotation file not found: {path}")
        root = Path(root) if root is not None else path.parent
        data = json.loads(path.read_text(encoding="utf-8-sig"))
        items = []
        if isinstance(data, dict) and "images" in data:
            for n, im in enumerate(data["images"]):
                if split and im.get("split", split) != split:
                    continue
                where = f"{path}: images[{n}] ({im.get('filename')!r})"
                if "filename" not in im:
                    raise ValueError(f"{where}: no 'filename'")
                sentences = [s.get("raw") if isinstance(s, dict) else s for s in im.get("sentences") or []]
                items.append((root / Path(im.get("filepath", "")) / im["filename"], _captions(sentences, where)))
        elif isinstance(data, list):
            for n, im in enumerate(data):
                where = f"{path}: entry {n} ({im.get('image') if isinstance(im, dict) else im!r})"
                if not isinstance(im, dict) or "image" not in im:
                    raise ValueError(f"{where}: expected an object with 'image' and 'caption'")
                caps = im.get("caption", im.get("captions"))
                items.append((root / im["image"], _captions([caps] if isinstance(caps, str) else caps or [], where)))
        else:
            raise ValueError(f"{path}: expected a Karpathy JSON (with 'images') or a list of image/caption entries")
        if not items:
            raise ValueError(f"{path}: no images for split {split!r}")
        super().__init__(items, transform)


def _captions(captions: Sequence, where: str) -> list[str]:
    """The entry's captions, checked to be text (a null or numeric caption names its entry)."""
    for c in captions:
        if not isinstance(c, str):
            raise ValueError(f"{where}: a caption is {c!r}, not text")
    return list(captions)


# ----------------------------------------------------------------------------------------------- class sets

def load_classnames_templates(spec: str) -> tuple[list[str], list[Union[str, Callable]]]:
    """Class names and templates from a built-in set name (`rwkv_clip.zero_shot_sets.BUILTIN_SETS`) or a file:
    JSON `{"classnames": [...], "templates": [...]}` or a text file with one class name per line (then the
    OpenAI ImageNet templates are used)."""
    from .zero_shot_sets import BUILTIN_SETS, get_set
    if spec in BUILTIN_SETS:
        return get_set(spec)
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"{spec!r} is neither a built-in class set {sorted(BUILTIN_SETS)} nor a file")
    if path.suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8-sig"))
        if "classnames" not in data:
            raise KeyError(f"{path}: missing 'classnames'")
        templates = data.get("templates") or get_set("imagenet")[1]
        return list(data["classnames"]), list(templates)
    names = [ln.strip() for ln in path.read_text(encoding="utf-8-sig").splitlines() if ln.strip()]
    return names, list(get_set("imagenet")[1])


# ----------------------------------------------------------------------------------------------- PNG grid

def save_retrieval_grid(path: Union[str, Path], queries: Sequence[str], images: Sequence, scores: torch.Tensor,
                        text_to_image: Optional[torch.Tensor] = None, query_index: Optional[Sequence[int]] = None,
                        top_k: int = 5, max_queries: int = 6) -> Path:
    """PNG grid: one row per text query, its top-k images (green frame = a correct image).

    Args:
        queries: all texts; `query_index` picks which to show (default the first `max_queries`).
        images: PIL images or CHW tensors in [0, 1], indexed like the columns of `scores`.
        scores: (num_texts, num_images) similarities.
        text_to_image: (num_texts,) ground-truth image of each text (frames hits when given).
    """

    rows = list(query_index) if query_index is not None else list(range(min(max_queries, len(queries))))
    k = min(top_k, scores.shape[1])
    fig, axes = subplots(len(rows), k, figsize=(2.0 * k, 2.2 * len(rows)), squeeze=False)
    for r, q in enumerate(rows):
        top = scores[q].topk(k).indices.tolist()
        for c, idx in enumerate(top):
            ax = axes[r][c]
            img = images[idx]
            if isinstance(img, torch.Tensor):
                img = img.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()
            ax.imshow(img)
            ax.set_xticks([])
            ax.set_yticks([])
            hit = text_to_image is not None and int(text_to_image[q]) == idx
            for s in ax.spines.values():
                s.set_edgecolor("green" if hit else "gray")
                s.set_linewidth(3 if hit else 1)
            ax.set_title(f"{float(scores[q, idx]):.2f}", fontsize=7)
        axes[r][0].set_ylabel(wrapped_text(queries[q], 28, 5), fontsize=8, rotation=0, ha="right", va="center")
    fig.tight_layout()
    return save_figure(fig, path, dpi=80)


# ----------------------------------------------------------------------------------------------- runner

@dataclass
class ZeroShotCfg:
    data: str = "shapes"                 # shapes | imagefolder | csv | none
    path: Optional[str] = None           # ImageFolder root or CSV file
    classes: str = "shapes"              # built-in set (shapes, imagenet, cifar10, ...) or a JSON/TXT file
    img_key: str = "filepath"            # CSV image column
    label_key: str = "label"             # CSV label column (class index or class name)
    label_type: str = "auto"             # auto | index | name (auto: names when every label is a class name)
    split: str = "test"                  # Shapes split
    length: int = 400                    # Shapes samples


@dataclass
class RetrievalCfg:
    data: str = "shapes"                 # shapes | csv | karpathy | none
    path: Optional[str] = None           # CSV / Karpathy JSON
    img_key: str = "filepath"
    caption_keys: list = field(default_factory=lambda: ["title"])
    root: Optional[str] = None           # image folder for relative paths
    split: str = "test"                  # Shapes split / Karpathy split
    length: int = 200                    # Shapes images
    num_captions: int = 5                # Shapes captions per image


@dataclass
class EvalCfg:
    every_epochs: int = 1
    every_steps: Optional[int] = None
    batch_size: int = 64
    workers: int = 0
    shapes_image_size: int = 64
    shapes_seed: int = 0
    grid_png: bool = True                # write retrieval_grid.png (top-5 images for a few text queries)
    zero_shot: ZeroShotCfg = field(default_factory=ZeroShotCfg)
    retrieval: RetrievalCfg = field(default_factory=RetrievalCfg)


class _CsvLabels(Dataset):
    """A zero-shot CSV / TSV of image + label, the labels class indices or class names (`label_type`)."""

    def __init__(self, path: str, img_key: str, label_key: str, classnames: Sequence[str],
                 transform: Optional[Callable], root: Optional[str] = None, label_type: str = "auto"):
        import csv
        path_ = Path(path)
        if not path_.is_file():
            raise FileNotFoundError(f"zero-shot CSV not found: {path}")
        root_ = Path(root) if root else path_.parent
        sep = "\t" if path_.suffix.lower() in (".tsv", ".tab") else ","
        if label_type not in ("auto", "index", "name"):
            raise ConfigError(f"zero_shot.label_type {label_type!r}: expected auto, index or name")
        with open(path_, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f, delimiter=sep)
            for k in (img_key, label_key):
                if k not in (reader.fieldnames or []):
                    raise KeyError(f"{path}: column {k!r} not found; columns are {reader.fieldnames}")
            rows = [(reader.line_num, (row[img_key] or "").strip(), (row[label_key] or "").strip()) for row in reader]
        if not rows:
            raise ValueError(f"{path}: no rows")
        index = {c: i for i, c in enumerate(classnames)}
        if label_type == "auto":  # class names such as "1" or "2001" are names, not indices, when all labels are;
            # a file with any label that is a class name and no number reads as names (a typo is then named)
            label_type = "name" if all(lab in index for _, _, lab in rows) or any(
                lab in index and not lab.lstrip("-").isdigit() for _, _, lab in rows) else "index"
        self.items = []
        for line, img, lab in rows:
            if not img:
                raise ValueError(f"{path}, line {line}: no image in column {img_key!r}")
            if label_type == "name":
                if lab not in index:
                    raise ValueError(f"{path}, line {line}: label {lab!r} is not one of the {len(classnames)} "
                                     f"class names")
                y = index[lab]
            elif lab.lstrip("-").isdigit():
                y = int(lab)
                if not 0 <= y < len(classnames):
                    raise ValueError(f"{path}, line {line}: label {y} out of range for {len(classnames)} classes")
            else:
                raise ValueError(f"{path}, line {line}: label {lab!r} is neither a class index nor, in every "
                                 f"row, a class name")
            p = Path(img)
            self.items.append((p if p.is_absolute() else root_ / p, y))
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, idx: int):
        p, y = self.items[idx]
        img = load_image(p)
        return (self.transform(img) if self.transform else img), y


def _zero_shot_loader(zs: Any, cfg: Any, transform: Callable) -> tuple[DataLoader, list[str], list]:
    if zs.classes == "folders":  # ImageFolder class folder names with the OpenAI ImageNet templates
        if zs.data != "imagefolder":
            raise ConfigError("zero_shot.classes=folders needs zero_shot.data=imagefolder")
        classnames, templates = [], load_classnames_templates("imagenet")[1]
    else:
        classnames, templates = load_classnames_templates(zs.classes)
    if zs.data == "shapes":
        from vision_rwkv.data.shapes import ShapesClassification
        ds = ShapesClassification(zs.split, zs.length, cfg.shapes_seed, cfg.shapes_image_size, transform=transform)
    elif zs.data == "imagefolder":
        if not zs.path or not Path(zs.path).is_dir():
            raise FileNotFoundError(f"zero-shot ImageFolder root not found: {zs.path}")
        ds = VisibleImageFolder(zs.path, transform=transform, loader=load_image)
        if zs.classes == "folders":
            classnames = [name_text(c).replace("_", " ") for c in ds.classes]
        elif len(ds.classes) != len(classnames):
            raise ConfigError(f"ImageFolder {zs.path} has {len(ds.classes)} class folders but the class set "
                              f"{zs.classes!r} has {len(classnames)} names")
        else:
            classnames = names_in_folder_order([name_text(c) for c in ds.classes], classnames)
    elif zs.data == "csv":
        if not zs.path:
            raise ConfigError("zero_shot.data=csv needs zero_shot.path (--zeroshot-path): the CSV of image + label")
        ds = _CsvLabels(zs.path, zs.img_key, zs.label_key, classnames, transform, label_type=zs.label_type)
    else:
        raise ConfigError(f"unknown zero_shot.data {zs.data!r} (shapes, imagefolder, csv, none)")
    return (DataLoader(ds, batch_size=cfg.batch_size, shuffle=False, num_workers=cfg.workers,
                       worker_init_fn=ignore_stop_signals), classnames, templates)


class VisibleImageFolder(ImageFolder):
    """torchvision's ImageFolder without hidden class folders, hidden files and files under hidden folders (a
    ``.ipynb_checkpoints`` folder was a class, or, empty, an error), as the classification loader reads folders."""

    def __init__(self, root: str, **kwargs: Any):
        super().__init__(root, is_valid_file=partial(_visible_image, root=os.fspath(root)), **kwargs)

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        classes = sorted(e.name for e in os.scandir(directory) if e.is_dir() and not e.name.startswith("."))
        if not classes:
            raise FileNotFoundError(f"no class folders in {directory}")
        return classes, {c: i for i, c in enumerate(classes)}


def _visible_image(path: str, root: str) -> bool:
    parts = Path(os.path.relpath(path, root)).parts
    return path.lower().endswith(_TV_IMAGE_EXTENSIONS) and not any(p.startswith(".") for p in parts)


def names_in_folder_order(folders: Sequence[str], classnames: Sequence[str]) -> list[str]:
    """The class names for ImageFolder's labels (its folders, sorted): a class file that names the folders
    themselves (``_`` read as a space, any case), in another order, is matched to them by name; other names (e.g.
    readable names for WordNet-id folders) must already follow the sorted folder order. A file that names some
    folders but not all (a typo) is a ConfigError: its order would silently give images the wrong labels."""
    def key(name: str) -> str:
        return name.replace("_", " ").strip().lower()

    by_key = {key(n): n for n in classnames}
    folder_keys = {key(f) for f in folders}
    if len(by_key) != len(classnames) or set(by_key) != folder_keys:
        named = [n for n in classnames if key(n) in folder_keys]
        if named and len(named) < len(classnames):  # mostly the folders' names: a typo, not another vocabulary
            stray = [n for n in classnames if key(n) not in folder_keys]
            raise ConfigError(f"{len(named)} of the {len(classnames)} class names name image folders but "
                              f"{stray[:5]} name none (folders: {list(folders)[:10]}): fix the class file, or give "
                              "names in the sorted folder order that name no folder")
        return list(classnames)
    ordered = [by_key[key(f)] for f in folders]
    if ordered != list(classnames):
        print("[zero-shot] the class names name the ImageFolder's folders in another order: matched by name")
    return ordered


def _retrieval_loader(rt: Any, cfg: Any, transform: Callable) -> DataLoader:
    if rt.data in ("csv", "karpathy", "json") and not rt.path:
        kind = "the CSV / TSV of image + captions" if rt.data == "csv" else "the Karpathy-format JSON"
        raise ConfigError(f"retrieval.data={rt.data} needs retrieval.path (--retrieval-path): {kind}")
    if rt.data == "shapes":
        from .data import ShapesCaptionSamples
        ds = ShapesCaptionSamples(rt.split, rt.length, cfg.shapes_seed, cfg.shapes_image_size, rt.num_captions,
                                  transform=transform)
    elif rt.data == "csv":
        ds = CsvCaptionDataset(rt.path, rt.img_key, list(rt.caption_keys), transform, rt.root,
                               skip_unreadable=False)
    elif rt.data in ("karpathy", "json"):
        ds = KarpathyJsonDataset(rt.path, rt.root, rt.split, transform)
    else:
        raise ConfigError(f"unknown retrieval.data {rt.data!r} (shapes, csv, karpathy, none)")
    return DataLoader(ds, batch_size=cfg.batch_size, shuffle=False, num_workers=cfg.workers,
                      collate_fn=collate_retrieval, worker_init_fn=ignore_stop_signals)


def _unnormalize(x: torch.Tensor) -> torch.Tensor:
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
    mean = torch.tensor(OPENAI_DATASET_MEAN).view(3, 1, 1)
    std = torch.tensor(OPENAI_DATASET_STD).view(3, 1, 1)
    return (x.float().cpu() * std + mean).clamp(0, 1)


def run_evaluation(model, tokenizer, transform: Callable, cfg: Any, device: Union[str, torch.device] = "cpu",
                   out_dir: Optional[Union[str, Path]] = None, precision: str = "fp32",
                   scalars_only: bool = False) -> dict:
    """Zero-shot classification and/or retrieval as configured by an `EvalCfg`; optional retrieval PNG grid in
    `out_dir`. Returns flat metrics (`zeroshot_acc1`, ..., `image_retrieval_recall@1`, ...); with
    scalars_only=False also the zero-shot predictions and the grid path."""
    was_training = model.training
    model.eval()
    out: dict[str, Any] = {}
    if cfg.zero_shot.data != "none":
        loader, classnames, templates = _zero_shot_loader(cfg.zero_shot, cfg, transform)
        zs = zero_shot_evaluate(model, tokenizer, loader, classnames, templates, device, precision)
        for k in ("acc1", "acc5", "mean_per_class_recall"):
            out[f"zeroshot_{k}"] = zs[k]
        out["zeroshot_num_samples"] = zs["num_samples"]
        out["zeroshot_chance_acc1"] = 1.0 / len(classnames)
        if not scalars_only:
            out["zeroshot_classnames"] = list(classnames)
            out["zeroshot_predictions"] = zs["predictions"]
    if cfg.retrieval.data != "none":
        loader = _retrieval_loader(cfg.retrieval, cfg, transform)
        rt = retrieval_evaluate(model, tokenizer, loader, device, precision, return_features=True)
        feats = rt.pop("_features")
        out.update(rt)
        if cfg.grid_png and out_dir is not None:
            ds = loader.dataset
            scores = feats["text"] @ feats["image"].T
            # one query per image for the first images with captions (their first caption)
            with_text = sorted(set(feats["text_to_image"].tolist()))[:6]
            first = [int((feats["text_to_image"] == i).nonzero()[0]) for i in with_text]
            needed = sorted({j for q in first for j in scores[q].topk(min(5, scores.shape[1])).indices.tolist()})
            images = {j: _unnormalize(ds[j]["image"]) for j in needed}
            path = save_retrieval_grid(Path(out_dir) / "retrieval_grid.png", feats["texts"], _LazyImages(images),
                                       scores, feats["text_to_image"], query_index=first)
            if not scalars_only:
                out["retrieval_grid"] = str(path)
    if was_training:
        model.train()
    return out


class _LazyImages:
    def __init__(self, images: dict):
        self.images = images

    def __getitem__(self, idx: int):
        return self.images[idx]


def run_model_spec(run_dir: Union[str, Path], prefer_best: bool = False) -> tuple[str, dict, str]:
    """(model name, model kwargs, checkpoint) of a ``train_clip`` run folder: its config.yaml's ``model.name`` and
    ``model.kwargs``, and its newest checkpoint (``prefer_best``: ``best.pt`` where there is one)."""
    from omegaconf import OmegaConf
    from vision_rwkv.engine import find_latest_checkpoint
    cfg_path = Path(run_dir) / "config.yaml"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{cfg_path} not found: not a train_clip run folder")
    run_cfg = OmegaConf.load(cfg_path)
    if OmegaConf.select(run_cfg, "model.name") is None or OmegaConf.select(run_cfg, "eval.zero_shot") is None:
        raise ConfigError(f"{run_dir} is not a train_clip run folder: its config.yaml has no model.name and "
                          "eval.zero_shot (a classification or segmentation run?)")
    kwargs = OmegaConf.to_container(run_cfg.model.kwargs, resolve=True) or {}
    best = Path(run_dir) / "checkpoints" / "best.pt"
    checkpoint = best if prefer_best and best.is_file() else find_latest_checkpoint(Path(run_dir) / "checkpoints")
    if checkpoint is None:
        raise FileNotFoundError(f"no checkpoint in {Path(run_dir) / 'checkpoints'}")
    return str(run_cfg.model.name), kwargs, str(checkpoint)


def load_model_for_eval(model_name: Optional[str] = None, pretrained: Optional[str] = None,
                        run_dir: Optional[Union[str, Path]] = None, device: Union[str, torch.device] = "cpu",
                        context_length: Optional[int] = None) -> tuple[Any, Any, Callable]:
    """(model, tokenizer, preprocess_val) for evaluation.

    * `run_dir`: a `train_clip` run; the model name and overrides come from its config.yaml, the weights from
      `pretrained` or else its latest checkpoint.
    * `model_name` in `rwkv_clip.list_models()`: RWKV-CLIP with optional local `pretrained` weights.
    * any other `model_name`: an open_clip model (`open_clip.create_model_and_transforms(name, pretrained)`;
      `pretrained` must be a local file, nothing is downloaded).
    """
    import open_clip

    from .factory import create_model_and_transforms, get_tokenizer, list_models
    kwargs: dict = {}
    if run_dir is not None:
        run_name, kwargs, run_checkpoint = run_model_spec(run_dir)
        model_name, pretrained = model_name or run_name, pretrained or run_checkpoint
    if model_name is None:
        raise ConfigError("give a model name (--model) or a train_clip run folder (--run-dir)")
    if model_name in list_models():
        model, _, preprocess = create_model_and_transforms(model_name, pretrained=pretrained, device=device, **kwargs)
        tokenizer = get_tokenizer(model_name, context_length=context_length or model.context_length)
    else:
        if pretrained is not None and not Path(pretrained).is_file():
            raise FileNotFoundError(f"pretrained weights must be a local file, got {pretrained!r}")
        model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=pretrained, device=device)
        tokenizer = open_clip.get_tokenizer(model_name, context_length=context_length)
    return model.eval(), tokenizer, preprocess
