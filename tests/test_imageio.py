"""Image decoding into the canonical HxWxC uint8 form, and clear errors for bad files."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from steelscan.imageio import (
    ImageReadError,
    decode_image,
    encode_png,
    image_size,
    read_image,
)


def _save(img: Image.Image, path, fmt: str, **kw) -> None:
    img.save(path, format=fmt, **kw)


@pytest.fixture()
def gradient() -> np.ndarray:
    """A 24x40 RGB image with distinct channels, so channel handling is visible."""
    y, x = np.mgrid[0:24, 0:40]
    return np.stack([x * 6, y * 10, np.full_like(x, 77)], axis=-1).astype(np.uint8)


def test_png_rgb_is_lossless(tmp_path, gradient):
    p = tmp_path / "a.png"
    _save(Image.fromarray(gradient), p, "PNG")
    arr = read_image(p)
    assert arr.dtype == np.uint8 and arr.shape == (24, 40, 3)
    np.testing.assert_array_equal(arr, gradient)
    assert image_size(p) == (24, 40)


def test_jpeg_rgb_decodes_close(tmp_path, gradient):
    p = tmp_path / "a.jpg"
    _save(Image.fromarray(gradient), p, "JPEG", quality=95)
    arr = read_image(p)
    assert arr.shape == (24, 40, 3)
    assert np.abs(arr.astype(int) - gradient).mean() < 4


def test_gray_png_to_three_or_one_channels(tmp_path):
    g = np.arange(24 * 40, dtype=np.uint32).reshape(24, 40).astype(np.uint8)
    p = tmp_path / "g.png"
    _save(Image.fromarray(g), p, "PNG")
    rgb = read_image(p)
    assert rgb.shape == (24, 40, 3)
    for c in range(3):
        np.testing.assert_array_equal(rgb[..., c], g)
    one = read_image(p, channels=1)
    assert one.shape == (24, 40, 1)
    np.testing.assert_array_equal(one[..., 0], g)


def test_rgb_to_one_channel_uses_luma(tmp_path):
    p = tmp_path / "red.png"
    _save(Image.new("RGB", (4, 3), (255, 0, 0)), p, "PNG")
    one = read_image(p, channels=1)
    assert one.shape == (3, 4, 1) and int(one[0, 0, 0]) == 76  # 0.299 * 255


def test_rgba_drops_alpha(tmp_path, gradient):
    rgba = np.concatenate([gradient, np.full((24, 40, 1), 10, np.uint8)], axis=-1)
    p = tmp_path / "a.png"
    _save(Image.fromarray(rgba), p, "PNG")
    arr = read_image(p)
    assert arr.shape == (24, 40, 3)
    np.testing.assert_array_equal(arr, gradient)


def test_16bit_png_is_scaled_to_8_bits(tmp_path):
    a = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    p = tmp_path / "deep.png"
    _save(Image.fromarray(a), p, "PNG")
    assert Image.open(p).mode.startswith("I")  # really stored as 16 bits
    arr = read_image(p, channels=1)
    assert arr.dtype == np.uint8
    assert arr[0, :, 0].tolist() == [0, 1, 128, 255]


def test_truncated_jpeg_raises_naming_the_file(tmp_path, gradient):
    buf = io.BytesIO()
    Image.fromarray(np.tile(gradient, (10, 10, 1))).save(buf, format="JPEG")
    p = tmp_path / "cut.jpg"
    p.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    assert image_size(p) == (240, 400)  # the header is intact ...
    with pytest.raises(ImageReadError, match=r"cut\.jpg.*(corrupt|truncated)"):
        read_image(p)  # ... but the pixels are not


def test_non_image_bytes_raise(tmp_path):
    p = tmp_path / "notes.png"
    p.write_bytes(b"this is not an image at all")
    with pytest.raises(ImageReadError, match=r"notes\.png: not a readable image"):
        read_image(p)
    with pytest.raises(ImageReadError, match=r"notes\.png"):
        image_size(p)
    with pytest.raises(ImageReadError, match=r"upload\.bin: not a readable image"):
        decode_image(b"\x00\x01garbage", name="upload.bin")


def test_empty_and_missing_files_raise(tmp_path):
    p = tmp_path / "empty.jpg"
    p.write_bytes(b"")
    with pytest.raises(ImageReadError, match=r"empty\.jpg: the file is empty"):
        read_image(p)
    with pytest.raises(ImageReadError, match=r"nope\.jpg: file not found"):
        read_image(tmp_path / "nope.jpg")
    with pytest.raises(ImageReadError, match=r"nope\.jpg: file not found"):
        image_size(tmp_path / "nope.jpg")


def test_image_read_error_is_a_value_error():
    with pytest.raises(ValueError):
        decode_image(b"", name="x")


def test_bad_channel_count_is_rejected():
    with pytest.raises(ValueError, match="channels must be 1 or 3"):
        decode_image(encode_png(np.zeros((2, 2, 3), np.uint8)), channels=4)


def test_encode_png_round_trips(gradient):
    np.testing.assert_array_equal(decode_image(encode_png(gradient)), gradient)
    g = gradient[..., :1]
    np.testing.assert_array_equal(decode_image(encode_png(g), channels=1), g)


def test_real_severstal_images(severstal_dir):
    paths = sorted((severstal_dir / "images").glob("*.jpg"))
    assert len(paths) == 15
    for p in paths[:5]:
        arr = read_image(p)
        assert arr.shape == (256, 1600, 3) and arr.dtype == np.uint8
        assert image_size(p) == (256, 1600)
        # the files are 3-channel grayscale: channels agree up to JPEG chroma noise
        assert np.abs(arr[..., 0].astype(int) - arr[..., 2]).mean() < 2
        np.testing.assert_array_equal(decode_image(p.read_bytes(), name=p.name), arr)


def test_real_reencoded_png(severstal_reencoded_dir):
    p = severstal_reencoded_dir / "images" / "000789191.png"
    arr = read_image(p, channels=1)
    assert arr.shape == (256, 1600, 1)
    assert 0 < arr.mean() < 255


# -- the pixel limit: a decompression bomb is refused from its header -------------------------
def bomb_png(width: int = 20000, height: int = 20000) -> bytes:
    """A valid greyscale PNG of zeros: a few hundred KB that would decode to width x height."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    comp = zlib.compressobj(9)
    row = b"\x00" * (width + 1)  # filter byte + pixels
    body = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def bomb() -> bytes:
    return bomb_png()


