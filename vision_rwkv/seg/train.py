"""Config-driven segmentation training and testing on the shared engine (`vision_rwkv.engine`).

    cfg = load_seg_config("configs/segmentation/demo_shapes.yaml", ["train.run_dir=runs/demo"])
    train_segmentor(cfg)   # -> {"step", "train_loss", "mIoU", "mAcc", "aAcc", "best", ...}
    test_segmentor(cfg)    # -> {"mIoU", "mAcc", "aAcc", "per_class", "checkpoint", "files", ...}

Training: iteration-based AdamW + poly/warm-up over layer-decayed groups, DDP under torchrun (SyncBN on GPUs), AMP,
atomic checkpoints with exact resume (`train.resume=latest`), periodic mIoU evaluation on the validation split.
Testing: whole / sliding-window inference (optional flip / multi-scale) at the original image size, metrics JSON,
per-class table, PNG overlays. Metrics returned by this module are percentages.
"""
from __future__ import annotations

import warnings
import weakref
from functools import partial
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, Subset

from ..engine.logger import json_text
from ..engine.memory_format import to_channels_last
from ..engine.process_state import process_state_restored
from ..engine.files import write_text_atomic
from ..engine.stopping import ignore_stop_signals
from .datasets import ADE20KDataset, CityscapesDataset, FolderSegDataset, SegDataset, ShapesSegDataset
from .config import DataConfig
from .convert import load_segmentor_weights
from .inference import inference
from .metrics import SUMMARY_METRICS, SegMetric, format_table
from .optim import PolyWarmupLR, build_optimizer
from .segmentor import Segmentor, create_segmentor
from .visualize import check_palette, save_overlays

__all__ = ["build_datasets", "build_segmentor", "evaluate_segmentor", "train_segmentor", "test_segmentor",
           "resolve_checkpoint", "config_palette", "has_validation", "check_data_config"]


def _plain(node: Any) -> Any:
    """Plain python containers for an omegaconf node (other values pass through)."""
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def _class_list(classes: Any) -> list[str]:
    if classes is None:
        raise ValueError("data.classes must be set for type=folder (a list of names or a text file, one per line)")
    if isinstance(classes, str):
        path = Path(classes)
        if not path.is_file():
            raise FileNotFoundError(f"class list file not found: {path}")
        names = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
    else:
        names = [str(c) for c in classes]
    if not names:
        raise ValueError("the class list is empty")
    seen: set[str] = set()
    repeated = sorted({n for n in names if n in seen or seen.add(n)})
    if repeated:  # (the per-class results are keyed by name: a repeated name would lose rows)
        from vision_rwkv.engine import ConfigError
        raise ConfigError(f"data.classes names {', '.join(map(repr, repeated))} more than once: each class needs its "
                          "own name")
    return names


def test_transform(cfg: Any) -> Any:
    """The config's test preprocessing: ``test.scale`` keep-ratio resize, ``test.size_divisor``, ``data.mean`` /
    ``data.std``, and the per-ratio resizes of ``test.scales``."""
    from .transforms import SegTestTransform  # albumentations: imported on first use

    scale = cfg.test.scale
    return SegTestTransform(scale=list(scale) if scale is not None else None, mean=list(cfg.data.mean),
                            std=list(cfg.data.std), ratios=list(cfg.test.scales), size_divisor=cfg.test.size_divisor)


# type=folder keys: set (off their schema defaults) with another data.type they would be silently ignored
FOLDER_KEYS = ("img_dir", "ann_dir", "val_img_dir", "val_ann_dir", "classes", "img_suffix", "seg_map_suffix",
               "reduce_zero_label")


def check_data_config(d: Any) -> None:
    """ConfigError for `type=folder` keys set with another data.type (each dataset type has its own layout)."""
    from vision_rwkv.engine import ConfigError

    if d.type == "folder":
        return
    defaults = DataConfig()
    stray = [k for k in FOLDER_KEYS if _plain(d.get(k)) != getattr(defaults, k)]
    if stray:
        raise ConfigError(f"data.{', data.'.join(stray)} only apply to data.type=folder (a dataset in your own "
                          f"folders); data.type={d.type} has its own layout, classes and labels")


