"""The v4 WKV forward with its output gate (``bi_wkv.triton._fwd(..., gate=g)``: sigmoid(g) * y, what the inference
token mix feeds its output projection) against the ungated forward gated afterwards - seq kernels (the gate formed
as y is stored) and tile kernels (gated after), both modes, single and chunked sequences, fp32 / bf16, a strided gate
(a slice of the stacked k / v / r projections, as the model passes it). CPU: the kernels under TRITON_INTERPRET=1 in
a subprocess (this file as a script), NaN-poisoned outputs."""
import json
import sys

import pytest
import torch

pytest.importorskip("triton")

CASES = {  # name -> (B, T, C, mode, dtype, seq)
    "seq_chunked": (2, 23, 40, "exact", "fp32", 1),
    "seq_single_bf16": (1, 7, 5, "exact", "bf16", 1),
    "seq_original_bf16": (2, 19, 24, "original", "bf16", 1),
    "tile_chunked": (2, 37, 40, "exact", "fp32", 0),
}


def _run(name):
    from vision_rwkv.ops.bi_wkv import triton as t4

    B, T, C, mode, dn, seq = CASES[name]
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dn]
    t4.CONFIG.update(seq=seq, seq_t=4, single_max_t=8, chunk_t=8)
    g = torch.Generator().manual_seed(0)
    w = (-5 + 8 * torch.rand(C, generator=g))
    u = torch.randn(C, generator=g)
    kvr = torch.randn(3, B, T, C, generator=g).to(dtype)  # (the model's stacked projections: r is a strided view)
    k, v, r = kvr.unbind(0)
    y, m, car = t4._fwd(w, u, k, v, mode, 3, 1.0 / T)
    gated, m2, car2 = t4._fwd(w, u, k, v, mode, 3, 1.0 / T, gate=r)
    ref = torch.sigmoid(r.float()) * y.float()
    err = float((gated.float() - ref).norm() / ref.norm())
    return {"err": err, "dtype_ok": gated.dtype == y.dtype, "finite": bool(torch.isfinite(gated).all()),
            "same_state": bool(torch.equal(m, m2)) and bool(torch.equal(car, car2))}


@pytest.fixture(scope="module")
def results():
    from _case_utils import run_script_in_interpreter

    return run_script_in_interpreter(__file__, [json.dumps(list(CASES))], timeout=600)


@pytest.mark.parametrize("name", list(CASES))
def test_gate_matches_gating_after(results, name):
    res = results[name]
    assert res["finite"] and res["dtype_ok"] and res["same_state"], res
    # fp32: one rounding apart; bf16: the gated product rounded once vs y rounded before the gate (1-2 ulps)
    assert res["err"] <= (1e-6 if CASES[name][4] == "fp32" else 8e-3), res


if __name__ == "__main__":
    print(json.dumps({name: _run(name) for name in json.loads(sys.argv[1])}))
