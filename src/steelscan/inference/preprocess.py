"""Turn decoded images into the model's input batch, and model outputs back into image space.

Inference runs at full resolution (no resize): the network is fully convolutional, so images are
only padded up to the bundle's ``pad_multiple`` and every output is cropped back to its own size.
The normalisation and padding rules themselves live in :mod:`steelscan.imaging`, shared with
training; this module applies them with the numbers a bundle's manifest records.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from steelscan.imaging import Normaliser, PadMode, pad_to, padded_size
from steelscan.manifest import ModelManifest

__all__ = ["PadMode", "crop", "normaliser", "normalise", "padded_size", "to_batch"]


def normaliser(manifest: ModelManifest) -> Normaliser:
    """The normaliser a bundle was trained with (its manifest's mean, std and channels)."""
    norm = manifest.normalization
    return Normaliser.from_stats(norm.mean, norm.std, manifest.in_channels)


def normalise(image: np.ndarray, manifest: ModelManifest) -> np.ndarray:
    """uint8 H x W x C (any of 1/3 channels) -> float32 C x H x W, ``(x/255 - mean) / std``."""
    return normaliser(manifest)(image)


def to_batch(
    images: Sequence[np.ndarray],
    manifest: ModelManifest,
    *,
    pad_mode: PadMode = "reflect",
) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Stack images into one padded float32 NCHW batch and return each image's (h, w).

    Images of different sizes are padded to the largest (rounded up to ``pad_multiple``); crop each
    output back with :func:`crop`. ``reflect`` padding mirrors the strip so the borders look like
    steel (fewer false positives at the edge); ``zero`` pads with the normalised mean (value 0).
    """
    if not images:
        raise ValueError("to_batch needs at least one image")
    sizes: list[tuple[int, int]] = []
    for i, img in enumerate(images):
        if img.ndim not in (2, 3) or img.shape[0] < 1 or img.shape[1] < 1:
            raise ValueError(f"image {i} has shape {img.shape}; expected H x W x C")
        sizes.append((int(img.shape[0]), int(img.shape[1])))
    H, W = padded_size(max(h for h, _ in sizes), max(w for _, w in sizes), manifest.pad_multiple)
    norm = normaliser(manifest)
    batch = np.empty((len(images), manifest.in_channels, H, W), dtype=np.float32)
    for i, img in enumerate(images):
        batch[i] = pad_to(norm(img), H, W, pad_mode)
    return batch, sizes


def crop(outputs: np.ndarray, sizes: Sequence[tuple[int, int]]) -> list[np.ndarray]:
    """Undo the padding of :func:`to_batch`: one (K, h, w) array per image."""
    return [np.ascontiguousarray(outputs[i, :, :h, :w]) for i, (h, w) in enumerate(sizes)]
