"""Triton bidirectional RWKV-6 WKV kernels vs float64 references: forward and all five gradients.

CPU: the kernels run under TRITON_INTERPRET=1 in one subprocess on tiny shapes (T=1, T not a multiple of the
16-token chunk, head size not a power of two, strong / extreme decays incl. logd = -inf, bf16/fp16, non-contiguous
inputs, the public dispatcher, torch.compile without graph breaks). CUDA (when present): real shapes, including
T far beyond the original kernel's 256. Outputs are NaN-poisoned before every launch.
"""
import pytest
import torch

from _case_utils import check_result, quick_cases, quick_params
from _triton_cases import check, run_in_interpreter, run_v6

pytest.importorskip("triton")

CPU_CASES = {
    "T1": dict(shape=(1, 1, 1, 16)),
    "T_not_multiple": dict(shape=(2, 21, 2, 16)),
    "head_size_24_odd_T": dict(shape=(1, 19, 1, 24)),
    "strong_decays": dict(shape=(1, 18, 1, 16), dscale=3.0),
    "extreme_decays_inf": dict(shape=(1, 17, 1, 16), logd_const=float("-inf"), dshift=-3.0),
    "extreme_decays_1e4": dict(shape=(1, 17, 1, 16), logd_const=-1e4, dshift=-1.0),
    "bf16": dict(shape=(1, 20, 1, 16), dtype="bf16"),
    "fp16": dict(shape=(1, 9, 1, 16), dtype="fp16"),
    "bf16_logd_fp32": dict(shape=(2, 13, 2, 16), dtype="bf16", logd_dtype="fp32"),
    "noncontig": dict(shape=(1, 18, 2, 16), layout="T"),
    "public_api": dict(shape=(1, 5, 1, 16), public_api=True),
    "torch_compile_fullgraph": dict(shape=(1, 5, 1, 16), compile=True),
}