def config_palette(cfg: Any, num_classes: int) -> Optional[np.ndarray]:
    """`data.palette` as (num_classes, 3) uint8, or None (the package's colours); ConfigError when malformed."""
    from vision_rwkv.engine import ConfigError

    try:
        return check_palette(_plain(cfg.data.palette), num_classes)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def has_validation(cfg: Any) -> bool:
    """Whether `cfg.data` names a validation split (a folder dataset may leave its val folders unset)."""
    d = cfg.data
    return d.type != "folder" or d.val_img_dir not in (None, "") or d.val_ann_dir not in (None, "")


def _under_root(d: Any, folder: Optional[str]) -> Optional[str]:
    """A folder dataset's directory: relative to `data.root` when that is set (mmseg's `data_root`)."""
    if folder in (None, "") or d.root in (None, "") or Path(folder).is_absolute():
        return folder
    return str(Path(d.root) / folder)


def build_datasets(cfg: Any, splits: Sequence[str] = ("train", "val")) -> dict[str, SegDataset]:
    """Datasets named by `cfg.data` with the train augmentation / test preprocessing of `cfg.data` / `cfg.test`."""
    from .transforms import SegTrainTransform  # albumentations: imported on first use

    d = cfg.data
    check_data_config(d)
    out: dict[str, SegDataset] = {}
    for split in splits:
        if split == "train":
            tf = SegTrainTransform(crop_size=list(d.crop_size), scale=list(d.scale),
                                   ratio_range=list(d.ratio_range) if d.ratio_range is not None else None,
                                   cat_max_ratio=d.cat_max_ratio, flip_prob=d.flip_prob, photometric=d.photometric,
                                   mean=list(d.mean), std=list(d.std), ignore_index=d.ignore_index)
        elif split == "val":
            tf = test_transform(cfg)
        else:
            raise ValueError(f"unknown split {split!r}; expected 'train' or 'val'")
        if d.type == "shapes":
            ds: SegDataset = ShapesSegDataset(split, length=d.train_length if split == "train" else d.val_length,
                                              seed=d.shapes_seed, image_size=d.image_size, transform=tf,
                                              ignore_index=d.ignore_index)
        elif d.type == "ade20k":
            _need(d.root, "data.root")
            ds = ADE20KDataset(d.root, d.train_split if split == "train" else d.val_split, tf, d.ignore_index)
        elif d.type == "cityscapes":
            _need(d.root, "data.root")
            ds = CityscapesDataset(d.root, d.train_split if split == "train" else d.val_split, tf, d.ignore_index)
        elif d.type == "folder":
            img_dir = _under_root(d, d.img_dir if split == "train" else d.val_img_dir)
            ann_dir = _under_root(d, d.ann_dir if split == "train" else d.val_ann_dir)
            prefix = "" if split == "train" else "val_"
            _need(img_dir, f"data.{prefix}img_dir")
            _need(ann_dir, f"data.{prefix}ann_dir")
            ds = FolderSegDataset(img_dir, ann_dir, _class_list(_plain(d.classes)), d.img_suffix,
                                  d.seg_map_suffix, d.reduce_zero_label, d.ignore_index, tf)
        else:
            raise ValueError(f"unknown data.type {d.type!r}; expected ade20k, cityscapes, folder or shapes")
        out[split] = ds
    return out


def _need(value: Any, key: str) -> None:
    from vision_rwkv.engine import ConfigError

    if value in (None, ""):
        raise ConfigError(f"config key {key} must be set for this data.type")


def build_segmentor(cfg: Any, num_classes: int, load_pretrained: bool = True) -> Segmentor:
    """The Segmentor of `cfg.model` for `num_classes` classes (ignore index from `cfg.data`)."""
    from vision_rwkv.engine import ConfigError

    model_cfg = dict(_plain(cfg.model))
    weights = model_cfg.get("class_weight")
    if weights is not None and len(weights) != num_classes:
        raise ConfigError(f"model.class_weight has {len(weights)} entries, the data {num_classes} classes: one "
                          "weight per class (or null)")
    if not load_pretrained:
        model_cfg["pretrained"] = None
    model_cfg["ignore_index"] = cfg.data.ignore_index
    return create_segmentor(model_cfg, num_classes=num_classes)


