"""The detector's LightningModule: FCOS losses in training, pycocotools box mAP in validation.

Validation runs the detector exactly as inference does (``forward`` -> decoded boxes and scores
-> :func:`steelscan.inference.boxes.select_boxes` at the mAP floor), then scores the epoch with
:func:`steelscan.evaluation.detection.box_map`, so ``val_map50`` (the checkpoint and early
stopping metric) is the figure ``steelscan evaluate`` reports, before tuning.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from steelscan.data.records import Box
from steelscan.evaluation.detection import box_map
from steelscan.inference.boxes import SCORE_FLOOR, DetectedBox, select_boxes
from steelscan.models.detector import DetectionModel
from steelscan.training.module import OptimSettings, build_optimizer, warmup_cosine

DETECTOR_MONITOR = "val_map50"
GRAD_CLIP_NORM = 10.0  # focal + GIoU losses spike in the first steps of a fresh head


class DetectorModule(L.LightningModule):
    """Sum of FCOS's three losses; mAP@0.5 and mAP@0.5:0.95 on the validation images."""

    monitor = DETECTOR_MONITOR

    def __init__(self, model: DetectionModel, classes: list[str], opt: OptimSettings) -> None:
        super().__init__()
        self.model = model
        self.classes = list(classes)
        self.opt = opt
        self._truths: list[list[Box]] = []
        self._dets: list[list[DetectedBox]] = []
        self._sizes: list[tuple[int, int]] = []

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model(x)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        losses = self.model.losses(batch["image"], batch["targets"])
        loss = sum(losses.values())
        n = len(batch["targets"])
        self.log("train_loss", loss, prog_bar=True, batch_size=n)
        for name, value in losses.items():
            self.log(f"train_{name}", value, batch_size=n)
        return loss

    def on_validation_epoch_start(self) -> None:
        self._truths, self._dets, self._sizes = [], [], []

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        boxes, scores = self.model(batch["image"])
        boxes, scores = boxes.float().cpu().numpy(), scores.float().cpu().numpy()
        for j, target in enumerate(batch["targets"]):
            h, w = (int(v) for v in batch["size"][j])
            self._sizes.append((h, w))
            self._dets.append(select_boxes(boxes[j], scores[j], h, w, score_threshold=SCORE_FLOOR))
            self._truths.append(
                [
                    Box(int(c), *(int(round(float(v))) for v in b))
                    for b, c in zip(target["boxes"], target["labels"], strict=True)
                ]
            )

    def on_validation_epoch_end(self) -> None:
        if not self._sizes:
            return
        m = box_map(self._truths, self._dets, self._sizes, self.classes)
        self.log(self.monitor, m["map50"], prog_bar=True)
        self.log("val_map", m["map"])

    def configure_gradient_clipping(
        self, optimizer: Any, gradient_clip_val: Any = None, gradient_clip_algorithm: Any = None
    ) -> None:
        self.clip_gradients(
            optimizer, gradient_clip_val=GRAD_CLIP_NORM, gradient_clip_algorithm="norm"
        )

    def configure_optimizers(self) -> Any:
        """AdamW (or the configured optimiser) with a linear warm-up, then a cosine decay over the
        steps the trainer will run (``scheduler: none`` keeps the rate flat after warm-up)."""
        optimizer = build_optimizer(self, self.opt)
        sched = warmup_cosine(
            optimizer,
            self.trainer.estimated_stepping_batches,
            cosine=self.opt.scheduler != "none",
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
