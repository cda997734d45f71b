#!/usr/bin/env python3
"""Mutation check of the Triton kernels' tests: does the test suite notice a small, plausible bug in a kernel?

Each mutant is one textual change to one source file (a decay factor dropped, a mask loosened, an exponent taken
from the wrong side of a chunk, a loop cut to one pass, ...): the kind of bug that passes a test whose inputs
cannot see it (e.g. decays so strong that states between chunks fade below fp32 resolution). For every mutant the
working tree is copied to a temporary folder, the change applied there (its text must occur exactly once), and the
set's tests (or the mutant's own) run with ``--run-slow`` (what CI runs) against the copy; a mutant is "caught"
when some test fails. One mutant at a time per copy (restored after each; ``--jobs N``: N copies side by side);
each takes as long as its test files (~0.5-2.5 min on this 2-core VM).

    python tools/mutants.py --list                          # the sets and their mutants
    python tools/mutants.py v6_chunk                        # every mutant of a set
    python tools/mutants.py v4_seq fused mixer_steps --out mutants.json
    python tools/mutants.py v6_chunk --only scan_carry_nodecay
    python tools/mutants.py all --jobs 2 --out mutants.json   # every set, two mutants at a time (~1.5 h here)

Prints a table (mutant, caught, failed tests, seconds) and writes JSON with ``--out``; the exit status is 1 when a
mutant survived (or could not be applied), so the check can gate a kernel change. Survivors name a blind spot of
the tests - or an equivalent mutant (a change that does not alter the results), which the table cannot tell apart.
"""
from __future__ import annotations

import argparse
import json
import os
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[1]


class Mutant(NamedTuple):
    name: str
    old: str  # text that occurs exactly once in the mutant's file
    new: str
    file: str | None = None  # relative to the repository root; None: the set's file
    tests: tuple[str, ...] = ()  # the test files run against it; empty: the set's


class MutantSet(NamedTuple):
    file: str  # relative to the repository root: the mutants' file unless a mutant names its own
    tests: tuple[str, ...]  # the test files run against each mutant
    mutants: tuple[Mutant, ...]

    def file_of(self, mutant: Mutant) -> str:
        return mutant.file or self.file

    def tests_of(self, mutant: Mutant) -> tuple[str, ...]:
        return mutant.tests or self.tests

    def files(self) -> list[str]:
        """The files the set's mutants change, sorted."""
        return sorted({self.file_of(m) for m in self.mutants})


_m = Mutant  # (a short name for the tables below)


V6 = "vision_rwkv/ops/bi_wkv6/triton_chunk.py"
V6_SHARED = "vision_rwkv/ops/bi_wkv6/triton.py"
V6_INTRA = "vision_rwkv/ops/bi_wkv6/triton_intra.py"
V4 = "vision_rwkv/ops/bi_wkv/triton_seq.py"
V4_TILE = "vision_rwkv/ops/bi_wkv/triton.py"
SHIFT = "vision_rwkv/ops/fused/shift_triton.py"
ELEM = "vision_rwkv/ops/fused/elementwise_triton.py"
GROUP_NORM = "vision_rwkv/ops/fused/group_norm_triton.py"
ADD_NORM = "vision_rwkv/ops/fused/add_norm_triton.py"
STEPS = "vision_rwkv/ops/fused/mixer_steps_triton.py"
GEMM = "vision_rwkv/ops/fused/linear_triton.py"
MIX_GEMM = "vision_rwkv/ops/fused/mix_linear_triton.py"
MLP_GEMM = "vision_rwkv/ops/fused/mix_mlp_triton.py"
NORM_GEMM = "vision_rwkv/ops/fused/norm_linear_triton.py"
FLA = "vision_rwkv/ops/bi_wkv6/fla_route.py"
V6_PAIRS = "vision_rwkv/ops/bi_wkv6/triton_pairs.py"
_PAIR_PRODUCT = "        y += tl.dot(tl.dot(rq, tl.trans(kd), input_precision=PREC), vj, input_precision=PREC)\n"

