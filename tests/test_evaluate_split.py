"""`steelscan evaluate MODEL DATA` scores what the user gives: every image of a dataset the model
never saw, only the validation split of its own training data; and top-1 accuracy for
single-label data."""

from __future__ import annotations

import shutil

import pytest

from steelscan.cli import main


def run(argv: list) -> int:
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    return int(exc.value.code or 0)


def test_other_data_is_scored_whole_training_data_by_its_val_split(
    trained_bundle, synth_small, tmp_path, capsys
):
    from steelscan.bundle import read_manifest
    from steelscan.data import load_dataset
    from steelscan.evaluation.evaluate import select_records

    other = tmp_path / "other-copy"  # the same images under another path: data it never saw
    shutil.copytree(synth_small, other)
    n_all = len(load_dataset(other))
    n_val = len(select_records(load_dataset(synth_small), read_manifest(trained_bundle), "val"))
    assert 0 < n_val < n_all

    assert run(["evaluate", trained_bundle, other, "--out", tmp_path / "e1"]) == 0
    out = capsys.readouterr().out
    assert f"{n_all} images scored (every image)" in out

    assert run(["evaluate", trained_bundle, synth_small, "--out", tmp_path / "e2"]) == 0
    out = capsys.readouterr().out
    assert f"{n_val} images scored (the model's validation split)" in out

    assert (
        run(["evaluate", trained_bundle, synth_small, "--out", tmp_path / "e3", "--split", "all"])
        == 0
    )
    assert f"{n_all} images scored (every image)" in capsys.readouterr().out
    assert run(["evaluate", trained_bundle, other, "--out", tmp_path / "e4", "--split", "x"]) == 2
    assert "--split must be one of auto, val, all" in capsys.readouterr().err


def test_top1_accuracy_on_single_label_data(trained_bundle, synth_small, tmp_path):
    """Recounted by hand from the predictor's class probabilities on the single-label images."""
    import numpy as np

    from steelscan.data import load_dataset
    from steelscan.evaluation.evaluate import evaluate, iter_samples, single_label
    from steelscan.inference.predictor import Predictor

    ds = load_dataset(synth_small)
    one = [r for r in ds.records if sum(r.present) == 1]
    if len(one) < 2:
        pytest.skip("the synthetic set has fewer than 2 single-label images")
    assert single_label(one) and not single_label(ds.records)
    sub = ds.subset([r.image_id for r in one])
    predictor = Predictor(trained_bundle, engine="torch", device="cpu")
    m = evaluate(predictor, sub, tmp_path / "e", split="all", progress=False)
    hits = [
        int(np.argmax(s.raw.class_probs)) == int(np.argmax(s.record.present))
        for s in iter_samples(predictor, one, progress=False)
    ]
    assert m["gate"]["top1_accuracy"] == pytest.approx(np.mean(hits))
    full = evaluate(predictor, synth_small, tmp_path / "f", split="all", progress=False)
    assert "top1_accuracy" not in full["gate"]  # multi-label data: top-1 means nothing
