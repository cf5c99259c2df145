"""The Lightning callbacks and loggers of one training stage, chosen in one place.

Checkpoints keep the best epoch (by the stage's validation metric) for the bundle and ``last.ckpt``
for ``--resume``; early stopping and the LR monitor use the same metric names as the modules log.
Progress: a bar on a terminal; in a log file (stderr not a terminal) one line per epoch instead,
because a bar redrawn with carriage returns turns a log into one unreadable line.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, TextIO

import lightning as L
from lightning.pytorch.callbacks import (
    Callback,
    EarlyStopping,
    EMAWeightAveraging,
    LearningRateMonitor,
    ModelCheckpoint,
    TQDMProgressBar,
)
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger


def interactive(stream: TextIO | None = None) -> bool:
    """Whether progress goes to a terminal (bars) rather than a file or a pipe (lines)."""
    s = stream if stream is not None else sys.stderr
    try:
        return bool(s.isatty())
    except (AttributeError, ValueError):  # closed or replaced streams
        return False


class EpochSummary(Callback):
    """One line per finished epoch (after its validation), e.g.
    ``segmenter epoch 3/20: train_loss 0.41, val_kaggle 0.8812 (9 s)``."""

    def __init__(self, stage: str, stream: TextIO | None = None) -> None:
        self.stage = stage
        self.stream = stream
        self._t0 = time.monotonic()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._t0 = time.monotonic()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        shown = ", ".join(
            f"{k} {_number(v)}"
            for k, v in sorted(trainer.callback_metrics.items())
            if k.startswith(("train_loss", "val_")) and not k.endswith("_step")
        )
        total = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else "?"
        seconds = time.monotonic() - self._t0
        line = f"{self.stage} epoch {trainer.current_epoch + 1}/{total}: {shown} ({seconds:.0f} s)"
        print(line, file=self.stream or sys.stderr, flush=True)


def _number(value: Any) -> str:
    try:
        return f"{float(value):.4f}"
    except (TypeError, ValueError):
        return str(value)


def build_callbacks(
    stage_dir: Path,
    *,
    monitor: str,
    patience: int | None,
    progress: bool,
    with_lr_monitor: bool = True,
    stage: str | None = None,
    ema_decay: float | None = None,
) -> list[Callback]:
    """ModelCheckpoint (best + last), optional EarlyStopping, LR monitor, the progress
    report (a bar on a terminal, one line per epoch otherwise) and, with ``ema_decay``, an
    exponential moving average of the weights that validation and the checkpoints see."""
    callbacks: list[Callback] = [
        ModelCheckpoint(
            dirpath=stage_dir / "checkpoints",
            filename="best-epoch{epoch:03d}",
            auto_insert_metric_name=False,
            monitor=monitor,
            mode="max",
            save_top_k=1,
            save_last=True,
        )
    ]
    if ema_decay is not None:
        # it swaps the average in for validation and writes it as every checkpoint's state_dict
        # (the weights in training go to "current_model_state", which resuming reads back)
        callbacks.append(EMAWeightAveraging(decay=ema_decay))
    if patience is not None:
        callbacks.append(EarlyStopping(monitor=monitor, mode="max", patience=patience))
    if with_lr_monitor:
        callbacks.append(LearningRateMonitor(logging_interval="epoch"))
    if progress and interactive():
        callbacks.append(TQDMProgressBar(refresh_rate=1))
    elif progress:
        callbacks.append(EpochSummary(stage or stage_dir.name))
    return callbacks


def build_loggers(stage_dir: Path, *, tensorboard: bool, resumed: bool = False) -> list[Logger]:
    """CSV metrics (always; readable without tools) and TensorBoard (optional).

    A resumed run logs into its own ``resumed-<time>`` version so the first run's logs survive
    (Lightning's CSV logger would otherwise delete them).
    """
    version = f"resumed-{time.strftime('%Y%m%d-%H%M%S')}" if resumed else ""
    loggers: list[Logger] = [CSVLogger(stage_dir / "logs", name="csv", version=version)]
    if tensorboard:
        loggers.append(TensorBoardLogger(stage_dir / "logs", name="tensorboard", version=version))
    return loggers
