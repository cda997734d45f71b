"""Profiling / benchmark tooling (CPU): op grouping, labels restored, tables, benchmark plan, CLI smoke run."""
import json
import os
import sys
from pathlib import Path

import pytest
import torch

from vision_rwkv import profiling
from vision_rwkv.models import mixing, vrwkv, vrwkv6

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))


def test_classify_groups():
    c = profiling.classify
    assert c(["aten::copy_", "aten::zeros_like", "vrwkv::shift+lerp", "aten::linear"]) == "shift+lerp"
    assert c(["aten::sum", "vision_rwkv::bi_wkv6_triton"], "_v6_fwd_kernel") == "WKV"
    assert c(["cuLaunchKernel", "vision_rwkv::token_shift_mix"], "_tsm_fwd_kernel") == "shift+lerp"
    assert c(["vision_rwkv::group_norm_mul"]) == "norms"
    assert c(["vision_rwkv::sigmoid_mul"]) == "elementwise/other"
    assert c(["vision_rwkv::linear_sigmoid_mul"], "_linear_act_kernel") == "GEMMs"
    assert c(["vision_rwkv::mix_linear"], "_mix_linear_kernel") == "GEMMs"
    assert c(["cuLaunchKernelEx"], "_mix_linear_kernel") == "GEMMs"  # eager: no custom op on the chain
    assert c(["cuLaunchKernelEx"], "_norm_linear_kernel") == "GEMMs"
    assert c(["vision_rwkv::mix_mlp"], "_mix_mlp_kernel") == "GEMMs" and c([], "_mix_mlp_kernel") == "GEMMs"
    assert c(["vision_rwkv::group_norm_mul_linear"], "_norm_linear_kernel") == "GEMMs"
    assert c(["cudaLaunchKernel", "aten::mm", "aten::matmul", "aten::linear"], "nvjet_x") == "GEMMs"
    assert c(["aten::_to_copy", "aten::to", "aten::linear"], "elementwise_kernel") == "casts/copies"
    assert c(["aten::_foreach_copy_"], "multi_tensor_apply_kernel") == "casts/copies"  # the mixers' weight casts
    assert c(["aten::native_layer_norm", "aten::layer_norm"]) == "norms"
    assert c(["aten::_scaled_dot_product_flash_attention"]) == "attention"
    assert c(["aten::sigmoid"], "vectorized_elementwise_kernel") == "elementwise/other"
    assert c([], "sm90_xmma_gemm_bf16") == "GEMMs"
    assert c([], "Memcpy DtoD") == "casts/copies"
    assert c(["cuLaunchKernelEx"], "_tsm_lora_fwd_kernel") == "shift+lerp"
    assert c(["cuLaunchKernelEx"], "_add_norm_fwd_kernel") == "norms"


def test_classify_backward_nodes():
    """A training step's backward: kernels under our autograd Functions' backward nodes go to the op's group (a
    Triton backward kernel's name alone would say elementwise), aten backward nodes keep the innermost aten op."""
    c = profiling.classify
    wkv6 = ["cuLaunchKernelEx", "_BiWKV6Backward", "autograd::engine::evaluate_function: _BiWKV6Backward"]
    assert c(wkv6, "_bwd_kernel") == "WKV" and c([], "_bwd_kernel") == "elementwise/other"
    assert c(["aten::cumsum", "_BiWKV6Backward"], "reduce_kernel") == "WKV"  # its host-side ops too
    assert c(["cuLaunchKernelEx", "_BiWKVBackward"], "_seq_bwd_kernel") == "WKV"
    assert c(["cuLaunchKernelEx", "_TokenShiftMixLoraBackward"], "_tsm_lora_bwd_kernel") == "shift+lerp"
    assert c(["cuLaunchKernelEx", "autograd::engine::evaluate_function: _AddNormBackward"], "x") == "norms"
    assert c(["aten::mm", "_BatchedLinearBackward"], "nvjet_x") == "GEMMs"
    assert c(["aten::_foreach_copy_", "_CastWeightsBackward"], "multi_tensor_apply_kernel") == "casts/copies"
    assert c(["cuLaunchKernelEx", "_ReluSquareInplaceBackward"], "_relu_square_bwd_from_out_kernel") == \
        "elementwise/other"
    assert c(["aten::mm", "MmBackward0", "autograd::engine::evaluate_function: MmBackward0"], "nvjet") == "GEMMs"
    assert c(["aten::native_layer_norm_backward", "NativeLayerNormBackward0"], "vectorized_kernel") == "norms"
    assert c(["aten::mul", "FooBackward0"], "elementwise_kernel") == "elementwise/other"


