"""The one place that finds an image file by its id: the dataset readers and predict use it.

An id is found by its exact file name first and, failing that, by its stem under any image
suffix: real copies of Severstal store some images as ``x.png`` while the CSV says ``x.jpg``
(a lossless re-encode), and NEU's XML ``<filename>`` sometimes has no suffix at all. The id the
CSV gives stays the record's id; only the file differs. Each folder is listed once, so looking up
thousands of ids costs one directory scan, not a dozen ``stat`` calls per id.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

from steelscan.imageio import IMAGE_SUFFIXES


def is_image_file(path: Path) -> bool:
    """A regular file with an image suffix (any case)."""
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES


def list_images(folder: Path) -> list[Path]:
    """The image files directly in ``folder``, sorted by name (empty if it is not a folder)."""
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if is_image_file(p)), key=lambda p: p.name)


def id_stem(image_id: str) -> str:
    """The stem an id is matched by: ``x.jpg`` -> ``x``; an id without image suffix is its own."""
    p = Path(image_id)
    return p.stem if p.suffix.lower() in IMAGE_SUFFIXES else image_id


class ImageFinder:
    """The image files of one or more folders, looked up by exact name, then by stem.

    Folders are searched in the order given; missing ones are skipped. An exact name in any
    folder wins over a stem match (an exact name is never a guess); a stem that matches several
    files of one folder is ambiguous and reported, never resolved by chance.
    """

    def __init__(self, folders: Iterable[Path]):
        self.folders = [Path(f) for f in folders if Path(f).is_dir()]
        self._by_name: list[dict[str, Path]] = []
        self._by_stem: list[dict[str, list[Path]]] = []
        for folder in self.folders:
            names: dict[str, Path] = {}
            stems: dict[str, list[Path]] = defaultdict(list)
            for p in list_images(folder):
                names[p.name] = p
                stems[p.stem].append(p)
            self._by_name.append(names)
            self._by_stem.append(dict(stems))

    @classmethod
    def scan(cls, *folders: Path) -> ImageFinder:
        """List ``folders`` once (the readers' usual entry point)."""
        return cls(folders)

    @property
    def files(self) -> list[Path]:
        """Every image file of every folder, folder by folder, sorted by name within each."""
        return [p for names in self._by_name for p in names.values()]

    def _where(self) -> str:
        if not self.folders:
            return "(no image folder)"
        return ", ".join(str(f) for f in self.folders)

    def find(self, image_id: str) -> tuple[Path | None, str | None]:
        """``(path, None)`` when found, else ``(None, why)`` saying what was looked for where."""
        for names in self._by_name:
            if image_id in names:
                return names[image_id], None
        stem = id_stem(image_id)
        for folder, stems in zip(self.folders, self._by_stem, strict=True):
            hits = stems.get(stem, [])
            if len(hits) == 1:
                return hits[0], None
            if len(hits) > 1:
                names = ", ".join(p.name for p in hits)
                return None, f"image {image_id!r} is ambiguous in {folder}: {names} all match"
        return None, (
            f"image {image_id!r} not found in {self._where()} (no {image_id} and no {stem}.* file)"
        )
