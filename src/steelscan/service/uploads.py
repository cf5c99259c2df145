"""From an HTTP request to decoded images: size limit, reading, sniffing, decoding.

* :class:`UploadLimitMiddleware` refuses an oversized body (413) by Content-Length *and* by
  counting, so a chunked upload cannot slip past and is never held in memory whole;
* :func:`read_uploads` takes every file part of a multipart form, or the raw body;
* :func:`decode_upload` trusts the magic bytes, not the declared type: 415 for anything but JPEG
  or PNG, 422 for an empty or undecodable one, 413 for one whose header declares more pixels than
  the decoded-pixel limit (a decompression bomb; refused before a pixel is decoded).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from steelscan.imageio import ImageReadError, ImageTooLarge, decode_image
from steelscan.service.errors import ApiError, error_response
from steelscan.service.metrics import mark_error

MB = 1024 * 1024
MULTIPART = "multipart/form-data"


@dataclass
class Upload:
    """One uploaded file, as the client named and typed it (neither is trusted for decoding)."""

    name: str
    data: bytes
    content_type: str


# -- the size limit -------------------------------------------------------------------------
def too_large(limit: int, size: int | None = None) -> ApiError:
    """The 413 for a body over ``limit`` bytes (``size`` when it is known up front)."""
    got = f" ({size / MB:.1f} MB)" if size is not None else ""
    return ApiError(
        413,
        "payload_too_large",
        f"the upload{got} is larger than the server's limit of {limit / MB:g} MB",
    )


def _content_length(scope: Scope) -> int | None:
    for key, value in scope.get("headers", []):
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class UploadLimitMiddleware:
    """Refuse request bodies over ``max_bytes``: by Content-Length up front, else by counting.

    Counting matters because a chunked upload has no Content-Length. The count is checked as the
    body is read, so an oversized body is never held in memory whole.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = _content_length(scope)
        if length is not None and length > self.max_bytes:
            err = too_large(self.max_bytes, length)
            mark_error(scope, err.error)
            response = error_response(err.status, err.error, err.message, {"Connection": "close"})
            await response(scope, receive, send)
            return
        received = 0

        async def counted() -> dict[str, Any]:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise too_large(self.max_bytes)
            return message

        await self.app(scope, counted, send)


# -- sniffing and decoding ------------------------------------------------------------------
_ACCEPTED_MAGIC = ((b"\xff\xd8\xff", "image/jpeg"), (b"\x89PNG\r\n\x1a\n", "image/png"))
_OTHER_IMAGE_MAGIC = (
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"II*\x00", "image/tiff"),
    (b"MM\x00*", "image/tiff"),
    (b"BM", "image/bmp"),
)
ACCEPTED_TYPES = ("image/jpeg", "image/png")


def sniff_image_type(data: bytes) -> str | None:
    """The image type from the magic bytes (``image/jpeg``, ``image/gif`` ...), or None."""
    for magic, kind in _ACCEPTED_MAGIC + _OTHER_IMAGE_MAGIC:
        if data.startswith(magic):
            return kind
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def _claims_jpeg_or_png(upload: Upload) -> bool:
    ct = upload.content_type.split(";")[0].strip().lower()
    suffix = Path(upload.name).suffix.lower()
    return ct in ("image/jpeg", "image/jpg", "image/png") or suffix in (".jpg", ".jpeg", ".png")


def _refuse_unsniffable(upload: Upload) -> ApiError:
    """No known magic: a corrupt JPEG/PNG (422) or something that is not an image (415)."""
    if _claims_jpeg_or_png(upload):
        return ApiError(
            422,
            "undecodable_image",
            f"{upload.name}: declared as a JPEG or PNG image but its bytes are not one "
            "(corrupt or mislabelled file)",
        )
    declared = upload.content_type or "no content type"
    return ApiError(
        415,
        "unsupported_media_type",
        f"{upload.name}: not an image ({declared}); send a JPEG or PNG file",
    )


def decode_upload(upload: Upload, channels: int) -> np.ndarray:
    """Bytes -> image array, or an :class:`ApiError` (415 not an image, 422 undecodable, 413 more
    pixels than the limit)."""
    if not upload.data:
        raise ApiError(422, "empty_image", f"{upload.name}: the upload is empty")
    kind = sniff_image_type(upload.data)
    if kind is None:
        raise _refuse_unsniffable(upload)
    if kind not in ACCEPTED_TYPES:
        raise ApiError(
            415,
            "unsupported_media_type",
            f"{upload.name}: {kind} is not accepted; send JPEG or PNG",
        )
    try:
        return decode_image(upload.data, name=upload.name, channels=channels)
    except ImageTooLarge as exc:
        raise ApiError(413, "image_too_large", str(exc)) from exc
    except ImageReadError as exc:
        raise ApiError(422, "undecodable_image", str(exc)) from exc


# -- reading the request --------------------------------------------------------------------
def is_multipart(request: Request) -> bool:
    return request.headers.get("content-type", "").lower().startswith(MULTIPART)


def require_multipart(request: Request) -> None:
    """415 unless the request is a multipart form (a batch needs one file part per image)."""
    if not is_multipart(request):
        ctype = request.headers.get("content-type", "")
        raise ApiError(
            415,
            "unsupported_media_type",
            f"a batch must be multipart/form-data with one file part per image (got "
            f"{ctype or 'no content type'})",
        )


async def _parse_form(request: Request, max_files: int) -> FormData:
    try:
        return await request.form(max_files=max_files, max_fields=max_files + 16)
    except StarletteHTTPException as exc:
        if "too many files" in str(exc.detail).lower():
            hint = "; use /v1/inspect/batch for several" if max_files == 1 else ""
            message = f"more than {max_files} image(s) in one request{hint}"
            raise ApiError(422, "too_many_images", message) from exc
        raise  # a malformed body: the HTTP handler answers its 400


async def _read_multipart(request: Request, default_name: str, max_files: int) -> list[Upload]:
    form = await _parse_form(request, max_files)
    uploads: list[Upload] = []
    try:
        for _field, value in form.multi_items():
            if isinstance(value, UploadFile):
                uploads.append(
                    Upload(
                        name=value.filename or f"{default_name}-{len(uploads)}",
                        data=await value.read(),
                        content_type=value.content_type or "",
                    )
                )
    finally:
        await form.close()
    if not uploads:
        raise ApiError(
            422, "no_image", "the multipart form holds no file; send the image as a file part"
        )
    return uploads


async def read_uploads(request: Request, *, default_name: str, max_files: int) -> list[Upload]:
    """The images of a request: every file part of a multipart form, or the raw body."""
    if is_multipart(request):
        return await _read_multipart(request, default_name, max_files)
    data = await request.body()
    if not data:
        raise ApiError(
            422,
            "no_image",
            "the request body is empty; send a JPEG or PNG as the body or as a multipart file",
        )
    return [
        Upload(name=default_name, data=data, content_type=request.headers.get("content-type", ""))
    ]
