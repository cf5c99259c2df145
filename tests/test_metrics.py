"""Metrics: Dice traps, the Kaggle score from CSVs (all three layouts), gate helpers, box mAP, and
the `steelscan score` command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from steelscan import rle
from steelscan.cli import app
from steelscan.data.records import Box, DataError
from steelscan.evaluation.metrics import (
    DiceAccumulator,
    box_map50,
    classification_summary,
    dice,
    kaggle_score,
    runs_intersection,
    score_csvs,
    threshold_for_recall,
)

SHAPE = (4, 5)  # 20 pixels, numbered down the columns

# --------------------------------------------------------------------------- dice


def test_dice_traps():
    empty = np.zeros(SHAPE, np.uint8)
    one = empty.copy()
    one[2, 3] = 1
    assert dice(empty, empty) == 1.0
    assert dice(one, empty) == 0.0  # one false pixel on a clean image loses the whole pair
    assert dice(empty, one) == 0.0
    assert dice(one, one) == 1.0
    half = np.zeros(SHAPE, np.uint8)
    half[:, 0] = 1  # 4 pixels
    part = np.zeros(SHAPE, np.uint8)
    part[:2, 0] = 1  # 2 of them
    assert dice(part, half) == pytest.approx(2 * 2 / 6)
    with pytest.raises(ValueError, match="shapes differ"):
        dice(empty, np.zeros((5, 4)))


def test_runs_intersection_matches_masks_on_real_rle(reference_rle_csv):
    """Overlap computed from runs equals the overlap of decoded masks, on real Kaggle RLE."""
    df = pd.read_csv(reference_rle_csv, nrows=40)
    runs = [rle.parse(s) for s in df["EncodedPixels"]]
    masks = [rle.decode(s) for s in df["EncodedPixels"]]
    rng = np.random.default_rng(0)
    for i in range(len(runs)):
        # shift a real mask so it overlaps itself partially, and pair it with another real mask
        shift = int(rng.integers(1, 40))
        shifted = np.roll(masks[i], shift, axis=0)
        pairs = [
            (runs[i], masks[i], runs[i], masks[i]),
            (runs[i], masks[i], rle.parse(rle.encode(shifted)), shifted),
            (runs[i], masks[i], runs[(i + 1) % len(runs)], masks[(i + 1) % len(runs)]),
        ]
        for ra, ma, rb, mb in pairs:
            expected = int(np.logical_and(ma, mb).sum())
            assert runs_intersection(ra, rb) == expected
            assert runs_intersection(rb, ra) == expected


def test_runs_intersection_random_and_touching():
    rng = np.random.default_rng(1)
    for _ in range(200):
        a = (rng.random(SHAPE) < 0.5).astype(np.uint8)
        b = (rng.random(SHAPE) < 0.5).astype(np.uint8)
        ra, rb = rle.parse(rle.encode(a), SHAPE), rle.parse(rle.encode(b), SHAPE)
        assert runs_intersection(ra, rb) == int((a & b).sum())
    # runs that only touch end-to-start share no pixel
    assert runs_intersection(np.array([[1, 3]]), np.array([[4, 2]])) == 0
    assert runs_intersection(np.array([[1, 3]]), np.zeros((0, 2), np.int64)) == 0


def test_kaggle_score_from_masks_and_accumulator():
    t = np.zeros((2, 2, *SHAPE), np.uint8)
    p = np.zeros_like(t)
    t[0, 0, 0, 0] = 1
    p[0, 0, 0, 0] = 1  # perfect
    p[1, 1, 3, 4] = 1  # false pixel on empty truth
    assert kaggle_score(p, t) == pytest.approx((1 + 1 + 1 + 0) / 4)
    acc = DiceAccumulator([1, 2], ["a", "b"])
    with pytest.raises(ValueError, match="expected prediction and truth"):
        acc.add_masks(np.zeros((3, *SHAPE)), np.zeros((3, *SHAPE)))


# --------------------------------------------------------------------------- CSVs

TRUTH_ROWS = [("a.jpg", 1, "1 4"), ("b.jpg", 3, "5 2")]
PRED_ROWS = [("a.jpg", 1, "1 2"), ("b.jpg", 3, ""), ("c.jpg", 2, "10 1")]


def write_new(path: Path, rows) -> Path:
    pd.DataFrame(rows, columns=["ImageId", "ClassId", "EncodedPixels"]).to_csv(path, index=False)
    return path


def write_submission(path: Path, rows) -> Path:
    df = pd.DataFrame(rows, columns=["ImageId", "ClassId", "EncodedPixels"])
    df[["ImageId", "EncodedPixels", "ClassId"]].to_csv(path, index=False)
    return path


def write_old(path: Path, rows) -> Path:
    """The original 2019 layout: one row per (image, class), empty RLE for absent classes."""
    have = {(i, c): e for i, c, e in rows}
    images = sorted({i for i, _, _ in rows})
    data = [(f"{i}_{c}", have.get((i, c), "")) for i in images for c in (1, 2, 3, 4)]
    pd.DataFrame(data, columns=["ImageId_ClassId", "EncodedPixels"]).to_csv(path, index=False)
    return path


def write_list(path: Path, ids) -> Path:
    path.write_text("\n".join(ids) + "\n")
    return path


def check_hand_case(rep) -> None:
    """Expected numbers worked out by hand for TRUTH_ROWS/PRED_ROWS over images a, b, c."""
    # class 1: a 2/3 (2 of 4 pixels found), b 1, c 1; class 2: a 1, b 1, c 0 (false pixel);
    # class 3: a 1, b 0 (missed), c 1; class 4: all empty = 1
    assert rep.num_images == 3
    assert rep.dice_per_class == pytest.approx([(2 / 3 + 2) / 3, 2 / 3, 2 / 3, 1.0])
    assert rep.score == pytest.approx((2 / 3 + 2 + 2 + 2 + 3) / 12)
    assert rep.tp == [1, 0, 0, 0]
    assert rep.fp == [0, 1, 0, 0]
    assert rep.tn == [2, 2, 2, 3]
    assert rep.fn == [0, 0, 1, 0]
    assert rep.empty_baseline == pytest.approx(10 / 12)
    assert rep.dice_nonempty_per_class[0] == pytest.approx(2 / 3)
    assert rep.dice_nonempty_per_class[2] == 0.0
    assert rep.dice_nonempty_per_class[1] is None and rep.dice_nonempty_per_class[3] is None


@pytest.mark.parametrize("truth_fmt", [write_new, write_submission, write_old])
@pytest.mark.parametrize("pred_fmt", [write_new, write_submission, write_old])
def test_score_csvs_all_layouts(tmp_path, truth_fmt, pred_fmt):
    truth = truth_fmt(tmp_path / "truth.csv", TRUTH_ROWS)
    pred = pred_fmt(tmp_path / "pred.csv", PRED_ROWS)
    images = write_list(tmp_path / "images.txt", ["a.jpg", "b.jpg", "c.jpg"])
    rep = score_csvs(truth, pred, images=images, shape=SHAPE)
    check_hand_case(rep)
    d = rep.to_dict()
    assert d["num_pairs"] == 12 and d["classes"][0]["truth_images"] == 1
    json.dumps(d)


def test_images_listed_but_absent_count_as_empty(tmp_path):
    truth = write_new(tmp_path / "t.csv", [("a.jpg", 1, "1 4")])
    pred = write_new(tmp_path / "p.csv", [("a.jpg", 1, "1 4")])
    alone = score_csvs(truth, pred, shape=SHAPE)
    assert alone.num_images == 1 and alone.score == 1.0
    # A CSV image list (ImageId column) adds 9 clean images that appear in neither file.
    ids = ["a.jpg"] + [f"clean{i}.jpg" for i in range(9)]
    lst = tmp_path / "images.csv"
    pd.DataFrame({"ImageId": ids, "has_defect": [1] + [0] * 9}).to_csv(lst, index=False)
    rep = score_csvs(truth, pred, images=lst, shape=SHAPE)
    assert rep.num_images == 10 and rep.score == 1.0 and rep.tn == [9, 10, 10, 10]
    assert rep.empty_baseline == pytest.approx(39 / 40)
    # The image-level defect_and_no_defect.csv spells the column ImageID: same list.
    kaggle = tmp_path / "defect_and_no_defect.csv"
    pd.DataFrame({"ImageID": ids, "label": [1] + [0] * 9}).to_csv(kaggle, index=False)
    assert score_csvs(truth, pred, images=kaggle, shape=SHAPE).num_images == 10
    # Truth rows outside the list are ignored (scoring a validation subset of train.csv).
    truth2 = write_new(tmp_path / "t2.csv", [("a.jpg", 1, "1 4"), ("z.jpg", 2, "1 1")])
    assert score_csvs(truth2, pred, images=["a.jpg"], shape=SHAPE).score == 1.0


def test_prediction_for_unknown_image_is_an_error(tmp_path):
    truth = write_new(tmp_path / "t.csv", TRUTH_ROWS)
    pred = write_new(tmp_path / "p.csv", PRED_ROWS)  # c.jpg is not in the truth
    with pytest.raises(DataError, match=r"p\.csv.*c\.jpg"):
        score_csvs(truth, pred, shape=SHAPE)


def test_bad_rle_duplicates_and_bad_columns_are_errors(tmp_path):
    truth = write_new(tmp_path / "t.csv", TRUTH_ROWS)
    bad = write_new(tmp_path / "bad.csv", [("a.jpg", 1, "1 4"), ("b.jpg", 3, "5 x")])
    with pytest.raises(DataError) as e:
        score_csvs(truth, bad, shape=SHAPE)
    assert "bad.csv, row 3, field EncodedPixels" in str(e.value)
    past = write_new(tmp_path / "past.csv", [("a.jpg", 1, "19 5")])
    with pytest.raises(DataError, match="past the 4x5 image"):
        score_csvs(truth, past, shape=SHAPE)
    dup = write_new(tmp_path / "dup.csv", [("a.jpg", 1, "1 1"), ("a.jpg", 1, "3 1")])
    with pytest.raises(DataError, match=r"dup\.csv, row 3.*duplicate.*a\.jpg class 1"):
        score_csvs(truth, dup, shape=SHAPE)
    cls = write_new(tmp_path / "cls.csv", [("a.jpg", 7, "1 1")])
    with pytest.raises(DataError, match=r"cls\.csv, row 2, field ClassId: .*class id '7'"):
        score_csvs(truth, cls, shape=SHAPE)
    cols = tmp_path / "cols.csv"
    cols.write_text("name,mask\na.jpg,1 1\n")
    with pytest.raises(DataError, match="EncodedPixels"):
        score_csvs(truth, cols, shape=SHAPE)
    with pytest.raises(DataError, match="not found"):
        score_csvs(truth, tmp_path / "missing.csv", shape=SHAPE)


def test_real_train_csv(severstal_dir, tmp_path):
    """Real labels: perfect = 1; predicting nothing = the all-empty baseline (9 rows / 60 pairs)."""
    truth = severstal_dir / "train.csv"
    images = severstal_dir / "images.csv"
    assert score_csvs(truth, truth, images=images).score == 1.0
    empty = tmp_path / "empty.csv"
    empty.write_text("ImageId,EncodedPixels,ClassId\n")
    rep = score_csvs(truth, empty, images=images)
    assert rep.num_images == 15
    assert rep.score == pytest.approx(rep.empty_baseline) == pytest.approx(51 / 60)
    assert rep.fn == [2, 0, 6, 1]


# --------------------------------------------------------------------------- classification


def test_classification_summary_binary_and_multilabel():
    y = np.array([0, 0, 1, 1, 1, 0])
    p = np.array([0.1, 0.6, 0.7, 0.9, 0.4, 0.2])
    s = classification_summary(y, p, 0.5)
    assert s["accuracy"] == pytest.approx(4 / 6)
    assert s["confusion_matrix"] == [[2, 1], [1, 2]]
    assert s["roc_auc"] == pytest.approx(8 / 9)  # 8 of 9 (defect, clean) pairs ranked right
    assert s["report"]["defect"]["recall"] == pytest.approx(2 / 3)
    ym = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    pm = np.array([[0.9, 0.2], [0.3, 0.8], [0.6, 0.3], [0.1, 0.1]])
    m = classification_summary(ym, pm, [0.5, 0.5], ["scratch", "patch"])
    assert m["accuracy_per_class"] == [1.0, 0.75]
    assert m["exact_match_accuracy"] == 0.75
    assert m["report"]["patch"]["recall"] == 0.5
    assert m["confusion_matrices"][1] == [[2, 0], [1, 1]]
    one_class = classification_summary(np.ones(3, int), np.array([0.2, 0.5, 0.9]))
    assert one_class["roc_auc"] is None


def test_threshold_for_recall():
    y = np.array([1] * 100 + [0] * 50)
    p = np.concatenate([np.linspace(0.01, 1.0, 100), np.linspace(0, 0.5, 50)])
    t = threshold_for_recall(y, p, 0.99)
    assert (p[y == 1] >= t).mean() >= 0.99
    # the largest such threshold: nudging it up loses recall
    assert (p[y == 1] >= np.nextafter(t, 1)).mean() < 0.99
    assert threshold_for_recall(y, p, 1.0) == pytest.approx(0.01)
    with pytest.raises(ValueError, match="no positive"):
        threshold_for_recall(np.zeros(3), np.ones(3))


# --------------------------------------------------------------------------- boxes


def test_box_map_hand_cases():
    gt = [[Box(0, 10, 10, 50, 50), Box(1, 60, 60, 100, 90)], [Box(0, 0, 0, 20, 20)]]
    perfect = [
        [(0, 10, 10, 50, 50, 0.9), (1, 60, 60, 100, 90, 0.8)],
        [(0, 0, 0, 20, 20, 0.7)],
    ]
    r = box_map50(perfect, gt, num_classes=3)
    assert r["map50"] == 1.0 and r["ap_per_class"] == [1.0, 1.0, None] and r["num_gt"] == [2, 1, 0]
    # shifting the top-scored class-0 box so IoU < 0.5: it is a false positive ranked first, the
    # other box is found at precision 1/2, so AP = 0.5 (recall) * 0.5 (precision)
    shifted = [
        [(0, 35, 35, 75, 75, 0.9), (1, 60, 60, 100, 90, 0.8)],
        [(0, 0, 0, 20, 20, 0.7)],
    ]
    r2 = box_map50(shifted, gt, num_classes=3)
    assert r2["ap_per_class"][0] == pytest.approx(0.25)
    assert r2["map50"] == pytest.approx((0.25 + 1.0) / 2)
    # a box slightly shifted (IoU still >= 0.5) still counts
    small_shift = [[(0, 12, 12, 52, 52, 0.9), (1, 60, 60, 100, 90, 0.8)], [(0, 0, 0, 20, 20, 0.7)]]
    assert box_map50(small_shift, gt, 3)["map50"] == 1.0
    # right boxes, wrong class: 0
    wrong = [[(2, 10, 10, 50, 50, 0.9), (2, 60, 60, 100, 90, 0.8)], [(2, 0, 0, 20, 20, 0.7)]]
    assert box_map50(wrong, gt, 3)["map50"] == 0.0
    # a duplicate detection of a found box is a false positive ranked by score
    dup = [[(0, 10, 10, 50, 50, 0.9), (0, 10, 10, 50, 50, 0.95)], [(0, 0, 0, 20, 20, 0.1)]]
    r3 = box_map50(dup, [[gt[0][0]], gt[1]], 1)
    assert r3["map50"] == pytest.approx(0.5 * 1.0 + 0.5 * (2 / 3))


# --------------------------------------------------------------------------- CLI


def test_score_cli_table_json_and_errors(tmp_path):
    runner = CliRunner()
    truth = write_new(tmp_path / "truth.csv", TRUTH_ROWS)
    pred = write_submission(tmp_path / "pred.csv", PRED_ROWS)
    images = write_list(tmp_path / "images.txt", ["a.jpg", "b.jpg", "c.jpg"])
    args = [
        "score",
        str(truth),
        str(pred),
        "--images",
        str(images),
        "--height",
        "4",
        "--width",
        "5",
    ]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "Kaggle score: 0.8056" in res.output
    assert "class 3" in res.output and "TP" in res.output
    res = runner.invoke(app, [*args, "--json"])
    assert res.exit_code == 0
    d = json.loads(res.output)
    assert d["score"] == pytest.approx(29 / 36)
    assert [c["fn"] for c in d["classes"]] == [0, 0, 1, 0]
    # user errors: one message, exit code 2, no traceback
    res = runner.invoke(app, ["score", str(truth), str(pred), "--height", "4", "--width", "5"])
    assert res.exit_code == 2
    assert "c.jpg" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["score", str(truth), str(tmp_path / "nope.csv")])
    assert res.exit_code == 2 and "nope.csv" in res.output
