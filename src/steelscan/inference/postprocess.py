"""Turning probabilities into masks: the ONE implementation of the gate/threshold/area rules.

The inspector, the tuner and the evaluation all call :func:`apply`, so a tuned
:class:`~steelscan.manifest.PostProcess` means the same thing everywhere. Per class ``k``:

1. gate (``pp.gate_mode``):
   ``"hard"``: the class can only be present if ``class_probs[k] >= class_thresholds[k]``;
   ``"soft"``: mask probabilities are multiplied by ``class_probs[k]`` (no class threshold);
   ``"none"``: the classifier is ignored.
2. pixel threshold: ``prob >= pixel_thresholds[k]``.
3. connected components (8-connected) smaller than ``min_component_areas[k]`` pixels are removed.
4. the whole mask is dropped if what is left is smaller than ``min_areas[k]`` pixels.

``present[k]`` is True exactly when the final mask is non-empty, so presence and masks never
disagree (the Kaggle metric only sees masks). ``pp.gate_threshold`` is not applied here: it lets the
inspector skip running the segmenter on images whose "any defect" probability is low.
"""

from __future__ import annotations

import cv2
import numpy as np

from steelscan.manifest import PostProcess


def remove_small_components(mask: np.ndarray, min_area: int) -> np.ndarray:
    """Remove 8-connected components with fewer than ``min_area`` pixels; returns a uint8 mask."""
    mask = (np.asarray(mask) != 0).astype(np.uint8)
    if min_area <= 1 or not mask.any():
        return mask
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    keep = stats[:, cv2.CC_STAT_AREA] >= min_area
    keep[0] = False  # label 0 is the background
    return keep[labels].astype(np.uint8)


def boxes_from_mask(mask: np.ndarray) -> list[tuple[int, int, int, int]]:
    """One ``(x1, y1, x2, y2)`` box per 8-connected component, ``x2``/``y2`` exclusive."""
    mask = (np.asarray(mask) != 0).astype(np.uint8)
    if not mask.any():
        return []
    n, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    boxes = []
    for x, y, w, h, _area in stats[1:n]:
        boxes.append((int(x), int(y), int(x + w), int(y + h)))
    return boxes


def _check(class_probs: np.ndarray, mask_probs: np.ndarray, pp: PostProcess) -> int:
    if mask_probs.ndim != 3:
        raise ValueError(f"mask_probs must be (K, H, W), got shape {mask_probs.shape}")
    k = mask_probs.shape[0]
    if class_probs.shape != (k,):
        raise ValueError(f"class_probs must have shape ({k},), got {class_probs.shape}")
    for name in ("class_thresholds", "pixel_thresholds", "min_areas", "min_component_areas"):
        n = len(getattr(pp, name))
        if n != k:
            raise ValueError(f"PostProcess.{name} has {n} entries for {k} classes")
    return k


def binarize(
    class_prob: float, mask_prob: np.ndarray, pixel_threshold: float, gate_mode: str
) -> np.ndarray:
    """Step 2 of the rules for one class (soft gating included); shared with the tuner."""
    if gate_mode == "soft":
        return (mask_prob * np.float32(class_prob) >= pixel_threshold).astype(np.uint8)
    return (mask_prob >= pixel_threshold).astype(np.uint8)


def apply(
    class_probs: np.ndarray, mask_probs: np.ndarray, pp: PostProcess
) -> tuple[np.ndarray, np.ndarray]:
    """Apply the rules above; returns ``present`` (K,) bool and ``masks`` (K, H, W) uint8."""
    class_probs = np.asarray(class_probs, dtype=np.float32).reshape(-1)
    mask_probs = np.asarray(mask_probs, dtype=np.float32)
    k = _check(class_probs, mask_probs, pp)
    masks = np.zeros(mask_probs.shape, dtype=np.uint8)
    for i in range(k):
        if pp.gate_mode == "hard" and class_probs[i] < pp.class_thresholds[i]:
            continue
        m = binarize(class_probs[i], mask_probs[i], pp.pixel_thresholds[i], pp.gate_mode)
        m = remove_small_components(m, pp.min_component_areas[i])
        if int(m.sum()) < pp.min_areas[i]:
            continue
        masks[i] = m
    present = masks.reshape(k, -1).any(axis=1)
    return present, masks
