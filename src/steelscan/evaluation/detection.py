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
from steelscan.inference.boxes import DetectedBox


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
