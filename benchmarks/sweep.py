"""Launch-setting sweep and overhead analysis of the Triton Bi-WKV kernels (run on a GPU machine).

  python benchmarks/sweep.py warm v4 '<json config>' [DTYPES]  # compile every kernel variant of one config
                                                                #  (parallel-safe; DTYPES: fp32,bf16 by default)
  python benchmarks/sweep.py warm CONFIG_NAME [DTYPES]  # the same for a named config of V4_CONFIGS / V6_CONFIGS
  python benchmarks/sweep.py time out.json [SECONDS [OPS [CONFIGS [DTYPES]]]]
                                                        # time all configs (or the comma-separated OPS / CONFIGS
                                                        # names, fp32 / bf16): eager (autograd) and CUDA-graph
                                                        # replays
  python benchmarks/sweep.py profile                    # torch.profiler kernel table of the default configs
  python benchmarks/sweep.py overhead                   # CPU cost of one Triton launch / one op call

Eager = what a user gets (autograd.Function path, CUDA events around each call); graph = the same host functions
captured in a CUDA graph and replayed (GPU time without launch overhead).
"""
from __future__ import annotations

import functools
import json
import os
import statistics
import sys
import time

import torch

# (VRWKV-T at 1024 px / batch 16 first, as below)
V4_SHAPES = [(16, 4096, 192), (64, 196, 192), (64, 196, 768), (16, 1024, 384), (4, 4096, 384), (1, 16384, 192)]
# (VRWKV6-T at 1024 px / batch 16 first: the shape of the 1024 target, timed first when a deadline cuts)
V6_SHAPES = [(16, 4096, 3, 64), (64, 196, 3, 64), (64, 196, 12, 64), (16, 1024, 6, 64), (4, 4096, 6, 64)]
V4_CONFIGS = {  # round 4: the tile-scan default vs the register-sequential exact-mode kernels (triton_seq.py)
    "d_default": {"seq": 0},  # the default until round 6 (the name kept for the result files)
    "seq_t16": {"seq": 1},
    "seq_t16_bc128": {"seq": 1, "seq_bc": 128, "seq_warps": 2},
    "seq_t8_bwd64": {"seq": 1, "seq_t": 8, "seq_bwd_bc": 64},
    # round 8: longer register chunks (fewer carries), one channel per thread
    "seq_t32": {"seq": 1, "seq_t": 32},
    "seq_bc32": {"seq": 1, "seq_bc": 32},
    # round 9: registers capped (forward 143 -> 96 / 64 per thread: 21 / 32 resident 1-warp programs per SM, not 14)
    "seq_r96": {"seq": 1, "seq_maxnreg": 96},
    "seq_r64": {"seq": 1, "seq_maxnreg": 64},
    # round 42: exact mode's carries folded inline up to 16 chunks (224 px: no carry kernel, forward or backward; one
    # launch less each, for O(chunks) more L2 reads per program); longer sequences as the default
    "seq_inline": {"seq": 1, "seq_carry_inline": 16},
}
# settings that change nothing past this many tokens (their rows there would repeat their base's): not timed there
MAX_T = {"seq_inline": 256, "chunk_pairs": 256, "chunk_pairs_keys": 256}
V6_CONFIGS = {  # round 4: the walking kernels vs the chunk-parallel ones (triton_chunk.py)
    "walk": {"algo": "walk"},  # the default until round 6
    "chunk": {"algo": "chunk"},
    "chunk_st32": {"algo": "chunk", "state_t": 32},
    "chunk_st128": {"algo": "chunk", "state_t": 128},
    "chunk_16bit_states": {"algo": "chunk", "state_dtype": "input"},
    "chunk_w8": {"algo": "chunk", "warps": 8},
    # round 8: fewer tokens between stored states (less walking in the output kernels, more state bytes)
    "chunk_st16": {"algo": "chunk", "state_t": 16},
    "chunk_st32_16bit": {"algo": "chunk", "state_t": 32, "state_dtype": "input"},
    "chunk_st16_16bit": {"algo": "chunk", "state_t": 16, "state_dtype": "input"},
    # round 8: the forward's output kernel per state chunk, carrying the states (fwd_carry=1); more warps
    "chunk_carry": {"algo": "chunk", "fwd_carry": 1},
    "chunk_carry_st128": {"algo": "chunk", "fwd_carry": 1, "state_t": 128},
    "chunk_carry_w8": {"algo": "chunk", "fwd_carry": 1, "warps": 8},
    # round 9: the backward's programs per state chunk as well (bwd_carry=1: two states per pass, none walked)
    "chunk_bcarry": {"algo": "chunk", "bwd_carry": 1},
    "chunk_carry_both": {"algo": "chunk", "fwd_carry": 1, "bwd_carry": 1},
    # round 9: registers capped (255 -> 128 / 168 per thread: 4 / 3 programs per SM instead of 2, with spills)
    "chunk_r128": {"algo": "chunk", "maxnreg": 128},
    "chunk_r168": {"algo": "chunk", "maxnreg": 168},
    "chunk_carry_r128": {"algo": "chunk", "fwd_carry": 1, "maxnreg": 128},
    # round 21: the states walked over the state chunks by one kernel (the default up to 16 state chunks) at every
    # length, and the increments + scan at every length
    "chunk_swalk64": {"algo": "chunk", "state_walk": 64},
    "chunk_scan": {"algo": "chunk", "state_walk": 0},
    # round 24: two calls of flash-linear-attention's causal chunk kernels (fla_route.py; the comparison
    # point; needs the fla package - carried as a wheel by device_run8.sh - else the rows hold the import error)
    "fla": {"algo": "fla"},
    # round 24: the fewest state bytes - 16-bit states every 128 tokens, carried through the state chunk by the output
    # kernel, or walked by one kernel (no increments + scan): VRWKV6-T's 1024-px floor 8.10 -> 7.39 / 7.08 ms at 3 TB/s
    # (tools/roofline.py), under the 7.74 ms of 2x the anchors' DeiT-T
    "chunk_carry_st128_16bit": {"algo": "chunk", "fwd_carry": 1, "state_t": 128, "state_dtype": "input"},
    "chunk_swalk64_st128_16bit": {"algo": "chunk", "state_walk": 64, "state_t": 128, "state_dtype": "input"},
    # round 31: the state-chunk output kernel on states walked by one kernel at every length (benchmarks/
    # pick_settings.py picks one named setting per op and workload: combinations must be settings of their own)
    "chunk_carry_swalk64": {"algo": "chunk", "fwd_carry": 1, "state_walk": 64},
    # ... with 16-bit states every 128 tokens: VRWKV6-T's 1024-px floor 7.91 (default) -> 7.71 (the row above) ->
    # 7.10 ms at 3 TB/s (tools/roofline.py; chunk_swalk64_st128_16bit, without the carry's fp32 scratch: 6.90)
    "chunk_carry_swalk64_st128_16bit": {"algo": "chunk", "fwd_carry": 1, "state_walk": 64, "state_t": 128,
                                        "state_dtype": "input"},
    # round 27: the walk kernels with tensor-core in-chunk pairs (the "walk" row above), and their forward's value
    # columns in blocks of 32 / 16 (2x / 4x the programs: 192 / 384 instead of 96 at VRWKV6-T's 1024-px shape; at
    # 223-255 registers two 4-warp programs fit an SM, so 384 take two waves of an H100's 132 SMs)
    "walk_bv32": {"algo": "walk", "walk_bv": 32},
    "walk_bv16": {"algo": "walk", "walk_bv": 16},
    # round 43: forwards of up to 256 tokens (224 px) by one kernel summing over pairs of sub-chunks, no states
    # (triton_pairs.py; one launch instead of two, no state bytes, 12 source sub-chunks per program at 196 tokens)
    "chunk_pairs": {"algo": "chunk", "pairs_max_t": 256},
    # round 44: the same with the sources' decayed keys written once by a first kernel (pairs_keys: each source's loop
    # iteration is two tile loads, a multiply and the two products; sm_90 static: 3112 vs 3784 instructions)
    "chunk_pairs_keys": {"algo": "chunk", "pairs_max_t": 256, "pairs_keys": 1},
}


