"""Tuning post-processing on validation predictions to maximise the Kaggle score.

The Kaggle score is the mean over classes of each class's mean Dice, and every threshold is per
class, so each class is tuned on its own. For one class and one pixel threshold, each image's
binary mask is labelled ONCE (connected components with their exact pixel areas and overlaps with
the truth); every (class threshold, min component area, min mask area) combination is then a
vectorised reduction over those numbers. Thresholding and areas are exact at full resolution; only
the connected-component labelling runs on a ``factor``-times coarser grid (4x for Severstal), which
is where the time goes. The winner is then re-scored at full resolution through
:func:`steelscan.inference.postprocess.apply` (the code the inspector runs), and a class keeps its
base settings unless the tuned ones score at least as well there, so the result is never worse
than ``base`` on the data it was tuned on.

A detector's boxes are tuned by :func:`tune_boxes`: per-class NMS IoU and the box cap by COCO
mAP@0.5 over boxes down to :data:`~steelscan.inference.boxes.SCORE_FLOOR` (as evaluation scores
them), then the score threshold users see boxes from by the F1 of box matches at IoU 0.5.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from steelscan.data.records import Box
from steelscan.evaluation.detection import (
    box_map,
    f1_at_thresholds,
    floor_detections,
    match_boxes,
)
from steelscan.evaluation.metrics import dice_from_areas
from steelscan.inference.boxes import DetectedBox
from steelscan.inference.postprocess import (
    PostProcessor,
    any_defect_probability,
    apply,
    binarize,
)
from steelscan.manifest import PostProcess

PIXEL_THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7)
CLASS_THRESHOLDS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
# Areas in pixels of a 256x1600 image; scaled by image area for other sizes (the median
# image's when sizes are mixed).
MIN_AREAS = (0, 100, 300, 600, 1000, 2000, 3000, 5000, 8000)
MIN_COMPONENT_AREAS = (0, 50, 150, 300, 600, 1200)
_REFERENCE_PIXELS = 256 * 1600
# The detector's boxes: NMS IoU and box cap by mAP@0.5, then the shown-from score by F1.
BOX_NMS_IOUS = (0.4, 0.5, 0.6, 0.7)
MAX_BOXES = (10, 25, 50, 100)
BOX_SCORE_THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(1, 17))  # 0.05 .. 0.8


def _auto_factor(h: int, w: int) -> int:
    """4x per side for Severstal-sized masks; less for small ones so components survive."""
    if min(h, w) >= 128:
        return 4
    if min(h, w) >= 64:
        return 2
    return 1


def _pool_sum(a: np.ndarray, factor: int) -> np.ndarray:
    """Sum of ``a`` over ``factor`` x ``factor`` cells (zero-padded at the far edges)."""
    h, w = a.shape
    ph, pw = -h % factor, -w % factor
    a = a.astype(np.float32)
    if ph or pw:
        a = np.pad(a, ((0, ph), (0, pw)))
    size = ((w + pw) // factor, (h + ph) // factor)
    return cv2.resize(a, size, interpolation=cv2.INTER_AREA) * np.float32(factor * factor)


def _image_stats(
    binary: np.ndarray, truth: np.ndarray, comp_areas: np.ndarray, factor: int
) -> tuple[np.ndarray, np.ndarray]:
    """Predicted area and overlap with ``truth`` (full-resolution pixel counts) after removing
    components smaller than each of ``comp_areas``.

    With ``factor`` 1 the components are the exact 8-connected ones ``apply`` uses. With a larger
    factor they are found on the ``factor``-times coarser grid of occupied cells (about 16 times
    less work at 4x), while areas and overlaps stay exact pixel counts; only which pixels group
    into one component is approximate.
    """
    if not binary.any():
        z = np.zeros(len(comp_areas), dtype=np.int64)
        return z, z
    hit = binary & (truth != 0)
    if factor == 1:
        n, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
        areas = stats[1:n, cv2.CC_STAT_AREA].astype(np.int64)
        inter = np.bincount(labels[hit != 0], minlength=n)[1:n].astype(np.int64)
    else:
        cnt = _pool_sum(binary, factor)
        both = _pool_sum(hit, factor)
        n, labels, _, _ = cv2.connectedComponentsWithStats(
            (cnt > 0.5).astype(np.uint8), connectivity=8
        )
        flat = labels.ravel()
        areas = np.rint(np.bincount(flat, cnt.ravel(), minlength=n)[1:n]).astype(np.int64)
        inter = np.rint(np.bincount(flat, both.ravel(), minlength=n)[1:n]).astype(np.int64)
    # A component survives threshold c when its area >= c (c <= 1 keeps everything, as in apply).
    keep = areas[None, :] >= np.maximum(comp_areas, 1)[:, None]
    return (keep * areas[None, :]).sum(1), (keep * inter[None, :]).sum(1)


def grid_dice(
    class_probs: np.ndarray,
    mask_probs: Sequence[np.ndarray],
    truths: Sequence[np.ndarray],
    gate_mode: str,
    class_thresholds: Sequence[float],
    pixel_thresholds: Sequence[float],
    min_component_areas: Sequence[float],
    min_areas: Sequence[float],
    factor: int | Sequence[int] = 1,
) -> np.ndarray:
    """Mean Dice of ONE class over images for every combination of the four grids.

    ``class_probs`` (N,), ``mask_probs`` and ``truths`` N arrays of (H, W). Areas are in pixels.
    Returns an array of shape (pixel, class, component, min area) thresholds. With ``factor`` 1
    this is exactly :func:`steelscan.inference.postprocess.apply` (tested against it); a larger
    factor only approximates how pixels group into components (see :func:`_image_stats`).
    ``factor`` is one for all images or one per image (images of mixed sizes).
    """
    cp = np.asarray(class_probs, dtype=np.float32)
    factors = [int(factor)] * len(cp) if isinstance(factor, int) else [int(f) for f in factor]
    comp = np.asarray(min_component_areas, dtype=np.float64)
    mins = np.asarray(min_areas, dtype=np.float64)
    n = len(cp)
    truth_area = np.array([int(np.count_nonzero(t)) for t in truths], dtype=np.int64)
    if gate_mode == "hard":
        gate = np.stack([cp >= np.float32(t) for t in class_thresholds])  # (T, N)
    else:
        gate = np.ones((len(class_thresholds), n), dtype=bool)
    out = np.zeros((len(pixel_thresholds), len(class_thresholds), len(comp), len(mins)))
    for pi, pt in enumerate(pixel_thresholds):
        area = np.zeros((len(comp), n), dtype=np.int64)
        inter = np.zeros((len(comp), n), dtype=np.int64)
        for i in range(n):
            b = binarize(cp[i], np.asarray(mask_probs[i], dtype=np.float32), float(pt), gate_mode)
            area[:, i], inter[:, i] = _image_stats(b, np.asarray(truths[i]), comp, factors[i])
        # kept: (T, C, M, N)
        kept = gate[:, None, None, :] & (area[None, :, None, :] >= mins[None, None, :, None])
        pa = np.where(kept, area[None, :, None, :], 0)
        pi_ = np.where(kept, inter[None, :, None, :], 0)
        total = pa + truth_area
        d = np.where(total == 0, 1.0, 2.0 * pi_ / np.maximum(total, 1))
        out[pi] = d.mean(-1)
    return out


def _processor(pp: PostProcess) -> PostProcessor:
    """The post-processor that applies ``pp`` (tuning only sees hard gates with a classifier)."""
    k = len(pp.pixel_thresholds)
    return PostProcessor(pp, list(range(1, k + 1)), [str(i) for i in range(1, k + 1)])


def defect_probs(raws: Sequence[object]) -> np.ndarray:
    """P(any defect) per image by the post-processor's rule (what the hard gate compares)."""
    return np.array([float(any_defect_probability(r.class_probs)) for r in raws])


