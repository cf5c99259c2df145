"""The one record type for an inspection result, shared by CLI writers and the service."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from steelscan import rle as rle_codec


@dataclass
class ClassResult:
    """One class's verdict on one image."""

    index: int  # 0-based
    class_id: int  # id in files (Severstal ClassId)
    name: str
    probability: float  # presence probability (classifier, or max mask probability without one)
    present: bool  # after gating, thresholds and minimum areas
    mask: np.ndarray  # (H, W) uint8, all zeros when not present
    area: int
    boxes: list[tuple[int, int, int, int]] = field(default_factory=list)  # x1, y1, x2, y2 (excl.)
    _rle: str | None = field(default=None, repr=False, compare=False)

    def rle(self) -> str:
        """The Kaggle RLE of the mask, encoded once (the CSV and the JSONL both need it)."""
        if self._rle is None:
            self._rle = rle_codec.encode(self.mask) if self.present else ""
        return self._rle

    def to_dict(self, *, include_rle: bool = True) -> dict[str, Any]:
        d: dict[str, Any] = {
            "class_id": self.class_id,
            "name": self.name,
            "present": self.present,
            "probability": round(float(self.probability), 6),
            "area": int(self.area),
            "boxes": [list(map(int, b)) for b in self.boxes],
        }
        if include_rle:
            d["rle"] = self.rle()
        return d


@dataclass
class InspectionResult:
    """Everything steelscan says about one image."""

    image_id: str
    height: int
    width: int
    defect_probability: float
    classes: list[ClassResult]
    timings_ms: dict[str, float] = field(default_factory=dict)
    # Set (with no classes) when this image could not be read or inspected, so one bad file in a
    # stream yields a result naming the problem instead of ending the stream.
    error: str | None = None
    # The detector's boxes (steelscan.inference.boxes.DetectedBox), best first; None when the
    # model has no detector.
    detections: list[Any] | None = None

    @property
    def has_defect(self) -> bool:
        return any(c.present for c in self.classes)

    def to_dict(self, *, include_rle: bool = True) -> dict[str, Any]:
        d: dict[str, Any] = {
            "image_id": self.image_id,
            "height": self.height,
            "width": self.width,
            "has_defect": self.has_defect,
            "defect_probability": round(float(self.defect_probability), 6),
            "classes": [c.to_dict(include_rle=include_rle) for c in self.classes],
            "timings_ms": {k: round(v, 3) for k, v in self.timings_ms.items()},
        }
        if self.detections is not None:
            d["detections"] = [
                {**b.to_dict(), **self._class_of(b.class_index)} for b in self.detections
            ]
        if self.error is not None:
            d["error"] = self.error
        return d

    def _class_of(self, index: int) -> dict[str, Any]:
        if index < len(self.classes):
            c = self.classes[index]
            return {"class_id": c.class_id, "name": c.name}
        return {}