def _med_ms(fn, iters=20, warmup=3):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    evs = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(iters)]
    for a, b in evs:
        a.record()
        fn()
        b.record()
    torch.cuda.synchronize()
    return statistics.median(a.elapsed_time(b) for a, b in evs)


def _graph_ms(fn, iters=20):
    from vision_rwkv.benchmark import capture_graph, warm_on_side_stream

    fn()
    warm_on_side_stream(fn, 1)
    g = capture_graph(fn, torch.cuda.default_generators[torch.cuda.current_device()])
    return _med_ms(g.replay, iters, 2)


# (the inputs of one shape serve every setting timed at it back to back - see _time_cases: generating them on the
# host takes ~0.5 s per 4096-token v6 shape, a row's whole timing about as long)
@functools.lru_cache(maxsize=1)
def _v4_case(shape, dtype):
    B, T, C = shape
    g = torch.Generator().manual_seed(0)
    k = torch.randn(B, T, C, generator=g).to(dtype).cuda()
    v = torch.randn(B, T, C, generator=g).to(dtype).cuda()
    w = ((-5 + 8 * torch.rand(C, generator=g)) / T).cuda()
    u = (torch.randn(C, generator=g) / T).cuda()
    gy = torch.randn(B, T, C, generator=g).to(dtype).cuda()
    return w, u, k, v, gy


