"""Streaming writers for ``steelscan predict``: submission CSV, JSON lines, errors and overlays
(and the COCO results of :mod:`steelscan.inference.coco_results`).

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
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import IO, Any

import cv2
import numpy as np

from steelscan.data.records import AnnotatedImage
from steelscan.imageio import encode_png, to_channels
from steelscan.inference.journal import fsync_dir
from steelscan.inference.result import InspectionResult
from steelscan.reports.overlay import (
    box_style,
    class_color,
    class_colors,
    draw_boxes,
    draw_detections,
    overlay,
)

SUBMISSION = "submission.csv"
PREDICTIONS = "predictions.jsonl"
ERRORS = "errors.csv"
OVERLAY_DIR = "overlays"
COCO_RESULTS = "coco_results.json"
COCO_IMAGES = "coco_images.json"
# ``--format`` names and the files each writes; errors.csv is always written (failures are
# reported there, whatever else was asked for).
OUTPUTS: dict[str, tuple[str, ...]] = {
    "csv": (SUBMISSION,),
    "jsonl": (PREDICTIONS,),
    "coco": (COCO_RESULTS, COCO_IMAGES),
}
DEFAULT_FORMATS = ("csv", "jsonl")
# Record keys the journal keeps for a writer but predictions.jsonl leaves out (so the JSON
# lines are the same whichever formats were asked for).
COMPONENT_SCORES = "component_scores"  # per class, per component (coco_results)
JOURNAL_ONLY = (COMPONENT_SCORES,)


def parse_formats(text: str) -> tuple[str, ...]:
    """``"csv,jsonl,coco"`` as format names in that order; ValueError names an unknown one."""
    names = [t.strip().lower() for t in text.split(",") if t.strip()]
    unknown = [n for n in names if n not in OUTPUTS]
    if unknown or not names:
        raise ValueError(
            f"--format {text!r}: choose a comma-separated list of {', '.join(OUTPUTS)}"
        )
    return tuple(dict.fromkeys(names))


def output_files(formats: tuple[str, ...]) -> tuple[str, ...]:
    """The final files a run with ``formats`` writes into ``--out`` (errors.csv always)."""
    return tuple(name for f in formats for name in OUTPUTS[f]) + (ERRORS,)


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
    finals = output_files(tuple(OUTPUTS))
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


def _fit_scale(text: str, width: int, scale: float, floor: float = 0.3) -> float:
    """The largest font scale up to ``scale`` at which ``text`` fits ``width`` (a 200 px NEU
    image's caption is shrunk instead of cut off), never below ``floor``."""
    tw = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0]
    return scale if tw + 12 <= width else max(floor, scale * (width - 12) / max(tw, 1))


def _caption(width: int, text: str, height: int = 22) -> np.ndarray:
    bar = np.full((height, width, 3), 30, np.uint8)
    scale = _fit_scale(text, width, 0.5)
    cv2.putText(
        bar, text, (6, height - 7), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA
    )
    return bar


def _legend(width: int, names: list[str], extra: list[str]) -> np.ndarray:
    """One swatch and label per class, wrapped onto more rows when the image is too narrow."""
    rows: list[list[tuple[int, int, str]]] = [[]]
    x = 6
    for k, (name, note) in enumerate(zip(names, extra, strict=True)):
        label = f"{name} {note}".strip()
        step = 30 + 9 * len(label)
        if rows[-1] and x + step - 11 > width:
            rows.append([])
            x = 6
        rows[-1].append((k, x, label))
        x += step
    bar = np.full((26 * len(rows), width, 3), 255, np.uint8)
    for r, row in enumerate(rows):
        y = 26 * r
        for k, x, label in row:
            cv2.rectangle(bar, (x, y + 6), (x + 14, y + 20), class_color(k), -1)
            cv2.putText(
                bar, label, (x + 19, y + 18), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1,
                cv2.LINE_AA,
            )  # fmt: skip
    return bar


def _truth_panel(rgb: np.ndarray, truth: AnnotatedImage, names: list[str]) -> np.ndarray | None:
    """The ground truth: its masks tinted (when its classes are the model's, in its order) and
    its boxes framed in the colour of the model's class of that name; None when nothing lines
    up (:func:`truth_class_note` tells the user)."""
    painted = list(truth.classes) == list(names)
    panel = _paint(rgb, truth.masks(boxes=False)) if painted else rgb
    index = {n: i for i, n in enumerate(names)}
    boxes = [
        (index[truth.classes[b.class_index]], b.x1, b.y1, b.x2, b.y2)
        for b in truth.boxes
        if b.class_index < len(truth.classes) and truth.classes[b.class_index] in index
    ]
    if not painted and not boxes:
        return None
    return draw_boxes(panel, boxes, thickness=box_style(*rgb.shape[:2])[0]) if boxes else panel


def truth_class_note(truths: list[AnnotatedImage], names: list[str]) -> str | None:
    """What an overlay leaves out of ground truth whose classes are not the model's (masks are
    painted only for the model's classes in its order, boxes by class name); None if nothing."""
    if not truths:
        return None
    theirs = list(dict.fromkeys(c for t in truths for c in t.classes))
    if theirs == list(names):
        return None
    shared = [c for c in theirs if c in names]
    boxed = shared and any(t.boxes for t in truths)
    what = f"only its boxes of {', '.join(shared)}" if boxed else "no ground truth"
    return (
        f"the inputs' ground truth classes ({', '.join(theirs)}) are not the model's "
        f"({', '.join(names)}): overlays show {what}"
    )


