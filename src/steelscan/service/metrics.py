"""``GET /metrics``: what an operator watches, in the Prometheus text format (prometheus-client).

Every app has its own :class:`~prometheus_client.CollectorRegistry` (tests build several apps in
one process), held by :class:`ServiceMetrics` on the app's state. The metrics:

HTTP, recorded by :class:`MetricsMiddleware` (outermost, so refusals made before routing, such as
a 413 by Content-Length, are counted too; ``/metrics`` itself is left out):

* ``steelscan_http_requests_total{route,method,status}``: answered requests; ``route`` is the
  route template (``/v1/inspect``, ``/static`` for the mount), ``unmatched`` for an unknown path;
* ``steelscan_http_request_duration_seconds{route}``: histogram, request in to response out;
* ``steelscan_http_requests_in_progress{route}``: requests accepted and not yet answered;
* ``steelscan_errors_total{code}``: error answers by their JSON ``error`` code (``busy``,
  ``payload_too_large``, ``undecodable_image``, ``not_found``, ``internal_error``...).

Inference, recorded by :mod:`steelscan.service.jobs` for every request that got results:

* ``steelscan_images_inspected_total``: images inspected (a batch counts each of its images);
* ``steelscan_images_defective_total``: of those, images with at least one defect present;
* ``steelscan_defects_total{class_name}``: images in which the class is present;
* ``steelscan_defect_regions_total{class_name}``: connected defect regions (boxes) found;
* ``steelscan_stage_duration_seconds{stage}``: histogram of ``decode``, ``queue`` (waiting for a
  worker) and ``inference`` per request.

Read from the inference runner at each scrape (:class:`RunnerCollector`):

* ``steelscan_inference_queue_depth``: requests waiting for a worker;
* ``steelscan_inference_queue_capacity``: the most that may wait (``--max-queue``);
* ``steelscan_inference_running``, ``steelscan_inference_workers``: busy and total workers (a
  request is refused with 503 when running + waiting reaches workers + capacity);
* ``steelscan_inference_jobs_completed_total``, ``steelscan_inference_rejected_total``.

And ``steelscan_model_info{name,version,engine,precision}`` (always 1), plus the standard
``process_*`` (resident memory, CPU seconds, open files) and ``python_gc_*`` metrics.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    ProcessCollector,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from steelscan.service.runner import InferenceRunner

METRICS_PATH = "/metrics"
UNMATCHED = "unmatched"
ERROR_SCOPE_KEY = "steelscan.error"  # the JSON error code of the answer, set where it is built
# Inference takes tens to hundreds of ms; a queued request waits up to a few seconds.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class RunnerCollector:
    """The inference runner's counters, read at scrape time (no copy to keep in step)."""

    def __init__(self, runner: InferenceRunner) -> None:
        self.runner = runner

    def describe(self) -> Iterable[Metric]:
        return self.collect()

    def collect(self) -> Iterable[Metric]:
        s = self.runner.stats()
        yield GaugeMetricFamily(
            "steelscan_inference_queue_depth", "Requests waiting for an inference worker", s.waiting
        )
        yield GaugeMetricFamily(
            "steelscan_inference_queue_capacity",
            "Most requests that may wait for a worker (--max-queue); past it: 503",
            s.max_queue,
        )
        yield GaugeMetricFamily(
            "steelscan_inference_running", "Requests being inferred now", s.running
        )
        yield GaugeMetricFamily("steelscan_inference_workers", "Inference threads", s.workers)
        yield CounterMetricFamily(
            "steelscan_inference_jobs_completed", "Inference jobs finished", s.completed
        )
        yield CounterMetricFamily(
            "steelscan_inference_rejected", "Requests refused with 503 (queue full)", s.rejected
        )


