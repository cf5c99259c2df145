"""Dataset readers on the real Severstal and NEU copies, and on small broken datasets built here.

Problems name the file and the LINE number (CSV header = line 1, first data row = line 2).
"""

from __future__ import annotations

import csv
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from steelscan import rle
from steelscan.cli import app
from steelscan.data import DataError, load_dataset, scan_dataset
from steelscan.data.check import check_dataset
from steelscan.data.records import Box
from steelscan.data.splits import combination, split_ids

NEW_HEADER = "ImageId,ClassId,EncodedPixels"


# ---------------------------------------------------------------- helpers: small datasets on disk


def _image(path: Path, h: int = 20, w: int = 30) -> Path:
    """A small gray image with some texture; JPEG or PNG by suffix."""
    rng = np.random.default_rng(abs(hash(path.name)) % 2**32)
    arr = rng.integers(0, 255, (h, w), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).convert("RGB").save(path)
    return path


def _severstal(
    root: Path,
    lines: list[str],
    images: dict[str, tuple[int, int]] | None = None,
    *,
    header: str = NEW_HEADER,
    image_dir: str = "train_images",
) -> Path:
    """Write ``train.csv`` and the images (default: a.png, b.png, c.png at 20x30)."""
    images = images if images is not None else {n: (20, 30) for n in ("a.png", "b.png", "c.png")}
    for name, (h, w) in images.items():
        _image(root / image_dir / name, h, w)
    (root / "train.csv").write_text("\n".join([header, *lines]) + "\n")
    return root


def _problems(root: Path) -> list[str]:
    with pytest.raises(DataError) as info:
        load_dataset(root)
    assert info.value.problems, "DataError must carry its problems"
    return [str(p) for p in info.value.problems]


def _read_train_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------- real Severstal copies


def test_severstal_original_images(severstal_dir):
    ds = load_dataset(severstal_dir)
    assert ds.layout == "severstal" and ds.has_masks
    assert ds.classes == ("1", "2", "3", "4") and ds.class_ids == (1, 2, 3, 4)
    assert len(ds) == 15
    assert all(r.shape == (256, 1600) and r.path.is_file() for r in ds)
    # counts from SOURCES.md
    assert sum(not r.defective for r in ds) == 7
    per_class = [sum(r.present[k] for r in ds) for k in range(4)]
    assert per_class == [2, 0, 6, 1]
    assert sum(len(r.rles) for r in ds) == 9
    # every mask equals the CSV's RLE decoded at the image's size
    by_id = ds.by_id()
    for row in _read_train_csv(severstal_dir / "train.csv"):
        rec = by_id[row["ImageId"]]
        k = int(row["ClassId"]) - 1
        assert rec.rles[k] == row["EncodedPixels"]
        assert int(rec.mask(k).sum()) == rle.area(row["EncodedPixels"])
    # has_defect agrees with images.csv
    for row in _read_train_csv(severstal_dir / "images.csv"):
        assert by_id[row["ImageId"]].has_defect == (row["has_defect"] == "1")
        assert by_id[row["ImageId"]].defective == (row["has_defect"] == "1")


def test_multi_class_image_is_one_record(severstal_dir):
    ds = load_dataset(severstal_dir)
    recs = [r for r in ds if r.image_id == "03db6bbc3.jpg"]
    assert len(recs) == 1
    rec = recs[0]
    assert rec.present == (False, False, True, True)
    masks = rec.masks()
    assert masks.shape == (4, 256, 1600) and masks.dtype == np.uint8
    assert masks[0].sum() == 0 and masks[2].sum() > 0 and masks[3].sum() > 0
    assert int(masks[3].sum()) == rle.area(rec.rles[3])


