"""The one reader of Kaggle-style CSVs: the dataset reader, the scorer and predict all use it.

Mask tables (one row per image and defect class), detected from the header:

* new layout ``ImageId,ClassId,EncodedPixels`` in any column order (the 2019 ``train.csv`` and
  the submission file, which puts ``ClassId`` last);
* old layout ``ImageId_ClassId,EncodedPixels`` (e.g. ``0002cc93b.jpg_1``; four rows per image,
  an empty ``EncodedPixels`` meaning that class is absent).

Image tables (one row per image): ``ImageId,has_defect`` (``images.csv``, extra columns allowed),
``ImageID,label`` (the course's ``defect_and_no_defect.csv``), any mask table (its ids), or a plain
list of ids, one per line, with no header.

Headers match in any case and with surrounding spaces. Every problem is a
:class:`~steelscan.data.records.DataProblem` naming the file and its LINE number (header = line
1, first data row = line 2: what an editor shows), so a user can jump straight to it. Readers
return problems instead of raising, so a dataset check can report all of them at once; the
``load_*`` helpers raise :class:`DataError` for callers that want all-or-nothing. The stdlib
``csv`` module is used (exact strings, exact line numbers, no NaN guessing, no pandas import).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from steelscan import rle as rle_codec
from steelscan.data.records import DataError, DataProblem
from steelscan.imageio import IMAGE_SUFFIXES

SEVERSTAL_CLASS_IDS: tuple[int, ...] = (1, 2, 3, 4)
ID_COLUMNS = ("ImageId", "image_id", "image")
OLD_KEY_COLUMN = "ImageId_ClassId"
LABEL_COLUMNS = ("has_defect", "label")
NEW_HEADER = "ImageId,ClassId,EncodedPixels"
OLD_HEADER = "ImageId_ClassId,EncodedPixels"
_TRUE = {"1", "true", "yes", "1.0"}
_FALSE = {"0", "false", "no", "0.0"}


@dataclass
class CsvTable:
    """A CSV's header (stripped and casefolded, plus as written) and its non-blank rows, each
    with its line number."""

    path: Path
    header: list[str]
    raw_header: list[str]
    rows: list[tuple[int, list[str]]]
    header_line: int = 1  # blank lines above the header are skipped

    @property
    def file(self) -> str:
        return str(self.path)

    def column(self, *names: str) -> int | None:
        """Index of the first header matching any of ``names`` (case-insensitive)."""
        for n in names:
            if n.casefold() in self.header:
                return self.header.index(n.casefold())
        return None

    def header_problem(self, expected: str) -> DataProblem:
        found = ",".join(self.header)
        message = f"unrecognised header {found!r}: expected {expected}"
        return DataProblem(self.file, message, row=self.header_line)


# A valid RLE of a fragmented 256x1600 mask can have ~200,000 runs; csv's default field limit
# (131,072 characters) would refuse what `steelscan predict` itself writes.
FIELD_LIMIT = 16 * 1024 * 1024


def _looks_binary(path: Path) -> bool:
    """NUL bytes in the first 8 KiB: a zeroed file, UTF-16 without BOM, an image, a gzip..."""
    with open(path, "rb") as f:
        return b"\x00" in f.read(8192)


def read_table(path: str | Path) -> tuple[CsvTable | None, list[DataProblem]]:
    """Read any CSV (``utf-8``, BOM allowed); blank and all-empty rows are skipped."""
    path = Path(path)
    if not path.exists():
        return None, [DataProblem(str(path), "file not found")]
    if path.is_dir():
        return None, [DataProblem(str(path), "is a folder; expected a CSV file")]
    if csv.field_size_limit() < FIELD_LIMIT:
        csv.field_size_limit(FIELD_LIMIT)
    try:
        if _looks_binary(path):
            return None, [
                DataProblem(str(path), "not a text CSV file: it holds NUL bytes (binary data)")
            ]
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next((r for r in reader if any(cell.strip() for cell in r)), None)
            if header is None:
                return None, [DataProblem(str(path), "the file is empty (expected a CSV header)")]
            header_line = reader.line_num
            rows = []
            for row in reader:
                if any(cell.strip() for cell in row):  # blank lines and ',' rows carry no data
                    rows.append((reader.line_num, row))
    except UnicodeDecodeError as exc:
        return None, [DataProblem(str(path), f"not a UTF-8 text file ({exc.reason})")]
    except csv.Error as exc:
        return None, [DataProblem(str(path), f"not a valid CSV file ({exc})")]
    except OSError as exc:
        return None, [DataProblem(str(path), f"cannot read file ({exc.strerror or exc})")]
    stripped = [h.strip() for h in header]
    return CsvTable(path, [h.casefold() for h in stripped], stripped, rows, header_line), []


# --------------------------------------------------------------------------- mask tables


@dataclass(frozen=True)
class MaskRow:
    """One (image, class) row of a mask table; ``rle`` may be empty (class absent)."""

    image_id: str
    class_id: int
    rle: str
    line: int


@dataclass(frozen=True)
class _MaskColumns:
    image: int | None  # new layout
    cls: int | None
    key: int | None  # old layout ImageId_ClassId
    rle: int


def _mask_columns(table: CsvTable) -> _MaskColumns | None:
    i_rle = table.column("EncodedPixels")
    if i_rle is None:
        return None
    i_id, i_cls = table.column("ImageId"), table.column("ClassId")
    if i_id is not None and i_cls is not None:
        return _MaskColumns(i_id, i_cls, None, i_rle)
    i_key = table.column(OLD_KEY_COLUMN)
    return _MaskColumns(None, None, i_key, i_rle) if i_key is not None else None


def _split_key(
    cols: _MaskColumns, row: list[str], f: str, line: int
) -> tuple[str, str, str] | DataProblem:
    """``(image_id, class text, field)`` of one row, or a problem."""
    if cols.key is None:
        image_id = row[cols.image].strip()
        if not image_id:
            return DataProblem(f, "empty ImageId", row=line, field="ImageId")
        return image_id, row[cols.cls].strip(), "ClassId"
    key = row[cols.key].strip()
    image_id, sep, cls_text = key.rpartition("_")
    if not sep or not image_id:
        return DataProblem(
            f,
            f"{key!r} is not '<ImageId>_<ClassId>' (e.g. '0002cc93b.jpg_1')",
            row=line,
            field=OLD_KEY_COLUMN,
        )
    return image_id, cls_text, OLD_KEY_COLUMN


def _int_or_none(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def mask_rows(
    table: CsvTable, class_ids: Sequence[int] = SEVERSTAL_CLASS_IDS
) -> tuple[list[MaskRow], list[DataProblem]]:
    """The rows of a mask table of either layout; every bad row is a problem (RLE not parsed:
    its check needs the image size, see :func:`parse_rle`)."""
    f = table.file
    cols = _mask_columns(table)
    if cols is None:
        expected = f"'{NEW_HEADER}' (any order; new Kaggle format) or '{OLD_HEADER}' (old format)"
        return [], [table.header_problem(expected)]
    allowed = tuple(int(c) for c in class_ids)
    out: list[MaskRow] = []
    problems: list[DataProblem] = []
    seen: dict[tuple[str, int], int] = {}
    width = len(table.header)
    for line, row in table.rows:
        if len(row) != width:
            problems.append(DataProblem(f, f"expected {width} fields, found {len(row)}", row=line))
            continue
        split = _split_key(cols, row, f, line)
        if isinstance(split, DataProblem):
            problems.append(split)
            continue
        image_id, cls_text, field = split
        class_id = _int_or_none(cls_text)
        if class_id not in allowed:
            problems.append(
                DataProblem(
                    f,
                    f"{image_id}: unknown class id {cls_text!r} "
                    f"(expected one of {', '.join(map(str, allowed))})",
                    row=line,
                    field=field,
                )
            )
            continue
        if (image_id, class_id) in seen:
            first = seen[(image_id, class_id)]
            problems.append(
                DataProblem(
                    f,
                    f"duplicate row for {image_id} class {class_id} (first given on line {first})",
                    row=line,
                )
            )
            continue
        seen[(image_id, class_id)] = line
        out.append(MaskRow(image_id, class_id, row[cols.rle].strip(), line))
    return out, problems


def read_mask_rows(
    path: str | Path, class_ids: Sequence[int] = SEVERSTAL_CLASS_IDS
) -> tuple[list[MaskRow], list[DataProblem]]:
    """Read a mask CSV of either layout: its rows and every problem (never raises on data)."""
    table, problems = read_table(path)
    if table is None:
        return [], problems
    return mask_rows(table, class_ids)


def parse_rle(
    row: MaskRow, shape: tuple[int, int], file: str | Path
) -> tuple[np.ndarray | None, DataProblem | None]:
    """The row's runs checked against an image of ``shape``, or the problem naming its line."""
    try:
        return rle_codec.parse(row.rle, shape), None
    except ValueError as exc:
        return None, DataProblem(
            str(file),
            f"{row.image_id} class {row.class_id}: {exc}",
            row=row.line,
            field="EncodedPixels",
        )


