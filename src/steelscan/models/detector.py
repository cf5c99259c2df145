"""The box detector: torchvision's FCOS on a timm encoder with a feature pyramid.

Why FCOS: anchor-free (no anchor shapes to tune for NEU's long scratches and image-wide
crazing), one stage (cheap on a CPU: about half the step time of Faster R-CNN on the same
encoder, measured in docs/benchmarks.md), and its head, losses and box coder are torchvision's,
not ours. The encoder is any timm model with ``features_only`` support (``mobilenetv2_100`` and
``tf_efficientnet_lite0`` take the ImageNet files in ../shared/weights), so the detector is built
from the same encoders as the gate and the segmenter.

The torchvision model's own resize-and-normalise transform is bypassed: the detector takes the
batch every stage takes (normalised, padded, by :mod:`steelscan.imaging`), so training, the
torch engine and the exported ONNX file all see the same tensor. ``forward`` returns, per input,
decoded boxes ``(N, L, 4)`` (x1, y1, x2, y2 in input pixels) and class scores ``(N, L, K)``
(``sqrt(sigmoid(class) * sigmoid(centerness))``, FCOS's score) for every one of the ``L``
feature-map locations. Thresholds, top-k and NMS are post-processing
(:mod:`steelscan.inference.boxes`), done the same way for every engine.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection import FCOS
from torchvision.models.detection.image_list import ImageList
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelP6P7

from steelscan.imaging import PAD_MULTIPLE

DETECTOR_FILE = "detector.safetensors"
DETECTOR_ARCHS: tuple[str, ...] = ("fcos",)
#: Encoder stages fed to the pyramid: strides 8, 16 and 32 (P6 and P7 add 64 and 128).
DEFAULT_OUT_INDICES = (2, 3, 4)


def is_detector_arch(arch: str) -> bool:
    return arch.lower() in DETECTOR_ARCHS


class EncoderPyramid(nn.Module):
    """A timm encoder's feature maps through torchvision's FPN (+ P6/P7), as FCOS expects."""

    def __init__(
        self,
        encoder: str,
        in_channels: int,
        fpn_channels: int,
        out_indices: Sequence[int] = DEFAULT_OUT_INDICES,
    ) -> None:
        super().__init__()
        self.body = timm.create_model(
            encoder,
            pretrained=False,
            features_only=True,
            out_indices=tuple(out_indices),
            in_chans=in_channels,
        )
        channels = self.body.feature_info.channels()
        self.fpn = FeaturePyramidNetwork(
            channels, fpn_channels, extra_blocks=LastLevelP6P7(fpn_channels, fpn_channels)
        )
        self.out_channels = fpn_channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        feats = self.body(x)
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(feats)))


class DetectionModel(nn.Module):
    """FCOS around an :class:`EncoderPyramid`; see the module docstring for the outputs.

    ``input_scale`` (> 1 upsamples): small images such as NEU's 200x200 give the stride-8 level
    only 25x25 locations; running the network at 1.6x lets small defects span more of them.
    Boxes are returned in the caller's pixels whatever the scale.
    """

    def __init__(
        self,
        encoder: str,
        num_classes: int,
        in_channels: int = 3,
        fpn_channels: int = 96,
        input_scale: float = 1.0,
        pad_multiple: int = PAD_MULTIPLE,
        center_sampling_radius: float = 1.5,
    ) -> None:
        super().__init__()
        if not 0 < input_scale <= 4:
            raise ValueError(f"detector input_scale must be in (0, 4], got {input_scale}")
        backbone = EncoderPyramid(encoder, in_channels, fpn_channels)
        self.fcos = FCOS(
            backbone,
            num_classes=int(num_classes),
            center_sampling_radius=center_sampling_radius,
            min_size=1,  # the transform is never used (see the module docstring)
            max_size=1,
        )
        self.num_outputs = int(num_classes)
        self.input_scale = float(input_scale)
        self.pad_multiple = int(pad_multiple)

    @property
    def encoder(self) -> nn.Module:
        """The timm feature extractor (where ImageNet weights are loaded)."""
        return self.fcos.backbone.body

    def _scaled(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_scale != 1.0:
            x = F.interpolate(x, scale_factor=self.input_scale, mode="bilinear")
        h, w = x.shape[-2:]
        m = self.pad_multiple
        return F.pad(x, (0, (m - w % m) % m, 0, (m - h % m) % m))

    def _run(
        self, x: torch.Tensor
    ) -> tuple[dict[str, torch.Tensor], list[torch.Tensor], list[int]]:
        xs = self._scaled(x)
        feats = list(self.fcos.backbone(xs).values())
        head = self.fcos.head(feats)
        size = (int(xs.shape[-2]), int(xs.shape[-1]))
        anchors = self.fcos.anchor_generator(ImageList(xs, [size] * xs.shape[0]), feats)
        return head, anchors, [f.size(2) * f.size(3) for f in feats]

    def losses(
        self, x: torch.Tensor, targets: list[dict[str, torch.Tensor]]
    ) -> dict[str, torch.Tensor]:
        """FCOS's classification (focal), GIoU and centerness losses; boxes in input pixels."""
        s = self.input_scale
        scaled = [{"boxes": t["boxes"] * s, "labels": t["labels"]} for t in targets]
        head, anchors, per_level = self._run(x)
        return self.fcos.compute_loss(scaled, head, anchors, per_level)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        head, anchors, _ = self._run(x)
        boxes = self.fcos.box_coder.decode(head["bbox_regression"], torch.stack(anchors))
        scores = torch.sqrt(torch.sigmoid(head["cls_logits"]) * torch.sigmoid(head["bbox_ctrness"]))
        return boxes / self.input_scale, scores


def build_detector(
    arch: str, encoder: str, num_classes: int, in_channels: int, **opts: Any
) -> DetectionModel:
    """The structure of a detector (no weights): what training and bundle loading both call."""
    if not is_detector_arch(arch):
        raise ValueError(
            f"unknown detector arch {arch!r}; choose one of {', '.join(DETECTOR_ARCHS)}"
        )
    if not timm.is_model(encoder):
        raise ValueError(f"unknown detector encoder {encoder!r} (not a timm model name)")
    allowed = {"fpn_channels", "input_scale", "pad_multiple", "center_sampling_radius"}
    unknown = sorted(set(opts) - allowed)
    if unknown:
        raise ValueError(
            f"unknown detector option(s) {', '.join(unknown)}; "
            f"allowed: {', '.join(sorted(allowed))}"
        )
    return DetectionModel(encoder, num_classes, in_channels, **opts)
