"""Response bodies of the inspection API.

They exist so the generated OpenAPI page (/docs) documents every field; the values come from
:meth:`steelscan.inference.result.InspectionResult.to_dict` and the bundle manifest.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

Box = list[int]  # [x1, y1, x2, y2] in pixels, x2/y2 exclusive


class Candidate(BaseModel):
    """The mask this class would have if the presence threshold let it through.

    Lets a client (the web page's threshold slider) show classes the model's tuned thresholds
    rejected, without another request. Pixel threshold and small-component removal still apply.
    """

    area: int = Field(description="pixels in the candidate mask")
    boxes: list[Box] = Field(default_factory=list)
    rle: str = Field("", description="Kaggle RLE (column-major, 1-based) of the candidate mask")


class ClassOut(BaseModel):
    class_id: int = Field(description="class id as in train.csv (Severstal ClassId, 1-based)")
    name: str
    present: bool = Field(description="after gating, class and pixel thresholds and minimum areas")
    probability: float = Field(description="presence probability of the class")
    area: int = Field(description="pixels in the final mask (0 when not present)")
    boxes: list[Box] = Field(
        default_factory=list, description="one [x1, y1, x2, y2] box per connected component"
    )
    rle: str = Field("", description="Kaggle RLE of the final mask; empty when not present")
    candidate: Candidate | None = Field(None, description="only with ?candidates=true")


class DetectionOut(BaseModel):
    """One box the detector kept (after its score threshold and per-class NMS), best first."""

    class_index: int = Field(description="0-based position of the class in the model's outputs")
    class_id: int = Field(description="class id as in the model's files (1-based)")
    name: str
    score: float = Field(description="the detector's confidence in [0, 1]")
    box: list[float] = Field(
        description="[x1, y1, x2, y2] in image pixels (floats, corners, not clipped to a pixel)"
    )


class ModelRef(BaseModel):
    name: str
    version: str = Field(description="content hash of the bundle's manifest and weights")
    engine: str


class InspectionOut(BaseModel):
    image_id: str = Field(description="the upload's file name, or ?image_id=")
    width: int
    height: int
    has_defect: bool
    defect_probability: float
    classes: list[ClassOut]
    timings_ms: dict[str, float] = Field(
        description="decode, queue (waiting for a worker), inference and total, in milliseconds"
    )
    detections: list[DetectionOut] | None = Field(
        None,
        description="the detector's boxes, best first; absent when the model has no detector",
    )
    model: ModelRef
    overlay_png: str | None = Field(
        None, description="with ?overlay=true: the image with its defects drawn, PNG, base64"
    )


class BatchOut(BaseModel):
    count: int
    results: list[InspectionOut] = Field(description="one result per uploaded image, in order")
    timings_ms: dict[str, float]


class QueueOut(BaseModel):
    workers: int
    max_queue: int
    running: int
    waiting: int
    completed: int
    rejected: int = Field(description="requests refused with 503 since start-up")
    mean_service_ms: float


class HealthOut(BaseModel):
    status: str = Field(description='"ok" while the server is up')
    model_loaded: bool
    model: ModelRef
    queue: QueueOut
    uptime_s: float


class ModelClassOut(BaseModel):
    index: int = Field(description="0-based position in the model's outputs")
    class_id: int
    name: str
    color: str | None = Field(None, description="#rrggbb used for this class in overlays")
    class_threshold: float = Field(description="presence threshold on the classifier probability")
    pixel_threshold: float
    min_area: int
    min_component_area: int


class ModelOut(BaseModel):
    name: str
    version: str
    engine: str
    precision: str = Field(
        description="fp32, bf16, fp16, int8 or int8+bf16: what the engine computes in"
    )
    steelscan_version: str
    created: str
    image_height: int
    image_width: int
    in_channels: int
    classes: list[ModelClassOut]
    gate_mode: str
    gate_threshold: float
    classifier: dict[str, Any] | None
    segmenter: dict[str, Any] | None
    detector: dict[str, Any] | None = None
    box_score_threshold: float | None = Field(
        None, description="with a detector: boxes scoring below this are not returned"
    )
    metrics: dict[str, Any] = Field(description="validation metrics the thresholds were tuned at")
    limits: dict[str, Any] = Field(
        description="upload limit, decoded-pixel limit, batch size, queue bound"
    )


class ErrorOut(BaseModel):
    error: str = Field(description="short machine-readable code, e.g. payload_too_large")
    message: str = Field(description="what was wrong, naming the file where there is one")
    status: int
