"""`steelscan predict` end to end: real images, a real bundle, every output file checked."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tiny_models import tiny_bundle

from steelscan import rle
from steelscan.cli import main

IMAGES = ["0a1cade03.jpg", "03db6bbc3.jpg", "000a4bcdd.jpg"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """An untrained but real bundle (timm gate + ResUNet); the CLI mechanics do not need skill."""
    from steelscan.manifest import PostProcess

    pp = PostProcess(
        gate_mode="none",
        class_thresholds=[0.0] * 4,
        pixel_thresholds=[0.5] * 4,
        min_areas=[0] * 4,
        min_component_areas=[0] * 4,
    )
    return tiny_bundle(tmp_path_factory.mktemp("cli") / "model", postprocess=pp)


def run(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    return int(exc.value.code or 0)


def _submission(out: Path) -> list[dict[str, str]]:
    with open(out / "submission.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _jsonl(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]


def test_predict_writes_every_image_once_and_reports_a_bad_one(
    tmp_path, severstal_dir, model_dir, capsys
):
    src = tmp_path / "in"
    src.mkdir()
    for name in IMAGES:
        shutil.copy(severstal_dir / "images" / name, src / name)
    (src / "bad.jpg").write_bytes(b"\x00garbage, not a JPEG" * 10)
    out = tmp_path / "out"
    # the folder plus one of its images again: still each image exactly once
    code = run(["predict", model_dir, src, src / IMAGES[0], "--out", out, "--overlays",
                "--batch-size", "2"])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 1  # one image failed; everything else was still written
    assert "bad.jpg" in captured.err
    assert "images inspected: 3" in captured.out and "errors: 1" in captured.out

    rows = _submission(out)
    assert len(rows) == 4 * len(IMAGES)
    pairs = [(r["ImageId"], r["ClassId"]) for r in rows]
    assert sorted(pairs) == sorted((n, str(k)) for n in IMAGES for k in (1, 2, 3, 4))
    for r in rows:  # every RLE decodes on the full-size image
        rle.decode(r["EncodedPixels"], (256, 1600))
    assert any(r["EncodedPixels"] for r in rows)

    records = {d["image_id"]: d for d in _jsonl(out)}
    assert len(records) == 4 and len(_jsonl(out)) == 4
    assert "not a readable image" in records["bad.jpg"]["error"]
    for name in IMAGES:
        d = records[name]
        assert d["error"] is None and (d["height"], d["width"]) == (256, 1600)
        sub = {r["ClassId"]: r["EncodedPixels"] for r in rows if r["ImageId"] == name}
        for c in d["classes"]:
            assert c["rle"] == sub[str(c["class_id"])]
            assert c["area"] == int(rle.decode(c["rle"], (256, 1600)).sum())

    with open(out / "errors.csv", newline="") as fh:
        errors = list(csv.DictReader(fh))
    assert [e["ImageId"] for e in errors] == ["bad.jpg"]

    pngs = sorted(p.name for p in (out / "overlays").iterdir())
    assert pngs == sorted(Path(n).stem + ".png" for n in IMAGES)
    with Image.open(out / "overlays" / pngs[0]) as im:
        assert im.width == 1600 and 256 < im.height < 2 * 256  # one panel + caption + legend
    # no temp files left; the one hidden entry is the resumable run's journal
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == [".steelscan-journal"]
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


def test_predict_labelled_dataset_overlays_show_ground_truth(tmp_path, severstal_dir, model_dir):
    data = tmp_path / "data"
    (data / "train_images").mkdir(parents=True)
    keep = IMAGES[:2]
    for name in keep:
        shutil.copy(severstal_dir / "images" / name, data / "train_images" / name)
    lines = (severstal_dir / "train.csv").read_text().splitlines()
    rows = [lines[0]] + [ln for ln in lines[1:] if ln.split(",")[0] in keep]
    (data / "train.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    assert run(["predict", model_dir, data, "--out", out, "--overlays", "--gate", "none"]) == 0
    assert sorted({r["ImageId"] for r in _submission(out)}) == sorted(keep)
    with Image.open(out / "overlays" / "03db6bbc3.png") as im:
        arr = np.asarray(im)
    assert arr.shape[0] > 2 * 256  # prediction panel + ground-truth panel
    # the ground-truth panel (below the first panel) is tinted where classes 3 and 4 are
    gt_panel = arr[256 + 22 + 22 : 256 + 22 + 22 + 256]
    raw = np.asarray(Image.open(severstal_dir / "images" / "03db6bbc3.jpg").convert("RGB"))
    assert (np.abs(gt_panel.astype(int) - raw.astype(int)).sum(axis=2) > 30).mean() > 0.01


def test_overlays_paint_no_truth_of_other_classes_and_say_so(tmp_path, model_dir, capsys):
    """Real Magnetic-tile masks of four classes against a model of four others: no truth panel
    painted by class index (the colours would name the wrong classes), and a note."""
    from conftest import shared_path

    mt = shared_path("data", "magnetic-tile")
    data = tmp_path / "mt"
    for cls in ("MT_Blowhole", "MT_Break", "MT_Crack", "MT_Fray"):
        jpg = sorted((mt / cls / "Imgs").glob("*.jpg"))[0]
        (data / cls / "Imgs").mkdir(parents=True)
        shutil.copy(jpg, data / cls / "Imgs")
        shutil.copy(jpg.with_suffix(".png"), data / cls / "Imgs")
    out = tmp_path / "out"
    assert run(["predict", model_dir, data, "--out", out, "--overlays"]) == 0
    err = capsys.readouterr().err
    assert (
        "the inputs' ground truth classes (MT_Blowhole, MT_Break, MT_Crack, MT_Fray) are not the "
        "model's (1, 2, 3, 4): overlays show no ground truth"
    ) in " ".join(err.split())
    pngs = sorted((out / "overlays").iterdir())
    assert len(pngs) == 4
    for png in pngs:
        cls, _, name = png.stem.split("__")
        with Image.open(data / cls / "Imgs" / f"{name}.jpg") as im:
            h = im.height
        with Image.open(png) as im:
            assert im.height < 2 * h  # the prediction panel and legend only


def test_predict_csv_of_ids_with_a_missing_id(tmp_path, severstal_dir, model_dir):
    (tmp_path / "images").mkdir()
    # stored as PNG under the same stem while the CSV says .jpg, like the Severstal re-encodes
    Image.open(severstal_dir / "images" / IMAGES[0]).save(tmp_path / "images" / "0a1cade03.png")
    ids = tmp_path / "ids.csv"
    rows = ["ImageId,EncodedPixels,ClassId", "0a1cade03.jpg,,1", "0a1cade03.jpg,,2", "ghost.jpg,,1"]
    ids.write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    assert run(["predict", model_dir, ids, "--out", out]) == 1
    assert {r["ImageId"] for r in _submission(out)} == {"0a1cade03.jpg"}
    assert len(_submission(out)) == 4
    errors = (out / "errors.csv").read_text()
    assert "ghost.jpg" in errors


def test_predict_defect_and_no_defect_csv_same_images_as_score(
    tmp_path, severstal_dir, model_dir, capsys
):
    """The course's image-level table (``ImageID,label``) lists images for predict exactly as it
    does for ``score --images``; one id is stored as PNG under a .jpg id."""
    (tmp_path / "images").mkdir()
    for name in IMAGES[1:]:
        shutil.copy(severstal_dir / "images" / name, tmp_path / "images" / name)
    Image.open(severstal_dir / "images" / IMAGES[0]).save(tmp_path / "images" / "0a1cade03.png")
    table = tmp_path / "defect_and_no_defect.csv"
    table.write_text("ImageID,label\n" + "".join(f"{n},{i % 2}\n" for i, n in enumerate(IMAGES)))
    out = tmp_path / "out"
    assert run(["predict", model_dir, table, "--out", out]) == 0
    predicted = [r["ImageId"] for r in _submission(out)]
    assert list(dict.fromkeys(predicted)) == IMAGES  # the table's order, each image once
    capsys.readouterr()
    truth = severstal_dir / "train.csv"
    assert run(["score", truth, out / "submission.csv", "--images", table, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["num_images"] == len(IMAGES)


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", "model directory not found"),
        ("broken", "cannot load the model bundle"),
        ("engine", "unknown engine"),
        ("input", "no such file or folder"),
        ("both halves", "choose one of --bf16 and --fp16"),
        ("fp16 on onnx", "--fp16 apply to the torch engine"),
        ("int8 on torch", "--int8 applies to the onnx and openvino engines"),
    ],
)
def test_predict_user_errors_are_one_clear_line(
    tmp_path, severstal_dir, model_dir, capsys, case, message
):
    model = tmp_path / "missing" if case == "missing" else model_dir
    if case == "broken":
        model = tmp_path / "broken"
        model.mkdir()
        (model / "manifest.json").write_text("{not json")
    args = ["predict", model, severstal_dir / "images" / IMAGES[0], "--out", tmp_path / "out"]
    if case == "engine":
        args += ["--engine", "tensorrt"]
    if case == "input":
        args[2] = tmp_path / "nope.jpg"
    args += {
        "both halves": ["--bf16", "--fp16"],
        "fp16 on onnx": ["--engine", "onnx", "--fp16"],
        "int8 on torch": ["--engine", "torch", "--int8"],
    }.get(case, [])
    assert run(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "out" / "submission.csv").exists()


def test_predict_engine_options_tta_gate_and_summary(tmp_path, severstal_dir, model_dir, capsys):
    img = tmp_path / "strip.png"
    Image.open(severstal_dir / "images" / IMAGES[1]).crop((0, 0, 384, 256)).save(img)
    out = tmp_path / "out"
    args = ["predict", model_dir, img, "--out", out, "--tta", "--channels-last", "--gate", "hard"]
    args += ["--engine", "torch"]
    assert run(args + ["--batch-size", "1", "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "images inspected: 1" in text and "img/s" in text
    (record,) = _jsonl(out)
    assert (record["height"], record["width"]) == (256, 384)  # any size: padded, cropped back
    assert len(_submission(out)) == 4
    assert run(["predict", model_dir, img, "--out", out, "--gate", "maybe"]) == 2
