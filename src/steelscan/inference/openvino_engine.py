"""The ``openvino`` engine: OpenVINO compiles the ONNX files that ``steelscan export`` wrote.

OpenVINO reads ONNX directly (no separate IR export step), so any exported bundle runs on it.
``precision="bf16"`` asks the CPU plugin for bfloat16 inference where the CPU has native bf16
(AVX512-BF16 / AMX); ``"fp32"`` keeps full precision; ``int8=True`` compiles the int8 QDQ model.
Like the onnx engine it is optional: importing this module registers it, and
:func:`steelscan.inference.engines.make_engine` imports it only when ``"openvino"`` is asked for.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from steelscan.inference.engines import register_engine
from steelscan.inference.export import exported_file
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
        self.precision = "int8" if self.int8 else precision
        self._core = ov.Core()
        self._config: dict[str, Any] = {
            "INFERENCE_NUM_THREADS": int(threads) if threads else physical_cores(),
            "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
            "PERFORMANCE_HINT": "LATENCY",
        }
        root = Path(bundle.path)
        self.classifier = self._compile(root, bundle.manifest.classifier, "classifier")
        self.segmenter = self._compile(root, bundle.manifest.segmenter, "segmenter")
        self.has_classifier = self.classifier is not None
        self.has_segmenter = self.segmenter is not None

    def _compile(self, root: Path, spec: Any, stage: str) -> Any:
        path = exported_file(root, spec, stage, int8=self.int8)
        if path is None:
            return None
        try:
            return self._core.compile_model(str(path), "CPU", self._config)
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses of its own
            raise ValueError(f"{path}: OpenVINO cannot compile the model ({exc})") from exc

    @staticmethod
    def _run(compiled: Any, batch: np.ndarray, what: str) -> np.ndarray:
        if compiled is None:
            raise RuntimeError(f"this bundle has no {what}")
        # One infer request per call: safe when the pipelined predictor calls from threads.
        request = compiled.create_infer_request()
        out = request.infer([np.ascontiguousarray(batch, dtype=np.float32)])
        return np.asarray(out[compiled.output(0)], dtype=np.float32)

    def classify(self, batch: np.ndarray) -> np.ndarray:
        return self._run(self.classifier, batch, "classifier")

    def segment(self, batch: np.ndarray) -> np.ndarray:
        return self._run(self.segmenter, batch, "segmenter")
