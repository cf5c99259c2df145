"""`train(data, out, config) -> Path`: the whole training run, ending in ONE model bundle.

Steps: load and split the dataset (seeded, stratified), train the classifier gate, train the
segmenter, reload each stage's best checkpoint, predict the validation split at full resolution,
tune the post-processing on those predictions, and save the bundle (safetensors + manifest).

Run artefacts (Lightning checkpoints, CSV/TensorBoard logs, the config used) live in a run
directory OUTSIDE the bundle, ``<out>.runs/`` beside it by default (``run_dir`` in the config):
``<run>/classifier/{checkpoints,logs}``, ``<run>/segmenter/{checkpoints,logs}``. The bundle stays
small and shippable, and a failed run leaves no bundle at all, only its run directory (which is
what ``--resume`` continues from).
"""

from __future__ import annotations

import logging
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_only
from torch import nn
from tqdm import tqdm

from steelscan import __version__
from steelscan.data.records import AnnotatedImage, DataError, Dataset
from steelscan.manifest import ModelManifest, Normalization, PostProcess
from steelscan.training.augment import crop_fits
from steelscan.training.callbacks import build_callbacks, build_loggers
from steelscan.training.config import ConfigError, TrainConfig
from steelscan.training.datamodule import PAD_MULTIPLE, SteelDataModule, SteelDataset
from steelscan.training.module import ClassifierModule, OptimSettings, SegmenterModule

log = logging.getLogger(__name__)

# Share of the time budget given to the classifier when both stages train; 10% is kept for the
# validation predictions and the tuning at the end.
CLASSIFIER_TIME_SHARE = 0.3
RESERVED_TIME_SHARE = 0.1


@dataclass
class StageResult:
    """What one stage produced: the best network and how it got there."""

    model: nn.Module
    summary: dict[str, Any] = field(default_factory=dict)
    is_global_zero: bool = True
    device: torch.device = torch.device("cpu")


def normalization_for(in_channels: int) -> Normalization:
    """ImageNet statistics; a 1-channel model uses their average (grey steel)."""
    norm = Normalization()
    if in_channels == 1:
        return Normalization(mean=[float(np.mean(norm.mean))], std=[float(np.mean(norm.std))])
    return norm


def default_run_dir(out: Path) -> Path:
    """``<out>.runs`` beside the bundle directory."""
    return out.parent / f"{out.name}.runs"


def stage_time_budgets(cfg: TrainConfig) -> tuple[float | None, float | None]:
    """Minutes for (classifier, segmenter) out of ``max_minutes`` (None: no limit).

    The segmenter's share is recomputed after the classifier from what is actually left.
    """
    if cfg.max_minutes is None:
        return None, None
    usable = cfg.max_minutes * (1 - RESERVED_TIME_SHARE)
    if cfg.classifier.enabled and cfg.segmenter.enabled:
        return usable * CLASSIFIER_TIME_SHARE, usable * (1 - CLASSIFIER_TIME_SHARE)
    return (usable, None) if cfg.classifier.enabled else (None, usable)


def build_trainer(
    cfg: TrainConfig,
    stage_dir: Path,
    *,
    epochs: int,
    monitor: str,
    max_minutes: float | None,
    progress: bool,
    resumed: bool = False,
) -> L.Trainer:
    """The Lightning Trainer of one stage, every setting taken from ``cfg``."""
    return L.Trainer(
        max_epochs=epochs,
        max_time=timedelta(minutes=max_minutes) if max_minutes else None,
        accelerator=cfg.accelerator,
        devices=cfg.devices,
        num_nodes=cfg.num_nodes,
        strategy=cfg.strategy,
        precision=cfg.resolved_precision(),
        accumulate_grad_batches=cfg.accumulate_grad_batches,
        limit_train_batches=cfg.limit_train_batches,
        callbacks=build_callbacks(
            stage_dir, monitor=monitor, patience=cfg.early_stopping_patience, progress=progress
        ),
        logger=build_loggers(stage_dir, tensorboard=cfg.tensorboard, resumed=resumed),
        enable_progress_bar=progress,
        enable_model_summary=progress,
        log_every_n_steps=1 if isinstance(cfg.limit_train_batches, int) else 10,
        num_sanity_val_steps=0 if isinstance(cfg.limit_train_batches, int) else 1,
        default_root_dir=stage_dir,
    )


