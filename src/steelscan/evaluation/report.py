"""The evaluation report: metrics.json, plots and one Markdown page, from metric dicts.

``compute_gate_metrics`` and ``compute_seg_metrics`` turn predictions into plain dicts (so the
``evaluate`` command only feeds predictions in); ``write_evaluation_report`` renders whichever of
the gate / segmentation / box sections it is given: ``detection`` is a detector's COCO box mAP
(:func:`steelscan.evaluation.detection.box_map`), ``boxes`` the component-based box mAP of a
segmenter's masks (:func:`steelscan.evaluation.metrics.box_map50`). Every file is written to a
temporary name and renamed, so a failed run never leaves a half-written report.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from steelscan.evaluation.metrics import (
    DiceAccumulator,
    classification_summary,
    threshold_for_recall,
)

RECALL_TARGET = 0.99


# --------------------------------------------------------------------------- computing


def compute_gate_metrics(
    y_true_any: np.ndarray,
    p_any: np.ndarray,
    y_true_cls: np.ndarray | None,
    p_cls: np.ndarray | None,
    class_names: Sequence[str],
    threshold: float = 0.5,
    class_thresholds: Sequence[float] | float = 0.5,
    recall: float = RECALL_TARGET,
) -> dict[str, Any]:
    """Gate metrics: defect/no-defect at ``threshold`` and at the threshold keeping ``recall``.

    ``y_true_any``/``p_any`` (N,) are "image has any defect" labels and probabilities;
    ``y_true_cls``/``p_cls`` (N, K) per-class presence (None for a one-output gate).
    """
    from sklearn.metrics import roc_curve

    y = np.asarray(y_true_any).astype(int).reshape(-1)
    p = np.asarray(p_any, dtype=float).reshape(-1)
    out: dict[str, Any] = {
        "threshold": float(threshold),
        "defect": classification_summary(y, p, threshold, ["no defect", "defect"]),
        "recall_target": recall,
        "recall_threshold": None,
        "at_recall_threshold": None,
        "roc": None,
        "per_class": None,
    }
    if len(np.unique(y)) == 2:
        fpr, tpr, _ = roc_curve(y, p)
        out["roc"] = {"fpr": fpr.tolist(), "tpr": tpr.tolist()}
    if y.any():
        t = threshold_for_recall(y, p, recall)
        pred = p >= t
        pos, neg = y == 1, y == 0
        out["recall_threshold"] = t
        out["at_recall_threshold"] = {
            "recall": float(pred[pos].mean()),
            "false_positive_rate": float(pred[neg].mean()) if neg.any() else None,
            # share of clean images the gate lets skip segmentation at this threshold
            "clean_images_skipped": float((~pred[neg]).mean()) if neg.any() else None,
            "accuracy": float((pred == pos).mean()),
        }
    if y_true_cls is not None and p_cls is not None:
        out["per_class"] = classification_summary(
            np.asarray(y_true_cls), np.asarray(p_cls), class_thresholds, list(class_names)
        )
    return out


def compute_seg_metrics(
    pred_masks_iter: Iterable[np.ndarray],
    truth_masks_iter: Iterable[np.ndarray],
    class_names: Sequence[str],
    class_ids: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Kaggle score and friends from two streams of (K, H, W) masks, one image at a time."""
    ids = list(class_ids) if class_ids is not None else list(range(1, len(class_names) + 1))
    acc = DiceAccumulator(ids, class_names)
    for pred, truth in zip(pred_masks_iter, truth_masks_iter, strict=True):
        acc.add_masks(pred, truth)
    return acc.report().to_dict()


# --------------------------------------------------------------------------- writing


