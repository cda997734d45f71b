"""Fused Triton elementwise kernels (``vision_rwkv.ops.fused``) vs float64 references: output and every gradient.

CPU: the kernels run under TRITON_INTERPRET=1 in one subprocess on tiny, awkward shapes (1x1 and 1xW grids,
non-square grids, batch 1, C < 4 and odd C, head sizes that are not powers of two, token counts not a multiple of
the tile, bf16 / fp16 I/O, fp32 activations written as bf16, non-contiguous inputs, the public dispatcher through
torch.compile(fullgraph=True)). CUDA (when present): the same checks at real VRWKV shapes. Outputs are
NaN-poisoned before every launch.
"""
import pytest
import torch

from _fused_cases import check, run_case, run_in_interpreter

pytest.importorskip("triton")

TSM = "token_shift_mix"
_SMALL_GEMM = dict(bm=16, bn=16, bk=16, group_m=2)
CPU_CASES = {
    "tsm_v4_odd_C": dict(op=TSM, shape=(2, 3, 5, 7), M=3),
    "tsm_v4_C3_quarters_empty": dict(op=TSM, shape=(1, 4, 3, 3), M=2),
    "tsm_v4_1x1_grid": dict(op=TSM, shape=(3, 1, 1, 9), M=1),
    "tsm_v4_1xW_grid": dict(op=TSM, shape=(1, 1, 37, 5), M=3),
    "tsm_v4_Hx1_grid": dict(op=TSM, shape=(2, 35, 1, 6), M=2),
    "tsm_v4_many_tiles": dict(op=TSM, shape=(1, 9, 8, 70), M=3),
    "tsm_v6_head12_ddlerp": dict(op=TSM, shape=(2, 3, 4, 36), M=5, with_m=True, head_size=12),
    "tsm_v6_head6_ddlerp_bf16": dict(op=TSM, shape=(1, 5, 3, 12), M=5, with_m=True, head_size=6, dtype="bf16"),
    "tsm_fp32_in_bf16_out": dict(op=TSM, shape=(2, 4, 5, 8), M=3, out_dtype="bf16"),
    "tsm_fp16": dict(op=TSM, shape=(1, 3, 3, 8), M=2, dtype="fp16"),
    "tsm_noncontig": dict(op=TSM, shape=(2, 3, 3, 8), M=5, with_m=True, head_size=4, layout="T"),
    # split=True: M outputs whose gradients the backward kernel reads from M tensors (M <= 5; more: stacked)
    "tsm_split_v6_ddlerp": dict(op=TSM, shape=(2, 3, 4, 12), M=5, with_m=True, head_size=6, split=True),
    "tsm_split_one_bf16": dict(op=TSM, shape=(1, 4, 3, 8), M=1, dtype="bf16", split=True),
    "tsm_split_M7_stacked_fallback": dict(op=TSM, shape=(1, 3, 3, 8), M=7, split=True),
    # split=(groups): consecutive groups, a group of one as a plane (the models feed a group to one batched GEMM)
    "tsm_groups_2_1_bf16": dict(op=TSM, shape=(2, 3, 4, 12), M=3, split=(2, 1), dtype="bf16"),
    # vectors=True: the interpolation weights as M separate (1, 1, C) tensors read in place (the models' training
    # call: no stack per step), each gets its gradient; more than 5: stacked
    "tsm_vectors_v6_ddlerp_groups": dict(op=TSM, shape=(2, 3, 4, 12), M=5, with_m=True, head_size=6, vectors=True,
                                         split=(1, 4)),
    "shift_lerp_vectors_v4_odd_C": dict(op="shift_lerp", shape=(2, 3, 5, 7), M=3, vectors=True),
    "shift_lerp_vectors_v4_compile": dict(op="shift_lerp", shape=(1, 3, 4, 8), M=2, vectors=True, split=True,
                                          compile=True),
    "tsm_vectors_M7_stacked": dict(op=TSM, shape=(1, 3, 3, 8), M=7, vectors=True, split=True),
    "tsm_lora_vectors_groups_bf16": dict(op="token_shift_mix_lora", shape=(1, 3, 5, 16), head_size=8, dtype="bf16",
                                         vectors=True, split=(1, 4)),
    "shift_lerp_split_v4_compile": dict(op="shift_lerp", shape=(1, 3, 4, 8), M=3, split=True, compile=True),
    "tsm_lora_split_fp16": dict(op="token_shift_mix_lora", shape=(1, 3, 5, 16), head_size=8, dtype="fp16",
                                split=True),
    "tsm_lora_v6": dict(op="token_shift_mix_lora", shape=(2, 3, 5, 24), head_size=8),
    "tsm_lora_r32_odd_C_bf16": dict(op="token_shift_mix_lora", shape=(1, 4, 4, 20), M=2, R=32, head_size=10,
                                    dtype="bf16"),
    "tsm_lora_fp32_in_bf16_out_compile": dict(op="token_shift_mix_lora", shape=(1, 3, 3, 16), out_dtype="bf16",
                                              compile=True),
    "shift_lerp_v6_compile": dict(op="shift_lerp", shape=(1, 3, 2, 8), M=2, head_size=4, compile=True),
    "shift_lerp_v4_odd_C_bf16": dict(op="shift_lerp", shape=(2, 3, 5, 7), M=3, dtype="bf16"),
    "shift_lerp_v4_noncontig_fp32_in_bf16_out": dict(op="shift_lerp", shape=(2, 4, 3, 12), M=2, layout="T",
                                                     out_dtype="bf16"),
    "sigmoid_mul_odd": dict(op="sigmoid_mul", shape=(3, 37)),
    "sigmoid_mul_bf16": dict(op="sigmoid_mul", shape=(2, 5, 11), dtype="bf16"),
    "sigmoid_mul_noncontig_compile": dict(op="sigmoid_mul", shape=(2, 5, 3), layout="T", compile=True),
    "relu_square_odd": dict(op="relu_square", shape=(5, 13)),
    "relu_square_fp16": dict(op="relu_square", shape=(1, 2, 9), dtype="fp16"),
    "relu_square_inplace_odd": dict(op="relu_square", shape=(3, 11), inplace=True),
    "relu_square_inplace_bf16": dict(op="relu_square", shape=(2, 7, 5), dtype="bf16", inplace=True),
    "gn_mul_silu": dict(op="group_norm_mul", shape=(2, 5, 12), groups=3, gate_act="silu"),
    "gn_mul_plain_odd_groupsize": dict(op="group_norm_mul", shape=(7, 15), groups=5),
    "gn_mul_bf16_out": dict(op="group_norm_mul", shape=(1, 6, 8), groups=2, gate_act="silu", dtype="bf16"),
    "gn_mul_one_group": dict(op="group_norm_mul", shape=(3, 10), groups=1, gate_act="silu", compile=True),
    # the row-reducing backward kernels with fewer programs than row blocks: each walks several (as at 1024 px)
    "gn_mul_rows_several_passes": dict(op="group_norm_mul", shape=(3, 37, 12), groups=3, gate_act="silu",
                                       fused=dict(bwd_programs=3, gn_elems=64)),
    # no rows at all (an empty batch): one program that walks nothing; the parameter gradients come back as zeros
    "gn_mul_zero_rows": dict(op="group_norm_mul", shape=(0, 5, 12), groups=3, gate_act="silu"),
    "add_norm_post_zero_rows": dict(op="add_norm", shape=(2, 0, 12), post=True, sample_scale=True),
    "decay_logd": dict(op="decay_logd", shape=(2, 5, 6)),
    # the decay LoRA tanh(x @ w1) @ w2 in one kernel each way: rows, K and N not multiples of the tiles (two K and N
    # steps), a rank below the tile (24 of 32), batch 1 x 1 token, bf16 / fp16, non-contiguous x, compiled
    "lora_mlp_tiles": dict(op="lora_mlp", shape=(2, 37, 80), R=24, N=72),
    "lora_mlp_one_row_bf16": dict(op="lora_mlp", shape=(1, 1, 40), R=64, N=33, dtype="bf16"),
    "lora_mlp_fp16_noncontig": dict(op="lora_mlp", shape=(3, 5, 24), R=16, N=24, dtype="fp16", layout="T"),
    "lora_mlp_compile": dict(op="lora_mlp", shape=(2, 9, 16), R=16, N=16, compile=True),
    "decay_logd_bf16_z": dict(op="decay_logd", shape=(1, 7, 5), dtype="bf16"),
    "add_norm_post": dict(op="add_norm", shape=(2, 5, 12), post=True),
    "add_norm_post_no_gamma_odd_C": dict(op="add_norm", shape=(9, 5), post=True, gamma=False),
    "add_norm_pre": dict(op="add_norm", shape=(3, 7, 6), post=False),
    "add_norm_pre_bf16_y_bf16_out": dict(op="add_norm", shape=(2, 3, 10), dtype="bf16", out_dtype="bf16",
                                         gamma=False),
    "add_norm_pre_compile_noncontig": dict(op="add_norm", shape=(2, 3, 4), compile=True, layout="T"),
    "add_norm_pre_inplace_bf16_y": dict(op="add_norm", shape=(3, 7, 6), dtype="bf16", inplace=True),
    "add_norm_post_inplace_odd_C": dict(op="add_norm", shape=(9, 5), post=True, inplace=True),
    # drop path's per-sample branch factor: several samples per row block, sample boundaries inside blocks and
    # several programs (C=100: 32-row blocks over 3 x 37 rows)
    "add_norm_post_sample_scale": dict(op="add_norm", shape=(3, 5, 12), post=True, sample_scale=True),
    "add_norm_post_sample_scale_blocks": dict(op="add_norm", shape=(3, 37, 100), post=True, sample_scale=True),
    "add_norm_post_rows_several_passes": dict(op="add_norm", shape=(3, 37, 100), post=True, sample_scale=True,
                                              fused=dict(bwd_programs=2)),
    "add_norm_pre_rows_several_passes_bf16": dict(op="add_norm", shape=(2, 41, 24), dtype="bf16",
                                                  sample_scale=True, fused=dict(bwd_programs=3, gn_elems=256)),
    "add_norm_pre_sample_scale_bf16_odd_C": dict(op="add_norm", shape=(4, 3, 7), dtype="bf16", out_dtype="bf16",
                                                 sample_scale=True),
    "add_norm_pre_sample_scale_no_gamma_compile": dict(op="add_norm", shape=(2, 3, 4), gamma=False, compile=True,
                                                       layout="T", sample_scale=True),
    # GEMM epilogues: several M / N tiles (partial last ones), K steps with a partial last one, grouped program ids
    "linear_relu_square_tiles": dict(op="linear_relu_square", shape=(2, 37, 40), N=24, gemm=_SMALL_GEMM),
    "linear_relu_square_even_k": dict(op="linear_relu_square", shape=(3, 5, 32), N=48, gemm=_SMALL_GEMM),
    "linear_relu_square_default_tiles_2d": dict(op="linear_relu_square", shape=(7, 12), N=20),
    "linear_relu_square_fp16_compile": dict(op="linear_relu_square", shape=(1, 9, 16), N=16, dtype="fp16",
                                            compile=True),
    "linear_sigmoid_mul_tiles": dict(op="linear_sigmoid_mul", shape=(2, 21, 24), N=40, gemm=_SMALL_GEMM),
    "linear_sigmoid_mul_bf16_y": dict(op="linear_sigmoid_mul", shape=(1, 6, 20), N=12, y_dtype="bf16"),
    "linear_sigmoid_mul_noncontig_compile": dict(op="linear_sigmoid_mul", shape=(3, 4, 16), N=16, layout="T",
                                                 compile=True, gemm=_SMALL_GEMM),
    # the RWKV-6 LoRA stages (tanh; -exp(w0 + .) in fp32), weights as transposed views of the (K, N) LoRA matrices
    # (16-bit inputs as fp16 here; bf16 in the cases further down and in the CUDA cases)
    "linear_tanh_tiles": dict(op="linear_tanh", shape=(2, 37, 40), N=40, gemm=_SMALL_GEMM),
    "linear_tanh_fp16_contiguous_w": dict(op="linear_tanh", shape=(1, 9, 32), N=24, dtype="fp16", transposed=False),
    "linear_tanh_compile": dict(op="linear_tanh", shape=(2, 5, 16), N=32, compile=True),
    "linear_decay_tiles": dict(op="linear_decay", shape=(2, 21, 24), N=40, gemm=_SMALL_GEMM),
    "linear_decay_fp16_noncontig": dict(op="linear_decay", shape=(3, 4, 32), N=20, dtype="fp16", layout="T"),
    "linear_decay_compile": dict(op="linear_decay", shape=(1, 7, 16), N=16, compile=True, gemm=_SMALL_GEMM),
    # projections of the Q-Shift interpolation (mixed input formed in the GEMM's operand load): v4 mu with
    # whole-channel quarters, v6 per-head quarters with the LoRA offset, every epilogue, tiles over M / N / K with
    # partial last ones and quarter boundaries inside K tiles
    "mix_linear_v4_tiles": dict(op="mix_linear", shape=(2, 5, 7, 40), N=24, one_minus=True, gemm=_SMALL_GEMM),
    "mix_linear_v4_1xW_relu_square": dict(op="mix_linear", shape=(1, 1, 37, 20), N=40, act="relu_square",
                                          one_minus=True, gemm=_SMALL_GEMM),
    "mix_linear_v4_sigmoid_mul_fp16": dict(op="mix_linear", shape=(2, 3, 4, 16), N=16, act="sigmoid_mul",
                                           one_minus=True, dtype="fp16"),
    "mix_linear_v6_lora_tiles": dict(op="mix_linear", shape=(2, 4, 5, 48), N=40, head_size=12, R=16,
                                     gemm=_SMALL_GEMM),
    "mix_linear_v6_lora_tanh_odd_C": dict(op="mix_linear", shape=(1, 3, 5, 20), N=32, head_size=10, R=16,
                                          act="tanh", gemm=_SMALL_GEMM),
    "mix_linear_v6_lora_fp16_compile": dict(op="mix_linear", shape=(1, 3, 3, 32), N=16, head_size=8, R=16,
                                            dtype="fp16", compile=True),
    "mix_linear_Hx1_grid_compile": dict(op="mix_linear", shape=(2, 9, 1, 12), N=20, act="sigmoid_mul",
                                        compile=True, gemm=_SMALL_GEMM),
    # several projections of one x in one launch (projection index fastest in the program id): v4 lerps, v6 LoRA
    # offsets from a strided column slice, several M / N tiles and K steps with partial last ones, odd C, fp16
    "mix_linear_group_v4_tiles": dict(op="mix_linear_group", shape=(2, 5, 7, 40), N=24, P=2, one_minus=True,
                                      gemm=_SMALL_GEMM),
    "mix_linear_group_v6_lora_tiles": dict(op="mix_linear_group", shape=(2, 4, 5, 48), N=40, P=4, head_size=12,
                                           R=16, gemm=_SMALL_GEMM),
    "mix_linear_group_v6_odd_C_fp16_compile": dict(op="mix_linear_group", shape=(1, 3, 5, 20), N=12, P=3,
                                                   head_size=10, R=16, dtype="fp16", compile=True),
    "mix_linear_group_v6_five_two_launches": dict(op="mix_linear_group", shape=(2, 3, 4, 32), N=16, P=5,
                                                  head_size=8, R=16),
    "mix_linear_group_1xW_one_compile": dict(op="mix_linear_group", shape=(1, 1, 9, 12), N=20, P=1,
                                             one_minus=True, compile=True, gemm=_SMALL_GEMM),
    # the RWKV-6 output projection with GroupNorm * gate in its operand load: one head per K step, several M / N
    # tiles with partial last ones; a head size that is no power of two takes the gn_mul pass + the projection
    "gn_linear_silu_tiles": dict(op="group_norm_mul_linear", shape=(2, 19, 48), groups=3, N=40, gate_act="silu",
                                 gemm=dict(bm=16, bn=16, group_m=2)),
    "gn_linear_plain_one_group_fp16": dict(op="group_norm_mul_linear", shape=(7, 32), groups=1, N=24, dtype="fp16"),
    "gn_linear_silu_compile": dict(op="group_norm_mul_linear", shape=(1, 5, 32), groups=2, N=16, gate_act="silu",
                                   compile=True),
    "gn_linear_head12_fallback": dict(op="group_norm_mul_linear", shape=(2, 5, 36), groups=3, N=20,
                                      gate_act="silu"),
    # the key-value MLP with the hidden on chip: several hidden chunks with a partial last one, row tiles with a
    # partial last one, C not a power of two (padded channel tile); above max_c the two-GEMM fallback
    "mix_mlp_v4_tiles": dict(op="mix_mlp", shape=(2, 5, 7, 24), hidden=40, one_minus=True,
                             gemm=dict(bm=16, bh=16)),
    "mix_mlp_v6_head8_fp16": dict(op="mix_mlp", shape=(1, 3, 4, 16), hidden=64, head_size=8, dtype="fp16"),
    "mix_mlp_1xW_compile": dict(op="mix_mlp", shape=(1, 1, 9, 20), hidden=48, one_minus=True, compile=True,
                                gemm=dict(bm=16, bh=16)),
    # the block's residual add + LayerNorm in the epilogue (inference): whole rows per program, N not a power of two
    # (masked columns in the row statistics), pre- (s and n) and post-norm, with / without layer scale
    "mix_linear_residual_pre_sigmoid": dict(op="mix_linear", shape=(2, 3, 5, 24), N=40, act="sigmoid_mul",
                                            one_minus=True, residual="pre", infer=True, gemm=dict(res_elems=1024)),
    "mix_linear_residual_post_lora_no_gamma": dict(op="mix_linear", shape=(1, 4, 3, 32), N=20, head_size=8, R=16,
                                                   residual="post", gamma=False, infer=True),
    "mix_linear_residual_pre_bf16_n_compile": dict(op="mix_linear", shape=(1, 3, 3, 16), N=16, one_minus=True,
                                                   residual="pre", n_dtype="bf16", infer=True, compile=True),
    "gn_linear_residual_pre": dict(op="group_norm_mul_linear", shape=(2, 7, 32), groups=2, N=24, gate_act="silu",
                                   residual="pre", infer=True, gemm=dict(res_elems=512)),
    "gn_linear_residual_post_compile": dict(op="group_norm_mul_linear", shape=(1, 5, 48), groups=3, N=48,
                                            gate_act="silu", residual="post", infer=True, compile=True),
    "linear_add_norm_pre_tiles": dict(op="linear_add_norm", shape=(2, 9, 40), N=24, residual="pre", infer=True,
                                      gemm=dict(bm=16, bk=16, res_elems=256)),
    # ... written into the residual x itself (the pre-norm chain of eager inference), several row tiles
    "mix_linear_residual_pre_inplace": dict(op="mix_linear", shape=(2, 5, 7, 24), N=24, act="sigmoid_mul",
                                            one_minus=True, residual="pre", infer=True, inplace=True,
                                            gemm=dict(res_elems=512)),
    "gn_linear_residual_pre_inplace": dict(op="group_norm_mul_linear", shape=(2, 37, 32), groups=2, N=32,
                                           gate_act="silu", residual="pre", infer=True, inplace=True,
                                           gemm=dict(res_elems=512)),
    "linear_add_norm_pre_inplace": dict(op="linear_add_norm", shape=(2, 9, 40), N=40, residual="pre", infer=True,
                                        inplace=True, gemm=dict(bm=16, bk=16, res_elems=256)),
    "linear_add_norm_post_fp16_compile": dict(op="linear_add_norm", shape=(1, 7, 32), N=48, residual="post",
                                              dtype="fp16", infer=True, compile=True),
    # with a gradient needed the ops compose the projection and add_norm (differentiable; every gradient checked)
    "linear_add_norm_training_composed": dict(op="linear_add_norm", shape=(2, 5, 16), N=20, residual="pre"),
    "mix_linear_residual_training_composed": dict(op="mix_linear", shape=(2, 3, 4, 16), N=16, head_size=8, R=16,
                                                  residual="pre"),
    "gn_linear_residual_training_composed": dict(op="group_norm_mul_linear", shape=(2, 5, 32), groups=2, N=32,
                                                 gate_act="silu", residual="post"),
    "mix_mlp_wide_fallback": dict(op="mix_mlp", shape=(1, 3, 3, 20), hidden=32, one_minus=True,
                                  gemm=dict(max_c=16)),
    # bf16 operands into tl.dot - what autocast feeds the GEMM kernels on a GPU (the interpreter's own bf16 dot
    # multiplies raw bits; vision_rwkv.ops.interpret_fixes makes it exact): every GEMM kernel family, forward and
    # backward where it has one
    "linear_relu_square_bf16_tiles": dict(op="linear_relu_square", shape=(2, 19, 40), N=24, dtype="bf16",
                                          gemm=_SMALL_GEMM),
    "linear_sigmoid_mul_bf16": dict(op="linear_sigmoid_mul", shape=(1, 21, 24), N=40, dtype="bf16",
                                    gemm=_SMALL_GEMM),
    "linear_tanh_bf16": dict(op="linear_tanh", shape=(2, 9, 40), N=40, dtype="bf16", gemm=_SMALL_GEMM),
    "linear_decay_bf16_noncontig": dict(op="linear_decay", shape=(3, 4, 32), N=20, dtype="bf16", layout="T"),
    "mix_linear_v4_bf16_tiles": dict(op="mix_linear", shape=(2, 3, 5, 40), N=24, one_minus=True, dtype="bf16",
                                     gemm=_SMALL_GEMM),
    "mix_linear_v6_lora_bf16": dict(op="mix_linear", shape=(1, 3, 4, 32), N=16, head_size=16, R=16, dtype="bf16",
                                    act="tanh"),
    "mix_linear_group_v6_bf16": dict(op="mix_linear_group", shape=(1, 3, 5, 32), N=32, P=4, head_size=16, R=16,
                                     dtype="bf16"),
    "mix_mlp_v4_bf16": dict(op="mix_mlp", shape=(1, 3, 5, 32), hidden=128, one_minus=True, dtype="bf16"),
    "gn_linear_bf16": dict(op="group_norm_mul_linear", shape=(2, 5, 32), groups=2, N=24, gate_act="silu",
                           dtype="bf16"),
    "linear_add_norm_pre_bf16": dict(op="linear_add_norm", shape=(2, 9, 40), N=24, residual="pre", dtype="bf16",
                                     n_dtype="bf16", infer=True, gemm=dict(bm=16, bk=16, res_elems=256)),
}

