"""Size batching: full images of mixed sizes train in batches of like size, every image once."""

from __future__ import annotations

import numpy as np
import pytest

from steelscan.imaging import PAD_MULTIPLE, padded_size
from steelscan.training.batching import SizeBatchSampler, mixed_sizes
from steelscan.training.datamodule import SteelDataModule


def _sizes(n: int = 400, seed: int = 1) -> list[tuple[int, int]]:
    rng = np.random.default_rng(seed)
    # two width modes, as in the Magnetic-tile set (about 100-300 and 480-620 px wide)
    wide = rng.random(n) < 0.4
    widths = np.where(wide, rng.integers(480, 621, n), rng.integers(100, 301, n))
    return [(int(h), int(w)) for h, w in zip(rng.integers(220, 404, n), widths, strict=True)]


def _padded_pixels(batches: list[list[int]], sizes: list[tuple[int, int]]) -> int:
    total = 0
    for b in batches:
        hw = [padded_size(*sizes[i], PAD_MULTIPLE) for i in b]
        total += len(b) * max(h for h, _ in hw) * max(w for _, w in hw)
    return total


def test_every_image_once_per_epoch_and_epochs_differ() -> None:
    sizes = _sizes(403)
    s = SizeBatchSampler(sizes, 16, seed=0)
    e0, e1 = s.batches(0), s.batches(1)
    assert len(e0) == len(s) == 403 // 16
    for epoch in (e0, e1):
        flat = [i for b in epoch for i in b]
        assert len(flat) == len(set(flat)) == 16 * (403 // 16)  # the partial batch is dropped
        assert all(len(b) == 16 for b in epoch)
    assert e0 != e1
    assert s.batches(0) == e0  # a pure function of seed and epoch
    assert SizeBatchSampler(sizes, 16, seed=1).batches(0) != e0
    keep = SizeBatchSampler(sizes, 16, drop_last=False)
    assert sorted(i for b in keep.batches(0) for i in b) == list(range(403))
    assert len(keep) == len(keep.batches(0)) == -(-403 // 16)


def test_batches_of_like_size_pad_far_less_than_random_ones() -> None:
    sizes = _sizes()
    s = SizeBatchSampler(sizes, 16, seed=0)
    grouped = s.batches(0)
    order = np.random.default_rng(0).permutation(len(sizes)).tolist()
    random_batches = [order[j : j + 16] for j in range(0, len(order) - 15, 16)]
    real = sum(
        padded_size(h, w, PAD_MULTIPLE)[0] * padded_size(h, w, PAD_MULTIPLE)[1] for h, w in sizes
    )
    assert _padded_pixels(grouped, sizes) < 1.25 * real
    assert _padded_pixels(random_batches, sizes) > 1.6 * real


def test_set_epoch_is_what_the_next_iteration_uses() -> None:
    s = SizeBatchSampler(_sizes(64), 8, seed=3)
    s.set_epoch(5)
    assert list(iter(s)) == s.batches(5)
    assert list(iter(s)) == s.batches(6)  # without set_epoch the next epoch still differs


def test_bad_batch_size_is_refused() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        SizeBatchSampler([(10, 10)], 0)


def test_the_datamodule_size_batches_full_images_of_mixed_sizes_only(tmp_path) -> None:
    from steelscan.data.records import AnnotatedImage

    def recs(shapes: list[tuple[int, int]]) -> list[AnnotatedImage]:
        return [
            AnnotatedImage(
                image_id=f"i{j}.png",
                path=tmp_path / f"i{j}.png",
                height=h,
                width=w,
                classes=("a",),
            )
            for j, (h, w) in enumerate(shapes)
        ]

    mixed = recs([(224, 100), (300, 500), (256, 256)] * 4)
    same = recs([(256, 256)] * 12)
    kw = {"in_channels": 3, "mean": (0.5,) * 3, "std": (0.2,) * 3, "batch_size": 4}
    assert mixed_sizes([r.shape for r in mixed]) and not mixed_sizes([r.shape for r in same])
    assert isinstance(SteelDataModule(mixed, mixed, **kw).size_batches(), SizeBatchSampler)
    assert SteelDataModule(same, same, **kw).size_batches() is None
    assert SteelDataModule(mixed, mixed, crop_hw=(64, 64), **kw).size_batches() is None
    loader = SteelDataModule(mixed, mixed, **kw).train_dataloader()
    assert isinstance(loader.batch_sampler, SizeBatchSampler) and len(loader) == 3
