"""`steelscan predict`: run a trained bundle over images and write submission, JSON lines, overlays
and, with ``--format coco``, COCO results JSON (:mod:`steelscan.inference.coco_results`).

Exit status: 0 when every image was inspected; 1 when some image could not be read or inspected
(everything else is still written, and the failures are listed in ``errors.csv`` and
``predictions.jsonl``); 2 for a user error that stops the run before it starts (missing or broken
model directory, an input path that does not exist, an unknown engine, a journal of a different
run in ``--out``).

Resumable and exactly-once: every finished image goes to a journal in ``--out``
(:mod:`steelscan.inference.journal`) and the final files are assembled from it at the end, so a
run killed at any moment and started again with the same arguments continues where it stopped
and ends with the files an uninterrupted run writes.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer


def predict(
    model_dir: Path = typer.Argument(..., help="Trained model bundle folder (manifest.json)."),
    inputs: list[Path] = typer.Argument(
        ...,
        help="Images, folders of images (masks beside their images, x.png for x.jpg, are left "
        "out), CSVs with an ImageId column, or a labelled dataset folder in any layout "
        "steelscan reads (overlays then show the ground truth too).",
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
    restart: bool = typer.Option(
        False,
        "--restart",
        help="Discard the journal in --out (a killed or finished run, perhaps with other "
        "arguments) and start over.",
    ),
    formats: str = typer.Option(
        "csv,jsonl",
        "--format",
        help="Comma-separated outputs: csv (submission.csv), jsonl (predictions.jsonl), coco "
        "(coco_results.json + coco_images.json: one instance per mask component and one per "
        "detector box, for pycocotools, FiftyOne, CVAT). errors.csv is always written.",
    ),
) -> None:
    """Inspect images with a trained model; writes one result per image, each image once.

    Writes submission.csv (Kaggle ImageId,EncodedPixels,ClassId), predictions.jsonl, errors.csv
    and, with --overlays, overlays/<id>.png; --format picks the tables (coco: coco_results.json
    and coco_images.json). Resumable: a journal in --out records every finished image; a killed
    run, started again with the same arguments, continues where it stopped (--restart starts
    over). Exit status 0: every image inspected; 1: some images failed (the
    rest are written; failures are in errors.csv); 2: nothing ran (missing or broken model, input
    path not found, bad option, a journal of a different run in --out).
    """
    from steelscan.cli.common import engine_options
    from steelscan.inference.inputs import resolve_inputs

    wanted = check_options(gate, formats)
    opts = engine_options(
        engine, device=device, channels_last=channels_last, bf16=bf16, fp16=fp16, int8=int8
    )
    predictor = _build_predictor(model_dir, engine, gate, tta, batch_size, opts)
    resolved = resolve_inputs(inputs)
    print_notes(resolved.notes)
    if overlays:
        from steelscan.inference.writers import truth_class_note

        truths = [it.truth for it in resolved.images if it.truth is not None]
        note = truth_class_note(truths, predictor.classes)
        if note:
            print_notes([note])
    args = run_identity(
        engine=engine, gate=gate, tta=tta, batch_size=batch_size, overlays=overlays,
        channels_last=channels_last, bf16=bf16, fp16=fp16, int8=int8, device=device,
        coco="coco" in wanted,
    )  # fmt: skip
    outputs = _outputs(wanted, overlays, predictor, resolved, inputs)
    summary = _journaled_run(predictor, resolved, out, args, restart, outputs)
    report_run(summary, predictor.classes, out)


def check_options(gate: str | None, formats: str) -> tuple[str, ...]:
    """The checks ``predict`` and ``batch`` make before loading anything: the gate mode and the
    ``--format`` names (exit 2 on a bad one)."""
    from steelscan.cli.common import fail

    if gate is not None and gate not in ("hard", "soft", "none"):
        fail(f"--gate must be hard, soft or none, not {gate!r}")
    return _formats(formats)


def print_notes(notes: list[str]) -> None:
    for note in notes:
        typer.secho(f"note: {note}", fg=typer.colors.YELLOW, err=True)


def run_identity(**options: Any) -> dict[str, Any]:
    """The options that change a run's outputs, as the journal identifies the run by them (one
    list for ``predict`` and ``batch``: where the work runs changes no output)."""
    o = options
    args: dict[str, Any] = {"--engine": o["engine"], "--gate": o["gate"], "--tta": o["tta"]}
    args.update({"--batch-size": o["batch_size"], "--overlays": o["overlays"]})
    args.update({"--channels-last": o["channels_last"], "--bf16": o["bf16"], "--fp16": o["fp16"]})
    args.update({"--int8": o["int8"], "--device": o["device"]})
    if o["coco"]:  # its records carry component scores: another journal
        args["--format coco"] = True
    return args


def report_run(summary: RunSummary, classes: list[str], out: Path) -> None:
    """The lines at the end of a run; exit 1 when some image failed (the rest are written)."""
    from steelscan.inference.writers import ERRORS

    summary.print(classes, out)
    if summary.n_failed:
        typer.secho(
            f"{summary.n_failed} image(s) failed; see {out / ERRORS}",
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


def _formats(text: str) -> tuple[str, ...]:
    """``--format`` as names, or exit 2 before the model is loaded."""
    from steelscan.cli.common import fail
    from steelscan.inference.writers import parse_formats

    try:
        return parse_formats(text)
    except ValueError as exc:
        fail(str(exc))
    raise AssertionError("unreachable")  # fail() raises


@dataclass
class RunOutputs:
    """What a run writes: the ``--format`` names, overlays, and the COCO ids (with coco)."""

    formats: tuple[str, ...]
    overlays: bool
    coco_ids: Any = None

    @property
    def coco(self) -> bool:
        return "coco" in self.formats


def _outputs(
    formats: tuple[str, ...], overlays: bool, predictor: Any, resolved: Any, inputs: list[Path]
) -> RunOutputs:
    """The run's outputs; with coco its ids (a COCO dataset input's own ids), notes printed."""
    if "coco" not in formats:
        return RunOutputs(formats, overlays)
    from steelscan.inference.coco_results import coco_ids

    images = [(it.image_id, it.truth is not None) for it in resolved.images]
    ids = coco_ids(images, inputs, predictor.classes, predictor.class_ids)
    for note in ids.notes:
        typer.secho(f"note: {note}", fg=typer.colors.YELLOW, err=True)
    return RunOutputs(formats, overlays, ids)


def _journaled_run(
    predictor: Any,
    resolved: Any,
    out: Path,
    args: dict[str, Any],
    restart: bool,
    outputs: RunOutputs,
) -> RunSummary:
    """Open (or check) the journal in ``out``, run, assemble; a journal of another run is exit 2
    and Ctrl-C leaves a journal the same command continues."""
    from steelscan.cli.common import fail
    from steelscan.inference.journal import JournalError

    try:
        journal = _open_journal(out, predictor, resolved, args, restart)
    except JournalError as exc:
        fail(str(exc))
    try:
        with journal:
            return _run(predictor, resolved, journal, out, outputs)
    except KeyboardInterrupt:
        typer.secho(
            f"interrupted: {journal.done} of {len(resolved.images)} images are in the journal; "
            "run the same command again to continue",
            fg=typer.colors.YELLOW,
            err=True,
        )
        raise typer.Exit(130) from None
    except JournalError as exc:
        fail(str(exc))
    raise AssertionError("unreachable")  # fail() raises


def _open_journal(
    out: Path, predictor: Any, resolved: Any, args: dict[str, Any], restart: bool
) -> Any:
    """The journal of this run in ``out`` (:func:`~steelscan.inference.journal.open_run`), and
    the overlay folder when asked for."""
    from steelscan.inference.journal import open_run
    from steelscan.inference.writers import OVERLAY_DIR

    journal = open_run(
        out,
        bundle_dir=predictor.bundle.path,
        manifest=predictor.manifest,
        engine_label=predictor.engine_label,
        batch_size=predictor.batch_size,
        options=args,
        images=((it.image_id, str(it.path), it.truth is not None) for it in resolved.images),
        missing=resolved.missing,
        restart=restart,
    )
    if args["--overlays"]:
        (out / OVERLAY_DIR).mkdir(exist_ok=True)
    return journal


@dataclass
class RunSummary:
    """What a run did, for the lines printed at its end: the counts are over every image of the
    run (resumed ones included, recounted from the journal), the speed over this process's."""

    per_class: Counter[str] = field(default_factory=Counter)
    stage_ms: Counter[str] = field(default_factory=Counter)
    n_failed: int = 0
    n_ok: int = 0
    n_defective: int = 0
    n_here: int = 0  # inspected by this process (the rest came from the journal)
    seconds: float = 0.0

    def count(self, record: dict[str, Any]) -> None:
        """One image's record (from the journal) into the totals."""
        if record.get("error") is not None:
            self.n_failed += 1
            return
        self.n_ok += 1
        self.n_defective += bool(record["has_defect"])
        self.per_class.update(c["name"] for c in record["classes"] if c["present"])

    def timed(self, res: Any) -> None:
        """One result inspected by this process into the speed figures."""
        self.n_here += 1
        self.stage_ms.update(res.timings_ms)

    def print(self, classes: list[str], out: Path) -> None:
        typer.echo(
            f"images inspected: {self.n_ok}   defective: {self.n_defective}   "
            f"errors: {self.n_failed}"
        )
        for name in classes:
            typer.echo(f"  {name}: {self.per_class[name]}")
        n = self.n_here
        if n and self.seconds > 0:
            stages = ", ".join(f"{k} {v / n:.1f}" for k, v in self.stage_ms.items())
            typer.echo(f"speed: {n / self.seconds:.2f} img/s   mean ms per image: {stages}")
        typer.echo(f"outputs in {out}")