SETS: dict[str, MutantSet] = {
    # the RWKV-6 chunk kernels (the default GPU path): intra-chunk split, states, carries, the log-decay gradient
    "v6_chunk": MutantSet(V6, ("tests/ops/test_bi_wkv6_triton.py",), (
        # the log decay's gradient summing the later sub-chunks' totals itself (few sub-chunks): its own included
        _m("inline_suffix_includes_own", "mask=((later > c) & (later < NSUB))[:, None]",
           "mask=((later >= c) & (later < NSUB))[:, None]"),
        _m("split_before_le", "upper[None, :] & (rt[None, :] < rt[:, None])",
           "upper[None, :] & (rt[None, :] <= rt[:, None])", V6_INTRA),
        _m("split_after_ge", "lower[None, :] & (rt[None, :] > rt[:, None])",
           "lower[None, :] & (rt[None, :] >= rt[:, None])", V6_INTRA),
        _m("fast_scores_always", "if tl.max(-ctot, axis=0) <= FAST_DECAY:\n        A = _fast_scores",
           "if True:\n        A = _fast_scores"),
        _m("walk_anti_swap", "xs = x * tl.exp(cex)\n        else:\n            xs = x * tl.exp(ctail)",
           "xs = x * tl.exp(ctail)\n        else:\n            xs = x * tl.exp(cex)"),
        _m("state_increment_half_total", "        before += ctot\n    off = (pid * NC + c)",
           "        before += 0.5 * ctot\n    off = (pid * NC + c)"),
        _m("scan_carry_nodecay", "s = s + gp * carry[None, :]", "s = s + carry[None, :]"),
        _m("fwd_carry_P_nodecay",
           "        P = tl.exp(ctot)[:, None] * P + tl.dot(tl.trans(k * tl.exp(ctail)), v, input_precision=PREC)",
           "        P = P + tl.dot(tl.trans(k * tl.exp(ctail)), v, input_precision=PREC)"),
        _m("fwd_carry_Q_nodecay",
           "        Q = tl.exp(ctot)[:, None] * Q + tl.dot(tl.trans(k * tl.exp(cex)), v, input_precision=PREC)",
           "        Q = Q + tl.dot(tl.trans(k * tl.exp(cex)), v, input_precision=PREC)"),
        _m("suffix_inclusive", "tl.cumsum(x, axis=0, reverse=True) - x + carry[None, :]",
           "tl.cumsum(x, axis=0, reverse=True) + carry[None, :]"),
        _m("suffix_carry_half", "carry += tl.sum(x, axis=0)", "carry += 0.5 * tl.sum(x, axis=0)"),
        _m("glogd_no_clamp", "g = tl.where(lw >= LOGD_MIN, g, 0.0)", "g = g"),
        _m("groupnorm_pad_lanes", "d = tl.where(m2, yr - mean[:, None], 0.0)", "d = yr - mean[:, None]"),
        _m("bwd_carry_gv_ecx", "tl.store(Z2 + off, tl.dot(k * etl, GP, input_precision=PREC), mask=m2)",
           "tl.store(Z2 + off, tl.dot(k * ecx, GP, input_precision=PREC), mask=m2)"),
        _m("bwd_carry_GP_etl",
           "GP = tl.exp(ctot)[:, None] * GP + tl.dot(tl.trans(r * ecx), gy, input_precision=PREC)",
           "GP = tl.exp(ctot)[:, None] * GP + tl.dot(tl.trans(r * etl), gy, input_precision=PREC)"),
        _m("bwd_carry_GQ_nodecay",
           "GQ = tl.exp(ctot)[:, None] * GQ + tl.dot(tl.trans(r * etl), gy, input_precision=PREC)",
           "GQ = GQ + tl.dot(tl.trans(r * etl), gy, input_precision=PREC)"),
        _m("edge_Q_short", "c + 1, cs * NS + NS, Q", "c + 1, cs * NS + NS - 1, Q"),
        _m("edge_P_short", "cs * NS, c, P, BT", "cs * NS + 1, c, P, BT"),
        _m("state_walk_own_decay", "si = tl.where(rev == 1, rt - 1, L - rt)",
           "si = tl.where(rev == 1, rt - 1, L - 1 - rt)"),
        _m("state_walk_edge_token", "e = tl.where(rev == 1, L - 1, 0)", "e = tl.where(rev == 1, L - 1, L - 1)"),
        _m("state_walk_rows_past_chunk", "tv = (rt < L) & (pos < T)", "tv = pos < T"),
        _m("state_walk_decays_past_chunk", "((si >= 0) & (si < L) & (ps < T))", "((si >= 0) & (ps < T))"),
        _m("bwd_gk_causal_ecx", "gk_c = etl * tl.dot(v, tl.trans(GP), input_precision=PREC)",
           "gk_c = ecx * tl.dot(v, tl.trans(GP), input_precision=PREC)"),
        _m("bwd_split_factors_swapped", "d_r, d_k, a = _split_grads(G, ma, r, k, el, eu, PREC)",
           "d_r, d_k, a = _split_grads(G, ma, r, k, eu, el, PREC)"),
        # the forward by sub-chunk pairs (pairs_max_t): the decay between sources, their order, the exclusive sums,
        # the query's factor for the sources after it, the loop's bound
        _m("pairs_no_decay_between", f"            D += tot\n{_PAIR_PRODUCT}    rq = r * tl.exp(ctail)",
           f"            D += 0.0 * tot\n{_PAIR_PRODUCT}    rq = r * tl.exp(ctail)", V6_PAIRS),
        _m("pairs_before_in_forward_order", "(c - i) * BT - 1 - rt", "(c - 1 - i) * BT + rt", V6_PAIRS),
        _m("pairs_inclusive_sums", "tl.cumsum(lw, axis=0) - lw + D", "tl.cumsum(lw, axis=0) + D", V6_PAIRS),
        _m("pairs_after_query_factor", "rq = r * tl.exp(ctail)", "rq = r * tl.exp(cex)", V6_PAIRS),
        _m("pairs_last_source_skipped", "range(c + 1, NSUB)", "range(c + 1, NSUB - 1)", V6_PAIRS),
        # pairs_keys: the stored planes, the running e^D (its start, its update), which plane the later sources take
        _m("keys_planes_swapped", "tl.store(KX + off, k * tl.exp(cex)", "tl.store(KX + off, k * tl.exp(ctail)",
           V6_PAIRS),
        _m("keys_decay_product_from_0", "D = tl.zeros([BN], tl.float32) + KEYS  # (KEYS: e^D, from 1)",
           "D = tl.zeros([BN], tl.float32) + 0 * KEYS", V6_PAIRS),
        _m("keys_no_decay_between", "E * tl.load(ET + (pid.to(tl.int64) * NSUB + j) * BN + cn)",
           "E + 0.0 * tl.load(ET + (pid.to(tl.int64) * NSUB + j) * BN + cn)", V6_PAIRS),
        _m("keys_after_from_tail_plane", "_source_keys(KX, ET", "_source_keys(KT, ET", V6_PAIRS),
    )),
    # the RWKV-6 helpers shared by the chunk and walk kernels: in-chunk cumulative decays, the fused decay, positions
    "v6_shared": MutantSet(V6_SHARED, ("tests/ops/test_bi_wkv6_triton.py",), (
        # (precision: cases of their own tolerance)
        _m("tail_sums_as_differences", "tl.cumsum(lw, axis=0, reverse=True) - lw,",
           "tl.sum(lw, axis=0)[None, :] - tl.cumsum(lw, axis=0),"),
        _m("fused_decay_padded_tokens", "x = tl.where(mask, -tl.exp(w[None, :] + x), 0.0)",
           "x = -tl.exp(w[None, :] + x)"),
        _m("walk_reversed_position", "return tl.where(d == 0, tau, T - 1 - tau)",
           "return tl.where(d == 0, tau, T - tau)"),
    )),
    # the v4 register-sequential kernels (the default GPU path), both modes (not listed: a mutant of the padded
    # tokens' factor in the forward summary's growth sums - only an original chunk's last sub-chunk has padded
    # tokens, and its growth sums are never read: an equivalent mutant, which survives)
    "v4_seq": MutantSet(V4, ("tests/ops/test_bi_wkv_triton.py", "tests/ops/test_bi_wkv_gate.py"), (
        # the output gate's backward inside the kernels (d gate, and d y = d out * s for both passes)
        _m("gate_bwd_no_derivative", "gg = tl.where(ok, gy * y * sg * (1.0 - sg), 0.0)",
           "gg = tl.where(ok, gy * y * sg, 0.0)"),
        _m("gate_bwd_grad_ungated", "        gy = gy * sg\n", "        gy = gy\n"),
        _m("summary_pad_decay", "        g = tl.where(r < n, lam, 1.0)\n        e_n = e_n * g + x * vs[r]",
           "        g = lam\n        e_n = e_n * g + x * vs[r]"),
        _m("orig_keep_shifted", "            keep = (s + r) % S != 0\n            j_n = j_n / lam + tl.where(keep, xv",
           "            keep = (s + r) % S != 1\n            j_n = j_n / lam + tl.where(keep, xv"),
        _m("orig_diag", "uu + tl.where((s + r) % S != 0, 1.0 - 1.0 / lam, 0.0)",
           "uu + tl.where((s + r) % S != 0, 1.0 - lam, 0.0)"),
        _m("bwd_gw_pad_tokens", "gw_b += tl.where(ok, bns[r] * bt_p + bds[r] * bt_q, 0.0)",
           "gw_b += bns[r] * bt_p + bds[r] * bt_q"),
        _m("orig_dkap", "dkap = gam - 2.0 * gam * gam", "dkap = gam - gam * gam"),
        _m("bwd_adjoint_pad_decay", "        g = tl.where(r < n, lam, 1.0)\n        at_p = at_p * g + ps[r]",
           "        g = lam\n        at_p = at_p * g + ps[r]"),
        _m("orig_jt_decay", "jt_p = jt_p * gg + ps[r]", "jt_p = jt_p * g + ps[r]"),
        _m("orig_anticausal_coef", "    bc = lam if ORIG else 1.0  # coefficient of the anticausal state",
           "    bc = 1.0  # coefficient of the anticausal state"),
        _m("orig_bwd_growth", "pg_ = pg_ / lam", "pg_ = pg_ * lam"),
        _m("walk_back_pad_decay", "        g = tl.where(r < n, lam, 1.0)\n        b_n = b_n * g + x * v",
           "        g = lam\n        b_n = b_n * g + x * v"),
        _m("gu_unscaled", "tl.store(GUP + poff, uu * gu * SCALE, mask=cmask)",
           "tl.store(GUP + poff, uu * gu, mask=cmask)"),
        _m("bwd_causal_adjoint_half", "bt_p = bt_p * lam + p\n", "bt_p = bt_p * lam + 0.5 * p\n"),
        _m("summary_start_sums_undecayed", "        s_d += pw * x\n        pw = pw * lam",
           "        s_d += pw * x\n        pw = pw"),
        _m("bwd_summary_start_sums_undecayed", "        s_q += pw * qq\n        pw = pw * lam",
           "        s_q += pw * qq\n        pw = pw"),
        _m("fwd_anticausal_pad_decay", "        g = tl.where(r < n, lam, 1.0)\n        b_n = b_n * g + xvs[r]",
           "        g = lam\n        b_n = b_n * g + xvs[r]"),
        _m("fwd_den_bonus_with_v", "(fds[r] + bc * b_d + dg * xs[r])", "(fds[r] + bc * b_d + dg * xvs[r])"),
        _m("fwd_gate_not_sigmoid", "y = tl.sigmoid(_row(pg, r, sgt, ok, 0.0)) * y", "y = _row(pg, r, sgt, ok, 0.0) * y"),
        _m("bwd_gu_without_q", "gu += x * (p * v + qq)", "gu += x * p * v"),
        _m("bwd_gxv_without_bonus", "gxvs = gxvs + (bc * bt_p + dg * p,)", "gxvs = gxvs + (bc * bt_p,)"),
        _m("bwd_gw_pad_rows", "gw_a += tl.where(ok, ans[r] * at_p + ads[r] * at_q, 0.0)",
           "gw_a += ans[r] * at_p + ads[r] * at_q"),
        _m("bwd_gk_outside_x", "(x * (v * gxv + gx)).to(GK.dtype.element_ty)",
           "(x * v * gxv + gx).to(GK.dtype.element_ty)"),
        _m("bwd_summary_q_from_p", "e_q = e_q * g + qq", "e_q = e_q * g + p"),
    )),
    # the fused elementwise kernels: token shift + interpolation, GroupNorm * gate, residual add + LayerNorm, the log
    # decay, the GEMM epilogues' backward from their outputs
    "fused": MutantSet(SHIFT, ("tests/ops/test_fused_triton.py", "tests/ops/test_mixer_steps.py"), (
        _m("shift_right_wraps", "col < W - 1", "col < W"),
        _m("shift_down_next_image", "row < H - 1", "row < H"),
        _m("shift_quarter_edge", "(cc >= Q3).to(tl.int32))[None, :]", "(cc > Q3).to(tl.int32))[None, :]"),
        _m("shift_bwd_own_mix", "coefi = a + tl.load(pm + isrc, mask=ivalid, other=0.0)",
           "coefi = a + tl.load(pm + offs, mask=ivalid, other=0.0)"),
        # the ddlerp LoRA's m formed inside the backward kernel: the neighbours' m of the wrong direction, or the
        # tile's own m where the neighbours' belongs
        _m("lora_bwd_neighbour_direction", "tl.full([1, 1], qq ^ 1, tl.int32)", "tl.full([1, 1], qq, tl.int32)"),
        _m("lora_bwd_own_m_for_neighbours", "            coefi = a + inv", "            coefi = a + own"),
        _m("lora_fwd_tanh_on_load_dropped", "        hf = 2.0 * tl.sigmoid(2.0 * hf) - 1.0", "        hf = hf"),
        _m("groupnorm_bwd_one_pass",
           "    for it in range(iters):\n        rows = (it * nprog + pid) * BR + tl.arange(0, BR)\n        ch, cmask",
           "    for it in range(1):\n        rows = (it * nprog + pid) * BR + tl.arange(0, BR)\n        ch, cmask",
           GROUP_NORM),
        _m("add_norm_bwd_one_pass",
           "    for it in range(iters):\n        rows = (it * nprog + pid) * BR + tl.arange(0, BR)\n        mask =",
           "    for it in range(1):\n        rows = (it * nprog + pid) * BR + tl.arange(0, BR)\n        mask =",
           ADD_NORM),
        _m("groupnorm_pad_lanes", "d = tl.where(mask, y - mean[:, :, None], 0.0)", "d = y - mean[:, :, None]",
           GROUP_NORM),
        _m("post_norm_gamma_grad_no_drop_path", "acc_g += tl.sum(gs * kk * (yhat * w + b), axis=0)",
           "acc_g += tl.sum(gs * (yhat * w + b), axis=0)", ADD_NORM),
        _m("pre_norm_gamma_grad_no_drop_path", "acc_g += tl.sum(gtot * kk * y, axis=0)",
           "acc_g += tl.sum(gtot * y, axis=0)", ADD_NORM),
        _m("groupnorm_weight_grad_last_pass", "gw += tl.sum(gog * yhat, axis=0)", "gw = tl.sum(gog * yhat, axis=0)",
           GROUP_NORM),
        _m("post_norm_weight_grad_last_pass", "acc_w += tl.sum(gln * yhat, axis=0)",
           "acc_w = tl.sum(gln * yhat, axis=0)", ADD_NORM),
        # the channel mix's receptance gate inside the residual + LayerNorm backward
        _m("add_norm_bwd_gate_no_derivative", "(gy * v * sg * (1.0 - sg))", "(gy * v * sg)", ADD_NORM),
        _m("add_norm_bwd_value_grad_ungated", "            gy = gy * sg\n", "            gy = gy\n", ADD_NORM),
        _m("groupnorm_silu_gate_grad", "ggate = ggate * sg * (1.0 + g * (1.0 - sg))", "ggate = ggate * sg",
           GROUP_NORM),
        _m("decay_w0_column_shifted", "w0 = tl.load(W0 + offs % C,", "w0 = tl.load(W0 + (offs + 1) % C,", ELEM),
        _m("relu_square_bwd_half", "(2.0 * tl.sqrt(y) * g)", "(tl.sqrt(y) * g)", ELEM),
        _m("tanh_bwd_from_out_linear", "(g * (1.0 - y * y))", "(g * (1.0 - y))", ELEM),
        _m("sigmoid_gate_bwd_no_derivative", "(g * y * s * (1.0 - s))", "(g * y * s)", ELEM),
    )),
    # the one-node mixers' backward assembly (the gradients chained between the fused kernels)
    "mixer_steps": MutantSet(STEPS, ("tests/ops/test_mixer_steps.py",), (
        _m("v6_decay_lora_tanh_grad", "gp = (gh * (1.0 - h * h)).to(GP.dtype.element_ty)",
           "gp = gh.to(GP.dtype.element_ty)", "vision_rwkv/ops/fused/lora_triton.py",
           ("tests/ops/test_mixer_steps.py", "tests/ops/test_fused_triton.py")),
        _m("v6_x_grad_not_accumulated", "[g_xxx.view(B, N, C)], gx=g_x)", "[g_xxx.view(B, N, C)])"),
        _m("v6_mix_lora_tanh_grad", "g_lora = _tanh_bwd(g_lora.view(lora.shape), lora)",
           "g_lora = g_lora.view(lora.shape)"),
        _m("v6_w0_grad_halved", "g_w0 = g_z.sum(0, dtype=torch.float32).to(w0.dtype)",
           "g_w0 = (0.5 * g_z.sum(0, dtype=torch.float32)).to(w0.dtype)"),
        _m("v4_wkv_grad_scale", "mode, chunks, 1.0 / N, out=(g_k, g_v))",
           "mode, chunks, 1.0 / (N + 1), out=(g_k, g_v))"),
        # the backbones' once-per-step casts hand each mixer its matrices: a channel mix given another block's
        _m("step_casts_other_blocks_channel_mix", "return [(casts[2 * i], casts[2 * i + 1]) for i",
           "return [(casts[2 * i], casts[2 * i - 1]) for i", file="vision_rwkv/models/_base.py",
           tests=("tests/models/test_step_casts.py",)),
    )),
    # the RWKV-6 walk kernels (any T, head sizes over 64 such as the RWKV-CLIP towers' 80, and VRWKV_TRITON_V6
    # algo=walk): the carried state, the in-chunk pairs (triton_intra.py, shared with the chunk kernels), the bonus,
    # the log decay's suffix sums, the fused decay, the planes' sum
    "v6_walk": MutantSet(V6_SHARED, ("tests/ops/test_bi_wkv6_triton.py",), (
        _m("fwd_state_nodecay",
           "        S = tl.exp(clast)[:, None] * S + tl.dot(tl.trans(kd), v, input_precision=PREC)\n\n\n@jit",
           "        S = S + tl.dot(tl.trans(kd), v, input_precision=PREC)\n\n\n@jit"),
        _m("bonus_both_directions",
           "(d == 0).to(tl.float32)\n    plane = ((d * (tl.num_programs(0) // H) + b) * T).to(tl.int64)",
           "1.0\n    plane = ((d * (tl.num_programs(0) // H) + b) * T).to(tl.int64)"),
        _m("fwd_state_read_ctail", "y = tl.dot(r * tl.exp(cex), S, input_precision=PREC)",
           "y = tl.dot(r * tl.exp(ctail), S, input_precision=PREC)"),
        # the in-chunk pairs as tensor-core products (triton_intra.py): through the chunk's start for weak decays,
        # the exact binary split for strong ones
        _m("causal_scores_fast_always",
           "    if tl.max(-ctot, axis=0) <= FAST_DECAY:\n        A = tl.where(lo, tl.dot(r * tl.exp(cex)",
           "    if True:\n        A = tl.where(lo, tl.dot(r * tl.exp(cex)", V6_INTRA),
        # (not listed: the diagonal let into the weak-decay scores - equivalent: the kernel overwrites it with the
        # bonus)
        _m("causal_scores_fast_both_triangles",
           "    lo = rt[None, :] < rt[:, None]\n    if tl.max(-ctot, axis=0) <= FAST_DECAY:\n        A = tl.where(lo,",
           "    lo = rt[None, :] != rt[:, None]\n    if tl.max(-ctot, axis=0) <= FAST_DECAY:\n        A = tl.where(lo,",
           V6_INTRA),
        _m("causal_scores_split_anticausal_too", "A = _split_scores(r, k, lw, rt, BT, PREC, False)",
           "A = _split_scores(r, k, lw, rt, BT, PREC, True)", V6_INTRA),
        _m("split_scores_last_level_only", "        B2 = B2 // 2\n    return A\n", "        B2 = 1\n    return A\n",
           V6_INTRA),
        _m("causal_grad_r_fast_diag", "G_lo = tl.where(rt[None, :] < rt[:, None], G, 0.0)",
           "G_lo = tl.where(rt[None, :] <= rt[:, None], G, 0.0)", V6_INTRA),
        _m("causal_grad_r_split_factors_swapped", "d_rl, _, _ = _split_grads(G, mc, r, k, eu, el, PREC)",
           "d_rl, _, _ = _split_grads(G, mc, r, k, el, eu, PREC)", V6_INTRA),
        _m("causal_grad_k_fast_key_factor", "d_k = ecn * tl.dot(tl.trans(tl.where(lo, G, 0.0)), rx",
           "d_k = tl.dot(tl.trans(tl.where(lo, G, 0.0)), rx", V6_INTRA),
        _m("causal_grad_k_split_scores_dropped", "            A += a\n            B2 = B2 // 2\n    return d_k, A",
           "            B2 = B2 // 2\n    return d_k, A", V6_INTRA),
        _m("fwd_scores_total_as_tail", "A = _causal_scores(r, k, lw, cex, clast, rt, BT, PREC)",
           "A = _causal_scores(r, k, lw, cex, ctail, rt, BT, PREC)"),
        _m("bwd_gr_state_nodecay", "gr = tl.exp(cex) * tl.dot(gy, tl.trans(S), input_precision=PREC)",
           "gr = tl.dot(gy, tl.trans(S), input_precision=PREC)"),
        _m("bwd_gk_state_nodecay", "gk = eb * tl.dot(v, tl.trans(dS), input_precision=PREC)",
           "gk = tl.dot(v, tl.trans(dS), input_precision=PREC)"),
        _m("bwd_gv_state_nodecay", "gv = tl.dot(k * eb, dS, input_precision=PREC)",
           "gv = tl.dot(k, dS, input_precision=PREC)"),
        _m("bwd_dS_nodecay", "dS = tl.exp(clast)[:, None] * dS +", "dS = dS +"),
        _m("bwd_glog_inclusive", "glog = tl.cumsum(x, axis=0, reverse=True) + acc[None, :] - dterm",
           "glog = tl.cumsum(x, axis=0, reverse=True) + acc[None, :]"),
        _m("bwd_glog_carry_last", "acc += tl.sum(x, axis=0)", "acc = tl.sum(x, axis=0)"),
        _m("bwd_glog_no_clamp", "glog = tl.where(lwraw >= LOGD_MIN, glog, 0.0)", "glog = glog"),
        _m("bwd_gu_both_directions", "gu = gu * (d == 0).to(tl.float32)", "gu = gu"),
        _m("bwd_gk_bonus_k", "gk += u[None, :] * r * gvy[:, None]", "gk += u[None, :] * k * gvy[:, None]"),
        _m("bwd_gv_intra_untransposed", "gv += tl.dot(tl.trans(A), gy, input_precision=PREC)",
           "gv += tl.dot(A, gy, input_precision=PREC)"),
        _m("bwd_gk_pairs_transposed_G", "gk_pairs, A = _causal_grad_k(G, r, k, lw,",
           "gk_pairs, A = _causal_grad_k(tl.trans(G), r, k, lw,"),
        # the fused decay (z and w0 read, -exp(w0 + z) formed as loaded) and the planes' sum (+ GroupNorm * gate)
        _m("fwd_decay_not_formed", "sln, m2, N, DECAY), LOGD_MIN)\n        cex, ctail, clast = _cums(lw)",
           "sln, m2, N, False), LOGD_MIN)\n        cex, ctail, clast = _cums(lw)"),
        # the forward's value-column blocks (walk_bv)
        _m("fwd_value_block_first_columns", "cv = tl.program_id(2) * BV + tl.arange(0, BV)", "cv = tl.arange(0, BV)"),
        _m("fwd_value_block_store_all_rows", "tl.store(yp, y, mask=mv)",
           "tl.store(yp, y, mask=mv | (tv[:, None] & (cv >= 0)[None, :]))"),
        _m("bwd_decay_grad_not_scaled", "            glog = glog * lwraw\n", "            glog = glog\n"),
        _m("planes_second_direction_dropped",
           "y = tl.load(Y2 + off, mask=m2, other=0.0) + tl.load(Y2 + plane + off, mask=m2, other=0.0)",
           "y = tl.load(Y2 + off, mask=m2, other=0.0)", V6),
        _m("planes_block_count_floor", "    nblk = tl.cdiv(T, BT)\n    pid = tl.program_id(0) // nblk",
           "    nblk = T // BT\n    pid = tl.program_id(0) // nblk", V6),
        _m("bwd_dterm_with_bonus",
           "        dterm = r * gr\n        gvy = tl.sum(gy * v, axis=1)\n        gr += u[None, :] * k * gvy[:, None]\n",
           "        gvy = tl.sum(gy * v, axis=1)\n        gr += u[None, :] * k * gvy[:, None]\n        dterm = r * gr\n"),
    )),
    # the v4 tile-scan kernels (VRWKV_TRITON_V4 seq=0; the default before round 6), both modes: chunk geometry, the
    # in-chunk associative scans, chunk summaries, the carry scan over chunks (blocks of carry_ncb), the backward's
    # exclusive adjoint scans and gradient formulas
    "v4_tile": MutantSet(V4_TILE, ("tests/ops/test_bi_wkv_triton.py",), (
        _m("geometry_never_last", "return s, n, q, e >= oe", "return s, n, q, e > oe"),
        _m("causal_gate_first_row", "g_c = tl.where((r >= 1)[:, None], lam2, 1.0)", "g_c = lam2"),
        _m("anticausal_scan_forward", "tl.associative_scan((g_a, xn * vn, xn), 0, _lin_comb, reverse=True)",
           "tl.associative_scan((g_a, xn * vn, xn), 0, _lin_comb)"),
        _m("orig_local_keep_unshifted", "keep = (((t - 1) % S) != 0)[:, None]", "keep = ((t % S) != 0)[:, None]"),
        _m("summary_start_from_end", "xs = tl.exp(ke - w[None, :] * d_start)", "xs = tl.exp(ke - w[None, :] * d_end)"),
        _m("summary_empty_chunk_max", "mj_safe = tl.where(mj > -float(\"inf\"), mj, 0.0)", "mj_safe = mj"),
        _m("carry_block_first_row", "pick = (rows == NCB - 1)[:, None]", "pick = (rows == 0)[:, None]"),
        _m("carry_block_reverse_last_row", "pick = (rows == 0)[:, None]\n        else:",
           "pick = (rows == NCB - 1)[:, None]\n        else:"),
        _m("carry_no_reset_at_chunk_start", "g = tl.where((q == 0)[:, None], 0.0, g)", "g = g"),
        _m("excl_before_last_gate", "h2 * p1 + ep2, h2 * q1 + eq2", "g2 * p1 + ep2, g2 * q1 + eq2"),
        _m("bwd_gk_outside_x", "gk = x * (v * gxv + gx)", "gk = x * (v * gxv) + gx"),
        _m("bwd_gw_sign", "gw_e = -lam[None, :] * (a_n * at_p", "gw_e = lam[None, :] * (a_n * at_p"),
        _m("bwd_jt_at_chunk_start", "jt_p = tl.where(notstart, ejp + hj * cjt_p[None, :], 0.0)",
           "jt_p = ejp + hj * cjt_p[None, :]"),
        _m("bwd_local_carry_after_last", "is_last == 0, NCAR, ORIG, True)", "is_last == 1, NCAR, ORIG, True)"),
        _m("gu_unscaled", "tl.store(GUP + poff, tl.sum(gu_e, axis=0) * SCALE, mask=cmask)",
           "tl.store(GUP + poff, tl.sum(gu_e, axis=0), mask=cmask)"),
    )),
    # the GEMMs with fused epilogues / operands (opt-ins: VRWKV_FUSED_GEMM, VRWKV_FUSED_MIX, VRWKV_FUSED_MLP): tile
    # order, K tails, the activations, the residual add + LayerNorm epilogue, the Q-Shift operand, the grouped
    # projections, the one-pass MLP, the GroupNorm * gate operand (not listed: the pre-norm epilogue's LayerNorm of the
    # unrounded sum instead of the stored one - the same for an fp32 residual stream, and within the 16-bit tolerance
    # (~2^-8 relative) otherwise: a mutant the tests cannot tell apart, which survives)
    "gemm": MutantSet(GEMM, ("tests/ops/test_fused_triton.py", "tests/ops/test_fused.py"), (
        _m("tile_group_rows_full", "group_rows = tl.minimum(num_m - first_m, GROUP_M)", "group_rows = GROUP_M"),
        _m("k_tail_one_past", "k_ok = (k0 + rk) < K", "k_ok = (k0 + rk) <= K"),
        _m("relu_square_no_relu", "pos = tl.maximum(acc, 0.0)\n        res = pos * pos",
           "pos = acc\n        res = pos * pos"),
        _m("tanh_half_argument", "2.0 * tl.sigmoid(2.0 * acc) - 1.0", "2.0 * tl.sigmoid(acc) - 1.0"),
        _m("decay_w0_subtracted", "-tl.exp(acc + tl.load(AUX + rn", "-tl.exp(acc - tl.load(AUX + rn"),
        _m("row_norm_pad_lanes", "d = tl.where(mask, v - mean[:, None], 0.0)", "d = v - mean[:, None]"),
        _m("post_norm_affine_outside_gamma", "x + gamma * (_row_norm(val, mask, N, eps) * w + b)",
           "x + gamma * _row_norm(val, mask, N, eps) * w + b"),
        _m("mix_one_minus_ignored", "coef = 1.0 - coef\n            if HAS_LORA:",
           "coef = coef\n            if HAS_LORA:", MIX_GEMM),
        _m("mix_token_index_global", "n_img = rm % NTOK  #", "n_img = rm  #", MIX_GEMM),
        _m("mix_quarters_not_per_head", "cc = c % HS if HS > 0 else c", "cc = c", MIX_GEMM),
        _m("mix_group_lora_shared", "HH += proj * R", "HH += proj * 0", MIX_GEMM),
        _m("mix_group_weights_swapped", "tl.where(proj == 2, WT2, tl.where(proj == 3, WT3, WT))",
           "tl.where(proj == 2, WT3, tl.where(proj == 3, WT2, WT))", MIX_GEMM),
        _m("mix_lora_coef_dropped", "coef = coef + tl.dot(hf,", "coef = coef * 1.0 + 0.0 * tl.dot(hf,", MIX_GEMM),
        _m("mlp_one_minus_ignored", "coef = 1.0 - coef\n    amix", "coef = coef\n    amix", MLP_GEMM),
        _m("mlp_value_rows_stride", "pv += BH * svk", "pv += BH * svn", MLP_GEMM),
        _m("mlp_relu_not_squared", "acc = tl.dot((pos * pos).to(wv.dtype)", "acc = tl.dot((pos).to(wv.dtype)",
           MLP_GEMM),
        _m("norm_eps_outside_sqrt", "rstd = 1.0 / tl.sqrt(tl.sum(d * d, axis=1) / HS + eps)",
           "rstd = 1.0 / (tl.sqrt(tl.sum(d * d, axis=1) / HS) + eps)", NORM_GEMM),
        _m("norm_gate_silu_dropped", "g = g * tl.sigmoid(g)", "g = tl.sigmoid(g)", NORM_GEMM),
        _m("norm_first_head_only", "for k0 in range(0, K, HS):  # one head per step",
           "for k0 in range(0, HS, HS):  # one head per step", NORM_GEMM),
        # their backward's host code: the recomputed operands, the epilogue's derivative
        _m("mix_bwd_recompute_without_one_minus", "_tsm_fwd(x, H, W, head_size, a1, None, weight.dtype, one_minus)",
           "_tsm_fwd(x, H, W, head_size, a1, None, weight.dtype, False)", MIX_GEMM),
        _m("mlp_bwd_wk_grad_before_relu_square", "gwk = gpre.t() @ mix", "gwk = ghidden.t() @ mix", MLP_GEMM),
        _m("norm_bwd_recompute_without_silu", "_gn_mul_fwd(y, g, groups, gn_weight, gn_bias, eps, silu, weight.dtype)",
           "_gn_mul_fwd(y, g, groups, gn_weight, gn_bias, eps, False, weight.dtype)", NORM_GEMM),
    )),
    # loads loosened in a way the numbers cannot see - lanes past the data read, then discarded by a masked store, a
    # zero operand or unused state columns: on a GPU they read other memory (or fault); the interpreter's address
    # checks (vision_rwkv.ops.interpret_checks, on in every CPU kernel test) are what catches them
    "bounds": MutantSet(ELEM, ("tests/ops/test_fused_triton.py",), (
        _m("sigmoid_mul_gate_tail",
           "    r = tl.load(R + offs, mask=mask, other=0.0).to(tl.float32)\n"
           "    y = tl.load(Y + offs, mask=mask, other=0.0).to(tl.float32)\n    tl.store(OUT",
           "    r = tl.load(R + offs).to(tl.float32)\n"
           "    y = tl.load(Y + offs, mask=mask, other=0.0).to(tl.float32)\n    tl.store(OUT"),
        _m("relu_square_tail", "x = tl.maximum(tl.load(X + offs, mask=mask, other=0.0).to(tl.float32), 0.0)\n"
           "    tl.store(OUT", "x = tl.maximum(tl.load(X + offs).to(tl.float32), 0.0)\n    tl.store(OUT"),
        _m("gemm_weight_k_tail", "b = tl.load(pw, mask=k_ok[:, None] & n_ok[None, :], other=0.0)",
           "b = tl.load(pw, mask=n_ok[None, :], other=0.0)", GEMM),
        _m("v4_seq_decay_padded_channels", "lam = tl.exp(-tl.load(W + cols, mask=cmask, other=0.0) * SCALE)",
           "lam = tl.exp(-tl.load(W + cols) * SCALE)", V4, ("tests/ops/test_bi_wkv_triton.py",)),
        _m("v6_state_walk_values_past_head", "y = _ld(Yb, pos, cn, syt, syn, tv[:, None] & (cn < N)[None, :])",
           "y = _ld(Yb, pos, cn, syt, syn, tv[:, None] & (cn < BN)[None, :])", V6,
           ("tests/ops/test_bi_wkv6_triton.py",)),
    )),
    # the route through flash-linear-attention's causal kernels (algo=fla): the reversed pass, its flips, the bonus
    # on one pass only, the clamp and its derivative, contiguous copies, the scores each backward pass is handed
    "fla_route": MutantSet(FLA, ("tests/ops/test_bi_wkv6_fla.py",), (
        _m("fwd_bonus_both_passes", "lf, torch.zeros_like(u), 1.0, None, False", "lf, u, 1.0, None, False"),
        _m("fwd_reverse_not_flipped_back", "y.add_(torch.flip(y_rev, dims=(1,)))", "y.add_(y_rev)"),
        _m("bwd_output_grad_not_flipped", "torch.zeros_like(u), gy_rev)", "torch.zeros_like(u), gy)"),
        _m("bwd_grads_not_flipped_back", "a.float() + torch.flip(b.float(), dims=(1,))", "a.float() + b.float()"),
        _m("bwd_clamp_derivative_dropped", "grads[3] = torch.where(logd >= logd_min, grads[3], 0.0)",
           "grads[3] = grads[3]"),
        _m("bwd_u_grad_of_both_passes", "grads.append(causal[4])", "grads.append(causal[4] + rev[4])"),
        _m("no_clamp", "ld = logd.float().clamp(min=logd_min).contiguous()", "ld = logd.float().contiguous()"),
        _m("log_decay_strided", "ld = logd.float().clamp(min=logd_min).contiguous()",
           "ld = logd.float().clamp(min=logd_min)"),
        _m("bwd_scores_without_bonus", "A = fc.chunk_rwkv6_fwd_intra(r, k, gi, ge, u, 1.0",
           "A = fc.chunk_rwkv6_fwd_intra(r, k, gi, ge, torch.zeros_like(u), 1.0"),
    )),
}