@functools.lru_cache(maxsize=1)
def _v6_case(shape, dtype):
    g = torch.Generator().manual_seed(0)
    r, k, v, gy = (torch.randn(*shape, generator=g).to(dtype).cuda() for _ in range(4))
    logd = (-torch.exp(-6 + 5 * torch.rand(*shape, generator=g))).to(dtype).cuda()
    u = (0.1 * torch.randn(shape[2], shape[3], generator=g)).cuda()
    return r, k, v, logd, u, gy


def _v4_fns(shape, dtype, mode="exact"):
    from vision_rwkv.ops.bi_wkv import triton as m

    w, u, k, v, gy = _v4_case(shape, dtype)
    leaves = [x.clone().requires_grad_() for x in (w, u, k, v)]

    def eager_f():
        with torch.no_grad():
            m.bi_wkv_triton(w, u, k, v, mode, 32)

    def eager_fb():
        m.bi_wkv_triton(*leaves, mode, 32).backward(gy)

    def raw_f():
        m._fwd(w, u, k, v, mode, 32)

    def raw_fb():
        y, mm, car = m._fwd(w, u, k, v, mode, 32)
        m._bwd(w, u, k, v, mm, car, gy, mode, 32)
    return eager_f, eager_fb, raw_f, raw_fb


def _v6_fns(shape, dtype):
    from vision_rwkv.ops.bi_wkv6 import triton as m

    r, k, v, logd, u, gy = _v6_case(shape, dtype)
    leaves = [x.clone().requires_grad_() for x in (r, k, v, logd, u)]

    def eager_f():
        with torch.no_grad():
            m.bi_wkv6_triton(r, k, v, logd, u)

    def eager_fb():
        m.bi_wkv6_triton(*leaves).backward(gy)

    def raw_f():
        m._fwd(r, k, v, logd, u)

    def raw_fb():
        m._fwd(r, k, v, logd, u)
        m._bwd(r, k, v, logd, u, gy)
    return eager_f, eager_fb, raw_f, raw_fb


def _set(op, cfg):
    if op == "v4":
        from vision_rwkv.ops.bi_wkv import triton as m
    else:
        from vision_rwkv.ops.bi_wkv6 import triton as m
    base = getattr(m, "_BASE_CONFIG", None)
    if base is None:
        base = m._BASE_CONFIG = dict(m.CONFIG)
    m.CONFIG.clear()
    m.CONFIG.update(base)
    m.CONFIG.update(cfg)


def named_config(name: str) -> tuple[str, dict]:
    """(op, settings) of a config of V4_CONFIGS / V6_CONFIGS by name; an unknown name lists the known ones."""
    for op, configs in (("v4", V4_CONFIGS), ("v6", V6_CONFIGS)):
        if name in configs:
            return op, configs[name]
    raise SystemExit(f"sweep.py: no config named {name!r}; known: {', '.join(sorted(V4_CONFIGS) + sorted(V6_CONFIGS))}")


def warm(op, cfg, dtypes=("fp32", "bf16")):
    _set(op, cfg)
    for dn in dtypes:
        dt = {"fp32": torch.float32, "bf16": torch.bfloat16}[dn]
        for shape in (V4_SHAPES if op == "v4" else V6_SHAPES):
            fns = _v4_fns(shape, dt) if op == "v4" else _v6_fns(shape, dt)
            fns[1]()
            if op == "v4" and dn == "fp32":
                _v4_fns(shape, dt, "original")[1]()
    torch.cuda.synchronize()


def _time_cases(ops, configs, dtypes=("fp32", "bf16")):
    """(op, config name, config, dtype name, shape) in timing order: shape by shape, both ops interleaved, every
    selected config of a (op, dtype, shape) back to back, so a deadline cuts the largest shapes of every op and
    config evenly and each timed row has its counterparts; none past a config's ``MAX_T``."""
    table = {"v4": (V4_CONFIGS, V4_SHAPES), "v6": (V6_CONFIGS, V6_SHAPES)}
    for i in range(max(len(V4_SHAPES), len(V6_SHAPES))):
        for op in ops:
            cfgs, shapes = table[op]
            if i >= len(shapes):
                continue
            for dn in dtypes:
                for name, cfg in cfgs.items():
                    if (configs is None or name in configs) and shapes[i][1] <= MAX_T.get(name, shapes[i][1]):
                        yield op, name, cfg, dn, shapes[i]


