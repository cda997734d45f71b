"""Label maps for image files with a trained segmentor (the library side of ``tools/predict_seg.py``; mmseg's
``inference_model`` + ``image_demo``).

    from vision_rwkv.engine.predict import image_files
    from vision_rwkv.seg.predict_images import load_segmentor, load_trained_segmentor, save_label_png, segment_files
    model, cfg, classes = load_segmentor("configs/segmentation/demo_shapes.yaml", "runs/.../best.pt")
    # or the checkpoint test_seg would test (test.checkpoint, else the run's best / latest):
    model, cfg, classes, checkpoint = load_trained_segmentor("configs/segmentation/demo_shapes.yaml")
    for file, image, labels in segment_files(model, cfg, image_files(["photos/"])):
        save_label_png(labels, f"{Path(file).stem}.png", len(classes))

Each image goes through the config's test pipeline (``test.scale`` keep-ratio resize, normalisation) and test-time
inference (``test.mode`` whole / slide with ``test.crop_size`` / ``test.stride``, ``test.flip``, ``test.scales``);
the label map has the original image size.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image
from torch import nn

from .classes import ADE20K_CLASSES, CITYSCAPES_CLASSES
from .inference import inference
from .visualize import make_palette

__all__ = ["load_segmentor", "load_trained_segmentor", "config_classes", "recorded_classes", "segment_files",
           "save_label_png", "class_fractions"]

PathLike = Union[str, os.PathLike]


def config_classes(cfg: Any) -> Optional[list[str]]:
    """The class names a segmentation config's data names without reading its data: ADE20K / Cityscapes / Shapes
    lists, ``data.classes`` (a list or a file) for ``type=folder``; None when unset."""
    t = cfg.data.type
    if t == "ade20k":
        return list(ADE20K_CLASSES)
    if t == "cityscapes":
        return list(CITYSCAPES_CLASSES)
    if t == "shapes":
        from vision_rwkv.data.shapes import SEG_CLASS_NAMES
        return list(SEG_CLASS_NAMES)
    from .train import _class_list, _plain
    return _class_list(_plain(cfg.data.classes)) if cfg.data.classes is not None else None


def load_segmentor(config: PathLike, checkpoint: Optional[PathLike] = None, overrides: Sequence[str] = (),
                   num_classes: Optional[int] = None) -> tuple[nn.Module, Any, list[str]]:
    """(eval-mode segmentor, config, class names) for a segmentation config and its training checkpoint (EMA weights
    preferred) or a released mmseg checkpoint (converted); class count from the checkpoint's decode head, else
    ``num_classes``, else the config's classes.
    Without a checkpoint the backbone takes ``model.pretrained`` and the heads stay random (an untrained model, e.g.
    for export smoke tests; :func:`load_trained_segmentor` finds the run's checkpoint instead). Class names: the
    checkpoint's (``extra.classes``), else the config's, when their count matches, else ``class <i>`` with a
    warning."""
    from .config import load_seg_config

    if checkpoint is not None and not Path(checkpoint).is_file():
        raise FileNotFoundError(f"checkpoint not found: {checkpoint}")
    return _build(load_seg_config(config, overrides), config, checkpoint, num_classes)


def load_trained_segmentor(config: PathLike, overrides: Sequence[str] = (), num_classes: Optional[int] = None
                           ) -> tuple[nn.Module, Any, list[str], Path]:
    """:func:`load_segmentor` with the checkpoint ``tools/test_seg.py`` would test (``resolve_checkpoint``:
    ``test.checkpoint``, else ``best.pt``, else the newest ``ckpt_*.pt`` of ``train.run_dir``), and that path.
    FileNotFoundError when there is none."""
    from .config import load_seg_config
    from .train import resolve_checkpoint

    cfg = load_seg_config(config, overrides)
    checkpoint = resolve_checkpoint(cfg)
    return (*_build(cfg, config, checkpoint, num_classes), checkpoint)


def _build(cfg: Any, config: PathLike, checkpoint: Optional[PathLike],
           num_classes: Optional[int]) -> tuple[nn.Module, Any, list[str]]:
    """The segmentor of the loaded config ``cfg`` (read from ``config``) with ``checkpoint``'s weights, if any."""
    from .convert import load_segmentor_weights, read_segmentor_state
    from .train import build_segmentor

    names = config_classes(cfg)
    recorded = recorded_classes(checkpoint) if checkpoint is not None else None
    state = read_segmentor_state(checkpoint) if checkpoint is not None else None
    if state is not None and num_classes is None:
        head = state.get("decode_head.conv_seg.weight")
        num_classes = int(head.shape[0]) if head is not None else None
    if num_classes is None:
        if names is None:
            raise ValueError(f"{config}: the class count comes from the checkpoint (decode_head.conv_seg), "
                             f"num_classes or data.classes; none was given")
        num_classes = len(names)
    model = build_segmentor(cfg, int(num_classes), load_pretrained=checkpoint is None)
    if state is not None:
        load_segmentor_weights(model, checkpoint, state)
    return model.eval(), cfg, _class_names(names, recorded, int(num_classes), checkpoint)


def recorded_classes(checkpoint: PathLike) -> Optional[list[str]]:
    """The class names a training checkpoint records (``extra.classes``, as tools/train_seg.py writes them), else
    None (also for a file that cannot be read this way: its weights are read, and judged, elsewhere)."""
    from vision_rwkv.engine.classification import checkpoint_classes
    try:
        return checkpoint_classes(checkpoint, classifier=False)
    except Exception:  # noqa: BLE001  (a released file with objects weights_only refuses, a safetensors file)
        return None


def _class_names(config_names: Optional[list[str]], recorded: Optional[list[str]], num_classes: int,
                 checkpoint: Optional[PathLike]) -> list[str]:
    """The checkpoint's recorded names, else the config's, when their count is the model's; else ``class <i>``.
    Names that do not fit (or differ from the checkpoint's) are a warning."""
    if recorded is not None and len(recorded) == num_classes:
        if config_names is not None and config_names != recorded:
            warnings.warn(f"the config's {len(config_names)} class names differ from the {num_classes} that "
                          f"checkpoint {checkpoint} records; using the checkpoint's", stacklevel=3)
        return recorded
    if config_names is not None and len(config_names) == num_classes:
        return config_names
    if config_names is not None:
        warnings.warn(f"the config names {len(config_names)} classes ({', '.join(config_names[:5])}"
                      f"{', ...' if len(config_names) > 5 else ''}) but the model has {num_classes}: the labels are "
                      f"named 'class <i>' (the wrong config or checkpoint?)", stacklevel=3)
    return [f"class {i}" for i in range(num_classes)]


@torch.no_grad()
def segment_files(model: nn.Module, cfg: Any, files: Sequence[PathLike], device: Union[str, torch.device] = "cpu",
                  precision: str = "fp32", show_progress: bool = True,
                  errors: Optional[dict[str, str]] = None) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """Yield ``(file, image (H, W, 3) uint8, label map (H, W) int64)`` per readable file, with the config's test
    pipeline and test-time inference. An unreadable file is skipped; its reason goes to ``errors`` when given.
    ``model`` is moved to ``device`` (and made channels-last when the config's ``test.channels_last`` says so)."""
    from vision_rwkv.data.folder import UNREADABLE_IMAGE_ERRORS
    from vision_rwkv.engine import autocast, progress

    from .datasets import read_seg_image

    from .train import _test_kwargs, place_for_test, test_transform

    transform = test_transform(cfg)
    device = torch.device(device)
    model = place_for_test(model, cfg, device)
    align = getattr(model, "align_corners", False)
    for f in progress(files, desc="segment", enabled=show_progress, unit="img"):
        try:
            image = read_seg_image(f)  # (as evaluation reads it)
        except UNREADABLE_IMAGE_ERRORS as err:
            if errors is not None:
                errors[str(f)] = f"{type(err).__name__}: {err}"
            continue
        sample = transform(image)
        x = sample["image"][None].to(device)
        scaled = [t[None] for t in sample["scaled"]] if "scaled" in sample else None
        with autocast(precision, device):
            probs = inference(model, x, out_size=image.shape[:2], align_corners=align, scaled=scaled,
                              **_test_kwargs(cfg))
        yield str(f), image, probs.argmax(dim=1)[0].cpu().numpy()


def save_label_png(labels: np.ndarray, path: PathLike, num_classes: int, offset: int = 0,
                   palette: np.ndarray | None = None) -> Path:
    """Write a label map as PNG: class id + ``offset`` as pixel values (``offset`` 1: ADE20K's 1..150), 8-bit with
    the overlay palette (``palette``, (num_classes, 3) uint8, or :func:`make_palette`'s: viewable in colour, each
    class in its overlay colour) up to 256 values, 16-bit greyscale beyond."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if num_classes + offset <= 256:
        img = Image.fromarray((labels + offset).astype(np.uint8))  # (mode L; putpalette makes it P)
        colours = np.zeros((256, 3), dtype=np.uint8)
        colours[offset:offset + num_classes] = make_palette(num_classes) if palette is None else palette
        img.putpalette(colours.reshape(-1).tolist())
    else:
        img = Image.fromarray((labels + offset).astype(np.uint16))
    img.save(path)
    return path


def class_fractions(labels: np.ndarray, classes: Sequence[str]) -> dict[str, float]:
    """Share of the pixels of each class present in a label map, largest first."""
    ids, counts = np.unique(labels, return_counts=True)
    order = np.argsort(-counts)
    return {classes[int(ids[i])]: round(float(counts[i]) / labels.size, 6) for i in order}
