"""Segmentation metrics from a confusion matrix: mIoU, mAcc, aAcc and per-class IoU / accuracy (mmseg definitions).

IoU_c = |pred=c & gt=c| / (|pred=c| + |gt=c| - |pred=c & gt=c|) over pixels whose label is not the ignore index;
Acc_c = |pred=c & gt=c| / |gt=c|; aAcc = correct / labelled pixels. Classes with an empty denominator are NaN and
left out of the means (as mmseg's nanmean). The matrix is summed across processes before computing.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import torch
import torch.distributed as dist

from ..engine.files import write_text_atomic
from ..engine.logger import json_text

__all__ = ["SegMetric", "confusion_matrix", "metrics_from_confusion", "format_table", "SUMMARY_METRICS"]


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                     ignore_index: int = 255) -> torch.Tensor:
    """(num_classes, num_classes) int64 counts, rows = ground truth, columns = prediction; ignored pixels skipped."""
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and label {tuple(target.shape)} shapes differ")
    pred = pred.reshape(-1).long()
    target = target.reshape(-1).long()
    keep = target != ignore_index
    pred, target = pred[keep], target[keep]
    bad = (target < 0) | (target >= num_classes)
    if bad.any():
        raise ValueError(f"label values {sorted(set(target[bad].tolist()))[:10]} are outside [0, {num_classes}) "
                         f"and are not the ignore index {ignore_index}")
    if ((pred < 0) | (pred >= num_classes)).any():
        raise ValueError(f"predictions outside [0, {num_classes})")
    return torch.bincount(target * num_classes + pred, minlength=num_classes ** 2).reshape(num_classes, num_classes)


# the summary metrics of metrics_from_confusion (mmseg's IoUMetric with mIoU, mDice and mFscore)
SUMMARY_METRICS = ("mIoU", "mAcc", "aAcc", "mDice", "mFscore", "mPrecision", "mRecall")


def metrics_from_confusion(conf: torch.Tensor, class_names: Sequence[str] | None = None) -> dict:
    """mIoU, mAcc, aAcc and mmseg's other IoUMetric summaries - mDice, mFscore (F1), mPrecision, mRecall - as
    fractions in [0, 1], and per class IoU / Acc / Dice / Fscore / Precision / Recall (Recall is Acc). A class without
    the pixels a ratio divides by gets NaN there (mmseg's convention) and is left out of that mean."""
    conf = conf.double()
    inter = conf.diag()
    area_gt = conf.sum(1)
    area_pred = conf.sum(0)
    union = area_gt + area_pred - inter
    total = area_gt.sum()
    names = list(class_names) if class_names is not None else [str(i) for i in range(conf.shape[0])]
    if len(names) != conf.shape[0]:
        raise ValueError(f"{len(names)} class names for {conf.shape[0]} classes")

    def ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
        return torch.where(den > 0, num / den.clamp(min=1e-12), torch.tensor(float("nan"), dtype=torch.float64))

    per = {"IoU": ratio(inter, union), "Acc": ratio(inter, area_gt), "Dice": ratio(2 * inter, area_gt + area_pred),
           "Precision": ratio(inter, area_pred)}
    # F1 as mmseg computes it from precision and recall: NaN (not 0) for a class predicted and present but never hit
    per["Fscore"] = ratio(2 * per["Precision"] * per["Acc"], per["Precision"] + per["Acc"])
    per["Recall"] = per["Acc"]  # (mmseg's per-class table has both columns)
    means = {"mIoU": "IoU", "mAcc": "Acc", "mDice": "Dice", "mFscore": "Fscore", "mPrecision": "Precision",
             "mRecall": "Recall"}
    out: dict = {m: float(per[k].nanmean()) if (~per[k].isnan()).any() else float("nan") for m, k in means.items()}
    out["aAcc"] = float(inter.sum() / total) if total > 0 else float("nan")
    out["per_class"] = {n: {k: float(v[i]) for k, v in per.items()} for i, n in enumerate(names)}
    out["num_pixels"] = int(total)
    return out


def format_table(results: dict) -> str:
    """Per-class IoU / Acc table (percent) followed by the summary line."""
    rows = results["per_class"]
    width = max([5] + [len(n) for n in rows])
    lines = [f"{'class':<{width}}  {'IoU':>6}  {'Acc':>6}", "-" * (width + 16)]
    for name, r in rows.items():
        lines.append(f"{name:<{width}}  {_pct(r['IoU'])}  {_pct(r['Acc'])}")
    lines.append("-" * (width + 16))
    lines.append(f"aAcc {_pct(results['aAcc']).strip()}  mIoU {_pct(results['mIoU']).strip()}  "
                 f"mAcc {_pct(results['mAcc']).strip()}")
    return "\n".join(lines)


def _pct(v: float) -> str:
    return f"{'nan':>6}" if math.isnan(v) else f"{100 * v:6.2f}"


class SegMetric:
    """Accumulates a confusion matrix over batches; `compute()` all-reduces it (when distributed) and returns
    the metrics dict; `save_json(path)` writes it."""

    def __init__(self, num_classes: int, ignore_index: int = 255, class_names: Sequence[str] | None = None):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.class_names = list(class_names) if class_names is not None else None
        self.conf = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def reset(self) -> None:
        self.conf.zero_()

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """pred / target: label maps of equal shape (any batch layout)."""
        self.conf += confusion_matrix(pred.cpu(), target.cpu(), self.num_classes, self.ignore_index)

    def reduced_confusion(self) -> torch.Tensor:
        conf = self.conf.clone()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            device = torch.device("cuda", torch.cuda.current_device()) \
                if dist.get_backend() == "nccl" else torch.device("cpu")
            conf = conf.to(device)
            dist.all_reduce(conf)
            conf = conf.cpu()
        return conf

    def compute(self) -> dict:
        return metrics_from_confusion(self.reduced_confusion(), self.class_names)

    @staticmethod
    def save_json(results: dict, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json_text(results))
