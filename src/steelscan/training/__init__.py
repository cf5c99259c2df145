"""Training with PyTorch Lightning: :class:`TrainConfig` and :func:`train` (data -> bundle)."""

from __future__ import annotations

from steelscan.training.config import ConfigError, TrainConfig
from steelscan.training.train import train

__all__ = ["ConfigError", "TrainConfig", "train"]
