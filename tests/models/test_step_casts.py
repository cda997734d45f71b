"""The backbones' once-per-step weight casts (``VisionRWKVBase.step_cast_blocks``, ``_step_casts``): in training
under autocast every fused one-node mixer of the model - or of each group of blocks - gets its matrices from ONE
``cast_weight_groups`` launch, and their gradients go back in one. The same casts and kernels as each mixer casting
its own, so the logits and every parameter gradient are bit-identical (drop path on; v4 and v6; bf16 and fp16,
where the v6 LoRA's W2 stays fp32 and is handed over uncast; pre-norm chains and post-norm blocks); fp32 casts
nothing. A mixer handed matrices it would
not use raises, and DDP gets one cast per block."""
import json
import os
import sys

import pytest
import timm
import torch
from torch import nn

import vision_rwkv  # noqa: F401

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "ops"))
from _case_utils import run_script_in_interpreter  # noqa: E402

V4 = ["vrwkv_tiny_patch16_224", {"embed_dim": 24, "depth": 3, "drop_path_rate": 0.3}]
V6 = ["vrwkv6_tiny_patch16_224", {"embed_dim": 32, "depth": 3, "head_size": 16}]
# (the S models: post-norm blocks with layer scale, outside the pre-norm chain)
CASES = [V4 + ["bf16", [0, 1, 2]], V6 + ["bf16", [0]], V6 + ["fp16", [0, 2]],
         ["vrwkv6_tiny_patch16_224", {"embed_dim": 32, "depth": 2, "head_size": 16}, "fp32", [0]],
         ["vrwkv_small_patch16_224", {"embed_dim": 24, "depth": 3, "drop_path_rate": 0.3}, "bf16", [0, 2]],
         ["vrwkv6_small_patch16_224", {"embed_dim": 32, "depth": 2, "head_size": 16}, "bf16", [0]]]
DEPTH = {"vrwkv_tiny_patch16_224/bf16": 3, "vrwkv6_tiny_patch16_224/bf16": 3, "vrwkv6_tiny_patch16_224/fp16": 3,
         "vrwkv6_tiny_patch16_224/fp32": 2, "vrwkv_small_patch16_224/bf16": 3, "vrwkv6_small_patch16_224/bf16": 2}


@pytest.fixture(scope="module")
def results():
    pytest.importorskip("triton")
    return run_script_in_interpreter(os.path.join(HERE, "_step_cast_case.py"), [json.dumps(CASES)], timeout=900)


@pytest.mark.parametrize("key", sorted(DEPTH))
def test_once_per_step_casts_match_per_mixer_casts(results, key):
    rows, depth = results[key], DEPTH[key]
    cast = not key.endswith("fp32")
    assert rows["None"]["copies"] == ([2 * depth] * 2 if cast else [0, 0]), rows["None"]  # one per mixer each way
    for setting, row in rows.items():
        assert sum(row["steps"].values()) == 2 * depth, row  # every mixer ran as one node
        if setting == "None":
            continue
        per = int(setting)
        groups = 1 if per == 0 else -(-depth // per)
        assert row["copies"] == ([groups] * 2 if cast else [0, 0]), (setting, row)
        assert row["same_keys"] and row["finite"] and row["grad_dtypes_ok"], row
        assert row["y_diff"] == 0.0 and row["grad_diff"] == 0.0, (setting, row)


def test_mixer_refuses_matrices_it_would_not_use():
    """``cast=`` where the forward does not run as one step (here: the plain path of a CPU tensor) is an error, not
    silently ignored."""
    model = timm.create_model("vrwkv_tiny_patch16_224", embed_dim=16, depth=1, num_classes=0)
    block = model.blocks[0]
    x = torch.randn(1, 6, 16)
    mats = (torch.randn(3, 16, 16), torch.randn(16, 16))
    with pytest.raises(RuntimeError, match="SpatialMix: cast= was given, but this forward does not run as one step"):
        block.spatial_mix(x, (2, 3), cast=mats)
    with pytest.raises(RuntimeError, match="ChannelMix: cast= was given"):
        block.channel_mix(x, (2, 3), cast=mats)
    assert block.spatial_mix.step_cast_request(x) is None  # (the plain path: nothing to cast for it)
    with pytest.raises(RuntimeError, match="Block: casts= given, but the block does not run its fused path"):
        block(x, (2, 3), casts=(mats, None))


def test_no_casts_outside_training_or_when_switched_off():
    model = timm.create_model("vrwkv6_tiny_patch16_224", embed_dim=32, depth=2, head_size=16, num_classes=0)
    h = torch.randn(1, 4, 32, dtype=torch.bfloat16)
    assert model.step_cast_blocks == 0  # (the default: one cast for the whole model)
    with torch.no_grad():
        assert model._step_casts(h) == [(None, None)] * 2
    model.step_cast_blocks = None
    assert model._step_casts(h) == [(None, None)] * 2


def test_ddp_wrap_sets_one_cast_per_block():
    from vision_rwkv.engine.distributed import per_block_weight_casts

    a = timm.create_model("vrwkv_tiny_patch16_224", embed_dim=16, depth=1, num_classes=0)
    b = timm.create_model("vrwkv6_tiny_patch16_224", embed_dim=32, depth=1, head_size=16, num_classes=0)
    b.step_cast_blocks = 3  # (a setting of the user's own: kept)
    assert per_block_weight_casts(nn.ModuleDict(dict(a=a, b=b))) == 1
    assert a.step_cast_blocks == 1 and b.step_cast_blocks == 3
