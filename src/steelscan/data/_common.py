"""Helpers shared by the dataset readers: finding image files, reading their sizes, reading CSVs.

Row numbers in every :class:`DataProblem` the readers produce are LINE numbers in the file (the
CSV header is line 1, so the first data row is line 2): that is the number an editor or a
spreadsheet shows, so a user can jump straight to it.
"""

from __future__ import annotations

import csv
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from steelscan import SEVERSTAL_SHAPE
from steelscan.data.records import DataProblem
from steelscan.imageio import IMAGE_SUFFIXES, ImageReadError, image_size


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES


@dataclass
class ImageFolder:
    """The image files of one folder, looked up by exact name or, failing that, by stem.

    The stem lookup exists because real copies of Severstal store some images as ``x.png`` while
    the CSV says ``x.jpg`` (a lossless re-encode); the CSV's id stays the record's id.
    """

    root: Path
    by_name: dict[str, Path] = field(default_factory=dict)
    by_stem: dict[str, list[Path]] = field(default_factory=lambda: defaultdict(list))

    @classmethod
    def scan(cls, root: Path) -> ImageFolder:
        folder = cls(root)
        for p in sorted(root.iterdir()):
            if is_image_file(p):
                folder.by_name[p.name] = p
                folder.by_stem[p.stem].append(p)
        return folder

    def find(self, name: str) -> tuple[Path | None, str | None]:
        """``(path, None)`` when found, else ``(None, why)`` saying what was looked for."""
        if name in self.by_name:
            return self.by_name[name], None
        stem = Path(name).stem if Path(name).suffix.lower() in IMAGE_SUFFIXES else name
        hits = self.by_stem.get(stem, [])
        if len(hits) == 1:
            return hits[0], None
        if len(hits) > 1:
            names = ", ".join(p.name for p in hits)
            return None, f"image {name!r} is ambiguous in {self.root}: {names} all match"
        return None, f"image {name!r} not found in {self.root} (no {name} and no {stem}.* file)"


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


@dataclass
class CsvTable:
    """A CSV's normalised header and its non-blank rows, each with its line number."""

    path: Path
    header: list[str]
    rows: list[tuple[int, list[str]]]

    def column(self, *names: str) -> int | None:
        """Index of the first header matching any of ``names`` (case-insensitive)."""
        for n in names:
            if n.casefold() in self.header:
                return self.header.index(n.casefold())
        return None


def read_csv(path: Path) -> tuple[CsvTable | None, list[DataProblem]]:
    """Read a CSV with the stdlib (exact strings, exact line numbers; no NaN guessing)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                return None, [DataProblem(str(path), "the file is empty (expected a CSV header)")]
            rows = []
            for row in reader:
                if not any(cell.strip() for cell in row):
                    continue  # blank lines and all-empty ',' rows carry no data
                rows.append((reader.line_num, row))
    except UnicodeDecodeError as exc:
        return None, [DataProblem(str(path), f"not a UTF-8 text file ({exc.reason})")]
    except csv.Error as exc:
        return None, [DataProblem(str(path), f"not a valid CSV file ({exc})")]
    except OSError as exc:
        return None, [DataProblem(str(path), f"cannot read file ({exc.strerror or exc})")]
    return CsvTable(path, [h.strip().casefold() for h in header], rows), []
