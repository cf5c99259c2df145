"""Bad inputs through every face they can reach: none may knock anything over.

Each case is one kind of bad input run through the real face a user would feed it to:

* images, one bad file among good ones, through ``steelscan predict`` (in-process, as
  tests/test_predict_cli.py does) and as an upload to a real ``steelscan serve`` process;
* requests the service must refuse (size, type, form), against the same server;
* datasets through ``steelscan data check``, CSVs through ``steelscan score``;
* model bundles through ``steelscan predict`` and :func:`steelscan.bundle.load_bundle`;
* paths and options the CLI must refuse;
* a few of the above again as real subprocesses, where a traceback printed by a thread or a
  library warning could only be seen that way.

Every case asserts the exit code (2: a user error that stopped the run before anything ran; 1: per
image failures, or dataset problems found, with everything else done) or the HTTP status (400,
405, 413, 415 or 422, never 500); that the message names the culprit (file, line, field); that no
"Traceback" appears; that nothing partial is left (no submission.csv when nothing ran, no temp
files, nothing written into a dataset); and, for the service, that ``/health`` answers 200 and a
good image is still inspected after every bad request, and the server never logs a traceback.
"""

from __future__ import annotations

import csv
import functools
import gzip
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from serving import serve_process
from test_imageio import bomb_png
from tiny_models import tiny_bundle

from steelscan.cli import main

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("STEELSCAN_SHARED", REPO.parent / "shared"))
H, W = 256, 1600  # the tiny bundle's size (Severstal's)


# =============================================================================== helpers
def run(argv: list[Any]) -> int:
    """``steelscan ARGV`` in-process; its exit code (an escaping exception fails the test)."""
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    return int(exc.value.code or 0)


def no_traceback(*texts: str) -> None:
    for text in texts:
        assert "Traceback" not in text, text


