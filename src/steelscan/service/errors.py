"""Every error the API answers is JSON ``{"error", "message", "status"}``, never an HTML page.

Handlers cover the service's own :class:`ApiError`, FastAPI's request validation, Starlette's HTTP
errors (404, 405, a malformed multipart body's 400) and, last, anything unexpected: that one is a
500 with the same JSON shape, so a client never has to parse two kinds of error body.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from steelscan.service.metrics import mark_error
from steelscan.service.runner import QueueFull
from steelscan.service.schemas import ErrorOut

log = logging.getLogger("steelscan.service")

# What each documented error status means, for the OpenAPI page.
ERROR_DESCRIPTIONS = {
    413: "Upload larger than the configured limit, or an image of more pixels than the "
    "decoded-pixel limit (STEELSCAN_MAX_PIXELS)",
    415: "Not a JPEG or PNG image",
    422: "Undecodable image, wrong image size, or no image in the request",
    500: "The model failed on a valid image (a server fault, never a bad request)",
    503: "Inference queue full; retry after the Retry-After header's seconds",
}
_HTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}


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


class InspectionFailed(RuntimeError):
    """The model or post-processing failed on an image that decoded fine (answered as a 500)."""


def error_response(
    status: int, error: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    """The one error body shape."""
    body = {"error": error, "message": message, "status": status}
    return JSONResponse(body, status_code=status, headers=headers)


def busy(exc: QueueFull) -> ApiError:
    """503 with Retry-After for a full inference queue."""
    return ApiError(503, "busy", str(exc), headers={"Retry-After": str(exc.retry_after)})


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` entry of a route, so /docs lists its error statuses and body."""
    return {c: {"model": ErrorOut, "description": ERROR_DESCRIPTIONS[c]} for c in codes}


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for e in exc.errors():
        loc = ".".join(str(x) for x in e.get("loc", ()) if x not in ("query", "body"))
        parts.append(f"{loc}: {e.get('msg', 'invalid')}" if loc else e.get("msg", "invalid"))
    return "; ".join(parts) or "invalid request"


def _answer(
    request: Request, status: int, error: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    """The error body, its code noted for ``steelscan_errors_total``."""
    mark_error(request.scope, error)
    return error_response(status, error, message, headers)


async def _on_api_error(request: Request, exc: ApiError) -> JSONResponse:
    return _answer(request, exc.status, exc.error, exc.message, exc.headers)


async def _on_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
    return _answer(request, 422, "invalid_request", _validation_message(exc))


async def _on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return _answer(
        request,
        exc.status_code,
        _HTTP_CODES.get(exc.status_code, "http_error"),
        str(exc.detail),
        dict(exc.headers) if exc.headers else None,
    )


async def _on_inspection_failed(request: Request, exc: InspectionFailed) -> JSONResponse:
    log.error("inspection failed: %s", exc)
    return _answer(request, 500, "inference_failed", str(exc))


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    # Starlette re-raises after this response is sent, so uvicorn still logs the traceback.
    message = f"internal server error ({type(exc).__name__})"
    return _answer(request, 500, "internal_error", message)


def install_error_handlers(app: FastAPI) -> None:
    """Register the JSON handlers on ``app``."""
    app.add_exception_handler(ApiError, _on_api_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _on_validation)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _on_http)  # type: ignore[arg-type]
    app.add_exception_handler(InspectionFailed, _on_inspection_failed)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _on_unexpected)