def _percent(results: dict) -> dict:
    out = {k: 100.0 * v for k, v in results.items() if k in SUMMARY_METRICS}
    out["per_class"] = {n: {m: 100.0 * v for m, v in r.items()} for n, r in results["per_class"].items()}
    out["num_pixels"] = results["num_pixels"]
    return out


@torch.no_grad()
def evaluate_segmentor(
        model: nn.Module,
        dataset: SegDataset,
        *,
        mode: str = "whole",
        crop_size: Sequence[int] | None = None,
        stride: Sequence[int] | None = None,
        flip: bool = False,
        scales: Sequence[float] = (1.0,),
        precision: str = "fp32",
        device: torch.device | str | None = None,
        num_workers: int = 0,
        max_images: int | None = None,
        show_progress: bool = True,
        overlay_path: str | Path | None = None,
        num_visualize: int = 0,
        palette: np.ndarray | None = None,
        label_dir: str | Path | None = None,
        label_offset: int = 0,
        overlay_dir: str | Path | None = None,
) -> dict:
    """mIoU / mAcc / aAcc (percent) and per-class IoU / Acc of `model` on `dataset` (test-preprocessed samples:
    normalised image, original-size mask). Each rank evaluates its shard; the confusion matrix is summed over
    ranks. Rank 0 writes an overlay PNG of its first `num_visualize` images when `overlay_path` is given; with
    `label_dir` every rank writes a label PNG per image of its shard there (class id + `label_offset`, named after
    the image's relative path), with `overlay_dir` an overlay PNG per image (image | ground truth | prediction).
    An image or mask that cannot be read is skipped and counted (``skipped_samples``, ``skipped_files``: the errors);
    when none can be read the evaluation is a ConfigError."""
    from .predict_images import save_label_png
    from vision_rwkv.engine import (ConfigError, ShardSampler, all_gather_object, autocast, get_rank, get_world_size,
                                    progress)

    base = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    was_training = base.training
    base.eval()
    device = torch.device(device) if device is not None else next(base.parameters()).device
    if max_images is not None:
        dataset = Subset(dataset, range(min(max_images, len(dataset))))  # type: ignore[assignment]
    raw = dataset.dataset if isinstance(dataset, Subset) else dataset
    sampler = ShardSampler(len(dataset), get_world_size(), get_rank())
    # own generator: evaluation never consumes the global torch RNG (keeps training runs resumable exactly)
    loader = DataLoader(_SkipUnreadable(dataset), batch_size=1, sampler=sampler, num_workers=num_workers,
                        generator=torch.Generator().manual_seed(0), worker_init_fn=ignore_stop_signals)
    skipped: list[str] = []
    metric = SegMetric(raw.num_classes, raw.ignore_index, raw.classes)
    align = getattr(base, "align_corners", False)
    vis: list[tuple[int, np.ndarray]] = []
    for i, sample in progress(enumerate(loader), total=len(loader), desc="eval", enabled=show_progress):
        if "unreadable" in sample:
            skipped.append(sample["unreadable"][0])
            continue
        img = sample["image"].to(device)
        mask = sample["mask"]
        with autocast(precision, device):
            probs = inference(base, img, out_size=mask.shape[-2:], mode=mode, crop_size=crop_size, stride=stride,
                              flip=flip, scales=scales, align_corners=align, scaled=sample.get("scaled"))
        pred = probs.argmax(dim=1).cpu()
        metric.update(pred, mask)
        if label_dir is not None:
            save_label_png(pred[0].numpy(), Path(label_dir) / Path(sample["name"][0]).with_suffix(".png"),
                           raw.num_classes, label_offset, palette)
        if overlay_dir is not None:
            image, gt, name = raw.load(sampler.rank + i * sampler.num_replicas)  # (the original image)
            save_overlays(Path(overlay_dir) / Path(name).with_suffix(".png"), [image], [gt], [pred[0].numpy()],
                          raw.classes, raw.ignore_index, titles=[name], palette=palette)
        if overlay_path is not None and get_rank() == 0 and len(vis) < num_visualize:
            vis.append((sampler.rank + i * sampler.num_replicas, pred[0].numpy()))
    skipped = [e for part in all_gather_object(skipped) for e in part]
    if skipped and len(skipped) == len(dataset):
        raise ConfigError(f"no evaluation image could be read: all {len(skipped)} are unreadable ({skipped[0]})")
    results = _percent(metric.compute())
    results["skipped_samples"] = len(skipped)
    if skipped:
        results["skipped_files"] = skipped
        if get_rank() == 0:
            warnings.warn(f"evaluation skipped {len(skipped)} unreadable image(s): {'; '.join(skipped[:3])}"
                          + (" ..." if len(skipped) > 3 else ""), stacklevel=2)
    if vis:
        images, gts, preds, names = [], [], [], []
        for idx, pred in vis:
            image, mask, name = raw.load(idx)  # original image, label map as evaluated
            images.append(image)
            gts.append(mask)
            preds.append(pred)
            names.append(name)
        results["overlay"] = str(save_overlays(overlay_path, images, gts, preds, raw.classes, raw.ignore_index,
                                               titles=names, palette=palette))
    base.train(was_training)
    return results


