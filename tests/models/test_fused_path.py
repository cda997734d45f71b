"""The models' fused GPU path computes the same function as their plain-PyTorch path, and the models compile.

* CPU: a subprocess runs tiny models under ``TRITON_INTERPRET=1`` twice - plain path (``VRWKV_BACKEND=reference``)
  vs fused path (``VRWKV_BACKEND=triton``: fused elementwise kernels + Triton WKV kernels, NaN-poisoned) - and
  compares logits and every parameter gradient (v4 pre-norm - the fused chain where each residual add carries the
  next LayerNorm -, v4 post-norm with key norm and layer scale, v6
  post-norm, v6 with a head size that is not a power of two; non-square grids from padded images; the fused path
  traced by ``torch.compile(fullgraph=True)`` as the model's first call; the RWKV-CLIP text tower, whose 1-D shift
  has no fused shift kernel but whose decay, GroupNorm * gate, relu^2, sigmoid gate, residual + LayerNorm chain and
  WKV run fused: T not a multiple of the kernel blocks, batch 1, head size 12, odd hidden width). Each case also
  checks which fused kernels ran, so a model that silently stayed on the plain path fails.
* CPU: ``torch.compile(model, fullgraph=True)`` traces both families (reference path) without a graph break.
* CUDA (when present): fused vs plain path under bf16 autocast at a real size, and the fused model under
  ``torch.compile(fullgraph=True)``.
"""
import json
import os
import subprocess
import sys

import pytest
import timm
import torch

import vision_rwkv  # noqa: F401

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from _fused_model_case import TEXT_TOWER, compare  # noqa: E402

CASES = [
    ["vrwkv_tiny_patch16_224", {"embed_dim": 24, "depth": 2}],
    ["vrwkv_large_patch16_384", {"embed_dim": 12, "depth": 1, "head_hidden_size": 8, "pos_embed_grid": 2}],
    ["vrwkv6_small_patch16_224", {"embed_dim": 32, "depth": 2, "head_size": 16}],
    ["vrwkv6_tiny_patch16_224", {"embed_dim": 24, "depth": 2, "head_size": 12}],
    ["vrwkv_small_patch16_224", {"embed_dim": 16, "depth": 1, "compile": True}],
    [TEXT_TOWER, {"vocab_size": 97, "context_length": 16, "width": 32, "layers": 2, "head_size": 16,
                  "hidden_dim": 72, "tokens": 13}],
    [TEXT_TOWER, {"vocab_size": 97, "context_length": 16, "width": 36, "layers": 3, "head_size": 12,
                  "hidden_dim": 50, "tokens": 7, "batch": 1}],
]
V4_OPS = {"token_shift_mix", "linear_stack", "sigmoid_mul", "relu_square", "add_norm", "wkv:bi_wkv"}
V6_OPS = {"token_shift_mix", "token_shift_mix_lora", "linear_stack", "sigmoid_mul", "relu_square", "group_norm_mul",
          "lora_mlp", "decay_logd", "add_norm", "wkv:bi_wkv6"}
TEXT_OPS = {"sigmoid_mul", "relu_square", "group_norm_mul", "lora_mlp", "decay_logd", "add_norm", "wkv:bi_wkv6"}
# with autograd recording (eager training) each Q-Shift mixer without a key norm runs as ONE autograd node
# (vision_rwkv.ops.fused.mixer_steps) that also does its block's residual add + LayerNorm (no separate add_norm);
# key norms (case 1, v4-L) and the text tower's 1-D shift keep the per-op path
V4_STEP = {"step:spatial_mix", "step:channel_mix"}
V6_STEP = {"step:time_mix6", "step:channel_mix"}
# fused kernels each case must run (None: compiled pass, not counted); the text tower has no fused 1-D shift
EXPECTED_CALLS = [V4_STEP, V4_OPS, V6_STEP, V6_STEP, None, TEXT_OPS, TEXT_OPS]
PER_OP_CALLS = [V4_OPS, V4_OPS, V6_OPS, V6_OPS, None, TEXT_OPS, TEXT_OPS]  # with VRWKV_FUSED_STEP=0


# training mode with drop path: timm DropPath in the plain pass, per-sample factors of the fused residual adds in the
# fused pass (same RNG draws): v4 pre-norm chain, v4 post-norm with layer scale, v6 post-norm
TRAIN_CASES = [
    ["vrwkv_tiny_patch16_224", {"embed_dim": 24, "depth": 3, "drop_path_rate": 0.6, "batch": 4, "train": True}],
    ["vrwkv_small_patch16_224", {"embed_dim": 16, "depth": 2, "drop_path_rate": 0.6, "batch": 4, "train": True}],
    ["vrwkv6_small_patch16_224", {"embed_dim": 32, "depth": 2, "head_size": 16, "drop_path_rate": 0.6, "batch": 4,
                                  "train": True}],
]
TRAIN_EXPECTED_CALLS = [V4_STEP, V4_STEP, V6_STEP]

