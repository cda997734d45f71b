"""Image classification training and evaluation (library side of ``tools/train.py`` / ``tools/eval.py``).

``train_classifier(cfg) -> dict`` and ``evaluate_classifier(cfg) -> dict`` take a config loaded by
:func:`vision_rwkv.engine.load_config` from ``configs/classification/*.yaml`` (``base.yaml`` defines every key).
Built from timm's pieces (``create_transform`` with RandAugment / random erasing, ``Mixup``/CutMix,
``create_optimizer_v2`` with layer decay over the model's ``group_matcher``, ``create_scheduler_v2`` stepped per
iteration, ``ModelEmaV3``, ``SoftTargetCrossEntropy`` / ``LabelSmoothingCrossEntropy``, ``accuracy``) and the
shared engine (:class:`~vision_rwkv.engine.loop.Trainer`: DDP, AMP, accumulation, clipping, exact resume).

Data (``data.type``): ``shapes`` (embedded procedural data), ``imagefolder`` (``data.train_dir`` / ``data.val_dir``
trees, or mmcls's ``<path> <class index>`` lists under them: ``data.train_ann_file`` / ``data.val_ann_file``) or
``csv`` (``data.train_csv`` / ``data.val_csv`` with ``path,label`` columns, relative to ``data.csv_root``).
Unreadable images are skipped with a warning and counted: ``skipped_samples`` in ``train_metrics.csv`` and, when
validation met any, in ``val_metrics.csv`` (whose top-1 is then over fewer images).

Demo (``configs/classification/demo_shapes.yaml``: a 0.2M-parameter VRWKV, 4 blocks, embed 64, 64 tokens, on 3000
Shapes images at 32x32): 47.8% top-1 / 98.4% top-5 on 500 validation images (chance 12.5%) after 6 epochs
(seeds 1 / 2: 51.4 / 48.4%), 143 s of single-thread CPU time in total.
"""
from __future__ import annotations

import csv
import io
import time
import weakref
from functools import partial
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..models.convert import CheckpointFileMismatchError
from .checkpoint import check_run_dir_is_free, load_model_weights, model_record, read_model_state
from .compiling import compile_for_training
from .config import ConfigError, save_config, to_dict
from .distributed import (DistInfo, all_gather_object, all_reduce_sum, cleanup_distributed, init_distributed,
                          is_main_process, print_rank0, unwrap_model, wrap_ddp)
from .files import write_text_atomic
from .loader import ShardSampler, build_train_loader, collate_drop_none, seed_everything
from .logger import json_text, progress, save_figure, short_text, subplots
from .loop import CLIP_MODES, Trainer
from .memory_format import to_channels_last
from .process_state import process_state_restored
from .precision import autocast
from .stopping import ignore_stop_signals

__all__ = ["create_classifier", "load_initial_weights", "build_datasets", "build_eval_dataset", "checkpoint_classes",
           "build_transforms", "build_optimizer", "build_scheduler", "build_mixup_and_loss", "even_batch",
           "mixup_enabled_in_epoch", "train_classifier", "evaluate_classifier", "evaluate_loader", "lr_for_batch",
           "norm_and_bias_names", "norm_bias_param_groups", "plot_confusion_matrix"]


# ------------------------------------------------------------------------------------------------- model
def create_classifier(cfg: DictConfig, num_classes: int | None = None) -> nn.Module:
    """``timm.create_model(cfg.model.name, ...)`` (``import vision_rwkv`` registers the VRWKV models); optional
    ``model.checkpoint`` initial weights (:func:`load_initial_weights`)."""
    import timm

    import vision_rwkv  # noqa: F401  (registers the models)

    m = cfg.model
    kwargs = dict(to_dict(m.kwargs) or {})
    if m.drop_path_rate is not None:
        kwargs["drop_path_rate"] = m.drop_path_rate
    if m.drop_rate is not None:
        kwargs["drop_rate"] = m.drop_rate
    n = num_classes if num_classes is not None else m.num_classes
    model = timm.create_model(m.name, pretrained=bool(m.pretrained), num_classes=n, **kwargs)
    if m.checkpoint:
        load_initial_weights(model, m.checkpoint, set_wkv_mode=wkv_mode_from_checkpoint(cfg))
    if m.grad_checkpointing:
        if not hasattr(model, "set_grad_checkpointing"):
            raise ValueError(f"model {m.name} does not support gradient checkpointing")
        model.set_grad_checkpointing(True)
    return model


def load_initial_weights(model: nn.Module, path: str | Path, set_wkv_mode: bool = True,
                         state: Mapping[str, Any] | None = None) -> list[str]:
    """Fine-tuning weights (``model.checkpoint``), read as every loader here and timm's pretrained loading read
    them (:func:`~vision_rwkv.engine.checkpoint.load_weights`, the loader of ``--checkpoint`` too): a training
    checkpoint (EMA weights preferred), a state dict or safetensors file; for VRWKV / VRWKV6 also the original repos'
    files (converted, the position embedding resampled); a v4 model runs the Bi-WKV function the weights were
    trained with (recorded in the file, or ``"original"`` for the original layout) unless ``set_wkv_mode`` is
    False (the config names ``wkv_mode``). A classifier of another class count (or none in the file) is left
    freshly initialised; any other missing, unexpected or mis-shaped key is an error that lists them. ``state``: the
    file's :func:`~vision_rwkv.engine.read_model_state`, when the caller has read it already. Returns the newly
    initialised classifier keys."""
    from .checkpoint import load_weights

    renewed = load_weights(model, path, state=state, set_wkv_mode=set_wkv_mode, new_classifier=True)
    if renewed:
        print_rank0(f"[model] initial weights from {path}; classifier {renewed} newly initialised")
    return renewed


def wkv_mode_from_checkpoint(cfg: DictConfig) -> bool:
    """Whether a checkpoint's Bi-WKV function applies to the model of ``cfg``: unless ``model.kwargs`` names
    ``wkv_mode``."""
    return "wkv_mode" not in (to_dict(cfg.model.kwargs) or {})


