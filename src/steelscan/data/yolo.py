"""Reader and writer for the YOLO layout (Ultralytics, Roboflow, CVAT and Label Studio exports).

Layout: images under an ``images`` folder (``images/``, ``images/train/``, ``train/images/``...)
and, for each, a text file at the same path with the last ``images`` replaced by ``labels`` and
the suffix by ``.txt`` (Ultralytics' own rule). Class names come from ``data.yaml`` (or
``dataset.yaml``; ``names:`` as a list or a ``{index: name}`` mapping), else from
``classes.txt`` (line 1 is class 0, as darknet and Label Studio write it). Class indices are
0-based in the files, and the dataset's ``class_ids`` are those indices.

Each line is ``class cx cy w h`` (a box, normalised to the image's width and height) or
``class x1 y1 x2 y2 ...`` (a segment polygon of at least 3 points). A dataset with no segment
is a box dataset (``has_masks=False``, like VOC); in one with segments, boxes are drawn as
filled rectangles. An image with no label file (or an empty one) is clean; a label file with
no image is a problem. Image ids are paths relative to ``images/`` when there is one such
folder, else relative to the root. ``labels.csv`` at the root adds image-level classes.

The writer writes boxes only: a YOLO file cannot hold a pixel mask exactly, so the converter
asks for ``--boxes`` (each mask component's box) before it writes masks as YOLO.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from steelscan.data._common import read_sizes
from steelscan.data._labels import apply_labels, read_labels_csv
from steelscan.data._masks import OUTSIDE_TOLERANCE, coco_rles, union_to_kaggle
from steelscan.data.records import AnnotatedImage, Box, DataProblem, Dataset
from steelscan.imageio import IMAGE_SUFFIXES

YAML_FILES = ("data.yaml", "data.yml", "dataset.yaml", "dataset.yml")
NAMES_FILE = "classes.txt"
LABELS = "labels"


def _image_dirs(root: Path) -> list[Path]:
    """``images`` folders at the root or one level down (``train/images``)."""
    found = [root / "images"] if (root / "images").is_dir() else []
    found += sorted(p for p in root.glob("*/images") if p.is_dir())
    return found


def _names_file(root: Path) -> Path | None:
    for name in (*YAML_FILES, NAMES_FILE):
        if (root / name).is_file():
            return root / name
    return None


def is_yolo(root: Path) -> bool:
    """Class names (data.yaml or classes.txt) and a ``labels`` folder beside an ``images`` one."""
    return _names_file(root) is not None and any(
        (d.parent / LABELS).is_dir() for d in _image_dirs(root)
    )


def read_names(path: Path) -> tuple[tuple[str, ...], list[DataProblem]]:
    """Class names in index order (0-based) from data.yaml or classes.txt."""
    f = str(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        return (), [DataProblem(f, f"cannot read class names ({exc})")]
    if path.name == NAMES_FILE:
        return tuple(line.strip() for line in text.splitlines() if line.strip()), []
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        return (), [DataProblem(f, f"not valid YAML ({exc})")]
    names = data.get("names") if isinstance(data, dict) else None
    if isinstance(names, dict):
        try:
            idx = sorted(int(k) for k in names)
        except (TypeError, ValueError):
            return (), [
                DataProblem(f, "names: keys must be class indices 0, 1, ...", field="names")
            ]
        if idx != list(range(len(idx))):
            return (), [
                DataProblem(f, f"names: indices {idx} are not 0..{len(idx) - 1}", field="names")
            ]
        names = [names.get(i, names.get(str(i))) for i in idx]
    if not isinstance(names, list) or not names:
        return (), [DataProblem(f, "no 'names:' list of class names", field="names")]
    out = tuple(str(n).strip() for n in names)
    nc = data.get("nc")
    if isinstance(nc, int) and nc != len(out):
        return out, [DataProblem(f, f"nc is {nc} but names lists {len(out)} classes", field="nc")]
    return out, []


def _label_path(image: Path, images_dir: Path) -> Path:
    rel = image.relative_to(images_dir).with_suffix(".txt")
    return images_dir.parent / LABELS / rel


@dataclass
class _Parsed:
    boxes: list[Box] = field(default_factory=list)
    polygons: dict[int, list[list[float]]] = field(default_factory=dict)  # pixel coordinates


def _parse_line(
    values: list[str], shape: tuple[int, int], n_classes: int, validate: bool
) -> tuple[int, list[float]] | str:
    """``(class, pixel coordinates)`` of one label line, or what is wrong with it."""
    h, w = shape
    try:
        k = int(values[0])
        coords = [float(v) for v in values[1:]]
    except ValueError:
        return f"not numbers: {' '.join(values)[:60]!r}"
    if not 0 <= k < n_classes:
        return f"unknown class {k} (data names {n_classes} classes: 0..{n_classes - 1})"
    if len(coords) != 4 and (len(coords) < 6 or len(coords) % 2):
        return f"{len(coords)} coordinates: expected 4 (a box) or x,y pairs of 3+ points"
    if len(coords) == 4:
        cx, cy, bw, bh = coords[0] * w, coords[1] * h, coords[2] * w, coords[3] * h
        pixels = [cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2]
    else:
        pixels = [v * (w if i % 2 == 0 else h) for i, v in enumerate(coords)]
    xs, ys = pixels[0::2], pixels[1::2]
    t = OUTSIDE_TOLERANCE
    if validate and (min(xs) < -t or max(xs) > w + t or min(ys) < -t or max(ys) > h + t):
        kind = "box" if len(coords) == 4 else "polygon"
        return f"{kind} outside the {w}x{h} image (normalised coordinates must be in 0..1)"
    return k, pixels


def _parse_file(
    path: Path, shape: tuple[int, int], n_classes: int, validate: bool
) -> tuple[_Parsed, list[DataProblem]]:
    out, problems = _Parsed(), []
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        return out, [DataProblem(str(path), f"cannot read file ({exc})")]
    h, w = shape
    for line_no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        got = _parse_line(line.split(), shape, n_classes, validate)
        if isinstance(got, str):
            problems.append(DataProblem(str(path), got, row=line_no))
            continue
        k, px = got
        if len(px) == 4:
            x1, y1 = max(0, round(px[0])), max(0, round(px[1]))
            x2, y2 = min(w, round(px[2])), min(h, round(px[3]))
            if x2 <= x1 or y2 <= y1:
                problems.append(DataProblem(str(path), "empty box (under a pixel)", row=line_no))
                continue
            out.boxes.append(Box(k, x1, y1, x2, y2))
        else:
            out.polygons.setdefault(k, []).append(px)
    return out, problems


def _find_images(root: Path) -> tuple[list[tuple[Path, Path]], list[DataProblem]]:
    """Every (image, its images folder), and every label file that has no image."""
    pairs: list[tuple[Path, Path]] = []
    problems: list[DataProblem] = []
    for d in _image_dirs(root):
        images = sorted(
            p for p in d.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        )
        pairs += [(p, d) for p in images]
        expected = {_label_path(p, d) for p in images}
        labels_dir = d.parent / LABELS
        for t in sorted(labels_dir.rglob("*.txt")) if labels_dir.is_dir() else []:
            if t not in expected and t.name != NAMES_FILE:
                problems.append(
                    DataProblem(str(t), f"label file without image (no {t.stem}.* under {d})")
                )
    return pairs, problems


def _record(
    image: Path,
    image_id: str,
    shape: tuple[int, int],
    parsed: _Parsed,
    classes: tuple[str, ...],
    has_masks: bool,
) -> AnnotatedImage:
    rles: dict[int, str] = {}
    boxes = tuple(parsed.boxes)
    if has_masks:
        polys = {k: list(v) for k, v in parsed.polygons.items()}
        for b in boxes:  # a box in a segment dataset: a filled rectangle
            polys.setdefault(b.class_index, []).append(
                [b.x1, b.y1, b.x2, b.y1, b.x2, b.y2, b.x1, b.y2]
            )
        rles = {k: union_to_kaggle(coco_rles(v, shape), shape) for k, v in sorted(polys.items())}
        rles = {k: v for k, v in rles.items() if v}
        boxes = ()
    present = frozenset(rles) | {b.class_index for b in boxes}
    h, w = shape
    return AnnotatedImage(
        image_id=image_id,
        path=image,
        height=h,
        width=w,
        classes=classes,
        rles=rles,
        boxes=boxes,
        labels=present if not has_masks else None,
        has_defect=bool(present),
    )


def scan_yolo(root: Path, *, validate: bool = True) -> tuple[Dataset, list[DataProblem]]:
    """Read a YOLO dataset; the dataset plus EVERY problem found."""
    root = Path(root)
    names_file = _names_file(root)
    classes, problems = read_names(names_file) if names_file else ((), [])
    if names_file is None:
        problems = [
            DataProblem(str(root), f"no class names ({', '.join(YAML_FILES)} or {NAMES_FILE})")
        ]
    pairs, probs = _find_images(root)
    problems += probs
    sizes, probs = read_sizes(p for p, _ in pairs)
    problems += probs
    single = len(_image_dirs(root)) == 1
    parsed: dict[Path, tuple[str, _Parsed]] = {}
    for image, d in pairs:
        if image not in sizes:
            continue
        label = _label_path(image, d)
        got, probs = (
            _parse_file(label, sizes[image], len(classes), validate)
            if label.is_file()
            else (_Parsed(), [])
        )
        problems += probs
        image_id = (image.relative_to(d) if single else image.relative_to(root)).as_posix()
        parsed[image] = (image_id, got)
    has_masks = any(p.polygons for _, p in parsed.values())
    records = [
        _record(img, iid, sizes[img], p, classes, has_masks) for img, (iid, p) in parsed.items()
    ]
    records.sort(key=lambda r: r.image_id)
    labels, probs = read_labels_csv(root, classes, {r.image_id for r in records})
    apply_labels(records, labels)
    problems += probs
    class_ids = tuple(range(len(classes)))
    return Dataset(root, "yolo", classes, class_ids, records, has_masks=has_masks), problems


def write_yolo(ds: Dataset, out: Path, names: dict[str, str]) -> int:
    """Write ``labels/<stem>.txt`` for every record with boxes, and ``data.yaml``.

    Only box records are written (the converter turns masks into component boxes first, with
    ``--boxes``). Returns the number of boxes written.
    """
    n = 0
    for r in ds.records:
        if not r.boxes:
            continue
        path = out / LABELS / Path(names[r.image_id]).with_suffix(".txt")
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = []
        for b in r.boxes:
            cx, cy = (b.x1 + b.x2) / 2 / r.width, (b.y1 + b.y2) / 2 / r.height
            bw, bh = (b.x2 - b.x1) / r.width, (b.y2 - b.y1) / r.height
            lines.append(f"{b.class_index} {cx:.7f} {cy:.7f} {bw:.7f} {bh:.7f}")
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        n += len(lines)
    (out / LABELS).mkdir(exist_ok=True)
    doc = {
        "path": ".",
        "train": "images",
        "val": "images",
        "nc": len(ds.classes),
        "names": dict(enumerate(ds.classes)),
    }
    (out / "data.yaml").write_text(
        yaml.safe_dump(doc, sort_keys=False, allow_unicode=True), encoding="utf-8"
    )
    return n