class ServiceMetrics:
    """One app's registry and metrics (see the module docstring for what each one means)."""

    def __init__(self, classes: Sequence[str], runner: InferenceRunner) -> None:
        self.registry = reg = CollectorRegistry()
        self.cut_off = 0  # requests cancelled unanswered (a drain that ran out of time)
        self.requests = Counter(
            "steelscan_http_requests", "HTTP requests answered", ["route", "method", "status"],
            registry=reg,
        )  # fmt: skip
        self.latency = Histogram(
            "steelscan_http_request_duration_seconds", "Time from request to complete response",
            ["route"], buckets=LATENCY_BUCKETS, registry=reg,
        )  # fmt: skip
        self.in_progress = Gauge(
            "steelscan_http_requests_in_progress", "Requests accepted and not yet answered",
            ["route"], registry=reg,
        )  # fmt: skip
        self.errors = Counter("steelscan_errors", "Error answers by code", ["code"], registry=reg)
        self.images = Counter("steelscan_images_inspected", "Images inspected", registry=reg)
        self.defective = Counter(
            "steelscan_images_defective", "Images with at least one defect", registry=reg
        )
        self.defects = Counter(
            "steelscan_defects", "Images in which the class is present", ["class_name"],
            registry=reg,
        )  # fmt: skip
        self.regions = Counter(
            "steelscan_defect_regions", "Connected defect regions found", ["class_name"],
            registry=reg,
        )  # fmt: skip
        self.stages = Histogram(
            "steelscan_stage_duration_seconds", "Time per request in decode, queue and inference",
            ["stage"], buckets=LATENCY_BUCKETS, registry=reg,
        )  # fmt: skip
        self.model_info = Gauge(
            "steelscan_model_info", "The loaded model (value 1)",
            ["name", "version", "engine", "precision"], registry=reg,
        )  # fmt: skip
        for name in classes:  # every class appears from the start, at 0
            self.defects.labels(name)
            self.regions.labels(name)
        reg.register(RunnerCollector(runner))
        ProcessCollector(registry=reg)
        GCCollector(registry=reg)

    def set_model(self, name: str, version: str, engine: str, precision: str) -> None:
        self.model_info.labels(name, version, engine, precision).set(1)

    def observe_results(self, results: Iterable[dict[str, Any]]) -> None:
        """Count images, defective images and defects per class in the API's result dicts."""
        for r in results:
            self.images.inc()
            if r.get("has_defect"):
                self.defective.inc()
            for c in r.get("classes", ()):
                if c.get("present"):
                    self.defects.labels(c["name"]).inc()
                    self.regions.labels(c["name"]).inc(len(c.get("boxes", ())))

    def observe_stages(self, *, decode_ms: float, queue_ms: float, infer_ms: float) -> None:
        for stage, ms in (("decode", decode_ms), ("queue", queue_ms), ("inference", infer_ms)):
            self.stages.labels(stage).observe(ms / 1000.0)

    def exposition(self, accept: str | None) -> tuple[bytes, str]:
        """The scrape body and its content type (OpenMetrics when the scraper asks for it)."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type


def route_template(routes: Iterable[BaseRoute], scope: Scope) -> str:
    """The path template of the route ``scope`` goes to (a 405 keeps its route), or ``unmatched``.

    A label per raw path would let any client grow the metrics without bound. Routes without a
    path of their own (FastAPI's wrapper of an included router) are passed over.
    """
    partial = None
    for route in routes:
        path = getattr(route, "path", None)
        if not isinstance(path, str) or not path:
            continue
        match, _ = route.matches(scope)
        if match is Match.FULL:
            return path
        if match is Match.PARTIAL and partial is None:
            partial = path
    return partial or UNMATCHED


def mark_error(scope: Scope, code: str) -> None:
    """Note the error code of the answer being built, for ``steelscan_errors_total``."""
    scope[ERROR_SCOPE_KEY] = code


class MetricsMiddleware:
    """Counts and times every HTTP request but ``/metrics``; add it last (outermost).

    ``api_routes`` are the routers' own routes (an app holds an included router as one wrapper
    without a path); the app's top-level routes (docs, mounts) are added at the first request.
    """

    def __init__(
        self, app: ASGIApp, metrics: ServiceMetrics, api_routes: Sequence[BaseRoute] = ()
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.api_routes = list(api_routes)
        self._routes: list[BaseRoute] | None = None

    def _all_routes(self, scope: Scope) -> list[BaseRoute]:
        if self._routes is None:
            self._routes = [*self.api_routes, *scope["app"].router.routes]
        return self._routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] == METRICS_PATH:
            await self.app(scope, receive, send)
            return
        m = self.metrics
        route = route_template(self._all_routes(scope), scope)
        status: list[int] = []
        answered: list[bool] = []

        async def send_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                answered.append(True)
            await send(message)

        t0 = time.perf_counter()
        m.in_progress.labels(route).inc()
        try:
            await self.app(scope, receive, send_status)
        except asyncio.CancelledError:
            if not answered:
                m.cut_off += 1  # the drain timed out (or the server was forced down)
                status.clear()  # nothing complete was sent: not an answered request
            raise
        except Exception:
            if not status:  # ServerErrorMiddleware, outside us, answers the JSON 500
                scope.setdefault(ERROR_SCOPE_KEY, "internal_error")
                status.append(500)
            raise
        finally:
            m.in_progress.labels(route).dec()
            if status:
                self._record(scope, route, status[0], time.perf_counter() - t0)

    def _record(self, scope: Scope, route: str, status: int, seconds: float) -> None:
        m = self.metrics
        m.requests.labels(route, scope["method"], str(status)).inc()
        m.latency.labels(route).observe(seconds)
        if status >= 400:
            m.errors.labels(scope.get(ERROR_SCOPE_KEY, "http_error")).inc()