# the chunk-parallel kernels (triton_chunk.py): every CPU case again (states every 32 tokens: the output kernels walk
# the sub-chunk in between; the states' increments scanned in blocks of 2 chunks - state_walk=0: at these lengths
# the default walks them, see the "walk" cases below -, also the log decay's suffix sum over sub-chunks), plus
# several state chunks and scan blocks in both directions, states at every sub-chunk, 32-token sub-chunks, 16-bit
# states
CHUNK = {"algo": "chunk", "scan_ncb": 2, "state_t": 32, "state_walk": 0}
CPU_CASES.update({f"{name}_chunk": dict(case, config=CHUNK) for name, case in list(CPU_CASES.items())})
# head sizes padded to the next power of two (36 in 64, 80 in 128: the walk kernels), strong decays (the in-chunk
# pairs' exact split) and weak ones (factorized through the chunk's start: every chunk total above -20)
CPU_CASES.update({
    "head36_padded": dict(shape=(1, 21, 2, 36), dscale=2.0),
    "head36_padded_weak_decays": dict(shape=(1, 37, 1, 36), dshift=-3.0),
    "head80": dict(shape=(1, 20, 1, 80), dscale=2.0),
})
CPU_CASES.update({
    "chunk_many_blocks": dict(shape=(2, 83, 1, 16), dscale=2.0, config=CHUNK),
    "chunk_state_every_subchunk": dict(shape=(1, 83, 1, 16), dscale=2.0, config=dict(CHUNK, state_t=16)),
    "chunk_bt32_head24": dict(shape=(1, 70, 2, 24), config=dict(CHUNK, block_t=32, state_t=64)),
    "chunk_one_block_scan": dict(shape=(1, 150, 1, 16), config={"algo": "chunk", "state_walk": 0}),
    # the log decay's suffix sums by their own kernel (suffix_inline below the sub-chunk count; the other cases sum
    # them inside the gradient kernel): one block of sub-chunks with the fused decay, and blocks with a carry
    "chunk_suffix_kernel_decay": dict(shape=(2, 83, 1, 16), dscale=2.0, decay=True,
                                      config=dict(CHUNK, suffix_inline=0)),
    "chunk_suffix_kernel_blocks": dict(shape=(1, 150, 1, 16), dshift=-3.0,
                                       config=dict(CHUNK, suffix_inline=4, scan_ncb=4)),
    "chunk_bf16_states": dict(shape=(1, 40, 1, 16), dtype="bf16", config=dict(CHUNK, state_dtype="input")),
    # forward and backward on different kernel families (bwd_algo): each recomputes what it needs
    "chunk_fwd_walk_bwd": dict(shape=(2, 37, 2, 16), dscale=2.0, config=dict(CHUNK, bwd_algo="walk")),
    "walk_fwd_chunk_bwd": dict(shape=(1, 41, 1, 16), config=dict(CHUNK, algo="walk", bwd_algo="chunk")),
    # the forward's state-chunk programs carrying P and Q (fwd_carry=1): several state chunks, the last one partial,
    # strong (pairwise) and weak (factorized) decays, one state chunk, 16-bit states, 24 channels of 32
    "chunk_carry_many_blocks": dict(shape=(2, 83, 1, 16), dscale=2.0, config=dict(CHUNK, fwd_carry=1)),
    "chunk_carry_weak_decays": dict(shape=(1, 70, 2, 16), dshift=-3.0, config=dict(CHUNK, fwd_carry=1)),
    "chunk_carry_single_state_chunk": dict(shape=(1, 21, 1, 16), config=dict(CHUNK, fwd_carry=1)),
    "chunk_carry_bf16_states_head24": dict(shape=(1, 50, 2, 24), dtype="bf16",
                                           config=dict(CHUNK, fwd_carry=1, state_dtype="input", state_t=16)),
    # the backward's state-chunk programs carrying two states per pass (bwd_carry=1): several state chunks, the last
    # one with sub-chunks past T (their totals must not be written), strong and weak decays, T = 1, both carries
    # with 16-bit states and 24 channels of 32
    "chunk_bcarry_many_blocks": dict(shape=(2, 83, 1, 16), dscale=2.0, config=dict(CHUNK, bwd_carry=1)),
    "chunk_bcarry_partial_state_chunk": dict(shape=(2, 83, 2, 16), config=dict(CHUNK, bwd_carry=1, state_t=64)),
    "chunk_bcarry_weak_decays": dict(shape=(1, 70, 2, 16), dshift=-3.0, config=dict(CHUNK, bwd_carry=1)),
    "chunk_bcarry_T1": dict(shape=(1, 1, 1, 16), config=dict(CHUNK, bwd_carry=1)),
    "chunk_both_carry_bf16_states_head24": dict(shape=(1, 50, 2, 24), dtype="bf16", config=dict(
        CHUNK, fwd_carry=1, bwd_carry=1, state_dtype="input", state_t=16)),
    # weak decays (dshift=-3, ~ -0.1 per token) for the state machinery: at the default decays (~ -1.6 per token)
    # what a state carries across a 16-token chunk is below fp32 resolution, so only these cases test the states
    # between chunks - the scan's blocks and its carry between blocks, states at every sub-chunk, 16-bit states,
    # the output kernels' walks from the state chunks' edges, both carries, the fused decay
    "chunk_many_blocks_weak": dict(shape=(2, 83, 1, 16), dshift=-3.0, config=CHUNK),
    "chunk_state_every_subchunk_weak": dict(shape=(1, 83, 1, 16), dshift=-3.0, config=dict(CHUNK, state_t=16)),
    "chunk_bf16_states_weak": dict(shape=(1, 40, 1, 16), dtype="bf16", dshift=-3.0,
                                   config=dict(CHUNK, state_dtype="input")),
    "chunk_both_carry_bf16_states_head24_weak": dict(shape=(1, 50, 2, 24), dtype="bf16", dshift=-3.0, config=dict(
        CHUNK, fwd_carry=1, bwd_carry=1, state_dtype="input", state_t=16)),
    "decay_chunk_weak": dict(shape=(2, 37, 2, 16), decay=True, dshift=-3.0, config=CHUNK),
    # the states walked over the state chunks by one kernel (state_walk: the default up to 16 state chunks), weak
    # decays (dshift=-3: a state chunk's total log decay ~ -0.1 per token, so the states carried between chunks
    # weigh in; at the default decays, ~ -1.6 per token, they fade below fp32 resolution within a chunk): several
    # state chunks (the last partial), T = 1, one state chunk shorter than state_t, state chunks of 48 tokens (not a
    # power of two) with 16-bit states and 24 channels of 32, two row blocks per head (state_rows=16 of 32
    # channels), strong decays, -inf decays in every other channel, non-contiguous inputs, an output gradient in
    # fp32 for bf16 inputs (the backward's two (x, y) pairs then take a launch each), the fused decay + GroupNorm
    # with both carries
    "walk_states_many_chunks": dict(shape=(2, 83, 1, 16), dshift=-3.0, config=dict(CHUNK, state_walk=16)),
    "walk_states_T1": dict(shape=(1, 1, 1, 16), config={"algo": "chunk"}),
    "walk_states_one_short_chunk": dict(shape=(1, 21, 1, 16), dshift=-3.0, config={"algo": "chunk"}),
    "walk_states_48_bf16_head24": dict(shape=(1, 50, 2, 24), dtype="bf16", dshift=-3.0,
                                       config={"algo": "chunk", "state_t": 48, "state_dtype": "input"}),
    "walk_states_row_blocks": dict(shape=(1, 40, 2, 32), dshift=-3.0,
                                   config={"algo": "chunk", "state_t": 16, "state_rows": 16}),
    "walk_states_strong": dict(shape=(1, 40, 1, 16), dscale=2.0, dshift=1.0, config={"algo": "chunk", "state_t": 16}),
    "walk_states_inf": dict(shape=(1, 37, 1, 16), logd_const=float("-inf"), dshift=-3.0,
                            config={"algo": "chunk", "state_t": 16}),
    "walk_states_noncontig": dict(shape=(1, 18, 2, 16), layout="T", dshift=-3.0,
                                  config={"algo": "chunk", "state_t": 16}),
    "walk_states_gy_fp32": dict(shape=(2, 37, 2, 16), dtype="bf16", gy_dtype="fp32", dshift=-3.0,
                                config={"algo": "chunk", "state_t": 16}),
    "walk_states_decay_norm_carry": dict(shape=(1, 40, 2, 16), decay=True, norm=True, dtype="bf16", dshift=-3.0,
                                         config={"algo": "chunk", "state_t": 32, "fwd_carry": 1, "bwd_carry": 1}),
    # a register cap on the output / gradient kernels (maxnreg: a launch option; the interpreter ignores it, the
    # sm_90 compile and the CUDA cases check it)
    "chunk_maxnreg_both_carry": dict(shape=(1, 37, 1, 16), config=dict(CHUNK, maxnreg=128, fwd_carry=1, bwd_carry=1)),
    # the first half of every sub-chunk decays hard (~ -50 per token), the second half hardly: the weak tokens' tail
    # sums are suffix scans of their own (y 1.3e-7); as differences of the chunk total and prefix sums near -400 they
    # gave y 4.7e-6, glogd 1.1e-5 - inside the general fp32 tolerances, hence this case's own
    "chunk_strong_then_weak_decays": dict(shape=(1, 64, 1, 16), logd_tokens=[-50.0] * 8 + [-0.02] * 8, config=CHUNK,
                                          tol=(1e-6, 3e-6)),
    # one token at the clamp among weak ones: its exclusive prefix is its inclusive scan (~ -60) less -60 (y 3.0e-7,
    # glogd 7.8e-7; 1.0e-7 / 4.3e-7 with fp64 sums)
    "chunk_one_clamped_token_among_weak": dict(shape=(1, 64, 1, 16), logd_tokens=[-0.02] * 7 + [-60.0] + [-0.02] * 8,
                                               config=CHUNK, tol=(1e-6, 3e-6)),
    # ... and the same through the walk kernels, whose pairwise exponents are differences of in-chunk prefix sums
    # (fp32 pairs hi + lo: y 1.2e-7 / 3.0e-7; a plain fp32 difference is 7.7e-6 off after the strong decays)
    "walk_strong_then_weak_decays": dict(shape=(1, 64, 1, 16), logd_tokens=[-50.0] * 8 + [-0.02] * 8,
                                         tol=(1e-6, 3e-6)),
    "walk_one_clamped_token_among_weak": dict(shape=(1, 64, 1, 16), logd_tokens=[-0.02] * 7 + [-60.0] + [-0.02] * 8,
                                              tol=(1e-6, 3e-6)),
    # weak decays: every sub-chunk takes the factorized intra path (T_not_multiple mixes both paths)
    "chunk_weak_decays_fast_intra": dict(shape=(2, 70, 2, 16), dshift=-3.0, config=CHUNK),
    "chunk_weak_decays_fast_intra_bf16": dict(shape=(1, 40, 1, 32), dshift=-3.0, dtype="bf16", config=CHUNK),
    # the fused decay (what the RWKV-6 time mix calls): the kernels read z and w0 and form the log decay -exp(w0 + z)
    # as they load it; the backward returns z's gradient. Chunk kernels (T past the last full sub-chunk, several
    # state chunks), strong decays (pairwise intra path, clamped log decays), 16-bit z with both carries,
    # non-contiguous z, 24 channels of 32, and the walk kernels (the log decay formed first)
    "decay_chunk": dict(shape=(2, 37, 2, 16), decay=True, config=CHUNK),
    "decay_chunk_strong_head24": dict(shape=(1, 21, 1, 24), decay=True, dscale=1.5, dshift=1.0, config=CHUNK),
    "decay_chunk_bf16_both_carry": dict(shape=(1, 40, 2, 16), decay=True, dtype="bf16",
                                        config=dict(CHUNK, fwd_carry=1, bwd_carry=1)),
    "decay_chunk_noncontig": dict(shape=(1, 18, 2, 16), decay=True, layout="T", config=CHUNK),
    "decay_walk": dict(shape=(1, 19, 1, 16), decay=True, dscale=2.0),
    "decay_walk_bf16_head24": dict(shape=(1, 37, 2, 24), decay=True, dtype="bf16", dshift=-1.0),
    "decay_walk_clamped": dict(shape=(1, 19, 1, 16), decay=True, dscale=4.0, dshift=3.0),  # (-exp(w0 + z) < -60)
    "decay_chunk_formed_first": dict(shape=(1, 37, 1, 16), decay=True, config=dict(CHUNK, fused_decay=0)),
    # ... with the GroupNorm * silu(gate) formed as y is stored (norm=): the sub-chunk and state-chunk output
    # kernels, 24 channels of 32, bf16, and the walk / unfused route (the product by its own kernel after)
    "norm_chunk_head24": dict(shape=(2, 37, 2, 24), decay=True, norm=True, config=CHUNK),
    "norm_chunk_carry_bf16": dict(shape=(1, 40, 2, 16), decay=True, norm=True, dtype="bf16",
                                  config=dict(CHUNK, fwd_carry=1)),
    "norm_walk": dict(shape=(1, 19, 1, 16), decay=True, norm=True),
    # (the walk route forms it as it sums its two directions' planes, in blocks of max(16, 1024 / padded head size)
    # tokens: 24 channels of 32, 70 tokens in blocks of 32; head size 80, 37 tokens in blocks of 16 - partial last
    # blocks)
    "norm_walk_bf16_head24": dict(shape=(2, 70, 2, 24), decay=True, norm=True, dtype="bf16"),
    "norm_walk_head80": dict(shape=(1, 37, 1, 80), decay=True, norm=True, dshift=-2.0),
    # the walk kernels' states and log-decay suffix sums across chunks at weak decays (~ -0.1 per token; at the
    # default decays what crosses a 16-token chunk is below fp32 resolution): 4 chunks, and 2 key-channel blocks
    "walk_weak_decays": dict(shape=(2, 53, 2, 16), dshift=-3.0),
    "walk_weak_decays_head24_bf16": dict(shape=(1, 40, 2, 24), dtype="bf16", dshift=-3.0),
    # the walk forward's value columns in blocks (walk_bv: more programs for few (batch, head) pairs): 36 channels in
    # three blocks of 16 (the last one partial), weak decays (the states' column blocks across chunks), the fused
    # decay + GroupNorm (the planes' columns from several programs), head size 80 (5 blocks of 16 in 128)
    "walk_bv16_head36": dict(shape=(2, 37, 2, 36), config={"walk_bv": 16}),
    "walk_bv16_weak_decays": dict(shape=(1, 53, 2, 32), dshift=-3.0, config={"walk_bv": 16}),
    "walk_bv16_decay_norm_bf16": dict(shape=(1, 40, 2, 32), decay=True, norm=True, dtype="bf16",
                                      config={"walk_bv": 16}),
    "walk_bv32_head80": dict(shape=(1, 21, 1, 80), dshift=-2.0, config={"walk_bv": 32}),
    "norm_chunk_after": dict(shape=(1, 21, 1, 16), decay=True, norm=True, config=dict(CHUNK, fused_norm=0)),
})
# the fewest state bytes (the sweep's round-24 configs): 16-bit states every 128 tokens, carried by the output kernel
# or walked by one kernel; several state chunks, the last one partial, weak decays (the states weigh in)
CPU_CASES.update({
    "chunk_carry_st128_16bit_weak": dict(shape=(1, 300, 1, 16), dtype="bf16", dshift=-3.0, config=dict(
        CHUNK, fwd_carry=1, state_t=128, state_dtype="input")),
    "walk_states_st128_16bit_weak": dict(shape=(1, 300, 1, 16), dtype="bf16", dshift=-3.0, config={
        "algo": "chunk", "state_walk": 64, "state_t": 128, "state_dtype": "input"}),
    # round 31's sweep combination: the state-chunk output kernel on walked states (5 state chunks, the last partial)
    "chunk_carry_walk_states_weak": dict(shape=(2, 300, 1, 16), dshift=-3.0, config={
        "algo": "chunk", "fwd_carry": 1, "state_walk": 64}),
    "chunk_carry_walk_states_st128_16bit_weak": dict(shape=(1, 300, 1, 16), dtype="bf16", dshift=-3.0, config={
        "algo": "chunk", "fwd_carry": 1, "state_walk": 64, "state_t": 128, "state_dtype": "input"}),
})
# algo=fla (fla_route.py: two calls of flash-linear-attention's causal chunk kernels) through the kernels' entry
# points, with fla's entry points stood in for by the float64 loop of _fla_standin.py (its kernels do not run in the
# interpreter; the CUDA cases below run the real package): what is tested is the route - the reversed pass on flipped
# copies without the bonus, the sum, the clamp and its derivative, mixed dtypes, strides, the fused decay and
# GroupNorm routes, the chunk kernels' forward with the fla backward
FLA = {"algo": "fla"}
CPU_CASES.update({
    "fla_T_not_multiple": dict(shape=(2, 21, 2, 16), config=FLA, fla_standin=True),
    "fla_T1": dict(shape=(1, 1, 1, 16), config=FLA, fla_standin=True),
    "fla_extreme_decays_inf": dict(shape=(1, 17, 1, 16), logd_const=float("-inf"), dshift=-3.0, config=FLA,
                                   fla_standin=True),
    "fla_bf16_logd_fp32_noncontig": dict(shape=(2, 13, 2, 16), dtype="bf16", logd_dtype="fp32", layout="T",
                                         config=FLA, fla_standin=True),
    "fla_gy_fp32": dict(shape=(1, 19, 2, 16), dtype="bf16", gy_dtype="fp32", dshift=-3.0, config=FLA,
                        fla_standin=True),
    "fla_decay_norm_bf16": dict(shape=(1, 19, 2, 16), decay=True, norm=True, dtype="bf16", config=FLA,
                                fla_standin=True),
    "chunk_fwd_fla_bwd": dict(shape=(2, 37, 2, 16), dshift=-3.0, config=dict(CHUNK, bwd_algo="fla"),
                              fla_standin=True),
})

