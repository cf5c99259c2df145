"""One normalise-and-pad for training and inference: the datamodule's tensor for an image is bit
for bit the batch inference builds, and the model's own tensor padding follows the same rule."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_models import severstal_manifest

from steelscan.data import load_dataset
from steelscan.imageio import read_image
from steelscan.imaging import Normaliser, pad_amount, pad_to, padded_size
from steelscan.inference.preprocess import to_batch
from steelscan.models.factory import pad_to_multiple
from steelscan.training.datamodule import PAD_MULTIPLE, SteelDataset

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def _small_dataset(root: Path, h: int, w: int) -> Path:
    """Two textured images of an odd size (so padding to 32 really pads) and a train.csv."""
    rng = np.random.default_rng(3)
    (root / "train_images").mkdir(parents=True)
    for name in ("a.png", "b.png"):
        arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(arr).save(root / "train_images" / name)
    (root / "train.csv").write_text("ImageId,ClassId,EncodedPixels\na.png,1,1 5\n")
    return root


@pytest.mark.parametrize("channels", [3, 1])
def test_datamodule_and_inference_normalise_and_pad_identically(tmp_path, channels):
    ds = load_dataset(_small_dataset(tmp_path, 45, 70))
    train_side = SteelDataset(ds.records, in_channels=channels, mean=MEAN, std=STD)
    manifest = severstal_manifest(in_channels=channels, image_height=45, image_width=70)
    manifest.normalization.mean, manifest.normalization.std = MEAN, STD
    for i, rec in enumerate(ds.records):
        sample = train_side[i]["image"]
        batch, sizes = to_batch([read_image(rec.path, channels=channels)], manifest)
        assert sizes == [(45, 70)] and sample.shape == (channels, 64, 96)
        assert sample.dtype == torch.float32
        assert np.array_equal(sample.numpy(), batch[0])  # bit for bit, padding included


def test_real_severstal_image_training_equals_inference(severstal_dir):
    ds = load_dataset(severstal_dir)
    rec = ds.records[0]
    sample = SteelDataset([rec], in_channels=3, mean=MEAN, std=STD)[0]["image"].numpy()
    batch, _ = to_batch([read_image(rec.path)], severstal_manifest())
    assert sample.shape == batch[0].shape == (3, 256, 1600)
    assert np.array_equal(sample, batch[0])


def test_normaliser_formula_and_padding_rules():
    img = np.array([[[0, 128, 255]]], dtype=np.uint8).repeat(3, 0).repeat(3, 1)
    x = Normaliser.from_stats(MEAN, STD, 3)(img)
    want = (np.array([0, 128, 255]) / 255 - np.array(MEAN)) / np.array(STD)
    assert x.shape == (3, 3, 3) and np.allclose(x[:, 0, 0], want, atol=1e-6)
    gray = Normaliser.from_stats(MEAN, STD, 1)(img[..., :1])  # 1 channel: the RGB mean
    assert gray.shape == (1, 3, 3)
    assert np.isclose(gray[0, 0, 0], -np.mean(MEAN) / np.mean(STD), atol=1e-6)
    with pytest.raises(ValueError, match="uint8"):
        Normaliser.from_stats(MEAN, STD, 3)(img.astype(np.float32))
    assert padded_size(256, 1600) == (256, 1600) and padded_size(45, 70) == (64, 96)
    assert padded_size(200, 200, 16) == (208, 208) and PAD_MULTIPLE == 32
    row = np.arange(6, dtype=np.float32).reshape(1, 2, 3)
    assert pad_to(row, 2, 5, "reflect")[0, 0].tolist() == [0, 1, 2, 1, 0]
    assert pad_to(row, 2, 5, "zero")[0, 0].tolist() == [0, 1, 2, 0, 0]
    assert pad_to(row[:, :1], 3, 3, "reflect")[0, 1:].tolist() == [[0, 0, 0]] * 2  # 1 px high


def test_model_tensor_padding_follows_the_same_rule():
    for h, w in [(45, 70), (256, 1600), (1, 33), (64, 64)]:
        x = torch.ones(1, 3, h, w)
        for multiple in (16, 32):
            assert tuple(pad_to_multiple(x, multiple).shape[-2:]) == padded_size(h, w, multiple)
            assert pad_amount(h, multiple) == padded_size(h, w, multiple)[0] - h