def test_label_model_calls_restores_functions(monkeypatch):
    """The labels wrap the models' op calls and the mixers run op by op (VRWKV_FUSED_STEP=0: the one-step mixers
    launch every kernel from one call) while profiling; functions and the variable are restored after."""
    from vision_rwkv.ops import fused

    names = [(mixing, "q_shift"), (mixing, "bi_shift_1d"), (mixing, "lerp_mix"), (mixing, "bi_wkv6"),
             (vrwkv, "bi_wkv"), (fused, "add_norm")]
    before = [getattr(mod, name) for mod, name in names]
    for value in (None, "1"):
        if value is None:
            monkeypatch.delenv("VRWKV_FUSED_STEP", raising=False)
        else:
            monkeypatch.setenv("VRWKV_FUSED_STEP", value)
        with profiling.label_model_calls():
            assert all(getattr(mod, name) is not fn for (mod, name), fn in zip(names, before))
            assert not fused.fused_step_enabled()
        assert [getattr(mod, name) for mod, name in names] == before
        assert os.environ.get("VRWKV_FUSED_STEP") == value


@pytest.mark.parametrize("name", ["VRWKV-T", "VRWKV6-T"])
def test_profile_cpu_groups_partition_time(name):
    model = profiling.build_backbone(name, 32, device="cpu").eval()
    x = torch.randn(1, 3, 32, 32)

    def fn():
        with torch.inference_mode():
            return model.forward_features(x)

    res = profiling.profile_backbone(fn, steps=1, warmup=1, device="cpu")
    shares = {g: v["share"] for g, v in res["groups"].items()}
    assert set(shares) == set(profiling.GROUPS)
    assert abs(sum(shares.values()) - 1) < 1e-6
    for g in ("WKV", "shift+lerp", "GEMMs", "norms"):
        assert shares[g] > 0, (g, shares)
    assert "| WKV |" in profiling.format_profile({"t": res})


