"""The one-node mixers of eager training (``vision_rwkv.ops.fused.mixer_steps_triton``): each of the RWKV-6 time mix,
the v4 token mix and the channel mix as ONE autograd node gives the output and the input / parameter gradients of the
per-op fused path (which they replace; tight tolerance) and of the float64 plain path (kernel tolerance).

CPU: the Triton kernels under TRITON_INTERPRET=1 in one subprocess, NaN-poisoned, on awkward shapes: non-square grids
and 1 x W grids, token counts not a multiple of the kernel tiles, batch 1, widths that are odd multiples of 8, head
sizes that are not powers of two, fp32 and bf16 / fp16 autocast (W2 of the v6 LoRA kept in fp32 under fp16), the v4
"original" WKV mode, the channel mix's two parameter styles, frozen parameters; and with the block's residual add +
LayerNorm inside the node (pre- and post-norm, layer scale, drop-path factors), against the same mixer followed by
``add_norm``; and given its matrices cast outside the node (``cast=``, as a backbone's once-per-step cast): bit for
bit the same. CUDA (when present): real shapes.
"""
import pytest
import torch

from _case_utils import quick_cases, quick_params, run_script_in_interpreter

pytest.importorskip("triton")

TM, SM, CM = "time_mix6", "spatial_mix", "channel_mix"
CPU_CASES = {
    # the v4 tile kernels (seq=0): the spatial mix step's backward then takes d y, not the gate (its other branch)
    "sm_tile_kernels_1x9": dict(kind=SM, kwargs=dict(dim=24), grid=(1, 9), batch=2, v4_config=dict(seq=0)),
    "tm6_grid3x5_C48_h16": dict(kind=TM, kwargs=dict(dim=48, head_size=16), grid=(3, 5), batch=2),
    "tm6_batch1_1x7_bf16": dict(kind=TM, kwargs=dict(dim=32, head_size=32), grid=(1, 7), batch=1, dtype="bf16"),
    "tm6_head12_rank32": dict(kind=TM, kwargs=dict(dim=36, head_size=12, mix_rank=32, decay_rank=24), grid=(4, 3),
                              batch=2),
    "tm6_fp16_w2_fp32": dict(kind=TM, kwargs=dict(dim=32, head_size=16), grid=(2, 3), batch=2, dtype="fp16"),
    "tm6_frozen_lora": dict(kind=TM, kwargs=dict(dim=32, head_size=16), grid=(3, 3), batch=1,
                            frozen=("time_maa_w1", "time_maa_w2", "gate.weight", "time_faaaa")),
    "sm_grid3x4_C40": dict(kind=SM, kwargs=dict(dim=40), grid=(3, 4), batch=2),
    "sm_original_bf16": dict(kind=SM, kwargs=dict(dim=24, mode="original", chunks=3), grid=(5, 7), batch=1,
                             dtype="bf16"),
    "sm_1x9_frozen_decay": dict(kind=SM, kwargs=dict(dim=16), grid=(1, 9), batch=2,
                                frozen=("spatial_decay", "key.weight")),
    "cm_v4_C24_hidden72": dict(kind=CM, kwargs=dict(dim=24, hidden=72), grid=(3, 5), batch=2),
    "cm_maa_head8_bf16": dict(kind=CM, kwargs=dict(dim=24, hidden=40, head_size=8, style="rwkv_clip_text"),
                              grid=(2, 5), batch=1, dtype="bf16"),
    "cm_fp16": dict(kind=CM, kwargs=dict(dim=16, hidden=48), grid=(4, 4), batch=1, dtype="fp16"),
    # the block's residual add + LayerNorm in the node (ResidualNorm): pre-norm with layer scale and drop path,
    # post-norm under bf16 autocast, pre-norm plain
    "tm6_residual_pre_gamma_drop": dict(kind=TM, kwargs=dict(dim=32, head_size=16), grid=(3, 3), batch=3,
                                        residual=dict(post=False, gamma=True, scale=True)),
    "sm_residual_post_drop_bf16": dict(kind=SM, kwargs=dict(dim=24), grid=(2, 5), batch=2, dtype="bf16",
                                       residual=dict(post=True, gamma=False, scale=True)),
    "cm_residual_pre": dict(kind=CM, kwargs=dict(dim=24, hidden=40), grid=(3, 4), batch=2,
                            residual=dict(post=False, gamma=False, scale=False)),
    "cm_residual_post_gamma": dict(kind=CM, kwargs=dict(dim=16, hidden=24, head_size=8, style="rwkv_clip_text"),
                                   grid=(1, 6), batch=1, residual=dict(post=True, gamma=True, scale=False)),
    # (the channel mix's receptance gate is formed inside the residual kernels, forward and backward)
    "cm_residual_pre_gamma_drop_bf16": dict(kind=CM, kwargs=dict(dim=24, hidden=48), grid=(3, 3), batch=3,
                                            dtype="bf16", residual=dict(post=False, gamma=True, scale=True)),
}
# the default run's cases (each mixer, 16-bit autocast, frozen parameters, pre- and post-norm residuals); the rest
# (larger grids, the "original" mode) run with --run-slow
QUICK = {"sm_tile_kernels_1x9", "tm6_batch1_1x7_bf16", "tm6_fp16_w2_fp32", "tm6_frozen_lora", "sm_1x9_frozen_decay",
         "cm_v4_C24_hidden72", "cm_maa_head8_bf16", "cm_fp16", "tm6_residual_pre_gamma_drop", "cm_residual_pre",
         "cm_residual_post_gamma", "cm_residual_pre_gamma_drop_bf16"}
