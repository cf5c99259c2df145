"""Reader and writer for COCO instances JSON (CVAT, Label Studio, Roboflow, FiftyOne export it).

Found as: SRC itself when it is a ``.json`` file, else the one COCO file in the folder or its
``annotations/`` (``instances_*.json``, ``_annotations.coco.json``, ``result.json``, ...: any JSON
whose top level has ``images``). Images are found by ``file_name`` (a relative path) under the
JSON's folder, its ``images/``, the dataset root or the root's ``images/``, and last by base name
in those ``images/`` folders. Categories are classes by name, in category-id order; the ids are
kept as the dataset's ``class_ids``.

Segmentations (polygons, uncompressed and compressed RLE) are decoded with ``pycocotools.mask``;
all annotations of one category in one image are merged into that class's mask. An annotation
with no segmentation is a box; a dataset with no segmentation at all is a box dataset
(``has_masks=False``, like VOC), and in a dataset that has masks a bare box is drawn as a filled
rectangle. Each image keeps its own size; ``labels.csv`` beside it adds image-level classes.

The writer stores one annotation per image and class: its mask as compressed RLE (exact), its
bbox and area; box records become bbox-only annotations (``segmentation: []``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from steelscan import rle as rle_codec
from steelscan.data._common import read_sizes
from steelscan.data._labels import apply_labels, read_labels_csv
from steelscan.data._masks import coco_rles, kaggle_to_coco, polygon_outside, union_to_kaggle
from steelscan.data.image_files import ImageFinder
from steelscan.data.records import AnnotatedImage, Box, DataProblem, Dataset

ANNOTATION_FILE = "annotations.json"
_PEEK = 1 << 16


def _looks_like_coco(path: Path) -> bool:
    """A JSON object with an ``images`` key near its start (read 64 KiB, not the whole file)."""
    try:
        with open(path, encoding="utf-8-sig", errors="replace") as f:
            head = f.read(_PEEK)
    except OSError:
        return False
    return head.lstrip().startswith("{") and '"images"' in head


def coco_files(root: Path) -> list[Path]:
    """The COCO JSON files of a dataset folder (itself, when it is a JSON file)."""
    if root.is_file():
        return [root] if root.suffix.lower() == ".json" else []
    found = []
    for folder in (root, root / "annotations"):
        if folder.is_dir():
            found += [p for p in sorted(folder.glob("*.json")) if _looks_like_coco(p)]
    return found


def is_coco(root: Path) -> bool:
    return bool(coco_files(root))


@dataclass
class _Image:
    entry_id: int
    file_name: str
    stated: tuple[int, int] | None
    path: Path | None = None
    segs: dict[int, list] = field(default_factory=dict)  # class index -> COCO RLE objects
    boxes: list[Box] = field(default_factory=list)


def _load_json(path: Path) -> tuple[dict | None, list[DataProblem]]:
    f = str(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as exc:
        return None, [DataProblem(f, f"not valid JSON ({exc.msg})", row=exc.lineno)]
    except (OSError, UnicodeDecodeError) as exc:
        return None, [DataProblem(f, f"cannot read file ({exc})")]
    if not isinstance(data, dict):
        return None, [DataProblem(f, "expected a JSON object with images, annotations, categories")]
    missing = [k for k in ("images", "categories") if not isinstance(data.get(k), list)]
    if missing:
        return None, [DataProblem(f, f"no {' or '.join(missing)} list (not a COCO instances file)")]
    if not isinstance(data.get("annotations", []), list):
        return None, [DataProblem(f, "'annotations' is not a list")]
    return data, []


def _categories(
    data: dict, f: str
) -> tuple[dict[int, int], tuple[str, ...], tuple[int, ...], list]:
    """category id -> class index, the names and ids (in id order), and their problems."""
    problems: list[DataProblem] = []
    cats: dict[int, str] = {}
    for c in data["categories"]:
        entry = c if isinstance(c, dict) else {}
        cid, name = entry.get("id"), entry.get("name")
        if not isinstance(cid, int) or not isinstance(name, str) or not name.strip():
            problems.append(DataProblem(f, f"category {c!r} needs an integer id and a name"))
        elif cid in cats:
            problems.append(DataProblem(f, f"category id {cid} given twice"))
        elif name.strip() in cats.values():
            problems.append(DataProblem(f, f"category name {name!r} given twice"))
        else:
            cats[cid] = name.strip()
    ids = tuple(sorted(cats))
    return {cid: i for i, cid in enumerate(ids)}, tuple(cats[i] for i in ids), ids, problems


def _image_finders(json_path: Path, root: Path) -> tuple[list[Path], ImageFinder]:
    base = json_path.parent
    bases = list(
        dict.fromkeys([base, base / "images", root, root / "images", base.parent / "images"])
    )
    return bases, ImageFinder.scan(*[b for b in bases if b.name == "images"])


def _images(
    data: dict, f: str, json_path: Path, root: Path
) -> tuple[dict[int, _Image], list[DataProblem]]:
    """The image entries with their files, every missing or duplicate one a problem."""
    bases, finder = _image_finders(json_path, root)
    out: dict[int, _Image] = {}
    names: set[str] = set()
    problems: list[DataProblem] = []
    for e in data["images"]:
        iid = e.get("id") if isinstance(e, dict) else None
        name = e.get("file_name") if isinstance(e, dict) else None
        if not isinstance(iid, int) or not isinstance(name, str) or not name:
            problems.append(
                DataProblem(f, f"image entry {e!r:.80} needs an integer id and a file_name")
            )
            continue
        if iid in out or name in names:
            problems.append(DataProblem(f, f"image id {iid} / file_name {name!r} given twice"))
            continue
        h, w = e.get("height"), e.get("width")
        img = _Image(iid, name, (h, w) if isinstance(h, int) and isinstance(w, int) else None)
        img.path = next((b / name for b in bases if (b / name).is_file()), None)
        if img.path is None:
            img.path, _ = finder.find(Path(name).name)
        if img.path is None:
            where = ", ".join(str(b) for b in bases)
            problems.append(DataProblem(f, f"image {name!r} (id {iid}) not found under {where}"))
            continue
        names.add(name)
        out[iid] = img
    return out, problems


def _box(bbox: object, shape: tuple[int, int], k: int) -> Box | str:
    """A COCO ``[x, y, w, h]`` (continuous pixels) as a 0-based exclusive box, or why not."""
    if not (
        isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, int | float) for v in bbox)
    ):
        return f"bbox {bbox!r} is not [x, y, width, height]"
    x, y, bw, bh = (float(v) for v in bbox)
    h, w = shape
    x1, y1 = max(0, round(x)), max(0, round(y))
    x2, y2 = min(w, round(x + bw)), min(h, round(y + bh))
    if bw <= 0 or bh <= 0 or x2 <= x1 or y2 <= y1:
        return f"bbox {bbox} is empty or outside the {w}x{h} image"
    return Box(k, x1, y1, x2, y2)


def _segmentation_problem(seg: object, shape: tuple[int, int], validate: bool) -> str | None:
    """What is wrong with one segmentation against its image's (H, W), if anything."""
    h, w = shape
    if isinstance(seg, dict):
        size = seg.get("size")
        if not (isinstance(size, list) and len(size) == 2) or "counts" not in seg:
            return "RLE segmentation needs 'size' [height, width] and 'counts'"
        if tuple(size) != (h, w):
            return f"RLE mask is {size[1]}x{size[0]} but its image is {w}x{h} (width x height)"
        return None
    if not isinstance(seg, list) or not all(isinstance(p, list) for p in seg):
        return "segmentation is neither polygons (a list of lists) nor RLE"
    for poly in seg:
        if len(poly) < 6 or len(poly) % 2 or not all(isinstance(v, int | float) for v in poly):
            return f"polygon of {len(poly)} values: expected x,y pairs of at least 3 points"
        bad = polygon_outside(poly, shape) if validate else None
        if bad is not None:
            return f"polygon outside the {w}x{h} image (vertex x={bad[0]:g}, y={bad[1]:g})"
    return None


