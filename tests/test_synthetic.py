"""Synthetic data: determinism, class balance, masks that match the pixels, layout, CLI."""

from __future__ import annotations

import csv
import re
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from steelscan import rle
from steelscan.cli import app
from steelscan.data import load_dataset
from steelscan.data.check import check_dataset
from steelscan.data.records import DataError
from steelscan.data.synthetic import class_schedule, synthesize
from steelscan.imageio import read_image


def _rows(root: Path) -> list[dict[str, str]]:
    with (root / "train.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def _classes_by_image(root: Path) -> dict[str, set[int]]:
    out: dict[str, set[int]] = {p.name: set() for p in (root / "train_images").iterdir()}
    for r in _rows(root):
        out[r["ImageId"]].add(int(r["ClassId"]))
    return out


def test_same_seed_same_bytes_and_pixels_other_seed_differs(tmp_path):
    a = synthesize(tmp_path / "a", n=10, seed=5, height=64, width=320, progress=False)
    b = synthesize(tmp_path / "b", n=10, seed=5, height=64, width=320, progress=False)
    c = synthesize(tmp_path / "c", n=10, seed=6, height=64, width=320, progress=False)
    for name in ("train.csv", "defect_and_no_defect.csv"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    names = sorted(p.name for p in (a / "train_images").iterdir())
    assert names == sorted(p.name for p in (b / "train_images").iterdir())
    for name in names:
        assert np.array_equal(
            read_image(a / "train_images" / name), read_image(b / "train_images" / name)
        )
    assert (a / "train.csv").read_bytes() != (c / "train.csv").read_bytes()
    assert set(names) != {p.name for p in (c / "train_images").iterdir()}


def test_class_balance_follows_the_real_data_at_n200(tmp_path):
    root = synthesize(tmp_path / "d", n=200, seed=0, height=32, width=160, progress=False)
    by_image = _classes_by_image(root)
    assert len(by_image) == 200
    per_class = Counter(c for cs in by_image.values() for c in cs)
    assert per_class[3] == max(per_class.values())
    assert per_class[2] == min(per_class.values())
    assert per_class[3] > 2 * per_class[1]  # class 3 dominates, as in Severstal
    clean = sum(not cs for cs in by_image.values())
    assert 0.35 <= clean / 200 <= 0.45
    multi = sum(len(cs) >= 2 for cs in by_image.values())
    assert 10 <= multi <= 40
    with (root / "defect_and_no_defect.csv").open(newline="") as f:
        labels = {r["ImageID"]: int(r["label"]) for r in csv.DictReader(f)}
    assert labels == {k: int(bool(v)) for k, v in by_image.items()}


@pytest.mark.parametrize("n", [20, 21, 37])
def test_small_datasets_still_hold_every_class(n):
    combos = class_schedule(n, np.random.default_rng(0))
    per_class = Counter(c for combo in combos for c in combo)
    assert all(per_class[c] >= 2 for c in (1, 2, 3, 4)), per_class
    assert any(len(combo) == 2 for combo in combos)
    # The counts depend on n only; the seed just shuffles them.
    assert Counter(combos) == Counter(class_schedule(n, np.random.default_rng(99)))


def test_masks_cover_what_the_image_shows(synth_small):
    """Inside a mask the image differs from a ring around it: classes 1, 3, 4 dark, 2 bright."""
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (9, 9))
    seen = set()
    for row in _rows(synth_small):
        gray = read_image(synth_small / "train_images" / row["ImageId"], channels=1)[..., 0]
        mask = rle.decode(row["EncodedPixels"], gray.shape).astype(bool)
        assert mask.any()
        ring = cv2.dilate(mask.astype(np.uint8), kernel).astype(bool) & ~mask
        inside, around = float(gray[mask].mean()), float(gray[ring].mean())
        cls = int(row["ClassId"])
        seen.add(cls)
        if cls == 2:
            assert inside - around > 15, (row["ImageId"], cls, inside, around)
        else:
            assert around - inside > 10, (row["ImageId"], cls, inside, around)
    assert seen == {1, 2, 3, 4}


def test_masks_of_different_classes_never_overlap(synth_small):
    by_image: dict[str, list[np.ndarray]] = {}
    for row in _rows(synth_small):
        by_image.setdefault(row["ImageId"], []).append(rle.decode(row["EncodedPixels"], (128, 800)))
    assert any(len(m) == 2 for m in by_image.values())
    for masks in by_image.values():
        assert np.sum(masks, axis=0).max() <= 1


def test_full_size_dataset_loads_and_checks_clean(synth_full):
    ds = load_dataset(synth_full)
    assert ds.layout == "severstal" and len(ds) == 12
    assert all(r.shape == (256, 1600) for r in ds.records)
    assert all(re.fullmatch(r"[0-9a-f]{9}\.jpg", r.image_id) for r in ds.records)
    assert check_dataset(synth_full) == []
    img = read_image(ds.records[0].path)
    assert img.shape == (256, 1600, 3)
    assert np.abs(img[..., 0].astype(int) - img[..., 2]).max() <= 1  # 3-channel grayscale
    assert 40 < img.mean() < 200 and img.std() > 3  # textured steel, not a flat fill
    # The masks in the dataset are exactly the CSV's RLE (Kaggle pixel order).
    rows = _rows(synth_full)
    rec = ds.by_id()[rows[0]["ImageId"]]
    cls = int(rows[0]["ClassId"])
    assert rle.encode(rec.mask(cls - 1)) == rows[0]["EncodedPixels"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n": 0}, "n must be at least 1"),
        ({"height": 16}, "height must be at least 32"),
        ({"width": 31}, "width must be at least 32"),
        ({"n": 2.5}, "n must be an integer"),
    ],
)
def test_bad_arguments_are_refused_before_writing(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        synthesize(tmp_path / "x", progress=False, **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_failure_leaves_no_partial_dataset(tmp_path, monkeypatch):
    import steelscan.data.synthetic as synthetic

    real = synthetic._jpeg_bytes
    calls = {"n": 0}

    def failing(gray):
        calls["n"] += 1
        if calls["n"] > 3:
            raise OSError("disk full")
        return real(gray)

    monkeypatch.setattr(synthetic, "_jpeg_bytes", failing)
    with pytest.raises(OSError, match="disk full"):
        synthesize(tmp_path / "out", n=8, height=32, width=64, progress=False)
    assert list(tmp_path.iterdir()) == []  # neither the dataset nor its temp folder


def test_replaces_an_earlier_synthetic_dataset_but_not_other_folders(tmp_path):
    out = synthesize(tmp_path / "d", n=6, height=32, width=64, progress=False)
    synthesize(out, n=4, height=32, width=64, progress=False)
    assert len(list((out / "train_images").iterdir())) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="notes.txt"):
        synthesize(mine, n=2, height=32, width=64, progress=False)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


def test_cli_synth_writes_a_dataset(tmp_path):
    out = tmp_path / "cli"
    res = CliRunner().invoke(
        app, ["data", "synth", "--out", str(out), "--n", "5", "--height", "64", "--width", "96"]
    )
    assert res.exit_code == 0, res.output
    assert "wrote 5 images" in res.output
    assert len(load_dataset(out)) == 5
    bad = CliRunner().invoke(app, ["data", "synth", "--out", str(tmp_path / "y"), "--n", "0"])
    assert bad.exit_code == 2 and not (tmp_path / "y").exists()


def test_cli_synth_help():
    res = CliRunner().invoke(app, ["data", "synth", "--help"])
    assert res.exit_code == 0
    for flag in ("--out", "--n", "--seed", "--height", "--width"):
        assert flag in res.output
