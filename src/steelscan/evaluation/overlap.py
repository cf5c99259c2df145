"""IoU and Dice per class, pooled over the dataset and averaged per image: the segmentation
figures of mask datasets, beside the Kaggle score.

Pooled: every pixel of the dataset counts once (``sum(I) / sum(U)`` per class), which weighs large
defects more, as a pixel-counting user sees it. Per image: the mean of each image's IoU, over the
images where the class is in the truth or the prediction (an image with neither says nothing about
the class; Kaggle's Dice counts those as 1, which is why both are reported). Mean IoU is over the
defect classes (the pooled figure), as segmentation papers report it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def mask_areas(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per class (K,) predicted area, truth area and intersection of (K, H, W) masks."""
    p = np.asarray(pred) != 0
    t = np.asarray(truth) != 0
    if p.shape != t.shape or p.ndim != 3:
        raise ValueError(f"expected two (K, H, W) masks of one shape, got {p.shape} and {t.shape}")
    k = p.shape[0]
    return (
        p.reshape(k, -1).sum(1),
        t.reshape(k, -1).sum(1),
        np.logical_and(p, t).reshape(k, -1).sum(1),
    )


class OverlapAccumulator:
    """Streaming IoU/Dice: a few integers per class and image, never a mask kept."""

    def __init__(self, class_names: Sequence[str]) -> None:
        self.names = list(class_names)
        k = len(self.names)
        self.inter = np.zeros(k, dtype=np.int64)
        self.union = np.zeros(k, dtype=np.int64)
        self.pred = np.zeros(k, dtype=np.int64)
        self.truth = np.zeros(k, dtype=np.int64)
        self.iou_sum = np.zeros(k)
        self.dice_sum = np.zeros(k)
        self.seen = np.zeros(k, dtype=np.int64)  # images where truth or prediction is non-empty

    def add_areas(self, pred: np.ndarray, truth: np.ndarray, inter: np.ndarray) -> None:
        """Add one image from its per-class areas (see :func:`mask_areas`)."""
        pred, truth, inter = (np.asarray(a, dtype=np.int64) for a in (pred, truth, inter))
        union = pred + truth - inter
        self.inter += inter
        self.union += union
        self.pred += pred
        self.truth += truth
        some = union > 0
        self.seen += some
        self.iou_sum += np.where(some, inter / np.maximum(union, 1), 0.0)
        self.dice_sum += np.where(some, 2 * inter / np.maximum(pred + truth, 1), 0.0)

    def report(self) -> dict[str, Any]:
        classes = []
        for i, name in enumerate(self.names):
            u, s = int(self.union[i]), int(self.seen[i])
            pt = int(self.pred[i] + self.truth[i])
            classes.append(
                {
                    "name": name,
                    "iou_pooled": float(self.inter[i] / u) if u else None,
                    "dice_pooled": float(2 * self.inter[i] / pt) if pt else None,
                    "iou_per_image": float(self.iou_sum[i] / s) if s else None,
                    "dice_per_image": float(self.dice_sum[i] / s) if s else None,
                    "images_with_class": s,
                    "truth_pixels": int(self.truth[i]),
                    "pred_pixels": int(self.pred[i]),
                }
            )
        pooled = [c["iou_pooled"] for c in classes if c["iou_pooled"] is not None]
        per_image = [c["iou_per_image"] for c in classes if c["iou_per_image"] is not None]
        return {
            "mean_iou": float(np.mean(pooled)) if pooled else None,
            "mean_iou_per_image": float(np.mean(per_image)) if per_image else None,
            "classes": classes,
        }
