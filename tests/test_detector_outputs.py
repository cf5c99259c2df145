"""The detector's boxes in what ``steelscan predict`` writes: predictions.jsonl, the COCO results
JSON (scored by ``pycocotools``) and the overlays, on real NEU-DET images with a tiny detector.

The detector is untrained (boxes are deterministic but arbitrary: mechanics, not skill). The
input is three NEU images converted to a COCO dataset whose image ids are not 1..3, so the test
also checks that the results keep the dataset's image and category ids.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tiny_models import NEU_CLASSES, tiny_detector_bundle

from steelscan.cli import main

STEMS = ["crazing_1", "patches_1", "scratches_1"]
IMAGE_IDS = {"crazing_1.jpg": 101, "patches_1.jpg": 205, "scratches_1.jpg": 307}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("detector_bundles")
    return {
        "boxes": tiny_detector_bundle(root / "boxes"),
        "both": tiny_detector_bundle(root / "both", with_segmenter=True),
    }


@pytest.fixture(scope="module")
def neu_coco(neu_dir, tmp_path_factory) -> Path:
    """Three real NEU images and their VOC boxes as a COCO dataset with ids 101, 205, 307."""
    from steelscan.data.convert import convert_dataset

    voc = tmp_path_factory.mktemp("neu_voc")
    (voc / "images").mkdir()
    (voc / "annotations").mkdir()
    for stem in STEMS:
        shutil.copy(neu_dir / "images" / f"{stem}.jpg", voc / "images")
        shutil.copy(neu_dir / "annotations" / f"{stem}.xml", voc / "annotations")
    out = tmp_path_factory.mktemp("neu_coco") / "coco"
    convert_dataset(voc, "coco", out)
    doc_path = out / "annotations.json"
    doc = json.loads(doc_path.read_text())
    renumber = {e["id"]: IMAGE_IDS[e["file_name"]] for e in doc["images"]}
    for e in doc["images"]:
        e["id"] = renumber[e["id"]]
    for a in doc["annotations"]:
        a["image_id"] = renumber[a["image_id"]]
    doc_path.write_text(json.dumps(doc))
    return out


def _run(argv: list) -> int:
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    return int(exc.value.code or 0)


def _predict(model: Path, src: Path, out: Path, *extra: str) -> None:
    argv = ["predict", model, src, "--out", out, "--engine", "torch", "--device", "cpu"]
    assert _run([*argv, "--format", "jsonl,coco", "--overlays", "--batch-size", "1", *extra]) == 0


def _jsonl(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]


def test_jsonl_carries_the_detections(bundles, neu_coco, tmp_path):
    out = tmp_path / "out"
    _predict(bundles["boxes"], neu_coco, out)
    rows = _jsonl(out)
    assert sorted(r["image_id"] for r in rows) == sorted(IMAGE_IDS)
    for r in rows:
        dets = r["detections"]
        assert dets, r["image_id"]
        scores = [d["score"] for d in dets]
        assert scores == sorted(scores, reverse=True)  # best first
        assert all(0.05 <= s <= 1 for s in scores)  # the bundle's box score threshold
        for d in dets:
            assert d["name"] == NEU_CLASSES[d["class_index"]]
            assert d["class_id"] == d["class_index"] + 1
            x1, y1, x2, y2 = d["box"]
            assert 0 <= x1 < x2 <= r["width"] and 0 <= y1 < y2 <= r["height"]
        # boxes only: a class is present exactly when the detector kept a box of it
        present = {c["class_id"] for c in r["classes"] if c["present"]}
        assert present == {d["class_id"] for d in dets}


def _coco_eval(out: Path, gt_file: Path, iou_type: str, keep) -> tuple[list[dict], float]:
    """Load the results against ``gt_file`` and run COCOeval on the objects ``keep`` selects."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    results = json.loads((out / "coco_results.json").read_text())
    chosen = [r for r in results if keep(r)]
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_file))
        dt = gt.loadRes(chosen)
        ev = COCOeval(gt, dt, iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return chosen, float(ev.stats[0])


def test_coco_results_hold_one_box_per_detection_in_the_datasets_ids(bundles, neu_coco, tmp_path):
    out = tmp_path / "out"
    _predict(bundles["boxes"], neu_coco, out)
    rows = {r["image_id"]: r for r in _jsonl(out)}
    results = json.loads((out / "coco_results.json").read_text())
    assert all("segmentation" not in r for r in results)  # no segmenter: boxes only
    assert len(results) == sum(len(r["detections"]) for r in rows.values())
    gt = json.loads((neu_coco / "annotations.json").read_text())
    gt_cats = {c["name"]: c["id"] for c in gt["categories"]}
    images = json.loads((out / "coco_images.json").read_text())
    cat_of = {c["name"]: c["id"] for c in images["categories"]}
    for name, cid in gt_cats.items():
        assert cat_of[name] == cid  # the dataset's category ids, matched by name
    by_image: dict[int, list[dict]] = {}
    for r in results:
        by_image.setdefault(r["image_id"], []).append(r)
    assert set(by_image) == set(IMAGE_IDS.values())  # the dataset's image ids
    for file_name, image_id in IMAGE_IDS.items():
        for obj, d in zip(by_image[image_id], rows[file_name]["detections"], strict=True):
            x1, y1, x2, y2 = d["box"]
            assert obj["bbox"] == pytest.approx([x1, y1, x2 - x1, y2 - y1], abs=1e-6)
            assert obj["score"] == d["score"]
            assert obj["category_id"] == cat_of[d["name"]]
    chosen, ap = _coco_eval(out, neu_coco / "annotations.json", "bbox", lambda r: True)
    assert len(chosen) == len(results) and 0.0 <= ap <= 1.0


def test_segmenter_and_detector_write_masks_and_boxes(bundles, neu_coco, tmp_path):
    out = tmp_path / "out"
    _predict(bundles["both"], neu_coco, out)
    rows = _jsonl(out)
    results = json.loads((out / "coco_results.json").read_text())
    masks = [r for r in results if "segmentation" in r]
    boxes = [r for r in results if "segmentation" not in r]
    assert masks and boxes
    assert len(boxes) == sum(len(r["detections"]) for r in rows)
    # per image: its mask instances first, then the detector's boxes
    kinds = [(r["image_id"], "segmentation" in r) for r in results]
    for image_id in IMAGE_IDS.values():
        mine = [is_mask for i, is_mask in kinds if i == image_id]
        assert mine == sorted(mine, reverse=True)
    truth = neu_coco / "annotations.json"
    _, ap_box = _coco_eval(out, truth, "bbox", lambda r: "segmentation" not in r)
    assert 0.0 <= ap_box <= 1.0
    # the mask instances alone load and score too (by their extents: NEU's truth is boxes)
    _, ap_mask = _coco_eval(out, truth, "bbox", lambda r: "segmentation" in r)
    assert 0.0 <= ap_mask <= 1.0


def test_overlays_draw_the_boxes(bundles, neu_coco, tmp_path):
    out = tmp_path / "out"
    _predict(bundles["boxes"], neu_coco, out)
    rows = {r["image_id"]: r for r in _jsonl(out)}
    from steelscan.reports.overlay import class_color

    for file_name in IMAGE_IDS:
        with Image.open(out / "overlays" / f"{Path(file_name).stem}.png") as im:
            arr = np.asarray(im.convert("RGB"))
        assert arr.shape[1] == 200 and arr.shape[0] > 2 * 200  # prediction + ground truth
        panel = arr[22 : 22 + 200]  # the prediction, under its caption
        raw = np.asarray(Image.open(neu_coco / "images" / file_name).convert("RGB"))
        best = rows[file_name]["detections"][0]
        x1, y1 = (int(v) for v in best["box"][:2])
        # the best box is drawn last: its top-left corner pixel is its class colour
        assert tuple(panel[y1, x1]) == class_color(best["class_index"])
        drawn = np.abs(panel.astype(int) - raw.astype(int)).sum(axis=2) > 30
        assert drawn.mean() > 0.01  # frames and score tags, not the image alone


def test_resumed_run_writes_the_same_detections(bundles, neu_coco, tmp_path):
    """A run cut short after one journaled image and resumed writes the same JSON lines (bar the
    timings), the same COCO results and the same overlays as an uninterrupted run."""
    from steelscan.inference.journal import JOURNAL_DIR

    ref, out = tmp_path / "ref", tmp_path / "out"
    _predict(bundles["boxes"], neu_coco, ref)
    _predict(bundles["boxes"], neu_coco, out)
    journal = out / JOURNAL_DIR
    (segment,) = journal.glob("seg-*.jsonl")
    first = segment.read_bytes().splitlines(keepends=True)[0]
    segment.write_bytes(first)
    (journal / "done.json").unlink()
    for name in ("predictions.jsonl", "coco_results.json", "coco_images.json", "errors.csv"):
        (out / name).unlink()
    kept = json.loads(first)["r"]["image_id"]
    for p in (out / "overlays").glob("*.png"):  # the images to redo must be drawn again
        if p.stem != Path(kept).stem:
            p.unlink()
    _predict(bundles["boxes"], neu_coco, out)
    for name in ("coco_results.json", "coco_images.json"):
        assert (out / name).read_bytes() == (ref / name).read_bytes(), name

    def untimed(folder: Path) -> list[dict]:
        return [{k: v for k, v in r.items() if k != "timings_ms"} for r in _jsonl(folder)]

    assert untimed(out) == untimed(ref)
    assert all(r["detections"] for r in untimed(out))
    for p in sorted((ref / "overlays").glob("*.png")):
        assert (out / "overlays" / p.name).read_bytes() == p.read_bytes(), p.name


def test_draw_detections_on_any_size():
    """Sub-pixel boxes still show; a 1600 px strip gets thicker frames than a 200 px image."""
    from steelscan.inference.boxes import DetectedBox
    from steelscan.reports.overlay import box_style, class_color, draw_detections

    for h, w in [(1, 1), (3, 5), (200, 200), (256, 1600)]:
        img = np.full((h, w), 100, np.uint8)
        dets = [DetectedBox(1, 0.9, w * 0.3, h * 0.3, w * 0.3 + 0.2, h * 0.3 + 0.1)]
        out = draw_detections(img, dets, NEU_CLASSES)
        assert out.shape == (h, w, 3)
        assert (out == np.array(class_color(1), np.uint8)).all(axis=2).any(), (h, w)
        edge = DetectedBox(0, 0.5, -5.0, -5.0, w + 5.0, h + 5.0)  # beyond the image: clipped
        assert draw_detections(img, [edge]).shape == (h, w, 3)
    assert box_style(256, 1600)[0] > box_style(200, 200)[0]
    assert draw_detections(np.zeros((4, 4), np.uint8), []).sum() == 0
