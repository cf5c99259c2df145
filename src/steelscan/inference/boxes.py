"""The detector's post-processing: scores and boxes per location -> per-class boxes.

One rule for every engine and for training's validation, in NumPy and OpenCV only (the runtime
has no torch): keep locations whose class score reaches ``score_threshold``, take the best
``top_k`` candidates, clip them to the image, suppress overlaps per class (OpenCV's batched NMS at
``nms_iou``) and keep the ``max_boxes`` best. The same steps as torchvision's
``FCOS.postprocess_detections``, which runs them per pyramid level; here they run over all
levels at once, so a box never depends on which level proposed it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

#: Boxes below this score are never kept: the floor mAP is computed at (COCO's practice) and the
#: lowest score threshold the tuner tries.
SCORE_FLOOR = 0.05
DEFAULT_TOP_K = 1000


@dataclass(frozen=True)
class DetectedBox:
    """One detection: 0-based class index, score in [0, 1], corners in image pixels (float)."""

    class_index: int
    score: float
    x1: float
    y1: float
    x2: float
    y2: float

    @property
    def xywh(self) -> list[float]:
        """COCO's ``bbox``: [x, y, width, height]."""
        return [self.x1, self.y1, self.x2 - self.x1, self.y2 - self.y1]

    def to_dict(self) -> dict[str, Any]:
        return {
            "class_index": self.class_index,
            "score": round(self.score, 6),
            "box": [round(v, 2) for v in (self.x1, self.y1, self.x2, self.y2)],
        }


def select_boxes(
    boxes: np.ndarray,
    scores: np.ndarray,
    height: int,
    width: int,
    *,
    score_threshold: float = SCORE_FLOOR,
    nms_iou: float = 0.6,
    max_boxes: int = 100,
    top_k: int = DEFAULT_TOP_K,
) -> list[DetectedBox]:
    """Per-class boxes of one image from the detector's ``boxes`` (L, 4) and ``scores`` (L, K).

    ``height``/``width`` are the image's own size (the batch may have been padded beyond it).
    Returned best first.
    """
    scores = np.asarray(scores, np.float32)
    boxes = np.asarray(boxes, np.float32)
    if scores.ndim != 2 or boxes.shape != (scores.shape[0], 4):
        raise ValueError(
            f"detector outputs of shapes {boxes.shape} and {scores.shape} do not match"
        )
    loc, cls = np.nonzero(scores >= score_threshold)
    if loc.size == 0:
        return []
    cand = scores[loc, cls]
    if cand.size > top_k:
        keep = np.argpartition(-cand, top_k - 1)[:top_k]
        loc, cls, cand = loc[keep], cls[keep], cand[keep]
    b = boxes[loc].copy()
    b[:, [0, 2]] = b[:, [0, 2]].clip(0, width)
    b[:, [1, 3]] = b[:, [1, 3]].clip(0, height)
    ok = (b[:, 2] - b[:, 0] >= 1e-2) & (b[:, 3] - b[:, 1] >= 1e-2)
    b, cls, cand = b[ok], cls[ok], cand[ok]
    if cand.size == 0:
        return []
    xywh = np.stack([b[:, 0], b[:, 1], b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], axis=1)
    kept = cv2.dnn.NMSBoxesBatched(
        xywh.astype(np.float64).tolist(),
        cand.astype(np.float64).tolist(),
        cls.astype(np.int32).tolist(),
        float(score_threshold),
        float(nms_iou),
    )
    order = sorted((int(i) for i in np.asarray(kept).reshape(-1)), key=lambda i: -cand[i])
    return [
        DetectedBox(int(cls[i]), float(cand[i]), *(float(v) for v in b[i]))
        for i in order[:max_boxes]
    ]
