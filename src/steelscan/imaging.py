"""Normalisation and padding: the one place that turns uint8 pixels into network input.

Training (:mod:`steelscan.training.datamodule`), inference (:mod:`steelscan.inference.preprocess`)
and the segmenter's own tensor padding (:func:`steelscan.models.factory.pad_to_multiple`) all take
their rule from here, so a model never sees one normalisation in training and another in service.
numpy only (no torch): the deploy runtime imports it.

* normalise: ``(x / 255 - mean) / std`` per channel, computed as ``x * scale - shift`` in float32
  (one fused pass instead of three; the exact arithmetic every engine and export was checked
  against, so it must not change);
* pad: bottom/right only, to a multiple of :data:`PAD_MULTIPLE` (encoders with 5 down-samplings
  need 32), ``reflect`` so borders look like steel (fewer false positives at the edge) or
  ``zero`` (the normalised mean).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from steelscan.imageio import to_channels

PAD_MULTIPLE = 32
PadMode = Literal["reflect", "zero"]


def channel_stats(
    mean: Sequence[float], std: Sequence[float], channels: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel float32 mean/std: 3 RGB values are averaged for a 1-channel model, a single
    value is repeated for every channel."""

    def fit(values: Sequence[float], what: str) -> np.ndarray:
        v = np.asarray(values, dtype=np.float32)
        if v.size == channels:
            return v
        if v.size == 1:
            return np.repeat(v, channels)
        if channels == 1:
            return v.mean(keepdims=True)
        raise ValueError(f"normalization {what} has {v.size} values for {channels} channels")

    return fit(mean, "mean"), fit(std, "std")


@dataclass(frozen=True)
class Normaliser:
    """uint8 H x W x C (or H x W) -> float32 C x H x W, ``(x/255 - mean) / std`` per channel."""

    channels: int
    scale: np.ndarray  # 1 / (255 * std), float32
    shift: np.ndarray  # mean / std, float32

    @classmethod
    def from_stats(cls, mean: Sequence[float], std: Sequence[float], channels: int) -> Normaliser:
        m, s = channel_stats(mean, std, channels)
        scale = (1.0 / (255.0 * s)).astype(np.float32)
        shift = (m / s).astype(np.float32)
        return cls(int(channels), scale, shift)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        if image.dtype != np.uint8:
            raise ValueError(f"expected a uint8 image, got {image.dtype}")
        arr = to_channels(image, self.channels)
        out = arr.astype(np.float32) * self.scale - self.shift
        return np.ascontiguousarray(out.transpose(2, 0, 1))


def pad_amount(size: Any, multiple: int) -> Any:
    """Pixels to add so ``size`` becomes a multiple of ``multiple``.

    Plain ``%`` arithmetic on purpose: it also works on the symbolic sizes of a traced ONNX
    export (``models.factory.pad_to_multiple``), where ``int()`` or a branch would freeze the
    example input's size into the graph.
    """
    return (-size) % max(1, int(multiple))


def padded_size(h: int, w: int, multiple: int = PAD_MULTIPLE) -> tuple[int, int]:
    """The smallest (H, W) at least (h, w) whose sides are multiples of ``multiple``."""
    return h + pad_amount(h, multiple), w + pad_amount(w, multiple)


def pad_to(x: np.ndarray, height: int, width: int, mode: PadMode = "reflect") -> np.ndarray:
    """Pad (C, h, w) bottom/right to (C, height, width); ``x`` itself when nothing to add.

    ``reflect`` mirrors the image (repeatedly where the pad is wider than the image); an image
    one pixel high or wide has nothing to mirror and is zero-padded.
    """
    ph, pw = height - x.shape[1], width - x.shape[2]
    if ph < 0 or pw < 0:
        raise ValueError(f"cannot pad {x.shape[1]}x{x.shape[2]} down to {height}x{width}")
    if ph == 0 and pw == 0:
        return x
    reflect = mode == "reflect" and min(x.shape[1], x.shape[2]) > 1
    return np.pad(x, ((0, 0), (0, ph), (0, pw)), mode="reflect" if reflect else "constant")