# activation checkpointing on the fused path (the blocks' forwards, one-node mixers included, run again inside the
# backward): v4 pre-norm with drop path (the recompute must redraw the same masks), v6 post-norm
CKPT_CASES = [["vrwkv_tiny_patch16_224", dict(TRAIN_CASES[0][1], ckpt=True)],
              ["vrwkv6_small_patch16_224", dict(CASES[2][1], ckpt=True)]]

# bf16 autocast on CPU: the weight matrices cast in one launch - every one-node mixer's at once, by the backbone's
# once-per-step cast (v4, v6: one cast_weight_groups call), or one cast_weights call per mixer (the text tower: 2 per
# block) - and the kernels read bf16 activations and (v6) the bf16 LoRA up-projection; the plain path casts per
# weight (autocast)
AUTOCAST_CASES = [
    ["vrwkv_tiny_patch16_224", {"embed_dim": 24, "depth": 2, "autocast": True, "train": True}],
    ["vrwkv6_tiny_patch16_224", {"embed_dim": 32, "depth": 2, "head_size": 16, "autocast": True, "train": True}],
    [TEXT_TOWER, {"vocab_size": 97, "context_length": 16, "width": 32, "layers": 2, "head_size": 16,
                  "hidden_dim": 72, "tokens": 13, "autocast": True}],
]
AUTOCAST_EXPECTED_CALLS = [V4_STEP | {"cast_weight_groups"}, V6_STEP | {"cast_weight_groups"},
                           TEXT_OPS | {"cast_weights"}]

# the per-op autograd path of eager training (VRWKV_FUSED_STEP=0; the path torch.compile traces, and the one key
# norms and the opt-in GEMM kernels take): v4 pre-norm, v6 post-norm, v6 head size 12, v6 with drop path, bf16
# autocast v4 / v6 (one cast_weights call per mixer)
PER_OP_CASES = [CASES[0], CASES[2], CASES[3], TRAIN_CASES[2], AUTOCAST_CASES[0], AUTOCAST_CASES[1]]
PER_OP_EXPECTED_CALLS = [V4_OPS, V6_OPS, V6_OPS, V6_OPS, V4_OPS | {"cast_weights"}, V6_OPS | {"cast_weights"}]

# torch.compile(fullgraph=True) as the FIRST call of a fresh process (the Triton modules not yet imported: their
# import must happen outside the trace), in training mode with drop path; then the text tower compiled
COMPILE_FIRST_CASES = [
    ["vrwkv_small_patch16_224", {"embed_dim": 16, "depth": 2, "compile": True, "train": True, "drop_path_rate": 0.5,
                                 "batch": 4}],
    [TEXT_TOWER, {"vocab_size": 97, "context_length": 16, "width": 32, "layers": 2, "head_size": 16,
                  "hidden_dim": 72, "tokens": 13, "compile": True}],
]

# torch.compile with inductor (what train.compile=true and the benchmarks' compile rows use): inductor lowers the
# custom ops as fallback kernels around its own generated code (buffer reuse, strides); training mode, v4 post-norm
# with drop path and layer scale, v6 pre-norm
INDUCTOR_CASES = [
    ["vrwkv_small_patch16_224", {"embed_dim": 16, "depth": 2, "compile": "inductor", "train": True,
                                 "drop_path_rate": 0.5, "batch": 4}],
    ["vrwkv6_tiny_patch16_224", {"embed_dim": 32, "depth": 1, "head_size": 16, "compile": "inductor", "train": True}],
]
# kernels the compiled graphs must launch (forward and backward of the WKV and of the fused elementwise ops)
# (the default WKV kernels: v4 register-sequential, v6 chunk-parallel - whose output kernels are _fwd / _bwd_kernel)
INDUCTOR_KERNELS = [{"_seq_fwd_kernel", "_seq_bwd_kernel", "_tsm_fwd_kernel", "_tsm_bwd_kernel",
                     "_add_norm_fwd_kernel", "_add_norm_bwd_kernel"},
                    {"_state_walk_kernel", "_fwd_kernel", "_bwd_kernel", "_tsm_lora_fwd_kernel", "_gn_mul_fwd_kernel",
                     "_gn_mul_bwd_kernel", "_decay_fwd_kernel", "_add_norm_bwd_kernel"}]

# the opt-in WKV kernels (v4 register-sequential, v6 chunk-parallel) inside whole models: small chunks so that the
# 3 x 3 (v4) / 2 x 3 (v6) token grids and the 13-token text span several chunks and carries
NEW_KERNELS = {"VRWKV_TRITON_V4": "seq=1,seq_t=4,seq_bc=32,seq_bwd_bc=32,carry_ncb=2",
               "VRWKV_TRITON_V6": "algo=chunk,state_t=32,scan_ncb=2"}
NEW_KERNEL_CASES = [0, 2, 5]

# the GEMM-epilogue kernels (VRWKV_FUSED_GEMM=1) replace the relu^2 and sigmoid-gate passes: v4 pre-norm, v4 with
# key norm (LayerNorm after the fused relu^2), v6, the text tower; in the RWKV-6 mixes also the LoRAs' tanh and the
# decay pass
GEMM_CASES = [0, 1, 2, 5]
GEMM_OPS = {"linear_relu_square", "linear_sigmoid_mul"}
LORA_OPS = {"linear_tanh", "linear_decay"}


