"""`TrainConfig`: every training knob in one typed object, with the defaults in one place.

Built from code (:meth:`TrainConfig.tiny`, :meth:`TrainConfig.demo`), from YAML
(:meth:`TrainConfig.from_yaml`) and from ``key=value`` overrides
(:meth:`TrainConfig.with_overrides`, used by ``steelscan train --set``). Unknown keys are
errors, never silently ignored, so a typo in a config file cannot quietly train the wrong model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


class ConfigError(ValueError):
    """A training config is invalid; the message names the file and the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ClassifierConfig(_Strict):
    """The image-level gate: a timm network predicting per-class presence (multi-label)."""

    enabled: bool = True
    arch: str = "mobilenetv2_100"  # any timm model name (matches the shared mobilenet_v2 weights)
    encoder_weights: str | None = None  # None | "imagenet" | a local .pth/.safetensors path
    weights_sha256: str | None = None  # checked when encoder_weights is a file
    epochs: int = Field(15, ge=1)
    lr: float = Field(3e-4, gt=0)
    batch_size: int = Field(8, ge=1)
    options: dict[str, Any] = Field(default_factory=dict)  # extra timm.create_model arguments
    # Optional training crops (datasets with masks only: a crop's labels come from its masks).
    # Max-pooled gates then learn from many small views and still judge full images.
    crop_height: int | None = Field(None, ge=32)
    crop_width: int | None = Field(None, ge=32)
    defect_crop_bias: float = Field(0.5, ge=0, le=1)
    # The validation figure that picks the best epoch: the any-defect accuracy, or top-1 on
    # single-label images (when every image is defective, as in NEU-DET, the any-defect
    # accuracy reaches 1.0 within epochs and stops telling epochs apart).
    monitor: Literal["val_gate_acc", "val_top1"] = "val_gate_acc"


class SegmenterConfig(_Strict):
    """The per-pixel model (smp Unet / FPN or the project's ResUNet)."""

    enabled: bool = True
    arch: Literal["unet", "fpn", "resunet"] = "unet"
    encoder: str = "mobilenet_v2"  # smp encoder name (ignored by resunet)
    encoder_weights: str | None = None  # None | "imagenet" | a local weights path
    weights_sha256: str | None = None
    aux_head: bool = False  # extra presence head on the encoder, trained with BCE
    aux_weight: float = Field(0.4, ge=0)  # weight of the aux head's loss
    loss: Literal["bce", "dice", "bce_dice", "focal", "focal_tversky"] = "bce_dice"
    pos_weight: float | None = Field(None, gt=0)  # BCE positive-pixel weight (defects are rare)
    epochs: int = Field(30, ge=1)
    lr: float = Field(3e-4, gt=0)
    batch_size: int = Field(8, ge=1)
    crop_height: int | None = Field(256, ge=32)  # None: train on full images
    crop_width: int | None = Field(512, ge=32)
    defect_crop_bias: float = Field(0.6, ge=0, le=1)  # probability a crop is centred on a defect
    # The validation figure that picks the best epoch (and drives early stopping): the Kaggle
    # score, or Dice on the pairs that have a defect. With mostly clean images and a gate in front,
    # the Kaggle score rewards an empty model; Dice on defects is what the segmenter adds.
    monitor: Literal["val_kaggle", "val_dice_nonempty"] = "val_kaggle"
    options: dict[str, Any] = Field(default_factory=dict)  # e.g. decoder_channels (smp / ResUNet)


class DetectorConfig(_Strict):
    """The box detector (torchvision FCOS on a timm encoder, :mod:`steelscan.models.detector`).

    ``enabled`` "auto" trains it exactly when the dataset has boxes (VOC, COCO or YOLO boxes).
    Training augments with box-aware flips, scale jitter and brightness/contrast
    (albumentations); the best epoch is chosen by validation box mAP@0.5 (pycocotools).
    """

    enabled: bool | Literal["auto"] = "auto"
    arch: Literal["fcos"] = "fcos"
    encoder: str = "mobilenetv2_100"  # any timm encoder with features_only support
    encoder_weights: str | None = None  # None | "imagenet" | a local weights path
    weights_sha256: str | None = None
    epochs: int = Field(24, ge=1)
    lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(8, ge=1)
    # augmentation: probabilities of the flips, and the +- range of the scale jitter
    hflip: float = Field(0.5, ge=0, le=1)
    vflip: float = Field(0.5, ge=0, le=1)
    scale_jitter: float = Field(0.2, ge=0, lt=1)
    brightness_contrast: float = Field(0.5, ge=0, le=1)
    options: dict[str, Any] = Field(default_factory=dict)  # fpn_channels, input_scale, ...


