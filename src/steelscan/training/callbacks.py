"""The Lightning callbacks and loggers of one training stage, chosen in one place.

Checkpoints keep the best epoch (by the stage's validation metric) for the bundle and ``last.ckpt``
for ``--resume``; early stopping and the LR monitor use the same metric names as the modules log.
"""

from __future__ import annotations

import time
from pathlib import Path

from lightning.pytorch.callbacks import (
    Callback,
    EarlyStopping,
    LearningRateMonitor,
    ModelCheckpoint,
    TQDMProgressBar,
)
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger


def build_callbacks(
    stage_dir: Path,
    *,
    monitor: str,
    patience: int | None,
    progress: bool,
    with_lr_monitor: bool = True,
) -> list[Callback]:
    """ModelCheckpoint (best + last), optional EarlyStopping, LR monitor and a progress bar."""
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
    if patience is not None:
        callbacks.append(EarlyStopping(monitor=monitor, mode="max", patience=patience))
    if with_lr_monitor:
        callbacks.append(LearningRateMonitor(logging_interval="epoch"))
    if progress:
        callbacks.append(TQDMProgressBar(refresh_rate=1))
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
