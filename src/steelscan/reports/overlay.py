"""Class colours and mask/box overlays, shared by reports, prediction overlays and the web page.

NumPy only (no matplotlib), so the service and the CLI can draw overlays without the plotting
stack; OpenCV (a runtime dependency) is imported only to write the text of the detector's score
labels. Class ``i`` (0-based) always gets ``PALETTE[i % len(PALETTE)]`` everywhere.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

Color = tuple[int, int, int]

# Colour-blind-friendly (Okabe-Ito based) and distinct on grey steel: class 1 orange, class 2
# sky blue, class 3 bluish green, class 4 vermilion/red; then more for datasets with more classes.
PALETTE: tuple[Color, ...] = (
    (230, 159, 0),
    (86, 180, 233),
    (0, 158, 115),
    (213, 94, 0),
    (204, 121, 167),
    (240, 228, 66),
    (0, 114, 178),
    (150, 150, 150),
)


def class_color(index: int) -> Color:
    """The RGB colour of the 0-based class ``index``."""
    return PALETTE[index % len(PALETTE)]


def class_colors(k: int) -> list[Color]:
    """The colours of classes ``0 .. k-1``."""
    return [class_color(i) for i in range(k)]


def hex_color(color: Color) -> str:
    """``#rrggbb`` for HTML/CSS and matplotlib."""
    return "#{:02x}{:02x}{:02x}".format(*color)


def _as_rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {image.dtype}")
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise ValueError(f"image must be HxW, HxWx1, HxWx3 or HxWx4, got shape {image.shape}")
    if image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)
    return np.ascontiguousarray(image[..., :3])


