"""Metrics: the Kaggle Dice score (from masks or straight from RLE), gate classification metrics and
box mAP@0.5.

The Severstal score is the mean Dice over EVERY (image, class) pair, where an empty prediction on an
empty truth scores 1 and any predicted pixel on an empty truth scores 0. Because most pairs are
empty, the "predict nothing" baseline is high (about 0.85 on Kaggle's data), so every report here
also gives that baseline, Dice on the non-empty pairs only, and image-level TP/FP/TN/FN counts.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from steelscan.data.kaggle_csv import SEVERSTAL_CLASS_IDS, load_image_ids, load_mask_runs
from steelscan.data.records import DataError, DataProblem

# --------------------------------------------------------------------------- Dice


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two binary masks (nonzero = set); both empty gives 1.0 as in the Kaggle metric."""
    p = np.asarray(pred) != 0
    t = np.asarray(truth) != 0
    if p.shape != t.shape:
        raise ValueError(f"dice: shapes differ, prediction {p.shape} vs truth {t.shape}")
    return dice_from_areas(int(p.sum()), int(t.sum()), int(np.logical_and(p, t).sum()))


def dice_from_areas(pred_area: int, truth_area: int, intersection: int) -> float:
    """Dice from pixel counts; both empty gives 1.0."""
    total = pred_area + truth_area
    return 1.0 if total == 0 else 2.0 * intersection / total


def runs_intersection(a: np.ndarray, b: np.ndarray) -> int:
    """Pixels two RLE run lists ((N, 2) start, length arrays, as from ``rle.parse``) share.

    Each list's runs are sorted and disjoint, so sweeping over the merged run boundaries with a
    +1/-1 counter finds the stretches where both cover a pixel (counter == 2). Vectorised: no
    Python loop over runs and no mask is built.
    """
    if len(a) == 0 or len(b) == 0:
        return 0
    pos = np.concatenate([a[:, 0], a[:, 0] + a[:, 1], b[:, 0], b[:, 0] + b[:, 1]])
    na, nb = len(a), len(b)
    delta = np.concatenate(
        [np.ones(na, np.int8), -np.ones(na, np.int8), np.ones(nb, np.int8), -np.ones(nb, np.int8)]
    )
    order = np.argsort(pos, kind="stable")
    pos, cover = pos[order], np.cumsum(delta[order])
    # Ties at one position only make zero-length segments, so their order does not matter.
    seg = np.diff(pos)
    return int(seg[cover[:-1] == 2].sum())


# --------------------------------------------------------------------------- Kaggle score


@dataclass
class ScoreReport:
    """Everything about a segmentation score; ``to_dict()`` is what ``--json`` prints."""

    score: float  # Kaggle: mean Dice over every (image, class) pair
    num_images: int
    class_ids: list[int]
    class_names: list[str]
    dice_per_class: list[float]  # mean over all images
    dice_nonempty_per_class: list[float | None]  # mean over images whose truth is non-empty
    tp: list[int]  # image level: prediction non-empty and truth non-empty
    fp: list[int]
    tn: list[int]
    fn: list[int]
    empty_baseline: float  # the score of predicting nothing at all
    dice_nonempty: float | None = None  # over all non-empty-truth pairs, all classes together
    sources: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        per_class = []
        for i, cid in enumerate(self.class_ids):
            per_class.append(
                {
                    "class_id": cid,
                    "name": self.class_names[i],
                    "dice": self.dice_per_class[i],
                    "dice_nonempty": self.dice_nonempty_per_class[i],
                    "tp": self.tp[i],
                    "fp": self.fp[i],
                    "tn": self.tn[i],
                    "fn": self.fn[i],
                    "truth_images": self.tp[i] + self.fn[i],
                    "pred_images": self.tp[i] + self.fp[i],
                }
            )
        return {
            "score": self.score,
            "empty_baseline": self.empty_baseline,
            "dice_nonempty": self.dice_nonempty,
            "num_images": self.num_images,
            "num_pairs": self.num_images * len(self.class_ids),
            "classes": per_class,
            **({"sources": dict(self.sources)} if self.sources else {}),
        }