def image_dice(
    raws: Sequence[object], truths: Sequence[np.ndarray], pp: PostProcess, *, gate: bool = False
) -> np.ndarray:
    """Exact full-resolution Dice per image and class (N, K) of ``pp`` applied through ``apply``.

    With ``gate``, a hard-mode ``pp.gate_threshold`` also applies as in the inspector: images
    whose defect probability is under it get empty masks (their segmentation is skipped).
    """
    skipped = _processor(pp).skipped(raws) if gate else np.zeros(len(raws), dtype=bool)
    k = len(pp.pixel_thresholds)
    out = np.zeros((len(raws), k))
    for i, (raw, truth) in enumerate(zip(raws, truths, strict=True)):
        t = np.asarray(truth) != 0
        if skipped[i]:
            out[i] = ~t.reshape(k, -1).any(1)
            continue
        _, masks = apply(raw.class_probs, raw.mask_probs, pp)
        for c in range(k):
            out[i, c] = dice_from_areas(
                int(masks[c].sum()), int(t[c].sum()), int(np.logical_and(masks[c], t[c]).sum())
            )
    return out


def class_dice(raws: Sequence[object], truths: Sequence[np.ndarray], pp: PostProcess) -> np.ndarray:
    """Exact full-resolution mean Dice per class (K,) of ``pp`` applied through ``apply``."""
    return image_dice(raws, truths, pp).mean(0)


