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


def test_demo_pipeline_writes_every_output(tmp_path, capsys):
    """The demo's whole chain (synth -> train -> tune -> predict -> evaluate) with a tiny preset,
    its progress as a log file gets it (stderr is not a terminal under pytest)."""
    from steelscan.demo import run_demo
    from steelscan.training import TrainConfig

    lines: list[str] = []
    r = run_demo(
        tmp_path / "demo", n=20, config=TrainConfig.tiny(), progress=True, log=lines.append
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
    # the tiny preset does not export: auto falls back to torch, and the demo says so
    assert r.engine == "torch fp32" and r.engines == []
    assert any(line.strip().startswith("engine: torch fp32 (auto: ") for line in lines)
    assert set(r.bars) == {"kaggle", "dice", "gate"}
    err = capsys.readouterr().err
    assert "\r" not in err  # no progress bar redrawn in place
    assert "classifier epoch 1/1:" in err and "segmenter epoch 2/2:" in err
    assert "post-processing tuned: Kaggle score" in err


def test_demo_summary_holds_the_gate_to_its_bar(tmp_path, monkeypatch):
    """A gate that skips nothing looks broken: gate accuracy has a bar beside Kaggle and Dice,
    and the summary names the engine that predicted."""
    from typer.testing import CliRunner

    import steelscan.demo as demo
    from steelscan.cli import app

    def fake_run_demo(out, **kwargs):
        return demo.DemoResult(
            out=Path(out),
            kaggle=0.956,
            empty_baseline=0.83,
            dice_nonempty=0.88,
            gate_accuracy=0.594,
            seconds=225.0,
            metrics={"n_images": 32, "report": "r.md"},
            engine="openvino int8+bf16",
            engines=[
                {"label": "torch fp32", "images_per_s": 3.4, "kaggle": 0.956, "keeps_score": True},
                {
                    "label": "openvino int8+bf16",
                    "images_per_s": 22.0,
                    "kaggle": 0.955,
                    "keeps_score": True,
                },
                {"label": "onnx int8", "images_per_s": None, "error": "boom"},
            ],
        )

    result = demo.DemoResult(**{**fake_run_demo(tmp_path).__dict__, "gate_accuracy": 0.95})
    assert result.passed
    assert not fake_run_demo(tmp_path).passed  # Kaggle and Dice pass, the gate does not
    monkeypatch.setattr(demo, "run_demo", fake_run_demo)
    out = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "d")])
    assert out.exit_code == 0, out.output
    gate_line = next(x for x in out.output.splitlines() if "gate accuracy" in x)
    assert "0.5940" in gate_line and "BELOW BAR" in gate_line
    assert "engine openvino int8+bf16" in out.output
    used = next(x for x in out.output.splitlines() if "<- used" in x)
    assert used.strip().startswith("openvino int8+bf16")
    assert "onnx int8" in out.output and "failed: boom" in out.output