def _annotations(
    data: dict,
    f: str,
    images: dict[int, _Image],
    cat_index: dict[int, int],
    sizes: dict[Path, tuple[int, int]],
    names: tuple[str, ...],
    validate: bool,
) -> list[DataProblem]:
    """Attach each annotation to its image; unknown images/categories, bad shapes: problems."""
    problems: list[DataProblem] = []
    for n, a in enumerate(data.get("annotations", []), start=1):
        aid = a.get("id", n) if isinstance(a, dict) else n
        where = f"annotation id {aid}"
        if not isinstance(a, dict):
            problems.append(DataProblem(f, "annotation is not an object", field=where))
            continue
        img = images.get(a.get("image_id"))
        if img is None or img.path not in sizes:
            if img is None:
                problems.append(
                    DataProblem(f, f"unknown image_id {a.get('image_id')!r}", field=where)
                )
            continue
        k = cat_index.get(a.get("category_id"))
        if k is None:
            problems.append(
                DataProblem(
                    f,
                    f"{img.file_name}: unknown category_id {a.get('category_id')!r} "
                    f"(categories: {', '.join(names)})",
                    field=where,
                )
            )
            continue
        shape = sizes[img.path]
        seg = a.get("segmentation")
        if seg:
            why = _segmentation_problem(seg, shape, validate)
            if why is None:
                try:
                    img.segs.setdefault(k, []).extend(coco_rles(seg, shape))
                except (TypeError, ValueError) as exc:
                    why = f"segmentation cannot be decoded ({exc})"
        else:
            box = _box(a.get("bbox"), shape, k)
            why = box if isinstance(box, str) else None
            if isinstance(box, Box):
                img.boxes.append(box)
        if why:
            problems.append(DataProblem(f, f"{img.file_name}: {why}", field=where))
    return problems


