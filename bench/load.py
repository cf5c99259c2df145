"""Bounded load test of ``steelscan serve`` on loopback: throughput, latency percentiles, errors.

    .venv/bin/python bench/load.py [--model MODEL_DIR] [--clients 4 16] [--requests 20]
                                   [--runs 3] [--max-queue 8] [--write]

Starts the real server as a subprocess on 127.0.0.1 (a free port), then for each client count
runs ``clients`` concurrent clients that each send exactly ``--requests`` inspection requests, one
after another (POST /v1/inspect, real Severstal images from ../shared, resized to the model's size
when it differs; synthetic images without ../shared). Each scenario is repeated ``--runs`` times;
the median run (by throughput) is reported. Traffic never leaves 127.0.0.1 and every loop is
bounded by its request count.

Pass/fail, as the service promises: at 4 clients no request may fail; at 16 the only failures
allowed are 503 answers that carry ``Retry-After``. The exit status is 1 when that is broken.

Without ``--model`` a tiny model is trained first with the project's own code on synthetic
full-size (256x1600) images (a few minutes on a CPU) and kept under ``runs/load-model``.
``--write`` replaces the "## Service load test" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import _report  # bench/_report.py: shared machine name and doc writing
import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("STEELSCAN_SHARED", REPO.parent / "shared"))
DOC = REPO / "docs" / "benchmarks.md"
SECTION = "## Service load test"


@dataclass
class Scenario:
    clients: int
    requests: int
    wall_s: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)  # successful requests
    busy_ms: list[float] = field(default_factory=list)  # 503 answers
    statuses: dict[str, int] = field(default_factory=dict)
    busy_without_retry_after: int = 0
    transport_errors: int = 0

    @property
    def ok(self) -> int:
        return self.statuses.get("200", 0)

    @property
    def throughput(self) -> float:
        return self.ok / self.wall_s if self.wall_s else 0.0

    def pct(self, q: float, values: list[float] | None = None) -> float:
        v = self.latencies_ms if values is None else values
        return float(np.percentile(v, q)) if v else float("nan")

    def failures(self) -> int:
        return self.clients * self.requests - self.ok

    def acceptable(self, strict: bool) -> bool:
        """strict: nothing may fail; otherwise only 503 + Retry-After may."""
        if self.transport_errors or self.busy_without_retry_after:
            return False
        if strict:
            return self.failures() == 0
        return self.failures() == self.statuses.get("503", 0)


# -- model and images -----------------------------------------------------------------------
def ensure_model(model: Path | None) -> Path:
    if model is not None:
        if not (model / "manifest.json").is_file():
            sys.exit(f"error: {model}: not a model bundle (no manifest.json)")
        return model
    out = REPO / "runs" / "load-model"
    if (out / "manifest.json").is_file():
        return out
    from steelscan.data.synthetic import synthesize
    from steelscan.training.config import TrainConfig
    from steelscan.training.train import train

    print("training a tiny full-size model for the load test (once) ...", flush=True)
    data = synthesize(REPO / "runs" / "load-data", n=24, seed=3, progress=True)
    return Path(train(data, out, TrainConfig.tiny()))


def load_images(model: Path, n: int = 8) -> tuple[list[tuple[str, bytes]], str]:
    """Encoded JPEGs at the model's size: real ones where ../shared has them."""
    from PIL import Image

    meta = json.loads((model / "manifest.json").read_text())
    size = (meta["image_width"], meta["image_height"])
    src = sorted((SHARED / "data" / "severstal" / "images").glob("*.jpg"))[:n]
    origin = "real Severstal images from ../shared"
    if not src:
        from steelscan.data.synthetic import synthesize

        root = synthesize(
            Path(tempfile.mkdtemp()), n=n, seed=7, height=size[1], width=size[0], progress=False
        )
        src = sorted((root / "train_images").glob("*.jpg"))
        origin = "synthetic images (../shared absent)"
    images = []
    for p in src:
        with Image.open(p) as im:
            if im.size == size:
                images.append((p.name, p.read_bytes()))
                continue
            buf = io.BytesIO()
            im.convert("RGB").resize(size, Image.Resampling.BILINEAR).save(buf, "JPEG", quality=95)
            images.append((p.name, buf.getvalue()))
            origin = f"real Severstal images resized to {size[0]}x{size[1]}"
    return images, origin


# -- server ---------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(
    model: Path, port: int, max_queue: int, workers: int, engine: str = "auto"
) -> subprocess.Popen:
    cmd = [
        sys.executable, "-m", "steelscan", "serve", str(model), "--host", "127.0.0.1",
        "--port", str(port), "--max-queue", str(max_queue), "--workers", str(workers),
        "--log-level", "warning", "--engine", engine,
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=REPO)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"error: the server exited with status {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    proc.terminate()
    sys.exit("error: the server did not answer /health within 180 s")


# -- load -----------------------------------------------------------------------------------
async def run_scenario(url: str, images: list[tuple[str, bytes]], sc: Scenario) -> Scenario:
    limits = httpx.Limits(max_connections=sc.clients, max_keepalive_connections=sc.clients)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:

        async def one_client(cid: int) -> None:
            for i in range(sc.requests):  # bounded: a fixed number of requests per client
                name, data = images[(cid + i) % len(images)]
                t0 = time.perf_counter()
                try:
                    r = await client.post(
                        "/v1/inspect",
                        content=data,
                        headers={"Content-Type": "image/jpeg"},
                        params={"image_id": name},
                    )
                except httpx.TransportError:
                    sc.transport_errors += 1
                    continue
                ms = (time.perf_counter() - t0) * 1000
                key = str(r.status_code)
                sc.statuses[key] = sc.statuses.get(key, 0) + 1
                if r.status_code == 200:
                    sc.latencies_ms.append(ms)
                elif r.status_code == 503:
                    sc.busy_ms.append(ms)
                    if not r.headers.get("Retry-After", "").isdigit():
                        sc.busy_without_retry_after += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(one_client(c) for c in range(sc.clients)))
        sc.wall_s = time.perf_counter() - t0
    return sc


