"""Detector box metrics: box_map against hand-worked COCO APs and against COCOeval run directly,
greedy box matching and F1, and the box tuner on synthetic detector outputs."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from steelscan.data.records import Box
from steelscan.evaluation.detection import (
    box_f1,
    box_map,
    coco_detections,
    coco_ground_truth,
    f1_at_thresholds,
    match_boxes,
)
from steelscan.evaluation.tuning import (
    BOX_NMS_IOUS,
    BOX_SCORE_THRESHOLDS,
    MAX_BOXES,
    tune_boxes,
)
from steelscan.inference.boxes import SCORE_FLOOR, DetectedBox, select_boxes
from steelscan.inference.postprocess import PostProcessor, default_postprocess
from steelscan.inference.raw import RawPrediction

CLASSES = ["a", "b", "c", "d"]
SIZES = [(100, 100), (100, 100)]
# 101-point interpolation of TP (0.9), FP (0.8), TP (0.7) against 2 truth boxes: precision 1
# up to recall 0.5 (51 recall points 0.00..0.50), then 2/3 (50 points 0.51..1.00).
TP_FP_TP = (51 * 1.0 + 50 * (2 / 3)) / 101


def det(c: int, score: float, x1: float, y1: float, x2: float, y2: float) -> DetectedBox:
    return DetectedBox(c, score, float(x1), float(y1), float(x2), float(y2))


def hand_case() -> tuple[list[list[Box]], list[list[DetectedBox]]]:
    """Class a: TP, FP, TP by score over two images (two truths); class b: one perfect box;
    class c: a truth and no detection; class d: nothing at all."""
    truths = [
        [Box(0, 10, 10, 30, 30), Box(1, 50, 50, 90, 80)],
        [Box(0, 5, 5, 25, 45), Box(2, 60, 0, 70, 10)],
    ]
    dets = [
        [det(0, 0.9, 10, 10, 30, 30), det(1, 0.6, 50, 50, 90, 80)],
        [det(0, 0.8, 70, 70, 95, 95), det(0, 0.7, 5, 5, 25, 45)],  # a far-away FP, then the TP
    ]
    return truths, dets


def cocoeval_directly(truths, dets, cat_ids=None) -> COCOeval:
    """COCOeval on the same dicts, run here without box_map's code (for the agreement test)."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = coco_ground_truth(truths, SIZES, CLASSES)
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(coco_detections(dets)), iouType="bbox")
        if cat_ids is not None:
            ev.params.catIds = cat_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


# --------------------------------------------------------------------------- box_map


def test_one_perfect_box_gives_ap_one():
    truths = [[Box(0, 10, 10, 30, 30)], []]
    r = box_map(truths, [[det(0, 0.5, 10, 10, 30, 30)], []], SIZES, CLASSES)
    assert r["map50"] == pytest.approx(1.0) and r["map"] == pytest.approx(1.0)
    assert r["per_class"][0]["ap50"] == pytest.approx(1.0)
    assert [c["ap50"] for c in r["per_class"][1:]] == [None, None, None]  # no truth: n/a


def test_false_positive_ranked_above_a_true_positive_gives_the_101_point_value():
    truths, dets = hand_case()
    r = box_map(truths, dets, SIZES, CLASSES)
    a, b, c, d = r["per_class"]
    # every TP is an exact box and the FP misses everything: the same at every IoU threshold
    assert a["ap50"] == pytest.approx(TP_FP_TP, abs=1e-9)
    assert a["ap"] == pytest.approx(TP_FP_TP, abs=1e-9)
    assert (b["ap50"], c["ap50"], d["ap50"]) == (pytest.approx(1.0), 0.0, None)
    assert (a["truth_boxes"], a["detections"], c["truth_boxes"], c["detections"]) == (2, 3, 1, 0)
    # the mean is over the classes with a truth box (class c counts as 0, class d not at all)
    assert r["map50"] == pytest.approx((TP_FP_TP + 1.0 + 0.0) / 3, abs=1e-9)
    assert r["map"] == pytest.approx(r["map50"], abs=1e-9)
    assert r["images"] == 2


def test_no_detections_scores_zero():
    truths, _ = hand_case()
    r = box_map(truths, [[], []], SIZES, CLASSES)
    assert r["map50"] == 0.0 and r["map"] == 0.0
    assert [c["ap50"] for c in r["per_class"]] == [0.0, 0.0, 0.0, None]


def test_a_box_under_iou_half_misses_at_050_and_counts_between_thresholds():
    truths = [[Box(0, 0, 0, 40, 40)], []]
    shifted = [[det(0, 0.9, 0, 0, 40, 30)], []]  # IoU 0.75: a hit at 0.5..0.75, a miss above
    r = box_map(truths, shifted, SIZES, CLASSES)
    assert r["map50"] == pytest.approx(1.0)
    assert r["map"] == pytest.approx(6 / 10)  # thresholds 0.50, 0.55, ..., 0.75 of 10
    far = [[det(0, 0.9, 0, 0, 40, 15)], []]  # IoU 0.375
    assert box_map(truths, far, SIZES, CLASSES)["map50"] == 0.0


def test_box_map_agrees_with_cocoeval_run_directly():
    truths, dets = hand_case()
    rng = np.random.default_rng(3)
    for boxes in dets:  # jitter so several IoU thresholds disagree
        for i, d in enumerate(boxes):
            j = rng.uniform(-4, 4, 4)
            boxes[i] = det(
                d.class_index, d.score, d.x1 + j[0], d.y1 + j[1], d.x2 + j[2], d.y2 + j[3]
            )
    r = box_map(truths, dets, SIZES, CLASSES)
    ev = cocoeval_directly(truths, dets)
    assert r["map"] == pytest.approx(ev.stats[0]) and r["map50"] == pytest.approx(ev.stats[1])
    assert r["map75"] == pytest.approx(max(ev.stats[2], 0.0))
    for k in range(3):  # per class: COCOeval restricted to that category alone
        one = cocoeval_directly(truths, dets, cat_ids=[k + 1])
        assert r["per_class"][k]["ap"] == pytest.approx(max(one.stats[0], 0.0))
        assert r["per_class"][k]["ap50"] == pytest.approx(max(one.stats[1], 0.0))


