"""`steelscan data ...`: check, synthesise and report on datasets."""

from __future__ import annotations

from pathlib import Path

import typer

data_app = typer.Typer(help="Check, synthesise and explore datasets.", no_args_is_help=True)


@data_app.command("check")
def check(
    data: Path = typer.Argument(
        ..., help="Dataset folder (Severstal layout or Pascal VOC layout)."
    ),
) -> None:
    """Report every problem in a dataset at once; exit non-zero if there is any."""
    from steelscan.data.check import check_dataset

    problems = check_dataset(data)
    for p in problems:
        typer.secho(str(p), fg=typer.colors.RED, err=True)
    if problems:
        typer.secho(f"{len(problems)} problem(s) found in {data}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1)
    typer.echo(f"{data}: OK")


@data_app.command("synth")
def synth(
    out: Path = typer.Option(
        ..., "--out", help="Folder to write the Severstal-layout dataset into."
    ),
    n: int = typer.Option(200, "--n", min=1, help="Number of images."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed gives the same data."),
    height: int = typer.Option(256, "--height", min=32, help="Image height in pixels."),
    width: int = typer.Option(1600, "--width", min=32, help="Image width in pixels."),
) -> None:
    """Write a synthetic steel dataset (images, train.csv, defect_and_no_defect.csv)."""
    from steelscan.data.synthetic import synthesize

    path = synthesize(out, n=n, seed=seed, height=height, width=width)
    typer.echo(f"wrote {n} images to {path}")


@data_app.command("report")
def report(
    data: Path = typer.Argument(..., help="Dataset folder (Severstal, VOC or synthetic)."),
    out: Path = typer.Option(..., "--out", help="Folder for the PNG plots and index.html."),
    gallery: int = typer.Option(12, "--gallery", min=0, help="Images in the overlay gallery."),
) -> None:
    """Write exploration plots and one HTML page about a dataset."""
    from steelscan.reports.exploration import write_report

    html = write_report(data, out, gallery=gallery)
    typer.echo(f"report written to {html}")


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