# the Q-Shift interpolations inside the projections' GEMMs (k / v and k / v / r / g grouped in one launch), in the
# RWKV-6 mixes GroupNorm * gate inside the output projection's GEMM, and the block's residual add + LayerNorm in the
# epilogue of each mixer's last GEMM (the v4 token mix's output projection as a Triton GEMM: linear_add_norm)
# (VRWKV_FUSED_MIX=1, inference only): v4 pre-norm, v4 post-norm with key norm and layer scale, v6 post-norm, v6 head
# size 12 (no power of two: the gn_mul pass + the projection + add_norm), alone and with the GEMM epilogues (the decay LoRA's second stage); the
# mixed-input passes and the separate activation passes must not run. With VRWKV_FUSED_MLP=1 also the channel mix's
# key-value MLP in one kernel (not across v4-L's key norm)
MIX_CASES = [[CASES[i][0], dict(CASES[i][1], infer=True)] for i in (0, 1, 2, 3)]
_V6_MIX_OPS = {"mix_linear", "mix_linear_group", "group_norm_mul_linear", "decay_logd", "wkv:bi_wkv6"}
MIX_EXPECTED_CALLS = [{"mix_linear", "mix_linear_group", "linear_add_norm", "wkv:bi_wkv"}] * 2 + [
    _V6_MIX_OPS, _V6_MIX_OPS | {"group_norm_mul", "add_norm"}]


# training with the mixed-operand GEMMs (VRWKV_FUSED_MIX_TRAIN=1 VRWKV_FUSED_MLP=1: the mixed inputs and the MLP
# hidden recomputed in the backward): v4 pre-norm, v4 post-norm with drop path and layer scale, v6 post-norm, v6
# pre-norm with drop path, v6 post-norm traced by torch.compile (aot_eager); the separate mixed-input passes must not
# run in the forward
MIX_TRAIN_CASES = [CASES[0], TRAIN_CASES[1], CASES[2],
                   ["vrwkv6_tiny_patch16_224", {"embed_dim": 32, "depth": 2, "head_size": 16, "drop_path_rate": 0.6,
                                                "batch": 4, "train": True}],
                   [CASES[2][0], dict(CASES[2][1], compile=True)]]  # traced: the ops' custom ops and their autograd
_MIX_TRAIN_V6 = {"mix_linear", "mix_linear_group", "decay_logd", "wkv:bi_wkv6", "group_norm_mul_linear", "add_norm",
                 "mix_mlp"}
MIX_TRAIN_EXPECTED_CALLS = [{"mix_linear", "mix_linear_group", "linear_add_norm", "add_norm", "mix_mlp",
                             "wkv:bi_wkv"}] * 2 + [_MIX_TRAIN_V6] * 2 + [None]

# eager inference on the default path: one step per mixer; the blocks update the residual stream in place (inside
# the steps for the pre-norm chain of v4 / v6, fused.add_norm(inplace=True) for the post-norm blocks of v4-S / v6-S)
INFER_CASES = [[CASES[i][0], dict(CASES[i][1], infer=True)] for i in (0, 2, 3)] + [
    ["vrwkv_small_patch16_224", {"embed_dim": 16, "depth": 2, "infer": True}]]


def assert_matches_plain(res: dict, grads: bool = True) -> None:
    """A case of ``_fused_model_case.compare`` ran, is finite and matches the plain path: the logits (relative error
    < 1e-5) and, with ``grads``, the same parameters got gradients, each within 1e-4."""
    assert "error" not in res, res.get("error")
    assert res["finite"] and res["y"] < 1e-5, res
    if grads:
        assert res["same_grads"] and res["grad_max"] < 1e-4, res