def encode(arr: np.ndarray, fmt: str = "PNG", **kw: Any) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **kw)
    return buf.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk with its correct CRC."""
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def _idat(png: bytes) -> tuple[int, int]:
    """(offset of the first IDAT chunk's length field, its data length)."""
    i = png.index(b"IDAT") - 4
    return i, struct.unpack(">I", png[i : i + 4])[0]


def bad_crc_png(png: bytes) -> bytes:
    """The same PNG with one bit of its first IDAT chunk's CRC flipped (pixels untouched)."""
    i, n = _idat(png)
    crc_at = i + 8 + n
    return png[:crc_at] + bytes([png[crc_at] ^ 0x01]) + png[crc_at + 1 :]


def broken_stream_png(png: bytes) -> bytes:
    """The first IDAT's compressed bytes scrambled, with a CRC that matches the scrambled bytes."""
    i, n = _idat(png)
    data = bytes(b ^ 0x55 for b in png[i + 8 : i + 8 + n])
    return png[:i] + png_chunk(b"IDAT", data) + png[i + 12 + n :]


def header_only_png(width: int = W, height: int = H) -> bytes:
    """A PNG signature, a valid IHDR and IEND: it declares an image but holds no pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IEND", b"")


def zero_width_png(png: bytes) -> bytes:
    """``png`` with an IHDR (correct CRC) that declares a width of 0."""
    ihdr = struct.pack(">IIBBBBB", 0, H, 8, 2, 0, 0, 0)
    return png[:8] + png_chunk(b"IHDR", ihdr) + png[33:]


def huge_jpeg(jpeg: bytes, width: int = 65000, height: int = 65000) -> bytes:
    """A real JPEG whose frame header (SOF0) is patched to declare ``width x height``."""
    k = jpeg.index(b"\xff\xc0")
    return jpeg[: k + 5] + struct.pack(">HH", height, width) + jpeg[k + 9 :]


@dataclass
class Strips:
    """Good 256x1600 images (real Severstal strips when ../shared has them) in both formats."""

    jpegs: list[tuple[str, bytes]]
    png: bytes  # the first strip as a PNG

    @property
    def jpeg(self) -> bytes:
        return self.jpegs[0][1]


@pytest.fixture(scope="module")
def strips(tmp_path_factory) -> Strips:
    real = sorted((SHARED / "data" / "severstal" / "images").glob("*.jpg"))[:2]
    if len(real) < 2:
        from steelscan.data.synthetic import synthesize

        root = synthesize(tmp_path_factory.mktemp("strips"), n=2, seed=3, progress=False)
        real = sorted((root / "train_images").glob("*.jpg"))[:2]
    jpegs = [(p.name, p.read_bytes()) for p in real]
    with Image.open(real[0]) as im:
        png = encode(np.asarray(im.convert("RGB")))
    return Strips(jpegs, png)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """An untrained but real two-stage bundle (timm gate + ResUNet) at 256x1600: the faces'
    mechanics do not need skill, and it needs no training code."""
    return tiny_bundle(tmp_path_factory.mktemp("bad_inputs") / "model")


@functools.cache
def bomb_bytes() -> bytes:
    return bomb_png()  # a valid 20000x20000 PNG of zeros, ~389 KB


@pytest.fixture(scope="module")
def bomb() -> bytes:
    return bomb_bytes()


# =============================================================================== bad images
@dataclass(frozen=True)
class ImageCase:
    """One kind of bad image: how to make it, what predict says, what the service answers.

    ``cli`` is a fragment of the error predict reports for it, or None when the image is merely
    unusual and must be inspected like any other (16-bit, RGBA, 1x1: predict pads any size).
    ``http`` is (status, error code, fragment of the message); ``200`` for an image the service
    must inspect.
    """

    id: str
    name: str
    make: Callable[[Strips, bytes], bytes]
    cli: str | None
    http: tuple[int, str, str]


IMAGE_CASES = [
    ImageCase(
        "empty file",
        "empty.jpg",
        lambda s, b: b"",
        "the file is empty",
        (422, "empty_image", "empty.jpg: the upload is empty"),
    ),
    ImageCase(
        "text named .jpg",
        "notes.jpg",
        lambda s, b: b"ImageId,ClassId,EncodedPixels\nnot an image at all\n",
        "notes.jpg: not a readable image",
        (422, "undecodable_image", "notes.jpg: declared as a JPEG or PNG"),
    ),
    ImageCase(
        "truncated JPEG",
        "cut.jpg",
        lambda s, b: s.jpeg[: len(s.jpeg) // 3],
        "cut.jpg: corrupt or truncated image",
        (422, "undecodable_image", "cut.jpg: corrupt or truncated"),
    ),
    ImageCase(
        "truncated PNG",
        "cut.png",
        lambda s, b: s.png[: len(s.png) // 2],
        "cut.png: corrupt or truncated image",
        (422, "undecodable_image", "cut.png: corrupt or truncated"),
    ),
    ImageCase(
        "PNG with a bad CRC",
        "crc.png",
        lambda s, b: bad_crc_png(s.png),
        "crc.png: corrupt PNG: the CRC of chunk IDAT",
        (422, "undecodable_image", "crc.png: corrupt PNG: the CRC of chunk IDAT"),
    ),
    ImageCase(
        "PNG with a broken data stream",
        "stream.png",
        lambda s, b: broken_stream_png(s.png),
        "stream.png: corrupt or truncated image",
        (422, "undecodable_image", "stream.png: corrupt or truncated"),
    ),
    ImageCase(
        "PNG header without pixel data",
        "hollow.png",
        lambda s, b: header_only_png(),
        "hollow.png: corrupt or truncated image",
        (422, "undecodable_image", "hollow.png: corrupt or truncated"),
    ),
    ImageCase(
        "PNG declaring zero width",
        "flat.png",
        lambda s, b: zero_width_png(s.png),
        "flat.png: not a readable image",
        (422, "undecodable_image", "flat.png: not a readable image"),
    ),
    ImageCase(
        "decompression bomb (20000x20000 PNG)",
        "bomb.png",
        lambda s, b: b,
        "bomb.png: 20000x20000 is 400,000,000 pixels, over the limit",
        (413, "image_too_large", "bomb.png: 20000x20000 is 400,000,000 pixels"),
    ),
    ImageCase(
        "huge dimensions in a JPEG header (65000x65000)",
        "huge.jpg",
        lambda s, b: huge_jpeg(s.jpeg),
        "huge.jpg: 65000x65000 is 4,225,000,000 pixels, over the limit",
        (413, "image_too_large", "huge.jpg: 65000x65000"),
    ),
    ImageCase(
        "16-bit greyscale PNG",
        "deep.png",
        lambda s, b: encode(np.full((H, W), 40000, np.uint16)),
        None,
        (200, "", ""),
    ),
    ImageCase(
        "RGBA PNG",
        "alpha.png",
        lambda s, b: encode(
            np.dstack([np.full((H, W, 3), 90, np.uint8), np.full((H, W), 7, np.uint8)])
        ),
        None,
        (200, "", ""),
    ),
    ImageCase(
        "1x1 image",
        "dot.png",
        lambda s, b: encode(np.zeros((1, 1, 3), np.uint8)),
        None,  # predict pads any size (strict size is the service's rule)
        (422, "wrong_image_size", "dot.png: size 1x1 (WxH) differs from the model's 1600x256"),
    ),
]


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _assert_no_temp_files(out: Path) -> None:
    left = [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    assert not left, f"temporary files left behind: {left}"


@pytest.mark.parametrize("case", IMAGE_CASES, ids=lambda c: c.id)
def test_a_bad_image_among_good_ones_costs_only_its_own_result(
    case, tmp_path, model_dir, strips, bomb, capsys
):
    folder = tmp_path / "in"
    folder.mkdir()
    for name, data in strips.jpegs:
        (folder / name).write_bytes(data)
    (folder / case.name).write_bytes(case.make(strips, bomb))
    out = tmp_path / "out"
    code = run(["predict", model_dir, folder, "--out", out, "--batch-size", "2"])
    captured = capsys.readouterr()
    no_traceback(captured.out, captured.err)
    good = [name for name, _ in strips.jpegs]
    rows = _read_csv(out / "submission.csv")
    records = {
        d["image_id"]: d
        for d in map(json.loads, (out / "predictions.jsonl").read_text().splitlines())
    }
    errors = _read_csv(out / "errors.csv")
    if case.cli is None:  # unusual but valid: inspected like the others
        assert code == 0, captured.err
        assert sorted({r["ImageId"] for r in rows}) == sorted([*good, case.name])
        assert errors == [] and records[case.name]["error"] is None
    else:
        assert code == 1, captured.err
        assert case.cli in captured.err
        assert sorted({r["ImageId"] for r in rows}) == sorted(good)  # the rest is all there
        assert len(rows) == 4 * len(good)
        assert [e["ImageId"] for e in errors] == [case.name]
        assert case.cli in records[case.name]["error"]
        assert "images inspected: 2" in captured.out and "errors: 1" in captured.out
    assert all(records[name]["error"] is None for name in good)
    _assert_no_temp_files(out)


def test_every_bad_image_in_one_folder_each_listed_once(tmp_path, model_dir, strips, bomb, capsys):
    """All the bad kinds together in one batch: each one its own error, the good ones written."""
    folder = tmp_path / "in"
    folder.mkdir()
    for name, data in strips.jpegs:
        (folder / name).write_bytes(data)
    bad = [c for c in IMAGE_CASES if c.cli is not None]
    for case in bad:
        (folder / case.name).write_bytes(case.make(strips, bomb))
    out = tmp_path / "out"
    assert run(["predict", model_dir, folder, "--out", out, "--batch-size", "3"]) == 1
    captured = capsys.readouterr()
    no_traceback(captured.out, captured.err)
    errors = {e["ImageId"]: e for e in _read_csv(out / "errors.csv")}
    assert sorted(errors) == sorted(c.name for c in bad)
    assert {r["ImageId"] for r in _read_csv(out / "submission.csv")} == {n for n, _ in strips.jpegs}
    for case in bad:
        assert case.cli in captured.err


# =============================================================================== the service
@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    """A real ``steelscan serve`` of the tiny bundle (strict 1600x256, upload limit 2 MB, batch
    limit 4); yields (base URL, server log)."""
    log = tmp_path_factory.mktemp("bad_inputs_server") / "server.log"
    args = [str(model_dir), "--max-upload-mb", "2", "--max-batch", "4", "--max-queue", "2"]
    with serve_process([*args, "--engine", "torch", "--log-level", "warning"], log) as url:
        yield url, log


@pytest.fixture(scope="module")
def client(server):
    url, _ = server
    with httpx.Client(base_url=url, timeout=120) as c:
        yield c


def _still_serving(client: httpx.Client, server, strips: Strips) -> None:
    """After a bad request: /health answers, a good image is inspected, no traceback logged."""
    h = client.get("/health")
    assert h.status_code == 200 and h.json()["status"] == "ok"
    r = client.post("/v1/inspect", files={"file": ("good.jpg", strips.jpeg, "image/jpeg")})
    assert r.status_code == 200, r.text
    assert r.json()["image_id"] == "good.jpg"
    no_traceback(server[1].read_text())


def _assert_error(r: httpx.Response, status: int, code: str, culprit: str) -> None:
    assert r.status_code != 500, r.text
    assert r.status_code == status, r.text
    body = r.json()
    assert body == {"error": code, "message": body["message"], "status": status}, body
    assert culprit in body["message"], body
    no_traceback(r.text)


@pytest.mark.parametrize("case", IMAGE_CASES, ids=lambda c: c.id)
def test_a_bad_image_upload_gets_its_status_and_the_service_stays_healthy(
    case, client, server, strips, bomb
):
    status, code, culprit = case.http
    mime = "image/png" if case.name.endswith(".png") else "image/jpeg"
    r = client.post("/v1/inspect", files={"file": (case.name, case.make(strips, bomb), mime)})
    if status == 200:
        assert r.status_code == 200, r.text
        d = r.json()
        assert (d["image_id"], d["height"], d["width"]) == (case.name, H, W)
    else:
        _assert_error(r, status, code, culprit)
    _still_serving(client, server, strips)


def _chunks(data: bytes, size: int = 256 * 1024):
    for i in range(0, len(data), size):
        yield data[i : i + size]


def _noise(n: int) -> bytes:
    return np.random.default_rng(0).integers(0, 256, n, dtype=np.uint8).tobytes()


def _gif() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (W, H)).save(buf, format="GIF")
    return buf.getvalue()


@dataclass(frozen=True)
class RequestCase:
    """One bad request: (method, path, httpx keyword arguments) from the good images and the bomb,
    and the status, error code and message fragment it must get."""

    id: str
    request: Callable[[Strips, bytes], tuple[str, str, dict[str, Any]]]
    status: int
    code: str
    culprit: str


def _post(path: str = "/v1/inspect", **kw: Any) -> tuple[str, str, dict[str, Any]]:
    return "POST", path, kw


def _batch(*files: tuple[str, bytes]) -> tuple[str, str, dict[str, Any]]:
    parts = [("files", (name, data, "image/jpeg")) for name, data in files]
    return _post("/v1/inspect/batch", files=parts)


MP = "multipart/form-data"
REQUEST_CASES = [
    RequestCase(
        "upload over the limit (Content-Length)",
        lambda s, b: _post(
            content=s.jpeg + _noise(3 << 20), headers={"Content-Type": "image/jpeg"}
        ),
        413,
        "payload_too_large",
        "larger than the server's limit of 2 MB",
    ),
    RequestCase(
        "upload over the limit, chunked (no Content-Length)",
        lambda s, b: _post(
            content=_chunks(s.jpeg + _noise(3 << 20)), headers={"Content-Type": "image/jpeg"}
        ),
        413,
        "payload_too_large",
        "limit of 2 MB",
    ),
    RequestCase(
        "multipart upload over the limit",
        lambda s, b: _post(files={"file": ("big.jpg", s.jpeg + _noise(3 << 20), "image/jpeg")}),
        413,
        "payload_too_large",
        "limit of 2 MB",
    ),
    RequestCase(
        "wrong content type: a text file",
        lambda s, b: _post(files={"file": ("notes.txt", b"hello\n", "text/plain")}),
        415,
        "unsupported_media_type",
        "notes.txt: not an image (text/plain)",
    ),
    RequestCase(
        "wrong content type: a PDF as the body",
        lambda s, b: _post(content=b"%PDF-1.4\n%...", headers={"Content-Type": "application/pdf"}),
        415,
        "unsupported_media_type",
        "not an image (application/pdf)",
    ),
    RequestCase(
        "wrong content type: JSON",
        lambda s, b: _post(json={"image": "strip.jpg"}),
        415,
        "unsupported_media_type",
        "not an image (application/json)",
    ),
    RequestCase(
        "a GIF declared as PNG",
        lambda s, b: _post(files={"file": ("fake.png", _gif(), "image/png")}),
        415,
        "unsupported_media_type",
        "fake.png: image/gif is not accepted",
    ),
    RequestCase(
        "a bomb as the raw body",
        lambda s, b: _post(
            content=b, headers={"Content-Type": "image/png"}, params={"image_id": "b.png"}
        ),
        413,
        "image_too_large",
        "b.png: 20000x20000",
    ),
    RequestCase(
        "missing multipart field (a form with no file)",
        lambda s, b: _post(
            content=b"--XyZ\r\nContent-Disposition: form-data; name=note\r\n\r\nhi\r\n--XyZ--\r\n",
            headers={"Content-Type": f"{MP}; boundary=XyZ"},
        ),
        422,
        "no_image",
        "holds no file",
    ),
    RequestCase(
        "a file part without a file name",
        lambda s, b: _post(
            content=b"--XyZ\r\nContent-Disposition: form-data; name=file\r\n"
            b"Content-Type: image/jpeg\r\n\r\n" + s.jpeg + b"\r\n--XyZ--\r\n",
            headers={"Content-Type": f"{MP}; boundary=XyZ"},
        ),
        422,
        "no_image",
        "holds no file",
    ),
    RequestCase(
        "malformed multipart body",
        lambda s, b: _post(
            content=b"--XyZ\r\nno headers here", headers={"Content-Type": f"{MP}; boundary=XyZ"}
        ),
        400,
        "bad_request",
        "multipart",
    ),
    RequestCase(
        "multipart without a boundary",
        lambda s, b: _post(content=b"abc", headers={"Content-Type": MP}),
        400,
        "bad_request",
        "boundary",
    ),
    RequestCase(
        "an empty body",
        lambda s, b: _post(content=b""),
        422,
        "no_image",
        "the request body is empty",
    ),
    RequestCase(
        "a bad query value",
        lambda s, b: _post(
            files={"file": ("a.jpg", s.jpeg, "image/jpeg")}, params={"overlay": "maybe"}
        ),
        422,
        "invalid_request",
        "overlay",
    ),
    RequestCase(
        "GET on the upload route",
        lambda s, b: ("GET", "/v1/inspect", {}),
        405,
        "method_not_allowed",
        "Method Not Allowed",
    ),
    RequestCase(
        "a batch that is not multipart",
        lambda s, b: _post(
            "/v1/inspect/batch", content=s.jpeg, headers={"Content-Type": "image/jpeg"}
        ),
        415,
        "unsupported_media_type",
        "multipart/form-data",
    ),
    RequestCase(
        "a batch with one truncated image among good ones",
        lambda s, b: _batch(("ok.jpg", s.jpeg), ("broken.jpg", s.jpeg[:500]), ("ok2.jpg", s.jpeg)),
        422,
        "undecodable_image",
        "broken.jpg",
    ),
    RequestCase(
        "a batch with a bomb among good ones",
        lambda s, b: _batch(("ok.jpg", s.jpeg), ("bomb.png", b)),
        413,
        "image_too_large",
        "bomb.png: 20000x20000",
    ),
    RequestCase(
        "a batch over the batch limit",
        lambda s, b: _batch(*[(f"{i}.jpg", s.jpeg[:1000]) for i in range(5)]),
        422,
        "too_many_images",
        "more than 4 image(s)",
    ),
]


@pytest.mark.parametrize("case", REQUEST_CASES, ids=lambda c: c.id)
def test_a_bad_request_gets_its_json_error_and_the_service_stays_healthy(
    case, client, server, strips, bomb
):
    method, path, kwargs = case.request(strips, bomb)
    r = client.request(method, path, **kwargs)
    _assert_error(r, case.status, case.code, case.culprit)
    _still_serving(client, server, strips)


# =============================================================================== datasets
NEW_HEADER = "ImageId,ClassId,EncodedPixels"
DS_SIZE = (32, 200)  # every image of the small datasets: 6400 pixels
GOOD_ROWS = ["a.png,1,1 10", "b.png,3,100 20"]  # lines 2 and 3 of train.csv


def _dataset(root: Path) -> Path:
    """A clean Severstal-layout dataset: a.png, b.png, c.png (32x200) and two mask rows."""
    rng = np.random.default_rng(0)
    (root / "train_images").mkdir(parents=True)
    for name in ("a.png", "b.png", "c.png"):
        arr = rng.integers(0, 255, DS_SIZE, dtype=np.uint8)
        Image.fromarray(arr).save(root / "train_images" / name)
    (root / "train.csv").write_text("\n".join([NEW_HEADER, *GOOD_ROWS]) + "\n")
    return root


def _add_row(line: str) -> Callable[[Path], None]:
    """Append one line (line 4) to train.csv."""

    def mutate(root: Path) -> None:
        with open(root / "train.csv", "a") as fh:
            fh.write(line + "\n")

    return mutate


def _train_csv(data: bytes) -> Callable[[Path], None]:
    def mutate(root: Path) -> None:
        (root / "train.csv").write_bytes(data)

    return mutate


def _image_file(name: str, data: Callable[[Path], bytes]) -> Callable[[Path], None]:
    def mutate(root: Path) -> None:
        path = root / "train_images" / name
        path.write_bytes(data(path))

    return mutate


def _voc_with_a_broken_annotation(root: Path) -> None:
    """The clean dataset turned into a VOC layout whose one annotation is cut off mid-XML."""
    (root / "train.csv").unlink()
    (root / "train_images").rename(root / "images")
    (root / "annotations").mkdir()
    (root / "annotations" / "a.xml").write_bytes(b"<annotation><filename>a.png</filename><obj")


def _write(rel: str, text: str) -> Callable[[Path], None]:
    def mutate(root: Path) -> None:
        (root / rel).write_text(text)

    return mutate


@dataclass(frozen=True)
class DataCase:
    """One kind of bad dataset: a change to the clean one, and a fragment of each problem line
    ``steelscan data check`` must print (each fragment names the file, and the line and field
    where there is one). ``code`` is 1 (problems found) or 2 (not a dataset: nothing checked)."""

    id: str
    mutate: Callable[[Path], None]
    expected: tuple[str, ...]
    code: int = 1
    marks: tuple = ()


def _rle(line: str, message: str) -> DataCase:
    return DataCase(
        f"RLE {message.split(':')[0]}",
        _add_row(line),
        (f"train.csv, row 4, field EncodedPixels: a.png class 2: {message}",),
    )


DATA_CASES = [
    _rle("a.png,2,1 3 5", "RLE has an odd number of values (3)"),
    _rle("a.png,2,1 x", "RLE holds a non-integer value 'x'"),
    _rle("a.png,2,1.5 3", "RLE holds a non-integer value '1.5'"),
    _rle("a.png,2,-4 3", "RLE holds a non-integer value '-4'"),
    _rle("a.png,2,\u0661 3", "RLE holds a non-integer value '\u0661'"),  # an Arabic-Indic 1
    _rle("a.png,2,1 3 99999999999999999999 1", "RLE holds a value too large for a pixel number"),
    _rle("a.png,2,0 3", "RLE run 1 starts at 0; pixel numbers start at 1"),
    _rle("a.png,2,5 0", "RLE run 1 has length 0; lengths must be at least 1"),
    _rle("a.png,2,10 5 12 3", "RLE run 2 (start 12) overlaps or goes back"),
    _rle("a.png,2,100 5 10 3", "RLE run 2 (start 10) overlaps or goes back"),
    _rle("a.png,2,6400 2", "RLE run 1 ends at pixel 6401, past the 32x200 image"),
    _rle("a.png,2,9223372036854775807 1", "RLE run 1 starts at pixel 9223372036854775807, past"),
    DataCase(
        "unknown class id",
        _add_row("a.png,5,1 3"),
        ("train.csv, row 4, field ClassId: a.png: unknown class id '5'",),
    ),
    DataCase(
        "class id that is not a number",
        _add_row("a.png,two,1 3"),
        ("train.csv, row 4, field ClassId: a.png: unknown class id 'two'",),
    ),
    DataCase(
        "duplicate rows",
        _add_row("a.png,1,20 5"),
        ("train.csv, row 4: duplicate row for a.png class 1 (first given on line 2)",),
    ),
    DataCase(
        "missing column",
        _train_csv(b"ImageId,ClassId\na.png,1\n"),
        ("train.csv, row 1: unrecognised header 'imageid,classid'",),
    ),
    DataCase(
        "a row with a missing field",
        _add_row("a.png,2"),
        ("train.csv, row 4: expected 3 fields, found 2",),
    ),
    DataCase(
        "a row with an extra field",
        _add_row("a.png,2,1 3,oops"),
        ("train.csv, row 4: expected 3 fields, found 4",),
    ),
    DataCase(
        "empty ImageId",
        _add_row(",2,1 3"),
        ("train.csv, row 4, field ImageId: empty ImageId",),
    ),
    DataCase(
        "a listed image that does not exist",
        _add_row("ghost.png,1,1 3"),
        ("train.csv, row 4: image 'ghost.png' not found",),
    ),
    DataCase(
        "binary train.csv (gzip)",
        _train_csv(gzip.compress(("\n".join([NEW_HEADER, *GOOD_ROWS]) + "\n").encode())),
        ("train.csv: not a text CSV file",),
    ),
    DataCase(
        "binary train.csv (NUL bytes)",
        _train_csv(b"\x00" * 4096),
        ("train.csv: not a text",),
    ),
    DataCase(
        "non-UTF-8 train.csv (Latin-1)",
        _train_csv(("\n".join([NEW_HEADER, "caf\u00e9.png,1,1 3"]) + "\n").encode("latin-1")),
        ("train.csv: not a UTF-8 text file",),
    ),
    DataCase(
        "empty train.csv",
        _train_csv(b""),
        ("train.csv: the file is empty",),
    ),
    DataCase(
        "truncated image in the dataset",
        _image_file("c.png", lambda p: p.read_bytes()[:200]),
        ("train_images/c.png: corrupt or truncated image",),
    ),
    DataCase(
        "PNG with a bad CRC in the dataset",
        _image_file("c.png", lambda p: bad_crc_png(p.read_bytes())),
        ("train_images/c.png: corrupt PNG: the CRC of chunk IDAT",),
    ),
    DataCase(
        "decompression bomb in the dataset",
        _image_file("c.png", lambda p: bomb_bytes()),
        (
            "train_images/c.png: image is 20000x20000 (width x height) but 2 of 3 images",
            "train_images/c.png: 20000x20000 is 400,000,000 pixels, over the limit",
        ),
    ),
    DataCase(
        "text file named .png in the dataset",
        _image_file("c.png", lambda p: b"just text\n"),
        ("train_images/c.png: not a readable image",),
    ),
    DataCase(
        "label that is not 0/1",
        _write("images.csv", "ImageId,has_defect\na.png,1\nb.png,maybe\n"),
        ("images.csv, row 3, field has_defect: b.png: label 'maybe' is not 0/1",),
    ),
    DataCase(
        "label contradicting the masks",
        _write("images.csv", "ImageId,has_defect\na.png,0\n"),
        ("images.csv, row 2: a.png: has_defect=0 but train.csv has masks for it",),
    ),
    DataCase(
        "no image folder",
        lambda root: shutil.rmtree(root / "train_images"),
        ("no image folder: expected train_images/ or images/ here",),
    ),
    DataCase(
        "VOC annotation that is not XML",
        _voc_with_a_broken_annotation,
        ("annotations/a.xml",),
    ),
    DataCase(
        "a folder that is not a dataset",
        lambda root: (root / "train.csv").unlink(),
        ("not a recognised dataset folder",),
        code=2,
    ),
]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=c.marks) for c in DATA_CASES])
def test_data_check_names_every_problem(case, tmp_path, capsys):
    root = _dataset(tmp_path / "ds")
    case.mutate(root)
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    code = run(["data", "check", root])
    captured = capsys.readouterr()
    no_traceback(captured.out, captured.err)
    assert code == case.code, captured.err
    problems = [ln for ln in captured.err.splitlines() if ln.startswith(("error: ", str(root)))]
    for fragment in case.expected:
        assert any(fragment in ln for ln in problems), (fragment, captured.err)
    if case.code == 1:
        assert len(problems) == len(case.expected), captured.err
        assert f"{len(case.expected)} problem(s) found in {root}" in captured.err
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before  # nothing written


@pytest.mark.parametrize(
    "what, make, message",
    [
        ("missing path", lambda root: root / "nowhere", "nowhere: no such file or folder"),
        ("a file", lambda root: root / "train.csv", "train.csv: is a file"),
    ],
)
def test_data_check_of_no_dataset_at_all_is_a_user_error(what, make, message, tmp_path, capsys):
    root = _dataset(tmp_path / "ds")
    assert run(["data", "check", make(root)]) == 2
    err = capsys.readouterr().err
    assert message in err
    no_traceback(err)


# =============================================================================== score
TRUTH_ROWS = ["a.jpg,1,1 10", "b.jpg,3,100 20"]


def _huge_rle() -> str:
    """A valid RLE of 30,000 one-pixel runs (a noisy predicted mask): ~330,000 characters."""
    starts = np.arange(30_000) * 3 + 1
    return " ".join(f"{s} 1" for s in starts)


@dataclass(frozen=True)
class ScoreCase:
    """One kind of bad prediction CSV (or truth, or image list) for ``steelscan score``.

    ``pred`` makes the file's bytes; ``args`` are extra options; ``expected`` fragments of the
    error (``{pred}``, ``{truth}``, ``{images}`` stand for the paths). ``code`` 0 marks a valid
    but unusual file that must be scored."""

    id: str
    pred: Callable[[], bytes] | None
    expected: tuple[str, ...]
    truth: Callable[[], bytes] | None = None
    images: Callable[[], bytes] | None = None
    args: tuple[str, ...] = ()
    code: int = 2
    marks: tuple = ()


def _csv(*rows: str, header: str = NEW_HEADER) -> Callable[[], bytes]:
    return lambda: ("\n".join([header, *rows]) + "\n").encode()


SCORE_CASES = [
    ScoreCase(
        "malformed RLE (odd count)",
        _csv("a.jpg,1,1 10 5"),
        ("{pred}, row 2, field EncodedPixels: a.jpg class 1: RLE has an odd number",),
    ),
    ScoreCase(
        "RLE past the end of the image",
        _csv("a.jpg,1,409600 2"),
        ("{pred}, row 2, field EncodedPixels: a.jpg class 1: RLE run 1 ends at pixel 409601",),
    ),
    ScoreCase(
        "RLE past the end of a smaller image (--height/--width)",
        _csv("a.jpg,1,6400 2"),
        ("{pred}, row 2, field EncodedPixels", "past the 32x200 image"),
        args=("--height", "32", "--width", "200"),
    ),
    ScoreCase(
        "unknown class",
        _csv("a.jpg,7,1 10"),
        ("{pred}, row 2, field ClassId: a.jpg: unknown class id '7'",),
    ),
    ScoreCase(
        "duplicate rows",
        _csv("a.jpg,1,1 10", "b.jpg,3,5 5", "a.jpg,1,50 5"),
        ("{pred}, row 4: duplicate row for a.jpg class 1 (first given on line 2)",),
    ),
    ScoreCase(
        "missing column",
        _csv("a.jpg,1 10", header="ImageId,EncodedPixels"),
        ("{pred}, row 1: unrecognised header 'imageid,encodedpixels'",),
    ),
    ScoreCase(
        "binary CSV (gzip)",
        lambda: gzip.compress(_csv(*TRUTH_ROWS)()),
        ("{pred}: not a text CSV file",),
    ),
    ScoreCase(
        "binary CSV (NUL bytes)",
        lambda: b"\x00" * 4096,
        ("{pred}: not a text",),
    ),
    ScoreCase(
        "non-UTF-8 CSV (Latin-1)",
        lambda: ("\n".join([NEW_HEADER, "caf\u00e9.jpg,1,1 3"]) + "\n").encode("latin-1"),
        ("{pred}: not a UTF-8 text file",),
    ),
    ScoreCase("empty file", lambda: b"", ("{pred}: the file is empty",)),
    ScoreCase("missing file", None, ("{pred}: file not found",)),
    ScoreCase(
        "a prediction for an image that is not scored",
        _csv("a.jpg,1,1 10", "zz.jpg,1,1 10"),
        ("{pred}: 1 predicted image(s) are not among the scored images", "zz.jpg"),
    ),
    ScoreCase(
        "bad truth and bad prediction: both reported at once",
        _csv("a.jpg,1,1 x"),
        ("{truth}, row 3, field ClassId", "{pred}, row 2, field EncodedPixels"),
        truth=_csv("a.jpg,1,1 10", "b.jpg,0,1 10"),
    ),
    ScoreCase(
        "binary image list (--images)",
        _csv(*TRUTH_ROWS),
        ("{images}: not a text CSV file",),
        images=lambda: gzip.compress(b"a.jpg\nb.jpg\n"),
    ),
    ScoreCase(
        "image list with no ids (--images)",
        _csv(*TRUTH_ROWS),
        ("{images}: lists no image ids",),
        images=lambda: b"ImageId\n",
    ),
    ScoreCase(
        "a valid RLE longer than the csv module's 128 KiB field limit",
        _csv(f"a.jpg,1,{_huge_rle()}"),
        (),
        truth=_csv(f"a.jpg,1,{_huge_rle()}", TRUTH_ROWS[1]),
        code=0,
    ),
]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=c.marks) for c in SCORE_CASES])
def test_score_refuses_a_bad_csv_naming_file_line_and_field(case, tmp_path, capsys):
    truth, pred, images = tmp_path / "truth.csv", tmp_path / "pred.csv", tmp_path / "ids.txt"
    truth.write_bytes((case.truth or _csv(*TRUTH_ROWS))())
    if case.pred is not None:
        pred.write_bytes(case.pred())
    args = ["score", truth, pred, "--json"]
    if case.images is not None:
        images.write_bytes(case.images())
        args += ["--images", images]
    args += case.args
    before = sorted(tmp_path.iterdir())
    code = run(args)
    captured = capsys.readouterr()
    no_traceback(captured.out, captured.err)
    assert code == case.code, captured.err
    if case.code == 0:
        assert json.loads(captured.out)["num_images"] == 2
        return
    assert captured.out == ""  # no partial report
    for fragment in case.expected:
        assert fragment.format(pred=pred, truth=truth, images=images) in captured.err
    assert sorted(tmp_path.iterdir()) == before  # nothing written


def test_score_refuses_a_folder_for_a_csv(tmp_path, capsys):
    truth = tmp_path / "truth.csv"
    truth.write_bytes(_csv(*TRUTH_ROWS)())
    (tmp_path / "pred.csv").mkdir()
    assert run(["score", truth, tmp_path / "pred.csv"]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'pred.csv'}: is a folder; expected a CSV file" in err
    no_traceback(err)


# =============================================================================== bundles
def _manifest(bundle: Path) -> dict[str, Any]:
    return json.loads((bundle / "manifest.json").read_text())


def _edit_manifest(fn: Callable[[dict[str, Any]], Any]) -> Callable[[Path], None]:
    """Change manifest.json (its files' hashes untouched: the manifest itself is not hashed)."""

    def mutate(bundle: Path) -> None:
        data = _manifest(bundle)
        fn(data)
        (bundle / "manifest.json").write_text(json.dumps(data))

    return mutate


def _rehash(bundle: Path) -> None:
    """Record the current files' sha256 in the manifest, as an attacker (or an old tool) could."""
    from steelscan.bundle import write_manifest
    from steelscan.manifest import ModelManifest

    write_manifest(bundle, ModelManifest.model_validate(_manifest(bundle)))


def _weights(
    name: str, make: Callable[[bytes, Path], bytes], *, rehash: bool = False
) -> Callable[[Path], None]:
    def mutate(bundle: Path) -> None:
        path = bundle / name
        path.write_bytes(make(path.read_bytes(), bundle))
        if rehash:
            _rehash(bundle)

    return mutate


def _flip(data: bytes) -> bytes:
    b = bytearray(data)
    b[-100] ^= 0x01
    return bytes(b)


def _os_system_pickle(bundle: Path) -> bytes:
    """A protocol-0 pickle that, if ever unpickled, would run ``touch <bundle>/PWNED``."""
    return f"cos\nsystem\n(S'touch {bundle / 'PWNED'}'\ntR.".encode()


def _torch_pickle(data: bytes, bundle: Path) -> bytes:
    """A ``torch.save`` file (a zip holding a pickle) whose pickle would run code when loaded."""
    import torch

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {bundle / 'PWNED'}",))

    buf = io.BytesIO()
    torch.save({"state_dict": Payload()}, buf)
    return buf.getvalue()


def _header_claims_huge(data: bytes, bundle: Path) -> bytes:
    """A safetensors file whose 8-byte header length claims ~2**62 bytes."""
    return struct.pack("<Q", 1 << 62) + data[8:]


def _other_stage_weights(data: bytes, bundle: Path) -> bytes:
    return (bundle / "classifier.safetensors").read_bytes()


@dataclass(frozen=True)
class BundleCase:
    id: str
    mutate: Callable[[Path], None]
    expected: tuple[str, ...]  # fragments of the message; {b} stands for the bundle path


BUNDLE_CASES = [
    BundleCase(
        "missing manifest",
        lambda b: (b / "manifest.json").unlink(),
        ("{b}/manifest.json is missing", "not a steelscan model bundle"),
    ),
    BundleCase(
        "empty folder",
        lambda b: [p.unlink() for p in b.iterdir()],
        ("{b}/manifest.json is missing",),
    ),
    BundleCase(
        "manifest that is not JSON",
        lambda b: (b / "manifest.json").write_text("{ not json"),
        ("{b}/manifest.json is not valid JSON (line 1",),
    ),
    BundleCase(
        "empty manifest",
        lambda b: (b / "manifest.json").write_text(""),
        ("{b}/manifest.json is not valid JSON",),
    ),
    BundleCase(
        "manifest that is not UTF-8",
        lambda b: (b / "manifest.json").write_bytes(b'{"name": "caf\xe9"}'),
        ("{b}/manifest.json is not UTF-8 text",),
    ),
    BundleCase(
        "manifest missing a field",
        _edit_manifest(lambda d: d.pop("classes")),
        ("{b}/manifest.json is invalid: field 'classes'",),
    ),
    BundleCase(
        "manifest field of the wrong type",
        _edit_manifest(lambda d: d.update(image_height="tall")),
        ("{b}/manifest.json is invalid: field 'image_height'",),
    ),
    BundleCase(
        "thresholds that disagree with the classes",
        _edit_manifest(lambda d: d["postprocess"].update(class_thresholds=[0.5] * 3)),
        ("{b}/manifest.json is inconsistent: field 'postprocess.class_thresholds' has 3 entries",),
    ),
    BundleCase(
        "class ids that disagree with the classes",
        _edit_manifest(lambda d: d.update(class_ids=[1, 2, 3])),
        ("{b}/manifest.json is inconsistent: field 'class_ids' has 3 entries for 4 classes",),
    ),
    BundleCase(
        "image size of zero",
        _edit_manifest(lambda d: d.update(image_width=0)),
        ("{b}/manifest.json is inconsistent: field 'image_width' is 0",),
    ),
    BundleCase(
        "manifest from a newer steelscan",
        _edit_manifest(lambda d: d.update(format_version=99)),
        ("{b}/manifest.json: format_version 99 was written by a newer steelscan",),
    ),
    BundleCase(
        "manifest describing no network",
        _edit_manifest(lambda d: d.update(classifier=None, segmenter=None)),
        ("{b}/manifest.json describes no classifier, no segmenter and no detector",),
    ),
    BundleCase(
        "unknown classifier architecture",
        _edit_manifest(lambda d: d["classifier"].update(arch="resnet9000")),
        ("{b}/manifest.json: cannot build the classifier", "unknown classifier arch 'resnet9000'"),
    ),
    BundleCase(
        "unknown segmenter architecture",
        _edit_manifest(lambda d: d["segmenter"].update(arch="unet3000")),
        ("{b}/manifest.json: manifest.segmenter.arch 'unet3000' is not a segmenter",),
    ),
    BundleCase(
        "unknown segmenter encoder",
        _edit_manifest(lambda d: d["segmenter"].update(arch="unet", encoder="resnet9000")),
        ("{b}/manifest.json: cannot build the segmenter", "resnet9000"),
    ),
    BundleCase(
        "weights path outside the bundle",
        _edit_manifest(lambda d: d["segmenter"].update(weights_file="../other.safetensors")),
        ("{b}/manifest.json: segmenter.weights_file must be a file name inside the bundle",),
    ),
    BundleCase(
        "missing weights",
        lambda b: (b / "segmenter.safetensors").unlink(),
        ("{b}/segmenter.safetensors is missing",),
    ),
    BundleCase(
        "truncated weights",
        _weights("classifier.safetensors", lambda d, b: d[: len(d) // 2]),
        ("{b}/classifier.safetensors: its sha256 differs",),
    ),
    BundleCase(
        "tampered weights of the same size",
        _weights("segmenter.safetensors", lambda d, b: _flip(d)),
        ("{b}/segmenter.safetensors: its sha256 differs",),
    ),
    BundleCase(
        "truncated weights under a re-recorded hash",
        _weights("classifier.safetensors", lambda d, b: d[: len(d) // 2], rehash=True),
        ("{b}/classifier.safetensors is corrupted or not a safetensors file",),
    ),
    BundleCase(
        "empty weights file under a re-recorded hash",
        _weights("segmenter.safetensors", lambda d, b: b"", rehash=True),
        ("{b}/segmenter.safetensors is corrupted or not a safetensors file",),
    ),
    BundleCase(
        "weights header claiming a huge size",
        _weights("segmenter.safetensors", _header_claims_huge, rehash=True),
        ("{b}/segmenter.safetensors is corrupted or not a safetensors file",),
    ),
    BundleCase(
        "a pickle where weights belong",
        _weights("classifier.safetensors", lambda d, b: _os_system_pickle(b)),
        ("{b}/classifier.safetensors: its sha256 differs",),
    ),
    BundleCase(
        "a pickle where weights belong, under a re-recorded hash",
        _weights("classifier.safetensors", lambda d, b: _os_system_pickle(b), rehash=True),
        ("{b}/classifier.safetensors is corrupted or not a safetensors file",),
    ),
    BundleCase(
        "a torch.save file where weights belong, under a re-recorded hash",
        _weights("segmenter.safetensors", _torch_pickle, rehash=True),
        ("{b}/segmenter.safetensors is corrupted or not a safetensors file",),
    ),
    BundleCase(
        "another network's weights under a re-recorded hash",
        _weights("segmenter.safetensors", _other_stage_weights, rehash=True),
        ("{b}/segmenter.safetensors does not match the segmenter described in the manifest",),
    ),
    BundleCase(
        "a recorded file that is missing",
        lambda b: (
            (b / "segmenter.onnx").write_bytes(b"onnx"),
            _edit_manifest(lambda d: d["segmenter"].update(onnx_file="segmenter.onnx"))(b),
            _rehash(b),
            (b / "segmenter.onnx").unlink(),
        ),
        ("{b}/segmenter.onnx is missing (listed in manifest.json files)",),
    ),
    BundleCase(
        "a tampered ONNX export",
        lambda b: (
            (b / "segmenter.onnx").write_bytes(b"onnx model bytes"),
            _edit_manifest(lambda d: d["segmenter"].update(onnx_file="segmenter.onnx"))(b),
            _rehash(b),
            (b / "segmenter.onnx").write_bytes(b"onnx model bytez"),
        ),
        ("{b}/segmenter.onnx: its sha256 differs",),
    ),
]


@pytest.mark.parametrize("case", BUNDLE_CASES, ids=lambda c: c.id)
def test_a_broken_bundle_is_refused_naming_the_file(case, tmp_path, model_dir, strips, capsys):
    from steelscan.bundle import BundleError, load_bundle

    bundle = tmp_path / "model"
    shutil.copytree(model_dir, bundle)
    case.mutate(bundle)
    expected = [f.format(b=bundle) for f in case.expected]
    with pytest.raises(BundleError) as err:  # the library face
        load_bundle(bundle, weights=True)
    for fragment in expected:
        assert fragment in str(err.value)

    img = tmp_path / "strip.jpg"
    img.write_bytes(strips.jpeg)
    out = tmp_path / "out"
    code = run(["predict", bundle, img, "--out", out])  # the CLI face
    captured = capsys.readouterr()
    no_traceback(captured.out, captured.err)
    assert code == 2, captured.err
    for fragment in expected:
        assert fragment in captured.err
    assert not out.exists() or not any(out.iterdir()), "predict left output behind"
    assert not (bundle / "PWNED").exists(), "a pickle in the bundle was executed"


def test_a_bundle_path_that_is_a_file(tmp_path, strips, capsys):
    from steelscan.bundle import BundleError, load_bundle

    bundle = tmp_path / "model.zip"
    bundle.write_bytes(b"PK\x03\x04 not a bundle")
    with pytest.raises(BundleError, match=r"model.zip is not a directory"):
        load_bundle(bundle)
    img = tmp_path / "strip.jpg"
    img.write_bytes(strips.jpeg)
    assert run(["predict", bundle, img, "--out", tmp_path / "out"]) == 2
    err = capsys.readouterr().err
    assert f"{bundle}: model directory not found" in err
    no_traceback(err)
    assert not (tmp_path / "out").exists()


# =============================================================================== CLI paths/options
@dataclass(frozen=True)
class CliCase:
    """A bad path or option: argv from (tmp dir, model, one good image), and the message."""

    id: str
    argv: Callable[[Path, Path, Path], list[Any]]
    expected: str | tuple[str, ...]
    code: int = 2


def _predict(tmp: Path, model: Path, *inputs: Any, out: Any = None, extra=()) -> list[Any]:
    return ["predict", model, *inputs, "--out", out or tmp / "out", *extra]


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _file(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


CLI_CASES = [
    CliCase(
        "an input that does not exist",
        lambda t, m, i: _predict(t, m, t / "nope.jpg"),
        "nope.jpg: no such file or folder",
    ),
    CliCase(
        "a folder with no images",
        lambda t, m, i: _predict(t, m, _mkdir(t / "empty")),
        "empty: folder holds no images",
    ),
    CliCase(
        "an input that is no image, folder or CSV",
        lambda t, m, i: _predict(t, m, _file(t / "notes.txt", b"hello")),
        "notes.txt: not an image, a folder or a CSV of image ids",
    ),
    CliCase(
        "a binary CSV of image ids",
        lambda t, m, i: _predict(t, m, _file(t / "ids.csv", gzip.compress(b"ImageId\na.jpg\n"))),
        "ids.csv: not a text CSV file",
    ),
    CliCase(
        "a CSV of image ids with no id column",
        lambda t, m, i: _predict(t, m, _file(t / "ids.csv", b"name,size\na.jpg,3\n")),
        "ids.csv, row 1: no ImageId column in header 'name,size'",
    ),
    CliCase(
        "--out naming a file",
        lambda t, m, i: _predict(t, m, i, out=_file(t / "taken", b"x")),
        ("/taken", "a file stands where a folder is needed"),
    ),
    CliCase(
        "an unknown --gate",
        lambda t, m, i: _predict(t, m, i, extra=["--gate", "maybe"]),
        "--gate must be hard, soft or none, not 'maybe'",
    ),
    CliCase(
        "an unknown --engine",
        lambda t, m, i: _predict(t, m, i, extra=["--engine", "tensorrt"]),
        "unknown engine 'tensorrt'",
    ),
    CliCase(
        "--batch-size 0",
        lambda t, m, i: _predict(t, m, i, extra=["--batch-size", "0"]),
        "--batch-size",
    ),
    CliCase(
        "score --height 0",
        lambda t, m, i: ["score", i, i, "--height", "0"],
        "--height",
    ),
]


@pytest.mark.parametrize("case", CLI_CASES, ids=lambda c: c.id)
def test_a_bad_path_or_option_is_one_clear_line(case, tmp_path, model_dir, strips, capsys):
    img = _file(tmp_path / "strip.jpg", strips.jpeg)
    code = run(case.argv(tmp_path, model_dir, img))
    captured = capsys.readouterr()
    no_traceback(captured.out, captured.err)
    assert code == case.code, captured.err
    for fragment in (case.expected,) if isinstance(case.expected, str) else case.expected:
        assert fragment in captured.err
    assert not (tmp_path / "out" / "submission.csv").exists()
    assert not (tmp_path / "taken").is_dir()


# =============================================================================== subprocesses
def _steelscan(*args: Any, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m steelscan ARGS`` as a user runs it; stdout and stderr as text."""
    return subprocess.run(
        [sys.executable, "-m", "steelscan", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )


def test_subprocess_predict_over_a_folder_of_bad_images(tmp_path, model_dir, strips, bomb):
    """The issue's report as a user would see it: no traceback from any thread or library."""
    folder = tmp_path / "in"
    folder.mkdir()
    for name, data in strips.jpegs:
        (folder / name).write_bytes(data)
    bad = {"bomb.png": bomb, "crc.png": bad_crc_png(strips.png), "cut.jpg": strips.jpeg[:999]}
    for name, data in bad.items():
        (folder / name).write_bytes(data)
    out = tmp_path / "out"
    proc = _steelscan("predict", model_dir, folder, "--out", out)
    no_traceback(proc.stdout, proc.stderr)
    assert proc.returncode == 1, proc.stderr
    assert "DecompressionBomb" not in proc.stderr
    assert sorted(e["ImageId"] for e in _read_csv(out / "errors.csv")) == sorted(bad)
    assert {r["ImageId"] for r in _read_csv(out / "submission.csv")} == {n for n, _ in strips.jpegs}


def test_subprocess_serve_refuses_a_tampered_bundle(tmp_path, model_dir):
    bundle = tmp_path / "model"
    shutil.copytree(model_dir, bundle)
    _weights("segmenter.safetensors", lambda d, b: _flip(d))(bundle)
    proc = _steelscan("serve", bundle, "--port", "0", timeout=120)
    no_traceback(proc.stdout, proc.stderr)
    assert proc.returncode == 2, proc.stderr
    assert f"{bundle}/segmenter.safetensors: its sha256 differs" in proc.stderr


def test_subprocess_data_check_of_a_dataset_with_a_bomb(tmp_path, bomb):
    root = _dataset(tmp_path / "ds")
    (root / "train_images" / "c.png").write_bytes(bomb)
    _add_row("a.png,2,1 3 5")(root)
    proc = _steelscan("data", "check", root)
    no_traceback(proc.stdout, proc.stderr)
    assert proc.returncode == 1, proc.stderr
    assert "DecompressionBomb" not in proc.stderr
    assert "c.png: 20000x20000 is 400,000,000 pixels" in proc.stderr
    assert "train.csv, row 4, field EncodedPixels" in proc.stderr


# =============================================================================== the count
def test_the_suite_covers_at_least_thirty_kinds_of_bad_input():
    kinds = (
        [c.id for c in IMAGE_CASES if c.cli is not None or c.http[0] != 200]
        + [c.id for c in REQUEST_CASES]
        + [c.id for c in DATA_CASES]
        + [c.id for c in SCORE_CASES]
        + [c.id for c in BUNDLE_CASES]
        + [c.id for c in CLI_CASES]
    )
    assert len(set(kinds)) >= 30, len(set(kinds))
