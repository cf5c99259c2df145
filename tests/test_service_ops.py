"""Operating the service: ``/metrics`` (Prometheus) and a SIGTERM that drains before exit.

In-process (``TestClient``): the metrics count what was sent, by route template and status,
errors by code, images and defects per class as the answers report them; each app has its own
registry; the queue gauges follow the runner. Against a real ``steelscan serve`` subprocess: a
SIGTERM while requests are in flight (uploads still arriving, batches queued and running) lets
every accepted request finish with a 200, refuses new connections meanwhile, and exits 0; a drain
that runs past ``--drain-timeout`` cuts the stragglers off and exits 1 within that bound.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from serving import start_serve, stop_serve

from steelscan.service.metrics import RunnerCollector
from steelscan.service.runner import InferenceRunner

pytestmark = pytest.mark.slow


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of a Prometheus text page: (name, labels) -> value."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(page: dict, metric: str, **labels: str) -> float:
    return page.get((metric, frozenset(labels.items())), 0.0)


def requests(page: dict, route: str, status: int, method: str = "POST") -> float:
    labels = {"route": route, "method": method, "status": str(status)}
    return value(page, "steelscan_http_requests_total", **labels)


def _mime(path: Path) -> str:
    return "image/png" if path.suffix == ".png" else "image/jpeg"


def expected_counts(results: list[dict[str, Any]]) -> tuple[int, dict[str, int], dict[str, int]]:
    """Defective images, images per present class and regions per class, from API answers."""
    defective = sum(bool(r["has_defect"]) for r in results)
    present: dict[str, int] = {}
    regions: dict[str, int] = {}
    for r in results:
        for c in r["classes"]:
            present.setdefault(c["name"], 0)
            regions.setdefault(c["name"], 0)
            if c["present"]:
                present[c["name"]] += 1
                regions[c["name"]] += len(c["boxes"])
    return defective, present, regions


def assert_inference_counts(page: dict, results: list[dict[str, Any]]) -> None:
    defective, present, regions = expected_counts(results)
    assert value(page, "steelscan_images_inspected_total") == len(results)
    assert value(page, "steelscan_images_defective_total") == defective
    assert sum(present.values()) > 0, "the service bundle should find defects on these images"
    for name, n in present.items():
        assert value(page, "steelscan_defects_total", class_name=name) == n, name
        assert value(page, "steelscan_defect_regions_total", class_name=name) == regions[name]


# -- in-process ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def loaded(service_bundle):
    from steelscan.service.app import load_service

    return load_service(service_bundle, engine="torch", device="cpu")


@pytest.fixture()
def local(loaded) -> Iterator[Any]:
    from fastapi.testclient import TestClient

    from steelscan.service.app import ServiceConfig, create_app

    config = ServiceConfig(max_upload_bytes=1024 * 1024, max_queue=3, max_batch=4)
    with TestClient(create_app(loaded, config), raise_server_exceptions=False) as c:
        yield c


def scrape(client: Any) -> dict:
    r = client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    return samples(r.text)


def test_metrics_count_requests_errors_images_and_defects(local, loaded, service_images):
    one = service_images[0]
    results = []
    for path in service_images:
        files = {"file": (path.name, path.read_bytes(), _mime(path))}
        r = local.post("/v1/inspect", files=files)
        assert r.status_code == 200, r.text
        results.append(r.json())
    files = [("files", (p.name, p.read_bytes(), _mime(p))) for p in service_images[:2]]
    r = local.post("/v1/inspect/batch", files=files)
    assert r.status_code == 200, r.text
    results += r.json()["results"]
    # errors: not an image (415), too big by Content-Length (413, refused before routing),
    # unknown path (404), wrong method (405)
    text_body = local.post("/v1/inspect", content=b"hello", headers={"Content-Type": "text/plain"})
    assert text_body.status_code == 415
    too_big = b"\xff\xd8\xff" + b"0" * (2 * 1024 * 1024)
    assert local.post("/v1/inspect", content=too_big).status_code == 413
    assert local.get("/nowhere/42").status_code == 404
    assert local.get("/v1/inspect").status_code == 405
    assert local.get("/health").status_code == 200
    assert local.get(f"/static/app.js?v={one.name}").status_code == 200

    page = scrape(local)
    assert requests(page, "/v1/inspect", 200) == len(service_images)
    assert requests(page, "/v1/inspect/batch", 200) == 1
    assert requests(page, "/v1/inspect", 415) == 1
    assert requests(page, "/v1/inspect", 413) == 1
    assert requests(page, "/v1/inspect", 405, method="GET") == 1
    assert requests(page, "unmatched", 404, method="GET") == 1  # no raw paths as labels
    assert requests(page, "/health", 200, method="GET") == 1
    assert requests(page, "/static", 200, method="GET") == 1
    assert not any(dict(labels).get("route") == "/metrics" for _, labels in page)
    errors = {
        "unsupported_media_type": 1,
        "payload_too_large": 1,
        "not_found": 1,
        "method_not_allowed": 1,
    }
    for code, n in errors.items():
        assert value(page, "steelscan_errors_total", code=code) == n, code
    n_ok = len(service_images) + 1
    count = "steelscan_http_request_duration_seconds_count"
    assert value(page, count, route="/v1/inspect") == len(service_images) + 3
    assert value(page, "steelscan_stage_duration_seconds_count", stage="inference") == n_ok
    assert value(page, "steelscan_http_requests_in_progress", route="/v1/inspect") == 0
    assert_inference_counts(page, results)
    assert value(page, "steelscan_inference_queue_capacity") == 3
    assert value(page, "steelscan_inference_workers") == 1
    assert value(page, "steelscan_inference_jobs_completed_total") == n_ok
    m = loaded.model_ref
    info = dict(name=m["name"], version=m["version"], engine="torch", precision="fp32")
    assert value(page, "steelscan_model_info", **info) == 1
    assert value(page, "process_resident_memory_bytes") > 0


def test_each_app_has_its_own_registry(local, service_images):
    path = service_images[0]
    files = {"file": (path.name, path.read_bytes(), _mime(path))}
    assert local.post("/v1/inspect", files=files).status_code == 200
    page = scrape(local)  # a fresh app (function-scoped fixture): earlier tests are not in it
    assert requests(page, "/v1/inspect", 200) == 1
    assert value(page, "steelscan_images_inspected_total") == 1
    openmetrics = local.get("/metrics", headers={"Accept": "application/openmetrics-text"})
    assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
    assert openmetrics.text.rstrip().endswith("# EOF")


def test_queue_gauges_follow_the_runner():
    runner = InferenceRunner(workers=1, max_queue=2)
    collector = RunnerCollector(runner)
    release = threading.Event()
    started = threading.Event()

    def blocked() -> None:
        started.set()
        release.wait(30)

    def gauges() -> dict[str, float]:
        return {m.name: m.samples[0].value for m in collector.collect()}

    async def scenario() -> tuple[dict, dict]:
        jobs = [asyncio.create_task(runner.submit(blocked)) for _ in range(3)]
        while not started.is_set():
            await asyncio.sleep(0.01)
        during = gauges()
        release.set()
        await asyncio.gather(*jobs)
        return during, gauges()

    during, after = asyncio.run(scenario())
    runner.shutdown()
    assert during["steelscan_inference_running"] == 1
    assert during["steelscan_inference_queue_depth"] == 2
    assert during["steelscan_inference_queue_capacity"] == 2
    assert after["steelscan_inference_queue_depth"] == 0
    assert after["steelscan_inference_jobs_completed"] == 3


# -- a real server and SIGTERM --------------------------------------------------------------
class SlowUpload:
    """A raw-body request whose upload stops half-way until ``gate`` opens (chunked encoding):
    the server has accepted it (headers read, the route is waiting for the body) meanwhile."""

    def __init__(self, url: str, path: Path, gate: threading.Event) -> None:
        self.url, self.path, self.gate = url, path, gate
        self.image_id = f"slow-{id(self)}-{path.name}"
        self.response: httpx.Response | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _body(self) -> Iterator[bytes]:
        data = self.path.read_bytes()
        yield data[: len(data) // 2]
        self.gate.wait(60)
        yield data[len(data) // 2 :]

    def _run(self) -> None:
        headers = {"Content-Type": _mime(self.path)}
        try:
            with httpx.Client(timeout=90) as c:
                self.response = c.post(
                    f"{self.url}/v1/inspect",
                    content=self._body(),
                    headers=headers,
                    params={"image_id": self.image_id},
                )
        except BaseException as exc:  # noqa: BLE001 - the test reports it
            self.error = exc


class Batch:
    """A batch request (16 images with candidates and overlays: long enough to be in flight)."""

    def __init__(self, url: str, images: list[Path], tag: str) -> None:
        self.url, self.tag = url, tag
        picks = [images[k % len(images)] for k in range(16)]
        self.files = [
            ("files", (f"{tag}-{k}-{p.name}", p.read_bytes(), _mime(p)))
            for k, p in enumerate(picks)
        ]
        self.response: httpx.Response | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        params = {"candidates": "true", "overlay": "true"}
        try:
            with httpx.Client(timeout=90) as c:
                self.response = c.post(
                    f"{self.url}/v1/inspect/batch", files=self.files, params=params
                )
        except BaseException as exc:  # noqa: BLE001 - the test reports it
            self.error = exc


def wait_for(predicate, timeout: float, what: str, step: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(step)


def in_progress(url: str, route: str) -> float:
    page = samples(httpx.get(f"{url}/metrics", timeout=10).text)
    return value(page, "steelscan_http_requests_in_progress", route=route)


def refuses_connections(url: str) -> bool:
    u = urlparse(url)
    try:
        with socket.create_connection((u.hostname, u.port), timeout=1):
            return False
    except ConnectionRefusedError:
        return True


def _send_counted(client: httpx.Client, images: list[Path]) -> list[dict[str, Any]]:
    results = []
    for path in images:
        files = {"file": (path.name, path.read_bytes(), _mime(path))}
        r = client.post("/v1/inspect", files=files)
        assert r.status_code == 200, r.text
        results.append(r.json())
    r = client.post("/v1/inspect", content=b"not an image", headers={"Content-Type": "text/plain"})
    assert r.status_code == 415
    return results


def test_sigterm_drains_every_accepted_request_then_exits_0(
    service_bundle, service_images, tmp_path
):
    log = tmp_path / "server.log"
    args = [str(service_bundle), "--workers", "1", "--max-queue", "16", "--max-batch", "16"]
    proc, url = start_serve([*args, "--drain-timeout", "60", "--log-level", "info"], log)
    gate = threading.Event()
    try:
        with httpx.Client(base_url=url, timeout=90) as client:
            results = _send_counted(client, service_images)
            page = samples(client.get("/metrics").text)
        assert requests(page, "/v1/inspect", 200) == len(service_images)
        assert requests(page, "/v1/inspect", 415) == 1
        assert value(page, "steelscan_errors_total", code="unsupported_media_type") == 1
        assert_inference_counts(page, results)

        slow = [SlowUpload(url, p, gate) for p in service_images + service_images[:1]]
        for s in slow:
            s.thread.start()
        wait_for(lambda: in_progress(url, "/v1/inspect") == len(slow), 30, "the slow uploads")
        batches = [Batch(url, service_images, f"b{i}") for i in range(2)]
        for b in batches:
            b.thread.start()
        wait_for(lambda: in_progress(url, "/v1/inspect/batch") == 2, 30, "the batches")

        t_term = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        # draining: new connections are refused while the accepted requests are still open
        wait_for(lambda: refuses_connections(url), 10, "the listener to close", step=0.05)
        assert proc.poll() is None, "the server exited before answering its requests"
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{url}/health", timeout=2)
        time.sleep(0.5)
        gate.set()  # the uploads finish now, during the drain, and queue for the one worker
        rc = proc.wait(timeout=60)
        drain_s = time.monotonic() - t_term
        for t in [s.thread for s in slow] + [b.thread for b in batches]:
            t.join(30)
    finally:
        gate.set()
        stop_serve(proc)

    text = log.read_text()
    for s in slow:
        assert s.error is None, f"{s.image_id}: {s.error!r}\n{text}"
        assert s.response.status_code == 200, s.response.text
        assert s.response.json()["image_id"] == s.image_id
    for b in batches:
        assert b.error is None, f"{b.tag}: {b.error!r}\n{text}"
        assert b.response.status_code == 200, b.response.text
        assert b.response.json()["count"] == 16
    assert rc == 0, text
    assert drain_s < 60
    assert "Waiting for connections to close" in text
    assert "every accepted request was answered" in text
    assert "Traceback" not in text


def test_a_drain_past_its_timeout_cuts_off_and_exits_1(service_bundle, service_images, tmp_path):
    log = tmp_path / "server.log"
    proc, url = start_serve([str(service_bundle), "--drain-timeout", "2"], log)
    gate = threading.Event()
    stuck = SlowUpload(url, service_images[0], gate)
    try:
        stuck.thread.start()
        wait_for(lambda: in_progress(url, "/v1/inspect") == 1, 30, "the stuck upload")
        t_term = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=30)
        took = time.monotonic() - t_term
    finally:
        gate.set()
        stop_serve(proc)
    stuck.thread.join(30)
    text = log.read_text()
    assert rc == 1, text
    assert 2 <= took < 15, took
    assert "1 accepted request(s) were cut off" in text
    # cut off as announced: the connection dropped, or uvicorn's plain 500 for a cancelled task
    assert stuck.error is not None or stuck.response.status_code == 500
