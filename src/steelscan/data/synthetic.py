"""Synthetic steel-strip images in the Severstal layout, for tests, demos and quick experiments.

Real Severstal data cannot be redistributed, yet every part of steelscan (training, tuning,
evaluation, the service) needs labelled images to run end to end. This module renders a
steel-like grayscale texture and four visually distinct defect types whose masks are the
thresholded rendering itself, so a small CNN can learn them in minutes on a CPU:

* class 1 -- clusters of small dark pits on a faint dark haze (mask: the closed cluster region);
* class 2 -- thin, long, near-vertical bright scratches;
* class 3 -- elongated dark horizontal/oblique streak patches with a striated interior;
* class 4 -- large, very dark blotchy regions.

Class frequencies follow the real data's order (class 3 by far the most common, class 2 the
rarest, about 40% clean images, some images with two classes) through a deterministic schedule,
so even 20 images hold at least two of each class. The same seed gives byte-identical files.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from steelscan import rle
from steelscan.data.records import DataError, DataProblem

NUM_CLASSES = 4
JPEG_QUALITY = 95

# Fraction of all images per class combination. Image counts per class come out as
# c3 39% > c1 12% > c4 11% > c2 10% of images, with 60% defective and 12% multi-class: the
# real data's order (c3 5150 > c1 897 > c4 801 > c2 247), with the rare classes boosted so a
# model sees enough of them to learn, and a largest-remainder split keeps small n balanced.
SCHEDULE: tuple[tuple[tuple[int, ...], float], ...] = (
    ((), 0.40),
    ((3,), 0.27),
    ((1,), 0.08),
    ((4,), 0.07),
    ((2,), 0.06),
    ((1, 3), 0.04),
    ((3, 4), 0.04),
    ((2, 3), 0.04),
)

# The files a finished synthetic dataset holds; an existing folder with exactly these is replaced.
_OUTPUTS = {"train_images", "train.csv", "defect_and_no_defect.csv"}


def class_schedule(n: int, rng: np.random.Generator) -> list[tuple[int, ...]]:
    """The class combination of each of ``n`` images: exact proportions, shuffled by ``rng``.

    Largest-remainder rounding (ties by table order) rather than random draws, so that the
    counts are the same for every seed and small datasets still hold every class.
    """
    fracs = np.array([f for _, f in SCHEDULE])
    exact = fracs * n
    counts = np.floor(exact).astype(int)
    order = sorted(range(len(SCHEDULE)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[: n - int(counts.sum())]:
        counts[i] += 1
    combos = [SCHEDULE[i][0] for i, c in enumerate(counts) for _ in range(c)]
    return [combos[i] for i in rng.permutation(n)]


def _image_ids(n: int, rng: np.random.Generator) -> list[str]:
    """``n`` distinct Kaggle-like ids (9 hex digits + ``.jpg``), sorted like Kaggle's listing."""
    ids: set[str] = set()
    while len(ids) < n:
        for v in rng.integers(0, 16**9, size=n - len(ids), dtype=np.int64):
            ids.add(f"{int(v):09x}.jpg")
    return sorted(ids)


