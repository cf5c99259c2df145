"""The model manifest: everything needed to rebuild and run a trained model, stored as JSON.

It sits beside the safetensors weights in a bundle directory (see :mod:`steelscan.bundle`).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1


class StageSpec(BaseModel):
    """One network (the gate, the segmenter or the detector) and where its weights are."""

    # classifier: a timm name or "resnet50_classic"; segmenter: unet | fpn | resunet;
    # detector: fcos
    arch: str
    # segmenter: smp encoder name (e.g. "mobilenet_v2", "tu-..."); detector: timm encoder name
    encoder: str | None = None
    num_outputs: int  # classifier: K classes (or 1 for the classic defect/no-defect gate)
    aux_head: bool = False
    weights_file: str  # relative to the bundle directory, safetensors
    onnx_file: str | None = None  # written by `steelscan export`
    onnx_int8_file: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)


class Normalization(BaseModel):
    """Applied to uint8 pixels: ``(x / 255 - mean) / std`` per channel."""

    mean: list[float] = Field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = Field(default_factory=lambda: [0.229, 0.224, 0.225])


class PostProcess(BaseModel):
    """Tuned on validation by `steelscan tune`; one entry per class."""

    gate_mode: Literal["hard", "soft", "none"] = "hard"
    gate_threshold: float = 0.5  # "any defect" probability under which segmentation is skipped
    class_thresholds: list[float]  # classifier presence threshold per class
    pixel_thresholds: list[float]  # mask probability threshold per class
    min_areas: list[int]  # a class mask smaller than this (pixels) is dropped
    min_component_areas: list[int]  # connected components smaller than this are removed
    # the detector's boxes (inference/boxes.py): shown from this score, per-class NMS at this IoU
    box_score_threshold: float = 0.3
    box_nms_iou: float = 0.6
    max_boxes: int = 100


class ModelManifest(BaseModel):
    format_version: int = FORMAT_VERSION
    name: str = "steelscan-model"
    steelscan_version: str
    created: str  # ISO 8601
    classes: list[str]
    class_ids: list[int]  # ids in files (Severstal ClassId 1..4)
    in_channels: int = 3
    normalization: Normalization = Field(default_factory=Normalization)
    image_height: int  # full-resolution size the model was validated at
    image_width: int
    crop_height: int | None = None
    crop_width: int | None = None
    pad_multiple: int = 32  # inputs are padded so both sides are a multiple of this
    classifier: StageSpec | None = None
    segmenter: StageSpec | None = None
    detector: StageSpec | None = None
    postprocess: PostProcess
    training: dict[str, Any] = Field(default_factory=dict)  # config and data summary
    metrics: dict[str, Any] = Field(default_factory=dict)  # validation metrics
    # sha256 of every file the manifest names (weights, ONNX), checked at load
    files: dict[str, str] = Field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)
