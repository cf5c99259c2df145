"""The course's defect/no-defect gate: a ResNet50 body and a small dense head, one output.

The course (Keras) used ``ResNet50(include_top=False)`` on 256x256 inputs, then
``AveragePooling2D(4x4)`` -> ``Flatten`` -> ``Dense(256, relu)`` -> ``Dropout(0.3)`` ->
``Dense(1, sigmoid)``. At 256x256 the body's output is 8x8, so that 4x4 pooling yields a 2x2 grid
and a flattened vector of 2x2x2048 = 8192 features.

Our inputs vary (256x1600 strips, 200x200 NEU tiles, crops), and a fixed 4x4 window would give a
different flattened length for every size, breaking the dense layer. We therefore pool ADAPTIVELY
to a fixed ``pool_grid`` x ``pool_grid`` grid: ``pool_grid=2`` (default) reproduces the course's
layer sizes exactly at its 256x256 input and keeps the head the same size at any other input;
``pool_grid=4`` keeps more horizontal detail on 1600-wide strips at 4x the head parameters.

The output is one LOGIT (the course's sigmoid is applied by the inference engines).
"""

from __future__ import annotations

import timm
import torch
from torch import nn

CLASSIC_ARCH = "resnet50_classic"
BODY_ARCH = "resnet50"


class ClassicGate(nn.Module):
    """ResNet50 body + adaptive average pool to a grid + dense 256 ReLU + dropout + 1 logit."""

    num_outputs = 1

    def __init__(
        self,
        in_channels: int = 3,
        pool_grid: int = 2,
        hidden: int = 256,
        dropout: float = 0.3,
        pretrained: bool = False,
    ) -> None:
        super().__init__()
        # num_classes=0 + global_pool="" -> the unpooled (N, 2048, h, w) feature map.
        self.body = timm.create_model(
            BODY_ARCH, pretrained=pretrained, num_classes=0, global_pool="", in_chans=in_channels
        )
        features = self.body.num_features
        self.pool = nn.AdaptiveAvgPool2d(pool_grid)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(features * pool_grid * pool_grid, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.body(x)))
