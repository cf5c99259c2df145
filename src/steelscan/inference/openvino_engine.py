"""The ``openvino`` engine: OpenVINO compiles the ONNX files that ``steelscan export`` wrote.

OpenVINO reads ONNX directly (no separate IR export step), so any exported bundle runs on it.
``precision="bf16"`` asks the CPU plugin for bfloat16 inference where the CPU has native bf16
(AVX512-BF16 / AMX); ``"fp32"`` keeps full precision; ``int8=True`` compiles the int8 QDQ model.
Like the onnx engine it is optional: importing this module registers it, and
:func:`steelscan.inference.engines.make_engine` imports it only when ``"openvino"`` is asked for.

Each input shape gets its own compiled model, reshaped to that static shape (a cache of 8: a
line's images share one size, so shapes differ only by batch size: the full batch, a last partial
one, or the service's request sizes up to its batch size).
Why: with dynamic height and width, OpenVINO 2026.4 computes int8 QDQ models wrongly (mask
probabilities off by 0.4 on average against ONNX Runtime on the same file, measured on a
Unet/MobileNetV2), while the same file reshaped to a static shape agrees with ONNX Runtime to
0.0004; static shapes also let the CPU plugin pick its kernels for the exact size.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

import numpy as np

from steelscan.inference.engines import register_engine
from steelscan.inference.export import DETECTOR_OUTPUTS, exported_file
from steelscan.inference.onnx_engine import physical_cores

if TYPE_CHECKING:
    from steelscan.bundle import LoadedBundle


@register_engine("openvino")
class OpenVinoEngine:
    """Runs the bundle's exported ONNX models with OpenVINO on the CPU."""

    name = "openvino"

    def __init__(
        self,
        bundle: LoadedBundle,
        *,
        int8: bool = False,
        precision: str = "fp32",
        threads: int | None = None,
        device: str | None = "cpu",
    ) -> None:
        try:
            import openvino as ov
        except ImportError as exc:
            raise ValueError(
                "the openvino engine needs the openvino package (pip install openvino)"
            ) from exc
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"openvino precision must be fp32 or bf16, got {precision!r}")
        if device not in (None, "auto", "cpu"):
            raise ValueError(f"the openvino engine runs on the CPU only, not {device!r}")
        self.int8 = bool(int8)
        # int8 with bf16: layers the export kept in float32 run in bfloat16 (the fastest mix)
        self.precision = (
            ("int8+bf16" if precision == "bf16" else "int8") if self.int8 else precision
        )
        self._core = ov.Core()
        self._config: dict[str, Any] = {
            "INFERENCE_NUM_THREADS": int(threads) if threads else physical_cores(),
            "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
            "PERFORMANCE_HINT": "LATENCY",
        }
        root = Path(bundle.path)
        self.classifier = self._compile(root, bundle.manifest.classifier, "classifier")
        self.segmenter = self._compile(root, bundle.manifest.segmenter, "segmenter")
        # as in the onnx engine: without a segmenter, int8 needs the detector's int8 file
        self.detector = self._compile(
            root,
            bundle.manifest.detector,
            "detector",
            int8_required=bundle.manifest.segmenter is None,
        )
        self.has_classifier = self.classifier is not None
        self.has_segmenter = self.segmenter is not None
        self.has_detector = self.detector is not None

    def _compile(
        self, root: Path, spec: Any, stage: str, int8_required: bool | None = None
    ) -> _StaticShapes | None:
        path = exported_file(root, spec, stage, int8=self.int8, int8_required=int8_required)
        if path is None:
            return None
        try:
            model = self._core.read_model(str(path))
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses of its own
            raise ValueError(f"{path}: OpenVINO cannot read the model ({exc})") from exc
        return _StaticShapes(self._core, model, self._config, path)

    @staticmethod
    def _run(compiled: _StaticShapes | None, batch: np.ndarray, what: str) -> np.ndarray:
        if compiled is None:
            raise RuntimeError(f"this bundle has no {what}")
        return compiled.infer(np.ascontiguousarray(batch, dtype=np.float32))

    def classify(self, batch: np.ndarray) -> np.ndarray:
        return self._run(self.classifier, batch, "classifier")

    def segment(self, batch: np.ndarray) -> np.ndarray:
        return self._run(self.segmenter, batch, "segmenter")

    def detect(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``boxes`` (N, L, 4) and ``scores`` (N, L, K), float32, compiled per input shape."""
        if self.detector is None:
            raise RuntimeError("this bundle has no detector")
        x = np.ascontiguousarray(batch, dtype=np.float32)
        boxes, scores = self.detector.infer(x, DETECTOR_OUTPUTS)
        return boxes, scores


class _StaticShapes:
    """One network compiled once per input shape (least recently used dropped past ``keep``)."""

    def __init__(self, core: Any, model: Any, config: dict[str, Any], path: Path, keep: int = 8):
        self._core, self._model, self._config, self._path = core, model, config, path
        self._keep = keep
        self._compiled: OrderedDict[tuple[int, ...], Any] = OrderedDict()
        self._lock = threading.Lock()
        self.compiled_for(None)  # compile once now: a broken file fails at load, not mid-run

    def compiled_for(self, shape: tuple[int, ...] | None) -> Any:
        with self._lock:
            if shape in self._compiled:
                self._compiled.move_to_end(shape)
                return self._compiled[shape]
            model = self._model.clone()
            if shape is not None:
                model.reshape(list(shape))
            try:
                compiled = self._core.compile_model(model, "CPU", self._config)
            except Exception as exc:  # OpenVINO raises RuntimeError subclasses of its own
                raise ValueError(
                    f"{self._path}: OpenVINO cannot compile the model for input {shape} ({exc})"
                ) from exc
            if shape is not None:  # the dynamic one only checks the file
                self._compiled[shape] = compiled
                while len(self._compiled) > self._keep:
                    self._compiled.popitem(last=False)
            return compiled

    @overload
    def infer(self, batch: np.ndarray) -> np.ndarray: ...

    @overload
    def infer(self, batch: np.ndarray, outputs: Sequence[str]) -> list[np.ndarray]: ...

    def infer(
        self, batch: np.ndarray, outputs: Sequence[str] | None = None
    ) -> np.ndarray | list[np.ndarray]:
        """The first output, or the ``outputs`` named (the detector's boxes and scores)."""
        compiled = self.compiled_for(tuple(batch.shape))
        # One infer request per call: safe when the pipelined predictor calls from threads.
        out = compiled.create_infer_request().infer([batch])
        if outputs is None:
            return np.asarray(out[compiled.output(0)], dtype=np.float32)
        return [np.asarray(out[compiled.output(name)], dtype=np.float32) for name in outputs]
