"""``steelscan predict --format coco``: COCO results JSON that pycocotools loads and evaluates.

Real Severstal images, converted to a COCO dataset with ``steelscan data convert`` (its image and
category ids renumbered, so reusing them is seen), inspected by a tiny untrained bundle whose
thresholds split the masks into many components. Checked: ``loadRes`` + ``COCOeval`` (segm) run
against the ground truth; every instance is one component of the predicted mask, the same bytes
``pycocotools.mask.encode`` gives, and together they are exactly the masks of submission.csv and
predictions.jsonl; a killed and resumed run writes the same coco_results.json.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from tiny_models import tiny_bundle

from steelscan import rle
from steelscan.cli import main
from steelscan.inference.journal import JOURNAL_DIR

REPO = Path(__file__).resolve().parents[1]
# two defect-free images, one with classes 3 and 4, one with class 1, one with class 3
IMAGES = ["0a1cade03.jpg", "03db6bbc3.jpg", "000a4bcdd.jpg", "0a21ce787.jpg", "0a26aceb2.jpg"]
COCO_FILES = ("coco_results.json", "coco_images.json")


def _run(argv: list) -> int:
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    return int(exc.value.code or 0)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """Thresholds near the top of the untrained net's probabilities: many small components."""
    from steelscan.manifest import PostProcess

    pp = PostProcess(
        gate_threshold=0.0,
        class_thresholds=[0.0] * 4,
        pixel_thresholds=[0.581, 0.479, 0.477, 0.592],
        min_areas=[0] * 4,
        min_component_areas=[10] * 4,
    )
    return tiny_bundle(tmp_path_factory.mktemp("coco-model") / "model", postprocess=pp)


@pytest.fixture(scope="module")
def gt_dir(severstal_dir, tmp_path_factory) -> Path:
    """Five Severstal images as a COCO dataset whose ids are not 1..N (images 101, 108, ...;
    categories 11..14 by name), as a CVAT export's would be."""
    dst = tmp_path_factory.mktemp("coco-gt") / "coco"
    assert _run(["data", "convert", severstal_dir, "--to", "coco", "--out", dst]) == 0
    path = dst / "annotations.json"
    doc = json.loads(path.read_text())
    keep = {e["id"]: e for e in doc["images"] if e["file_name"] in IMAGES}
    new_image = {old: 101 + 7 * n for n, old in enumerate(sorted(keep, reverse=True))}
    new_cat = {c["id"]: 10 + int(c["name"]) for c in doc["categories"]}
    doc["images"] = [{**e, "id": new_image[e["id"]]} for e in keep.values()]
    doc["annotations"] = [
        {**a, "image_id": new_image[a["image_id"]], "category_id": new_cat[a["category_id"]]}
        for a in doc["annotations"]
        if a["image_id"] in keep
    ]
    doc["categories"] = [{**c, "id": new_cat[c["id"]]} for c in doc["categories"]]
    path.write_text(json.dumps(doc))
    return dst


def _command(model: Path, inputs: list[Path], out: Path, *extra: str) -> list:
    return ["predict", model, *inputs, "--out", out, "--engine", "torch", "--device", "cpu", *extra]


COCO_ARGS = ("--batch-size", "2", "--format", "csv,jsonl,coco")