def check_applies(mset: MutantSet, root: Path = ROOT) -> list[str]:
    """Problems of a set against the source under ``root``: mutants whose text does not occur exactly once, and
    repeated names (empty when every mutant applies)."""
    srcs = {f: (root / f).read_text() for f in mset.files()}
    problems = []
    for m in mset.mutants:
        count = srcs[mset.file_of(m)].count(m.old)
        if count != 1:
            problems.append(f"{m.name}: its text occurs {count} times in {mset.file_of(m)} (must be once)")
    names = [m.name for m in mset.mutants]
    problems += [f"{n}: repeated name" for n in sorted({n for n in names if names.count(n) > 1})]
    return problems


def copy_tree(root: Path, dest: Path) -> None:
    """The working tree's files (tracked and untracked, not ignored) copied under ``dest``; without git, every file
    but caches and .git."""
    try:
        out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=root, capture_output=True,
                             check=True).stdout.decode()
        files = [f for f in out.split("\0") if f and (root / f).is_file()]
    except (OSError, subprocess.CalledProcessError):
        files = [str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and ".git" not in p.parts
                 and "__pycache__" not in p.parts]
    for f in files:
        (dest / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / f, dest / f)


def run_mutant(copy: Path, mset: MutantSet, mutant: Mutant, pytest_args: tuple[str, ...] = ("--run-slow",),
               timeout: float = 1800) -> dict:
    """Apply one mutant in ``copy`` (a copy of the repository), run the set's tests there, restore the file; a row:
    caught (some test failed), the failed tests, pytest's summary line, seconds."""
    path = copy / mset.file_of(mutant)
    src = path.read_text()
    if src.count(mutant.old) != 1:
        return {"mutant": mutant.name, "caught": None, "error": f"its text occurs {src.count(mutant.old)} times"}
    path.write_text(src.replace(mutant.old, mutant.new))
    path_list = [str(copy)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(path_list))
    t0 = time.time()
    try:
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider", *pytest_args,
                               *mset.tests_of(mutant)], cwd=copy, env=env, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"mutant": mutant.name, "caught": None, "error": f"tests ran past {timeout:.0f} s"}
    finally:
        path.write_text(src)
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", proc.stdout, re.M)  # (a fixture that raised: ERROR)
    lines = proc.stdout.strip().splitlines()
    summary = lines[-1] if lines else proc.stderr.strip()[-300:]
    if proc.returncode not in (0, 1):  # (2: interrupted / collection error, 5: no tests - not a verdict)
        return {"mutant": mutant.name, "caught": None, "error": f"pytest exit {proc.returncode}: {summary}"}
    return {"mutant": mutant.name, "caught": proc.returncode == 1, "failed": failed, "summary": summary,
            "seconds": round(time.time() - t0, 1)}


