"""The ``onnx`` engine: ONNX Runtime sessions over the files ``steelscan export`` adds to a bundle.

Importing this module registers the engine, which :func:`steelscan.inference.engines.make_engine`
does on first use of ``"onnx"``, so onnxruntime stays an optional import for everything else.

Session settings, and why: ``intra_op_num_threads`` defaults to the number of *physical* cores
(hyper-threads only add contention to convolution kernels); graph optimisation level ALL enables
the layout transformations and QDQ -> QLinear fusions that make int8 fast. Sessions are safe to call
from several threads at once, which the pipelined predictor relies on.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from steelscan.inference.engines import register_engine
from steelscan.inference.export import DETECTOR_OUTPUTS, INPUT_NAME, exported_file

if TYPE_CHECKING:
    import onnxruntime as ort

    from steelscan.bundle import LoadedBundle


def physical_cores() -> int:
    """Physical cores this process may use (SMT siblings counted once); else cpu_count."""
    try:
        allowed = os.sched_getaffinity(0)
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)
    cores: set[tuple[str, str]] = set()
    for cpu in allowed:
        topo = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            package = (topo / "physical_package_id").read_text().strip()
            core = (topo / "core_id").read_text().strip()
        except OSError:
            return max(1, len(allowed))
        cores.add((package, core))
    return max(1, len(cores))


def _providers(device: str | None) -> list[str]:
    """CUDA first when asked for (or ``auto``) and installed; CPU always as the fallback."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    wanted: list[str] = []
    if device in (None, "auto") or str(device).startswith("cuda"):
        if "CUDAExecutionProvider" in available:
            wanted.append("CUDAExecutionProvider")
        elif str(device).startswith("cuda"):
            raise ValueError(
                "device 'cuda' asked for, but this onnxruntime has no CUDAExecutionProvider "
                f"(available: {', '.join(available)}); install onnxruntime-gpu"
            )
    wanted.append("CPUExecutionProvider")
    return wanted


@register_engine("onnx")
class OnnxEngine:
    """Runs the bundle's exported ONNX models with ONNX Runtime (float32 or int8)."""

    name = "onnx"

    def __init__(
        self,
        bundle: LoadedBundle,
        *,
        int8: bool = False,
        threads: int | None = None,
        device: str | None = "cpu",
    ) -> None:
        self.int8 = bool(int8)
        self.precision = "int8" if self.int8 else "fp32"
        self.threads = int(threads) if threads else physical_cores()
        self.providers = _providers(device)
        root = Path(bundle.path)
        manifest = bundle.manifest
        self.classifier = self._session(root, manifest.classifier, "classifier")
        self.segmenter = self._session(root, manifest.segmenter, "segmenter")
        # without a segmenter the detector is the stage int8 is about: it must have an int8 file
        self.detector = self._session(
            root, manifest.detector, "detector", int8_required=manifest.segmenter is None
        )
        self.has_classifier = self.classifier is not None
        self.has_segmenter = self.segmenter is not None
        self.has_detector = self.detector is not None

    def _session(
        self, root: Path, spec: Any, stage: str, int8_required: bool | None = None
    ) -> ort.InferenceSession | None:
        import onnxruntime as ort

        path = exported_file(root, spec, stage, int8=self.int8, int8_required=int8_required)
        if path is None:
            return None
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3  # warnings about unused initialisers etc. are noise here
        try:
            return ort.InferenceSession(str(path), opts, providers=self.providers)
        except Exception as exc:  # onnxruntime raises its own exception types for bad files
            raise ValueError(f"{path}: cannot load the ONNX model ({exc})") from exc

    @staticmethod
    def _run(session: ort.InferenceSession | None, batch: np.ndarray, what: str) -> np.ndarray:
        if session is None:
            raise RuntimeError(f"this bundle has no {what}")
        x = np.ascontiguousarray(batch, dtype=np.float32)
        return session.run(None, {INPUT_NAME: x})[0]

    def classify(self, batch: np.ndarray) -> np.ndarray:
        return self._run(self.classifier, batch, "classifier")

    def segment(self, batch: np.ndarray) -> np.ndarray:
        return self._run(self.segmenter, batch, "segmenter")

    def detect(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``boxes`` (N, L, 4) and ``scores`` (N, L, K), float32, from the exported detector."""
        if self.detector is None:
            raise RuntimeError("this bundle has no detector")
        x = np.ascontiguousarray(batch, dtype=np.float32)
        boxes, scores = self.detector.run(list(DETECTOR_OUTPUTS), {INPUT_NAME: x})
        return np.asarray(boxes, np.float32), np.asarray(scores, np.float32)