def test_a_decompression_bomb_is_refused_before_decoding(bomb, tmp_path):
    from steelscan.imageio import ImageTooLarge

    assert len(bomb) < 1_000_000
    path = tmp_path / "bomb.png"
    path.write_bytes(bomb)
    with pytest.raises(ImageTooLarge, match=r"bomb.png: 20000x20000 is 400,000,000 pixels"):
        read_image(path)
    with pytest.raises(ImageReadError, match="STEELSCAN_MAX_PIXELS"):
        decode_image(bomb, name="upload")


def test_the_pixel_limit_is_configurable(gradient, monkeypatch):
    from steelscan.imageio import ImageTooLarge, max_pixels, set_max_pixels

    png = encode_png(gradient)  # 24 x 40 = 960 pixels
    monkeypatch.setenv("STEELSCAN_MAX_PIXELS", "959")
    assert max_pixels() == 959
    with pytest.raises(ImageTooLarge, match="40x24"):
        decode_image(png)
    monkeypatch.setenv("STEELSCAN_MAX_PIXELS", "960")
    assert decode_image(png).shape == (24, 40, 3)
    try:
        set_max_pixels(10)
        with pytest.raises(ImageTooLarge):
            decode_image(png)
    finally:
        set_max_pixels(None)
    monkeypatch.delenv("STEELSCAN_MAX_PIXELS")
    assert max_pixels() >= 50 * 256 * 1600  # default: well above a Severstal strip


def test_predict_writes_the_good_images_and_lists_the_bomb(bomb, severstal_dir, tmp_path, capsys):
    """One bomb in a folder costs only its own result: exit 1, the rest written."""
    import csv
    import shutil

    from tiny_models import tiny_bundle

    from steelscan.cli import main

    folder = tmp_path / "images"
    folder.mkdir()
    good = sorted((severstal_dir / "images").glob("*.jpg"))[:2]
    for p in good:
        shutil.copy(p, folder / p.name)
    (folder / "zz-bomb.png").write_bytes(bomb)
    model = tiny_bundle(tmp_path / "model")
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        main(["predict", str(model), str(folder), "--out", str(out), "--engine", "torch"])
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert "zz-bomb.png: 20000x20000" in err and "Traceback" not in err
    rows = list(csv.DictReader((out / "submission.csv").open()))
    assert sorted({r["ImageId"] for r in rows}) == sorted(p.name for p in good)
    errors = list(csv.DictReader((out / "errors.csv").open()))
    assert [e["ImageId"] for e in errors] == ["zz-bomb.png"]
