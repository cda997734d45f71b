"""Confusion-matrix metrics against a brute-force per-class computation (with ignored pixels)."""
import math

import numpy as np
import pytest
import torch

from vision_rwkv.seg.metrics import SegMetric, confusion_matrix, format_table, metrics_from_confusion


def _brute_force(preds, gts, num_classes, ignore):
    ious, accs = [], []
    correct = labelled = 0
    for c in range(num_classes):
        inter = union = gt_c = 0
        for p, g in zip(preds, gts):
            valid = g != ignore
            inter += int(((p == c) & (g == c) & valid).sum())
            union += int((((p == c) | (g == c)) & valid).sum())
            gt_c += int(((g == c) & valid).sum())
        ious.append(inter / union if union else math.nan)
        accs.append(inter / gt_c if gt_c else math.nan)
    for p, g in zip(preds, gts):
        valid = g != ignore
        correct += int(((p == g) & valid).sum())
        labelled += int(valid.sum())
    return ious, accs, correct / labelled


@pytest.mark.parametrize("num_classes", [2, 5, 7])
def test_metrics_match_brute_force(num_classes):
    rng = np.random.default_rng(num_classes)
    metric = SegMetric(num_classes, ignore_index=255)
    preds, gts = [], []
    for shape in [(1, 13, 17), (2, 8, 9), (1, 31, 5)]:
        g = rng.integers(0, num_classes, size=shape)
        # a class missing from the labels and ignore pixels (whose predictions must not count)
        g[g == num_classes - 1] = 0
        g[rng.random(shape) < 0.2] = 255
        p = rng.integers(0, num_classes, size=shape)
        preds.append(p)
        gts.append(g)
        metric.update(torch.from_numpy(p), torch.from_numpy(g))
    res = metric.compute()
    ious, accs, aacc = _brute_force(preds, gts, num_classes, 255)
    got_iou = [res["per_class"][str(c)]["IoU"] for c in range(num_classes)]
    got_acc = [res["per_class"][str(c)]["Acc"] for c in range(num_classes)]
    np.testing.assert_allclose(got_iou, ious, rtol=1e-12)
    np.testing.assert_allclose(got_acc, accs, rtol=1e-12)  # NaN for the class without labels
    assert math.isnan(got_acc[-1])
    assert res["mIoU"] == pytest.approx(np.nanmean(ious), rel=1e-12)
    assert res["mAcc"] == pytest.approx(np.nanmean(accs), rel=1e-12)
    assert res["aAcc"] == pytest.approx(aacc, rel=1e-12)
    assert res["num_pixels"] == sum(int((g != 255).sum()) for g in gts)


def test_perfect_prediction_and_table():
    g = torch.tensor([[0, 1, 2], [2, 255, 1]])
    res = metrics_from_confusion(confusion_matrix(g.clamp(max=2), g, 3), ["bg", "a", "b"])
    assert res["mIoU"] == res["mAcc"] == res["aAcc"] == 1.0
    table = format_table(res)
    assert "bg" in table and "100.00" in table and "mIoU 100.00" in table


def test_bad_labels_and_shapes_are_errors():
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix(torch.zeros(2, 2, dtype=torch.long), torch.tensor([[0, 3], [1, 0]]), 3)
    with pytest.raises(ValueError, match="shapes differ"):
        confusion_matrix(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 2, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="class names"):
        metrics_from_confusion(torch.eye(3, dtype=torch.long), ["a", "b"])


def test_dice_fscore_precision_recall_as_mmseg_defines_them():
    """mmseg's IoUMetric(iou_metrics=['mIoU', 'mDice', 'mFscore']) summaries, per class and averaged over the
    classes where they are defined (rows: ground truth, columns: prediction)."""
    conf = torch.tensor([[50, 10, 0, 0],    # class 0: hit and missed
                         [5, 0, 0, 3],      # class 1: present and predicted, never hit (F1 NaN in mmseg)
                         [0, 0, 0, 0],      # class 2: absent everywhere
                         [0, 0, 0, 7]])     # class 3: hit, also predicted for class 1
    r = metrics_from_confusion(conf, ["a", "b", "c", "d"])
    p0, r0 = 50 / 55, 50 / 60
    want = {"a": dict(IoU=50 / 65, Acc=r0, Dice=100 / 115, Precision=p0, Fscore=2 * p0 * r0 / (p0 + r0)),
            "b": dict(IoU=0.0, Acc=0.0, Dice=0.0, Precision=0.0, Fscore=math.nan),
            "c": dict(IoU=math.nan, Acc=math.nan, Dice=math.nan, Precision=math.nan, Fscore=math.nan),
            "d": dict(IoU=7 / 10, Acc=1.0, Dice=14 / 17, Precision=0.7, Fscore=2 * 0.7 / 1.7)}
    for name, metrics in want.items():
        for k, v in metrics.items():
            got = r["per_class"][name][k]
            assert (math.isnan(v) and math.isnan(got)) or got == pytest.approx(v), (name, k)
        got = r["per_class"][name]["Recall"]  # (mmseg's per-class table: Recall beside Acc, the same value)
        assert (math.isnan(got) and math.isnan(metrics["Acc"])) or got == metrics["Acc"]
    assert r["mDice"] == pytest.approx((100 / 115 + 0 + 14 / 17) / 3)
    assert r["mFscore"] == pytest.approx((want["a"]["Fscore"] + want["d"]["Fscore"]) / 2)
    assert r["mPrecision"] == pytest.approx((p0 + 0 + 0.7) / 3) and r["mRecall"] == pytest.approx(r["mAcc"])
    assert r["aAcc"] == pytest.approx(57 / 75)
