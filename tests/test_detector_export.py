"""The detector's ONNX export and the onnx/openvino engines' ``detect``, against torch on real
NEU images: raw outputs, the post-processed boxes, predict on a bundle without a segmenter,
int8 (kept only where it agrees with float32) and the engine measurements at the end of training.

The detector is the untrained tiny one (tests/tiny_models.py): its boxes are arbitrary but
deterministic, which is all an engine-equivalence check needs."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")

sys.path.insert(0, str(Path(__file__).parent))
from tiny_models import tiny_detector_bundle  # noqa: E402

NEU_IMAGES = ("crazing_1", "inclusion_1", "patches_1", "scratches_1")
ENGINES = ("onnx", "openvino")


@pytest.fixture(scope="module")
def neu_files(neu_dir: Path) -> list[Path]:
    files = [neu_dir / "images" / f"{name}.jpg" for name in NEU_IMAGES]
    missing = [f for f in files if not f.is_file()]
    if missing:
        pytest.skip(f"{missing[0]} is absent (real NEU images live in ../shared/data/neu)")
    return files


@pytest.fixture(scope="module")
def exported(tmp_path_factory, neu_dir: Path) -> Path:
    """A gate + detector bundle (no segmenter) exported with int8 asked for (2 NEU images)."""
    from steelscan.inference.export import export_bundle

    root = tmp_path_factory.mktemp("detector_export")
    src = tiny_detector_bundle(root / "src")
    messages: list[str] = []
    out = export_bundle(
        src,
        root / "onnx",
        int8=True,
        calibration=neu_dir,
        calibration_images=2,
        progress=messages.append,
    )
    (out / "export-log.txt").write_text("\n".join(messages))
    return out


def test_export_names_the_detector_files(exported: Path):
    import onnx

    from steelscan.bundle import load_bundle, sha256_file

    man = json.loads((exported / "manifest.json").read_text())
    det = man["detector"]
    assert det["onnx_file"] == "detector.onnx"
    assert man["files"]["detector.onnx"] == sha256_file(exported / "detector.onnx")
    model = onnx.load(str(exported / "detector.onnx"))
    assert [o.name for o in model.graph.output] == ["boxes", "scores"]
    dims = [d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims[0] and dims[2] and dims[3]  # batch, height and width are dynamic
    # int8: the untrained detector's int8 boxes move more than the limit, so it is dropped, and
    # said so; the file is gone and the manifest names none
    log = (exported / "export-log.txt").read_text()
    assert "int8 detector dropped" in log or "int8 detector kept" in log
    if "dropped" in log:
        assert det["onnx_int8_file"] is None and not (exported / "detector.int8.onnx").exists()
    assert load_bundle(exported).detector is not None  # torch still runs the copy


def _raw(engine: str, bundle: Path, files: list[Path], batch_size: int = 2) -> tuple[Any, list]:
    from steelscan.imageio import read_image
    from steelscan.inference.predictor import Predictor

    opts = {"device": "cpu"} if engine == "torch" else {}
    pred = Predictor(bundle, engine=engine, batch_size=batch_size, **opts)
    return pred, pred.raw([read_image(f) for f in files])


def _matched(a: list, b: list, px: float = 1.0, score: float = 0.01) -> bool:
    """Every box of ``a`` has one in ``b`` of its class, corners within ``px``, score within
    ``score`` (NMS ties may order equal-score boxes differently, so match rather than zip)."""
    if len(a) != len(b):
        return False
    left = list(b)
    for d in a:
        hit = next(
            (
                e
                for e in left
                if e.class_index == d.class_index
                and abs(e.score - d.score) <= score
                and max(abs(u - v) for u, v in zip(d.xywh, e.xywh, strict=True)) <= px
            ),
            None,
        )
        if hit is None:
            return False
        left.remove(hit)
    return True


@pytest.fixture(scope="module")
def torch_raw(exported: Path, neu_files) -> tuple[Any, list]:
    """The reference: torch float32's predictor and raw outputs on the NEU images."""
    return _raw("torch", exported, neu_files)


@pytest.mark.parametrize("engine", ENGINES)
def test_fp32_engines_match_torch_on_real_images(exported: Path, neu_files, torch_raw, engine):
    torch_pred, ref = torch_raw
    pred, got = _raw(engine, exported, neu_files)
    assert pred.engine.has_detector and not pred.engine.has_segmenter
    for r, g in zip(ref, got, strict=True):
        assert g.boxes.dtype == np.float32 and g.box_scores.dtype == np.float32
        assert g.boxes.shape == r.boxes.shape and g.box_scores.shape == r.box_scores.shape
        assert np.abs(g.boxes - r.boxes).max() <= 1.0
        assert np.abs(g.box_scores - r.box_scores).max() <= 0.01
    shown = 0
    for i, (r, g) in enumerate(zip(ref, got, strict=True)):
        a = torch_pred.finish(r, f"img{i}").detections
        b = pred.finish(g, f"img{i}").detections
        assert a, "the tiny detector shows boxes at its lowered threshold"
        assert _matched(a, b), f"{engine}: image {i} boxes differ from torch"
        shown += len(a)
    assert shown >= len(neu_files)


