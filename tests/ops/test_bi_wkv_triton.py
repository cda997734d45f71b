"""Triton v4 Bi-WKV kernels vs float64 references: forward and all four gradients.

CPU: the kernels run under TRITON_INTERPRET=1 in one subprocess on tiny shapes (awkward sizes, T=1, k = +-60,
extreme decays, bf16/fp16, non-contiguous inputs, the public dispatcher, torch.compile without graph breaks).
CUDA (when present): the same checks at real shapes. Outputs are NaN-poisoned before every launch.
"""
import pytest
import torch

from _case_utils import quick_cases, quick_params
from _triton_cases import check, run_in_interpreter, run_v4

pytest.importorskip("triton")

# config overrides force the multi-chunk path (pass 1 + carry scan + pass 3) on tiny sequences
CHUNKED = {"single_max_t": 8, "chunk_t": 8, "carry_ncb": 2}

CPU_CASES = {
    "single_chunk": dict(shape=(2, 7, 5)),
    "T1": dict(shape=(1, 1, 3)),
    "chunked_T_not_multiple": dict(shape=(1, 19, 5), config=CHUNKED),
    "k_pm60_extreme_wT": dict(shape=(1, 12, 4), kpm=60.0, wT=[5.0, -5.0, 0.0, 1e-3], uT=[3.0, -3.0, 0.0, 1.0],
                              config=CHUNKED),
    "extreme_per_step_decay": dict(shape=(1, 13, 4), kscale=3.0, wstep=[20.0, -3.0, 2.0, 0.5], config=CHUNKED),
    "bf16": dict(shape=(1, 19, 5), dtype="bf16", config=CHUNKED),
    "fp16": dict(shape=(1, 9, 3), dtype="fp16"),
    "original_P4_subchunks": dict(shape=(1, 19, 3), mode="original", chunks=4, config={"chunk_t": 2}),
    "original_P32_S1": dict(shape=(1, 11, 3), mode="original", chunks=32),
    "original_single": dict(shape=(1, 6, 3), mode="original", chunks=1),
    # strong growth (w < 0) inside the |w| T < 88 contract, a ragged last chunk: the reference's gradient of w was NaN
    "original_growth_wT_m60": dict(shape=(1, 40, 4), mode="original", chunks=32, kscale=0.3,
                                   wT=[-60.0, -47.0, -30.0, 5.0], config=CHUNKED),
    "noncontig_transposed": dict(shape=(1, 10, 5), layout="T", config=CHUNKED),
    "noncontig_strided": dict(shape=(1, 6, 5), layout="S", mode="original", chunks=3),
    "public_api": dict(shape=(1, 6, 3), public_api=True),
    "torch_compile_fullgraph": dict(shape=(1, 6, 3), compile=True),
    # scale: the parameters passed as they are stored (the models' training call: scale = 1 / T, no division
    # launched), scaled by the kernels as they load them; the gradients are w.r.t. the stored values
    "scale_1_over_T_several_chunks": dict(shape=(2, 23, 5), scale=1 / 23, config=CHUNKED),
    "scale_single_chunk": dict(shape=(2, 7, 5), scale=1 / 7),
    "scale_original_bf16": dict(shape=(1, 19, 6), mode="original", chunks=4, dtype="bf16", scale=1 / 19,
                                config={"chunk_t": 2}),
    "scale_public_api_compile": dict(shape=(1, 6, 3), compile=True, scale=0.25),
}

# the register-sequential kernels (triton_seq.py, VRWKV_TRITON_V4 seq=1): every CPU case again with 4-token chunks
# (several chunks and carry blocks; 2-token sub-chunks of original chunks where the scan case splits them),
# 64 / 32 channels per program (two channel blocks for C=40)
SEQ = {"seq": 1, "seq_t": 4, "seq_t_orig": 4, "seq_bc": 64, "seq_bwd_bc": 32, "carry_ncb": 2}
CPU_CASES.update({f"{name}_seq": dict(case, config=dict(SEQ, seq_t_orig=2 if "config" in case and
                                                         case["config"].get("chunk_t") == 2 else 4))
                  for name, case in list(CPU_CASES.items())})
