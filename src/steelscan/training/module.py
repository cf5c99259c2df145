"""LightningModules for the two stages: the presence classifier (gate) and the segmenter.

The networks themselves come from :mod:`steelscan.models.factory` (plain ``nn.Module`` returning
logits); these wrappers add the losses, validation metrics, optimiser and LR schedule. No
``save_hyperparameters``: checkpoints then hold only tensors and plain values, which is what lets
``torch.load(weights_only=True)`` read them back on ``--resume``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import BinaryAccuracy, MultilabelAccuracy

from steelscan.inference.postprocess import any_defect_probability

CLASSIFIER_MONITOR = "val_gate_acc"
CLASSIFIER_MONITORS = ("val_gate_acc", "val_top1")
SEGMENTER_MONITOR = "val_kaggle"
SEGMENTER_MONITORS = ("val_kaggle", "val_dice_nonempty")


@dataclass(frozen=True)
class OptimSettings:
    """What ``configure_optimizers`` needs, copied out of :class:`TrainConfig`."""

    optimizer: str = "adamw"  # adam | adamw | radam
    lr: float = 1e-3
    weight_decay: float = 0.0
    scheduler: str = "plateau"  # plateau | cosine | none
    epochs: int = 10


WARMUP_STEPS = 100  # linear warm-up of warmup_cosine (at most a tenth of the run)


def warmup_cosine(
    optimizer: torch.optim.Optimizer, total_steps: int, *, cosine: bool = True
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step schedule: linear warm-up, then a cosine decay to 2 % of the rate over the rest
    of ``total_steps`` (``cosine`` False: flat after the warm-up). The warm-up keeps a fresh head
    on pretrained features from blowing up in the first steps at a high rate."""
    total = max(1, int(total_steps))
    warm = max(1, min(WARMUP_STEPS, total // 10))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if not cosine:
            return 1.0
        t = min(1.0, (step - warm) / max(1, total - warm))
        return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * t))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def build_optimizer(module: torch.nn.Module, opt: OptimSettings) -> torch.optim.Optimizer:
    """Adam, AdamW or RAdam over ``module``'s parameters at ``opt.lr`` (every stage's optimiser)."""
    optimizers = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "radam": torch.optim.RAdam}
    if opt.optimizer not in optimizers:
        raise ValueError(f"optimizer must be one of {sorted(optimizers)}, got {opt.optimizer!r}")
    return optimizers[opt.optimizer](module.parameters(), lr=opt.lr, weight_decay=opt.weight_decay)


def configure(module: L.LightningModule, opt: OptimSettings, monitor: str) -> Any:
    """:func:`build_optimizer` plus ReduceLROnPlateau (on ``monitor``, mode max), cosine
    annealing per epoch, or :func:`warmup_cosine` per step."""
    optimizer = build_optimizer(module, opt)
    if opt.scheduler == "none":
        return optimizer
    if opt.scheduler == "plateau":
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=0.5, patience=2
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": sched, "monitor": monitor, "interval": "epoch"},
        }
    if opt.scheduler == "warmup_cosine":
        sched = warmup_cosine(optimizer, module.trainer.estimated_stepping_batches)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
    if opt.scheduler == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, opt.epochs))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
    raise ValueError(
        f"scheduler must be plateau, cosine, warmup_cosine or none, got {opt.scheduler!r}"
    )


