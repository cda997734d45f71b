"""Every Triton kernel the models launch on their fused path compiles for an H100 (sm_90), forward and backward, with
the default kernels and with every opt-in (the mixed-operand GEMMs in inference and in training), fp32 and bf16
autocast, drop path in training, and fits the shared memory of an H100 block - checked on CPU.

The interpreter tests (``test_fused_path.py``, ``tests/ops``) check what the kernels compute; they cannot see
programs that only the GPU compiler rejects (a jit helper returning different shapes from two branches passed every
interpreter test and failed every CUDA compile). ``_compile_models.py`` runs the models with each launch turned into
an ahead-of-time compile (``vision_rwkv.kernel_report.capture_kernels``) in a fresh process.
"""
import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")
from vision_rwkv.kernel_report import cuobjdump_path  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
H100_MAX_SHARED = 227 * 1024  # bytes of shared memory one block can opt in to on sm_90
OPT_INS = {"VRWKV_TRITON_V4": "seq=1", "VRWKV_TRITON_V6": "algo=chunk", "VRWKV_FUSED_GEMM": "1"}
TILE, WALK = {"VRWKV_TRITON_V4": "seq=0"}, {"VRWKV_TRITON_V6": "algo=walk"}  # the WKV kernels that are not default
LARGE = {"embed_dim": 64, "depth": 1, "head_hidden_size": 32, "pos_embed_grid": 2, "wkv_mode": "original"}
CASES = [
    ["vrwkv_tiny_patch16_224", {"embed_dim": 64, "depth": 2}, TILE],  # pre-norm chain, exact tile-scan WKV
    ["vrwkv_tiny_patch16_224", {"embed_dim": 64, "depth": 2, "amp": True}, OPT_INS],  # seq WKV, GEMM epilogues
    ["vrwkv_tiny_patch16_224", {"embed_dim": 64, "depth": 1, "amp": True},  # seq WKV with register caps
     {"VRWKV_TRITON_V4": "seq=1,seq_maxnreg=96,seq_bwd_maxnreg=128"}],
    ["vrwkv_small_patch16_224", {"embed_dim": 64, "depth": 2, "drop_path_rate": 0.5, "train": True, "amp": True}, TILE],
    ["vrwkv_large_patch16_384", LARGE, TILE],  # key norm, original-mode WKV
    ["vrwkv_large_patch16_384", dict(LARGE, amp=True), {"VRWKV_TRITON_V4": "seq=1", "VRWKV_FUSED_GEMM": "1"}],
    ["vrwkv6_small_patch16_224", {"embed_dim": 128, "depth": 2, "drop_path_rate": 0.5, "train": True}, WALK],
    ["vrwkv6_tiny_patch16_224", {"embed_dim": 128, "depth": 2, "amp": True}, OPT_INS],  # chunk-parallel v6
    # the chunk forward's state-chunk programs (fwd_carry=1), inference at 224 (4 state chunks of 4 sub-chunks), with
    # the register cap (maxnreg=128: ptxas spills instead)
    ["vrwkv6_tiny_patch16_224", {"embed_dim": 128, "depth": 1, "amp": True, "infer": True},
     {"VRWKV_TRITON_V6": "algo=chunk,fwd_carry=1,maxnreg=128"}],
    # the chunk backward's state-chunk programs (bwd_carry=1), a bf16 training step at 224, the states' increments
    # scanned (state_walk=0; the default walks the 4 state chunks of 224 px), the log decay's suffix sums by their
    # own kernel (suffix_inline=0; the default sums the 13 sub-chunks' in the gradient kernel)
    ["vrwkv6_tiny_patch16_224", {"embed_dim": 128, "depth": 1, "amp": True, "train": True},
     {"VRWKV_TRITON_V6": "algo=chunk,bwd_carry=1,state_walk=0,suffix_inline=0"}],
    # the forward by sub-chunk pairs (pairs_max_t: 196 tokens, no states) under the chunk backward, a bf16 training
    # step at 224
    ["vrwkv6_tiny_patch16_224", {"embed_dim": 128, "depth": 1, "amp": True, "train": True},
     {"VRWKV_TRITON_V6": "algo=chunk,pairs_max_t=256"}],
    # the same forward after the decayed keys' kernel (pairs_keys=1), inference in bf16
    ["vrwkv6_tiny_patch16_224", {"embed_dim": 128, "depth": 1, "amp": True, "infer": True},
     {"VRWKV_TRITON_V6": "algo=chunk,pairs_max_t=256,pairs_keys=1"}],
    # RWKV-CLIP image tower: head size 80 (padded to 128), where the chunk-parallel v6 kernels would need more shared
    # memory than an H100 block has: the walk kernels run instead
    ["vrwkv6_clip_patch16_224", {"depth": 1, "amp": True}, OPT_INS],
    # inference with the interpolations inside the projections' GEMMs: v4 (bf16), v6 with the GEMM epilogues (bf16),
    # v6 post-norm on the fp32 residual stream
    ["vrwkv_tiny_patch16_224", {"embed_dim": 64, "depth": 2, "amp": True, "infer": True}, {"VRWKV_FUSED_MIX": "1"}],
    ["vrwkv_tiny_patch16_224", {"embed_dim": 192, "depth": 1, "amp": True, "infer": True},
     {"VRWKV_FUSED_MIX": "1", "VRWKV_FUSED_MLP": "1"}],  # the fused MLP at VRWKV-T's width
    ["vrwkv6_tiny_patch16_224", {"embed_dim": 128, "depth": 1, "amp": True, "infer": True},
     {"VRWKV_FUSED_MIX": "1", "VRWKV_FUSED_GEMM": "1"}],
    ["vrwkv6_small_patch16_224", {"embed_dim": 128, "depth": 1, "infer": True}, {"VRWKV_FUSED_MIX": "1"}],
    # training through the mixed-operand GEMMs (their backward recomputes the mixed inputs / the MLP hidden)
    ["vrwkv_tiny_patch16_224", {"embed_dim": 192, "depth": 1, "amp": True, "train": True},
     {"VRWKV_FUSED_MIX_TRAIN": "1", "VRWKV_FUSED_MLP": "1"}],
    ["vrwkv6_small_patch16_224", {"embed_dim": 128, "depth": 1, "amp": True, "train": True, "drop_path_rate": 0.5},
     {"VRWKV_FUSED_MIX_TRAIN": "1"}],
    ["rwkv_clip.TextRWKV", {"vocab_size": 97, "context_length": 77, "width": 128, "layers": 2, "head_size": 64,
                            "hidden_dim": 256, "tokens": 77, "amp": True}, {}],
]


