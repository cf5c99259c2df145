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
