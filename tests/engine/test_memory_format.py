"""Channels-last training and evaluation (timm's --channels-last): the converted model takes channels-last weights
and inputs and computes what the plain model does; checkpoints stay contiguous; the config keys reach the trainers
and the evaluation tools."""
import copy
from pathlib import Path

import pytest
import timm
import torch

import vision_rwkv  # noqa: F401
from vision_rwkv.engine import (ConfigError, Trainer, load_checkpoint, load_config, plain_layout, read_metrics_csv,
                                takes_channels_last, to_channels_last)
from vision_rwkv.engine.classification import evaluate_classifier, train_classifier

CL = torch.channels_last
DEMO = Path(__file__).resolve().parents[2] / "configs" / "classification" / "demo_shapes.yaml"
TINY = ["model.kwargs.img_size=16", "model.kwargs.patch_size=4", "model.kwargs.embed_dim=32", "model.kwargs.depth=2",
        "data.input_size=16", "data.shapes.image_size=16", "train.show_progress=false", "train.plot=false",
        "train.tensorboard=false", "data.shapes.train_length=16", "data.shapes.val_length=8", "train.batch_size=8",
        "train.epochs=2", "data.num_workers=0", "sched.warmup_epochs=0", "aug.mixup=0", "aug.cutmix=0",
        "train.log_every=1", "ema.enabled=true"]


def _conv_inputs(model: torch.nn.Module) -> list[torch.Tensor]:
    """Records the inputs of every Conv2d of ``model`` (a forward pre-hook each)."""
    seen: list[torch.Tensor] = []
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
    return seen


@pytest.mark.parametrize("name, kw", [("vrwkv_tiny_patch16_224", {"wkv_mode": "exact"}),
                                      ("vrwkv6_tiny_patch16_224", {"head_size": 16})])
def test_a_channels_last_model_computes_what_the_plain_one_does(name, kw):
    torch.manual_seed(0)
    plain = timm.create_model(name, img_size=32, patch_size=8, embed_dim=32, depth=2, num_classes=5, **kw)
    model = to_channels_last(copy.deepcopy(plain))
    assert to_channels_last(model) is model and len(model._forward_pre_hooks) == 1  # (once, however often called)
    assert takes_channels_last(model) and not takes_channels_last(plain)
    assert model.patch_embed.proj.weight.is_contiguous(memory_format=CL)
    assert not model.patch_embed.proj.weight.is_contiguous()
    seen = _conv_inputs(model)
    x = torch.randn(3, 3, 32, 24)  # (a non-square grid; a plain NCHW batch)
    out, want = model(x), plain(x)
    assert seen[0].is_contiguous(memory_format=CL) and not seen[0].is_contiguous()  # the image was converted
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-6)
    g = torch.randn_like(out)
    out.backward(g)
    want.backward(g)
    for (n, p), q in zip(model.named_parameters(), plain.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=n)
    assert model.patch_embed.proj.weight.grad.is_contiguous(memory_format=CL)
    ema = copy.deepcopy(model)  # (timm's ModelEmaV3 copies the model: the copy takes channels-last inputs too)
    seen_ema = _conv_inputs(ema)
    ema(x)
    assert seen_ema[0].is_contiguous(memory_format=CL)


def test_plain_layout_makes_every_tensor_contiguous_and_keeps_the_rest():
    conv = torch.randn(4, 3, 2, 2).contiguous(memory_format=CL)
    flat = torch.randn(5)
    state = plain_layout({"conv": conv, "flat": flat, "note": "x"})
    assert state["conv"].is_contiguous() and torch.equal(state["conv"], conv)
    assert state["flat"] is flat and state["note"] == "x"


