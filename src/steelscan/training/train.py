"""`train(data, out, config) -> Path`: the whole training run, ending in ONE model bundle.

The run is a sequence of named steps, each a function below:

1. :func:`prepare_run`: load the dataset and split it (seeded, stratified);
2. :func:`fit_gate`: train the classifier gate (best checkpoint reloaded);
3. :func:`fit_segmenter` and :func:`fit_detector`: train the segmenter and the box detector
   (best checkpoints reloaded), each when enabled (the detector by default when the data has
   boxes);
4. :func:`stage_bundle`: save a bundle with the UNTUNED default post-processing into a staging
   directory of the run (manifest: dataset path, validation ids, config);
5. :func:`tune_staged`: tune it with exactly what ``steelscan tune MODEL DATA`` runs (the torch
   :class:`~steelscan.inference.predictor.Predictor` over the validation split, from the untuned
   defaults) and score the validation images through the same post-processor, so the thresholds
   written here are the ones a later ``steelscan tune`` finds;
6. :func:`export_staged`: ONNX export into the bundle and the engine measurements that
   ``--engine auto`` picks from (:mod:`steelscan.training.measure`);
7. :func:`publish_bundle`: move the finished bundle to ``out``. A run that fails at any step
   leaves no bundle at ``out`` (an old bundle there stays untouched).

Run artefacts (Lightning checkpoints, CSV/TensorBoard logs, the config used, the staging
directory) live in a run directory OUTSIDE the bundle, ``<out>.runs/`` beside it by default
(``run_dir`` in the config); ``--resume`` continues from there.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_only

from steelscan import __version__
from steelscan.data.records import AnnotatedImage, DataError, Dataset
from steelscan.manifest import MANIFEST_NAME, ModelManifest, Normalization
from steelscan.training.callbacks import interactive
from steelscan.training.config import ConfigError, TrainConfig
from steelscan.training.datamodule import PAD_MULTIPLE, SteelDataModule
from steelscan.training.fit import (
    StageResult,
    crop_for,
    fit_stage,
    stage_minutes,
)
from steelscan.training.module import ClassifierModule, OptimSettings, SegmenterModule

log = logging.getLogger(__name__)

STAGING_NAME = "bundle.staging"  # inside the run directory


@dataclass
class Run:
    """What every step of one run reads: the config, the data and its split, where things go."""

    data: Path
    out: Path
    cfg: TrainConfig
    ds: Dataset
    train_records: list[AnnotatedImage]
    val_records: list[AnnotatedImage]
    run_dir: Path
    norm: Normalization
    show: bool
    started: float
    stages: list[str]  # the stages that train, in order

    def minutes(self, stage: str) -> float | None:
        """This stage's time budget, from what the run has left (None: no budget)."""
        return stage_minutes(self.cfg, stage, self.stages, self.started)

    def datamodule(
        self, batch_size: int, crop_hw: tuple[int, int] | None, defect_crop_bias: float
    ) -> SteelDataModule:
        return SteelDataModule(
            self.train_records,
            self.val_records,
            in_channels=self.cfg.in_channels,
            mean=self.norm.mean,
            std=self.norm.std,
            num_workers=self.cfg.num_workers,
            seed=self.cfg.seed,
            batch_size=batch_size,
            crop_hw=crop_hw,
            defect_crop_bias=defect_crop_bias,
        )

    def say(self, message: str) -> None:
        """Progress for a person (stderr), only when progress is on."""
        if self.show:
            print(message, file=sys.stderr, flush=True)


def normalization_for(in_channels: int) -> Normalization:
    """ImageNet statistics; a 1-channel model uses their average (grey steel)."""
    norm = Normalization()
    if in_channels == 1:
        return Normalization(mean=[float(np.mean(norm.mean))], std=[float(np.mean(norm.std))])
    return norm


def default_run_dir(out: Path) -> Path:
    """``<out>.runs`` beside the bundle directory."""
    return out.parent / f"{out.name}.runs"