CUDA_CASES = {
    "tsm_v4_T_1024": dict(op=TSM, shape=(4, 64, 64, 192), M=3, out_dtype="bf16"),
    "tsm_v4_S_224": dict(op=TSM, shape=(16, 14, 14, 384), M=2),
    "tsm_v4_odd": dict(op=TSM, shape=(3, 13, 17, 100), M=3),
    "tsm_v6_ddlerp_B": dict(op=TSM, shape=(4, 14, 14, 768), M=5, with_m=True, head_size=64, dtype="bf16"),
    "tsm_lora_v6_T_1024_bf16": dict(op="token_shift_mix_lora", shape=(2, 64, 64, 192), R=32, head_size=64,
                                    dtype="bf16"),
    "tsm_lora_v6_B_fp32": dict(op="token_shift_mix_lora", shape=(4, 14, 14, 768), R=32, head_size=64),
    "tsm_lora_head80_odd": dict(op="token_shift_mix_lora", shape=(2, 7, 9, 640), R=32, head_size=80,
                                out_dtype="bf16"),
    "tsm_v6_head80": dict(op=TSM, shape=(2, 7, 7, 640), M=5, with_m=True, head_size=80),
    "tsm_noncontig": dict(op=TSM, shape=(2, 14, 14, 192), M=3, layout="T"),
    "sigmoid_mul": dict(op="sigmoid_mul", shape=(8, 4096, 192), dtype="bf16"),
    "sigmoid_mul_fp32_odd": dict(op="sigmoid_mul", shape=(3, 197, 101)),
    "relu_square": dict(op="relu_square", shape=(8, 1024, 768), dtype="bf16"),
    "relu_square_inplace": dict(op="relu_square", shape=(8, 1024, 768), dtype="bf16", inplace=True),
    "gn_mul_v6_S": dict(op="group_norm_mul", shape=(16, 196, 384), groups=6, gate_act="silu", out_dtype="bf16"),
    "gn_mul_v6_B_bf16": dict(op="group_norm_mul", shape=(8, 1024, 768), groups=12, gate_act="silu",
                             dtype="bf16"),
    "gn_mul_head80": dict(op="group_norm_mul", shape=(4, 50, 640), groups=8, gate_act="silu"),
    "decay_logd": dict(op="decay_logd", shape=(8, 1024, 384), dtype="bf16"),
    "lora_mlp_vrwkv6_t": dict(op="lora_mlp", shape=(16, 4096, 192), R=64, N=192, dtype="bf16"),
    "lora_mlp_fp32_odd": dict(op="lora_mlp", shape=(3, 197, 100), R=48, N=100),
    "add_norm_post_S": dict(op="add_norm", shape=(16, 1024, 384), post=True, dtype="bf16"),
    "add_norm_post_B_fp32": dict(op="add_norm", shape=(4, 196, 768), post=True),
    "add_norm_pre_T": dict(op="add_norm", shape=(16, 1024, 192), dtype="bf16", out_dtype="bf16"),
    "add_norm_pre_odd": dict(op="add_norm", shape=(3, 197, 100), gamma=False),
    "add_norm_pre_T_inplace": dict(op="add_norm", shape=(16, 1024, 192), dtype="bf16", out_dtype="bf16", inplace=True),
    "add_norm_post_sample_scale_S": dict(op="add_norm", shape=(16, 196, 384), post=True, dtype="bf16",
                                         sample_scale=True),
    "add_norm_pre_sample_scale_T": dict(op="add_norm", shape=(8, 1024, 192), dtype="bf16", out_dtype="bf16",
                                        sample_scale=True),
    "compile": dict(op=TSM, shape=(2, 14, 14, 192), M=5, with_m=True, head_size=64, compile=True),
    "shift_lerp_split_v4_T_bf16": dict(op="shift_lerp", shape=(8, 14, 14, 192), M=3, dtype="bf16", split=True),
    "tsm_lora_split_v6_S_bf16": dict(op="token_shift_mix_lora", shape=(4, 14, 14, 384), R=32, head_size=64,
                                     dtype="bf16", split=True),
    # the models' training calls: interpolation vectors read in place, outputs in groups for the batched GEMMs
    "tsm_lora_vectors_groups_v6_T_bf16": dict(op="token_shift_mix_lora", shape=(8, 14, 14, 192), R=32, head_size=64,
                                              dtype="bf16", out_dtype="bf16", vectors=True, split=(1, 4)),
    "shift_lerp_vectors_v4_T_bf16": dict(op="shift_lerp", shape=(8, 14, 14, 192), M=3, dtype="bf16", vectors=True),
    "tsm_vectors_v6_channel_mix_bf16": dict(op=TSM, shape=(8, 14, 14, 384), M=2, head_size=64, dtype="bf16",
                                            vectors=True, split=True),
    "linear_relu_square_T_1024": dict(op="linear_relu_square", shape=(4, 4096, 192), N=768, dtype="bf16"),
    "linear_relu_square_fp32_odd": dict(op="linear_relu_square", shape=(3, 197, 100), N=300),
    "linear_sigmoid_mul_T_1024": dict(op="linear_sigmoid_mul", shape=(4, 4096, 192), N=192, dtype="bf16"),
    "linear_sigmoid_mul_B_fp32_y": dict(op="linear_sigmoid_mul", shape=(8, 196, 768), N=768, dtype="bf16",
                                        y_dtype="fp32"),
    "linear_sigmoid_mul_odd_compile": dict(op="linear_sigmoid_mul", shape=(2, 197, 72), N=40, compile=True),
    "linear_tanh_v6_lora_T_1024": dict(op="linear_tanh", shape=(4, 4096, 192), N=160, dtype="bf16"),
    "linear_tanh_fp32_odd": dict(op="linear_tanh", shape=(3, 197, 100), N=64),
    "linear_decay_v6_T_1024": dict(op="linear_decay", shape=(4, 4096, 64), N=192, dtype="bf16"),
    "linear_decay_clip_odd_compile": dict(op="linear_decay", shape=(2, 197, 64), N=640, compile=True),
    "mix_linear_v4_T_1024_bf16": dict(op="mix_linear", shape=(4, 64, 64, 192), N=192, one_minus=True,
                                      dtype="bf16"),
    "mix_linear_v4_key_relu_square_S": dict(op="mix_linear", shape=(8, 14, 14, 384), N=1536, act="relu_square",
                                            one_minus=True, dtype="bf16"),
    "mix_linear_v4_receptance_odd_fp32": dict(op="mix_linear", shape=(3, 13, 17, 100), N=100, act="sigmoid_mul",
                                              one_minus=True),
    "mix_linear_v6_lora_T_1024_bf16": dict(op="mix_linear", shape=(2, 64, 64, 192), N=192, head_size=64, R=32,
                                           dtype="bf16"),
    "mix_linear_v6_lora_tanh_B": dict(op="mix_linear", shape=(4, 14, 14, 768), N=64, head_size=64, R=32,
                                      act="tanh", dtype="bf16"),
    "mix_linear_head80_fp32_compile": dict(op="mix_linear", shape=(2, 7, 9, 640), N=640, head_size=80, R=32,
                                           compile=True),
    "mix_linear_group_v4_kv_T_1024_bf16": dict(op="mix_linear_group", shape=(4, 64, 64, 192), N=192, P=2,
                                               one_minus=True, dtype="bf16"),
    "mix_linear_group_v6_kvrg_T_1024_bf16": dict(op="mix_linear_group", shape=(2, 64, 64, 192), N=192, P=4,
                                                 head_size=64, R=32, dtype="bf16"),
    "mix_linear_group_v6_B_odd_rows_fp32": dict(op="mix_linear_group", shape=(3, 13, 15, 768), N=768, P=4,
                                                head_size=64, R=32),
    "mix_linear_group_head80_compile": dict(op="mix_linear_group", shape=(2, 7, 9, 640), N=640, P=4, head_size=80,
                                            R=32, compile=True),
    "mix_mlp_v4_T_1024_bf16": dict(op="mix_mlp", shape=(4, 64, 64, 192), hidden=768, one_minus=True,
                                   dtype="bf16"),
    "mix_mlp_v6_T_fp32_odd": dict(op="mix_mlp", shape=(3, 13, 17, 192), hidden=768, head_size=64),
    "mix_mlp_C100_compile": dict(op="mix_mlp", shape=(2, 14, 14, 100), hidden=300, one_minus=True, compile=True),
    "mix_linear_residual_pre_T_1024_bf16": dict(op="mix_linear", shape=(4, 64, 64, 192), N=192,
                                                act="sigmoid_mul", one_minus=True, dtype="bf16", residual="pre",
                                                n_dtype="bf16", infer=True),
    "mix_linear_residual_post_S_bf16": dict(op="mix_linear", shape=(8, 14, 14, 384), N=384, act="sigmoid_mul",
                                            one_minus=True, dtype="bf16", residual="post", infer=True),
    "mix_linear_residual_post_C512_fp32_compile": dict(op="mix_linear", shape=(2, 14, 14, 512), N=512,
                                                       act="sigmoid_mul", one_minus=True, residual="post", infer=True,
                                                       compile=True),
    "linear_add_norm_pre_T_1024_bf16": dict(op="linear_add_norm", shape=(4, 4096, 192), N=192, residual="pre",
                                            dtype="bf16", n_dtype="bf16", infer=True),
    "linear_add_norm_post_S_fp32": dict(op="linear_add_norm", shape=(8, 197, 384), N=384, residual="post",
                                        infer=True),
    "gn_linear_residual_pre_T_1024_bf16": dict(op="group_norm_mul_linear", shape=(4, 4096, 192), groups=3, N=192,
                                               gate_act="silu", dtype="bf16", residual="pre", n_dtype="bf16",
                                               infer=True),
    "gn_linear_residual_post_S_odd_rows": dict(op="group_norm_mul_linear", shape=(3, 197, 384), groups=6, N=384,
                                               gate_act="silu", residual="post", infer=True),
    "mix_linear_residual_pre_T_1024_bf16_inplace": dict(op="mix_linear", shape=(4, 64, 64, 192), N=192,
                                                        act="sigmoid_mul", one_minus=True, dtype="bf16",
                                                        residual="pre", n_dtype="bf16", infer=True, inplace=True),
    "gn_linear_residual_pre_odd_rows_inplace": dict(op="group_norm_mul_linear", shape=(3, 197, 192), groups=3,
                                                    N=192, gate_act="silu", residual="pre", infer=True, inplace=True),
    "gn_linear_v6_T_1024_bf16": dict(op="group_norm_mul_linear", shape=(4, 4096, 192), groups=3, N=192,
                                     gate_act="silu", dtype="bf16"),
    "gn_linear_v6_B_fp32_odd_rows": dict(op="group_norm_mul_linear", shape=(3, 197, 768), groups=12, N=768,
                                         gate_act="silu"),
    "gn_linear_head80_compile": dict(op="group_norm_mul_linear", shape=(2, 50, 640), groups=8, N=640,
                                     gate_act="silu", compile=True),
}


@pytest.fixture(scope="module")
def interpreter_results():
    return run_in_interpreter(CPU_CASES)


@pytest.mark.parametrize("name", list(CPU_CASES))
def test_fused_triton_interpreter(interpreter_results, name):
    check(interpreter_results[name], CPU_CASES[name])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", list(CUDA_CASES))
def test_fused_triton_cuda(name, monkeypatch):
    monkeypatch.setenv("VRWKV_TRITON_DEBUG", "1")
    check(run_case(CUDA_CASES[name], "cuda"), CUDA_CASES[name])
