"""Run a model bundle over a labelled dataset: the numbers behind `steelscan evaluate` and `tune`.

Both commands need the same thing: the model's raw probabilities on the validation images next to
the ground truth. The validation split is the one the model was trained with (the seed and
fraction are in the manifest), so a model is never tuned or scored on its own training images.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from steelscan.data import load_dataset
from steelscan.data.records import AnnotatedImage, DataError, Dataset
from steelscan.data.splits import split_ids
from steelscan.imageio import read_image
from steelscan.manifest import ModelManifest


@dataclass
class Sample:
    """One validation image: its record, the model's raw output and the post-processed result."""

    record: AnnotatedImage
    raw: Any  # RawPrediction
    result: Any  # InspectionResult


def check_compatible(ds: Dataset, manifest: ModelManifest) -> None:
    """The dataset's classes must be the model's, or every score would be meaningless."""
    if list(ds.classes) != list(manifest.classes):
        raise DataError(
            f"{ds.root}: dataset classes {list(ds.classes)} differ from the model's "
            f"{list(manifest.classes)}"
        )


def select_records(ds: Dataset, manifest: ModelManifest, split: str) -> list[AnnotatedImage]:
    """``split``: ``val`` (the model's own validation split, recomputed) or ``all``."""
    if split == "all":
        return list(ds.records)
    if split != "val":
        raise ValueError(f"split must be 'val' or 'all', got {split!r}")
    cfg = manifest.training.get("config", {}) if isinstance(manifest.training, dict) else {}
    stored = manifest.training.get("val_ids") if isinstance(manifest.training, dict) else None
    if stored:
        keep = set(stored)
        chosen = [r for r in ds.records if r.image_id in keep]
        if chosen:
            return chosen
    seed = int(cfg.get("seed", 0))
    frac = float(cfg.get("val_fraction", 0.2))
    _, val = split_ids(ds, frac, seed)
    keep = set(val)
    return [r for r in ds.records if r.image_id in keep]


def split_records(
    data: str | Path, manifest: ModelManifest, split: str
) -> tuple[Dataset, list[AnnotatedImage]]:
    """Load ``data``, check it fits the model and return it with the records of ``split``
    (a DataError when the split is empty)."""
    ds = load_dataset(data)
    check_compatible(ds, manifest)
    records = select_records(ds, manifest, split)
    if not records:
        raise DataError(f"{data}: no images in the '{split}' split")
    return ds, records


def iter_samples(
    inspector: Any, records: list[AnnotatedImage], *, skip_gated: bool = True, progress: bool = True
) -> Iterator[Sample]:
    """Stream (record, raw, result) over the records, one image at a time (memory stays flat)."""
    channels = inspector.manifest.in_channels
    for rec in tqdm(records, desc="inspecting", unit="img", disable=not progress):
        if rec.path is None:
            raise DataError(f"{rec.image_id}: no image file")
        img = read_image(rec.path, channels=channels)
        raw = inspector.raw([img], skip_gated=skip_gated)[0]
        yield Sample(rec, raw, inspector.finish(raw, rec.image_id))


def _component_boxes(
    mask: np.ndarray, probs: np.ndarray, class_index: int
) -> list[tuple[int, int, int, int, int, float]]:
    """Boxes of a predicted mask's connected components, scored by their mean probability."""
    import cv2

    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    out = []
    for j in range(1, n):
        x, y, w, h, _area = stats[j]
        score = float(probs[labels == j].mean())
        out.append((class_index, int(x), int(y), int(x + w), int(y + h), score))
    return out


def evaluate(
    model: str | Path,
    data: str | Path,
    out: str | Path,
    *,
    split: str = "val",
    engine: str = "torch",
    gate_mode: str | None = None,
    progress: bool = True,
    **engine_opts: Any,
) -> dict[str, Any]:
    """Score a bundle on a dataset and write the report into ``out``; returns the metrics."""
    from steelscan.evaluation.metrics import DiceAccumulator, box_map50
    from steelscan.evaluation.report import (
        compute_gate_metrics,
        write_evaluation_report,
    )
    from steelscan.inference.inspector import Inspector

    inspector = Inspector(model, engine=engine, gate_mode=gate_mode, **engine_opts)
    manifest = inspector.manifest
    ds, records = split_records(data, manifest, split)
    k = manifest.num_classes
    acc = DiceAccumulator(manifest.class_ids, manifest.classes)
    y_any, p_any, y_cls, p_cls = [], [], [], []
    pred_boxes, gt_boxes = [], []
    for s in iter_samples(inspector, records, progress=progress):
        truth = s.record.masks()
        pred = np.stack([c.mask for c in s.result.classes])
        acc.add_masks(pred, truth)
        y_any.append(int(s.record.defective))
        p_any.append(s.result.defect_probability)
        y_cls.append(np.asarray(s.record.present, dtype=int))
        p_cls.append(np.asarray(s.raw.class_probs, dtype=float).reshape(-1)[:k])
        if not ds.has_masks:
            boxes = []
            for c in s.result.classes:
                if c.present:
                    boxes += _component_boxes(c.mask, s.raw.mask_probs[c.index], c.index)
            pred_boxes.append(boxes)
            gt_boxes.append(list(s.record.boxes))
    seg = acc.report().to_dict()
    gate = None
    if manifest.classifier is not None:
        pp = inspector.postprocess
        multi = manifest.classifier.num_outputs == k
        gate = compute_gate_metrics(
            np.asarray(y_any),
            np.asarray(p_any),
            np.stack(y_cls) if multi else None,
            np.stack(p_cls) if multi else None,
            manifest.classes,
            threshold=pp.gate_threshold,
            class_thresholds=pp.class_thresholds,
        )
    boxes = box_map50(pred_boxes, gt_boxes, k) if not ds.has_masks else None
    report = write_evaluation_report(
        out,
        class_names=manifest.classes,
        gate=gate,
        seg=seg,
        boxes=boxes,
        title=f"steelscan evaluation: {manifest.name} on {Path(data).name} ({split}, "
        f"{len(records)} images)",
    )
    return {
        "report": str(report),
        "n_images": len(records),
        "segmentation": seg,
        "gate": gate,
        "boxes": boxes,
    }


def tune(
    model: str | Path,
    data: str | Path,
    *,
    split: str = "val",
    gate_mode: str | None = None,
    progress: bool = True,
) -> tuple[float, float, Any]:
    """Tune the bundle's post-processing on the validation split and write it back."""
    from steelscan.bundle import update_manifest
    from steelscan.evaluation.tuning import tune_postprocess
    from steelscan.inference.inspector import Inspector

    inspector = Inspector(model, gate_mode=gate_mode)
    manifest = inspector.manifest
    _, records = split_records(data, manifest, split)
    raws, truths = [], []
    for s in iter_samples(inspector, records, skip_gated=False, progress=progress):
        raws.append(s.raw)
        truths.append(s.record.masks())
    tuned, before, after = tune_postprocess(raws, truths, inspector.postprocess, progress=progress)
    metrics = dict(manifest.metrics)
    metrics.update(
        {
            "tuned_kaggle_before": before,
            "tuned_kaggle_after": after,
            "tuned_on": f"{Path(data).name}:{split} ({len(records)} images)",
        }
    )
    update_manifest(model, postprocess=tuned, metrics=metrics)
    return before, after, tuned
