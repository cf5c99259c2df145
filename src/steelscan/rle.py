"""Kaggle (Severstal) run-length encoding: the one place that knows the pixel order.

Pixels are numbered from 1, top to bottom then left to right (column-major); an RLE string is
``start length`` pairs. Both directions are vectorised with NumPy: no Python loop over runs.
"""

from __future__ import annotations

import math
import re

import numpy as np

_INT = re.compile(r"^[0-9]+$")


def _is_empty(rle: object) -> bool:
    if rle is None:
        return True
    if isinstance(rle, float) and math.isnan(rle):
        return True
    return isinstance(rle, str) and rle.strip() == ""


def parse(rle: str | float | None, shape: tuple[int, int] = (256, 1600)) -> np.ndarray:
    """Validate an RLE string; return its runs as an (N, 2) int64 array of (start, length)."""
    if _is_empty(rle):
        return np.zeros((0, 2), dtype=np.int64)
    if not isinstance(rle, str):
        raise ValueError(f"RLE must be a string, got {type(rle).__name__}")
    tokens = rle.split()
    if len(tokens) % 2:
        raise ValueError(
            f"RLE has an odd number of values ({len(tokens)}); expected start/length pairs"
        )
    try:  # NumPy's own conversion is ~10x faster than checking each token in Python
        # Signs and non-ASCII digits ('\u0661' is int 1 to Python) are not Kaggle digits, but
        # NumPy would accept them.
        if "-" in rle or "+" in rle or not rle.isascii():
            raise ValueError
        runs = np.asarray(tokens, dtype=np.int64).reshape(-1, 2)
    except (ValueError, OverflowError):
        bad = next((t for t in tokens if not _INT.match(t)), None)
        if bad is not None:
            raise ValueError(f"RLE holds a non-integer value {bad!r}") from None
        big = next(t for t in tokens if int(t) >= 2**63)  # all digits: one overflows int64
        raise ValueError(f"RLE holds a value too large for a pixel number: {big[:30]!r}") from None
    starts, lengths = runs[:, 0], runs[:, 1]
    if (starts < 1).any():
        i = int(np.argmax(starts < 1))
        raise ValueError(f"RLE run {i + 1} starts at {starts[i]}; pixel numbers start at 1")
    if (lengths < 1).any():
        i = int(np.argmax(lengths < 1))
        raise ValueError(f"RLE run {i + 1} has length {lengths[i]}; lengths must be at least 1")
    h, w = shape
    total = h * w
    # Checked before adding starts to lengths, so huge values cannot overflow int64 and wrap.
    if (starts > total).any() or (lengths > total).any():
        i = int(np.argmax((starts > total) | (lengths > total)))
        what = f"starts at pixel {starts[i]}" if starts[i] > total else f"has length {lengths[i]}"
        raise ValueError(
            f"RLE run {i + 1} {what}, past the {h}x{w} image (height x width, {total} pixels)"
        )
    ends = starts + lengths  # one past the last pixel of each run
    if len(starts) > 1:
        back = starts[1:] < ends[:-1]
        if back.any():
            i = int(np.argmax(back)) + 1
            raise ValueError(
                f"RLE run {i + 1} (start {starts[i]}) overlaps or goes back before the end of "
                f"run {i} (pixel {ends[i - 1] - 1})"
            )
    if ends[-1] - 1 > total:
        raise ValueError(
            f"RLE run {len(starts)} ends at pixel {ends[-1] - 1}, past the {h}x{w} image "
            f"(height x width, {total} pixels)"
        )
    return runs


def decode(rle: str | float | None, shape: tuple[int, int] = (256, 1600)) -> np.ndarray:
    """Decode a Kaggle RLE string into a uint8 mask of ``shape`` (H, W); empty/NaN gives zeros.

    One ``np.repeat`` of alternating 0/1 values by (gap, run) lengths fills a (W, H) buffer whose
    C order *is* Kaggle's pixel order, and the transposed view is returned (Fortran-ordered;
    use ``np.ascontiguousarray`` where a C-ordered array is required, e.g. by OpenCV).
    """
    h, w = shape
    runs = parse(rle, shape)
    if len(runs) == 0:
        return np.zeros((h, w), dtype=np.uint8)
    starts, lengths = runs[:, 0] - 1, runs[:, 1]
    ends = starts + lengths
    counts = np.empty(2 * len(runs) + 1, dtype=np.int64)  # gap, run, gap, run, ..., tail
    counts[0:-1:2] = starts - np.concatenate(([0], ends[:-1]))
    counts[1::2] = lengths
    counts[-1] = h * w - ends[-1]
    values = np.zeros(len(counts), dtype=np.uint8)
    values[1::2] = 1
    return np.repeat(values, counts).reshape(w, h).T


def area(rle: str | float | None, shape: tuple[int, int] = (256, 1600)) -> int:
    """Number of pixels an RLE string covers, without building the mask."""
    return int(parse(rle, shape)[:, 1].sum())


def encode(mask: np.ndarray) -> str:
    """Encode an (H, W) mask (any nonzero pixel is set) as a Kaggle RLE string; empty -> ``""``."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"encode expects a 2-D (H, W) mask, got shape {mask.shape}")
    flat = np.ravel(mask, order="F") != 0
    if not flat.any():
        return ""
    padded = np.empty(flat.size + 2, dtype=np.int8)
    padded[0] = padded[-1] = 0
    padded[1:-1] = flat
    changes = np.flatnonzero(padded[1:] != padded[:-1]) + 1
    runs = changes.reshape(-1, 2)
    runs[:, 1] -= runs[:, 0]
    return " ".join(runs.ravel().astype(str).tolist())
