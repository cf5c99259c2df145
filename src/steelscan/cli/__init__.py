"""The command line: thin; each command calls one function of the library.

Each module here registers its own commands with :func:`register`, so commands can be written
independently. User errors (bad data, bad files) print a clear message and exit with status 2;
they never show a traceback.
"""

from __future__ import annotations

import sys

import typer

from steelscan import __version__
from steelscan.cli import (
    batch_cmd,
    data_cmds,
    demo_cmd,
    evaluate_cmd,
    export_cmd,
    predict_cmd,
    score_cmd,
    serve_cmd,
    train_cmd,
    tune_cmd,
)
from steelscan.cli.common import run_guarded

app = typer.Typer(
    name="steelscan",
    help="Steel strip flaw detection: data, training, tuning, evaluation, inspection and service.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"steelscan {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Steel strip flaw detection."""


for _module in (
    data_cmds,
    score_cmd,
    train_cmd,
    tune_cmd,
    predict_cmd,
    batch_cmd,
    evaluate_cmd,
    demo_cmd,
    export_cmd,
    serve_cmd,
):
    _module.register(app)


def main(argv: list[str] | None = None) -> None:
    run_guarded(app, argv if argv is not None else sys.argv[1:])