# ------------------------------------------------------------------------------------------------- data
def build_transforms(cfg: DictConfig) -> tuple[Any, Any]:
    """(train, eval) transforms from ``cfg.aug`` and ``cfg.data.input_size`` with timm's ``create_transform``."""
    from timm.data import create_transform

    a, size = cfg.aug, int(cfg.data.input_size)
    stats = dict(mean=tuple(a.mean), std=tuple(a.std))
    train = create_transform(size, is_training=True, scale=tuple(a.scale), ratio=tuple(a.ratio), hflip=a.hflip,
                             vflip=a.vflip, color_jitter=a.color_jitter, auto_augment=a.auto_augment or None,
                             re_prob=a.re_prob, re_mode=a.re_mode, re_count=a.re_count,
                             interpolation=a.train_interpolation or a.interpolation, **stats)
    _fix_posterize(train)
    eval_size = int(cfg.eval.input_size or size)
    evaluation = create_transform(eval_size, is_training=False, crop_pct=a.crop_pct, crop_mode=a.crop_mode,
                                  interpolation=a.interpolation, **stats)
    return train, evaluation


def _posterize_zero_safe(img, bits_to_keep, **_):
    """timm's posterize, but 0 bits gives a black image as Pillow < 13 did (Pillow 13 raises ValueError, which
    timm's "inc" RandAugment reaches whenever the sampled magnitude is clipped to 10)."""
    from PIL import Image, ImageOps
    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)
    return ImageOps.posterize(img, bits_to_keep)


def _fix_posterize(transform: Any) -> None:
    from timm.data import auto_augment
    for t in getattr(transform, "transforms", [transform]):
        if isinstance(t, (auto_augment.RandAugment, auto_augment.AutoAugment)):
            ops = t.ops if isinstance(t, auto_augment.RandAugment) else [op for sub in t.policy for op in sub]
            for op in ops:
                if op.aug_fn is auto_augment.posterize:
                    op.aug_fn = _posterize_zero_safe


def _shapes(cfg: DictConfig, split: str, transform: Any) -> Dataset:
    from ..data.shapes import ShapesClassification
    s = cfg.data.shapes
    length = s.train_length if split == "train" else s.val_length
    return ShapesClassification(split, length=length, seed=s.seed, image_size=s.image_size, transform=transform,
                                cache=s.cache)


def _file_dataset(cfg: DictConfig, split: str, transform: Any, classes: list[str] | None = None,
                  label_indices: bool = False) -> Dataset:
    """An image folder, annotation list or CSV split; its content errors (bad labels, no images) are ConfigErrors
    naming the data key. ``label_indices``: a CSV's integer labels index ``classes``."""
    from ..data.folder import AnnFileDataset, CsvImageDataset, ImageFolderDataset
    d = cfg.data
    if d.type == "imagefolder":
        root = d.train_dir if split == "train" else d.val_dir
        if not root:
            raise ConfigError(f"data.type=imagefolder needs data.{'train' if split == 'train' else 'val'}_dir")
        ann_file = d.train_ann_file if split == "train" else d.val_ann_file
        if ann_file:  # (mmcls's list of <path> <class index> under the folder, e.g. ImageNet's flat val)
            names = classes if classes is not None else (list(d.classes) if d.classes else None)
            try:
                return AnnFileDataset(ann_file, root, transform=transform, classes=names)
            except ValueError as err:  # (its contents: a config-level error, one line from the tools)
                key = "train_ann_file" if split == "train" else "val_ann_file"
                raise ConfigError(f"data.{key}: {err}") from None
        # (a validation split may lack a class: fewer images of it, not an error; training may not)
        try:
            return ImageFolderDataset(root, transform=transform, classes=classes, allow_missing=split != "train")
        except ValueError as err:  # (no images, stray class folders: one line from the tools)
            raise ConfigError(f"data.{'train' if split == 'train' else 'val'}_dir: {err}") from None
    if d.type == "csv":
        key = "train_csv" if split == "train" else "val_csv"
        path = d[key]
        if not path:
            raise ConfigError(f"data.type=csv needs data.{key}")
        try:
            return CsvImageDataset(path, root=d.csv_root, transform=transform, classes=classes,
                                   label_indices=label_indices)
        except ValueError as err:  # (its labels or columns: a config-level error, one line from the tools)
            raise ConfigError(f"data.{key}: {err}") from None
    raise ConfigError(f"unknown data.type {d.type!r}; expected 'shapes', 'imagefolder' or 'csv'")


def build_datasets(cfg: DictConfig) -> tuple[Dataset, Dataset | None, list[str]]:
    """(train, val or None, class names)."""
    train_tf, eval_tf = build_transforms(cfg)
    if cfg.data.type == "shapes":
        train = _shapes(cfg, "train", train_tf)
        val = _shapes(cfg, cfg.data.shapes.val_split, eval_tf) if cfg.data.shapes.val_length else None
        return train, val, list(train.classes)
    train = _file_dataset(cfg, "train", train_tf)
    has_val = (cfg.data.val_dir if cfg.data.type == "imagefolder" else cfg.data.val_csv)
    val = _file_dataset(cfg, "val", eval_tf, classes=list(train.classes)) if has_val else None
    return train, val, list(train.classes)


def build_eval_dataset(cfg: DictConfig, model_classes: list[str] | None = None,
                       num_outputs: int | None = None) -> tuple[Dataset, list[str]]:
    """The evaluation split with the eval transform (at ``eval.input_size`` if set). With ``model_classes`` (the
    classes a checkpoint was trained on) the labels follow the model's class order; a class the model does not
    know is an error, a class without images in the split is fine. Integer labels (a CSV's, an annotation list's)
    are indices: into ``data.classes``, else ``model_classes``, else ``num_outputs`` (the model's class count when
    it records no names); a label past them is an error."""
    _, eval_tf = build_transforms(cfg)
    if cfg.data.type == "shapes":
        ds = _shapes(cfg, cfg.eval.split if cfg.eval.split != "val" else cfg.data.shapes.val_split, eval_tf)
        classes = list(ds.classes)
    else:
        names = [str(c) for c in cfg.data.classes] if cfg.data.classes else None
        by_index = cfg.data.type == "csv" or (cfg.data.type == "imagefolder" and bool(cfg.data.val_ann_file))
        if names is None and by_index and model_classes:
            names = list(model_classes)  # (an annotation list's or a CSV's indices count the model's classes)
        ds = _file_dataset(cfg, "val", eval_tf, classes=names, label_indices=True)
        if names is None and num_outputs and _integer_labelled(ds):
            _widen_index_classes(ds, int(num_outputs), cfg)
        classes = list(ds.classes)
    if model_classes is None or classes == list(model_classes):
        return ds, classes
    unknown = [c for c in classes if c not in model_classes]
    if unknown or not hasattr(ds, "samples"):
        raise ConfigError(f"the evaluation data's classes {unknown or classes} are not the model's "
                         f"{len(model_classes)} classes ({list(model_classes)[:10]}...): the labels would be "
                         f"scored against the wrong outputs")
    index = [list(model_classes).index(c) for c in classes]
    ds.samples = [(path, index[label]) for path, label in ds.samples]
    ds.classes, ds.class_to_idx = list(model_classes), {c: i for i, c in enumerate(model_classes)}
    return ds, list(model_classes)