class ExportConfig(_Strict):
    """The end of a run: ONNX export into the bundle and the engine measurements.

    With ``enabled``, the tuned bundle gets ONNX float32 files (and int8 where ``int8`` is set and
    the int8 engines keep the validation score), and every engine and precision this machine can
    run is scored and timed on the first ``measure_images`` validation images, so ``--engine
    auto`` can pick the fastest one that keeps the score. The cap keeps the added time small.
    """

    enabled: bool = True
    int8: bool = True  # also quantise the segmenter (kept only where it keeps the score)
    calibration_images: int = Field(16, ge=1)  # training images the int8 ranges are set on
    measure_images: int = Field(64, ge=1)  # validation images each engine is scored and timed on
    warmup_images: int = Field(2, ge=0)  # first images of each engine left out of its speed


class TrainConfig(_Strict):
    """Everything ``steelscan train`` needs besides the data and output paths."""

    seed: int = 0
    val_fraction: float = Field(0.2, gt=0, lt=1)
    in_channels: Literal[1, 3] = 3
    classifier: ClassifierConfig = Field(default_factory=ClassifierConfig)
    segmenter: SegmenterConfig = Field(default_factory=SegmenterConfig)
    detector: DetectorConfig = Field(default_factory=DetectorConfig)
    optimizer: Literal["adam", "adamw", "radam"] = "adamw"
    weight_decay: float = Field(1e-4, ge=0)
    # warmup_cosine: per step, linear warm-up then cosine (the detector always warms up)
    scheduler: Literal["plateau", "cosine", "warmup_cosine", "none"] = "plateau"
    early_stopping_patience: int | None = Field(
        8, ge=1
    )  # epochs without val improvement; None: off
    accumulate_grad_batches: int = Field(1, ge=1)
    precision: Literal["auto", "32", "16-mixed", "bf16-mixed"] = (
        "auto"  # auto: bf16 on capable GPUs
    )
    # Convolutions in NHWC ("channels last") while training: oneDNN runs them about 1.5x faster
    # on a CPU (2.5x with bf16-mixed on AMX cores, bench of 2026-12-01); weights are saved in
    # the usual layout either way
    channels_last: bool = False
    # An exponential moving average of the weights (Lightning's EMAWeightAveraging, per step):
    # validation, the best checkpoint and the bundle use the average. On a few hundred images the
    # validation figure jumps between epochs and the average is the steadier model; None: off
    ema_decay: float | None = Field(None, gt=0, lt=1)
    max_minutes: float | None = Field(None, gt=0)  # time budget for both stages together
    devices: int | str = "auto"
    num_nodes: int = Field(1, ge=1)
    strategy: str = "auto"  # "ddp" for multi-GPU / multi-node
    accelerator: str = "auto"  # "cpu" | "gpu" | "cuda" | "mps" | "auto"
    num_workers: int = Field(2, ge=0)
    cpu_threads: int | None = Field(None, ge=1)  # torch intra-op threads; None: torch's default
    resume: bool = False  # continue from <run_dir>/<stage>/checkpoints/last.ckpt
    run_dir: Path | None = None  # logs and checkpoints; None: "<out>.runs" beside the bundle
    tensorboard: bool = True
    limit_train_batches: int | float = 1.0  # Lightning's: an int caps batches per epoch (tests)
    tune_max_images: int = Field(200, ge=1)  # validation images kept in memory for tuning
    export: ExportConfig = Field(default_factory=ExportConfig)
    progress: bool = True

    @field_validator("devices")
    @classmethod
    def _devices(cls, v: int | str) -> int | str:
        if isinstance(v, str) and v.isdigit():
            return int(v)
        return v

    # ---- constructors -------------------------------------------------------------------
    @classmethod
    def tiny(cls) -> TrainConfig:
        """Seconds on a CPU: for tests and the shared ``trained_bundle`` fixture.

        Small but real networks (timm MobileNetV3-small gate, a U-Net on the same encoder with a
        narrow decoder: about 0.1 s of CPU per step each), a handful of steps,
        no workers, no TensorBoard, no export (one test switches it on); the rest of the
        pipeline (tuning through the predictor, the bundle) still runs.
        """
        return cls(
            classifier=ClassifierConfig(
                arch="mobilenetv3_small_050", epochs=1, lr=1e-3, batch_size=4
            ),
            segmenter=SegmenterConfig(
                arch="unet",
                encoder="tu-mobilenetv3_small_050",
                options={"decoder_channels": [64, 32, 16, 16, 8]},
                epochs=2,
                lr=3e-3,
                batch_size=4,
                crop_height=128,
                crop_width=256,
                loss="bce_dice",
            ),
            detector=DetectorConfig(
                encoder="mobilenetv3_small_050",
                options={"fpn_channels": 32},
                epochs=1,
                batch_size=4,
            ),
            accelerator="cpu",
            devices=1,
            precision="32",
            num_workers=0,
            cpu_threads=1,  # on a busy 2-core machine, 2 OpenMP threads can be 10x slower
            early_stopping_patience=None,
            scheduler="none",
            tensorboard=False,
            limit_train_batches=4,
            tune_max_images=16,
            export=ExportConfig(enabled=False, calibration_images=4, measure_images=16),
            progress=False,
        )

    @classmethod
    def demo(cls) -> TrainConfig:
        """What the few-minute demo trains on 2 CPU cores.

        Residual encoders (depthwise MobileNet convolutions train ~3x slower on a CPU), slim
        decoders, networks that run on a downscaled image inside (``input_scale``) while
        answering at full size, and a max-pooled gate on full images (small defects vanish in
        an average).
        Budgeted by epochs and sizes, not minutes: a slower machine takes longer but trains the
        same model (a minutes budget once left the gate undertrained on a busy machine). Ends
        with the export and engine measurements on all 32 validation images.
        """
        return cls(
            classifier=ClassifierConfig(
                arch="resnet10t",
                epochs=10,
                lr=2e-3,
                batch_size=8,
                # full images (the size it judges at inference), seen at a quarter of their size:
                # as cheap per epoch as 256x512 crops at half size, but no crop-to-full mismatch,
                # so its validation accuracy is steady from epoch 6 on (crops: 0.41 until epoch 7)
                options={"input_scale": 0.25, "global_pool": "max"},
            ),
            segmenter=SegmenterConfig(
                arch="unet",
                encoder="tu-resnet10t",
                epochs=20,
                lr=2e-3,
                batch_size=8,
                crop_height=256,
                crop_width=384,
                defect_crop_bias=0.7,
                options={"decoder_channels": [64, 32, 16, 16, 8], "input_scale": 0.5},
            ),
            early_stopping_patience=None,
            scheduler="cosine",
            num_workers=1,
            export=ExportConfig(measure_images=32),
        )

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrainConfig:
        """Read a YAML file; unknown keys and bad values raise :class:`ConfigError` naming them."""
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(f"{path}: config file not found") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of settings at the top level")
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "config") -> TrainConfig:
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(_describe(exc, source)) from None

    def with_overrides(self, overrides: dict[str, Any]) -> TrainConfig:
        """A copy with dotted keys replaced, e.g. ``{"segmenter.epochs": 3, "seed": 1}``.

        String values (from the command line) are parsed as YAML scalars, so ``"3"`` becomes 3,
        ``"none"``/``"null"`` become None and ``"true"`` becomes True.
        """
        data = self.model_dump(mode="json")
        for key, value in overrides.items():
            parts = key.split(".")
            node = data
            for i, part in enumerate(parts):
                if not isinstance(node, dict) or part not in node:
                    known = ", ".join(sorted(node)) if isinstance(node, dict) else ""
                    where = ".".join(parts[: i + 1])
                    raise ConfigError(f"unknown config key {where!r} (known here: {known})")
                if i == len(parts) - 1:
                    node[part] = _parse_scalar(value)
                else:
                    node = node[part]
        return self.from_dict(data, source="overrides")

    def to_yaml(self, path: str | Path | None = None) -> str:
        text = yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text

    def resolved_precision(self) -> str:
        """``auto`` -> "bf16-mixed" where CUDA is used and supports bf16, else "32" (CPU)."""
        if self.precision != "auto":
            return self.precision
        import torch

        wants_gpu = self.accelerator in ("auto", "gpu", "cuda")
        if wants_gpu and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return "bf16-mixed"
        return "32"


PRESETS = ("default", "demo", "tiny")


def preset_path(name: str) -> Path:
    """The packaged example YAML of a preset (``steelscan/configs/<name>.yaml``)."""
    from importlib.resources import files

    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return Path(str(files("steelscan") / "configs" / f"{name}.yaml"))


def _parse_scalar(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    if value.strip().lower() in ("none", "null", "~"):
        return None
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError:
        return value


def _describe(exc: ValidationError, source: str) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            lines.append(f"{source}: unknown key {loc!r}")
        else:
            lines.append(f"{source}: {loc}: {err['msg']} (got {err.get('input')!r})")
    return "\n".join(lines)
