"""One image, four faces, one answer: CLI, Python API, evaluation and the HTTP service agree.

The same real Severstal images (cropped to 256x320 so a tiny bundle runs them in milliseconds) go
through ``steelscan predict`` (submission.csv and predictions.jsonl), ``Predictor.inspect``,
``evaluate`` (its per-image results and the samples it scores) and a real ``steelscan serve``
process, for every engine an exported bundle offers: torch, onnx and openvino in float32, and both
int8 models. Within an engine every face must give byte-identical RLE and equal probabilities:
they all take the one predictor road, and this is the test that would notice a face that did not.

The tiny bundle is untrained, so its thresholds are set from its own probabilities on these images
(pixel thresholds at a high quantile, one image under the hard gate, one class that can never be
present, small components removed), which makes the masks non-trivial and every rule matter.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from serving import serve_process
from tiny_models import tiny_bundle

from steelscan import rle
from steelscan.cli import main

pytestmark = pytest.mark.slow

HEIGHT, WIDTH = 256, 320
# Source image -> (left column of its crop, format it is stored in); windows hold real defects.
CROPS = {"000a4bcdd.jpg": (64, "jpg"), "03db6bbc3.jpg": (96, "png"), "0a1cade03.jpg": (0, "png")}
ENGINES = [
    pytest.param("torch", False, id="torch"),
    pytest.param("onnx", False, id="onnx-fp32"),
    pytest.param("openvino", False, id="openvino-fp32"),
    pytest.param("onnx", True, id="onnx-int8"),
    pytest.param("openvino", True, id="openvino-int8"),
]

Answer = dict[str, Any]  # image_id -> {"defect": float, "classes": [(class_id, rle, prob)]}


# -- fixtures: a small labelled dataset, a bundle tuned to it, its ONNX export ------------------
def _truth_rows(severstal_dir: Path) -> dict[str, list[tuple[int, str]]]:
    rows: dict[str, list[tuple[int, str]]] = {}
    with open(severstal_dir / "train.csv", newline="") as fh:
        for r in csv.DictReader(fh):
            rows.setdefault(r["ImageId"], []).append((int(r["ClassId"]), r["EncodedPixels"]))
    return rows


@pytest.fixture(scope="module")
def dataset(severstal_dir: Path, tmp_path_factory) -> Path:
    """A Severstal-layout folder of three crops with their cropped ground truth."""
    root = tmp_path_factory.mktemp("consistency") / "data"
    (root / "train_images").mkdir(parents=True)
    truth = _truth_rows(severstal_dir)
    lines = ["ImageId,ClassId,EncodedPixels"]
    for name, (x0, fmt) in CROPS.items():
        image_id = f"{Path(name).stem}.{fmt}"
        with Image.open(severstal_dir / "images" / name) as im:
            im.convert("RGB").crop((x0, 0, x0 + WIDTH, HEIGHT)).save(
                root / "train_images" / image_id
            )
        for class_id, encoded in truth.get(name, []):
            cropped = rle.encode(rle.decode(encoded, (256, 1600))[:, x0 : x0 + WIDTH])
            if cropped:
                lines.append(f"{image_id},{class_id},{cropped}")
    (root / "train.csv").write_text("\n".join(lines) + "\n")
    assert len(lines) > 2, "the crops should hold some ground truth"
    return root


def _images(dataset: Path) -> list[Path]:
    return sorted((dataset / "train_images").iterdir())


def _tuned_postprocess(model: Path, images: list[Path]):
    """Thresholds that make the untrained model's masks non-trivial on ``images``."""
    from steelscan.inference.predictor import Predictor

    raws = Predictor(model, engine="torch", device="cpu", gate_mode="none").raw(images)
    gate = sorted(float(np.max(r.class_probs)) for r in raws)
    probs = np.stack([r.mask_probs for r in raws])  # (N, K, H, W)
    k = probs.shape[1]
    return Predictor(
        model, engine="torch", device="cpu"
    ).postprocess.model_copy(
        update={
            "gate_mode": "hard",
            "gate_threshold": (gate[0] + gate[1]) / 2,  # the least likely image is gated out
            "class_thresholds": [0.0] * (k - 1) + [1.5],  # the last class is never present
            "pixel_thresholds": [float(np.quantile(probs[:, i], 0.9)) for i in range(k)],
            "min_areas": [0, 0, 50, 0][:k],
            "min_component_areas": [8] * k,
        }
    )


@pytest.fixture(scope="module")
def exported(dataset: Path, tmp_path_factory) -> Path:
    """A tiny bundle at the crops' size, thresholds set from its own output, exported to ONNX
    (fp32 and int8, calibrated on the crops). The export keeps the torch weights, so this one
    bundle serves every engine."""
    from steelscan.inference.export import export_bundle
    from steelscan.manifest import MANIFEST_NAME, ModelManifest

    base = tmp_path_factory.mktemp("consistency_model")
    model = tiny_bundle(base / "tiny")
    path = model / MANIFEST_NAME
    manifest = ModelManifest.model_validate_json(path.read_text())
    update = {
        "image_height": HEIGHT,  # the service only takes images of the manifest's size
        "image_width": WIDTH,
        "name": "consistency-model",
        "postprocess": _tuned_postprocess(model, _images(dataset)),
    }
    path.write_text(manifest.model_copy(update=update).model_dump_json(indent=2))
    return export_bundle(model, base / "exported", int8=True, calibration=dataset)