def _run_cases(cases, extra_env=None):
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1", VRWKV_TRITON_DEBUG="1", PYTHONWARNINGS="ignore", **(extra_env or {}))
    env.pop("VRWKV_BACKEND", None)
    proc = subprocess.run([sys.executable, os.path.join(HERE, "_fused_model_case.py"), json.dumps(cases)],
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return list(json.loads(proc.stdout.strip().splitlines()[-1]).values())


@pytest.fixture(scope="module")
def interpreter_results():
    return _run_cases(CASES)


@pytest.fixture(scope="module")
def new_kernel_results():
    return _run_cases([CASES[i] for i in NEW_KERNEL_CASES], NEW_KERNELS)


@pytest.mark.parametrize("index", range(len(CASES)), ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_fused_path_matches_plain_path_interpreter(interpreter_results, index):
    res = interpreter_results[index]
    assert "error" not in res, res.get("error")
    assert res["finite"] and res["same_grads"], res
    assert res["y"] < 1e-5, res
    assert res["grad_max"] < 1e-4, res
    expected = EXPECTED_CALLS[index]
    if expected is not None:
        assert set(res["calls"]) == expected, res["calls"]


@pytest.fixture(scope="module")
def infer_results():
    return _run_cases(INFER_CASES)


@pytest.mark.parametrize("index", range(len(INFER_CASES)), ids=[c[0] for c in INFER_CASES])
def test_fused_inference_in_place_residual_interpreter(infer_results, index):
    """Eager inference (no autograd) with the residual adds written in place matches the plain path; each mixer
    runs as one step (one call, no per-op wrappers), pre-norm blocks with their residual add + LayerNorm inside it
    (in place), post-norm blocks with an in-place add_norm after it (the mixer reads the residual stream)."""
    res = infer_results[index]
    assert_matches_plain(res, grads=False)
    calls = res["calls"]
    depth = INFER_CASES[index][1]["depth"]
    steps = {k: n for k, n in calls.items() if k.startswith("step:")}
    assert len(steps) == 2 and all(n == depth for n in steps.values()), calls
    post_norm = "small" in INFER_CASES[index][0]
    assert calls.get("add_norm", 0) == (2 * depth if post_norm else 0), calls
    assert not {"token_shift_mix", "sigmoid_mul", "relu_square", "group_norm_mul"} & set(calls), calls


@pytest.fixture(scope="module")
def train_results():
    return _run_cases(TRAIN_CASES)


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(TRAIN_CASES)), ids=[c[0] for c in TRAIN_CASES])
def test_fused_path_drop_path_training_interpreter(train_results, index):
    """Training mode with drop path stays on the fused path (the residual adds take drop path's per-sample factors)
    and matches the plain path drawing the same masks; both dropped and kept samples occur."""
    res = train_results[index]
    assert_matches_plain(res)
    dropped, kept = res["drops"]
    assert dropped > 0 and kept > 0, res["drops"]
    assert set(res["calls"]) == TRAIN_EXPECTED_CALLS[index], res["calls"]


@pytest.fixture(scope="module")
def ckpt_results():
    return _run_cases(CKPT_CASES)


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(CKPT_CASES)), ids=[c[0] for c in CKPT_CASES])
def test_fused_path_with_grad_checkpointing_interpreter(ckpt_results, index):
    """Training with activation checkpointing: the one-node mixers run in the forward and again in the recompute,
    and logits and every parameter gradient match the plain path without checkpointing."""
    res = ckpt_results[index]
    assert_matches_plain(res)
    steps = {k: n for k, n in res["calls"].items() if k.startswith("step:")}
    depth = CKPT_CASES[index][1]["depth"]
    assert steps and all(n == 2 * depth for n in steps.values()), res["calls"]  # forward + recompute per block
    if CKPT_CASES[index][1].get("drop_path_rate"):
        assert min(res["drops"]) > 0, res["drops"]


@pytest.fixture(scope="module")
def autocast_results():
    return _run_cases(AUTOCAST_CASES)


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(AUTOCAST_CASES)), ids=[c[0] for c in AUTOCAST_CASES])
def test_fused_path_bf16_autocast_training_interpreter(autocast_results, index):
    """Training under bf16 autocast (the benchmarks' setting): the fused path, its weights cast once per mixer,
    matches the plain path within bf16 rounding - logits and every parameter gradient (fp32, finite)."""
    res = autocast_results[index]
    assert "error" not in res, res.get("error")
    assert res["finite"] and res["same_grads"], res
    assert res["y"] < 1e-2, res
    assert res["grad_max"] < 6e-2 and res["grad_median"] < 3e-2, res
    assert set(res["calls"]) == AUTOCAST_EXPECTED_CALLS[index], res["calls"]
    if "cast_weights" in AUTOCAST_EXPECTED_CALLS[index]:
        assert res["calls"]["cast_weights"] == 4, res["calls"]  # 2 blocks x (token mix, channel mix)
    else:
        assert res["calls"]["cast_weight_groups"] == 1, res["calls"]  # once for the whole model


@pytest.fixture(scope="module")
def per_op_results():
    return _run_cases(PER_OP_CASES, {"VRWKV_FUSED_STEP": "0"})


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(PER_OP_CASES)), ids=[c[0] for c in PER_OP_CASES])
def test_per_op_training_path_interpreter(per_op_results, index):
    """With ``VRWKV_FUSED_STEP=0`` eager training keeps one autograd node per fused op (no one-node mixer runs) and
    matches the plain path: logits and every parameter gradient, drop path and bf16 autocast included."""
    res = per_op_results[index]
    if PER_OP_CASES[index][1].get("autocast"):
        assert "error" not in res and res["finite"] and res["same_grads"], res
        assert res["y"] < 1e-2 and res["grad_max"] < 6e-2 and res["grad_median"] < 3e-2, res
        assert res["calls"]["cast_weights"] == 4, res["calls"]
    else:
        assert_matches_plain(res)
    assert set(res["calls"]) == PER_OP_EXPECTED_CALLS[index], res["calls"]


@pytest.fixture(scope="module")
def compile_first_results():
    return _run_cases(COMPILE_FIRST_CASES)


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(COMPILE_FIRST_CASES)), ids=[c[0] for c in COMPILE_FIRST_CASES])
def test_compiled_first_call_interpreter(compile_first_results, index):
    res = compile_first_results[index]
    assert_matches_plain(res)
    if index == 0:
        assert min(res["drops"]) > 0, res["drops"]


