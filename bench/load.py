"""Bounded load test of ``steelscan serve`` on loopback: throughput, latency percentiles, errors.

    .venv/bin/python bench/load.py [--model MODEL_DIR] [--clients 4 16] [--requests 20]
                                   [--runs 3] [--max-queue 8] [--write]
    .venv/bin/python bench/load.py --soak-minutes 10 [--clients 4] [--write]

Starts the real server as a subprocess on 127.0.0.1 (a free port), then for each client count
runs ``clients`` concurrent clients that each send exactly ``--requests`` inspection requests, one
after another (POST /v1/inspect, real Severstal images from ../shared, resized to the model's size
when it differs; synthetic images without ../shared). Each scenario is repeated ``--runs`` times;
the median run (by throughput) is reported. Traffic never leaves 127.0.0.1 and every loop is
bounded by its request count.

Pass/fail, as the service promises: at 4 clients no request may fail; at 16 the only failures
allowed are 503 answers that carry ``Retry-After``. The exit status is 1 when that is broken.

Soak (``--soak-minutes M``, e.g. ``--soak-minutes 10 --clients 4 --write``): the given number of
clients (default 4) send back to back for M minutes, bounded by the clock. It records the total
requests, errors (must be 0), p50/p99 latency and the server's resident memory (VmRSS from
/proc/PID/status) once loaded, at the start, every tenth of the run and at the end; checks that
the server's own ``/metrics`` count of answered requests equals the client's; and stops the
server with SIGTERM, which must drain and exit 0. The exit status is 1 when any of that fails.

Without ``--model`` a tiny model is trained first with the project's own code on synthetic
full-size (256x1600) images (a few minutes on a CPU) and kept under ``runs/load-model``.
``--write`` replaces the "## Service load test" (or, soaking, "## Service soak test") section of
docs/benchmarks.md.
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
SOAK_SECTION = "## Service soak test"


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


# -- soak -----------------------------------------------------------------------------------
@dataclass
class Soak:
    """``clients`` clients sending back to back for ``minutes``; the server's memory over time."""

    clients: int
    minutes: float
    rss_loaded_kib: int = 0  # after loading the model, before the warm-up request
    wall_s: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)  # successful requests
    statuses: dict[str, int] = field(default_factory=dict)
    transport_errors: int = 0
    rss_kib: list[tuple[float, int]] = field(default_factory=list)  # (seconds in, VmRSS)
    load_end: str = ""
    served_ok: int | None = None  # the server's own count of 200s on /v1/inspect (/metrics)
    exit_status: int | None = None  # after SIGTERM at the end

    @property
    def ok(self) -> int:
        return self.statuses.get("200", 0)

    @property
    def requests(self) -> int:
        return sum(self.statuses.values()) + self.transport_errors

    @property
    def errors(self) -> int:
        return self.requests - self.ok

    def pct(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")

    def metrics_agree(self) -> bool:
        return self.served_ok == self.ok + 1  # + the warm-up request

    def acceptable(self) -> bool:
        return self.errors == 0 and self.ok > 0 and self.metrics_agree() and self.exit_status == 0


def rss_kib(pid: int) -> int:
    """The resident memory of process ``pid`` (VmRSS in /proc/PID/status), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


async def _sample_rss(soak: Soak, pid: int, t0: float, deadline: float, every_s: float) -> None:
    while (now := time.perf_counter()) < deadline:  # the last sample is taken after the clients
        soak.rss_kib.append((now - t0, rss_kib(pid)))
        await asyncio.sleep(min(every_s, deadline - now))


async def run_soak(url: str, images: list[tuple[str, bytes]], soak: Soak, pid: int) -> Soak:
    """Each client sends one request after another until the time is up (bounded by the clock)."""
    limits = httpx.Limits(max_connections=soak.clients, max_keepalive_connections=soak.clients)
    t0 = time.perf_counter()
    deadline = t0 + soak.minutes * 60
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:

        async def one_client(cid: int) -> None:
            i = 0
            while time.perf_counter() < deadline:
                name, data = images[(cid + i) % len(images)]
                i += 1
                t = time.perf_counter()
                try:
                    r = await client.post(
                        "/v1/inspect",
                        content=data,
                        headers={"Content-Type": "image/jpeg"},
                        params={"image_id": name},
                    )
                except httpx.TransportError:
                    soak.transport_errors += 1
                    continue
                key = str(r.status_code)
                soak.statuses[key] = soak.statuses.get(key, 0) + 1
                if r.status_code == 200:
                    soak.latencies_ms.append((time.perf_counter() - t) * 1000)

        every = max(5.0, soak.minutes * 60 / 10)
        clients = [one_client(c) for c in range(soak.clients)]
        await asyncio.gather(_sample_rss(soak, pid, t0, deadline, every), *clients)
    soak.wall_s = time.perf_counter() - t0
    soak.rss_kib.append((soak.wall_s, rss_kib(pid)))
    soak.load_end = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    return soak


def scraped_ok(url: str) -> int:
    """The server's count of answered POST /v1/inspect with status 200, from /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}/metrics", timeout=30).text
    want = {"route": "/v1/inspect", "method": "POST", "status": "200"}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "steelscan_http_requests_total" and s.labels == want:
                return int(s.value)
    return 0


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


def _mib(kib: int) -> str:
    return f"{kib / 1024:.0f}"


def soak_report(soak: Soak, args: argparse.Namespace, meta: dict[str, str]) -> str:
    from runtime_install import cpu_flags  # bench/runtime_install.py

    (_, rss0), (_, rss1) = soak.rss_kib[0], soak.rss_kib[-1]
    timeline = ", ".join(f"{t / 60:.1f} min {_mib(k)}" for t, k in soak.rss_kib)
    met = "met" if soak.acceptable() else "NOT met"
    lines = [
        SOAK_SECTION,
        "",
        f"Command: `.venv/bin/python bench/load.py {meta['argv']}`  ",
        f"Machine: {meta['machine']}; CPU flags: {cpu_flags()}  ",
        f"Date: {meta['date']}; load average (1-minute) at start: {meta['load']}; at the end "
        f"(1 / 5 / 15 minutes): {soak.load_end}. The machine was shared (other work running).  ",
        f"Model: {meta['model']}; images: {meta['images']}.  ",
        f"Server: `steelscan serve` on 127.0.0.1, {args.workers} inference worker(s), queue bound "
        f"{args.max_queue}; client and server share the machine's cores.",
        "",
        f"{soak.clients} clients each send POST /v1/inspect (raw JPEG body) one after another "
        f"for {soak.minutes:g} minutes. Latency is per successful request as the client sees it. "
        "RSS is the server process's VmRSS (/proc/PID/status): once the model is loaded, at the "
        "start of the soak (after one warm-up request) and at the end.",
        "",
        "| clients | minutes | requests | ok | errors | throughput (ok/s) | p50 ms | p99 ms "
        "| RSS loaded MiB | RSS start MiB | RSS end MiB | RSS change |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| {soak.clients} | {soak.wall_s / 60:.1f} | {soak.requests} | {soak.ok} | {soak.errors} "
        f"| {soak.ok / soak.wall_s:.2f} | {soak.pct(50):.0f} | {soak.pct(99):.0f} "
        f"| {_mib(soak.rss_loaded_kib)} | {_mib(rss0)} | {_mib(rss1)} "
        f"| {(rss1 - rss0) / 1024:+.1f} MiB ({(rss1 - rss0) / rss0:+.1%}) |",
        "",
        f"RSS over the soak (MiB): {timeline}.  ",
        f"Statuses: {soak.statuses}; transport errors: {soak.transport_errors}.  ",
        f"The server's `/metrics` counted {soak.served_ok} answered POST /v1/inspect with status "
        f"200 (the client: {soak.ok} + 1 warm-up){'' if soak.metrics_agree() else ' — MISMATCH'}; "
        f"after SIGTERM at the end it drained and exited with status {soak.exit_status}.",
        "",
        f"Checks: 0 errors, `/metrics` agrees with the client, exit 0 after SIGTERM — {met}.",
        "",
    ]
    return "\n".join(lines)


def write_section(text: str) -> None:
    _report.write_section(SECTION, text)


def stop_server(proc: subprocess.Popen, timeout: float = 60) -> int | None:
    """SIGTERM (the server drains and exits); its exit status, or None when it had to be killed."""
    proc.terminate()
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return None


def model_meta(model: Path, info: dict, images: list, origin: str, load: str) -> dict[str, str]:
    shown_model = model.relative_to(REPO) if model.is_relative_to(REPO) else model
    return {
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


def run_load(args: argparse.Namespace, url: str, images: list) -> dict[int, list[Scenario]]:
    results: dict[int, list[Scenario]] = {}
    for clients in args.clients or [4, 16]:
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
    return results


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", type=Path, default=None, help="model bundle (default: train tiny)")
    ap.add_argument("--clients", type=int, nargs="+", default=None, help="default: 4 16 (soak: 4)")
    ap.add_argument("--requests", type=int, default=20, help="requests per client")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--max-queue", type=int, default=8)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--engine", default="auto", help="serve --engine (auto: what serve picks)")
    ap.add_argument(
        "--soak-minutes",
        type=float,
        default=None,
        help="soak instead: --clients (one count) clients for this many minutes",
    )
    ap.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = ap.parse_args()
    if args.soak_minutes is not None and args.clients and len(args.clients) != 1:
        ap.error("--soak-minutes takes one --clients count")
    return args


def main() -> int:
    args = parse_args()
    model = ensure_model(args.model)
    images, origin = load_images(model)
    load = f"{os.getloadavg()[0]:.1f}"
    port = free_port()
    proc = start_server(model, port, args.max_queue, args.workers, args.engine)
    url = f"http://127.0.0.1:{port}"
    try:
        info = httpx.get(f"{url}/v1/model", timeout=10).json()
        rss_loaded = rss_kib(proc.pid)
        # One warm-up request so the first scenario does not pay for lazy initialisation.
        name, data = images[0]
        httpx.post(f"{url}/v1/inspect", content=data, timeout=120)
        if args.soak_minutes is not None:
            soak = Soak((args.clients or [4])[0], args.soak_minutes, rss_loaded_kib=rss_loaded)
            asyncio.run(run_soak(url, images, soak, proc.pid))
            soak.served_ok = scraped_ok(url)
        else:
            results = run_load(args, url, images)
    finally:
        exit_status = stop_server(proc)

    meta = model_meta(model, info, images, origin, load)
    if args.soak_minutes is not None:
        soak.exit_status = exit_status
        text, ok, section = soak_report(soak, args, meta), soak.acceptable(), SOAK_SECTION
    else:
        text, section = report(results, args, meta), SECTION
        ok = all(r.acceptable(clients <= 4) for clients, runs in results.items() for r in runs)
    print()
    print(text)
    if args.write:
        _report.write_section(section, text)
        print(f"wrote the '{section}' section of {DOC}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
