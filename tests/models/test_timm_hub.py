"""timm's own routes with our models: a pretrained cfg passed back as a dict (timm's validate.py), save_for_hf and
``local-dir:`` reloads (in the Bi-WKV mode the model ran), and a folder without weights."""
import json
import warnings

import pytest
import timm
import torch
from timm.models import save_for_hf

import vision_rwkv  # noqa: F401

TINY = dict(embed_dim=32, depth=1, num_classes=5)


def tiny(name: str) -> dict:
    return dict(TINY, embed_dim=64) if name.startswith("vrwkv6") else TINY


@pytest.mark.parametrize("name", ["vrwkv_tiny_patch16_224", "vrwkv_large_patch16_384", "vrwkv6_tiny_patch16_224"])
def test_a_pretrained_cfg_passed_back_as_a_dict_builds_the_model(name):
    """A v4 cfg carried fields timm's PretrainedCfg does not take (wkv_mode / wkv_chunks): create_model(name,
    pretrained_cfg=model.pretrained_cfg) and timm's validate.py raised TypeError."""
    from timm.models import resolve_model_input_args
    kw = dict(tiny(name), head_hidden_size=None)
    model = timm.create_model(name, **kw)
    again = timm.create_model(name, pretrained_cfg=model.pretrained_cfg, **kw)
    assert again.pretrained_cfg == model.pretrained_cfg
    timm.create_model(**resolve_model_input_args(name, {}, **kw))


@pytest.mark.parametrize("name,mode,chunks", [("vrwkv_tiny_patch16_224", "exact", 32),
                                              ("vrwkv_tiny_patch16_224", "original", 16),
                                              ("vrwkv6_tiny_patch16_224", None, None)])
def test_save_for_hf_reloads_through_local_dir_in_the_mode_it_ran(tmp_path, name, mode, chunks):
    """local-dir:FOLDER with pretrained=True failed ("pretrained checkpoint file not found": the folder was read as
    a weights file); the export records the Bi-WKV mode, so the reload runs the weights as the model did."""
    torch.manual_seed(0)
    model = timm.create_model(name, **tiny(name)).eval()
    if mode is not None:
        model.set_wkv_mode(mode, chunks)
    save_for_hf(model, tmp_path / "export", safe_serialization=True)
    config = json.loads((tmp_path / "export" / "config.json").read_text())
    assert not {"wkv_mode", "wkv_chunks"} & set(config["pretrained_cfg"])
    if mode is not None:
        assert (config["model_args"]["wkv_mode"], config["model_args"]["wkv_chunks"]) == (mode, chunks)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (no "does not record the Bi-WKV function" warning either)
        loaded = timm.create_model(f"local-dir:{tmp_path / 'export'}", pretrained=True).eval()
    if mode is not None:
        assert (loaded.wkv_mode, loaded.wkv_chunks) == (mode, chunks)
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_local_dir_without_weights_names_the_folder(tmp_path):
    model = timm.create_model("vrwkv_tiny_patch16_224", **TINY)
    save_for_hf(model, tmp_path / "export", safe_serialization=True)
    (tmp_path / "export" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"no weights file in .*export"):
        timm.create_model(f"local-dir:{tmp_path / 'export'}", pretrained=True)


def test_a_cfg_dict_of_an_older_export_with_wkv_fields_still_loads(tmp_path):
    """config.json files written before carried wkv_mode / wkv_chunks in the pretrained cfg: read as the overlay's."""
    model = timm.create_model("vrwkv_tiny_patch16_224", **TINY)
    path = tmp_path / "w.pth"
    torch.save(model.state_dict(), path)
    cfg = dict(model.pretrained_cfg, file=str(path), num_classes=5, wkv_mode="original", wkv_chunks=16)
    loaded = timm.create_model("vrwkv_tiny_patch16_224", pretrained=True, pretrained_cfg=cfg, **TINY)
    assert (loaded.wkv_mode, loaded.wkv_chunks) == ("original", 16)
    assert "wkv_mode" not in loaded.pretrained_cfg
