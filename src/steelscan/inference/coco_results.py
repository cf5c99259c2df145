"""COCO results JSON for ``steelscan predict --format coco``: predictions for the COCO tools.

Two files, assembled from the journal's records like the other tables (streamed, in input
order, renamed into place at the end), so a killed and resumed run writes the same bytes:

``coco_results.json``
    A COCO *results* list, what ``COCO.loadRes``, ``COCOeval``, FiftyOne and CVAT take: one
    object per instance, ``{"image_id", "category_id", "segmentation": {"size": [h, w],
    "counts": <compressed RLE text>}, "score", "bbox": [x, y, w, h], "area"}``, at each image's
    own size.
``coco_images.json``
    A COCO dataset file (``images`` with ids, file names and sizes; ``categories``; no
    annotations) naming those ids, so ``COCO("coco_images.json").loadRes("coco_results.json")``
    works without ground truth.

Choices. An *instance* is one 8-connected component of a present class's final mask (the
components the boxes in predictions.jsonl are of): instance-segmentation tools and COCO ground
truth drawn in CVAT or Label Studio hold one annotation per object, so per-component instances
give a meaningful mask mAP. Its *score* is the mean, over the component's pixels, of the
probability the pixel threshold was applied to (the mask probability; times the class
probability under the soft gate), computed while inspecting and journaled with the record
(:data:`SCORES_KEY`, left out of predictions.jsonl). *Ids*: when an input is a COCO dataset its
own image ids and category ids (matched by class name) are reused, so ``COCOeval`` against that
file works as it is; other images get fresh ids after the largest one, in input order; a class
the dataset lacks keeps the model's class id (Severstal ``ClassId``) unless that is taken.

Detector boxes. With a detector in the bundle every box it kept (``detections`` in
predictions.jsonl, best first) is one more object, ``{"image_id", "category_id", "bbox": [x, y,
w, h], "score", "area"}`` with no ``segmentation``: the detector's own score and box, in the
same ids as the mask instances. A bundle with a segmenter *and* a detector writes both kinds,
each image's mask instances first, then its boxes; the key ``segmentation`` tells them apart, so
a mask evaluation (``COCOeval(..., "segm")``) takes the objects that have it and a box
evaluation of the detector (``"bbox"``) the objects that do not (run on every object, a box
evaluation would count each defect twice: once as a mask's extent, once as a detector box).
A detector-only bundle writes boxes alone, which ``loadRes`` and ``COCOeval(..., "bbox")`` take
as they are.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from steelscan import rle as rle_codec
from steelscan.inference.raw import RawPrediction
from steelscan.inference.result import InspectionResult
from steelscan.inference.writers import COCO_IMAGES, COCO_RESULTS, COMPONENT_SCORES, AtomicText

SCORES_KEY = COMPONENT_SCORES  # journal-only: per class, one score per component


def _components(mask: np.ndarray) -> tuple[int, np.ndarray]:
    """``(n, labels)`` of a mask's 8-connected components (label 0 the background).

    The one labelling used both when scoring (inspecting) and when encoding (assembling), so
    the i-th score is the i-th instance's."""
    m = np.ascontiguousarray(mask, dtype=np.uint8)
    n, labels, _stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
    return int(n) - 1, labels


def component_scores(
    result: InspectionResult, raw: RawPrediction | None, gate_mode: str
) -> list[list[float]]:
    """Per class, each component's mean thresholded probability (empty for absent classes).

    Without the raw probabilities (never in ``predict``) a class's probability stands in."""
    out: list[list[float]] = []
    for c in result.classes:
        if not c.present:
            out.append([])
            continue
        n, labels = _components(c.mask)
        if raw is None:
            out.append([round(float(c.probability), 6)] * n)
            continue
        probs = np.asarray(raw.mask_probs[c.index], dtype=np.float64)
        if gate_mode == "soft":
            probs = probs * float(np.float32(raw.class_probs[c.index]))
        flat = labels.ravel()
        sums = np.bincount(flat, weights=probs.ravel(), minlength=n + 1)
        counts = np.bincount(flat, minlength=n + 1)
        out.append([round(float(s / k), 6) for s, k in zip(sums[1:], counts[1:], strict=True)])
    return out