class _SkipUnreadable(torch.utils.data.Dataset):
    """``dataset[i]``, or for a sample whose image or mask cannot be read ``{"unreadable": message}`` (evaluation)
    or, with ``as_none``, None and a warning once per sample (training: the loader drops and counts it, as the
    classification trainer's datasets do)."""

    def __init__(self, dataset: Any, as_none: bool = False):
        self.dataset, self.as_none = dataset, as_none
        self._warned: set[int] = set()

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str) -> Any:  # (num_classes, classes, ... of the wrapped dataset)
        if name == "dataset" or name.startswith("_"):  # (not __getitems__: the DataLoader would bypass the skip)
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, index: int) -> Optional[dict[str, Any]]:
        from .datasets import UnreadableImageError
        try:
            return self.dataset[index]
        except UnreadableImageError as err:
            if not self.as_none:
                return {"unreadable": str(err)}
            if index not in self._warned:
                self._warned.add(index)
                warnings.warn(f"skipping an unreadable training sample: {err}", stacklevel=2)
            return None


def _test_kwargs(cfg: Any) -> dict:
    t = cfg.test
    return dict(mode=t.mode, crop_size=list(t.crop_size), stride=list(t.stride), flip=bool(t.flip),
                scales=list(t.scales))


def place_for_test(model: nn.Module, cfg: Any, device: Any) -> nn.Module:
    """``model`` on ``device`` for testing, channels-last when ``test.channels_last`` (null: ``train.channels_last``)
    says so."""
    model = model.to(device)
    if cfg.train.channels_last if cfg.test.channels_last is None else cfg.test.channels_last:
        to_channels_last(model)
    return model


def _table(results: dict) -> str:
    """The per-class table of percent-valued `results` (format_table takes fractions)."""
    frac = {k: results[k] / 100.0 for k in ("mIoU", "mAcc", "aAcc")}
    frac["per_class"] = {n: {m: v / 100.0 for m, v in r.items()} for n, r in results["per_class"].items()}
    return format_table(frac)


def _write_results(results: dict, out_dir: Path, stem: str) -> dict[str, str]:
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / f"{stem}.json"
    table_path = out_dir / f"{stem}_per_class.txt"
    write_text_atomic(json_path, json_text(results))
    write_text_atomic(table_path, _table(results) + "\n")
    return {"json": str(json_path), "table": str(table_path)}


