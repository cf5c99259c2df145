"""``POST /v1/inspect`` (one image) and ``POST /v1/inspect/batch`` (several, one result each)."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from steelscan.service.errors import error_responses
from steelscan.service.jobs import inspect_uploads, request_timings, with_timings
from steelscan.service.schemas import BatchOut, InspectionOut
from steelscan.service.state import StateDep
from steelscan.service.uploads import read_uploads, require_multipart

router = APIRouter(tags=["inspection"])

# The body is read by hand (multipart or raw), so the OpenAPI page is told what it may be.
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
_ERRORS = error_responses(413, 415, 422, 500, 503)

Overlay = Annotated[bool, Query(description="add the image with its defects drawn (PNG, base64)")]
Candidates = Annotated[
    bool, Query(description="add each class's mask as if its presence threshold were 0")
]
ImageId = Annotated[str | None, Query(description="id to report; default: the upload's file name")]


@router.post(
    "/v1/inspect",
    response_model=InspectionOut,
    response_model_exclude_none=True,
    responses=_ERRORS,
    openapi_extra=_SINGLE_BODY,
    summary="Inspect one image",
)
async def inspect(
    request: Request,
    state: StateDep,
    image_id: ImageId = None,
    overlay: Overlay = False,
    candidates: Candidates = False,
) -> dict[str, Any]:
    """One JPEG or PNG image (multipart file or raw body) -> per-class verdicts and masks."""
    t0 = time.perf_counter()
    uploads = await read_uploads(request, default_name=image_id or "upload", max_files=1)
    if image_id:
        uploads[0].name = image_id
    run = await inspect_uploads(state, uploads, candidates=candidates, overlay=overlay)
    return with_timings(
        state,
        run.results[0],
        t0,
        decode_ms=run.decode_ms,
        queue_ms=run.queue_ms,
        infer_ms=run.infer_ms,
    )


@router.post(
    "/v1/inspect/batch",
    response_model=BatchOut,
    response_model_exclude_none=True,
    responses=_ERRORS,
    openapi_extra=_BATCH_BODY,
    summary="Inspect several images",
)
async def inspect_batch(
    request: Request,
    state: StateDep,
    overlay: Annotated[bool, Query(description="add overlays (PNG, base64)")] = False,
    candidates: Candidates = False,
) -> dict[str, Any]:
    """Several images as multipart file parts -> one result each, in upload order.

    Every image is decoded and checked first; if any is bad, the request fails naming it and
    nothing is inferred. Per-image decode and inference times are the batch's shares.
    """
    t0 = time.perf_counter()
    require_multipart(request)
    uploads = await read_uploads(request, default_name="image", max_files=state.config.max_batch)
    run = await inspect_uploads(state, uploads, candidates=candidates, overlay=overlay)
    n = len(run.results)
    per = [
        with_timings(
            state,
            r,
            t0,
            decode_ms=run.decode_ms / n,
            queue_ms=run.queue_ms,
            infer_ms=run.infer_ms / n,
        )
        for r in run.results
    ]
    timings = request_timings(
        t0, decode_ms=run.decode_ms, queue_ms=run.queue_ms, infer_ms=run.infer_ms
    )
    return {"count": n, "results": per, "timings_ms": timings}
