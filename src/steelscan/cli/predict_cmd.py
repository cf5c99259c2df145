"""`steelscan predict`: run a trained bundle over images and write submission, JSON lines, overlays.

Exit status: 0 when every image was inspected; 1 when some image could not be read or inspected
(everything else is still written, and the failures are listed in ``errors.csv`` and
``predictions.jsonl``); 2 for a user error that stops the run before it starts (missing or broken
model directory, an input path that does not exist, an unknown engine).
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer


def predict(
    model_dir: Path = typer.Argument(..., help="Trained model bundle folder (manifest.json)."),
    inputs: list[Path] = typer.Argument(
        ...,
        help="Images, folders of images, CSVs with an ImageId column, or a labelled dataset "
        "folder (with train.csv: overlays then show the ground truth too).",
    ),
    out: Path = typer.Option(..., "--out", help="Folder for submission.csv, predictions.jsonl..."),
    engine: str = typer.Option(
        "auto",
        "--engine",
        help="Runtime: auto (the fastest engine recorded as keeping the score), torch, onnx or "
        "openvino.",
    ),
    gate: str | None = typer.Option(
        None, "--gate", help="Override the tuned gate: hard, soft or none."
    ),
    tta: bool = typer.Option(False, "--tta", help="Average the segmenter over flips (3x slower)."),
    batch_size: int | None = typer.Option(
        None, "--batch-size", min=1, help="Images per forward pass (default: the engine's best)."
    ),
    overlays: bool = typer.Option(False, "--overlays", help="Write overlays/<id>.png per image."),
    channels_last: bool = typer.Option(False, "--channels-last", help="channels_last layout."),
    bf16: bool = typer.Option(
        False, "--bf16", help="bfloat16 where the CPU supports it (torch autocast, openvino)."
    ),
    fp16: bool = typer.Option(False, "--fp16", help="torch engine on CUDA: float16 autocast."),
    int8: bool = typer.Option(False, "--int8", help="onnx engine: run the int8 model."),
    device: str = typer.Option("auto", "--device", help="Device: auto, cpu, cuda, cuda:1."),
) -> None:
    """Inspect images with a trained model; writes one result per image, each image once.

    Writes submission.csv (Kaggle ImageId,EncodedPixels,ClassId), predictions.jsonl, errors.csv
    and, with --overlays, overlays/<id>.png. Exit status 0: every image inspected; 1: some
    images failed (the rest are written; failures are in errors.csv); 2: nothing ran (missing or
    broken model, input path not found, bad option).
    """
    from steelscan.cli.common import engine_options, fail
    from steelscan.inference.inputs import resolve_inputs
    from steelscan.inference.writers import ERRORS

    if gate is not None and gate not in ("hard", "soft", "none"):
        fail(f"--gate must be hard, soft or none, not {gate!r}")
    opts = engine_options(
        engine, device=device, channels_last=channels_last, bf16=bf16, fp16=fp16, int8=int8
    )
    predictor = _build_predictor(model_dir, engine, gate, tta, batch_size, opts)
    resolved = resolve_inputs(inputs)
    for note in resolved.notes:
        typer.secho(f"note: {note}", fg=typer.colors.YELLOW, err=True)
    summary = _run(predictor, resolved, out, overlays)
    summary.print(predictor.classes, out)
    if summary.failed:
        typer.secho(
            f"{len(summary.failed)} image(s) failed; see {out / ERRORS}",
            fg=typer.colors.RED,
            err=True,
        )
        raise typer.Exit(1)


def _build_predictor(
    model_dir: Path,
    engine: str,
    gate: str | None,
    tta: bool,
    batch_size: int | None,
    opts: dict[str, Any],
) -> Any:
    """Load the bundle and its engine, or stop with one clear line (exit 2); says what it chose."""
    from steelscan.bundle import load_bundle
    from steelscan.cli.common import fail
    from steelscan.inference.predictor import Predictor

    if not model_dir.is_dir():
        fail(f"{model_dir}: model directory not found")
    try:
        bundle = load_bundle(model_dir)
    except (ValueError, OSError) as exc:  # BundleError is a ValueError
        fail(f"{model_dir}: cannot load the model bundle: {exc}")
    try:
        predictor = Predictor(
            bundle, engine=engine, gate_mode=gate, tta=tta, batch_size=batch_size, **opts
        )
    except (ValueError, TypeError) as exc:
        fail(str(exc))
    choice = predictor.engine_choice
    why = f" ({choice.reason})" if choice is not None and engine == "auto" else ""
    typer.echo(f"engine: {predictor.engine_label}, batch {predictor.batch_size}{why}", err=True)
    return predictor


@dataclass
class _Summary:
    """What a run did, for the lines printed at its end."""

    per_class: Counter[str] = field(default_factory=Counter)
    stage_ms: Counter[str] = field(default_factory=Counter)
    failed: list[str] = field(default_factory=list)
    n_ok: int = 0
    n_defective: int = 0
    seconds: float = 0.0

    def add(self, res: Any) -> None:
        self.n_ok += 1
        self.n_defective += res.has_defect
        self.per_class.update(c.name for c in res.classes if c.present)
        self.stage_ms.update(res.timings_ms)

    def print(self, classes: list[str], out: Path) -> None:
        n = self.n_ok
        typer.echo(
            f"images inspected: {n}   defective: {self.n_defective}   errors: {len(self.failed)}"
        )
        for name in classes:
            typer.echo(f"  {name}: {self.per_class[name]}")
        if n:
            stages = ", ".join(f"{k} {v / n:.1f}" for k, v in self.stage_ms.items())
            typer.echo(f"speed: {n / self.seconds:.2f} img/s   mean ms per image: {stages}")
        typer.echo(f"outputs in {out}")


def _run(predictor: Any, resolved: Any, out: Path, overlays: bool) -> _Summary:
    """Stream every input through the predictor into the writer: one result per input."""
    from tqdm import tqdm

    from steelscan.inference.writers import PredictionWriter

    summary = _Summary()
    start = time.perf_counter()
    with PredictionWriter(out, overlays=overlays) as writer:
        for image_id, why in resolved.missing:
            writer.write_error(image_id, None, f"image not found: {why}")
            summary.failed.append(image_id)
            typer.secho(f"error: {image_id}: {why}", fg=typer.colors.RED, err=True)
        # Decoding and post-processing run in worker threads around the model (pipelined,
        # bounded queues: memory stays flat however many images there are).
        items = [(it.image_id, it.path) for it in resolved.images]
        bar = tqdm(
            total=len(items),
            unit="img",
            desc="predict",
            dynamic_ncols=True,
            mininterval=0.5 if sys.stderr.isatty() else 10.0,
        )
        for item, pred in zip(
            resolved.images, predictor.stream(items, keep_images=overlays), strict=True
        ):
            bar.update(1)
            if pred.error is not None:
                writer.write_error(item.image_id, item.path, pred.error)
                summary.failed.append(item.image_id)
                tqdm.write(
                    typer.style(f"error: {pred.error}", fg=typer.colors.RED), file=sys.stderr
                )
                continue
            writer.write(pred.result, path=item.path, image=pred.image, truth=item.truth)
            summary.add(pred.result)
        bar.close()
    summary.seconds = time.perf_counter() - start
    return summary


def register(app: typer.Typer) -> None:
    """Add ``predict`` to ``app``."""
    app.command("predict")(predict)
