"""`steelscan data ...`: check, convert, synthesise and report on datasets."""

from __future__ import annotations

from pathlib import Path

import typer

data_app = typer.Typer(
    help="Check, convert, synthesise and explore datasets.", no_args_is_help=True
)

LAYOUT_NAMES = "severstal, voc, coco, yolo, masks, class-folders"
DATA_HELP = (
    "Dataset folder (Severstal, Pascal VOC, COCO JSON, YOLO, images/ + masks/, or one folder per "
    "class with masks beside the images) or a COCO .json file."
)


def layout_option() -> typer.models.OptionInfo:
    """The ``--layout`` option every command that loads a dataset shares."""
    return typer.Option(
        None,
        "--layout",
        help=f"Dataset layout, when detection should not guess: {LAYOUT_NAMES}.",
        show_default="detected",
    )


def checked_layout(layout: str | None) -> str | None:
    """``layout`` if it names a known layout; else a clear error listing them (exit 2)."""
    from steelscan.cli.common import fail
    from steelscan.data import LAYOUTS

    if layout is not None and layout not in LAYOUTS:
        fail(f"unknown --layout {layout!r}; choose one of: {', '.join(LAYOUTS)}")
    return layout


@data_app.command("check")
def check(
    data: Path = typer.Argument(..., help=DATA_HELP),
    layout: str | None = layout_option(),
) -> None:
    """Report every problem in a dataset at once.

    Exit status 0: no problem; 1: problems found (each names its file, line and field); 2: DATA
    is not a dataset at all (missing, a file, or a folder of no known layout), nothing checked.
    """
    from steelscan.data import detect_layout
    from steelscan.data.check import check_dataset
    from steelscan.data.records import DataError

    try:
        layout = detect_layout(data, checked_layout(layout))
    except DataError as exc:
        for p in exc.problems:
            typer.secho(f"error: {p}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    problems = check_dataset(data, layout=layout)
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
    data: Path = typer.Argument(..., help=DATA_HELP),
    out: Path = typer.Option(..., "--out", help="Folder for the PNG plots and index.html."),
    gallery: int = typer.Option(12, "--gallery", min=0, help="Images in the overlay gallery."),
    layout: str | None = layout_option(),
) -> None:
    """Write exploration plots and one HTML page about a dataset."""
    from steelscan.data import load_dataset
    from steelscan.reports.exploration import write_report

    ds = load_dataset(data, layout=checked_layout(layout))
    html = write_report(ds, out, gallery=gallery)
    typer.echo(f"report written to {html}")


@data_app.command("convert")
def convert(
    src: Path = typer.Argument(..., help=DATA_HELP),
    to: str = typer.Option(..., "--to", help="Target layout: severstal, coco, yolo or masks."),
    out: Path = typer.Option(
        ..., "--out", help="New folder to write (must not exist or be empty)."
    ),
    layout: str | None = layout_option(),
    boxes: bool = typer.Option(
        False,
        "--boxes",
        help="Write each mask component's bounding box instead of the mask (needed for yolo "
        "from masks; lossy).",
    ),
    fill_boxes: bool = typer.Option(
        False,
        "--fill-boxes",
        help="Write boxes as filled masks (needed for severstal or masks from boxes).",
    ),
) -> None:
    """Convert a dataset to another layout, lossless where the target can hold it.

    What a target cannot hold is an error naming the option that allows the lossy form
    (--boxes, --fill-boxes). Images are hard-linked (or copied) beside the labels; the output
    appears only when complete.
    """
    from steelscan.cli.common import fail
    from steelscan.data.convert import TARGETS, convert_dataset

    if to not in TARGETS:
        fail(f"unknown --to {to!r}; choose one of: {', '.join(TARGETS)}")
    result = convert_dataset(
        src, to, out, layout=checked_layout(layout), boxes=boxes, fill_boxes=fill_boxes
    )
    for note in result.notes:
        typer.secho(f"note: {note}", fg=typer.colors.YELLOW, err=True)
    typer.echo(
        f"wrote {result.images} images and {result.annotations} annotations to {result.out} "
        f"({result.layout} layout)"
    )


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
