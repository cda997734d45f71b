"""The bidirectional RWKV-6 WKV through flash-linear-attention (``fla_route.py``, ``VRWKV_TRITON_V6=algo=fla``).

On CPU fla's kernels do not run (its Triton kernels fail in the interpreter), so fla's entry points are stood in for
by the float64 loop of ``_fla_standin.py`` and what is checked is the route itself against the float64 naive
BiWKV6: the reversed pass on flipped, contiguous copies without the bonus, the fp32 sum, the clamp of log decays below
e^-60 and its zero derivative, the dtypes, the recomputed scores handed to each pass's backward; and the errors for a
missing or too different fla. ``test_bi_wkv6_triton.py`` runs the route through the kernels' entry points (fused
decay, GroupNorm, the chunk forward with the fla backward), and on a GPU with the real package.
"""
import pytest
import torch

from _fla_standin import installed
from _triton_cases import _maybe_noncontig, v6_inputs
from vision_rwkv.ops.bi_wkv6 import fla_route
from vision_rwkv.ops.bi_wkv6.reference import bi_wkv6_naive

LOGD_MIN = -60.0

CASES = {
    "fp32_T_not_multiple": dict(shape=(2, 21, 2, 16), dtype=torch.float32, tol=(1e-6, 1e-6)),
    "T1": dict(shape=(1, 1, 1, 16), dtype=torch.float32, tol=(1e-6, 1e-6)),
    "weak_decays": dict(shape=(1, 40, 2, 16), dtype=torch.float32, dshift=-3.0, tol=(1e-6, 1e-6)),
    "extreme_decays_inf": dict(shape=(1, 17, 1, 16), dtype=torch.float32, logd_const=float("-inf"), dshift=-3.0,
                               tol=(1e-6, 1e-6)),
    "extreme_decays_inf_bf16_noncontig": dict(shape=(2, 19, 2, 16), dtype=torch.bfloat16, logd_const=float("-inf"),
                                              dshift=-3.0, layout="T", tol=(1e-2, 1e-2)),
    "bf16_logd_fp32_noncontig": dict(shape=(2, 13, 2, 16), dtype=torch.bfloat16, logd_fp32=True, layout="T",
                                     tol=(1e-2, 1e-2)),
}


def _inputs(case):
    B, T, H, N = case["shape"]
    r, k, v, logd, u, gy = v6_inputs(B, T, H, N, case["dtype"], "cpu", dshift=case.get("dshift", 0.0),
                                     logd_const=case.get("logd_const"))
    if case.get("logd_fp32"):
        logd = logd.float()
    r, k, v, logd = (_maybe_noncontig(x, case.get("layout", "")) for x in (r, k, v, logd))
    return r, k, v, logd, u, gy


def _rel(a, b):
    return ((a.double() - b).norm() / b.norm().clamp_min(1e-30)).item()


@pytest.mark.parametrize("name", list(CASES))
def test_route_matches_naive(name):
    case = CASES[name]
    r, k, v, logd, u, gy = _inputs(case)
    with installed():
        y = fla_route.bi_fwd(r, k, v, logd, u, LOGD_MIN)
        grads = fla_route.bi_bwd(r, k, v, logd, u, gy, LOGD_MIN)
    ref_in = [x.detach().double().clamp_min(-1e4).requires_grad_() for x in (r, k, v, logd, u)]
    y_ref = bi_wkv6_naive(*ref_in)
    g_ref = torch.autograd.grad(y_ref, ref_in, gy.double())
    assert y.dtype == v.dtype and [g.dtype for g in grads] == [x.dtype for x in (r, k, v, logd, u)]
    tol_y, tol_g = case["tol"]
    assert _rel(y, y_ref) <= tol_y, (name, _rel(y, y_ref))
    for gname, g, gr in zip(("gr", "gk", "gv", "glogd", "gu"), grads, g_ref):
        assert torch.isfinite(g).all(), gname
        assert _rel(g, gr) <= tol_g, (name, gname, _rel(g, gr))
    clamped = logd.float() < LOGD_MIN
    if clamped.any():  # the clamp's derivative: exactly 0 (the stand-in's gradient of a clamped decay is not)
        assert (grads[3][clamped] == 0).all()


def test_missing_fla_names_the_package(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "fla", None)  # (import fla then raises ImportError)
    x = torch.randn(1, 3, 1, 16)
    with pytest.raises(RuntimeError, match="needs flash-linear-attention"):
        fla_route.bi_fwd(x, x, x, -x.exp(), torch.randn(1, 16), LOGD_MIN)


def test_fla_without_the_entry_points_is_named():
    x = torch.randn(1, 3, 1, 16)
    with installed() as chunk:
        del chunk.chunk_rwkv6_fwd_intra
        with pytest.raises(RuntimeError, match="lacks chunk_rwkv6_fwd_intra"):
            fla_route.bi_bwd(x, x, x, -x.exp(), torch.randn(1, 16), x, LOGD_MIN)


def test_algo_fla_is_a_config_choice(monkeypatch):
    """``algo`` / ``bwd_algo`` accept 'fla' (never the chunk kernels then); other names are refused by key."""
    from vision_rwkv.ops.bi_wkv6 import triton as v6

    monkeypatch.setitem(v6.CONFIG, "algo", "fla")
    monkeypatch.setitem(v6.CONFIG, "bwd_algo", "")
    assert v6._algo() == "fla" and v6._algo(backward=True) == "fla" and not v6._chunk_algo(64, 1024, 16)
    monkeypatch.setitem(v6.CONFIG, "algo", "chunk")
    monkeypatch.setitem(v6.CONFIG, "bwd_algo", "fla")
    assert v6._chunk_algo(64, 1024, 16) and not v6._chunk_algo(64, 1024, 16, backward=True)
    monkeypatch.setitem(v6.CONFIG, "algo", "flash")
    with pytest.raises(ValueError, match="algo must be 'walk', 'chunk' or 'fla'"):
        v6._algo()
