"""``GET /health`` (liveness, queue), ``GET /v1/model`` (what the loaded model is and does) and
``GET /metrics`` (Prometheus; the names are listed in :mod:`steelscan.service.metrics`)."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request, Response

from steelscan.manifest import ModelManifest, PostProcess
from steelscan.service.metrics import METRICS_PATH
from steelscan.service.schemas import HealthOut, ModelOut
from steelscan.service.state import ServiceState, StateDep

router = APIRouter(tags=["model"])


@router.get("/health", response_model=HealthOut, summary="Liveness and model state")
async def health(state: StateDep) -> dict[str, Any]:
    return {
        "status": "ok",
        "model_loaded": True,  # the app is only built around a loaded model
        "model": state.service.model_ref,
        "queue": vars(state.runner.stats()),
        "uptime_s": round(time.time() - state.started, 3),
    }


def _class_colors(k: int) -> list[str | None]:
    """The overlay colours, so the web page draws classes as ``steelscan predict`` does."""
    try:
        from steelscan.reports.overlay import class_color, hex_color
    except ImportError:
        return [None] * k
    return [hex_color(class_color(i)) for i in range(k)]


def _classes(manifest: ModelManifest, pp: PostProcess) -> list[dict[str, Any]]:
    colors = _class_colors(manifest.num_classes)
    return [
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


def _stage(spec: Any) -> dict[str, Any] | None:
    if spec is None:
        return None
    return spec.model_dump(include={"arch", "encoder", "num_outputs", "aux_head"})


def model_metadata(state: ServiceState) -> dict[str, Any]:
    """The body of /v1/model: identity, engine and precision, size, thresholds, limits."""
    service = state.service
    manifest, pp = service.manifest, service.postprocess
    return {
        "name": manifest.name,
        "version": service.version,
        "engine": service.engine,
        "precision": service.precision,
        "steelscan_version": manifest.steelscan_version,
        "created": manifest.created,
        "image_height": manifest.image_height,
        "image_width": manifest.image_width,
        "in_channels": manifest.in_channels,
        "classes": _classes(manifest, pp),
        "gate_mode": pp.gate_mode,
        "gate_threshold": pp.gate_threshold,
        "classifier": _stage(manifest.classifier),
        "segmenter": _stage(manifest.segmenter),
        "detector": _stage(manifest.detector),
        "box_score_threshold": pp.box_score_threshold if manifest.detector else None,
        "metrics": manifest.metrics,
        "limits": state.config.limits(),
    }


@router.get("/v1/model", response_model=ModelOut, summary="The loaded model's metadata")
async def model(state: StateDep) -> dict[str, Any]:
    """Classes, tuned thresholds and the validation metrics they were tuned at."""
    return model_metadata(state)


@router.get(
    METRICS_PATH,
    response_class=Response,
    summary="Prometheus metrics",
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
)
async def metrics(request: Request, state: StateDep) -> Response:
    """Requests by route and status, latency, queue depth, images and defects per class."""
    body, content_type = state.metrics.exposition(request.headers.get("accept"))
    return Response(body, media_type=content_type)
