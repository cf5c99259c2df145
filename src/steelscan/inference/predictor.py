"""The one road an image takes: decode once, gate + segment through an engine, post-process once.

:class:`Predictor` is the single driver behind ``steelscan predict``, ``evaluate``, ``tune``, the
service, the demo and the validation at the end of training. :meth:`Predictor.stream` takes
``(image_id, source)`` pairs (a path, encoded bytes or a uint8 array) and yields one
:class:`Prediction` per input, in input order, each input exactly once; an image that cannot be
read or inspected yields a prediction whose ``result.error`` names it, and the stream goes on.

Two schedules run the same three stage functions (:meth:`_decode`, :meth:`_run_batch`,
:meth:`_finish`):

* ``workers=0``: inline, one batch at a time in the caller's thread (the service's request
  threads, small jobs);
* ``workers>0``: pipelined; decoding and post-processing run in a thread pool around the model
  thread, joined by bounded queues, so the model rarely waits and memory stays flat for any
  number of images. Decoders (Pillow, OpenCV), NumPy and the engines release the GIL, so threads
  are enough; processes would only add copies of (K, H, W) probability arrays.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from steelscan.imageio import (
    ImageReadError,
    check_pixels,
    decode_image,
    read_image,
    to_channels,
)
from steelscan.imaging import padded_size
from steelscan.inference.engines import Engine, make_engine
from steelscan.inference.postprocess import PostProcessor
from steelscan.inference.preprocess import PadMode, crop, to_batch
from steelscan.inference.raw import RawPrediction
from steelscan.inference.result import InspectionResult
from steelscan.manifest import ModelManifest, PostProcess

ImageSource = str | Path | bytes | np.ndarray
_END = object()
_POLL_S = 0.1


class WrongImageSize(ValueError):
    """An image's size is not the one the model was validated at (raised only in strict mode)."""

    def __init__(self, got: tuple[int, int], expected: tuple[int, int], name: str = "image"):
        self.got = got
        self.expected = expected
        super().__init__(
            f"{name}: size {got[1]}x{got[0]} (WxH) differs from the model's "
            f"{expected[1]}x{expected[0]}"
        )


@dataclass
class Prediction:
    """What the predictor says about one input: the verdict, and on request what it came from."""

    image_id: str
    result: InspectionResult
    raw: RawPrediction | None = None  # with keep_raw (tuning, evaluation, the service's slider)
    image: np.ndarray | None = None  # with keep_images (overlays)
    exception: BaseException | None = None  # what made it fail, for callers that raise

    @property
    def error(self) -> str | None:
        return self.result.error


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


@dataclass
class _Decoded:
    image_id: str
    image: np.ndarray | None
    error: str | None
    decode_ms: float
    submitted: float
    timings: dict[str, float] = field(default_factory=dict)
    exc: BaseException | None = None


def load_source(source: ImageSource, image_id: str, channels: int) -> np.ndarray:
    """Decode one input to the model's uint8 H x W x C; :class:`ImageReadError` names it."""
    if isinstance(source, np.ndarray):
        if source.dtype != np.uint8 or source.ndim not in (2, 3):
            raise ImageReadError(
                f"{image_id}: expected an H x W (x C) uint8 array, "
                f"got {source.dtype} {source.shape}"
            )
        check_pixels(source.shape[0], source.shape[1], str(image_id))
        return to_channels(source, channels)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return decode_image(bytes(source), name=str(image_id), channels=channels)
    if isinstance(source, (str, Path)):
        return read_image(source, channels=channels)
    raise ImageReadError(
        f"{image_id}: cannot inspect a {type(source).__name__}; pass an array, a path or bytes"
    )


