"""RWKV-CLIP through open_clip's other entry points: the preprocessing record on ``model.visual`` (open_clip's
transforms and hub helpers read it), ``push_to_hf_hub.save_for_hf`` folders reloaded by ``local-dir:`` /
``hf-hub:``, configs added with ``add_model_config``, the SigLIP logit bias, ``forward_intermediates`` and the text
tower's lock."""
import shutil
import subprocess
import sys

import numpy as np
import open_clip
import pytest
import torch
from open_clip.transform import PreprocessCfg, image_transform_v2
from PIL import Image

import rwkv_clip
from rwkv_clip.model_configs import CONFIG_DIR

NAME = "RWKV-CLIP-Tiny-demo"


def _image() -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8))


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_the_model_records_its_preprocessing_as_open_clip_models_do():
    """open_clip.get_model_preprocess_cfg gave {'size': ...} only, so a transform rebuilt from the model (as
    open_clip's helpers do) used OpenAI mean / std and bicubic where the returned one used the caller's."""
    model, _, val = open_clip.create_model_and_transforms(NAME, image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5),
                                                          image_interpolation="bilinear", image_resize_mode="squash")
    cfg = open_clip.get_model_preprocess_cfg(model)
    assert cfg == dict(size=(32, 32), mode="RGB", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="bilinear",
                       resize_mode="squash", fill_color=0)
    assert model.visual.image_mean == (0.5, 0.5, 0.5) and model.visual.image_std == (0.5, 0.5, 0.5)
    rebuilt = image_transform_v2(PreprocessCfg(**cfg), is_train=False)
    assert torch.equal(rebuilt(_image()), val(_image())) and val(_image()).shape == (3, 32, 32)
    default = open_clip.create_model(NAME, force_preprocess_cfg={})  # (open_clip's "no override")
    assert open_clip.get_model_preprocess_cfg(default) == dict(asdict_default(), size=(32, 32))
    default.visual.set_input_size(48)  # an int, as open_clip's TimmModel takes it
    assert default.visual.image_size == (48, 48) and default.visual.preprocess_cfg["size"] == (48, 48)


def asdict_default() -> dict:
    from dataclasses import asdict
    return asdict(PreprocessCfg())


def _saved_folder(tmp_path, model) -> str:
    return str(rwkv_clip.save_for_hf(model, tmp_path / "export", NAME))


def test_save_for_hf_folders_reload_through_local_dir(tmp_path):
    """open_clip's local-dir: names reached open_clip's own builder ("unexpected keyword argument 'embed_dim'")."""
    torch.manual_seed(0)
    src, _, _ = open_clip.create_model_and_transforms(NAME, image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5))
    folder = _saved_folder(tmp_path, src)
    model, _, val = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    assert isinstance(model, rwkv_clip.RWKVCLIP) and _same_weights(model, src)

    def tuples(cfg: dict) -> dict:  # (JSON gives lists, as it does open_clip's own models)
        return {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()}

    assert tuples(open_clip.get_model_preprocess_cfg(model)) == open_clip.get_model_preprocess_cfg(src)
    assert tuple(val.transforms[-1].mean) == (0.5, 0.5, 0.5)
    model, _ = open_clip.create_model_from_pretrained(f"local-dir:{folder}")
    assert _same_weights(model, src)
    with pytest.warns(UserWarning, match="ignoring pretrained="):
        assert _same_weights(open_clip.create_model(f"local-dir:{folder}", pretrained="other.pt"), src)
    tokens = open_clip.get_tokenizer(f"local-dir:{folder}")(["a red circle"])
    assert tokens.shape == (1, 24)
    for weights in ("open_clip_model.safetensors",):
        (tmp_path / "export" / weights).unlink()
    with pytest.raises(RuntimeError, match="Required pretrained weights.*no weights file"):
        open_clip.create_model_from_pretrained(f"local-dir:{folder}")