def tune_gate(
    raws: Sequence[object], truths: Sequence[np.ndarray], pp: PostProcess, tol: float = 1e-9
) -> tuple[float, float]:
    """Pick the hard gate's threshold for tuned per-class settings ``pp``; returns (threshold,
    gated Kaggle score).

    A gate at or under every class threshold changes no mask (a class under its threshold is
    dropped anyway), so that "safe" gate is where the search starts; a higher gate is chosen only
    where it scores better on validation (it cuts false alarms on clean images). Among equally
    good gates the middle one wins (:func:`centre_of_plateau`): with a confident classifier that
    moves the gate off 0, so clean images really skip the segmenter, which is the gate's point.
    """
    per_image = image_dice(raws, truths, pp)  # (N, K), nothing gated
    empty = np.stack([~(np.asarray(t) != 0).reshape(len(t), -1).any(1) for t in truths])
    dp = defect_probs(raws)
    safe = float(min(pp.gate_threshold, *pp.class_thresholds))
    # Gates under the safe one change nothing either, but skip fewer images: never below it.
    cands = sorted(g for g in set(CLASS_THRESHOLDS) | {safe} if g >= safe)
    scores = np.array([np.where((dp < g)[:, None], empty, per_image).mean() for g in cands])
    start = int(np.argmax(scores))
    if scores[start] <= scores[cands.index(safe)] + tol:
        start = cands.index(safe)
    best = centre_of_plateau(scores[None, :, None, None], (0, start, 0, 0), axes=(1,), tol=tol)[1]
    return float(cands[best]), float(scores[best])


def centre_of_plateau(
    table: np.ndarray, best: tuple[int, ...], axes: Sequence[int] = (1, 3, 2), tol: float = 1e-9
) -> tuple[int, ...]:
    """Move ``best`` to the middle of the run of equally good settings along each of ``axes``.

    Validation scores are flat over wide ranges (a confident classifier scores the same at class
    thresholds 0.0 to 0.9), and ``argmax`` would return the first value of such a range: its edge.
    An edge is where a small shift in probabilities (new images, an int8 engine) changes the
    answer, and a class threshold of 0 also keeps the gate from ever skipping a clean image. The
    middle of the run scores the same on validation and is the setting least sensitive to such
    shifts. Axes are visited in order (class threshold, min area, min component area), each with
    the others held where the previous steps left them, so the score never drops.
    """
    idx = list(best)
    peak = table[tuple(idx)]
    for axis in axes:
        line = table[tuple(idx[:axis])][(slice(None),) + tuple(idx[axis + 1 :])]
        lo = hi = idx[axis]
        while lo > 0 and line[lo - 1] >= peak - tol:
            lo -= 1
        while hi < len(line) - 1 and line[hi + 1] >= peak - tol:
            hi += 1
        idx[axis] = (lo + hi) // 2
    return tuple(idx)


def _grid(values: Sequence[float], extra: float, scale: float = 1.0) -> list[float]:
    return sorted({round(v * scale) if scale != 1.0 else v for v in values} | {extra})


