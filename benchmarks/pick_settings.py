"""The fastest timed WKV settings per workload, from a device run's kernel sweep, and the backbone rows they give.

A device session (15 minutes) has room for ``device_run8.sh`` (~590 s) and a short second call. This picks, from the
first call's ``sweep.json`` (``benchmarks/sweep.py time``), the kernel settings to run the backbones with in the
second (``device_run9.sh``), so that one session can measure the targets with tuned kernels instead of only
reporting which settings are faster:

    python benchmarks/pick_settings.py pick SWEEP.json [--out picks.json] [--shell]
    python benchmarks/pick_settings.py summary OUT_DIR        # OUT_DIR/picks.json + bb_tuned_*.json -> tuned.md
                                                              # (bb_tuned_<workload>[_<variant>].json: backbones
                                                              # run with the workload's picks)

Workloads (bf16, the backbone benchmarks' dtype), each judged on the sweep's shapes of its sequence length and on the
time that dominates it:

- ``inference_1024``: the 1024-px forward (4096 tokens and more): CUDA-graph forward time (at batch 16 the GPU, not
  the host, bounds it).
- ``inference_224``: the 224-px forward (196 tokens; batch 256): CUDA-graph forward time.
- ``train_224``: the 224-px training step (196 tokens): CUDA-graph forward + backward time, among the settings whose
  eager forward + backward (the host-bound regime of eager training) is not slower than the default's.

Per op (v4, v6) the setting with the best geometric mean of default / setting time over the workload's shapes is
picked if it beats the default kernels' rows (named in ``device_summary.DEFAULT_SETTINGS``) by at least
``MIN_GAIN``. A setting that failed at any of the workload's shapes (an error row) is ruled out; one that was not
timed at some of them (the sweep's deadline cuts the last shape's later settings) is judged on the shapes both
have. ``--shell`` prints ``INF_CFG=`` / ``INF224_CFG=`` / ``TRAIN_CFG=`` lines of ``--kernel-config OP.KEY=VAL``
arguments for ``tools/benchmark.py``.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
from device_summary import DEFAULT_SETTINGS, MIN_GAIN, backbone_rows, geomean  # noqa: E402
from sweep import V4_CONFIGS, V6_CONFIGS  # noqa: E402

CONFIGS = {"v4": V4_CONFIGS, "v6": V6_CONFIGS}
WORKLOADS = {  # name -> (which sequence lengths, the time that decides, eager fwd+bwd must not regress)
    "inference_1024": (lambda t: t >= 4096, "graph_f", False),
    "inference_224": (lambda t: t <= 256, "graph_f", False),
    "train_224": (lambda t: t <= 256, "graph_fb", True),
}
SHELL_VARS = {"inference_1024": "INF_CFG", "inference_224": "INF224_CFG", "train_224": "TRAIN_CFG"}


def pick(rows: list[dict], op: str, workload: str, dtype: str = "bf16") -> dict:
    """The setting of ``op`` to run ``workload`` with: ``{"config", "settings", "speedup", "eager_speedup",
    "shapes", "candidates"}`` (``config`` is the default's name when nothing beats it by ``MIN_GAIN``; ``speedup``
    None when the sweep has no default rows for the workload)."""
    lengths, metric, eager_guard = WORKLOADS[workload]
    base = DEFAULT_SETTINGS[op]
    mine = [r for r in rows if r.get("op") == op and r.get("dtype") == dtype and lengths(r["shape"][1])]
    failed = {r["config"] for r in mine if "error" in r or not r.get(metric) or not r.get("eager_fb")}
    ok = {(r["config"], tuple(r["shape"])): r for r in mine if r["config"] not in failed}
    shapes = sorted({s for c, s in ok if c == base})
    best = dict(config=base, settings=CONFIGS[op].get(base, {}), speedup=1.0 if shapes else None,
                eager_speedup=1.0 if shapes else None, shapes=[list(s) for s in shapes], candidates={})
    for name in sorted({c for c, _ in ok} - {base}):
        common = [s for s in shapes if (name, s) in ok]  # (a deadline may have cut the last shapes' later configs)
        if name not in CONFIGS[op] or not common:
            continue
        x = geomean(ok[(base, s)][metric] / ok[(name, s)][metric] for s in common)
        eager = geomean(ok[(base, s)]["eager_fb"] / ok[(name, s)]["eager_fb"] for s in common)
        best["candidates"][name] = dict(speedup=x, eager_speedup=eager, shapes=len(common))
        if eager_guard and eager is not None and eager < 1.0:
            continue
        if x is not None and x >= MIN_GAIN and x > best["speedup"]:
            best.update(config=name, settings=CONFIGS[op][name], speedup=x, eager_speedup=eager)
    return best


def pick_all(rows: list[dict]) -> dict:
    """``{workload: {op: pick(...)}}`` for every workload and op."""
    return {w: {op: pick(rows, op, w) for op in CONFIGS} for w in WORKLOADS}


def kernel_config_args(picks: dict) -> list[str]:
    """``--kernel-config OP.KEY=VAL`` arguments of one workload's picks (none for an op left at its default)."""
    args = []
    for op, p in picks.items():
        if p["config"] != DEFAULT_SETTINGS[op]:
            for key, val in p["settings"].items():
                args += ["--kernel-config", f"{op}.{key}={val}"]
    return args