def test_box_map_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="one entry per image"):
        box_map([[]], [[], []], SIZES, CLASSES)


# --------------------------------------------------------------------------- matches and F1


def test_greedy_matches_by_score_and_class():
    truths, dets = hand_case()
    scores, matched, n_truth = match_boxes(truths, dets)
    assert n_truth == 4
    assert sorted(zip(scores.tolist(), matched.tolist(), strict=True)) == [
        (0.6, True),
        (0.7, True),
        (0.8, False),
        (0.9, True),
    ]
    # a second box on a matched truth is a false positive; a box of another class never matches
    dup = [[det(0, 0.9, 10, 10, 30, 30), det(0, 0.8, 11, 10, 30, 30), det(1, 0.7, 10, 10, 30, 30)]]
    _, m, _ = match_boxes([[Box(0, 10, 10, 30, 30)]], dup)
    assert m.tolist() == [True, False, False]


def test_f1_at_thresholds_cuts_the_ranked_boxes():
    truths, dets = hand_case()
    r = f1_at_thresholds(*match_boxes(truths, dets), [0.05, 0.75, 0.95])
    # 0.05: 3 TP 1 FP 1 FN; 0.75: 1 TP 1 FP 3 FN; 0.95: nothing shown, 4 FN
    assert r["f1"] == pytest.approx([6 / 8, 2 / 6, 0.0])
    assert r["tp"].tolist() == [3, 1, 0] and r["fn"].tolist() == [1, 3, 4]
    one = box_f1(truths, dets, 0.05)
    assert one["f1"] == pytest.approx(0.75) and one["precision"] == pytest.approx(0.75)
    assert box_f1([[]], [[]], 0.3)["f1"] == 1.0  # nothing to find and nothing found


# --------------------------------------------------------------------------- tuning boxes


def synthetic_raws(n: int = 6, k: int = 2, seed: int = 0) -> tuple[list, list]:
    """Detector outputs around known truth boxes: near-copies with high scores of the right
    class, shifted duplicates in between and scattered low-scored noise."""
    rng = np.random.default_rng(seed)
    raws, truths = [], []
    for _ in range(n):
        gts, boxes, scores = [], [], []
        for c in range(k):
            x, y = rng.integers(0, 120, 2)
            gts.append(Box(c, int(x), int(y), int(x + 40), int(y + 30)))
            for shift, s in ((0, 0.9), (6, 0.6), (14, 0.4)):
                boxes.append([x + shift, y, x + 40 + shift, y + 30])
                row = np.full(k, 0.01)
                row[c] = s * rng.uniform(0.9, 1.0)
                scores.append(row)
        for _ in range(30):
            x, y = rng.uniform(0, 150, 2)
            boxes.append([x, y, x + 20, y + 20])
            scores.append(rng.uniform(0.0, 0.3, k))
        raws.append(
            RawPrediction(
                np.full(k, 0.9, np.float32),
                np.zeros((k, 200, 200), np.float32),
                boxes=np.asarray(boxes, np.float32),
                box_scores=np.asarray(scores, np.float32),
            )
        )
        truths.append(gts)
    return raws, truths


def test_boxes_at_a_threshold_are_the_floor_boxes_cut_there():
    """What tune_boxes relies on: one run at the floor gives the boxes of every threshold."""
    raws, _ = synthetic_raws(3)
    for r in raws:
        floor = select_boxes(r.boxes, r.box_scores, 200, 200, score_threshold=SCORE_FLOOR)
        for t in (0.1, 0.3, 0.55):
            at = select_boxes(r.boxes, r.box_scores, 200, 200, score_threshold=t)
            assert at == [b for b in floor if b.score >= t]


def test_tune_boxes_stays_in_range_and_never_lowers_map():
    raws, truths = synthetic_raws()
    base = default_postprocess(2, "hard")
    proc = PostProcessor(base, [1, 2], ["a", "b"], has_segmenter=False, has_detector=True)
    found = tune_boxes(raws, truths, proc, tune_gate=True, progress=False)
    pp = found.postprocess
    assert pp.box_nms_iou in set(BOX_NMS_IOUS) | {base.box_nms_iou}
    assert pp.max_boxes in set(MAX_BOXES) | {base.max_boxes}
    assert BOX_SCORE_THRESHOLDS[0] <= pp.box_score_threshold <= BOX_SCORE_THRESHOLDS[-1]
    assert found.map50_after >= found.map50_before
    assert found.f1_after >= found.f1_before
    # every confident copy is ranked above every false box: AP is 1.0 whatever the NMS IoU or
    # cap, and a tie keeps the base's
    assert found.map50_after == pytest.approx(1.0)
    assert (pp.box_nms_iou, pp.max_boxes) == (base.box_nms_iou, base.max_boxes)
    # false boxes: noise under 0.3 and the copies shifted past NMS (IoU 0.48) under 0.4; the hits
    # score over 0.8: F1 is 1 from 0.4 to 0.8 and the middle of that run wins
    assert found.f1_after == pytest.approx(1.0) and pp.box_score_threshold == pytest.approx(0.6)
    assert found.f1_before < 1.0  # at the default 0.3 the shifted copies are shown
    assert found.to_dict()["box_score_threshold"] == pp.box_score_threshold
    assert base.box_score_threshold == 0.3  # the base is not modified
