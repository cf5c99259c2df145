"""`steelscan export`: add ONNX models (float32, optionally int8) to a copy of a trained bundle."""

from __future__ import annotations

from pathlib import Path

import typer


def export(
    model_dir: Path = typer.Argument(..., help="Trained model bundle folder (manifest.json)."),
    out: Path = typer.Option(..., "--out", help="Folder for the exported copy of the bundle."),
    fmt: str = typer.Option("onnx", "--format", help="Export format (onnx)."),
    int8: bool = typer.Option(
        False,
        "--int8",
        help="Also write int8 models (static quantisation; needs --calibration). A detector's "
        "is kept only where it agrees with float32 on the calibration images.",
    ),
    calibration: Path | None = typer.Option(
        None,
        "--calibration",
        help="Dataset folder of real images (Severstal or VOC layout) to calibrate int8 ranges on.",
    ),
    calibration_images: int = typer.Option(
        16, "--calibration-images", min=1, help="How many calibration images to use."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --out if it exists."),
) -> None:
    """Export every stage (gate, segmenter, detector) to ONNX into a copy of the bundle; load it
    with `--engine onnx`."""
    from steelscan.cli.common import fail
    from steelscan.inference.export import STAGES, ExportError, export_bundle

    if fmt.lower() != "onnx":
        fail(f"--format {fmt!r} is not supported; the only format is onnx")
    if not model_dir.is_dir():
        fail(f"{model_dir}: model directory not found")
    if calibration is not None and not calibration.is_dir():
        fail(f"{calibration}: calibration dataset folder not found")
    if calibration is not None and not int8:
        typer.secho(
            "note: --calibration is only used with --int8", fg=typer.colors.YELLOW, err=True
        )
    try:
        path = export_bundle(
            model_dir,
            out,
            int8=int8,
            calibration=calibration,
            calibration_images=calibration_images,
            overwrite=overwrite,
            progress=lambda msg: typer.echo(f"  {msg}", err=True),
        )
    except ExportError as exc:
        fail(str(exc))
    except ValueError as exc:  # BundleError and friends: a broken source bundle
        fail(f"{model_dir}: cannot export: {exc}")
    from steelscan.bundle import read_manifest

    manifest = read_manifest(path)
    typer.echo(f"exported to {path}")
    for stage in STAGES:
        spec = getattr(manifest, stage)
        if spec is not None:
            files = ", ".join(f for f in (spec.onnx_file, spec.onnx_int8_file) if f)
            typer.echo(f"  {stage}: {files}")
    typer.echo(
        f"use it with: steelscan predict {path} IMAGES --out DIR --engine onnx "
        "(or --engine openvino [--bf16]; the same flags work for steelscan serve)"
    )
    if int8:
        typer.echo("  int8 models: add --int8 (Python: Inspector(path, engine='onnx', int8=True))")


def register(app: typer.Typer) -> None:
    """Add ``export`` to ``app``."""
    app.command("export")(export)