def _workload_of(label: str) -> Optional[str]:
    """The workload a ``bb_tuned_<label>.json`` run belongs to: the longest workload name ``label`` starts with."""
    return max((w for w in WORKLOADS if label.startswith(w)), key=len, default=None)


def render_tuned(picks: dict, runs: dict[str, list[dict]]) -> str:
    """Markdown: per run (``bb_tuned_<label>.json``: a workload's picks, ``label`` may add an environment switch, e.g.
    ``inference_1024_fused_mix``) the picks with their sweep speedups, then the backbone rows measured with them
    against the issue's targets. DeiT of the same size comes from the run itself, else from another run of the same
    workload in the same call."""
    lines = ["# Backbones with the sweep's fastest WKV settings (benchmarks/pick_settings.py)", ""]
    deit_rows = {w: [r for label, rows in runs.items() if _workload_of(label) == w for r in rows
                     if str(r.get("model", "")).startswith("deit")] for w in WORKLOADS}
    for label in sorted(runs):
        workload = _workload_of(label)
        per_op = picks.get(workload, {})
        lines.append(f"## {label}: " + ("; ".join(
            f"{op} {p['config']} (x{p['speedup']:.2f} vs default, eager fwd+bwd x{p['eager_speedup']:.2f})"
            if p.get("speedup") else f"{op}: no sweep rows" for op, p in per_op.items()) or "no picks"))
        rows = runs[label]
        if not any(str(r.get("model", "")).startswith("deit") for r in rows):
            rows = rows + deit_rows.get(workload, [])
        table = backbone_rows(rows, [])
        if not table:
            lines += ["", "(no rows)", ""]
            continue
        lines += ["", "| model | res | train | img/s | DeiT img/s | x DeiT | graph x DeiT | peak GiB (DeiT) | target "
                  "| met | host / step ms (DeiT) | error |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in table:
            f2 = lambda v: "" if v is None else f"{v:.2f}"  # noqa: E731
            mem = f"{f2(r['mem_old'])} ({f2(r['mem_deit'])})" if r["mem_old"] is not None else ""
            host = (f"{f2(r['host_ms_old'])}/{f2(r['ms_old'])} ({f2(r['host_ms_deit'])}/{f2(r['ms_deit'])})"
                    if r["host_ms_old"] is not None else "")
            lines.append(f"| {r['model']} | {r['res']} | {'yes' if r['train'] else 'no'} | {f2(r['old'])} | "
                         f"{f2(r['deit'])} | {f2(r['x_deit_old'])} | {f2(r['graph_x_deit_old'])} | {mem} | "
                         f"{f2(r['target'])} | {'' if r['met'] is None else 'yes' if r['met'] else 'no'} | {host} | "
                         f"{(r['error'] or '')[:100]} |")
        lines.append("")
    if not runs:
        lines.append("(no bb_tuned_*.json runs)")
    return "\n".join(lines) + "\n"


def _load_rows(path: Path) -> Optional[list[dict]]:
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text()).get("backbones", [])
    except json.JSONDecodeError:
        return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pick", help="the fastest settings per workload from a sweep.json")
    p.add_argument("sweep", type=Path)
    p.add_argument("--out", type=Path, help="write the picks as JSON")
    p.add_argument("--shell", action="store_true", help="print INF_CFG=... / INF224_CFG=... / TRAIN_CFG=... lines")
    s = sub.add_parser("summary", help="OUT_DIR/picks.json and bb_tuned_*.json -> OUT_DIR/tuned.md")
    s.add_argument("out_dir", type=Path)
    args = ap.parse_args(argv)
    if args.cmd == "pick":
        if not args.sweep.is_file():
            ap.error(f"no sweep file {args.sweep}")
        picks = pick_all(json.loads(args.sweep.read_text()))
        if args.out:
            args.out.write_text(json.dumps(picks, indent=1))
        if args.shell:
            for workload, var in SHELL_VARS.items():
                print(f"{var}={shlex.quote(' '.join(kernel_config_args(picks[workload])))}")
        else:
            print(json.dumps(picks, indent=1))
        return 0
    picks_path = args.out_dir / "picks.json"
    if not picks_path.is_file():
        ap.error(f"no {picks_path} (written by: pick SWEEP.json --out {picks_path})")
    picks = json.loads(picks_path.read_text())
    runs = {path.stem[len("bb_tuned_"):]: rows for path in sorted(args.out_dir.glob("bb_tuned_*.json"))
            if (rows := _load_rows(path)) is not None}
    text = render_tuned(picks, runs)
    (args.out_dir / "tuned.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