# --- rendering -----------------------------------------------------------------------------


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cells: tuple[int, int]):
    """Low-frequency noise in [-1, 1]: random values on a coarse grid, upsampled bicubically."""
    ch, cw = max(2, cells[0]), max(2, cells[1])
    coarse = rng.uniform(-1.0, 1.0, size=(ch, cw)).astype(np.float32)
    return cv2.resize(coarse, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Rolled-steel texture: base grey, brightness gradients, horizontal streaks, fine noise."""
    base = rng.uniform(85.0, 140.0)
    yy = np.linspace(-1.0, 1.0, h, dtype=np.float32)[:, None]
    xx = np.linspace(-1.0, 1.0, w, dtype=np.float32)[None, :]
    img = base + rng.uniform(-14, 14) * xx + rng.uniform(-8, 8) * yy
    # Rolling streaks: noise that varies fast down the image and slowly along it.
    img = img + rng.uniform(4, 9) * _smooth_noise(rng, (h, w), (h // 3, w // 120))
    img = img + rng.uniform(2, 4) * _smooth_noise(rng, (h, w), (h, w // 25))
    img = img + 6.0 * _smooth_noise(rng, (h, w), (4, 8))  # large-scale illumination
    img = img + rng.normal(0.0, 3.5, size=(h, w)).astype(np.float32)
    return img.astype(np.float32)


class _Canvas:
    """The defect intensity field, per-class masks and the area already used by defects."""

    def __init__(self, h: int, w: int) -> None:
        self.h, self.w = h, w
        self.delta = np.zeros((h, w), np.float32)
        self.masks = np.zeros((NUM_CLASSES, h, w), np.uint8)
        self.used = np.zeros((h, w), bool)
        self.s = max(h / 256.0, 0.35)  # vertical scale vs. the real 256-pixel height
        self.sx = max(w / 1600.0, 0.35)
        self.force = False  # last resort on tiny images: a new defect takes pixels over

    def place(self, rng: np.random.Generator, bh: int, bw: int) -> tuple[int, int, int, int]:
        """A box of at most ``bh`` x ``bw`` inside the image, avoiding earlier defects if it can."""
        bh, bw = max(3, min(bh, self.h - 2)), max(3, min(bw, self.w - 2))
        margin = max(2, int(6 * self.s))
        y0 = x0 = 0
        for _ in range(40):
            y0 = int(rng.integers(0, self.h - bh + 1))
            x0 = int(rng.integers(0, self.w - bw + 1))
            ys = slice(max(0, y0 - margin), y0 + bh + margin)
            xs = slice(max(0, x0 - margin), x0 + bw + margin)
            if not self.used[ys, xs].any():
                break
        return y0, x0, bh, bw

    def add(self, cls: int, y0: int, x0: int, delta: np.ndarray, mask: np.ndarray) -> None:
        """Add one rendered defect (class ``cls``, 1-based) whose box starts at ``(y0, x0)``."""
        bh, bw = mask.shape
        sl = (slice(y0, y0 + bh), slice(x0, x0 + bw))
        mask = mask.astype(bool)
        if self.force:
            self.masks[:, sl[0], sl[1]][:, mask] = 0
        else:
            mask &= ~self.used[sl]  # classes never share a pixel
        if not mask.any():
            return  # fully hidden by earlier defects: leave no unlabelled trace
        self.delta[sl] += delta
        self.masks[cls - 1][sl] |= mask
        self.used[sl] |= mask


def _soft(binary: np.ndarray, sigma: float) -> np.ndarray:
    """A binary shape blurred to soft edges; its 0.5 level is the visible boundary."""
    return cv2.GaussianBlur(binary.astype(np.float32), (0, 0), sigmaX=max(sigma, 0.5))


def _pits(rng: np.random.Generator, cv: _Canvas) -> None:
    """Class 1: a cluster of small dark pits on a faint haze; the mask is the closed cluster."""
    s = min(cv.s, cv.sx * 1.6)
    k = max(3, int(round(36 * s)) | 1)  # closing kernel: pits this close merge into one region
    pad = k // 2 + 3  # keep pits off the box edge so the closed region is not cut square
    bh = int(rng.uniform(45, 110) * cv.s) + 2 * pad
    bw = int(rng.uniform(90, 230) * cv.sx) + 2 * pad
    y0, x0, bh, bw = cv.place(rng, bh, bw)
    py, px = min(pad, bh // 3), min(pad, bw // 3)
    yy, xx = np.mgrid[0:bh, 0:bw].astype(np.float32)
    pits = np.zeros((bh, bw), np.float32)
    count = int(rng.integers(18, 40))
    cy = rng.normal(bh / 2, (bh - 2 * py) / 4, count).clip(py, bh - 1 - py)
    cx = rng.normal(bw / 2, (bw - 2 * px) / 4, count).clip(px, bw - 1 - px)
    radius = rng.uniform(3.0, 6.0, count) * max(s, 0.6)
    for y, x, r in zip(cy, cx, radius, strict=True):
        dist = np.sqrt((yy - y) ** 2 + (xx - x) ** 2)
        pits = np.maximum(pits, np.clip(r - dist + 0.5, 0.0, 1.0))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    region = cv2.morphologyEx((pits > 0.5).astype(np.uint8), cv2.MORPH_CLOSE, kernel)
    haze = _soft(region, 2.0 * s)
    depth = rng.uniform(50, 70)
    delta = -depth * pits - rng.uniform(20, 28) * haze
    cv.add(1, y0, x0, delta, (haze >= 0.5) | (pits > 0.5))


def _scratch(rng: np.random.Generator, cv: _Canvas) -> None:
    """Class 2: a thin, long, near-vertical bright scratch."""
    length = int(rng.uniform(0.55, 1.0) * cv.h)
    width = max(2.0, rng.uniform(4.0, 8.0) * min(cv.s, cv.sx * 1.6))
    slope = rng.uniform(-0.15, 0.15)
    bw = int(abs(slope) * length + 4 * width + 4)
    y0, x0, bh, bw = cv.place(rng, length, bw)
    yy, xx = np.mgrid[0:bh, 0:bw].astype(np.float32)
    start = 2 * width + (0 if slope >= 0 else abs(slope) * bh)
    wiggle = 1.5 * cv.sx * _smooth_noise(rng, (bh, 1), (max(2, bh // 40), 2))
    centre = start + slope * yy + wiggle
    across = np.clip(width / 2 - np.abs(xx - centre) + 0.5, 0.0, 1.0)
    taper = np.clip(np.minimum(yy, bh - 1 - yy) / max(3.0, 0.08 * bh), 0.0, 1.0)
    profile = across * taper
    delta = rng.uniform(60, 85) * profile
    cv.add(2, y0, x0, delta, profile >= 0.5)


def _streak(rng: np.random.Generator, cv: _Canvas) -> None:
    """Class 3: an elongated dark streak patch, horizontal or oblique, with striations inside."""
    length = rng.uniform(130, 460) * cv.sx
    thick = rng.uniform(16, 46) * cv.s
    angle = np.deg2rad(rng.uniform(-18, 18))
    c, s_ = np.cos(angle), np.sin(angle)
    bw = int(abs(length * c) + abs(thick * s_) + 8)
    bh = int(abs(length * s_) + abs(thick * c) + 8)
    y0, x0, bh, bw = cv.place(rng, bh, bw)
    yy, xx = np.mgrid[0:bh, 0:bw].astype(np.float32)
    u = (xx - bw / 2) * c + (yy - bh / 2) * s_  # along the streak
    v = -(xx - bw / 2) * s_ + (yy - bh / 2) * c  # across it
    a = min(length, bw / max(abs(c), 1e-3)) / 2 - 3
    b = thick / 2
    wobble = 1.0 + 0.35 * _smooth_noise(rng, (bh, bw), (3, 6))
    shape = (np.abs(u) / max(a, 2.0)) ** 2.5 + (np.abs(v) / np.maximum(b * wobble, 1.0)) ** 2 < 1.0
    env = _soft(shape, 1.5 * cv.s)
    period = max(3.0, rng.uniform(5, 9) * cv.s)
    stripes = 0.5 + 0.5 * np.sin(
        2 * np.pi * v / period + 2.0 * _smooth_noise(rng, (bh, bw), (2, 8))
    )
    texture = 0.65 + 0.35 * stripes
    delta = -rng.uniform(38, 55) * env * texture
    cv.add(3, y0, x0, delta, env >= 0.5)


def _blotch(rng: np.random.Generator, cv: _Canvas) -> None:
    """Class 4: a large, very dark, irregular blotch."""
    bh = int(rng.uniform(0.4, 0.85) * cv.h)
    bw = int(rng.uniform(150, 380) * cv.sx)
    y0, x0, bh, bw = cv.place(rng, bh, bw)
    yy = np.linspace(-1, 1, bh, dtype=np.float32)[:, None]
    xx = np.linspace(-1, 1, bw, dtype=np.float32)[None, :]
    radial = 1.0 - (xx**2 + yy**2)
    field = radial + 0.45 * _smooth_noise(rng, (bh, bw), (5, 8))
    shape = field > 0.45
    env = _soft(shape, 2.5 * cv.s)
    inner = 0.85 + 0.15 * _smooth_noise(rng, (bh, bw), (max(2, bh // 8), max(2, bw // 8)))
    delta = -rng.uniform(62, 85) * env * inner
    cv.add(4, y0, x0, delta, env >= 0.5)


_RENDER: dict[int, tuple[Callable[[np.random.Generator, _Canvas], None], tuple[int, int]]] = {
    1: (_pits, (1, 2)),  # renderer, (min, max) instances per image
    2: (_scratch, (1, 2)),
    3: (_streak, (1, 3)),
    4: (_blotch, (1, 1)),
}


def render_image(
    rng: np.random.Generator, classes: tuple[int, ...], height: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic image: ``(gray HxW uint8, masks (4, H, W) uint8)`` holding ``classes``.

    Every requested class gets a non-empty mask; the masks are what the rendering shows.
    """
    img = _background(rng, height, width)
    cv = _Canvas(height, width)
    for cls in classes:
        fn, (lo, hi) = _RENDER[cls]
        for _ in range(int(rng.integers(lo, hi + 1))):
            fn(rng, cv)
        tries = 0
        while not cv.masks[cls - 1].any():  # only tiny images can lose a defect to overlap
            cv.force = tries >= 10
            fn(rng, cv)
            tries += 1
        cv.force = False
    out = np.clip(img + cv.delta, 0, 255)
    return np.rint(out).astype(np.uint8), cv.masks


# --- writing -------------------------------------------------------------------------------


def _jpeg_bytes(gray: np.ndarray) -> bytes:
    """3-channel (R=G=B) JPEG at quality 95, as the Severstal files are 3-channel grayscale."""
    buf = io.BytesIO()
    Image.fromarray(np.repeat(gray[..., None], 3, axis=2)).save(
        buf, format="JPEG", quality=JPEG_QUALITY
    )
    return buf.getvalue()


def _check_args(n: int, height: int, width: int) -> None:
    for name, value, low in (("n", n, 1), ("height", height, 32), ("width", width, 32)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"{name} must be an integer, got {value!r}")
        if value < low:
            raise ValueError(f"{name} must be at least {low}, got {value}")


def _prepare_target(out: Path) -> None:
    """Refuse to replace a folder that is not an earlier synthetic dataset: never lose data."""
    if out.exists() and not out.is_dir():
        raise DataError([DataProblem(str(out), "exists and is not a folder")])
    if out.is_dir():
        extra = {p.name for p in out.iterdir()} - _OUTPUTS
        if extra:
            raise DataError(
                [
                    DataProblem(
                        str(out),
                        f"folder is not empty and holds files a synthetic dataset does not "
                        f"({', '.join(sorted(extra)[:5])}); choose a new or empty folder",
                    )
                ]
            )


def synthesize(
    out: str | Path,
    n: int = 200,
    seed: int = 0,
    height: int = 256,
    width: int = 1600,
    progress: bool = True,
) -> Path:
    """Write a synthetic Severstal-layout dataset into ``out`` and return ``out``.

    ``out/train_images/<id>.jpg``, ``out/train.csv`` (``ImageId,ClassId,EncodedPixels``, one row
    per present class, RLE of the true masks) and ``out/defect_and_no_defect.csv``
    (``ImageID,label``). Everything is written to a temporary sibling folder first and renamed
    into place at the end, so a failure leaves no partial dataset. ``out`` may be absent, empty,
    or an earlier synthetic dataset (replaced); anything else is refused.
    """
    _check_args(n, height, width)
    out = Path(out)
    _prepare_target(out)
    out.parent.mkdir(parents=True, exist_ok=True)

    root = np.random.SeedSequence(seed)
    rng = np.random.default_rng(root.spawn(1)[0])
    ids = _image_ids(n, rng)
    combos = class_schedule(n, rng)
    children = root.spawn(n)  # one stream per image: an image does not depend on earlier ones

    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        (tmp / "train_images").mkdir()
        rows: list[tuple[str, int, str]] = []
        labels: list[tuple[str, int]] = []
        bar = tqdm(
            zip(ids, combos, children, strict=True),
            total=n,
            desc="synthesising",
            unit="img",
            disable=not progress,
        )
        for image_id, combo, child in bar:
            gray, masks = render_image(np.random.default_rng(child), combo, height, width)
            (tmp / "train_images" / image_id).write_bytes(_jpeg_bytes(gray))
            for cls in sorted(combo):
                rows.append((image_id, cls, rle.encode(masks[cls - 1])))
            labels.append((image_id, int(bool(combo))))
        _write_csv(tmp / "train.csv", ("ImageId", "ClassId", "EncodedPixels"), rows)
        _write_csv(tmp / "defect_and_no_defect.csv", ("ImageID", "label"), labels)
        _swap_in(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _write_csv(path: Path, header: tuple[str, ...], rows: list[tuple]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def _swap_in(tmp: Path, out: Path) -> None:
    """Move the finished dataset into ``out``; an earlier dataset there is removed only after."""
    old = None
    if out.exists():
        if any(out.iterdir()):
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(old)
        else:
            out.rmdir()
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
