"""Run a model bundle over a labelled dataset: the numbers behind `steelscan evaluate` and `tune`.

Both go through the one predictor (:class:`steelscan.inference.predictor.Predictor`) and the one
post-processor, so what they score is exactly what ``steelscan predict`` outputs.

Which images: ``split="auto"`` (the default) scores every image of the dataset, unless it is the
model's own training data (its path is in the manifest), where only the validation split the
model was trained with is fair (recomputed from the seed and fraction in the manifest).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from steelscan.data import load_dataset
from steelscan.data.records import AnnotatedImage, DataError, Dataset
from steelscan.data.splits import split_ids
from steelscan.inference.predictor import Prediction
from steelscan.manifest import ModelManifest

SPLITS = ("auto", "val", "all")


@dataclass
class Sample:
    """One image: its record, the model's raw output and the post-processed result."""

    record: AnnotatedImage
    raw: Any  # RawPrediction
    result: Any  # InspectionResult


@dataclass
class TuneOutcome:
    """What tuning found, and the predictions it was found on (training reuses them).

    ``before``/``after`` are the headline score named by ``score``: the Kaggle score where the
    bundle has a segmenter, box mAP@0.5 (at the score floor, COCOeval) for a detector-only one.
    ``boxes`` holds the box tuning's own figures (:meth:`BoxTuning.to_dict`) with a detector.
    """

    postprocess: Any  # PostProcess
    before: float
    after: float
    raws: list[Any]
    truths: list[np.ndarray]
    records: list[AnnotatedImage]
    score: str = "kaggle"  # or "box_map50"
    boxes: dict[str, Any] | None = None


def check_compatible(ds: Dataset, manifest: ModelManifest) -> None:
    """The dataset's classes must be the model's, or every score would be meaningless."""
    if list(ds.classes) != list(manifest.classes):
        raise DataError(
            f"{ds.root}: dataset classes {list(ds.classes)} differ from the model's "
            f"{list(manifest.classes)}"
        )


def is_training_data(data: str | Path, manifest: ModelManifest) -> bool:
    """Whether ``data`` is the dataset the model was trained on (by resolved path)."""
    trained_on = manifest.training.get("dataset") if isinstance(manifest.training, dict) else None
    if not trained_on or not isinstance(data, (str, Path)):
        return False
    try:
        return Path(data).resolve() == Path(trained_on).resolve()
    except OSError:
        return False


def resolve_split(data: str | Path, manifest: ModelManifest, split: str) -> str:
    """``auto`` -> ``val`` on the model's own training data, ``all`` on any other dataset."""
    if split not in SPLITS:
        raise DataError(f"--split must be one of {', '.join(SPLITS)}, not {split!r}")
    if split != "auto":
        return split
    return "val" if is_training_data(data, manifest) else "all"


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
    data: str | Path | Dataset, manifest: ModelManifest, split: str
) -> tuple[Dataset, list[AnnotatedImage]]:
    """Load ``data``, check it fits the model and return it with the records of ``split``
    (``val`` or ``all``; resolve ``auto`` first); a DataError when the split is empty."""
    ds = load_dataset(data)
    check_compatible(ds, manifest)
    records = select_records(ds, manifest, split)
    if not records:
        raise DataError(f"{ds.root}: no images in the '{split}' split")
    return ds, records


def tuning_records(records: list[AnnotatedImage], manifest: ModelManifest) -> list[AnnotatedImage]:
    """The images tuning uses: the first ``tune_max_images`` of the split (training's setting),
    so ``steelscan tune`` and the tuning at the end of ``steelscan train`` see the same ones."""
    cfg = manifest.training.get("config", {}) if isinstance(manifest.training, dict) else {}
    cap = cfg.get("tune_max_images")
    return records[: int(cap)] if cap else records


def predictions(
    predictor: Any,
    records: list[AnnotatedImage],
    *,
    keep_raw: bool = False,
    keep_images: bool = False,
    skip_gated: bool = True,
    progress: bool = True,
    desc: str = "inspecting",
) -> Iterator[tuple[AnnotatedImage, Prediction]]:
    """Stream (record, prediction) pairs through the predictor, in record order."""
    for rec in records:
        if rec.path is None:
            raise DataError(f"{rec.image_id}: no image file")
    items = ((r.image_id, r.path) for r in records)
    stream = predictor.stream(
        items, keep_raw=keep_raw, keep_images=keep_images, skip_gated=skip_gated
    )
    bar = tqdm(total=len(records), desc=desc, unit="img", disable=not progress, mininterval=2.0)
    try:
        for rec, pred in zip(records, stream, strict=True):
            bar.update(1)
            yield rec, pred
    finally:
        bar.close()


