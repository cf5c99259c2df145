"""The one predictor's stream: order, completeness, bad inputs, back-pressure, shutdown, and the
inline schedule giving exactly what the pipelined one gives."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="module")
def inspector(trained_bundle: Path):
    from steelscan.inference.predictor import Inspector

    return Inspector(trained_bundle, engine="torch", device="cpu", batch_size=3)


def iter_predict(predictor, items, batch_size=None, workers=2, queue_size=None):
    if batch_size is not None:
        predictor.batch_size = batch_size
    for p in predictor.stream(items, workers=workers, queue_size=queue_size):
        yield p.result


@pytest.fixture(scope="module")
def real_images(severstal_dir: Path) -> list[Path]:
    return sorted((severstal_dir / "images").glob("*.jpg"))


def _pipeline_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("steelscan-") and t.is_alive()]


def test_every_input_once_in_order_and_same_as_inspect_batch(inspector, real_images):
    from steelscan.imageio import read_image

    items = [(p.name, p) for p in real_images]
    results = list(iter_predict(inspector, items, batch_size=3, workers=2))
    assert [r.image_id for r in results] == [p.name for p in real_images]
    assert all(r.error is None for r in results)
    inline = list(iter_predict(inspector, items, batch_size=3, workers=0))
    for got, want in zip(results, inline, strict=True):
        assert [c.rle() for c in got.classes] == [c.rle() for c in want.classes]
        assert got.defect_probability == want.defect_probability
    expected = inspector.inspect_batch([(p.name, read_image(p)) for p in real_images])
    for got, want in zip(results, expected, strict=True):
        assert (got.height, got.width) == (256, 1600)
        assert [c.rle() for c in got.classes] == [c.rle() for c in want.classes]
        assert got.defect_probability == pytest.approx(want.defect_probability, abs=1e-6)
        assert {"decode", "model", "postprocess", "latency"} <= set(got.timings_ms)
    assert not _pipeline_threads()


def test_unreadable_images_yield_errors_and_the_stream_goes_on(inspector, real_images, tmp_path):
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(real_images[0].read_bytes()[:2000])
    not_image = tmp_path / "notes.jpg"
    not_image.write_text("this is not a JPEG")
    items = [
        ("a", real_images[0]),
        ("truncated", truncated),
        ("b", real_images[1]),
        ("missing", tmp_path / "missing.jpg"),
        ("text", not_image),
        ("c", real_images[2]),
        ("bytes", real_images[3].read_bytes()),
    ]
    results = list(iter_predict(inspector, items, batch_size=2, workers=2))
    assert [r.image_id for r in results] == [i for i, _ in items]
    inline = list(iter_predict(inspector, items, batch_size=2, workers=0))
    assert [r.error for r in inline] == [r.error for r in results]
    errors = {r.image_id: r.error for r in results if r.error}
    assert set(errors) == {"truncated", "missing", "text"}
    assert "truncated.jpg" in errors["truncated"] and "missing.jpg" in errors["missing"]
    assert "notes.jpg" in errors["text"]
    for r in results:
        if r.error:
            assert r.classes == [] and "error" in r.to_dict()
        else:
            assert len(r.classes) == 4 and (r.height, r.width) == (256, 1600)


def test_images_come_back_with_results(inspector, real_images):
    items = [(p.name, p) for p in real_images[:3]] + [("bad", b"not an image")]
    inspector.batch_size = 2
    out = [(p.result, p.image) for p in inspector.stream(items, keep_images=True)]
    assert [r.image_id for r, _ in out] == [p.name for p in real_images[:3]] + ["bad"]
    assert all(img.shape == (256, 1600, 3) and img.dtype == np.uint8 for _, img in out[:3])
    assert out[3][1] is None and out[3][0].error


def test_streaming_is_bounded_and_stops_cleanly(inspector, real_images):
    """The feeder may only run a bounded distance ahead of the consumer (flat memory)."""
    image = np.zeros((128, 800, 3), dtype=np.uint8)
    pulled = 0

    def source():
        nonlocal pulled
        for i in range(200):
            pulled += 1
            yield f"img{i}", image

    batch, depth = 2, 4
    stream = iter_predict(inspector, source(), batch_size=batch, workers=2, queue_size=depth)
    first = next(stream)
    time.sleep(0.5)  # let the pipeline fill up as far as its queues allow
    assert first.image_id == "img0" and first.error is None
    bound = 2 * depth + 2 * batch + 3
    assert pulled <= bound, f"feeder pulled {pulled} inputs; bounded queues allow {bound}"
    stream.close()  # early stop: every pipeline thread ends
    deadline = time.time() + 10
    while _pipeline_threads() and time.time() < deadline:
        time.sleep(0.05)
    assert not _pipeline_threads()


def test_a_failing_input_iterator_is_raised_to_the_caller(inspector, real_images):
    def source():
        yield real_images[0].name, real_images[0]
        raise RuntimeError("listing failed")

    with pytest.raises(RuntimeError, match="listing failed"):
        list(iter_predict(inspector, source(), batch_size=1))