def _integer_labelled(ds: Dataset) -> bool:
    """Whether a file dataset's labels are class indices (an annotation list, a CSV of integers)."""
    from ..data.folder import AnnFileDataset
    return isinstance(ds, AnnFileDataset) or bool(getattr(ds, "integer_labels", False))


def _widen_index_classes(ds: Any, num_outputs: int, cfg: DictConfig) -> None:
    """Index-named classes ``'0'..'K-1'`` for a model of ``num_outputs`` classes (the data's labels may not reach
    its last class); a label past them is a ConfigError."""
    top = max((label for _, label in ds.samples), default=-1)
    if top >= num_outputs:
        key = "val_csv" if cfg.data.type == "csv" else "val_ann_file"
        raise ConfigError(f"data.{key}: class index {top} is past the model's {num_outputs} classes")
    ds.classes = [str(i) for i in range(num_outputs)]
    ds.class_to_idx = {c: i for i, c in enumerate(ds.classes)}


def eval_num_outputs(cfg: DictConfig, state: Mapping[str, Any] | None) -> int | None:
    """The class count of the model to evaluate when its checkpoint records no class names: the classifier rows of
    its weights (``state``), else ``model.num_classes``; None when neither says."""
    from .predict import _head_rows
    rows = _head_rows(state) if state is not None else None
    return rows if rows is not None else (int(cfg.model.num_classes) if cfg.model.num_classes else None)


def checkpoint_classes(path: str | Path, classifier: bool = True) -> list[str] | None:
    """The class names a training checkpoint records (``extra.classes``), else None. With ``classifier`` (the
    classification tools), a segmentation checkpoint is a :class:`CheckpointFileMismatchError` saying what it is."""
    if str(path).endswith(".safetensors"):
        return None
    from .checkpoint import load_checkpoint
    try:  # mapped: the weights are read once, by the loader that follows
        ckpt = load_checkpoint(path, mmap=True)
    except RuntimeError:  # a legacy (non-zip) torch file cannot be mapped
        ckpt = load_checkpoint(path)
    if classifier and _holds_segmentor(ckpt):
        raise CheckpointFileMismatchError(
            f"checkpoint {path} is a segmentation checkpoint (decode_head.* weights), not a classifier: evaluate "
            "it with tools/test_seg.py and predict with tools/predict_seg.py (its backbone can start a classifier: "
            "model.checkpoint of tools/train.py)")
    classes = (ckpt.get("extra") or {}).get("classes") if isinstance(ckpt, dict) else None
    return [str(c) for c in classes] if classes else None


def _holds_segmentor(checkpoint: Any) -> bool:
    """Whether a checkpoint (a training checkpoint, a wrapped or plain state dict) holds a segmentor's weights."""
    if not isinstance(checkpoint, Mapping):
        return False
    if any(str(k).startswith(("decode_head.", "module.decode_head.")) for k in checkpoint):
        return True
    return any(_holds_segmentor(checkpoint.get(k)) for k in ("model", "state_dict", "ema", "model_ema"))


# ------------------------------------------------------------------------------------------------- optim
def lr_for_batch(cfg: DictConfig, global_batch: int) -> float:
    """``optim.lr`` if set, else ``optim.lr_base * global_batch / optim.lr_base_size`` (linear scaling rule)."""
    o = cfg.optim
    if o.lr is not None:
        return float(o.lr)
    return float(o.lr_base) * global_batch / float(o.lr_base_size)


def build_optimizer(cfg: DictConfig, model: nn.Module, lr: float) -> torch.optim.Optimizer:
    """timm ``create_optimizer_v2``; layer decay via ``group_matcher`` when ``optim.layer_decay`` is set. No weight
    decay (``optim.decay_exempt``): ``norm_bias`` - on normalisation layers and biases only (the original recipe);
    ``timm`` - on every 1-D parameter and the model's ``no_weight_decay()`` too; ``none`` - every parameter decays
    (mmcv without a ``paramwise_cfg``, torch's optimizers as built)."""
    from timm.optim import create_optimizer_v2
    o = cfg.optim
    kwargs: dict[str, Any] = {}  # (as timm's train.py: given only when set; timm drops them where not taken)
    if o.betas is not None:
        kwargs["betas"] = tuple(o.betas)
    if o.eps is not None:
        kwargs["eps"] = float(o.eps)
    module = unwrap_model(model)
    if o.decay_exempt in ("norm_bias", "none"):
        kwargs["param_group_fn"] = partial(norm_bias_param_groups, weight_decay=o.weight_decay,
                                           layer_decay=o.layer_decay, exempt=o.decay_exempt == "norm_bias")
    return create_optimizer_v2(module, opt=o.opt, lr=lr, weight_decay=o.weight_decay, momentum=o.momentum,
                               layer_decay=o.layer_decay, **kwargs)


def norm_and_bias_names(model: nn.Module) -> set[str]:
    """Names of the parameters mmcv's ``norm_decay_mult`` / ``bias_decay_mult`` apply to: those of normalisation
    layers (batch, group, layer and instance norms) and every bias."""
    from ..models._layers import NORM_LAYERS
    names = {f"{m_name}.{p_name}" if m_name else p_name
             for m_name, m in model.named_modules() if isinstance(m, NORM_LAYERS)
             for p_name, _ in m.named_parameters(recurse=False)}
    return names | {n for n, _ in model.named_parameters() if n.endswith(".bias") or n == "bias"}