def component_rles(mask: np.ndarray) -> list[dict[str, Any]]:
    """The compressed COCO RLE of each component, in :func:`_components` order.

    Linear in the pixels however many components there are: each component's column-major
    runs are found from its sorted pixel positions and compressed by ``pycocotools``; the same
    bytes ``pycocotools.mask.encode`` gives for the component's Fortran-ordered uint8 mask
    (tests check it), without one full-image mask per component."""
    from pycocotools import mask as coco_mask

    h, w = mask.shape
    n, labels = _components(mask)
    flat = labels.ravel(order="F")  # COCO's pixel order: top to bottom, then left to right
    pos = np.flatnonzero(flat)
    lab = flat[pos]
    order = np.argsort(lab, kind="stable")
    pos, lab = pos[order], lab[order]
    bounds = np.searchsorted(lab, np.arange(1, n + 2))
    out = []
    for j in range(n):
        p = pos[bounds[j] : bounds[j + 1]]
        breaks = np.flatnonzero(np.diff(p) != 1) + 1
        starts = p[np.concatenate(([0], breaks))]
        ends = p[np.concatenate((breaks - 1, [len(p) - 1]))] + 1
        counts = np.empty(2 * len(starts) + 1, dtype=np.int64)
        counts[0:-1:2] = starts - np.concatenate(([0], ends[:-1]))
        counts[1::2] = ends - starts
        counts[-1] = h * w - ends[-1]
        out.append(coco_mask.frPyObjects({"size": [h, w], "counts": counts.tolist()}, h, w))
    return out


# -- ids ----------------------------------------------------------------------------------------
@dataclass
class CocoIds:
    """The COCO ids of one run: image id per input image id, category id per model class id."""

    images: dict[str, int]
    category_of: dict[int, int]
    categories: list[dict[str, Any]]
    notes: list[str] = field(default_factory=list)


def _dataset_ids(paths: Iterable[Path]) -> tuple[list[dict[str, int]], dict[str, int], list]:
    """``file_name -> id`` per COCO dataset among ``paths``, ``name -> id`` of their categories,
    and notes (the first dataset wins a name given two ids)."""
    from steelscan.data import detect_layout
    from steelscan.data.coco import coco_files
    from steelscan.data.records import DataError

    maps: list[dict[str, int]] = []
    cats: dict[str, int] = {}
    notes: list[str] = []
    for p in paths:
        try:
            if not p.is_dir() or detect_layout(p) != "coco":
                continue
        except DataError:
            continue
        files = coco_files(p)
        if len(files) != 1:
            continue
        try:
            data = json.loads(files[0].read_text(encoding="utf-8-sig"))
        except (OSError, ValueError) as exc:  # the reader reported it already; fresh ids
            notes.append(f"{files[0]}: cannot read its ids ({exc}); images get fresh ids")
            continue
        if not isinstance(data, dict):
            continue
        maps.append(
            {
                e["file_name"]: e["id"]
                for e in data.get("images") or []
                if isinstance(e, dict)
                and isinstance(e.get("id"), int)
                and isinstance(e.get("file_name"), str)
            }
        )
        for c in data.get("categories") or []:
            if not (isinstance(c, dict) and isinstance(c.get("id"), int)):
                continue
            name = str(c.get("name", "")).strip()
            if cats.setdefault(name, c["id"]) != c["id"]:
                notes.append(
                    f"{files[0]}: category {name!r} is id {c['id']} here, kept as "
                    f"{cats[name]} (the first dataset's)"
                )
    return maps, cats, notes


def coco_ids(
    images: Sequence[tuple[str, bool]],
    inputs: Iterable[Path],
    classes: Sequence[str],
    class_ids: Sequence[int],
) -> CocoIds:
    """Ids for ``images`` (``(image_id, labelled)`` in input order): a labelled image of a COCO
    dataset among ``inputs`` keeps that dataset's id, the rest are numbered after the largest."""
    maps, gt_cats, notes = _dataset_ids(Path(p) for p in inputs)
    taken_cats = set(gt_cats.values())
    category_of: dict[int, int] = {}
    for name, cid in zip(classes, class_ids, strict=True):
        if name in gt_cats:
            category_of[int(cid)] = gt_cats[name]
            continue
        new = int(cid) if int(cid) not in taken_cats else max(taken_cats) + 1
        if gt_cats:
            notes.append(f"class {name!r} is no category of the COCO input; written as id {new}")
        taken_cats.add(new)
        category_of[int(cid)] = new
    ids: dict[str, int] = {}
    used: set[int] = set()
    for image_id, labelled in images:
        found = next((m[image_id] for m in maps if image_id in m), None) if labelled else None
        if found is not None and found not in used:
            ids[image_id] = found
            used.add(found)
    nxt = max(used, default=0) + 1
    for image_id, _ in images:
        if image_id not in ids:
            ids[image_id] = nxt
            nxt += 1
    categories = [
        {"id": category_of[int(cid)], "name": name, "supercategory": "defect"}
        for name, cid in zip(classes, class_ids, strict=True)
    ]
    return CocoIds(ids, category_of, categories, notes)


