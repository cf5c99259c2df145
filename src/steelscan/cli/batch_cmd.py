"""`steelscan batch`: ``steelscan predict`` on a Ray cluster, with the same outputs.

The driver (this process) resolves the inputs, keeps the same journal in ``--out`` as
``predict`` (:mod:`steelscan.inference.journal`: the same identity, the same records) and
assembles the final files with ``predict``'s own code; the images are inspected by a pool of
Ray Data actors (:mod:`steelscan.inference.distributed`). A killed actor is restarted and its
unfinished work retried; a killed driver is resumed by running the same command again. The
journal's identity leaves out where the work ran, so a job started here can be finished by
``steelscan predict`` with the same arguments and the other way round.

Exit status as ``predict``: 0 every image inspected, 1 some failed (listed in errors.csv), 2
nothing ran (broken model, bad input, a journal of another run, no Ray cluster, actors that
cannot start).
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import typer


def batch(
    model_dir: Path = typer.Argument(..., help="Trained model bundle folder (manifest.json)."),
    inputs: list[str] = typer.Argument(
        ...,
        help="What predict takes (images, folders, CSVs of ImageIds, datasets), CSV or Parquet "
        "manifests with a path/uri column, and URIs (s3://, gs://, hdfs://, file://...) of "
        "images, folders or manifests.",
    ),
    out: Path = typer.Option(..., "--out", help="Folder for submission.csv, predictions.jsonl..."),
    ray_address: str = typer.Option(
        "auto",
        "--ray",
        metavar="ADDRESS",
        help="Ray cluster: auto (RAY_ADDRESS or the cluster started on this machine with "
        "`ray start`), HOST:PORT, ray://HOST:10001, or local (start one inside this command).",
    ),
    actors: int | None = typer.Option(
        None, "--actors", min=1, help="Actor pool size (default: as many as the cluster fits)."
    ),
    cpus_per_actor: float = typer.Option(1.0, "--cpus-per-actor", min=0.0, help="CPUs per actor."),
    gpus_per_actor: float = typer.Option(0.0, "--gpus-per-actor", min=0.0, help="GPUs per actor."),
    engine: str = typer.Option(
        "auto",
        "--engine",
        help="auto (as predict; with GPUs: torch on cuda), torch, onnx or openvino.",
    ),
    gate: str | None = typer.Option(None, "--gate", help="Override the gate: hard|soft|none."),
    tta: bool = typer.Option(False, "--tta", help="Average the segmenter over flips (3x slower)."),
    batch_size: int | None = typer.Option(
        None, "--batch-size", min=1, help="Images per forward pass (default: the engine's best)."
    ),
    channels_last: bool = typer.Option(False, "--channels-last", help="channels_last layout."),
    bf16: bool = typer.Option(False, "--bf16", help="bfloat16 (torch autocast, openvino)."),
    fp16: bool = typer.Option(False, "--fp16", help="torch engine on CUDA: float16 autocast."),
    int8: bool = typer.Option(False, "--int8", help="onnx/openvino engine: the int8 model."),
    device: str = typer.Option("auto", "--device", help="Device on the actors: auto, cpu, cuda."),
    restart: bool = typer.Option(
        False, "--restart", help="Discard the journal in --out and start over."
    ),
    formats: str = typer.Option(
        "csv,jsonl",
        "--format",
        help="Comma-separated outputs, as predict: csv, jsonl, coco. errors.csv always.",
    ),
) -> None:
    """Inspect images on a Ray cluster; the outputs of `steelscan predict`, each image once.

    Writes submission.csv, predictions.jsonl, errors.csv (and the COCO files with --format
    coco) into --out, byte for byte what `steelscan predict` writes for the same inputs and
    options. Resumable: run the same command
    again after a kill to continue (--restart starts over). Exit 0: every image inspected; 1:
    some failed (see errors.csv); 2: nothing ran.
    """
    from steelscan.cli.common import engine_options
    from steelscan.cli.predict_cmd import check_options, print_notes, report_run, run_identity
    from steelscan.inference.distributed import (
        PoolOptions,
        resolve_batch_inputs,
    )

    _require_ray()
    wanted = check_options(gate, formats)
    opts = engine_options(
        engine, device=device, channels_last=channels_last, bf16=bf16, fp16=fp16, int8=int8
    )
    # the actors' GPUs: `auto` on this (driver) machine says nothing about theirs
    opts["device"] = "cuda" if gpus_per_actor > 0 and device == "auto" else opts["device"]
    bundle, config = _actor_config(model_dir, engine, opts, batch_size, gate, tta, cpus_per_actor)
    resolved = resolve_batch_inputs(inputs)
    print_notes(resolved.notes)
    args = run_identity(
        engine=engine, gate=gate, tta=tta, batch_size=batch_size, overlays=False,
        channels_last=channels_last, bf16=bf16, fp16=fp16, int8=int8, device=device,
        coco="coco" in wanted,
    )  # fmt: skip
    config.coco = "coco" in wanted
    outputs = _outputs(wanted, bundle, resolved, inputs)
    pool = PoolOptions(ray_address, actors, cpus_per_actor, gpus_per_actor)
    summary = _journaled_run(bundle, config, resolved, out, args, restart, (pool, outputs))
    report_run(summary, list(bundle.manifest.classes), out)


def _require_ray() -> None:
    """Exit 2 with the install line when the ``ray`` extra is missing."""
    from steelscan.cli.common import fail
    from steelscan.inference.distributed import BatchError, require_ray

    try:
        require_ray()
    except BatchError as exc:
        fail(str(exc))


def _actor_config(
    model_dir: Path,
    engine: str,
    opts: dict[str, Any],
    batch_size: int | None,
    gate: str | None,
    tta: bool,
    cpus_per_actor: float,
) -> tuple[Any, Any]:
    """Load and check the bundle here (exit 2 before any cluster work) and resolve the engine
    once, so every actor runs the same engine, precision and batch size."""
    from steelscan.bundle import load_bundle
    from steelscan.cli.common import fail
    from steelscan.imageio import max_pixels
    from steelscan.inference.distributed import ActorConfig
    from steelscan.inference.engines import choose_engine, runnable_here

    if not model_dir.is_dir():
        fail(f"{model_dir}: model directory not found")
    try:
        bundle = load_bundle(model_dir)
    except (ValueError, OSError) as exc:  # BundleError is a ValueError
        fail(f"{model_dir}: cannot load the model bundle: {exc}")
    choice = choose_engine(bundle, engine, opts)
    why = runnable_here(bundle, choice.engine, choice.options)
    if why is not None and "bundle" in why:  # packages and CPU flags are the nodes' business
        fail(f"{model_dir}: cannot run the {choice.engine} engine: {why}")
    options = dict(choice.options)
    if choice.engine in ("onnx", "openvino"):
        options["threads"] = max(1, round(cpus_per_actor))  # the actor's share, not the node
    size = max(1, int(batch_size or choice.batch_size or 4))  # as Predictor resolves it
    config = ActorConfig(choice.engine, options, size, gate, tta, max_pixels(), choice.label)
    why = f" ({choice.reason})" if engine == "auto" else ""
    typer.echo(f"engine: {choice.label}, batch {size}{why}", err=True)
    return bundle, config


def _outputs(formats: tuple[str, ...], bundle: Any, resolved: Any, inputs: list[str]) -> Any:
    """What the run writes (``predict``'s outputs record); with coco its ids, notes printed."""
    from steelscan.cli.predict_cmd import RunOutputs
    from steelscan.inference.distributed import is_uri

    if "coco" not in formats:
        return RunOutputs(formats, False)
    from steelscan.inference.coco_results import coco_ids

    manifest = bundle.manifest
    images = [(it.image_id, it.labelled) for it in resolved.images]
    local = [Path(p) for p in inputs if not is_uri(p)]  # a COCO dataset input keeps its ids
    ids = coco_ids(images, local, list(manifest.classes), list(manifest.class_ids))
    for note in ids.notes:
        typer.secho(f"note: {note}", fg=typer.colors.YELLOW, err=True)
    return RunOutputs(formats, False, ids)


def _journaled_run(
    bundle: Any,
    config: Any,
    resolved: Any,
    out: Path,
    args: dict[str, Any],
    restart: bool,
    where: tuple[Any, Any],
) -> Any:
    """Open (or check) the journal, run, assemble; as ``predict`` does, with clear exits."""
    from steelscan.cli.common import fail
    from steelscan.inference.distributed import BatchError
    from steelscan.inference.journal import JournalError

    try:
        journal = _open_journal(out, bundle, config, resolved, args, restart)
    except JournalError as exc:
        fail(str(exc))
    try:
        with journal:
            return _run(bundle, config, resolved, journal, out, *where)
    except KeyboardInterrupt:
        typer.secho(
            f"interrupted: {journal.done} of {len(resolved.images)} images are in the journal; "
            "run the same command again to continue",
            fg=typer.colors.YELLOW,
            err=True,
        )
        raise typer.Exit(130) from None
    except (JournalError, BatchError) as exc:
        fail(str(exc))
    finally:
        _shutdown_ray()
    raise AssertionError("unreachable")  # fail() raises


def _open_journal(
    out: Path, bundle: Any, config: Any, resolved: Any, args: dict[str, Any], restart: bool
) -> Any:
    """The journal of this run in ``out``, with ``predict``'s identity."""
    from steelscan.inference.journal import open_run

    return open_run(
        out,
        bundle_dir=bundle.path,
        manifest=bundle.manifest,
        engine_label=config.label,
        batch_size=config.batch_size,
        options=args,
        images=((it.image_id, it.source, it.labelled) for it in resolved.images),
        missing=resolved.missing,
        restart=restart,
    )


def _run(
    bundle: Any, config: Any, resolved: Any, journal: Any, out: Path, pool: Any, outputs: Any
) -> Any:
    """Inspect on Ray what the journal lacks, then assemble the outputs with predict's code."""
    from steelscan.cli.predict_cmd import run_journaled

    return run_journaled(
        resolved,
        journal,
        out,
        outputs,
        lambda summary: _inspect_on_ray(bundle, config, resolved, journal, pool, summary),
    )


def _inspect_on_ray(
    bundle: Any, config: Any, resolved: Any, journal: Any, pool: Any, summary: Any
) -> None:
    """Connect, run the actor pool over the inputs the journal lacks, journal each result as
    it streams back in input order."""
    from tqdm import tqdm

    from steelscan.inference.distributed import bundle_payload, connect, pool_size, ray_records

    resources = connect(pool.address)
    size, note = pool_size(resources, pool)
    if note:
        typer.secho(f"note: {note}", fg=typer.colors.YELLOW, err=True)
    typer.echo(
        f"ray: {size} actor(s) of {pool.cpus_per_actor:g} CPU, {pool.gpus_per_actor:g} GPU on a "
        f"cluster of {resources.get('CPU', 0):g} CPU, {resources.get('GPU', 0):g} GPU",
        err=True,
    )
    pool.actors = size
    files = bundle_payload(bundle.path, bundle.manifest)
    bar = tqdm(
        total=len(resolved.images),
        initial=journal.done,
        unit="img",
        desc="batch",
        dynamic_ncols=True,
        mininterval=0.5 if sys.stderr.isatty() else 10.0,
    )
    for index, record in ray_records(resolved.images, files, config, pool, start=journal.done):
        bar.update(1)
        if record.get("error") is not None:
            tqdm.write(
                typer.style(f"error: {record['error']}", fg=typer.colors.RED), file=sys.stderr
            )
        else:
            summary.timed(SimpleNamespace(timings_ms=record.get("timings_ms") or {}))
        journal.append(index, record)
    bar.close()


def _shutdown_ray() -> None:
    """Leave the cluster (its actors go with this driver); nothing when Ray was never used."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()


def register(app: typer.Typer) -> None:
    """Add ``batch`` to ``app``."""
    app.command("batch")(batch)
