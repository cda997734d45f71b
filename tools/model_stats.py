#!/usr/bin/env python
"""Parameters and MACs (the papers' "FLOPs") of the backbones and DeiT at several resolutions, counted on CPU in
seconds (``vision_rwkv.complexity``: shapes only, nothing is computed).

    python tools/model_stats.py                                     # VRWKV / VRWKV6 T, S, B and DeiT, 224-2048 px
    python tools/model_stats.py --models VRWKV-L vrwkv_large_patch16_384 --res 384 --out stats.json --plot stats.png

Models are the benchmark labels (VRWKV-T ... VRWKV6-B, DeiT-T/S/B, VRWKV-L) or timm names. The table gives each
model's tokens, parameters, GMACs and, for a VRWKV, its GMACs as a fraction of the DeiT of the same size at the same
resolution; ``--out`` writes the rows as JSON and ``--plot`` a PNG of GMACs against resolution (log-log: the RWKV
backbones' lines have slope 2, DeiT's bend up to 4 with attention's N^2).

With the anchors (``--anchors``, default ``benchmarks/anchors/backbones.json``: H100, bf16 autocast) each DeiT row
also gets the arithmetic rate its measured images/s mean (TFLOP/s, a MAC counted as 2 FLOPs), and each VRWKV row the
rate it must sustain over its whole forward to reach 2x that DeiT's images/s (issue 3's 1024-px target), and that
rate as a multiple of DeiT's: above 1, the target asks for more arithmetic per second than DeiT's GEMMs and flash
attention reach.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vision_rwkv.benchmark import format_table  # noqa: E402
from vision_rwkv.complexity import count_complexity  # noqa: E402
from vision_rwkv.profiling import BACKBONES, deit_of  # noqa: E402
from vision_rwkv.resources import anchors_dir  # noqa: E402

LABELS = {**BACKBONES, "VRWKV-L": "vrwkv_large_patch16_384"}
DEFAULT_MODELS = ["VRWKV-T", "VRWKV-S", "VRWKV-B", "VRWKV6-T", "VRWKV6-S", "VRWKV6-B", "DeiT-T", "DeiT-S", "DeiT-B"]
COLUMNS = [("model", "label", ""), ("px", "res", ""), ("tokens", "tokens", ""), ("params (M)", "params_M", ".2f"),
           ("GMACs", "GMACs", ".2f"), ("of which WKV", "wkv_GMACs", ".3f"), ("x DeiT", "of_deit", ".2f")]
ANCHOR_COLUMNS = [("DeiT img/s (anchor)", "deit_img_per_s", ".0f"), ("TFLOP/s (DeiT's measured)", "tflops", ".0f"),
                  ("TFLOP/s for 2x DeiT", "tflops_for_2x", ".0f"), ("x DeiT's rate", "rate_vs_deit", ".2f")]
ANCHORS = anchors_dir() / "backbones.json"


def add_anchor_rates(rows: list[dict], anchors: dict) -> None:
    """The arithmetic rates of the module docstring, from the anchors' best bf16 DeiT images/s per resolution."""
    best: dict = {}
    for a in anchors.get("inference", []):
        if a.get("dtype") == "bf16" and a.get("img_per_s") and a["model"].startswith("DeiT"):
            key = (a["model"], a["res"])
            best[key] = max(best.get(key, 0.0), float(a["img_per_s"]))
    for r in rows:
        deit = best.get((deit_of(r["label"]) if r["label"].startswith("VRWKV") else r["label"], r["res"]))
        if deit is None:
            continue
        r["deit_img_per_s"] = deit
        if r["label"].startswith("DeiT"):
            r["tflops"] = deit * 2 * r["total_macs"] / 1e12
    rates = {(r["label"], r["res"]): r["tflops"] for r in rows if "tflops" in r}
    for r in rows:
        if r["label"].startswith("VRWKV") and "deit_img_per_s" in r:
            r["tflops_for_2x"] = 2 * r["deit_img_per_s"] * 2 * r["total_macs"] / 1e12
            deit_rate = rates.get((deit_of(r["label"]), r["res"]))
            if deit_rate:
                r["rate_vs_deit"] = r["tflops_for_2x"] / deit_rate