def _size_problems(
    images: dict[int, _Image], sizes: dict[Path, tuple[int, int]], f: str
) -> list[DataProblem]:
    out = []
    for img in images.values():
        real = sizes.get(img.path)
        if img.stated and real and img.stated != real:
            out.append(
                DataProblem(
                    f,
                    f"{img.file_name}: states {img.stated[1]}x{img.stated[0]} but the file is "
                    f"{real[1]}x{real[0]} (width x height)",
                    field=f"image id {img.entry_id}",
                )
            )
    return out


def _record(
    img: _Image, shape: tuple[int, int], classes: tuple[str, ...], has_masks: bool
) -> AnnotatedImage:
    """One image's record: a mask per category (their union), or boxes in a box dataset."""
    h, w = shape
    rles = {k: union_to_kaggle(segs, shape) for k, segs in sorted(img.segs.items())}
    boxes = tuple(img.boxes)
    if has_masks and boxes:  # a bare box in a mask dataset: a filled rectangle of its class
        for b in boxes:
            m = rle_codec.decode(rles.get(b.class_index, ""), shape).copy()
            m[b.y1 : b.y2, b.x1 : b.x2] = 1
            rles[b.class_index] = rle_codec.encode(m)
        boxes = ()
    rles = {k: v for k, v in sorted(rles.items()) if v}
    present = frozenset(rles) | {b.class_index for b in boxes}
    return AnnotatedImage(
        image_id=img.file_name,
        path=img.path,
        height=h,
        width=w,
        classes=classes,
        rles=rles,
        boxes=boxes,
        labels=present if boxes else None,
        has_defect=bool(present),
    )


