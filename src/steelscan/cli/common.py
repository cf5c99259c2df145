"""Shared CLI plumbing: turning user errors into clear messages and exit codes."""

from __future__ import annotations

import sys

import typer

from steelscan.data.records import DataError
from steelscan.imageio import ImageReadError


class UserError(Exception):
    """A problem the user can fix (bad argument, missing file); printed without a traceback."""


USER_ERRORS: tuple[type[BaseException], ...] = (
    UserError,
    DataError,
    ImageReadError,
    FileNotFoundError,
)


def fail(message: str, code: int = 2) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _user_error_types() -> tuple[type[BaseException], ...]:
    """User-error types of the heavier layers, imported only once an error has happened."""
    from steelscan.bundle import BundleError
    from steelscan.inference.predictor import WrongImageSize
    from steelscan.models.pretrained import PretrainedWeightsError
    from steelscan.training.config import ConfigError

    return USER_ERRORS + (BundleError, PretrainedWeightsError, ConfigError, WrongImageSize)


def run_guarded(app: typer.Typer, argv: list[str]) -> None:
    """Run the typer app; user errors become one red line and exit code 2."""
    try:
        app(args=argv, standalone_mode=True)
    except Exception as exc:
        if not isinstance(exc, _user_error_types()):
            raise
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(2)


def engine_options(
    engine: str,
    *,
    device: str = "auto",
    channels_last: bool = False,
    bf16: bool = False,
    fp16: bool = False,
    int8: bool = False,
) -> dict:
    """The engine keyword arguments for the precision/layout flags, or a clear error for an
    unknown engine or a flag that does not apply to it (shared by ``predict``, ``serve`` and
    ``evaluate``, so all three accept the same)."""
    from steelscan.inference.engines import available_engines

    names = ["auto", *available_engines()]
    if engine not in names:
        fail(f"unknown engine {engine!r}; choose one of: {', '.join(names)}")
    opts: dict = {"device": device}
    if bf16 and fp16:
        fail("choose one of --bf16 and --fp16")
    if engine == "auto":
        if channels_last or bf16 or fp16 or int8:
            fail(
                "--engine auto picks the precision itself; name an engine "
                "(--engine torch|onnx|openvino) to force --bf16, --fp16, --int8 or --channels-last"
            )
        return opts
    if engine == "torch":
        opts.update(channels_last=channels_last, bf16=bf16, fp16=fp16)
    elif engine == "openvino" and bf16 and not channels_last:
        opts["precision"] = "bf16"
    elif channels_last or bf16 or fp16:
        fail("--channels-last and --fp16 apply to the torch engine, --bf16 to torch and openvino")
    if int8:
        if engine not in ("onnx", "openvino"):
            fail("--int8 applies to the onnx and openvino engines (after `steelscan export`)")
        opts["int8"] = True
    return opts
