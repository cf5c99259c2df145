"""IoU/Dice per class pooled over the dataset and per image, checked against hand counts and
against scikit-learn's Jaccard score on the pooled pixels."""

from __future__ import annotations

import numpy as np
import pytest

from steelscan.evaluation.overlap import OverlapAccumulator, mask_areas


def test_pooled_and_per_image_iou_by_hand():
    acc = OverlapAccumulator(["a", "b"])
    p1 = np.zeros((2, 4, 4), np.uint8)
    t1 = np.zeros((2, 4, 4), np.uint8)
    p1[0, :2, :2] = 1  # 4 px predicted
    t1[0, :2, :1] = 1  # 2 px true, both inside: IoU 2/4
    p2 = np.zeros((2, 3, 5), np.uint8)  # another size: mixed sizes pool fine
    t2 = np.zeros((2, 3, 5), np.uint8)
    t2[0, 0, :3] = 1  # a miss: IoU 0/3
    p2[1, 1, 1] = 1  # class b: one false pixel, IoU 0; image 1 has no b at all (not counted)
    for p, t in ((p1, t1), (p2, t2)):
        acc.add_areas(*mask_areas(p, t))
    r = acc.report()
    a, b = r["classes"]
    assert a["iou_pooled"] == pytest.approx(2 / (4 + 3))  # I=2, U=4+3
    assert a["iou_per_image"] == pytest.approx((0.5 + 0.0) / 2)
    assert a["dice_pooled"] == pytest.approx(2 * 2 / (4 + 2 + 3))
    assert b["iou_pooled"] == 0.0 and b["images_with_class"] == 1
    assert r["mean_iou"] == pytest.approx((2 / 7 + 0.0) / 2)


def test_pooled_iou_equals_sklearn_jaccard():
    from sklearn.metrics import jaccard_score

    rng = np.random.default_rng(0)
    acc = OverlapAccumulator(["x"])
    preds, truths = [], []
    for h, w in ((20, 30), (25, 17), (8, 40)):
        p = (rng.random((1, h, w)) > 0.6).astype(np.uint8)
        t = (rng.random((1, h, w)) > 0.7).astype(np.uint8)
        acc.add_areas(*mask_areas(p, t))
        preds.append(p.ravel())
        truths.append(t.ravel())
    want = jaccard_score(np.concatenate(truths), np.concatenate(preds))
    assert acc.report()["classes"][0]["iou_pooled"] == pytest.approx(want)


def test_evaluate_reports_iou_on_mask_data(trained_bundle, synth_small, tmp_path):
    from steelscan.evaluation.evaluate import evaluate

    m = evaluate(trained_bundle, synth_small, tmp_path / "e", split="all", progress=False)
    ov = m["segmentation"]["overlap"]
    assert len(ov["classes"]) == 4 and 0.0 <= ov["mean_iou"] <= 1.0
    report = (tmp_path / "e" / "report.md").read_text()
    assert "Mean IoU over the defect classes" in report
    assert (tmp_path / "e" / "seg_iou.png").stat().st_size > 1000
