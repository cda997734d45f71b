"""Parity with the ORIGINAL RWKV-CLIP (fixture rwkvclip.pt) and original-checkpoint loading."""
import pytest
import torch
from clip_helpers import rebuild_fixture_state_dict

import rwkv_clip
from rwkv_clip.convert import build_from_original, convert_original_state_dict, model_config_from_original


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.fixture(scope="module")
def fixture_and_model(load_fixture):
    fx = load_fixture("rwkvclip.pt")
    model = build_from_original(fx["config"], rebuild_fixture_state_dict(fx))
    return fx, model


def test_fixture_parity_features_and_logit_scale(fixture_and_model):
    fx, model = fixture_and_model
    with torch.no_grad():
        img_tokens = model.visual.trunk.forward_features(fx["inputs"]["image"])
        txt_tokens = model.text.forward_tokens(fx["inputs"]["text"])
        img = model.visual.trunk.forward_head(img_tokens)  # what encode_image returns (global average pool)
        txt = model.text.pool(txt_tokens)  # what encode_text returns
    inter = fx["intermediates"]
    # intermediates first: they localise a mismatch to a tower
    assert _rel(img_tokens, inter["image_tokens_final"].flatten(2).transpose(1, 2)) < 1e-5
    assert _rel(txt_tokens, inter["text_tokens_final"]) < 1e-5
    assert _rel(img, fx["outputs"]["image_features"]) < 1e-5
    assert _rel(txt, fx["outputs"]["text_features"]) < 1e-5
    assert float(model.logit_scale.detach().exp()) == pytest.approx(float(fx["outputs"]["logit_scale_exp"]),
                                                                    rel=1e-6)
    # the public entry points on one sample each (batch 1 also exercised)
    with torch.no_grad():
        fi = model.encode_image(fx["inputs"]["image"][1:], normalize=False)
        ft = model.encode_text(fx["inputs"]["text"][:1], normalize=True)
    assert _rel(fi, fx["outputs"]["image_features"][1:]) < 1e-5
    assert torch.allclose(ft, torch.nn.functional.normalize(fx["outputs"]["text_features"][:1], dim=-1), atol=1e-5)


def test_fixture_config_translation(load_fixture):
    cfg = model_config_from_original(load_fixture("rwkvclip.pt")["config"])
    v, t = cfg["vision_cfg"], cfg["text_cfg"]
    assert cfg["embed_dim"] == 320
    assert (v["embed_dim"], v["head_size"], v["mlp_ratio"], v["patch_size"], v["image_size"]) == (320, 80, 1, 16, 64)
    assert v["post_norm"] is False and "init_values" not in v
    assert (t["width"], t["layers"], t["head_size"], t["hidden_dim"], t["context_length"]) == (320, 2, 64, 320, 77)
    assert t["head_size_divisor"] == 8


def test_tokenizer_matches_fixture(load_fixture):
    fx = load_fixture("rwkvclip.pt")
    tok = rwkv_clip.get_tokenizer("RWKV-CLIP-B-32")
    assert torch.equal(tok(fx["captions"]), fx["inputs"]["text"])
    import open_clip
    assert torch.equal(open_clip.get_tokenizer("RWKV-CLIP-B-32")(fx["captions"]), fx["inputs"]["text"])