@process_state_restored()
def train_segmentor(cfg: Any) -> dict:
    """Train the segmentor described by `cfg` (a config from `load_seg_config`); returns the trainer's final
    metrics (step, train_loss, last validation mIoU / mAcc / aAcc in percent, best, files)."""
    from vision_rwkv.engine import (Trainer, build_train_loader, check_run_dir_is_free, cleanup_distributed,
                                    compile_for_training, convert_sync_batchnorm, init_distributed, is_main_process,
                                    print_rank0, save_config, seed_everything, wrap_ddp)

    t, o = cfg.train, cfg.optim
    info = init_distributed(t.device)
    if t.num_threads:
        torch.set_num_threads(int(t.num_threads))
    try:
        seed_everything(t.seed, info.rank, deterministic=t.deterministic)
        run_dir = Path(t.run_dir)
        check_run_dir_is_free(run_dir, t.resume)  # fail fast, before the data and the model are built
        datasets = build_datasets(cfg, ("train", "val") if has_validation(cfg) else ("train",))
        train_set, val_set = datasets["train"], datasets.get("val")
        if val_set is None:
            print_rank0("[seg] no validation folders (data.val_img_dir / data.val_ann_dir): training without "
                        "evaluation; best.pt is not kept")
        model = build_segmentor(cfg, train_set.num_classes)
        config_palette(cfg, train_set.num_classes)  # (checked now, not after training, when the tools use it)
        if t.sync_bn and info.distributed:
            if info.device.type == "cpu":  # torch's SyncBatchNorm has no CPU implementation
                print_rank0("[seg] train.sync_bn: SyncBatchNorm needs GPUs; CPU processes keep per-process BatchNorm")
            else:
                model = convert_sync_batchnorm(model, info)
        model = model.to(info.device)
        if t.channels_last:  # (before the wrappers)
            to_channels_last(model)
        optimizer = build_optimizer(model, lr=o.lr, weight_decay=o.weight_decay, layer_decay=o.layer_decay,
                                    betas=list(o.betas), decay_exempt=o.decay_exempt)
        scheduler = PolyWarmupLR(optimizer, o.max_iters, o.warmup_iters, o.warmup_ratio, o.power, o.min_lr)
        ddp_model = wrap_ddp(model, info, find_unused_parameters=t.find_unused_parameters)
        ddp_model = compile_for_training(ddp_model, t.compile, t.compile_backend, t.compile_mode)
        loader = build_train_loader("data.batch_size", _SkipUnreadable(train_set, as_none=True), cfg.data.batch_size,
                                    shuffle=True, drop_last=True, seed=t.seed, num_workers=cfg.data.num_workers,
                                    info=info)
        last_full: dict[str, Any] = {}
        trainer_ref: Callable[[], Trainer | None] = lambda: None  # (the trainer, built below: see evaluate)

        def evaluate(m: nn.Module) -> dict[str, float]:
            res = evaluate_segmentor(m, val_set, precision=t.precision, device=info.device,
                                     num_workers=cfg.data.num_workers, max_images=cfg.data.max_val_images,
                                     show_progress=t.show_progress and info.is_main, **_test_kwargs(cfg))
            last_full.clear()
            last_full.update(res)  # the full result (per-class IoU) for the files written after fit
            # (checkpointed, plain numbers: a resumed finished run writes it; the trainer holds this function, so it
            # holds the trainer weakly: no reference cycle keeps the model after training)
            trainer_ref().extra_state["val_result"] = res
            return {k: res[k] for k in ("mIoU", "mAcc", "aAcc")}

        trainer = Trainer(ddp_model, optimizer, loader, _seg_loss, run_dir=run_dir, info=info,
                          max_steps=o.max_iters, scheduler=scheduler, precision=t.precision, clip_grad=o.clip_grad,
                          eval_fn=evaluate if val_set is not None else None, eval_every_epochs=0,
                          eval_every_steps=t.eval_every, best_metric="mIoU" if val_set is not None else None,
                          best_mode="max",
                          ckpt_every_steps=t.ckpt_every, ckpt_every_epochs=0, keep_last=t.keep_last,
                          log_every=t.log_every, tensorboard=t.tensorboard, stop_after_steps=t.stop_after_steps,
                          show_progress=t.show_progress,
                          extra_state={"classes": list(train_set.classes)},  # (predict_seg names its labels so)
                          must_match=("classes",), result_files=("train_result.json",))
        trainer_ref = weakref.ref(trainer)
        # config.yaml once the config, data and model are checked and a resume has succeeded
        result = trainer.fit(resume=t.resume, on_start=partial(save_config, cfg, run_dir / "config.yaml")
                             if info.is_main else None)
        if not last_full and trainer.extra_state.get("val_result"):  # no evaluation here: the checkpoint's last
            last_full.update(trainer.extra_state["val_result"])
        if last_full and info.is_main:
            result["files"] = _write_results(last_full, run_dir, "val_metrics")
            print_rank0(_table(last_full))
        if last_full:
            result["per_class"] = last_full["per_class"]
        result["run_dir"] = str(run_dir)
        result["num_classes"] = train_set.num_classes
        if is_main_process() and not result.get("stopped"):  # (a stopped run is not finished: no result file)
            write_text_atomic(run_dir / "train_result.json", json_text(result))
        return result
    finally:
        cleanup_distributed()


