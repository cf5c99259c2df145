"""`steelscan demo`: the main job on the embedded default (synthetic data, CPU, minutes)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from steelscan.demo import DemoResult


def demo(
    out: Path = typer.Option(Path("demo-out"), "--out", help="Folder for everything it writes."),
    n: int = typer.Option(160, "--n", min=20, help="Synthetic images to generate."),
    seed: int = typer.Option(0, "--seed", help="Seed for data, split and training."),
    max_minutes: float | None = typer.Option(
        None,
        "--max-minutes",
        help="Cap the training time (off by default: the demo is budgeted by epochs, so every "
        "machine trains the same model; a cap makes the result depend on the machine's speed).",
    ),
) -> None:
    """Synthesise a dataset, train both stages on the CPU, tune, export and measure the engines,
    predict with the fastest engine that keeps the score, evaluate and write the report; print
    the Kaggle score next to the all-empty baseline."""
    from steelscan.demo import run_demo

    r = run_demo(out, n=n, seed=seed, max_minutes=max_minutes, log=typer.echo)
    _print_result(r)


def _print_result(r: DemoResult) -> None:
    from steelscan.demo import DICE_BAR, GATE_BAR, KAGGLE_BAR

    ok = typer.style("PASS", fg=typer.colors.GREEN)
    no = typer.style("BELOW BAR", fg=typer.colors.RED)
    bars = r.bars
    typer.echo("")
    typer.echo(f"validation split: {r.metrics['n_images']} synthetic images, engine {r.engine}")
    typer.echo(
        f"  Kaggle score            {r.kaggle:.4f}   (all-empty baseline {r.empty_baseline:.4f}; "
        f"bar {KAGGLE_BAR})  {ok if bars['kaggle'] else no}"
    )
    typer.echo(
        f"  mean Dice, non-empty    {r.dice_nonempty:.4f}   (bar {DICE_BAR})  "
        f"{ok if bars['dice'] else no}"
    )
    if r.gate_accuracy is not None:
        typer.echo(
            f"  gate accuracy           {r.gate_accuracy:.4f}   (bar {GATE_BAR})  "
            f"{ok if bars['gate'] else no}"
        )
    typer.echo(f"  total time              {r.seconds / 60:.1f} min")
    if r.engines:
        typer.echo("engines measured at the end of training (validation images, this machine):")
        for e in r.engines:
            if e.get("images_per_s") is None:
                typer.echo(f"  {e['label']:<20} failed: {e.get('error', '?')}")
                continue
            mark = "" if e.get("keeps_score") else "  (loses the score)"
            chosen = "  <- used" if e["label"] == r.engine else ""
            metric = e.get("metric", "kaggle")
            name = "Kaggle" if metric == "kaggle" else "box mAP@0.5"
            typer.echo(
                f"  {e['label']:<20} {e['images_per_s']:7.1f} img/s   {name} {e[metric]:.4f}"
                f"{mark}{chosen}"
            )
    typer.echo(f"model:       {r.out / 'model'}")
    typer.echo(f"predictions: {r.out / 'predictions'}")
    typer.echo(f"report:      {r.metrics['report']}")


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
