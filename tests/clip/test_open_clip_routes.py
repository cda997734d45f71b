"""open_clip's factories build RWKV-CLIP by name after `import rwkv_clip`; other names still reach open_clip."""
import open_clip
import open_clip.factory
import pytest
import torch

import rwkv_clip

NAME = "RWKV-CLIP-Tiny-demo"


def test_create_model_and_transforms_by_name():
    model, train, val = open_clip.create_model_and_transforms(NAME, output_dict=True, force_image_size=48,
                                                              image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5))
    assert isinstance(model, rwkv_clip.RWKVCLIP) and model.visual.image_size == (48, 48)
    assert val.transforms[-1].mean == (0.5, 0.5, 0.5) and callable(train)
    tokens = open_clip.get_tokenizer(NAME)(["a red circle"])
    out = model(torch.randn(1, 3, 48, 48), tokens)
    assert set(out) >= {"image_features", "text_features", "logit_scale"}


def test_create_model_arguments(tmp_path):
    model = open_clip.create_model(NAME, precision="bf16", jit=False, force_custom_text=True, cache_dir="x")
    assert isinstance(model, rwkv_clip.RWKVCLIP) and next(model.parameters()).dtype == torch.bfloat16
    src = rwkv_clip.create_model(NAME)
    torch.save(src.state_dict(), tmp_path / "w.pt")
    loaded = open_clip.create_model(NAME, str(tmp_path / "w.pt"))
    assert torch.equal(loaded.logit_scale, src.logit_scale)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), src.state_dict().values()))
    fresh = open_clip.create_model(NAME, str(tmp_path / "w.pt"), load_weights=False)
    assert not all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), src.state_dict().values()))
    model, preprocess = open_clip.create_model_from_pretrained(NAME, str(tmp_path / "w.pt"))
    assert isinstance(model, rwkv_clip.RWKVCLIP) and callable(preprocess)
    assert isinstance(open_clip.create_model_from_pretrained(NAME, str(tmp_path / "w.pt"), return_transform=False),
                      rwkv_clip.RWKVCLIP)


@pytest.mark.parametrize("kwargs", [{"jit": True}, {"force_patch_dropout": 0.5}, {"pretrained_image": True},
                                    {"image_resize_mode": "squash"}])
def test_unsupported_arguments_are_named(kwargs):
    key = next(iter(kwargs))
    with pytest.raises(ValueError, match=f"{key}=.* is not supported by RWKV-CLIP"):
        open_clip.create_model_and_transforms(NAME, **kwargs)


def test_other_names_reach_open_clip_and_routes_install_once():
    model = open_clip.create_model("RN50")
    assert type(model).__name__ == "CLIP"
    route = open_clip.create_model
    rwkv_clip.install_open_clip_routes()
    assert open_clip.create_model is route and open_clip.factory.create_model is route
    with pytest.raises(RuntimeError, match="not found"):
        open_clip.create_model("No-Such-Model")
