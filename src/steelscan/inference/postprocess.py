"""From probabilities to a verdict: the ONE owner of every post-processing rule.

:class:`PostProcessor` holds a tuned :class:`~steelscan.manifest.PostProcess` and applies it. The
predictor, the tuner, evaluation and the service all go through it, so a tuned setting means the
same thing everywhere. The rules, per image:

0. "any defect" (:func:`any_defect_probability`): the MAX of the classifier's per-class
   probabilities (a one-output classic gate: its probability). Without a classifier, the most
   confident mask pixel stands in.
1. the hard gate: with ``gate_mode == "hard"`` an image whose any-defect probability is under
   ``gate_threshold`` is not segmented at all (:meth:`PostProcessor.skips`) and has no defect.
2. per class ``k`` (:meth:`PostProcessor.masks`):
   ``"hard"``: the class can only be present if ``class_probs[k] >= class_thresholds[k]``;
   ``"soft"``: mask probabilities are multiplied by ``class_probs[k]`` (no class threshold);
   ``"none"``: the classifier is ignored.
   Then ``prob >= pixel_thresholds[k]``; 8-connected components smaller than
   ``min_component_areas[k]`` pixels are removed; the whole mask is dropped if what is left is
   smaller than ``min_areas[k]`` pixels.
3. boxes: one ``(x1, y1, x2, y2)`` box per 8-connected component of a present mask.

``present[k]`` is True exactly when the final mask is non-empty, so presence and masks never
disagree (the Kaggle metric only sees masks).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from steelscan.inference.boxes import DetectedBox, select_boxes
from steelscan.inference.raw import RawPrediction
from steelscan.inference.result import ClassResult, InspectionResult
from steelscan.manifest import ModelManifest, PostProcess

GATE_MODES = ("hard", "soft", "none")


def any_defect_probability(class_probs: Any) -> Any:
    """P(image has any defect) from classifier probabilities ``(..., K) -> (...)``.

    The MAX rather than the noisy-or ``1 - prod(1 - p)``: per-class probabilities of a
    multi-label head are not independent and noisy-or inflates with K (four classes at 0.2 give
    0.59). With max, an image passes the gate at threshold t exactly when some class would pass a
    class threshold of t, so gate and class thresholds stay comparable when tuned. Works on NumPy
    arrays and torch tensors alike (training logs it on tensors).
    """
    if hasattr(class_probs, "amax"):  # a torch tensor
        return class_probs.amax(dim=-1)
    p = np.asarray(class_probs, dtype=np.float32)
    if p.shape[-1] == 0:
        return np.zeros(p.shape[:-1], dtype=np.float32)
    return p.max(axis=-1)


def default_postprocess(num_classes: int, gate_mode: str = "hard") -> PostProcess:
    """The untuned settings every tuning run starts from (so re-tuning is a pure function of the
    model and the data, whatever was tuned before)."""
    k = int(num_classes)
    return PostProcess(
        gate_mode=gate_mode,  # type: ignore[arg-type]
        gate_threshold=0.5,
        class_thresholds=[0.5] * k,
        pixel_thresholds=[0.5] * k,
        min_areas=[0] * k,
        min_component_areas=[0] * k,
    )


def remove_small_components(mask: np.ndarray, min_area: int) -> np.ndarray:
    """Remove 8-connected components with fewer than ``min_area`` pixels; returns a uint8 mask."""
    mask = (np.asarray(mask) != 0).astype(np.uint8)
    if min_area <= 1 or not mask.any():
        return mask
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    keep = stats[:, cv2.CC_STAT_AREA] >= min_area
    keep[0] = False  # label 0 is the background
    return keep[labels].astype(np.uint8)


def boxes_from_mask(mask: np.ndarray) -> list[tuple[int, int, int, int]]:
    """One ``(x1, y1, x2, y2)`` box per 8-connected component, ``x2``/``y2`` exclusive."""
    mask = (np.asarray(mask) != 0).astype(np.uint8)
    if not mask.any():
        return []
    n, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    return [(int(x), int(y), int(x + w), int(y + h)) for x, y, w, h, _a in stats[1:n]]


def component_boxes(mask: np.ndarray, probs: np.ndarray) -> list[tuple[int, int, int, int, float]]:
    """Boxes of a mask's components, each scored by its mean probability (for box mAP)."""
    mask = (np.asarray(mask) != 0).astype(np.uint8)
    if not mask.any():
        return []
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    out = []
    for j in range(1, n):
        x, y, w, h, _area = stats[j]
        out.append((int(x), int(y), int(x + w), int(y + h), float(probs[labels == j].mean())))
    return out