def _class_notes(result: InspectionResult) -> list[str]:
    """Each present class's area and, with a detector, how many boxes it kept."""
    counts = [0] * len(result.classes)
    for d in result.detections or []:
        if d.class_index < len(counts):
            counts[d.class_index] += 1
    notes = []
    for c, n in zip(result.classes, counts, strict=True):
        parts = [f"{c.area} px"] if c.present and (c.area or result.detections is None) else []
        if n:
            parts.append(f"{n} box" + ("es" if n > 1 else ""))
        notes.append(f"({', '.join(parts)})" if parts else "")
    return notes


def render_overlay(
    image: np.ndarray, result: InspectionResult, truth: AnnotatedImage | None = None
) -> np.ndarray:
    """The prediction painted on the image (masks tinted, the detector's boxes framed with their
    scores), a ground-truth panel when labelled, and a legend."""
    rgb = to_channels(image, 3)
    h, w = rgb.shape[:2]
    pred = np.stack([c.mask for c in result.classes]) if result.classes else np.zeros((0, h, w))
    names = [c.name for c in result.classes]
    title = f"{result.image_id}  prediction  P(defect)={result.defect_probability:.2f}"
    panel = _paint(rgb, pred)
    if result.detections:
        panel = draw_detections(panel, result.detections, names)
    panels = [_caption(w, title), panel]
    if truth is not None and truth.shape == (h, w):
        gt = _truth_panel(rgb, truth, names)
        if gt is not None:
            panels += [_caption(w, "ground truth"), gt]
    panels.append(_legend(w, names, _class_notes(result)))
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
    """The tables of ``formats`` (submission.csv, predictions.jsonl, the COCO files; errors.csv
    always) from records, each renamed into place (after an fsync) only by :meth:`commit`. Every
    row is derived from the record alone, so tables assembled from a journal are byte for byte
    those written while inspecting. ``coco_ids`` (a :class:`~steelscan.inference.coco_results.
    CocoIds`) is needed with ``coco``."""

    def __init__(
        self, out: Path, *, formats: tuple[str, ...] = DEFAULT_FORMATS, coco_ids: Any = None
    ) -> None:
        self.out = Path(out)
        self._files: list[Any] = []
        self._sub: Any = None
        self._jsonl: IO[str] | None = None
        self._coco: Any = None
        if "csv" in formats:
            self._files.append(AtomicText(self.out / SUBMISSION))
            self._sub = csv.writer(self._files[-1].fh, lineterminator="\n")
            self._sub.writerow(["ImageId", "EncodedPixels", "ClassId"])
        if "jsonl" in formats:
            self._files.append(AtomicText(self.out / PREDICTIONS))
            self._jsonl = self._files[-1].fh
        self._files.append(AtomicText(self.out / ERRORS))
        self._err = csv.writer(self._files[-1].fh, lineterminator="\n")
        self._err.writerow(["ImageId", "path", "error"])
        if "coco" in formats:
            from steelscan.inference.coco_results import CocoWriter

            if coco_ids is None:
                self.discard()
                raise ValueError("the coco format needs the run's COCO ids (coco_ids)")
            self._coco = CocoWriter(self.out, coco_ids)
            self._files.append(self._coco)

    def add(self, record: dict[str, Any]) -> None:
        """One image: its submission rows (or its errors.csv row), JSON line and COCO objects."""
        if record.get("error") is not None:
            self._err.writerow([record["image_id"], record.get("path") or "", record["error"]])
        elif self._sub is not None:
            for c in record["classes"]:
                self._sub.writerow([record["image_id"], c["rle"], c["class_id"]])
        if self._jsonl is not None:
            line = {k: v for k, v in record.items() if k not in JOURNAL_ONLY}
            self._jsonl.write(json.dumps(line) + "\n")
        if self._coco is not None:
            self._coco.add(record)

    def commit(self) -> None:
        for f in self._files:
            f.commit()
        fsync_dir(self.out)

    def discard(self) -> None:
        for f in self._files:
            f.discard()


def overlay_name(image_id: str) -> str:
    """The overlay file of an image id: its folders joined by ``__`` and its extension dropped.

    ``crazing_1.jpg`` -> ``crazing_1.png``; ``MT_Crack/Imgs/a.jpg`` -> ``MT_Crack__Imgs__a.png``.
    Image ids are unique in a run, so two images with one stem in two class folders (mask-folder
    datasets) get two overlays instead of one overwriting the other.
    """
    parts = [
        p
        for p in PurePosixPath(str(image_id).replace("\\", "/")).parts
        if p not in ("/", "..", ".")
    ]
    if not parts:
        return "image.png"
    parts[-1] = PurePosixPath(parts[-1]).stem or parts[-1]
    return "__".join(parts) + ".png"


def write_overlay(
    out: Path,
    result: InspectionResult,
    image: np.ndarray,
    truth: AnnotatedImage | None = None,
) -> Path:
    """Render and write ``out/overlays/<name>.png`` (:func:`overlay_name`) atomically."""
    path = Path(out) / OVERLAY_DIR / overlay_name(result.image_id)
    write_bytes_atomic(path, encode_png(render_overlay(image, result, truth)))
    return path


# -- the combined writer ----------------------------------------------------------------------
class PredictionWriter:
    """Writes every output of one predict run into ``out``; use as a context manager.

    ``submission.csv``: Kaggle ``ImageId,EncodedPixels,ClassId``, one row per image and class
    (empty EncodedPixels when absent). ``predictions.jsonl``: one object per image
    (``InspectionResult.to_dict()`` plus ``path`` and ``error``, null unless it failed).
    ``errors.csv``: ``ImageId,path,error`` for images that could not be inspected.
    ``overlays/<name>.png`` (:func:`overlay_name`) when ``overlays``. On an exception nothing
    is renamed into place.
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