def test_hf_hub_names_load_the_hub_folder(tmp_path, monkeypatch):
    """hf-hub:ORG/REPO reads the same two files through open_clip's download (stood in for by the saved folder)."""
    import open_clip.pretrained
    src = rwkv_clip.create_model(NAME)
    folder = _saved_folder(tmp_path, src)
    asked = []

    def download(model_id, filename=None, revision=None, cache_dir=None):
        asked.append((model_id, filename))
        return f"{folder}/{filename or 'open_clip_model.safetensors'}"

    monkeypatch.setattr(open_clip.pretrained, "download_pretrained_from_hf", download)
    monkeypatch.setattr(open_clip.factory, "download_pretrained_from_hf", download)
    model = open_clip.create_model("hf-hub:someone/rwkv-clip-tiny")
    assert isinstance(model, rwkv_clip.RWKVCLIP) and _same_weights(model, src)
    assert ("someone/rwkv-clip-tiny", "open_clip_config.json") in asked


def test_hf_hub_names_are_looked_up_in_the_given_cache(tmp_path, monkeypatch):
    """open_clip.create_model("hf-hub:...", cache_dir=X): the RWKV-CLIP check read the config without cache_dir, so
    an offline model in X went to open_clip's builder (TypeError on the RWKV config)."""
    import open_clip.pretrained
    folder = _saved_folder(tmp_path, rwkv_clip.create_model(NAME))
    caches = []

    def download(model_id, filename=None, revision=None, cache_dir=None):
        caches.append(cache_dir)
        if cache_dir != "my-cache":
            raise FileNotFoundError(f"{filename} is not in the default cache")
        return f"{folder}/{filename or 'open_clip_model.safetensors'}"

    monkeypatch.setattr(open_clip.pretrained, "download_pretrained_from_hf", download)
    monkeypatch.setattr(open_clip.factory, "download_pretrained_from_hf", download)
    assert isinstance(open_clip.create_model("hf-hub:someone/tiny", cache_dir="my-cache"), rwkv_clip.RWKVCLIP)
    assert caches and set(caches) == {"my-cache"}


def test_a_rectangular_image_size_in_the_config(tmp_path):
    """vision_cfg.image_size [h, w] was stored as ([h, w], [h, w]): the open_clip transforms failed on it."""
    model, _, val = rwkv_clip.create_model_and_transforms(NAME, vision_cfg={"image_size": [32, 48]})
    assert model.visual.image_size == (32, 48) and val(_image()).shape == (3, 32, 48)
    assert model.encode_image(val(_image())[None]).shape == (1, 64)


def test_configs_added_to_open_clip_build_rwkv_clip(tmp_path):
    """open_clip.add_model_config with an RWKV-CLIP config listed the name, but open_clip built its own CLIP from
    it ("unexpected keyword argument 'embed_dim'")."""
    shutil.copy(CONFIG_DIR / f"{NAME}.json", tmp_path / "My-RWKV-CLIP.json")
    open_clip.add_model_config(tmp_path / "My-RWKV-CLIP.json")
    model = open_clip.create_model("My-RWKV-CLIP")
    assert isinstance(model, rwkv_clip.RWKVCLIP) and model.visual.image_size == (32, 32)
    assert isinstance(rwkv_clip.create_model("My-RWKV-CLIP"), rwkv_clip.RWKVCLIP)
    assert type(open_clip.create_model("RN50")).__name__ == "CLIP"  # (open_clip's own configs stay open_clip's)