def iter_samples(
    predictor: Any,
    records: list[AnnotatedImage],
    *,
    skip_gated: bool = True,
    progress: bool = True,
) -> Iterator[Sample]:
    """(record, raw, result) over the records; an image that cannot be inspected is an error."""
    for rec, pred in predictions(
        predictor, records, keep_raw=True, skip_gated=skip_gated, progress=progress
    ):
        if pred.error is not None:
            raise DataError(pred.error)
        yield Sample(rec, pred.raw, pred.result)


def single_label(records: list[AnnotatedImage]) -> bool:
    """Every image has exactly one class (NEU-DET): top-1 class accuracy then means something."""
    return bool(records) and all(sum(r.present) == 1 for r in records)


def _make_predictor(model: Any, engine: str, gate_mode: str | None, **engine_opts: Any) -> Any:
    from steelscan.inference.predictor import Predictor

    if hasattr(model, "stream"):  # already a predictor
        return model
    return Predictor(model, engine=engine, gate_mode=gate_mode, **engine_opts)


class _Tally:
    """Everything evaluation adds up over the images, one :class:`Sample` at a time.

    Masks are scored only with a segmenter (a detector-only bundle's masks are empty by
    construction); boxes come from the detector where there is one (kept down to the score
    floor, as COCO's AP needs), else from the mask components on box datasets."""

    def __init__(
        self, manifest: ModelManifest, records: list[AnnotatedImage], pp: Any, boxes: bool
    ):
        from steelscan.evaluation.metrics import DiceAccumulator
        from steelscan.evaluation.overlap import OverlapAccumulator

        self.k = manifest.num_classes
        self.pp = pp  # the predictor's PostProcessor
        self.segments = manifest.segmenter is not None
        self.detects = manifest.detector is not None
        self.dice = DiceAccumulator(manifest.class_ids, manifest.classes)
        self.overlap = OverlapAccumulator(manifest.classes)
        self.one_label = single_label(records)
        self.boxes = boxes and self.segments and not self.detects
        self.y_any: list[int] = []
        self.p_any: list[float] = []
        self.y_cls: list[np.ndarray] = []
        self.p_cls: list[np.ndarray] = []
        self.top1: list[bool] = []
        self.pred_boxes: list[list] = []
        self.gt_boxes: list[list] = []
        self.detections: list[list] = []
        self.sizes: list[tuple[int, int]] = []
        self.per_image: list[dict[str, Any]] = []
        self.verdicts: list[tuple[bool, bool]] = []  # (truth defective, result has_defect)

    def _add_masks(self, s: Sample, row: dict[str, Any]) -> None:
        from steelscan.evaluation.overlap import mask_areas

        pred = np.stack([c.mask for c in s.result.classes])
        pa, ta, inter = mask_areas(pred, s.record.masks())
        dices = [
            self.dice.add_areas(i, int(pa[i]), int(ta[i]), int(inter[i])) for i in range(self.k)
        ]
        self.overlap.add_areas(pa, ta, inter)
        row["dice"] = [round(float(d), 6) for d in dices]

    def _add_boxes(self, s: Sample, row: dict[str, Any]) -> None:
        from steelscan.evaluation.detection import floor_detections
        from steelscan.inference.postprocess import component_boxes

        self.gt_boxes.append(list(s.record.boxes))
        if self.detects:
            h, w = s.result.height, s.result.width
            self.detections.append(floor_detections(self.pp, [s.raw], [(h, w)])[0])
            self.sizes.append((h, w))
            row["detections"] = len(s.result.detections or [])  # the boxes users are shown
            return
        found = []
        for c in s.result.classes:
            if c.present:
                probs = s.raw.mask_probs[c.index]
                found += [(c.index, *b) for b in component_boxes(c.mask, probs)]
        self.pred_boxes.append(found)

    def add(self, s: Sample) -> None:
        row: dict[str, Any] = {
            "image_id": s.record.image_id,
            "defect_probability": s.result.defect_probability,
        }
        if self.segments:
            self._add_masks(s, row)
        if self.boxes or self.detects:
            self._add_boxes(s, row)
        self.per_image.append(row)
        self.verdicts.append((bool(s.record.defective), bool(s.result.has_defect)))
        cp = np.asarray(s.raw.class_probs, dtype=float).reshape(-1)[: self.k]
        self.y_any.append(int(s.record.defective))
        self.p_any.append(s.result.defect_probability)
        self.y_cls.append(np.asarray(s.record.present, dtype=int))
        self.p_cls.append(cp)
        if self.one_label:
            self.top1.append(int(np.argmax(cp)) == int(np.argmax(s.record.present)))

    def gate(self, manifest: ModelManifest, pp: Any) -> dict[str, Any] | None:
        from steelscan.evaluation.report import compute_gate_metrics

        if manifest.classifier is None:
            return None
        multi = manifest.classifier.num_outputs == self.k
        gate = compute_gate_metrics(
            np.asarray(self.y_any),
            np.asarray(self.p_any),
            np.stack(self.y_cls) if multi else None,
            np.stack(self.p_cls) if multi else None,
            manifest.classes,
            threshold=pp.gate_threshold,
            class_thresholds=pp.class_thresholds,
        )
        if self.one_label and multi:
            gate["top1_accuracy"] = float(np.mean(self.top1))
        return gate

    def verdict(self) -> dict[str, Any] | None:
        """Defect vs clean as the whole pipeline answers it (``has_defect``: some class present
        after the gate, thresholds and areas), for every bundle, with or without a gate."""
        if not self.verdicts:
            return None
        truth = np.array([t for t, _ in self.verdicts], bool)
        said = np.array([p for _, p in self.verdicts], bool)
        return {
            "accuracy": float(np.mean(truth == said)),
            "defect_images": int(truth.sum()),
            "clean_images": int((~truth).sum()),
            "missed_defects": int((truth & ~said).sum()),
            "false_alarms": int((~truth & said).sum()),
        }

    def segmentation(self, has_masks: bool) -> dict[str, Any] | None:
        """The Kaggle/Dice figures, or None for a detector-only bundle (no masks to score)."""
        if not self.segments:
            return None
        seg = self.dice.report().to_dict()
        if has_masks:
            seg["overlap"] = self.overlap.report()
        return seg

    def component_boxes(self) -> dict[str, Any] | None:
        """Segmenter-only bundles on box data: mAP@0.5 of the mask components' boxes."""
        from steelscan.evaluation.metrics import box_map50

        if not self.boxes:
            return None
        out = box_map50(self.pred_boxes, self.gt_boxes, self.k)
        out["method"] = COMPONENT_BASED
        return out

    def detection(self, classes: list[str]) -> dict[str, Any] | None:
        """The detector's COCO box mAP (boxes down to the score floor) and the F1 of the boxes
        shown at the bundle's ``box_score_threshold``."""
        from steelscan.evaluation.detection import box_f1, box_map
        from steelscan.inference.boxes import SCORE_FLOOR

        if not self.detects:
            return None
        out = box_map(self.gt_boxes, self.detections, self.sizes, classes)
        out["method"] = "detector"
        out["score_floor"] = SCORE_FLOOR
        shown = self.pp.params.box_score_threshold
        out["at_score_threshold"] = box_f1(self.gt_boxes, self.detections, shown)
        return out


