"""Class predictions for image files (the library side of ``tools/predict.py``, what timm's ``inference.py`` does).

    clf = load_classifier("configs/classification/demo_shapes.yaml", "runs/demo_shapes/checkpoints/best.pt")
    rows = predict_files(clf, image_files(["photos/"]), topk=5)
    write_predictions(rows, "predictions.csv"); plot_predictions(rows, "predictions.png")

A classifier comes from a training config and its checkpoint (the class names the run recorded), or from a timm
model name with an optional checkpoint (original VRWKV layouts included; ImageNet-1k names for 1000 classes). An
unreadable image is reported in its row (``error``) and the others are still predicted.
"""
from __future__ import annotations

import csv
import io
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence, Union

import torch
from torch import nn

from .files import write_text_atomic
from .logger import progress, save_figure, short_text, subplots, wrapped_text
from .memory_format import to_channels_last
from .precision import autocast

__all__ = ["Classifier", "load_classifier", "image_files", "predict_files", "write_predictions", "plot_predictions",
           "is_segmentation_config"]

PathLike = Union[str, os.PathLike]


@dataclass
class Classifier:
    """An eval-mode classifier, its class names (None: indices only), eval transform and (H, W) input size;
    ``channels_last``: the config asks for channels-last evaluation (``eval.channels_last``, null: train's)."""
    model: nn.Module
    classes: Optional[list[str]]
    transform: Callable
    input_size: tuple[int, int]
    channels_last: bool = False


def is_segmentation_config(path: PathLike) -> bool:
    """Whether a YAML config (with its ``_base_`` chain) describes a segmentor (``model.backbone``), not a
    classifier (``model.name``)."""
    from .config import config_layers
    return any("backbone" in (layer.get("model") or {}) for _, layer, _ in config_layers(path))


def untrained_warning(target: str, checkpoint: Optional[PathLike], overrides: Sequence[str] = (),
                      result: str = "its predictions are meaningless") -> Optional[str]:
    """The warning line for a model a tool would run (or export) with random weights: no ``checkpoint``, and a model
    name, a segmentation config (its heads start untrained) or a classification config without ``model.pretrained``
    / ``model.checkpoint``; None when weights are loaded. ``result``: what the untrained weights make of the output."""
    if checkpoint is not None:
        return None
    if str(target).endswith((".yaml", ".yml")):
        if is_segmentation_config(target):
            what = f"{target} is a segmentation config and no --checkpoint is given"
        else:
            from .config import load_config
            model = load_config(target, overrides).model
            if model.get("pretrained") or model.get("checkpoint"):
                return None
            what = f"{target} sets no model.pretrained / model.checkpoint and no --checkpoint is given"
    else:
        what = f"no --checkpoint for model {target}"
    return (f"warning: {what}: the model has random, untrained weights and {result}; pass --checkpoint (a training "
            "checkpoint, state dict or converted release weights)")


def _class_names(path: Optional[PathLike], num_classes: int) -> Optional[list[str]]:
    if path is None:
        return None
    names = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    if len(names) != num_classes:
        raise ValueError(f"class names file {path} has {len(names)} names for a classifier of {num_classes} classes")
    return names


def _head_rows(sd: Mapping[str, Any]) -> Optional[int]:
    """Output count of the classifier in a checkpoint's weights (``head.weight``, or an mm* ``head.fc.weight``)."""
    for key in ("head.weight", "head.fc.weight"):
        if key in sd and getattr(sd[key], "ndim", 0) >= 2:
            return int(sd[key].shape[0])
    return None


def _from_config(config: PathLike, checkpoint, state, overrides, n):
    from .classification import (build_transforms, check_eval_config, create_classifier, eval_channels_last,
                                 wkv_mode_from_checkpoint)
    from .checkpoint import load_model_weights
    from .config import load_config

    cfg = load_config(config, overrides)
    check_eval_config(cfg)
    if checkpoint is not None:  # the checkpoint holds every weight: no initial weights to fetch or load first
        cfg.model.pretrained, cfg.model.checkpoint = False, None
    model = create_classifier(cfg, n)
    if checkpoint is not None:  # as tools/eval.py --checkpoint loads it
        load_model_weights(model, checkpoint, state=state, set_wkv_mode=wkv_mode_from_checkpoint(cfg))
    size = int(cfg.eval.input_size or cfg.data.input_size)
    return model, build_transforms(cfg)[1], (size, size), eval_channels_last(cfg)


