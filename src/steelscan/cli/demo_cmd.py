"""`steelscan demo`: the main job on the embedded default (synthetic data, CPU, minutes)."""

from __future__ import annotations

from pathlib import Path

import typer


def demo(
    out: Path = typer.Option(Path("demo-out"), "--out", help="Folder for everything it writes."),
    n: int = typer.Option(160, "--n", min=20, help="Synthetic images to generate."),
    seed: int = typer.Option(0, "--seed", help="Seed for data, split and training."),
    max_minutes: float | None = typer.Option(
        None, "--max-minutes", help="Training time budget (default: the demo config's)."
    ),
) -> None:
    """Synthesise a dataset, train both stages briefly on the CPU, tune, predict, evaluate and
    write the report; print the Kaggle score next to the all-empty baseline."""
    from steelscan.demo import DICE_BAR, KAGGLE_BAR, run_demo

    r = run_demo(out, n=n, seed=seed, max_minutes=max_minutes, log=typer.echo)
    ok = typer.style("PASS", fg=typer.colors.GREEN)
    no = typer.style("BELOW BAR", fg=typer.colors.RED)
    typer.echo("")
    typer.echo(f"validation split: {r.metrics['n_images']} synthetic images")
    typer.echo(
        f"  Kaggle score            {r.kaggle:.4f}   (all-empty baseline {r.empty_baseline:.4f}; "
        f"bar {KAGGLE_BAR})  {ok if r.kaggle >= KAGGLE_BAR else no}"
    )
    typer.echo(
        f"  mean Dice, non-empty    {r.dice_nonempty:.4f}   (bar {DICE_BAR})  "
        f"{ok if r.dice_nonempty >= DICE_BAR else no}"
    )
    if r.gate_accuracy is not None:
        typer.echo(f"  gate accuracy           {r.gate_accuracy:.4f}")
    typer.echo(f"  total time              {r.seconds / 60:.1f} min")
    typer.echo(f"model:       {r.out / 'model'}")
    typer.echo(f"predictions: {r.out / 'predictions'}")
    typer.echo(f"report:      {r.metrics['report']}")


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
