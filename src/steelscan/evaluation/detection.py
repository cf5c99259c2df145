"""Box mAP the standard way: pycocotools' COCOeval on in-memory COCO structures.

``box_map`` builds a COCO ground truth from the records' boxes and a COCO results list from the
detections, runs ``COCOeval`` (iouType "bbox") and reads mAP@0.5, mAP@0.5:0.95 and the per-class
APs out of its ``eval["precision"]`` table (the same reading detectron2 and mmdetection do). No
AP is computed here by hand. Box corners follow :class:`steelscan.data.records.Box`: ``x2``/``y2``
exclusive, so COCO's width is ``x2 - x1``.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from steelscan.data.records import Box
from steelscan.inference.boxes import SCORE_FLOOR, DetectedBox


def floor_detections(
    processor: Any, raws: Sequence[Any], sizes: Sequence[tuple[int, int]]
) -> list[list[DetectedBox]]:
    """Every image's boxes down to :data:`~steelscan.inference.boxes.SCORE_FLOOR` under the
    post-processor's rules (its hard gate included): what mAP is computed on, the same in
    evaluation, tuning and the end of training."""
    return [
        processor.detections(r, int(h), int(w), score_threshold=SCORE_FLOOR)
        for r, (h, w) in zip(raws, sizes, strict=True)
    ]


def coco_ground_truth(
    truths: Sequence[Sequence[Box]], sizes: Sequence[tuple[int, int]], classes: Sequence[str]
) -> dict[str, Any]:
    """A COCO instances dict: image ids 1..N in order, category ids 1..K (class index + 1)."""
    images = [
        {"id": i + 1, "height": int(h), "width": int(w), "file_name": str(i + 1)}
        for i, (h, w) in enumerate(sizes)
    ]
    anns = []
    for i, boxes in enumerate(truths):
        for b in boxes:
            w, h = b.x2 - b.x1, b.y2 - b.y1
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i + 1,
                    "category_id": b.class_index + 1,
                    "bbox": [b.x1, b.y1, w, h],
                    "area": float(w * h),
                    "iscrowd": 0,
                }
            )
    cats = [{"id": k + 1, "name": c} for k, c in enumerate(classes)]
    return {"images": images, "annotations": anns, "categories": cats}


def coco_detections(detections: Sequence[Sequence[DetectedBox]]) -> list[dict[str, Any]]:
    """A COCO results list for :func:`coco_ground_truth`'s ids."""
    return [
        {"image_id": i + 1, "category_id": d.class_index + 1, "bbox": d.xywh, "score": d.score}
        for i, dets in enumerate(detections)
        for d in dets
    ]


