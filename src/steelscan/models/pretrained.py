"""Pretrained encoder weights: ImageNet downloads when online, or a local file when offline.

``encoder_weights`` is one of

* ``None`` / ``"none"``: random initialisation;
* ``"imagenet"``: the libraries' own download (timm ``pretrained=True``, smp
  ``encoder_weights="imagenet"``). Offline, this fails AT ONCE with a message naming the
  alternatives instead of hanging in connection retries;
* a PATH to a state dict (``.pth``/``.pt``/``.bin`` read with ``torch.load(weights_only=True)``,
  or ``.safetensors``). Its sha256 can be checked. Both the torchvision key layout and timm's are
  accepted: keys are matched by name first and, when too few names match (e.g. the torchvision
  MobileNetV2 file into timm's ``mobilenetv2_100``, or the lukemelas EfficientNet-Lite0 file into
  ``tf_efficientnet_lite0``), by position with every shape checked. A first convolution trained on
  RGB is adapted to other channel counts (1 channel: the RGB kernels are summed, as timm does).

Loading never unpickles arbitrary objects: ``torch.load`` runs with ``weights_only=True``.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import socket
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

log = logging.getLogger(__name__)

#: Shown in every "cannot get ImageNet weights" error so the user knows what to do instead.
OFFLINE_HINT = (
    "use '--encoder-weights none' to start from random weights, or pass a local weights file "
    "(a torchvision or timm state dict), e.g. "
    "'--encoder-weights ../shared/weights/mobilenet_v2-b0353104.pth'"
)

#: Fraction of the target module's tensors that must receive weights from a local file.
DEFAULT_MIN_FRACTION = 0.9

_PREFIXES = ("module.", "model.", "encoder.", "backbone.")


class PretrainedWeightsError(ValueError):
    """Pretrained weights cannot be obtained or do not fit the model (a user-fixable problem)."""


@dataclass
class LoadReport:
    """What happened when a local weights file was loaded into a module."""

    source: Path
    method: str  # "name" or "position"
    loaded: int  # tensors copied from the file
    total: int  # tensors in the target module
    adapted: list[str] = field(default_factory=list)  # first convs adapted to in_channels
    missing: list[str] = field(default_factory=list)  # target tensors left at their init

    def __str__(self) -> str:
        extra = f", adapted {', '.join(self.adapted)}" if self.adapted else ""
        return (
            f"loaded {self.loaded}/{self.total} tensors from {self.source.name} "
            f"(matched by {self.method}{extra})"
        )


def normalize_weights_arg(encoder_weights: str | os.PathLike | None) -> str | Path | None:
    """``None``/``"none"`` -> None, ``"imagenet"`` -> "imagenet", anything else -> a Path.

    A path that does not exist is an error here already, so a typo is reported before a model
    is built.
    """
    if encoder_weights is None:
        return None
    if isinstance(encoder_weights, str):
        low = encoder_weights.strip().lower()
        if low in ("", "none", "null", "random", "scratch"):
            return None
        if low == "imagenet":
            return "imagenet"
    path = Path(encoder_weights).expanduser()
    if not path.is_file():
        raise PretrainedWeightsError(
            f"encoder weights file {str(path)!r} does not exist (expected 'imagenet', 'none' "
            "or the path of a state dict file)"
        )
    return path


# --------------------------------------------------------------------------- ImageNet download


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def hub_reachable(timeout: float = 2.0) -> bool:
    """A fast TCP probe of the Hugging Face hub (where timm and smp 0.6 download weights from).

    Without it, a machine with no network can spend minutes in DNS/connect retries before the
    libraries give up; the probe answers in milliseconds when DNS fails.
    """
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    parsed = urlparse(endpoint)
    host = parsed.hostname or "huggingface.co"
    port = parsed.port or (443 if parsed.scheme != "http" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def offline_mode() -> bool:
    """True when the user asked for offline mode (env) or the hub cannot be reached."""
    if _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE"):
        return True
    return not hub_reachable()


@contextlib.contextmanager
def imagenet_download(what: str) -> Iterator[None]:
    """Run a library's pretrained download; offline, only its cache is used, and any failure
    becomes one clear :class:`PretrainedWeightsError` naming the alternatives.

    Offline we flip ``huggingface_hub``'s offline flag for the duration, so cached weights still
    load and missing ones fail immediately instead of retrying connections.
    """
    offline = offline_mode()
    try:
        from huggingface_hub import constants as hf_constants
    except ImportError:  # pragma: no cover - huggingface_hub ships with timm
        hf_constants = None
    previous = getattr(hf_constants, "HF_HUB_OFFLINE", None)
    if offline and hf_constants is not None:
        hf_constants.HF_HUB_OFFLINE = True
    try:
        yield
    except PretrainedWeightsError:
        raise
    except Exception as exc:  # any download/cache failure: one clear message
        state = (
            "offline (no network or HF_HUB_OFFLINE=1) and they are not cached"
            if offline
            else ("the download failed")
        )
        raise PretrainedWeightsError(
            f"cannot get ImageNet weights for {what}: {state} "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). "
            f"{OFFLINE_HINT}"
        ) from exc
    finally:
        if hf_constants is not None and previous is not None:
            hf_constants.HF_HUB_OFFLINE = previous


# --------------------------------------------------------------------------- local files


def sha256_of(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_sha256(path: Path, expected: str) -> None:
    """Raise naming the file, the expected and the actual digest when they differ."""
    actual = sha256_of(path)
    if actual.lower() != expected.strip().lower():
        raise PretrainedWeightsError(
            f"sha256 mismatch for weights file {path}: expected {expected.strip().lower()}, "
            f"got {actual}"
        )


def read_state_dict(path: str | os.PathLike, sha256: str | None = None) -> dict[str, torch.Tensor]:
    """Read a state dict without unpickling code; unwraps ``{"state_dict": ...}`` checkpoints."""
    path = Path(path)
    if not path.is_file():
        raise PretrainedWeightsError(f"weights file {path} does not exist")
    if sha256:
        verify_sha256(path, sha256)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: object = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise PretrainedWeightsError(
            f"cannot read weights file {path}: {type(exc).__name__}: {exc}".splitlines()[0]
        ) from exc
    for key in ("state_dict", "model_state_dict", "model", "weights"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not obj:
        raise PretrainedWeightsError(f"weights file {path} does not hold a state dict of tensors")
    sd = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not sd:
        raise PretrainedWeightsError(f"weights file {path} holds no tensors")
    return sd


def _strip(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for p in _PREFIXES:
            if key.startswith(p):
                key, changed = key[len(p) :], True
    return key


def _fit(
    name: str, src: torch.Tensor, dst: torch.Tensor, adapted: list[str]
) -> torch.Tensor | None:
    """``src`` shaped like ``dst``; a 4-D conv that differs only in input channels is adapted
    (timm's ``adapt_input_conv``: summed for 1 channel, repeated and rescaled otherwise)."""
    if src.shape == dst.shape:
        return src
    if (
        src.ndim == 4
        and dst.ndim == 4
        and src.shape[0] == dst.shape[0]
        and src.shape[2:] == dst.shape[2:]
        and src.shape[1] == 3
    ):
        from timm.models._manipulate import adapt_input_conv

        adapted.append(name)
        return adapt_input_conv(dst.shape[1], src.float()).to(dst.dtype)
    return None


def match_state_dict(
    target: Mapping[str, torch.Tensor], source: Mapping[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], str, list[str]]:
    """Map ``source`` tensors onto ``target`` keys: by name, else by position.

    Position matching walks both key lists in order and stops at the first shape that does not
    fit (typically the classifier head); it is what makes torchvision's MobileNetV2 and the
    lukemelas EfficientNet-Lite0 files load into timm models (same tensors, same order, other
    names -- see shared/weights/SOURCES.md).
    """
    by_name: dict[str, torch.Tensor] = {}
    adapted_n: list[str] = []
    stripped = {_strip(k): v for k, v in source.items()}
    for k, dst in target.items():
        src = source.get(k)
        if src is None:
            src = stripped.get(_strip(k))
        if src is not None:
            fitted = _fit(k, src, dst, adapted_n)
            if fitted is not None:
                by_name[k] = fitted

    by_pos: dict[str, torch.Tensor] = {}
    adapted_p: list[str] = []
    for (tk, dst), (_, src) in zip(target.items(), source.items(), strict=False):
        fitted = _fit(tk, src, dst, adapted_p)
        if fitted is None:
            break
        by_pos[tk] = fitted
    if len(by_pos) > len(by_name):
        return by_pos, "position", adapted_p
    return by_name, "name", adapted_n


def load_local_weights(
    module: nn.Module,
    path: str | os.PathLike,
    sha256: str | None = None,
    min_fraction: float = DEFAULT_MIN_FRACTION,
) -> LoadReport:
    """Copy a local state dict into ``module`` (an encoder or a whole classifier).

    Raises :class:`PretrainedWeightsError` when fewer than ``min_fraction`` of the module's
    tensors find a match: a wrong file should fail loudly, not leave a random network.
    """
    path = Path(path)
    source = read_state_dict(path, sha256)
    target = module.state_dict()
    matched, method, adapted = match_state_dict(target, source)
    total = len(target)
    if total == 0 or len(matched) < min_fraction * total:
        sample = ", ".join(list(source)[:3])
        raise PretrainedWeightsError(
            f"weights file {path} does not fit this model: only {len(matched)} of {total} tensors "
            f"match by name or position (file keys start with: {sample}). "
            f"Use a file for the same architecture, or {OFFLINE_HINT}"
        )
    module.load_state_dict(matched, strict=False)
    missing = [k for k in target if k not in matched]
    report = LoadReport(path, method, len(matched), total, adapted, missing)
    log.info("%s", report)
    return report
