"""The one place that decodes image bytes into the model's canonical form.

Canonical form: ``uint8`` array, H x W x C with C = 3 (RGB) or 1 (grayscale). JPEG and PNG;
grayscale, RGB, RGBA (alpha dropped) and 16-bit inputs (scaled to 8 bits) are all accepted.

Every decode first reads the header and refuses an image of more than :func:`max_pixels` pixels
before a single pixel is decoded: a decompression bomb (a 389 KB PNG that decodes to 20000x20000)
becomes an :class:`ImageTooLarge` error for that image, never an exhausted machine. The limit is
``STEELSCAN_MAX_PIXELS`` in the environment (default 40 megapixels: almost 100 Severstal strips'
worth, and about 0.5 GB once decoded and normalised) or :func:`set_max_pixels`. A PNG whose chunk
CRCs do not match its bytes (damaged on disk or in transit) is refused before decoding too.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
DEFAULT_MAX_PIXELS = 40_000_000
_max_pixels: int | None = None
# Our own limit replaces Pillow's bomb check (which warns, then raises a non-OSError past 2x).
Image.MAX_IMAGE_PIXELS = None


class ImageReadError(ValueError):
    """An image file or upload could not be decoded; the message names it."""


class ImageTooLarge(ImageReadError):
    """The header declares more pixels than the limit: refused before decoding."""


def max_pixels() -> int:
    """The decoded-pixel limit: :func:`set_max_pixels`, else ``STEELSCAN_MAX_PIXELS``, else 40 M."""
    if _max_pixels is not None:
        return _max_pixels
    raw = os.environ.get("STEELSCAN_MAX_PIXELS", "").replace("_", "")
    try:
        return int(raw) if raw else DEFAULT_MAX_PIXELS
    except ValueError:
        return DEFAULT_MAX_PIXELS


def set_max_pixels(limit: int | None) -> None:
    """Set the limit for this process (``None``: back to the environment or the default)."""
    global _max_pixels
    if limit is not None and int(limit) < 1:
        raise ValueError(f"the pixel limit must be at least 1, got {limit}")
    _max_pixels = None if limit is None else int(limit)


def check_pixels(height: int, width: int, name: str) -> None:
    """Raise :class:`ImageTooLarge` when ``height x width`` is over :func:`max_pixels`."""
    limit = max_pixels()
    if int(height) * int(width) > limit:
        raise ImageTooLarge(
            f"{name}: {width}x{height} is {int(height) * int(width):,} pixels, over the limit of "
            f"{limit:,} (set STEELSCAN_MAX_PIXELS to allow larger images)"
        )


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def check_png_chunks(data: bytes, name: str) -> None:
    """Raise :class:`ImageReadError` when a PNG chunk's CRC does not match its bytes.

    Pillow checks the CRC of the header chunks but not of the image data (IDAT), so a bit flipped
    in transit or on disk could decode into wrong pixels without a word; like libpng, steelscan
    refuses the file. A file that ends early is left to the decoder (it says "truncated")."""
    view = memoryview(data)
    pos = len(PNG_SIGNATURE)
    end = len(data)
    while pos + 12 <= end:
        (length,) = struct.unpack_from(">I", data, pos)
        kind = data[pos + 4 : pos + 8]
        stop = pos + 8 + length
        if stop + 4 > end:
            return  # truncated: the decoder reports it
        (crc,) = struct.unpack_from(">I", data, stop)
        if zlib.crc32(view[pos + 4 : stop]) != crc:
            label = kind.decode("latin-1") if kind.isalpha() else repr(kind)
            raise ImageReadError(
                f"{name}: corrupt PNG: the CRC of chunk {label} at byte {pos} does not match its "
                "data (the file was damaged)"
            )
        if kind == b"IEND":
            return
        pos = stop + 4


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
    if data.startswith(PNG_SIGNATURE):
        check_png_chunks(data, name)  # CRCs only: nothing is decoded
    try:
        with Image.open(io.BytesIO(data)) as img:
            check_pixels(img.height, img.width, name)  # header only: nothing decoded yet
            img.load()  # forces a full decode: truncated files raise here
            arr = _to_array(img)
    except ImageReadError:
        raise
    except UnidentifiedImageError as exc:
        raise ImageReadError(f"{name}: not a readable image (JPEG or PNG expected)") from exc
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageReadError(f"{name}: corrupt or truncated image ({exc})") from exc
    except MemoryError as exc:
        raise ImageReadError(f"{name}: not enough memory to decode this image") from exc
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