# the forward by pairs of sub-chunks, no states (pairs_max_t, triton_pairs.py; the backward stays the chunk kernels'):
# one sub-chunk, a partial last one, many with strong decays (the clamp), weak decays (far pairs weigh in), a padded
# head in bf16, the fused decay with the GroupNorm * gate, extreme decays, non-contiguous inputs, torch.compile
PAIRS = {"algo": "chunk", "pairs_max_t": 256}
CPU_CASES.update({
    "pairs_T1": dict(shape=(1, 1, 1, 16), config=PAIRS),
    "pairs_T_not_multiple": dict(shape=(2, 21, 2, 16), config=PAIRS),
    "pairs_many_blocks_strong": dict(shape=(2, 83, 1, 16), dscale=2.0, config=PAIRS),
    "pairs_weak_decays": dict(shape=(1, 70, 2, 16), dshift=-3.0, config=PAIRS),
    "pairs_head24_bf16": dict(shape=(1, 37, 2, 24), dtype="bf16", config=PAIRS),
    "pairs_decay_norm_bf16": dict(shape=(1, 19, 2, 16), decay=True, norm=True, dtype="bf16", config=PAIRS),
    "pairs_extreme_decays_inf": dict(shape=(1, 40, 1, 16), logd_const=float("-inf"), dshift=-3.0, config=PAIRS),
    "pairs_noncontig": dict(shape=(1, 18, 2, 16), layout="T", config=PAIRS),
    "pairs_compile": dict(shape=(1, 5, 1, 16), compile=True, config=PAIRS),
})
# pairs_keys: the sources' decayed keys written once by a first kernel (the product e^D across the sub-chunks between)
PAIRS_KEYS = dict(PAIRS, pairs_keys=1)
CPU_CASES.update({f"{name}_keys": dict(CPU_CASES[name], config=PAIRS_KEYS) for name in (
    "pairs_T1", "pairs_T_not_multiple", "pairs_many_blocks_strong", "pairs_weak_decays", "pairs_head24_bf16",
    "pairs_decay_norm_bf16", "pairs_extreme_decays_inf", "pairs_noncontig")})