def _check_inputs(raws: Sequence[object], truths: Sequence[np.ndarray], base: PostProcess) -> int:
    if len(raws) != len(truths):
        raise ValueError(f"{len(raws)} predictions but {len(truths)} truth masks")
    if not raws:
        raise ValueError("tune_postprocess needs at least one validation image")
    k = len(base.pixel_thresholds)
    for i, (r, t) in enumerate(zip(raws, truths, strict=True)):
        mp = np.asarray(r.mask_probs)
        if mp.ndim != 3 or mp.shape[0] != k or np.asarray(r.class_probs).shape != (k,):
            raise ValueError(
                f"image {i}: expected class_probs ({k},) and mask_probs ({k}, H, W), got "
                f"{np.asarray(r.class_probs).shape} and {mp.shape}"
            )
        if np.asarray(t).shape != mp.shape:
            raise ValueError(f"image {i}: truth shape {np.asarray(t).shape} != {mp.shape}")
    return k


ClassSettings = tuple[float, float, int, int]  # pixel threshold, class threshold, areas


def _class_settings(pp: PostProcess, c: int) -> ClassSettings:
    """Class ``c``'s four tuned settings in ``pp``."""
    return (
        pp.pixel_thresholds[c],
        pp.class_thresholds[c],
        pp.min_component_areas[c],
        pp.min_areas[c],
    )


def _set_class(pp: PostProcess, c: int, settings: ClassSettings) -> None:
    pix, cls, comp, mins = settings
    pp.pixel_thresholds[c] = float(pix)
    pp.class_thresholds[c] = float(cls)
    pp.min_component_areas[c] = int(comp)
    pp.min_areas[c] = int(mins)


def _search_class(
    c: int,
    class_probs: np.ndarray,
    raws: Sequence[object],
    truths: Sequence[np.ndarray],
    base: PostProcess,
    scale: float,
    factors: Sequence[int],
) -> ClassSettings:
    """The best of class ``c``'s grid (pixel x class threshold x component x mask area), at the
    middle of its plateau; the base's settings where nothing scores better."""
    b_pix, b_cls, b_comp, b_mins = _class_settings(base, c)
    pix = _grid(PIXEL_THRESHOLDS, b_pix)
    cls = _grid(CLASS_THRESHOLDS, b_cls) if base.gate_mode == "hard" else [b_cls]
    comp = _grid(MIN_COMPONENT_AREAS, b_comp, scale)
    mins = _grid(MIN_AREAS, b_mins, scale)
    table = grid_dice(
        class_probs,
        [r.mask_probs[c] for r in raws],
        [t[c] for t in truths],
        base.gate_mode,
        cls,
        pix,
        comp,
        mins,
        factor=factors,
    )
    base_idx = (pix.index(b_pix), cls.index(b_cls), comp.index(b_comp), mins.index(b_mins))
    best = np.unravel_index(int(np.argmax(table)), table.shape)
    # A tie keeps the base's pixel threshold, but still moves to the middle of its plateau.
    best = centre_of_plateau(table, best if table[best] > table[base_idx] + 1e-9 else base_idx)
    return pix[best[0]], cls[best[1]], comp[best[2]], mins[best[3]]


