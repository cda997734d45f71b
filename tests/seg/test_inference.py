"""Whole-image vs sliding-window inference, flip / multi-scale test-time augmentation, output sizes."""
import pytest
import torch
import torch.nn as nn

from vision_rwkv.seg.inference import inference, predict, slide_inference, whole_inference
from vision_rwkv.seg.segmentor import create_segmentor


class _Pointwise(nn.Module):
    """A per-pixel model (1x1 conv): any tiling must give exactly its whole-image output."""

    def __init__(self, k=3):
        super().__init__()
        self.conv = nn.Conv2d(3, k, 1)

    def forward(self, x):
        return self.conv(x)


class _Counter(nn.Module):
    """Ones everywhere, and remembers the crop sizes it saw."""

    def __init__(self):
        super().__init__()
        self.sizes = []

    def forward(self, x):
        self.sizes.append(tuple(x.shape[-2:]))
        return torch.ones(x.shape[0], 2, *x.shape[-2:])


def test_slide_on_one_crop_equals_whole(tiny_model_cfg):
    model = create_segmentor(tiny_model_cfg(num_classes=4)).eval()
    img = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(slide_inference(model, img, crop_size=32, stride=16), whole_inference(model, img))
    # stride smaller than the crop but image == crop: still exactly one window
    torch.testing.assert_close(slide_inference(model, img, (32, 32), (8, 8)), whole_inference(model, img))


def test_slide_with_overlaps_is_consistent():
    torch.manual_seed(0)
    model = _Pointwise().eval()
    img = torch.randn(1, 3, 45, 70)  # neither side a multiple of the stride
    out = slide_inference(model, img, crop_size=(24, 32), stride=(16, 20))
    torch.testing.assert_close(out, whole_inference(model, img), rtol=1e-5, atol=1e-6)
    counter = _Counter()
    ones = slide_inference(counter, img, crop_size=(24, 32), stride=(16, 20))
    torch.testing.assert_close(ones, torch.ones_like(ones))  # count-normalised
    # mmseg grid: rows = ceil((45 - 24) / 16) + 1 = 3, cols = ceil((70 - 32) / 20) + 1 = 3, all full-size crops
    assert counter.sizes == [(24, 32)] * 9


def test_slide_window_average_of_a_real_segmentor(tiny_model_cfg):
    """Overlapping windows: each pixel is the mean of the logits of the windows that cover it."""
    model = create_segmentor(tiny_model_cfg(num_classes=3)).eval()
    img = torch.randn(1, 3, 32, 48)
    out = slide_inference(model, img, crop_size=32, stride=16)  # windows at x = 0 and 16
    with torch.no_grad():
        left, right = model(img[..., :32]), model(img[..., 16:])
    torch.testing.assert_close(out[..., :16], left[..., :16])
    torch.testing.assert_close(out[..., 16:32], (left[..., 16:] + right[..., :16]) / 2)
    torch.testing.assert_close(out[..., 32:], right[..., 16:])


def test_image_smaller_than_crop_is_padded():
    counter = _Counter()
    out = slide_inference(counter, torch.randn(1, 3, 20, 50), crop_size=32, stride=20)
    assert out.shape == (1, 2, 20, 50)
    assert set(counter.sizes) == {(32, 32)}


def test_flip_multiscale_and_original_size():
    torch.manual_seed(0)
    model = _Pointwise(k=4).eval()
    img = torch.randn(2, 3, 24, 36)
    base = inference(model, img)
    torch.testing.assert_close(base, whole_inference(model, img).softmax(1))
    # a pointwise model is flip-equivariant: flip TTA must give the same probabilities
    torch.testing.assert_close(inference(model, img, flip=True), base, rtol=1e-5, atol=1e-6)
    probs = inference(model, img, out_size=(50, 70), scales=(0.5, 1.0, 1.5), flip=True)
    assert probs.shape == (2, 4, 50, 70)
    torch.testing.assert_close(probs.sum(1), torch.ones(2, 50, 70))
    labels = predict(model, img, out_size=(50, 70), mode="slide", crop_size=16, stride=8)
    assert labels.shape == (2, 50, 70) and labels.dtype == torch.int64


def test_bad_arguments():
    model = _Pointwise()
    with pytest.raises(ValueError, match="stride"):
        slide_inference(model, torch.randn(1, 3, 8, 8), crop_size=4, stride=5)
    with pytest.raises(ValueError, match="mode"):
        inference(model, torch.randn(1, 3, 8, 8), mode="tiles")
    with pytest.raises(ValueError, match="crop_size and stride"):
        inference(model, torch.randn(1, 3, 8, 8), mode="slide")


class _Ramp(nn.Module):
    """Class-0 logit = column index, whatever the input: flip TTA must average it with its mirror image."""

    def forward(self, x):
        cols = torch.arange(x.shape[-1], dtype=torch.float32).expand(x.shape[0], 1, x.shape[-2], x.shape[-1])
        return torch.cat([cols / 4, torch.zeros_like(cols)], dim=1)


def test_flip_is_undone():
    img = torch.randn(1, 3, 5, 9)
    probs = inference(_Ramp(), img, flip=True)
    col = torch.arange(9, dtype=torch.float32) / 4
    expected = (torch.sigmoid(col) + torch.sigmoid(col.flip(0))) / 2
    torch.testing.assert_close(probs[0, 0], expected.expand(5, 9))


def test_scaled_images_replace_the_resizes():
    """With `scaled` (the transform's per-scale resizes of the original), each scale runs on its own image."""
    model = _Counter()
    img = torch.randn(1, 3, 24, 36)
    scaled = [torch.randn(1, 3, 13, 19), torch.randn(1, 3, 24, 36)]
    probs = inference(model, img, out_size=(30, 40), scales=(0.5, 1.0), flip=True, scaled=scaled)
    assert probs.shape == (1, 2, 30, 40) and model.sizes == [(13, 19), (13, 19), (24, 36), (24, 36)]
    pointwise = _Pointwise(k=3).eval()
    expected = sum(inference(pointwise, x, out_size=(30, 40)) for x in scaled) / 2
    torch.testing.assert_close(inference(pointwise, img, out_size=(30, 40), scales=(0.5, 1.0), scaled=scaled),
                               expected)
    with pytest.raises(ValueError, match="2 scaled images for 3 scales"):
        inference(model, img, scales=(0.5, 1.0, 1.5), scaled=scaled)
