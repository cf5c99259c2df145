"""Reader for the Pascal VOC layout (NEU-DET): ``images/`` + ``annotations/*.xml`` boxes.

Class names are every ``<object><name>`` in the XML files, sorted (stable across runs and
machines). Boxes are converted from VOC's 1-based inclusive corners to 0-based exclusive ones
(``x1 = xmin - 1``, ``x2 = xmax``) and clipped to the image. Tolerated quirks of real copies:
``<filename>`` without its extension, boxes of a second class in one image, an XML whose name
differs from its image's (matched by the XML's stem first, then by ``<filename>``'s stem).
An image with no XML is a record without boxes (a defect-free image), as in Severstal.
Problems name the file and, for XML syntax errors, the LINE number.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from steelscan.data._common import read_sizes
from steelscan.data.image_files import ImageFinder
from steelscan.data.kaggle_csv import read_table
from steelscan.data.records import AnnotatedImage, Box, DataError, DataProblem, Dataset

ANNOTATION_DIRS = ("annotations", "Annotations")
IMAGE_DIRS = ("images", "JPEGImages")
_COORDS = ("xmin", "ymin", "xmax", "ymax")


def _first_dir(root: Path, names: tuple[str, ...]) -> Path | None:
    for n in names:
        if (root / n).is_dir():
            return root / n
    return None


def is_voc(root: Path) -> bool:
    ann = _first_dir(root, ANNOTATION_DIRS)
    return ann is not None and any(ann.glob("*.xml"))


@dataclass
class _RawBox:
    name: str
    coords: tuple[float, float, float, float]
    where: str


@dataclass
class _RawXml:
    path: Path
    filename: str
    size: tuple[int, int] | None  # (H, W) as the XML states it
    boxes: list[_RawBox] = field(default_factory=list)


def _text(node: ET.Element | None, tag: str) -> str | None:
    child = node.find(tag) if node is not None else None
    return child.text.strip() if child is not None and child.text else None


def _parse_xml(path: Path) -> tuple[_RawXml | None, list[DataProblem]]:
    f = str(path)
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        return None, [DataProblem(f, f"not valid XML ({exc})", row=exc.position[0])]
    except OSError as exc:
        return None, [DataProblem(f, f"cannot read file ({exc.strerror or exc})")]
    problems: list[DataProblem] = []
    size = None
    size_node = root.find("size")
    if size_node is not None:
        try:
            size = (int(_text(size_node, "height") or ""), int(_text(size_node, "width") or ""))
        except ValueError:
            problems.append(DataProblem(f, "size/width or size/height is not an integer"))
    raw = _RawXml(path, _text(root, "filename") or "", size)
    for k, obj in enumerate(root.iter("object"), start=1):
        where = f"object {k}"
        name = _text(obj, "name")
        if not name:
            problems.append(DataProblem(f, "object has no <name>", field=where))
            continue
        bb = obj.find("bndbox")
        if bb is None:
            problems.append(DataProblem(f, f"{name!r} object has no <bndbox>", field=where))
            continue
        try:
            coords = tuple(float(_text(bb, c) or "") for c in _COORDS)
        except ValueError:
            given = {c: _text(bb, c) for c in _COORDS}
            problems.append(
                DataProblem(
                    f, f"{name!r} box has a missing or non-numeric corner {given}", field=where
                )
            )
            continue
        raw.boxes.append(_RawBox(name, coords, where))  # type: ignore[arg-type]
    return raw, problems


def _convert(
    raw: _RawBox, index: int, h: int, w: int, f: str
) -> tuple[Box | None, DataProblem | None]:
    """VOC 1-based inclusive -> 0-based exclusive, clipped to the image."""
    xmin, ymin, xmax, ymax = (round(c) for c in raw.coords)
    x1, y1 = max(0, xmin - 1), max(0, ymin - 1)
    x2, y2 = min(w, xmax), min(h, ymax)
    if x2 <= x1 or y2 <= y1:
        return None, DataProblem(
            f,
            f"{raw.name!r} box (xmin={xmin}, ymin={ymin}, xmax={xmax}, ymax={ymax}) is empty "
            f"or outside the {w}x{h} image",
            field=raw.where,
        )
    return Box(index, x1, y1, x2, y2), None


def _image_labels(
    root: Path, classes: tuple[str, ...], ids: set[str]
) -> tuple[dict[str, int], list[DataProblem]]:
    """Optional ``labels.csv`` (``image,label``): the image-level class of each image."""
    path = root / "labels.csv"
    out: dict[str, int] = {}
    if not path.is_file():
        return out, []
    table, problems = read_table(path)
    if table is None:
        return out, problems
    f = str(path)
    i_img, i_lab = table.column("image", "imageid", "filename"), table.column("label")
    if i_img is None or i_lab is None:
        return out, [
            DataProblem(
                f,
                f"unrecognised header {','.join(table.header)!r}: expected 'image' and 'label'",
                row=1,
            )
        ]
    for line, row in table.rows:
        if len(row) <= max(i_img, i_lab):
            problems.append(DataProblem(f, f"too few fields ({len(row)})", row=line))
            continue
        image, label = row[i_img].strip(), row[i_lab].strip()
        if image not in ids:
            problems.append(DataProblem(f, f"image {image!r} is not in the dataset", row=line))
        elif label not in classes:
            problems.append(
                DataProblem(
                    f,
                    f"{image}: label {label!r} is not one of the XML classes {list(classes)}",
                    row=line,
                    field="label",
                )
            )
        else:
            out[image] = classes.index(label)
    return out, problems


def _match_annotations(
    ann_dir: Path, folder: ImageFinder
) -> tuple[dict[Path, _RawXml], list[DataProblem]]:
    """Each XML with its image (by the XML's stem, then ``<filename>``); one XML per image."""
    problems: list[DataProblem] = []
    raws: dict[Path, _RawXml] = {}  # image path -> its annotation
    for xml_path in sorted(ann_dir.glob("*.xml")):
        raw, probs = _parse_xml(xml_path)
        problems += probs
        if raw is None:
            continue
        image, why = folder.find(xml_path.stem)
        if image is None and raw.filename:
            image, _ = folder.find(raw.filename)
        if image is None:
            problems.append(
                DataProblem(
                    str(xml_path),
                    f"no image for this annotation (by file name {xml_path.stem!r} or "
                    f"<filename> {raw.filename!r}): {why}",
                )
            )
        elif image in raws:
            problems.append(
                DataProblem(
                    str(xml_path), f"{image.name} is already annotated by {raws[image].path.name}"
                )
            )
        else:
            raws[image] = raw
    return raws, problems


def _boxes(
    raw: _RawXml, path: Path, h: int, w: int, classes: tuple[str, ...], *, validate: bool
) -> tuple[list[Box], list[DataProblem]]:
    """One XML's boxes converted to the real image's pixels, and what was wrong with them."""
    f = str(raw.path)
    problems: list[DataProblem] = []
    if validate and raw.size is not None and raw.size != (h, w):
        problems.append(
            DataProblem(
                f,
                f"states size {raw.size[1]}x{raw.size[0]} but {path.name} is {w}x{h} "
                "(width x height); boxes are clipped to the real image",
                field="size",
            )
        )
    boxes: list[Box] = []
    for rb in raw.boxes:
        box, problem = _convert(rb, classes.index(rb.name), h, w, f)
        if problem:
            problems.append(problem)
        elif box:
            boxes.append(box)
    return boxes, problems


def scan_voc(root: Path, *, validate: bool = True) -> tuple[Dataset, list[DataProblem]]:
    """Read a VOC folder and return the dataset plus EVERY problem found (never raises on data).

    ``validate=False`` skips comparing each XML's stated size with its image's real size.
    """
    root = Path(root)
    ann_dir = _first_dir(root, ANNOTATION_DIRS)
    img_dir = _first_dir(root, IMAGE_DIRS)
    if ann_dir is None or img_dir is None:
        missing = "annotations/" if ann_dir is None else "images/"
        problem = DataProblem(str(root), f"no {missing} folder (Pascal VOC layout)")
        return Dataset(root, "voc", (), (), [], has_masks=False), [problem]
    folder = ImageFinder.scan(img_dir)
    raws, problems = _match_annotations(ann_dir, folder)
    classes = tuple(sorted({b.name for r in raws.values() for b in r.boxes}))
    sizes, probs = read_sizes(sorted(folder.files))
    problems += probs

    records = []
    for path in sorted(folder.files):
        if path not in sizes:
            continue  # unreadable: already a problem
        h, w = sizes[path]
        boxes: list[Box] = []
        if path in raws:
            boxes, probs = _boxes(raws[path], path, h, w, classes, validate=validate)
            problems += probs
        records.append(
            AnnotatedImage(
                image_id=path.name,
                path=path,
                height=h,
                width=w,
                classes=classes,
                boxes=tuple(boxes),
                labels=frozenset(b.class_index for b in boxes),
                has_defect=bool(boxes),
            )
        )

    image_labels, probs = _image_labels(root, classes, {r.image_id for r in records})
    problems += probs
    for r in records:  # labels = every class seen in the image, boxes and image-level label
        if r.image_id in image_labels:
            r.labels = frozenset(r.labels or ()) | {image_labels[r.image_id]}
            r.has_defect = True
    class_ids = tuple(range(1, len(classes) + 1))
    return Dataset(root, "voc", classes, class_ids, records, has_masks=False), problems


def load_voc(root: str | Path, *, validate: bool = True) -> Dataset:
    """Load a VOC-layout folder; raise :class:`DataError` listing every problem."""
    ds, problems = scan_voc(Path(root), validate=validate)
    if problems:
        raise DataError(problems)
    return ds