def split_output(out: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(mask logits, aux presence logits or None) from a segmenter's forward output.

    smp models with an aux head return ``(masks, labels)``; without one, just the masks.
    """
    if isinstance(out, dict):
        return out["masks"], out.get("labels")
    if isinstance(out, (tuple, list)):
        return out[0], (out[1] if len(out) > 1 else None)
    return out, None


class ClassifierModule(L.LightningModule):
    """Multi-label presence (BCE with logits); validation: accuracy of the any-defect gate."""

    monitor = CLASSIFIER_MONITOR

    def __init__(
        self,
        model: nn.Module,
        num_classes: int,
        opt: OptimSettings,
        monitor: str = CLASSIFIER_MONITOR,
    ):
        super().__init__()
        if monitor not in CLASSIFIER_MONITORS:
            raise ValueError(f"classifier monitor must be one of {CLASSIFIER_MONITORS}")
        self.monitor = monitor
        self.model = model
        self.opt = opt
        self.loss = nn.BCEWithLogitsLoss()
        self.val_gate_acc = BinaryAccuracy()
        self.val_class_acc = MultilabelAccuracy(num_labels=num_classes, average="macro")
        self.val_top1 = MeanMetric()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    @staticmethod
    def _target(logits: torch.Tensor, presence: torch.Tensor) -> torch.Tensor:
        """Per-class presence, or "any defect" for a one-output gate (the classic ResNet50)."""
        if logits.shape[1] == 1 and presence.shape[1] != 1:
            return presence.max(dim=1, keepdim=True).values
        return presence

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        logits = self.model(batch["image"])
        loss = self.loss(logits, self._target(logits, batch["presence"]))
        self.log("train_loss", loss, prog_bar=True, batch_size=len(logits))
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        logits = self.model(batch["image"])
        target = batch["presence"]
        self.log(
            "val_loss",
            self.loss(logits, self._target(logits, target)),
            batch_size=len(logits),
            sync_dist=True,
        )
        probs = torch.sigmoid(logits.float())
        # the post-processor's "any defect" rule, so val_gate_acc is the gate inference runs
        self.val_gate_acc.update(any_defect_probability(probs), target.amax(dim=1).int())
        self.log("val_gate_acc", self.val_gate_acc, prog_bar=True, batch_size=len(logits))
        if probs.shape[1] == target.shape[1]:
            self.val_class_acc.update(probs, target.int())
            self.log("val_class_acc", self.val_class_acc, batch_size=len(logits))
            # top-1: the most probable class is the image's one class (single-label images;
            # NEU-DET). Logged as 0 when a validation set has none, so it can still monitor.
            one = target.sum(dim=1) == 1
            if bool(one.any()):
                hit = probs[one].argmax(dim=1) == target[one].argmax(dim=1)
                self.val_top1.update(hit.float())
            self.log("val_top1", self.val_top1, batch_size=len(logits))

    def configure_optimizers(self) -> Any:
        return configure(self, self.opt, self.monitor)


def pair_dice(pred: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Dice per class of (K, H, W) boolean masks; empty prediction on empty truth = 1 (Kaggle)."""
    inter = (pred & truth).flatten(1).sum(1).float()
    total = (pred.flatten(1).sum(1) + truth.flatten(1).sum(1)).float()
    return torch.where(total == 0, torch.ones_like(total), 2 * inter / total.clamp(min=1))


class SegmenterModule(L.LightningModule):
    """Mask loss (+ optional aux presence loss); validation: Kaggle Dice at full resolution.

    ``val_kaggle`` is the mean Dice over every (image, class) pair at a 0.5 threshold (empty/empty
    = 1), the competition metric; ``val_dice_nonempty`` averages only pairs whose truth has pixels,
    which is what shows whether defects are found at all (the all-empty baseline scores high on
    ``val_kaggle``).
    """

    monitor = SEGMENTER_MONITOR

    def __init__(
        self,
        model: nn.Module,
        loss: nn.Module,
        opt: OptimSettings,
        aux_weight: float = 0.4,
        monitor: str = SEGMENTER_MONITOR,
    ):
        super().__init__()
        if monitor not in SEGMENTER_MONITORS:
            raise ValueError(
                f"segmenter monitor must be one of {SEGMENTER_MONITORS}, got {monitor!r}"
            )
        self.monitor = monitor
        self.model = model
        self.loss = loss
        self.aux_loss = nn.BCEWithLogitsLoss()
        self.aux_weight = aux_weight
        self.opt = opt
        self.val_kaggle = MeanMetric()
        self.val_dice_nonempty = MeanMetric()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return split_output(self.model(x))[0]

    def _forward_with_aux(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Masks and aux logits: models with an aux head expose ``forward_with_aux``."""
        fwa = getattr(self.model, "forward_with_aux", None)
        if callable(fwa):
            return fwa(x)
        return split_output(self.model(x))

    def _loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        masks, aux = self._forward_with_aux(batch["image"])
        loss = self.loss(masks, batch["mask"])
        if aux is not None and self.aux_weight > 0:
            loss = loss + self.aux_weight * self.aux_loss(aux, batch["presence"])
        return loss

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch)
        self.log("train_loss", loss, prog_bar=True, batch_size=len(batch["image"]))
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        masks, _ = split_output(self.model(batch["image"]))
        n = len(masks)
        for i in range(n):
            h, w = (int(v) for v in batch["size"][i])
            pred = masks[i, :, :h, :w] > 0  # sigmoid(x) > 0.5  <=>  x > 0
            truth = batch["mask"][i, :, :h, :w] > 0.5
            d = pair_dice(pred, truth)
            self.val_kaggle.update(d)
            nonempty = truth.flatten(1).any(1)
            if bool(nonempty.any()):
                self.val_dice_nonempty.update(d[nonempty])
        self.log("val_kaggle", self.val_kaggle, prog_bar=True, batch_size=n)
        self.log("val_dice_nonempty", self.val_dice_nonempty, prog_bar=True, batch_size=n)

    def configure_optimizers(self) -> Any:
        return configure(self, self.opt, self.monitor)