def _seg_loss(model: nn.Module, batch: Mapping[str, Any]):
    out = model(batch["image"], batch["mask"])
    extra = {k: float(v.detach()) for k, v in out.items() if k != "loss"}
    return out["loss"], extra


def resolve_checkpoint(cfg: Any) -> Path:
    """`test.checkpoint` if set, else `<run_dir>/checkpoints/best.pt`, else the newest `ckpt_*.pt` there (the
    checkpoint of tools/test_seg.py and tools/predict_seg.py); FileNotFoundError when there is none."""
    from vision_rwkv.engine.checkpoint import run_checkpoint

    if cfg.test.checkpoint:
        path = Path(cfg.test.checkpoint)
        if not path.is_file():
            raise FileNotFoundError(f"test checkpoint not found: {path}")
        return path
    ckpt_dir = Path(cfg.train.run_dir) / "checkpoints"
    latest = run_checkpoint(cfg.train.run_dir)
    if latest is None:
        raise FileNotFoundError(f"no checkpoint to load: give --checkpoint PATH (test.checkpoint=PATH) or train the "
                                f"config first (no best.pt or ckpt_*.pt in {ckpt_dir}, its train.run_dir)")
    return latest


@process_state_restored()
def test_segmentor(cfg: Any) -> dict:
    """Evaluate a trained segmentor on the validation split with `cfg.test` settings; writes `metrics.json`,
    `metrics_per_class.txt` and `overlays.png` to `test.out_dir` (default `<run_dir>/test`) and returns the
    metrics (percent) with the checkpoint used and the written files."""
    from vision_rwkv.engine import cleanup_distributed, init_distributed, is_main_process, print_rank0
    from vision_rwkv.engine.files import check_output_dir

    info = init_distributed(cfg.train.device)
    if cfg.train.num_threads:
        torch.set_num_threads(int(cfg.train.num_threads))
    try:
        out_dir = Path(cfg.test.out_dir) if cfg.test.out_dir else Path(cfg.train.run_dir) / "test"
        check_output_dir(out_dir, "test.out_dir")  # (before the model runs over the data)
        val_set = build_datasets(cfg, splits=("val",))["val"]
        model = build_segmentor(cfg, val_set.num_classes, load_pretrained=False)
        ckpt = resolve_checkpoint(cfg)
        load_segmentor_weights(model, ckpt)
        model = place_for_test(model, cfg, info.device)
        results = evaluate_segmentor(model, val_set, precision=cfg.train.precision, device=info.device,
                                     num_workers=cfg.data.num_workers, max_images=cfg.data.max_val_images,
                                     show_progress=cfg.train.show_progress and info.is_main,
                                     overlay_path=out_dir / "overlays.png", num_visualize=cfg.test.num_visualize,
                                     palette=config_palette(cfg, val_set.num_classes),
                                     label_dir=out_dir / "labels" if cfg.test.save_labels else None,
                                     overlay_dir=out_dir / "overlays" if cfg.test.save_overlays else None,
                                     label_offset=cfg.test.label_offset, **_test_kwargs(cfg))
        results["checkpoint"] = str(ckpt)
        if is_main_process():
            results["files"] = _write_results(results, out_dir, "metrics")
            if "overlay" in results:
                results["files"]["overlay"] = results.pop("overlay")
            print_rank0(_table(results))
        return results
    finally:
        cleanup_distributed()


test_segmentor.__test__ = False  # a library function, not a pytest test (its name starts with "test")