def stats_rows(models: list[str], resolutions: list[int]) -> list[dict]:
    """One row per (model, resolution): :meth:`ModelComplexity.as_dict` plus ``label``, ``res``, ``wkv_GMACs`` and
    ``of_deit`` (GMACs over those of the DeiT of the same size, when that DeiT is among ``models``)."""
    rows = []
    for label in models:
        name = LABELS.get(label, label)
        for res in resolutions:
            try:
                row = count_complexity(name, res).as_dict()
            except (TypeError, RuntimeError) as err:
                raise type(err)(f"{label} at {res} px: {err}") from err
            rows.append({"label": label, "res": res, "wkv_GMACs": row["wkv_macs"] / 1e9, **row})
    by_key = {(r["label"], r["res"]): r for r in rows}
    for r in rows:
        deit = by_key.get((deit_of(r["label"]), r["res"])) if r["label"].startswith("VRWKV") else None
        if deit is not None:
            r["of_deit"] = r["GMACs"] / deit["GMACs"]
    return rows


def plot_stats(rows: list[dict], path: str | Path) -> Path:
    """GMACs against resolution, one line per model, log-log."""
    from vision_rwkv.engine.logger import save_figure, subplots

    fig, ax = subplots(figsize=(6.4, 4.6))
    colors = {"T": "tab:blue", "S": "tab:orange", "B": "tab:green", "L": "tab:red"}  # one colour a size
    styles = {"VRWKV6": "-.", "VRWKV": "-", "DeiT": "--"}  # one line style a family
    for i, label in enumerate(dict.fromkeys(r["label"] for r in rows)):
        pts = sorted((r["res"], r["GMACs"]) for r in rows if r["label"] == label)
        family, _, size = label.partition("-")
        ax.plot(*zip(*pts), marker="o", linestyle=styles.get(family, ":"),
                color=colors.get(size, f"C{4 + i % 6}"), label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    sides = sorted({r["res"] for r in rows})
    ax.set_xticks(sides, [str(v) for v in sides])
    ax.minorticks_off()
    ax.set_xlabel("input side (px)")
    ax.set_ylabel("GMACs per image (forward_features)")
    ax.set_title("Backbone MACs against resolution")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS,
                        help=f"labels ({', '.join(LABELS)}) or timm model names")
    parser.add_argument("--res", nargs="+", type=int, default=[224, 512, 1024, 2048], help="input sides in pixels")
    parser.add_argument("--out", help="JSON file for the rows")
    parser.add_argument("--plot", help="PNG of GMACs against resolution")
    parser.add_argument("--anchors", default=str(ANCHORS),
                        help="backbones.json of measured DeiT images/s ('' for none; default: %(default)s)")
    args = parser.parse_args(argv)
    bad = [r for r in args.res if r < 1]
    if bad:
        parser.error(f"--res: resolutions must be positive, got {bad}")
    try:
        rows = stats_rows(args.models, args.res)
    except (ValueError, TypeError, RuntimeError) as err:  # (an unknown name, a size the model cannot take)
        print(f"error: {err}".splitlines()[0], file=sys.stderr)
        return 2
    columns = COLUMNS
    if args.anchors:
        try:
            anchors = json.loads(Path(args.anchors).read_text())
        except (OSError, ValueError) as err:
            print(f"error: --anchors {args.anchors}: {err}", file=sys.stderr)
            return 2
        add_anchor_rates(rows, anchors)
        columns = COLUMNS + ANCHOR_COLUMNS
    print(format_table(rows, columns))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(rows, indent=1) + "\n")
    if args.plot:
        print(f"wrote {plot_stats(rows, args.plot)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
