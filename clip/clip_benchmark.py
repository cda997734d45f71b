"""LAION's ``clip_benchmark`` CLI with the RWKV-CLIP models:

    python -m rwkv_clip.clip_benchmark eval --model_type open_clip --model RWKV-CLIP-B-32 --pretrained ckpt.pt \
        --dataset wds/my_set --dataset_root DIR --task zeroshot_classification --output result.json

clip_benchmark builds models with ``open_clip.create_model_and_transforms`` and only imports ``open_clip``; the
RWKV-CLIP names (and ``local-dir:`` / ``hf-hub:`` folders of them) reach rwkv_clip once ``rwkv_clip`` is imported,
which this entry point does before handing the command line to ``clip_benchmark.cli.main``. clip_benchmark is not
a dependency: ``pip install clip_benchmark`` first.

clip_benchmark 1.6's ``accuracy()`` calls ``float()`` on a one-element 1-D array, a TypeError for every model
with recent numpy (2.4 here; deprecated since 1.25); when that is so, it is replaced by the same top-k accuracy
computed with ``.item()``.
"""
from __future__ import annotations

import sys
from typing import List, Optional, Sequence

import torch

__all__ = ["main", "topk_accuracy"]


def topk_accuracy(logits: torch.Tensor, target: torch.Tensor, topk: Sequence[int] = (1,)) -> List[float]:
    """Share of rows whose target is among the k highest logits, for each k (clip_benchmark's ``accuracy``)."""
    ranked = logits.topk(max(topk), dim=1).indices
    hit = ranked == target.view(-1, 1)
    return [hit[:, :k].any(dim=1).float().mean().item() for k in topk]


def _mend_accuracy() -> None:
    from clip_benchmark.metrics import zeroshot_classification as zc

    try:
        zc.accuracy(torch.tensor([[0.0, 1.0]]), torch.tensor([1]), topk=(1,))
    except TypeError:
        zc.accuracy = topk_accuracy


def main(argv: Optional[List[str]] = None) -> int:
    """Run clip_benchmark's command line (``argv``, default ``sys.argv[1:]``) with rwkv_clip's models known to
    open_clip. Returns its exit status."""
    # (importing this module imported the rwkv_clip package: the open_clip routes and model configs are in place)
    try:
        from clip_benchmark import cli
    except ImportError:
        print("error: clip_benchmark is not installed (pip install clip_benchmark)", file=sys.stderr)
        return 2
    _mend_accuracy()
    saved = sys.argv
    sys.argv = [f"{__package__ or 'rwkv_clip'}.clip_benchmark"] + list(sys.argv[1:] if argv is None else argv)
    try:
        status = cli.main()
    finally:
        sys.argv = saved
    return int(status or 0)


if __name__ == "__main__":
    sys.exit(main())
