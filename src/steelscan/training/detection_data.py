"""Images and their boxes for the detector: box-aware augmentation, batching, the data module.

The image tensor is exactly what the other stages get (normalised and reflect-padded to a
multiple of 32 by :mod:`steelscan.imaging`, as inference pads it), so the detector trains on the
batch it will be run on. Boxes travel through albumentations in Pascal VOC corners and come out
as FCOS targets: ``boxes`` (M, 4) float32 in image pixels and 0-based ``labels`` (M,) int64.
FCOS's focal loss has one sigmoid per class and no background column, so label ``k`` is score
column ``k`` of :class:`steelscan.models.detector.DetectionModel`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import albumentations as A
import cv2
import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from steelscan.data.records import AnnotatedImage
from steelscan.imageio import read_image
from steelscan.imaging import PAD_MULTIPLE, Normaliser, pad_to, padded_size
from steelscan.training.datamodule import make_loader


def box_transform(
    *,
    hflip: float = 0.5,
    vflip: float = 0.5,
    scale_jitter: float = 0.2,
    brightness_contrast: float = 0.5,
    seed: int | None = None,
) -> A.Compose:
    """Flips, a scale jitter around the image centre and brightness/contrast; boxes follow.

    The scale step fills with black (not a reflection: a mirrored defect would be an unlabelled
    one). A box keeps at least 30 % of its area inside the image or is dropped.
    """
    steps: list[Any] = []
    if hflip:
        steps.append(A.HorizontalFlip(p=hflip))
    if vflip:
        steps.append(A.VerticalFlip(p=vflip))
    if scale_jitter:
        steps.append(
            A.Affine(
                scale=(1 - scale_jitter, 1 + scale_jitter),
                keep_ratio=True,
                border_mode=cv2.BORDER_CONSTANT,
                fill=0,
                p=0.5,
            )
        )
    if brightness_contrast:
        steps.append(
            A.RandomBrightnessContrast(
                brightness_limit=0.2, contrast_limit=0.2, p=brightness_contrast
            )
        )
    bbox = A.BboxParams(format="pascal_voc", label_fields=["labels"], min_visibility=0.3, clip=True)
    return A.Compose(steps, bbox_params=bbox, seed=seed)


def record_boxes(rec: AnnotatedImage) -> tuple[np.ndarray, np.ndarray]:
    """(M, 4) float32 VOC corners and (M,) int64 0-based classes of one record."""
    if not rec.boxes:
        return np.zeros((0, 4), np.float32), np.zeros((0,), np.int64)
    boxes = np.array([[b.x1, b.y1, b.x2, b.y2] for b in rec.boxes], np.float32)
    labels = np.array([b.class_index for b in rec.boxes], np.int64)
    return boxes, labels


class BoxDataset(TorchDataset):
    """One sample per record: ``image`` (C, H', W') padded, ``boxes``, ``labels``, ``size``."""

    def __init__(
        self,
        records: Sequence[AnnotatedImage],
        *,
        in_channels: int,
        mean: Sequence[float],
        std: Sequence[float],
        transform: A.Compose | None = None,
    ) -> None:
        self.records = list(records)
        self.in_channels = in_channels
        self.normalise = Normaliser.from_stats(mean, std, in_channels)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        rec = self.records[i]
        image = read_image(rec.path, channels=self.in_channels)
        boxes, labels = record_boxes(rec)
        if self.transform is not None:
            out = self.transform(image=image, bboxes=boxes, labels=labels)
            image = out["image"]
            boxes = np.asarray(out["bboxes"], np.float32).reshape(-1, 4)
            labels = np.asarray(out["labels"], np.int64).reshape(-1)
        h, w = image.shape[:2]
        ph, pw = padded_size(h, w, PAD_MULTIPLE)
        x = pad_to(self.normalise(image), ph, pw, "reflect")
        return {
            "image": torch.from_numpy(np.ascontiguousarray(x)),
            "boxes": torch.from_numpy(boxes),
            "labels": torch.from_numpy(labels),
            "size": torch.tensor([h, w]),
            "index": torch.tensor(i),
        }


def box_collate(samples: list[dict[str, torch.Tensor]]) -> dict[str, Any]:
    """Zero-pad images to the batch's largest; boxes stay per image (FCOS targets)."""
    H = max(s["image"].shape[1] for s in samples)
    W = max(s["image"].shape[2] for s in samples)
    images = torch.stack(
        [
            torch.nn.functional.pad(
                s["image"], (0, W - s["image"].shape[2], 0, H - s["image"].shape[1])
            )
            for s in samples
        ]
    )
    return {
        "image": images,
        "targets": [{"boxes": s["boxes"], "labels": s["labels"]} for s in samples],
        "size": torch.stack([s["size"] for s in samples]),
        "index": torch.stack([s["index"] for s in samples]),
    }


class BoxDataModule(L.LightningDataModule):
    """Train (augmented, shuffled) and validation (as is, in order) loaders of boxed images."""

    def __init__(
        self,
        train_records: Sequence[AnnotatedImage],
        val_records: Sequence[AnnotatedImage],
        *,
        in_channels: int,
        mean: Sequence[float],
        std: Sequence[float],
        batch_size: int,
        transform: A.Compose,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.train_records = list(train_records)
        self.val_records = list(val_records)
        self.kw = {"in_channels": in_channels, "mean": mean, "std": std}
        self.batch_size = batch_size
        self.transform = transform
        self.num_workers = num_workers

    def _loader(self, ds: BoxDataset, shuffle: bool) -> DataLoader:
        return make_loader(ds, self.batch_size, shuffle, self.num_workers, box_collate)

    def train_dataloader(self) -> DataLoader:
        return self._loader(
            BoxDataset(self.train_records, transform=self.transform, **self.kw), True
        )

    def val_dataloader(self) -> DataLoader:
        return self._loader(BoxDataset(self.val_records, **self.kw), False)