CPU_CASES.update({
    "seq_C40_two_channel_blocks": dict(shape=(2, 23, 40), config=SEQ),
    "seq_original_P3_C40": dict(shape=(2, 23, 40), mode="original", chunks=3, config=SEQ),
    "seq_original_bf16": dict(shape=(1, 19, 5), mode="original", chunks=4, dtype="bf16", config=SEQ),
    "seq_single_chunk_T8": dict(shape=(2, 7, 5), config=dict(SEQ, seq_t=8)),
    "seq_noncontig_strided": dict(shape=(1, 9, 5), layout="S", config=SEQ),
    # register caps on the forward / backward kernels (maxnreg: a launch option the interpreter ignores; the sm_90
    # compile and the CUDA cases check it)
    "seq_maxnreg": dict(shape=(2, 23, 40), config=dict(SEQ, seq_maxnreg=96, seq_bwd_maxnreg=128)),
    # exact mode's inline carries (seq_carry_inline: each chunk folds all chunk summaries itself, no carry kernel,
    # forward or backward) at the chunk-count limit, one chunk past it (the carry kernel), off (the default); original
    # mode always runs the carry kernel
    "seq_inline_carries_NC16": dict(shape=(2, 64, 5), kscale=3.0, config=dict(SEQ, seq_carry_inline=16),
                                    carry_launches=0),
    "seq_inline_carries_bf16_C40": dict(shape=(1, 37, 40), dtype="bf16", scale=1 / 37,
                                        config=dict(SEQ, seq_carry_inline=16), carry_launches=0),
    "seq_NC17_carry_kernel": dict(shape=(1, 65, 5), config=dict(SEQ, seq_carry_inline=16), carry_launches=2),
    "seq_carry_kernel_extreme_wT": dict(shape=(1, 12, 4), kpm=60.0, wT=[5.0, -5.0, 0.0, 1e-3],
                                        uT=[3.0, -3.0, 0.0, 1.0], config=dict(SEQ, seq_carry_inline=0),
                                        carry_launches=2),
    "seq_inline_carries_compile": dict(shape=(1, 13, 3), compile=True, config=dict(SEQ, seq_carry_inline=16),
                                       carry_launches=0),
    "seq_original_carry_kernel": dict(shape=(1, 19, 5), mode="original", chunks=2,
                                      config=dict(SEQ, seq_carry_inline=16), carry_launches=2),
})

# the default run's cases (every path once: chunked and single, both modes, 16-bit, non-contiguous, the public API
# and torch.compile, scale, the seq kernels); the rest run with --run-slow
QUICK = {"single_chunk", "T1", "chunked_T_not_multiple", "k_pm60_extreme_wT", "extreme_per_step_decay", "bf16", "fp16",
         "original_single", "original_growth_wT_m60", "noncontig_transposed", "public_api", "scale_single_chunk",
         "scale_public_api_compile",
         "single_chunk_seq", "T1_seq", "chunked_T_not_multiple_seq", "noncontig_strided_seq", "fp16_seq",
         "original_single_seq", "original_P32_S1_seq", "seq_single_chunk_T8", "seq_maxnreg",
         "seq_inline_carries_NC16", "seq_inline_carries_bf16_C40", "seq_NC17_carry_kernel",
         "seq_carry_kernel_extreme_wT", "seq_original_carry_kernel", "seq_inline_carries_compile"}

