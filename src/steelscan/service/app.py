"""The inspection service: a FastAPI app around one inspector (:mod:`steelscan.inference`).

The model is loaded once, before the app is built (:func:`load_service`), so a broken bundle stops
``steelscan serve`` with a clear message instead of failing on the first request. Every request:

1. is limited in size by :class:`UploadLimitMiddleware` (Content-Length *and* counted bytes, so a
   chunked upload cannot slip past) -> 413;
2. is sniffed by its magic bytes, not by its declared type -> 415 when it is not JPEG or PNG;
3. is decoded off the event loop and checked against the model's image size -> 422;
4. is admitted to the bounded inference queue or refused at once -> 503 + ``Retry-After``;
5. runs on a worker thread (:mod:`steelscan.service.runner`) so the loop keeps answering.

Errors are always JSON ``{"error", "message", "status"}``; a bad request never yields a 500 and
never stops the server.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from steelscan import __version__
from steelscan.imageio import ImageReadError, decode_image, encode_png
from steelscan.inference.result import InspectionResult
from steelscan.manifest import ModelManifest, PostProcess
from steelscan.service.runner import InferenceRunner, QueueFull
from steelscan.service.schemas import (
    BatchOut,
    ErrorOut,
    HealthOut,
    InspectionOut,
    ModelOut,
)

log = logging.getLogger("steelscan.service")

STATIC_DIR = Path(__file__).parent / "static"
MB = 1024 * 1024
DEFAULT_MAX_UPLOAD_BYTES = 20 * MB
DEFAULT_MAX_BATCH = 16
DEFAULT_MAX_QUEUE = 8


# -- configuration and the loaded model ------------------------------------------------------
@dataclass
class ServiceConfig:
    """Limits of one running service; every one is a ``steelscan serve`` option."""

    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    max_batch: int = DEFAULT_MAX_BATCH
    workers: int = 1
    max_queue: int = DEFAULT_MAX_QUEUE


def bundle_version(model_dir: Path, manifest: ModelManifest) -> str:
    """A short content hash of the manifest and weights: changes whenever the model does.

    The manifest has a name and a creation time but two retrainings can share both; clients that
    cache results need something that changes with the weights.
    """
    h = hashlib.sha256()
    files = [model_dir / "manifest.json"]
    for spec in (manifest.classifier, manifest.segmenter):
        if spec is not None:
            files.append(model_dir / spec.weights_file)
    for f in files:
        if f.is_file():
            h.update(f.name.encode())
            with open(f, "rb") as fh:
                for chunk in iter(lambda fh=fh: fh.read(MB), b""):
                    h.update(chunk)
    return h.hexdigest()[:12]


class InspectionService:
    """The loaded model plus the blocking work done for a request (runs on a worker thread)."""

    def __init__(self, inspector: Any, *, version: str, engine: str) -> None:
        self.inspector = inspector
        self.manifest: ModelManifest = inspector.manifest
        self.version = version
        self.engine = engine
        pp: PostProcess = getattr(inspector, "postprocess", self.manifest.postprocess)
        self.postprocess = pp
        k = self.manifest.num_classes
        # "What would each class look like if its presence threshold were 0": the web page's
        # threshold slider shows these without asking the server again.
        self._open_pp = pp.model_copy(
            update={
                "gate_mode": "soft" if pp.gate_mode == "soft" else "none",
                "class_thresholds": [0.0] * k,
                "min_areas": [0] * k,
            }
        )

    @property
    def model_ref(self) -> dict[str, str]:
        return {"name": self.manifest.name, "version": self.version, "engine": self.engine}

    def check_size(self, h: int, w: int, name: str) -> None:
        self.inspector.check_size(h, w, name)

    def inspect(
        self, items: list[tuple[str, np.ndarray]], *, candidates: bool, overlay: bool
    ) -> list[dict[str, Any]]:
        """Inspect decoded images; blocking, so it is only ever called on a worker thread."""
        if candidates:
            raws = self.inspector.raw([a for _, a in items], skip_gated=False)
            ids = [image_id for image_id, _ in items]
            results = [self.inspector.finish(r, i) for i, r in zip(ids, raws, strict=True)]
            opens = [
                self.inspector.finish(r, i, postprocess=self._open_pp)
                for i, r in zip(ids, raws, strict=True)
            ]
        else:
            results = self.inspector.inspect_batch(items)
            opens = [None] * len(items)
        out = []
        for (_, image), res, open_res in zip(items, results, opens, strict=True):
            d = res.to_dict()
            if open_res is not None:
                for cd, oc in zip(d["classes"], open_res.classes, strict=True):
                    od = oc.to_dict()
                    cd["candidate"] = {"area": od["area"], "boxes": od["boxes"], "rle": od["rle"]}
            if overlay:
                d["overlay_png"] = base64.b64encode(_overlay_png(image, res)).decode("ascii")
            out.append(d)
        return out


def _overlay_png(image: np.ndarray, result: InspectionResult) -> bytes:
    from steelscan.reports.overlay import overlay

    masks = np.stack([c.mask for c in result.classes]) if result.classes else None
    if masks is None:
        return encode_png(image)
    return encode_png(overlay(image, masks))


def load_service(
    model_dir: str | Path, engine: str = "torch", **engine_opts: Any
) -> InspectionService:
    """Load the bundle once; raises the bundle's own clear errors (BundleError, ValueError).

    ``engine_opts`` go to the engine (``bf16``, ``int8``, ``device``...), so the service runs the
    same configurations ``steelscan predict`` does.
    """
    model_dir = Path(model_dir)
    if not model_dir.exists():
        raise FileNotFoundError(f"{model_dir}: model bundle directory not found")
    if not model_dir.is_dir():
        raise NotADirectoryError(f"{model_dir}: not a directory (expected a model bundle folder)")
    from steelscan.inference.predictor import Inspector  # imports torch: after the cheap checks

    inspector = Inspector(model_dir, engine=engine, strict_size=True, **engine_opts)
    return InspectionService(
        inspector, version=bundle_version(model_dir, inspector.manifest), engine=engine
    )


# -- errors ---------------------------------------------------------------------------------
class ApiError(Exception):
    """A client error with its HTTP status; the handler turns it into the JSON error body."""

    def __init__(
        self, status: int, error: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message
        self.headers = headers


def _error_response(
    status: int, error: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    body = {"error": error, "message": message, "status": status}
    return JSONResponse(body, status_code=status, headers=headers)


def _too_large(limit: int, size: int | None = None) -> ApiError:
    got = f" ({size / MB:.1f} MB)" if size is not None else ""
    return ApiError(
        413,
        "payload_too_large",
        f"the upload{got} is larger than the server's limit of {limit / MB:g} MB",
    )


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
        length = None
        for key, value in scope.get("headers", []):
            if key == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    length = None
        if length is not None and length > self.max_bytes:
            err = _too_large(self.max_bytes, length)
            response = _error_response(err.status, err.error, err.message, {"Connection": "close"})
            await response(scope, receive, send)
            return
        received = 0

        async def counted() -> dict[str, Any]:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _too_large(self.max_bytes)
            return message

        await self.app(scope, counted, send)


# -- uploads --------------------------------------------------------------------------------
@dataclass
class Upload:
    name: str
    data: bytes
    content_type: str


_ACCEPTED_MAGIC = ((b"\xff\xd8\xff", "image/jpeg"), (b"\x89PNG\r\n\x1a\n", "image/png"))
_OTHER_IMAGE_MAGIC = (
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"II*\x00", "image/tiff"),
    (b"MM\x00*", "image/tiff"),
    (b"BM", "image/bmp"),
)


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


def decode_upload(upload: Upload, channels: int) -> np.ndarray:
    """Bytes -> image array, or an :class:`ApiError` (415 not an image, 422 undecodable)."""
    if not upload.data:
        raise ApiError(422, "empty_image", f"{upload.name}: the upload is empty")
    kind = sniff_image_type(upload.data)
    if kind is None:
        if _claims_jpeg_or_png(upload):
            raise ApiError(
                422,
                "undecodable_image",
                f"{upload.name}: declared as a JPEG or PNG image but its bytes are not one "
                "(corrupt or mislabelled file)",
            )
        declared = upload.content_type or "no content type"
        raise ApiError(
            415,
            "unsupported_media_type",
            f"{upload.name}: not an image ({declared}); send a JPEG or PNG file",
        )
    if kind not in ("image/jpeg", "image/png"):
        raise ApiError(
            415,
            "unsupported_media_type",
            f"{upload.name}: {kind} is not accepted; send JPEG or PNG",
        )
    try:
        return decode_image(upload.data, name=upload.name, channels=channels)
    except ImageReadError as exc:
        raise ApiError(422, "undecodable_image", str(exc)) from exc


async def read_uploads(request: Request, *, default_name: str, max_files: int) -> list[Upload]:
    """The images of a request: every file part of a multipart form, or the raw body."""
    ctype = request.headers.get("content-type", "")
    if ctype.lower().startswith("multipart/form-data"):
        try:
            form = await request.form(max_files=max_files, max_fields=max_files + 16)
        except StarletteHTTPException as exc:
            if "too many files" in str(exc.detail).lower():
                hint = "; use /v1/inspect/batch for several" if max_files == 1 else ""
                message = f"more than {max_files} image(s) in one request{hint}"
                raise ApiError(422, "too_many_images", message) from exc
            raise
        uploads = []
        try:
            for _field, value in form.multi_items():
                if isinstance(value, UploadFile):
                    data = await value.read()
                    uploads.append(
                        Upload(
                            name=value.filename or f"{default_name}-{len(uploads)}",
                            data=data,
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
    data = await request.body()
    if not data:
        raise ApiError(
            422,
            "no_image",
            "the request body is empty; send a JPEG or PNG as the body or as a multipart file",
        )
    return [Upload(name=default_name, data=data, content_type=ctype)]


# -- the app --------------------------------------------------------------------------------
_IMAGE_SCHEMA = {"type": "string", "format": "binary"}
_SINGLE_BODY = {
    "requestBody": {
        "required": True,
        "description": "One JPEG or PNG image: a multipart file part, or the raw request body.",
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": _IMAGE_SCHEMA},
                    "required": ["file"],
                }
            },
            "image/jpeg": {"schema": _IMAGE_SCHEMA},
            "image/png": {"schema": _IMAGE_SCHEMA},
            "application/octet-stream": {"schema": _IMAGE_SCHEMA},
        },
    }
}
_BATCH_BODY = {
    "requestBody": {
        "required": True,
        "description": "Several JPEG or PNG images as multipart file parts; one result each.",
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"files": {"type": "array", "items": _IMAGE_SCHEMA}},
                    "required": ["files"],
                }
            }
        },
    }
}


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    text = {
        413: "Upload larger than the configured limit",
        415: "Not a JPEG or PNG image",
        422: "Undecodable image, wrong image size, or no image in the request",
        503: "Inference queue full; retry after the Retry-After header's seconds",
    }
    return {c: {"model": ErrorOut, "description": text[c]} for c in codes}


def _docs_assets() -> Path | None:
    """Swagger UI's files from the fastapi-offline package, so /docs works without internet.

    FastAPI's default /docs loads Swagger UI from a CDN, which a plant network or an air-gapped
    inspection PC cannot reach; without the package we fall back to that default.
    """
    try:
        import fastapi_offline
    except ImportError:
        return None
    static = Path(fastapi_offline.__file__).parent / "static"
    return static if (static / "swagger-ui-bundle.js").is_file() else None


def create_app(service: InspectionService, config: ServiceConfig | None = None) -> FastAPI:
    """Build the app around an already loaded model (tests and ``steelscan serve`` both use it)."""
    config = config or ServiceConfig()
    runner = InferenceRunner(workers=config.workers, max_queue=config.max_queue)
    started = time.time()
    manifest = service.manifest
    channels = manifest.in_channels
    docs_assets = _docs_assets()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        runner.shutdown()

    app = FastAPI(
        title="steelscan inspection service",
        version=__version__,
        description=(
            "Finds surface defects on steel strip images with a trained steelscan model. "
            f"Model **{manifest.name}** ({service.version}), classes: "
            f"{', '.join(manifest.classes)}. Errors are JSON `{{error, message, status}}`."
        ),
        lifespan=lifespan,
        docs_url=None if docs_assets else "/docs",
        redoc_url=None,
    )
    if docs_assets:
        app.mount("/docs-assets", StaticFiles(directory=docs_assets), name="docs-assets")

        @app.get("/docs", include_in_schema=False)
        async def docs() -> HTMLResponse:
            return get_swagger_ui_html(
                openapi_url=app.openapi_url or "/openapi.json",
                title=f"{app.title} - API docs",
                swagger_js_url="/docs-assets/swagger-ui-bundle.js",
                swagger_css_url="/docs-assets/swagger-ui.css",
                swagger_favicon_url="/docs-assets/favicon.png",
            )

    app.state.service = service
    app.state.runner = runner
    app.state.config = config
    app.add_middleware(UploadLimitMiddleware, max_bytes=config.max_upload_bytes)

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return _error_response(exc.status, exc.error, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for e in exc.errors():
            loc = ".".join(str(x) for x in e.get("loc", ()) if x not in ("query", "body"))
            parts.append(f"{loc}: {e.get('msg', 'invalid')}" if loc else e.get("msg", "invalid"))
        return _error_response(422, "invalid_request", "; ".join(parts) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}
        return _error_response(
            exc.status_code,
            codes.get(exc.status_code, "http_error"),
            str(exc.detail),
            dict(exc.headers) if exc.headers else None,
        )

    async def decode_all(uploads: list[Upload]) -> tuple[list[tuple[str, np.ndarray]], float]:
        """Decode and size-check every upload before any inference: all or nothing."""
        t0 = time.perf_counter()

        def work() -> list[tuple[str, np.ndarray]]:
            items = []
            for up in uploads:
                arr = decode_upload(up, channels)
                try:
                    service.check_size(arr.shape[0], arr.shape[1], up.name)
                except ValueError as exc:
                    raise ApiError(422, "wrong_image_size", str(exc)) from exc
                items.append((up.name, arr))
            return items

        items = await run_in_threadpool(work)
        return items, (time.perf_counter() - t0) * 1000

    async def run_inspection(
        items: list[tuple[str, np.ndarray]], *, candidates: bool, overlay: bool
    ) -> tuple[list[dict[str, Any]], float, float]:
        t_submit = time.perf_counter()
        started_at: list[float] = []

        def job() -> list[dict[str, Any]]:
            started_at.append(time.perf_counter())
            return service.inspect(items, candidates=candidates, overlay=overlay)

        try:
            results = await runner.submit(job)
        except QueueFull as exc:
            raise ApiError(
                503, "busy", str(exc), headers={"Retry-After": str(exc.retry_after)}
            ) from exc
        done = time.perf_counter()
        queue_ms = ((started_at[0] if started_at else done) - t_submit) * 1000
        infer_ms = (done - (started_at[0] if started_at else t_submit)) * 1000
        return results, queue_ms, infer_ms

    def refuse_if_full() -> None:
        # Checked before decoding too, so an overloaded server spends nothing on extra requests.
        try:
            runner.check_admission()
        except QueueFull as exc:
            raise ApiError(
                503, "busy", str(exc), headers={"Retry-After": str(exc.retry_after)}
            ) from exc

    def finish(
        d: dict[str, Any], t0: float, decode_ms: float, queue_ms: float, infer_ms: float
    ) -> dict[str, Any]:
        model_timings = d.pop("timings_ms", {})
        d["timings_ms"] = {
            **{f"model_{k}": v for k, v in model_timings.items()},
            "decode": round(decode_ms, 3),
            "queue": round(queue_ms, 3),
            "inference": round(infer_ms, 3),
            "total": round((time.perf_counter() - t0) * 1000, 3),
        }
        d["model"] = service.model_ref
        return d

    @app.post(
        "/v1/inspect",
        response_model=InspectionOut,
        response_model_exclude_none=True,
        responses=_errors(413, 415, 422, 503),
        openapi_extra=_SINGLE_BODY,
        summary="Inspect one image",
    )
    async def inspect(
        request: Request,
        image_id: Annotated[
            str | None, Query(description="id to report; default: the upload's file name")
        ] = None,
        overlay: Annotated[
            bool, Query(description="add the image with its defects drawn (PNG, base64)")
        ] = False,
        candidates: Annotated[
            bool,
            Query(description="add each class's mask as if its presence threshold were 0"),
        ] = False,
    ) -> dict[str, Any]:
        """One JPEG or PNG image (multipart file or raw body) -> per-class verdicts and masks."""
        t0 = time.perf_counter()
        uploads = await read_uploads(request, default_name=image_id or "upload", max_files=1)
        if image_id:
            uploads[0].name = image_id
        refuse_if_full()
        items, decode_ms = await decode_all(uploads)
        results, queue_ms, infer_ms = await run_inspection(
            items, candidates=candidates, overlay=overlay
        )
        return finish(results[0], t0, decode_ms, queue_ms, infer_ms)

    @app.post(
        "/v1/inspect/batch",
        response_model=BatchOut,
        response_model_exclude_none=True,
        responses=_errors(413, 415, 422, 503),
        openapi_extra=_BATCH_BODY,
        summary="Inspect several images",
    )
    async def inspect_batch(
        request: Request,
        overlay: Annotated[bool, Query(description="add overlays (PNG, base64)")] = False,
        candidates: Annotated[
            bool, Query(description="add each class's mask as if its presence threshold were 0")
        ] = False,
    ) -> dict[str, Any]:
        """Several images as multipart file parts -> one result each, in upload order.

        Every image is decoded and checked first; if any is bad, the request fails naming it and
        nothing is inferred.
        """
        t0 = time.perf_counter()
        ctype = request.headers.get("content-type", "")
        if not ctype.lower().startswith("multipart/form-data"):
            raise ApiError(
                415,
                "unsupported_media_type",
                f"a batch must be multipart/form-data with one file part per image (got "
                f"{ctype or 'no content type'})",
            )
        uploads = await read_uploads(request, default_name="image", max_files=config.max_batch)
        refuse_if_full()
        items, decode_ms = await decode_all(uploads)
        results, queue_ms, infer_ms = await run_inspection(
            items, candidates=candidates, overlay=overlay
        )
        n = len(results)
        per = [finish(r, t0, decode_ms / n, queue_ms, infer_ms / n) for r in results]
        total = round((time.perf_counter() - t0) * 1000, 3)
        return {
            "count": n,
            "results": per,
            "timings_ms": {
                "decode": round(decode_ms, 3),
                "queue": round(queue_ms, 3),
                "inference": round(infer_ms, 3),
                "total": total,
            },
        }

    @app.get("/health", response_model=HealthOut, summary="Liveness and model state")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "model_loaded": True,  # the app is only built around a loaded model
            "model": service.model_ref,
            "queue": vars(runner.stats()),
            "uptime_s": round(time.time() - started, 3),
        }

    @app.get("/v1/model", response_model=ModelOut, summary="The loaded model's metadata")
    async def model() -> dict[str, Any]:
        """Classes, tuned thresholds and the validation metrics they were tuned at."""
        pp = service.postprocess
        try:
            from steelscan.reports.overlay import class_color, hex_color

            colors = [hex_color(class_color(i)) for i in range(manifest.num_classes)]
        except ImportError:
            colors = [None] * manifest.num_classes
        classes = [
            {
                "index": i,
                "class_id": manifest.class_ids[i],
                "name": manifest.classes[i],
                "color": colors[i],
                "class_threshold": pp.class_thresholds[i],
                "pixel_threshold": pp.pixel_thresholds[i],
                "min_area": pp.min_areas[i],
                "min_component_area": pp.min_component_areas[i],
            }
            for i in range(manifest.num_classes)
        ]

        def stage(spec: Any) -> dict[str, Any] | None:
            if spec is None:
                return None
            return spec.model_dump(include={"arch", "encoder", "num_outputs", "aux_head"})

        return {
            "name": manifest.name,
            "version": service.version,
            "engine": service.engine,
            "precision": getattr(service.inspector.engine, "precision", "fp32"),
            "steelscan_version": manifest.steelscan_version,
            "created": manifest.created,
            "image_height": manifest.image_height,
            "image_width": manifest.image_width,
            "in_channels": manifest.in_channels,
            "classes": classes,
            "gate_mode": pp.gate_mode,
            "gate_threshold": pp.gate_threshold,
            "classifier": stage(manifest.classifier),
            "segmenter": stage(manifest.segmenter),
            "metrics": manifest.metrics,
            "limits": {
                "max_upload_bytes": config.max_upload_bytes,
                "max_batch": config.max_batch,
                "workers": config.workers,
                "max_queue": config.max_queue,
            },
        }

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app
