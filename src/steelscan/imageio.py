"""The one place that decodes image bytes into the model's canonical form.

Canonical form: ``uint8`` array, H x W x C with C = 3 (RGB) or 1 (grayscale). JPEG and PNG;
grayscale, RGB, RGBA (alpha dropped) and 16-bit inputs (scaled to 8 bits) are all accepted.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


class ImageReadError(ValueError):
    """An image file or upload could not be decoded; the message names it."""


def _to_array(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if arr.max() > 255 or mode.startswith("I;16") else 255.0
        return np.clip(arr / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)[..., None]
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        return np.clip(arr, 0, 255).astype(np.uint8)[..., None]
    if mode in ("L", "1"):
        return np.asarray(img.convert("L"))[..., None]
    if mode == "LA":
        return np.asarray(img.convert("L"))[..., None]
    return np.asarray(img.convert("RGB"))


def decode_image(data: bytes, *, name: str = "<bytes>", channels: int = 3) -> np.ndarray:
    """Decode encoded image bytes; raise :class:`ImageReadError` naming ``name`` on any failure."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if not data:
        raise ImageReadError(f"{name}: the file is empty")
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()  # forces a full decode: truncated files raise here
            arr = _to_array(img)
    except UnidentifiedImageError as exc:
        raise ImageReadError(f"{name}: not a readable image (JPEG or PNG expected)") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(f"{name}: corrupt or truncated image ({exc})") from exc
    return to_channels(arr, channels)


def to_channels(arr: np.ndarray, channels: int) -> np.ndarray:
    """Convert an H x W x {1,3} uint8 array to the requested number of channels."""
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.shape[2] == channels:
        return np.ascontiguousarray(arr)
    if channels == 3:
        return np.ascontiguousarray(np.repeat(arr, 3, axis=2))
    gray = arr.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return np.clip(gray + 0.5, 0, 255).astype(np.uint8)[..., None]


def read_image(path: str | Path, *, channels: int = 3) -> np.ndarray:
    """Read an image file; a missing, unreadable or corrupt file raises :class:`ImageReadError`."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise ImageReadError(f"{path}: file not found") from exc
    except OSError as exc:
        raise ImageReadError(f"{path}: cannot read file ({exc.strerror or exc})") from exc
    return decode_image(data, name=str(path), channels=channels)


def image_size(path: str | Path) -> tuple[int, int]:
    """(height, width) from the header only; raises :class:`ImageReadError` if unreadable."""
    try:
        with Image.open(path) as img:
            return img.height, img.width
    except FileNotFoundError as exc:
        raise ImageReadError(f"{path}: file not found") from exc
    except (OSError, UnidentifiedImageError) as exc:
        raise ImageReadError(f"{path}: not a readable image ({exc})") from exc


def encode_png(arr: np.ndarray) -> bytes:
    """Encode an H x W x {1,3,4} uint8 array as PNG bytes."""
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()
