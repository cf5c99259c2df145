"""Model execution behind one small interface, so the pipeline does not know which runtime runs.

An engine takes a normalised float32 NCHW batch (already padded to the bundle's pad multiple) and
returns probabilities (sigmoid applied): ``classify -> (N, K)``, ``segment -> (N, K, H, W)``.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np


class Engine(Protocol):
    name: str
    has_classifier: bool
    has_segmenter: bool

    def classify(self, batch: np.ndarray) -> np.ndarray: ...

    def segment(self, batch: np.ndarray) -> np.ndarray: ...
