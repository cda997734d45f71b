"""Summarise one device run of ``benchmarks/device_run6.sh``: test outcomes, backbone and operator timings of the
current defaults ("old") against the opt-in kernels ("new"), the issue-3 targets, and which opt-ins to make default.

    python benchmarks/device_summary.py OUT_DIR [LOGS_DIR]  # reads the files below (*.log in LOGS_DIR, default
                                                            # OUT_DIR), writes summary.md + verdict.json in OUT_DIR

Inputs (missing ones are reported, not fatal): ``tests_default.log`` / ``tests_optin.log`` (``pytest -v``, the CUDA
tests with the current defaults / the whole-model tests with every opt-in), ``sanitizer.log``, ``sweep.json``
(``benchmarks/sweep.py time``: old and new WKV kernels, eager and CUDA-graph ms), ``gemm.json`` (``tools/benchmark.py
--gemm``), ``bb_old.json`` / ``bb_new.json`` (``tools/benchmark.py --backbones``; DeiT rows in the old run only);
optional (device_run8.sh): ``bisect.json`` (``benchmarks/capture_bisect.py``), ``v6_blocks.json``
(``benchmarks/v6_blocks_check.py``), ``profile*.md`` (``tools/profile_backbone.py --md``: appended as they are).
Every timed WKV setting is also set against the default kernels' at its shape.

An opt-in is made default (``verdict.json``) only if its CUDA tests ran and all passed, the whole-model tests with the
opt-ins passed, and it is faster: geometric mean over the sweep's shapes and dtypes of old / new CUDA-graph
forward+backward time >= 1.1 and of the eager time >= 1.0 (WKV kernels; v6 also forward alone:
``make_default_forward_only`` when the chunk forward passes that rule but its backward alone is slower than the walk
kernels', to be switched on as ``algo=chunk,bwd_algo=walk``; the whole opt-in then is not made default), or of unfused / fused time >= 1.05 (GEMM
epilogues; the mixed-operand GEMMs of ``VRWKV_FUSED_MIX`` and the fused MLP of ``VRWKV_FUSED_MLP`` by their own rows
of the GEMM table, ``mix_*`` / ``mlp``). ``v6_walk_short`` (``walk_max_t``: the walk kernels for sequences of at
most ``SHORT_T`` tokens, the chunk kernels above) is judged by the same rule on the sweep's chunk -> walk rows at
those lengths only.
"""
from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path
from typing import Iterable, Optional

OUTCOME = re.compile(r"\b(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b")
TEST_ID = re.compile(r"(\S+\.py::\S+)")
TARGETS = {  # issue 3, bf16 autocast, ratio to DeiT of the same size measured in the same run
    (1024, False): 2.0,
    (224, False): 0.5,
    (224, True): 0.7,
}
SWEEP_PAIRS = {"v4": ("d_default", "seq_t16"), "v6": ("walk", "chunk")}
DEFAULT_SETTINGS = {"v4": "seq_t16", "v6": "chunk"}  # the sweep's names of the current default kernels
OPT_INS = {  # verdict key -> (test file and id marker of its CUDA cases, environment switch that turns it on)
    "v4_seq": ("test_bi_wkv_triton.py::", "_seq", "VRWKV_TRITON_V4=seq=1"),
    "v6_chunk": ("test_bi_wkv6_triton.py::", "_chunk", "VRWKV_TRITON_V6=algo=chunk"),
    "fused_gemm": ("test_fused_triton.py::", "[linear_", "VRWKV_FUSED_GEMM=1"),
    "fused_mix": ("test_fused_triton.py::", "[mix_linear_", "VRWKV_FUSED_MIX=1"),
    "fused_mlp": ("test_fused_triton.py::", "[mix_mlp_", "VRWKV_FUSED_MLP=1"),
    # the walk kernels for short sequences only (walk_max_t), judged on the sweep's shapes of at most SHORT_T tokens
    "v6_walk_short": ("test_bi_wkv6_triton.py::", "_walk", "VRWKV_TRITON_V6=walk_max_t=256"),
}
SHORT_T = 256  # the longest sequence v6_walk_short's walk_max_t hands the walk kernels
GEMM_ROWS = {"fused_gemm": "epilogue", "fused_mix": "mix_", "fused_mlp": "mlp"}  # whose rows of the GEMM table


