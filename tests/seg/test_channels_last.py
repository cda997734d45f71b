"""Channels-last segmentors (train.channels_last / test.channels_last): the UperNet and ViT-Adapter segmentors
compute what the plain ones do, training gives the plain run's losses with plain checkpoints, and testing and
image prediction take the option."""
import copy

import pytest
import torch
from PIL import Image

from test_adapter import _adapter_cfg
from test_train import _cfg, _final_state
from vision_rwkv.engine import read_metrics_csv, takes_channels_last, to_channels_last
from vision_rwkv.seg import create_segmentor, test_segmentor, train_segmentor
from vision_rwkv.seg.predict_images import load_trained_segmentor, segment_files

CL = torch.channels_last


@pytest.mark.parametrize("neck", ["multilevel", "adapter"])
def test_a_channels_last_segmentor_computes_what_the_plain_one_does(neck):
    torch.manual_seed(0)
    cfg = _adapter_cfg() if neck == "adapter" else dict(
        backbone="vrwkv6_tiny_patch16_224", backbone_kwargs=dict(img_size=32, embed_dim=32, depth=4, head_size=16),
        num_classes=4, neck_channels=16, decode_channels=16, aux_channels=8)
    plain = create_segmentor(cfg).eval()
    model = to_channels_last(copy.deepcopy(plain))
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1)]
    assert convs and all(m.weight.is_contiguous(memory_format=CL) for m in convs)
    x = torch.randn(2, 3, 64, 96)  # (sides: multiples of 32, for the adapter)
    with torch.no_grad():
        torch.testing.assert_close(model(x), plain(x), rtol=1e-4, atol=1e-6)
    plain.train()
    model.train()
    mask = torch.randint(0, 4, (2, 64, 96))
    torch.manual_seed(1)  # (the same dropout masks)
    loss = model(x, mask)["loss"]
    torch.manual_seed(1)
    want = plain(x, mask)["loss"]
    torch.testing.assert_close(loss, want, rtol=1e-5, atol=1e-6)
    loss.backward()
    want.backward()
    for (n, p), q in zip(model.named_parameters(), plain.parameters()):
        if q.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-3, atol=1e-6, msg=n)


def test_training_testing_and_prediction_take_the_option(tmp_path, monkeypatch):
    import vision_rwkv.seg.train as seg_train

    seen: list[torch.nn.Module] = []
    real = seg_train.to_channels_last
    monkeypatch.setattr(seg_train, "to_channels_last", lambda model: seen.append(model) or real(model))
    steps = ["optim.max_iters=3", "train.ckpt_every=3"]
    train_segmentor(_cfg(tmp_path / "plain", *steps))
    assert not seen
    train_segmentor(_cfg(tmp_path / "cl", *steps, "train.channels_last=true"))
    assert len(seen) == 1
    loss = {r: [x["loss"] for x in read_metrics_csv(tmp_path / r / "train_metrics.csv")] for r in ("plain", "cl")}
    assert len(loss["cl"]) == 3 and loss["cl"] == pytest.approx(loss["plain"], rel=1e-4, abs=1e-6)
    state = _final_state(tmp_path / "cl")["model"]
    assert all(v.is_contiguous() for v in state.values())
    for k, v in _final_state(tmp_path / "plain")["model"].items():
        torch.testing.assert_close(state[k], v, rtol=0, atol=3e-3, msg=k)  # (Adam: <= lr a step for any gradient)

    results = {}
    for test_flag, converts in (("null", True), ("false", False)):
        seen.clear()
        results[test_flag] = test_segmentor(_cfg(tmp_path / "cl", "train.channels_last=true",
                                                 f"test.channels_last={test_flag}", "test.mode=slide",
                                                 f"test.out_dir={tmp_path / test_flag}"))
        assert bool(seen) == converts, test_flag
    assert results["null"]["mIoU"] == pytest.approx(results["false"]["mIoU"])
    Image.new("RGB", (40, 30), (200, 30, 30)).save(tmp_path / "red.png")
    model, cfg, _, _ = load_trained_segmentor(tmp_path / "cl" / "config.yaml", ["test.channels_last=true"])
    seen.clear()
    [(_, _, labels)] = list(segment_files(model, cfg, [tmp_path / "red.png"], show_progress=False))
    assert seen == [model] and takes_channels_last(model) and labels.shape == (30, 40)
