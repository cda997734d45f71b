"""The mixed-operand GEMMs' tile sweep of a device run (``device_run11.sh``): one table of all configs, the fastest.

    python benchmarks/mix_tiles.py summary OUT_DIR [--shell]

reads ``OUT_DIR/mix_<name>.json`` (``tools/benchmark.py --mix-gemm`` run once per tile config; ``mix_default.json``
is the defaults' run), writes ``OUT_DIR/mix_tiles.md`` (fused ms per shape and config, the unfused path's ms, the
pick) and prints it; ``--shell`` prints instead one line ``MIX_ARGS='--kernel-config mix.KEY=VAL ...'``: every mix
setting of the picked run (mix and norm, from its metadata), for the backbone rows of ``VRWKV_FUSED_MIX=1``.

The pick is the config with the best geometric mean of (default fused ms / config fused ms) over the grouped
projections of the token mixes (``mix_v4x3``, ``mix_v6x5``) at the T and S widths (K 192 and 384): the ops that carry
the roofline's way to 2x DeiT at 1024 px. A config with an error row at any of those shapes is ruled out; the
defaults stay unless a config leads by ``MIN_GAIN``.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
from device_summary import MIN_GAIN, geomean  # noqa: E402

PICK_ROWS = {"mix_v4x3", "mix_v6x5"}
PICK_WIDTHS = {192, 384}
OPS = ("mix", "norm")  # the kernel-config families a tile config sets


def load_runs(out_dir: Path) -> dict[str, dict]:
    """name -> the JSON of ``mix_<name>.json`` (unreadable files skipped: a run cut by its timeout mid-write)."""
    runs = {}
    for path in sorted(out_dir.glob("mix_*.json")):
        try:
            runs[path.stem[len("mix_"):]] = json.loads(path.read_text())
        except (json.JSONDecodeError, OSError):
            continue
    return runs


def _fused(run: dict) -> dict[tuple, Optional[float]]:
    """(epilogue, K) -> fused (grouped) ms of one run; None for an error row."""
    return {(r["epilogue"], r["K"]): (None if "error" in r else r.get("ms"))
            for r in run.get("gemm", []) if r.get("impl") == "fused"}


def pick(runs: dict[str, dict]) -> dict:
    """``{"config": name, "gain": geomean speed-up over the defaults or None, "gains": {name: gain}}``."""
    base = _fused(runs.get("default", {}))
    keys = [k for k, v in base.items() if k[0] in PICK_ROWS and k[1] in PICK_WIDTHS and v]
    gains = {}
    for name, run in runs.items():
        mine = _fused(run)
        if not keys or any(k in mine and mine[k] is None for k in keys):
            continue
        gain = geomean(base[k] / mine[k] for k in keys if mine.get(k))
        if gain is not None:
            gains[name] = gain
    best = max(gains, key=gains.get, default=None)
    if best is None or gains[best] < MIN_GAIN:
        return {"config": "default", "gain": gains.get("default"), "gains": gains}
    return {"config": best, "gain": gains[best], "gains": gains}


def kernel_args(run: dict) -> list[str]:
    """``--kernel-config OP.KEY=VAL`` items for every setting of the mixed-operand GEMMs (``mix``) and of the
    GroupNorm-operand GEMM (``norm``, the table's ``mix_v6gn`` rows) that the run's metadata records."""
    configs = run.get("meta", {}).get("kernel_configs", {})
    return [a for op in OPS for k, v in sorted(configs.get(op, {}).items())
            for a in ("--kernel-config", f"{op}.{k}={v}")]


def render(runs: dict[str, dict], choice: dict) -> str:
    names = ["default"] + sorted(n for n in runs if n != "default")
    names = [n for n in names if n in runs]
    fused = {n: _fused(runs[n]) for n in names}
    unfused = {(r["epilogue"], r["K"]): r.get("ms") for run in runs.values() for r in run.get("gemm", [])
               if r.get("impl") == "unfused" and "error" not in r}
    shapes = sorted({k for f in fused.values() for k in f}, key=lambda k: (k[0], k[1]))
    fmt = lambda v: "err" if v is None else f"{v:.3f}"  # noqa: E731
    lines = ["# Mixed-operand GEMM tiles (benchmarks/mix_tiles.py; ms of tools/benchmark.py --mix-gemm)", "",
             "| op | K | unfused | " + " | ".join(names) + " |", "|---|---|---|" + "---|" * len(names)]
    for k in shapes:
        cells = [fmt(fused[n][k]) if k in fused[n] else "" for n in names]
        lines.append(f"| {k[0]} | {k[1]} | {fmt(unfused.get(k))} | " + " | ".join(cells) + " |")
    lines += ["", "Settings: " + "; ".join(
        f"{n}: {' '.join(a for a in kernel_args(runs[n]) if a != '--kernel-config') or '?'}" for n in names), ""]
    gains = ", ".join(f"{n} x{g:.2f}" for n, g in sorted(choice["gains"].items(), key=lambda kv: -kv[1]))
    lines.append(f"Pick: **{choice['config']}** (geometric-mean speed-up over the defaults on "
                 f"{'/'.join(sorted(PICK_ROWS))} at K {'/'.join(map(str, sorted(PICK_WIDTHS)))}: {gains or 'none'})")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("summary", help="OUT_DIR/mix_*.json -> OUT_DIR/mix_tiles.md (and the pick)")
    s.add_argument("out_dir", type=Path)
    s.add_argument("--shell", action="store_true", help="print MIX_ARGS=... (the picked run's mix settings)")
    args = ap.parse_args(argv)
    runs = load_runs(args.out_dir)
    if not runs:
        ap.error(f"no mix_*.json runs in {args.out_dir}")
    choice = pick(runs)
    text = render(runs, choice)
    (args.out_dir / "mix_tiles.md").write_text(text)
    if args.shell:
        print(f"MIX_ARGS={shlex.quote(' '.join(kernel_args(runs[choice['config']])))}")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