class DiceAccumulator:
    """Streaming Kaggle score: add one (image, class) pair at a time, by areas or by masks.

    Keeps only a handful of numbers per pair, so evaluation never has to hold all masks.
    """

    def __init__(self, class_ids: Sequence[int], class_names: Sequence[str] | None = None):
        self.class_ids = [int(c) for c in class_ids]
        k = len(self.class_ids)
        self.class_names = (
            list(class_names) if class_names is not None else [f"class {c}" for c in class_ids]
        )
        if len(self.class_names) != k:
            raise ValueError(f"{len(self.class_names)} class names for {k} classes")
        self._dice_sum = np.zeros(k)
        self._dice_ne_sum = np.zeros(k)
        self._counts = np.zeros((k, 4), dtype=np.int64)  # tp, fp, tn, fn
        self._images: set[str] | None = None
        self._n = np.zeros(k, dtype=np.int64)

    def add_areas(self, class_index: int, pred_area: int, truth_area: int, inter: int) -> float:
        """Add one pair from its pixel counts; returns its Dice."""
        d = dice_from_areas(pred_area, truth_area, inter)
        self._dice_sum[class_index] += d
        self._n[class_index] += 1
        p, t = pred_area > 0, truth_area > 0
        col = 0 if (p and t) else 1 if p else 2 if not t else 3
        self._counts[class_index, col] += 1
        if t:
            self._dice_ne_sum[class_index] += d
        return d

    def add_masks(self, pred: np.ndarray, truth: np.ndarray) -> list[float]:
        """Add one image: ``pred`` and ``truth`` are (K, H, W) masks (nonzero = set)."""
        pred = np.asarray(pred) != 0
        truth = np.asarray(truth) != 0
        k = len(self.class_ids)
        if pred.shape != truth.shape or pred.ndim != 3 or pred.shape[0] != k:
            raise ValueError(
                f"expected prediction and truth of shape ({k}, H, W), got {pred.shape} and "
                f"{truth.shape}"
            )
        pa = pred.reshape(k, -1).sum(1)
        ta = truth.reshape(k, -1).sum(1)
        inter = np.logical_and(pred, truth).reshape(k, -1).sum(1)
        return [self.add_areas(i, int(pa[i]), int(ta[i]), int(inter[i])) for i in range(k)]

    def report(self) -> ScoreReport:
        n = int(self._n.max()) if len(self._n) else 0
        if len(set(self._n.tolist())) > 1:
            raise ValueError(f"classes received different numbers of images: {self._n.tolist()}")
        k = len(self.class_ids)
        tp, fp, tn, fn = (self._counts[:, j].tolist() for j in range(4))
        nonempty = self._counts[:, 0] + self._counts[:, 3]
        pairs = n * k
        return ScoreReport(
            score=float(self._dice_sum.sum() / pairs) if pairs else float("nan"),
            num_images=n,
            class_ids=list(self.class_ids),
            class_names=list(self.class_names),
            dice_per_class=[float(s / n) if n else float("nan") for s in self._dice_sum],
            dice_nonempty_per_class=[
                float(self._dice_ne_sum[i] / nonempty[i]) if nonempty[i] else None for i in range(k)
            ],
            tp=tp,
            fp=fp,
            tn=tn,
            fn=fn,
            empty_baseline=float((self._counts[:, 1].sum() + self._counts[:, 2].sum()) / pairs)
            if pairs
            else float("nan"),
            dice_nonempty=float(self._dice_ne_sum.sum() / nonempty.sum())
            if nonempty.sum()
            else None,
        )


