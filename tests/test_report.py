"""Exploration report and overlay helpers, on synthetic, real Severstal and NEU-DET data."""

from __future__ import annotations

import csv
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from steelscan.cli import app
from steelscan.data import load_dataset
from steelscan.data.records import DataError
from steelscan.reports import exploration
from steelscan.reports.exploration import PLOTS, pick_gallery, summarize, write_report
from steelscan.reports.overlay import PALETTE, class_color, draw_boxes, outline, overlay

PNGS = [name for name, _, _ in PLOTS]


def _check_report(html_path: Path) -> str:
    """Every plot exists, is a real PNG of a readable size, and the page links it."""
    assert html_path.name == "index.html" and html_path.is_file()
    page = html_path.read_text(encoding="utf-8")
    for name in PNGS:
        png = html_path.parent / name
        assert png.is_file(), name
        with Image.open(png) as im:
            assert im.format == "PNG"
            assert im.width >= 400 and im.height >= 100, (name, im.size)
        assert f"src='{name}'" in page
    assert re.findall(r"src='([^']+)'", page) == PNGS
    return page


def _cell(page: str, header: str) -> str:
    m = re.search(rf"<th>{re.escape(header)}</th><td>([^<]*)</td>", page)
    assert m, header
    return m.group(1)


def test_report_on_synthetic_counts_match_train_csv(synth_small, tmp_path):
    page = _check_report(write_report(synth_small, tmp_path / "rep", gallery=6, progress=False))
    with (synth_small / "train.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    per_image = Counter(r["ImageId"] for r in rows)
    assert _cell(page, "Images") == "32"
    assert _cell(page, "Defective").startswith(f"{len(per_image)} ")
    assert _cell(page, "Multi-class images").startswith(
        f"{sum(v >= 2 for v in per_image.values())} "
    )

    stats = summarize(load_dataset(synth_small), progress=False)
    per_class = Counter(int(r["ClassId"]) for r in rows)
    assert stats.images_per_class == [per_class[c] for c in (1, 2, 3, 4)]
    assert len(stats.areas) == len(rows)
    assert (stats.areas["area"] > 0).all()


def test_gallery_is_stratified_over_classes_and_clean(synth_small):
    ds = load_dataset(synth_small)
    chosen = pick_gallery(ds, 6)
    assert len({r.image_id for r in chosen}) == 6
    for i in range(4):
        assert any(r.present[i] for r in chosen), f"class {i + 1} missing from the gallery"
    assert any(not r.defective for r in chosen)
    assert [r.image_id for r in pick_gallery(ds, 6)] == [r.image_id for r in chosen]
    assert len(pick_gallery(ds, 500)) == len(ds)
    assert pick_gallery(ds, 0) == []


def test_report_on_real_severstal(severstal_dir, tmp_path):
    page = _check_report(write_report(severstal_dir, tmp_path / "rep", gallery=4, progress=False))
    # Counts documented in ../shared/data/severstal/SOURCES.md for the 15 original JPEGs.
    assert _cell(page, "Images") == "15"
    assert _cell(page, "Defective").startswith("8 ")
    assert _cell(page, "Clean").startswith("7 ")
    assert _cell(page, "Multi-class images").startswith("1 ")
    stats = summarize(load_dataset(severstal_dir), progress=False)
    assert stats.images_per_class == [2, 0, 6, 1]


def test_report_on_reencoded_png_files(severstal_reencoded_dir, tmp_path):
    page = _check_report(write_report(severstal_reencoded_dir, tmp_path / "rep", gallery=3,
                                      progress=False))  # fmt: skip
    assert _cell(page, "Images") == "23"


def test_report_on_neu_boxes_reads_only_the_gallery_images(neu_dir, tmp_path, monkeypatch):
    read: list[Path] = []
    real = exploration.read_image

    def counting(path, **kw):
        read.append(Path(path))
        return real(path, **kw)

    monkeypatch.setattr(exploration, "read_image", counting)
    page = _check_report(write_report(neu_dir, tmp_path / "rep", gallery=6, progress=False))
    assert len(read) == 6  # 1,440 images in the folder; only the gallery is decoded
    assert _cell(page, "Images") == "1440"
    assert "(boxes only)" in _cell(page, "Layout")
    with (neu_dir / "labels.csv").open(newline="") as f:
        boxes = sum(int(r["n_boxes"]) for r in csv.DictReader(f))
    stats = summarize(load_dataset(neu_dir), progress=False)
    assert sum(stats.instances_per_class) == boxes == len(stats.areas)
    assert stats.area_kind == "box"


def test_failed_report_leaves_nothing_behind(synth_small, tmp_path, monkeypatch):
    out = tmp_path / "rep"
    out.mkdir()
    (out / "keep.txt").write_text("mine")

    def broken(*a, **k):
        raise RuntimeError("plotting failed")

    monkeypatch.setattr(exploration, "plot_gallery", broken)
    with pytest.raises(RuntimeError, match="plotting failed"):
        write_report(synth_small, out, gallery=2, progress=False)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rep"]  # temp folder removed


def test_report_refuses_bad_targets(synth_small, tmp_path):
    target = tmp_path / "a_file"
    target.write_text("x")
    with pytest.raises(DataError, match="not a folder"):
        write_report(synth_small, target, progress=False)
    with pytest.raises(DataError, match="no such file"):
        write_report(tmp_path / "missing", tmp_path / "rep", progress=False)
    with pytest.raises(ValueError, match="gallery"):
        write_report(synth_small, tmp_path / "rep", gallery=-1, progress=False)


def test_cli_report_and_help(synth_small, tmp_path):
    res = CliRunner().invoke(
        app, ["data", "report", str(synth_small), "--out", str(tmp_path / "r"), "--gallery", "2"]
    )
    assert res.exit_code == 0, res.output
    _check_report(tmp_path / "r" / "index.html")
    help_ = CliRunner().invoke(app, ["data", "report", "--help"])
    assert help_.exit_code == 0 and "--gallery" in help_.output and "--out" in help_.output


# --- overlay helpers ---------------------------------------------------------------------


def test_overlay_tints_inside_outlines_edges_and_leaves_outside_alone():
    img = np.full((20, 30), 100, np.uint8)
    masks = np.zeros((2, 20, 30), np.uint8)
    masks[0, 5:15, 5:12] = 1
    masks[1, 2:6, 20:28] = 1
    out = overlay(img, masks, alpha=0.5)
    assert out.shape == (20, 30, 3) and out.dtype == np.uint8
    assert (out[masks.sum(0) == 0] == 100).all()
    edge = outline(masks[0])
    assert edge.sum() == 2 * (10 + 7) - 4
    assert (out[edge] == PALETTE[0]).all()
    centre = out[10, 8].astype(int)
    assert np.abs(centre - (np.array(PALETTE[0]) + 100) / 2).max() <= 1
    assert (out[3, 24] == np.rint((np.array(PALETTE[1]) + 100) / 2)).all() or (
        out[3, 24] == PALETTE[1]
    ).all()


def test_overlay_rejects_mismatched_shapes_and_short_palettes():
    img = np.zeros((10, 10, 3), np.uint8)
    with pytest.raises(ValueError, match="masks must be"):
        overlay(img, np.zeros((1, 10, 11), np.uint8))
    with pytest.raises(ValueError, match="colours"):
        overlay(img, np.zeros((3, 10, 10), np.uint8), colors=[(1, 2, 3)])
    with pytest.raises(ValueError, match="uint8"):
        overlay(img.astype(np.float32), np.zeros((1, 10, 10), np.uint8))


def test_draw_boxes_draws_borders_only_and_clips():
    img = np.zeros((40, 40), np.uint8)
    out = draw_boxes(img, [(2, 5, 5, 20, 25), (0, 30, 30, 60, 60)], thickness=2)
    color = np.array(class_color(2))
    assert (out[5, 10] == color).all() and (out[24, 10] == color).all()  # top, bottom (exclusive)
    assert (out[15, 5] == color).all() and (out[15, 19] == color).all()
    assert (out[15, 12] == 0).all()  # inside untouched
    assert (out[39, 35] == np.array(class_color(0))).all()  # clipped box still drawn
    assert (img == 0).all()  # input not modified
