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


# Filesystem errors a user causes by pointing a command at the wrong path (``--out`` naming a
# file, a read-only folder): one line naming the path, exit 2, like any other user error.
PATH_ERRORS: tuple[type[OSError], ...] = (
    FileExistsError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
)


def path_error_message(exc: OSError) -> str:
    """``PATH: what is wrong`` for one of :data:`PATH_ERRORS`."""
    where = exc.filename if exc.filename is not None else "a path"
    what = (exc.strerror or type(exc).__name__).lower()
    if isinstance(exc, (FileExistsError, NotADirectoryError)):
        what += " (a file stands where a folder is needed)"
    return f"{where}: {what}"


def fail(message: str, code: int = 2) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


# Packages of the `steelscan[train]` extra: the runtime (predict/score/serve on onnx or openvino)
# runs without them, and a command that needs them says how to install them.
TRAIN_PACKAGES = (
    "torch",
    "torchvision",
    "timm",
    "segmentation_models_pytorch",
    "lightning",
    "albumentations",
    "onnx",
    "tensorboard",
)
TRAIN_EXTRA_HINT = 'pip install "steelscan[train]"'


def _user_error_types() -> tuple[type[BaseException], ...]:
    """User-error types of the heavier layers, imported only once an error has happened (and
    only those installed: the training layers are an optional extra)."""
    from steelscan.bundle import BundleError
    from steelscan.inference.predictor import WrongImageSize

    found: list[type[BaseException]] = [BundleError, WrongImageSize]
    # An error of a layer that was never imported cannot have been raised: look only at loaded
    # modules, so a user error on the runtime path never imports torch just to be reported.
    for module, name in (
        ("steelscan.models.pretrained", "PretrainedWeightsError"),
        ("steelscan.training.config", "ConfigError"),
    ):
        loaded = sys.modules.get(module)
        if loaded is not None and hasattr(loaded, name):
            found.append(getattr(loaded, name))
    return USER_ERRORS + tuple(found)


def missing_extra(exc: BaseException) -> str | None:
    """The install hint when ``exc`` is a missing package of the training extra."""
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        if exc.name.split(".")[0] in TRAIN_PACKAGES:
            return (
                f"this needs {exc.name.split('.')[0]}, which is part of the training extra and "
                f"is not installed: {TRAIN_EXTRA_HINT} (predict, score, evaluate and serve run "
                "without it on --engine onnx|openvino)"
            )
    return None


def run_guarded(app: typer.Typer, argv: list[str]) -> None:
    """Run the typer app; user errors become one red line and exit code 2."""
    try:
        app(args=argv, standalone_mode=True)
    except Exception as exc:
        hint = missing_extra(exc)
        if hint is not None:
            typer.secho(f"error: {hint}", fg=typer.colors.RED, err=True)
            sys.exit(2)
        if isinstance(exc, PATH_ERRORS):
            typer.secho(f"error: {path_error_message(exc)}", fg=typer.colors.RED, err=True)
            sys.exit(2)
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