def kaggle_score(preds: Iterable[np.ndarray], truths: Iterable[np.ndarray]) -> float:
    """Mean Dice over every (image, class) pair of two streams of (K, H, W) masks."""
    acc: DiceAccumulator | None = None
    for p, t in zip(preds, truths, strict=True):
        if acc is None:
            acc = DiceAccumulator(range(1, np.asarray(t).shape[0] + 1))
        acc.add_masks(p, t)
    if acc is None:
        raise ValueError("kaggle_score: no images given")
    return acc.report().score


def _load_both(
    truth_csv: Path, pred_csv: Path, shape: tuple[int, int], class_ids: Sequence[int]
) -> tuple[dict[tuple[str, int], np.ndarray], dict[tuple[str, int], np.ndarray]]:
    """Both CSVs' runs; the problems of both files are reported together, not one file a run."""
    loaded, problems = [], []
    for path in (truth_csv, pred_csv):
        try:
            loaded.append(load_mask_runs(path, shape, class_ids))
        except DataError as exc:
            problems += exc.problems
    if problems:
        raise DataError(problems)
    return loaded[0], loaded[1]


def score_csvs(
    truth_csv: str | Path,
    pred_csv: str | Path,
    images: str | Path | Sequence[str] | None = None,
    shape: tuple[int, int] = (256, 1600),
    class_ids: Sequence[int] = SEVERSTAL_CLASS_IDS,
    class_names: Sequence[str] | None = None,
) -> ScoreReport:
    """Kaggle score of a prediction CSV against a truth CSV, computed from the RLE runs directly.

    Both CSVs are read by :func:`steelscan.data.kaggle_csv.load_mask_runs` (new or old layout, any
    header case and column order). The scored images (the universe) are ``images`` when given (a
    list, or any file :func:`~steelscan.data.kaggle_csv.load_image_ids` reads: ``images.csv``,
    ``defect_and_no_defect.csv``, a mask CSV or one id per line), else the image ids that appear
    in the truth CSV. Images of the universe that have no rows in a CSV are empty for every
    class. Without ``images``, defect-free images that have no rows in the truth
    CSV are NOT scored at all (the Severstal train.csv lists only defects): pass the list of all
    images to score them. A prediction for an image outside the universe is an error naming the
    ids, as are bad RLE, unknown classes and duplicate (image, class) rows.
    """
    truth_csv, pred_csv = Path(truth_csv), Path(pred_csv)
    truth, pred = _load_both(truth_csv, pred_csv, shape, class_ids)
    if images is None:
        universe = list(dict.fromkeys(img for img, _ in truth))
        source = f"image ids in {truth_csv}"
    elif isinstance(images, (str, Path)):
        universe = load_image_ids(Path(images))
        source = str(images)
    else:
        universe = list(dict.fromkeys(images))
        source = "given list"
    # Truth rows outside the universe are ignored (scoring a validation list against the full
    # train.csv is normal); predictions outside it mean the wrong file or the wrong list.
    stray = sorted({img for img, _ in pred} - set(universe))
    if stray:
        shown = ", ".join(stray[:10]) + (f" and {len(stray) - 10} more" if len(stray) > 10 else "")
        raise DataError(
            [
                DataProblem(
                    str(pred_csv),
                    f"{len(stray)} predicted image(s) are not among the scored images ({source}): "
                    f"{shown}",
                )
            ]
        )
    if not universe:
        raise DataError([DataProblem(str(truth_csv), "no images to score")])
    acc = DiceAccumulator(class_ids, class_names)
    empty = np.zeros((0, 2), dtype=np.int64)
    for img in universe:
        for ci, cid in enumerate(acc.class_ids):
            t = truth.get((img, cid), empty)
            p = pred.get((img, cid), empty)
            acc.add_areas(ci, int(p[:, 1].sum()), int(t[:, 1].sum()), runs_intersection(p, t))
    report = acc.report()
    report.sources = {"truth": str(truth_csv), "prediction": str(pred_csv), "images": source}
    return report


# --------------------------------------------------------------------------- classification