class Predictor:
    """A bundle, an engine and a post-processor: everything needed to inspect images.

    ``model`` is a bundle directory or a loaded :class:`steelscan.bundle.LoadedBundle`.
    ``engine`` is a name (``auto`` picks the fastest engine recorded as keeping the score, see
    :func:`steelscan.inference.engines.choose_engine`) or a ready engine. ``gate_mode`` overrides
    the bundle's tuned mode; ``postprocess`` replaces its tuned settings. ``tta`` averages the
    segmenter over the identity and the two flips. ``strict_size`` rejects images whose size
    differs from the manifest's (the service uses that); otherwise any size is padded and cropped
    back. ``batch_size`` images share one forward pass; ``workers`` threads decode and
    post-process around the model (0: inline). Remaining keyword arguments go to the engine.
    """

    def __init__(
        self,
        model: Any,
        engine: str | Engine = "auto",
        gate_mode: str | None = None,
        tta: bool = False,
        batch_size: int | None = None,
        postprocess: PostProcess | None = None,
        *,
        strict_size: bool = False,
        pad_mode: PadMode = "reflect",
        workers: int = 2,
        **engine_opts: Any,
    ) -> None:
        if isinstance(model, (str, Path)):
            from steelscan.bundle import load_bundle

            model = load_bundle(model)
        self.bundle = model
        self.manifest: ModelManifest = model.manifest
        if isinstance(engine, str):
            from steelscan.inference.engines import choose_engine

            choice = choose_engine(model, engine, engine_opts)
            self.engine_choice = choice
            self.engine: Engine = make_engine(choice.engine, model, **choice.options)
            if batch_size is None:
                batch_size = choice.batch_size
        else:
            self.engine_choice = None
            self.engine = engine
        self.has_detector = bool(getattr(self.engine, "has_detector", False))
        if self.manifest.detector is not None and not self.has_detector:
            raise ValueError(
                f"the {self.engine.name} engine has no detector for this bundle (it has no "
                "exported detector); run `steelscan export` or use --engine torch"
            )
        if not self.engine.has_segmenter and not self.has_detector:
            raise ValueError(
                "the model bundle has neither a segmenter nor a detector; one is needed to find "
                "defects"
            )
        self.postprocessor = PostProcessor.for_manifest(self.manifest, postprocess, gate_mode)
        self.tta = bool(tta)
        self.batch_size = max(1, int(batch_size or 4))
        self.workers = max(0, int(workers))
        self.strict_size = strict_size
        self.pad_mode: PadMode = pad_mode

    # -- introspection ------------------------------------------------------------------------
    @property
    def postprocess(self) -> PostProcess:
        """The settings the post-processor applies."""
        return self.postprocessor.params

    @postprocess.setter
    def postprocess(self, params: PostProcess) -> None:
        self.postprocessor = self.postprocessor.with_params(params)

    @property
    def classes(self) -> list[str]:
        return list(self.manifest.classes)

    @property
    def class_ids(self) -> list[int]:
        return list(self.manifest.class_ids)

    @property
    def num_classes(self) -> int:
        return self.manifest.num_classes

    @property
    def expected_size(self) -> tuple[int, int]:
        return (self.manifest.image_height, self.manifest.image_width)

    @property
    def engine_label(self) -> str:
        """``engine precision`` as the CLI and the service report it (e.g. ``openvino int8``)."""
        return f"{self.engine.name} {getattr(self.engine, 'precision', 'fp32')}"

    def check_size(self, h: int, w: int, name: str = "image") -> None:
        """Raise :class:`WrongImageSize` when strict and (h, w) is not the model's size."""
        if h < 1 or w < 1:
            raise WrongImageSize((h, w), self.expected_size, name)
        if self.strict_size and (h, w) != self.expected_size:
            raise WrongImageSize((h, w), self.expected_size, name)

    # -- the three stages ---------------------------------------------------------------------
    def _decode(self, image_id: str, source: ImageSource, submitted: float) -> _Decoded:
        t0 = time.perf_counter()
        try:
            img = load_source(source, image_id, int(self.manifest.in_channels))
            self.check_size(img.shape[0], img.shape[1], str(image_id))
            return _Decoded(image_id, img, None, (time.perf_counter() - t0) * 1000, submitted)
        except (ImageReadError, ValueError, OSError) as exc:
            ms = (time.perf_counter() - t0) * 1000
            return _Decoded(image_id, None, str(exc), ms, submitted, exc=exc)

    def _segment(self, batch: np.ndarray) -> np.ndarray:
        probs = self.engine.segment(batch)
        if self.tta:
            probs = probs + self.engine.segment(batch[..., ::-1].copy())[..., ::-1]
            probs = probs + self.engine.segment(batch[..., ::-1, :].copy())[..., ::-1, :]
            probs = probs / 3.0
        return probs.astype(np.float32, copy=False)

    def _model(
        self, images: Sequence[np.ndarray], skip_gated: bool
    ) -> tuple[list[RawPrediction], list[dict[str, float]]]:
        """The model stage of one batch, run as one forward pass per padded size.

        An image is padded only to its own size's multiple of ``pad_multiple``, never to a larger
        companion's: a fully convolutional network near the padding, and an average-pooled gate
        over all of it, would otherwise answer differently for the same image in another batch
        (validation in training also pads each image on its own). A batch of one size (a
        Severstal line) stays one pass."""
        groups: dict[tuple[int, int], list[int]] = {}
        for i, img in enumerate(images):
            key = padded_size(int(img.shape[0]), int(img.shape[1]), self.manifest.pad_multiple)
            groups.setdefault(key, []).append(i)
        raws: list[Any] = [None] * len(images)
        times: list[Any] = [None] * len(images)
        for idx in groups.values():
            r, t = self._model_same_size([images[i] for i in idx], skip_gated)
            for j, i in enumerate(idx):
                raws[i], times[i] = r[j], t[j]
        return raws, times

    def _model_same_size(
        self, images: Sequence[np.ndarray], skip_gated: bool
    ) -> tuple[list[RawPrediction], list[dict[str, float]]]:
        """Gate, then segment only what the hard gate lets through (unless ``skip_gated`` is
        False: tuning needs every mask). Returns the raw outputs and each image's stage times."""
        k = self.num_classes
        n = len(images)
        t0 = time.perf_counter()
        batch, sizes = to_batch(images, self.manifest, pad_mode=self.pad_mode)
        t_pre = (time.perf_counter() - t0) * 1000 / n
        t0 = time.perf_counter()
        if self.engine.has_classifier:
            cls = self.engine.classify(batch).astype(np.float32, copy=False)
            if cls.shape[1] == 1:  # classic defect / no-defect gate: same probability for all K
                cls = np.repeat(cls, k, axis=1)
        else:
            cls = np.zeros((n, k), dtype=np.float32)
        t_cls = (time.perf_counter() - t0) * 1000 / n
        pp = self.postprocessor
        keep = [i for i in range(n) if not (skip_gated and pp.skips(pp.defect_probability(cls[i])))]
        masks: list[np.ndarray | None] = [None] * n
        dets: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        t_seg = t_det = 0.0
        if keep:
            sub = batch if len(keep) == n else batch[keep]
            if self.engine.has_segmenter:
                t0 = time.perf_counter()
                for i, m in zip(
                    keep, crop(self._segment(sub), [sizes[i] for i in keep]), strict=True
                ):
                    masks[i] = m
                t_seg = (time.perf_counter() - t0) * 1000 / len(keep)
            if self.has_detector:
                t0 = time.perf_counter()
                boxes, scores = self.engine.detect(sub)
                for j, i in enumerate(keep):
                    dets[i] = (boxes[j].astype(np.float32), scores[j].astype(np.float32))
                t_det = (time.perf_counter() - t0) * 1000 / len(keep)
        raws, times = [], []
        for i, (h, w) in enumerate(sizes):
            m = masks[i]
            if m is None:  # skipped by the hard gate (or no segmenter): no pixel is a defect
                m = np.zeros((k, h, w), dtype=np.float32)
            b, s = dets.get(i, (None, None))
            raws.append(RawPrediction(cls[i].copy(), m, boxes=b, box_scores=s))
            ran = i in keep
            t = {"preprocess": t_pre, "classify": t_cls, "segment": t_seg if ran else 0.0}
            if self.has_detector:
                t["detect"] = t_det if ran else 0.0
            times.append(t)
        return raws, times

    def _run_batch(self, items: list[_Decoded], skip_gated: bool) -> list[RawPrediction | None]:
        """The model stage for one batch; one bad image must not sink the others."""
        good = [d for d in items if d.image is not None]
        raws: dict[int, RawPrediction] = {}
        if good:
            try:
                out, times = self._model([d.image for d in good], skip_gated)  # type: ignore[misc]
                for d, r, t in zip(good, out, times, strict=True):
                    raws[id(d)] = r
                    d.timings.update(t, model=sum(t.values()))
            except (ValueError, RuntimeError, MemoryError):
                for d in good:  # retry one at a time to find the culprit
                    try:
                        out, times = self._model([d.image], skip_gated)  # type: ignore[list-item]
                        raws[id(d)] = out[0]
                        d.timings.update(times[0], model=sum(times[0].values()))
                    except (ValueError, RuntimeError, MemoryError) as exc:
                        d.error = f"{d.image_id}: inspection failed: {exc}"
                        d.exc = exc
        return [raws.get(id(d)) for d in items]

    def _finish(
        self, d: _Decoded, raw: RawPrediction | None, keep_raw: bool, keep_images: bool
    ) -> Prediction:
        timings = {"decode": d.decode_ms, **d.timings}
        if d.error is not None or raw is None:
            timings["latency"] = (time.perf_counter() - d.submitted) * 1000
            failed = Prediction(d.image_id, error_result(d.image_id, d.error or "failed", timings))
            failed.exception = d.exc
            return failed
        t0 = time.perf_counter()
        try:
            res = self.postprocessor.finish(raw, d.image_id)
        except (ValueError, RuntimeError, MemoryError) as exc:
            res = error_result(d.image_id, f"{d.image_id}: post-processing failed: {exc}")
        timings["postprocess"] = (time.perf_counter() - t0) * 1000
        timings["latency"] = (time.perf_counter() - d.submitted) * 1000
        res.timings_ms = timings
        return Prediction(
            d.image_id,
            res,
            raw=raw if keep_raw else None,
            image=d.image if keep_images else None,
        )

    # -- the driver ---------------------------------------------------------------------------
    def stream(
        self,
        inputs: Iterable[tuple[str, ImageSource]],
        *,
        keep_raw: bool = False,
        keep_images: bool = False,
        skip_gated: bool = True,
        workers: int | None = None,
        queue_size: int | None = None,
    ) -> Iterator[Prediction]:
        """One :class:`Prediction` per ``(image_id, source)`` input, in order, errors included.

        ``keep_raw`` keeps the probabilities (tuning, evaluation), ``keep_images`` the decoded
        image (overlays). ``skip_gated`` False segments even images the hard gate would skip.
        ``workers`` overrides the predictor's thread count (0: inline); ``queue_size`` bounds
        the images in flight between stages (default ``2 * batch_size + 2``). Each result's
        ``timings_ms`` holds ``decode``, ``model`` (its share of the batch), ``postprocess`` and
        ``latency``. Stopping the iteration early shuts the threads down.
        """
        n_workers = self.workers if workers is None else max(0, int(workers))
        opts = (keep_raw, keep_images, skip_gated)
        if n_workers == 0:
            yield from self._inline(inputs, *opts)
        else:
            yield from _Pipeline(self, inputs, n_workers, queue_size, *opts)

    def _inline(
        self,
        inputs: Iterable[tuple[str, ImageSource]],
        keep_raw: bool,
        keep_images: bool,
        skip_gated: bool,
    ) -> Iterator[Prediction]:
        chunk: list[_Decoded] = []
        for image_id, source in inputs:
            chunk.append(self._decode(str(image_id), source, time.perf_counter()))
            if len(chunk) == self.batch_size:
                yield from self._flush(chunk, keep_raw, keep_images, skip_gated)
                chunk = []
        if chunk:
            yield from self._flush(chunk, keep_raw, keep_images, skip_gated)

    def _flush(
        self, chunk: list[_Decoded], keep_raw: bool, keep_images: bool, skip_gated: bool
    ) -> Iterator[Prediction]:
        for d, raw in zip(chunk, self._run_batch(chunk, skip_gated), strict=True):
            yield self._finish(d, raw, keep_raw, keep_images)

    # -- conveniences (all through stream) ----------------------------------------------------
    def inspect(self, image: ImageSource, image_id: str | None = None) -> InspectionResult:
        """Inspect one image given as an array, a file path or encoded bytes.

        Raises what made it fail (:class:`~steelscan.imageio.ImageReadError`,
        :class:`WrongImageSize`...) instead of returning an error result.
        """
        if image_id is None:
            image_id = Path(image).name if isinstance(image, (str, Path)) else "image"
        return self.inspect_batch([(image_id, image)])[0]

    def inspect_batch(self, items: Sequence[tuple[str, ImageSource]]) -> list[InspectionResult]:
        """Inspect several images at once (batched); raises on the first image that failed."""
        out = []
        for p in self.stream(items, workers=0):
            if p.error is not None:
                raise _failure(p)
            out.append(p.result)
        return out

    def raw(self, images: Sequence[ImageSource], *, skip_gated: bool = True) -> list[RawPrediction]:
        """Model probabilities before post-processing, one :class:`RawPrediction` per image."""
        items = [(f"image {i}", img) for i, img in enumerate(images)]
        out = []
        for p in self.stream(items, keep_raw=True, skip_gated=skip_gated, workers=0):
            if p.raw is None:
                raise _failure(p)
            out.append(p.raw)
        return out

    def finish(
        self, raw: RawPrediction, image_id: str, postprocess: PostProcess | None = None
    ) -> InspectionResult:
        """Post-process one raw output (with other settings when ``postprocess`` is given)."""
        pp = (
            self.postprocessor
            if postprocess is None
            else self.postprocessor.with_params(postprocess)
        )
        return pp.finish(raw, image_id)