def outline(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """The inner border (``width`` pixels) of a mask: set pixels with an unset 4-neighbour."""
    m = np.asarray(mask).astype(bool)
    inner = m.copy()
    for _ in range(max(1, width)):
        p = np.pad(inner, 1, constant_values=False)
        inner = inner & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return m & ~inner


def overlay(
    image: np.ndarray,
    masks: np.ndarray,
    colors: Sequence[Color] | None = None,
    alpha: float = 0.4,
    edge: int = 1,
) -> np.ndarray:
    """Tint each class's mask in its colour over ``image`` and draw its outline opaque.

    ``image``: HxW or HxWx{1,3,4} uint8; ``masks``: (K, H, W), nonzero = set (e.g. uint8 0/1 or
    bool); ``colors``: one RGB per class, default :data:`PALETTE`. Returns a new HxWx3 uint8 image.
    Fill is translucent so the defect stays visible under it; outlines keep edges readable.
    """
    rgb = _as_rgb(image)
    masks = np.asarray(masks)
    if masks.ndim == 2:
        masks = masks[None]
    if masks.ndim != 3 or masks.shape[1:] != rgb.shape[:2]:
        raise ValueError(f"masks must be (K, {rgb.shape[0]}, {rgb.shape[1]}), got {masks.shape}")
    colors = list(colors) if colors is not None else class_colors(len(masks))
    if len(colors) < len(masks):
        raise ValueError(f"{len(masks)} masks but only {len(colors)} colours")
    out = rgb.astype(np.float32)
    for mask, color in zip(masks, colors, strict=False):
        m = mask.astype(bool)
        if not m.any():
            continue
        c = np.asarray(color, np.float32)
        out[m] = (1.0 - alpha) * out[m] + alpha * c
        if edge > 0:
            out[outline(m, edge)] = c
    return np.rint(out).astype(np.uint8)


def _frame(out: np.ndarray, color: Color, x1: int, y1: int, x2: int, y2: int, t: int) -> None:
    """One rectangle's border, ``t`` pixels, in place; the box is already inside ``out``."""
    t = max(1, min(t, (x2 - x1 + 1) // 2, (y2 - y1 + 1) // 2))
    out[y1 : y1 + t, x1:x2] = color
    out[y2 - t : y2, x1:x2] = color
    out[y1:y2, x1 : x1 + t] = color
    out[y1:y2, x2 - t : x2] = color


def draw_boxes(
    image: np.ndarray,
    boxes: Sequence[tuple[int, int, int, int, int]],
    colors: Sequence[Color] | None = None,
    thickness: int = 2,
) -> np.ndarray:
    """Draw rectangles ``(class_index, x1, y1, x2, y2)`` (x2/y2 exclusive) in class colours.

    Returns a new HxWx3 uint8 image; boxes are clipped to the image.
    """
    out = _as_rgb(image).copy()
    h, w = out.shape[:2]
    for cls, x1, y1, x2, y2 in boxes:
        color = colors[cls] if colors is not None else class_color(cls)
        x1, x2 = max(0, min(x1, w)), max(0, min(x2, w))
        y1, y2 = max(0, min(y1, h)), max(0, min(y2, h))
        if x2 <= x1 or y2 <= y1:
            continue
        _frame(out, color, x1, y1, x2, y2, thickness)
    return out


def _pixel_box(d: Any, h: int, w: int) -> tuple[int, int, int, int]:
    """A float box ``d.x1 .. d.y2`` as whole pixels covering it, at least one pixel each way and
    inside the image (an untrained detector's boxes can be a fraction of a pixel)."""
    x1 = min(max(0, math.floor(d.x1)), w - 1)
    y1 = min(max(0, math.floor(d.y1)), h - 1)
    x2 = min(max(x1 + 1, math.ceil(d.x2)), w)
    y2 = min(max(y1 + 1, math.ceil(d.y2)), h)
    return x1, y1, x2, y2


def box_style(h: int, w: int) -> tuple[int, float]:
    """Line thickness and label font scale for an image of ``h`` x ``w``: one pixel and a small
    font on a 200 px NEU image, thicker and larger on a 1600 px Severstal strip."""
    side = max(h, w)
    return max(1, round(side / 500)), min(1.0, max(0.3, side / 1600))


def _label(out: np.ndarray, text: str, x: int, y: int, color: Color, scale: float) -> None:
    """``text`` on a filled tag in ``color`` above (x, y), or below it at the top edge."""
    import cv2

    h, w = out.shape[:2]
    font = cv2.FONT_HERSHEY_SIMPLEX
    (tw, th), base = cv2.getTextSize(text, font, scale, 1)
    top = y - th - base - 2 if y - th - base - 2 >= 0 else min(y + 1, max(0, h - th - base - 2))
    left = min(max(0, x), max(0, w - tw - 2))
    out[top : top + th + base + 2, left : left + tw + 2] = color
    ink = (0, 0, 0) if sum(color) > 380 else (255, 255, 255)
    cv2.putText(out, text, (left + 1, top + th + 1), font, scale, ink, 1, cv2.LINE_AA)


def draw_detections(
    image: np.ndarray,
    detections: Sequence[Any],
    names: Sequence[str] | None = None,
    colors: Sequence[Color] | None = None,
    *,
    labels: bool = True,
) -> np.ndarray:
    """Draw the detector's boxes: a frame in the class colour and a ``name 0.87`` score tag each.

    ``detections``: objects with ``class_index``, ``score`` and float corners ``x1, y1, x2, y2``
    (:class:`steelscan.inference.boxes.DetectedBox`), best first; each is drawn with its tag,
    worst first, so the best box's frame and tag end on top. Line and font sizes follow the
    image's size (:func:`box_style`). Returns a new HxWx3 uint8 image.
    """
    out = np.ascontiguousarray(_as_rgb(image).copy())
    h, w = out.shape[:2]
    if not detections or h == 0 or w == 0:
        return out
    thickness, scale = box_style(h, w)
    for d in reversed(detections):
        cls = int(d.class_index)
        color = colors[cls] if colors is not None else class_color(cls)
        x1, y1, x2, y2 = _pixel_box(d, h, w)
        _frame(out, color, x1, y1, x2, y2, thickness)
        if labels:
            name = names[cls] if names is not None and cls < len(names) else str(cls + 1)
            _label(out, f"{name} {float(d.score):.2f}", x1, y1, color, scale)
    return out