def binarize(
    class_prob: float, mask_prob: np.ndarray, pixel_threshold: float, gate_mode: str
) -> np.ndarray:
    """The pixel step of rule 2 for one class (soft gating included); shared with the tuner's
    vectorised search so both threshold the same way."""
    if gate_mode == "soft":
        return (mask_prob * np.float32(class_prob) >= pixel_threshold).astype(np.uint8)
    return (mask_prob >= pixel_threshold).astype(np.uint8)


def _check(class_probs: np.ndarray, mask_probs: np.ndarray, pp: PostProcess) -> int:
    if mask_probs.ndim != 3:
        raise ValueError(f"mask_probs must be (K, H, W), got shape {mask_probs.shape}")
    k = mask_probs.shape[0]
    if class_probs.shape != (k,):
        raise ValueError(f"class_probs must have shape ({k},), got {class_probs.shape}")
    for name in ("class_thresholds", "pixel_thresholds", "min_areas", "min_component_areas"):
        n = len(getattr(pp, name))
        if n != k:
            raise ValueError(f"PostProcess.{name} has {n} entries for {k} classes")
    return k


def apply(
    class_probs: np.ndarray, mask_probs: np.ndarray, pp: PostProcess
) -> tuple[np.ndarray, np.ndarray]:
    """Rule 2 for every class: ``present`` (K,) bool and ``masks`` (K, H, W) uint8."""
    class_probs = np.asarray(class_probs, dtype=np.float32).reshape(-1)
    mask_probs = np.asarray(mask_probs, dtype=np.float32)
    k = _check(class_probs, mask_probs, pp)
    masks = np.zeros(mask_probs.shape, dtype=np.uint8)
    for i in range(k):
        if pp.gate_mode == "hard" and class_probs[i] < pp.class_thresholds[i]:
            continue
        m = binarize(class_probs[i], mask_probs[i], pp.pixel_thresholds[i], pp.gate_mode)
        m = remove_small_components(m, pp.min_component_areas[i])
        if int(m.sum()) < pp.min_areas[i]:
            continue
        masks[i] = m
    present = masks.reshape(k, -1).any(axis=1)
    return present, masks


