"""The loaded model and the blocking work of a request, built on the one predictor road.

:class:`InspectionService` wraps a :class:`~steelscan.inference.predictor.Predictor` (strict about
the image size, as the tuned thresholds only hold at the size the model was validated at) and
turns decoded images into the API's JSON dicts with :meth:`Predictor.stream` (``workers=0``: the
service's worker threads are the only threads). The web page's "candidate" masks (each class as
if its presence threshold were 0) come from the same raw output through the same post-processor
with other settings (:meth:`PostProcessor.with_params`), so they never disagree with the verdict
except where that threshold decides.
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from steelscan.imageio import encode_png
from steelscan.inference.result import InspectionResult
from steelscan.manifest import ModelManifest, PostProcess
from steelscan.service.errors import InspectionFailed

_CHUNK = 1024 * 1024


def bundle_version(model_dir: Path, manifest: ModelManifest) -> str:
    """A short content hash of the manifest and weights: changes whenever the model does.

    The manifest has a name and a creation time but two retrainings can share both; clients that
    cache results need something that changes with the weights.
    """
    h = hashlib.sha256()
    files = [model_dir / "manifest.json"]
    for spec in (manifest.classifier, manifest.segmenter, manifest.detector):
        if spec is not None:
            files.append(model_dir / spec.weights_file)
    for f in files:
        if f.is_file():
            h.update(f.name.encode())
            with open(f, "rb") as fh:
                for chunk in iter(lambda fh=fh: fh.read(_CHUNK), b""):
                    h.update(chunk)
    return h.hexdigest()[:12]


def candidate_params(pp: PostProcess) -> PostProcess:
    """``pp`` with every presence threshold and minimum area at 0 (the candidate masks).

    The pixel threshold and small-component removal still apply; a soft gate stays soft (it
    scales the probabilities, so it shapes the mask), a hard one is opened.
    """
    k = len(pp.class_thresholds)
    return pp.model_copy(
        update={
            "gate_mode": "soft" if pp.gate_mode == "soft" else "none",
            "class_thresholds": [0.0] * k,
            "min_areas": [0] * k,
        }
    )


def overlay_png(image: np.ndarray, result: InspectionResult) -> bytes:
    """The image with the result's masks and the detector's boxes (with scores) drawn, PNG."""
    if not result.classes:
        return encode_png(image)
    from steelscan.reports.overlay import draw_detections, overlay

    drawn = overlay(image, np.stack([c.mask for c in result.classes]))
    if result.detections:
        drawn = draw_detections(drawn, result.detections, [c.name for c in result.classes])
    return encode_png(drawn)


class InspectionService:
    """The loaded predictor plus the blocking work done for a request (runs on a worker thread).

    ``engine`` defaults to the engine the predictor actually runs (``auto`` resolved).
    """

    def __init__(self, predictor: Any, *, version: str, engine: str | None = None) -> None:
        self.predictor = predictor
        self.manifest: ModelManifest = predictor.manifest
        self.version = version
        self.engine = engine or predictor.engine.name
        self.precision: str = getattr(predictor.engine, "precision", "fp32")
        self._candidates = predictor.postprocessor.with_params(
            candidate_params(predictor.postprocess)
        )

    @property
    def inspector(self) -> Any:
        """The predictor under its older name."""
        return self.predictor

    @property
    def postprocess(self) -> PostProcess:
        return self.predictor.postprocess

    @property
    def model_ref(self) -> dict[str, str]:
        return {"name": self.manifest.name, "version": self.version, "engine": self.engine}

    def check_size(self, h: int, w: int, name: str) -> None:
        """Raise ``ValueError`` (WrongImageSize) unless (h, w) is the model's size."""
        self.predictor.check_size(h, w, name)

    def inspect(
        self, items: list[tuple[str, np.ndarray]], *, candidates: bool, overlay: bool
    ) -> list[dict[str, Any]]:
        """Inspect decoded images; blocking, so it is only ever called on a worker thread.

        With ``candidates`` every image is segmented (the hard gate's skip would leave nothing to
        show under the slider) and each class gets its candidate mask. Raises
        :class:`InspectionFailed` naming the image when the model fails on one.
        """
        stream = self.predictor.stream(
            items, keep_raw=candidates, skip_gated=not candidates, workers=0
        )
        out = []
        for (_, image), pred in zip(items, stream, strict=True):
            if pred.error is not None:
                raise InspectionFailed(pred.error) from pred.exception
            d = pred.result.to_dict()
            if candidates:
                self._add_candidates(d, pred.raw, pred.image_id)
            if overlay:
                d["overlay_png"] = base64.b64encode(overlay_png(image, pred.result)).decode()
            out.append(d)
        return out

    def _add_candidates(self, d: dict[str, Any], raw: Any, image_id: str) -> None:
        cand = self._candidates.finish(raw, image_id)
        for cd, oc in zip(d["classes"], cand.classes, strict=True):
            od = oc.to_dict()
            cd["candidate"] = {"area": od["area"], "boxes": od["boxes"], "rle": od["rle"]}


def load_service(
    model_dir: str | Path, engine: str = "auto", **engine_opts: Any
) -> InspectionService:
    """Load the bundle once; raises the bundle's own clear errors (BundleError, ValueError).

    ``engine`` is a name or ``auto`` (see :func:`steelscan.inference.engines.choose_engine`);
    ``engine_opts`` go to the engine (``bf16``, ``int8``, ``device``...), so the service runs the
    same configurations ``steelscan predict`` does.
    """
    model_dir = Path(model_dir)
    if not model_dir.exists():
        raise FileNotFoundError(f"{model_dir}: model bundle directory not found")
    if not model_dir.is_dir():
        raise NotADirectoryError(f"{model_dir}: not a directory (expected a model bundle folder)")
    from steelscan.inference.predictor import Predictor  # imports the engines: after the checks

    predictor = Predictor(model_dir, engine=engine, strict_size=True, **engine_opts)
    return InspectionService(predictor, version=bundle_version(model_dir, predictor.manifest))
