"""Datasets: one loader for every supported layout, returning :class:`Dataset` records.

Layouts, detected from the folder in this order (the first that matches wins; ``layout=``, or
``--layout`` on the CLI, names one outright):

==================  ==========================================================================
``severstal``       ``train.csv`` beside ``train_images/`` or ``images/`` (Kaggle Severstal);
                    an optional ``classes.txt`` names the ``ClassId`` values 1..K
``voc``             ``annotations/*.xml`` beside ``images/`` (Pascal VOC boxes, NEU-DET)
``coco``            a COCO instances JSON (the folder's own, its ``annotations/``, or SRC itself)
``yolo``            ``images/`` + ``labels/*.txt`` with ``data.yaml`` or ``classes.txt``
``masks``           ``images/`` + ``masks/`` (per-class folders or index masks)
``class-folders``   one folder per class, each image beside its mask (Magnetic tile)
==================  ==========================================================================

Every reader yields the same :class:`AnnotatedImage` records (masks as RLE at each image's own
size, or boxes for box-only layouts) and takes images of any size and any mix of sizes. A
``labels.csv`` (``image,label``) beside any of them adds image-level classes. The readers import
lazily so that ``import steelscan.data.records`` stays cheap for the CLI.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from steelscan.data.records import AnnotatedImage, Box, DataError, DataProblem, Dataset

# name -> (module, detector, scanner), in detection order
_LAYOUTS: dict[str, tuple[str, str, str]] = {
    "severstal": ("steelscan.data.severstal", "is_severstal", "scan_severstal"),
    "voc": ("steelscan.data.voc", "is_voc", "scan_voc"),
    "coco": ("steelscan.data.coco", "is_coco", "scan_coco"),
    "yolo": ("steelscan.data.yolo", "is_yolo", "scan_yolo"),
    "masks": ("steelscan.data.mask_folders", "is_masks", "scan_masks"),
    "class-folders": ("steelscan.data.mask_folders", "is_class_folders", "scan_class_folders"),
}
LAYOUTS: tuple[str, ...] = tuple(_LAYOUTS)
_EXPECTED = {
    "severstal": "train.csv with train_images/ or images/",
    "voc": "annotations/*.xml with images/",
    "coco": "a COCO JSON (annotations.json, instances_*.json; here or in annotations/)",
    "yolo": "images/ + labels/ with data.yaml or classes.txt",
    "masks": "images/ + masks/",
    "class-folders": "one folder per class, each image beside its mask PNG",
}

EXPECTED_LAYOUTS = (
    "a Severstal layout (train.csv with train_images/ or images/), a Pascal VOC layout "
    "(annotations/*.xml with images/), a COCO JSON (annotations.json, instances_*.json), a "
    "YOLO layout (images/ + labels/ with data.yaml), an images/ + masks/ layout, or one folder "
    "per class with each image beside its mask PNG"
)


def _function(layout: str, which: int) -> Callable:
    module, *names = _LAYOUTS[layout]
    return getattr(importlib.import_module(module), names[which])


def _named_layout(root: Path, layout: str) -> str:
    """``layout`` when ``root`` is such a dataset; else DataError saying what it expects."""
    if layout not in _LAYOUTS:
        raise DataError(
            [DataProblem("", f"unknown layout {layout!r}; choose one of: {', '.join(LAYOUTS)}")]
        )
    if root.is_file() and layout != "coco":
        raise DataError([DataProblem(str(root), f"is a file; a {layout} dataset is a folder")])
    if not _function(layout, 0)(root):
        raise DataError(
            [DataProblem(str(root), f"not a {layout} dataset: expected {_EXPECTED[layout]}")]
        )
    return layout


def detect_layout(path: str | Path, layout: str | None = None) -> str:
    """The name of the first layout in :data:`LAYOUTS` the path matches (or ``layout``, once
    checked to match); raise :class:`DataError` saying what was expected."""
    root = Path(path)
    if not root.exists():
        raise DataError([DataProblem(str(root), "no such file or folder")])
    if layout is not None:
        return _named_layout(root, layout)
    if root.is_file():
        if root.suffix.lower() == ".json":
            return "coco"
        raise DataError(
            [
                DataProblem(
                    str(root),
                    f"is a file (and not a COCO .json); expected a folder holding "
                    f"{EXPECTED_LAYOUTS}",
                )
            ]
        )
    for name in LAYOUTS:
        if _function(name, 0)(root):
            return name
    raise DataError(
        [DataProblem(str(root), f"not a recognised dataset folder: expected {EXPECTED_LAYOUTS}")]
    )


def _scan_severstal(root: Path, validate: bool) -> tuple[Dataset, list[DataProblem]]:
    """The Severstal reader, plus the two optional files other data in this layout carries:
    ``classes.txt`` (names of ClassId 1..K; such a folder may mix image sizes) and
    ``labels.csv`` (image-level classes)."""
    from steelscan.data._labels import apply_labels, read_class_map, read_labels_csv
    from steelscan.data.severstal import scan_severstal

    names_file = root / "classes.txt"
    if not names_file.is_file():
        ds, problems = scan_severstal(root, validate=validate)
    else:
        names, problems = read_class_map(names_file)
        if problems:
            return Dataset(root, "severstal", (), (), []), problems
        ds, problems = scan_severstal(
            root, validate=validate, class_ids=tuple(names), check_sizes=False
        )
        classes = tuple(names.values())
        ds = replace(ds, classes=classes, records=[replace(r, classes=classes) for r in ds])
    labels, probs = read_labels_csv(root, ds.classes, {r.image_id for r in ds})
    apply_labels(ds.records, labels)
    return ds, problems + probs


def scan_dataset(
    path: str | Path, *, validate: bool = True, layout: str | None = None
) -> tuple[Dataset, list[DataProblem]]:
    """Read any supported layout (detected, or ``layout``); return the dataset and every
    problem instead of raising (a path that is no dataset at all still raises DataError)."""
    root = Path(path)
    layout = detect_layout(root, layout)
    if layout == "severstal":
        return _scan_severstal(root, validate)
    return _function(layout, 1)(root, validate=validate)


def load_dataset(
    path: str | Path | Dataset, *, validate: bool = True, layout: str | None = None
) -> Dataset:
    """Load a dataset of any supported layout (a :class:`Dataset` passes through).

    Raises :class:`DataError` listing every problem found. Image files are checked from their
    headers only (size, readability) for speed; ``steelscan.data.check.check_dataset`` decodes
    every image in full.
    """
    if isinstance(path, Dataset):
        return path
    ds, problems = scan_dataset(path, validate=validate, layout=layout)
    if problems:
        raise DataError(problems)
    return ds


__all__ = [
    "LAYOUTS",
    "AnnotatedImage",
    "Box",
    "DataError",
    "DataProblem",
    "Dataset",
    "detect_layout",
    "load_dataset",
    "scan_dataset",
]
