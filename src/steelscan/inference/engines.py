"""Model execution behind one small interface, so the pipeline does not know which runtime runs.

An engine takes a normalised float32 NCHW batch (already padded to the bundle's pad multiple) and
returns probabilities (sigmoid applied): ``classify -> (N, K)``, ``segment -> (N, K, H, W)``.

Engines are looked up by name in :data:`ENGINES`. ``"torch"`` lives here; other runtimes
(``"onnx"``) register themselves from their own modules, which :func:`make_engine` imports only
when asked for by name, so importing steelscan never requires onnxruntime.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    import torch

    from steelscan.bundle import LoadedBundle


class Engine(Protocol):
    name: str
    has_classifier: bool
    has_segmenter: bool

    def classify(self, batch: np.ndarray) -> np.ndarray: ...

    def segment(self, batch: np.ndarray) -> np.ndarray: ...


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
        self.has_classifier = self.classifier is not None
        self.has_segmenter = self.segmenter is not None
        self._torch = torch

    def _prepare(self, module: torch.nn.Module | None) -> torch.nn.Module | None:
        import torch

        if module is None:
            return None
        module = module.to(self.device).eval()
        if self.channels_last:
            module = module.to(memory_format=torch.channels_last)
        return module

    def _run(self, module: torch.nn.Module | None, batch: np.ndarray, what: str) -> np.ndarray:
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
            out = module(x)
            if isinstance(out, (tuple, list)):  # segmenters with an aux head return (masks, labels)
                out = out[0]
            probs = torch.sigmoid(out.float())
        return probs.contiguous().cpu().numpy()

    def classify(self, batch: np.ndarray) -> np.ndarray:
        return self._run(self.classifier, batch, "classifier")

    def segment(self, batch: np.ndarray) -> np.ndarray:
        return self._run(self.segmenter, batch, "segmenter")
