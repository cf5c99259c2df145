"""Running a real ``steelscan serve`` process for tests (used by conftest and test modules)."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve_process(args: list[str], log: Path) -> Iterator[str]:
    """A real ``steelscan serve ARGS`` process on a free 127.0.0.1 port; yields its base URL
    once /health answers, and stops it afterwards. Server output goes to ``log``."""
    import subprocess
    import sys
    import time

    import httpx

    port = _free_port()
    cmd = [sys.executable, "-m", "steelscan", "serve", *args, "--port", str(port)]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"steelscan serve exited with {proc.returncode}:\n{log.read_text()}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"steelscan serve did not answer /health in time:\n{log.read_text()}")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def start_serve(args: list[str], log: Path) -> tuple[subprocess.Popen, str]:
    """Start a real ``steelscan serve ARGS`` on a free 127.0.0.1 port and wait for /health;
    returns the process and its base URL. The caller stops it (:func:`stop_serve`), which lets a
    test send it signals of its own. Server output goes to ``log``."""
    import sys
    import time

    import httpx

    port = _free_port()
    cmd = [sys.executable, "-m", "steelscan", "serve", *args, "--port", str(port)]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        if proc.poll() is not None:
            pytest.fail(f"steelscan serve exited with {proc.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            stop_serve(proc)
            pytest.fail(f"steelscan serve did not answer /health in time:\n{log.read_text()}")
        time.sleep(0.3)


def stop_serve(proc: subprocess.Popen) -> None:
    """Stop a server from :func:`start_serve` if it still runs (SIGTERM, then SIGKILL)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