NODES = {TM: "_TimeMix6StepBackward", SM: "_SpatialMixStepBackward", CM: "_ChannelMixStepBackward"}
# (vs the float64 plain path, vs the per-op fused path) for the output and for the gradients, per dtype
TOLS = {"fp32": ((1e-5, 1e-4), (1e-6, 1e-5)), "bf16": ((2e-2, 5e-2), (1e-2, 2e-2)),
        "fp16": ((3e-3, 1e-2), (2e-3, 5e-3))}


def _interpreted(cases: dict) -> dict:
    """The cases run by ``_mixer_step_cases.py`` under the Triton interpreter (one subprocess)."""
    return run_script_in_interpreter(__file__.replace("test_mixer_steps.py", "_mixer_step_cases.py"),
                                     [__import__("json").dumps(cases)], timeout=900)


@pytest.fixture(scope="module")
def cpu_results(run_slow):
    return _interpreted(quick_cases(CPU_CASES, QUICK, run_slow))


def check(case: dict, res: dict, tols=None) -> None:
    assert "error" not in res, res.get("error")
    assert res["finite"], f"non-finite output or gradient (unwritten element?): {res}"
    assert res["dtype_ok"], res
    assert res["node"] == NODES[case["kind"]], res["node"]  # the one-node mixer ran
    # its matrices cast to the autocast dtype in one launch, their gradients back in one; none cast per weight (but
    # for the fp32 W2 under fp16, which the Q-Shift + LoRA backward casts to recompute the LoRA offsets, as per op)
    fp16_w2 = case["kind"] == TM and case.get("dtype") == "fp16"
    assert res["weight_casts"] == (1 if fp16_w2 else 0), res
    assert res["foreach_copies"] == (0 if case.get("dtype", "fp32") == "fp32" else 2), res
    assert res["grads"] == res["ref_grads"] == res["op_grads"], res  # the same leaves got gradients
    # given its matrices cast outside (cast=, as a backbone's once-per-step cast): the same node and results
    assert res["precast_node"] == res["node"] and res["precast_grads"] == res["grads"], res
    assert res["precast_diff"] == 0.0, res
    assert not set(case.get("frozen", ())) & set(res["grads"]), res["grads"]
    (ref_y, ref_g), (op_y, op_g) = tols or TOLS[case.get("dtype", "fp32")]
    for key, val in res.items():
        if key.startswith("g:"):
            tol = case.get("loose_grads", {}).get(key[2:], ref_g)
            assert val <= tol, f"{key} vs float64 plain: {val:.3e} > {tol} ({res})"
        elif key.startswith("op_g:"):
            assert val <= op_g, f"{key} vs per-op path: {val:.3e} > {op_g} ({res})"
    assert res["y"] <= ref_y and res["op_y"] <= op_y, res
    if "residual" in case:  # the residual's gradients too, and n (pre-norm) or none (post-norm) from every path
        expected = {"res:x", "res:weight", "res:bias"} | ({"res:gamma"} if case["residual"].get("gamma") else set())
        assert expected <= set(res["grads"]), res["grads"]
        assert res["has_n"] == [not case["residual"]["post"]] * 3, res["has_n"]
        if not case["residual"]["post"]:
            assert res["n"] <= ref_y and res["op_n"] <= op_y, res