def _run(predictor: Any, resolved: Any, journal: Any, out: Path, outputs: RunOutputs) -> RunSummary:
    """Inspect what the journal does not hold yet, then assemble the outputs from it."""
    return run_journaled(
        resolved,
        journal,
        out,
        outputs,
        lambda summary: _inspect(predictor, resolved, journal, out, outputs, summary),
    )


def run_journaled(
    resolved: Any,
    journal: Any,
    out: Path,
    outputs: RunOutputs,
    inspect: Callable[[RunSummary], None],
) -> RunSummary:
    """The journaled run shared by ``predict`` and ``batch``: say what is left, let ``inspect``
    journal the missing results (locally or on Ray), then assemble the outputs from the
    journal."""
    from steelscan.inference.writers import output_files

    n = len(resolved.images)
    summary = RunSummary()
    if journal.finished:
        typer.echo(
            f"nothing to do: all {n} images were inspected by an earlier run of this command "
            f"(journal in {journal.dir}; --restart starts over)",
            err=True,
        )
    elif journal.done:
        typer.echo(
            f"resuming: {journal.done} of {n} images already inspected, {n - journal.done} to go "
            f"(journal in {journal.dir})",
            err=True,
        )
    if not journal.finished:
        for image_id, why in resolved.missing:
            typer.secho(f"error: {image_id}: {why}", fg=typer.colors.RED, err=True)
    if journal.done < n:
        start = time.perf_counter()
        inspect(summary)
        summary.seconds = time.perf_counter() - start
    journal.sync()
    complete = all((out / name).is_file() for name in output_files(outputs.formats))
    write = not (journal.finished and complete)
    assemble_outputs(out, resolved, journal, summary, outputs if write else None)
    if not journal.finished:
        journal.mark_finished()
    return summary


