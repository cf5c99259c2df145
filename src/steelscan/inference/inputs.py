"""Resolve what the user passed to ``steelscan predict`` into a list of images, each once.

Accepted inputs: image files; folders of images (non-recursive, sorted; a folder holding only an
``images/`` or ``train_images/`` subfolder is looked into); a CSV with an ``ImageId`` column (ids
resolved beside the CSV, in ``images/`` or ``train_images/``, also under another image suffix with
the same stem, as Severstal re-encodes store ``<id>.png`` for ``<id>.jpg``); a labelled dataset
folder (has ``train.csv``, or VOC ``annotations/``): its records come with ground truth, for
overlays.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

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


def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES


def _list_images(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if _is_image(p)), key=lambda p: p.name)


def find_image(image_id: str, folders: Iterable[Path]) -> Path | None:
    """Find ``image_id`` in ``folders``; else a file with the same stem and another image suffix."""
    folders = [f for f in folders if f.is_dir()]
    for folder in folders:
        p = folder / image_id
        if p.is_file():
            return p
    stem = Path(image_id).stem
    for folder in folders:
        for suffix in IMAGE_SUFFIXES:
            for cand in (folder / f"{stem}{suffix}", folder / f"{stem}{suffix.upper()}"):
                if cand.is_file():
                    return cand
    return None


def _from_csv(csv: Path, out: Inputs) -> list[InputImage]:
    try:
        df = pd.read_csv(csv, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError([DataProblem(str(csv), f"not a readable CSV ({exc})")]) from exc
    if "ImageId" not in df.columns:
        raise DataError(
            [DataProblem(str(csv), f"no ImageId column (columns: {', '.join(df.columns)})")]
        )
    folders = [csv.parent] + [csv.parent / d for d in IMAGE_SUBDIRS]
    items = []
    seen: set[str] = set()
    for row, image_id in enumerate(df["ImageId"].str.strip(), start=2):
        if not image_id:
            out.missing.append((f"{csv}:{row}", "empty ImageId"))
            continue
        if image_id in seen:  # submission-style CSVs list each image once per class
            continue
        seen.add(image_id)
        path = find_image(image_id, folders)
        if path is None:
            out.missing.append(
                (
                    image_id,
                    f"listed in {csv.name} row {row}, no such image beside it or in "
                    f"{'/'.join(IMAGE_SUBDIRS)}/",
                )
            )
            continue
        items.append(InputImage(image_id, path))
    return items


def _is_dataset(folder: Path) -> bool:
    return (folder / "train.csv").is_file() or (folder / "annotations").is_dir()


def _from_dataset(folder: Path, out: Inputs) -> list[InputImage]:
    """A labelled dataset's images with their ground truth; its problems become notes, so one
    bad annotation row does not stop predictions on everything else."""
    from steelscan.data import scan_dataset

    ds, problems = scan_dataset(folder)
    out.notes.extend(str(p) for p in problems)
    return [InputImage(r.image_id, r.path, truth=r) for r in ds.records if r.path is not None]


def _from_folder(folder: Path) -> list[InputImage]:
    files = _list_images(folder)
    if not files:
        for sub in IMAGE_SUBDIRS:
            if (folder / sub).is_dir():
                files = _list_images(folder / sub)
                if files:
                    break
    if not files:
        raise DataError(
            [DataProblem(str(folder), "folder holds no images (" + ", ".join(IMAGE_SUFFIXES) + ")")]
        )
    return [InputImage(p.name, p) for p in files]


def resolve_inputs(paths: Iterable[str | Path]) -> Inputs:
    """Resolve predict inputs; every image appears once (first occurrence wins).

    A path that does not exist, a folder without images or a CSV without ``ImageId`` raises
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
            items = _from_dataset(p, out) if _is_dataset(p) else _from_folder(p)
        elif p.suffix.lower() == ".csv":
            items = _from_csv(p, out)
        elif p.suffix.lower() in IMAGE_SUFFIXES:
            items = [InputImage(p.name, p)]
        else:
            problems.append(DataProblem(str(p), "not an image, a folder or a CSV of ImageIds"))
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