def _fit_stage(
    name: str,
    module: ClassifierModule | SegmenterModule,
    dm: SteelDataModule,
    cfg: TrainConfig,
    run_dir: Path,
    *,
    epochs: int,
    max_minutes: float | None,
    progress: bool,
) -> StageResult:
    """Fit one stage (resuming from its ``last.ckpt`` if asked) and reload its best weights."""
    stage_dir = run_dir / name
    last = stage_dir / "checkpoints" / "last.ckpt"
    ckpt_path: str | None = None
    if cfg.resume and last.exists():
        ckpt_path = str(last)
    else:
        if cfg.resume:
            log.warning("%s: no checkpoint at %s; training from scratch", name, last)
        if stage_dir.exists() and rank_zero_only.rank == 0:
            # a fresh run must not mix with an old run's checkpoints (rank 0 only: under DDP the
            # other processes start later and must not delete what rank 0 is writing)
            shutil.rmtree(stage_dir)
    trainer = build_trainer(
        cfg,
        stage_dir,
        epochs=epochs,
        monitor=module.monitor,
        max_minutes=max_minutes,
        progress=progress,
        resumed=ckpt_path is not None,
    )
    t0 = time.monotonic()
    # Lightning's own checkpoints hold only tensors and plain values (no save_hyperparameters),
    # so they load with torch.load(weights_only=True): resuming never unpickles code.
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path, weights_only=True)
    seconds = time.monotonic() - t0
    ckpt_cb = trainer.checkpoint_callback
    best = getattr(ckpt_cb, "best_model_path", "") or ""
    score = getattr(ckpt_cb, "best_model_score", None)
    if best and Path(best).exists():
        state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
        module.load_state_dict(state)
    summary = {
        "epochs_run": int(trainer.current_epoch),
        "global_steps": int(trainer.global_step),
        "seconds": round(seconds, 2),
        "best_checkpoint": best or None,
        f"best_{module.monitor}": None if score is None else float(score),
        "resumed_from": ckpt_path,
        "stopped_early": bool(getattr(trainer, "should_stop", False))
        and trainer.current_epoch < epochs,
    }
    return StageResult(
        model=module.model.cpu().eval(),
        summary=summary,
        is_global_zero=trainer.is_global_zero,
        device=trainer.strategy.root_device,
    )


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


@torch.no_grad()
def predict_validation(
    records: list[AnnotatedImage],
    cfg: TrainConfig,
    norm: Normalization,
    classifier: nn.Module | None,
    segmenter: nn.Module | None,
    device: torch.device,
    progress: bool = True,
) -> tuple[list[Any], list[np.ndarray], list[bool]]:
    """Full-resolution probabilities for each record: (RawPredictions, truth masks, defective)."""
    from steelscan.inference.raw import RawPrediction
    from steelscan.training.module import split_output

    ds = SteelDataset(records, in_channels=cfg.in_channels, mean=norm.mean, std=norm.std)
    raws, truths, defective = [], [], []
    for m in (classifier, segmenter):
        if m is not None:
            m.to(device).eval()
    for i in tqdm(range(len(ds)), desc="validation predictions", disable=not progress):
        sample = ds[i]
        h, w = (int(v) for v in sample["size"])
        x = sample["image"][None].to(device)
        mask_probs = None
        if segmenter is not None:
            logits = split_output(segmenter(x))[0]
            mask_probs = torch.sigmoid(logits.float())[0, :, :h, :w].cpu().numpy()
        if classifier is not None:
            class_probs = torch.sigmoid(classifier(x).float())[0].cpu().numpy()
            if class_probs.shape[0] == 1:  # a one-output gate: P(any defect) for every class
                class_probs = np.repeat(class_probs, len(ds.records[i].classes))
        else:  # no gate: the strongest pixel stands in for presence
            class_probs = mask_probs.reshape(mask_probs.shape[0], -1).max(axis=1)
        if mask_probs is None:
            mask_probs = np.zeros((len(class_probs), h, w), np.float32)
        raws.append(
            RawPrediction(class_probs=class_probs.astype(np.float32), mask_probs=mask_probs)
        )
        truths.append(ds.records[i].masks())
        defective.append(ds.records[i].defective)
    for m in (classifier, segmenter):
        if m is not None:
            m.cpu()
    return raws, truths, defective


