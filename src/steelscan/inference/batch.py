"""Pipelined, streaming batch prediction: decoding and post-processing overlap model execution.

Three stages run at once, joined by bounded queues::

    feeder ──decode jobs──> worker pool ──> model thread ──post jobs──> worker pool ──> caller
    (inputs)                (JPEG/PNG)      (gate + segment,            (thresholds,
                                             whole batches)              components, boxes)

* The model thread only ever waits for decoding when the workers are genuinely behind: decode
  jobs are submitted up to ``queue_size`` images ahead of it.
* Memory stays flat for any number of images: the queues are bounded, so at most a few batches
  of images, probabilities and masks are alive at once, and results are yielded (never collected).
* Results come back in input order, each input exactly once. An image that cannot be read or
  inspected yields an :class:`InspectionResult` whose ``error`` names the file and the problem;
  the stream goes on.

Decoders (Pillow, OpenCV), NumPy and ONNX Runtime/PyTorch kernels release the GIL, so threads
are enough; processes would only add copies of (K, H, W) probability arrays.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from steelscan.imageio import ImageReadError, decode_image, read_image, to_channels
from steelscan.inference.result import InspectionResult

ImageSource = str | Path | bytes | np.ndarray
_END = object()
_POLL_S = 0.1


@dataclass
class _Failure:
    """An unexpected exception in a pipeline thread, re-raised in the caller's thread."""

    exc: BaseException


@dataclass
class _Decoded:
    image_id: str
    image: np.ndarray | None
    error: str | None
    decode_ms: float
    submitted: float


def error_result(
    image_id: str, message: str, timings: dict[str, float] | None = None
) -> InspectionResult:
    """The result for an image that could not be inspected: no classes, ``error`` set."""
    return InspectionResult(
        image_id=str(image_id),
        height=0,
        width=0,
        defect_probability=float("nan"),
        classes=[],
        timings_ms=dict(timings or {}),
        error=message,
    )


def _load(source: ImageSource, image_id: str, channels: int) -> np.ndarray:
    if isinstance(source, np.ndarray):
        if source.dtype != np.uint8 or source.ndim not in (2, 3):
            raise ImageReadError(
                f"{image_id}: expected an H x W (x C) uint8 array, "
                f"got {source.dtype} {source.shape}"
            )
        return to_channels(source, channels)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return decode_image(bytes(source), name=str(image_id), channels=channels)
    return read_image(source, channels=channels)


def _put(q: queue.Queue, item: Any, stop: threading.Event) -> bool:
    """Blocking put that gives up when the pipeline is being torn down."""
    while not stop.is_set():
        try:
            q.put(item, timeout=_POLL_S)
            return True
        except queue.Full:
            continue
    return False


def _get(q: queue.Queue, stop: threading.Event) -> Any:
    while not stop.is_set():
        try:
            return q.get(timeout=_POLL_S)
        except queue.Empty:
            continue
    return _END


def _done(value: InspectionResult) -> Future:
    fut: Future = Future()
    fut.set_result(value)
    return fut