def load_mask_runs(
    path: str | Path,
    shape: tuple[int, int],
    class_ids: Sequence[int] = SEVERSTAL_CLASS_IDS,
) -> dict[tuple[str, int], np.ndarray]:
    """``{(image_id, class_id): runs}`` of a mask CSV; raise :class:`DataError` listing every
    problem (bad rows, bad RLE, duplicates). For scoring, where one bad row voids the score."""
    rows, problems = read_mask_rows(path, class_ids)
    out: dict[tuple[str, int], np.ndarray] = {}
    for r in rows:
        runs, problem = parse_rle(r, shape, path)
        if problem is not None:
            problems.append(problem)
        else:
            out[(r.image_id, r.class_id)] = runs
    if problems:
        raise DataError(problems)
    return out


# --------------------------------------------------------------------------- image tables


@dataclass(frozen=True)
class ImageRow:
    """One image of an image table; ``has_defect`` is None when the table has no label."""

    image_id: str
    line: int
    has_defect: bool | None = None


def parse_flag(text: str) -> bool | None:
    """0/1, true/false, yes/no (any case); None when it is none of those."""
    t = text.strip().casefold()
    return True if t in _TRUE else False if t in _FALSE else None


def _is_plain_list(table: CsvTable) -> bool:
    """One column and its first line is an id, not a header: the header is no known column name
    and is not a word heading a column of file names (``Id`` above ``a.jpg`` is a header)."""
    known = {n.casefold() for n in (*ID_COLUMNS, OLD_KEY_COLUMN)}
    if len(table.header) != 1 or table.header[0] in known:
        return False
    return _looks_like_file(table.header[0]) or not any(
        _looks_like_file(r[0]) for _, r in table.rows[:20]
    )