def parse_pytest_log(text: str) -> dict[str, str]:
    """Test id -> outcome from ``pytest -v`` output (plain and xdist line layouts); the last outcome of an id wins."""
    outcomes = {}
    for line in text.splitlines():
        tid, res = TEST_ID.search(line), OUTCOME.search(line)
        if tid and res:
            outcomes[tid.group(1)] = res.group(1)
    return outcomes


# a picked setting must lead the default by this much: below it, its lead is within the run-to-run spread of the
# medians (benchmarks/pick_settings.py, benchmarks/mix_tiles.py)
MIN_GAIN = 1.03


def geomean(values: Iterable[float]) -> Optional[float]:
    vals = [v for v in values if v is not None and v > 0 and math.isfinite(v)]
    return math.exp(sum(math.log(v) for v in vals) / len(vals)) if vals else None


def sweep_speedups(rows: list[dict], op: str, pair: Optional[tuple[str, str]] = None) -> list[dict]:
    """Per (dtype, shape): old / new ms of the op's pair of configs (``SWEEP_PAIRS``, or ``pair``: (old, new)
    names), eager and CUDA-graph, forward and fwd+bwd."""
    old_name, new_name = pair or SWEEP_PAIRS[op]
    by_key = {(r["config"], r["dtype"], tuple(r["shape"])): r for r in rows if r.get("op") == op and "error" not in r}
    out = []
    for (cfg, dtype, shape), old in sorted(by_key.items()):
        new = by_key.get((new_name, dtype, shape))
        if cfg != old_name or new is None:
            continue
        row = dict(op=op, dtype=dtype, shape=list(shape))
        for k in ("eager_f", "eager_fb", "graph_f", "graph_fb"):
            row[k + "_old"], row[k + "_new"] = old[k], new[k]
            row[k + "_x"] = old[k] / new[k] if new[k] > 0 else None
        out.append(row)
    return out


def backbone_rows(old: list[dict], new: list[dict]) -> list[dict]:
    """Our models' rows: img/s old and new, DeiT (from the old run), ratios, peak memory and the target per row."""
    deit = {(r["model"], r["res"], r["dtype"], r["train"]): r for r in old if str(r.get("model", "")).startswith("deit")}
    new_by = {(r["model"], r["res"], r["dtype"], r["train"]): r for r in new}
    out = []
    for r in old:
        if str(r.get("model", "")).startswith("deit"):
            continue
        key = (r["model"], r["res"], r["dtype"], r["train"])
        n = new_by.get(key, {})
        d = deit.get((r.get("deit"), r["res"], r["dtype"], r["train"]), {})
        d_ips = d.get("img_per_s") or r.get("deit_img_per_s")
        row = dict(model=r["model"], res=r["res"], dtype=r["dtype"], train=r["train"], old=r.get("img_per_s"),
                   new=n.get("img_per_s"), deit=d_ips, mem_old=r.get("peak_mem_GiB"), mem_new=n.get("peak_mem_GiB"),
                   mem_deit=d.get("peak_mem_GiB") or r.get("deit_peak_mem_GiB"),
                   error=r.get("error") or n.get("error"))
        row["graph_deit"] = d.get("graph_img_per_s") or r.get("deit_graph_img_per_s")
        # the capture mode of each graph number (benchmark.graph_fields: "relaxed" where CUDA's default refused)
        row["graph_modes"] = {v: src.get("graph_capture_mode") for v, src in (("old", r), ("new", n), ("deit", d))
                              if src.get("graph_capture_mode") not in (None, "global")}
        # host time to enqueue one call on an idle GPU next to the call's time (benchmark.time_fn): host-bound rows
        # have the two close
        for v, src, prefix in (("old", r, ""), ("deit", d or r, "" if d else "deit_")):
            row[f"host_ms_{v}"], row[f"ms_{v}"] = src.get(f"{prefix}host_ms"), src.get(f"{prefix}ms")
        # the same eager step with the mixers op by op (VRWKV_FUSED_STEP=0) instead of one step each (default):
        # training rows, and inference rows at 224
        row["per_op"] = r.get("per_op_img_per_s")
        row["x_deit_per_op"] = row["per_op"] / d_ips if row["per_op"] and d_ips else None
        for v, src in (("old", r), ("new", n)):
            row[f"x_deit_{v}"] = row[v] / d_ips if row[v] and d_ips else None
            row[f"graph_{v}"] = src.get("graph_img_per_s")
            row[f"graph_x_deit_{v}"] = (row[f"graph_{v}"] / row["graph_deit"]
                                        if row[f"graph_{v}"] and row["graph_deit"] else None)
        target = TARGETS.get((r["res"], bool(r["train"]))) if r["dtype"] == "bf16" else None
        row["target"] = target
        best = max((x for x in (row["x_deit_old"], row["x_deit_new"]) if x is not None), default=None)
        row["met"] = None if target is None or best is None else best >= target
        if row["met"] and r["res"] == 1024 and not r["train"]:  # "with less memory", by a fast-enough config
            row["met"] = any(row[f"x_deit_{v}"] is not None and row[f"x_deit_{v}"] >= target
                             and row[f"mem_{v}"] is not None and row["mem_deit"] is not None
                             and row[f"mem_{v}"] < row["mem_deit"] for v in ("old", "new"))
        out.append(row)
    return out