@pytest.mark.parametrize("name", quick_params(sorted(CPU_CASES), QUICK))
def test_mixer_step_matches_per_op_and_plain_interpreter(cpu_results, name):
    check(CPU_CASES[name], cpu_results[name])


INFER_CASES = {
    "tm6_infer_grid3x5_residual": dict(kind=TM, kwargs=dict(dim=48, head_size=16), grid=(3, 5), batch=2, infer=True,
                                       residual=True),
    "tm6_infer_bf16_1x7": dict(kind=TM, kwargs=dict(dim=32, head_size=32), grid=(1, 7), batch=1, dtype="bf16",
                               infer=True),
    "sm_infer_original_residual": dict(kind=SM, kwargs=dict(dim=24, mode="original", chunks=3), grid=(5, 7), batch=1,
                                       infer=True, residual=True),
    "sm_infer_bf16": dict(kind=SM, kwargs=dict(dim=40), grid=(3, 4), batch=2, dtype="bf16", infer=True),
    "cm_infer_maa_head8_residual": dict(kind=CM, kwargs=dict(dim=24, hidden=40, head_size=8, style="rwkv_clip_text"),
                                        grid=(2, 5), batch=1, infer=True, residual=True),
    # the receptance gate inside the residual kernel (channel mix + residual in inference): v4 style, bf16, layer
    # scale; post-norm (the S models' blocks)
    "cm_infer_bf16_gamma_residual": dict(kind=CM, kwargs=dict(dim=40, hidden=56), grid=(3, 4), batch=2,
                                         dtype="bf16", infer=True, residual={"gamma": True}),
    "cm_infer_post_residual": dict(kind=CM, kwargs=dict(dim=24, hidden=40), grid=(2, 3), batch=1, infer=True,
                                   residual={"post": True, "gamma": True}),
}

QUICK_INFER = {"tm6_infer_bf16_1x7", "sm_infer_bf16", "cm_infer_maa_head8_residual",  # (the rest: --run-slow)
               "cm_infer_bf16_gamma_residual", "cm_infer_post_residual"}


@pytest.fixture(scope="module")
def infer_results(run_slow):
    return _interpreted(quick_cases(INFER_CASES, QUICK_INFER, run_slow))


def check_infer(case: dict, res: dict, tols=None) -> None:
    assert "error" not in res, res.get("error")
    assert res["finite"], res
    assert res["lean_calls"] == 3, res  # the step's inference form ran (3 calls without grad mode)
    assert res["casts_again"] == 0, res  # the cast / stacked matrices were kept from the first call
    (ref_y, _), (op_y, _) = tols or TOLS[case.get("dtype", "fp32")]
    assert res["y"] <= ref_y and res["op_y"] <= op_y and res["y_updated"] <= op_y, res  # and followed the update
    if case.get("residual"):
        assert res["in_place"], res  # s written into the residual x


@pytest.mark.parametrize("name", quick_params(sorted(INFER_CASES), QUICK_INFER))
def test_mixer_step_inference_interpreter(infer_results, name):
    """Eager inference: each mixer as one call (no per-op wrappers) gives the per-op path's output (and, with the
    block's residual add + LayerNorm, its s in place and n), keeps its cast matrices across calls and follows
    in-place parameter updates."""
    check_infer(INFER_CASES[name], infer_results[name])


