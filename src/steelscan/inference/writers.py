"""Streaming writers for ``steelscan predict``: submission CSV, JSON lines, errors and overlays.

Each table is written to a hidden temporary name beside its destination and renamed into place
only when the run completes, so an interrupted run never leaves a half-written file that looks
finished. Overlays are one PNG per image, each renamed into place once fully written.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import cv2
import numpy as np

from steelscan.data.records import AnnotatedImage
from steelscan.imageio import encode_png, to_channels
from steelscan.inference.result import InspectionResult
from steelscan.reports.overlay import class_color, class_colors, overlay

SUBMISSION = "submission.csv"
PREDICTIONS = "predictions.jsonl"
ERRORS = "errors.csv"
OVERLAY_DIR = "overlays"


class AtomicText:
    """A text file written under a temporary name and renamed into place by :meth:`commit`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        self.fh: IO[str] = open(self.tmp, "w", newline="", encoding="utf-8")  # noqa: SIM115

    def commit(self) -> None:
        self.fh.close()
        os.replace(self.tmp, self.path)

    def discard(self) -> None:
        self.fh.close()
        self.tmp.unlink(missing_ok=True)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# -- overlays ---------------------------------------------------------------------------------
def _paint(image: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Tint and outline each class's mask in its class colour (the project-wide palette)."""
    return overlay(image, masks, class_colors(len(masks)))


def _caption(width: int, text: str, height: int = 22) -> np.ndarray:
    bar = np.full((height, width, 3), 30, np.uint8)
    cv2.putText(
        bar, text, (6, height - 7), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA
    )
    return bar


def _legend(width: int, names: list[str], extra: list[str]) -> np.ndarray:
    bar = np.full((26, width, 3), 255, np.uint8)
    x = 6
    for k, (name, note) in enumerate(zip(names, extra, strict=True)):
        cv2.rectangle(bar, (x, 6), (x + 14, 20), class_color(k), -1)
        label = f"{name} {note}".strip()
        cv2.putText(
            bar, label, (x + 19, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA
        )
        x += 30 + 9 * len(label)
    return bar


def render_overlay(
    image: np.ndarray, result: InspectionResult, truth: AnnotatedImage | None = None
) -> np.ndarray:
    """The prediction painted on the image (+ a ground-truth panel when labelled) and a legend."""
    rgb = to_channels(image, 3)
    h, w = rgb.shape[:2]
    pred = np.stack([c.mask for c in result.classes]) if result.classes else np.zeros((0, h, w))
    title = f"{result.image_id}  prediction  P(defect)={result.defect_probability:.2f}"
    panels = [_caption(w, title), _paint(rgb, pred)]
    if truth is not None and truth.shape == (h, w):
        gt = truth.masks()
        if len(gt) == len(result.classes):
            panels += [_caption(w, "ground truth"), _paint(rgb, gt)]
    notes = [f"({c.area} px)" if c.present else "" for c in result.classes]
    panels.append(_legend(w, [c.name for c in result.classes], notes))
    return np.concatenate(panels, axis=0)


# -- the combined writer ----------------------------------------------------------------------
class PredictionWriter:
    """Writes every output of one predict run into ``out``; use as a context manager.

    ``submission.csv``: Kaggle ``ImageId,EncodedPixels,ClassId``, one row per image and class
    (empty EncodedPixels when absent). ``predictions.jsonl``: one object per image
    (``InspectionResult.to_dict()`` plus ``path`` and ``error``, null unless it failed).
    ``errors.csv``: ``ImageId,path,error`` for images that could not be inspected.
    ``overlays/<stem>.png`` when ``overlays``. On an exception nothing is renamed into place.
    """

    def __init__(self, out: Path, *, overlays: bool = False) -> None:
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.overlays = overlays
        if overlays:
            (self.out / OVERLAY_DIR).mkdir(exist_ok=True)
        self._files = [
            AtomicText(self.out / SUBMISSION),
            AtomicText(self.out / PREDICTIONS),
            AtomicText(self.out / ERRORS),
        ]
        self._sub = csv.writer(self._files[0].fh, lineterminator="\n")
        self._sub.writerow(["ImageId", "EncodedPixels", "ClassId"])
        self._jsonl = self._files[1].fh
        self._err = csv.writer(self._files[2].fh, lineterminator="\n")
        self._err.writerow(["ImageId", "path", "error"])
        self.n_written = 0
        self.n_errors = 0

    def write(
        self,
        result: InspectionResult,
        *,
        path: str | Path | None = None,
        image: np.ndarray | None = None,
        truth: AnnotatedImage | None = None,
    ) -> None:
        if result.error is not None:  # a streaming producer reports failures as results
            self.write_error(result.image_id, path, result.error)
            return
        for c in result.classes:
            self._sub.writerow([result.image_id, c.rle(), c.class_id])
        record: dict[str, Any] = result.to_dict()
        record["path"] = str(path) if path is not None else None
        record["error"] = None
        self._jsonl.write(json.dumps(record) + "\n")
        if self.overlays and image is not None:
            png = encode_png(render_overlay(image, result, truth))
            write_bytes_atomic(self.out / OVERLAY_DIR / f"{Path(result.image_id).stem}.png", png)
        self.n_written += 1

    def write_error(self, image_id: str, path: str | Path | None, message: str) -> None:
        """Record an image that could not be inspected (it gets no submission rows)."""
        p = str(path) if path is not None else ""
        self._err.writerow([image_id, p, message])
        self._jsonl.write(
            json.dumps({"image_id": image_id, "path": p or None, "error": message}) + "\n"
        )
        self.n_errors += 1

    def close(self) -> None:
        for f in self._files:
            f.commit()

    def abort(self) -> None:
        for f in self._files:
            f.discard()

    def __enter__(self) -> PredictionWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
