"""Export a trained bundle's networks to ONNX (float32, and optionally int8) for fast inference.

``steelscan export`` writes a *copy* of the bundle with the ONNX files added and their names
recorded in the manifest (``StageSpec.onnx_file`` / ``onnx_int8_file``), so a bundle stays one
self-describing directory: thresholds, classes and normalisation travel with the ONNX models, and
``--engine onnx`` loads from the same place as ``--engine torch``; its source bundle is never
modified. ``steelscan train`` exports into the bundle it is building (:func:`export_in_place`).

Why these choices:

* The TorchScript-based exporter (``dynamo=False``): the dynamo exporter needs ``onnxscript``,
  which is not a dependency, and the TorchScript path exports smp/timm models reliably.
* Batch, height and width are dynamic axes, so one file serves batch 1 and batch N and any image
  size that is a multiple of the bundle's ``pad_multiple``.
* The sigmoid is part of the graph: engines return probabilities (the engine contract), and ONNX
  Runtime's fused sigmoid is cheaper than a NumPy pass over a (N, K, 256, 1600) tensor.
* int8 uses static quantisation (QDQ, per-channel weights, uint8 activations) calibrated on real
  images: on CPUs with VNNI it runs the segmenter ~2x faster than float32. The final sigmoid and
  the last few layers stay float32 (:func:`fp32_nodes`) so probabilities keep their resolution
  near the thresholds.
* The detector's graph returns ``boxes`` (N, L, 4) and ``scores`` (N, L, K), the torch
  engine's ``detect`` outputs; thresholds and NMS stay post-processing. Its int8 model quantises
  the encoder, pyramid and head towers; the head's output convolutions and the box decoding stay
  float32 (:func:`detector_fp32_nodes`: box corners are pixels, which uint8 cannot hold). The
  int8 file is kept only where it agrees with float32 on the calibration images
  (:func:`detector_int8_agreement`), else it is dropped with a message.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from steelscan.manifest import ModelManifest

if TYPE_CHECKING:
    import torch

OPSET = 17
INPUT_NAME = "input"
OUTPUT_NAME = "probs"
DETECTOR_OUTPUTS = ("boxes", "scores")
STAGES = ("classifier", "segmenter", "detector")
DEFAULT_CALIBRATION_IMAGES = 16
# Only the segmenter is quantised by default: it is where the time goes (~85% of model time at
# 256x1600), while the gate is cheap and its image-level probabilities proved fragile under int8
# (measured on a Unet/MobileNetV2 + MobileNetV2 bundle: gate probabilities moved by up to 0.9).
# The detector is quantised too where it has one, and kept only where int8 agrees with float32.
INT8_STAGES = ("segmenter", "detector")
FP32_TAIL = 3  # last Conv/Gemm layers left in float32 by the int8 export (see fp32_nodes)
# A detector's int8 model is kept when, on the calibration images, no class score moves by more
# than this and no box that could be shown (float32 score >= box_score_threshold) moves a corner
# by more than INT8_BOX_TOLERANCE_PX pixels.
INT8_SCORE_TOLERANCE = 0.02
INT8_BOX_TOLERANCE_PX = 2.0


class ExportError(ValueError):
    """An export cannot be done as asked (missing bundle, missing calibration data, ...)."""


def _probabilities_module(module: torch.nn.Module) -> torch.nn.Module:
    """Wrap a logits model so the exported graph returns probabilities (first output only)."""
    import torch

    class _Probs(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.inner(x)
            if isinstance(out, (tuple, list)):  # segmenters with an aux head: (masks, labels)
                out = out[0]
            return torch.sigmoid(out)

    return _Probs(module).eval()


def _detector_module(module: torch.nn.Module) -> torch.nn.Module:
    """The detector as exported: ``(boxes, scores)`` exactly as its ``forward`` returns them.

    A wrapper in eval mode: ``torch.onnx.export`` restores the *wrapper's* training flag when it
    ends, which on a fresh (training-mode) wrapper would switch the detector's BatchNorms to
    training for the caller."""
    import torch

    class _Boxes(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            boxes, scores = self.inner(x)
            return boxes, scores

    return _Boxes(module).eval()


def _export_graph(
    wrapped: torch.nn.Module,
    path: Path,
    outputs: dict[str, dict[int, str]],
    *,
    in_channels: int,
    height: int,
    width: int,
    spatial_dynamic: bool,
) -> Path:
    """Trace ``wrapped`` to ONNX at ``path``: input ``input``, ``outputs`` name -> dynamic axes."""
    import onnx
    import torch

    example = torch.zeros(1, in_channels, height, width, dtype=torch.float32)
    axes = {0: "batch"}
    if spatial_dynamic:
        axes.update({2: "height", 3: "width"})
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        # Tracer warnings about Python-level shape checks in smp/timm are expected and harmless.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapped,
            (example,),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=[INPUT_NAME],
            output_names=list(outputs),
            dynamic_axes={INPUT_NAME: axes, **outputs},
            do_constant_folding=True,
        )
    onnx.checker.check_model(str(path))
    return path


def export_module(
    module: torch.nn.Module,
    path: str | Path,
    *,
    in_channels: int,
    height: int,
    width: int,
    spatial_dynamic: bool = True,
) -> Path:
    """Export one network (logits in, probabilities out) to ``path`` with a dynamic batch axis.

    ``height``/``width`` only shape the example input used for tracing; with ``spatial_dynamic``
    the file accepts any size the network itself accepts.
    """
    axes = {0: "batch", 2: "height", 3: "width"} if spatial_dynamic else {0: "batch"}
    wrapped = _probabilities_module(module.cpu().eval())
    return _export_graph(
        wrapped,
        Path(path),
        {OUTPUT_NAME: axes},
        in_channels=in_channels,
        height=height,
        width=width,
        spatial_dynamic=spatial_dynamic,
    )


def export_detector(
    module: torch.nn.Module, path: str | Path, *, in_channels: int, height: int, width: int
) -> Path:
    """Export a :class:`~steelscan.models.detector.DetectionModel`: outputs ``boxes`` (N, L, 4)
    and ``scores`` (N, L, K), batch, height and width dynamic (L follows the input size)."""
    axes = {0: "batch", 1: "locations"}
    return _export_graph(
        _detector_module(module.cpu().eval()),
        Path(path),
        {name: dict(axes) for name in DETECTOR_OUTPUTS},
        in_channels=in_channels,
        height=height,
        width=width,
        spatial_dynamic=True,
    )


class _BatchReader:
    """An onnxruntime CalibrationDataReader over preprocessed real images (one image per batch)."""

    def __init__(self, batches: Iterable[np.ndarray]) -> None:
        self._batches = list(batches)
        self._it: Iterator[np.ndarray] = iter(self._batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._it, None)
        return None if batch is None else {INPUT_NAME: batch}

    def rewind(self) -> None:
        self._it = iter(self._batches)


def fp32_nodes(model_path: Path, tail: int = FP32_TAIL) -> list[str]:
    """Nodes kept in float32 when quantising: the output sigmoid and the last ``tail`` Conv/Gemm.

    The last layers map features straight to the logits that thresholds cut; quantising them
    flips many near-threshold pixels, while in the segmenter they cost only a few percent of the
    time (measured on a Unet/MobileNetV2: Dice of int8 vs fp32 masks 0.58 -> 0.71 for +3% time).
    """
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    outputs = {o.name for o in model.graph.output}
    nodes = [n.name for n in model.graph.node if n.op_type == "Sigmoid" and set(n.output) & outputs]
    dense = [n.name for n in model.graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]
    return nodes + (dense[-tail:] if tail > 0 else [])


def detector_fp32_nodes(model_path: Path) -> list[str]:
    """Nodes a detector's int8 model keeps in float32: every node between the last convolutions
    and the outputs, those convolutions included (the head's class, box and centerness layers,
    the box decoding against the anchors, the score's sigmoids and square root).

    Found by walking back from the outputs and stopping at dense layers and at ``Shape`` (the
    anchors depend only on feature-map sizes): box corners are pixels up to the image size and
    scores are compared with thresholds, neither of which survives uint8 activations.
    """
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    producer = {out: node for node in model.graph.node for out in node.output}
    kept: dict[str, Any] = {}
    stack = [producer[o.name] for o in model.graph.output if o.name in producer]
    while stack:
        node = stack.pop()
        if node.name in kept:
            continue
        kept[node.name] = node
        if node.op_type in ("Conv", "Gemm", "MatMul", "Shape"):
            continue
        stack.extend(producer[i] for i in node.input if i in producer)
    return [name for name in kept if name]


def quantize_int8(
    fp32_path: str | Path,
    int8_path: str | Path,
    batches: Iterable[np.ndarray],
    *,
    keep_fp32: Callable[[Path], list[str]] = fp32_nodes,
) -> Path:
    """Static int8 quantisation (QDQ, per-channel, MinMax) of a model, calibrated on ``batches``;
    ``keep_fp32`` names the nodes left in float32 (read from the pre-processed graph)."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fp32_path, int8_path = Path(fp32_path), Path(int8_path)
    reader = _BatchReader(batches)
    if not reader._batches:
        raise ExportError("int8 calibration needs at least one image")
    with tempfile.TemporaryDirectory(dir=int8_path.parent) as tmp:
        pre = Path(tmp) / "pre.onnx"
        # Shape inference + graph cleanup first, as onnxruntime recommends before quantising.
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        quantize_static(
            str(pre),
            str(int8_path),
            reader,
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=keep_fp32(pre),
        )
    return int8_path


def detector_int8_agreement(
    fp32_path: Path, int8_path: Path, batches: Sequence[np.ndarray], box_score_threshold: float
) -> tuple[float, float]:
    """How far the int8 detector strays from float32 on ``batches`` (ONNX Runtime, both files):
    the largest change of any class score, and the largest corner move (pixels) of a box that
    could be shown (float32 score at least ``box_score_threshold``)."""
    import onnxruntime as ort

    sessions = [
        ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
        for p in (fp32_path, int8_path)
    ]
    score_diff = box_diff = 0.0
    for batch in batches:
        (b32, s32), (b8, s8) = (
            s.run(list(DETECTOR_OUTPUTS), {INPUT_NAME: batch}) for s in sessions
        )
        score_diff = max(score_diff, float(np.abs(s8 - s32).max()))
        shown = s32.max(axis=-1) >= box_score_threshold
        if shown.any():
            box_diff = max(box_diff, float(np.abs(b8 - b32)[shown].max()))
    return score_diff, box_diff


def calibration_batches(
    data: str | Path,
    manifest: ModelManifest,
    *,
    limit: int = DEFAULT_CALIBRATION_IMAGES,
    seed: int = 0,
) -> list[np.ndarray]:
    """Preprocessed (1, C, H, W) batches from real images of a steelscan dataset folder
    (see :func:`record_batches`)."""
    from steelscan.data import load_dataset

    ds = load_dataset(data)
    if not ds.records:
        raise ExportError(f"{data}: the calibration dataset has no images")
    return record_batches(ds.records, manifest, limit=limit, seed=seed)


def record_batches(
    records: Sequence[Any],
    manifest: ModelManifest,
    *,
    limit: int = DEFAULT_CALIBRATION_IMAGES,
    seed: int = 0,
) -> list[np.ndarray]:
    """Preprocessed (1, C, H, W) batches of up to ``limit`` dataset records (training calibrates
    on its own training images this way).

    Defective images come first (the segmenter only runs on images the gate passes), then clean
    ones, so a small ``limit`` still sees the activation ranges that matter.
    """
    from steelscan.imageio import read_image
    from steelscan.inference.preprocess import to_batch

    records = list(records)
    if not records:
        raise ExportError("int8 calibration needs at least one image")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(records))
    records = [records[i] for i in order]
    records.sort(key=lambda r: not r.has_defect)  # stable: defective first, shuffled within
    batches = []
    for rec in records[: max(1, limit)]:
        img = read_image(rec.path, channels=manifest.in_channels)
        batch, _ = to_batch([img], manifest)
        batches.append(batch)
    return batches