@pytest.fixture(scope="module")
def mix_train_results():
    return _run_cases(MIX_TRAIN_CASES, {"VRWKV_FUSED_MIX_TRAIN": "1", "VRWKV_FUSED_MLP": "1"})


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(MIX_TRAIN_CASES)), ids=[c[0] for c in MIX_TRAIN_CASES])
def test_mix_gemms_in_training_interpreter(mix_train_results, index):
    """Training through the mixed-operand GEMMs and the fused MLP (their backward recomputes the mixed inputs and
    the hidden): the same logits and parameter gradients as the plain path, drop path included."""
    res = mix_train_results[index]
    assert_matches_plain(res)
    if MIX_TRAIN_EXPECTED_CALLS[index] is not None:  # (a compiled pass is not counted)
        assert set(res["calls"]) == MIX_TRAIN_EXPECTED_CALLS[index], res["calls"]
    assert "_mix_mlp_kernel" in res["launches"] and "_mix_linear_kernel" in res["launches"], res["launches"]
    if MIX_TRAIN_CASES[index][1].get("drop_path_rate"):
        assert min(res["drops"]) > 0, res["drops"]


@pytest.fixture(scope="module")
def inductor_results(tmp_path_factory):
    # a fresh inductor cache: the compile is tested, not a graph cached by another run
    return _run_cases(INDUCTOR_CASES, {"TORCHINDUCTOR_CACHE_DIR": str(tmp_path_factory.mktemp("inductor_cache"))})


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(INDUCTOR_CASES)), ids=[c[0] for c in INDUCTOR_CASES])
def test_inductor_training_interpreter(inductor_results, index):
    """torch.compile(fullgraph=True) with inductor, forward + backward in training mode: the Triton kernels run as
    custom ops inside the compiled graphs and the result equals the plain path's."""
    res = inductor_results[index]
    assert_matches_plain(res)
    assert INDUCTOR_KERNELS[index] <= set(res["launches"]), sorted(INDUCTOR_KERNELS[index] - set(res["launches"]))
    if index == 0:
        assert min(res["drops"]) > 0, res["drops"]


@pytest.mark.slow
@pytest.mark.parametrize("pos", range(len(NEW_KERNEL_CASES)), ids=[CASES[i][0] for i in NEW_KERNEL_CASES])
def test_new_wkv_kernels_in_models_interpreter(new_kernel_results, pos):
    res = new_kernel_results[pos]
    assert_matches_plain(res)
    assert set(res["calls"]) == EXPECTED_CALLS[NEW_KERNEL_CASES[pos]], res["calls"]


@pytest.fixture(scope="module")
def gemm_results():
    # (the per-op training path: the one-node mixers keep the cuBLAS GEMMs, see test_gemm_switch_keeps_one_node_steps)
    return _run_cases([CASES[i] for i in GEMM_CASES], {"VRWKV_FUSED_GEMM": "1", "VRWKV_FUSED_STEP": "0"})


@pytest.mark.slow
@pytest.mark.parametrize("pos", range(len(GEMM_CASES)), ids=[CASES[i][0] for i in GEMM_CASES])
def test_gemm_epilogues_in_models_interpreter(gemm_results, pos):
    res = gemm_results[pos]
    assert_matches_plain(res)
    expected = (PER_OP_CALLS[GEMM_CASES[pos]] - {"relu_square", "sigmoid_mul"}) | GEMM_OPS
    if "decay_logd" in expected:  # RWKV-6 mixes
        expected = (expected - {"decay_logd", "lora_mlp"}) | LORA_OPS  # (the LoRAs' GEMM epilogues instead)
    assert set(res["calls"]) == expected, res["calls"]


@pytest.fixture(scope="module")
def gemm_step_results():
    return _run_cases([CASES[0], CASES[2]], {"VRWKV_FUSED_GEMM": "1"})


@pytest.mark.slow
@pytest.mark.parametrize("pos", range(2), ids=[CASES[i][0] for i in (0, 2)])
def test_gemm_switch_keeps_one_node_steps_interpreter(gemm_step_results, pos):
    """With the GEMM-epilogue switch on, eager training still runs each mixer as one autograd node (cuBLAS GEMMs
    inside; the epilogue kernels do not run) and matches the plain path."""
    res = gemm_step_results[pos]
    assert_matches_plain(res)
    assert set(res["calls"]) == EXPECTED_CALLS[(0, 2)[pos]], res["calls"]
    assert not any(k.startswith("_linear_") for k in res["launches"]), res["launches"]


@pytest.fixture(scope="module")
def mix_results():
    return _run_cases(MIX_CASES, {"VRWKV_FUSED_MIX": "1"})


@pytest.fixture(scope="module")
def mlp_results():
    return _run_cases(MIX_CASES[:3], {"VRWKV_FUSED_MIX": "1", "VRWKV_FUSED_MLP": "1"})