def _quiet_eval(gt: dict[str, Any], results: list[dict[str, Any]]) -> COCOeval:
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
        coco = COCO()
        coco.dataset = gt
        coco.createIndex()
        dt = coco.loadRes(results) if results else COCO()
        if not results:
            dt.dataset = {"images": gt["images"], "annotations": [], "categories": gt["categories"]}
            dt.createIndex()
        ev = COCOeval(coco, dt, iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def _ap(precision: np.ndarray) -> float | None:
    """Mean of a COCOeval precision slice, ignoring -1 (no ground truth); None when all are -1."""
    valid = precision[precision > -1]
    return float(valid.mean()) if valid.size else None


def box_map(
    truths: Sequence[Sequence[Box]],
    detections: Sequence[Sequence[DetectedBox]],
    sizes: Sequence[tuple[int, int]],
    classes: Sequence[str],
) -> dict[str, Any]:
    """mAP@0.5, mAP@0.5:0.95 (COCO's), AR@100 and per-class AP of ``detections`` against boxes.

    ``truths``, ``detections`` and ``sizes`` are parallel, one entry per image. With no
    detections at all every AP is 0 (COCOeval's -1 for "no ground truth" stays None).
    """
    if not (len(truths) == len(detections) == len(sizes)):
        raise ValueError("truths, detections and sizes must have one entry per image")
    gt = coco_ground_truth(truths, sizes, classes)
    ev = _quiet_eval(gt, coco_detections(detections))
    # precision: [T iou thresholds, R recall points, K classes, A areas, M max-dets]; area "all"
    # is index 0 and maxDets 100 the last, the slices COCO's own summary uses.
    prec = ev.eval["precision"]
    iou50 = int(np.argmin(np.abs(ev.params.iouThrs - 0.5)))
    per_class = []
    for k, name in enumerate(classes):
        n_truth = sum(1 for boxes in truths for b in boxes if b.class_index == k)
        per_class.append(
            {
                "class": name,
                "truth_boxes": n_truth,
                "detections": sum(1 for d in detections for b in d if b.class_index == k),
                "ap50": _ap(prec[iou50, :, k, 0, -1]),
                "ap": _ap(prec[:, :, k, 0, -1]),
            }
        )
    stats = [float(v) for v in ev.stats]
    return {
        "map50": max(stats[1], 0.0),
        "map": max(stats[0], 0.0),
        "map75": max(stats[2], 0.0),
        "ar100": max(stats[8], 0.0),
        "images": len(truths),
        "per_class": per_class,
        "library": "pycocotools COCOeval (bbox)",
    }


# --------------------------------------------------------------------------- matches and F1


def _iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of (N, 4) against (M, 4) corner boxes, exclusive ends (COCO's bbox IoU)."""
    ix = np.clip(
        np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[:, 0]), 0, None
    )
    iy = np.clip(
        np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[:, 1]), 0, None
    )
    inter = ix * iy
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def match_boxes(
    truths: Sequence[Sequence[Box]],
    detections: Sequence[Sequence[DetectedBox]],
    iou_threshold: float = 0.5,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Greedy matching by score, per image and class: ``(scores, matched, truth count)``.

    Each detection, best score first, takes the unmatched truth box of its class with the highest
    IoU if that reaches ``iou_threshold`` (COCOeval's rule at one IoU). A detection's outcome
    never depends on lower-scored ones, so the matches of the boxes at or above any score
    threshold are these same flags: one matching serves every threshold.
    """
    if len(truths) != len(detections):
        raise ValueError("truths and detections must have one entry per image")
    scores: list[float] = []
    matched: list[bool] = []
    n_truth = 0
    for gts, dets in zip(truths, detections, strict=True):
        n_truth += len(gts)
        g = np.array([[b.x1, b.y1, b.x2, b.y2] for b in gts], float).reshape(-1, 4)
        g_cls = np.array([b.class_index for b in gts], int)
        used = np.zeros(len(gts), bool)
        for d in sorted(dets, key=lambda d: -d.score):
            scores.append(d.score)
            cand = np.flatnonzero((g_cls == d.class_index) & ~used)
            hit = False
            if cand.size:
                ious = _iou_matrix(np.array([[d.x1, d.y1, d.x2, d.y2]], float), g[cand])[0]
                best = int(np.argmax(ious))
                if ious[best] >= iou_threshold:
                    used[cand[best]] = hit = True
            matched.append(hit)
    return np.asarray(scores, float), np.asarray(matched, bool), n_truth


def f1_at_thresholds(
    scores: np.ndarray, matched: np.ndarray, n_truth: int, thresholds: Sequence[float]
) -> dict[str, np.ndarray]:
    """Precision, recall and F1 of the boxes scoring at least each threshold (from
    :func:`match_boxes`). No truth and no box is a perfect 1.0; the arrays follow ``thresholds``."""
    t = np.asarray(thresholds, float)
    keep = scores[None, :] >= t[:, None]
    tp = (keep & matched[None, :]).sum(1).astype(float)
    n_det = keep.sum(1).astype(float)
    fp, fn = n_det - tp, n_truth - tp
    denom = 2 * tp + fp + fn
    return {
        "precision": np.where(n_det > 0, tp / np.maximum(n_det, 1), 1.0 if n_truth == 0 else 0.0),
        "recall": np.where(n_truth > 0, tp / max(n_truth, 1), 1.0),
        "f1": np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 1.0),
        "tp": tp.astype(int),
        "fp": fp.astype(int),
        "fn": fn.astype(int),
    }


def box_f1(
    truths: Sequence[Sequence[Box]],
    detections: Sequence[Sequence[DetectedBox]],
    score_threshold: float,
    iou_threshold: float = 0.5,
) -> dict[str, Any]:
    """Precision, recall and F1 at IoU ``iou_threshold`` of the boxes shown to users (those
    scoring at least ``score_threshold``): the figures the score threshold is tuned for."""
    scores, matched, n_truth = match_boxes(truths, detections, iou_threshold)
    r = f1_at_thresholds(scores, matched, n_truth, [score_threshold])
    out: dict[str, Any] = {k: v[0].item() for k, v in r.items()}
    out.update(score_threshold=float(score_threshold), iou_threshold=float(iou_threshold))
    return out