def tune_postprocess(
    raws: Sequence[object],
    truths: Sequence[np.ndarray],
    base: PostProcess,
    progress: bool = True,
    factor: int | None = None,
) -> tuple[PostProcess, float, float]:
    """Search per-class thresholds and areas; returns ``(tuned, before_score, after_score)``.

    ``raws`` have ``.class_probs`` (K,) and ``.mask_probs`` (K, H, W) (see
    :class:`steelscan.inference.raw.RawPrediction`); ``truths`` are (K, H, W) masks of the same
    images. ``base.gate_mode`` is kept: class thresholds are only searched in ``"hard"`` mode.
    Scores are Kaggle scores (mean Dice over all image/class pairs) at full resolution.
    """
    k = _check_inputs(raws, truths, base)
    # Images may differ in size: each is labelled at its own coarse factor, and the area grids
    # scale with the median image (not whichever image comes first)
    sizes = [np.asarray(r.mask_probs).shape[1:] for r in raws]
    factors = [factor or _auto_factor(h, w) for h, w in sizes]
    scale = float(np.median([h * w for h, w in sizes])) / _REFERENCE_PIXELS
    before_cls = class_dice(raws, truths, base)

    cps = np.stack([np.asarray(r.class_probs, dtype=np.float32) for r in raws])  # (N, K)
    tuned = base.model_copy(deep=True)
    for c in tqdm(range(k), desc="tuning post-processing", unit="class", disable=not progress):
        _set_class(tuned, c, _search_class(c, cps[:, c], raws, truths, base, scale, factors))

    after_cls = class_dice(raws, truths, tuned)
    # Downsampled search can misjudge a class slightly: keep base where it is better at full size.
    for c in range(k):
        if after_cls[c] < before_cls[c]:
            _set_class(tuned, c, _class_settings(base, c))
            after_cls[c] = before_cls[c]
    # Scores are what inference does: the inspector skips images under the hard gate.
    before = float(image_dice(raws, truths, base, gate=True).mean())
    after = float(after_cls.mean())
    if base.gate_mode == "hard":
        tuned.gate_threshold, after = tune_gate(raws, truths, tuned)
    if after < before:  # the base's own gate did better than anything tuned: keep the base
        tuned, after = base.model_copy(deep=True), before
    if progress:
        print(f"post-processing tuned: Kaggle score {before:.4f} -> {after:.4f}", file=sys.stderr)
    return tuned, before, after


# --------------------------------------------------------------------------- boxes


@dataclass
class BoxTuning:
    """What :func:`tune_boxes` found: the settings and the scores that chose them (mAP@0.5 at
    the score floor before/after, F1 at IoU 0.5 of the shown boxes before/after)."""

    postprocess: PostProcess
    map50_before: float
    map50_after: float
    f1_before: float
    f1_after: float
    gate_tuned: bool = False
    searched: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        p = self.postprocess
        return {
            "box_map50_before": self.map50_before,
            "box_map50_after": self.map50_after,
            "box_f1_before": self.f1_before,
            "box_f1_after": self.f1_after,
            "box_score_threshold": p.box_score_threshold,
            "box_nms_iou": p.box_nms_iou,
            "max_boxes": p.max_boxes,
            "gate_by_box_map": self.gate_tuned,
            "searched": self.searched,
        }


class _BoxData:
    """The validation images for box tuning: raws, truth boxes, sizes and the post-processor
    whose rules (gate included) produce the boxes. Ungated floor boxes are cached per (NMS IoU,
    box cap): the gate only empties whole images and the score threshold only cuts a prefix."""

    def __init__(
        self,
        raws: Sequence[Any],
        truths: Sequence[Sequence[Box]],
        processor: PostProcessor,
    ) -> None:
        if len(raws) != len(truths):
            raise ValueError(f"{len(raws)} predictions but {len(truths)} truth box lists")
        if not raws:
            raise ValueError("tune_boxes needs at least one validation image")
        self.raws, self.truths, self.processor = list(raws), list(truths), processor
        self.sizes = [tuple(np.asarray(r.mask_probs).shape[1:]) for r in raws]
        self._cache: dict[tuple[float, int], list[list[DetectedBox]]] = {}

    def boxes(self, pp: PostProcess) -> list[list[DetectedBox]]:
        """Every image's boxes down to the score floor under ``pp`` (its hard gate applied)."""
        key = (float(pp.box_nms_iou), int(pp.max_boxes))
        if key not in self._cache:
            ungated = self.processor.with_params(pp.model_copy(update={"gate_mode": "none"}))
            self._cache[key] = floor_detections(ungated, self.raws, self.sizes)
        skipped = self.processor.with_params(pp).skipped(self.raws)
        return [[] if s else d for s, d in zip(skipped, self._cache[key], strict=True)]

    def map50(self, pp: PostProcess) -> float:
        names = self.processor.class_names
        return float(box_map(self.truths, self.boxes(pp), self.sizes, names)["map50"])

    def f1(self, pp: PostProcess, thresholds: Sequence[float]) -> np.ndarray:
        return f1_at_thresholds(*match_boxes(self.truths, self.boxes(pp)), thresholds)["f1"]


