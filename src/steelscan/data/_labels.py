"""Class-name files and image-level labels, shared by the readers and writers of every layout.

* ``classes.txt`` (one name per line) or ``classes.yaml``/``classes.yml`` (``names:`` as a list,
  or a ``{value: name}`` mapping) name the classes of an index mask or of a Severstal-layout
  folder: line k is class value k (1-based: 0 is the background). A first line that says
  ``background`` (or ``_background_``, ``__background__``, ``bg``; labelme writes one) *is*
  value 0 and is not a class.
* ``labels.csv`` (``image,label``; the NEU-DET file VOC reads) gives image-level classes that no
  mask or box carries: one row per image and class, several rows per image allowed, an empty
  label meaning "defective, class unknown". The converter writes it wherever the target layout
  has no place of its own for such labels, so they survive a round trip.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path

import yaml

from steelscan.data.kaggle_csv import read_table
from steelscan.data.records import AnnotatedImage, DataProblem

CLASS_FILES = ("classes.txt", "classes.yaml", "classes.yml")
BACKGROUND_NAMES = frozenset({"background", "_background_", "__background__", "bg"})
LABELS_FILE = "labels.csv"


def find_class_file(*folders: Path) -> Path | None:
    """The first class-name file in ``folders`` (in that order), or None."""
    for folder in folders:
        for name in CLASS_FILES:
            if (folder / name).is_file():
                return folder / name
    return None


def _from_list(names: list) -> tuple[dict[int, str], list[DataProblem]]:
    names = [str(n).strip() for n in names if str(n).strip()]
    if names and names[0].casefold() in BACKGROUND_NAMES:
        names = names[1:]
    return {k: n for k, n in enumerate(names, start=1)}, []


def _from_mapping(names: dict, f: str) -> tuple[dict[int, str], list[DataProblem]]:
    out: dict[int, str] = {}
    for key, name in names.items():
        try:
            value = int(key)
        except (TypeError, ValueError):
            return {}, [DataProblem(f, f"class value {key!r} is not an integer")]
        if value == 0 and str(name).casefold() in BACKGROUND_NAMES:
            continue
        if value < 1:
            return {}, [
                DataProblem(
                    f,
                    f"class value {value} ({name!r}): 0 is the background; classes "
                    "are numbered from 1",
                )
            ]
        out[value] = str(name).strip()
    return dict(sorted(out.items())), []


def read_class_map(path: Path) -> tuple[dict[int, str], list[DataProblem]]:
    """``{value: name}`` from a class-name file (values from 1), and what was wrong with it."""
    f = str(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        return {}, [DataProblem(f, f"cannot read class names ({exc})")]
    if path.suffix == ".txt":
        found, problems = _from_list(text.splitlines())
    else:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            return {}, [DataProblem(f, f"not valid YAML ({exc})")]
        names = data.get("names") if isinstance(data, dict) and "names" in data else data
        if isinstance(names, list):
            found, problems = _from_list(names)
        elif isinstance(names, dict):
            found, problems = _from_mapping(names, f)
        else:
            return {}, [DataProblem(f, "expected 'names:' as a list or a {value: name} mapping")]
    if not problems and not found:
        problems = [DataProblem(f, "names no classes")]
    dupes = sorted({n for n in found.values() if list(found.values()).count(n) > 1})
    if dupes:
        problems.append(DataProblem(f, f"class names given twice: {', '.join(dupes)}"))
    return found, problems


def write_class_names(path: Path, classes: Iterable[str]) -> None:
    """One name per line: line k is class value k."""
    path.write_text("".join(f"{c}\n" for c in classes), encoding="utf-8")


def read_labels_csv(
    root: Path, classes: tuple[str, ...], ids: set[str]
) -> tuple[dict[str, set[int | None]], list[DataProblem]]:
    """Image-level classes from ``root/labels.csv``: id -> class indices (None: class unknown)."""
    path = root / LABELS_FILE
    out: dict[str, set[int | None]] = {}
    if not path.is_file():
        return out, []
    table, problems = read_table(path)
    if table is None:
        return out, problems
    f = str(path)
    i_img, i_lab = table.column("image", "imageid", "image_id", "filename"), table.column("label")
    if i_img is None or i_lab is None:
        found = ",".join(table.header)
        return out, [
            DataProblem(f, f"unrecognised header {found!r}: expected 'image,label'", row=1)
        ]
    for line, row in table.rows:
        if len(row) <= i_img:
            problems.append(DataProblem(f, f"too few fields ({len(row)})", row=line))
            continue
        image = row[i_img].strip()
        label = row[i_lab].strip() if len(row) > i_lab else ""
        if image not in ids:
            problems.append(DataProblem(f, f"image {image!r} is not in the dataset", row=line))
        elif label and label not in classes:
            problems.append(
                DataProblem(
                    f,
                    f"{image}: unknown class {label!r} (expected one of {list(classes)})",
                    row=line,
                    field="label",
                )
            )
        else:
            out.setdefault(image, set()).add(classes.index(label) if label else None)
    return out, problems


def apply_labels(records: Iterable[AnnotatedImage], labels: dict[str, set[int | None]]) -> None:
    """Add ``labels.csv``'s image-level classes to the records (they become defective)."""
    for r in records:
        if r.image_id in labels:
            known = {k for k in labels[r.image_id] if k is not None}
            r.labels = frozenset(r.labels or ()) | known
            r.has_defect = True


def uncovered_labels(record: AnnotatedImage) -> list[str]:
    """What only an image-level label says: classes without a mask or box, or ``""`` for a
    defective image whose class nobody named. Empty when masks and boxes say it all."""
    drawn = {k for k, v in record.rles.items() if v} | {b.class_index for b in record.boxes}
    extra = sorted(set(record.labels or ()) - drawn)
    if extra:
        return [record.classes[k] for k in extra]
    if record.defective and not drawn:
        return [""]
    return []


def write_labels_csv(root: Path, rows: list[tuple[str, str]]) -> None:
    """Write ``labels.csv`` (only when there is something to say)."""
    if not rows:
        return
    with open(root / LABELS_FILE, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["image", "label"])
        w.writerows(rows)