def _all_kernels() -> set:
    """module:name of every Triton kernel of the operator modules (the v4 ones are built with triton.jit at import)."""
    os.environ.pop("TRITON_INTERPRET", None)
    code = ("import json, triton.runtime.jit as j\n"
            "from vision_rwkv.ops.bi_wkv import triton as a, triton_seq as b\n"
            "from vision_rwkv.ops.bi_wkv6 import triton as c, triton_chunk as d, triton_pairs as d2\n"
            "from vision_rwkv.ops.fused import shift_triton as e, linear_triton as f, mix_linear_triton as g\n"
            "from vision_rwkv.ops.fused import norm_linear_triton as h, mix_mlp_triton as i, lora_triton as l\n"
            "from vision_rwkv.ops.fused import elementwise_triton as m1, group_norm_triton as m2\n"
            "from vision_rwkv.ops.fused import add_norm_triton as m3\n"
            "ks = [k for v in a._KERNELS.values() for k in v] + list(b._KERNELS.values())\n"
            "ks += [v for m in (c, d, d2, e, f, g, h, i, l, m1, m2, m3) for n, v in vars(m).items()"
            " if isinstance(v, j.JITFunction)"
            " and n.endswith('_kernel') and v.__module__ == m.__name__]\n"
            "print(json.dumps(sorted({f'{k.fn.__module__}:{k.fn.__name__}' for k in ks})))")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


@pytest.mark.slow
@pytest.mark.skipif(cuobjdump_path() is None, reason="Triton's NVIDIA backend tools (ptxas) not found")
def test_model_kernels_compile_for_sm90():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VRWKV_", "TRITON_"))}
    proc = subprocess.run([sys.executable, os.path.join(HERE, "_compile_models.py"), json.dumps(CASES)], env=env,
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-4000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    compiled = set(res.pop("kernels"))
    shared = res.pop("max_shared_bytes")
    failed = {k: v for k, v in res.items() if not v.startswith("ok ")}
    assert not failed, "\n\n".join(f"{k}:\n{v}" for k, v in failed.items())
    assert all(int(v.split()[1]) > 0 for v in res.values()), res  # every case launched kernels
    assert compiled == _all_kernels(), (sorted(_all_kernels() - compiled), sorted(compiled - _all_kernels()))
    # a block may have at most 227 KB of shared memory on an H100 (Triton raises OutOfResources at launch above it)
    over = {k: v for k, v in shared.items() if v > H100_MAX_SHARED}
    assert not over, over