@pytest.mark.slow
@pytest.mark.parametrize("pos", range(3), ids=[c[0] for c in MIX_CASES[:3]])
def test_fused_mlp_in_models_interpreter(mlp_results, pos):
    res = mlp_results[pos]
    assert_matches_plain(res, grads=False)
    expected = MIX_EXPECTED_CALLS[pos] | ({"mix_mlp"} if pos != 1 else set())  # case 1: key norm, no fused MLP
    assert set(res["calls"]) == expected, res["calls"]


@pytest.fixture(scope="module")
def mix_gemm_results():
    return _run_cases(MIX_CASES[2:], {"VRWKV_FUSED_MIX": "1", "VRWKV_FUSED_GEMM": "1"})


@pytest.fixture(scope="module")
def mix_compile_results():
    cases = [[CASES[i][0], dict(CASES[i][1], infer=True, compile=True)] for i in (0, 2)]
    return _run_cases(cases, {"VRWKV_FUSED_MIX": "1", "VRWKV_FUSED_MLP": "1"})


@pytest.mark.slow
@pytest.mark.parametrize("pos", range(2), ids=[CASES[i][0] for i in (0, 2)])
def test_mix_gemms_compile_fullgraph_interpreter(mix_compile_results, pos):
    """Inference with every mixed-operand kernel and residual epilogue traced by torch.compile(fullgraph=True) (their
    custom ops: no graph break) matches the plain path."""
    res = mix_compile_results[pos]
    assert_matches_plain(res, grads=False)


_TRACED_OPS_SCRIPT = """
import json, torch, timm, vision_rwkv
model = timm.create_model("vrwkv6_small_patch16_224", embed_dim=32, depth=1, head_size=16, num_classes=3).eval()
ops = set()
def backend(gm, inputs):
    ops.update(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
    return gm
with torch.no_grad():
    torch.compile(model, backend=backend, fullgraph=True)(torch.randn(1, 3, 32, 48))
print(json.dumps(sorted(o for o in ops if o.startswith("vision_rwkv."))))
"""


@pytest.mark.slow
def test_mix_gemms_traced_as_custom_ops():
    """The compiled inference graph of a VRWKV6 model with VRWKV_FUSED_MIX=1 holds the mixed-operand and residual-
    epilogue custom ops (not the plain path, not the separate interpolation / add_norm passes)."""
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1", VRWKV_BACKEND="triton", VRWKV_FUSED_MIX="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, "-c", _TRACED_OPS_SCRIPT], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ops = set(json.loads(proc.stdout.strip().splitlines()[-1]))
    assert {"vision_rwkv.mix_linear.default", "vision_rwkv.mix_linear_group.default",
            "vision_rwkv.mix_linear_residual.default", "vision_rwkv.group_norm_mul_linear_residual.default"} <= ops, ops
    assert not any("token_shift_mix" in o or "add_norm" in o for o in ops), ops


@pytest.mark.slow
@pytest.mark.parametrize("pos", range(len(MIX_CASES)), ids=[c[0] for c in MIX_CASES])
def test_mix_gemms_in_models_interpreter(mix_results, pos):
    """Inference with the interpolations formed in the GEMMs matches the plain path, and no mixed input pass ran."""
    res = mix_results[pos]
    assert_matches_plain(res, grads=False)
    assert set(res["calls"]) == MIX_EXPECTED_CALLS[pos], res["calls"]
    if pos < 2:  # v4: the token mixes' output projections carry their add_norm (one per block)
        assert res["calls"]["linear_add_norm"] == MIX_CASES[pos][1]["depth"], res["calls"]


@pytest.mark.slow
@pytest.mark.parametrize("pos", range(2), ids=[c[0] for c in MIX_CASES[2:]])
def test_mix_gemms_with_epilogues_in_v6_interpreter(mix_gemm_results, pos):
    res = mix_gemm_results[pos]
    assert_matches_plain(res, grads=False)
    assert set(res["calls"]) == (MIX_EXPECTED_CALLS[2 + pos] - {"decay_logd"}) | {"linear_decay"}, res["calls"]


def test_mix_gemms_switches(monkeypatch):
    """The mixed-operand GEMMs: in inference with VRWKV_FUSED_MIX=1, in training (grad mode) with
    VRWKV_FUSED_MIX_TRAIN=1 only (by default training keeps the stored mixed inputs), for plain projections."""
    from vision_rwkv.models import mixing

    plain = torch.nn.Linear(8, 4, bias=False)
    monkeypatch.setenv("VRWKV_FUSED_MIX", "1")
    monkeypatch.delenv("VRWKV_FUSED_MIX_TRAIN", raising=False)
    assert mixing.mix_gemm_ready(plain) is False  # grad mode on
    monkeypatch.setenv("VRWKV_FUSED_MIX_TRAIN", "1")
    assert mixing.mix_gemm_ready(plain) and not mixing.mix_gemm_ready(plain, torch.nn.Linear(8, 4))
    with torch.no_grad():
        assert mixing.mix_gemm_ready(plain)
        assert not mixing.mix_gemm_ready(plain, torch.nn.Linear(8, 4))
        monkeypatch.setenv("VRWKV_FUSED_MIX", "0")
        assert not mixing.mix_gemm_ready(plain)  # (VRWKV_FUSED_MIX_TRAIN does not switch inference on)
    monkeypatch.setenv("VRWKV_FUSED_MIX_TRAIN", "0")
    monkeypatch.setenv("VRWKV_FUSED_MIX", "1")
    assert not mixing.mix_gemm_ready(plain)


