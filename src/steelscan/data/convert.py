"""``convert_dataset``: any layout steelscan reads into Severstal, COCO, YOLO or images/ + masks/.

Lossless wherever the target can hold what the source has:

* masks -> ``coco`` (compressed RLE per image and class), ``masks`` (0/255 PNG per class) and
  ``severstal`` (Kaggle RLE at each image's own size, ``classes.txt`` naming the ClassIds,
  ``images.csv`` with every image's ``has_defect``) are exact;
* boxes -> ``coco`` (bbox-only annotations) and ``yolo`` are exact (integer pixel corners);
* masks -> ``yolo`` is refused unless ``boxes=True`` (``--boxes``), which writes each mask
  component's bounding box (8-connected) and says so; ``boxes=True`` does the same for ``coco``;
* boxes -> ``severstal`` / ``masks`` is refused unless ``fill_boxes=True`` (``--fill-boxes``):
  those layouts hold pixels, and filled boxes of one class that overlap merge into one mask.

Image-level classes that no mask or box carries (a Magnetic tile ``MT_Uneven`` image with an
empty mask) go to ``labels.csv``, which every reader reads back. Images are hard-linked where the
file system allows, else copied, beside the labels. Everything is written into a temporary
folder beside ``out`` and renamed into place at the end, so a failed conversion leaves nothing.
"""

from __future__ import annotations

import csv
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath

from steelscan.data import load_dataset
from steelscan.data._labels import uncovered_labels, write_class_names, write_labels_csv
from steelscan.data._masks import component_boxes
from steelscan.data.records import AnnotatedImage, DataError, DataProblem, Dataset

TARGETS = ("severstal", "coco", "yolo", "masks")
IMAGE_DIRS = {"severstal": "train_images", "coco": "images", "yolo": "images", "masks": "images"}
HOLDS_MASKS = {"severstal": True, "coco": True, "yolo": False, "masks": True}
HOLDS_BOXES = {"severstal": False, "coco": True, "yolo": True, "masks": False}


@dataclass
class ConvertResult:
    """What a conversion wrote, and what it had to change (the ``notes``)."""

    out: Path
    layout: str
    images: int
    annotations: int
    notes: list[str] = field(default_factory=list)


def _refuse(ds: Dataset, message: str) -> DataError:
    return DataError([DataProblem(str(ds.root), message)])


def _to_boxes(ds: Dataset) -> tuple[Dataset, int]:
    """Masks replaced by their components' boxes (a box dataset)."""
    records, n = [], 0
    for r in ds.records:
        boxes = list(r.boxes)
        for k, code in sorted(r.rles.items()):
            if code:
                boxes += component_boxes(r.mask(k, boxes=False), k)
        n += len(boxes) - len(r.boxes)
        labels = frozenset(r.labels or ()) | {b.class_index for b in boxes}
        records.append(replace(r, rles={}, boxes=tuple(boxes), labels=labels))
    return replace(ds, records=records, has_masks=False), n


def _to_masks(ds: Dataset) -> Dataset:
    """Boxes drawn as filled masks of their class."""
    from steelscan import rle as rle_codec

    records = []
    for r in ds.records:
        rles = dict(r.rles)
        for k in sorted({b.class_index for b in r.boxes}):
            rles[k] = rle_codec.encode(r.mask(k, boxes=True))
        records.append(replace(r, rles=dict(sorted(rles.items())), boxes=()))
    return replace(ds, records=records, has_masks=True)


def fit_target(
    ds: Dataset, to: str, *, boxes: bool = False, fill_boxes: bool = False
) -> tuple[Dataset, list[str]]:
    """The dataset as the target can hold it, plus notes; :class:`DataError` saying what the
    target cannot hold when it would otherwise lose something silently."""
    notes: list[str] = []
    n_masks = sum(1 for r in ds.records for v in r.rles.values() if v)
    n_boxes = sum(len(r.boxes) for r in ds.records)
    if n_masks and (boxes or not HOLDS_MASKS[to]):
        if not boxes:
            raise _refuse(
                ds,
                f"the {to} layout holds boxes, not pixel masks, and this dataset has {n_masks} "
                "masks; "
                "pass --boxes to write each mask component's bounding box instead (the masks' "
                "shapes are lost)",
            )
        ds, n = _to_boxes(ds)
        notes.append(f"wrote {n} boxes, one per connected component of {n_masks} masks")
        n_boxes, n_masks = n_boxes + n, 0
    if n_boxes and not HOLDS_BOXES[to]:
        if not fill_boxes:
            raise _refuse(
                ds,
                f"the {to} layout holds pixel masks, not boxes, and this dataset has {n_boxes} "
                "boxes; "
                "pass --fill-boxes to write each box as a filled mask of its class (boxes of one "
                "class that overlap merge)",
            )
        ds = _to_masks(ds)
        notes.append(f"drew {n_boxes} boxes as filled masks")
    return ds, notes


