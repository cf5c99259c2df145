"""The raw output of the two networks for one image, before any post-processing.

Kept separate from :mod:`steelscan.inference.result` because tuning works on these probabilities
(thresholds are searched over them), while results are what users see after thresholds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class RawPrediction:
    """Per-class presence probabilities ``(K,)`` and mask probabilities ``(K, H, W)`` float32;
    with a detector, its per-location ``boxes`` ``(L, 4)`` and ``box_scores`` ``(L, K)``."""

    class_probs: np.ndarray
    mask_probs: np.ndarray
    boxes: np.ndarray | None = None
    box_scores: np.ndarray | None = None
