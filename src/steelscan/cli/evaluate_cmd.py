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
    class and the all-empty baseline; box mAP@0.5 for box datasets.

    With an exported bundle, --engine/--bf16/--int8 score the faster engines on the same split,
    e.g. to check that int8 keeps the float32 score before putting it on the line."""
    from steelscan.cli.common import engine_options
    from steelscan.evaluation.evaluate import evaluate as run_evaluate

    opts = engine_options(engine, device=device, bf16=bf16, fp16=fp16, int8=int8)
    m = run_evaluate(model_dir, data, out, split=split, engine=engine, gate_mode=gate, **opts)
    seg = m["segmentation"]
    which = "the model's validation split" if m["split"] == "val" else "every image"
    typer.echo(f"{m['n_images']} images scored ({which}) with {m['engine']}")
    typer.echo(f"mean Dice on non-empty pairs {seg['dice_nonempty']:.4f}")
    typer.echo(f"Kaggle score {seg['score']:.4f}  (all-empty baseline {seg['empty_baseline']:.4f})")
    if seg.get("overlap"):
        ov = seg["overlap"]
        ious = "  ".join(f"{c['name']} {c['iou_pooled'] or 0:.4f}" for c in ov["classes"])
        typer.echo(f"mean IoU {ov['mean_iou'] or 0:.4f}  (per class, pixels pooled: {ious})")
    if m["gate"] is not None:
        d = m["gate"]["defect"]
        auc = "n/a" if d.get("roc_auc") is None else f"{d['roc_auc']:.4f}"
        typer.echo(f"gate accuracy {d['accuracy']:.4f}  ROC-AUC {auc}")
    if m["gate"] is not None and "top1_accuracy" in m["gate"]:
        typer.echo(f"top-1 class accuracy {m['gate']['top1_accuracy']:.4f}")
    if m["boxes"] is not None:
        typer.echo(f"box mAP@0.5 {m['boxes']['map50']:.4f}")
    typer.echo(f"report: {m['report']}")


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate)
