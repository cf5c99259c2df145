"""``steelscan serve``: the inspection API and web page under uvicorn.

Stopping (SIGTERM or Ctrl+C) drains: uvicorn closes the listening socket (new connections are
refused), closes idle keep-alive connections, lets every request it has already accepted run to
its response (a request still uploading, waiting for a worker or being inferred), waiting at most
``--drain-timeout`` seconds, and only then runs the app's shutdown. The exit status is 0 when
every accepted request was answered, 1 when the drain ran out of time and some were cut off.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import typer

from steelscan.cli.common import engine_options, fail


def register(app: typer.Typer) -> None:
    """Add ``serve`` to ``app``."""

    @app.command("serve")
    def serve(
        model_dir: Path = typer.Argument(..., help="Model bundle folder (`steelscan train`)."),
        host: str = typer.Option("127.0.0.1", help="Address to listen on."),
        port: int = typer.Option(8000, min=0, max=65535, help="Port to listen on."),
        engine: str = typer.Option(
            "auto",
            help="Runtime: auto (the fastest engine recorded as keeping the score), torch, or "
            "onnx / openvino after `steelscan export`.",
        ),
        max_upload_mb: float = typer.Option(
            20.0, min=0.001, help="Largest accepted request body, in MB (larger: 413)."
        ),
        max_queue: int = typer.Option(
            8, min=0, help="Requests that may wait for a worker; past that: 503 + Retry-After."
        ),
        workers: int = typer.Option(1, min=1, help="Inference threads (1 suits a CPU)."),
        max_batch: int = typer.Option(16, min=1, help="Most images in one batch request."),
        drain_timeout: float = typer.Option(
            30.0,
            min=0.0,
            help="On SIGTERM/Ctrl+C: seconds to let accepted requests finish before cutting "
            "them off.",
        ),
        log_level: str = typer.Option("info", help="uvicorn log level."),
        bf16: bool = typer.Option(
            False, "--bf16", help="bfloat16 where the CPU supports it (torch autocast, openvino)."
        ),
        fp16: bool = typer.Option(False, "--fp16", help="torch engine on CUDA: float16."),
        int8: bool = typer.Option(False, "--int8", help="onnx/openvino: run the int8 model."),
        channels_last: bool = typer.Option(False, "--channels-last", help="torch: NHWC layout."),
        device: str = typer.Option("auto", "--device", help="Device: auto, cpu, cuda, cuda:1."),
    ) -> None:
        """Serve the inspection API (/docs) and the web page (/) for one model bundle.

        Loads the model once, before listening: a missing or broken bundle exits with status 2.
        SIGTERM drains in-flight requests (at most --drain-timeout s) and exits 0; /metrics is
        for Prometheus.
        """
        from steelscan.service.app import ServiceConfig, create_app, load_service

        opts = engine_options(
            engine, device=device, channels_last=channels_last, bf16=bf16, fp16=fp16, int8=int8
        )
        try:
            service = load_service(model_dir, engine=engine, **opts)
        except (ValueError, TypeError, OSError, ImportError, RuntimeError, KeyError) as exc:
            fail(f"cannot load the model bundle {model_dir}: {exc}")
        config = ServiceConfig(
            max_upload_bytes=int(max_upload_mb * 1024 * 1024),
            max_batch=max_batch,
            workers=workers,
            max_queue=max_queue,
        )
        app_ = create_app(service, config)
        typer.echo(_engine_line(service.predictor), err=True)
        shown = f"[{host}]" if ":" in host else host
        typer.echo(
            f"steelscan: model {service.manifest.name} ({service.version}) loaded; "
            f"serving http://{shown}:{port}/ (API docs at /docs, metrics at /metrics)",
            err=True,
        )
        _run(app_, host=host, port=port, log_level=log_level, drain_timeout=drain_timeout)


def _run(app: Any, *, host: str, port: int, log_level: str, drain_timeout: float) -> None:
    """Serve until SIGTERM/SIGINT, drain, and exit 0 (every accepted request answered) or 1.

    ``uvicorn.run`` would do the same drain, but afterwards re-raises the signal it caught into
    the handler that was there before (the default one kills the process: status -15 for a
    clean stop), so the server is run here with a handler of our own underneath uvicorn's.
    """
    import uvicorn

    config = uvicorn.Config(
        app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=drain_timeout
    )
    server = uvicorn.Server(config)

    def stop(_sig: int, _frame: Any) -> None:  # before uvicorn's handler is in, and after it
        server.should_exit = True

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    server.run()
    if not server.started:  # e.g. the port is taken: uvicorn has logged why
        raise typer.Exit(3)
    cut_off = app.state.steelscan.metrics.cut_off
    if cut_off:
        typer.echo(
            f"steelscan: the drain ran out of time ({drain_timeout:g} s): {cut_off} accepted "
            "request(s) were cut off unanswered",
            err=True,
        )
        raise typer.Exit(1)
    typer.echo("steelscan: stopped; every accepted request was answered", err=True)


def _engine_line(predictor: Any) -> str:
    """Which engine and precision serve, and why that one (``auto`` says what it weighed)."""
    choice = predictor.engine_choice
    why = f" ({choice.reason})" if choice is not None else ""
    return f"engine: {predictor.engine_label}{why}"
