"""Post-processing rules (one implementation, per gate mode) and the per-class tuner on them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from steelscan import rle
from steelscan.evaluation.tuning import (
    centre_of_plateau,
    class_dice,
    grid_dice,
    image_dice,
    tune_postprocess,
)
from steelscan.inference.postprocess import apply, boxes_from_mask, remove_small_components
from steelscan.inference.raw import RawPrediction
from steelscan.manifest import PostProcess


def pp_for(k: int, mode: str = "hard", cls=0.5, pix=0.5, min_area=0, comp=0) -> PostProcess:
    return PostProcess(
        gate_mode=mode,
        class_thresholds=[cls] * k,
        pixel_thresholds=[pix] * k,
        min_areas=[min_area] * k,
        min_component_areas=[comp] * k,
    )


# --------------------------------------------------------------------------- postprocess


def test_gate_modes():
    probs = np.zeros((2, 10, 10), np.float32)
    probs[0, 2:6, 2:6] = 0.8  # 16 px
    probs[1, 5:9, 5:9] = 0.8
    cp = np.array([0.4, 0.9], np.float32)
    # hard: class 0 is below its class threshold so it is absent whatever its mask says
    present, masks = apply(cp, probs, pp_for(2, "hard"))
    assert present.tolist() == [False, True]
    assert masks[0].sum() == 0 and masks[1].sum() == 16 and masks.dtype == np.uint8
    # soft: mask prob x class prob = 0.32 (class 0) and 0.72 (class 1) against the pixel threshold
    present, masks = apply(cp, probs, pp_for(2, "soft", pix=0.3))
    assert present.tolist() == [True, True]
    present, _ = apply(cp, probs, pp_for(2, "soft", pix=0.5))
    assert present.tolist() == [False, True]
    # none: the classifier is ignored entirely
    present, masks = apply(np.zeros(2, np.float32), probs, pp_for(2, "none"))
    assert present.tolist() == [True, True] and masks.sum() == 32


def test_components_and_min_area():
    probs = np.zeros((1, 20, 20), np.float32)
    probs[0, 1:3, 1:3] = 0.9  # 4 px speck
    probs[0, 10:16, 10:16] = 0.9  # 36 px blob
    cp = np.ones(1, np.float32)
    _, masks = apply(cp, probs, pp_for(1, comp=5))
    assert masks[0].sum() == 36 and masks[0, 1, 1] == 0
    _, masks = apply(cp, probs, pp_for(1, min_area=41))
    assert masks[0].sum() == 0  # 40 px in all: the whole mask is dropped
    present, masks = apply(cp, probs, pp_for(1, min_area=40))
    assert present[0] and masks[0].sum() == 40
    # components are 8-connected: a diagonal pair is one component of 2 px
    diag = np.zeros((5, 5), np.uint8)
    diag[1, 1] = diag[2, 2] = 1
    assert remove_small_components(diag, 2).sum() == 2
    assert remove_small_components(diag, 3).sum() == 0
    with pytest.raises(ValueError, match="class_probs"):
        apply(np.ones(2), probs, pp_for(1))
    with pytest.raises(ValueError, match="min_areas has 1 entries for 2 classes"):
        apply(
            np.ones(2),
            np.zeros((2, 4, 4)),
            pp_for(1).model_copy(
                update={"pixel_thresholds": [0.5, 0.5], "class_thresholds": [0.5, 0.5]}
            ),
        )


def test_boxes_from_mask_exclusive_ends():
    m = np.zeros((10, 20), np.uint8)
    m[2:5, 3:8] = 1
    m[7, 15] = 1
    assert sorted(boxes_from_mask(m)) == [(3, 2, 8, 5), (15, 7, 16, 8)]
    assert boxes_from_mask(np.zeros((4, 4))) == []


# --------------------------------------------------------------------------- tuner


def make_case(seed: int, n: int = 24, k: int = 2, h: int = 64, w: int = 256):
    """Noisy predictions of rectangles: low-confidence true regions, confident small specks, and
    class probabilities that separate defect images only around 0.3, so defaults are not best."""
    rng = np.random.default_rng(seed)
    raws, truths = [], []
    for _ in range(n):
        t = np.zeros((k, h, w), np.uint8)
        mp = (rng.random((k, h, w)) * 0.35).astype(np.float32)
        cp = (rng.random(k) * 0.25).astype(np.float32)
        for c in range(k):
            if rng.random() < 0.5:
                y, x = int(rng.integers(0, h - 16)), int(rng.integers(0, w - 48))
                t[c, y : y + 16, x : x + 48] = 1
                mp[c, y : y + 16, x : x + 48] = rng.uniform(0.38, 0.9)
                cp[c] = rng.uniform(0.3, 1.0)
            for _ in range(2):  # confident specks that should be filtered out
                y, x = int(rng.integers(0, h - 3)), int(rng.integers(0, w - 3))
                mp[c, y : y + 2, x : x + 2] = 0.95
        raws.append(RawPrediction(cp, mp))
        truths.append(t)
    return raws, truths


@pytest.mark.parametrize("mode", ["hard", "soft", "none"])
def test_grid_equals_apply(mode):
    """The vectorised search path gives exactly the Dice that apply() gives, combination by
    combination (at full resolution), so tuning optimises what inference does."""
    raws, truths = make_case(3, n=10)
    c = 1
    cp = np.array([r.class_probs[c] for r in raws])
    probs = np.stack([r.mask_probs[c] for r in raws])
    tr = np.stack([t[c] for t in truths])
    cls, pix, comp, mins = [0.0, 0.35, 0.6], [0.3, 0.5], [0, 3, 10], [0, 50, 700]
    table = grid_dice(cp, probs, tr, mode, cls, pix, comp, mins)
    assert table.shape == (2, 3, 3, 3)
    for a, p in enumerate(pix):
        for b, ct in enumerate(cls):
            for d, ca in enumerate(comp):
                for e, ma in enumerate(mins):
                    pp = PostProcess(
                        gate_mode=mode,
                        class_thresholds=[0.5, ct],
                        pixel_thresholds=[0.5, p],
                        min_areas=[0, ma],
                        min_component_areas=[0, ca],
                    )
                    assert table[a, b, d, e] == pytest.approx(class_dice(raws, truths, pp)[c])
    assert table.max() > table.min()  # the grid really changes the outcome


def test_coarse_grid_is_exact_without_component_filter():
    """At 4x, thresholds and whole-mask areas stay exact; only component grouping is coarse."""
    raws, truths = make_case(4, n=8)
    c = 0
    cp = np.array([r.class_probs[c] for r in raws])
    args = ([r.mask_probs[c] for r in raws], [t[c] for t in truths], "hard", [0.0, 0.5])
    fine = grid_dice(cp, *args, [0.3, 0.6], [0, 1], [0, 100, 900], factor=1)
    coarse = grid_dice(cp, *args, [0.3, 0.6], [0, 1], [0, 100, 900], factor=4)
    np.testing.assert_allclose(coarse, fine)
    # with a component filter the two may differ, but only a little on these blobs
    f1 = grid_dice(cp, *args, [0.5], [12], [0], factor=1)
    f4 = grid_dice(cp, *args, [0.5], [12], [0], factor=4)
    assert abs(f1 - f4).max() < 0.1


@pytest.mark.parametrize("mode", ["hard", "soft"])
def test_tuning_improves_and_is_consistent(mode):
    raws, truths = make_case(0)
    base = pp_for(2, mode)
    tuned, before, after = tune_postprocess(raws, truths, base, progress=False)
    assert before == pytest.approx(image_dice(raws, truths, base, gate=True).mean())
    # re-scored as the inspector runs it (hard gate included), not guessed
    assert after == pytest.approx(image_dice(raws, truths, tuned, gate=True).mean())
    assert after >= class_dice(raws, truths, tuned).mean() - 1e-12  # the gate only ever helps
    assert after > before + 0.05
    assert tuned.gate_mode == mode
    assert all(a > 0 for a in tuned.min_component_areas)  # the confident specks are filtered
    if mode == "soft":
        assert tuned.class_thresholds == base.class_thresholds  # unused in soft mode


def test_tuning_never_worse_than_base():
    """On pure noise, and with an already good base, the tuner never returns a worse score."""
    rng = np.random.default_rng(5)
    raws = [
        RawPrediction(rng.random(2).astype(np.float32), rng.random((2, 32, 64)).astype(np.float32))
        for _ in range(8)
    ]
    truths = [(rng.random((2, 32, 64)) < 0.1).astype(np.uint8) for _ in range(8)]
    for base in (pp_for(2), pp_for(2, "none", pix=0.99, min_area=5000)):
        tuned, before, after = tune_postprocess(raws, truths, base, progress=False)
        assert after >= before
        assert after == pytest.approx(image_dice(raws, truths, tuned, gate=True).mean())


def test_tuning_on_real_masks(reference_rle_csv):
    """Real Severstal masks at full size; predictions are blurred, shifted truths plus noise. The
    search runs downsampled (4x) and the result is re-scored at full resolution."""
    import cv2

    df = pd.read_csv(reference_rle_csv, nrows=200)
    df = df[df["ClassId"].isin([1, 3])].head(8)
    rng = np.random.default_rng(0)
    raws, truths = [], []
    for i, row in enumerate(df.itertuples()):
        t = np.zeros((2, 256, 1600), np.uint8)
        t[0 if row.ClassId == 1 else 1] = rle.decode(row.EncodedPixels)
        if i % 3 == 2:
            t[:] = 0  # some clean images
        mp = np.stack([cv2.GaussianBlur(np.roll(m, 3, 1).astype(np.float32), (0, 0), 4) for m in t])
        mp = 0.6 * mp + 0.55 * rng.random(mp.shape, dtype=np.float32)
        cp = np.where(t.reshape(2, -1).any(1), 0.8, 0.2).astype(np.float32)
        raws.append(RawPrediction(cp, mp.astype(np.float32)))
        truths.append(t)
    tuned, before, after = tune_postprocess(raws, truths, pp_for(2), progress=False)
    # scattered noise above 0.5 spoils the base masks; a higher pixel threshold or a component
    # filter removes it
    assert after > before + 0.01
    assert tuned.pixel_thresholds != [0.5, 0.5] or tuned.min_component_areas != [0, 0]


def test_centre_of_plateau_moves_along_ties_only():
    table = np.zeros((2, 6, 2, 5))
    table[1, 1:5, 0, 1:4] = 0.9  # a plateau in class threshold and min area
    table[1, 3, 1, 0] = 0.95  # a better setting elsewhere is not this function's business
    assert centre_of_plateau(table, (1, 1, 0, 1)) == (1, 2, 0, 2)
    assert centre_of_plateau(table, (1, 4, 0, 3)) == (1, 2, 0, 2)
    lone = np.zeros((1, 3, 1, 3))
    lone[0, 1, 0, 1] = 1.0
    assert centre_of_plateau(lone, (0, 1, 0, 1)) == (0, 1, 0, 1)


def test_confident_classifier_gets_a_gate_that_skips_clean_images():
    """With class probabilities near 0 and 1, every class threshold from 0.1 to 0.9 scores the
    same; the tuner must pick the middle of that range, not 0 (which would never skip an image)."""
    raws, truths = [], []
    for i in range(12):
        t = np.zeros((2, 32, 64), np.uint8)
        mp = np.zeros((2, 32, 64), np.float32)
        cp = np.full(2, 0.02, np.float32)
        if i % 2:
            c = i % 4 // 2
            t[c, 8:20, 10:40] = 1
            mp[c, 8:20, 10:40] = 0.9
            mp[1 - c, 0:3, 0:3] = 0.9  # a confident false speck the gate should cut
            cp[c] = 0.97
        raws.append(RawPrediction(cp, mp))
        truths.append(t)
    tuned, before, after = tune_postprocess(raws, truths, pp_for(2, cls=0.0), progress=False)
    assert after == pytest.approx(1.0)
    assert all(0.3 <= ct <= 0.7 for ct in tuned.class_thresholds), tuned.class_thresholds
    assert tuned.gate_threshold >= 0.3
    clean = [r for r, t in zip(raws, truths, strict=True) if not t.any()]
    assert all(r.class_probs.max() < tuned.gate_threshold for r in clean)


def test_gate_never_below_the_lowest_class_threshold():
    """A gate under every class threshold scores the same as one at the lowest of them but skips
    fewer images: the tuner must not 'centre' the gate down there."""
    from steelscan.evaluation.tuning import tune_gate

    raws, truths = [], []
    for i in range(6):
        t = np.zeros((2, 8, 8), np.uint8)
        mp = np.zeros((2, 8, 8), np.float32)
        cp = np.array([0.15, 0.0], np.float32) if i % 2 else np.array([0.0, 0.0], np.float32)
        if i % 2:  # a barely confident defect: any gate above 0.15 would lose it
            t[0, 2:6, 2:6] = 1
            mp[0, 2:6, 2:6] = 0.9
        raws.append(RawPrediction(cp, mp))
        truths.append(t)
    pp = pp_for(2, cls=0.1)
    gate, score = tune_gate(raws, truths, pp)
    assert gate == pytest.approx(0.1) and score == pytest.approx(1.0)


def test_gate_above_class_thresholds_when_it_cuts_false_alarms():
    """Class 1's classifier misses a real defect (probability 0), so its class threshold must
    stay 0, which lets false masks through on clean images. Those images have a low defect
    probability, so a gate above 0 removes them while the defect image (class 0 is sure) stays."""
    raws, truths = [], []
    for i in range(8):
        t = np.zeros((2, 16, 32), np.uint8)
        mp = np.zeros((2, 16, 32), np.float32)
        if i < 4:  # defect images: class 0 sure; class 1 real but missed by the classifier
            t[:, 2:8, 2:20] = 1
            mp[:, 2:8, 2:20] = 0.9
            cp = np.array([0.95, 0.0], np.float32)
        else:  # clean images with a confident false blob in class 1
            mp[1, 4:12, 4:24] = 0.9
            cp = np.array([0.05, 0.05], np.float32)
        raws.append(RawPrediction(cp, mp))
        truths.append(t)
    tuned, before, after = tune_postprocess(raws, truths, pp_for(2, cls=0.0), progress=False)
    assert tuned.class_thresholds[1] == 0.0
    assert tuned.gate_threshold > 0.05  # above the clean images, above a class threshold
    assert tuned.gate_threshold <= 0.95
    assert after == pytest.approx(1.0)
    assert class_dice(raws, truths, tuned).mean() < 1.0  # without the gate it would not be


def test_tuning_rejects_mismatched_inputs():
    raws, truths = make_case(1, n=2)
    with pytest.raises(ValueError, match="2 predictions but 1 truth"):
        tune_postprocess(raws, truths[:1], pp_for(2), progress=False)
    with pytest.raises(ValueError, match="expected class_probs"):
        tune_postprocess(raws, truths, pp_for(3), progress=False)
    with pytest.raises(ValueError, match="at least one"):
        tune_postprocess([], [], pp_for(2), progress=False)


def _mixed_size_case() -> tuple[list[RawPrediction], list[np.ndarray]]:
    """Small and large tiles (Magnetic-tile-like): defects are large blobs, and clean tiles carry
    confident false blobs of a middling size that only a minimum area removes."""
    raws, truths = [], []
    for i, (h, w) in enumerate([(96, 80), (100, 90), (400, 360), (420, 380)] * 3):
        prob = np.zeros((1, h, w), np.float32)
        truth = np.zeros((1, h, w), np.uint8)
        if i % 2 == 0:  # a defect: a 30 x 30 blob, drawn a little too wide
            truth[0, 10:40, 10:40] = 1
            prob[0, 9:41, 10:42] = 0.9
        else:  # clean: a confident 12 x 12 false blob
            prob[0, 50:62, 20:32] = 0.9
        raws.append(RawPrediction(np.array([0.9], np.float32), prob))
        truths.append(truth)
    return raws, truths


def test_tuning_of_mixed_sizes_does_not_depend_on_the_order_of_images():
    """The minimum-area grid and the coarse labelling factor come from all the images, not from
    whichever comes first: tuning the same images in another order finds the same settings."""
    raws, truths = _mixed_size_case()
    base = pp_for(1)
    found = [
        tune_postprocess(raws[::step], truths[::step], base, progress=False)[0] for step in (1, -1)
    ]
    assert found[0] == found[1]
    # and the false blobs (144 px) are removed while the defects (900 px) stay
    present = [apply(r.class_probs, r.mask_probs, found[0])[0][0] for r in raws]
    assert present == [i % 2 == 0 for i in range(len(raws))]