#: How the metrics, the CLI and the report name the mask-component box figure.
COMPONENT_BASED = "component-based"


def evaluate(
    model: Any,
    data: str | Path | Dataset,
    out: str | Path,
    *,
    split: str = "auto",
    engine: str = "auto",
    gate_mode: str | None = None,
    progress: bool = True,
    **engine_opts: Any,
) -> dict[str, Any]:
    """Score a bundle (a path, a loaded bundle or a predictor) on a dataset and write the report
    into ``out``; returns the metrics (``split`` says which images were scored).

    ``segmentation`` is None without a segmenter; ``detection`` (COCOeval box mAP) is there with
    a detector, ``boxes`` (the component-based box mAP, ``method`` says so) only for a
    segmenter-only bundle on box data."""
    from steelscan.evaluation.report import write_evaluation_report

    predictor = _make_predictor(model, engine, gate_mode, **engine_opts)
    manifest = predictor.manifest
    used = resolve_split(data, manifest, split)
    ds, records = split_records(data, manifest, used)
    tally = _Tally(manifest, records, predictor.postprocessor, boxes=not ds.has_masks)
    for s in iter_samples(predictor, records, progress=progress):
        tally.add(s)
    seg = tally.segmentation(ds.has_masks)
    gate = tally.gate(manifest, predictor.postprocess)
    boxes = tally.component_boxes()
    detection = tally.detection(list(manifest.classes))
    report = write_evaluation_report(
        out,
        class_names=manifest.classes,
        gate=gate,
        seg=seg,
        boxes=boxes,
        detection=detection,
        title=f"steelscan evaluation: {manifest.name} on {Path(ds.root).name} ({used}, "
        f"{len(records)} images, engine {predictor.engine_label})",
    )
    return {
        "report": str(report),
        "n_images": len(records),
        "split": used,
        "engine": predictor.engine_label,
        "segmentation": seg,
        "gate": gate,
        "boxes": boxes,
        "detection": detection,
        "verdict": tally.verdict(),
        "per_image": tally.per_image,
    }