def _backward_x(row: dict, kind: str) -> Optional[float]:
    """old / new time of the backward alone (fwd+bwd minus fwd) of a sweep_speedups row."""
    old, new = row[f"{kind}_fb_old"] - row[f"{kind}_f_old"], row[f"{kind}_fb_new"] - row[f"{kind}_f_new"]
    return old / new if old > 0 and new > 0 else None


def _gemm_row_kind(row: dict) -> str:
    epi = str(row.get("epilogue", ""))  # the residual-epilogue rows ("res") belong to VRWKV_FUSED_MIX too
    return "mix_" if epi.startswith("mix_") or epi == "res" else "mlp" if epi == "mlp" else "epilogue"


def verdict(default_tests: dict[str, str], optin_tests: dict[str, str], sweep: list[dict],
            gemm: list[dict]) -> dict:
    """Which opt-ins become default, with the evidence (see the module docstring for the rule)."""
    optin_ok = bool(optin_tests) and all(o in ("PASSED", "SKIPPED") for o in optin_tests.values()) and any(
        o == "PASSED" for o in optin_tests.values())
    result = {}
    for key, (file, marker, env) in OPT_INS.items():
        own = {t: o for t, o in default_tests.items() if file in t and marker in t}
        ran = [o for o in own.values() if o != "SKIPPED"]
        tests_ok = bool(ran) and all(o == "PASSED" for o in ran)
        failed = sorted(t for t, o in own.items() if o in ("FAILED", "ERROR"))
        if key in GEMM_ROWS:  # the GEMM table's epilogue rows / its mixed-operand rows / its fused-MLP rows
            speed = geomean(r.get("vs_unfused") for r in gemm if r.get("impl") == "fused"
                            and _gemm_row_kind(r) == GEMM_ROWS[key])
            fast = speed is not None and speed >= 1.05
            evidence = dict(vs_unfused_geomean=speed)
        else:
            if key == "v6_walk_short":  # chunk -> walk at the lengths walk_max_t gives the walk kernels
                rows = [r for r in sweep_speedups(sweep, "v6", ("chunk", "walk")) if r["shape"][1] <= SHORT_T]
            else:
                rows = sweep_speedups(sweep, "v4" if key == "v4_seq" else "v6")
            graph = geomean(r["graph_fb_x"] for r in rows)
            eager = geomean(r["eager_fb_x"] for r in rows)
            fast = graph is not None and eager is not None and graph >= 1.1 and eager >= 1.0
            evidence = dict(graph_fb_speedup_geomean=graph, eager_fb_speedup_geomean=eager, shapes=len(rows))
            if key == "v6_chunk":  # forward and backward pick their kernels apart (bwd_algo): judge each alone
                graph_f, eager_f = geomean(r["graph_f_x"] for r in rows), geomean(r["eager_f_x"] for r in rows)
                fast_f = graph_f is not None and eager_f is not None and graph_f >= 1.1 and eager_f >= 1.0
                graph_b = geomean(_backward_x(r, "graph") for r in rows)
                bwd_ok = graph_b is None or graph_b >= 1.0  # a slower chunk backward: keep the walk backward
                fast = fast and bwd_ok
                evidence.update(graph_f_speedup_geomean=graph_f, eager_f_speedup_geomean=eager_f,
                                graph_bwd_speedup_geomean=graph_b,
                                make_default_forward_only=tests_ok and optin_ok and fast_f and not bwd_ok,
                                forward_only_env="VRWKV_TRITON_V6=algo=chunk,bwd_algo=walk")
        result[key] = dict(make_default=tests_ok and optin_ok and fast, env=env, tests_ran=len(ran),
                           tests_failed=failed, model_tests_with_opt_ins_ok=optin_ok, faster=fast, **evidence)
    return result


