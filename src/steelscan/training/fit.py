"""Fitting one stage with Lightning: the Trainer, resume, the time budget, the best weights.

Kept apart from :mod:`steelscan.training.train` (which orders the steps of a run) so that each
file reads top to bottom: this one knows Lightning, that one knows bundles and the predictor.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only
from torch import nn

from steelscan.data.records import AnnotatedImage
from steelscan.training.augment import crop_fits
from steelscan.training.callbacks import build_callbacks, build_loggers, interactive
from steelscan.training.config import TrainConfig
from steelscan.training.datamodule import SteelDataModule
from steelscan.training.module import ClassifierModule, SegmenterModule

log = logging.getLogger(__name__)

# Relative shares of the time budget per stage (normalised over the stages that train); 10% is
# kept for the validation predictions and the tuning at the end.
STAGE_WEIGHTS = {"classifier": 0.3, "segmenter": 0.7, "detector": 0.7}
CLASSIFIER_TIME_SHARE = STAGE_WEIGHTS["classifier"] / (
    STAGE_WEIGHTS["classifier"] + STAGE_WEIGHTS["segmenter"]
)
RESERVED_TIME_SHARE = 0.1


@dataclass
class StageResult:
    """What one stage produced: the best network and how it got there."""

    model: nn.Module
    summary: dict[str, Any] = field(default_factory=dict)
    is_global_zero: bool = True
    device: torch.device = torch.device("cpu")


def stage_minutes(cfg: TrainConfig, stage: str, stages: list[str], started: float) -> float | None:
    """Minutes for ``stage`` out of what ``max_minutes`` has left (None: no limit).

    ``stages`` are the stages that train, in order. Each stage gets its weight's share of the
    time still left for it and the stages after it, so time one stage leaves unused goes to the
    next ones.
    """
    if cfg.max_minutes is None:
        return None
    used = (time.monotonic() - started) / 60
    left = max(0.05, cfg.max_minutes * (1 - RESERVED_TIME_SHARE) - used)
    rest = stages[stages.index(stage) :]
    share = STAGE_WEIGHTS[stage] / sum(STAGE_WEIGHTS[s] for s in rest)
    return max(0.05, left * share)


def crop_for(
    records: list[AnnotatedImage], height: int | None, width: int | None
) -> tuple[int, int] | None:
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
    """The Lightning Trainer of one stage, every setting taken from ``cfg``.

    Progress bars only on a terminal; in a log file each epoch is one line instead
    (:class:`~steelscan.training.callbacks.EpochSummary`).
    """
    bar = progress and interactive()
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
            stage_dir,
            monitor=monitor,
            patience=cfg.early_stopping_patience,
            progress=progress,
            stage=stage_dir.name,
            ema_decay=cfg.ema_decay,
        ),
        logger=build_loggers(stage_dir, tensorboard=cfg.tensorboard, resumed=resumed),
        enable_progress_bar=bar,
        enable_model_summary=bar,
        log_every_n_steps=1 if isinstance(cfg.limit_train_batches, int) else 10,
        num_sanity_val_steps=0 if isinstance(cfg.limit_train_batches, int) else 1,
        default_root_dir=stage_dir,
    )


def _checkpoint_to_resume(name: str, stage_dir: Path, resume: bool) -> str | None:
    """``last.ckpt`` when resuming; otherwise clear the stage's old run so runs never mix."""
    last = stage_dir / "checkpoints" / "last.ckpt"
    if resume and last.exists():
        return str(last)
    if resume:
        log.warning("%s: no checkpoint at %s; training from scratch", name, last)
    if stage_dir.exists() and rank_zero_only.rank == 0:
        # rank 0 only: under DDP the other processes start later and must not delete what
        # rank 0 is writing
        shutil.rmtree(stage_dir)
    return None


def fit_stage(
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
    ckpt_path = _checkpoint_to_resume(name, stage_dir, cfg.resume)
    trainer = build_trainer(
        cfg,
        stage_dir,
        epochs=epochs,
        monitor=module.monitor,
        max_minutes=max_minutes,
        progress=progress,
        resumed=ckpt_path is not None,
    )
    if cfg.channels_last:
        module.to(memory_format=torch.channels_last)
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
    # back to the usual layout: safetensors and ONNX export want contiguous weights
    module.to(memory_format=torch.contiguous_format)
    return StageResult(
        model=module.model.cpu().eval(),
        summary=summary,
        is_global_zero=trainer.is_global_zero,
        device=trainer.strategy.root_device,
    )
