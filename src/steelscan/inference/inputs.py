"""Resolve what the user passed to ``steelscan predict`` into a list of images, each once.

Accepted inputs: image files; folders of images (non-recursive, sorted; a folder holding only an
``images/`` or ``train_images/`` subfolder is looked into; masks beside their images, by
:mod:`steelscan.data.mask_folders`' pairing rule, are left out with a note); a CSV listing images
(any table :func:`steelscan.data.kaggle_csv.read_image_rows` reads, the same files ``steelscan
score --images`` takes: ``images.csv``, ``defect_and_no_defect.csv``, a train or submission CSV in
either Kaggle layout, one id per line), its ids found beside the CSV or in ``images/``,
``train_images/`` or ``test_images/`` by :class:`steelscan.data.image_files.ImageFinder` (also
under another image suffix with the same stem, as Severstal re-encodes store ``<id>.png`` for
``<id>.jpg``); a labelled dataset folder in any layout :func:`steelscan.data.detect_layout` finds:
its records come with ground truth, for overlays.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from steelscan.data.image_files import ImageFinder, list_images
from steelscan.data.kaggle_csv import read_image_rows
from steelscan.data.records import AnnotatedImage, DataError, DataProblem
from steelscan.imageio import IMAGE_SUFFIXES

IMAGE_SUBDIRS = ("images", "train_images", "test_images")


@dataclass
class InputImage:
    """One image to inspect: the id written to the outputs, its file and, if labelled, its truth."""

    image_id: str
    path: Path
    truth: AnnotatedImage | None = None


@dataclass
class Inputs:
    """The resolved inputs: images to run, ids that could not be found, and notes for the user."""

    images: list[InputImage] = field(default_factory=list)
    missing: list[tuple[str, str]] = field(default_factory=list)  # (image id or path, why)
    notes: list[str] = field(default_factory=list)  # duplicates dropped etc.


def _from_csv(csv: Path, out: Inputs) -> list[InputImage]:
    """The images a CSV lists, each once; rows that cannot be used go to ``out.missing`` so the
    rest still runs. A CSV that lists nothing readable at all raises (a wrong file, most likely)."""
    rows, problems = read_image_rows(csv)
    if problems and not rows:
        raise DataError(problems)
    out.missing.extend((f"{csv}:{p.row}", p.message) for p in problems)
    finder = ImageFinder.scan(csv.parent, *(csv.parent / d for d in IMAGE_SUBDIRS))
    items = []
    seen: set[str] = set()
    for row in rows:
        if row.image_id in seen:  # submission-style CSVs list each image once per class
            continue
        seen.add(row.image_id)
        path, why = finder.find(row.image_id)
        if path is None:
            out.missing.append((row.image_id, f"listed in {csv.name} line {row.line}: {why}"))
            continue
        items.append(InputImage(row.image_id, path))
    return items


def _is_dataset(folder: Path) -> bool:
    """A labelled dataset in any layout steelscan reads (its overlays then show the truth);
    anything else is a plain folder of images."""
    from steelscan.data import detect_layout
    from steelscan.data.records import DataError

    try:
        detect_layout(folder)
    except DataError:
        return False
    return True


def _from_dataset(folder: Path, out: Inputs) -> list[InputImage]:
    """A labelled dataset's images with their ground truth; its problems become notes, so one
    bad annotation row does not stop predictions on everything else."""
    from steelscan.data import scan_dataset

    ds, problems = scan_dataset(folder)
    out.notes.extend(str(p) for p in problems)
    return [InputImage(r.image_id, r.path, truth=r) for r in ds.records if r.path is not None]


def _from_folder(folder: Path, out: Inputs) -> list[InputImage]:
    """A folder's images; mask files beside their images (a Magnetic-tile ``Imgs`` folder) are
    left out, with a note."""
    from steelscan.data.mask_folders import masks_beside_images

    for where in (folder, *(folder / sub for sub in IMAGE_SUBDIRS)):
        files = list_images(where)
        if files:
            break
    if not files:
        raise DataError(
            [DataProblem(str(folder), "folder holds no images (" + ", ".join(IMAGE_SUFFIXES) + ")")]
        )
    masks = set(masks_beside_images(where, [p.name for p in files]))
    if masks:
        out.notes.append(
            f"{where}: {len(masks)} mask file(s) beside their images left out "
            f"(e.g. {min(masks).name}); pass a mask file itself to inspect it"
        )
    return [InputImage(p.name, p) for p in files if p not in masks]


def resolve_inputs(paths: Iterable[str | Path]) -> Inputs:
    """Resolve predict inputs; every image appears once (first occurrence wins).

    A path that does not exist, a folder without images or a CSV without an image id column raises
    :class:`DataError` (the user mistyped something); ids from a CSV that cannot be found are
    collected in ``missing`` so the rest still runs and they are reported at the end.
    """
    out = Inputs()
    problems = []
    by_id: dict[str, Path] = {}
    for raw in paths:
        p = Path(raw)
        if not p.exists():
            problems.append(DataProblem(str(p), "no such file or folder"))
            continue
        if p.is_dir():
            items = _from_dataset(p, out) if _is_dataset(p) else _from_folder(p, out)
        elif p.suffix.lower() == ".csv":
            items = _from_csv(p, out)
        elif p.suffix.lower() in IMAGE_SUFFIXES:
            items = [InputImage(p.name, p)]
        else:
            problems.append(DataProblem(str(p), "not an image, a folder or a CSV of image ids"))
            continue
        for item in items:
            prev = by_id.get(item.image_id)
            if prev is not None:
                if prev.resolve() != item.path.resolve():
                    out.notes.append(
                        f"{item.path}: image id {item.image_id} already taken by {prev}; skipped"
                    )
                continue
            by_id[item.image_id] = item.path
            out.images.append(item)
    if problems:
        raise DataError(problems)
    return out
