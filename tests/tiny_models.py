"""Tiny untrained bundles for tests of mechanics (imported by test modules, not a fixture file)."""

from __future__ import annotations

from pathlib import Path

# Small real networks keep mechanics tests fast on a shared 2-core CPU.
TINY_CLASSIFIER = "mobilenetv3_small_050"
TINY_FILTERS = [4, 8, 16, 32, 64]


def severstal_manifest(**fields):
    """A Severstal-shaped manifest (4 classes, 256x1600) with ``fields`` overriding the defaults."""
    from steelscan.manifest import ModelManifest, PostProcess

    base = dict(
        steelscan_version="0.1.0",
        created="2026-01-01T00:00:00",
        classes=["1", "2", "3", "4"],
        class_ids=[1, 2, 3, 4],
        image_height=256,
        image_width=1600,
        postprocess=PostProcess(
            class_thresholds=[0.5] * 4,
            pixel_thresholds=[0.5] * 4,
            min_areas=[0] * 4,
            min_component_areas=[0] * 4,
        ),
    )
    base.update(fields)
    return ModelManifest(**base)


def tiny_bundle(
    path: Path,
    *,
    postprocess=None,
    classifier: str = TINY_CLASSIFIER,
    classifier_outputs: int = 4,
    classifier_options: dict | None = None,
    segmenter_options: dict | None = None,
    seed: int = 0,
) -> Path:
    """An untrained but real two-stage bundle (timm gate + ResUNet) saved through the bundle
    format. Untrained weights give arbitrary but deterministic probabilities: enough for tests of
    mechanics (CLI, engines, export), not of skill. Default post-processing lets them through."""
    import torch

    from steelscan.bundle import save_bundle
    from steelscan.manifest import PostProcess
    from steelscan.models.factory import create_classifier, create_segmenter, spec_for

    torch.manual_seed(seed)
    clf = create_classifier(classifier, classifier_outputs, **(classifier_options or {}))
    seg = create_segmenter("resunet", None, 4, filters=TINY_FILTERS, **(segmenter_options or {}))
    pp = postprocess or PostProcess(
        gate_threshold=0.0,
        class_thresholds=[0.0] * 4,
        pixel_thresholds=[0.5] * 4,
        min_areas=[0] * 4,
        min_component_areas=[0] * 4,
    )
    man = severstal_manifest(classifier=spec_for(clf), segmenter=spec_for(seg), postprocess=pp)
    return save_bundle(path, man, clf, seg)


NEU_CLASSES = [
    "crazing",
    "inclusion",
    "patches",
    "pitted_surface",
    "rolled-in_scale",
    "scratches",
]
TINY_DETECTOR_ENCODER = "mobilenetv3_small_050"


def tiny_detector_bundle(
    path: Path,
    *,
    with_classifier: bool = True,
    with_segmenter: bool = False,
    detector_state: dict | None = None,
    seed: int = 0,
) -> Path:
    """An untrained (or ``detector_state``-loaded) NEU-shaped bundle with an FCOS detector:
    6 classes, 200x200, optional gate and segmenter. Scores start near FCOS's prior (about
    0.07), so with the default box threshold lowered to 0.05 an untrained detector still
    yields boxes: enough for mechanics (engines, export, writers), not for skill."""
    import torch

    from steelscan.bundle import save_bundle
    from steelscan.manifest import PostProcess
    from steelscan.models.factory import (
        create_classifier,
        create_detector,
        create_segmenter,
        spec_for,
    )

    k = len(NEU_CLASSES)
    torch.manual_seed(seed)
    clf = create_classifier(TINY_CLASSIFIER, k) if with_classifier else None
    seg = create_segmenter("resunet", None, k, filters=TINY_FILTERS) if with_segmenter else None
    det = create_detector("fcos", TINY_DETECTOR_ENCODER, k, fpn_channels=32)
    if detector_state is not None:
        det.load_state_dict(detector_state)
    pp = PostProcess(
        gate_threshold=0.0,
        class_thresholds=[0.0] * k,
        pixel_thresholds=[0.5] * k,
        min_areas=[0] * k,
        min_component_areas=[0] * k,
        box_score_threshold=0.05,
    )
    man = severstal_manifest(
        classes=NEU_CLASSES,
        class_ids=list(range(1, k + 1)),
        image_height=200,
        image_width=200,
        classifier=spec_for(clf) if clf is not None else None,
        segmenter=spec_for(seg) if seg is not None else None,
        detector=spec_for(det),
        postprocess=pp,
    )
    return save_bundle(path, man, clf, seg, det)
