"""Zero-shot classification and image-text retrieval for any model with the open_clip interface
(`encode_image(x, normalize=True)`, `encode_text(tokens, normalize=True)`): RWKV-CLIP or plain open_clip models.

Definitions (DESIGN.md §5, clip_benchmark):
* zero-shot class embedding = normalise(mean over templates of normalised text features); logits =
  100 * image_features @ W; metrics `acc1`, `acc5`, `mean_per_class_recall`.
* retrieval with several captions per image: text->image ("image_retrieval_recall@k") is a hit when the text's
  image is among the top-k images; image->text ("text_retrieval_recall@k") is a hit when ANY of the image's
  captions is among the top-k texts.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from open_clip import build_zero_shot_classifier
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from .data import CsvCaptionDataset, load_image

__all__ = [
    "retrieval_metrics", "recall_at_k", "classification_metrics", "zero_shot_classifier", "encode_images",
    "zero_shot_evaluate", "retrieval_evaluate", "KarpathyJsonDataset", "ImageCaptionsList",
    "load_classnames_templates", "save_retrieval_grid", "collate_retrieval",
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
        text_to_image: (T,) index of each text's image.
    Returns:
        {"image_retrieval_recall@k": ..., "text_retrieval_recall@k": ...} for every k (clip_benchmark names).
    """
    if text_to_image.shape[0] != text_features.shape[0]:
        raise ValueError(f"text_to_image has {text_to_image.shape[0]} entries for {text_features.shape[0]} texts")
    scores = text_features.float() @ image_features.float().T  # (T, I)
    positive = torch.zeros_like(scores, dtype=torch.bool)
    positive[torch.arange(scores.shape[0]), text_to_image.long()] = True
    metrics = {}
    for k in ks:
        metrics[f"image_retrieval_recall@{k}"] = recall_at_k(scores, positive, k).mean().item()
        metrics[f"text_retrieval_recall@{k}"] = recall_at_k(scores.T, positive.T, k).mean().item()
    return metrics


def classification_metrics(logits: torch.Tensor, target: torch.Tensor, num_classes: Optional[int] = None) -> dict:
    """Top-1, top-5 accuracy and mean per-class recall (classes absent from `target` are left out)."""
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
        data = json.loads(path.read_text())
        items = []
        if isinstance(data, dict) and "images" in data:
            for im in data["images"]:
                if split and im.get("split", split) != split:
                    continue
                rel = Path(im.get("filepath", "")) / im["filename"]
                items.append((root / rel, [s["raw"] if isinstance(s, dict) else s for s in im["sentences"]]))
        elif isinstance(data, list):
            for im in data:
                caps = im.get("caption", im.get("captions"))
                items.append((root / im["image"], [caps] if isinstance(caps, str) else list(caps)))
        else:
            raise ValueError(f"{path}: expected a Karpathy JSON (with 'images') or a list of image/caption entries")
        if not items:
            raise ValueError(f"{path}: no images for split {split!r}")
        super().__init__(items, transform)


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
        data = json.loads(path.read_text())
        if "classnames" not in data:
            raise KeyError(f"{path}: missing 'classnames'")
        templates = data.get("templates") or get_set("imagenet")[1]
        return list(data["classnames"]), list(templates)
    names = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
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
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(query_index) if query_index is not None else list(range(min(max_queries, len(queries))))
    k = min(top_k, scores.shape[1])
    fig, axes = plt.subplots(len(rows), k, figsize=(2.0 * k, 2.2 * len(rows)), squeeze=False)
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
        text = queries[q] if len(queries[q]) < 60 else queries[q][:57] + "..."
        axes[r][0].set_ylabel(text, fontsize=7, rotation=0, ha="right", va="center")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def make_retrieval_loader(kind: str, path: str, transform: Callable, batch_size: int = 64, workers: int = 0,
                          **kwargs: Any) -> DataLoader:
    """Loader for retrieval data: kind "csv" (CsvCaptionDataset kwargs) or "karpathy" (KarpathyJsonDataset)."""
    if kind == "csv":
        ds = CsvCaptionDataset(path, transform=transform, skip_unreadable=False, **kwargs)
    elif kind in ("karpathy", "json"):
        ds = KarpathyJsonDataset(path, transform=transform, **kwargs)
    else:
        raise ValueError(f"unknown retrieval data kind {kind!r} (csv, karpathy)")
    return DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=collate_retrieval)
