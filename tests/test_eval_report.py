"""The evaluation report: metric dicts from predictions, then metrics.json, plots and report.md."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from steelscan import rle
from steelscan.data.records import Box
from steelscan.evaluation.metrics import box_map50
from steelscan.evaluation.report import (
    compute_gate_metrics,
    compute_seg_metrics,
    write_evaluation_report,
)

CLASSES = ["class 1", "class 2", "class 3", "class 4"]


def gate_inputs(seed: int = 0, n: int = 60):
    rng = np.random.default_rng(seed)
    y_cls = (rng.random((n, 4)) < [0.2, 0.1, 0.4, 0.15]).astype(int)
    p_cls = np.clip(y_cls * 0.55 + rng.random((n, 4)) * 0.5, 0, 1)
    y_any = y_cls.any(1).astype(int)
    p_any = p_cls.max(1)
    return y_any, p_any, y_cls, p_cls


def test_compute_gate_metrics():
    y_any, p_any, y_cls, p_cls = gate_inputs()
    g = compute_gate_metrics(y_any, p_any, y_cls, p_cls, CLASSES)
    assert 0.5 < g["defect"]["roc_auc"] <= 1.0
    t = g["recall_threshold"]
    assert (p_any[y_any == 1] >= t).mean() >= 0.99
    assert g["at_recall_threshold"]["recall"] >= 0.99
    assert g["roc"]["fpr"][0] == 0.0 and g["roc"]["tpr"][-1] == 1.0
    assert g["per_class"]["labels"] == CLASSES
    assert len(g["per_class"]["confusion_matrices"]) == 4
    one_output = compute_gate_metrics(y_any, p_any, None, None, CLASSES)
    assert one_output["per_class"] is None


def test_compute_seg_metrics_streams_real_masks(reference_rle_csv):
    """Real Severstal masks: a perfect prediction, a shifted one and an empty one."""
    df = pd.read_csv(reference_rle_csv, nrows=6)

    def truth_masks():
        for row in df.itertuples():
            m = np.zeros((4, 256, 1600), np.uint8)
            m[row.ClassId - 1] = rle.decode(row.EncodedPixels)
            yield m

    perfect = compute_seg_metrics(truth_masks(), truth_masks(), CLASSES)
    assert perfect["score"] == 1.0 and perfect["num_images"] == 6
    shifted = compute_seg_metrics(
        (np.roll(m, 20, 2) for m in truth_masks()), truth_masks(), CLASSES
    )
    assert 0.75 < shifted["score"] < 1.0
    empty = compute_seg_metrics((np.zeros_like(m) for m in truth_masks()), truth_masks(), CLASSES)
    assert empty["score"] == pytest.approx(empty["empty_baseline"]) == pytest.approx(18 / 24)
    assert sum(c["fn"] for c in empty["classes"]) == 6


def test_write_evaluation_report_all_sections(tmp_path):
    y_any, p_any, y_cls, p_cls = gate_inputs(1)
    gate = compute_gate_metrics(y_any, p_any, y_cls, p_cls, CLASSES)
    rng = np.random.default_rng(0)
    truths = [(rng.random((4, 16, 32)) < 0.05).astype(np.uint8) for _ in range(5)]
    preds = [t.copy() for t in truths]
    preds[0][1] = 0
    seg = compute_seg_metrics(preds, truths, CLASSES)
    gt = [[Box(0, 1, 1, 10, 10)], [Box(2, 5, 5, 20, 20)]]
    boxes = box_map50([[(0, 1, 1, 10, 10, 0.9)], [(1, 5, 5, 20, 20, 0.8)]], gt, 4)
    md = write_evaluation_report(
        tmp_path / "eval", class_names=CLASSES, gate=gate, seg=seg, boxes=boxes
    )
    out = tmp_path / "eval"
    assert md == out / "report.md"
    names = {p.name for p in out.iterdir()}
    assert names == {
        "metrics.json",
        "report.md",
        "gate_confusion.png",
        "gate_roc.png",
        "class_confusion.png",
        "seg_dice.png",
        "box_ap.png",
    }
    for png in out.glob("*.png"):
        with Image.open(png) as im:
            assert im.size[0] > 100 and im.size[1] > 100
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["segmentation"]["score"] == pytest.approx(seg["score"])
    assert metrics["gate"]["recall_threshold"] == pytest.approx(gate["recall_threshold"])
    assert metrics["boxes"]["map50"] == 0.5
    text = md.read_text()
    assert f"{seg['score']:.4f}" in text
    assert f"{seg['empty_baseline']:.4f}" in text
    assert "recall >= 0.99" in text and f"{gate['recall_threshold']:.4f}" in text
    assert "ROC-AUC" in text and "mAP@0.5" in text
    for name in names - {"metrics.json", "report.md"}:
        assert f"]({name})" in text  # every plot is linked from the page


def test_report_with_only_segmentation_and_none_values(tmp_path):
    t = np.zeros((4, 8, 8), np.uint8)
    seg = compute_seg_metrics([t], [t], CLASSES)  # no defects at all: non-empty Dice is undefined
    md = write_evaluation_report(tmp_path, class_names=CLASSES, gate=None, seg=seg, boxes=None)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "metrics.json",
        "report.md",
        "seg_dice.png",
    ]
    assert "n/a" in md.read_text()
    assert json.loads((tmp_path / "metrics.json").read_text())["gate"] is None
    with pytest.raises(ValueError, match="nothing to report"):
        write_evaluation_report(tmp_path, class_names=CLASSES, gate=None, seg=None, boxes=None)