def test_severstal_reencoded_png_for_jpg_and_labels(severstal_reencoded_dir):
    ds = load_dataset(severstal_reencoded_dir)
    assert len(ds) == 23
    info = {r["ImageId"]: r for r in _read_train_csv(severstal_reencoded_dir / "images.csv")}
    assert {r.image_id for r in ds} == set(info)
    for rec in ds:
        assert rec.image_id.endswith(".jpg")  # the CSV's id, even when the file is a PNG
        assert rec.path.name == info[rec.image_id]["file"]
        assert rec.has_defect == (info[rec.image_id]["has_defect"] == "1")
    assert sum(r.path.suffix == ".png" for r in ds) == 15
    assert sum(not r.defective for r in ds) == 4
    assert [sum(r.present[k] for r in ds) for k in range(4)] == [7, 2, 11, 1]
    multi = [r for r in ds if sum(r.present) > 1]
    assert len(multi) == 2 and all(r.present == (True, True, False, False) for r in multi)


def test_old_format_gives_the_same_records(severstal_dir, tmp_path):
    """Old Kaggle format: four ``<id>_<class>`` rows per image, empty where the class is absent."""
    rows = {
        (r["ImageId"], r["ClassId"]): r["EncodedPixels"]
        for r in _read_train_csv(severstal_dir / "train.csv")
    }
    ids = sorted(p.name for p in (severstal_dir / "images").glob("*.jpg"))
    lines = [f"{i}_{c},{rows.get((i, str(c)), '')}" for i in ids for c in (1, 2, 3, 4)]
    (tmp_path / "images").symlink_to(severstal_dir / "images")
    (tmp_path / "train.csv").write_text(
        "ImageId_ClassId,EncodedPixels\n" + "\n".join(lines) + "\n,\n,\n"
    )
    old = load_dataset(tmp_path)
    new = load_dataset(severstal_dir)
    assert [(r.image_id, r.rles) for r in old] == [(r.image_id, r.rles) for r in new]
    assert [r.defective for r in old] == [r.defective for r in new]


def test_old_format_bad_key(tmp_path):
    _severstal(
        tmp_path,
        ["a.png_1,1 3", "b.png,1 3", "c.png_x,1 3"],
        header="ImageId_ClassId,EncodedPixels",
    )
    probs = _problems(tmp_path)
    assert any(
        "train.csv, row 3" in p and "'b.png' is not '<ImageId>_<ClassId>'" in p for p in probs
    )
    assert any("train.csv, row 4" in p and "unknown class id 'x'" in p for p in probs)
    assert len(probs) == 2


# ---------------------------------------------------------------- Severstal on synthetic folders


def test_images_without_rows_are_defect_free_records(tmp_path):
    _severstal(tmp_path, ["a.png,2,1 5", "a.png,4,30 10"], image_dir="images")
    ds = load_dataset(tmp_path)
    assert [r.image_id for r in ds] == ["a.png", "b.png", "c.png"]
    a, b, c = ds.records
    assert a.present == (False, True, False, True) and a.has_defect
    assert not b.defective and b.has_defect is False and b.rles == {}
    assert a.shape == (20, 30) and a.mask(1)[:5, 0].tolist() == [1] * 5


def test_png_stored_for_jpg_id(tmp_path):
    _severstal(tmp_path, ["x.jpg,1,1 4"], {"x.png": (20, 30), "y.jpg": (20, 30)})
    ds = load_dataset(tmp_path)
    assert [(r.image_id, r.path.name) for r in ds] == [("x.jpg", "x.png"), ("y.jpg", "y.jpg")]


def test_ambiguous_stem_is_a_problem(tmp_path):
    _severstal(tmp_path, ["x.jpg,1,1 4"], {"x.png": (20, 30), "x.bmp": (20, 30)})
    (p,) = _problems(tmp_path)
    assert "train.csv, row 2" in p and "'x.jpg' is ambiguous" in p and "x.bmp, x.png" in p


