"""The Kaggle RLE codec: exact on the real ground truth, and strict about malformed strings."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from steelscan import rle

SHAPE = (256, 1600)


def test_reference_csv_round_trips_exactly(reference_rle_csv):
    """Every recovered ground-truth row decodes, re-encodes to the identical string, and its
    decoded area equals the sum of its run lengths (so no runs overlapped or were dropped)."""
    with open(reference_rle_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2947
    failures = []
    for i, row in enumerate(rows, start=2):
        s = row["EncodedPixels"]
        mask = rle.decode(s, SHAPE)
        lengths = sum(int(t) for t in s.split()[1::2])
        if rle.encode(mask) != s or int(mask.sum()) != lengths or rle.area(s, SHAPE) != lengths:
            failures.append((i, row["ImageId"], row["ClassId"]))
    assert failures == []


def test_pixel_order_is_one_based_column_major():
    """Kaggle numbers pixels from 1, top to bottom, then left to right."""
    m = rle.decode("1 1", (4, 5))
    assert m[0, 0] == 1 and m.sum() == 1
    m = rle.decode("5 2", (4, 5))  # pixel 5 is the top of the SECOND column
    assert m[0, 1] == 1 and m[1, 1] == 1 and m.sum() == 2
    assert rle.encode(m) == "5 2"
    # Severstal: pixel 257 is (row 0, column 1), not (row 1, column 0) as row-major would have it.
    m = rle.decode("257 1", SHAPE)
    assert m[0, 1] == 1 and m[1, 0] == 0


def test_zero_indexed_notebook_convention_is_not_used():
    """Some public notebooks treat starts as 0-based, shifting every mask by one pixel; the
    pixel at (0, 0) is "1 1" for us, and "0 1" (their encoding of it) is rejected."""
    m = np.zeros((4, 5), np.uint8)
    m[2, 3] = 1  # column-major index 3*4 + 2 = 14 (0-based) -> pixel 15 (1-based)
    assert rle.encode(m) == "15 1"
    assert rle.decode("14 1", (4, 5))[2, 3] == 0  # the 0-indexed reading would set it
    with pytest.raises(ValueError, match="start at 1"):
        rle.decode("0 1", (4, 5))


@settings(max_examples=60, deadline=None)
@given(
    arrays(
        np.uint8,
        st.tuples(st.integers(1, 40), st.integers(1, 60)),
        elements=st.integers(0, 1),
    )
)
def test_mask_rle_mask_round_trip(mask):
    s = rle.encode(mask)
    back = rle.decode(s, mask.shape)
    np.testing.assert_array_equal(back, mask)
    assert rle.area(s, mask.shape) == int(mask.sum())


@settings(max_examples=10, deadline=None)
@given(st.integers(0, 2**32 - 1), st.floats(0.0, 1.0))
def test_full_size_random_masks_round_trip(seed, density):
    mask = (np.random.default_rng(seed).random(SHAPE) < density).astype(np.uint8)
    np.testing.assert_array_equal(rle.decode(rle.encode(mask), SHAPE), mask)


def test_encode_treats_any_nonzero_as_set_and_rejects_non_2d():
    m = np.zeros((3, 3), np.uint8)
    m[1, 1] = 255
    assert rle.encode(m) == "5 1"
    assert rle.encode(m.astype(bool)) == "5 1"
    with pytest.raises(ValueError, match="2-D"):
        rle.encode(np.zeros((2, 3, 3), np.uint8))


@pytest.mark.parametrize(
    ("text", "shape", "message"),
    [
        ("1 2 3", (4, 5), "odd number of values"),
        ("1 a", (4, 5), "non-integer value 'a'"),
        ("1.5 2", (4, 5), "non-integer value '1.5'"),
        ("-1 2", (4, 5), "non-integer value '-1'"),
        ("0 5", (4, 5), "starts at 0"),
        ("5 0", (4, 5), "length 0"),
        ("1 5 3 2", (4, 5), "overlaps or goes back"),
        ("10 2 1 2", (4, 5), "overlaps or goes back"),
        ("19 3", (4, 5), "past the 4x5 image"),
        ("409600 2", SHAPE, "past the 256x1600 image"),
    ],
)
def test_malformed_rle_raises_with_message(text, shape, message):
    with pytest.raises(ValueError, match=message):
        rle.decode(text, shape)
    with pytest.raises(ValueError, match=message):
        rle.parse(text, shape)


def test_last_pixel_is_inside_the_image():
    m = rle.decode("19 2", (4, 5))
    assert m[3, 4] == 1 and m[2, 4] == 1 and m.sum() == 2


def test_non_string_rle_raises():
    with pytest.raises(ValueError, match="must be a string"):
        rle.decode(5, (4, 5))


@pytest.mark.parametrize("empty", ["", "   ", float("nan"), None])
def test_empty_and_nan_decode_to_empty_mask(empty):
    m = rle.decode(empty, (4, 5))
    assert m.shape == (4, 5) and m.dtype == np.uint8 and m.sum() == 0
    assert rle.area(empty, (4, 5)) == 0


def test_empty_mask_encodes_to_empty_string():
    assert rle.encode(np.zeros(SHAPE, np.uint8)) == ""
    assert rle.encode(np.ones((2, 3), np.uint8)) == "1 6"
