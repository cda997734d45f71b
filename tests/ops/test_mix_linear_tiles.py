"""The default tiles of the GEMMs that form their operand while loading it (``mix_linear_triton._tiles``: the Q-Shift
interpolation; ``norm_linear_triton._tiles``: the RWKV-6 GroupNorm * gate): the rules, and that they compile for an
H100 (sm_90) without spilling registers at the models' widths - checked on CPU with the ahead-of-time compile of
``vision_rwkv.kernel_report``. The interpreter tests (``test_fused_triton.py``) check what the kernels compute."""
import pytest
import torch

pytest.importorskip("triton")
from vision_rwkv.kernel_report import capture_kernels, cuobjdump_path, kernel_rows  # noqa: E402
from vision_rwkv.ops.fused import mix_group_triton, mix_linear_triton, norm_linear_triton  # noqa: E402

AUTO = dict(bm=0, bn=0, warps=0)


@pytest.mark.parametrize("n, dtype, expected", [
    (192, torch.bfloat16, (128, 256, 8)),  # a whole row of VRWKV-T's projections per program
    (768, torch.float16, (128, 256, 8)),
    (40, torch.bfloat16, (128, 64, 8)),
    (192, torch.float32, (64, 64, 8)),
    (768, torch.float32, (64, 128, 8)),
])
def test_auto_tiles(n, dtype, expected):
    assert mix_linear_triton._tiles(n, dtype, AUTO) == expected


@pytest.mark.parametrize("act, expected", [("relu_square", (128, 256, 8)), ("sigmoid_mul", (128, 128, 8)),
                                           ("tanh", (128, 128, 8))])
def test_auto_tiles_by_epilogue(act, expected):
    """The gate's and tanh's epilogues hold more per output: at most 128 columns (256 spill)."""
    assert mix_linear_triton._tiles(768, torch.bfloat16, AUTO, act) == expected
    assert mix_linear_triton._tiles(768, torch.float32, AUTO, act) == (64, 128, 8)


@pytest.mark.parametrize("n, dtype, expected", [
    (192, torch.bfloat16, (128, 128, 8)), (768, torch.float16, (128, 128, 8)), (64, torch.bfloat16, (64, 64, 8)),
    (384, torch.float32, (64, 64, 8))])
def test_auto_tiles_norm_gemm(n, dtype, expected):
    assert norm_linear_triton._tiles(n, dtype, AUTO) == expected


def test_set_tiles_win():
    assert mix_linear_triton._tiles(192, torch.bfloat16, dict(bm=64, bn=0, warps=0)) == (64, 256, 4)
    assert mix_linear_triton._tiles(192, torch.bfloat16, dict(bm=0, bn=64, warps=4)) == (128, 64, 4)
    assert mix_linear_triton._tiles(192, torch.float32, dict(bm=32, bn=32, warps=2)) == (32, 32, 2)
    assert norm_linear_triton._tiles(192, torch.bfloat16, dict(bm=0, bn=256, warps=4)) == (128, 256, 4)


@pytest.mark.slow
@pytest.mark.skipif(cuobjdump_path() is None, reason="Triton's NVIDIA backend tools (ptxas) not found")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_default_tiles_do_not_spill_on_sm90(dtype, monkeypatch):
    """At 1024 px, default settings: the token mixes' projection groups (VRWKV-T / -B v4 key + value + receptance;
    VRWKV6-T / -B with the LoRA offsets), single projections with each epilogue, and the VRWKV6 output projections
    (T / S / B): registers only, no local memory, shared memory within a block's."""
    monkeypatch.setitem(mix_linear_triton.CONFIG, "bm", 0)  # the defaults, whatever the environment set
    monkeypatch.setitem(mix_linear_triton.CONFIG, "bn", 0)
    monkeypatch.setitem(mix_linear_triton.CONFIG, "warps", 0)
    monkeypatch.setitem(mix_linear_triton.CONFIG, "bk", 32)
    monkeypatch.setitem(mix_linear_triton.CONFIG, "stages", 2)
    for key in ("bm", "bn", "warps"):
        monkeypatch.setitem(norm_linear_triton.CONFIG, key, 0)
    monkeypatch.setitem(norm_linear_triton.CONFIG, "stages", 2)
    rows = []
    for C, lora in ((192, False), (768, False), (192, True), (768, True)):
        P = 4 if lora else 3
        x = torch.empty(1, 4096, C, dtype=dtype)
        coefs = [torch.empty(C, dtype=dtype) for _ in range(P)]
        weights = [torch.empty(C, C, dtype=dtype) for _ in range(P)]
        h = torch.empty(1, 4096, P * 32, dtype=dtype) if lora else None
        w2 = torch.empty(P, 32, C, dtype=dtype) if lora else None
        with capture_kernels(90, tag=f"C{C}{'_lora' if lora else ''}") as recs:
            mix_group_triton._group_fwd(x, 64, 64, 64 if lora else 0, h, w2, not lora, coefs, weights)
        rows += kernel_rows(recs)
    for C in (192, 768):  # one projection with each epilogue: the channel mix's key (relu^2) and receptance (the
        # gate on y, pre-activation saved as in training), the RWKV-6 decay LoRA's first stage (tanh, LoRA offset)
        for act, n, lora in (("relu_square", 4 * C, False), ("sigmoid_mul", C, False), ("tanh", 160, True)):
            x = torch.empty(1, 4096, C, dtype=dtype)
            y = torch.empty(1, 4096, n, dtype=dtype) if act == "sigmoid_mul" else None
            h, w2 = (torch.empty(1, 4096, 32, dtype=dtype), torch.empty(32, C, dtype=dtype)) if lora else (None, None)
            with capture_kernels(90, tag=f"{act}_C{C}") as recs:
                mix_linear_triton._fwd(x, 64, 64, 64 if lora else 0, torch.empty(C, dtype=dtype), h, w2,
                                       torch.empty(n, C, dtype=dtype), y, not lora, act,
                                       save_pre=act == "sigmoid_mul")
            rows += kernel_rows(recs)
    for C in (192, 384, 768):  # the VRWKV6 output projection on GroupNorm(y) * silu(gate), heads of 64
        y = torch.empty(1, 4096, C, dtype=dtype)
        with capture_kernels(90, tag=f"norm_C{C}") as recs:
            norm_linear_triton._fwd(y, y, C // 64, torch.empty(C), torch.empty(C), 1e-5, True,
                                    torch.empty(C, C, dtype=dtype))
        rows += kernel_rows(recs)
    assert len(rows) == 13
    bad = [(r["tag"], r["regs"], r["local"], r["local_bytes"]) for r in rows if r["local"] or r["local_bytes"]]
    assert not bad, f"register spills (tag, registers, local-memory instructions, bytes): {bad}"
    assert all(r["shared"] <= 227 * 1024 for r in rows), [(r["tag"], r["shared"]) for r in rows]