def settings_vs_default(rows: list[dict]) -> list[dict]:
    """Every timed setting of each op against the default kernels' (``DEFAULT_SETTINGS``) at the same (dtype, shape):
    the setting's CUDA-graph forward / fwd+bwd ms and default / setting (x > 1: faster than the default)."""
    out = []
    for op, base in DEFAULT_SETTINGS.items():
        names = sorted({r["config"] for r in rows if r.get("op") == op and r.get("config") != base})
        for name in names:
            out += [dict(r, config=name) for r in sweep_speedups(rows, op, (base, name))]
    return out


def _fmt(v, spec=".2f") -> str:
    return "" if v is None else format(v, spec) if isinstance(v, float) else str(v)


def _frames(frames: Optional[list], n: int = 3) -> str:
    """The innermost ``n`` of a capture_bisect frame list (innermost last there), innermost first, for a table."""
    return " <- ".join(reversed(frames[-n:])) if frames else ""


def _syncs(found: Optional[list]) -> str:
    """capture_bisect's ``host_syncs`` (every host-synchronising op of a step) as ``op xN @ innermost frame; ...``."""
    return "; ".join(f"{r['op']} x{r['count']} @ {_frames(r['frames'], 1)}" for r in found or ())


def render(tests: dict[str, dict[str, str]], bb: list[dict], sweep: list[dict], verdicts: dict,
           sanitizer: Optional[str], missing: list[str], bisect: Optional[list] = None,
           blocks: Optional[dict] = None) -> str:
    lines = ["# Device run summary", ""]
    if missing:
        lines += [f"Missing inputs: {', '.join(missing)}", ""]
    lines += ["## Tests", "", "| log | passed | failed | skipped |", "|---|---|---|---|"]
    for name, res in tests.items():
        vals = list(res.values())
        lines.append(f"| {name} | {vals.count('PASSED')} | {vals.count('FAILED') + vals.count('ERROR')} | "
                     f"{vals.count('SKIPPED')} |")
    failed = sorted(f"{name}: {t}" for name, res in tests.items() for t, o in res.items() if o in ("FAILED", "ERROR"))
    lines += [f"- FAILED {t}" for t in failed[:30]]
    if sanitizer is not None:
        lines += ["", f"Sanitizer: {sanitizer}"]
    lines += ["", "## Backbones (img/s; x = ratio to DeiT of the same size in the same run; graph = CUDA-graph "
              "replays, both models)", "",
              "| model | res | dtype | train | old | new | DeiT | x old | x new | target | met | GiB old/new/DeiT | "
              "graph x DeiT old/new | per-op x DeiT | host / step ms old | DeiT |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in bb:
        mem = "/".join(_fmt(r[k]) for k in ("mem_old", "mem_new", "mem_deit"))
        gx = "/".join(_fmt(r[k]) for k in ("graph_x_deit_old", "graph_x_deit_new"))
        if r.get("graph_modes"):  # (a number captured in another mode than CUDA's default says so)
            gx += " (" + ", ".join(f"{v}: {m}" for v, m in r["graph_modes"].items()) + " capture)"
        host = " | ".join("/".join(_fmt(r.get(k), ".1f") for k in (f"host_ms_{v}", f"ms_{v}")) for v in ("old", "deit"))
        lines.append(f"| {r['model']} | {r['res']} | {r['dtype']} | {r['train']} | {_fmt(r['old'], '.0f')} | "
                     f"{_fmt(r['new'], '.0f')} | {_fmt(r['deit'], '.0f')} | {_fmt(r['x_deit_old'])} | "
                     f"{_fmt(r['x_deit_new'])} | {_fmt(r['target'])} | {_fmt(r['met'])} | {mem} | {gx} | "
                     f"{_fmt(r.get('x_deit_per_op'))} | {host} |" + (f" {r['error'][:80]}" if r.get("error") else ""))
    lines += ["", "## WKV kernels, old / new ms (x = speedup of new)", "",
              "| op | dtype | shape | eager fwd+bwd old | new | x | graph fwd+bwd old | new | x |",
              "|---|---|---|---|---|---|---|---|---|"]
    for op in SWEEP_PAIRS:
        for r in sweep_speedups(sweep, op):
            lines.append(f"| {op} | {r['dtype']} | {tuple(r['shape'])} | {_fmt(r['eager_fb_old'], '.3f')} | "
                         f"{_fmt(r['eager_fb_new'], '.3f')} | {_fmt(r['eager_fb_x'])} | "
                         f"{_fmt(r['graph_fb_old'], '.3f')} | {_fmt(r['graph_fb_new'], '.3f')} | "
                         f"{_fmt(r['graph_fb_x'])} |")
    settings = settings_vs_default(sweep)
    if settings:
        lines += ["", "## WKV settings vs the default kernels (CUDA-graph ms; x = default / setting, > 1 faster)", "",
                  "| op | setting | dtype | shape | fwd default | fwd | x | fwd+bwd default | fwd+bwd | x |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in settings:
            lines.append(f"| {r['op']} | {r['config']} | {r['dtype']} | {tuple(r['shape'])} | "
                         f"{_fmt(r['graph_f_old'], '.3f')} | {_fmt(r['graph_f_new'], '.3f')} | "
                         f"{_fmt(r['graph_f_x'])} | {_fmt(r['graph_fb_old'], '.3f')} | "
                         f"{_fmt(r['graph_fb_new'], '.3f')} | {_fmt(r['graph_fb_x'])} |")
    if bisect:
        lines += ["", "## Training-step CUDA-graph capture by variant (benchmarks/capture_bisect.py)", "",
                  "| variant | captured | error | where (innermost first) | first synchronising op | host syncs |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {r['variant']} | {'yes' if r.get('ok') else 'NO'} | {r.get('error', '')[:160]} | "
                  f"{_frames(r.get('frames'))} | {_frames(r.get('sync_op'))} | {_syncs(r.get('host_syncs'))} |"
                  for r in bisect]
    if blocks:
        keys = ("y", "gr", "gk", "gv", "glogd", "gu")
        lines += ["", "## v6 launch settings, relative error vs float64 (benchmarks/v6_blocks_check.py)", "",
                  "| setting | " + " | ".join(keys) + " | error |", "|---|" + "---|" * (len(keys) + 1)]
        for name, res in blocks.items():
            err = res.get("error", "").splitlines()[0][:120] if res.get("error") else ""
            lines.append(f"| {name} | " + " | ".join(_fmt(res.get(k), ".1e") for k in keys) + f" | {err} |")
    lines += ["", "## Verdict (make default?)", ""]
    for key, v in verdicts.items():
        ev = ", ".join(f"{k}={_fmt(val, '.3f')}" for k, val in v.items() if k not in ("make_default", "env"))
        lines.append(f"- {key} ({v['env']}): {'YES' if v['make_default'] else 'no'} - {ev}")
    return "\n".join(lines) + "\n"


def _load_json(path: Path, key: Optional[str], missing: list[str]) -> list[dict]:
    if not path.exists():
        missing.append(path.name)
        return []
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError:
        missing.append(f"{path.name} (unreadable)")
        return []
    return data.get(key, []) if key else data


def summarise(out_dir: str | Path, logs_dir: str | Path | None = None) -> tuple[str, dict]:
    """Read a device run's files in ``out_dir`` (its ``*.log`` in ``logs_dir``, default the same folder); write
    ``summary.md`` and ``verdict.json`` in ``out_dir``; return both."""
    out = Path(out_dir)
    if not out.is_dir():
        raise FileNotFoundError(f"device_summary: no folder {out} (a device run's $OUT)")
    logs = Path(logs_dir) if logs_dir is not None else out
    missing: list[str] = []
    tests = {}
    for name in ("tests_default", "tests_optin"):
        path = logs / f"{name}.log"
        if path.exists():
            tests[name] = parse_pytest_log(path.read_text(errors="replace"))
        else:
            missing.append(path.name)
            tests[name] = {}
    sanitizer = None
    if (logs / "sanitizer.log").exists():
        text = (logs / "sanitizer.log").read_text(errors="replace")
        # (one run's log, or several runs' concatenated - device_run10.sh: the worst rc, the errors summed)
        rc = [int(x) for x in re.findall(r"sanitizer rc=(\d+)", text)]
        errors = [int(x) for x in re.findall(r"ERROR SUMMARY: (\d+) errors?", text)]
        summary = f"ERROR SUMMARY: {sum(errors)} errors" + (f" ({len(errors)} runs)" if len(errors) > 1 else "")
        sanitizer = (f"rc={max(rc) if rc else '?'}, {summary if errors else 'no ERROR SUMMARY line'}, "
                     f"{len(re.findall(r' ok$', text, re.M))} cases ok, "
                     f"{len(re.findall('NON-FINITE', text))} non-finite")
    else:
        missing.append("sanitizer.log")
    sweep = _load_json(out / "sweep.json", None, missing)
    gemm = _load_json(out / "gemm.json", "gemm", missing)
    bb = backbone_rows(_load_json(out / "bb_old.json", "backbones", missing),
                       _load_json(out / "bb_new.json", "backbones", missing))
    verdicts = verdict(tests["tests_default"], tests["tests_optin"], sweep, gemm)
    optional: list[str] = []  # (the diagnostics of device_run8.sh: not reported when absent)
    bisect = _load_json(out / "bisect.json", "rows", optional)
    blocks = _load_json(out / "v6_blocks.json", "results", optional) or {}
    missing += [m for m in optional if m.endswith("(unreadable)")]
    text = render(tests, bb, sweep, verdicts, sanitizer, missing, bisect, blocks)
    for path in sorted(out.glob("profile*.md")):  # tools/profile_backbone.py --md: share of GPU time per op group
        text += f"\n## Profile ({path.stem})\n\n" + path.read_text().strip() + "\n"
    (out / "summary.md").write_text(text)
    (out / "verdict.json").write_text(json.dumps(dict(verdict=verdicts, backbones=bb), indent=1))
    return text, verdicts


if __name__ == "__main__":
    if sys.argv[1:2] in (["-h"], ["--help"]):
        sys.exit(print(__doc__))
    print(summarise(sys.argv[1] if len(sys.argv) > 1 else "device_out", sys.argv[2] if len(sys.argv) > 2 else None)[0])