def _inspect(
    predictor: Any, resolved: Any, journal: Any, out: Path, outputs: RunOutputs, summary: RunSummary
) -> None:
    """Stream the inputs the journal lacks through the predictor, journaling each result.

    The stream restarts at a multiple of the batch size, so every image shares its forward pass
    with the same images as in an uninterrupted run (padding and batched kernels make results
    depend on the batch); the few results already journaled are not journaled again. With coco
    each record also carries its components' scores (from the raw probabilities)."""
    from tqdm import tqdm

    from steelscan.inference.coco_results import SCORES_KEY, component_scores
    from steelscan.inference.writers import error_record, result_record, write_overlay

    overlays = outputs.overlays
    gate_mode = predictor.postprocessor.params.gate_mode
    done = journal.done
    first = done - done % predictor.batch_size
    todo = resolved.images[first:]
    # Decoding and post-processing run in worker threads around the model (pipelined,
    # bounded queues: memory stays flat however many images there are).
    items = ((it.image_id, it.path) for it in todo)
    bar = tqdm(
        total=len(resolved.images),
        initial=first,
        unit="img",
        desc="predict",
        dynamic_ncols=True,
        mininterval=0.5 if sys.stderr.isatty() else 10.0,
    )
    stream = predictor.stream(items, keep_images=overlays, keep_raw=outputs.coco)
    for index, (item, pred) in enumerate(zip(todo, stream, strict=True), start=first):
        bar.update(1)
        if index < done:  # journaled before the kill; recomputed only to keep the batches
            continue
        files = []
        if pred.error is not None:
            record = error_record(item.image_id, item.path, pred.error)
            tqdm.write(typer.style(f"error: {pred.error}", fg=typer.colors.RED), file=sys.stderr)
        else:
            record = result_record(pred.result, item.path)
            if outputs.coco:
                record[SCORES_KEY] = component_scores(pred.result, pred.raw, gate_mode)
            if overlays and pred.image is not None:
                files.append(write_overlay(out, pred.result, pred.image, item.truth))
            summary.timed(pred.result)
        journal.append(index, record, files)
    bar.close()


def assemble_outputs(
    out: Path, resolved: Any, journal: Any, summary: RunSummary, outputs: RunOutputs | None
) -> None:
    """Write the final files from the journal, in input order, each renamed into place at the
    end (with ``outputs`` None only recount them: a finished run rerun writes nothing)."""
    from steelscan.inference.journal import JournalError
    from steelscan.inference.writers import TableWriter, error_record

    tables = None
    if outputs is not None:
        tables = TableWriter(out, formats=outputs.formats, coco_ids=outputs.coco_ids)
    try:
        for image_id, why in resolved.missing:
            _add(tables, summary, error_record(image_id, None, f"image not found: {why}"))
        n = 0
        for item, record in zip(resolved.images, journal.records(), strict=False):
            if record.get("image_id") != item.image_id:
                raise JournalError(
                    f"{journal.dir}: result #{n + 1} is for {record.get('image_id')!r} but input "
                    f"#{n + 1} is {item.image_id!r}; the journal is damaged: pass --restart"
                )
            _add(tables, summary, record)
            n += 1
        if n != len(resolved.images):
            raise JournalError(
                f"{journal.dir} holds {n} results for {len(resolved.images)} images; the journal "
                "is damaged: pass --restart"
            )
    except BaseException:
        if tables is not None:
            tables.discard()
        raise
    if tables is not None:
        tables.commit()


def _add(tables: Any, summary: RunSummary, record: dict[str, Any]) -> None:
    if tables is not None:
        tables.add(record)
    summary.count(record)


def register(app: typer.Typer) -> None:
    """Add ``predict`` to ``app``."""
    app.command("predict")(predict)
