"""open_clip's factories build RWKV-CLIP by name after `import rwkv_clip`; other names still reach open_clip."""
from pathlib import Path

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
                                    {"pretrained_text_path": "text.pt"}])
def test_unsupported_arguments_are_named(kwargs):
    key = next(iter(kwargs))
    with pytest.raises(ValueError, match=f"{key}=.* is not supported by RWKV-CLIP"):
        open_clip.create_model_and_transforms(NAME, **kwargs)


def test_required_weights_are_required_as_in_open_clip(tmp_path):
    with pytest.raises(RuntimeError, match="Required pretrained weights.*pretrained=None"):
        open_clip.create_model_from_pretrained(NAME)
    with pytest.raises(RuntimeError, match="Required pretrained weights"):
        open_clip.create_model(NAME, require_pretrained=True)
    with pytest.raises(RuntimeError, match="Required pretrained weights"):
        open_clip.create_model(NAME, str(tmp_path / "w.pt"), load_weights=False, require_pretrained=True)
    assert isinstance(open_clip.create_model(NAME, require_pretrained=False), rwkv_clip.RWKVCLIP)


def test_other_names_reach_open_clip_and_routes_install_once():
    model = open_clip.create_model("RN50")
    assert type(model).__name__ == "CLIP"
    route = open_clip.create_model
    rwkv_clip.install_open_clip_routes()
    assert open_clip.create_model is route and open_clip.factory.create_model is route
    with pytest.raises(RuntimeError, match="not found"):
        open_clip.create_model("No-Such-Model")


def test_checkpoint_of_another_image_size_loads_resampled(tmp_path):
    src = rwkv_clip.create_model(NAME, force_image_size=48)
    torch.save({"state_dict": src.state_dict()}, tmp_path / "w.pt")
    same = open_clip.create_model(NAME, str(tmp_path / "w.pt"), force_image_size=48)
    assert all(torch.equal(a, b) for a, b in zip(same.state_dict().values(), src.state_dict().values()))
    default = open_clip.create_model(NAME, str(tmp_path / "w.pt"))
    grid = default.visual.trunk.pos_grid
    assert default.visual.trunk.pos_embed.shape[1] == grid[0] * grid[1]
    assert default.visual.trunk.pos_embed.shape != src.visual.trunk.pos_embed.shape


def _open_clip_train_ready() -> bool:
    try:
        import open_clip_train.main as train_main  # (needs braceexpand, webdataset, pandas: the dev extra)
    except ImportError:
        return False
    return callable(train_main.main)


@pytest.mark.slow
@pytest.mark.skipif(not _open_clip_train_ready(), reason="open_clip_train's data modules need braceexpand, "
                                                         "webdataset and pandas (the dev extra installs them)")
@pytest.mark.parametrize("siglip", [False, True])
def test_open_clip_train_trains_rwkv_clip_by_name(tmp_path, siglip):
    """open_clip's own training script (tools/train_open_clip.py), given --model RWKV-CLIP-*, trains and checkpoints
    the RWKV model; with --siglip (a logit bias, the sigmoid loss) too."""
    import csv
    import subprocess
    import sys

    import numpy as np
    from PIL import Image

    from vision_rwkv.data.shapes import make_sample
    with open(tmp_path / "train.csv", "w", newline="") as fh:
        out = csv.writer(fh, delimiter="\t")
        out.writerow(["filepath", "title"])
        for i in range(8):
            s = make_sample(i, "train", image_size=48)
            Image.fromarray(np.asarray(s.image)).save(tmp_path / f"{i}.png")
            out.writerow([str(tmp_path / f"{i}.png"), s.captions[0]])
    script = str(Path(__file__).resolve().parents[2] / "tools" / "train_open_clip.py")
    args = ["--model", NAME, "--train-data", str(tmp_path / "train.csv"), "--dataset-type", "csv",
            "--csv-separator", "\t", "--batch-size", "4", "--epochs", "1", "--workers", "0", "--lr", "1e-3",
            "--warmup", "1", "--logs", str(tmp_path / "logs"), "--name", "run", "--force-image-size", "48",
            "--save-frequency", "1", "--precision", "fp32"] + (["--siglip"] if siglip else [])
    done = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    ckpt = tmp_path / "logs" / "run" / "checkpoints" / "epoch_1.pt"
    bias = {"init_logit_bias": -10.0} if siglip else {}
    model = open_clip.create_model(NAME, str(ckpt), force_image_size=48, **bias)
    trained = torch.load(ckpt, weights_only=True)["state_dict"]
    assert all(torch.equal(trained[k], v) for k, v in model.state_dict().items())
    assert ("logit_bias" in trained) == siglip
    fresh = rwkv_clip.create_model(NAME, **bias)  # (deterministic init: log(1 / 0.07), or log(10) and -10)
    assert not torch.equal(trained["logit_scale"], fresh.logit_scale)
    assert not siglip or not torch.equal(trained["logit_bias"], fresh.logit_bias)
    assert "Contrastive_loss" in done.stdout + done.stderr  # (SigLipLoss logs under that name too)