def norm_bias_param_groups(model: nn.Module, weight_decay: float, layer_decay: float | None = None,
                           exempt: bool = True) -> list[dict]:
    """Parameter groups with no weight decay on normalisation layers' parameters and on biases only (mmcv's
    ``norm_decay_mult=0, bias_decay_mult=0``, the original Vision-RWKV recipe); everything else - 1-D parameters
    such as the position embedding, decays, bonuses, mix coefficients and layer scales included - decays.
    ``exempt=False``: every parameter decays (mmcv without a paramwise_cfg). With ``layer_decay``, timm's
    layer-wise groups (``group_matcher``) under the same rule."""
    from timm.optim._param_groups import param_groups_layer_decay, param_groups_weight_decay
    skip = sorted(norm_and_bias_names(model)) if exempt else []
    if layer_decay is not None:
        return param_groups_layer_decay(model, weight_decay=weight_decay, layer_decay=layer_decay,
                                        no_weight_decay_list=skip, weight_decay_exclude_1d=False)
    return param_groups_weight_decay(model, weight_decay=weight_decay, no_weight_decay_list=skip,
                                     weight_decay_exclude_1d=False)


# timm's schedules that step without a metric (plateau steps once an epoch, on a validation metric)
SCHEDULES = ("cosine", "tanh", "step", "multistep", "poly", "wsd", "rsqrt", "constant", "none")


def build_scheduler(cfg: DictConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int) -> tuple[Any, int]:
    """timm ``create_scheduler_v2`` stepped per optimizer step (``sched.on_updates``; else once an epoch, timm's
    default; None for ``none``), and the epochs to train as timm's ``train.py`` takes them from it: ``train.epochs``
    plus ``sched.cooldown_epochs`` (and ``sched.warmup_epochs`` with ``warmup_prefix``). The cosine floor is
    ``sched.min_lr`` or ``sched.min_lr_ratio * lr``. Values timm refuses are ConfigErrors."""
    s = cfg.sched
    min_lr = s.min_lr if s.min_lr is not None else s.min_lr_ratio * _peak_lr(optimizer)
    try:
        return _create_scheduler(cfg, optimizer, steps_per_epoch, min_lr)
    except ValueError as err:  # (timm's own checks of the schedule's values, e.g. wsd's decay length)
        raise ConfigError(f"sched: {err}") from None


def _create_scheduler(cfg: DictConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int,
                      min_lr: float) -> tuple[Any, int]:
    from timm.scheduler import create_scheduler_v2
    s = cfg.sched
    return create_scheduler_v2(optimizer, sched=s.sched, num_epochs=cfg.train.epochs,
                                       decay_epochs=s.decay_epochs, decay_milestones=list(s.decay_milestones),
                                       cooldown_epochs=s.cooldown_epochs, min_lr=min_lr, warmup_lr=s.warmup_lr,
                                       warmup_epochs=s.warmup_epochs, warmup_prefix=s.warmup_prefix,
                                       decay_rate=s.decay_rate, step_on_epochs=not s.on_updates,
                                       updates_per_epoch=steps_per_epoch, noise=_noise_range(s.noise),
                                       noise_pct=s.noise_pct, noise_std=s.noise_std, noise_seed=cfg.seed,
                                       cycle_mul=s.cycle_mul, cycle_decay=s.cycle_decay, cycle_limit=s.cycle_limit,
                                       k_decay=s.k_decay)


def _noise_range(noise: Any) -> float | list[float] | None:
    """``sched.noise`` as timm takes it: None, one fraction of the epochs, or a list of them."""
    if noise is None or isinstance(noise, (int, float)):
        return noise
    return [float(n) for n in noise]


def _peak_lr(optimizer: torch.optim.Optimizer) -> float:
    """The schedule's base lr: the groups' lr as built (timm applies a layer-decay group's ``lr_scale`` when it
    schedules, so the groups hold the unscaled lr until then)."""
    return max(g.get("initial_lr", g.get("lr", 0.0)) for g in optimizer.param_groups)


def build_mixup_and_loss(cfg: DictConfig, num_classes: int):
    """(mixup callable or None, training loss) as timm's ``train.py`` picks them: SoftTargetCrossEntropy with
    mixup/cutmix (label smoothing inside the soft targets), LabelSmoothingCrossEntropy with smoothing, else
    CrossEntropyLoss; ``aug.bce_loss`` puts timm's BinaryCrossEntropy in place of each (with no mixup and no
    smoothing too, where timm's script silently keeps the softmax CE)."""
    from timm.data import Mixup
    from timm.loss import BinaryCrossEntropy, LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
    a = cfg.aug
    mixup_active = a.mixup > 0 or a.cutmix > 0 or a.cutmix_minmax is not None
    mixup = None
    if mixup_active:
        mixup = Mixup(mixup_alpha=a.mixup, cutmix_alpha=a.cutmix,
                      cutmix_minmax=list(a.cutmix_minmax) if a.cutmix_minmax is not None else None,
                      prob=a.mixup_prob, switch_prob=a.mixup_switch_prob, mode=a.mixup_mode,
                      label_smoothing=a.label_smoothing, num_classes=num_classes)
    if a.bce_loss:
        pos_weight = None if a.bce_pos_weight is None else torch.tensor(float(a.bce_pos_weight))
        # (with mixup the smoothing is already in the soft targets)
        return mixup, BinaryCrossEntropy(smoothing=0.0 if mixup_active else float(a.label_smoothing),
                                         target_threshold=a.bce_target_thresh, sum_classes=bool(a.bce_sum),
                                         pos_weight=pos_weight)
    if mixup_active:
        return mixup, SoftTargetCrossEntropy()
    if a.label_smoothing > 0:
        return None, LabelSmoothingCrossEntropy(smoothing=a.label_smoothing)
    return None, nn.CrossEntropyLoss()


def mixup_enabled_in_epoch(cfg: DictConfig, epoch: int) -> bool:
    """Whether mixup / cutmix mix the batches of the 0-based ``epoch`` (timm's ``--mixup-off-epoch``: from
    ``aug.mixup_off_epoch`` on, the targets stay one-hot, smoothed, and the loss is unchanged)."""
    off = cfg.aug.mixup_off_epoch
    return not (off and epoch >= off)


