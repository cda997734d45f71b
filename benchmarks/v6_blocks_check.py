"""Which v6 launch setting gave wrong gradients on an H200 (round 6: the chunk kernels at block_t=32 with block_j=8
had gr / gk 3.4e-4 and glogd 2.6e-2 off, y exact; block_j, the walk kernels' key-channel block of their explicit
pairwise terms, is gone since round 27 - no kernel had it any more). Runs the op's CUDA test case under settings
that each change one thing, with ``check_gpu_blocks`` (which now refuses them) bypassed, and prints the relative
errors against float64:

    python benchmarks/v6_blocks_check.py [--out F.json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "ops"))  # the op tests' case runner

# the failing chunk length, then one change each: states every 64 tokens, exact fp32 dots, the walk kernels at the
# same chunk length, and the default (control)
CHUNK = {"algo": "chunk", "state_t": 128}
SETTINGS = {
    "bt32": dict(CHUNK, block_t=32),
    "bt32_st64": dict(CHUNK, block_t=32, state_t=64),
    "bt32_ieee": dict(CHUNK, block_t=32, fp32_precision="ieee"),
    "walk_bt32": {"algo": "walk", "block_t": 32},
    "default_st128": dict(CHUNK),
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="2,4096,6,64", help="B,T,H,N")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    from _triton_cases import run_v6

    from vision_rwkv.ops.bi_wkv6 import triton as tri

    tri.check_gpu_blocks = lambda block_t: None  # (what this script measures)
    shape = tuple(int(s) for s in args.shape.split(","))
    rows = {}
    for name, cfg in SETTINGS.items():
        res = run_v6(dict(shape=shape, config=cfg), args.device)
        rows[name] = res
        err = res.get("error", "").splitlines()[0][:120] if "error" in res else ""
        vals = " ".join(f"{k} {v:.1e}" for k, v in res.items() if isinstance(v, float))
        print(f"{name:16s} {err or vals}", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"shape": shape, "settings": SETTINGS, "results": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
