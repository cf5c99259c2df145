"""`steelscan train`: train the classifier gate and the segmenter, write one model bundle."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from steelscan.cli.common import UserError

if TYPE_CHECKING:
    from steelscan.training.config import TrainConfig

TRAIN_HELP = """Train a two-stage model (presence classifier + segmenter) and write ONE bundle.

Settings come from --config (YAML, see steelscan/configs/*.yaml), then the options below, then
--set key=value (dotted keys, e.g. --set segmenter.loss=focal --set classifier.lr=1e-4).
Logs and checkpoints go to MODEL_DIR.runs/ beside the bundle; --resume continues from there.
At the end the bundle is tuned, exported to ONNX (fp32; int8 where it keeps the score) and every
engine is measured on the validation images, so `predict` picks the fastest (--no-export: skip).

\b
Multi-GPU on one machine (DDP, one process per GPU, launched for you):
  steelscan train DATA --out model --accelerator gpu --devices 4 --strategy ddp
\b
Multi-node (run the same command on every node; torchrun or SLURM set the ranks):
  torchrun --nnodes 2 --nproc-per-node 4 --node-rank $RANK --master-addr HOST \\
      -m steelscan train DATA --out model --devices 4 --num-nodes 2 --strategy ddp
\b
CPU check of the DDP path: --accelerator cpu --devices 2 --strategy ddp. More: docs/training.md
"""


def _parse_sets(items: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set {item!r}: expected key=value, e.g. segmenter.epochs=5")
        out[key.strip()] = value.strip()
    return out


def train_command(
    data: Path = typer.Argument(..., help="Dataset folder (Severstal layout, synthetic or VOC)."),
    out: Path = typer.Option(..., "--out", "-o", help="Model bundle folder to write."),
    config: Path | None = typer.Option(
        None, "--config", "-c", help="YAML training config (unknown keys are errors)."
    ),
    preset: str | None = typer.Option(
        None, "--preset", help="Start from a built-in config: default, demo or tiny."
    ),
    epochs: int | None = typer.Option(
        None, "--epochs", min=1, help="Epochs for both stages (overrides the config)."
    ),
    max_minutes: float | None = typer.Option(
        None, "--max-minutes", min=0.01, help="Time budget for the whole run, in minutes."
    ),
    seg_arch: str | None = typer.Option(None, "--seg-arch", help="unet, fpn or resunet."),
    encoder: str | None = typer.Option(
        None, "--encoder", help="Segmenter encoder (smp name, e.g. mobilenet_v2, resnet18)."
    ),
    encoder_weights: str | None = typer.Option(
        None,
        "--encoder-weights",
        help="imagenet or none (both stages), or a local weights file (segmenter encoder; "
        "use --set classifier.encoder_weights=PATH for the gate).",
    ),
    no_classifier: bool = typer.Option(False, "--no-classifier", help="Skip the gate."),
    no_segmenter: bool = typer.Option(False, "--no-segmenter", help="Skip the segmenter."),
    devices: str | None = typer.Option(
        None, "--devices", help="Devices per node: a number, or auto."
    ),
    num_nodes: int | None = typer.Option(None, "--num-nodes", min=1, help="Machines (DDP)."),
    strategy: str | None = typer.Option(
        None, "--strategy", help="Lightning strategy: auto, ddp, ddp_spawn, ..."
    ),
    accelerator: str | None = typer.Option(
        None, "--accelerator", help="cpu, gpu, cuda, mps or auto."
    ),
    resume: bool = typer.Option(
        False, "--resume", help="Continue from MODEL_DIR.runs/<stage>/checkpoints/last.ckpt."
    ),
    sets: list[str] = typer.Option(
        [], "--set", help="Override any config key: --set segmenter.loss=focal (repeatable)."
    ),
    no_export: bool = typer.Option(
        False, "--no-export", help="Skip the ONNX export and engine measurements at the end."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
) -> None:
    from steelscan.training.config import ConfigError

    try:
        cfg = _base_config(config, preset)
        o = _option_overrides(
            epochs=epochs,
            max_minutes=max_minutes,
            seg_arch=seg_arch,
            encoder=encoder,
            encoder_weights=encoder_weights,
            no_classifier=no_classifier,
            no_segmenter=no_segmenter,
            resume=resume,
            no_export=no_export,
            quiet=quiet,
        )
        for key, value in (
            ("devices", devices),
            ("num_nodes", num_nodes),
            ("strategy", strategy),
            ("accelerator", accelerator),
        ):
            if value is not None:
                o[key] = value
        o.update(_parse_sets(sets))
        cfg = cfg.with_overrides(o)
    except ConfigError as exc:
        raise UserError(str(exc)) from None
    _run(data, out, cfg)


def _base_config(config: Path | None, preset: str | None) -> TrainConfig:
    """The config the options then change: a YAML file, a preset or the library defaults."""
    from steelscan.training.config import TrainConfig

    if config is not None and preset is not None:
        raise UserError("use either --config or --preset, not both")
    if config is not None:
        return TrainConfig.from_yaml(config)
    if preset in (None, "default"):
        return TrainConfig()
    if preset in ("demo", "tiny"):
        return getattr(TrainConfig, preset)()
    raise UserError(f"--preset {preset!r}: expected default, demo or tiny")


def _option_overrides(
    *,
    epochs: int | None,
    max_minutes: float | None,
    seg_arch: str | None,
    encoder: str | None,
    encoder_weights: str | None,
    no_classifier: bool,
    no_segmenter: bool,
    resume: bool,
    no_export: bool,
    quiet: bool,
) -> dict[str, object]:
    """The named options as dotted config keys (applied before any --set)."""
    o: dict[str, object] = {}
    if epochs is not None:
        o["classifier.epochs"] = o["segmenter.epochs"] = epochs
    if max_minutes is not None:
        o["max_minutes"] = max_minutes
    if seg_arch is not None:
        o["segmenter.arch"] = seg_arch
    if encoder is not None:
        o["segmenter.encoder"] = encoder
    if encoder_weights is not None:
        w = None if encoder_weights.lower() == "none" else encoder_weights
        o["segmenter.encoder_weights"] = w
        if w in (None, "imagenet"):
            o["classifier.encoder_weights"] = w
    flags = {
        "classifier.enabled": not no_classifier,
        "segmenter.enabled": not no_segmenter,
        "export.enabled": not no_export,
        "progress": not quiet,
    }
    o.update({key: False for key, on in flags.items() if not on})
    if resume:
        o["resume"] = True
    return o


def _run(data: Path, out: Path, cfg: TrainConfig) -> None:
    import os

    from steelscan.training import train
    from steelscan.training.config import ConfigError

    try:
        bundle = train(data, out, cfg)
    except ConfigError as exc:
        raise UserError(str(exc)) from None
    if os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0":
        typer.echo(f"model bundle written to {bundle}")
        _print_engines(bundle)


def _print_engines(bundle: Path) -> None:
    """Which engine `steelscan predict` will pick on this machine, from the measurements."""
    from steelscan.bundle import load_bundle
    from steelscan.inference.engines import ENGINE_RECORDS, choose_engine

    if not (bundle / "manifest.json").is_file():
        return
    loaded = load_bundle(bundle)
    records = loaded.manifest.metrics.get(ENGINE_RECORDS) or []
    if not records:
        return
    choice = choose_engine(loaded, "auto", {})
    typer.echo(f"engines measured on the validation images: {len(records)}")
    typer.echo(f"--engine auto picks {choice.label} (batch {choice.batch_size}): {choice.reason}")


def register(app: typer.Typer) -> None:
    """Add ``steelscan train`` to ``app``."""
    app.command("train", help=TRAIN_HELP)(train_command)
