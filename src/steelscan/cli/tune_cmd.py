"""`steelscan tune`: search per-class thresholds and minimum areas on validation."""

from __future__ import annotations

from pathlib import Path

import typer


def tune(
    model_dir: Path = typer.Argument(..., help="Model bundle directory (from `steelscan train`)."),
    data: Path = typer.Argument(..., help="Labelled dataset the model was trained on."),
    split: str = typer.Option(
        "auto",
        "--split",
        help="auto: every image, or the validation split on the model's own training data; "
        "val; all.",
    ),
    gate: str | None = typer.Option(
        None, "--gate", help="Gate mode to tune for (hard|soft|none); default: the bundle's."
    ),
) -> None:
    """Tune classifier thresholds, pixel thresholds and minimum areas to maximise the Kaggle
    score on validation (with a segmenter), and a detector's NMS IoU and box cap by box mAP@0.5
    and its score threshold by box F1; write them into the bundle and print the scores."""
    from steelscan.bundle import read_manifest
    from steelscan.evaluation.evaluate import tune as run_tune

    before, after, pp, used = run_tune(model_dir, data, split=split, gate_mode=gate)
    manifest = read_manifest(model_dir)
    if manifest.segmenter is not None:
        typer.echo(f"Kaggle score on {used}: before {before:.4f} -> after {after:.4f}")
    typer.echo(f"  gate mode          {pp.gate_mode} (gate threshold {pp.gate_threshold:.3f})")
    if manifest.segmenter is not None:
        typer.echo(f"  class thresholds   {[round(x, 3) for x in pp.class_thresholds]}")
        typer.echo(f"  pixel thresholds   {[round(x, 3) for x in pp.pixel_thresholds]}")
        typer.echo(f"  min areas          {pp.min_areas}")
        typer.echo(f"  min component area {pp.min_component_areas}")
    if manifest.detector is not None:
        m = manifest.metrics
        typer.echo(
            f"box mAP@0.5 on {used}: before {m['tuned_box_map50_before']:.4f} -> after "
            f"{m['tuned_box_map50_after']:.4f}; F1@0.5 of the shown boxes "
            f"{m['tuned_box_f1_before']:.4f} -> {m['tuned_box_f1_after']:.4f}"
        )
        typer.echo(f"  box score threshold {pp.box_score_threshold:.2f}")
        typer.echo(f"  box NMS IoU         {pp.box_nms_iou:.2f}")
        typer.echo(f"  max boxes           {pp.max_boxes}")
    typer.echo(f"written to {model_dir}")


def register(app: typer.Typer) -> None:
    app.command("tune")(tune)