def test_open_clip_factories_bound_before_the_import_build_rwkv_clip():
    """`from open_clip import create_model_and_transforms` before `import rwkv_clip` keeps open_clip's function,
    which calls the routed create_model with force_preprocess_cfg={} (refused before) and reads the model's
    preprocessing record; open_clip's push_to_hf_hub module binds create_model_from_pretrained at import."""
    code = ("from open_clip import create_model_and_transforms\n"
            "import sys, rwkv_clip\n"
            f"model, train, val = create_model_and_transforms({NAME!r})\n"
            "assert type(model).__name__ == 'RWKVCLIP', type(model)\n"
            "hub = sys.modules['open_clip.push_to_hf_hub']\n"
            "assert getattr(hub.create_model_from_pretrained, '_rwkv_clip_route', False)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_a_logit_bias_as_open_clip_siglip_models_have():
    """init_logit_bias (open_clip_train --siglip) raised TypeError; the bias is a parameter in the outputs, the
    logits and SigLipLoss's gradient."""
    from open_clip.loss import SigLipLoss
    torch.manual_seed(0)
    model = open_clip.create_model(NAME, init_logit_scale=float(np.log(10)), init_logit_bias=-10.0)
    assert isinstance(model.logit_bias, torch.nn.Parameter) and model.logit_bias.item() == -10.0
    assert "logit_bias" in model.no_weight_decay()
    images, tokens = torch.randn(3, 3, 32, 32), open_clip.get_tokenizer(NAME)(["a", "b c", "d e f"])
    image_f, text_f, scale, bias = model(images, tokens)
    logits, _ = model.get_logits(images, tokens)
    torch.testing.assert_close(logits, scale * image_f @ text_f.T + bias)
    SigLipLoss()(image_f, text_f, scale, bias).backward()
    assert model.logit_bias.grad is not None and model.logit_bias.grad.abs() > 0
    model.output_dict = True
    assert set(model(images, tokens)) == {"image_features", "text_features", "logit_scale", "logit_bias"}
    assert len(rwkv_clip.create_model(NAME)(images, tokens)) == 3 and rwkv_clip.create_model(NAME).logit_bias is None


def test_forward_intermediates_as_open_clips_custom_text_clip():
    torch.manual_seed(0)
    model = rwkv_clip.create_model(NAME, text_cfg={"layers": 2}).eval()
    images, tokens = torch.randn(2, 3, 32, 40), open_clip.get_tokenizer(NAME)(["a red circle", "two squares"])
    with torch.no_grad():
        out = model.forward_intermediates(images, tokens, output_logits=True, output_logit_scale_bias=True)
        assert set(out) == {"image_features", "image_intermediates", "text_features", "text_intermediates",
                            "image_logits", "text_logits", "logit_scale"}
        torch.testing.assert_close(out["image_features"], model.encode_image(images, normalize=True))
        torch.testing.assert_close(out["text_features"], model.encode_text(tokens, normalize=True))
        torch.testing.assert_close(out["image_logits"], model.get_logits(images, tokens)[0])
        _, want = model.visual.trunk.forward_intermediates(images)
        assert len(out["image_intermediates"]) == 2 and out["image_intermediates"][0].shape == (2, 64, 8, 10)
        assert all(torch.equal(a, b) for a, b in zip(out["image_intermediates"], want))
        assert [t.shape for t in out["text_intermediates"]] == [(2, 24, 64)] * 2
        last = model.forward_intermediates(text=tokens, text_indices=1, normalize_intermediates=True,
                                           intermediates_only=True)
        assert set(last) == {"text_intermediates"}
        torch.testing.assert_close(last["text_intermediates"][0], model.text.forward_tokens(tokens))
        first = model.forward_intermediates(text=tokens, text_indices=[0], stop_early=True, normalize=False)
        torch.testing.assert_close(first["text_features"],
                                   model.text.pool(model.text.ln_out(first["text_intermediates"][0])))
        extra = model.forward_intermediates(images, image_indices=1, image_output_extra_tokens=True)
        assert len(extra["image_intermediates"]) == 1 and len(extra["image_intermediates_prefix"]) == 1
    with pytest.raises(ValueError, match="needs both image and text"):
        model.forward_intermediates(images, output_logits=True)


def test_unlocking_more_text_layers_than_blocks_unlocks_the_embedding_too():
    """open_clip's text towers unlock their embedding group last; lock_text_tower(n > layers) kept it frozen."""
    model = rwkv_clip.create_model(NAME)  # (1 text block)
    model.lock_text_tower(1)
    assert not model.text.emb.weight.requires_grad and model.text.ln_out.weight.requires_grad
    model.lock_text_tower(2)
    assert all(p.requires_grad for p in model.text.parameters())
    model.lock_text_tower(0)
    assert not any(p.requires_grad for p in model.text.parameters())