@pytest.fixture(scope="module")
def predicted(model, gt_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("coco-pred") / "out"
    assert _run(_command(model, [gt_dir], out, *COCO_ARGS)) == 0
    return out


def _results(out: Path) -> list[dict]:
    return json.loads((out / "coco_results.json").read_text())


def _jsonl(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]


def test_results_load_and_evaluate_against_the_coco_ground_truth(gt_dir, predicted):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = COCO(str(gt_dir / "annotations.json"))
    dt = gt.loadRes(str(predicted / "coco_results.json"))
    ev = COCOeval(gt, dt, "segm")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    assert len(ev.stats) == 12 and ev.stats[0] >= 0.0  # AP computed (-1: nothing to match)
    results = _results(predicted)
    by_name = {e["file_name"]: e["id"] for e in gt.dataset["images"]}
    assert {r["image_id"] for r in results} <= set(by_name.values())
    assert {r["category_id"] for r in results} <= {11, 12, 13, 14}  # the dataset's, by name
    images = json.loads((predicted / "coco_images.json").read_text())
    assert {e["file_name"]: e["id"] for e in images["images"]} == by_name
    assert [(e["height"], e["width"]) for e in images["images"]] == [(256, 1600)] * len(IMAGES)
    assert {c["id"]: c["name"] for c in images["categories"]} == {
        10 + k: str(k) for k in range(1, 5)
    }
    # no ground truth needed: the images file stands in for it
    COCO(str(predicted / "coco_images.json")).loadRes(str(predicted / "coco_results.json"))


def test_instances_are_the_components_of_the_predicted_masks(gt_dir, predicted):
    from pycocotools import mask as coco_mask

    images = json.loads((predicted / "coco_images.json").read_text())["images"]
    name_of = {e["id"]: e["file_name"] for e in images}
    cats = {
        e["id"]: e["name"]
        for e in json.loads((predicted / "coco_images.json").read_text())["categories"]
    }
    grouped: dict[tuple[str, str], list[dict]] = {}
    for r in _results(predicted):
        grouped.setdefault((name_of[r["image_id"]], cats[r["category_id"]]), []).append(r)
    with open(predicted / "submission.csv", newline="") as fh:
        rows = {(r["ImageId"], r["ClassId"]): r["EncodedPixels"] for r in csv.DictReader(fh)}
    records = {rec["image_id"]: rec for rec in _jsonl(predicted)}
    assert set(records) == set(IMAGES)
    assert all("component_scores" not in rec for rec in records.values())  # journal-only
    several = 0
    for (image_id, cls), code in rows.items():
        rec = records[image_id]
        (c,) = [c for c in rec["classes"] if str(c["class_id"]) == cls]
        assert c["rle"] == code
        want = rle.decode(code, (rec["height"], rec["width"]))
        found = grouped.get((image_id, cls), [])
        assert len(found) == len(c["boxes"])  # one instance per component (= per box)
        several += len(found) > 1
        union = np.zeros_like(want)
        for r, box in zip(found, c["boxes"], strict=True):
            seg = {"size": r["segmentation"]["size"], "counts": r["segmentation"]["counts"]}
            m = coco_mask.decode({**seg, "counts": seg["counts"].encode()})
            assert seg["size"] == [rec["height"], rec["width"]]
            assert cv2.connectedComponents(m, connectivity=8)[0] == 2  # one component
            assert not (union & m).any()
            union |= m
            assert coco_mask.encode(np.asfortranarray(m))["counts"].decode() == seg["counts"]
            x1, y1, x2, y2 = box
            assert r["bbox"] == [x1, y1, x2 - x1, y2 - y1]
            assert r["area"] == m.sum()
            assert 0.0 <= r["score"] <= 1.0
        assert np.array_equal(union, want)
    assert several >= 3  # the thresholds did split masks into components


def test_scores_are_each_components_mean_probability():
    from pycocotools import mask as coco_mask

    from steelscan.inference.coco_results import component_rles, component_scores
    from steelscan.inference.raw import RawPrediction
    from steelscan.inference.result import ClassResult, InspectionResult

    rng = np.random.default_rng(0)
    probs = rng.random((2, 40, 60)).astype(np.float32)
    masks = (probs > 0.8).astype(np.uint8)
    masks[1] = 0
    classes = [
        ClassResult(k, k + 1, str(k + 1), 0.7, bool(masks[k].any()), masks[k], int(masks[k].sum()))
        for k in range(2)
    ]
    result = InspectionResult("x", 40, 60, 0.7, classes)
    raw = RawPrediction(class_probs=np.array([0.5, 0.9], np.float32), mask_probs=probs)
    n, labels = cv2.connectedComponents(masks[0], connectivity=8)
    assert n > 50
    want = [float(probs[0][labels == j].mean()) for j in range(1, n)]
    hard, soft = component_scores(result, raw, "hard"), component_scores(result, raw, "soft")
    assert np.allclose(hard[0], want, atol=1e-6) and hard[1] == [] and soft[1] == []
    assert np.allclose(soft[0], [0.5 * w for w in want], atol=1e-6)
    rles = component_rles(masks[0])
    assert [r["counts"] for r in rles] == [
        coco_mask.encode(np.asfortranarray((labels == j).astype(np.uint8)))["counts"]
        for j in range(1, n)
    ]


def test_plain_images_get_fresh_ids_and_the_other_tables_do_not_change(
    model, severstal_dir, tmp_path, capsys
):
    files = [severstal_dir / "images" / name for name in IMAGES[:3]]
    plain, coco = tmp_path / "plain", tmp_path / "coco"
    assert _run(_command(model, files, plain)) == 0
    assert not (plain / "coco_results.json").exists()
    assert _run(_command(model, files, coco, "--format", "coco,jsonl")) == 0
    assert not (coco / "submission.csv").exists() and (coco / "errors.csv").is_file()

    def strip(rows: list[dict]) -> list[dict]:
        return [{k: v for k, v in r.items() if k != "timings_ms"} for r in rows]

    assert strip(_jsonl(coco)) == strip(_jsonl(plain))  # scores stay in the journal
    images = json.loads((coco / "coco_images.json").read_text())
    assert [(e["id"], e["file_name"]) for e in images["images"]] == [
        (n, name) for n, name in enumerate(IMAGES[:3], start=1)
    ]
    assert [c["id"] for c in images["categories"]] == [1, 2, 3, 4]  # the model's ClassIds
    assert {r["image_id"] for r in _results(coco)} <= {1, 2, 3}
    # another --format over a finished coco journal is another run: refused, nothing touched
    stamp = (coco / "coco_results.json").stat().st_mtime_ns
    capsys.readouterr()
    assert _run(_command(model, files, coco)) == 2
    assert "--format coco was on, now unset" in capsys.readouterr().err
    assert (coco / "coco_results.json").stat().st_mtime_ns == stamp
    assert _run(_command(model, files, coco, "--format", "coco,jsonl")) == 0
    assert "nothing to do" in capsys.readouterr().err
    assert (coco / "coco_results.json").stat().st_mtime_ns == stamp
    assert _run(_command(model, files, coco, "--format", "xml")) == 2
    assert "choose a comma-separated list of csv, jsonl, coco" in capsys.readouterr().err


def test_a_killed_and_resumed_run_writes_the_same_coco_results(
    model, gt_dir, predicted, tmp_path, capsys
):
    from test_resume import _journaled, _kill_at

    out = tmp_path / "out"
    args = [sys.executable, "-m", "steelscan", *map(str, _command(model, [gt_dir], out))]
    args += list(COCO_ARGS)
    code = _kill_at(args, out, tmp_path / "killed.log", None, 3)
    assert code < 0, (tmp_path / "killed.log").read_text()
    assert 3 <= _journaled(out) < len(IMAGES)
    assert not any((out / name).exists() for name in COCO_FILES)
    proc = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "resuming:" in proc.stderr
    for name in COCO_FILES:
        assert (out / name).read_bytes() == (predicted / name).read_bytes(), name

    # assembled from the journal alone: the finals deleted, the same bytes again
    for name in COCO_FILES:
        (out / name).unlink()
    (out / JOURNAL_DIR / "done.json").unlink()
    assert _run(_command(model, [gt_dir], out, *COCO_ARGS)) == 0
    for name in COCO_FILES:
        assert (out / name).read_bytes() == (predicted / name).read_bytes(), name
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    capsys.readouterr()
    shutil.rmtree(out)