def _looks_like_file(text: str) -> bool:
    return Path(text.strip()).suffix.lower() in IMAGE_SUFFIXES


def _columns_problem(table: CsvTable, has_id: bool) -> DataProblem:
    found = ",".join(table.header)
    if not has_id:
        message = (
            f"no ImageId column in header {found!r}: expected ImageId (or image_id, image, "
            "ImageId_ClassId) in any case, or one image id per line with no header"
        )
    else:
        message = f"no has_defect (or label) column in header {found!r}"
    return DataProblem(table.file, message, row=table.header_line)


def _image_of(row: list[str], i_id: int | None, i_key: int | None) -> str:
    if i_id is not None:
        return row[i_id].strip()
    key = row[i_key].strip()
    image_id, sep, _ = key.rpartition("_")
    return image_id if sep and image_id else key


def image_rows(
    table: CsvTable, *, labels: bool = False
) -> tuple[list[ImageRow], list[DataProblem]]:
    """The image of every row of an image table, mask table or plain list (duplicates kept:
    a mask table names each image once per class). ``labels=True`` requires a ``has_defect``
    (or ``label``) column and reads it."""
    f = table.file
    if _is_plain_list(table) and not labels:
        every = [(table.header_line, table.raw_header), *table.rows]
        return [ImageRow(r[0].strip(), line) for line, r in every if r[0].strip()], []
    i_id = table.column(*ID_COLUMNS)
    i_key = table.column(OLD_KEY_COLUMN) if i_id is None else None
    i_lab = table.column(*LABEL_COLUMNS) if labels else None
    if (i_id is None and i_key is None) or (labels and i_lab is None):
        return [], [_columns_problem(table, has_id=i_id is not None or i_key is not None)]
    i_image = i_id if i_id is not None else i_key
    used = max(i for i in (i_image, i_lab) if i is not None)
    out: list[ImageRow] = []
    problems: list[DataProblem] = []
    for line, row in table.rows:
        if len(row) <= used:
            problems.append(DataProblem(f, f"too few fields ({len(row)})", row=line))
            continue
        image_id = _image_of(row, i_id, i_key)
        if not image_id:
            field = table.raw_header[i_image]
            problems.append(DataProblem(f, "empty image id", row=line, field=field))
            continue
        value = parse_flag(row[i_lab]) if i_lab is not None else None
        if i_lab is not None and value is None:
            problems.append(
                DataProblem(
                    f,
                    f"{image_id}: label {row[i_lab]!r} is not 0/1 (or true/false)",
                    row=line,
                    field=table.header[i_lab],
                )
            )
            continue
        out.append(ImageRow(image_id, line, value))
    return out, problems


def read_image_rows(
    path: str | Path, *, labels: bool = False
) -> tuple[list[ImageRow], list[DataProblem]]:
    """Read an image table, mask table or plain id list: its rows and every problem."""
    table, problems = read_table(path)
    if table is None:
        return [], problems
    return image_rows(table, labels=labels)


def load_image_ids(path: str | Path) -> list[str]:
    """The distinct image ids of any image table, mask table or plain list, in file order;
    raise :class:`DataError` listing every problem. What ``score --images`` and ``predict``
    take, so both accept the same files."""
    rows, problems = read_image_rows(path)
    if problems:
        raise DataError(problems)
    if not rows:
        raise DataError([DataProblem(str(path), "lists no image ids")])
    return list(dict.fromkeys(r.image_id for r in rows))