# -- the writer -----------------------------------------------------------------------------------
def box_instances(record: dict[str, Any], ids: CocoIds) -> Iterator[dict[str, Any]]:
    """The detector's boxes of one record as segmentation-free COCO objects, best first.

    From the record's rounded ``detections`` alone (never the raw outputs), so a journaled
    record gives the same bytes; a box of a class the record does not name is left out."""
    image_id = ids.images[record["image_id"]]
    for d in record.get("detections") or []:
        cid = d.get("class_id")
        if cid is None or int(cid) not in ids.category_of:
            continue
        x1, y1, x2, y2 = (float(v) for v in d["box"])
        w, h = round(x2 - x1, 2), round(y2 - y1, 2)
        yield {
            "image_id": image_id,
            "category_id": ids.category_of[int(cid)],
            "bbox": [x1, y1, w, h],
            "score": float(d["score"]),
            "area": round(w * h, 4),
        }


def instances(record: dict[str, Any], ids: CocoIds) -> Iterator[dict[str, Any]]:
    """The COCO results objects of one inspected image's record: its present classes'
    components, then the detector's boxes (:func:`box_instances`), from the record alone: a
    journaled record gives the same objects."""
    yield from mask_instances(record, ids)
    yield from box_instances(record, ids)


def mask_instances(record: dict[str, Any], ids: CocoIds) -> Iterator[dict[str, Any]]:
    """One object per component of each present class's final mask, with its RLE."""
    from pycocotools import mask as coco_mask

    h, w = int(record["height"]), int(record["width"])
    image_id = ids.images[record["image_id"]]
    scores = record.get(SCORES_KEY) or []
    for k, c in enumerate(record["classes"]):
        if not c["present"] or not c["rle"]:
            continue
        rles = component_rles(rle_codec.decode(c["rle"], (h, w)))
        own = scores[k] if k < len(scores) else []
        if len(own) != len(rles):  # not journaled with scores: the class probability
            own = [float(c["probability"])] * len(rles)
        for obj, score in zip(rles, own, strict=True):
            yield {
                "image_id": image_id,
                "category_id": ids.category_of[int(c["class_id"])],
                "segmentation": {"size": [h, w], "counts": obj["counts"].decode("ascii")},
                "score": score,
                "bbox": [float(v) for v in coco_mask.toBbox(obj)],
                "area": float(coco_mask.area(obj)),
            }


class CocoWriter:
    """``coco_results.json`` and ``coco_images.json`` streamed from records, one line per
    instance or image, each renamed into place only by :meth:`commit`."""

    def __init__(self, out: Path, ids: CocoIds) -> None:
        self.ids = ids
        self._results = AtomicText(Path(out) / COCO_RESULTS)
        self._images = AtomicText(Path(out) / COCO_IMAGES)
        self._n_results = self._n_images = 0
        info = {"description": "steelscan predict: the images of coco_results.json"}
        head = {"info": info, "categories": ids.categories, "annotations": []}
        self._images.fh.write(json.dumps(head)[:-1] + ', "images": [')
        self._results.fh.write("[")

    def add(self, record: dict[str, Any]) -> None:
        """One image's record: its image entry and its instances (an error record: nothing)."""
        if record.get("error") is not None:
            return
        entry = {
            "id": self.ids.images[record["image_id"]],
            "file_name": record["image_id"],
            "height": int(record["height"]),
            "width": int(record["width"]),
        }
        self._images.fh.write(("\n" if not self._n_images else ",\n") + json.dumps(entry))
        self._n_images += 1
        for obj in instances(record, self.ids):
            self._results.fh.write(("\n" if not self._n_results else ",\n") + json.dumps(obj))
            self._n_results += 1

    def commit(self) -> None:
        self._results.fh.write("\n]\n" if self._n_results else "]\n")
        self._images.fh.write("\n]}\n" if self._n_images else "]}\n")
        self._results.commit()
        self._images.commit()

    def discard(self) -> None:
        self._results.discard()
        self._images.discard()
