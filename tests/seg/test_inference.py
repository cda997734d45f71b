"""Whole-image vs sliding-window inference, flip / multi-scale test-time augmentation, output sizes."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

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


def _mmseg_windows(h, w, crop, stride):
    """mmseg 0.x EncoderDecoder.slide_inference's window placement, written out: (y1, y2, x1, x2) per window."""
    (h_crop, w_crop), (h_stride, w_stride) = crop, stride
    h_grids = max(h - h_crop + h_stride - 1, 0) // h_stride + 1
    w_grids = max(w - w_crop + w_stride - 1, 0) // w_stride + 1
    out = []
    for h_idx in range(h_grids):
        for w_idx in range(w_grids):
            y1, x1 = h_idx * h_stride, w_idx * w_stride
            y2, x2 = min(y1 + h_crop, h), min(x1 + w_crop, w)
            y1, x1 = max(y2 - h_crop, 0), max(x2 - w_crop, 0)
            out.append((y1, y2, x1, x2))
    return out


def _mmseg_slide(model, img, crop, stride):
    """mmseg's accumulation: each window's logits zero-padded to the image (F.pad), summed, / the cover count."""
    h, w = img.shape[-2:]
    preds, count = 0, torch.zeros(1, 1, h, w)
    for y1, y2, x1, x2 in _mmseg_windows(h, w, crop, stride):
        preds = preds + F.pad(model(img[:, :, y1:y2, x1:x2]), (x1, w - x2, y1, h - y2))
        count[:, :, y1:y2, x1:x2] += 1
    return preds / count


class _Context(nn.Module):
    """A 1x1 conv plus the window's mean and its size: any padding of a window changes its output."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1)

    def forward(self, x):
        size = torch.tensor([x.shape[-2] / 10, x.shape[-1] / 10]).view(1, 2, 1, 1)
        return self.conv(x) + self.conv(x.mean((2, 3), keepdim=True)) + size


@pytest.mark.parametrize("size", [(20, 50), (50, 20), (20, 24), (32, 32), (45, 70), (33, 31)])
def test_slide_windows_match_mmseg(size):
    """Windows clamped to the image where it is smaller than the crop (mmseg runs the model on min(crop, image),
    no padding); images at least as large as the crop: full-size windows. Same windows, same averaged logits."""
    crop, stride = (32, 24), (20, 16)
    img = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(0))
    counter = _Counter()
    slide_inference(counter, img, crop_size=crop, stride=stride)
    windows = _mmseg_windows(*size, crop, stride)
    assert counter.sizes == [(y2 - y1, x2 - x1) for y1, y2, x1, x2 in windows]
    assert all(s == (min(crop[0], size[0]), min(crop[1], size[1])) for s in counter.sizes)
    torch.manual_seed(0)
    model = _Context().eval()
    with torch.no_grad():
        expected = _mmseg_slide(model, img, crop, stride)
    torch.testing.assert_close(slide_inference(model, img, crop_size=crop, stride=stride), expected)


def test_image_smaller_than_crop_runs_the_real_segmentor_on_the_image(tiny_model_cfg):
    """A segmentor on an image smaller than the crop in both dimensions: one window, the whole image, unpadded."""
    model = create_segmentor(tiny_model_cfg(num_classes=3)).eval()
    img = torch.randn(1, 3, 20, 28)
    torch.testing.assert_close(slide_inference(model, img, crop_size=32, stride=16), whole_inference(model, img))


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