def even_batch(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """An even-sized batch for timm's Mixup (it pairs sample i with sample n - 1 - i): a batch left odd by skipped
    unreadable images loses its last sample (a single sample is repeated)."""
    if len(x) % 2 == 0:
        return x, y
    if len(x) == 1:
        return x.repeat(2, *([1] * (x.ndim - 1))), y.repeat(2)
    return x[:-1], y[:-1]


# ------------------------------------------------------------------------------------------------- eval
@torch.no_grad()
def evaluate_loader(model: nn.Module, loader: DataLoader, num_classes: int, device: torch.device,
                    precision: str = "fp32", show_progress: bool = False) -> dict[str, Any]:
    """Top-1/top-5, mean loss, per-class accuracy and the confusion matrix, summed over ranks (each rank evaluates
    its own shard). ``throughput`` = images/s of the model forward alone, of all ranks together (the images of every
rank over the forward time of the slowest)."""
    model.eval()
    conf = torch.zeros(num_classes, num_classes, dtype=torch.float64, device=device)
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # correct@5, loss sum, count
    forward_s = 0.0
    k5 = min(5, num_classes)
    skipped = 0
    for batch in progress(loader, total=len(loader), desc="eval", enabled=show_progress and is_main_process()):
        batch, dropped = batch
        skipped += dropped
        if batch is None:
            continue
        x, y = batch[0].to(device), batch[1].to(device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        with autocast(precision, device):
            logits = model(x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        forward_s += time.perf_counter() - t0
        logits = logits.float()
        if logits.shape[-1] != num_classes:
            raise ValueError(f"model outputs {logits.shape[-1]} classes, the dataset has {num_classes}")
        totals[1] += nn.functional.cross_entropy(logits, y, reduction="sum")
        top5 = logits.topk(k5, dim=-1).indices
        totals[0] += (top5 == y[:, None]).any(-1).sum()
        totals[2] += y.numel()
        # (top-1 from the same topk as top-5 and timm's accuracy: argmax breaks ties otherwise)
        conf.index_put_((y, top5[:, 0]), torch.ones_like(y, dtype=torch.float64), accumulate=True)
    conf = all_reduce_sum(conf)
    totals = all_reduce_sum(totals)
    forward_s = max(all_gather_object(forward_s))  # (the ranks run side by side)
    skipped = int(all_reduce_sum(torch.tensor(float(skipped), device=device)).item())
    n = max(float(totals[2]), 1.0)
    per_class_n = conf.sum(1)
    # (a class without evaluation images has no accuracy: NaN, null in the JSON, an empty cell in the CSV)
    per_class = torch.where(per_class_n > 0, conf.diag() / per_class_n.clamp(min=1), float("nan")).tolist()
    return {
        "top1": float(conf.diag().sum()) / n * 100.0,
        "top5": float(totals[0]) / n * 100.0,  # top-min(5, num_classes)
        "loss": float(totals[1]) / n,
        "num_samples": int(totals[2]),
        "skipped_samples": skipped,
        "throughput": float(totals[2]) / max(forward_s, 1e-9),
        "per_class_accuracy": [a * 100.0 for a in per_class],
        "per_class_count": [int(c) for c in per_class_n.tolist()],
        "confusion_matrix": conf.long().cpu().tolist(),
    }


def plot_confusion_matrix(conf: list[list[int]], class_names: list[str], path: str | Path,
                          title: str = "confusion matrix") -> Path:
    """Row-normalised confusion matrix (rows = true class) as a PNG; counts written in the cells when small."""
    m = np.asarray(conf, dtype=np.float64)
    norm = m / np.maximum(m.sum(1, keepdims=True), 1)
    n = len(class_names)
    size = min(max(4.0, 0.45 * n + 2), 30)
    fig, ax = subplots(figsize=(size, size))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    row_pt = 0.75 * size * 72 / n  # the points a class gets along an axis
    if row_pt >= 4:  # class names as long as they can be read (at most ~300 classes on the 30-inch figure)
        names = [short_text(str(c), 30) for c in class_names]
        ax.set_xticks(range(n), names, rotation=90, fontsize=min(8.0, 0.85 * row_pt))
        ax.set_yticks(range(n), names, fontsize=min(8.0, 0.85 * row_pt))
    else:  # indices: the rows of per_class.csv
        step = -(-n // 40)
        ax.set_xticks(range(0, n, step))
        ax.set_yticks(range(0, n, step))
        title += " (class indices: the rows of per_class.csv)"
    if n <= 20:
        for i in range(n):
            for j in range(n):
                if m[i, j]:
                    ax.text(j, i, int(m[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if norm[i, j] > 0.5 else "black")
    label_pt = max(10.0, size * 0.6)  # (a large figure is viewed scaled down)
    ax.set_xlabel("predicted", fontsize=label_pt)
    ax.set_ylabel("true", fontsize=label_pt)
    ax.set_title(title, fontsize=label_pt)
    bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    bar.set_label("share of the true class (each row sums to 1)", fontsize=label_pt)
    fig.tight_layout()
    return save_figure(fig, path)


def _eval_loader(ds: Dataset, batch_size: int, num_workers: int, info: DistInfo) -> DataLoader:
    return DataLoader(ds, batch_size=batch_size, sampler=ShardSampler(len(ds), info.world_size, info.rank),
                      num_workers=num_workers, collate_fn=collate_drop_none, pin_memory=info.device.type == "cuda",
                      worker_init_fn=ignore_stop_signals)


# ------------------------------------------------------------------------------------------------- entry points
def _set_threads(cfg: DictConfig) -> None:
    if cfg.num_threads:
        torch.set_num_threads(int(cfg.num_threads))


BEST_METRICS = {"top1": "max", "top5": "max", "loss": "min"}  # train.best_metric -> which way is better
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")  # timm's str_to_interp_mode


def _positive_int(cfg: DictConfig, key: str, minimum: int = 1) -> None:
    value = OmegaConf.select(cfg, key)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{key} must be an integer >= {minimum}, got {value!r}")


def check_training_config(cfg: DictConfig) -> None:
    """Check the values ``train_classifier`` needs before anything is built (the config loader checks keys and
    types): counts, the precision, the best metric, the ``eval.*`` values, and the augmentation's ranges and
    per-channel statistics.
    Raises :class:`ConfigError` naming the key."""
    if not isinstance(cfg.model.name, str) or not cfg.model.name.strip():
        raise ConfigError(f"model.name must name a timm model, got {cfg.model.name!r}")
    check_eval_config(cfg)  # (the run's config.yaml is what tools/eval.py evaluates with)
    for key in ("train.epochs", "train.batch_size", "train.grad_accum_steps", "train.log_every"):
        _positive_int(cfg, key)
    for key in ("train.eval_every_epochs", "train.ckpt_every_epochs", "train.keep_last"):
        _positive_int(cfg, key, minimum=0)
    if cfg.train.precision not in ("fp32", "bf16", "fp16"):
        raise ConfigError(f"train.precision must be fp32, bf16 or fp16, got {cfg.train.precision!r}")
    if cfg.train.best_metric is not None and cfg.train.best_metric not in BEST_METRICS:
        raise ConfigError(f"train.best_metric must be one of {sorted(BEST_METRICS)} (or null), got "
                          f"{cfg.train.best_metric!r}")
    for key in ("optim.lr", "optim.lr_base"):  # (optim.lr null: lr_base x the global batch / lr_base_size)
        value = OmegaConf.select(cfg, key)
        if value is not None and not float(value) > 0:
            raise ConfigError(f"{key} must be positive, got {value}")
    if not float(cfg.optim.weight_decay) >= 0:
        raise ConfigError(f"optim.weight_decay must be >= 0, got {cfg.optim.weight_decay}")
    if cfg.sched.sched not in SCHEDULES:
        why = " (it steps once an epoch on a validation metric, and timm deprecates it: its state is not saved in " \
            "checkpoints, so a resumed run would restart it)" \
            if cfg.sched.sched == "plateau" else ""
        raise ConfigError(f"sched.sched must be one of {', '.join(SCHEDULES)}, got {cfg.sched.sched!r}{why}")
    if cfg.optim.clip_mode not in CLIP_MODES:
        raise ConfigError(f"optim.clip_mode must be one of {', '.join(CLIP_MODES)}, got {cfg.optim.clip_mode!r}")
    stray = [k for k in ("train_ann_file", "val_ann_file") if cfg.data.get(k)]
    if stray and cfg.data.type != "imagefolder":
        raise ConfigError(f"data.{stray[0]} lists images under an image folder: it needs data.type=imagefolder, "
                          f"not {cfg.data.type}")
    if cfg.optim.decay_exempt not in ("norm_bias", "timm", "none"):
        raise ConfigError(f"optim.decay_exempt must be norm_bias, timm or none, got {cfg.optim.decay_exempt!r}")
    _positive_int(cfg, "aug.mixup_off_epoch", minimum=0)
    _positive_int(cfg, "aug.repeats_round", minimum=0)
    if not (float(cfg.aug.repeats) == 0 or float(cfg.aug.repeats) >= 1):
        raise ConfigError(f"aug.repeats must be 0 (off) or >= 1 (each image that many times an epoch), got "
                          f"{cfg.aug.repeats}")
    a = cfg.aug
    choices = {"aug.mixup_mode": (a.mixup_mode, ("batch", "pair", "elem")),
               "aug.crop_mode": (a.crop_mode, ("center", "squash", "border")),
               "aug.re_mode": (a.re_mode, ("const", "rand", "pixel")),
               "aug.interpolation": (a.interpolation, INTERPOLATIONS),
               "aug.train_interpolation": (a.train_interpolation, (None, "random") + INTERPOLATIONS)}
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            raise ConfigError(f"{key} must be one of {', '.join(str(v) for v in allowed)}, got {value!r}")
    for key in ("aug.hflip", "aug.vflip", "aug.re_prob", "aug.mixup_prob", "aug.mixup_switch_prob"):
        if not 0.0 <= float(OmegaConf.select(cfg, key)) <= 1.0:
            raise ConfigError(f"{key} is a probability (0 to 1), got {OmegaConf.select(cfg, key)}")
    if not 0.0 <= float(a.label_smoothing) < 1.0:
        raise ConfigError(f"aug.label_smoothing must be in [0, 1), got {a.label_smoothing}")
    if cfg.ema.enabled and not 0.0 < float(cfg.ema.decay) < 1.0:
        raise ConfigError(f"ema.decay must be in (0, 1), got {cfg.ema.decay}")
    if cfg.sched.sched == "none" and (float(cfg.sched.warmup_epochs) > 0 or cfg.optim.layer_decay is not None):
        raise ConfigError("sched.sched=none leaves every group's lr as built: no warm-up (set sched.warmup_epochs=0) "
                          "and no layer decay (optim.layer_decay=null); sched.sched=constant has both")
    for key in ("sched.warmup_epochs", "sched.cooldown_epochs"):
        if float(OmegaConf.select(cfg, key)) < 0:
            raise ConfigError(f"{key} must be >= 0, got {OmegaConf.select(cfg, key)}")
    _check_sched_shape(cfg.sched)
    betas = cfg.optim.betas
    if betas is not None and (len(betas) not in (2, 3) or not all(0.0 <= float(b) < 1.0 for b in betas)):
        raise ConfigError(f"optim.betas must be 2 (or, for adan, 3) values in [0, 1), got {to_dict(betas)}")
    from timm.optim import list_optimizers
    opt = str(cfg.optim.opt).lower()
    if opt.split("_")[-1] not in list_optimizers() and opt not in list_optimizers():
        raise ConfigError(f"optim.opt {cfg.optim.opt!r} is not one of timm's optimizers (timm.optim.list_optimizers())")
    thresh = cfg.aug.bce_target_thresh
    if thresh is not None and not 0 <= float(thresh) < 1:
        raise ConfigError(f"aug.bce_target_thresh must be in [0, 1) (or null), got {thresh}")
    if cfg.aug.bce_pos_weight is not None and not float(cfg.aug.bce_pos_weight) > 0:
        raise ConfigError(f"aug.bce_pos_weight must be positive (or null), got {cfg.aug.bce_pos_weight}")
    for key in ("aug.scale", "aug.ratio"):
        pair = OmegaConf.select(cfg, key)
        if pair is None or len(pair) != 2 or not 0 < float(pair[0]) <= float(pair[1]):
            raise ConfigError(f"{key} must be [low, high] with 0 < low <= high, got {to_dict(pair)}")
    for key in ("aug.mean", "aug.std"):
        stats = OmegaConf.select(cfg, key)
        if stats is None or len(stats) != 3:
            raise ConfigError(f"{key} needs one value per RGB channel (3), got {to_dict(stats)}")


def _check_sched_shape(s: DictConfig) -> None:
    """The lr noise and cycle settings (timm's --lr-noise*, --lr-cycle-*, --lr-k-decay) in their ranges."""
    noise = s.noise
    fractions = [] if noise is None else [noise] if isinstance(noise, (int, float)) else list(noise)
    if noise is not None and (not 1 <= len(fractions) <= 2 or not all(0 <= float(f) for f in fractions)
                              or fractions != sorted(fractions)):
        raise ConfigError("sched.noise is null, where the lr noise starts as a fraction of the epochs (e.g. 0.5), "
                          f"or [start, end] fractions (e.g. [0.4, 0.9]); got {to_dict(noise)}")
    positive = {"sched.noise_pct": s.noise_pct, "sched.noise_std": s.noise_std, "sched.cycle_mul": s.cycle_mul,
                "sched.cycle_decay": s.cycle_decay, "sched.k_decay": s.k_decay}
    for key, value in positive.items():
        if not float(value) > 0:
            raise ConfigError(f"{key} must be positive, got {value}")
    if int(s.cycle_limit) != s.cycle_limit or int(s.cycle_limit) < 1:
        raise ConfigError(f"sched.cycle_limit must be a whole number >= 1, got {s.cycle_limit}")


@process_state_restored()
def train_classifier(cfg: DictConfig) -> dict[str, Any]:
    """Train per ``cfg`` (single process or under torchrun); returns the final metrics: ``top1``/``top5``/``loss``
    on the validation split (and ``ema_*``), ``train_loss``, ``train_time_s``, ``best``, ``run_dir``,
    ``checkpoint`` (path of the last checkpoint). The caller's threads, random states and determinism settings
    come back afterwards (:func:`~vision_rwkv.engine.process_state.process_state_restored`)."""
    _set_threads(cfg)
    info = init_distributed(cfg.device)
    try:
        return _train(cfg, info)
    finally:
        cleanup_distributed()


def _train(cfg: DictConfig, info: DistInfo) -> dict[str, Any]:
    from timm.utils import ModelEmaV3

    t_start = time.perf_counter()
    check_training_config(cfg)
    seed_everything(cfg.seed, info.rank, deterministic=cfg.deterministic)
    run_dir = Path(cfg.run_dir)
    check_run_dir_is_free(run_dir, cfg.resume)  # fail fast, before the data and the model are built
    train_set, val_set, classes = build_datasets(cfg)
    num_classes = len(classes)
    if cfg.model.num_classes not in (None, num_classes):
        raise ConfigError(f"model.num_classes={cfg.model.num_classes} but the data has {num_classes} classes")
    seed_everything(cfg.seed, 0)  # identical initial weights on every rank
    model = create_classifier(cfg, num_classes)
    seed_everything(cfg.seed, info.rank)
    if cfg.train.channels_last:  # (before the EMA copy and the wrappers)
        to_channels_last(model)
    model = wrap_ddp(model, info)
    t = cfg.train
    repeats = float(cfg.aug.repeats)
    loader = build_train_loader("train.batch_size" + (", aug.repeats" if repeats else ""), train_set, t.batch_size,
                                shuffle=True, drop_last=True, seed=cfg.seed, num_workers=cfg.data.num_workers,
                                info=info, pin_memory=info.device.type == "cuda", repeats=repeats,
                                repeats_round=int(cfg.aug.repeats_round))
    global_batch = t.batch_size * info.world_size * t.grad_accum_steps
    lr = lr_for_batch(cfg, global_batch)
    optimizer = build_optimizer(cfg, model, lr)
    steps_per_epoch = len(loader) // t.grad_accum_steps
    scheduler, epochs = build_scheduler(cfg, optimizer, steps_per_epoch)
    ema = None
    if cfg.ema.enabled:
        ema = ModelEmaV3(unwrap_model(model), decay=cfg.ema.decay, use_warmup=cfg.ema.warmup)
    mixup, criterion = build_mixup_and_loss(cfg, num_classes)
    criterion = criterion.to(info.device)  # (BinaryCrossEntropy's pos_weight is a buffer)
    if mixup is not None and t.batch_size % 2:
        raise ConfigError(f"mixup/cutmix need an even per-process train.batch_size, got {t.batch_size}")
    print_rank0(f"[train] {cfg.model.name}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params, "
                f"{num_classes} classes, {len(train_set)} train images, global batch {global_batch}, lr {lr:.3g}, "
                f"{steps_per_epoch} steps/epoch x {epochs} epochs"
                + (f" ({t.epochs} + warmup / cooldown{' / lr cycles' if cfg.sched.cycle_limit > 1 else ''})"
                   if epochs != t.epochs else "")
                + f", world size {info.world_size}, {info.device}")

    trainer_ref: Callable[[], Trainer | None] = lambda: None  # (the trainer, built below: see loss_fn)

    def loss_fn(m: nn.Module, batch: Any):
        x, y = batch
        if mixup is not None:  # (the trainer holds loss_fn, so loss_fn holds it weakly: no cycle keeps the model)
            mixup.mixup_enabled = mixup_enabled_in_epoch(cfg, trainer_ref().epoch)
            x, y = mixup(*even_batch(x, y))
        logits = m(x)
        loss = criterion(logits, y)
        if mixup is None:
            return loss, {"train_top1": (logits.detach().argmax(-1) == y).float().mean() * 100.0}
        return loss

    eval_fn = None
    if val_set is not None:
        val_loader = _eval_loader(val_set, cfg.eval.batch_size or t.batch_size, cfg.data.num_workers, info)

        def eval_fn(m: nn.Module) -> dict[str, float]:
            r = evaluate_loader(m, val_loader, num_classes, info.device, cfg.eval.precision or t.precision)
            metrics = {k: r[k] for k in ("top1", "top5", "loss")}
            if r["skipped_samples"]:  # unreadable validation images: the metrics are over fewer samples
                metrics["skipped_samples"] = r["skipped_samples"]
            return metrics

    best_metric = t.best_metric if val_set is not None else None
    if best_metric and cfg.ema.enabled and cfg.ema.select_best:
        best_metric = f"ema_{best_metric}"
    model = compile_for_training(model, t.compile, t.compile_backend, t.compile_mode)
    trainer = Trainer(model, optimizer, loader, loss_fn, run_dir=run_dir, info=info, epochs=epochs,
                      scheduler=scheduler, ema=ema, precision=t.precision, grad_accum_steps=t.grad_accum_steps,
                      clip_grad=cfg.optim.clip_grad, clip_mode=cfg.optim.clip_mode, eval_fn=eval_fn,
                      eval_every_epochs=t.eval_every_epochs, best_metric=best_metric,
                      best_mode=BEST_METRICS.get(t.best_metric, "max"),
                      ckpt_every_steps=t.ckpt_every_steps, ckpt_every_epochs=t.ckpt_every_epochs,
                      keep_last=t.keep_last, log_every=t.log_every, tensorboard=t.tensorboard,
                      stop_after_steps=t.stop_after_steps, show_progress=t.show_progress, plot=t.plot,
                      extra_state={"classes": classes, **model_record(model)}, must_match=("classes",),
                      result_files=("final_metrics.json",))
    trainer_ref = weakref.ref(trainer)
    # config.yaml once the config, data and model are checked and a resume has succeeded (the folder was checked first)
    result = trainer.fit(resume=cfg.resume, on_start=partial(save_config, cfg, run_dir / "config.yaml")
                         if info.is_main else None)
    result.update(run_dir=str(run_dir), num_classes=num_classes, classes=classes,
                  checkpoint=str(trainer.ckpt.latest()) if trainer.ckpt.latest() else None,
                  total_time_s=time.perf_counter() - t_start)
    if info.is_main and not result.get("stopped"):
        write_text_atomic(run_dir / "final_metrics.json",
                          json_text({k: v for k, v in result.items() if k != "classes"}))
    return result


def _per_class_csv(classes: list[str], r: dict[str, Any]) -> str:
    """per_class.csv's text: class, accuracy (empty for a class without images), count; quoted where needed."""
    buf = io.StringIO()
    rows = csv.writer(buf)  # (quoted: class names may hold commas)
    rows.writerow(["class", "accuracy", "count"])
    for name, acc, cnt in zip(classes, r["per_class_accuracy"], r["per_class_count"]):
        rows.writerow([name, "" if acc != acc else f"{acc:.4f}", cnt])
    return buf.getvalue()


def check_eval_config(cfg: DictConfig) -> None:
    """Check the ``eval.*`` values ``evaluate_classifier`` uses (each null = its training counterpart); a
    :class:`ConfigError` names the key (a 0 batch was taken for null, a string for true)."""
    e = cfg.eval
    for key in ("batch_size", "input_size"):
        if e[key] is not None:
            _positive_int(cfg, f"eval.{key}")
    if e.precision is not None and e.precision not in ("fp32", "bf16", "fp16"):
        raise ConfigError(f"eval.precision must be fp32, bf16, fp16 or null (= train.precision), got {e.precision!r}")
    if e.channels_last is not None and not isinstance(e.channels_last, bool) and e.channels_last not in (0, 1):
        raise ConfigError(f"eval.channels_last must be true, false (1, 0) or null (= train.channels_last), got "
                          f"{e.channels_last!r}")


def eval_channels_last(cfg: DictConfig) -> bool:
    """Whether evaluation runs channels-last: ``eval.channels_last``, null = ``train.channels_last``."""
    return bool(cfg.train.channels_last if cfg.eval.channels_last is None else cfg.eval.channels_last)


class NoReadableImagesError(RuntimeError):
    """Not one evaluation image could be read: there is no metric to report."""


@process_state_restored()
def evaluate_classifier(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate ``cfg.model`` (any timm name; weights from ``eval.checkpoint`` -- a training checkpoint or a state
    dict -- or ``model.pretrained``) on the eval split at ``eval.input_size`` (default ``data.input_size``).
    Writes ``metrics.json``, ``per_class.csv`` and ``confusion_matrix.png`` to ``eval.out_dir`` (default
    ``<run_dir>/eval``) and returns the metrics."""
    check_eval_config(cfg)
    _set_threads(cfg)
    info = init_distributed(cfg.device)
    try:
        seed_everything(cfg.seed, info.rank)
        ckpt = cfg.eval.checkpoint
        model_classes = checkpoint_classes(ckpt) if ckpt else None
        state = read_model_state(ckpt, cfg.eval.weights) if ckpt else None  # (read once: head rows and weights)
        ds, classes = build_eval_dataset(cfg, model_classes, None if model_classes else eval_num_outputs(cfg, state))
        model = create_classifier(cfg, len(classes))
        if ckpt:
            load_model_weights(model, ckpt, key=cfg.eval.weights, state=state,
                               set_wkv_mode=wkv_mode_from_checkpoint(cfg))
        del state
        model = model.to(info.device)
        if eval_channels_last(cfg):
            to_channels_last(model)
        loader = _eval_loader(ds, cfg.eval.batch_size or cfg.train.batch_size, cfg.data.num_workers, info)
        t0 = time.perf_counter()
        r = evaluate_loader(model, loader, len(classes), info.device, cfg.eval.precision or cfg.train.precision,
                            show_progress=cfg.train.show_progress)
        if r["num_samples"] == 0:  # (no accuracy over 0 images: an error, not 0%)
            raise NoReadableImagesError(f"no evaluation image could be read: all {r['skipped_samples']} images of "
                                        f"the split are unreadable (see the warnings above)")
        r["eval_time_s"] = time.perf_counter() - t0
        r["input_size"] = int(cfg.eval.input_size or cfg.data.input_size)
        r["classes"] = classes
        r["checkpoint"] = str(cfg.eval.checkpoint) if cfg.eval.checkpoint else None
        r["weights"] = cfg.eval.weights if cfg.eval.checkpoint else ("pretrained" if cfg.model.pretrained else "none")
        out_dir = Path(cfg.eval.out_dir or (Path(cfg.run_dir) / "eval"))
        if info.is_main:
            write_text_atomic(out_dir / "metrics.json", json_text(r))
            write_text_atomic(out_dir / "per_class.csv", _per_class_csv(classes, r))
            r["confusion_matrix_png"] = str(plot_confusion_matrix(
                r["confusion_matrix"], classes, out_dir / "confusion_matrix.png",
                title=f"{cfg.model.name} top-1 {r['top1']:.2f}%"))
            print_rank0(f"[eval] {cfg.model.name} @ {r['input_size']}: top-1 {r['top1']:.2f}%  "
                        f"top-5 {r.get('top5', float('nan')):.2f}%  loss {r['loss']:.4f}  "
                        f"{r['throughput']:.1f} img/s  ({r['num_samples']} images)  -> {out_dir}")
        return r
    finally:
        cleanup_distributed()
