"""The Shapes demo entry point and its chance levels."""
import pytest
import torch
import torch.nn.functional as F

from rwkv_clip.demo import DEMO_CONFIG, chance_levels, run_demo
from rwkv_clip.evaluate import retrieval_metrics


def test_chance_levels_match_random_features():
    n_images, caps = 20, 3
    expected = chance_levels(8, n_images, n_images * caps)
    g = torch.Generator().manual_seed(0)
    t2i = torch.arange(n_images).repeat_interleave(caps)
    acc = {}
    trials = 300
    for _ in range(trials):
        m = retrieval_metrics(F.normalize(torch.randn(n_images, 16, generator=g), dim=-1),
                              F.normalize(torch.randn(n_images * caps, 16, generator=g), dim=-1), t2i)
        for k, v in m.items():
            acc[k] = acc.get(k, 0.0) + v / trials
    for k, v in acc.items():
        assert v == pytest.approx(expected[k], abs=0.02), k
    assert expected["zeroshot_acc1"] == 1 / 8 and expected["zeroshot_acc5"] == 5 / 8


def test_run_demo_smoke(tmp_path):
    assert DEMO_CONFIG.is_file()
    out = run_demo(overrides=[
        f"run_dir={tmp_path}", "train.max_steps=2", "train.batch_size=8", "train.show_progress=false",
        "train.tensorboard=false", "data.workers=0", "data.shapes_length=64", "data.shapes_image_size=16",
        "eval.shapes_image_size=16", "eval.zero_shot.length=8", "eval.retrieval.length=4",
        "model.kwargs.embed_dim=32",
        "model.kwargs.vision_cfg={embed_dim: 32, depth: 1, image_size: 16, patch_size: 4, head_size: 16}",
        "model.kwargs.text_cfg={width: 32, layers: 1, head_size: 16, hidden_dim: 64}"])
    assert out["steps"] == 2 and set(out["metrics"]) == set(out["chance"])
    assert "zeroshot_acc1" in out["summary"] and "chance" in out["summary"]
    assert (tmp_path / "retrieval_grid.png").is_file() and (tmp_path / "curves.png").is_file()
    with pytest.raises(ValueError, match="held-out Shapes"):
        run_demo(overrides=[f"run_dir={tmp_path}", "eval.retrieval.data=none"])
