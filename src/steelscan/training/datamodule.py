"""Lightning data module over steelscan :class:`~steelscan.data.records.Dataset` records.

Each sample is a dict: ``image`` (C, H, W) float32, ``mask`` (K, H, W) float32, ``presence``
(K,) float32, ``size`` (h, w) of the unpadded image and ``index`` (position in the split). Images
are normalised and padded up to a multiple of 32 (reflect; masks with zeros) by
:mod:`steelscan.imaging`, the same functions :func:`steelscan.inference.preprocess.to_batch`
uses, so a full validation image is bit for bit what inference feeds the model.

Why the classifier trains on full images (not crops or downscaled images): its label is image-level
presence, which a crop can lose, and inference classifies the full-resolution image, so training at
the same scale avoids a train/serve mismatch. The segmenter trains on crops (labels travel with the
crop) and is validated at full resolution.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from steelscan.data.records import AnnotatedImage
from steelscan.imageio import read_image
from steelscan.imaging import PAD_MULTIPLE, Normaliser, pad_to, padded_size
from steelscan.training.augment import train_transform
from steelscan.training.batching import SizeBatchSampler, mixed_sizes

__all__ = ["PAD_MULTIPLE", "SteelDataModule", "SteelDataset", "pad_collate"]


class SteelDataset(TorchDataset):
    """Images + masks of a list of records, optionally augmented (training) or not (validation)."""

    def __init__(
        self,
        records: Sequence[AnnotatedImage],
        *,
        in_channels: int,
        mean: Sequence[float],
        std: Sequence[float],
        crop_hw: tuple[int, int] | None = None,
        defect_crop_bias: float = 0.5,
        augment: bool = False,
        seed: int | None = None,
    ):
        self.records = list(records)
        self.in_channels = in_channels
        self.normalise = Normaliser.from_stats(mean, std, in_channels)
        self.transform = train_transform(crop_hw, defect_crop_bias, seed=seed) if augment else None

    def __len__(self) -> int:
        return len(self.records)

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """The raw (H, W, C) uint8 image and (K, H, W) uint8 masks of record ``i``."""
        rec = self.records[i]
        image = read_image(rec.path, channels=self.in_channels)
        masks = rec.masks()
        if image.shape[:2] != masks.shape[1:]:
            raise ValueError(
                f"{rec.path}: image is {image.shape[1]}x{image.shape[0]} but its annotation says "
                f"{rec.width}x{rec.height}"
            )
        return image, masks

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        rec = self.records[i]
        image, masks = self.load(i)
        if self.transform is not None:
            out = self.transform(image=image, masks=list(masks))
            image, masks = out["image"], np.stack(out["masks"])
        h, w = image.shape[:2]
        ph, pw = padded_size(h, w, PAD_MULTIPLE)
        x = pad_to(self.normalise(image), ph, pw, "reflect")
        m = pad_to(masks.astype(np.float32), ph, pw, "zero")
        if self.transform is None:
            # full image: image-level presence (labels/has_defect count even without masks)
            presence = np.asarray(rec.present, np.float32)
        else:
            presence = (masks.reshape(masks.shape[0], -1).max(axis=1) > 0).astype(np.float32)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(x)),
            "mask": torch.from_numpy(np.ascontiguousarray(m)),
            "presence": torch.from_numpy(presence),
            "size": torch.tensor([h, w]),
            "index": torch.tensor(i),
        }


def seed_worker_augmentations(worker_id: int) -> None:
    """Give each loader worker its own augmentation stream.

    Workers receive copies of one seeded ``A.Compose``; without reseeding, every worker would apply
    the same augmentation sequence. ``torch.initial_seed()`` differs per worker and per epoch and
    derives from the seeded main process, so runs stay reproducible.
    """
    info = torch.utils.data.get_worker_info()
    if info is not None and getattr(info.dataset, "transform", None) is not None:
        info.dataset.transform.set_random_seed(torch.initial_seed() % 2**32)


def pad_collate(samples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack samples, zero-padding images/masks of different sizes to the largest in the batch."""
    H = max(s["image"].shape[1] for s in samples)
    W = max(s["image"].shape[2] for s in samples)
    out: dict[str, torch.Tensor] = {}
    for key in ("image", "mask"):
        out[key] = torch.stack(
            [
                torch.nn.functional.pad(s[key], (0, W - s[key].shape[2], 0, H - s[key].shape[1]))
                for s in samples
            ]
        )
    for key in ("presence", "size", "index"):
        out[key] = torch.stack([s[key] for s in samples])
    return out