def test_image_level_label_files(tmp_path):
    _severstal(tmp_path, ["a.png,1,1 4"])
    (tmp_path / "images.csv").write_text(
        "ImageId,has_defect,note\na.png,1,x\nb.png,1,y\nc.png,0,z\n"
    )
    (tmp_path / "defect_and_no_defect.csv").write_text("ImageID,label\na.png,1\na.png,1\nc.png,0\n")
    by_id = load_dataset(tmp_path).by_id()
    assert by_id["a.png"].has_defect and by_id["a.png"].present[0]
    # b has a defect according to the labels but no mask: defective, no class known
    assert by_id["b.png"].defective and not any(by_id["b.png"].present)
    assert not by_id["c.png"].defective


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        (["a.png,5,1 3"], ["train.csv, row 2, field ClassId: a.png: unknown class id '5'"]),
        (["a.png,one,1 3"], ["train.csv, row 2, field ClassId: a.png: unknown class id 'one'"]),
        (
            ["a.png,1,1 3", "b.png,1,1 3", "a.png,1,9 3"],
            ["train.csv, row 4: duplicate row for a.png class 1 (first given on line 2)"],
        ),
        (
            ["a.png,1,1 3 5"],
            ["train.csv, row 2, field EncodedPixels: a.png class 1: RLE has an odd number"],
        ),
        (
            ["b.png,2,5 x"],
            ["train.csv, row 2, field EncodedPixels: b.png class 2: RLE holds a non-integer"],
        ),
        (
            ["a.png,1,0 3"],
            ["train.csv, row 2, field EncodedPixels: a.png class 1: RLE run 1 starts at 0"],
        ),
        (
            ["a.png,1,9 3 5 2"],
            ["row 2, field EncodedPixels: a.png class 1: RLE run 2 (start 5) overlaps"],
        ),
        # 20x30 = 600 pixels: a run to pixel 601 is outside the image (fine for 256x1600)
        (
            ["c.png,3,590 12"],
            [
                "train.csv, row 2, field EncodedPixels: c.png class 3: "
                "RLE run 1 ends at pixel 601, past the 20x30"
            ],
        ),
        (
            ["zzz.jpg,1,1 3"],
            ["train.csv, row 2: image 'zzz.jpg' not found in", "(no zzz.jpg and no zzz.* file)"],
        ),
        (["a.png,1"], ["train.csv, row 2: expected 3 fields, found 2"]),
        ([",1,1 3"], ["train.csv, row 2, field ImageId: empty ImageId"]),
    ],
)
def test_each_csv_problem_names_file_and_row(tmp_path, lines, expected):
    _severstal(tmp_path, lines)
    (problem,) = _problems(tmp_path)
    for part in expected:
        assert part in problem
    assert problem.startswith(str(tmp_path / "train.csv"))


def test_bad_header(tmp_path):
    _severstal(tmp_path, ["a.png,1,1 3"], header="Image,Class,Pixels")
    (p,) = _problems(tmp_path)
    assert "train.csv, row 1: unrecognised header 'image,class,pixels'" in p
    assert "ImageId,ClassId,EncodedPixels" in p and "ImageId_ClassId,EncodedPixels" in p


def test_unreadable_and_wrong_size_images(tmp_path):
    _severstal(
        tmp_path, [], {"a.png": (20, 30), "b.png": (20, 30), "c.png": (20, 30), "d.png": (24, 30)}
    )
    (tmp_path / "train_images" / "junk.jpg").write_bytes(b"not a jpeg")
    probs = _problems(tmp_path)
    assert len(probs) == 2
    assert any(
        p.startswith(str(tmp_path / "train_images" / "junk.jpg")) and "not a readable image" in p
        for p in probs
    )
    assert any(
        p.startswith(str(tmp_path / "train_images" / "d.png"))
        and "image is 30x24 (width x height) but 3 of 4 images in the dataset are 30x20" in p
        for p in probs
    )