def run_sets(names: list[str], only: list[str] | None = None, root: Path = ROOT, sets: dict | None = None,
             pytest_args: tuple[str, ...] = ("--run-slow",), workers: int = 1) -> list[dict]:
    """Every mutant of the named sets (or those named in ``only``) against temporary copies of ``root``: ``workers``
    mutants at a time, each worker in a copy of its own. Rows in the sets' order."""
    from tqdm import tqdm

    sets = SETS if sets is None else sets
    jobs = [(n, m) for n in names for m in sets[n].mutants if not only or m.name in only]
    workers = max(1, min(workers, len(jobs)))
    with tempfile.TemporaryDirectory(prefix="mutants_") as tmp:
        copies: queue.SimpleQueue = queue.SimpleQueue()  # the copies not in use
        for i in range(workers):
            copy = Path(tmp) / f"tree{i}"
            copy_tree(root, copy)
            copies.put(copy)

        def run(job):
            set_name, mutant = job
            copy = copies.get()
            try:
                return {"set": set_name, **run_mutant(copy, sets[set_name], mutant, pytest_args)}
            finally:
                copies.put(copy)

        with ThreadPoolExecutor(workers) as pool:
            return list(tqdm(pool.map(run, jobs), total=len(jobs), desc="mutants", unit="mutant"))