def median_run(runs: list[Scenario]) -> Scenario:
    return sorted(runs, key=lambda s: s.throughput)[len(runs) // 2]


# -- report ---------------------------------------------------------------------------------
def machine() -> str:
    import torch

    cpu = _report.cpu_name()
    return (
        f"{cpu}, {os.cpu_count()} cores (shared), Python {platform.python_version()}, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), CPU inference"
    )


def report(
    results: dict[int, list[Scenario]], args: argparse.Namespace, meta: dict[str, str]
) -> str:
    lines = [
        SECTION,
        "",
        f"Command: `.venv/bin/python bench/load.py {meta['argv']}`  ",
        f"Machine: {meta['machine']}  ",
        f"Date: {meta['date']}; 1-minute load average at start: {meta['load']}  ",
        f"Model: {meta['model']}; images: {meta['images']}.  ",
        f"Server: `steelscan serve` on 127.0.0.1, {args.workers} inference worker(s), queue bound "
        f"{args.max_queue} (so {args.workers + args.max_queue} requests running or waiting at "
        "most); client and server share the machine's cores.",
        "",
        f"Each client sends {args.requests} requests (POST /v1/inspect, raw JPEG body) one after "
        f"another; median of {args.runs} runs by throughput. Latency is per successful request, "
        "as the client sees it (queueing included). 503 answers are refusals by the bounded "
        "queue, each checked to carry `Retry-After`.",
        "",
        "| clients | requests | ok | 503 (with Retry-After) | other errors | throughput (ok/s) "
        "| p50 ms | p95 ms | p99 ms | p50 of 503s ms |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for clients, runs in results.items():
        s = median_run(runs)
        busy = s.statuses.get("503", 0)
        other = s.failures() - busy
        busy_p50 = f"{s.pct(50, s.busy_ms):.0f}" if s.busy_ms else "–"
        lines.append(
            f"| {clients} | {clients * s.requests} | {s.ok} | {busy} "
            f"({busy - s.busy_without_retry_after}) | {other} | {s.throughput:.2f} "
            f"| {s.pct(50):.0f} | {s.pct(95):.0f} | {s.pct(99):.0f} | {busy_p50} |"
        )
    verdicts = []
    for clients, runs in results.items():
        strict = clients <= 4
        good = all(r.acceptable(strict) for r in runs)
        rule = "no failures" if strict else "only 503 + Retry-After"
        verdicts.append(f"{clients} clients: {rule} — {'met' if good else 'NOT met'} in every run")
    lines += ["", "Checks: " + "; ".join(verdicts) + ".", ""]
    return "\n".join(lines)


def write_section(text: str) -> None:
    _report.write_section(SECTION, text)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", type=Path, default=None, help="model bundle (default: train tiny)")
    ap.add_argument("--clients", type=int, nargs="+", default=[4, 16])
    ap.add_argument("--requests", type=int, default=20, help="requests per client")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--max-queue", type=int, default=8)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--engine", default="auto", help="serve --engine (auto: what serve picks)")
    ap.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = ap.parse_args()

    model = ensure_model(args.model)
    images, origin = load_images(model)
    load = f"{os.getloadavg()[0]:.1f}"
    port = free_port()
    proc = start_server(model, port, args.max_queue, args.workers, args.engine)
    url = f"http://127.0.0.1:{port}"
    results: dict[int, list[Scenario]] = {}
    try:
        info = httpx.get(f"{url}/v1/model", timeout=10).json()
        # One warm-up request so the first scenario does not pay for lazy initialisation.
        name, data = images[0]
        httpx.post(f"{url}/v1/inspect", content=data, timeout=120)
        for clients in args.clients:
            results[clients] = []
            for run in range(args.runs):
                sc = asyncio.run(run_scenario(url, images, Scenario(clients, args.requests)))
                results[clients].append(sc)
                print(
                    f"{clients:>3} clients run {run + 1}: {sc.throughput:6.2f} ok/s, "
                    f"p50 {sc.pct(50):7.0f} ms, p99 {sc.pct(99):7.0f} ms, statuses {sc.statuses}, "
                    f"transport errors {sc.transport_errors}",
                    flush=True,
                )
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()

    shown_model = model.relative_to(REPO) if model.is_relative_to(REPO) else model
    meta = {
        "argv": " ".join(sys.argv[1:]),
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d"),
        "load": load,
        "model": (
            f"`{shown_model}` ({info['name']} {info['version']}: "
            f"{(info.get('classifier') or {}).get('arch')} gate + "
            f"{(info.get('segmenter') or {}).get('arch')} segmenter, "
            f"{info['image_width']}x{info['image_height']})"
        ),
        "images": f"{len(images)} {origin}",
    }
    text = report(results, args, meta)
    print()
    print(text)
    if args.write:
        write_section(text)
        print(f"wrote the '{SECTION}' section of {DOC}")
    ok = all(r.acceptable(strict=clients <= 4) for clients, runs in results.items() for r in runs)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
