"""`steelscan score`: the Kaggle score of a prediction CSV against a truth CSV."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from steelscan.cli.common import USER_ERRORS, fail


def _print_table(report_dict: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    def f(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.4f}"

    console = Console()
    table = Table(title="Dice and image-level counts per class")
    for col in ("class", "Dice", "Dice (defect images)", "TP", "FP", "TN", "FN"):
        table.add_column(col, justify="left" if col == "class" else "right")
    for c in report_dict["classes"]:
        table.add_row(
            c["name"],
            f(c["dice"]),
            f(c["dice_nonempty"]),
            str(c["tp"]),
            str(c["fp"]),
            str(c["tn"]),
            str(c["fn"]),
        )
    console.print(
        f"Kaggle score: [bold]{report_dict['score']:.4f}[/bold]  "
        f"(all-empty baseline {report_dict['empty_baseline']:.4f}, "
        f"{report_dict['num_images']} images x {len(report_dict['classes'])} classes)"
    )
    console.print(table)
    src = report_dict.get("sources", {})
    if src:
        console.print(f"scored images: {src.get('images')}", style="dim")


def score(
    truth: Path = typer.Argument(
        ..., help="Ground-truth CSV (ImageId,ClassId,EncodedPixels or ImageId_ClassId,...)."
    ),
    pred: Path = typer.Argument(
        ..., help="Prediction CSV (either Kaggle layout, any column order, e.g. a submission)."
    ),
    images: Path | None = typer.Option(
        None,
        "--images",
        help="Images to score: one id per line, or any CSV with an ImageId column (images.csv, "
        "defect_and_no_defect.csv, a train or submission CSV; the same files predict takes). "
        "Without it only images that appear in TRUTH are scored, so defect-free images with no "
        "rows are left out.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as JSON only."),
    height: int = typer.Option(256, "--height", min=1, help="Image height in pixels."),
    width: int = typer.Option(1600, "--width", min=1, help="Image width in pixels."),
) -> None:
    """Kaggle score (mean Dice over every image/class pair), Dice and TP/FP/TN/FN per class."""
    from steelscan.evaluation.metrics import score_csvs

    try:
        report = score_csvs(truth, pred, images=images, shape=(height, width))
    except USER_ERRORS as exc:
        fail(str(exc))
    d = report.to_dict()
    if as_json:
        typer.echo(json.dumps(d, indent=2))
    else:
        _print_table(d)


def register(app: typer.Typer) -> None:
    """Add ``score`` to ``app``."""
    app.command("score")(score)