# the default run's cases (both kernel families: T = 1, T not a multiple of the chunk, odd head size, extreme decays,
# 16-bit, non-contiguous, the public API, torch.compile, mixed forward / backward families, 16-bit states); the rest
# run with --run-slow
QUICK = {"chunk_suffix_kernel_decay", "chunk_suffix_kernel_blocks", "T1", "T_not_multiple", "head_size_24_odd_T",
         "head36_padded", "head36_padded_weak_decays",
         "extreme_decays_inf", "bf16", "fp16", "noncontig", "public_api", "T1_chunk", "T_not_multiple_chunk",
         "bf16_chunk", "noncontig_chunk", "torch_compile_fullgraph_chunk", "walk_fwd_chunk_bwd", "chunk_bf16_states",
         "chunk_state_every_subchunk", "chunk_carry_many_blocks", "chunk_carry_bf16_states_head24",
         "chunk_bcarry_partial_state_chunk", "chunk_both_carry_bf16_states_head24", "chunk_maxnreg_both_carry",
         "decay_chunk", "decay_chunk_strong_head24", "decay_chunk_bf16_both_carry", "decay_walk",
         "decay_walk_bf16_head24", "norm_chunk_head24", "norm_chunk_carry_bf16", "norm_walk", "norm_walk_bf16_head24",
         "walk_states_many_chunks", "walk_states_48_bf16_head24", "walk_states_row_blocks",
         "walk_states_decay_norm_carry", "chunk_many_blocks_weak", "chunk_state_every_subchunk_weak",
         "walk_weak_decays", "walk_strong_then_weak_decays", "walk_bv16_head36", "walk_bv16_decay_norm_bf16",
         "fla_T_not_multiple", "fla_extreme_decays_inf", "fla_bf16_logd_fp32_noncontig", "fla_decay_norm_bf16",
         "pairs_T_not_multiple", "pairs_weak_decays", "pairs_head24_bf16", "pairs_decay_norm_bf16",
         "pairs_weak_decays_keys", "pairs_head24_bf16_keys", "pairs_decay_norm_bf16_keys"}

