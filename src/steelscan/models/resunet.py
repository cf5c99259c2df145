"""The course's ResUNet segmenter, layer for layer, in PyTorch.

Read from the course's Keras model (``resunet-segmentation-model.json`` of the original
"detect and localize manufacturing defects" project):

* stem: 3x3 conv (16, ReLU) -> BN -> 3x3 conv (16, ReLU) -> BN;
* encoder: max-pool 2x2, then a residual block, for 32, 64, 128 and 256 filters (the 256 block
  is the bottleneck). A residual block's main path is 1x1 conv -> BN -> ReLU -> 3x3 conv -> BN;
  its shortcut is 1x1 conv -> BN; the sum goes through a ReLU;
* decoder: four stages of nearest 2x up-sampling, concatenation with the matching encoder
  output (``[upsampled, skip]``), and a residual block of 128, 64, 32, 16 filters;
* a 1x1 conv to ``num_classes``.

Differences, on purpose: the output is LOGITS (the course ends in a sigmoid; here the sigmoid is
applied at inference by the engines, and the losses take logits for numerical stability), and
BatchNorm keeps PyTorch's defaults (Keras used eps 1e-3, momentum 0.99): those are training
settings, not architecture. Convs keep their bias, as in Keras. An optional classification head
on the bottleneck supports auxiliary "which classes are present" training.

The network down-samples 4 times, so inputs must be multiples of 16; the factory wraps it in
:class:`steelscan.models.factory.SegmentationModel`, which pads any size and crops back.
"""

from __future__ import annotations

import torch
from torch import nn

#: Filters of the stem, the three encoder blocks and the bottleneck, as in the course.
FILTERS: tuple[int, ...] = (16, 32, 64, 128, 256)


class ResBlock(nn.Module):
    """Main path 1x1 conv -> BN -> ReLU -> 3x3 conv -> BN, plus a 1x1 conv -> BN shortcut."""

    def __init__(self, in_channels: int, filters: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, filters, kernel_size=1)
        self.bn1 = nn.BatchNorm2d(filters)
        self.conv2 = nn.Conv2d(filters, filters, kernel_size=3, padding=1)
        self.bn2 = nn.BatchNorm2d(filters)
        self.shortcut = nn.Sequential(
            nn.Conv2d(in_channels, filters, kernel_size=1), nn.BatchNorm2d(filters)
        )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        main = self.relu(self.bn1(self.conv1(x)))
        main = self.bn2(self.conv2(main))
        return self.relu(main + self.shortcut(x))


class Stem(nn.Module):
    """Two 3x3 convs with ReLU, each followed by BN (the course applies BN after the ReLU)."""

    def __init__(self, in_channels: int, filters: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, filters, kernel_size=3, padding=1)
        self.bn1 = nn.BatchNorm2d(filters)
        self.conv2 = nn.Conv2d(filters, filters, kernel_size=3, padding=1)
        self.bn2 = nn.BatchNorm2d(filters)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn1(self.relu(self.conv1(x)))
        return self.bn2(self.relu(self.conv2(x)))


class UpConcat(nn.Module):
    """Nearest 2x up-sampling, ``[up, skip]`` concatenation, then a residual block."""

    def __init__(self, in_channels: int, skip_channels: int, filters: int) -> None:
        super().__init__()
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.block = ResBlock(in_channels + skip_channels, filters)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.block(torch.cat([self.up(x), skip], dim=1))


class ResUNet(nn.Module):
    """The course's ResUNet (see the module docstring); returns mask logits (N, K, H, W).

    ``aux_classes`` adds a global-average-pool + dropout + linear head on the bottleneck, used by
    :meth:`forward_with_aux`; plain :meth:`forward` returns the masks only.
    """

    downsampling = 16  # four max-pools

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 4,
        filters: tuple[int, ...] | list[int] = FILTERS,
        aux_classes: int | None = None,
        aux_dropout: float = 0.2,
    ) -> None:
        super().__init__()
        f = tuple(int(v) for v in filters)
        if len(f) != 5:
            raise ValueError(f"ResUNet needs 5 filter counts (stem, 3 blocks, bottleneck), got {f}")
        self.filters = f
        self.stem = Stem(in_channels, f[0])
        self.pool = nn.MaxPool2d(2)
        self.enc1 = ResBlock(f[0], f[1])
        self.enc2 = ResBlock(f[1], f[2])
        self.enc3 = ResBlock(f[2], f[3])
        self.bottleneck = ResBlock(f[3], f[4])
        self.dec4 = UpConcat(f[4], f[3], f[3])
        self.dec3 = UpConcat(f[3], f[2], f[2])
        self.dec2 = UpConcat(f[2], f[1], f[1])
        self.dec1 = UpConcat(f[1], f[0], f[0])
        self.head = nn.Conv2d(f[0], num_classes, kernel_size=1)
        self.aux: nn.Module | None = None
        if aux_classes:
            self.aux = nn.Sequential(
                nn.AdaptiveAvgPool2d(1),
                nn.Flatten(),
                nn.Dropout(aux_dropout),
                nn.Linear(f[4], aux_classes),
            )

    def _run(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s0 = self.stem(x)
        s1 = self.enc1(self.pool(s0))
        s2 = self.enc2(self.pool(s1))
        s3 = self.enc3(self.pool(s2))
        b = self.bottleneck(self.pool(s3))
        d = self.dec4(b, s3)
        d = self.dec3(d, s2)
        d = self.dec2(d, s1)
        d = self.dec1(d, s0)
        return self.head(d), b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(x)[0]

    def forward_with_aux(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        masks, bottleneck = self._run(x)
        return masks, (self.aux(bottleneck) if self.aux is not None else None)
