"""`steelscan evaluate` and `steelscan tune` on detector bundles, on 12 real NEU-DET images:
COCO box mAP per class in metrics.json and the report, box tuning within its search ranges, and
the component-based box figure (labelled so) for a segmenter-only bundle."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from tiny_models import NEU_CLASSES, TINY_FILTERS, severstal_manifest, tiny_detector_bundle

from steelscan.cli import main

NEU_PICK = ("crazing", "inclusion", "patches", "pitted_surface", "rolled-in_scale", "scratches")


def run(argv: list) -> int:
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    return int(exc.value.code or 0)


@pytest.fixture(scope="module")
def neu12(neu_dir, tmp_path_factory) -> Path:
    """Two images of each NEU class in the VOC layout (images/ + annotations/)."""
    sub = tmp_path_factory.mktemp("neu12")
    (sub / "images").mkdir()
    (sub / "annotations").mkdir()
    for cls in NEU_PICK:
        for i in (1, 2):
            shutil.copy(neu_dir / "images" / f"{cls}_{i}.jpg", sub / "images")
            shutil.copy(neu_dir / "annotations" / f"{cls}_{i}.xml", sub / "annotations")
    return sub


@pytest.fixture(scope="module")
def detector_bundle(tmp_path_factory) -> Path:
    return tiny_detector_bundle(tmp_path_factory.mktemp("det") / "model")


def truth_counts(data: Path) -> list[int]:
    from steelscan.data import load_dataset

    ds = load_dataset(data)
    return [sum(1 for r in ds.records for b in r.boxes if b.class_index == k) for k in range(6)]


def test_evaluate_reports_coco_box_map_per_class(detector_bundle, neu12, tmp_path, capsys):
    out = tmp_path / "eval"
    assert run(["evaluate", detector_bundle, neu12, "--out", out, "--engine", "torch"]) == 0
    printed = capsys.readouterr().out
    assert "12 images scored (every image)" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    det = metrics["detection"]
    assert 0.0 <= det["map"] <= det["map50"] <= 1.0
    assert det["method"] == "detector" and det["score_floor"] == 0.05 and det["images"] == 12
    assert [c["class"] for c in det["per_class"]] == NEU_CLASSES
    assert [c["truth_boxes"] for c in det["per_class"]] == truth_counts(neu12)
    assert sum(c["detections"] for c in det["per_class"]) > 0  # untrained scores pass 0.05
    for c in det["per_class"]:
        assert 0.0 <= c["ap"] <= c["ap50"] <= 1.0  # every class has truth boxes here
    assert 0.0 <= det["at_score_threshold"]["f1"] <= 1.0
    # the detector replaces the component-based figure; no segmenter: no mask scores
    assert metrics["boxes"] is None and metrics["segmentation"] is None
    assert metrics["gate"]["top1_accuracy"] is not None  # NEU is single-label
    assert f"box mAP@0.5 {det['map50']:.4f}  mAP@0.5:0.95 {det['map']:.4f}" in printed
    assert "Kaggle" not in printed and "component-based" not in printed
    text = (out / "report.md").read_text()
    assert "## Boxes (detector)" in text and "| class | AP@0.5 | AP@0.5:0.95 |" in text
    for c in det["per_class"]:
        assert f"| {c['class']} | " in text
    assert "](detection_ap.png)" in text and (out / "detection_ap.png").stat().st_size > 1000
    assert not (out / "seg_dice.png").exists() and not (out / "box_ap.png").exists()


def test_tune_sets_box_params_in_range_and_the_bundle_still_loads(
    detector_bundle, neu12, tmp_path, capsys
):
    from steelscan.bundle import load_bundle, read_manifest
    from steelscan.evaluation.tuning import BOX_NMS_IOUS, BOX_SCORE_THRESHOLDS, MAX_BOXES
    from steelscan.inference.predictor import Predictor

    model = tmp_path / "model"
    shutil.copytree(detector_bundle, model)
    assert run(["tune", model, neu12]) == 0
    printed = capsys.readouterr().out
    assert "box mAP@0.5 on all: before" in printed and "Kaggle" not in printed
    m = read_manifest(model)
    pp = m.postprocess
    assert pp.box_nms_iou in BOX_NMS_IOUS and pp.max_boxes in MAX_BOXES
    assert BOX_SCORE_THRESHOLDS[0] <= pp.box_score_threshold <= BOX_SCORE_THRESHOLDS[-1]
    assert m.metrics["tuned_box_map50_after"] >= m.metrics["tuned_box_map50_before"]
    assert m.metrics["tuned_box_f1_after"] >= 0.0 and "tuned_kaggle_after" not in m.metrics
    assert m.metrics["tuned_box_score_threshold"] == pp.box_score_threshold
    load_bundle(model)  # hashes still match
    image = next((neu12 / "images").iterdir())
    [pred] = list(Predictor(model, engine="torch", device="cpu").stream([("x", image)]))
    assert pred.error is None
    assert all(b.score >= pp.box_score_threshold for b in pred.result.detections)
    assert len(pred.result.detections) <= pp.max_boxes


def test_tune_on_returns_box_map_before_after_for_a_detector_only_bundle(detector_bundle, neu12):
    from steelscan.data import load_dataset
    from steelscan.evaluation.evaluate import tune_on
    from steelscan.inference.predictor import Predictor

    records = load_dataset(neu12).records
    outcome = tune_on(Predictor(detector_bundle, engine="torch", device="cpu"), records)
    assert outcome.score == "box_map50"
    assert outcome.before == outcome.boxes["box_map50_before"]
    assert outcome.after == outcome.boxes["box_map50_after"] >= outcome.before
    assert len(outcome.raws) == len(outcome.truths) == len(outcome.records) == 12
    assert outcome.postprocess.box_nms_iou in outcome.boxes["searched"]["box_nms_iou"]


def test_detector_bundle_without_a_gate_evaluates(neu12, tmp_path):
    from steelscan.evaluation.evaluate import evaluate

    model = tiny_detector_bundle(tmp_path / "nogate", with_classifier=False)
    m = evaluate(model, neu12, tmp_path / "e", engine="torch", progress=False)
    assert m["gate"] is None and m["segmentation"] is None and m["boxes"] is None
    assert 0.0 <= m["detection"]["map50"] <= 1.0
    assert all("detections" in row and "dice" not in row for row in m["per_image"])


def test_detector_with_segmenter_scores_masks_and_detector_boxes(neu12, tmp_path):
    from steelscan.evaluation.evaluate import evaluate

    model = tiny_detector_bundle(tmp_path / "both", with_segmenter=True)
    m = evaluate(model, neu12, tmp_path / "e", engine="torch", progress=False)
    assert 0.0 <= m["segmentation"]["score"] <= 1.0
    assert m["detection"] is not None and m["boxes"] is None  # the detector's figure replaces it


def test_segmenter_only_bundle_keeps_the_component_based_box_map(neu12, tmp_path, capsys):
    from steelscan.bundle import save_bundle
    from steelscan.manifest import PostProcess
    from steelscan.models.factory import create_segmenter, spec_for

    seg = create_segmenter("resunet", None, 6, filters=TINY_FILTERS)
    man = severstal_manifest(
        classes=NEU_CLASSES,
        class_ids=list(range(1, 7)),
        image_height=200,
        image_width=200,
        segmenter=spec_for(seg),
        postprocess=PostProcess(
            gate_mode="none",
            class_thresholds=[0.0] * 6,
            pixel_thresholds=[0.5] * 6,
            min_areas=[0] * 6,
            min_component_areas=[0] * 6,
        ),
    )
    model = save_bundle(tmp_path / "seg", man, None, seg)
    out = tmp_path / "eval"
    assert run(["evaluate", model, neu12, "--out", out, "--engine", "torch"]) == 0
    printed = capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["detection"] is None
    boxes = metrics["boxes"]
    assert boxes["method"] == "component-based" and boxes["num_gt"] == truth_counts(neu12)
    assert f"component-based box mAP@0.5 {boxes['map50']:.4f}" in printed
    assert "Kaggle score" in printed
    text = (out / "report.md").read_text()
    assert "## Boxes (component-based)" in text and "](box_ap.png)" in text
    assert "## Boxes (detector)" not in text