CUDA_CASES = {
    "64x196x3x64": dict(shape=(64, 196, 3, 64)),
    "64x196x12x64_bf16": dict(shape=(64, 196, 12, 64), dtype="bf16"),
    "16x1024x6x64": dict(shape=(4, 1024, 6, 64)),
    "16x1024x6x64_bf16": dict(shape=(16, 1024, 6, 64), dtype="bf16"),
    "2x4096x6x64": dict(shape=(2, 4096, 6, 64)),
    "1x16384x2x64": dict(shape=(1, 16384, 2, 64)),
    "head80": dict(shape=(4, 197, 4, 80)),
    "head80_weak_decays": dict(shape=(4, 197, 4, 80), dshift=-3.0),  # (the walk's states across chunks)
    "strong_decays": dict(shape=(4, 300, 2, 64), dscale=2.0, dshift=1.0),
    "extreme_decays_inf": dict(shape=(2, 100, 2, 64), logd_const=float("-inf")),
    "noncontig": dict(shape=(4, 196, 3, 64), layout="T"),
    "fp16": dict(shape=(8, 196, 3, 64), dtype="fp16"),
    "bf16_logd_fp32": dict(shape=(16, 196, 3, 64), dtype="bf16", logd_dtype="fp32"),
    "compile": dict(shape=(2, 196, 3, 64), compile=True),
}

CUDA_CASES.update({f"{name}_chunk": dict(case, config={"algo": "chunk"}) for name, case in list(CUDA_CASES.items())})
CUDA_CASES["16x1024x6x64_bf16_chunk_bf16_states"] = dict(shape=(16, 1024, 6, 64), dtype="bf16",
                                                        config={"algo": "chunk", "state_dtype": "input"})
CUDA_CASES.update({f"{name}_{tag}": dict(case, config=dict(case["config"], **carry)) for name, case in
                   list(CUDA_CASES.items()) if name in ("2x4096x6x64_chunk", "16x1024x6x64_bf16_chunk",
                                                        "strong_decays_chunk", "64x196x3x64_chunk")
                   for tag, carry in (("carry", {"fwd_carry": 1}), ("bcarry", {"bwd_carry": 1}),
                                      ("r128", {"maxnreg": 128}))})
# the carries at weak decays too (at the default decays, ~ -1.6 per token, what a state carries across 16 tokens is
# below fp32 resolution: only weak decays test the states between chunks)
CUDA_CASES.update({f"4x1024x6x64_chunk_{tag}_weak_decays": dict(shape=(4, 1024, 6, 64), dshift=-3.0, config=dict(
    algo="chunk", **carry)) for tag, carry in (("carry", {"fwd_carry": 1}), ("bcarry", {"bwd_carry": 1}),
                                               ("scan", {"state_walk": 0}),
                                               ("carry_swalk", {"fwd_carry": 1, "state_walk": 64}))})
CUDA_CASES["4x1024x6x64_chunk_weak_decays"] = dict(shape=(4, 1024, 6, 64), dshift=-3.0, config={"algo": "chunk"})
# the in-chunk sums' worst patterns with the GPU's scans (fp32, no fp64): one token at the clamp among weak ones
# (chunk kernels), strong decays then weak ones (the walk kernels' in-chunk pairs by the exact split, at the
# RWKV-CLIP image tower's head size). Their own tolerances (CUDA_TOL): a third of the general fp32 ones, which a
# plain fp32 difference of prefix sums fails (7.7e-6 in the interpreter)
CUDA_TOL = (3e-6, 1e-5)
CUDA_CASES["4x1024x6x64_chunk_one_clamped_among_weak"] = dict(
    shape=(4, 1024, 6, 64), logd_tokens=[-0.02] * 7 + [-60.0] + [-0.02] * 8, config={"algo": "chunk"}, tol=CUDA_TOL)
CUDA_CASES["head80_strong_then_weak_decays"] = dict(shape=(4, 197, 4, 80), logd_tokens=[-50.0] * 8 + [-0.02] * 8,
                                                    tol=CUDA_TOL)
CUDA_CASES["4x1024x6x64_bf16_chunk_weak_decays"] = dict(shape=(4, 1024, 6, 64), dshift=-3.0, dtype="bf16",
                                                        config={"algo": "chunk"})
# the fused decay and GroupNorm * gate of the time mix (z's gradient amplifies the log-decay gradient's rounding by
# |log decay|: the strong case keeps its decays moderate)
CUDA_CASES.update({
    "16x1024x6x64_bf16_chunk_decay": dict(shape=(16, 1024, 6, 64), dtype="bf16", decay=True, norm=True,
                                          config={"algo": "chunk"}),
    "16x1024x6x64_bf16_chunk_bcarry_decay": dict(shape=(16, 1024, 6, 64), dtype="bf16", decay=True, norm=True,
                                                 config={"algo": "chunk", "bwd_carry": 1}),
    "64x196x12x64_bf16_chunk_decay": dict(shape=(64, 196, 12, 64), dtype="bf16", decay=True, norm=True,
                                          config={"algo": "chunk"}),
    "2x4096x6x64_chunk_decay": dict(shape=(2, 4096, 6, 64), decay=True, norm=True, config={"algo": "chunk"}),
    "4x300x2x64_chunk_strong_decay": dict(shape=(4, 300, 2, 64), decay=True, norm=True, dscale=1.0, dshift=1.0,
                                          config={"algo": "chunk"}),
    "head80_decay": dict(shape=(4, 197, 4, 80), decay=True, norm=True),
    # the walk kernels (no config: the cases' base) with the fused decay and the GroupNorm * gate formed as their
    # planes are summed: weak decays (the in-chunk pairs through the chunk's start), strong ones (the exact split)
    "16x1024x6x64_bf16_walk_decay": dict(shape=(16, 1024, 6, 64), dtype="bf16", decay=True, norm=True),
    "2x4096x6x64_walk_decay_weak": dict(shape=(2, 4096, 6, 64), decay=True, norm=True, dshift=-3.0),
    "4x300x2x64_walk_strong_decay": dict(shape=(4, 300, 2, 64), decay=True, norm=True, dscale=1.0, dshift=1.0),
    # ... with the forward's value columns in blocks of 16 (walk_bv) at VRWKV6-T's 1024-px shape
    "16x4096x3x64_bf16_walk_bv16_decay": dict(shape=(16, 4096, 3, 64), dtype="bf16", decay=True, norm=True,
                                              dshift=-3.0, config={"walk_bv": 16}),
    "head80_walk_bv32": dict(shape=(4, 197, 4, 80), dshift=-3.0, config={"walk_bv": 32}),
})
# the states walked (state_walk; the default up to 16 state chunks: here T <= 1024) at 4096 tokens / 64 state chunks
# (four row blocks per head), and the scan at 196 tokens
# (weak decays: the states carried between chunks weigh in)
CUDA_CASES["2x4096x6x64_chunk_walk_states"] = dict(shape=(2, 4096, 6, 64), dshift=-3.0,
                                                   config={"algo": "chunk", "state_walk": 64})