def _best_on_grid(table: np.ndarray, base_idx: tuple[int, ...], tol: float = 1e-9) -> tuple:
    """The best cell of ``table``; a tie with the base keeps the base, otherwise the middle of
    the best cell's plateau (see :func:`centre_of_plateau`)."""
    best = np.unravel_index(int(np.argmax(table)), table.shape)
    if table[best] <= table[base_idx] + tol:
        return base_idx
    return centre_of_plateau(table, tuple(int(i) for i in best), axes=range(table.ndim), tol=tol)


def _tune_box_gate(data: _BoxData, pp: PostProcess) -> PostProcess:
    """The hard gate's threshold by mAP@0.5, for bundles whose gate guards only the detector
    (no masks to tune it by): skipping clean images removes their false boxes."""
    cands = sorted(set(CLASS_THRESHOLDS) | {pp.gate_threshold})
    scores = np.array([data.map50(pp.model_copy(update={"gate_threshold": g})) for g in cands])
    best = _best_on_grid(scores, (cands.index(pp.gate_threshold),))[0]
    return pp.model_copy(update={"gate_threshold": float(cands[best])})


def tune_boxes(
    raws: Sequence[Any],
    truths: Sequence[Sequence[Box]],
    processor: PostProcessor,
    *,
    tune_gate: bool = False,
    progress: bool = True,
) -> BoxTuning:
    """Tune the detector's box settings of ``processor.params`` on validation predictions.

    ``raws`` carry ``boxes``/``box_scores`` for every image (predicted with ``skip_gated=False``);
    ``truths`` are the images' truth boxes. First (with ``tune_gate``, for a detector-only bundle
    in hard mode) the gate threshold by mAP@0.5, then ``box_nms_iou`` x ``max_boxes`` by mAP@0.5
    of the boxes down to the score floor, then ``box_score_threshold`` by F1 at IoU 0.5: the
    boxes users are shown. Ties keep the base settings; if the result scores a lower mAP@0.5
    than the base on these images, the base is kept.
    """
    data = _BoxData(raws, truths, processor)
    base = processor.params
    hard = base.gate_mode == "hard" and processor.has_classifier
    tuned = _tune_box_gate(data, base) if tune_gate and hard else base.model_copy(deep=True)
    nms = sorted(set(BOX_NMS_IOUS) | {base.box_nms_iou})
    caps = sorted(set(MAX_BOXES) | {base.max_boxes})
    table = np.array(
        [
            [data.map50(tuned.model_copy(update={"box_nms_iou": n, "max_boxes": c})) for c in caps]
            for n in nms
        ]
    )
    i, j = _best_on_grid(table, (nms.index(base.box_nms_iou), caps.index(base.max_boxes)))
    tuned = tuned.model_copy(update={"box_nms_iou": float(nms[i]), "max_boxes": int(caps[j])})
    thr = sorted(set(BOX_SCORE_THRESHOLDS) | {base.box_score_threshold})
    f1 = data.f1(tuned, thr)
    k = _best_on_grid(f1, (thr.index(base.box_score_threshold),))[0]
    tuned = tuned.model_copy(update={"box_score_threshold": float(thr[k])}, deep=True)
    before, after = data.map50(base), data.map50(tuned)
    f1_before = float(data.f1(base, [base.box_score_threshold])[0])
    f1_after = float(f1[k])
    if after < before - 1e-12:  # never worse than the base (each step keeps it on a tie)
        tuned, after, f1_after = base.model_copy(deep=True), before, f1_before
    if progress:
        print(
            f"boxes tuned: mAP@0.5 {before:.4f} -> {after:.4f}, F1@0.5 {f1_before:.4f} -> "
            f"{f1_after:.4f} (score >= {tuned.box_score_threshold:.2f})",
            file=sys.stderr,
        )
    searched = {"box_nms_iou": nms, "max_boxes": caps, "box_score_threshold": thr}
    return BoxTuning(tuned, before, after, f1_before, f1_after, tune_gate and hard, searched)
