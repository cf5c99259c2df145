"""Reader for the Severstal (Kaggle) layout: ``train.csv`` + ``train_images/`` (or ``images/``).

Both ``train.csv`` formats are accepted and detected from the header:

* new: ``ImageId,ClassId,EncodedPixels`` (one row per defect class present);
* old: ``ImageId_ClassId,EncodedPixels`` (e.g. ``0002cc93b.jpg_1``; four rows per image, an
  empty ``EncodedPixels`` meaning that class is absent).

Every image file in the folder is a record; an image with no row is defect-free. Image-level
labels come from ``images.csv`` (``ImageId,has_defect``, extra columns allowed) and
``defect_and_no_defect.csv`` (``ImageID,label``) where present. Problems name the file and the
LINE number (header = line 1, first data row = line 2).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from steelscan import rle as rle_codec
from steelscan.data._common import CsvTable, ImageFolder, read_csv, read_sizes, size_problems
from steelscan.data.records import AnnotatedImage, DataError, DataProblem, Dataset

CLASS_IDS: tuple[int, ...] = (1, 2, 3, 4)
CLASS_NAMES: tuple[str, ...] = tuple(str(c) for c in CLASS_IDS)
IMAGE_DIRS = ("train_images", "images")
LABEL_FILES = ("images.csv", "defect_and_no_defect.csv")
_TRUE = {"1", "true", "yes", "1.0"}
_FALSE = {"0", "false", "no", "0.0"}


def is_severstal(root: Path) -> bool:
    return (root / "train.csv").is_file()


@dataclass
class _MaskRow:
    image_id: str
    class_id: int
    rle: str
    line: int


def _image_dir(root: Path) -> Path | None:
    for name in IMAGE_DIRS:
        if (root / name).is_dir():
            return root / name
    return None


def _mask_rows(
    table: CsvTable, class_ids: tuple[int, ...]
) -> tuple[list[_MaskRow], list[DataProblem]]:
    """Rows of either train.csv format, as (image, class, rle); every bad row is a problem."""
    f = str(table.path)
    problems: list[DataProblem] = []
    i_id, i_cls, i_rle = (
        table.column("ImageId"),
        table.column("ClassId"),
        table.column("EncodedPixels"),
    )
    i_both = table.column("ImageId_ClassId")
    old = i_both is not None and i_rle is not None
    if not old and None in (i_id, i_cls, i_rle):
        found = ",".join(table.header)
        return [], [
            DataProblem(
                f,
                f"unrecognised header {found!r}: expected 'ImageId,ClassId,EncodedPixels' "
                "(new Kaggle format) or 'ImageId_ClassId,EncodedPixels' (old format)",
                row=1,
            )
        ]
    out: list[_MaskRow] = []
    seen: dict[tuple[str, int], int] = {}
    width = len(table.header)
    for line, row in table.rows:
        if len(row) != width:
            problems.append(DataProblem(f, f"expected {width} fields, found {len(row)}", row=line))
            continue
        if old:
            key = row[i_both].strip()
            image_id, sep, cls_text = key.rpartition("_")
            field = "ImageId_ClassId"
            if not sep or not image_id:
                problems.append(
                    DataProblem(
                        f,
                        f"{key!r} is not '<ImageId>_<ClassId>' (e.g. '0002cc93b.jpg_1')",
                        row=line,
                        field=field,
                    )
                )
                continue
        else:
            image_id, cls_text, field = row[i_id].strip(), row[i_cls].strip(), "ClassId"
            if not image_id:
                problems.append(DataProblem(f, "empty ImageId", row=line, field="ImageId"))
                continue
        try:
            class_id = int(cls_text)
        except ValueError:
            class_id = None
        if class_id not in class_ids:
            allowed = ", ".join(map(str, class_ids))
            problems.append(
                DataProblem(
                    f,
                    f"{image_id}: unknown class id {cls_text!r} (expected one of {allowed})",
                    row=line,
                    field=field,
                )
            )
            continue
        if (image_id, class_id) in seen:
            problems.append(
                DataProblem(
                    f,
                    f"duplicate row for {image_id} class {class_id} "
                    f"(first given on line {seen[(image_id, class_id)]})",
                    row=line,
                )
            )
            continue
        seen[(image_id, class_id)] = line
        out.append(_MaskRow(image_id, class_id, row[i_rle].strip(), line))
    return out, problems


def _parse_flag(text: str) -> bool | None:
    t = text.strip().casefold()
    return True if t in _TRUE else False if t in _FALSE else None


def _image_labels(root: Path) -> tuple[dict[str, tuple[bool, str, int]], list[DataProblem]]:
    """has_defect per image id from the label CSVs: id -> (value, file, line)."""
    labels: dict[str, tuple[bool, str, int]] = {}
    problems: list[DataProblem] = []
    for name in LABEL_FILES:
        path = root / name
        if not path.is_file():
            continue
        table, probs = read_csv(path)
        problems += probs
        if table is None:
            continue
        f = str(path)
        i_id = table.column("ImageId", "image_id", "image")
        i_lab = table.column("has_defect", "label")
        if i_id is None or i_lab is None:
            problems.append(
                DataProblem(
                    f,
                    f"unrecognised header {','.join(table.header)!r}: expected an ImageId column "
                    "and a has_defect (or label) column",
                    row=1,
                )
            )
            continue
        for line, row in table.rows:
            if len(row) <= max(i_id, i_lab):
                problems.append(DataProblem(f, f"too few fields ({len(row)})", row=line))
                continue
            image_id = row[i_id].strip()
            value = _parse_flag(row[i_lab])
            if not image_id:
                problems.append(DataProblem(f, "empty image id", row=line))
                continue
            if value is None:
                problems.append(
                    DataProblem(
                        f,
                        f"{image_id}: label {row[i_lab]!r} is not 0/1 (or true/false)",
                        row=line,
                        field=table.header[i_lab],
                    )
                )
                continue
            if image_id in labels and labels[image_id][0] != value:
                old_value, old_file, old_line = labels[image_id]
                problems.append(
                    DataProblem(
                        f,
                        f"{image_id}: has_defect={int(value)} contradicts has_defect="
                        f"{int(old_value)} on line {old_line} of {old_file}",
                        row=line,
                    )
                )
                continue
            labels.setdefault(image_id, (value, f, line))
    return labels, problems


def scan_severstal(
    root: Path, *, validate: bool = True, class_ids: tuple[int, ...] = CLASS_IDS
) -> tuple[Dataset, list[DataProblem]]:
    """Read the folder and return the dataset plus EVERY problem found (never raises on data).

    ``validate=False`` skips the per-row RLE checks and the image-size consistency check (the
    expensive or paranoid ones); structural problems are still reported. Records are sorted
    by image id; an image no CSV mentions is a defect-free record named by its file.
    """
    root = Path(root)
    csv_path = root / "train.csv"
    problems: list[DataProblem] = []
    classes = tuple(str(c) for c in class_ids)
    empty = Dataset(root, "severstal", classes, class_ids, [], has_masks=True)
    table, probs = read_csv(csv_path)
    problems += probs
    rows, probs = _mask_rows(table, class_ids) if table else ([], [])
    problems += probs
    labels, probs = _image_labels(root)
    problems += probs

    img_dir = _image_dir(root)
    if img_dir is None:
        problems.append(
            DataProblem(str(root), "no image folder: expected train_images/ or images/ here")
        )
        return empty, problems
    folder = ImageFolder.scan(img_dir)

    # Every id any CSV mentions (first mention kept, for the error's file and line).
    mentions: dict[str, tuple[str, int]] = {}
    for r in rows:
        mentions.setdefault(r.image_id, (str(csv_path), r.line))
    for image_id, (_, f, line) in labels.items():
        mentions.setdefault(image_id, (f, line))
    paths: dict[str, Path] = {}
    for image_id, (f, line) in mentions.items():
        path, why = folder.find(image_id)
        if path is None:
            problems.append(DataProblem(f, why or "image not found", row=line))
        else:
            paths[image_id] = path
    claimed = set(paths.values())
    for p in folder.by_name.values():
        if p not in claimed:  # an image nobody lists: a defect-free record under its file name
            paths.setdefault(p.name, p)

    sizes, probs = read_sizes(sorted(set(paths.values())))
    problems += probs
    shape, probs = size_problems(sizes) if validate else (None, [])
    problems += probs
    if shape is None and sizes:
        shape = next(iter(sizes.values()))

    rles: dict[str, dict[int, str]] = {}
    for r in rows:
        size = sizes.get(paths.get(r.image_id)) or shape
        if validate and r.rle and size is not None:
            try:
                rle_codec.parse(r.rle, size)
            except ValueError as exc:
                problems.append(
                    DataProblem(
                        str(csv_path),
                        f"{r.image_id} class {r.class_id}: {exc}",
                        row=r.line,
                        field="EncodedPixels",
                    )
                )
                continue
        if r.rle:
            rles.setdefault(r.image_id, {})[class_ids.index(r.class_id)] = r.rle

    for image_id, (value, f, line) in labels.items():
        if not value and rles.get(image_id):
            problems.append(
                DataProblem(
                    f,
                    f"{image_id}: has_defect=0 but train.csv has masks for it",
                    row=line,
                )
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