class _Pipeline:
    def __init__(
        self,
        inspector: Any,
        inputs: Iterable[tuple[str, ImageSource]],
        batch_size: int,
        workers: int,
        queue_size: int | None,
        keep_images: bool,
    ) -> None:
        self.inspector = inspector
        self.inputs = inputs
        self.batch_size = max(1, int(batch_size))
        self.keep_images = keep_images
        depth = queue_size or 2 * self.batch_size + 2
        self.stop = threading.Event()
        self.pool = ThreadPoolExecutor(
            max_workers=max(1, int(workers)), thread_name_prefix="steelscan-io"
        )
        self.decoded: queue.Queue = queue.Queue(maxsize=depth)
        self.results: queue.Queue = queue.Queue(maxsize=depth)
        self.channels = int(inspector.manifest.in_channels)
        self.threads = [
            threading.Thread(
                target=self._guard(self._feed, self.decoded), name="steelscan-feed", daemon=True
            ),
            threading.Thread(
                target=self._guard(self._model, self.results), name="steelscan-model", daemon=True
            ),
        ]

    # -- stages --------------------------------------------------------------------------------
    def _guard(self, fn: Callable[[], None], out: queue.Queue) -> Callable[[], None]:
        def run() -> None:
            try:
                fn()
            except BaseException as exc:  # noqa: BLE001 - handed to the caller, never swallowed
                _put(out, _Failure(exc), self.stop)

        return run

    def _decode(self, image_id: str, source: ImageSource, submitted: float) -> _Decoded:
        t0 = time.perf_counter()
        try:
            img = _load(source, image_id, self.channels)
            self.inspector.check_size(img.shape[0], img.shape[1], str(image_id))
            return _Decoded(image_id, img, None, (time.perf_counter() - t0) * 1000, submitted)
        except (ImageReadError, ValueError, OSError) as exc:
            return _Decoded(image_id, None, str(exc), (time.perf_counter() - t0) * 1000, submitted)

    def _feed(self) -> None:
        for item in self.inputs:
            if self.stop.is_set():
                return
            image_id, source = item
            fut = self.pool.submit(self._decode, str(image_id), source, time.perf_counter())
            if not _put(self.decoded, fut, self.stop):
                return
        _put(self.decoded, _END, self.stop)

    def _model(self) -> None:
        finished = False
        while not finished and not self.stop.is_set():
            futures: list[Future] = []
            while len(futures) < self.batch_size:
                item = _get(self.decoded, self.stop)
                if item is _END:
                    finished = True
                    break
                if isinstance(item, _Failure):
                    _put(self.results, item, self.stop)
                    return
                futures.append(item)
            if futures:
                for fut in self._run_batch([f.result() for f in futures]):
                    if not _put(self.results, fut, self.stop):
                        return
        _put(self.results, _END, self.stop)

    def _raw(self, images: Sequence[np.ndarray]) -> tuple[list[Any], float]:
        t0 = time.perf_counter()
        raws = self.inspector.raw(list(images))
        return raws, (time.perf_counter() - t0) * 1000 / max(1, len(images))

    def _run_batch(self, items: list[_Decoded]) -> list[Future]:
        good = [d for d in items if d.image is not None]
        raws: dict[int, Any] = {}
        errors: dict[int, str] = {}
        model_ms = 0.0
        if good:
            try:
                out, model_ms = self._raw([d.image for d in good])
                raws = {id(d): r for d, r in zip(good, out, strict=True)}
            except (ValueError, RuntimeError, MemoryError):
                # One bad image must not sink its batch: retry one at a time to find it.
                for d in good:
                    try:
                        out, ms = self._raw([d.image])
                        raws[id(d)] = out[0]
                        model_ms = ms
                    except (ValueError, RuntimeError, MemoryError) as exc:
                        errors[id(d)] = f"{d.image_id}: inspection failed: {exc}"
        futures: list[Future] = []
        for d in items:
            timings = {"decode": d.decode_ms}
            if d.error is not None or id(d) in errors:
                timings["latency"] = (time.perf_counter() - d.submitted) * 1000
                futures.append(_done(error_result(d.image_id, d.error or errors[id(d)], timings)))
                continue
            timings["model"] = model_ms
            futures.append(self.pool.submit(self._finish, d, raws[id(d)], timings))
        return futures

    def _finish(self, d: _Decoded, raw: Any, timings: dict[str, float]) -> InspectionResult:
        try:
            res = self.inspector.finish(raw, d.image_id)
        except (ValueError, RuntimeError, MemoryError) as exc:
            res = error_result(d.image_id, f"{d.image_id}: post-processing failed: {exc}")
        post = res.timings_ms.get("postprocess")
        res.timings_ms = {**timings, **({"postprocess": post} if post is not None else {})}
        res.timings_ms["latency"] = (time.perf_counter() - d.submitted) * 1000
        if self.keep_images:
            res._image = d.image  # type: ignore[attr-defined]  # handed out by iter_predict_with_images
        return res

    # -- driver --------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[InspectionResult]:
        for t in self.threads:
            t.start()
        try:
            while True:
                item = _get(self.results, self.stop)
                if item is _END:
                    return
                if isinstance(item, _Failure):
                    raise item.exc
                yield item.result()
        finally:
            self.close()

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=30)
        self.pool.shutdown(wait=True, cancel_futures=True)


def iter_predict(
    inspector: Any,
    inputs: Iterable[tuple[str, ImageSource]],
    batch_size: int = 8,
    workers: int = 2,
    *,
    queue_size: int | None = None,
) -> Iterator[InspectionResult]:
    """Inspect ``(image_id, source)`` pairs as a pipelined stream: one result per input, in order.

    ``source`` is a path, encoded bytes or a uint8 array. ``inspector`` is an
    :class:`~steelscan.inference.inspector.Inspector` (its engine decides torch/onnx/int8).
    ``workers`` threads decode and post-process; ``queue_size`` bounds how many images may be
    in flight between stages (default ``2 * batch_size + 2``). Each result's ``timings_ms`` holds
    ``decode``, ``model`` (its share of the batch), ``postprocess`` and ``latency`` (from the
    start of its decode until its result was ready). Unreadable images yield results with
    ``error`` set. Stopping the iteration early shuts the threads down.
    """
    yield from _Pipeline(inspector, inputs, batch_size, workers, queue_size, keep_images=False)


def iter_predict_with_images(
    inspector: Any,
    inputs: Iterable[tuple[str, ImageSource]],
    batch_size: int = 8,
    workers: int = 2,
    *,
    queue_size: int | None = None,
) -> Iterator[tuple[InspectionResult, np.ndarray | None]]:
    """Like :func:`iter_predict`, also yielding each decoded image (``None`` on error): overlays."""
    for res in _Pipeline(inspector, inputs, batch_size, workers, queue_size, keep_images=True):
        image = res.__dict__.pop("_image", None)
        yield res, image