def test_benchmark_plan_and_table():
    from benchmark_backbones import plan

    cfgs = plan(["VRWKV-T", "VRWKV-S"], [224, 1024], ["bf16", "fp32"], ["eager", "compile"], True, ["VRWKV-T"],
                compile_first=["VRWKV-T"])
    assert cfgs[0] == dict(model="VRWKV-T", res=224, dtype="bf16", mode="eager", kind="inference")
    assert dict(model="DeiT-T", res=224, dtype="bf16", mode="eager", kind="train") in cfgs
    assert dict(model="VRWKV-T", res=1024, dtype="bf16", mode="eager-unfused", kind="inference") in cfgs
    modes = [(c["mode"], c["dtype"], c["model"]) for c in cfgs]
    first_compile = modes.index(("compile", "bf16", "VRWKV-T"))
    assert first_compile < modes.index(("eager", "fp32", "VRWKV-T")) < modes.index(("compile", "bf16", "VRWKV-S"))
    assert ("compile-plain", "bf16", "VRWKV-T") in modes and ("compile-plain", "bf16", "VRWKV-S") not in modes
    assert cfgs[-1] == dict(model="DeiT-S", res=224, dtype="bf16", mode="compile", kind="train")
    compiled_train = [cfgs.index(dict(model=m, res=224, dtype="bf16", mode="compile", kind="train"))
                      for m in ("VRWKV-T", "DeiT-T")]  # the compile-first models' compiled training steps
    assert max(compiled_train) < modes.index(("eager", "fp32", "VRWKV-T"))
    results = [dict(model="VRWKV-T", res=1024, dtype="bf16", mode="eager", kind="inference", batch=16,
                    img_per_s=2400.0, peak_mem_GiB=0.5),
               dict(model="DeiT-T", res=1024, dtype="bf16", mode="eager", kind="inference", batch=16,
                    img_per_s=1000.0, peak_mem_GiB=0.6),
               dict(model="VRWKV-S", res=1024, dtype="bf16", mode="compile", kind="inference", batch=16,
                    error="RuntimeError: x")]
    anchors = {"inference": [dict(model="VRWKV-T", res=1024, dtype="bf16", img_per_s=473.0)]}
    table = profiling.format_benchmark(results, anchors)
    ours, deit = (round(img_s * 2 * profiling.forward_macs(m, 1024) / 1e12) for m, img_s in
                  (("VRWKV-T", 2400.0), ("DeiT-T", 1000.0)))
    assert (ours, deit) == (117, 199)  # (24.47 and 99.74 GMACs an image)
    assert f"| 2400 | 0.50 | 1000 | 2.40 | 0.60 | 473 | {ours} | {deit} |" in table
    assert "RuntimeError: x" in table
    train = dict(model="VRWKV-T", res=224, dtype="bf16", kind="train", img_per_s=1000.0)
    assert profiling.achieved_tflops(train) == pytest.approx(3 * 2 * 1000 * profiling.forward_macs("VRWKV-T", 224)
                                                            / 1e12)
    assert profiling.achieved_tflops(dict(model="other", res=224, img_per_s=1.0)) is None
    def broken(label, res):
        raise RuntimeError("no meta kernel")

    with pytest.MonkeyPatch.context() as mp, pytest.warns(UserWarning, match="no MAC count for VRWKV-T at 7 px"):
        mp.setattr(profiling, "forward_macs", broken)  # (a display column: the table is kept)
        assert profiling.achieved_tflops(dict(model="VRWKV-T", res=7, img_per_s=1.0)) is None
        assert "| 2400 | 0.50 | 1000 | 2.40 | 0.60 | 473 | - | - |" in profiling.format_benchmark(results, anchors)


def test_benchmark_skips_after_deadline():
    out = profiling.benchmark_backbones([dict(model="VRWKV-T", res=224, dtype="bf16")], deadline_s=-1)
    assert out[0]["skipped"] == "deadline"


def test_profile_cli_cpu(tmp_path, monkeypatch, capsys):
    """On CPU the models' fused path is off, so a "fused" column would profile the plain code a second time (a
    difference of noise presented as a path difference): one "plain" profile per model, and a note saying why."""
    import profile_backbone

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    res = profile_backbone.main(["--device", "cpu", "--models", "VRWKV6-T", "--img-size", "32", "--batch", "1",
                                 "--steps", "1", "--json", str(tmp_path / "p.json"), "--md", str(tmp_path / "p.md")])
    assert set(res) == {"VRWKV6-T plain"}
    assert res["VRWKV6-T plain"]["config"]["variant"] == "plain"
    assert json.loads((tmp_path / "p.json").read_text())["VRWKV6-T plain"]["total_ms"] > 0
    assert "top kernels" in (tmp_path / "p.md").read_text()
    assert "note: the models' fused path is off for cpu tensors" in capsys.readouterr().err


