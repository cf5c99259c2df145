"""Helpers shared by the dataset readers: image sizes and the dataset's majority size.

CSVs are read by :mod:`steelscan.data.kaggle_csv` and image files found by
:mod:`steelscan.data.image_files`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from steelscan import SEVERSTAL_SHAPE
from steelscan.data.records import DataProblem
from steelscan.imageio import ImageReadError, image_size


def read_sizes(paths: Iterable[Path]) -> tuple[dict[Path, tuple[int, int]], list[DataProblem]]:
    """(height, width) of each file from its header only (fast); unreadable files are problems."""
    sizes: dict[Path, tuple[int, int]] = {}
    problems: list[DataProblem] = []
    for p in paths:
        try:
            sizes[p] = image_size(p)
        except ImageReadError as exc:
            problems.append(DataProblem(str(p), _strip_name(str(exc), p)))
    return sizes, problems


def _strip_name(message: str, path: Path) -> str:
    """ImageReadError messages start with the path; DataProblem prints the file itself."""
    return message.removeprefix(f"{path}: ")


def majority_shape(shapes: Iterable[tuple[int, int]]) -> tuple[tuple[int, int] | None, int]:
    """The most common (H, W) and how many images have it; ties prefer Severstal's 256x1600."""
    counts = Counter(shapes)
    if not counts:
        return None, 0
    best = max(counts.items(), key=lambda kv: (kv[1], kv[0] == SEVERSTAL_SHAPE, kv[0]))
    return best[0], best[1]


def size_problems(
    sizes: dict[Path, tuple[int, int]],
) -> tuple[tuple[int, int] | None, list[DataProblem]]:
    """Flag every image whose size differs from the dataset's majority size.

    The expected size is not hard-coded (synthetic and other datasets use other sizes): it is
    whatever most images in the folder are, which for real Severstal data is 1600x256.
    """
    shape, n = majority_shape(sizes.values())
    problems = []
    if shape is not None:
        for p, s in sorted(sizes.items()):
            if s != shape:
                problems.append(
                    DataProblem(
                        str(p),
                        f"image is {s[1]}x{s[0]} (width x height) but {n} of {len(sizes)} "
                        f"images in the dataset are {shape[1]}x{shape[0]}",
                    )
                )
    return shape, problems