def train(
    data: str | Path,
    out: str | Path,
    config: TrainConfig | None = None,
    progress: bool | None = None,
) -> Path:
    """Train on the dataset at ``data`` and write one model bundle to ``out``; returns ``out``.

    ``progress`` defaults to ``config.progress``. Under multi-process strategies (DDP) every
    process runs this function; only global rank 0 tunes, exports and writes the bundle.
    """
    cfg = config or TrainConfig()
    run = prepare_run(data, out, cfg, progress)
    with _torch_threads(cfg.cpu_threads):  # the fit only: tuning and timing run as predict does
        clf = fit_gate(run)
        seg, crop_hw = fit_segmenter(run)
        det = fit_detector(run)
    last = det or seg or clf
    assert last is not None
    if not last.is_global_zero:
        return run.out  # DDP: only rank 0 tunes and writes the bundle
    staged = stage_bundle(run, clf, seg, crop_hw, det)
    seconds = {"fit": round(time.monotonic() - run.started, 2)}
    if seg is not None or det is not None:
        t0 = time.monotonic()
        tune_staged(run, staged, _device_name(last.device))
        seconds["tune"] = round(time.monotonic() - t0, 2)
        if cfg.export.enabled:
            t0 = time.monotonic()
            export_staged(run, staged)
            seconds["export"] = round(time.monotonic() - t0, 2)
    _record_seconds(staged, run, seconds)
    return publish_bundle(staged, run.out)


@contextlib.contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    threads = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _device_name(device: torch.device) -> str:
    return "cpu" if device.type == "cpu" else str(device)


# --------------------------------------------------------------------------- 1. split
def _check_out(out: Path) -> None:
    """``out`` must be new, empty or a bundle (which the run replaces): never someone's folder."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST_NAME).is_file():
        raise ConfigError(
            f"{out}: exists, is not empty and is not a steelscan bundle; choose a new folder"
        )


def prepare_run(data: str | Path, out: str | Path, cfg: TrainConfig, progress: bool | None) -> Run:
    """Check the settings, load the dataset, split it and set up the run directory."""
    from steelscan.data import load_dataset
    from steelscan.data.splits import split_ids

    show = cfg.progress if progress is None else progress
    if not show:
        for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
            logging.getLogger(name).setLevel(logging.WARNING)
    out = Path(out)
    _check_out(out)
    started = time.monotonic()
    ds = load_dataset(data)
    if len(ds) < 2:
        raise DataError(
            f"{data}: {len(ds)} image(s); training needs at least 2 (train + validation)"
        )
    train_ids, val_ids = split_ids(ds, val_fraction=cfg.val_fraction, seed=cfg.seed)
    if not train_ids or not val_ids:
        raise DataError(f"{data}: the split left an empty train or validation set")
    stages = stages_to_train(cfg, ds)
    run_dir = Path(cfg.run_dir) if cfg.run_dir else default_run_dir(out)
    run_dir.mkdir(parents=True, exist_ok=True)
    if rank_zero_only.rank == 0:
        cfg.to_yaml(run_dir / "config.yaml")
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    return Run(
        data=Path(data),
        out=out,
        cfg=cfg,
        ds=ds,
        train_records=ds.subset(train_ids).records,
        val_records=ds.subset(val_ids).records,
        run_dir=run_dir,
        norm=normalization_for(cfg.in_channels),
        show=show,
        started=started,
        stages=stages,
    )


def stages_to_train(cfg: TrainConfig, ds: Dataset) -> list[str]:
    """The enabled stages in training order; the detector's "auto" means "the data has boxes"."""
    det = cfg.detector.enabled
    has_boxes = any(r.boxes for r in ds.records)
    if det is True and not has_boxes:
        raise ConfigError(
            "detector.enabled is true but the dataset has no boxes (use VOC, COCO or YOLO boxes)"
        )
    wanted = {
        "classifier": cfg.classifier.enabled,
        "segmenter": cfg.segmenter.enabled,
        "detector": det is True or (det == "auto" and has_boxes),
    }
    stages = [s for s in ("classifier", "segmenter", "detector") if wanted[s]]
    if not stages:
        raise ConfigError(
            "classifier.enabled and segmenter.enabled are false and there is no detector to "
            "train: nothing to train"
        )
    return stages