def tune_on(predictor: Any, records: list[AnnotatedImage], *, progress: bool = True) -> TuneOutcome:
    """Tune post-processing on ``records`` with ``predictor``, from the untuned defaults.

    Starting from the defaults (not from what the bundle holds) makes tuning a function of the
    model and the data only: the tuning at the end of ``steelscan train`` and a later
    ``steelscan tune`` on the same images find the same settings. With a segmenter the masks
    (and the gate) are tuned by the Kaggle score; with a detector its boxes are tuned after them
    (:func:`~steelscan.evaluation.tuning.tune_boxes`), the gate too when no segmenter uses it.
    """
    from steelscan.evaluation.tuning import tune_boxes, tune_postprocess
    from steelscan.inference.postprocess import default_postprocess

    raws, truths = [], []
    for s in iter_samples(predictor, records, skip_gated=False, progress=progress):
        raws.append(s.raw)
        truths.append(s.record.masks())
    base = default_postprocess(predictor.num_classes, predictor.postprocess.gate_mode)
    manifest = predictor.manifest
    if manifest.segmenter is not None:
        tuned, before, after = tune_postprocess(raws, truths, base, progress=progress)
    else:  # nothing to threshold in empty masks; the base's gate is tuned by boxes below
        tuned, before, after = base, float("nan"), float("nan")
    if manifest.detector is None:
        return TuneOutcome(tuned, before, after, raws, truths, records)
    found = tune_boxes(
        raws,
        [list(r.boxes) for r in records],
        predictor.postprocessor.with_params(tuned),
        tune_gate=manifest.segmenter is None,
        progress=progress,
    )
    boxes = found.to_dict()
    if manifest.segmenter is None:
        before, after = found.map50_before, found.map50_after
        return TuneOutcome(
            found.postprocess, before, after, raws, truths, records, "box_map50", boxes
        )
    return TuneOutcome(found.postprocess, before, after, raws, truths, records, "kaggle", boxes)


def tune(
    model: str | Path,
    data: str | Path,
    *,
    split: str = "auto",
    gate_mode: str | None = None,
    engine: str = "torch",
    progress: bool = True,
    **engine_opts: Any,
) -> tuple[float, float, Any, str]:
    """Tune the bundle's post-processing on ``split`` of ``data`` and write it back; returns
    (score before, score after, the settings, the split used). The scores are Kaggle scores
    with a segmenter, box mAP@0.5 for a detector-only bundle (the manifest's ``tuned_box_*``
    metrics hold the box figures whenever there is a detector).

    The torch engine by default: thresholds are tuned on the float32 probabilities, which every
    engine recorded as keeping the score reproduces.
    """
    from steelscan.bundle import update_manifest

    predictor = _make_predictor(model, engine, gate_mode, **engine_opts)
    manifest = predictor.manifest
    used = resolve_split(data, manifest, split)
    _, records = split_records(data, manifest, used)
    records = tuning_records(records, manifest) if used == "val" else records
    outcome = tune_on(predictor, records, progress=progress)
    metrics = dict(manifest.metrics)
    if outcome.score == "kaggle":
        metrics["tuned_kaggle_before"] = outcome.before
        metrics["tuned_kaggle_after"] = outcome.after
    if outcome.boxes is not None:
        metrics.update({f"tuned_{k}": v for k, v in outcome.boxes.items() if k != "searched"})
    metrics["tuned_on"] = f"{Path(data).name}:{used} ({len(records)} images)"
    update_manifest(predictor.bundle.path, postprocess=outcome.postprocess, metrics=metrics)
    if progress:
        print(f"tuned on {len(records)} images ({used} split)", file=sys.stderr)
    return outcome.before, outcome.after, outcome.postprocess, used
