"""Networks (classifier gates, segmenters), pretrained-encoder loading and training losses.

Everything returns LOGITS; sigmoid is applied by the inference engines. See
:mod:`steelscan.models.factory` for the entry points re-exported here.
"""

from __future__ import annotations

from steelscan.models.factory import (
    SEGMENTER_ARCHS,
    SegmentationModel,
    build_from_spec,
    create_classifier,
    create_segmenter,
    spec_for,
    spec_for_classifier,
    spec_for_segmenter,
)
from steelscan.models.losses import LOSSES, create_loss
from steelscan.models.pretrained import LoadReport, PretrainedWeightsError

__all__ = [
    "LOSSES",
    "SEGMENTER_ARCHS",
    "LoadReport",
    "PretrainedWeightsError",
    "SegmentationModel",
    "build_from_spec",
    "create_classifier",
    "create_loss",
    "create_segmenter",
    "spec_for",
    "spec_for_classifier",
    "spec_for_segmenter",
]