def test_label_file_problems(tmp_path):
    _severstal(tmp_path, ["a.png,1,1 3"])
    (tmp_path / "images.csv").write_text("ImageId,has_defect\na.png,0\nb.png,maybe\nc.png,1\n")
    (tmp_path / "defect_and_no_defect.csv").write_text("ImageID,label\nc.png,0\nq.jpg,1\n")
    probs = _problems(tmp_path)
    assert len(probs) == 4
    joined = "\n".join(probs)
    assert "images.csv, row 2: a.png: has_defect=0 but train.csv has masks for it" in joined
    assert "images.csv, row 3, field has_defect: b.png: label 'maybe' is not 0/1" in joined
    assert (
        "defect_and_no_defect.csv, row 2: c.png: has_defect=0 contradicts has_defect=1 on line 4"
        in joined
    )
    assert "defect_and_no_defect.csv, row 3: image 'q.jpg' not found" in joined


def test_every_problem_is_reported_at_once(tmp_path):
    _severstal(
        tmp_path,
        ["a.png,7,1 3", "a.png,1,1 3 3", "missing.jpg,2,1 1", "b.png,1,2 2", "b.png,1,5 1"],
    )
    assert len(_problems(tmp_path)) == 4
    _, probs = scan_dataset(tmp_path)
    assert sorted((p.row, p.field) for p in probs) == [
        (2, "ClassId"),  # unknown class 7
        (3, "EncodedPixels"),  # odd RLE
        (4, None),  # missing image
        (6, None),  # duplicate of row 5
    ]


def test_validate_false_skips_rle_and_size_checks(tmp_path):
    _severstal(tmp_path, ["a.png,1,1 3 5"], {"a.png": (20, 30), "b.png": (22, 30)})
    assert len(_problems(tmp_path)) == 2
    ds = load_dataset(tmp_path, validate=False)
    assert len(ds) == 2


def test_no_image_folder(tmp_path):
    (tmp_path / "train.csv").write_text(NEW_HEADER + "\n")
    (p,) = _problems(tmp_path)
    assert "no image folder: expected train_images/ or images/" in p


def test_unrecognised_folder_and_missing_path(tmp_path):
    (tmp_path / "stuff.txt").write_text("hello")
    (p,) = _problems(tmp_path)
    assert "not a recognised dataset folder" in p
    assert "train.csv" in p and "annotations/*.xml" in p
    (p,) = _problems(tmp_path / "nowhere")
    assert "nowhere: no such file or folder" in p


# ---------------------------------------------------------------- check_dataset and the CLI