CUDA_CASES["16x4096x3x64_bf16_chunk_walk_states_decay"] = dict(
    shape=(16, 4096, 3, 64), dtype="bf16", decay=True, norm=True, dshift=-3.0,
    config={"algo": "chunk", "state_walk": 64})
CUDA_CASES["64x196x3x64_chunk_walk_states"] = dict(shape=(64, 196, 3, 64), dshift=-3.0, config={"algo": "chunk"})
CUDA_CASES["64x196x3x64_chunk_scan_states"] = dict(shape=(64, 196, 3, 64), dshift=-3.0,
                                                   config={"algo": "chunk", "state_walk": 0})
CUDA_CASES["4x300x2x64_chunk_state16"] = dict(shape=(4, 300, 2, 64), dscale=2.0, config={"algo": "chunk",
                                                                                        "state_t": 16})
CUDA_CASES.update({f"16x4096x3x64_bf16_{tag}_decay_weak": dict(
    shape=(16, 4096, 3, 64), dtype="bf16", decay=True, norm=True, dshift=-3.0, config=dict(
        algo="chunk", state_t=128, state_dtype="input", **cfg)) for tag, cfg in (
    ("carry_st128_16bit", {"fwd_carry": 1}), ("swalk64_st128_16bit", {"state_walk": 64}))})
# the sub-chunk-pair forward at 196 / 256 tokens (13 / 16 sub-chunks): default, weak and strong decays, the fused
# decay and GroupNorm * gate in bf16, non-contiguous inputs
CUDA_CASES.update({
    "64x196x3x64_pairs": dict(shape=(64, 196, 3, 64), config=PAIRS),
    "16x256x3x64_pairs_weak_decays": dict(shape=(16, 256, 3, 64), dshift=-3.0, config=PAIRS),
    "8x196x3x64_pairs_strong_decays": dict(shape=(8, 196, 3, 64), dscale=2.0, dshift=1.0, config=PAIRS),
    "64x196x12x64_bf16_pairs_decay": dict(shape=(64, 196, 12, 64), dtype="bf16", decay=True, norm=True,
                                          config=PAIRS),
    "4x196x3x64_pairs_noncontig": dict(shape=(4, 196, 3, 64), layout="T", config=PAIRS),
})
CUDA_CASES.update({f"{name}_keys": dict(CUDA_CASES[name], config=PAIRS_KEYS) for name in list(CUDA_CASES)
                   if "_pairs" in name})
# the real flash-linear-attention through algo=fla (skipped where fla is not installed): does it pass our tests?
CUDA_CASES.update({f"{name}_fla": dict(CUDA_CASES[name], config=FLA, needs_fla=True) for name in (
    "64x196x3x64", "64x196x12x64_bf16", "16x1024x6x64_bf16", "2x4096x6x64", "head80", "strong_decays",
    "extreme_decays_inf", "noncontig", "bf16_logd_fp32", "16x1024x6x64_bf16_chunk_decay")})


@pytest.fixture(scope="module")
def interpreter_results(run_slow):
    return run_in_interpreter("bi_wkv6", quick_cases(CPU_CASES, QUICK, run_slow))


@pytest.mark.parametrize("name", quick_params(list(CPU_CASES), QUICK))
def test_bi_wkv6_triton_interpreter(interpreter_results, name):
    result = interpreter_results[name]
    check(result, CPU_CASES[name].get("dtype", "fp32"), "bi_wkv6", CPU_CASES[name]["shape"][1])
    if "tol" in CPU_CASES[name]:  # a case that guards a precision claim: its own, tighter tolerances
        check_result(result, *CPU_CASES[name]["tol"])
    if CPU_CASES[name].get("decay"):  # the fused decay changes where -exp(w0 + z) is formed, not its value
        # (the walk kernels scale each direction's fp32 plane by the log decay before the planes are summed, the
        # unfused route after: fp32 rounding of the order, ~6e-8; in 16 bits both round nearly the same value, which
        # is the same 16-bit number unless the two fp32 values straddle a rounding boundary: one bf16 step, 2^-8 of
        # the value, at most - seen on one host's CPU kernels and not on another's)
        walk = CPU_CASES[name].get("config", {}).get("algo", "walk") == "walk"
        sixteen = CPU_CASES[name].get("dtype", "fp32") != "fp32"
        ulp = (2.0 ** -8 if sixteen else 2.0 ** -22) if walk else 0.0
        assert result["y_vs_unfused"] == 0.0 and result["gz_vs_unfused"] <= ulp, result
    if CPU_CASES[name].get("norm"):  # the GroupNorm * gate formed as y is stored: the unfused kernel's values
        assert result["gated_vs_unfused"] == 0.0 and result["gated_no_y_vs_kept"] == 0.0, result


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", list(CUDA_CASES))
def test_bi_wkv6_triton_cuda(name, monkeypatch):
    monkeypatch.setenv("VRWKV_TRITON_DEBUG", "1")
    case = CUDA_CASES[name]
    if case.get("needs_fla"):
        pytest.importorskip("fla", reason="algo=fla needs flash-linear-attention")
    result = run_v6(case, "cuda")
    check(result, case.get("dtype", "fp32"), "bi_wkv6", case["shape"][1])
    if "tol" in case:  # a case that guards a precision claim
        check_result(result, *case["tol"])


