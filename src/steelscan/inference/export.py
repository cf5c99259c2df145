"""Export a trained bundle's two networks to ONNX (float32, and optionally int8) for fast inference.

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
STAGES = ("classifier", "segmenter")
DEFAULT_CALIBRATION_IMAGES = 16
# Only the segmenter is quantised by default: it is where the time goes (~85% of model time at
# 256x1600), while the gate is cheap and its image-level probabilities proved fragile under int8
# (measured on a Unet/MobileNetV2 + MobileNetV2 bundle: gate probabilities moved by up to 0.9).
INT8_STAGES = ("segmenter",)
FP32_TAIL = 3  # last Conv/Gemm layers left in float32 by the int8 export (see fp32_nodes)


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
    import onnx
    import torch

    path = Path(path)
    wrapped = _probabilities_module(module.cpu().eval())
    example = torch.zeros(1, in_channels, height, width, dtype=torch.float32)
    axes = {0: "batch"}
    if spatial_dynamic:
        axes.update({2: "height", 3: "width"})
    out_axes = dict(axes) if spatial_dynamic else {0: "batch"}
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
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: out_axes},
            do_constant_folding=True,
        )
    onnx.checker.check_model(str(path))
    return path


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


def quantize_int8(
    fp32_path: str | Path, int8_path: str | Path, batches: Iterable[np.ndarray]
) -> Path:
    """Static int8 quantisation (QDQ, per-channel, MinMax) of a model, calibrated on ``batches``."""
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
            nodes_to_exclude=fp32_nodes(pre),
        )
    return int8_path


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
    stages in ``int8_stages`` also get an int8 model. ``steelscan train`` uses this on its
    staged bundle (:func:`export_bundle` on a copy). The manifest is rewritten last, so a failure
    leaves a bundle whose manifest names only files that exist. Returns the new manifest.
    """
    from steelscan.bundle import load_bundle

    model_dir = Path(model_dir)
    say = progress or (lambda _msg: None)
    bundle = load_bundle(model_dir)
    manifest = bundle.manifest.model_copy(deep=True)
    if manifest.classifier is None and manifest.segmenter is None:
        raise ExportError(f"{model_dir}: the bundle has neither a classifier nor a segmenter")
    h, w = _example_size(manifest)
    for stage in STAGES:
        spec = getattr(manifest, stage)
        if spec is None:
            continue
        module = getattr(bundle, stage)
        fp32_name, int8_name = f"{stage}.onnx", f"{stage}.int8.onnx"
        say(f"exporting the {stage} to {fp32_name}")
        export_module(
            module, model_dir / fp32_name, in_channels=manifest.in_channels, height=h, width=w
        )
        spec.onnx_file = fp32_name
        spec.onnx_int8_file = None
        stale = model_dir / int8_name
        if stale.exists():
            stale.unlink()
        if calibration is not None and stage in int8_stages:
            say(f"quantising the {stage} to int8 ({len(calibration)} calibration images)")
            quantize_int8(model_dir / fp32_name, model_dir / int8_name, calibration)
            spec.onnx_int8_file = int8_name
    _write_manifest(model_dir, manifest)
    return manifest


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


def exported_file(root: Path, spec: Any, stage: str, *, int8: bool) -> Path | None:
    """The ONNX file an engine should load for one stage of an exported bundle (None: no stage).

    Under int8 a stage without an int8 model (the export quantises the segmenter only by
    default) runs its float32 model; the segmenter must have one, or int8 means nothing. Missing
    exports raise a ValueError that says which ``steelscan export`` command makes them.
    """
    if spec is None:
        return None
    precision = "int8" if int8 else "fp32"
    name = (
        (spec.onnx_int8_file or (spec.onnx_file if stage != "segmenter" else None))
        if int8
        else spec.onnx_file
    )
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