def make_loader(
    ds: TorchDataset,
    batch_size: int,
    shuffle: bool,
    num_workers: int,
    collate_fn: Any,
    *,
    batch_sampler: SizeBatchSampler | None = None,
) -> DataLoader:
    """The DataLoader every stage trains and validates with: persistent, reseeded workers, and
    the last partial batch dropped in training only. ``batch_sampler`` (training on full images
    of mixed sizes) replaces the shuffle with batches of like-sized images."""
    workers = {
        "num_workers": num_workers,
        "collate_fn": collate_fn,
        "persistent_workers": num_workers > 0,
        "worker_init_fn": seed_worker_augmentations if num_workers > 0 else None,
    }
    if batch_sampler is not None:
        return DataLoader(ds, batch_sampler=batch_sampler, **workers)
    return DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=shuffle,
        drop_last=shuffle and len(ds) > batch_size,
        **workers,
    )


class SteelDataModule(L.LightningDataModule):
    """Train/val loaders for one stage.

    ``crop_hw`` (segmenter) crops training images; ``None`` trains on full images (classifier, or
    datasets smaller than the crop). Validation is always full resolution, batch size 1, so
    images of different sizes never need to share a batch.
    """

    def __init__(
        self,
        train_records: Sequence[AnnotatedImage],
        val_records: Sequence[AnnotatedImage],
        *,
        in_channels: int,
        mean: Sequence[float],
        std: Sequence[float],
        batch_size: int,
        crop_hw: tuple[int, int] | None = None,
        defect_crop_bias: float = 0.5,
        num_workers: int = 0,
        seed: int = 0,
    ):
        super().__init__()
        self.train_records = list(train_records)
        self.val_records = list(val_records)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.kw = {"in_channels": in_channels, "mean": mean, "std": std}
        self.crop_hw = crop_hw
        self.defect_crop_bias = defect_crop_bias
        self.seed = seed

    def train_dataset(self) -> SteelDataset:
        return SteelDataset(
            self.train_records,
            crop_hw=self.crop_hw,
            defect_crop_bias=self.defect_crop_bias,
            augment=True,
            seed=self.seed,
            **self.kw,
        )

    def val_dataset(self) -> SteelDataset:
        return SteelDataset(self.val_records, augment=False, **self.kw)

    def _loader(
        self,
        ds: SteelDataset,
        batch_size: int,
        shuffle: bool,
        batch_sampler: SizeBatchSampler | None = None,
    ) -> DataLoader:
        return make_loader(
            ds, batch_size, shuffle, self.num_workers, pad_collate, batch_sampler=batch_sampler
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_dataset(), self.batch_size, True, self.size_batches())

    def size_batches(self) -> SizeBatchSampler | None:
        """Full images of mixed sizes train in batches of like size (little padding); crops all
        share one size, and a multi-process run keeps Lightning's distributed sampler."""
        sizes = [r.shape for r in self.train_records]
        trainer = getattr(self, "trainer", None)
        if self.crop_hw is not None or not mixed_sizes(sizes):
            return None
        if trainer is not None and trainer.world_size > 1:
            return None
        return SizeBatchSampler(sizes, self.batch_size, seed=self.seed)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset(), 1, shuffle=False)
