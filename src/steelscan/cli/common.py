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
    from steelscan.inference.inspector import WrongImageSize
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
