#!/usr/bin/env python
"""End-to-end CPU demo on the embedded Shapes data (no downloads): ``python tools/demo.py``.

Stages (each a few minutes on 2 CPU cores; pick some with ``--stages``):
  classify  train a tiny VRWKV classifier (configs/classification/demo_shapes.yaml), report val top-1
  clip      train a tiny RWKV-CLIP on the Shapes captions (configs/clip/demo_shapes.yaml), report held-out
            zero-shot accuracy and image-text retrieval R@1/5/10 next to chance
  seg       train a tiny VRWKV + UperNet segmentor (configs/segmentation/demo_shapes.yaml), report held-out
            mIoU next to the all-background baseline
Everything (checkpoints, CSV logs, PNG curves, retrieval grid, segmentation overlays) goes under ``--out``;
the summary is printed and written to ``<out>/summary.json``. Each stage starts afresh: the folder an earlier demo
left in ``<out>/<stage>`` is replaced (training refuses to start a new run in a folder holding another run).
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("classify", "clip", "seg")


def run_classify(out: Path) -> dict:
    """Train + evaluate the tiny VRWKV classifier; returns val top-1/top-5 and chance."""
    from vision_rwkv.data.shapes import CLASS_NAMES
    from vision_rwkv.engine import load_config
    from vision_rwkv.engine.classification import train_classifier

    cfg = load_config(ROOT / "configs/classification/demo_shapes.yaml", [f"run_dir={out / 'classify'}"])
    res = train_classifier(cfg)
    chance = 100.0 / len(CLASS_NAMES)
    summary = (f"classification: val top-1 {res['top1']:.1f}% (chance {chance:.1f}%), top-5 {res['top5']:.1f}%, "
               f"{res['train_time_s']:.0f} s training")
    return {"top1": res["top1"], "top5": res["top5"], "chance_top1": chance,
            "train_time_s": res["train_time_s"], "summary": summary}


def run_clip(out: Path) -> dict:
    """Train + evaluate the tiny RWKV-CLIP; returns zero-shot and retrieval metrics with chance levels."""
    from rwkv_clip.demo import run_demo

    res = run_demo(overrides=[f"run_dir={out / 'clip'}"])
    return {"metrics": res["metrics"], "chance": res["chance"], "train_time_s": res["train_time_s"],
            "summary": res["summary"]}


def run_seg(out: Path) -> dict:
    """Train + test the tiny segmentor; returns mIoU/mAcc/aAcc and the all-background baseline."""
    from vision_rwkv.seg import run_demo

    res = run_demo(out / "seg")
    summary = (f"segmentation: held-out mIoU {res['mIoU']:.1f}% (all-background baseline "
               f"{res['baseline_mIoU']:.1f}%), mAcc {res['mAcc']:.1f}%, aAcc {res['aAcc']:.1f}%")
    return {**{k: v for k, v in res.items() if isinstance(v, (int, float, str))}, "summary": summary}


RUNNERS = {"classify": run_classify, "clip": run_clip, "seg": run_seg}


def clear_stage_dir(path: Path) -> None:
    """Remove an earlier demo's stage folder; refuse a folder that does not look like one (no ``config.yaml`` or
    ``checkpoints/``), so that a mistaken ``--out`` never deletes other files."""
    if not path.exists():
        return
    if not path.is_dir() or not ((path / "config.yaml").is_file() or (path / "checkpoints").is_dir()):
        raise SystemExit(f"error: {path} exists and is not an earlier demo's stage folder; choose another --out")
    shutil.rmtree(path)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description="vision-rwkv end-to-end CPU demo on embedded Shapes data")
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    parser.add_argument("--out", default="runs/demo", help="output folder")
    args = parser.parse_args(argv)
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = [s for s in stages if s not in RUNNERS]
    if unknown:
        parser.error(f"unknown stage(s) {unknown}; choose from {list(STAGES)}")
    import torch

    torch.manual_seed(0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {}
    for stage in stages:
        t0 = time.perf_counter()
        print(f"\n=== demo stage: {stage} ===", flush=True)
        clear_stage_dir(out / stage)
        results[stage] = RUNNERS[stage](out)
        results[stage]["wall_time_s"] = time.perf_counter() - t0
    print("\n=== vision-rwkv demo summary ===")
    for stage in stages:
        print(results[stage]["summary"])
        print(f"  ({results[stage]['wall_time_s']:.0f} s wall)")
    from vision_rwkv.engine import json_text
    (out / "summary.json").write_text(json_text(results))
    print(f"\noutputs under {out}/ (summary.json, curves, checkpoints, plots)")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
