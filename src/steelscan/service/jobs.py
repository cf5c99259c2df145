"""A request's trip through the service once its uploads are read, shared by both inspect routes:

1. admission: refused at once (503 + Retry-After) when the bounded queue is full, checked before
   decoding too, so an overloaded server spends nothing on extra requests;
2. decoding and the size check of *every* upload, off the event loop, before any inference: a
   batch with one bad image fails naming it and nothing is inferred (415 / 422);
3. inference on a worker thread (:mod:`steelscan.service.runner`), so the loop keeps answering;
4. the timings: the model's own stage times (``model_*``) plus decode, queue, inference, total;
   the results and stage times are counted in the metrics (:mod:`steelscan.service.metrics`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from starlette.concurrency import run_in_threadpool

from steelscan.service.errors import ApiError, busy
from steelscan.service.runner import QueueFull
from steelscan.service.state import ServiceState
from steelscan.service.uploads import Upload, decode_upload


@dataclass
class InspectionRun:
    """The results of one request's images and where its time went (milliseconds)."""

    results: list[dict[str, Any]]
    decode_ms: float
    queue_ms: float
    infer_ms: float


def admit(state: ServiceState) -> None:
    """503 now if the inference queue is full."""
    try:
        state.runner.check_admission()
    except QueueFull as exc:
        raise busy(exc) from exc


def _decode_all(state: ServiceState, uploads: list[Upload]) -> list[tuple[str, np.ndarray]]:
    channels = state.service.manifest.in_channels
    items = []
    for up in uploads:
        arr = decode_upload(up, channels)
        try:
            state.service.check_size(arr.shape[0], arr.shape[1], up.name)
        except ValueError as exc:
            raise ApiError(422, "wrong_image_size", str(exc)) from exc
        items.append((up.name, arr))
    return items


async def _infer(
    state: ServiceState, items: list[tuple[str, np.ndarray]], candidates: bool, overlay: bool
) -> tuple[list[dict[str, Any]], float, float]:
    """Results, queue ms and inference ms of one job on the runner."""
    t_submit = time.perf_counter()
    started_at: list[float] = []

    def job() -> list[dict[str, Any]]:
        started_at.append(time.perf_counter())
        return state.service.inspect(items, candidates=candidates, overlay=overlay)

    try:
        results = await state.runner.submit(job)
    except QueueFull as exc:
        raise busy(exc) from exc
    done = time.perf_counter()
    began = started_at[0] if started_at else t_submit
    return results, (began - t_submit) * 1000, (done - began) * 1000


async def inspect_uploads(
    state: ServiceState, uploads: list[Upload], *, candidates: bool, overlay: bool
) -> InspectionRun:
    """Admit, decode every upload, infer: steps 1-3 above; count what was found."""
    admit(state)
    t0 = time.perf_counter()
    items = await run_in_threadpool(_decode_all, state, uploads)
    decode_ms = (time.perf_counter() - t0) * 1000
    results, queue_ms, infer_ms = await _infer(state, items, candidates, overlay)
    state.metrics.observe_results(results)
    state.metrics.observe_stages(decode_ms=decode_ms, queue_ms=queue_ms, infer_ms=infer_ms)
    return InspectionRun(results, decode_ms, queue_ms, infer_ms)


def with_timings(
    state: ServiceState,
    d: dict[str, Any],
    t0: float,
    *,
    decode_ms: float,
    queue_ms: float,
    infer_ms: float,
) -> dict[str, Any]:
    """One result as the API returns it: the model's stage times renamed ``model_*``, the
    request's own times added (``total`` since ``t0``), and which model answered."""
    model_timings = d.pop("timings_ms", {})
    d["timings_ms"] = {
        **{f"model_{k}": v for k, v in model_timings.items()},
        **request_timings(t0, decode_ms=decode_ms, queue_ms=queue_ms, infer_ms=infer_ms),
    }
    d["model"] = state.service.model_ref
    return d


def request_timings(
    t0: float, *, decode_ms: float, queue_ms: float, infer_ms: float
) -> dict[str, float]:
    """decode / queue / inference / total, rounded to microseconds."""
    return {
        "decode": round(decode_ms, 3),
        "queue": round(queue_ms, 3),
        "inference": round(infer_ms, 3),
        "total": round((time.perf_counter() - t0) * 1000, 3),
    }