def _from_timm(name: str, checkpoint, state, n):
    import timm
    from timm.data import create_transform, resolve_data_config

    import vision_rwkv  # noqa: F401  (registers the models)
    from .classification import load_initial_weights

    model = timm.create_model(name, **({} if n is None else {"num_classes": int(n)}))
    if checkpoint is not None:
        renewed = load_initial_weights(model, checkpoint, state=state)
        if renewed:
            raise ValueError(f"checkpoint {checkpoint} has no classifier for {name} with {model.num_classes} classes "
                             f"({renewed} would be random); give the class count (num_classes)")
    data_cfg = resolve_data_config(model=model)
    return model, create_transform(**data_cfg), tuple(int(s) for s in data_cfg["input_size"][1:])


def load_classifier(model: str, checkpoint: Optional[PathLike] = None, overrides: Sequence[str] = (),
                    num_classes: Optional[int] = None, class_names: Optional[PathLike] = None) -> Classifier:
    """The classifier named by ``model``: a classification config YAML (``key=value`` ``overrides`` apply; eval
    transform from its ``aug`` / ``eval`` settings; ``checkpoint`` loaded as ``tools/eval.py --checkpoint`` loads
    it) or a timm model name (``checkpoint`` loaded as ``model.checkpoint`` is; timm's eval transform). Both read
    the file with :func:`~vision_rwkv.engine.checkpoint.load_weights`: EMA weights preferred, original layouts
    converted, a v4 model in the Bi-WKV mode the weights were trained with. The class count
    comes from the checkpoint (recorded names or classifier rows), else ``num_classes``; class names from the
    checkpoint, ``class_names`` (a file, one per line), or ImageNet-1k's for 1000 classes."""
    from .checkpoint import read_model_state
    from .classification import checkpoint_classes

    if checkpoint is not None and not Path(checkpoint).is_file():
        raise FileNotFoundError(f"checkpoint not found: {checkpoint}")
    classes = checkpoint_classes(checkpoint) if checkpoint is not None else None
    state = read_model_state(checkpoint) if checkpoint is not None else None  # read once, for rows and weights
    n = len(classes) if classes else (num_classes or (_head_rows(state) if state is not None else None))
    is_config = str(model).endswith((".yaml", ".yml"))
    if is_config:
        if is_segmentation_config(model):
            raise ValueError(f"{model} is a segmentation config; a classification config or model name is needed")
        net, transform, size, channels_last = _from_config(model, checkpoint, state, overrides, n)
    else:
        channels_last = False
        if overrides:
            raise ValueError(f"key=value overrides {list(overrides)} apply to a config file, not to model {model!r}")
        net, transform, size = _from_timm(model, checkpoint, state, n)
    if class_names is not None:
        classes = _class_names(class_names, int(net.num_classes))
    elif classes is None and net.num_classes == 1000:
        from timm.data import ImageNetInfo
        info = ImageNetInfo()
        classes = [info.index_to_description(i) for i in range(1000)]
        if is_config:  # (a timm name means ImageNet; a config may be of another 1000-class dataset)
            warnings.warn(f"{checkpoint or 'the model'} records no class names: the 1000 classes are named as "
                          "ImageNet-1k's; give --class-names FILE for others", stacklevel=2)
    return Classifier(net.eval(), classes, transform, size, channels_last)


def image_files(paths: Iterable[PathLike]) -> list[Path]:
    """Image files among ``paths`` (files as given; folders searched recursively for image extensions, sorted).
    A path that does not exist is a FileNotFoundError; no image at all a ValueError."""
    from vision_rwkv.data.folder import IMG_EXTENSIONS
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMG_EXTENSIONS)
        elif p.is_file():
            found.append(p)
        else:
            raise FileNotFoundError(f"image path not found: {p}")
    if not found:
        raise ValueError(f"no image files in {[str(p) for p in paths]} (extensions {IMG_EXTENSIONS})")
    return found