def _failure(p: Prediction) -> BaseException:
    """The exception a one-shot caller sees for a failed prediction."""
    return p.exception or ImageReadError(p.error or f"{p.image_id}: inspection failed")


# --------------------------------------------------------------------------- pipelined schedule
@dataclass
class _Failure:
    """An unexpected exception in a pipeline thread, re-raised in the caller's thread."""

    exc: BaseException


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


def _done(value: Prediction) -> Future:
    fut: Future = Future()
    fut.set_result(value)
    return fut


class _Pipeline:
    """feeder -> decode pool -> model thread -> post-process pool -> caller (bounded queues)."""

    def __init__(
        self,
        predictor: Predictor,
        inputs: Iterable[tuple[str, ImageSource]],
        workers: int,
        queue_size: int | None,
        keep_raw: bool,
        keep_images: bool,
        skip_gated: bool,
    ) -> None:
        self.p = predictor
        self.inputs = inputs
        self.opts = (keep_raw, keep_images)
        self.skip_gated = skip_gated
        depth = queue_size or 2 * predictor.batch_size + 2
        self.stop = threading.Event()
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="steelscan-io")
        self.decoded: queue.Queue = queue.Queue(maxsize=depth)
        self.results: queue.Queue = queue.Queue(maxsize=depth)
        self.threads = [
            threading.Thread(
                target=self._guard(self._feed, self.decoded), name="steelscan-feed", daemon=True
            ),
            threading.Thread(
                target=self._guard(self._model, self.results), name="steelscan-model", daemon=True
            ),
        ]

    def _guard(self, fn: Callable[[], None], out: queue.Queue) -> Callable[[], None]:
        def run() -> None:
            try:
                fn()
            except BaseException as exc:  # noqa: BLE001 - handed to the caller, never swallowed
                _put(out, _Failure(exc), self.stop)

        return run

    def _feed(self) -> None:
        for image_id, source in self.inputs:
            if self.stop.is_set():
                return
            fut = self.pool.submit(self.p._decode, str(image_id), source, time.perf_counter())
            if not _put(self.decoded, fut, self.stop):
                return
        _put(self.decoded, _END, self.stop)

    def _model(self) -> None:
        finished = False
        while not finished and not self.stop.is_set():
            futures: list[Future] = []
            while len(futures) < self.p.batch_size:
                item = _get(self.decoded, self.stop)
                if item is _END:
                    finished = True
                    break
                if isinstance(item, _Failure):
                    _put(self.results, item, self.stop)
                    return
                futures.append(item)
            if futures:
                chunk = [f.result() for f in futures]
                raws = self.p._run_batch(chunk, self.skip_gated)
                for d, raw in zip(chunk, raws, strict=True):
                    if d.error is not None or raw is None:
                        fut = _done(self.p._finish(d, None, *self.opts))
                    else:
                        fut = self.pool.submit(self.p._finish, d, raw, *self.opts)
                    if not _put(self.results, fut, self.stop):
                        return
        _put(self.results, _END, self.stop)

    def __iter__(self) -> Iterator[Prediction]:
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


# The name the Python API has always used.
Inspector = Predictor
