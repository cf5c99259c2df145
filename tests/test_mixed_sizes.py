"""Images of many sizes end to end: training batches, prediction, evaluation and overlays.

Real Magnetic-tile images (every one a different size) from ../shared: the gate trains on full
images padded to each batch's largest, the segmenter on crops, validation and prediction run
each image at its own size, and every output carries that size.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import shared_path
from PIL import Image

pytest.importorskip("torch")


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> Path:
    """Four real images per class folder (28 in all, 24+ distinct sizes), and two copies that
    share one file name in two class folders (the overlay-collision case)."""
    src = shared_path("data", "magnetic-tile")
    root = tmp_path_factory.mktemp("mixed") / "mt"
    for folder in sorted(src.glob("MT_*")):
        for jpg in sorted((folder / "Imgs").glob("*.jpg"))[:4]:
            dst = root / folder.name / "Imgs"
            dst.mkdir(parents=True, exist_ok=True)
            shutil.copy(jpg, dst)
            shutil.copy(jpg.with_suffix(".png"), dst)
    for name in ("MT_Break", "MT_Crack"):
        target = root / name / "Imgs" / "same_name.jpg"
        first = sorted((root / name / "Imgs").glob("*.jpg"))[0]
        shutil.copy(first, target)
        shutil.copy(first.with_suffix(".png"), target.with_suffix(".png"))
    return root


def test_mixed_sizes_train_predict_and_evaluate(mixed, tmp_path):
    from typer.testing import CliRunner

    from steelscan.cli import app
    from steelscan.data import load_dataset
    from steelscan.training import TrainConfig, train

    ds = load_dataset(mixed)
    sizes = {r.shape for r in ds.records}
    assert len(sizes) >= 20, sizes  # really mixed
    cfg = TrainConfig.tiny().with_overrides(
        {
            "segmenter.crop_height": 64,
            "segmenter.crop_width": 64,
            "classifier.batch_size": 4,  # batches of four sizes, padded to the largest
            "run_dir": str(tmp_path / "runs"),
        }
    )
    model = train(mixed, tmp_path / "model", cfg, progress=False)
    m = json.loads((model / "manifest.json").read_text())
    assert m["training"]["crop"] == [64, 64]

    runner = CliRunner()
    pred = tmp_path / "pred"
    res = runner.invoke(
        app,
        ["predict", str(model), str(mixed), "--out", str(pred), "--overlays", "--engine", "torch"],
    )
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in (pred / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == len(ds.records)
    by_id = {r.image_id: r for r in ds.records}
    for row in rows:
        rec = by_id[row["image_id"]]
        assert (row["height"], row["width"]) == rec.shape  # each image at its own size
    overlays = sorted(p.name for p in (pred / "overlays").glob("*.png"))
    assert len(overlays) == len(ds.records)  # same file name in two folders: two overlays
    assert "MT_Break__Imgs__same_name.png" in overlays
    assert "MT_Crack__Imgs__same_name.png" in overlays
    for row in rows[:5]:
        name = row["image_id"].replace("/", "__").rsplit(".", 1)[0] + ".png"
        with Image.open(pred / "overlays" / name) as im:
            # the overlay shows the image beside its truth panel: height follows the image
            assert im.size[1] >= row["height"] and im.size[0] >= row["width"]

    ev = tmp_path / "eval"
    res = runner.invoke(
        app,
        [
            "evaluate",
            str(model),
            str(mixed),
            "--out",
            str(ev),
            "--engine",
            "torch",
            "--split",
            "all",
        ],
    )
    assert res.exit_code == 0, res.output
    metrics = json.loads((ev / "metrics.json").read_text())
    overlap = metrics["segmentation"]["overlap"]
    assert [c["name"] for c in overlap["classes"]] == list(ds.classes)
    assert overlap["mean_iou"] is None or np.isfinite(overlap["mean_iou"])
    assert f"{len(ds.records)} images scored" in res.output