CUDA_CASES = {
    "exact_64x196x192": dict(shape=(64, 196, 192)),
    "exact_64x196x192_bf16": dict(shape=(64, 196, 192), dtype="bf16"),
    "exact_2x1024x64": dict(shape=(2, 1024, 64)),
    "exact_16x1024x384_bf16": dict(shape=(16, 1024, 384), dtype="bf16"),
    "exact_2x4096x96": dict(shape=(2, 4096, 96)),
    "exact_1x16384x192": dict(shape=(1, 16384, 192)),
    "exact_1x65537x8": dict(shape=(1, 65537, 8)),
    "exact_k_pm60": dict(shape=(4, 196, 64), kpm=60.0),
    "exact_extreme_per_step": dict(shape=(2, 300, 8), kscale=3.0, wstep=[20.0, -0.1, 2.0, 0.5, 1e-4, 0.0, 5.0, 1.0]),
    "exact_noncontig": dict(shape=(3, 300, 77), layout="T"),
    "exact_fp16": dict(shape=(8, 196, 192), dtype="fp16"),
    "original_8x196x192": dict(shape=(8, 196, 192), mode="original"),
    "original_2x1024x64_P16": dict(shape=(2, 1024, 64), mode="original", chunks=16),
    "original_2x4096x32": dict(shape=(2, 4096, 32), mode="original"),
    "original_bf16": dict(shape=(8, 196, 64), mode="original", dtype="bf16"),
    "original_growth_wT_m60": dict(shape=(2, 200, 8), mode="original", kscale=0.3,
                                   wT=[-60.0, -47.0, -30.0, -20.0, 0.0, 5.0, 20.0, 60.0]),
    "compile": dict(shape=(2, 196, 64), compile=True),
    "scale_64x196x192_bf16": dict(shape=(64, 196, 192), dtype="bf16", scale=1 / 196),
    "scale_original_8x196x192": dict(shape=(8, 196, 192), mode="original", scale=1 / 196),
}

CUDA_CASES.update({f"{name}_seq": dict(case, config={"seq": 1}) for name, case in list(CUDA_CASES.items())})
CUDA_CASES["exact_2x4096x96_seq32"] = dict(shape=(2, 4096, 96), config={"seq": 1, "seq_t": 32, "seq_bc": 64})
# 196 tokens are 13 chunks (300: 19): the carry kernel by default, inline carries with seq_carry_inline=32
CUDA_CASES["exact_64x196x192_bf16_seq"]["carry_launches"] = 2
for _name in ("exact_64x196x192_bf16", "exact_k_pm60", "exact_extreme_per_step", "scale_64x196x192_bf16"):
    CUDA_CASES[f"{_name}_seq_inline"] = dict(CUDA_CASES[_name], carry_launches=0,
                                             config={"seq": 1, "seq_carry_inline": 32})
CUDA_CASES.update({f"{name}_seq_r96": dict(case, config={"seq": 1, "seq_maxnreg": 96, "seq_bwd_maxnreg": 128})
                   for name, case in list(CUDA_CASES.items()) if name in (
                       "exact_16x1024x384_bf16", "exact_1x16384x192", "original_8x196x192", "exact_k_pm60")})


@pytest.fixture(scope="module")
def interpreter_results(run_slow):
    return run_in_interpreter("bi_wkv", quick_cases(CPU_CASES, QUICK, run_slow))


@pytest.mark.parametrize("name", quick_params(list(CPU_CASES), QUICK))
def test_bi_wkv_triton_interpreter(interpreter_results, name):
    check(interpreter_results[name], CPU_CASES[name].get("dtype", "fp32"), "bi_wkv", CPU_CASES[name]["shape"][1])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", list(CUDA_CASES))
def test_bi_wkv_triton_cuda(name, monkeypatch):
    monkeypatch.setenv("VRWKV_TRITON_DEBUG", "1")
    case = CUDA_CASES[name]
    check(run_v4(case, "cuda"), case.get("dtype", "fp32"), "bi_wkv", case["shape"][1])


def test_backward_out_buffers_are_checked():
    """``_bwd(..., out=(gk, gv))`` writes the caller's buffers (the v4 token mix's step passes slices of one stacked
    gradient); a buffer of the wrong shape, dtype or layout is refused by name."""
    from vision_rwkv.ops.bi_wkv.triton import bwd_buffers

    w, u, k, v = torch.randn(8), torch.randn(8), torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    stacked = torch.empty(3, 10, 8)
    gk, gv = (t.view(2, 5, 8) for t in stacked.unbind(0)[:2])
    got = bwd_buffers(w, u, k, v, 3, (gk, gv))
    assert got[2] is gk and got[3] is gv and got[4].shape == (2, 6, 8)
    with pytest.raises(ValueError, match="out gv must be a contiguous"):
        bwd_buffers(w, u, k, v, 3, (gk, torch.empty(2, 8, 5).transpose(1, 2)))
    with pytest.raises(ValueError, match=r"out gk must be a contiguous \(2, 5, 8\) torch.float32"):
        bwd_buffers(w, u, k, v, 3, (gk.bfloat16(), gv))
