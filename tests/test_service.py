"""The inspection API against a real ``steelscan serve`` process on 127.0.0.1.

The server runs a tiny model trained by the suite's own fixtures (``trained_bundle``, thresholds
lowered in ``service_bundle`` so masks are non-empty) on real Severstal images from ../shared,
resized to the tiny model's size. Every bad request is followed by a normal one, to show the
server keeps serving.
"""

from __future__ import annotations

import asyncio
import base64
import io
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from steelscan import rle
from steelscan.imageio import read_image
from steelscan.service.runner import InferenceRunner, QueueFull

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client(service_url):
    with httpx.Client(base_url=service_url, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def inspector(service_bundle):
    """The same bundle in-process: the server's answers must equal the library's."""
    from steelscan.inference.predictor import Inspector

    return Inspector(service_bundle, strict_size=True)


def _post_file(client: httpx.Client, path: Path, **params) -> httpx.Response:
    mime = "image/png" if path.suffix == ".png" else "image/jpeg"
    files = {"file": (path.name, path.read_bytes(), mime)}
    return client.post("/v1/inspect", files=files, params=params)


def _assert_serving(client: httpx.Client, image: Path) -> None:
    """After a bad request: liveness, and a normal inspection still works."""
    h = client.get("/health")
    assert h.status_code == 200 and h.json()["model_loaded"] is True
    r = _post_file(client, image)
    assert r.status_code == 200, r.text
    assert r.json()["image_id"] == image.name


def _check_class(c: dict, h: int, w: int) -> np.ndarray:
    """RLE decodes to the returned area; boxes are exactly the mask's components' extents."""
    mask = rle.decode(c["rle"], (h, w))
    assert int(mask.sum()) == c["area"]
    assert c["present"] == (c["area"] > 0)
    covered = np.zeros_like(mask)
    for x1, y1, x2, y2 in c["boxes"]:
        assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
        assert mask[y1:y2, x1:x2].any()
        covered[y1:y2, x1:x2] = 1
    assert not (mask & (1 - covered)).any(), "a mask pixel lies outside every box"
    return mask


# -- metadata ------------------------------------------------------------------------------
def test_health_and_model_metadata(client, service_bundle):
    from steelscan.manifest import ModelManifest

    manifest = ModelManifest.model_validate_json((service_bundle / "manifest.json").read_text())
    h = client.get("/health").json()
    assert h["status"] == "ok" and h["model_loaded"] is True
    assert h["model"]["name"] == "service-test-model"
    assert h["queue"]["max_queue"] == 1

    m = client.get("/v1/model").json()
    assert m["name"] == manifest.name
    assert m["version"] == h["model"]["version"] and len(m["version"]) == 12
    assert (m["image_height"], m["image_width"]) == (manifest.image_height, manifest.image_width)
    assert [c["class_id"] for c in m["classes"]] == manifest.class_ids
    pp = manifest.postprocess
    assert [c["pixel_threshold"] for c in m["classes"]] == pytest.approx(pp.pixel_thresholds)
    assert [c["class_threshold"] for c in m["classes"]] == pytest.approx(pp.class_thresholds)
    assert all(c["color"].startswith("#") for c in m["classes"])
    assert m["metrics"] == manifest.metrics
    assert m["limits"]["max_upload_bytes"] == 2 * 1024 * 1024
    # `steelscan serve` defaults to --engine auto: a bundle without an ONNX export runs on torch.
    assert (m["engine"], m["precision"]) == ("torch", "fp32")


def test_openapi_documents_the_api(client):
    spec = client.get("/openapi.json").json()
    for path in ("/v1/inspect", "/v1/inspect/batch", "/health", "/v1/model"):
        assert path in spec["paths"], path
    body = spec["paths"]["/v1/inspect"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "image/jpeg", "image/png"} <= set(body)
    responses = spec["paths"]["/v1/inspect"]["post"]["responses"]
    assert {"200", "413", "415", "422", "503"} <= set(responses)
    docs = client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    # Swagger UI is served by the app itself (fastapi-offline's files): /docs works offline.
    assert "/docs-assets/swagger-ui-bundle.js" in docs.text
    assert client.get("/docs-assets/swagger-ui-bundle.js").status_code == 200


def test_web_page_and_assets_are_served(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    for asset in ("/static/app.js", "/static/style.css"):
        assert asset in page.text
        assert client.get(asset).status_code == 200


# -- inspection ----------------------------------------------------------------------------
def test_inspect_matches_the_library_and_rle_decodes_to_area(client, service_images, inspector):
    from steelscan.service.inspection import candidate_params

    # The candidate masks are the same raw output through the same post-processor, with every
    # presence threshold and minimum area at 0.
    opened = inspector.postprocessor.with_params(candidate_params(inspector.postprocess))
    found_any = False
    for path in service_images:
        r = _post_file(client, path, candidates=True)
        assert r.status_code == 200, r.text
        d = r.json()
        h, w = d["height"], d["width"]
        assert d["image_id"] == path.name
        assert (h, w) == inspector.expected_size
        assert d["model"]["name"] == "service-test-model" and d["model"]["engine"] == "torch"
        assert {"decode", "queue", "inference", "total"} <= set(d["timings_ms"])
        expected = inspector.inspect(read_image(path), image_id=path.name)
        assert d["has_defect"] == expected.has_defect
        for c, e in zip(d["classes"], expected.classes, strict=True):
            assert c["class_id"] == e.class_id
            assert c["probability"] == pytest.approx(e.probability, abs=1e-5)
            assert c["present"] == e.present and c["area"] == e.area
            mask = _check_class(c, h, w)
            assert np.array_equal(mask, e.mask)
            cand = c["candidate"]
            cand_mask = rle.decode(cand["rle"], (h, w))
            assert int(cand_mask.sum()) == cand["area"]
            assert not (mask & (1 - cand_mask)).any(), "final mask must lie inside the candidate"
            found_any |= c["present"]
        (raw,) = inspector.raw([read_image(path)], skip_gated=False)
        want = opened.finish(raw, path.name)
        assert [c["candidate"]["rle"] for c in d["classes"]] == [c.rle() for c in want.classes]
        # Class 4's presence threshold is above 1: never present, though it has a candidate mask.
        last = d["classes"][-1]
        assert last["present"] is False and last["rle"] == "" and last["area"] == 0
    assert found_any, "the lowered thresholds should make some class present"


def test_raw_body_upload_and_overlay(client, service_images):
    path = service_images[1]  # the PNG
    r = client.post(
        "/v1/inspect",
        content=path.read_bytes(),
        headers={"Content-Type": "image/png"},
        params={"image_id": "coil-17.png", "overlay": "true"},
    )
    assert r.status_code == 200, r.text
    d = r.json()
    assert d["image_id"] == "coil-17.png"
    assert "candidate" not in d["classes"][0]
    overlay = Image.open(io.BytesIO(base64.b64decode(d["overlay_png"])))
    assert overlay.format == "PNG" and overlay.size == (d["width"], d["height"])
    # The overlay differs from the plain image exactly where something is present.
    plain = np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)
    diff = np.abs(np.asarray(overlay.convert("RGB"), dtype=np.int16) - plain).sum(axis=2) > 0
    any_mask = np.zeros(diff.shape, dtype=bool)
    for c in d["classes"]:
        any_mask |= rle.decode(c["rle"], diff.shape).astype(bool)
    assert diff.any() == any_mask.any()
    assert not (diff & ~any_mask).any()


def test_batch_returns_one_result_each_in_order(client, service_images):
    order = [service_images[2], service_images[0], service_images[1], service_images[0]]
    files = [
        ("files", (f"{i}-{p.name}", p.read_bytes(), "application/octet-stream"))
        for i, p in enumerate(order)
    ]
    r = client.post("/v1/inspect/batch", files=files)
    assert r.status_code == 200, r.text
    d = r.json()
    assert d["count"] == 4
    assert [x["image_id"] for x in d["results"]] == [f"{i}-{p.name}" for i, p in enumerate(order)]
    single = _post_file(client, service_images[0]).json()
    for res in (d["results"][1], d["results"][3]):  # the same image twice: the same answer
        assert [c["rle"] for c in res["classes"]] == [c["rle"] for c in single["classes"]]
        for c in res["classes"]:
            _check_class(c, res["height"], res["width"])


# -- errors: JSON, the right status, and the server keeps serving ---------------------------
def _chunks(data: bytes, size: int = 256 * 1024):
    for i in range(0, len(data), size):
        yield data[i : i + size]


def _bad_requests(images: list[Path]) -> list[tuple[str, int, str, dict]]:
    jpeg = images[0].read_bytes()
    big = np.random.default_rng(0).integers(0, 256, 3 * 1024 * 1024, dtype=np.uint8).tobytes()
    gif = io.BytesIO()
    Image.new("RGB", (800, 128)).save(gif, format="GIF")
    wide = io.BytesIO()  # the real image back at twice the tiny model's size
    with Image.open(images[0]) as im:
        im.resize((im.width * 2, im.height * 2)).save(wide, format="JPEG")
    cases = [
        (
            "too large by Content-Length",
            413,
            "payload_too_large",
            dict(content=big, headers={"Content-Type": "image/jpeg"}),
        ),
        (
            "too large, chunked without Content-Length",
            413,
            "payload_too_large",
            dict(content=_chunks(jpeg[:4] + big), headers={"Content-Type": "image/jpeg"}),
        ),
        (
            "too large multipart",
            413,
            "payload_too_large",
            dict(files={"file": ("big.jpg", jpeg + big, "image/jpeg")}),
        ),
        (
            "a text file",
            415,
            "unsupported_media_type",
            dict(files={"file": ("notes.txt", b"not an image at all\n", "text/plain")}),
        ),
        (
            "a PDF",
            415,
            "unsupported_media_type",
            dict(content=b"%PDF-1.4\n%...", headers={"Content-Type": "application/pdf"}),
        ),
        (
            "a GIF image",
            415,
            "unsupported_media_type",
            dict(files={"file": ("a.gif", gif.getvalue(), "image/gif")}),
        ),
        (
            "a truncated JPEG",
            422,
            "undecodable_image",
            dict(files={"file": ("cut.jpg", jpeg[: len(jpeg) // 3], "image/jpeg")}),
        ),
        (
            "garbage named .png",
            422,
            "undecodable_image",
            dict(files={"file": ("noise.png", big[:5000], "image/png")}),
        ),
        (
            "an image twice the model's size",
            422,
            "wrong_image_size",
            dict(files={"file": ("full.jpg", wide.getvalue(), "image/jpeg")}),
        ),
        ("an empty body", 422, "no_image", dict(content=b"")),
        (
            "an empty file part",
            422,
            "empty_image",
            dict(files={"file": ("empty.jpg", b"", "image/jpeg")}),
        ),
        ("a url-encoded form", 415, "unsupported_media_type", dict(data={"note": "hello"})),
        (
            "a multipart form with no file",
            422,
            "no_image",
            dict(
                content=b"--XyZ\r\nContent-Disposition: form-data; name=note\r\n\r\n"
                b"hi\r\n--XyZ--\r\n",
                headers={"Content-Type": "multipart/form-data; boundary=XyZ"},
            ),
        ),
        (
            "a malformed multipart body",
            400,
            "bad_request",
            dict(
                content=b"--XyZ\r\nno headers here",
                headers={"Content-Type": "multipart/form-data; boundary=XyZ"},
            ),
        ),
        (
            "a bad query value",
            422,
            "invalid_request",
            dict(files={"file": ("a.jpg", jpeg, "image/jpeg")}, params={"overlay": "maybe"}),
        ),
    ]
    return cases


def test_every_bad_request_gets_its_json_error_and_the_server_keeps_serving(client, service_images):
    for name, status, code, kwargs in _bad_requests(service_images):
        r = client.post("/v1/inspect", **kwargs)
        assert r.status_code == status, f"{name}: {r.status_code} {r.text}"
        body = r.json()
        assert body["error"] == code, f"{name}: {body}"
        assert body["status"] == status and len(body["message"]) > 10, name
        _assert_serving(client, service_images[0])


def test_batch_errors_name_the_bad_file(client, service_images):
    good = service_images[0].read_bytes()
    files = [
        ("files", ("ok.jpg", good, "image/jpeg")),
        ("files", ("broken.jpg", good[:500], "image/jpeg")),
    ]
    r = client.post("/v1/inspect/batch", files=files)
    assert r.status_code == 422 and "broken.jpg" in r.json()["message"]
    r = client.post("/v1/inspect/batch", content=good, headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 415 and "multipart" in r.json()["message"]
    too_many = [("files", (f"{i}.jpg", good, "image/jpeg")) for i in range(9)]
    r = client.post("/v1/inspect/batch", files=too_many)
    assert r.status_code == 422 and r.json()["error"] == "too_many_images"
    two = [("file", (f"{i}.jpg", good, "image/jpeg")) for i in range(2)]
    r = client.post("/v1/inspect", files=two)
    assert r.status_code == 422 and "/v1/inspect/batch" in r.json()["message"]
    assert client.get("/nowhere").json()["status"] == 404
    _assert_serving(client, service_images[0])


def test_full_queue_answers_503_with_retry_after(client, service_url, service_images):
    """Queue bound 1 + 1 worker: while two batches occupy both slots, a third request gets 503."""
    files = [
        ("files", (f"{i}.jpg", service_images[0].read_bytes(), "image/jpeg")) for i in range(8)
    ]
    statuses: list[int] = []

    def slow_batch() -> None:
        with httpx.Client(base_url=service_url, timeout=300) as c:
            statuses.append(
                c.post("/v1/inspect/batch", files=files, params={"overlay": 1}).status_code
            )

    threads = [threading.Thread(target=slow_batch) for _ in range(2)]
    for t in threads:
        t.start()
    saw_full = False
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not saw_full:
        q = client.get("/health").json()["queue"]
        saw_full = q["running"] + q["waiting"] >= q["workers"] + q["max_queue"]
        if not saw_full:
            time.sleep(0.01)
    assert saw_full, "the two batches never filled the queue"
    r = _post_file(client, service_images[0])
    for t in threads:
        t.join()
    assert r.status_code == 503, r.text
    assert r.json()["error"] == "busy"
    assert int(r.headers["Retry-After"]) >= 1
    assert statuses == [200, 200]
    assert client.get("/health").json()["queue"]["rejected"] >= 1
    _assert_serving(client, service_images[0])


# -- the runner on its own: admission is bounded and immediate --------------------------------
def test_runner_refuses_past_its_bound_without_waiting():
    async def scenario() -> None:
        runner = InferenceRunner(workers=1, max_queue=1)
        gate = threading.Event()
        first = asyncio.create_task(runner.submit(gate.wait, 10))
        second = asyncio.create_task(runner.submit(lambda: "second"))
        await asyncio.sleep(0.05)
        assert runner.stats().running == 1 and runner.stats().waiting == 1
        t0 = time.perf_counter()
        with pytest.raises(QueueFull) as info:
            await runner.submit(lambda: "third")
        assert time.perf_counter() - t0 < 0.5  # refused at once, not after waiting
        assert info.value.retry_after >= 1
        gate.set()
        assert await first is True and await second == "second"
        assert await runner.submit(lambda: 42) == 42  # free again
        assert runner.stats().rejected == 1 and runner.stats().completed == 3
        runner.shutdown()

    asyncio.run(scenario())


# -- start-up failures ---------------------------------------------------------------------
def _serve(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "steelscan", "serve", *args, "--port", "1"],
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_serve_refuses_a_missing_or_broken_bundle(tmp_path, service_bundle):
    missing = _serve(str(tmp_path / "no-such-model"))
    assert missing.returncode == 2
    assert "no-such-model" in missing.stderr and "not found" in missing.stderr
    assert "Traceback" not in missing.stderr

    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(service_bundle, broken)
    weights = broken / "segmenter.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    r = _serve(str(broken))
    assert r.returncode == 2, r.stderr
    assert "cannot load the model bundle" in r.stderr and "Traceback" not in r.stderr


def test_serve_runs_an_exported_int8_bundle(tmp_path, service_bundle, service_images, synth_small):
    """`steelscan serve --engine onnx --int8` on an exported bundle: a real server answers with
    what the int8 engine computes in-process, and says which precision it runs."""
    from serving import serve_process

    from steelscan.imageio import read_image
    from steelscan.inference.export import export_bundle
    from steelscan.inference.predictor import Inspector

    exported = export_bundle(
        service_bundle, tmp_path / "onnx", int8=True, calibration=synth_small, calibration_images=2
    )
    local = Inspector(exported, engine="onnx", int8=True, strict_size=True)
    log = tmp_path / "log"
    with serve_process([str(exported), "--engine", "onnx", "--int8"], log) as url:
        with httpx.Client(base_url=url, timeout=120) as c:
            m = c.get("/v1/model").json()
            assert (m["engine"], m["precision"]) == ("onnx", "int8")
            for path in service_images[:2]:
                r = _post_file(c, path)
                assert r.status_code == 200, r.text
                expected = local.inspect(read_image(path), image_id=path.name)
                got = [(c_["present"], c_["rle"]) for c_ in r.json()["classes"]]
                assert got == [(e.present, e.rle() if e.present else "") for e in expected.classes]
    assert "engine: onnx int8 (asked for)" in log.read_text()  # serve says what it runs


def test_serve_refuses_flags_that_do_not_fit_the_engine(service_bundle):
    r = _serve(str(service_bundle), "--engine", "torch", "--int8")
    assert r.returncode == 2 and "--int8 applies to the onnx and openvino engines" in r.stderr
    assert "Traceback" not in r.stderr
    # The default engine is auto, which picks the precision itself: forcing one needs a name.
    r = _serve(str(service_bundle), "--int8")
    assert r.returncode == 2 and "--engine auto picks the precision itself" in r.stderr
    r = _serve(str(service_bundle), "--engine", "tensorrt")
    assert r.returncode == 2 and "unknown engine 'tensorrt'" in r.stderr
    assert "Traceback" not in r.stderr


def test_serve_auto_picks_the_onnx_export_and_says_why(tmp_path, service_bundle, service_images):
    """`steelscan serve` with no --engine on an exported bundle: auto chooses the export (no
    engine records yet: OpenVINO float32), prints the choice and its reason, and /v1/model says
    the same."""
    pytest.importorskip("openvino")
    from serving import serve_process

    from steelscan.inference.export import export_bundle

    exported = export_bundle(service_bundle, tmp_path / "onnx")
    log = tmp_path / "log"
    with serve_process([str(exported)], log) as url:
        with httpx.Client(base_url=url, timeout=120) as c:
            m = c.get("/v1/model").json()
            assert (m["engine"], m["precision"]) == ("openvino", "fp32")
            r = _post_file(c, service_images[0])
            assert r.status_code == 200 and r.json()["model"]["engine"] == "openvino"
    assert "engine: openvino fp32 (no engine records; the ONNX export on OpenVINO)" in (
        log.read_text()
    )


# -- the app in-process: a server fault is JSON too, and the next request is served -----------
@pytest.fixture(scope="module")
def local(service_bundle):
    from fastapi.testclient import TestClient

    from steelscan.service.app import ServiceConfig, create_app, load_service

    service = load_service(service_bundle, engine="torch", device="cpu")
    app = create_app(service, ServiceConfig(max_queue=1))
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c, service


def test_a_model_failure_is_a_json_500_naming_the_image(local, service_images, monkeypatch):
    client, service = local
    path = service_images[0]

    def broken(batch):
        raise RuntimeError("out of device memory")

    monkeypatch.setattr(service.predictor.engine, "segment", broken)
    r = _post_file(client, path)
    assert r.status_code == 500, r.text
    body = r.json()
    assert body["error"] == "inference_failed" and body["status"] == 500
    assert path.name in body["message"] and "out of device memory" in body["message"]
    monkeypatch.undo()
    assert _post_file(client, path).status_code == 200


def test_an_unexpected_error_is_a_json_500(local, service_images, monkeypatch):
    client, service = local

    def bug(*args, **kwargs):
        raise KeyError("classes")

    monkeypatch.setattr(service, "inspect", bug)
    r = _post_file(client, service_images[0])
    assert r.status_code == 500
    assert r.json() == {
        "error": "internal_error",
        "message": "internal server error (KeyError)",
        "status": 500,
    }
    monkeypatch.undo()
    r = _post_file(client, service_images[0])
    assert r.status_code == 200 and r.json()["model"]["engine"] == "torch"


def test_no_long_functions_in_the_service():
    """The service stays in small pieces: no function (routes and app factory included) over
    60 lines, so no single place owns the whole request again."""
    import ast

    import steelscan.service

    root = Path(steelscan.service.__file__).parent
    long = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = node.end_lineno - node.lineno + 1
                if n > 60:
                    long.append(f"{path.relative_to(root)}:{node.name} ({n} lines)")
    assert not long, long
