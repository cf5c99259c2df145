"""Model execution behind one small interface, so the pipeline does not know which runtime runs.

An engine takes a normalised float32 NCHW batch (already padded to the bundle's pad multiple) and
returns probabilities (sigmoid applied): ``classify -> (N, K)``, ``segment -> (N, K, H, W)``.

Engines are looked up by name in :data:`ENGINES`. ``"torch"`` lives here; other runtimes
(``"onnx"``) register themselves from their own modules, which :func:`make_engine` imports only
when asked for by name, so importing steelscan never requires onnxruntime.
"""

from __future__ import annotations

import importlib
import importlib.util
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    import torch

    from steelscan.bundle import LoadedBundle


class Engine(Protocol):
    name: str
    has_classifier: bool
    has_segmenter: bool
    has_detector: bool

    def classify(self, batch: np.ndarray) -> np.ndarray: ...

    def segment(self, batch: np.ndarray) -> np.ndarray: ...

    def detect(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``boxes`` (N, L, 4) in the batch's pixels and ``scores`` (N, L, K) per location."""
        ...


EngineFactory = Callable[..., Engine]

ENGINES: dict[str, EngineFactory] = {}

# Engines that live in optional modules: imported on first use so their runtime stays optional.
_LAZY_ENGINES: dict[str, str] = {
    "onnx": "steelscan.inference.onnx_engine",
    "openvino": "steelscan.inference.openvino_engine",
}


def register_engine(name: str) -> Callable[[EngineFactory], EngineFactory]:
    """Class decorator: make an engine available to :func:`make_engine` under ``name``."""

    def deco(factory: EngineFactory) -> EngineFactory:
        ENGINES[name] = factory
        return factory

    return deco


def available_engines() -> list[str]:
    """Every engine name that :func:`make_engine` may accept (lazy ones included)."""
    return sorted(set(ENGINES) | set(_LAZY_ENGINES))


def make_engine(name: str, bundle: LoadedBundle, **opts: Any) -> Engine:
    """Build engine ``name`` for a bundle; an unknown name raises a ValueError listing all."""
    if name not in ENGINES and name in _LAZY_ENGINES:
        try:
            importlib.import_module(_LAZY_ENGINES[name])
        except ImportError as exc:
            raise ValueError(f"engine {name!r} is not usable here: {exc}") from exc
    if name not in ENGINES:
        raise ValueError(
            f"unknown engine {name!r}; choose one of: {', '.join(available_engines())}"
        )
    return ENGINES[name](bundle, **opts)


@dataclass
class EngineChoice:
    """Which engine :class:`~steelscan.inference.predictor.Predictor` builds, and why."""

    engine: str
    options: dict[str, Any]
    batch_size: int | None = None  # the batch size it was measured fastest at, if recorded
    reason: str = "asked for"

    @property
    def label(self) -> str:
        o = self.options
        if o.get("int8"):
            precision = "int8+bf16" if o.get("precision") == "bf16" or o.get("bf16") else "int8"
        elif o.get("precision") == "bf16" or o.get("bf16"):
            precision = "bf16"
        elif o.get("fp16"):
            precision = "fp16"
        else:
            precision = "fp32"
        return f"{self.engine} {precision}"


# The manifest field where `steelscan train` records each engine's validation score and speed:
# ``manifest.metrics["engines"]`` is a list with one dict per engine and precision measured,
#
#   {"engine": "openvino",                          a name make_engine knows
#    "options": {"int8": true, "precision": "bf16"}, the engine's keyword arguments
#    "label": "openvino int8+bf16",                 EngineChoice(engine, options).label
#    "batch_size": 1,                                the batch size it was timed at
#    "images": 32,                                   validation images scored (and timed)
#    "metric": "kaggle",                             or "box_map50" (a bundle without segmenter)
#    "kaggle": 0.97,                                 the metric through the Predictor (Kaggle
#                                                    score, or pycocotools box mAP@0.5)
#    "kaggle_delta": -0.001,                         it minus torch float32's on the same images
#    "images_per_s": 15.5,                           end to end through Predictor.stream, warm-up
#                                                    images left out (None when it failed)
#    "keeps_score": true}                            <metric>_delta >= -SCORE_TOLERANCE
#
# plus "error" (a message) for an engine that could not run. Written by
# steelscan.training.measure; read by choose_engine.
ENGINE_RECORDS = "engines"
SCORE_TOLERANCE = 0.005  # an engine "keeps the score" within this much Kaggle of fp32


def _importable(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def cpu_has_bf16() -> bool:
    """Native bfloat16 on this CPU (AVX512-BF16 or AMX), read from /proc/cpuinfo on Linux."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        return False
    return False


def runnable_here(bundle: Any, engine: str, options: dict[str, Any]) -> str | None:
    """Why ``engine`` with ``options`` cannot run on this machine for ``bundle`` (None: it can)."""
    module = {"torch": "torch", "onnx": "onnxruntime", "openvino": "openvino"}.get(engine)
    if module is None:
        return f"unknown engine {engine!r}"
    if not _importable(module):
        return f"{module} is not installed"
    manifest = bundle.manifest
    if engine != "torch":
        # The segmenter (else the detector) needs a file of the precision asked for; a detector
        # beside a segmenter at least its float32 one (under int8 it may run in float32).
        main = manifest.segmenter or manifest.detector
        extra = manifest.detector if manifest.segmenter is not None else None
        names = [(main.onnx_int8_file if options.get("int8") else main.onnx_file) if main else None]
        if extra is not None:
            names.append((options.get("int8") and extra.onnx_int8_file) or extra.onnx_file)
        if not all(name and (Path(bundle.path) / name).is_file() for name in names):
            return "the bundle has no such ONNX export"
    wants_bf16 = options.get("precision") == "bf16" or options.get("bf16")
    if wants_bf16 and not cpu_has_bf16():
        return "this CPU has no native bfloat16"
    return None


def choose_engine(bundle: Any, name: str, options: dict[str, Any] | None = None) -> EngineChoice:
    """Resolve an engine name; ``auto`` picks the fastest recorded engine that keeps the score.

    ``steelscan train`` records, in ``manifest.metrics["engines"]``, every engine and precision
    it measured on the validation split: its Kaggle score, whether it is within
    :data:`SCORE_TOLERANCE` of float32 (``keeps_score``) and its speed. ``auto`` takes the
    fastest of those that keep the score and that this machine can run (:func:`runnable_here`);
    a bundle without records falls back to OpenVINO float32 when it has an ONNX export, else to
    torch. A ``device`` other than cpu/auto always means torch (the other engines run on CPUs).
    """
    opts = dict(options or {})
    if name != "auto":
        return EngineChoice(name, opts)
    device = str(opts.get("device") or "auto")
    if device not in ("auto", "cpu"):
        return EngineChoice("torch", opts, reason=f"device {device} runs on the torch engine")
    metrics = bundle.manifest.metrics if isinstance(bundle.manifest.metrics, dict) else {}
    records = [r for r in metrics.get(ENGINE_RECORDS) or [] if isinstance(r, dict)]
    ok = [
        r
        for r in records
        if r.get("keeps_score")
        and runnable_here(bundle, str(r.get("engine")), dict(r.get("options") or {})) is None
    ]
    if ok:
        best = max(ok, key=lambda r: float(r.get("images_per_s") or 0.0))
        chosen = {**dict(best.get("options") or {})}
        if best.get("engine") == "torch":
            chosen["device"] = device
        return EngineChoice(
            str(best["engine"]),
            chosen,
            batch_size=best.get("batch_size"),
            reason=f"fastest recorded within {SCORE_TOLERANCE} Kaggle of fp32 "
            f"({float(best.get('images_per_s') or 0):.1f} img/s when trained)",
        )
    if runnable_here(bundle, "openvino", {}) is None:
        return EngineChoice("openvino", {}, reason="no engine records; the ONNX export on OpenVINO")
    if runnable_here(bundle, "onnx", {}) is None:
        return EngineChoice("onnx", {}, reason="no engine records; the ONNX export")
    return EngineChoice("torch", {"device": device}, reason="no ONNX export in the bundle")


def resolve_device(device: str | None) -> str:
    """``"auto"``/None picks CUDA when present, else CPU; anything else is passed to torch as is."""
    import torch

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def bf16_supported(device: str) -> bool:
    """Whether bfloat16 autocast is worth using on ``device`` (native support, not emulation)."""
    import torch

    if device.startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device == "cpu":
        try:
            return bool(torch.backends.mkldnn.is_available()) and bool(
                torch.ops.mkldnn._is_mkldnn_bf16_supported()
            )
        except (AttributeError, RuntimeError):
            return False
    return False


@register_engine("torch")
class TorchEngine:
    """Runs the bundle's PyTorch modules in eval + inference mode.

    ``channels_last`` changes the memory layout (often faster for convolutions on CPU/GPU);
    ``bf16`` runs under bfloat16 autocast where the hardware supports it and otherwise falls back
    to float32 with a warning, so the same command line works on every machine. ``fp16`` is
    float16 autocast, for CUDA devices only (CPU float16 kernels are slow or missing: it falls
    back to float32 there, with a warning).
    """

    name = "torch"

    def __init__(
        self,
        bundle: LoadedBundle,
        *,
        device: str | None = "auto",
        channels_last: bool = False,
        bf16: bool = False,
        fp16: bool = False,
    ) -> None:
        import torch

        if bf16 and fp16:
            raise ValueError("choose one of bf16 and fp16, not both")
        self.device = resolve_device(device)
        self.channels_last = channels_last
        self.bf16 = bool(bf16)
        self.fp16 = bool(fp16)
        if self.fp16 and not self.device.startswith("cuda"):
            warnings.warn(
                f"float16 inference is for CUDA devices, not {self.device}; running in float32",
                RuntimeWarning,
                stacklevel=2,
            )
            self.fp16 = False
        if self.bf16 and not bf16_supported(self.device):
            warnings.warn(
                f"bfloat16 is not supported natively on {self.device}; running in float32",
                RuntimeWarning,
                stacklevel=2,
            )
            self.bf16 = False
        self.precision = "bf16" if self.bf16 else "fp16" if self.fp16 else "fp32"
        self.classifier = self._prepare(bundle.classifier)
        self.segmenter = self._prepare(bundle.segmenter)
        self.detector = self._prepare(bundle.detector)
        self.has_classifier = self.classifier is not None
        self.has_segmenter = self.segmenter is not None
        self.has_detector = self.detector is not None
        self._torch = torch

    def _prepare(self, module: torch.nn.Module | None) -> torch.nn.Module | None:
        import torch

        if module is None:
            return None
        module = module.to(self.device).eval()
        if self.channels_last:
            module = module.to(memory_format=torch.channels_last)
        return module

    def _forward(self, module: torch.nn.Module | None, batch: np.ndarray, what: str) -> Any:
        """``module(batch)`` on the device, in inference mode and the engine's precision."""
        torch = self._torch
        if module is None:
            raise RuntimeError(f"this bundle has no {what}")
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        half = torch.bfloat16 if self.bf16 else torch.float16 if self.fp16 else None
        autocast = (
            torch.autocast(device_type=self.device.split(":")[0], dtype=half)
            if half is not None
            else nullcontext()
        )
        with torch.inference_mode(), autocast:
            return module(x)

    def _run(self, module: torch.nn.Module | None, batch: np.ndarray, what: str) -> np.ndarray:
        out = self._forward(module, batch, what)
        if isinstance(out, (tuple, list)):  # segmenters with an aux head return (masks, labels)
            out = out[0]
        probs = self._torch.sigmoid(out.float())
        return probs.contiguous().cpu().numpy()

    def classify(self, batch: np.ndarray) -> np.ndarray:
        return self._run(self.classifier, batch, "classifier")

    def segment(self, batch: np.ndarray) -> np.ndarray:
        return self._run(self.segmenter, batch, "segmenter")

    def detect(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        boxes, scores = self._forward(self.detector, batch, "detector")
        return boxes.float().cpu().numpy(), scores.float().cpu().numpy()