def test_defaults_and_gpu_block_sizes():
    """The chunk kernels are the default for head sizes <= 64; on a GPU only the validated chunk length runs
    (block_t=32 passes the interpreter but gave wrong gradients on an H200)."""
    from vision_rwkv.ops.bi_wkv6 import triton as v6

    assert v6.CONFIG["algo"] == "chunk" and v6._chunk_algo(64, 1024, 16) and v6._chunk_algo(64, 1024, 16, True)
    assert not v6._chunk_algo(128, 1024, 16)  # head size 80 pads to 128: the walk kernels
    v6.check_gpu_blocks(16)
    for bt in (32, 8):
        with pytest.raises(ValueError, match=f"block_t={bt}: on a GPU only"):
            v6.check_gpu_blocks(bt)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_unvalidated_block_sizes_refused_on_gpu(monkeypatch):
    from vision_rwkv.ops.bi_wkv6 import triton as v6

    monkeypatch.setitem(v6.CONFIG, "block_t", 32)
    monkeypatch.setitem(v6.CONFIG, "state_t", 128)
    r, k, v, logd = (torch.randn(1, 64, 1, 64, device="cuda") for _ in range(4))
    with pytest.raises(ValueError, match="block_t=32: on a GPU only"):
        v6.bi_wkv6_triton(r, k, v, -logd.exp(), torch.randn(1, 64, device="cuda"))


def test_walk_bv_value_blocks(monkeypatch):
    """``walk_bv``: value columns per walk forward program - the whole padded head by default, at most the padded
    head, and a clear error naming the setting for anything but 0 or a power of two >= 16."""
    from vision_rwkv.ops.bi_wkv6 import triton as v6

    assert v6._walk_bv(64) == 64 and v6._walk_bv(128) == 128
    monkeypatch.setitem(v6.CONFIG, "walk_bv", 32)
    assert v6._walk_bv(64) == 32 and v6._walk_bv(16) == 16
    for bad in (8, 24, -16):
        monkeypatch.setitem(v6.CONFIG, "walk_bv", bad)
        with pytest.raises(ValueError, match="walk_bv must be 0 or a power of two >= 16"):
            v6._walk_bv(64)


def test_bwd_algo_picks_the_backward_kernels(monkeypatch):
    """``bwd_algo`` sets the backward's kernel family on its own ('' follows ``algo``); a bad value names its key."""
    from vision_rwkv.ops.bi_wkv6 import triton as v6

    monkeypatch.setitem(v6.CONFIG, "algo", "chunk")
    monkeypatch.setitem(v6.CONFIG, "bwd_algo", "")
    assert v6._chunk_algo(64, 1024, 16) and v6._chunk_algo(64, 1024, 16, backward=True)
    monkeypatch.setitem(v6.CONFIG, "bwd_algo", "walk")
    assert v6._chunk_algo(64, 1024, 16) and not v6._chunk_algo(64, 1024, 16, backward=True)
    monkeypatch.setitem(v6.CONFIG, "algo", "walk")
    monkeypatch.setitem(v6.CONFIG, "bwd_algo", "chunk")
    assert not v6._chunk_algo(64, 1024, 16) and v6._chunk_algo(64, 1024, 16, backward=True)
    assert not v6._chunk_algo(128, 1024, 16, backward=True)  # head sizes above 64 keep the walk kernels
    monkeypatch.setitem(v6.CONFIG, "bwd_algo", "scan")
    with pytest.raises(ValueError, match="bwd_algo must be"):
        v6._chunk_algo(64, 1024, 16, backward=True)


def test_walk_max_t_routes_short_sequences_to_the_walk(monkeypatch):
    """``walk_max_t``: with the chunk kernels chosen, sequences of at most that many tokens take the walk kernels
    (forward and backward alike; the fla route is not affected); a bad value names the setting."""
    from vision_rwkv.ops.bi_wkv6 import triton as v6

    monkeypatch.setitem(v6.CONFIG, "algo", "chunk")
    monkeypatch.setitem(v6.CONFIG, "bwd_algo", "")
    assert v6.CONFIG["walk_max_t"] == 0 and v6._chunk_algo(64, 196, 16)  # (the default: the chunk kernels)
    monkeypatch.setitem(v6.CONFIG, "walk_max_t", 256)
    for backward in (False, True):
        assert not v6._chunk_algo(64, 196, 16, backward) and not v6._chunk_algo(64, 256, 16, backward)
        assert v6._chunk_algo(64, 257, 16, backward) and v6._chunk_algo(64, 4096, 16, backward)
    for bad in (-1, "x"):
        monkeypatch.setitem(v6.CONFIG, "walk_max_t", bad)
        with pytest.raises(ValueError, match="walk_max_t must be a token count >= 0"):
            v6._chunk_algo(64, 196, 16)