# -- the four faces, each read back as an Answer ------------------------------------------------
def _engine_kwargs(engine: str, int8: bool) -> dict[str, Any]:
    """The engine options exactly as the CLI builds them from its flags."""
    from steelscan.cli.common import engine_options

    return engine_options(engine, device="cpu", int8=int8)


def _flags(engine: str, int8: bool) -> list[str]:
    return ["--engine", engine, "--device", "cpu"] + (["--int8"] if int8 else [])


def _from_result(res) -> tuple[float, list[tuple[int, str, float]]]:
    classes = [(c.class_id, c.rle(), round(float(c.probability), 6)) for c in res.classes]
    return round(float(res.defect_probability), 6), classes


def _from_json(d: dict) -> tuple[float, list[tuple[int, str, float]]]:
    classes = [(c["class_id"], c["rle"], c["probability"]) for c in d["classes"]]
    return d["defect_probability"], classes


def api_answer(model: Path, images: list[Path], kwargs: dict) -> tuple[Answer, Any]:
    from steelscan.inference.predictor import Predictor

    predictor = Predictor(model, **kwargs)
    results = {p.name: predictor.inspect(p) for p in images}
    return {k: _from_result(r) for k, r in results.items()}, results


def cli_answer(model: Path, images: Path, out: Path, flags: list[str]) -> tuple[Answer, dict]:
    """``steelscan predict``: the predictions.jsonl answer and submission.csv RLE by (id, class)."""
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in ["predict", model, images, "--out", out, *flags]])
    assert exc.value.code in (0, None)
    lines = (out / "predictions.jsonl").read_text().splitlines()
    answer = {d["image_id"]: _from_json(d) for d in map(json.loads, lines)}
    with open(out / "submission.csv", newline="") as fh:
        sub = {(r["ImageId"], int(r["ClassId"])): r["EncodedPixels"] for r in csv.DictReader(fh)}
    return answer, sub


def service_answer(url: str, images: list[Path]) -> tuple[Answer, dict]:
    import httpx

    answer = {}
    with httpx.Client(base_url=url, timeout=120) as client:
        model = client.get("/v1/model").json()
        for p in images:
            mime = "image/png" if p.suffix == ".png" else "image/jpeg"
            r = client.post("/v1/inspect", files={"file": (p.name, p.read_bytes(), mime)})
            assert r.status_code == 200, r.text
            answer[p.name] = _from_json(r.json())
    return answer, model


# -- the test ---------------------------------------------------------------------------------
@pytest.mark.parametrize("engine, int8", ENGINES)
def test_every_face_gives_the_same_answer(engine, int8, dataset, exported, tmp_path):
    pytest.importorskip({"torch": "torch", "onnx": "onnxruntime"}.get(engine, engine))
    from steelscan.evaluation.evaluate import evaluate, iter_samples, split_records
    from steelscan.evaluation.metrics import DiceAccumulator
    from steelscan.inference.predictor import Predictor

    images = _images(dataset)
    kwargs = {"engine": engine, **_engine_kwargs(engine, int8)}
    # (b) the Python API is the reference the other faces are held to
    expected, results = api_answer(exported, images, kwargs)
    some_rle = [r for _, classes in expected.values() for _, r, _ in classes if r]
    assert some_rle, "the thresholds should leave some mask to compare"
    gated = [k for k, (_, classes) in expected.items() if not any(r for _, r, _ in classes)]
    assert gated, "the hard gate should leave one image empty"

    # (a) steelscan predict: predictions.jsonl and submission.csv
    got, submission = cli_answer(
        exported, dataset / "train_images", tmp_path / "pred", _flags(engine, int8)
    )
    assert got == expected
    for image_id, (_, classes) in expected.items():
        for class_id, encoded, _ in classes:
            assert submission[(image_id, class_id)] == encoded, (image_id, class_id)

    # (c) evaluation: the samples it scores, and its per-image report (defect probability, Dice)
    predictor = Predictor(exported, **kwargs)
    manifest = predictor.manifest
    _, records = split_records(dataset, manifest, "all")
    samples = {
        s.record.image_id: s.result for s in iter_samples(predictor, records, progress=False)
    }
    assert {k: _from_result(r) for k, r in samples.items()} == expected
    for image_id, res in samples.items():  # in-process faces: the very same floats, unrounded
        ref = results[image_id]
        assert res.defect_probability == ref.defect_probability
        assert [c.probability for c in res.classes] == [c.probability for c in ref.classes]
    metrics = evaluate(exported, dataset, tmp_path / "eval", progress=False, **kwargs)
    assert metrics["engine"] == predictor.engine_label
    assert sorted(row["image_id"] for row in metrics["per_image"]) == sorted(expected)
    dice = DiceAccumulator(manifest.class_ids, manifest.classes)
    for row in metrics["per_image"]:
        res = results[row["image_id"]]
        assert row["defect_probability"] == res.defect_probability
        rec = next(r for r in records if r.image_id == row["image_id"])
        pred = np.stack([c.mask for c in res.classes])
        assert row["dice"] == [round(float(d), 6) for d in dice.add_masks(pred, rec.masks())]

    # (d) a real `steelscan serve` with the same engine flags
    with serve_process(
        [str(exported), *_flags(engine, int8), "--log-level", "warning"], tmp_path / "log"
    ) as url:
        got, model = service_answer(url, images)
    assert got == expected
    assert (model["engine"], model["precision"]) == tuple(predictor.engine_label.split())
    assert f"engine: {predictor.engine_label}" in (tmp_path / "log").read_text()
