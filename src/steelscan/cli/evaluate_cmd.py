"""`steelscan evaluate`: score a model on a labelled dataset and write a report."""

from __future__ import annotations

from pathlib import Path

import typer


def evaluate(
    model_dir: Path = typer.Argument(..., help="Model bundle directory."),
    data: Path = typer.Argument(..., help="Labelled dataset (Severstal or VOC layout)."),
    out: Path = typer.Option(..., "--out", help="Folder for report.md, plots and metrics.json."),
    split: str = typer.Option(
        "auto",
        "--split",
        help="auto: every image, or the validation split on the model's own training data; "
        "val; all.",
    ),
    engine: str = typer.Option(
        "auto",
        "--engine",
        help="Runtime: auto (fastest recorded as keeping the score), torch, onnx, openvino.",
    ),
    gate: str | None = typer.Option(None, "--gate", help="Override gate mode: hard|soft|none."),
    bf16: bool = typer.Option(False, "--bf16", help="bfloat16 (torch autocast, openvino)."),
    fp16: bool = typer.Option(False, "--fp16", help="torch engine on CUDA: float16."),
    int8: bool = typer.Option(False, "--int8", help="onnx/openvino: run the int8 model."),
    device: str = typer.Option("auto", "--device", help="Device: auto, cpu, cuda, cuda:1."),
) -> None:
    """Gate accuracy, ROC-AUC, confusion matrix, recall-0.99 threshold; Kaggle score, Dice per
    class and the all-empty baseline (with a segmenter); COCO box mAP@0.5 and mAP@0.5:0.95 per
    class (with a detector), or the component-based box mAP@0.5 of the masks on box datasets.

    With an exported bundle, --engine/--bf16/--int8 score the faster engines on the same split,
    e.g. to check that int8 keeps the float32 score before putting it on the line."""
    from steelscan.cli.common import engine_options
    from steelscan.evaluation.evaluate import evaluate as run_evaluate

    opts = engine_options(engine, device=device, bf16=bf16, fp16=fp16, int8=int8)
    m = run_evaluate(model_dir, data, out, split=split, engine=engine, gate_mode=gate, **opts)
    which = "the model's validation split" if m["split"] == "val" else "every image"
    typer.echo(f"{m['n_images']} images scored ({which}) with {m['engine']}")
    for line in summary_lines(m):
        typer.echo(line)
    typer.echo(f"report: {m['report']}")


def summary_lines(m: dict) -> list[str]:
    """The headline figures of an evaluation, one per line (sections the model lacks are left
    out: a detector-only bundle has no masks to score)."""
    lines = []
    seg = m.get("segmentation")
    if seg is not None:
        lines.append(f"mean Dice on non-empty pairs {seg['dice_nonempty']:.4f}")
        lines.append(
            f"Kaggle score {seg['score']:.4f}  (all-empty baseline {seg['empty_baseline']:.4f})"
        )
        if seg.get("overlap"):
            ov = seg["overlap"]
            ious = "  ".join(f"{c['name']} {c['iou_pooled'] or 0:.4f}" for c in ov["classes"])
            lines.append(f"mean IoU {ov['mean_iou'] or 0:.4f}  (per class, pixels pooled: {ious})")
    gate = m.get("gate")
    if gate is not None:
        d = gate["defect"]
        auc = "n/a" if d.get("roc_auc") is None else f"{d['roc_auc']:.4f}"
        lines.append(f"gate accuracy {d['accuracy']:.4f}  ROC-AUC {auc}")
        if "top1_accuracy" in gate:
            lines.append(f"top-1 class accuracy {gate['top1_accuracy']:.4f}")
    det = m.get("detection")
    if det is not None:
        lines.append(f"box mAP@0.5 {det['map50']:.4f}  mAP@0.5:0.95 {det['map']:.4f}  (detector)")
    if m.get("boxes") is not None:
        lines.append(f"component-based box mAP@0.5 {m['boxes']['map50']:.4f}  (mask components)")
    return lines


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate)