def test_load_original_checkpoint_file_with_module_prefix_and_bf16(tmp_path, fixture_and_model):
    fx, ref_model = fixture_and_model
    sd = rebuild_fixture_state_dict(fx)
    # DDP prefixes and bf16 tensors, as released checkpoints may have them
    is_bf16 = lambda k: k.startswith("text_model.") and k.endswith(("time_decay", "time_faaaa"))  # noqa: E731
    wrapped = {"module." + k: (v.to(torch.bfloat16) if is_bf16(k) else v) for k, v in sd.items()}
    path = tmp_path / "rwkv_clip_original.pt"
    torch.save(wrapped, path)
    model = ref_model
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    rwkv_clip.load_checkpoint(model, path)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    expected = convert_original_state_dict(sd)
    got = model.state_dict()
    assert got["text.blocks.0.att.time_decay"].dtype == torch.float32
    # bf16 text decays: equal to the rounded originals; everything else bit-exact
    for k, v in expected.items():
        if k.endswith(("time_decay", "time_faaaa")) and k.startswith("text."):
            assert torch.equal(got[k], v.to(torch.bfloat16).float()), k
        else:
            assert torch.equal(got[k], v), k
    rwkv_clip.load_checkpoint(model, sd)  # leave the shared model as the other tests expect it


def test_checkpoint_key_errors(tmp_path, fixture_and_model):
    fx, model = fixture_and_model
    sd = rebuild_fixture_state_dict(fx)
    missing = {k: v for k, v in sd.items() if k != "text_model.ln_out.weight"}
    with pytest.raises(RuntimeError, match=r"does not match the model: 1 missing keys \(text.ln_out.weight\)$"):
        rwkv_clip.load_checkpoint(model, missing)
    extra = dict(sd, **{"text_model.blocks.0.att.bogus": torch.zeros(1)})
    with pytest.raises(RuntimeError, match="unexpected keys.*bogus"):
        rwkv_clip.load_checkpoint(model, extra)
    with pytest.raises(KeyError, match="unexpected keys in RWKV-CLIP checkpoint"):
        convert_original_state_dict(dict(sd, stray=torch.zeros(1)))
    with pytest.raises(FileNotFoundError, match="local path"):
        rwkv_clip.load_checkpoint(model, tmp_path / "nope.pt")


def test_checkpoint_files_follow_the_packages_weights_rule(tmp_path, fixture_and_model):
    """RWKV-CLIP files are read as every loader here reads them: a training checkpoint's EMA weights when it has
    them (timm's use_ema rule), `model_state_dict` wrappers, and one clear error for a truncated file."""
    from vision_rwkv.models.convert import CheckpointReadError
    fx, model = fixture_and_model
    ours = {k: v.clone() for k, v in model.state_dict().items()}
    ema = {"module." + k: v + 1.0 if v.is_floating_point() else v for k, v in ours.items()}
    torch.save({"model": ours, "ema": ema, "step": 3}, tmp_path / "run.pt")
    rwkv_clip.load_checkpoint(model, tmp_path / "run.pt")
    assert torch.equal(model.state_dict()["text.ln_out.weight"], ours["text.ln_out.weight"] + 1.0)
    torch.save({"model_state_dict": ours, "epoch": 1}, tmp_path / "plain.pt")
    rwkv_clip.load_checkpoint(model, tmp_path / "plain.pt")
    assert torch.equal(model.state_dict()["text.ln_out.weight"], ours["text.ln_out.weight"])
    whole = (tmp_path / "run.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(CheckpointReadError, match=r"cannot read checkpoint .*cut\.pt"):
        rwkv_clip.load_checkpoint(model, tmp_path / "cut.pt")


def test_unsupported_original_configs_raise(load_fixture):
    cfg = load_fixture("rwkvclip.pt")["config"]
    bad = {"image": dict(cfg["image"]), "text": dict(cfg["text"], pos_emb=16)}
    with pytest.raises(ValueError, match="pos_emb"):
        model_config_from_original(bad)
    bad = {"image": dict(cfg["image"], with_cls_token=True, output_cls_token=True), "text": dict(cfg["text"])}
    with pytest.raises(ValueError, match="class token"):
        model_config_from_original(bad)
    bad = {"image": dict(cfg["image"]), "text": dict(cfg["text"]), "env": dict(cfg["env"], RWKV_HEAD_SIZE="32")}
    with pytest.raises(ValueError, match="RWKV_HEAD_SIZE"):
        model_config_from_original(bad)
