"""`steelscan tune`, `steelscan evaluate` and the demo pipeline, end to end on a trained bundle."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from steelscan.cli import main


def run(argv: list) -> int:
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    return int(exc.value.code or 0)


@pytest.fixture()
def bundle_copy(trained_bundle, tmp_path) -> Path:
    dst = tmp_path / "model"
    shutil.copytree(trained_bundle, dst)
    return dst


def test_tune_writes_thresholds_and_never_lowers_the_score(bundle_copy, synth_small, capsys):
    from steelscan.bundle import read_manifest

    assert run(["tune", bundle_copy, synth_small]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("Kaggle score on val"))
    before, after = (float(v) for v in line.replace("->", " ").split()[-3::2])
    assert after >= before - 1e-9
    m = read_manifest(bundle_copy)
    assert m.metrics["tuned_kaggle_after"] == pytest.approx(after, abs=1e-4)
    assert m.metrics["tuned_on"].startswith(f"{Path(synth_small).name}:val")
    assert len(m.postprocess.pixel_thresholds) == 4


def test_evaluate_report_matches_an_independent_recount(bundle_copy, synth_small, tmp_path):
    from steelscan.bundle import load_bundle
    from steelscan.data import load_dataset
    from steelscan.evaluation.evaluate import select_records
    from steelscan.evaluation.metrics import dice
    from steelscan.inference.predictor import Inspector

    out = tmp_path / "eval"
    assert run(["evaluate", bundle_copy, synth_small, "--out", out]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert (out / "report.md").exists()
    assert list(out.glob("*.png")), "the report has plots"
    seg = metrics["segmentation"]

    # The same numbers, recomputed here image by image with the public pieces.
    bundle = load_bundle(bundle_copy)
    inspector = Inspector(bundle)
    records = select_records(load_dataset(synth_small), bundle.manifest, "val")
    scores = []
    for rec in records:
        res = inspector.inspect(rec.path, rec.image_id)
        truth = rec.masks()
        scores += [dice(c.mask, truth[c.index]) for c in res.classes]
    assert seg["num_images"] == len(records)
    assert seg["score"] == pytest.approx(float(np.mean(scores)), abs=1e-9)
    empty = [float(not rec.masks()[k].any()) for rec in records for k in range(4)]
    assert seg["empty_baseline"] == pytest.approx(float(np.mean(empty)), abs=1e-9)
    gate = metrics["gate"]
    assert 0.0 <= gate["defect"]["accuracy"] <= 1.0
    assert gate["recall_threshold"] is not None


def test_evaluate_scores_the_int8_engine_of_an_export(trained_bundle, synth_small, tmp_path):
    """`evaluate --engine onnx --int8` scores what the int8 engine computes, on the same split."""
    from steelscan.data import load_dataset
    from steelscan.evaluation.evaluate import select_records
    from steelscan.evaluation.metrics import dice
    from steelscan.inference.export import export_bundle
    from steelscan.inference.predictor import Inspector

    exported = export_bundle(
        trained_bundle, tmp_path / "onnx", int8=True, calibration=synth_small, calibration_images=2
    )
    out = tmp_path / "eval"
    assert run(["evaluate", exported, synth_small, "--out", out, "--engine", "onnx", "--int8"]) == 0
    score = json.loads((out / "metrics.json").read_text())["segmentation"]["score"]
    int8 = Inspector(exported, engine="onnx", int8=True)
    scores = []
    for rec in select_records(load_dataset(synth_small), int8.manifest, "val"):
        truth = rec.masks()
        scores += [dice(c.mask, truth[c.index]) for c in int8.inspect(rec.path).classes]
    assert score == pytest.approx(float(np.mean(scores)), abs=1e-9)
    assert run(["evaluate", exported, synth_small, "--out", tmp_path / "e2", "--int8"]) == 2


def test_evaluate_refuses_a_dataset_with_other_classes(trained_bundle, neu_dir, tmp_path, capsys):
    code = run(["evaluate", trained_bundle, neu_dir, "--out", tmp_path / "e"])
    assert code == 2
    err = capsys.readouterr().err
    assert "differ from the model's" in err and "Traceback" not in err
    assert not (tmp_path / "e" / "report.md").exists()


def test_demo_pipeline_writes_every_output(tmp_path):
    """The demo's whole chain (synth -> train -> tune -> predict -> evaluate) with a tiny preset."""
    from steelscan.demo import run_demo
    from steelscan.training import TrainConfig

    r = run_demo(
        tmp_path / "demo", n=20, config=TrainConfig.tiny(), progress=False, log=lambda m: None
    )
    n_val = r.metrics["n_images"]
    assert n_val >= 3
    with open(tmp_path / "demo" / "predictions" / "submission.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 * n_val
    assert len({r["ImageId"] for r in rows}) == n_val
    assert len(list((tmp_path / "demo" / "predictions" / "overlays").glob("*.png"))) == n_val
    assert (tmp_path / "demo" / "report" / "report.md").exists()
    assert 0.0 <= r.kaggle <= 1.0 and r.empty_baseline > 0