def test_gemm_epilogues_skip_wrapped_linears(monkeypatch):
    """A projection with a hook, a bias or a subclass type keeps its own forward (e.g. LoRA / PEFT wrappers)."""
    from vision_rwkv.models import _projections

    monkeypatch.setenv("VRWKV_FUSED_GEMM", "1")
    plain = torch.nn.Linear(8, 4, bias=False)
    assert _projections._epilogue_ready(plain)
    hooked = torch.nn.Linear(8, 4, bias=False)
    hooked.register_forward_hook(lambda *a: None)
    biased = torch.nn.Linear(8, 4)
    sub = type("Wrapped", (torch.nn.Linear,), {})(8, 4, bias=False)
    assert not any(_projections._epilogue_ready(m) for m in (hooked, biased, sub))
    monkeypatch.setenv("VRWKV_FUSED_GEMM", "0")
    assert not _projections._epilogue_ready(plain)


@pytest.mark.parametrize("name,kw", [("vrwkv_small_patch16_224", dict(embed_dim=16, depth=2)),
                                     ("vrwkv6_tiny_patch16_224", dict(embed_dim=32, depth=2, head_size=16))])
def test_compile_fullgraph_cpu(name, kw):
    torch._dynamo.reset()
    model = timm.create_model(name, num_classes=5, **kw).eval()
    x = torch.randn(2, 3, 40, 56)
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    out = compiled(x)
    torch.testing.assert_close(out, model(x))
    out.square().mean().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ["vrwkv_tiny_patch16_224", "vrwkv_small_patch16_224", "vrwkv6_tiny_patch16_224",
                                  "vrwkv6_small_patch16_224"])
def test_fused_path_cuda(name, monkeypatch):
    monkeypatch.setenv("VRWKV_TRITON_DEBUG", "1")
    fp32 = compare(name, {}, device="cuda", img=(224, 288), batch=4)
    assert "error" not in fp32, fp32.get("error")
    assert fp32["finite"] and fp32["y"] < 1e-3 and fp32["grad_max"] < 1e-2, fp32
    bf16 = compare(name, {}, device="cuda", img=(224, 288), batch=4, autocast=True)
    assert "error" not in bf16, bf16.get("error")
    # two bf16 computations of the same function: compare typical gradients tightly, the worst one loosely
    assert bf16["finite"] and bf16["y"] < 3e-2 and bf16["grad_median"] < 3e-2 and bf16["grad_max"] < 0.25, bf16


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ["vrwkv_tiny_patch16_224", "vrwkv_small_patch16_224", "vrwkv6_tiny_patch16_224",
                                  "vrwkv6_small_patch16_224"])
def test_mix_gemms_cuda(name, monkeypatch):
    """Inference with the interpolations inside the GEMMs and the fused MLP (VRWKV_FUSED_MIX=1 VRWKV_FUSED_MLP=1) vs
    the plain path, fp32 and bf16."""
    monkeypatch.setenv("VRWKV_TRITON_DEBUG", "1")
    monkeypatch.setenv("VRWKV_FUSED_MIX", "1")
    monkeypatch.setenv("VRWKV_FUSED_MLP", "1")
    fp32 = compare(name, {}, device="cuda", img=(224, 288), batch=4, infer=True)
    assert "error" not in fp32, fp32.get("error")
    assert fp32["finite"] and fp32["y"] < 1e-3 and "mix_linear" in fp32["calls"], fp32
    bf16 = compare(name, {}, device="cuda", img=(224, 288), batch=4, autocast=True, infer=True)
    assert "error" not in bf16, bf16.get("error")
    assert bf16["finite"] and bf16["y"] < 3e-2, bf16


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ["vrwkv_tiny_patch16_224", "vrwkv_small_patch16_224", "vrwkv6_tiny_patch16_224",
                                  "vrwkv6_small_patch16_224"])