def _safe_name(image_id: str, path: Path | None, flat: bool) -> str:
    """The file name an image gets in the target: its id (with its real suffix), never outside
    the target folder; ``flat`` layouts (Severstal) join sub-folders with ``__``."""
    parts = [
        p for p in PurePosixPath(image_id.replace("\\", "/")).parts if p not in ("..", ".", "/")
    ]
    name = PurePosixPath(*parts) if parts else PurePosixPath("image")
    if path is not None and name.suffix.lower() != path.suffix.lower():
        name = (
            name.with_name(name.name + path.suffix)
            if not name.suffix
            else name.with_suffix(path.suffix)
        )
    return "__".join(name.parts) if flat else name.as_posix()


def target_names(ds: Dataset, to: str) -> dict[str, str]:
    """image id -> file name under the target's image folder; two ids on one name is an error."""
    names: dict[str, str] = {}
    taken: dict[str, str] = {}
    for r in ds.records:
        if r.path is None:
            raise _refuse(ds, f"{r.image_id}: no image file to copy")
        name = _safe_name(r.image_id, r.path, flat=to == "severstal")
        key = name.casefold()
        if key in taken:
            raise _refuse(ds, f"{r.image_id} and {taken[key]} would both be written as {name}")
        taken[key] = r.image_id
        names[r.image_id] = name
    return names


def _place_images(ds: Dataset, folder: Path, names: dict[str, str]) -> None:
    for r in ds.records:
        dst = folder / names[r.image_id]
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(r.path, dst)  # type: ignore[arg-type]
        except OSError:
            shutil.copy2(r.path, dst)  # type: ignore[arg-type]


def write_severstal(ds: Dataset, out: Path, names: dict[str, str]) -> int:
    """``train.csv`` (ClassId = class position + 1), ``images.csv``, ``classes.txt``."""
    n = 0
    with open(out / "train.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["ImageId", "ClassId", "EncodedPixels"])
        for r in sorted(ds.records, key=lambda r: names[r.image_id]):
            for k, code in sorted(r.rles.items()):
                if code:
                    w.writerow([names[r.image_id], k + 1, code])
                    n += 1
    with open(out / "images.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["ImageId", "has_defect"])
        w.writerows([names[r.image_id], int(r.defective)] for r in ds.records)
    write_class_names(out / "classes.txt", ds.classes)
    return n


def _writer(to: str) -> Callable[[Dataset, Path, dict[str, str]], int]:
    if to == "severstal":
        return write_severstal
    if to == "coco":
        from steelscan.data.coco import write_coco

        return write_coco
    if to == "yolo":
        from steelscan.data.yolo import write_yolo

        return write_yolo
    from steelscan.data.mask_folders import write_masks

    return write_masks


def _label_rows(records: list[AnnotatedImage], names: dict[str, str]) -> list[tuple[str, str]]:
    return [(names[r.image_id], c) for r in records for c in uncovered_labels(r)]


def _check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(
            [DataProblem(str(out), "exists and is not an empty folder; choose a new --out folder")]
        )


def convert_dataset(
    src: str | Path | Dataset,
    to: str,
    out: str | Path,
    *,
    layout: str | None = None,
    boxes: bool = False,
    fill_boxes: bool = False,
) -> ConvertResult:
    """Convert ``src`` (any layout, detected or ``layout``) into the ``to`` layout at ``out``.

    The source must load cleanly (its problems are raised as :class:`DataError`; run
    ``steelscan data check`` to see them), and the converted folder loads back with
    :func:`steelscan.data.load_dataset`.
    """
    if to not in TARGETS:
        raise DataError(
            [DataProblem("", f"unknown target {to!r}; choose one of {', '.join(TARGETS)}")]
        )
    ds = load_dataset(src, layout=layout)
    ds, notes = fit_target(ds, to, boxes=boxes, fill_boxes=fill_boxes)
    out = Path(out)
    _check_out(out)
    names = target_names(ds, to)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        _place_images(ds, tmp / IMAGE_DIRS[to], names)
        try:
            n = _writer(to)(ds, tmp, names)
        except ValueError as exc:
            raise _refuse(ds, str(exc)) from exc
        rows = _label_rows(ds.records, names)
        write_labels_csv(tmp, rows)
        if rows:
            notes.append(f"{len(rows)} image-level label(s) without a mask or box: in labels.csv")
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ConvertResult(out, to, len(ds.records), n, notes)