# --------------------------------------------------------------------------- 2. gate
def fit_gate(run: Run) -> StageResult | None:
    """Train the classifier gate (None when it is switched off)."""
    from steelscan.models.factory import create_classifier

    cfg, c = run.cfg, run.cfg.classifier
    if not c.enabled:
        return None
    k = len(run.ds.classes)
    model = create_classifier(
        c.arch,
        k,
        in_channels=cfg.in_channels,
        encoder_weights=c.encoder_weights,
        weights_sha256=c.weights_sha256,
        **c.options,
    )
    opt = OptimSettings(cfg.optimizer, c.lr, cfg.weight_decay, cfg.scheduler, c.epochs)
    # Crops only where masks say what a crop contains; image-level labels need full images.
    crop = crop_for(run.ds.records, c.crop_height, c.crop_width) if run.ds.has_masks else None
    return fit_stage(
        "classifier",
        ClassifierModule(model, k, opt, c.monitor),
        run.datamodule(c.batch_size, crop, c.defect_crop_bias),
        cfg,
        run.run_dir,
        epochs=c.epochs,
        max_minutes=run.minutes("classifier"),
        progress=run.show,
    )


# --------------------------------------------------------------------------- 3. segmenter
def fit_segmenter(run: Run) -> tuple[StageResult | None, tuple[int, int] | None]:
    """Train the segmenter; returns it (None when switched off) and the crop it trained on."""
    from steelscan.models.factory import create_segmenter
    from steelscan.models.losses import create_loss

    cfg, s = run.cfg, run.cfg.segmenter
    if not s.enabled:
        return None, None
    crop_hw = crop_for(run.ds.records, s.crop_height, s.crop_width)
    model = create_segmenter(
        s.arch,
        None if s.arch == "resunet" else s.encoder,
        len(run.ds.classes),
        in_channels=cfg.in_channels,
        encoder_weights=s.encoder_weights,
        weights_sha256=s.weights_sha256,
        aux_head=s.aux_head,
        **s.options,
    )
    opt = OptimSettings(cfg.optimizer, s.lr, cfg.weight_decay, cfg.scheduler, s.epochs)
    result = fit_stage(
        "segmenter",
        SegmenterModule(
            model, create_loss(s.loss, pos_weight=s.pos_weight), opt, s.aux_weight, s.monitor
        ),
        run.datamodule(s.batch_size, crop_hw, s.defect_crop_bias),
        cfg,
        run.run_dir,
        epochs=s.epochs,
        max_minutes=run.minutes("segmenter"),
        progress=run.show,
    )
    return result, crop_hw


def fit_detector(run: Run) -> StageResult | None:
    """Train the box detector (None when it does not train: see :func:`stages_to_train`)."""
    from steelscan.models.factory import create_detector
    from steelscan.training.detection_data import BoxDataModule, box_transform
    from steelscan.training.detector_module import DetectorModule

    cfg, d = run.cfg, run.cfg.detector
    if "detector" not in run.stages:
        return None
    model = create_detector(
        d.arch,
        d.encoder,
        len(run.ds.classes),
        in_channels=cfg.in_channels,
        encoder_weights=d.encoder_weights,
        weights_sha256=d.weights_sha256,
        **d.options,
    )
    transform = box_transform(
        hflip=d.hflip,
        vflip=d.vflip,
        scale_jitter=d.scale_jitter,
        brightness_contrast=d.brightness_contrast,
        seed=cfg.seed,
    )
    dm = BoxDataModule(
        run.train_records,
        run.val_records,
        in_channels=cfg.in_channels,
        mean=run.norm.mean,
        std=run.norm.std,
        batch_size=d.batch_size,
        transform=transform,
        num_workers=cfg.num_workers,
    )
    opt = OptimSettings(cfg.optimizer, d.lr, cfg.weight_decay, cfg.scheduler, d.epochs)
    return fit_stage(
        "detector",
        DetectorModule(model, list(run.ds.classes), opt),
        dm,
        cfg,
        run.run_dir,
        epochs=d.epochs,
        max_minutes=run.minutes("detector"),
        progress=run.show,
    )


# --------------------------------------------------------------------------- 4. staged bundle
def _image_size(records: list[AnnotatedImage]) -> tuple[int, int]:
    """The most common (height, width): the size the bundle is validated at."""
    return Counter(r.shape for r in records).most_common(1)[0][0]


def _class_counts(ds: Dataset, records: list[AnnotatedImage]) -> dict[str, int]:
    counts = {c: 0 for c in ds.classes}
    for r in records:
        for c, p in zip(ds.classes, r.present, strict=True):
            counts[c] += int(p)
    counts["no_defect"] = sum(1 for r in records if not r.defective)
    return counts