def test_pairs_max_t_routes_short_forwards_to_the_pair_kernel(monkeypatch):
    """``pairs_max_t``: with the chunk kernels, forwards of at most that many tokens are one launch of the sub-chunk
    pair kernel (no state kernels; ``pairs_keys=1``: after the decayed keys' kernel); longer ones, the walk kernels'
    lengths (``walk_max_t``) and every backward keep their kernels; a bad value names the setting."""
    from vision_rwkv.ops.bi_wkv6 import triton as v6
    from vision_rwkv.ops.bi_wkv6 import triton_chunk as tc
    from vision_rwkv.ops.bi_wkv6 import triton_pairs as tp

    calls = []
    monkeypatch.setattr(tp, "_pairs_fwd_kernel", _Recorder("_pairs_fwd_kernel", calls))
    monkeypatch.setattr(tp, "_pair_keys_kernel", _Recorder("_pair_keys_kernel", calls))
    monkeypatch.setattr(v6, "_v6_fwd_kernel", _Recorder("_v6_fwd_kernel", calls))
    for name in ("_state_walk_kernel", "_state_kernel", "_scan_kernel", "_fwd_kernel", "_bwd_kernel",
                 "_glogd_kernel", "_planes_kernel"):
        monkeypatch.setattr(tc, name, _Recorder(name, calls))
    for key, value in (("algo", "chunk"), ("bwd_algo", ""), ("walk_max_t", 0), ("fwd_carry", 0), ("bwd_carry", 0)):
        monkeypatch.setitem(v6.CONFIG, key, value)
    assert v6.CONFIG["pairs_max_t"] == 0  # (the default: the chunk kernels)

    def kernels(T, backward=False):
        calls.clear()
        x, u = torch.empty(2, T, 3, 64), torch.empty(3, 64)
        v6._bwd(x, x, x, x, u, x) if backward else v6._fwd(x, x, x, x, u)
        return [c[0] for c in calls]

    assert "_pairs_fwd_kernel" not in kernels(196)
    monkeypatch.setitem(v6.CONFIG, "pairs_max_t", 256)
    for T in (1, 196, 256):
        assert kernels(T) == ["_pairs_fwd_kernel"]
        assert calls[0][1] == (6, -(-T // 16)) and calls[0][2]["EVEN_N"]  # (batch * heads, sub-chunks)
    assert kernels(257)[-1] == "_fwd_kernel" and "_pairs_fwd_kernel" not in kernels(257)
    monkeypatch.setitem(v6.CONFIG, "pairs_keys", 1)  # (the sources' decayed keys written first, by their own kernel)
    assert kernels(196) == ["_pair_keys_kernel", "_pairs_fwd_kernel"]
    assert calls[0][1] == calls[1][1] == (6, 13) and calls[1][2]["KEYS"] and not calls[0][2]["DECAY"]
    monkeypatch.setitem(v6.CONFIG, "pairs_keys", 2)
    with pytest.raises(ValueError, match="pairs_keys must be 0 or 1, got 2"):
        kernels(196)
    monkeypatch.setitem(v6.CONFIG, "pairs_keys", 0)
    assert "_pairs_fwd_kernel" not in kernels(196, backward=True) and "_bwd_kernel" in kernels(196, backward=True)
    monkeypatch.setitem(v6.CONFIG, "walk_max_t", 256)  # (the walk kernels first, where both are set)
    assert kernels(196) == ["_v6_fwd_kernel", "_planes_kernel"]
    for bad in (-1, "x"):
        monkeypatch.setitem(v6.CONFIG, "walk_max_t", 0)
        monkeypatch.setitem(v6.CONFIG, "pairs_max_t", bad)
        with pytest.raises(ValueError, match="pairs_max_t must be a token count >= 0"):
            kernels(196)


class _Recorder:
    """Stands in for a Triton kernel: ``kernel[grid](*args, **meta)`` records (name, grid, meta) and runs nothing."""

    def __init__(self, name, calls):
        self.name, self.calls = name, calls

    def __getitem__(self, grid):
        return lambda *args, **meta: self.calls.append((self.name, tuple(grid), meta))


@pytest.mark.parametrize("T, walked", [(64 * 16, True), (64 * 16 + 1, False), (1, True)])
def test_states_walked_up_to_state_walk_chunks(monkeypatch, T, walked):
    """``_states`` walks the states when the sequence has at most ``state_walk`` state chunks (16 x 64 tokens by
    default), else fills increments and scans them; the backward's two (x, y) pairs share one walk launch (four
    streams) when their dtypes match, and take one each when they do not."""
    from vision_rwkv.ops.bi_wkv6 import triton as v6
    from vision_rwkv.ops.bi_wkv6 import triton_chunk as tc

    calls = []
    for name in ("_state_walk_kernel", "_state_kernel", "_scan_kernel"):
        monkeypatch.setattr(tc, name, _Recorder(name, calls))
    monkeypatch.setitem(v6.CONFIG, "state_walk", 16)
    B, H, N = 2, 3, 64
    x = torch.empty(B, T, H, N)
    cfg = v6._cfg(N, x.dtype, x.device)
    nsub, NS, NC = tc._geometry(T, cfg[0])
    tc._states([(x, x), (x, x)], x, None, cfg, T, H, N, NS, NC, cfg[1])
    names = [c[0] for c in calls]
    if walked:
        assert names == ["_state_walk_kernel"], names
        assert calls[0][1] == (B * H * 4, 4) and calls[0][2]["BR"] == 16  # 6 heads: rows split to 16 (4 blocks)
    else:
        assert names == ["_state_kernel", "_state_kernel", "_scan_kernel"], names
    calls.clear()
    if walked:  # an output gradient in another dtype than v's: a launch per pair
        tc._states([(x, x), (x, x.bfloat16())], x, None, cfg, T, H, N, NS, NC, cfg[1])
        assert [(c[0], c[1][1]) for c in calls] == [("_state_walk_kernel", 2)] * 2


def test_walk_rows():
    """State rows per walk program: all of a head's while that leaves >= 512 programs, else halved down to 16;
    ``state_rows`` set: rounded up to a power of two in [16, BN]."""
    from vision_rwkv.ops.bi_wkv6.triton_chunk import _walk_rows

    assert _walk_rows(384, 64, 0) == 64  # 224 px, batch 128, VRWKV6-T: 768 programs
    assert _walk_rows(128, 64, 0) == 32  # 256 programs with all rows: 512 with half
    assert _walk_rows(48, 64, 0) == 16  # 1024 px, batch 16: 384 programs at the 16-row floor
    assert _walk_rows(48, 16, 0) == 16
    assert _walk_rows(1, 64, 24) == 32 and _walk_rows(1, 64, 8) == 16 and _walk_rows(1, 64, 500) == 64
