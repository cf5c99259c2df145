"""Batches of images of similar size, for training on full images of mixed sizes.

A batch is padded to its largest image (:func:`~steelscan.training.datamodule.pad_collate`), so a
random batch of Magnetic-tile images (103 to 620 px wide) costs the network about 2.2x the pixels
it holds. Grouping images of like size first (shuffle, then sort within pools of a few dozen
batches, then shuffle the batches) keeps the padding small and the order random enough for SGD;
the idea of torchtext's ``BucketIterator`` and of detectron2's aspect-ratio grouping.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

from steelscan.imaging import PAD_MULTIPLE, padded_size

POOL_BATCHES = 32  # batches per pool that is sorted by size: more is tighter, less is more random


def mixed_sizes(sizes: Sequence[tuple[int, int]]) -> bool:
    """True when the images do not all pad to one shape (then size batching pays)."""
    return len({padded_size(h, w, PAD_MULTIPLE) for h, w in sizes}) > 1


class SizeBatchSampler(Sampler[list[int]]):
    """Yields lists of indices of images of similar (padded) size, a fresh random order each
    epoch (seeded by ``seed`` and the epoch number, so runs repeat)."""

    def __init__(
        self,
        sizes: Sequence[tuple[int, int]],
        batch_size: int,
        *,
        seed: int = 0,
        drop_last: bool = True,
        pool_batches: int = POOL_BATCHES,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.keys = [padded_size(int(h), int(w), PAD_MULTIPLE)[::-1] for h, w in sizes]
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.drop_last = bool(drop_last) and len(self.keys) > self.batch_size
        self.pool = max(1, int(pool_batches)) * self.batch_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Lightning calls this at each epoch start (as for a ``DistributedSampler``)."""
        self.epoch = int(epoch)

    def batches(self, epoch: int) -> list[list[int]]:
        """The batches of one epoch (a pure function of seed and epoch)."""
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.keys))
        out: list[list[int]] = []
        for start in range(0, len(order), self.pool):
            pool = sorted(order[start : start + self.pool].tolist(), key=self.keys.__getitem__)
            for j in range(0, len(pool), self.batch_size):
                batch = pool[j : j + self.batch_size]
                if len(batch) == self.batch_size or not self.drop_last:
                    out.append(batch)
        rng.shuffle(out)  # type: ignore[arg-type]
        return out

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.batches(self.epoch)
        self.epoch += 1  # without Lightning's set_epoch, the next epoch still differs
        yield from batches

    def __len__(self) -> int:
        n = len(self.keys)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)