def training_summary(run: Run, crop_hw: tuple[int, int] | None) -> dict[str, Any]:
    """``manifest.training``: what ``steelscan tune``/``evaluate`` need to find the validation
    split again (resolved dataset path, validation ids, config) and the data counts."""
    return {
        "dataset": str(run.data.resolve()),
        "layout": run.ds.layout,
        "num_train_images": len(run.train_records),
        "num_val_images": len(run.val_records),
        "val_ids": [r.image_id for r in run.val_records],
        "class_counts_train": _class_counts(run.ds, run.train_records),
        "class_counts_val": _class_counts(run.ds, run.val_records),
        "crop": list(crop_hw) if crop_hw else None,
        "run_dir": str(run.run_dir.resolve()),
        "training_seconds": round(time.monotonic() - run.started, 2),
        "config": run.cfg.model_dump(mode="json"),
    }


def stage_bundle(
    run: Run,
    clf: StageResult | None,
    seg: StageResult | None,
    crop_hw: tuple[int, int] | None,
    det: StageResult | None = None,
) -> Path:
    """Save the trained networks with the untuned default post-processing into
    ``<run_dir>/bundle.staging`` (replacing a failed run's leftovers); returns that directory."""
    from steelscan.bundle import save_bundle
    from steelscan.inference.postprocess import default_postprocess
    from steelscan.models.factory import spec_for

    k = len(run.ds.classes)
    height, width = _image_size(run.ds.records)
    metrics: dict[str, Any] = {}
    if clf is not None:
        metrics["classifier"] = clf.summary
        # a gate alone cannot run through the predictor: its Lightning validation is the record
        metrics["gate_accuracy"] = clf.summary.get(f"best_{ClassifierModule.monitor}")
    if seg is not None:
        metrics["segmenter"] = seg.summary
    if det is not None:
        metrics["detector"] = det.summary
    manifest = ModelManifest(
        steelscan_version=__version__,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        classes=list(run.ds.classes),
        class_ids=list(run.ds.class_ids),
        in_channels=run.cfg.in_channels,
        normalization=run.norm,
        image_height=height,
        image_width=width,
        crop_height=crop_hw[0] if crop_hw else None,
        crop_width=crop_hw[1] if crop_hw else None,
        pad_multiple=PAD_MULTIPLE,
        classifier=spec_for(clf.model) if clf else None,
        segmenter=spec_for(seg.model) if seg else None,
        detector=spec_for(det.model) if det else None,
        postprocess=default_postprocess(k, "hard" if clf else "none"),
        training=training_summary(run, crop_hw),
        metrics=metrics,
    )
    staged = run.run_dir / STAGING_NAME
    if staged.exists():
        shutil.rmtree(staged)
    return save_bundle(
        staged,
        manifest,
        classifier=clf.model if clf else None,
        segmenter=seg.model if seg else None,
        detector=det.model if det else None,
    )


# --------------------------------------------------------------------------- 5. tune
def tune_staged(run: Run, staged: Path, device: str) -> dict[str, Any]:
    """Tune the staged bundle as ``steelscan tune`` does and write the tuned settings and the
    validation metrics into it; returns the metrics."""
    from steelscan.bundle import update_manifest
    from steelscan.evaluation.evaluate import select_records, tune_on, tuning_records
    from steelscan.inference.predictor import Predictor

    predictor = Predictor(staged, engine="torch", device=device)
    manifest = predictor.manifest
    records = tuning_records(select_records(run.ds, manifest, "val"), manifest)
    run.say(f"tuning post-processing on {len(records)} validation images")
    outcome = tune_on(predictor, records, progress=run.show and interactive())
    what = "Kaggle score" if outcome.score == "kaggle" else "box mAP@0.5"
    run.say(f"post-processing tuned: {what} {outcome.before:.4f} -> {outcome.after:.4f}")
    tuned = predictor.postprocessor.with_params(outcome.postprocess)
    metrics = dict(manifest.metrics)
    metrics[f"{outcome.score}_before_tuning"] = float(outcome.before)
    metrics[f"{outcome.score}_after_tuning"] = float(outcome.after)
    if outcome.boxes is not None:
        metrics["box_tuning"] = outcome.boxes
    metrics.update(validation_metrics(tuned, outcome.raws, outcome.truths, outcome.records))
    update_manifest(staged, postprocess=outcome.postprocess, metrics=metrics)
    return metrics