def _example_size(manifest: ModelManifest) -> tuple[int, int]:
    from steelscan.inference.preprocess import padded_size

    return padded_size(manifest.image_height, manifest.image_width, manifest.pad_multiple)


def _write_manifest(directory: Path, manifest: ModelManifest) -> None:
    """Through the bundle's one manifest writer, so the sha256 of every named file (the ONNX
    files included) is recorded beside them."""
    from steelscan.bundle import write_manifest

    write_manifest(directory, manifest)


def export_bundle(
    model_dir: str | Path,
    out: str | Path,
    *,
    int8: bool = False,
    calibration: str | Path | None = None,
    calibration_images: int = DEFAULT_CALIBRATION_IMAGES,
    overwrite: bool = False,
    int8_stages: tuple[str, ...] = INT8_STAGES,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Write a copy of bundle ``model_dir`` into ``out`` with ONNX models for both stages added.

    The copy is built in a temporary directory beside ``out`` and renamed into place at the end,
    so a failed export never leaves a half-written bundle. Returns ``out``. With ``int8``, the
    stages in ``int8_stages`` also get an int8 model; the others run in float32 under the int8
    engine.
    """
    from steelscan.bundle import read_manifest

    model_dir, out = Path(model_dir), Path(out)
    if not model_dir.is_dir():
        raise ExportError(f"{model_dir}: model directory not found")
    if int8 and calibration is None:
        raise ExportError(
            "--int8 needs --calibration DATA: a dataset folder of real images to calibrate "
            "the activation ranges on"
        )
    if out.resolve() == model_dir.resolve():
        raise ExportError(f"{out}: choose an output directory other than the source bundle")
    if out.exists() and not overwrite:
        if not out.is_dir() or any(out.iterdir()):
            raise ExportError(
                f"{out}: already exists and is not empty (pass --overwrite to replace)"
            )
    say = progress or (lambda _msg: None)
    manifest = read_manifest(model_dir)
    batches = None
    if int8:
        say(f"reading calibration images from {calibration}")
        batches = calibration_batches(calibration, manifest, limit=calibration_images)

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; a bundle is meant to be shared
    try:
        shutil.copytree(model_dir, staging, dirs_exist_ok=True)
        export_in_place(staging, calibration=batches, int8_stages=int8_stages, progress=say)
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def export_in_place(
    model_dir: str | Path,
    *,
    calibration: Sequence[np.ndarray] | None = None,
    int8_stages: tuple[str, ...] = INT8_STAGES,
    progress: Callable[[str], None] | None = None,
) -> ModelManifest:
    """Add ONNX files to bundle ``model_dir`` itself and name them in its manifest.

    ``calibration``: preprocessed (1, C, H, W) batches (:func:`record_batches`); when given, the
    stages in ``int8_stages`` also get an int8 model (a detector's only where it agrees with
    float32, :func:`detector_int8_agreement`). ``steelscan train`` uses this on its staged bundle
    (:func:`export_bundle` on a copy). The manifest is rewritten last, so a failure leaves a
    bundle whose manifest names only files that exist. Returns the new manifest.
    """
    from steelscan.bundle import load_bundle

    model_dir = Path(model_dir)
    say = progress or (lambda _msg: None)
    bundle = load_bundle(model_dir)
    manifest = bundle.manifest.model_copy(deep=True)
    if all(getattr(manifest, stage) is None for stage in STAGES):
        raise ExportError(f"{model_dir}: the bundle has no classifier, segmenter or detector")
    for stage in STAGES:
        spec = getattr(manifest, stage)
        if spec is None:
            continue
        spec.onnx_file = f"{stage}.onnx"
        spec.onnx_int8_file = None
        (model_dir / f"{stage}.int8.onnx").unlink(missing_ok=True)  # a stale one
        say(f"exporting the {stage} to {spec.onnx_file}")
        _export_stage(stage, getattr(bundle, stage), model_dir / spec.onnx_file, manifest)
        if calibration is not None and stage in int8_stages:
            spec.onnx_int8_file = _quantize_stage(stage, model_dir, manifest, calibration, say)
    _write_manifest(model_dir, manifest)
    return manifest


def _export_stage(stage: str, module: Any, path: Path, manifest: ModelManifest) -> Path:
    """One stage's float32 ONNX file, traced at the bundle's padded image size."""
    h, w = _example_size(manifest)
    export = export_detector if stage == "detector" else export_module
    return export(module, path, in_channels=manifest.in_channels, height=h, width=w)


def _quantize_stage(
    stage: str,
    model_dir: Path,
    manifest: ModelManifest,
    calibration: Sequence[np.ndarray],
    say: Callable[[str], None],
) -> str | None:
    """Write ``{stage}.int8.onnx`` and return its name; None where a detector's int8 model
    strays from float32 on the calibration images (the file is then removed)."""
    fp32, int8 = model_dir / f"{stage}.onnx", model_dir / f"{stage}.int8.onnx"
    say(f"quantising the {stage} to int8 ({len(calibration)} calibration images)")
    if stage != "detector":
        quantize_int8(fp32, int8, calibration)
        return int8.name
    quantize_int8(fp32, int8, calibration, keep_fp32=detector_fp32_nodes)
    threshold = manifest.postprocess.box_score_threshold
    score_diff, box_diff = detector_int8_agreement(fp32, int8, calibration, threshold)
    detail = f"scores within {score_diff:.4f}, shown boxes within {box_diff:.2f} px of float32"
    if score_diff <= INT8_SCORE_TOLERANCE and box_diff <= INT8_BOX_TOLERANCE_PX:
        say(f"int8 detector kept: {detail}")
        return int8.name
    say(
        f"int8 detector dropped ({detail}; the limits are {INT8_SCORE_TOLERANCE} and "
        f"{INT8_BOX_TOLERANCE_PX} px): the detector runs in float32 under int8 engines"
    )
    int8.unlink(missing_ok=True)
    return None


def drop_int8(model_dir: str | Path) -> ModelManifest:
    """Remove a bundle's int8 models (training does this where int8 lost the validation score),
    manifest first, so it never names a missing file."""
    from steelscan.bundle import read_manifest

    model_dir = Path(model_dir)
    manifest = read_manifest(model_dir)
    names = []
    for stage in STAGES:
        spec = getattr(manifest, stage)
        if spec is not None and spec.onnx_int8_file:
            names.append(spec.onnx_int8_file)
            spec.onnx_int8_file = None
    _write_manifest(model_dir, manifest)
    for name in names:
        (model_dir / name).unlink(missing_ok=True)
    return manifest


def exported_file(
    root: Path, spec: Any, stage: str, *, int8: bool, int8_required: bool | None = None
) -> Path | None:
    """The ONNX file an engine should load for one stage of an exported bundle (None: no stage).

    Under int8 a stage without an int8 model (the gate by default, a detector whose int8 model
    strayed from float32) runs its float32 model, unless ``int8_required`` (default: only for the
    segmenter; engines also require it of the detector of a bundle without a segmenter): then
    int8 would mean nothing. Missing exports raise a ValueError that says which
    ``steelscan export`` command makes them.
    """
    if spec is None:
        return None
    if int8_required is None:
        int8_required = stage == "segmenter"
    precision = "int8" if int8 else "fp32"
    if int8:
        name = spec.onnx_int8_file or (None if int8_required else spec.onnx_file)
    else:
        name = spec.onnx_file
    if not name:
        how = "--format onnx --int8 --calibration DATA" if int8 else "--format onnx"
        raise ValueError(
            f"{root}: the bundle has no {precision} ONNX model for the {stage}; "
            f"create one with `steelscan export {root} {how} --out DIR`"
        )
    path = Path(root) / name
    if not path.is_file():
        raise ValueError(
            f"{path}: the manifest names this ONNX file for the {stage}, but it is missing"
        )
    return path
