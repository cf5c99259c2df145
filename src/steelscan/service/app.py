"""The inspection service: a FastAPI app composed from small parts around one loaded predictor.

The model is loaded once, before the app is built (:func:`load_service`), so a broken bundle stops
``steelscan serve`` with a clear message instead of failing on the first request. The parts:

* :mod:`~steelscan.service.uploads`: body size limit (413), reading, sniffing (415), decoding (422);
* :mod:`~steelscan.service.jobs`: admission (503 + Retry-After), decoding off the event loop, the
  size check (422), inference on a worker thread (:mod:`~steelscan.service.runner`), timings;
* :mod:`~steelscan.service.inspection`: the predictor and the blocking work of a request;
* :mod:`~steelscan.service.routes`: the routers (inspect, batch, health/model, page);
* :mod:`~steelscan.service.errors`: every error is JSON ``{"error", "message", "status"}``; a bad
  request never yields a 500 and never stops the server;
* :mod:`~steelscan.service.metrics`: ``/metrics`` for Prometheus, counted by the outermost
  middleware so every answer (a 413 refused before routing too) is in it.

On SIGTERM, ``steelscan serve`` stops listening, lets every accepted request finish (bounded by
``--drain-timeout``), then runs the lifespan shutdown here, which stops the worker pool.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from steelscan import __version__
from steelscan.service.errors import ApiError, install_error_handlers
from steelscan.service.inspection import InspectionService, bundle_version, load_service
from steelscan.service.metrics import MetricsMiddleware
from steelscan.service.routes import ROUTERS
from steelscan.service.routes.page import add_offline_docs, docs_assets, mount_static
from steelscan.service.state import ServiceConfig, ServiceState
from steelscan.service.uploads import UploadLimitMiddleware, decode_upload, sniff_image_type

__all__ = [
    "ApiError",
    "InspectionService",
    "ServiceConfig",
    "bundle_version",
    "create_app",
    "decode_upload",
    "load_service",
    "sniff_image_type",
]


def _description(service: InspectionService) -> str:
    m = service.manifest
    return (
        "Finds surface defects on steel strip images with a trained steelscan model. "
        f"Model **{m.name}** ({service.version}), classes: {', '.join(m.classes)}. "
        "Errors are JSON `{error, message, status}`."
    )


def create_app(service: InspectionService, config: ServiceConfig | None = None) -> FastAPI:
    """Build the app around an already loaded model (tests and ``steelscan serve`` both use it)."""
    state = ServiceState.build(service, config or ServiceConfig())

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        state.runner.shutdown()

    assets = docs_assets()
    app = FastAPI(
        title="steelscan inspection service",
        version=__version__,
        description=_description(service),
        lifespan=lifespan,
        docs_url=None if assets else "/docs",
        redoc_url=None,
    )
    if assets:
        add_offline_docs(app, assets)
    app.state.steelscan = state
    app.add_middleware(UploadLimitMiddleware, max_bytes=state.config.max_upload_bytes)
    api_routes = [route for router in ROUTERS for route in router.routes]
    app.add_middleware(MetricsMiddleware, metrics=state.metrics, api_routes=api_routes)  # outermost
    install_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    mount_static(app)
    return app