def validation_metrics(
    raws: list[Any],
    truths: list[np.ndarray],
    defective: list[bool],
    pp: PostProcess,
    *,
    has_classifier: bool,
    has_segmenter: bool,
) -> dict[str, Any]:
    """Kaggle score, Dice on non-empty pairs, the all-empty baseline and the gate accuracy."""
    from steelscan.evaluation.tuning import image_dice

    out: dict[str, Any] = {"val_images_scored": len(raws)}
    pairs = [(t[c] != 0).any() for t in truths for c in range(t.shape[0])]
    out["kaggle_all_empty_baseline"] = float(1.0 - np.mean(pairs)) if pairs else None
    if has_classifier:
        gate = [float(np.max(r.class_probs)) >= pp.gate_threshold for r in raws]
        out["gate_accuracy"] = float(
            np.mean([g == d for g, d in zip(gate, defective, strict=True)])
        )
    if has_segmenter:
        # Scored as the inspector runs: with a classifier, the hard gate skips images under it.
        per_image = image_dice(raws, truths, pp, gate=has_classifier)
        nonempty = np.stack([(t != 0).reshape(t.shape[0], -1).any(1) for t in truths])
        out["kaggle_score"] = float(per_image.mean())
        out["mean_dice_nonempty"] = float(per_image[nonempty].mean()) if nonempty.any() else None
    return out


def _crop_for(records: list, height: int | None, width: int | None) -> tuple[int, int] | None:
    """The training crop if it fits every image; otherwise full images (with a warning)."""
    if height is None or width is None:
        return None
    sizes = {r.shape for r in records}
    min_hw = (min(h for h, _ in sizes), min(w for _, w in sizes))
    if crop_fits(min_hw, (height, width)):
        return (int(height), int(width))
    log.warning(
        "crop %sx%s is larger than the smallest image %sx%s: training on full images",
        height,
        width,
        *min_hw,
    )
    return None


def train(
    data: str | Path,
    out: str | Path,
    config: TrainConfig | None = None,
    progress: bool | None = None,
) -> Path:
    """Train on the dataset at ``data`` and write one model bundle to ``out``; returns ``out``.

    ``progress`` defaults to ``config.progress``. Under multi-process strategies (DDP) every
    process runs this function; only global rank 0 tunes and writes the bundle.
    """
    cfg = config or TrainConfig()
    threads = torch.get_num_threads()
    if cfg.cpu_threads is not None:
        torch.set_num_threads(cfg.cpu_threads)
    try:
        return _train(data, out, cfg, progress)
    finally:
        torch.set_num_threads(threads)