def scan_coco(root: Path, *, validate: bool = True) -> tuple[Dataset, list[DataProblem]]:
    """Read a COCO dataset (folder or JSON file); the dataset plus EVERY problem found."""
    root = Path(root)
    folder = root.parent if root.is_file() else root
    if root.is_file() and folder.name == "annotations":  # CVAT: <dataset>/annotations/x.json
        folder = folder.parent
    files = coco_files(root)
    empty = Dataset(folder, "coco", (), (), [], has_masks=False)
    if not files:
        return empty, [DataProblem(str(root), "no COCO JSON file")]
    if len(files) > 1:
        listed = ", ".join(p.name for p in files)
        why = f"several COCO JSON files ({listed}); pass the one to read as the dataset path"
        return empty, [DataProblem(str(root), why)]
    data, problems = _load_json(files[0])
    if data is None:
        return empty, problems
    f = str(files[0])
    cat_index, classes, class_ids, problems = _categories(data, f)
    images, probs = _images(data, f, files[0], folder)
    problems += probs
    sizes, probs = read_sizes(sorted({i.path for i in images.values() if i.path}))
    problems += probs + (_size_problems(images, sizes, f) if validate else [])
    problems += _annotations(data, f, images, cat_index, sizes, classes, validate)
    has_masks = any(i.segs for i in images.values())
    records = [
        _record(img, sizes[img.path], classes, has_masks)
        for img in images.values()
        if img.path in sizes
    ]
    records.sort(key=lambda r: r.image_id)
    labels, probs = read_labels_csv(folder, classes, {r.image_id for r in records})
    apply_labels(records, labels)
    problems += probs
    return Dataset(folder, "coco", classes, class_ids, records, has_masks=has_masks), problems


def _category_ids(ds: Dataset) -> list[int]:
    ids = list(ds.class_ids)
    ok = (
        len(ids) == len(ds.classes)
        and len(set(ids)) == len(ids)
        and all(isinstance(i, int) and i > 0 for i in ids)
    )
    return ids if ok else list(range(1, len(ds.classes) + 1))


def coco_document(ds: Dataset, names: dict[str, str]) -> dict:
    """The COCO instances document of a dataset (``names``: image id -> written file name)."""
    from pycocotools import mask as coco_mask

    cat_ids = _category_ids(ds)
    images, annotations = [], []
    for i, r in enumerate(ds.records, start=1):
        images.append(
            {"id": i, "file_name": names[r.image_id], "height": r.height, "width": r.width}
        )
        for k, code in sorted(r.rles.items()):
            if not code:
                continue
            seg = kaggle_to_coco(code, r.shape)
            obj = {"size": seg["size"], "counts": seg["counts"].encode("ascii")}
            bbox = [float(v) for v in coco_mask.toBbox(obj)]
            annotations.append(
                {
                    "image_id": i,
                    "category_id": cat_ids[k],
                    "segmentation": seg,
                    "area": float(coco_mask.area(obj)),
                    "bbox": bbox,
                    "iscrowd": 0,
                }
            )
        for b in r.boxes:
            bw, bh = b.x2 - b.x1, b.y2 - b.y1
            annotations.append(
                {
                    "image_id": i,
                    "category_id": cat_ids[b.class_index],
                    "segmentation": [],
                    "area": float(bw * bh),
                    "bbox": [b.x1, b.y1, bw, bh],
                    "iscrowd": 0,
                }
            )
    for n, a in enumerate(annotations, start=1):
        a["id"] = n
    categories = [
        {"id": cid, "name": name, "supercategory": "defect"}
        for cid, name in zip(cat_ids, ds.classes, strict=True)
    ]
    info = {"description": f"converted by steelscan from {ds.layout} ({ds.root.name})"}
    return {"info": info, "images": images, "annotations": annotations, "categories": categories}


def write_coco(ds: Dataset, out: Path, names: dict[str, str]) -> int:
    """Write ``annotations.json``; return the number of annotations."""
    doc = coco_document(ds, names)
    (out / ANNOTATION_FILE).write_text(json.dumps(doc), encoding="utf-8")
    return len(doc["annotations"])
