"""One factory for every network steelscan trains: classifier gates, segmenters and detectors.

Classifiers (``create_classifier``): any timm model by name, giving multi-label logits (N, K), and
``"resnet50_classic"``, the course's one-output defect/no-defect gate (:mod:`.classic`).

Segmenters (``create_segmenter``): every segmentation_models_pytorch architecture ("unet", "fpn",
...) with any smp encoder, including timm ones as ``"tu-<timm name>"``, and
``"resunet"``, the course's ResUNet (:mod:`.resunet`). Segmenters are wrapped in
:class:`SegmentationModel`, which pads any input to a multiple of 32 (smp requires it; ResUNet
needs 16) and crops the logits back, so 256x1600, 200x200 and 128x800 all work.

Detectors (``create_detector``): ``"fcos"`` (torchvision's FCOS) on any timm encoder with a
feature pyramid (:mod:`.detector`); they return decoded boxes and scores per location.

Classifiers and segmenters return LOGITS; the sigmoid is applied by the inference engines.
Each model carries ``num_outputs`` and ``steelscan_spec`` (a
:class:`~steelscan.manifest.StageSpec` with no weights file content, see :func:`spec_for`) so
training can store how to rebuild it, and
:func:`build_from_spec` rebuilds it without downloading anything.
"""

from __future__ import annotations

import difflib
from functools import lru_cache
from pathlib import Path
from typing import Any

import segmentation_models_pytorch as smp
import timm
import torch
import torch.nn.functional as F
from torch import nn

from steelscan.imaging import PAD_MULTIPLE, pad_amount
from steelscan.manifest import StageSpec
from steelscan.models.classic import CLASSIC_ARCH, ClassicGate
from steelscan.models.detector import (
    DETECTOR_FILE,
    DetectionModel,
    build_detector,
    is_detector_arch,
)
from steelscan.models.pretrained import (
    LoadReport,
    PretrainedWeightsError,
    imagenet_download,
    load_local_weights,
    normalize_weights_arg,
)
from steelscan.models.resunet import ResUNet

CLASSIFIER_FILE = "classifier.safetensors"
SEGMENTER_FILE = "segmenter.safetensors"
RESUNET_ARCH = "resunet"
#: smp architectures plus the course's ResUNet; any other arch name is a classifier.
SEGMENTER_ARCHS: tuple[str, ...] = (RESUNET_ARCH, *smp.MODEL_ARCHITECTURES_MAPPING)
DEFAULT_PAD_MULTIPLE = PAD_MULTIPLE


# --------------------------------------------------------------------------- helpers


def is_segmenter_arch(arch: str) -> bool:
    return arch.lower() in SEGMENTER_ARCHS


@lru_cache(maxsize=1)
def _timm_names() -> tuple[str, ...]:
    return tuple(timm.list_models())


def _check_timm_name(name: str, what: str) -> None:
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, _timm_names(), n=5, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown {what} {name!r} (not a timm model name){hint}")