def test_profile_cli_compares_the_paths_where_the_fused_one_is_on(monkeypatch):
    """Fused path on (as on a GPU): both columns by default, ``--no-compare-unfused`` the fused one alone, and the
    ``--compare-unfused`` flag the docstring names exists."""
    import profile_backbone

    monkeypatch.setattr(profile_backbone, "fused_enabled", lambda x: True)
    monkeypatch.setattr(profile_backbone, "_workload", lambda label, args, dtype: (lambda: None))
    seen = []

    def fake_profile(fn, steps, device):
        seen.append(__import__("os").environ.get("VRWKV_FUSED"))
        return dict(top=[])
    monkeypatch.setattr(profile_backbone, "profile_backbone", fake_profile)
    monkeypatch.setattr(profile_backbone, "format_profile", lambda results: "")
    monkeypatch.delenv("VRWKV_FUSED", raising=False)
    base = ["--device", "cpu", "--models", "VRWKV-T", "--img-size", "32"]
    assert set(profile_backbone.main(base)) == {"VRWKV-T fused", "VRWKV-T plain"} and seen == [None, "0"]
    assert set(profile_backbone.main(base + ["--compare-unfused"])) == {"VRWKV-T fused", "VRWKV-T plain"}
    assert set(profile_backbone.main(base + ["--no-compare-unfused"])) == {"VRWKV-T fused"}


def test_profile_cli_train_cpu(tmp_path):
    """``--train``: one training step per model (ours and DeiT), every parameter trained, the groups partition it."""
    import profile_backbone

    res = profile_backbone.main(["--device", "cpu", "--train", "--models", "VRWKV-T", "DeiT-T", "--img-size", "32",
                                 "--batch", "2", "--steps", "1", "--no-compare-unfused",
                                 "--md", str(tmp_path / "p.md")])
    assert set(res) == {"VRWKV-T plain", "DeiT-T"}  # (CPU: the plain path, see test_profile_cli_cpu)
    for r in res.values():
        assert r["config"]["train"] is True
        assert abs(sum(g["share"] for g in r["groups"].values()) - 1) < 1e-6
        assert r["groups"]["GEMMs"]["ms"] > 0
    assert res["VRWKV-T plain"]["groups"]["WKV"]["ms"] > 0
    assert "training step (forward, backward, AdamW)" in (tmp_path / "p.md").read_text()
    kernels = {t["kernel"] for t in res["DeiT-T"]["top"]}
    assert any("backward" in k.lower() for k in kernels), kernels  # the backward was profiled


def test_train_step_trains():
    model = profiling.build_backbone("VRWKV-T", 32, num_classes=5, device="cpu")
    x, target = torch.randn(2, 3, 32, 32), torch.tensor([1, 3])
    before = [p.detach().clone() for p in model.parameters()]
    step = profiling.train_step(model, x, target, torch.bfloat16)
    step()
    assert model.training and all(p.grad is None for p in model.parameters())  # set to None after the step
    moved = [not torch.equal(p, b) for p, b in zip(model.parameters(), before)]
    assert sum(moved) > len(moved) // 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU-only check")
def test_benchmark_cli_needs_cuda(tmp_path):
    import benchmark_backbones

    with pytest.raises(SystemExit):
        benchmark_backbones.main(["--out", str(tmp_path / "b.json")])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ["vrwkv_small_patch16_224", "vrwkv6_tiny_patch16_224"])
def test_train_graph_capture_cuda(name):
    """The device run's CUDA-graph replay of a whole training step (bf16 autocast, drop path on the S model,
    capturable AdamW) captures, replays and trains: the weights move and stay finite."""
    import timm

    from vision_rwkv import benchmark as bm

    model = timm.create_model(name, img_size=64, num_classes=10, depth=2).cuda().train()
    x = torch.randn(4, 3, 64, 64, device="cuda")
    target = torch.randint(0, 10, (4,), device="cuda")
    before = [p.detach().clone() for p in model.parameters()]
    ms = bm.time_train_graph(model, x, target, torch.bfloat16, True, iters=3)
    assert ms > 0
    moved = [not torch.equal(p, b) for p, b in zip(model.parameters(), before)]
    assert sum(moved) > len(moved) // 2 and all(bool(torch.isfinite(p).all()) for p in model.parameters())