def validation_metrics(
    postprocessor: Any,
    raws: list[Any],
    truths: list[np.ndarray],
    records: list[AnnotatedImage],
) -> dict[str, Any]:
    """Kaggle score, Dice on non-empty pairs, the all-empty baseline and the gate accuracy of
    the predictor's raw outputs under ``postprocessor`` (a
    :class:`~steelscan.inference.postprocess.PostProcessor`): what ``steelscan evaluate`` would
    report on these images, the hard gate's skipped images included."""
    from steelscan.evaluation.metrics import DiceAccumulator

    out: dict[str, Any] = {"val_images_scored": len(raws)}
    if postprocessor.has_segmenter:  # masks of a detector-only bundle are empty by construction
        acc = DiceAccumulator(postprocessor.class_ids, postprocessor.class_names)
        for raw, truth in zip(raws, truths, strict=True):
            acc.add_masks(postprocessor.masks(raw)[1], truth)
        report = acc.report().to_dict()
        out["kaggle_score"] = float(report["score"])
        out["kaggle_all_empty_baseline"] = float(report["empty_baseline"])
        out["mean_dice_nonempty"] = report["dice_nonempty"]
    if postprocessor.has_detector:
        out.update(box_metrics(postprocessor, raws, records))
    if postprocessor.has_classifier:
        threshold = postprocessor.params.gate_threshold
        flagged = [postprocessor.defect_probability(r.class_probs) >= threshold for r in raws]
        truth = [r.defective for r in records]
        out["gate_accuracy"] = float(np.mean(np.equal(flagged, truth)))
    return out


def box_metrics(
    postprocessor: Any, raws: list[Any], records: list[AnnotatedImage]
) -> dict[str, Any]:
    """Box mAP (pycocotools) of the detector on these images, every box down to the mAP floor."""
    from steelscan.evaluation.detection import box_map, floor_detections

    sizes = [r.mask_probs.shape[1:] for r in raws]
    dets = floor_detections(postprocessor, raws, sizes)
    m = box_map([list(r.boxes) for r in records], dets, sizes, postprocessor.class_names)
    return {"box_map50": m["map50"], "box_map": m["map"], "box_ap_per_class": m["per_class"]}


# --------------------------------------------------------------------------- 6. export
def export_staged(run: Run, staged: Path) -> list[dict[str, Any]]:
    """ONNX export into the staged bundle and the engine records ``--engine auto`` reads."""
    from steelscan.bundle import read_manifest, update_manifest
    from steelscan.evaluation.evaluate import select_records
    from steelscan.inference.engines import ENGINE_RECORDS
    from steelscan.training.measure import export_and_measure

    run.say("exporting to ONNX and measuring each engine on the validation images")
    manifest = read_manifest(staged)
    val = select_records(run.ds, manifest, "val")
    records = export_and_measure(staged, run.train_records, val, run.cfg.export, say=run.say)
    metrics = dict(read_manifest(staged).metrics)
    metrics[ENGINE_RECORDS] = records
    update_manifest(staged, metrics=metrics)
    return records


# --------------------------------------------------------------------------- 7. write bundle
def _record_seconds(staged: Path, run: Run, seconds: dict[str, float]) -> None:
    from steelscan.bundle import read_manifest, update_manifest

    training = dict(read_manifest(staged).training)
    training["training_seconds"] = round(time.monotonic() - run.started, 2)
    training["step_seconds"] = seconds
    update_manifest(staged, training=training)


def _move(src: Path, dst: Path) -> None:
    """Rename, or copy then delete where ``src`` is on another filesystem (``run_dir``)."""
    try:
        os.rename(src, dst)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        shutil.copytree(src, dst)
        shutil.rmtree(src)


def _shareable(directory: Path) -> None:
    """Read access for everyone the umask allows: the temporary files and directories a bundle
    is built from are private (mkstemp/mkdtemp), a bundle is meant to be shared."""
    umask = os.umask(0)
    os.umask(umask)
    directory.chmod(0o777 & ~umask)
    for path in directory.iterdir():
        if path.is_file():
            path.chmod(0o666 & ~umask)


def publish_bundle(staged: Path, out: Path) -> Path:
    """Move the finished bundle from its staging directory to ``out``, replacing an old bundle
    there; ``out`` only ever holds a whole bundle (the old one or the new one)."""
    from steelscan.bundle import swap_into_place

    out.parent.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:8]
    tmp = out.parent / f".{out.name}.tmp-{tag}"
    try:
        _move(staged, tmp)
        _shareable(tmp)
        swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
