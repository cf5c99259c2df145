"""The one record type for an annotated image, and the dataset that holds them.

Class indices are 0-based here (tensors); files use their own ids (Severstal ``ClassId`` 1..4),
converted at the readers' edges via ``Dataset.class_ids``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from steelscan import rle as rle_codec


@dataclass(frozen=True)
class Box:
    """An axis-aligned box in pixel coordinates, ``x2``/``y2`` exclusive, 0-based class index."""

    class_index: int
    x1: int
    y1: int
    x2: int
    y2: int

    @property
    def area(self) -> int:
        return max(0, self.x2 - self.x1) * max(0, self.y2 - self.y1)


@dataclass(frozen=True)
class DataProblem:
    """One thing wrong with a dataset: where (file, row, field) and what."""

    file: str
    message: str
    row: int | None = None
    field: str | None = None

    def __str__(self) -> str:
        where = self.file
        if self.row is not None:
            where += f", row {self.row}"
        if self.field:
            where += f", field {self.field}"
        return f"{where}: {self.message}"


class DataError(ValueError):
    """A dataset could not be read; carries every problem found, each naming file/row/field."""

    def __init__(self, problems: Sequence[DataProblem] | str):
        if isinstance(problems, str):
            problems = [DataProblem(file="", message=problems)]
        self.problems = list(problems)
        lines = [str(p) for p in self.problems[:20]]
        if len(self.problems) > 20:
            lines.append(f"... and {len(self.problems) - 20} more problems")
        super().__init__("\n".join(lines))


@dataclass
class AnnotatedImage:
    """One image and everything known about it. Masks are kept as RLE and decoded on demand."""

    image_id: str
    path: Path | None
    height: int
    width: int
    classes: tuple[str, ...]
    rles: dict[int, str] = field(default_factory=dict)
    boxes: tuple[Box, ...] = ()
    labels: frozenset[int] | None = None
    has_defect: bool | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return (self.height, self.width)

    @property
    def present(self) -> tuple[bool, ...]:
        """Per-class presence: from masks, then boxes, then image-level labels."""
        found = {k for k, v in self.rles.items() if v}
        found |= {b.class_index for b in self.boxes}
        if self.labels is not None:
            found |= set(self.labels)
        return tuple(i in found for i in range(len(self.classes)))

    @property
    def defective(self) -> bool:
        if self.has_defect is not None and not any(self.present):
            return self.has_defect
        return any(self.present)

    def mask(self, class_index: int, *, boxes: bool = True) -> np.ndarray:
        """The (H, W) uint8 mask of one class; box datasets fill their boxes when ``boxes``."""
        m = rle_codec.decode(self.rles.get(class_index, ""), self.shape)
        if boxes:
            for b in self.boxes:
                if b.class_index == class_index:
                    m[b.y1 : b.y2, b.x1 : b.x2] = 1
        return m

    def masks(self, *, boxes: bool = True) -> np.ndarray:
        """All classes' masks as a (C, H, W) uint8 array."""
        return np.stack([self.mask(i, boxes=boxes) for i in range(len(self.classes))])

    def with_path(self, path: Path) -> AnnotatedImage:
        return replace(self, path=path)


@dataclass
class Dataset:
    """A list of :class:`AnnotatedImage` plus what they share (layout, class names and file ids)."""

    root: Path
    layout: str  # "severstal" | "voc"
    classes: tuple[str, ...]
    class_ids: tuple[int, ...]  # the id each class has in the files (Severstal: 1..4)
    records: list[AnnotatedImage]
    has_masks: bool = True  # False for box-only datasets (VOC)

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[AnnotatedImage]:
        return iter(self.records)

    def __getitem__(self, i: int) -> AnnotatedImage:
        return self.records[i]

    def subset(self, image_ids: Sequence[str]) -> Dataset:
        keep = set(image_ids)
        return replace(self, records=[r for r in self.records if r.image_id in keep])

    def by_id(self) -> dict[str, AnnotatedImage]:
        return {r.image_id: r for r in self.records}
