"""Reader for the Severstal (Kaggle) layout: ``train.csv`` + ``train_images/`` (or ``images/``).

The CSVs are parsed by :mod:`steelscan.data.kaggle_csv` (both ``train.csv`` layouts, any header
case) and images are found by :class:`steelscan.data.image_files.ImageFinder` (``x.png`` for id
``x.jpg``); this module only decides what they mean together.

Every image file in the folder is a record; an image with no row is defect-free. Image-level
labels come from ``images.csv`` (``ImageId,has_defect``, extra columns allowed) and
``defect_and_no_defect.csv`` (``ImageID,label``) where present. Problems name the file and the
LINE number (header = line 1, first data row = line 2).
"""

from __future__ import annotations

from pathlib import Path

from steelscan.data._common import read_sizes, size_problems
from steelscan.data.image_files import ImageFinder
from steelscan.data.kaggle_csv import MaskRow, parse_rle, read_image_rows, read_mask_rows
from steelscan.data.records import AnnotatedImage, DataError, DataProblem, Dataset

CLASS_IDS: tuple[int, ...] = (1, 2, 3, 4)
CLASS_NAMES: tuple[str, ...] = tuple(str(c) for c in CLASS_IDS)
IMAGE_DIRS = ("train_images", "images")
LABEL_FILES = ("images.csv", "defect_and_no_defect.csv")


def is_severstal(root: Path) -> bool:
    return (root / "train.csv").is_file()


def _image_dir(root: Path) -> Path | None:
    for name in IMAGE_DIRS:
        if (root / name).is_dir():
            return root / name
    return None


def _image_labels(root: Path) -> tuple[dict[str, tuple[bool, str, int]], list[DataProblem]]:
    """has_defect per image id from the label CSVs: id -> (value, file, line).

    The same id in two rows or two files must agree; a contradiction is a problem naming both
    places, because silently keeping either would train the gate on a coin toss.
    """
    labels: dict[str, tuple[bool, str, int]] = {}
    problems: list[DataProblem] = []
    for name in LABEL_FILES:
        path = root / name
        if not path.is_file():
            continue
        rows, probs = read_image_rows(path, labels=True)
        problems += probs
        f = str(path)
        for r in rows:
            value = bool(r.has_defect)
            if r.image_id in labels and labels[r.image_id][0] != value:
                old_value, old_file, old_line = labels[r.image_id]
                problems.append(
                    DataProblem(
                        f,
                        f"{r.image_id}: has_defect={int(value)} contradicts has_defect="
                        f"{int(old_value)} on line {old_line} of {old_file}",
                        row=r.line,
                    )
                )
                continue
            labels.setdefault(r.image_id, (value, f, r.line))
    return labels, problems


def _resolve_paths(
    rows: list[MaskRow],
    labels: dict[str, tuple[bool, str, int]],
    csv_path: Path,
    finder: ImageFinder,
) -> tuple[dict[str, Path], list[DataProblem]]:
    """The file of every id a CSV mentions, plus every unlisted image under its own name.

    A missing or ambiguous image is a problem at the first line that mentions it.
    """
    mentions: dict[str, tuple[str, int]] = {}
    for r in rows:
        mentions.setdefault(r.image_id, (str(csv_path), r.line))
    for image_id, (_, f, line) in labels.items():
        mentions.setdefault(image_id, (f, line))
    paths: dict[str, Path] = {}
    problems: list[DataProblem] = []
    for image_id, (f, line) in mentions.items():
        path, why = finder.find(image_id)
        if path is None:
            problems.append(DataProblem(f, why or "image not found", row=line))
        else:
            paths[image_id] = path
    claimed = set(paths.values())
    for p in finder.files:
        if p not in claimed:  # an image nobody lists: a defect-free record under its file name
            paths.setdefault(p.name, p)
    return paths, problems


def _checked_rles(
    rows: list[MaskRow],
    sizes: dict[Path | None, tuple[int, int]],
    paths: dict[str, Path],
    shape: tuple[int, int] | None,
    *,
    validate: bool,
    csv_path: Path,
    class_ids: tuple[int, ...],
) -> tuple[dict[str, dict[int, str]], list[DataProblem]]:
    """The non-empty RLE per image and 0-based class, each checked against its image's size."""
    rles: dict[str, dict[int, str]] = {}
    problems: list[DataProblem] = []
    for r in rows:
        size = sizes.get(paths.get(r.image_id)) or shape
        if validate and r.rle and size is not None:
            _, problem = parse_rle(r, size, csv_path)
            if problem is not None:
                problems.append(problem)
                continue
        if r.rle:
            rles.setdefault(r.image_id, {})[class_ids.index(r.class_id)] = r.rle
    return rles, problems


def scan_severstal(
    root: Path,
    *,
    validate: bool = True,
    class_ids: tuple[int, ...] = CLASS_IDS,
    check_sizes: bool = True,
) -> tuple[Dataset, list[DataProblem]]:
    """Read the folder and return the dataset plus EVERY problem found (never raises on data).

    ``validate=False`` skips the per-row RLE checks and the image-size consistency check (the
    expensive or paranoid ones); structural problems are still reported. ``check_sizes=False``
    skips only the majority-size check (a folder of other data, whose images may differ in
    size, e.g. one ``steelscan data convert`` wrote). Records are sorted by image id; an image
    no CSV mentions is a defect-free record named by its file.
    """
    root = Path(root)
    csv_path = root / "train.csv"
    classes = tuple(str(c) for c in class_ids)
    rows, problems = read_mask_rows(csv_path, class_ids)
    labels, probs = _image_labels(root)
    problems += probs
    img_dir = _image_dir(root)
    if img_dir is None:
        problems.append(
            DataProblem(str(root), "no image folder: expected train_images/ or images/ here")
        )
        return Dataset(root, "severstal", classes, class_ids, [], has_masks=True), problems
    paths, probs = _resolve_paths(rows, labels, csv_path, ImageFinder.scan(img_dir))
    problems += probs

    sizes, probs = read_sizes(sorted(set(paths.values())))
    problems += probs
    shape, probs = size_problems(sizes) if validate and check_sizes else (None, [])
    problems += probs
    if shape is None and sizes:
        shape = next(iter(sizes.values()))
    rles, probs = _checked_rles(
        rows, sizes, paths, shape, validate=validate, csv_path=csv_path, class_ids=class_ids
    )
    problems += probs
    for image_id, (value, f, line) in labels.items():
        if not value and rles.get(image_id):
            problems.append(
                DataProblem(f, f"{image_id}: has_defect=0 but train.csv has masks for it", row=line)
            )

    records = []
    for image_id in sorted(paths):
        path = paths[image_id]
        if path not in sizes:
            continue  # unreadable: already a problem
        h, w = sizes[path]
        masks = rles.get(image_id, {})
        has_defect = labels[image_id][0] if image_id in labels else bool(masks)
        records.append(
            AnnotatedImage(
                image_id=image_id,
                path=path,
                height=h,
                width=w,
                classes=classes,
                rles=dict(sorted(masks.items())),
                has_defect=has_defect,
            )
        )
    return Dataset(root, "severstal", classes, class_ids, records, has_masks=True), problems


def load_severstal(root: str | Path, *, validate: bool = True) -> Dataset:
    """Load a Severstal-layout folder; raise :class:`DataError` listing every problem."""
    ds, problems = scan_severstal(Path(root), validate=validate)
    if problems:
        raise DataError(problems)
    return ds