def _clean(obj: Any) -> Any:
    """JSON-safe copy: NaN/inf become null, numpy scalars become Python numbers."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _clean(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _atomic(path: Path, write: Callable[[Path], None]) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _save_fig(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    try:
        return _atomic(path, lambda p: fig.savefig(p, format="png", dpi=110, bbox_inches="tight"))
    finally:
        plt.close(fig)


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _plot_gate(gate: dict[str, Any], out: Path) -> list[str]:
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    files = []
    d = gate["defect"]
    fig, ax = plt.subplots(figsize=(4, 3.6))
    ConfusionMatrixDisplay(np.asarray(d["confusion_matrix"]), display_labels=d["labels"]).plot(
        ax=ax, colorbar=False, cmap="Blues"
    )
    ax.set_title(f"Defect gate at threshold {d['threshold']:.2f}")
    files.append(_save_fig(fig, out / "gate_confusion.png").name)

    if gate.get("roc"):
        fig, ax = plt.subplots(figsize=(4.5, 4))
        ax.plot(gate["roc"]["fpr"], gate["roc"]["tpr"], label=f"ROC (AUC {_fmt(d['roc_auc'], 3)})")
        ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8)
        at = gate.get("at_recall_threshold")
        if at and at.get("false_positive_rate") is not None:
            ax.scatter(
                [at["false_positive_rate"]],
                [at["recall"]],
                c="red",
                zorder=3,
                label=f"recall >= {gate['recall_target']} at t={gate['recall_threshold']:.3f}",
            )
        ax.set_xlabel("false positive rate (clean images flagged)")
        ax.set_ylabel("true positive rate (defect recall)")
        ax.set_title("Defect gate ROC")
        ax.legend(loc="lower right", fontsize=8)
        files.append(_save_fig(fig, out / "gate_roc.png").name)

    pc = gate.get("per_class")
    if pc:
        mats = pc["confusion_matrices"]
        fig, axes = plt.subplots(1, len(mats), figsize=(3.2 * len(mats), 3), squeeze=False)
        for ax, m, name in zip(axes[0], mats, pc["labels"], strict=True):
            ConfusionMatrixDisplay(np.asarray(m), display_labels=["absent", "present"]).plot(
                ax=ax, colorbar=False, cmap="Blues"
            )
            ax.set_title(name)
        fig.suptitle("Per-class presence (classifier)")
        files.append(_save_fig(fig, out / "class_confusion.png").name)
    return files


def _plot_seg(seg: dict[str, Any], out: Path) -> str:
    import matplotlib.pyplot as plt

    names = [c["name"] for c in seg["classes"]]
    x = np.arange(len(names))
    all_pairs = [c["dice"] if c["dice"] is not None else np.nan for c in seg["classes"]]
    nonempty = [
        c["dice_nonempty"] if c["dice_nonempty"] is not None else np.nan for c in seg["classes"]
    ]
    fig, ax = plt.subplots(figsize=(1.6 * len(names) + 3, 3.8))
    ax.bar(x - 0.2, all_pairs, 0.4, label="Dice, all images")
    ax.bar(x + 0.2, nonempty, 0.4, label="Dice, images with this defect")
    ax.axhline(seg["empty_baseline"], c="red", ls="--", lw=1, label="all-empty baseline (score)")
    ax.axhline(seg["score"], c="green", ls=":", lw=1, label="Kaggle score")
    ax.set_xticks(x, names)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("Dice")
    ax.set_title("Segmentation Dice per class")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save_fig(fig, out / "seg_dice.png").name


def _plot_overlap(overlap: dict[str, Any], out: Path) -> str:
    import matplotlib.pyplot as plt

    names = [c["name"] for c in overlap["classes"]]
    x = np.arange(len(names))

    def vals(key: str) -> list[float]:
        return [c[key] if c[key] is not None else np.nan for c in overlap["classes"]]

    fig, ax = plt.subplots(figsize=(1.6 * len(names) + 3, 3.8))
    ax.bar(x - 0.2, vals("iou_pooled"), 0.4, label="IoU, pixels pooled")
    ax.bar(x + 0.2, vals("iou_per_image"), 0.4, label="IoU, mean per image")
    if overlap.get("mean_iou") is not None:
        ax.axhline(overlap["mean_iou"], c="green", ls=":", lw=1, label="mean IoU (pooled)")
    ax.set_xticks(x, names)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("IoU")
    ax.set_title("Segmentation IoU per class")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save_fig(fig, out / "seg_iou.png").name


def _md_overlap(overlap: dict[str, Any], plot: str) -> list[str]:
    lines = [
        "### IoU and Dice per class",
        "",
        f"Mean IoU over the defect classes (pixels pooled): **{_fmt(overlap['mean_iou'])}**; "
        f"mean of per-image IoU: {_fmt(overlap['mean_iou_per_image'])}.",
        "",
        "| class | IoU pooled | Dice pooled | IoU per image | Dice per image | images |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for c in overlap["classes"]:
        lines.append(
            f"| {c['name']} | {_fmt(c['iou_pooled'])} | {_fmt(c['dice_pooled'])} | "
            f"{_fmt(c['iou_per_image'])} | {_fmt(c['dice_per_image'])} | "
            f"{c['images_with_class']} |"
        )
    lines += [
        "",
        "Pooled: every pixel of the split counts once. Per image: the mean over the images where "
        "the class is in the truth or the prediction.",
        "",
        f"![{plot}]({plot})",
        "",
    ]
    return lines


def _plot_boxes(boxes: dict[str, Any], class_names: Sequence[str], out: Path) -> str:
    import matplotlib.pyplot as plt

    aps = [a if a is not None else np.nan for a in boxes["ap_per_class"]]
    fig, ax = plt.subplots(figsize=(1.3 * len(aps) + 3, 3.5))
    ax.bar(np.arange(len(aps)), aps)
    if boxes.get("map50") is not None:
        ax.axhline(boxes["map50"], c="green", ls=":", label=f"mAP@0.5 {boxes['map50']:.3f}")
        ax.legend(fontsize=8)
    ax.set_xticks(np.arange(len(aps)), list(class_names)[: len(aps)])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("AP@0.5")
    ax.set_title("Box AP per class (component-based: boxes of the mask components)")
    return _save_fig(fig, out / "box_ap.png").name


def _plot_detection(det: dict[str, Any], out: Path) -> str:
    import matplotlib.pyplot as plt

    rows = det["per_class"]
    names = [r["class"] for r in rows]
    x = np.arange(len(names))

    def vals(key: str) -> list[float]:
        return [r[key] if r[key] is not None else np.nan for r in rows]

    fig, ax = plt.subplots(figsize=(1.4 * len(names) + 3, 3.8))
    ax.bar(x - 0.2, vals("ap50"), 0.4, label="AP@0.5")
    ax.bar(x + 0.2, vals("ap"), 0.4, label="AP@0.5:0.95")
    ax.axhline(det["map50"], c="green", ls=":", lw=1, label=f"mAP@0.5 {det['map50']:.3f}")
    ax.axhline(det["map"], c="purple", ls="--", lw=1, label=f"mAP@0.5:0.95 {det['map']:.3f}")
    ax.set_xticks(x, names, rotation=20, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("AP")
    ax.set_title("Detector box AP per class (COCOeval)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save_fig(fig, out / "detection_ap.png").name


def _md_gate(gate: dict[str, Any], plots: list[str]) -> list[str]:
    d = gate["defect"]
    lines = ["## Defect gate (classifier)", "", "| metric | value |", "| --- | --- |"]
    lines += [
        f"| images | {d['n']} |",
        f"| threshold | {d['threshold']:.3f} |",
        f"| accuracy | {_fmt(d['accuracy'])} |",
        f"| ROC-AUC | {_fmt(d['roc_auc'])} |",
        f"| defect recall at threshold | {_fmt(d['report']['defect']['recall'])} |",
        f"| threshold keeping defect recall >= {gate['recall_target']} | "
        f"{_fmt(gate['recall_threshold'])} |",
    ]
    at = gate.get("at_recall_threshold")
    if at:
        lines.append(
            f"| clean images skipped at that threshold | {_fmt(at['clean_images_skipped'])} |"
        )
    lines += [
        "",
        "| class | precision | recall | F1 | support |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name in d["labels"]:
        r = d["report"][name]
        lines.append(
            f"| {name} | {_fmt(r['precision'])} | {_fmt(r['recall'])} | {_fmt(r['f1-score'])} | "
            f"{int(r['support'])} |"
        )
    pc = gate.get("per_class")
    if pc:
        lines += [
            "",
            "Per-class presence:",
            "",
            "| class | threshold | accuracy | ROC-AUC | precision | recall | F1 | support |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for i, name in enumerate(pc["labels"]):
            r = pc["report"][name]
            lines.append(
                f"| {name} | {pc['threshold'][i]:.3f} | {_fmt(pc['accuracy_per_class'][i])} | "
                f"{_fmt(pc['roc_auc_per_class'][i])} | {_fmt(r['precision'])} | "
                f"{_fmt(r['recall'])} | {_fmt(r['f1-score'])} | {int(r['support'])} |"
            )
    lines += [""] + [f"![{p}]({p})" for p in plots] + [""]
    return lines


def _md_seg(seg: dict[str, Any], plot: str) -> list[str]:
    lines = [
        "## Segmentation (Kaggle metric)",
        "",
        "| metric | value |",
        "| --- | --- |",
        f"| images | {seg['num_images']} |",
        f"| Kaggle score (mean Dice over every image/class pair) | {_fmt(seg['score'])} |",
        f"| all-empty baseline (predict nothing) | {_fmt(seg['empty_baseline'])} |",
        f"| Dice on non-empty pairs (all classes) | {_fmt(seg['dice_nonempty'])} |",
        "",
        "| class | Dice (all) | Dice (non-empty truth) | TP | FP | TN | FN |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for c in seg["classes"]:
        lines.append(
            f"| {c['name']} | {_fmt(c['dice'])} | {_fmt(c['dice_nonempty'])} | {c['tp']} | "
            f"{c['fp']} | {c['tn']} | {c['fn']} |"
        )
    lines += [
        "",
        "TP/FP/TN/FN count images: a prediction is positive when its mask for the class is "
        "non-empty.",
        "",
        f"![{plot}]({plot})",
        "",
    ]
    return lines


def _md_boxes(boxes: dict[str, Any], class_names: Sequence[str], plot: str) -> list[str]:
    lines = [
        "## Boxes (component-based)",
        "",
        "The model has no detector: these boxes are the connected components of its masks.",
        "",
        f"Component-based mAP@{boxes.get('iou_threshold', 0.5)} (VOC all-point AP, mean over "
        f"classes with ground truth): **{_fmt(boxes['map50'])}**",
        "",
        "| class | AP@0.5 | ground-truth boxes |",
        "| --- | --- | --- |",
    ]
    for i, ap in enumerate(boxes["ap_per_class"]):
        name = class_names[i] if i < len(class_names) else str(i)
        lines.append(f"| {name} | {_fmt(ap)} | {boxes['num_gt'][i]} |")
    lines += ["", f"![{plot}]({plot})", ""]
    return lines


def _md_detection(det: dict[str, Any], plot: str) -> list[str]:
    shown = det.get("at_score_threshold")
    lines = [
        "## Boxes (detector)",
        "",
        f"COCO box metrics by pycocotools' COCOeval over {det['images']} images, on every box "
        f"scoring at least {_fmt(det.get('score_floor'), 2)} (COCO practice: AP needs the "
        "low-scored boxes too).",
        "",
        "| metric | value |",
        "| --- | --- |",
        f"| mAP@0.5 | **{_fmt(det['map50'])}** |",
        f"| mAP@0.5:0.95 | **{_fmt(det['map'])}** |",
        f"| mAP@0.75 | {_fmt(det.get('map75'))} |",
        f"| AR@100 | {_fmt(det.get('ar100'))} |",
    ]
    if shown:
        lines.append(
            f"| shown boxes (score >= {shown['score_threshold']:.2f}): precision / recall / F1 "
            f"at IoU {shown['iou_threshold']:.1f} | {_fmt(shown['precision'])} / "
            f"{_fmt(shown['recall'])} / {_fmt(shown['f1'])} |"
        )
    lines += [
        "",
        "| class | AP@0.5 | AP@0.5:0.95 | truth boxes | detections |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in det["per_class"]:
        lines.append(
            f"| {r['class']} | {_fmt(r['ap50'])} | {_fmt(r['ap'])} | {r['truth_boxes']} | "
            f"{r['detections']} |"
        )
    if any(r["ap50"] is None for r in det["per_class"]):
        lines += ["", "n/a: the class has no truth box in these images."]
    lines += ["", f"![{plot}]({plot})", ""]
    return lines


def write_evaluation_report(
    out_dir: str | Path,
    *,
    class_names: Sequence[str],
    gate: dict[str, Any] | None,
    seg: dict[str, Any] | None,
    boxes: dict[str, Any] | None,
    detection: dict[str, Any] | None = None,
    title: str = "steelscan evaluation",
) -> Path:
    """Write ``metrics.json``, PNG plots and ``report.md`` into ``out_dir``; returns report.md.

    ``boxes`` is the component-based box mAP, ``detection`` the detector's (see the module)."""
    import matplotlib

    matplotlib.use("Agg")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if gate is None and seg is None and boxes is None and detection is None:
        raise ValueError(
            "write_evaluation_report: nothing to report (gate, seg, boxes and detection are None)"
        )
    metrics = _clean(
        {
            "class_names": list(class_names),
            "gate": gate,
            "segmentation": seg,
            "boxes": boxes,
            "detection": detection,
        }
    )
    _atomic(
        out / "metrics.json",
        lambda p: p.write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8"),
    )
    lines = [f"# {title}", ""]
    if seg is not None:
        lines += _md_seg(seg, _plot_seg(seg, out))
        if seg.get("overlap"):
            lines += _md_overlap(seg["overlap"], _plot_overlap(seg["overlap"], out))
    if gate is not None:
        lines += _md_gate(gate, _plot_gate(gate, out))
    if detection is not None:
        lines += _md_detection(detection, _plot_detection(detection, out))
    if boxes is not None:
        lines += _md_boxes(boxes, class_names, _plot_boxes(boxes, class_names, out))
    lines += ["All numbers are in `metrics.json`.", ""]
    return _atomic(out / "report.md", lambda p: p.write_text("\n".join(lines), encoding="utf-8"))