def _roc_auc(y_true: np.ndarray, y_prob: np.ndarray) -> float | None:
    from sklearn.metrics import roc_auc_score

    if len(np.unique(y_true)) < 2:
        return None  # undefined with a single class present
    return float(roc_auc_score(y_true, y_prob))


def classification_summary(
    y_true: np.ndarray,
    y_prob: np.ndarray,
    threshold: float | Sequence[float] = 0.5,
    class_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Accuracy, ROC-AUC, confusion matrix and sklearn's classification report.

    ``y_true``/``y_prob`` of shape (N,) are a binary problem (``class_names`` defaults to
    ``("no defect", "defect")``); of shape (N, K) a multi-label one (one name and optionally one
    threshold per class; accuracy is then per class and exact-match).
    """
    from sklearn.metrics import (
        accuracy_score,
        classification_report,
        confusion_matrix,
        multilabel_confusion_matrix,
    )

    y_true = np.asarray(y_true).astype(int)
    y_prob = np.asarray(y_prob, dtype=float)
    if y_true.shape != y_prob.shape:
        raise ValueError(f"y_true {y_true.shape} and y_prob {y_prob.shape} differ in shape")
    if y_true.ndim == 1:
        names = list(class_names) if class_names is not None else ["no defect", "defect"]
        thr = float(np.asarray(threshold).reshape(-1)[0])
        y_pred = (y_prob >= thr).astype(int)
        return {
            "kind": "binary",
            "threshold": thr,
            "n": int(len(y_true)),
            "accuracy": float(accuracy_score(y_true, y_pred)),
            "roc_auc": _roc_auc(y_true, y_prob),
            "labels": names,
            "confusion_matrix": confusion_matrix(y_true, y_pred, labels=[0, 1]).tolist(),
            "report": classification_report(
                y_true, y_pred, labels=[0, 1], target_names=names, output_dict=True, zero_division=0
            ),
        }
    k = y_true.shape[1]
    names = list(class_names) if class_names is not None else [f"class {i + 1}" for i in range(k)]
    thr = np.broadcast_to(np.asarray(threshold, dtype=float), (k,))
    y_pred = (y_prob >= thr[None, :]).astype(int)
    return {
        "kind": "multilabel",
        "threshold": thr.tolist(),
        "n": int(len(y_true)),
        "exact_match_accuracy": float(accuracy_score(y_true, y_pred)),
        "accuracy_per_class": [float((y_true[:, i] == y_pred[:, i]).mean()) for i in range(k)],
        "roc_auc_per_class": [_roc_auc(y_true[:, i], y_prob[:, i]) for i in range(k)],
        "labels": names,
        "confusion_matrices": multilabel_confusion_matrix(y_true, y_pred).tolist(),
        "report": classification_report(
            y_true, y_pred, target_names=names, output_dict=True, zero_division=0
        ),
    }


def threshold_for_recall(y_true: np.ndarray, y_prob: np.ndarray, recall: float = 0.99) -> float:
    """The largest threshold ``t`` such that predicting ``y_prob >= t`` keeps recall >= ``recall``.

    This is the gate threshold that lets at most ``1 - recall`` of defective images through.
    """
    y_true = np.asarray(y_true).astype(bool).reshape(-1)
    y_prob = np.asarray(y_prob, dtype=float).reshape(-1)
    if not 0 < recall <= 1:
        raise ValueError(f"recall must be in (0, 1], got {recall}")
    pos = np.sort(y_prob[y_true])[::-1]
    if len(pos) == 0:
        raise ValueError("threshold_for_recall: there are no positive examples")
    need = max(1, math.ceil(recall * len(pos) - 1e-9))
    return float(pos[need - 1])


# --------------------------------------------------------------------------- boxes


def _box_tuple(b: Any, with_score: bool) -> tuple:
    """Accept ``(class, x1, y1, x2, y2[, score])`` tuples, dicts or objects with those fields."""
    if isinstance(b, dict):
        vals = [b["class_index"], b["x1"], b["y1"], b["x2"], b["y2"]]
        if with_score:
            vals.append(b["score"])
        return tuple(vals)
    if hasattr(b, "class_index"):
        vals = [b.class_index, b.x1, b.y1, b.x2, b.y2]
        if with_score:
            vals.append(b.score)
        return tuple(vals)
    t = tuple(b)
    need = 6 if with_score else 5
    if len(t) < need:
        fields = "class_index, x1, y1, x2, y2" + (", score" if with_score else "")
        raise ValueError(f"box {b!r}: expected ({fields})")
    return t


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one ``(x1, y1, x2, y2)`` box (exclusive ends) with an (M, 4) array of boxes."""
    ix = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    iy = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = ix * iy
    a = (box[2] - box[0]) * (box[3] - box[1])
    b = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = a + b - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def _voc_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """Area under the precision envelope (VOC 2010+ all-point interpolation)."""
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    idx = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(((mrec[idx + 1] - mrec[idx]) * mpre[idx + 1]).sum())


def box_map50(
    pred_boxes_per_image: Sequence[Sequence[Any]],
    gt_boxes_per_image: Sequence[Sequence[Any]],
    num_classes: int,
    iou_threshold: float = 0.5,
) -> dict[str, Any]:
    """VOC-style mean average precision at IoU 0.5.

    Predictions per image are ``(class_index, x1, y1, x2, y2, score)`` (tuples, dicts or objects);
    ground truth ``(class_index, x1, y1, x2, y2)`` or :class:`~steelscan.data.records.Box`.
    Coordinates have exclusive ends. Per class, detections are matched greedily by descending score
    to the unmatched ground-truth box of highest IoU (a match needs IoU >= ``iou_threshold``); a
    second detection of the same box is a false positive. AP is all-point interpolated; mAP is the
    mean over classes that have ground truth. Returns ``{"map50", "ap_per_class", "num_gt"}``
    (``ap_per_class`` entries are None for classes without ground truth).
    """
    if len(pred_boxes_per_image) != len(gt_boxes_per_image):
        raise ValueError(
            f"{len(pred_boxes_per_image)} prediction lists for {len(gt_boxes_per_image)} images"
        )
    aps: list[float | None] = []
    num_gt: list[int] = []
    for c in range(num_classes):
        gts: list[np.ndarray] = []
        dets: list[tuple[float, int, np.ndarray]] = []
        for i, (preds, gtl) in enumerate(
            zip(pred_boxes_per_image, gt_boxes_per_image, strict=True)
        ):
            g = [_box_tuple(b, False)[1:5] for b in gtl if int(_box_tuple(b, False)[0]) == c]
            gts.append(np.asarray(g, dtype=float).reshape(-1, 4))
            for b in preds:
                t = _box_tuple(b, True)
                if int(t[0]) == c:
                    dets.append((float(t[5]), i, np.asarray(t[1:5], dtype=float)))
        n_gt = int(sum(len(g) for g in gts))
        num_gt.append(n_gt)
        if n_gt == 0:
            aps.append(None)
            continue
        if not dets:
            aps.append(0.0)
            continue
        dets.sort(key=lambda d: -d[0])
        used = [np.zeros(len(g), dtype=bool) for g in gts]
        tp = np.zeros(len(dets))
        for j, (_, i, box) in enumerate(dets):
            g = gts[i]
            if len(g) == 0:
                continue
            ious = box_iou(box, g)
            ious[used[i]] = -1.0
            best = int(np.argmax(ious))
            if ious[best] >= iou_threshold:
                used[i][best] = True
                tp[j] = 1
        ctp = np.cumsum(tp)
        recall = ctp / n_gt
        precision = ctp / np.arange(1, len(dets) + 1)
        aps.append(_voc_ap(recall, precision))
    present = [a for a in aps if a is not None]
    return {
        "map50": float(np.mean(present)) if present else None,
        "ap_per_class": aps,
        "num_gt": num_gt,
        "iou_threshold": iou_threshold,
    }