def time_all(out, deadline, ops=("v4", "v6"), configs=None, dtypes=("fp32", "bf16")):
    rows = []
    for op, name, cfg, dn, shape in _time_cases(ops, configs, dtypes):
        if time.time() > deadline:
            print("deadline reached", flush=True)
            break
        _set(op, cfg)
        dt = {"fp32": torch.float32, "bf16": torch.bfloat16}[dn]
        row = dict(op=op, config=name, dtype=dn, shape=list(shape))
        try:
            ef, efb, rf, rfb = _v4_fns(shape, dt) if op == "v4" else _v6_fns(shape, dt)
            row["eager_f"] = _med_ms(ef)
            row["eager_fb"] = _med_ms(efb)
            row["graph_f"] = _graph_ms(rf)
            row["graph_fb"] = _graph_ms(rfb)
        except Exception as e:
            row["error"] = f"{type(e).__name__}: {e}"[:200]
        rows.append(row)
        print(json.dumps(row), flush=True)
        _write_rows(rows, out)  # after every row: a run killed by its timeout keeps what it measured
        torch.cuda.empty_cache()
    _write_rows(rows, out)
    return rows


def _write_rows(rows, out):
    tmp = f"{out}.tmp"
    with open(tmp, "w") as f:
        json.dump(rows, f, indent=1)
    os.replace(tmp, out)


def profile():
    from torch.profiler import ProfilerActivity, profile as prof

    for op, shape in (("v4", (64, 196, 192)), ("v4", (16, 1024, 384)), ("v6", (64, 196, 12, 64))):
        fns = _v4_fns(shape, torch.float32) if op == "v4" else _v6_fns(shape, torch.float32)
        for _ in range(3):
            fns[1]()
        torch.cuda.synchronize()
        with prof(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as p:
            for _ in range(5):
                fns[1]()
            torch.cuda.synchronize()
        print(f"==== {op} {shape} fwd+bwd x5 (eager)")
        print(p.key_averages().table(sort_by="cuda_time_total", row_limit=14, max_name_column_width=40))
        print(p.key_averages().table(sort_by="cpu_time_total", row_limit=10, max_name_column_width=40))


def overhead():
    import triton
    import triton.language as tl

    @triton.jit
    def _empty(a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15, a16, a17, a18, a19,
               A: tl.constexpr, Bc: tl.constexpr):
        pass

    x = torch.zeros(8, device="cuda")
    args = [x] * 8 + [3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25]
    _empty[(1,)](*args, A=1, Bc=2)
    torch.cuda.synchronize()
    n = 2000
    t0 = time.perf_counter()
    for _ in range(n):
        _empty[(1,)](*args, A=1, Bc=2)
    torch.cuda.synchronize()
    print(f"empty triton launch (20 args): {(time.perf_counter() - t0) / n * 1e6:.1f} us", flush=True)
    t0 = time.perf_counter()
    for _ in range(n):
        torch.empty(1000, device="cuda")
    print(f"torch.empty: {(time.perf_counter() - t0) / n * 1e6:.1f} us")
    from vision_rwkv.ops.bi_wkv import triton as m

    w, u, k, v, gy = _v4_case((2, 196, 64), torch.float32)
    for name, fn in (("custom op fwd", lambda: m._bi_wkv_fwd_op(w, u, k, v, "exact", 32)),
                     ("autograd.Function fwd", lambda: m._BiWKV.apply(w, u, k, v, "exact", 32)),
                     ("raw _fwd", lambda: m._fwd(w, u, k, v, "exact", 32))):
        for _ in range(20):
            fn()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(500):
            fn()
        torch.cuda.synchronize()
        print(f"{name} (2,196,64): {(time.perf_counter() - t0) / 500 * 1e6:.1f} us/call", flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] in (["-h"], ["--help"]):
        sys.exit(print(__doc__))
    torch.backends.cuda.matmul.allow_tf32 = False
    what = sys.argv[1]
    if what == "warm" and sys.argv[2] in ("v4", "v6"):
        warm(sys.argv[2], json.loads(sys.argv[3]), *([tuple(sys.argv[4].split(","))] if len(sys.argv) > 4 else []))
    elif what == "warm":
        warm(*named_config(sys.argv[2]), *([tuple(sys.argv[3].split(","))] if len(sys.argv) > 3 else []))
    elif what == "time":
        time_all(sys.argv[2], time.time() + float(sys.argv[3]) if len(sys.argv) > 3 else 1e18,
                 tuple(sys.argv[4].split(",")) if len(sys.argv) > 4 else ("v4", "v6"),
                 set(sys.argv[5].split(",")) if len(sys.argv) > 5 else None,
                 tuple(sys.argv[6].split(",")) if len(sys.argv) > 6 else ("fp32", "bf16"))
    elif what == "profile":
        profile()
    elif what == "overhead":
        overhead()
