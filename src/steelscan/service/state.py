"""What one running service holds (limits, the loaded model, the worker pool, the metrics), and
how routes get at it: one :class:`ServiceState` on ``app.state``, handed to each route by
FastAPI's dependency injection (:data:`StateDep`) so the routers stay free of globals."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request

from steelscan.service.metrics import ServiceMetrics
from steelscan.service.runner import InferenceRunner

if TYPE_CHECKING:
    from steelscan.service.inspection import InspectionService

MB = 1024 * 1024
DEFAULT_MAX_UPLOAD_BYTES = 20 * MB
DEFAULT_MAX_BATCH = 16
DEFAULT_MAX_QUEUE = 8


@dataclass
class ServiceConfig:
    """Limits of one running service; every one is a ``steelscan serve`` option."""

    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    max_batch: int = DEFAULT_MAX_BATCH
    workers: int = 1
    max_queue: int = DEFAULT_MAX_QUEUE

    def limits(self) -> dict[str, int]:
        """The limits as /v1/model reports them (``max_pixels``: the decoded-pixel limit, 413)."""
        from steelscan.imageio import max_pixels

        return {
            "max_upload_bytes": self.max_upload_bytes,
            "max_pixels": max_pixels(),
            "max_batch": self.max_batch,
            "workers": self.workers,
            "max_queue": self.max_queue,
        }


@dataclass
class ServiceState:
    """The model, its worker pool, the limits and the metrics: everything a route needs."""

    service: InspectionService
    config: ServiceConfig
    runner: InferenceRunner
    metrics: ServiceMetrics
    started: float = field(default_factory=time.time)

    @classmethod
    def build(cls, service: InspectionService, config: ServiceConfig) -> ServiceState:
        runner = InferenceRunner(config.workers, config.max_queue)
        metrics = ServiceMetrics(service.manifest.classes, runner)
        m = service.model_ref
        metrics.set_model(m["name"], m["version"], m["engine"], service.precision)
        return cls(service, config, runner, metrics)


def get_state(request: Request) -> ServiceState:
    """The FastAPI dependency behind :data:`StateDep`."""
    return request.app.state.steelscan


StateDep = Annotated[ServiceState, Depends(get_state)]