def test_mixer_step_residual_errors():
    """The steps take a residual of the mixer's input shape, not an inplace one (that is eager inference's)."""
    from vision_rwkv.ops import fused

    steps = fused.mixer_steps()
    x = torch.randn(2, 6, 8)
    mix, weights = (torch.rand(8), torch.rand(8)), (torch.randn(16, 8), torch.randn(8, 16), torch.randn(8, 8))
    ln = (torch.ones(8), torch.zeros(8))
    with pytest.raises(ValueError, match="inplace residual"):
        steps.channel_mix_step(x, (2, 3), 0, True, torch.float32, mix, weights,
                               residual=fused.ResidualNorm(torch.randn(2, 6, 8), None, *ln, inplace=True))
    with pytest.raises(ValueError, match=r"residual x of shape \(2, 5, 8\) does not match"):
        steps.channel_mix_step(x, (2, 3), 0, True, torch.float32, mix, weights,
                               residual=fused.ResidualNorm(torch.randn(2, 5, 8), None, *ln))


# bf16 vs the float64 plain path, the decay's gradients of an RWKV-6 time mix: on an H200 (round 7) 5.5-6.2%
# relative (time_maa_w, time_decay, time_decay_w1) with the step and the per-op path bit-identical - the bf16 inputs
# of the WKV carried through the log-decay gradient's cancellation (d - e), not a kernel's error
DECAY_GRADS_BF16 = dict.fromkeys(("time_decay", "time_decay_w1", "time_decay_w2", "time_maa_w"), 0.1)
CUDA_CASES = {
    "tm6_vrwkv6_t": dict(kind=TM, kwargs=dict(dim=192, head_size=64, mix_rank=32, decay_rank=64), grid=(14, 14),
                         batch=4, dtype="bf16", loose_grads=DECAY_GRADS_BF16),
    "tm6_clip_head80": dict(kind=TM, kwargs=dict(dim=160, head_size=80, mix_rank=32, decay_rank=64), grid=(9, 11),
                            batch=2),
    "sm_vrwkv_t": dict(kind=SM, kwargs=dict(dim=192), grid=(14, 14), batch=4, dtype="bf16"),
    "sm_vrwkv_s_fp32": dict(kind=SM, kwargs=dict(dim=384), grid=(13, 17), batch=2),
    "cm_vrwkv_t": dict(kind=CM, kwargs=dict(dim=192, hidden=768), grid=(14, 14), batch=4, dtype="bf16"),
    "cm_v6_head64_fp32": dict(kind=CM, kwargs=dict(dim=128, hidden=448, head_size=64), grid=(7, 9), batch=2),
    "tm6_residual_vrwkv6_t": dict(kind=TM, kwargs=dict(dim=192, head_size=64, mix_rank=32, decay_rank=64),
                                  grid=(14, 14), batch=4, dtype="bf16", residual=dict(post=False, gamma=True,
                                                                                      scale=True),
                                  loose_grads=DECAY_GRADS_BF16),
    "sm_residual_post_fp32": dict(kind=SM, kwargs=dict(dim=384), grid=(13, 17), batch=2,
                                  residual=dict(post=True, gamma=True, scale=True)),
    # (the receptance gate inside the residual kernels, forward and backward, at VRWKV-T's width)
    "cm_residual_vrwkv_t": dict(kind=CM, kwargs=dict(dim=192, hidden=768), grid=(14, 14), batch=4, dtype="bf16",
                                residual=dict(post=False, gamma=True, scale=True)),
}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ["tm6_vrwkv6_t", "sm_vrwkv_t", "cm_vrwkv_t"])
def test_mixer_step_inference_cuda(name, monkeypatch):
    from _mixer_step_cases import run_infer_case

    monkeypatch.setenv("VRWKV_TRITON_DEBUG", "1")
    case = dict(CUDA_CASES[name], infer=True, residual=True)
    ref = TOLS[case.get("dtype", "fp32")][0]
    check_infer(case, run_infer_case(case, device="cuda"), (ref, ref))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", sorted(CUDA_CASES))
def test_mixer_step_cuda(name, monkeypatch):
    from _mixer_step_cases import run_case

    monkeypatch.setenv("VRWKV_TRITON_DEBUG", "1")
    case = CUDA_CASES[name]
    # cuBLAS may pick other GEMM algorithms (summation orders) for the two paths' products: step vs per-op within
    # the plain path's tolerance there
    ref = TOLS[case.get("dtype", "fp32")][0]
    check(case, run_case(case, device="cuda"), (ref, ref))