def test_detect_follows_the_input_size(exported: Path):
    """Dynamic height/width: a larger padded batch gives more locations, still as torch."""
    from steelscan.bundle import load_bundle
    from steelscan.inference.engines import make_engine

    bundle = load_bundle(exported)
    x = np.random.default_rng(0).normal(size=(1, 3, 224, 288)).astype(np.float32)
    ref_boxes, ref_scores = make_engine("torch", bundle, device="cpu").detect(x)
    for name in ENGINES:
        boxes, scores = make_engine(name, bundle).detect(x)
        assert boxes.shape == ref_boxes.shape and scores.shape == ref_scores.shape
        assert np.abs(boxes - ref_boxes).max() <= 1.0
        assert np.abs(scores - ref_scores).max() <= 0.01


@pytest.mark.parametrize("engine", ENGINES)
def test_predict_runs_a_bundle_without_segmenter(exported: Path, neu_files, tmp_path, engine):
    from typer.testing import CliRunner

    from steelscan.cli import app

    images = tmp_path / "images"
    images.mkdir()
    for f in neu_files[:2]:
        (images / f.name).write_bytes(f.read_bytes())
    out = tmp_path / "pred"
    result = CliRunner().invoke(
        app, ["predict", str(exported), str(images), "--out", str(out), "--engine", engine]
    )
    assert result.exit_code == 0, result.output
    lines = (out / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == 2
    assert all(json.loads(line)["detections"] for line in lines)


def test_runnable_here_and_auto_for_a_detector_bundle(exported: Path, tmp_path):
    from steelscan.bundle import load_bundle
    from steelscan.inference.engines import choose_engine, runnable_here

    bundle = load_bundle(exported)
    assert runnable_here(bundle, "onnx", {}) is None
    assert runnable_here(bundle, "openvino", {}) is None
    assert choose_engine(bundle, "auto").engine == "openvino"
    if bundle.manifest.detector.onnx_int8_file is None:
        # no segmenter: int8 is about the detector, which has no int8 model
        assert runnable_here(bundle, "onnx", {"int8": True}) is not None
        with pytest.raises(ValueError, match="int8 ONNX model for the detector"):
            from steelscan.inference.predictor import Predictor

            Predictor(exported, engine="onnx", int8=True)
    # a bundle that was never exported runs on torch under auto
    plain = load_bundle(tiny_detector_bundle(tmp_path / "plain"))
    assert runnable_here(plain, "onnx", {}) is not None
    assert choose_engine(plain, "auto").engine == "torch"


def test_int8_detector_kept_where_it_agrees(exported: Path, neu_dir: Path, tmp_path, monkeypatch):
    """With the limits opened wide the int8 detector is kept, named, and run by both int8
    engines with scores near float32's; the agreement figures are what the export judged."""
    import shutil

    from steelscan.bundle import load_bundle
    from steelscan.inference import export
    from steelscan.inference.engines import make_engine, runnable_here

    bundle_dir = tmp_path / "b"
    shutil.copytree(exported, bundle_dir)
    manifest = load_bundle(bundle_dir).manifest
    batches = export.calibration_batches(neu_dir, manifest, limit=2)
    monkeypatch.setattr(export, "INT8_BOX_TOLERANCE_PX", 1e9)
    monkeypatch.setattr(export, "INT8_SCORE_TOLERANCE", 1.0)
    new = export.export_in_place(bundle_dir, calibration=batches, int8_stages=("detector",))
    assert new.detector.onnx_int8_file == "detector.int8.onnx"
    score_diff, box_diff = export.detector_int8_agreement(
        bundle_dir / "detector.onnx", bundle_dir / "detector.int8.onnx", batches, 0.05
    )
    assert 0.0 <= score_diff < 0.1 and box_diff >= 0.0
    bundle = load_bundle(bundle_dir)
    ref_boxes, ref_scores = make_engine("onnx", bundle).detect(batches[0])
    for name in ENGINES:
        assert runnable_here(bundle, name, {"int8": True}) is None
        engine = make_engine(name, bundle, int8=True)
        assert engine.has_detector and engine.precision.startswith("int8")
        boxes, scores = engine.detect(batches[0])
        assert boxes.shape == ref_boxes.shape and np.abs(scores - ref_scores).max() < 0.1
    # drop_int8 (training, where int8 lost the score) removes the detector's too
    assert export.drop_int8(bundle_dir).detector.onnx_int8_file is None
    assert not (bundle_dir / "detector.int8.onnx").exists()


def test_measure_scores_a_detector_bundle_by_box_map(exported: Path, neu_dir: Path):
    from steelscan.data import load_dataset
    from steelscan.training.measure import measure_engines

    records = [r for r in load_dataset(neu_dir).records if Path(r.path).stem in NEU_IMAGES]
    assert len(records) == len(NEU_IMAGES)
    out = measure_engines(exported, records, int8=False, warmup=1, say=lambda _m: None)
    labels = [r["label"] for r in out]
    assert labels[0] == "torch fp32" and {"onnx fp32", "openvino fp32"} <= set(labels)
    for rec in out:
        assert rec["metric"] == "box_map50" and "kaggle" not in rec
        assert 0.0 <= rec["box_map50"] <= 1.0
        if rec["options"] == {}:  # float32 engines give torch's boxes: the same mAP
            assert rec["box_map50_delta"] == pytest.approx(0.0, abs=1e-3)
            assert rec["keeps_score"]
