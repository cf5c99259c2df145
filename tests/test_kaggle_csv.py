"""The one Kaggle CSV reader and the one image finder, on the real Severstal tables and on small
files written here: both layouts and any header case read the same rows, every problem names the
file and its real line, and the dataset reader, the scorer and predict's inputs agree."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
from PIL import Image

from steelscan.data import DataError, load_dataset
from steelscan.data.image_files import ImageFinder
from steelscan.data.kaggle_csv import (
    load_image_ids,
    load_mask_runs,
    read_image_rows,
    read_mask_rows,
)
from steelscan.evaluation.metrics import score_csvs
from steelscan.inference.inputs import resolve_inputs


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def _old_layout(rows: list[dict[str, str]]) -> list[str]:
    """The 2019 layout of the same rows: four ``<id>_<class>`` rows per image."""
    have = {(r["ImageId"], r["ClassId"]): r["EncodedPixels"] for r in rows}
    ids = sorted({r["ImageId"] for r in rows})
    return [f"{i}_{c},{have.get((i, str(c)), '')}" for i in ids for c in (1, 2, 3, 4)]


def _triples(rows) -> set[tuple[str, int, str]]:
    return {(r.image_id, r.class_id, r.rle) for r in rows if r.rle}


# ---------------------------------------------------------------- mask tables


def test_real_reference_rle_every_layout_and_header_case_reads_the_same(
    reference_rle_csv, tmp_path
):
    """2,947 real rows: new layout as shipped, reordered with a shouting header, and old layout."""
    rows, problems = read_mask_rows(reference_rle_csv)
    assert problems == [] and len(rows) == 2947
    assert [r.line for r in rows] == list(range(2, 2949))  # header is line 1
    raw = _rows(reference_rle_csv)
    assert len({r.image_id for r in rows}) == 2519  # SOURCES.md
    reordered = ["ENCODEDPIXELS, imageid ,ClassID"] + [
        f"{r['EncodedPixels']},{r['ImageId']},{r['ClassId']}" for r in raw
    ]
    shuffled, p1 = read_mask_rows(_write(tmp_path / "sub.csv", reordered))
    old, p2 = read_mask_rows(
        _write(tmp_path / "old.csv", ["imageid_classid,EncodedPixels", *_old_layout(raw)])
    )
    assert p1 == p2 == []
    assert _triples(shuffled) == _triples(old) == _triples(rows)
    # the scorer reads all three to the same runs: a perfect score across layouts
    rep = score_csvs(reference_rle_csv, tmp_path / "old.csv", images=tmp_path / "sub.csv")
    assert rep.score == 1.0 and rep.num_images == 2519


def test_mask_problems_carry_the_real_line_and_the_file(tmp_path):
    """Blank lines and ',' rows are skipped but still counted: the line is what an editor shows."""
    lines = ["ImageId,ClassId,EncodedPixels", "a.jpg,1,1 3", "", ",,", "b.jpg,9,1 3",
             "a.jpg,1,5 1", "c.jpg,2,1 2 3", ",1,1 1", "d.jpg,1"]  # fmt: skip
    path = _write(tmp_path / "truth.csv", lines)
    rows, problems = read_mask_rows(path)
    assert [(r.image_id, r.line) for r in rows] == [("a.jpg", 2), ("c.jpg", 7)]
    assert [str(p) for p in problems] == [
        f"{path}, row 5, field ClassId: b.jpg: unknown class id '9' (expected one of 1, 2, 3, 4)",
        f"{path}, row 6: duplicate row for a.jpg class 1 (first given on line 2)",
        f"{path}, row 8, field ImageId: empty ImageId",
        f"{path}, row 9: expected 3 fields, found 2",
    ]
    with pytest.raises(DataError) as info:  # the scorer adds the RLE check at the image size
        load_mask_runs(path, (4, 5))
    msgs = [str(p) for p in info.value.problems]
    assert f"{path}, row 7, field EncodedPixels: c.jpg class 2: RLE has an odd number" in msgs[-1]
    assert len(msgs) == 5


def test_bad_header_missing_file_and_old_key(tmp_path):
    (p,) = read_mask_rows(_write(tmp_path / "x.csv", ["name,mask", "a.jpg,1 1"]))[1]
    assert str(p).startswith(f"{tmp_path / 'x.csv'}, row 1: unrecognised header 'name,mask'")
    assert "ImageId,ClassId,EncodedPixels" in str(p) and "ImageId_ClassId" in str(p)
    (p,) = read_mask_rows(tmp_path / "nope.csv")[1]
    assert str(p) == f"{tmp_path / 'nope.csv'}: file not found"
    old = _write(tmp_path / "old.csv", ["ImageId_ClassId,EncodedPixels", "a.jpg_1,1 1", "b,1 1"])
    (p,) = read_mask_rows(old)[1]
    assert "row 3, field ImageId_ClassId: 'b' is not '<ImageId>_<ClassId>'" in str(p)


def test_dataset_reader_takes_any_header_case_and_column_order(severstal_dir, tmp_path):
    raw = _rows(severstal_dir / "train.csv")
    (tmp_path / "images").symlink_to(severstal_dir / "images")
    lines = ["encodedpixels,CLASSID,ImageID"]
    lines += [f"{r['EncodedPixels']},{r['ClassId']},{r['ImageId']}" for r in raw]
    _write(tmp_path / "train.csv", lines)
    got, want = load_dataset(tmp_path), load_dataset(severstal_dir)
    assert [(r.image_id, r.rles) for r in got] == [(r.image_id, r.rles) for r in want]


# ---------------------------------------------------------------- image tables


def test_every_image_table_lists_the_same_images(tmp_path):
    ids = ["a.jpg", "b.jpg", "c.jpg"]
    tables = {
        "defect_and_no_defect.csv": ["ImageID,label", "a.jpg,1", "b.jpg,0", "c.jpg,0"],
        "images.csv": ["ImageId,has_defect,note", "a.jpg,1,x", "b.jpg,0,y", "c.jpg,0,z"],
        "list.txt": ids,
        "header_list.csv": ["imageid", *ids],
        "train.csv": ["ImageId,ClassId,EncodedPixels", "a.jpg,1,1 3", "b.jpg,1,", "c.jpg,2,"],
        "sub.csv": ["ImageId,EncodedPixels,ClassId"] + [f"{i},,{c}" for i in ids for c in (1, 2)],
        "old.csv": ["ImageId_ClassId,EncodedPixels"] + [f"{i}_{c}," for i in ids for c in (1, 2)],
    }
    for name, lines in tables.items():
        assert load_image_ids(_write(tmp_path / name, lines)) == ids, name
    rows, problems = read_image_rows(tmp_path / "list.txt")
    assert problems == [] and [r.line for r in rows] == [1, 2, 3]  # no header: the id is line 1
    (tmp_path / "padded.txt").write_text("\n\n" + "\n".join(ids) + "\n")  # blank lines above
    assert [r.line for r in read_image_rows(tmp_path / "padded.txt")[0]] == [3, 4, 5]
    labelled, _ = read_image_rows(tmp_path / "defect_and_no_defect.csv", labels=True)
    assert [(r.image_id, r.has_defect, r.line) for r in labelled] == [
        ("a.jpg", True, 2),
        ("b.jpg", False, 3),
        ("c.jpg", False, 4),
    ]


def test_image_table_problems_name_file_and_line(tmp_path):
    path = _write(tmp_path / "labels.csv", ["ImageId,has_defect", "a.jpg,1", "", "b.jpg,maybe"])
    rows, problems = read_image_rows(path, labels=True)
    assert [r.image_id for r in rows] == ["a.jpg"]
    assert [str(p) for p in problems] == [
        f"{path}, row 4, field has_defect: b.jpg: label 'maybe' is not 0/1 (or true/false)"
    ]
    with pytest.raises(
        DataError, match=r"ids\.csv, row 1: no ImageId column in header 'name,size'"
    ):
        load_image_ids(_write(tmp_path / "ids.csv", ["name,size", "a.jpg,3"]))
    # one column headed by a word above file names: a header, not an id called 'Id'
    with pytest.raises(DataError, match=r"one\.csv, row 1: no ImageId column in header 'id'"):
        load_image_ids(_write(tmp_path / "one.csv", ["Id", "a.jpg"]))
    nolabel = _write(tmp_path / "nolabel.csv", ["ImageId", "a.jpg"])
    (p,) = read_image_rows(nolabel, labels=True)[1]
    assert str(p) == f"{nolabel}, row 1: no has_defect (or label) column in header 'imageid'"


def test_real_image_labels_agree_with_the_real_rle_rows(severstal_dir, reference_rle_csv):
    """12,558 real image-level labels: every image with a mask row is labelled defective."""
    labels, problems = read_image_rows(
        severstal_dir / "reference" / "image_labels_all_train.csv", labels=True
    )
    assert problems == [] and len(labels) == 12558
    defective = {r.image_id for r in labels if r.has_defect}
    masked = {r.image_id for r in read_mask_rows(reference_rle_csv)[0] if r.rle}
    assert masked <= defective and len(masked) == 2519
    assert len(load_image_ids(reference_rle_csv)) == 2519


# ---------------------------------------------------------------- one image finder


def _img(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 4), (90, 90, 90)).save(path)
    return path


def test_image_finder_other_suffix_exact_first_and_ambiguity(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    _img(a / "x.png")
    _img(a / "Y.JPG")
    _img(a / "z.png")
    _img(a / "z.bmp")
    _img(b / "x.jpg")
    _img(b / "w.tif")
    finder = ImageFinder.scan(a, b, tmp_path / "absent")
    assert finder.folders == [a, b]
    assert finder.find("x.jpg") == (b / "x.jpg", None)  # an exact name beats a stem match
    assert finder.find("x.jpeg") == (a / "x.png", None)  # same stem, other suffix
    assert finder.find("Y.jpg") == (a / "Y.JPG", None)  # suffix in any case
    assert finder.find("w") == (b / "w.tif", None)  # an id without suffix (VOC <filename>)
    path, why = finder.find("z.jpg")
    assert path is None and f"'z.jpg' is ambiguous in {a}: z.bmp, z.png all match" in why
    path, why = finder.find("q.jpg")
    assert path is None and "'q.jpg' not found in" in why and "(no q.jpg and no q.* file)" in why
    assert sorted(p.name for p in finder.files) == ["Y.JPG", "w.tif", "x.jpg", "x.png", "z.bmp",
                                                    "z.png"]  # fmt: skip


def test_predict_inputs_and_score_take_the_same_image_tables(severstal_reencoded_dir, tmp_path):
    """images.csv of the real re-encodes: ids say .jpg, 15 files are .png; predict finds all 23
    and scores the same 23 images as `score --images`."""
    data = tmp_path / "data"
    shutil.copytree(severstal_reencoded_dir, data, symlinks=True)
    labels = [
        f"{r['ImageId']},{r['has_defect']}" for r in _rows(data / "images.csv")
    ]  # the course's image-level table spells it ImageID,label
    table = _write(data / "defect_and_no_defect.csv", ["ImageID,label", *labels])
    for listing in (data / "images.csv", table, data / "train.csv"):
        got = resolve_inputs([listing])
        ids = load_image_ids(listing)
        assert [i.image_id for i in got.images] == ids and got.missing == []
    got = resolve_inputs([table])
    assert len(got.images) == 23 and sum(i.path.suffix == ".png" for i in got.images) == 15
    rep = score_csvs(data / "train.csv", data / "train.csv", images=table)
    assert rep.num_images == 23 and rep.score == 1.0