def test_check_dataset_decodes_every_image(tmp_path, severstal_dir):
    """A truncated JPEG has a good header (so load_dataset accepts it) but no pixels."""
    _severstal(tmp_path, ["a.png,1,1 3"])
    src = (severstal_dir / "images" / "0a1cade03.jpg").read_bytes()
    (tmp_path / "train_images" / "0a1cade03.jpg").write_bytes(src[: len(src) // 3])
    (tmp_path / "train_images" / "0a21ce787.jpg").write_bytes(
        (severstal_dir / "images" / "0a21ce787.jpg").read_bytes()
    )
    for n in ("a.png", "b.png", "c.png"):  # make the real 1600x256 size the majority
        _image(tmp_path / "train_images" / n, 256, 1600)
    ds = load_dataset(tmp_path)
    assert len(ds) == 5
    probs = check_dataset(tmp_path, progress=False)
    assert [p.file for p in probs] == [str(tmp_path / "train_images" / "0a1cade03.jpg")]
    assert "truncated" in probs[0].message
    assert check_dataset(severstal_dir, progress=False) == []


def test_cli_data_check_good_and_broken(tmp_path, severstal_dir):
    runner = CliRunner()
    ok = runner.invoke(app, ["data", "check", str(severstal_dir)])
    assert ok.exit_code == 0, ok.output
    assert "OK" in ok.output

    _severstal(tmp_path, ["a.png,9,1 3", "b.png,1,1 3 5", "ghost.jpg,1,1 1"])
    (tmp_path / "train_images" / "c.png").write_bytes(b"\x89PNG broken")
    bad = runner.invoke(app, ["data", "check", str(tmp_path)])
    assert bad.exit_code != 0
    out = bad.output
    assert "row 2, field ClassId: a.png: unknown class id '9'" in out
    assert "row 3, field EncodedPixels: b.png class 1: RLE has an odd number" in out
    assert "row 4: image 'ghost.jpg' not found" in out
    assert "c.png: not a readable image" in out
    assert "4 problem(s) found" in out


def test_cli_data_check_unrecognised_folder(tmp_path):
    res = CliRunner().invoke(app, ["data", "check", str(tmp_path)])
    assert res.exit_code != 0 and "not a recognised dataset folder" in res.output


# ---------------------------------------------------------------- VOC (NEU-DET)


@pytest.fixture(scope="module")
def neu(neu_dir):
    return load_dataset(neu_dir)


def test_neu_voc(neu, neu_dir):
    assert neu.layout == "voc" and not neu.has_masks
    assert len(neu) == 1440
    assert neu.classes == (
        "crazing",
        "inclusion",
        "patches",
        "pitted_surface",
        "rolled-in_scale",
        "scratches",
    )
    assert neu.class_ids == (1, 2, 3, 4, 5, 6)
    assert sum(len(r.boxes) for r in neu) == 3335
    for r in neu:
        assert r.shape == (200, 200)
        for b in r.boxes:
            assert 0 <= b.x1 < b.x2 <= 200 and 0 <= b.y1 < b.y2 <= 200
    # cross-check every image with labels.csv: box count, box classes, image-level label
    by_id = neu.by_id()
    for row in _read_train_csv(neu_dir / "labels.csv"):
        rec = by_id[row["image"]]
        assert len(rec.boxes) == int(row["n_boxes"])
        box_classes = {neu.classes[b.class_index] for b in rec.boxes}
        assert box_classes == set(row["box_labels"].split(";"))
        assert neu.classes.index(row["label"]) in rec.labels
        assert rec.defective


def test_neu_second_class_box_and_conversion(neu):
    rec = neu.by_id()["crazing_104.jpg"]
    patches = neu.classes.index("patches")
    # VOC (78, 169, 118, 200) 1-based inclusive -> 0-based exclusive, within the 200x200 image
    assert Box(patches, 77, 168, 118, 200) in rec.boxes
    assert Box(0, 3, 3, 110, 136) in rec.boxes  # first crazing box (4, 4, 110, 136)
    assert rec.present[0] and rec.present[patches]
    m = rec.masks()
    assert m.shape == (6, 200, 200)
    assert int(m[patches].sum()) == 41 * 32


def test_neu_filename_without_extension(neu, neu_dir):
    """patches_104.xml says <filename>patches_104</filename> (no .jpg)."""
    assert (
        "<filename>patches_104</filename>"
        in (neu_dir / "annotations" / "patches_104.xml").read_text()
    )
    assert neu.by_id()["patches_104.jpg"].boxes


def _voc_xml(filename: str, objects: list[tuple[str, tuple]], size=(30, 20)) -> str:
    objs = "".join(
        f"<object><name>{n}</name><bndbox><xmin>{c[0]}</xmin><ymin>{c[1]}</ymin>"
        f"<xmax>{c[2]}</xmax><ymax>{c[3]}</ymax></bndbox></object>"
        for n, c in objects
    )
    return (
        f"<annotation><filename>{filename}</filename><size><width>{size[0]}</width>"
        f"<height>{size[1]}</height><depth>1</depth></size>{objs}</annotation>"
    )


def test_voc_quirks_tolerated(tmp_path):
    for n in ("a.jpg", "b.jpg", "c.jpg"):
        _image(tmp_path / "images" / n)
    ann = tmp_path / "annotations"
    ann.mkdir()
    (ann / "a.xml").write_text(
        _voc_xml("a", [("dent", (1, 1, 10, 5)), ("scratch", (0, 2, 99, 20))])
    )
    # xml named differently from its image: matched through <filename>
    (ann / "renamed_b.xml").write_text(_voc_xml("b.jpg", [("scratch", (5, 5, 6, 6))]))
    ds = load_dataset(tmp_path)
    assert ds.layout == "voc" and ds.classes == ("dent", "scratch")
    a, b, c = ds.records
    assert a.boxes == (Box(0, 0, 0, 10, 5), Box(1, 0, 1, 30, 20))  # second box clipped to 30x20
    assert b.boxes == (Box(1, 4, 4, 6, 6),)
    assert c.boxes == () and not c.defective  # an image without XML is defect-free
    assert a.labels == frozenset({0, 1})


def test_voc_problems(tmp_path):
    for n in ("a.jpg", "b.jpg"):
        _image(tmp_path / "images" / n)
    ann = tmp_path / "annotations"
    ann.mkdir()
    (ann / "a.xml").write_text(
        _voc_xml("a.jpg", [("dent", (40, 1, 50, 5)), ("dent", (1, 1, "x", 5))])
    )
    (ann / "b.xml").write_text("<annotation>\n<filename>b.jpg</filename>\n<object>\n</annotation>")
    (ann / "ghost.xml").write_text(_voc_xml("ghost.jpg", [("dent", (1, 1, 2, 2))]))
    probs = _problems(tmp_path)
    joined = "\n".join(probs)
    assert len(probs) == 4, joined
    assert (
        f"{ann / 'a.xml'}, field object 1: 'dent' box (xmin=40, ymin=1, xmax=50, ymax=5) "
        "is empty or outside the 30x20 image" in joined
    )
    assert (
        f"{ann / 'a.xml'}, field object 2: 'dent' box has a missing or non-numeric corner" in joined
    )
    assert f"{ann / 'b.xml'}, row 4: not valid XML" in joined
    assert f"{ann / 'ghost.xml'}: no image for this annotation" in joined


# ---------------------------------------------------------------- splits


def test_split_deterministic_disjoint_stratified(neu):
    train, val = split_ids(neu, 0.2, seed=0)
    assert (train, val) == split_ids(neu, 0.2, seed=0)
    assert split_ids(neu, 0.2, seed=1)[1] != val
    assert not set(train) & set(val)
    assert sorted(train + val) == sorted(r.image_id for r in neu)
    assert abs(len(val) - 0.2 * len(neu)) <= 2
    combos = Counter(combination(r) for r in neu)
    val_combos = Counter(combination(r) for r in neu.subset(val))
    for combo, n in combos.items():
        if n == 1:
            assert val_combos[combo] == 0  # cannot be split: kept for training
        else:
            assert abs(val_combos[combo] - 0.2 * n) <= 1, combo
    assert combos["crazing"] > 100 and "crazing+patches" in combos


def test_split_ignores_record_order_and_keeps_rare_combos_in_train(severstal_dir):
    ds = load_dataset(severstal_dir)
    train, val = split_ids(ds, 0.2, seed=3)
    shuffled = ds.subset([r.image_id for r in ds])
    random.Random(0).shuffle(shuffled.records)
    assert split_ids(shuffled, 0.2, seed=3) == (train, val)
    assert "03db6bbc3.jpg" in train  # the only 3+4 image
    assert len(val) == 3 and all(i in {r.image_id for r in ds} for i in val)
    assert split_ids(ds, 0.0) == (sorted(r.image_id for r in ds), [])
    with pytest.raises(ValueError, match="val_fraction"):
        split_ids(ds, 1.0)


def test_scan_dataset_returns_problems_without_raising(tmp_path):
    _severstal(tmp_path, ["a.png,9,1 3"])
    ds, probs = scan_dataset(tmp_path)
    assert len(ds) == 3 and len(probs) == 1 and probs[0].row == 2 and probs[0].field == "ClassId"