@torch.no_grad()
def predict_files(clf: Classifier, files: Sequence[PathLike], topk: int = 5, batch_size: int = 32,
                  device: Union[str, torch.device] = "cpu", precision: str = "fp32",
                  show_progress: bool = True, channels_last: bool = False) -> list[dict[str, Any]]:
    """One row per file: ``file``, ``topk`` [(index, class name or None, probability)], best first; or ``file``
    and ``error`` (the reason) for an image that cannot be read. With ``channels_last`` (or the config's, in
    ``clf.channels_last``) the model (moved to ``device`` in place) is made channels-last
    (:func:`~vision_rwkv.engine.memory_format.to_channels_last`)."""
    from vision_rwkv.data.folder import UNREADABLE_IMAGE_ERRORS, load_rgb
    if topk < 1:
        raise ValueError(f"topk must be >= 1, got {topk}")
    device = torch.device(device)
    model = clf.model.to(device)
    if channels_last or clf.channels_last:
        to_channels_last(model)
    rows: list[dict[str, Any]] = [{"file": str(f)} for f in files]
    pending: list[tuple[int, torch.Tensor]] = []

    def flush() -> None:
        x = torch.stack([t for _, t in pending]).to(device)
        with autocast(precision, device):
            probs = model(x).float().softmax(-1)
        p, idx = probs.topk(min(topk, probs.shape[-1]), dim=-1)
        for (row, _), pr, ix in zip(pending, p.tolist(), idx.tolist()):
            rows[row]["topk"] = [(i, clf.classes[i] if clf.classes else None, q) for i, q in zip(ix, pr)]
        pending.clear()

    for i, f in enumerate(progress(files, desc="predict", enabled=show_progress, unit="img")):
        try:
            img = load_rgb(f)
        except UNREADABLE_IMAGE_ERRORS as err:
            rows[i]["error"] = f"{type(err).__name__}: {err}"
            continue
        pending.append((i, clf.transform(img)))
        if len(pending) == batch_size:
            flush()
    if pending:
        flush()
    return rows


def write_predictions(rows: Sequence[dict[str, Any]], path: PathLike) -> Path:
    """Write predictions (UTF-8, atomically) as JSON (``.json``) or CSV (otherwise: ``file``, then ``index_k`` /
    ``class_k`` / ``prob_k`` for each rank k, and ``error``)."""
    path = Path(path)
    if path.suffix == ".json":
        return write_text_atomic(path, json.dumps(list(rows), indent=2, ensure_ascii=False))
    k = max((len(r.get("topk", ())) for r in rows), default=0)
    header = ["file"] + [f"{c}_{j + 1}" for j in range(k) for c in ("index", "class", "prob")] + ["error"]
    buf = io.StringIO()
    out = csv.writer(buf)
    out.writerow(header)
    for r in rows:
        cells: list[Any] = [r["file"]]
        for j in range(k):
            top = r.get("topk", ())
            cells += [top[j][0], top[j][1] or "", f"{top[j][2]:.6f}"] if j < len(top) else ["", "", ""]
        out.writerow(cells + [r.get("error", "")])
    return write_text_atomic(path, buf.getvalue())


def plot_predictions(rows: Sequence[dict[str, Any]], path: PathLike, max_images: int = 32, cols: int = 8) -> Path:
    """A PNG grid of the first ``max_images`` readable images, each titled with its top-1 class and probability."""
    from vision_rwkv.data.folder import load_rgb
    shown = [r for r in rows if "topk" in r][:max_images]
    if not shown:
        raise ValueError("no readable image to plot")
    cols = min(cols, len(shown))
    nrows = -(-len(shown) // cols)
    fig, axes = subplots(nrows, cols, figsize=(2.2 * cols, 2.5 * nrows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, r in zip(axes.flat, shown):
        img = load_rgb(r["file"])
        img.thumbnail((256, 256))
        ax.imshow(img)
        index, name, prob = r["topk"][0]
        label = name if name is not None else f"class {index}"
        ax.set_title(f"{wrapped_text(label, 24, 2)} {100 * prob:.1f}%\n{short_text(Path(r['file']).name, 26)}",
                     fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)