def format_table(rows: list[dict]) -> str:
    lines = ["| set | mutant | caught | failed tests | s |", "|---|---|---|---|---|"]
    for r in rows:
        caught = {True: "yes", False: "**no**", None: "error"}[r["caught"]]
        lines.append(f"| {r['set']} | {r['mutant']} | {caught} | {len(r.get('failed', []))} | "
                     f"{r.get('seconds', '')} |" + (f" {r['error']}" if r.get("error") else ""))
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sets", nargs="*", help=f"mutant sets: {', '.join(SETS)}, or all")
    ap.add_argument("--only", nargs="+", help="only these mutants (by name)")
    ap.add_argument("--list", action="store_true", help="list the sets and their mutants, check they apply, exit")
    ap.add_argument("--out", help="write the rows as JSON")
    ap.add_argument("--jobs", type=int, default=1,
                    help="mutants tested at a time, each in its own copy of the tree (a test run mostly keeps one "
                         "core busy: up to the cores)")
    args = ap.parse_args(argv)
    if args.sets == ["all"]:
        args.sets = list(SETS)
    unknown = [n for n in args.sets if n not in SETS]
    if unknown:
        ap.error(f"unknown mutant set(s) {unknown}; known: {list(SETS)}")
    if args.list or not args.sets:
        bad = 0
        for name, mset in SETS.items():
            problems = check_applies(mset)
            bad += len(problems)
            print(f"{name}: {' '.join(mset.files())} ({len(mset.mutants)} mutants; tests: {' '.join(mset.tests)})")
            print("  " + ", ".join(m.name for m in mset.mutants))
            for p in problems:
                print(f"  PROBLEM {p}")
        return 1 if bad else 0
    names = {m.name for n in args.sets for m in SETS[n].mutants}
    missing = sorted(set(args.only or ()) - names)
    if missing:
        ap.error(f"no mutant named {missing} in the set(s) {args.sets}")
    rows = run_sets(args.sets, args.only, workers=args.jobs)
    print(format_table(rows))
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))
    return 0 if all(r["caught"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
