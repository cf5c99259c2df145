"""Streaming writers for ``steelscan predict``: submission CSV, JSON lines, errors and overlays.

Each table is written to a hidden temporary name beside its destination, fsynced, and renamed
into place only when the run completes, so an interrupted run never leaves a half-written file
that looks finished. Overlays are one PNG per image, each renamed into place once fully written.
Every table row comes from one JSON record per image (:func:`result_record`,
:func:`error_record`), which is also what the resumable ``predict`` journals.
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
from steelscan.inference.journal import fsync_dir
from steelscan.inference.result import InspectionResult
from steelscan.reports.overlay import class_color, class_colors, overlay

SUBMISSION = "submission.csv"
PREDICTIONS = "predictions.jsonl"
ERRORS = "errors.csv"
OVERLAY_DIR = "overlays"


class AtomicText:
    """A text file written under a temporary name and renamed into place by :meth:`commit`.

    The data is fsynced before the rename, so after a crash the final name holds either the old
    file or the whole new one, never a prefix."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        self.fh: IO[str] = open(self.tmp, "w", newline="", encoding="utf-8")  # noqa: SIM115

    def commit(self) -> None:
        self.fh.flush()
        os.fsync(self.fh.fileno())
        self.fh.close()
        os.replace(self.tmp, self.path)

    def discard(self) -> None:
        self.fh.close()
        self.tmp.unlink(missing_ok=True)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``path`` under a temporary name and rename it: never visible half-written."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def remove_stale_temps(out: Path) -> None:
    """Remove the temporary files a killed writer left in ``out`` and its overlays folder.

    Only this module's names (``.<final name>.<pid>.tmp``) are touched, and only while the caller
    holds the folder (the journal's lock), so no live writer's file goes."""
    finals = (SUBMISSION, PREDICTIONS, ERRORS)
    for p in Path(out).glob(".*.tmp"):
        if p.name[1:].startswith(tuple(f"{name}." for name in finals)):
            p.unlink(missing_ok=True)
    overlays = Path(out) / OVERLAY_DIR
    if overlays.is_dir():
        with os.scandir(overlays) as entries:
            for e in entries:
                if e.name.startswith(".") and e.name.endswith(".tmp") and e.is_file():
                    Path(e.path).unlink(missing_ok=True)


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


# -- records and tables ------------------------------------------------------------------------
def result_record(result: InspectionResult, path: str | Path | None = None) -> dict[str, Any]:
    """The ``predictions.jsonl`` object of an inspected image (what the journal keeps, too)."""
    if result.error is not None:  # a streaming producer reports failures as results
        return error_record(result.image_id, path, result.error)
    record: dict[str, Any] = result.to_dict()
    record["path"] = str(path) if path is not None else None
    record["error"] = None
    return record


def error_record(image_id: str, path: str | Path | None, message: str) -> dict[str, Any]:
    """The ``predictions.jsonl`` object of an image that could not be inspected."""
    p = str(path) if path is not None else ""
    return {"image_id": image_id, "path": p or None, "error": message}


class TableWriter:
    """submission.csv, predictions.jsonl and errors.csv from records, each renamed into place
    (after an fsync) only by :meth:`commit`. Every table row is derived from the record alone, so
    tables assembled from a journal are byte for byte those written while inspecting."""

    def __init__(self, out: Path) -> None:
        self.out = Path(out)
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

    def add(self, record: dict[str, Any]) -> None:
        """One image: its submission rows (or its errors.csv row) and its JSON line."""
        if record.get("error") is not None:
            self._err.writerow([record["image_id"], record.get("path") or "", record["error"]])
        else:
            for c in record["classes"]:
                self._sub.writerow([record["image_id"], c["rle"], c["class_id"]])
        self._jsonl.write(json.dumps(record) + "\n")

    def commit(self) -> None:
        for f in self._files:
            f.commit()
        fsync_dir(self.out)

    def discard(self) -> None:
        for f in self._files:
            f.discard()


def write_overlay(
    out: Path,
    result: InspectionResult,
    image: np.ndarray,
    truth: AnnotatedImage | None = None,
) -> Path:
    """Render and write ``out/overlays/<stem>.png`` atomically; returns its path."""
    path = Path(out) / OVERLAY_DIR / f"{Path(result.image_id).stem}.png"
    write_bytes_atomic(path, encode_png(render_overlay(image, result, truth)))
    return path


# -- the combined writer ----------------------------------------------------------------------
class PredictionWriter:
    """Writes every output of one predict run into ``out``; use as a context manager.

    ``submission.csv``: Kaggle ``ImageId,EncodedPixels,ClassId``, one row per image and class
    (empty EncodedPixels when absent). ``predictions.jsonl``: one object per image
    (``InspectionResult.to_dict()`` plus ``path`` and ``error``, null unless it failed).
    ``errors.csv``: ``ImageId,path,error`` for images that could not be inspected.
    ``overlays/<stem>.png`` when ``overlays``. On an exception nothing is renamed into place.
    (``steelscan predict`` journals the records instead and assembles the same tables from the
    journal at the end; see :mod:`steelscan.inference.journal`.)
    """

    def __init__(self, out: Path, *, overlays: bool = False) -> None:
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.overlays = overlays
        if overlays:
            (self.out / OVERLAY_DIR).mkdir(exist_ok=True)
        self._tables = TableWriter(self.out)
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
        self._tables.add(result_record(result, path))
        if self.overlays and image is not None:
            write_overlay(self.out, result, image, truth)
        self.n_written += 1

    def write_error(self, image_id: str, path: str | Path | None, message: str) -> None:
        """Record an image that could not be inspected (it gets no submission rows)."""
        self._tables.add(error_record(image_id, path, message))
        self.n_errors += 1

    def close(self) -> None:
        self._tables.commit()

    def abort(self) -> None:
        self._tables.discard()

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
