"""The course's defect/no-defect gate: a ResNet50 body and a small dense head, one output.

The course (Keras) used ``ResNet50(include_top=False)`` on 256x256 inputs, then
``AveragePooling2D(4x4)`` -> ``Flatten`` -> ``Dense(256, relu)`` -> ``Dropout(0.3)`` ->
``Dense(1, sigmoid)``. At 256x256 the body's output is 8x8, so that 4x4 pooling yields a 2x2 grid
and a flattened vector of 2x2x2048 = 8192 features.

Our inputs vary (256x1600 strips, 200x200 NEU tiles, crops), and a fixed 4x4 window would give a
different flattened length for every size, breaking the dense layer. We therefore pool ADAPTIVELY
to a fixed ``pool_grid`` x ``pool_grid`` grid (:class:`GridAvgPool`, ONNX-exportable at any
size): ``pool_grid=2`` (default) reproduces the course's
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


class GridAvgPool(nn.Module):
    """``nn.AdaptiveAvgPool2d(grid)`` written with slices, so a traced ONNX export with dynamic
    height and width works (the exporter rejects adaptive pooling of a dynamic size).

    Bin ``i`` spans ``[floor(i*H/g), ceil((i+1)*H/g))``, exactly PyTorch's adaptive bins. The
    ceiling is computed on positive numbers only: ONNX integer division truncates toward zero,
    so the ``-(-a // b)`` idiom would be exported wrongly.
    """

    def __init__(self, grid: int) -> None:
        super().__init__()
        self.grid = int(grid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.grid
        h, w = x.shape[-2], x.shape[-1]
        rows = []
        for i in range(g):
            r0, r1 = (i * h) // g, ((i + 1) * h + g - 1) // g
            cols = []
            for j in range(g):
                c0, c1 = (j * w) // g, ((j + 1) * w + g - 1) // g
                cols.append(x[:, :, r0:r1, c0:c1].mean(dim=(2, 3)))
            rows.append(torch.stack(cols, dim=-1))
        return torch.stack(rows, dim=-2)


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
        self.pool = GridAvgPool(pool_grid)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(features * pool_grid * pool_grid, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.body(x)))