def test_mix_gemms_training_cuda(name, monkeypatch):
    """Training through the mixed-operand GEMMs and the fused MLP (VRWKV_FUSED_MIX_TRAIN=1 VRWKV_FUSED_MLP=1) vs the
    plain path: logits and every parameter gradient, fp32 and bf16 autocast."""
    monkeypatch.setenv("VRWKV_TRITON_DEBUG", "1")
    monkeypatch.setenv("VRWKV_FUSED_MIX_TRAIN", "1")
    monkeypatch.setenv("VRWKV_FUSED_MLP", "1")
    fp32 = compare(name, {}, device="cuda", img=(224, 288), batch=4)
    assert "error" not in fp32, fp32.get("error")
    assert fp32["finite"] and fp32["y"] < 1e-3 and fp32["grad_max"] < 1e-2 and "mix_linear" in fp32["calls"], fp32
    bf16 = compare(name, {}, device="cuda", img=(224, 288), batch=4, autocast=True)
    assert "error" not in bf16, bf16.get("error")
    assert bf16["finite"] and bf16["y"] < 3e-2 and bf16["grad_median"] < 3e-2 and bf16["grad_max"] < 0.25, bf16


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ["vrwkv_small_patch16_224", "vrwkv6_small_patch16_224"])
def test_fused_path_drop_path_training_cuda(name, monkeypatch):
    """S models train with drop path 0.3 by default: the fused path in training mode vs the plain path (fp32)."""
    monkeypatch.setenv("VRWKV_TRITON_DEBUG", "1")
    res = compare(name, {"drop_path_rate": 0.5}, device="cuda", img=(224, 288), batch=8, train=True)
    assert "error" not in res, res.get("error")
    assert min(res["drops"]) > 0, res["drops"]
    assert res["finite"] and res["y"] < 1e-3 and res["grad_max"] < 1e-2, res


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ["vrwkv_tiny_patch16_224", "vrwkv6_tiny_patch16_224"])
def test_cuda_graph_inference_sees_weight_updates_cuda(name):
    """Eager bf16 inference captured in a CUDA graph (after warm-up forwards filled the inference caches): the graph
    makes the weights' casts and stacks itself, so a replay after an in-place weight update matches a fresh eager
    forward (a cast kept from before the capture would be stale)."""
    model = timm.create_model(name, num_classes=0).cuda().eval()
    x = torch.randn(4, 3, 224, 224, device="cuda")
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False):
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                model.forward_features(x)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = model.forward_features(x)
        graph.replay()
        before = out.float().clone()
        for p in (model.blocks[3].channel_mix.key.weight, model.blocks[5].spatial_mix.output.weight,
                  model.blocks[5].spatial_mix.key.weight):  # (the last: in the stacked k, v, r (, g) weight)
            p.mul_(1.5)
        graph.replay()
        ref = model.forward_features(x).float()
    torch.cuda.synchronize()
    rel = lambda a, b: ((a - b).norm() / b.norm()).item()  # noqa: E731
    assert rel(before, ref) > 1e-2  # the update matters
    assert rel(out.float(), ref) < 1e-3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ["vrwkv_tiny_patch16_224", "vrwkv6_tiny_patch16_224"])
def test_compile_fullgraph_cuda(name):
    torch._dynamo.reset()
    model = timm.create_model(name, num_classes=5).cuda().eval()
    x = torch.randn(2, 3, 224, 224, device="cuda")
    compiled = torch.compile(model, fullgraph=True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = compiled(x)
        ref = model(x)
    assert ((out.float() - ref.float()).norm() / ref.float().norm()).item() < 2e-2


# the fused pass through timm's torch.fx feature extractor: v4 pre-norm, v6, v4 post-norm with layer scale
FX_CASES = [[CASES[i][0], dict(CASES[i][1], fx=True)] for i in (0, 3)] + [
    ["vrwkv_small_patch16_224", {"embed_dim": 16, "depth": 2, "fx": True}]]
FX_EXPECTED_CALLS = [V4_STEP, V6_STEP, V4_STEP]


@pytest.fixture(scope="module")
def fx_results():
    return _run_cases(FX_CASES)


@pytest.mark.parametrize("index", range(len(FX_CASES)), ids=[c[0] for c in FX_CASES])
def test_fx_graph_takes_the_fused_path_interpreter(fx_results, index):
    """A traced graph (leaf blocks) runs the fused kernels, forward and backward, and matches the plain model."""
    res = fx_results[index]
    assert_matches_plain(res)
    assert set(res["calls"]) == FX_EXPECTED_CALLS[index], res["calls"]


@pytest.mark.parametrize("shape", [(2, 3, 40, 56), (1, 3, 16, 16), (1, 4, 7, 9)])
def test_patch_embed_tokens_match_conv(shape):
    """The GEMM patch embedding of the fused path equals the conv + flatten, padding included."""
    from vision_rwkv.models._layers import PatchEmbed

    pe = PatchEmbed(16, shape[1], 24).double()
    x = torch.randn(*shape, dtype=torch.float64)
    ref = pe(x)
    tokens, grid = pe.forward_tokens(x)
    assert grid == tuple(ref.shape[-2:])
    torch.testing.assert_close(tokens, ref.flatten(2).transpose(1, 2))


@pytest.mark.slow
def test_compile_dynamic_shapes_after_a_resize_to_partial_patches():
    """``torch.compile(model, dynamic=True)`` (or torch's own switch to dynamic shapes at the second size) failed at
    the first size that is not a multiple of the patch (the padding's ``(-h) % p`` broke torch's symbolic-shape
    pass: "TensorReferenceAnalysis has no attribute python_mod"), although any size works in eager."""
    torch._dynamo.reset()
    model = timm.create_model("vrwkv_small_patch16_224", num_classes=5, embed_dim=16, depth=1).eval()
    compiled = torch.compile(model, dynamic=True, backend="aot_eager", fullgraph=True)
    for size in ((32, 32), (40, 56)):
        x = torch.randn(2, 3, *size)
        torch.testing.assert_close(compiled(x), model(x))