def _train(data: str | Path, out: str | Path, cfg: TrainConfig, progress: bool | None) -> Path:
    from steelscan.bundle import save_bundle
    from steelscan.data import load_dataset
    from steelscan.data.splits import split_ids
    from steelscan.evaluation.tuning import tune_postprocess
    from steelscan.models.factory import create_classifier, create_segmenter, spec_for
    from steelscan.models.losses import create_loss

    show = cfg.progress if progress is None else progress
    if not show:
        for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
            logging.getLogger(name).setLevel(logging.WARNING)
    if not cfg.classifier.enabled and not cfg.segmenter.enabled:
        raise ConfigError(
            "both classifier.enabled and segmenter.enabled are false: nothing to train"
        )
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: exists and is not a directory")
    started = time.monotonic()
    ds = load_dataset(data)
    if len(ds) < 2:
        raise DataError(
            f"{data}: {len(ds)} image(s); training needs at least 2 (train + validation)"
        )
    train_ids, val_ids = split_ids(ds, val_fraction=cfg.val_fraction, seed=cfg.seed)
    if not train_ids or not val_ids:
        raise DataError(f"{data}: the split left an empty train or validation set")
    train_recs, val_recs = ds.subset(train_ids).records, ds.subset(val_ids).records
    k = len(ds.classes)
    norm = normalization_for(cfg.in_channels)
    height, width = _image_size(ds.records)
    run_dir = Path(cfg.run_dir) if cfg.run_dir else default_run_dir(out)
    run_dir.mkdir(parents=True, exist_ok=True)
    if rank_zero_only.rank == 0:
        cfg.to_yaml(run_dir / "config.yaml")
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    clf_minutes, seg_minutes = stage_time_budgets(cfg)
    dm_kw = {
        "in_channels": cfg.in_channels,
        "mean": norm.mean,
        "std": norm.std,
        "num_workers": cfg.num_workers,
        "seed": cfg.seed,
    }

    clf: StageResult | None = None
    seg: StageResult | None = None
    if cfg.classifier.enabled:
        c = cfg.classifier
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
        c_crop = _crop_for(ds.records, c.crop_height, c.crop_width) if ds.has_masks else None
        dm = SteelDataModule(
            train_recs,
            val_recs,
            batch_size=c.batch_size,
            crop_hw=c_crop,
            defect_crop_bias=c.defect_crop_bias,
            **dm_kw,
        )
        clf = _fit_stage(
            "classifier",
            ClassifierModule(model, k, opt),
            dm,
            cfg,
            run_dir,
            epochs=c.epochs,
            max_minutes=clf_minutes,
            progress=show,
        )
    crop_hw: tuple[int, int] | None = None
    if cfg.segmenter.enabled:
        s = cfg.segmenter
        crop_hw = _crop_for(ds.records, s.crop_height, s.crop_width)
        if seg_minutes is not None:
            seg_minutes = max(
                0.05,
                cfg.max_minutes * (1 - RESERVED_TIME_SHARE) - (time.monotonic() - started) / 60,
            )
        model = create_segmenter(
            s.arch,
            None if s.arch == "resunet" else s.encoder,
            k,
            in_channels=cfg.in_channels,
            encoder_weights=s.encoder_weights,
            weights_sha256=s.weights_sha256,
            aux_head=s.aux_head,
            **s.options,
        )
        loss = create_loss(s.loss, pos_weight=s.pos_weight)
        opt = OptimSettings(cfg.optimizer, s.lr, cfg.weight_decay, cfg.scheduler, s.epochs)
        dm = SteelDataModule(
            train_recs,
            val_recs,
            batch_size=s.batch_size,
            crop_hw=crop_hw,
            defect_crop_bias=s.defect_crop_bias,
            **dm_kw,
        )
        seg = _fit_stage(
            "segmenter",
            SegmenterModule(model, loss, opt, aux_weight=s.aux_weight),
            dm,
            cfg,
            run_dir,
            epochs=s.epochs,
            max_minutes=seg_minutes,
            progress=show,
        )
    last = seg or clf
    assert last is not None
    if not last.is_global_zero:
        return out  # DDP: only rank 0 tunes and writes the bundle

    # ---- tune post-processing on the validation split, at full resolution ---------------
    tune_recs = val_recs[: cfg.tune_max_images]
    raws, truths, defective = predict_validation(
        tune_recs,
        cfg,
        norm,
        clf.model if clf else None,
        seg.model if seg else None,
        last.device if last.device.type != "cpu" else torch.device("cpu"),
        progress=show,
    )
    base = PostProcess(
        gate_mode="hard" if clf else "none",
        gate_threshold=0.5,
        class_thresholds=[0.5] * k,
        pixel_thresholds=[0.5] * k,
        min_areas=[0] * k,
        min_component_areas=[0] * k,
    )
    metrics: dict[str, Any] = {}
    pp = base
    if seg is not None:
        pp, before, after = tune_postprocess(raws, truths, base, progress=show)
        metrics["kaggle_before_tuning"] = float(before)
        metrics["kaggle_after_tuning"] = float(after)
    metrics.update(
        validation_metrics(
            raws,
            truths,
            defective,
            pp,
            has_classifier=clf is not None,
            has_segmenter=seg is not None,
        )
    )
    if clf is not None:
        metrics["classifier"] = clf.summary
    if seg is not None:
        metrics["segmenter"] = seg.summary

    training = {
        "dataset": str(Path(data).resolve()),
        "layout": ds.layout,
        "num_train_images": len(train_recs),
        "num_val_images": len(val_recs),
        "class_counts_train": _class_counts(ds, train_recs),
        "class_counts_val": _class_counts(ds, val_recs),
        "crop": list(crop_hw) if crop_hw else None,
        "run_dir": str(run_dir.resolve()),
        "training_seconds": round(time.monotonic() - started, 2),
        "config": cfg.model_dump(mode="json"),
    }
    manifest = ModelManifest(
        steelscan_version=__version__,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        classes=list(ds.classes),
        class_ids=list(ds.class_ids),
        in_channels=cfg.in_channels,
        normalization=norm,
        image_height=height,
        image_width=width,
        crop_height=crop_hw[0] if crop_hw else None,
        crop_width=crop_hw[1] if crop_hw else None,
        pad_multiple=PAD_MULTIPLE,
        classifier=spec_for(clf.model) if clf else None,
        segmenter=spec_for(seg.model) if seg else None,
        postprocess=pp,
        training=training,
        metrics=metrics,
    )
    return save_bundle(
        out,
        manifest,
        classifier=clf.model if clf else None,
        segmenter=seg.model if seg else None,
    )
