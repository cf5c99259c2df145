"""The web page in a real browser: Playwright driving Debian's headless chromium.

Playwright never downloads a browser here; the test uses /usr/bin/chromium (``./dev test``
installs it) and skips with the reason when it is absent.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from steelscan import rle

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = [pytest.mark.browser, pytest.mark.slow]

# Counts the mask layer's painted pixels, per colour, on a card's canvas.
_PAINTED = """card => {
  const cv = card.querySelector('canvas.mask-layer');
  const d = cv.getContext('2d').getImageData(0, 0, cv.width, cv.height).data;
  let n = 0;
  for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++;
  return n;
}"""


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


def test_page_shows_overlay_table_toggles_and_threshold(
    browser, service_url, service_images, tmp_path
):
    page = browser.new_page(viewport={"width": 1366, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(service_url + "/")
    page.wait_for_selector("#legend input[type=checkbox]")  # legend built from /v1/model
    assert page.locator("#legend li").count() == 4
    assert page.locator("#model-info").inner_text().endswith("torch fp32")  # engine, precision

    image = service_images[0]  # a real Severstal image at the tiny model's size
    page.set_input_files("#file-input", str(image))
    card = page.locator(".card").first
    page.wait_for_selector('.card[data-status="done"]', timeout=60_000)
    assert card.locator(".card-title").inner_text() == image.name

    # The defect table lists the classes the model found; the overlay paints their pixels.
    rows = card.locator("table.defects tbody tr[data-class-id]")
    assert rows.count() >= 1
    handle = card.element_handle()
    painted = page.evaluate(_PAINTED, handle)
    assert painted > 0

    first = rows.first
    class_id = first.get_attribute("data-class-id")
    area_text = first.locator("td").nth(2).inner_text().replace(",", "")
    assert int(area_text) > 0

    # Toggle that class off: its row is muted and fewer pixels are painted; on again restores.
    toggle = page.locator(f'#legend input[data-class-index="{int(class_id) - 1}"]')
    toggle.uncheck()
    assert "muted" in (first.get_attribute("class") or "")
    fewer = page.evaluate(_PAINTED, handle)
    assert fewer < painted
    page.screenshot(path=str(tmp_path / "toggled.png"), full_page=True)
    toggle.check()
    assert page.evaluate(_PAINTED, handle) == painted

    # Threshold slider: at 0 every class with a candidate mask shows (class 4 included, which the
    # model's own thresholds never let through); at 1 nothing does.
    page.locator("#threshold").fill("0")
    assert page.locator("#threshold-value").inner_text() == "0.00"
    assert not page.locator("#use-model-thresholds").is_checked()
    at_zero = rows.count()
    assert at_zero >= 1 and page.evaluate(_PAINTED, handle) >= painted
    page.locator("#threshold").fill("1")
    assert rows.count() == 0
    assert page.evaluate(_PAINTED, handle) == 0
    assert "No class reaches" in card.locator("table.defects tbody").inner_text()
    page.locator("#use-model-thresholds").check()
    assert page.evaluate(_PAINTED, handle) == painted

    # Downloads: JSON is the API's result; the CSV has one Kaggle row per class.
    with page.expect_download() as dl:
        page.click("#download-csv")
    csv_lines = Path(dl.value.path()).read_text().strip().splitlines()
    assert csv_lines[0] == "ImageId,EncodedPixels,ClassId"
    assert len(csv_lines) == 1 + 4
    with page.expect_download() as dl:
        page.click("#download-json")
    results = json.loads(Path(dl.value.path()).read_text())
    assert [r["image_id"] for r in results] == [image.name]
    shown = {c["class_id"]: c for c in results[0]["classes"] if c["present"]}
    assert str(class_id) in {str(k) for k in shown}
    for line in csv_lines[1:]:
        image_id, encoded, cid = line.split(",")
        assert image_id == image.name
        c = results[0]["classes"][int(cid) - 1]
        assert encoded == c["rle"]
        h, w = results[0]["height"], results[0]["width"]
        assert int(rle.decode(encoded, (h, w)).sum()) == c["area"]

    # Several images at once (choose or drop many): each gets its card, all finish.
    page.set_input_files("#file-input", [str(p) for p in service_images])
    page.wait_for_function(
        "document.querySelectorAll('.card[data-status=done]').length === 4", timeout=120_000
    )
    titles = page.locator(".card .card-title").all_inner_texts()
    assert sorted(titles) == sorted([image.name] + [p.name for p in service_images])

    shot = tmp_path / "steelscan-web.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    print(f"screenshot: {shot}")
    assert not errors, errors
    page.close()


def test_api_docs_render_without_internet(browser, service_url, tmp_path):
    """The OpenAPI page lists the endpoints; its assets come from the app, not a CDN."""
    page = browser.new_page(viewport={"width": 1366, "height": 900})
    page.goto(service_url + "/docs")
    page.get_by_text("/v1/inspect/batch", exact=True).first.wait_for(timeout=30_000)
    for path in ("/v1/inspect", "/health", "/v1/model"):
        assert page.get_by_text(path, exact=True).count() >= 1, path
    page.screenshot(path=str(tmp_path / "docs.png"))
    page.close()


def test_page_reports_a_rejected_upload(browser, service_url, tmp_path):
    page = browser.new_page(viewport={"width": 1366, "height": 800})
    page.goto(service_url + "/")
    bad = tmp_path / "notes.txt"
    bad.write_text("this is not a steel image\n")
    page.set_input_files("#file-input", str(bad))
    page.wait_for_selector('.card[data-status="error"]', timeout=30_000)
    message = page.locator(".card .error").inner_text()
    assert message.startswith("415") and "notes.txt" in message
    page.close()
