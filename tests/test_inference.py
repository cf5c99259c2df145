"""Inference: preprocessing, the torch engine, the Inspector (gate, TTA, sizes), inputs, writers.

Real Severstal images from ../shared go through real (small) networks saved and reloaded as a
bundle, so these tests cover the same path as ``steelscan predict`` and the service.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from tiny_models import severstal_manifest, tiny_bundle

from steelscan import rle
from steelscan.imageio import read_image
from steelscan.inference.engines import ENGINES, available_engines, make_engine
from steelscan.inference.inputs import resolve_inputs
from steelscan.inference.predictor import Inspector, WrongImageSize
from steelscan.inference.preprocess import crop, to_batch
from steelscan.inference.writers import PredictionWriter

IMAGES = ["0a1cade03.jpg", "03db6bbc3.jpg", "000a4bcdd.jpg"]


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory) -> Path:
    """An untrained but real two-stage bundle (multi-label timm gate + ResUNet) with permissive
    post-processing, so untrained probabilities (around 0.5) give masks."""
    return tiny_bundle(tmp_path_factory.mktemp("untrained") / "model")


@pytest.fixture(scope="module")
def loaded(bundle_dir):
    """The bundle loaded once; every Inspector below gets its own engine over the same modules."""
    from steelscan.bundle import load_bundle

    return load_bundle(bundle_dir)


@pytest.fixture(scope="module")
def inspector(bundle_dir) -> Inspector:
    return Inspector(bundle_dir, device="cpu")  # from the directory, as users call it


@pytest.fixture(scope="module")
def images(severstal_dir) -> list[np.ndarray]:
    return [read_image(severstal_dir / "images" / n) for n in IMAGES]


@pytest.fixture(scope="module")
def crops(images) -> list[np.ndarray]:
    """Left parts of the strips, where the gate and TTA mechanics do not need full width."""
    return [img[:, :384] for img in images]


# -- preprocessing ------------------------------------------------------------------------------
def test_to_batch_normalises_pads_and_crops_back():
    man = severstal_manifest(pad_multiple=32)
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (100, 200, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (64, 250, 1), dtype=np.uint8)  # grayscale: repeated to 3 channels
    batch, sizes = to_batch([a, b], man)
    assert batch.dtype == np.float32 and batch.shape == (2, 3, 128, 256)
    assert sizes == [(100, 200), (64, 250)]
    mean = np.array(man.normalization.mean, np.float32)[:, None, None]
    std = np.array(man.normalization.std, np.float32)[:, None, None]
    want = (a.transpose(2, 0, 1) / 255.0 - mean) / std
    np.testing.assert_allclose(batch[0, :, :100, :200], want, atol=1e-5)
    gray = batch[1, :, :64, :250] * std + mean  # undo normalisation: all channels equal
    np.testing.assert_allclose(gray[0], gray[2], atol=1e-5)
    np.testing.assert_allclose(gray[0], b[..., 0] / 255.0, atol=1e-5)
    # reflect padding mirrors the image (row 100 equals row 98)
    np.testing.assert_allclose(batch[0, :, 100, :200], batch[0, :, 98, :200])
    zero, _ = to_batch([a], man, pad_mode="zero")
    assert np.all(zero[0, :, 100:, :] == 0) and np.all(zero[0, :, :, 200:] == 0)
    back = crop(batch, sizes)
    assert [x.shape for x in back] == [(3, 100, 200), (3, 64, 250)]


def test_to_batch_single_channel_model_averages_rgb_stats():
    man = severstal_manifest(in_channels=1)
    img = np.full((32, 32, 3), 128, np.uint8)
    batch, _ = to_batch([img], man)
    assert batch.shape == (1, 1, 32, 32)
    m, s = np.mean(man.normalization.mean), np.mean(man.normalization.std)
    np.testing.assert_allclose(batch[0, 0, 0, 0], (128 / 255 - m) / s, atol=1e-5)


# -- engines ------------------------------------------------------------------------------------
def test_engine_registry_names_torch_and_lazy_onnx(inspector):
    assert "torch" in ENGINES
    assert {"torch", "onnx"} <= set(available_engines())
    with pytest.raises(ValueError, match="unknown engine 'tensorrt'.*torch"):
        make_engine("tensorrt", inspector.bundle)


def test_torch_engine_options_agree_with_plain_float32(inspector, images):
    batch, _ = to_batch([images[0][:, :320]], inspector.manifest)
    plain = inspector.engine.segment(batch)
    assert plain.shape == (1, 4, 256, 320) and 0 <= plain.min() and plain.max() <= 1
    cl = make_engine("torch", inspector.bundle, device="cpu", channels_last=True)
    np.testing.assert_allclose(cl.segment(batch), plain, atol=1e-4)
    with pytest.warns(RuntimeWarning) if not _bf16_ok() else _no_warning():
        bf = make_engine("torch", inspector.bundle, device="cpu", bf16=True)
    out = bf.classify(batch)
    assert out.dtype == np.float32 and out.shape == (1, 4)
    np.testing.assert_allclose(out, inspector.engine.classify(batch), atol=0.05)
    # float16 is a CUDA option: on the CPU it says so and runs float32, with identical results
    with pytest.warns(RuntimeWarning, match="float16 inference is for CUDA"):
        half = make_engine("torch", inspector.bundle, device="cpu", fp16=True)
    assert half.fp16 is False
    np.testing.assert_allclose(half.segment(batch), plain, atol=1e-6)
    with pytest.raises(ValueError, match="one of bf16 and fp16"):
        make_engine("torch", inspector.bundle, device="cpu", bf16=True, fp16=True)


def _bf16_ok() -> bool:
    from steelscan.inference.engines import bf16_supported

    return bf16_supported("cpu")


class _no_warning:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


# -- the Inspector ------------------------------------------------------------------------------
def test_inspect_result_schema_masks_areas_and_rle(inspector, images):
    results = inspector.inspect_batch(list(zip(IMAGES, images, strict=True)))
    assert [r.image_id for r in results] == IMAGES
    assert any(r.has_defect for r in results)  # permissive thresholds: something is found
    for r, img in zip(results, images, strict=True):
        assert (r.height, r.width) == img.shape[:2]
        assert 0.0 <= r.defect_probability <= 1.0
        assert [c.class_id for c in r.classes] == [1, 2, 3, 4]
        assert set(r.timings_ms) >= {"decode", "classify", "segment", "postprocess"}
        for c in r.classes:
            assert c.mask.shape == img.shape[:2] and c.mask.dtype == np.uint8
            assert c.area == int(c.mask.sum())
            assert c.present == bool(c.area)
            np.testing.assert_array_equal(rle.decode(c.rle(), c.mask.shape), c.mask)
            for x1, y1, x2, y2 in c.boxes:
                assert 0 <= x1 < x2 <= r.width and 0 <= y1 < y2 <= r.height
                assert c.mask[y1:y2, x1:x2].any()
        d = json.loads(json.dumps(r.to_dict()))
        assert d["image_id"] == r.image_id and len(d["classes"]) == 4


def test_inspect_accepts_path_bytes_and_array_alike(inspector, severstal_dir, images):
    path = severstal_dir / "images" / IMAGES[0]
    by_path = inspector.inspect(path)
    by_bytes = inspector.inspect(path.read_bytes(), image_id="x")
    by_array = inspector.inspect(images[0], image_id="x")
    assert by_path.image_id == IMAGES[0]
    for other in (by_bytes, by_array):
        for a, b in zip(by_path.classes, other.classes, strict=True):
            np.testing.assert_array_equal(a.mask, b.mask)
            assert a.probability == pytest.approx(b.probability, abs=1e-6)


def test_raw_shapes_and_finish_matches_inspect(inspector, crops):
    raws = inspector.raw(crops[:2])
    assert len(raws) == 2
    for raw, img in zip(raws, crops[:2], strict=True):
        assert raw.class_probs.shape == (4,)
        assert raw.mask_probs.shape == (4, *img.shape[:2]) and raw.mask_probs.dtype == np.float32
    res = inspector.finish(raws[0], "a")
    direct = inspector.inspect(crops[0], "a")
    for a, b in zip(res.classes, direct.classes, strict=True):
        np.testing.assert_array_equal(a.mask, b.mask)


def _count_segment_calls(inspector: Inspector) -> list[int]:
    calls: list[int] = []
    real = inspector.engine.segment

    def counting(batch):
        calls.append(len(batch))
        return real(batch)

    inspector.engine.segment = counting  # instance attribute: only this inspector counts
    return calls


def test_hard_gate_skips_the_segmenter(loaded, crops):
    closed = Inspector(loaded, device="cpu", gate_mode="hard")
    closed.postprocess = closed.postprocess.model_copy(update={"gate_threshold": 1.0})
    calls = _count_segment_calls(closed)
    results = closed.inspect_batch(list(zip(IMAGES, crops, strict=True)))
    assert calls == []  # no image passes a gate at 1.0: the segmenter never runs
    assert not any(r.has_defect for r in results)
    assert all(r.timings_ms["segment"] == 0 for r in results)

    # a threshold between the crops' defect probabilities segments exactly those above it
    probe = Inspector(loaded, device="cpu", gate_mode="none")
    probs = [probe.inspect(img).defect_probability for img in crops]
    assert len(set(probs)) == len(probs)
    mid = sorted(probs)[1]
    part = Inspector(loaded, device="cpu", gate_mode="hard", batch_size=8)
    part.postprocess = part.postprocess.model_copy(update={"gate_threshold": mid})
    calls = _count_segment_calls(part)
    out = part.inspect_batch(list(zip(IMAGES, crops, strict=True)))
    assert calls == [sum(p >= mid for p in probs)]
    for p, r in zip(probs, out, strict=True):
        if p < mid:
            assert not r.has_defect and r.timings_ms["segment"] == 0
    # with gate "none" every image is segmented
    calls = _count_segment_calls(probe)
    probe.inspect_batch(list(zip(IMAGES, crops, strict=True)))
    assert calls == [3]


def test_raw_can_keep_gated_masks_for_tuning(loaded, crops):
    ins = Inspector(loaded, device="cpu", gate_mode="hard")
    ins.postprocess = ins.postprocess.model_copy(update={"gate_threshold": 1.0})
    skipped = ins.raw(crops[:1])[0]
    kept = ins.raw(crops[:1], skip_gated=False)[0]
    assert not skipped.mask_probs.any()
    assert kept.mask_probs.max() > 0


def test_tta_averages_identity_and_flips(loaded, images):
    img = images[1][:, :256]
    tta = Inspector(loaded, device="cpu", tta=True, gate_mode="none")
    plain = Inspector(loaded, device="cpu", gate_mode="none")
    got = tta.raw([img])[0].mask_probs
    batch, _ = to_batch([img], plain.manifest)
    eng = plain.engine
    want = (
        eng.segment(batch)
        + eng.segment(batch[..., ::-1].copy())[..., ::-1]
        + eng.segment(batch[..., ::-1, :].copy())[..., ::-1, :]
    ) / 3
    np.testing.assert_allclose(got, want[0], atol=1e-5)
    assert not np.allclose(got, plain.raw([img])[0].mask_probs, atol=1e-4)
    assert tta.inspect(img).classes[0].mask.shape == img.shape[:2]


def test_size_check_strict_and_lenient(loaded, images):
    odd = images[0][:100, :333]
    lenient = Inspector(loaded, device="cpu")
    res = lenient.inspect(odd)
    assert all(c.mask.shape == (100, 333) for c in res.classes)
    strict = Inspector(loaded, device="cpu", strict_size=True)
    strict.check_size(256, 1600)
    with pytest.raises(WrongImageSize, match="333x100"):
        strict.check_size(100, 333)
    with pytest.raises(ValueError):
        strict.inspect(odd)


def test_classic_single_output_gate_is_broadcast(tmp_path, crops):
    # one output: defect / no defect
    bundle = tiny_bundle(tmp_path / "m", classifier_outputs=1, seed=1)
    ins = Inspector(bundle, device="cpu", gate_mode="none")
    raw = ins.raw([crops[0]])[0]
    assert raw.class_probs.shape == (4,) and len(set(raw.class_probs.tolist())) == 1
    res = ins.finish(raw, "a")
    assert res.defect_probability == pytest.approx(float(raw.class_probs[0]), abs=1e-6)
    # per-class probability comes from the masks, since a single gate says nothing per class
    for k, c in enumerate(res.classes):
        assert c.probability == pytest.approx(float(raw.mask_probs[k].max()), abs=1e-6)


# -- inputs -------------------------------------------------------------------------------------
def test_resolve_inputs_folder_csv_dataset_and_duplicates(tmp_path, severstal_dir):
    folder = severstal_dir / "images"
    one = folder / IMAGES[0]
    r = resolve_inputs([folder, one, folder])  # the same images twice: each kept once
    names = sorted(p.name for p in folder.iterdir())
    assert [i.image_id for i in r.images] == names
    assert all(i.truth is None for i in r.images)

    labelled = resolve_inputs([severstal_dir])
    assert len(labelled.images) == 15
    assert all(i.truth is not None for i in labelled.images)

    rows = ["ImageId,ClassId", "0a1cade03.jpg,1", "0a1cade03.jpg,2", "nope.jpg,1"]
    (tmp_path / "ids.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "0a1cade03.png").write_bytes(one.read_bytes())  # same stem, other suffix
    r = resolve_inputs([tmp_path / "ids.csv"])
    assert [(i.image_id, i.path.name) for i in r.images] == [("0a1cade03.jpg", "0a1cade03.png")]
    assert [m[0] for m in r.missing] == ["nope.jpg"]


def test_a_folder_of_images_beside_their_masks_is_inspected_without_the_masks(tmp_path):
    from conftest import shared_path

    crack = shared_path("data", "magnetic-tile") / "MT_Crack" / "Imgs"
    jpgs = sorted(crack.glob("*.jpg"))[:2]
    for jpg in jpgs:  # a Magnetic-tile Imgs folder: x.jpg beside its mask x.png
        shutil.copy(jpg, tmp_path)
        shutil.copy(jpg.with_suffix(".png"), tmp_path)
    r = resolve_inputs([tmp_path])
    assert [i.image_id for i in r.images] == [j.name for j in jpgs]
    assert len(r.notes) == 1 and "2 mask file(s) beside their images left out" in r.notes[0]
    mask = tmp_path / jpgs[0].with_suffix(".png").name
    assert [i.path for i in resolve_inputs([mask]).images] == [mask]  # named outright: inspected
    # a PNG of its own beside them: the folder is not images with masks, every file is inspected
    shutil.copy(mask, tmp_path / "other.png")
    r = resolve_inputs([tmp_path])
    assert len(r.images) == 5 and not r.notes


def test_resolve_inputs_reencoded_png_ids(severstal_reencoded_dir):
    r = resolve_inputs([severstal_reencoded_dir / "images.csv"])
    assert len(r.images) == 23 and not r.missing
    assert any(i.path.suffix == ".png" and i.image_id.endswith(".jpg") for i in r.images)


def test_resolve_inputs_user_errors(tmp_path):
    from steelscan.data.records import DataError

    with pytest.raises(DataError, match="no such file"):
        resolve_inputs([tmp_path / "missing"])
    (tmp_path / "x.csv").write_text("Id\na.jpg\n")
    with pytest.raises(DataError, match="no ImageId column"):
        resolve_inputs([tmp_path / "x.csv"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no images"):
        resolve_inputs([tmp_path / "empty"])


# -- writers ------------------------------------------------------------------------------------
def test_writer_leaves_nothing_behind_on_a_crash(tmp_path, inspector, images):
    res = inspector.inspect(images[0][:, :128], image_id="a.jpg")
    with pytest.raises(KeyboardInterrupt):
        with PredictionWriter(tmp_path, overlays=False) as w:
            w.write(res)
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    with PredictionWriter(tmp_path) as w:
        w.write(res)
        w.write_error("b.jpg", "b.jpg", "b.jpg: not a readable image")
    rows = (tmp_path / "submission.csv").read_text().splitlines()
    assert rows[0] == "ImageId,EncodedPixels,ClassId" and len(rows) == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "errors.csv",
        "predictions.jsonl",
        "submission.csv",
    ]


# -- with a model the project trained itself ------------------------------------------------------
def test_trained_bundle_inspects_real_and_synthetic_images(trained_bundle, synth_small, images):
    """The bundle `steelscan train` writes (tuned post-processing included) runs unchanged."""
    from steelscan.data import load_dataset

    ins = Inspector(trained_bundle, device="cpu")
    assert ins.postprocess == ins.manifest.postprocess
    recs = load_dataset(synth_small).records[:2]
    synth = [(r.image_id, read_image(r.path)) for r in recs]
    real = [("real.jpg", images[1])]  # 256x1600 while trained at 128x800: padded, not resized
    for (image_id, img), res in zip(synth + real, ins.inspect_batch(synth + real), strict=True):
        assert res.image_id == image_id and (res.height, res.width) == img.shape[:2]
        for c in res.classes:
            assert c.mask.shape == img.shape[:2] and c.area == int(c.mask.sum())
            np.testing.assert_array_equal(rle.decode(c.rle(), c.mask.shape), c.mask)


def test_an_image_answers_the_same_alone_and_beside_a_larger_one(inspector, crops):
    """Images of mixed sizes in one batch each run at their own padded size: padding a small
    image up to a larger companion would change the segmenter near the padding and an
    average-pooled gate everywhere (Magnetic tile, 2026-12-01: torch batch 4 scored Kaggle
    0.9684 where ONNX batch 1 scored 0.9715 on the same 32 images)."""
    small = np.ascontiguousarray(crops[0][:200, :150])
    large = crops[1]
    alone = inspector.raw([small], skip_gated=False)[0]
    mixed = inspector.raw([large, small, large[:, :300]], skip_gated=False)
    np.testing.assert_allclose(mixed[1].class_probs, alone.class_probs, rtol=0, atol=1e-6)
    np.testing.assert_allclose(mixed[1].mask_probs, alone.mask_probs, rtol=0, atol=1e-6)
    assert mixed[1].mask_probs.shape[1:] == (200, 150)
    # the others keep their order and their own sizes
    assert mixed[0].mask_probs.shape[1:] == large.shape[:2]
    assert mixed[2].mask_probs.shape[1:] == (large.shape[0], 300)
    np.testing.assert_allclose(
        mixed[0].mask_probs, inspector.raw([large], skip_gated=False)[0].mask_probs, atol=1e-6
    )