def test_trainer_checkpoints_of_a_channels_last_model_are_plain(tmp_path):
    """The checkpoint of a channels-last model (and of its EMA) holds contiguous tensors: safetensors writes them and
    a plain model loads them; the optimizer state keeps the parameters' layout."""
    from safetensors.torch import save_file
    from timm.utils import ModelEmaV3

    from vision_rwkv.data import ShapesClassification
    from vision_rwkv.engine import EpochLoader

    torch.manual_seed(0)
    model = to_channels_last(timm.create_model("vrwkv_tiny_patch16_224", img_size=16, patch_size=4, embed_dim=32,
                                               depth=1, num_classes=8, wkv_mode="exact"))
    ds = ShapesClassification("train", length=8, image_size=16)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def loss_fn(m, batch):
        return torch.nn.functional.cross_entropy(m(batch[0]), batch[1])

    trainer = Trainer(model, opt, EpochLoader(ds, 4, seed=0), loss_fn, run_dir=tmp_path, epochs=1,
                      ema=ModelEmaV3(model, decay=0.9), log_every=1, show_progress=False, plot=False)
    trainer.fit()
    state = load_checkpoint(trainer.ckpt.latest())
    for key in ("model", "ema"):
        assert all(v.is_contiguous() for v in state[key].values()), key
        save_file(state[key], str(tmp_path / f"{key}.safetensors"))
    plain = timm.create_model("vrwkv_tiny_patch16_224", img_size=16, patch_size=4, embed_dim=32, depth=1,
                              num_classes=8, wkv_mode="exact")
    plain.load_state_dict(state["model"])
    torch.testing.assert_close(plain.patch_embed.proj.weight, model.patch_embed.proj.weight, rtol=0, atol=0)
    assert model.patch_embed.proj.weight.is_contiguous(memory_format=CL)  # (the model itself is untouched)


def test_classification_training_and_evaluation_take_the_config_keys(tmp_path, monkeypatch):
    """train.channels_last=true trains the same as the plain run (losses and weights, to the convolution's
    summation order), through the EMA and the in-training evaluation; eval.channels_last (null: train's) reaches
    the evaluation tool; a value that is not a boolean is a ConfigError naming the key."""
    import vision_rwkv.engine.classification as classification

    converted: list[torch.nn.Module] = []
    real = classification.to_channels_last
    monkeypatch.setattr(classification, "to_channels_last", lambda m: converted.append(m) or real(m))
    runs = {}
    for flag in ("false", "true"):
        runs[flag] = train_classifier(load_config(DEMO, TINY + [f"run_dir={tmp_path / flag}",
                                                                f"train.channels_last={flag}"]))
    assert len(converted) == 1
    loss = {f: [r["loss"] for r in read_metrics_csv(tmp_path / f / "train_metrics.csv")] for f in runs}
    assert len(loss["true"]) == 4 and loss["true"] == pytest.approx(loss["false"], rel=1e-4, abs=1e-6)
    assert runs["true"]["top1"] == runs["false"]["top1"]
    states = {f: load_checkpoint(tmp_path / f / "checkpoints" / "best.pt") for f in runs}
    for k, v in states["false"]["model"].items():
        torch.testing.assert_close(states["true"]["model"][k], v, rtol=1e-4, atol=1e-5, msg=k)
    assert all(v.is_contiguous() for v in states["true"]["ema"].values())

    base = TINY + [f"run_dir={tmp_path / 'true'}", f"eval.checkpoint={tmp_path / 'true' / 'checkpoints' / 'best.pt'}"]
    for train_flag, eval_flag, converts in (("true", "null", True), ("true", "false", False),
                                            ("false", "true", True), ("false", "1", True), ("true", "0", False)):
        converted.clear()
        r = evaluate_classifier(load_config(DEMO, base + [f"train.channels_last={train_flag}",
                                                          f"eval.channels_last={eval_flag}"]))
        assert bool(converted) == converts, (train_flag, eval_flag)
        assert r["top1"] == pytest.approx(runs["true"]["top1"])
    with pytest.raises(ConfigError, match=r"eval.channels_last must be true, false \(1, 0\) or null.*'yes please'"):
        evaluate_classifier(load_config(DEMO, base + ["eval.channels_last=yes please"]))
    with pytest.raises(ConfigError, match="train.channels_last"):
        load_config(DEMO, TINY + ["train.channels_last=sometimes"])


@pytest.mark.parametrize("key, value, message", [("eval.batch_size", "0", "eval.batch_size must be an integer >= 1"),
                                                 ("eval.input_size", "-3", "eval.input_size must be an integer >= 1"),
                                                 ("eval.precision", "fp8", "eval.precision must be fp32, bf16")])
def test_eval_values_are_checked_before_anything_is_built(tmp_path, key, value, message):
    """A 0 eval batch was taken for null (the training batch), a negative size and an unknown precision ended in
    tracebacks from deep inside the evaluation; training took them and saved them in the run's config.yaml, so a
    ``train && eval`` chain failed only at the evaluation."""
    cfg = load_config(DEMO, TINY + [f"run_dir={tmp_path}", f"{key}={value}"])
    with pytest.raises(ConfigError, match=message):
        evaluate_classifier(cfg)
    with pytest.raises(ConfigError, match=message):
        train_classifier(cfg)
    assert not (tmp_path / "config.yaml").exists()
