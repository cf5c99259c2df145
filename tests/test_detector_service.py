"""The detector's boxes through a real ``steelscan serve``: the inspect answers carry them (and
the OpenAPI schema documents them), the overlay draws them, and the web page in Debian's
headless chromium draws one element per box and hides a class's boxes with its legend toggle.

The model is a tiny untrained NEU-shaped bundle (a gate and an FCOS detector, no segmenter) on
the torch engine: its boxes are deterministic but arbitrary, which is all the wiring needs.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from serving import serve_process
from tiny_models import NEU_CLASSES, tiny_detector_bundle

from steelscan.imageio import read_image

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip
STEMS = ["crazing_1", "patches_1", "scratches_1"]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def det_bundle(tmp_path_factory) -> Path:
    return tiny_detector_bundle(tmp_path_factory.mktemp("det_service") / "model")


@pytest.fixture(scope="module")
def neu_images(neu_dir) -> list[Path]:
    return [neu_dir / "images" / f"{s}.jpg" for s in STEMS]


@pytest.fixture(scope="module")
def det_url(det_bundle, tmp_path_factory):
    log = tmp_path_factory.mktemp("det_service_log") / "server.log"
    args = [str(det_bundle), "--engine", "torch", "--device", "cpu", "--log-level", "warning"]
    with serve_process(args, log) as url:
        yield url


@pytest.fixture(scope="module")
def client(det_url):
    with httpx.Client(base_url=det_url, timeout=120) as c:
        yield c


def _post(client: httpx.Client, path: Path, **params) -> dict:
    r = client.post(
        "/v1/inspect", files={"file": (path.name, path.read_bytes(), "image/jpeg")}, params=params
    )
    assert r.status_code == 200, r.text
    return r.json()


def test_inspect_answers_with_the_libraries_detections(client, det_bundle, neu_images):
    from steelscan.inference.predictor import Predictor

    predictor = Predictor(det_bundle, engine="torch", strict_size=True, device="cpu")
    for path in neu_images:
        body = _post(client, path)
        dets = body["detections"]
        assert dets, path.name
        scores = [d["score"] for d in dets]
        assert scores == sorted(scores, reverse=True) and min(scores) >= 0.05
        for d in dets:
            assert set(d) == {"class_index", "class_id", "name", "score", "box"}
            assert d["name"] == NEU_CLASSES[d["class_index"]]
            x1, y1, x2, y2 = d["box"]
            assert 0 <= x1 < x2 <= 200 and 0 <= y1 < y2 <= 200
        (pred,) = predictor.stream([(path.name, read_image(path))], workers=0)
        want = pred.result.to_dict()["detections"]
        assert [d["class_index"] for d in dets] == [d["class_index"] for d in want]
        got_num = [v for d in dets for v in (d["score"], *d["box"])]
        assert got_num == pytest.approx(
            [v for d in want for v in (d["score"], *d["box"])], abs=1e-3
        )
        present = {c["class_id"] for c in body["classes"] if c["present"]}
        assert present == {d["class_id"] for d in dets}  # no segmenter: presence is the boxes


def test_batch_overlay_model_and_schema_show_the_detector(client, neu_images):
    from steelscan.reports.overlay import class_color

    files = [("files", (p.name, p.read_bytes(), "image/jpeg")) for p in neu_images]
    r = client.post("/v1/inspect/batch", files=files, params={"overlay": "true"})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["image_id"] for x in results] == [p.name for p in neu_images]
    for res, path in zip(results, neu_images, strict=True):
        assert res["detections"]
        png = Image.open(io.BytesIO(base64.b64decode(res["overlay_png"]))).convert("RGB")
        arr = np.asarray(png)
        assert arr.shape == (200, 200, 3)
        best = res["detections"][0]
        x1, y1 = (int(v) for v in best["box"][:2])
        assert tuple(arr[y1, x1]) == class_color(best["class_index"]), path.name
    model = client.get("/v1/model").json()
    assert model["detector"]["arch"] == "fcos" and model["segmenter"] is None
    assert model["box_score_threshold"] == pytest.approx(0.05)
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    assert "detections" in schemas["InspectionOut"]["properties"]
    assert set(schemas["DetectionOut"]["required"]) >= {"class_index", "score", "box"}


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is absent (apt-get install chromium; ./dev test installs it)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.mark.browser
def test_page_draws_the_boxes_and_toggles_them_per_class(
    browser, client, det_url, neu_images, tmp_path
):
    image = neu_images[1]
    want = _post(client, image)["detections"]
    page = browser.new_page(viewport={"width": 1000, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(det_url + "/")
    page.wait_for_selector("#legend input[type=checkbox]")
    assert page.locator("#legend li").count() == len(NEU_CLASSES)
    page.set_input_files("#file-input", str(image))
    page.wait_for_selector('.card[data-status="done"]', timeout=60_000)
    card = page.locator(".card").first
    boxes = card.locator(".det-layer .det-box")
    assert boxes.count() == len(want)  # one element per detection

    # the best box is the layer's last element (drawn on top), tagged with its class and score
    best = want[0]
    top = boxes.last
    assert top.get_attribute("data-class-index") == str(best["class_index"])
    assert top.locator(".det-tag").inner_text() == f"{best['name']} {best['score']:.2f}"
    stage = card.locator(".stage").bounding_box()
    bb = top.bounding_box()
    assert bb["width"] > 0 and bb["height"] > 0
    assert bb["x"] == pytest.approx(stage["x"] + best["box"][0] / 200 * stage["width"], abs=3)
    assert bb["y"] == pytest.approx(stage["y"] + best["box"][1] / 200 * stage["height"], abs=3)

    # the table's Detections column counts each class's boxes
    k = best["class_index"]
    n_k = sum(d["class_index"] == k for d in want)
    row = card.locator(f'table.defects tbody tr[data-class-id="{best["class_id"]}"]')
    assert row.locator("td.dets").inner_text().startswith(f"{n_k} · best")

    # the class toggle hides that class's boxes (and only those); on again brings them back
    toggle = page.locator(f'#legend input[data-class-index="{k}"]')
    toggle.uncheck()
    assert card.locator(f'.det-box[data-class-index="{k}"]').count() == 0
    assert boxes.count() == len(want) - n_k
    assert "muted" in (row.get_attribute("class") or "")
    page.screenshot(path=str(tmp_path / "detections-toggled.png"), full_page=True)
    toggle.check()
    assert card.locator(f'.det-box[data-class-index="{k}"]').count() == n_k
    assert boxes.count() == len(want)

    # the view's "detections" switch hides the whole layer
    page.locator("#show-detections").uncheck()
    assert not card.locator(".det-layer").is_visible()
    page.locator("#show-detections").check()
    assert boxes.first.is_visible()
    page.screenshot(path=str(tmp_path / "detections.png"), full_page=True)
    assert not errors, errors
    page.close()
