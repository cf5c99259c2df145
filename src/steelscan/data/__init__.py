"""Datasets: one loader for every supported layout, returning :class:`Dataset` records.

Layouts are detected from the folder: Severstal (``train.csv`` beside ``train_images/`` or
``images/``) or Pascal VOC (``annotations/*.xml`` beside ``images/``, as NEU-DET ships).
The readers import lazily so that ``import steelscan.data.records`` stays cheap for the CLI.
"""

from __future__ import annotations

from pathlib import Path

from steelscan.data.records import AnnotatedImage, Box, DataError, DataProblem, Dataset

EXPECTED_LAYOUTS = (
    "a Severstal layout (train.csv with train_images/ or images/) or a Pascal VOC layout "
    "(annotations/*.xml with images/)"
)


def detect_layout(path: str | Path) -> str:
    """``"severstal"`` or ``"voc"``; raise :class:`DataError` saying what was expected."""
    from steelscan.data.severstal import is_severstal
    from steelscan.data.voc import is_voc

    root = Path(path)
    if not root.exists():
        raise DataError([DataProblem(str(root), "no such file or folder")])
    if root.is_file():
        raise DataError(
            [DataProblem(str(root), f"is a file; expected a folder holding {EXPECTED_LAYOUTS}")]
        )
    if is_severstal(root):
        return "severstal"
    if is_voc(root):
        return "voc"
    raise DataError(
        [DataProblem(str(root), f"not a recognised dataset folder: expected {EXPECTED_LAYOUTS}")]
    )


def scan_dataset(path: str | Path, *, validate: bool = True) -> tuple[Dataset, list[DataProblem]]:
    """Read any supported layout; return the dataset and every problem instead of raising."""
    from steelscan.data.severstal import scan_severstal
    from steelscan.data.voc import scan_voc

    layout = detect_layout(path)
    scan = scan_severstal if layout == "severstal" else scan_voc
    return scan(Path(path), validate=validate)


def load_dataset(path: str | Path | Dataset, *, validate: bool = True) -> Dataset:
    """Load a dataset folder of any supported layout (a :class:`Dataset` passes through).

    Raises :class:`DataError` listing every problem found. Image files are checked from their
    headers only (size, readability) for speed; ``steelscan.data.check.check_dataset`` decodes
    every image in full.
    """
    if isinstance(path, Dataset):
        return path
    ds, problems = scan_dataset(path, validate=validate)
    if problems:
        raise DataError(problems)
    return ds


__all__ = [
    "AnnotatedImage",
    "Box",
    "DataError",
    "DataProblem",
    "Dataset",
    "detect_layout",
    "load_dataset",
    "scan_dataset",
]