def _check_smp_encoder(encoder: str | None) -> str:
    if not encoder:
        raise ValueError("an smp segmenter needs an encoder, e.g. 'mobilenet_v2' or 'tu-resnet18'")
    if encoder.startswith("tu-"):
        _check_timm_name(encoder[3:], "timm encoder")
        return encoder
    names = smp.encoders.get_encoder_names()
    if encoder not in names:
        close = difflib.get_close_matches(encoder, names, n=5, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(
            f"unknown smp encoder {encoder!r}{hint} (timm backbones work as 'tu-<timm name>')"
        )
    return encoder


def _weights_args(encoder_weights: Any, weights_sha256: str | None) -> str | Path | None:
    weights = normalize_weights_arg(encoder_weights)
    if weights_sha256 and not isinstance(weights, Path):
        raise PretrainedWeightsError(
            "weights_sha256 only applies to a local weights file (encoder_weights=PATH)"
        )
    return weights


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pad bottom/right so H and W are multiples of ``multiple`` (0 = the mean colour after
    normalisation), by :func:`steelscan.imaging.pad_amount`, the rule the numpy side pads with.

    It stays a tensor operation inside the model (the exported graph must pad images it was not
    traced on). Padding is unconditional (a zero pad when already aligned) so that a traced ONNX
    export keeps it as shape arithmetic instead of freezing the branch taken by the example input.
    """
    h, w = x.shape[-2:]
    return F.pad(x, (0, pad_amount(w, multiple), 0, pad_amount(h, multiple)))


# --------------------------------------------------------------------------- segmenter wrapper


class SegmentationModel(nn.Module):
    """Pads to ``pad_multiple``, runs ``net``, crops back: ``forward(x) -> (N, K, H, W)`` logits.

    ``forward_with_aux(x) -> (mask_logits, class_logits)`` also returns the auxiliary
    classification head's (N, K) logits (``None`` when built without ``aux_head``); training uses
    it, inference uses ``forward``.
    """

    def __init__(
        self,
        net: nn.Module,
        num_outputs: int,
        pad_multiple: int = DEFAULT_PAD_MULTIPLE,
        has_aux: bool = False,
        input_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.net = net
        self.num_outputs = num_outputs
        self.pad_multiple = int(pad_multiple)
        self.has_aux = has_aux
        if not 0 < input_scale <= 1:
            raise ValueError(f"input_scale must be in (0, 1], got {input_scale}")
        self.input_scale = float(input_scale)

    def _raw(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if isinstance(self.net, ResUNet):
            return self.net.forward_with_aux(x)
        out = self.net(x)
        if isinstance(out, tuple | list):  # smp with aux_params returns (masks, labels)
            return out[0], out[1]
        return out, None

    def forward_with_aux(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        h, w = x.shape[-2:]
        if self.input_scale == 1.0:
            masks, labels = self._raw(pad_to_multiple(x, self.pad_multiple))
            return masks[..., :h, :w], labels
        # Reduced-resolution inside, full resolution outside: the network sees a downscaled
        # image (4x fewer pixels at 0.5, the cheap way to fit CPU budgets) and its logits are
        # upsampled back, so callers, losses and metrics always work at the input's size.
        small = F.interpolate(x, scale_factor=self.input_scale, mode="bilinear")
        sh, sw = small.shape[-2:]
        masks, labels = self._raw(pad_to_multiple(small, self.pad_multiple))
        masks = F.interpolate(masks[..., :sh, :sw], size=(h, w), mode="bilinear")
        return masks, labels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_aux(x)[0]


class ScaledInput(nn.Module):
    """Runs ``net`` on the input scaled by ``scale`` (bilinear): a cheaper image-level gate."""

    def __init__(self, net: nn.Module, scale: float) -> None:
        super().__init__()
        if not 0 < scale <= 1:
            raise ValueError(f"input_scale must be in (0, 1], got {scale}")
        self.net = net
        self.scale = float(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(F.interpolate(x, scale_factor=self.scale, mode="bilinear"))


# --------------------------------------------------------------------------- specs


def spec_for_classifier(
    arch: str, num_classes: int, weights_file: str = CLASSIFIER_FILE, **opts: Any
) -> StageSpec:
    """The StageSpec that :func:`build_from_spec` turns back into this classifier."""
    num_outputs = ClassicGate.num_outputs if arch == CLASSIC_ARCH else int(num_classes)
    return StageSpec(
        arch=arch, encoder=None, num_outputs=num_outputs, weights_file=weights_file, options=opts
    )


def spec_for_segmenter(
    arch: str,
    encoder: str | None,
    num_classes: int,
    aux_head: bool = False,
    weights_file: str = SEGMENTER_FILE,
    **opts: Any,
) -> StageSpec:
    """The StageSpec that :func:`build_from_spec` turns back into this segmenter."""
    return StageSpec(
        arch=arch.lower(),
        encoder=encoder,
        num_outputs=int(num_classes),
        aux_head=aux_head,
        weights_file=weights_file,
        options=opts,
    )


def spec_for(model: nn.Module) -> StageSpec:
    """The spec a factory-made model was created with (a copy, safe to edit)."""
    spec = getattr(model, "steelscan_spec", None)
    if not isinstance(spec, StageSpec):
        raise ValueError("this model was not made by steelscan.models.factory (no steelscan_spec)")
    return spec.model_copy(deep=True)


# --------------------------------------------------------------------------- classifiers


def create_classifier(
    arch: str,
    num_classes: int,
    in_channels: int = 3,
    encoder_weights: str | Path | None = None,
    weights_sha256: str | None = None,
    **opts: Any,
) -> nn.Module:
    """A classifier returning logits (N, num_outputs).

    ``arch``: any timm model name (num_outputs = ``num_classes``, multi-label logits) or
    ``"resnet50_classic"`` (the course's gate, num_outputs = 1; ``opts``: ``pool_grid``,
    ``hidden``, ``dropout``). ``input_scale`` (default 1.0) shrinks the image before the network: an
    image-level verdict needs far fewer pixels than a mask. Other ``opts`` go to
    ``timm.create_model`` (e.g. ``drop_rate``).
    ``encoder_weights``: None/"none", "imagenet" or a local state-dict path (see
    :mod:`.pretrained`); the load report is kept in ``model.weights_report``.
    """
    weights = _weights_args(encoder_weights, weights_sha256)
    report: LoadReport | None = None
    build_opts = dict(opts)
    input_scale = float(build_opts.pop("input_scale", 1.0))
    if arch == CLASSIC_ARCH:
        if weights == "imagenet":
            with imagenet_download(f"classifier {arch!r}"):
                model: nn.Module = ClassicGate(in_channels, pretrained=True, **build_opts)
        else:
            model = ClassicGate(in_channels, **build_opts)
            if isinstance(weights, Path):
                report = load_local_weights(model.body, weights, weights_sha256)
    else:
        _check_timm_name(arch, "classifier arch")
        kwargs = dict(num_classes=int(num_classes), in_chans=in_channels, **build_opts)
        if weights == "imagenet":
            with imagenet_download(f"classifier {arch!r}"):
                model = timm.create_model(arch, pretrained=True, **kwargs)
        else:
            model = timm.create_model(arch, pretrained=False, **kwargs)
            if isinstance(weights, Path):
                report = load_local_weights(model, weights, weights_sha256)
    if input_scale != 1.0:
        model = ScaledInput(model, input_scale)
    spec = spec_for_classifier(arch, num_classes, **opts)
    model.num_outputs = spec.num_outputs
    model.steelscan_spec = spec
    model.weights_report = report
    return model


# --------------------------------------------------------------------------- segmenters


def create_segmenter(
    arch: str,
    encoder: str | None,
    num_classes: int,
    in_channels: int = 3,
    encoder_weights: str | Path | None = None,
    weights_sha256: str | None = None,
    aux_head: bool = False,
    **opts: Any,
) -> SegmentationModel:
    """A segmenter returning mask logits (N, num_classes, H, W) for any H, W.

    ``arch``: "resunet" (encoder must be None; no pretrained weights) or an smp architecture
    ("unet", "fpn", ...) with an smp ``encoder`` (e.g. "mobilenet_v2", "resnet18",
    "tu-mobilenetv2_100"). ``aux_head=True`` adds a classification head, exposed by
    ``model.forward_with_aux(x) -> (mask_logits, class_logits)``. ``opts``: ``pad_multiple``
    (default 32), ``aux_dropout`` (default 0.2), ``input_scale`` (default 1.0: the network runs
    on the image scaled by this factor, logits are upsampled back); the rest go to smp / ResUNet
    (e.g. ``decoder_channels``).
    """
    arch_l = arch.lower()
    if arch_l not in SEGMENTER_ARCHS:
        raise ValueError(
            f"unknown segmenter arch {arch!r}; choose one of {', '.join(SEGMENTER_ARCHS)}"
        )
    weights = _weights_args(encoder_weights, weights_sha256)
    build_opts = dict(opts)
    pad_multiple = int(build_opts.pop("pad_multiple", DEFAULT_PAD_MULTIPLE))
    aux_dropout = float(build_opts.pop("aux_dropout", 0.2))
    input_scale = float(build_opts.pop("input_scale", 1.0))
    report: LoadReport | None = None
    if arch_l == RESUNET_ARCH:
        if encoder not in (None, "", "none", RESUNET_ARCH):
            raise ValueError(f"resunet has its own encoder; got encoder={encoder!r} (use None)")
        if weights is not None:
            raise PretrainedWeightsError(
                "resunet has no pretrained encoder; use '--encoder-weights none' or an smp "
                "architecture such as unet with encoder 'mobilenet_v2'"
            )
        encoder = None
        net: nn.Module = ResUNet(
            in_channels,
            num_classes,
            aux_classes=num_classes if aux_head else None,
            aux_dropout=aux_dropout,
            **build_opts,
        )
    else:
        encoder = _check_smp_encoder(encoder)
        kwargs = dict(in_channels=in_channels, classes=int(num_classes), activation=None)
        if aux_head:
            kwargs["aux_params"] = dict(classes=int(num_classes), dropout=aux_dropout)
        kwargs.update(build_opts)
        if weights == "imagenet":
            # smp wants True for timm ("tu-") encoders (their default pretrained tag) and the
            # registry key "imagenet" for its own encoders.
            smp_weights: Any = True if encoder.startswith("tu-") else "imagenet"
            with imagenet_download(f"segmenter encoder {encoder!r}"):
                net = smp.create_model(
                    arch_l, encoder_name=encoder, encoder_weights=smp_weights, **kwargs
                )
        else:
            net = smp.create_model(arch_l, encoder_name=encoder, encoder_weights=None, **kwargs)
            if isinstance(weights, Path):
                report = load_local_weights(net.encoder, weights, weights_sha256)
    model = SegmentationModel(
        net, int(num_classes), pad_multiple, has_aux=aux_head, input_scale=input_scale
    )
    model.steelscan_spec = spec_for_segmenter(arch_l, encoder, num_classes, aux_head, **opts)
    model.weights_report = report
    return model


# --------------------------------------------------------------------------- detectors


def create_detector(
    arch: str,
    encoder: str,
    num_classes: int,
    in_channels: int = 3,
    encoder_weights: str | Path | None = None,
    weights_sha256: str | None = None,
    **opts: Any,
) -> DetectionModel:
    """A box detector (``arch`` "fcos") on the timm ``encoder``; see :mod:`.detector`.

    ``encoder_weights`` loads into the encoder only (the pyramid and head start fresh), the same
    rule as the segmenter's. ``opts``: ``fpn_channels`` (96), ``input_scale`` (1.0; above 1
    upsamples), ``center_sampling_radius`` (1.5).
    """
    weights = _weights_args(encoder_weights, weights_sha256)
    model = build_detector(arch, encoder, num_classes, in_channels, **opts)
    report: LoadReport | None = None
    if weights == "imagenet":
        with imagenet_download(f"detector encoder {encoder!r}"):
            ref = timm.create_model(
                encoder, pretrained=True, features_only=True, in_chans=in_channels
            )
        model.encoder.load_state_dict(ref.state_dict(), strict=False)
    elif isinstance(weights, Path):
        report = load_local_weights(model.encoder, weights, weights_sha256)
    model.steelscan_spec = StageSpec(
        arch=arch.lower(),
        encoder=encoder,
        num_outputs=int(num_classes),
        weights_file=DETECTOR_FILE,
        options=opts,
    )
    model.weights_report = report
    return model


# --------------------------------------------------------------------------- rebuild


def build_from_spec(spec: StageSpec, in_channels: int) -> nn.Module:
    """Rebuild a model's structure from its manifest entry, with no weights and no network."""
    if is_detector_arch(spec.arch):
        return create_detector(
            spec.arch, spec.encoder or "", spec.num_outputs, in_channels, **spec.options
        )
    if is_segmenter_arch(spec.arch):
        return create_segmenter(
            spec.arch,
            spec.encoder,
            spec.num_outputs,
            in_channels=in_channels,
            encoder_weights=None,
            aux_head=spec.aux_head,
            **spec.options,
        )
    return create_classifier(
        spec.arch, spec.num_outputs, in_channels=in_channels, encoder_weights=None, **spec.options
    )