class PostProcessor:
    """Applies one tuned :class:`PostProcess` to a model's raw output.

    ``has_classifier`` False (a segmenter-only bundle) turns the gate off and lets the strongest
    pixel stand in for presence; ``classic_gate`` marks a one-output defect/no-defect classifier,
    whose probability is repeated over the K classes in the raw output and says nothing per class.
    """

    def __init__(
        self,
        params: PostProcess,
        class_ids: Sequence[int],
        class_names: Sequence[str],
        *,
        has_classifier: bool = True,
        classic_gate: bool = False,
        has_segmenter: bool = True,
        has_detector: bool = False,
    ) -> None:
        if params.gate_mode not in GATE_MODES:
            raise ValueError(f"gate_mode must be hard, soft or none, got {params.gate_mode!r}")
        if not has_classifier and params.gate_mode != "none":
            params = params.model_copy(update={"gate_mode": "none"})
        self.params = params
        self.class_ids = [int(c) for c in class_ids]
        self.class_names = list(class_names)
        self.has_classifier = has_classifier
        self.classic_gate = classic_gate
        self.has_segmenter = has_segmenter
        self.has_detector = has_detector

    @classmethod
    def for_manifest(
        cls,
        manifest: ModelManifest,
        params: PostProcess | None = None,
        gate_mode: str | None = None,
    ) -> PostProcessor:
        """The post-processor of a bundle: its tuned settings unless ``params`` replaces them."""
        pp = params or manifest.postprocess
        if gate_mode is not None:
            if gate_mode not in GATE_MODES:
                raise ValueError(f"gate_mode must be hard, soft or none, got {gate_mode!r}")
            pp = pp.model_copy(update={"gate_mode": gate_mode})
        spec = manifest.classifier
        return cls(
            pp,
            manifest.class_ids,
            manifest.classes,
            has_classifier=spec is not None,
            classic_gate=bool(spec is not None and spec.num_outputs == 1),
            has_segmenter=manifest.segmenter is not None,
            has_detector=manifest.detector is not None,
        )

    def with_params(self, params: PostProcess) -> PostProcessor:
        """The same model's post-processor with other settings (tuning, the web page's slider)."""
        return PostProcessor(
            params,
            self.class_ids,
            self.class_names,
            has_classifier=self.has_classifier,
            classic_gate=self.classic_gate,
            has_segmenter=self.has_segmenter,
            has_detector=self.has_detector,
        )

    @property
    def num_classes(self) -> int:
        return len(self.class_ids)

    # -- the rules ------------------------------------------------------------------------------
    def defect_probability(
        self, class_probs: np.ndarray, mask_probs: np.ndarray | None = None
    ) -> float:
        """Rule 0 for one image (without a classifier: the strongest pixel, or NaN if unknown)."""
        if self.has_classifier:
            return float(any_defect_probability(np.asarray(class_probs, dtype=np.float32)))
        if mask_probs is None:
            return float("nan")
        mp = np.asarray(mask_probs)
        return float(mp.max()) if mp.size else 0.0

    def skips(self, defect_probability: float) -> bool:
        """Rule 1: True when the hard gate says "do not segment this image"."""
        return (
            self.params.gate_mode == "hard"
            and self.has_classifier
            and defect_probability < self.params.gate_threshold
        )

    def skipped(self, raws: Sequence[RawPrediction]) -> np.ndarray:
        """Rule 1 over many images (N,) bool: which ones the hard gate skips."""
        return np.array([self.skips(self.defect_probability(r.class_probs)) for r in raws], bool)

    def masks(self, raw: RawPrediction) -> tuple[np.ndarray, np.ndarray]:
        """Rules 1 and 2: ``present`` (K,) bool and ``masks`` (K, H, W) uint8 for one image."""
        mask_probs = np.asarray(raw.mask_probs, dtype=np.float32)
        if self.skips(self.defect_probability(raw.class_probs, mask_probs)):
            k = mask_probs.shape[0]
            return np.zeros(k, dtype=bool), np.zeros(mask_probs.shape, dtype=np.uint8)
        present, masks = apply(raw.class_probs, mask_probs, self.params)
        return np.asarray(present, dtype=bool), np.asarray(masks, dtype=np.uint8)

    def detections(
        self, raw: RawPrediction, height: int, width: int, score_threshold: float | None = None
    ) -> list[DetectedBox]:
        """Rule 3: the detector's boxes of one image, best first (none when the hard gate skips
        it). ``score_threshold`` defaults to the tuned ``box_score_threshold``; evaluation asks
        for every box down to :data:`~steelscan.inference.boxes.SCORE_FLOOR` (mAP needs them)."""
        if raw.boxes is None or raw.box_scores is None:
            return []
        if self.skips(self.defect_probability(raw.class_probs)):
            return []
        p = self.params
        return select_boxes(
            raw.boxes,
            raw.box_scores,
            height,
            width,
            score_threshold=p.box_score_threshold if score_threshold is None else score_threshold,
            nms_iou=p.box_nms_iou,
            max_boxes=p.max_boxes,
        )

    def finish(self, raw: RawPrediction, image_id: str) -> InspectionResult:
        """Every rule: a :class:`RawPrediction` becomes the :class:`InspectionResult` users see."""
        class_probs = np.asarray(raw.class_probs, dtype=np.float32)
        mask_probs = np.asarray(raw.mask_probs, dtype=np.float32)
        k, h, w = mask_probs.shape
        mask_max = mask_probs.reshape(k, -1).max(axis=1) if h * w else np.zeros(k, np.float32)
        present, masks = self.masks(raw)
        detections = self.detections(raw, h, w) if self.has_detector else None
        # A per-class probability only exists with a multi-label classifier; otherwise the most
        # confident pixel says how sure the segmenter is about that class.
        per_class = class_probs if self.has_classifier and not self.classic_gate else mask_max
        if detections is not None and not self.has_segmenter:
            # boxes only: a class is present when the detector keeps a box of it
            present = np.zeros(k, dtype=bool)
            box_max = np.zeros(k, np.float32)
            for b in detections:
                present[b.class_index] = True
                box_max[b.class_index] = max(box_max[b.class_index], b.score)
            if not self.has_classifier or self.classic_gate:
                per_class = box_max
        classes = [
            ClassResult(
                index=i,
                class_id=self.class_ids[i],
                name=self.class_names[i],
                probability=float(per_class[i]),
                present=bool(present[i]),
                mask=masks[i],
                area=int(masks[i].sum(dtype=np.int64)),
                boxes=boxes_from_mask(masks[i]) if present[i] else [],
            )
            for i in range(k)
        ]
        return InspectionResult(
            image_id=str(image_id),
            height=h,
            width=w,
            defect_probability=self.defect_probability(class_probs, mask_probs),
            classes=classes,
            detections=detections,
        )
