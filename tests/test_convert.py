"""``steelscan data convert``: real-image round trips (Magnetic tile masks through COCO, masks and
Severstal; NEU-DET boxes through COCO and YOLO), what each target cannot hold, and atomic
output."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import shared_path
from PIL import Image

from steelscan.cli import main
from steelscan.data import DataError, load_dataset
from steelscan.data.convert import convert_dataset
from steelscan.data.records import AnnotatedImage, Box, Dataset

EMPTY_UNEVEN = "exp3_num_45042"  # an MT_Uneven image with an empty mask: an image-level label


@pytest.fixture(scope="session")
def magnetic_tile_dir() -> Path:
    return shared_path("data", "magnetic-tile")


@pytest.fixture(scope="module")
def mt_sample(magnetic_tile_dir, tmp_path_factory) -> Path:
    """Four real images per class (plus one with an empty MT_Uneven mask), copied to tmp."""
    root = tmp_path_factory.mktemp("mt") / "magnetic-tile"
    for folder in sorted(magnetic_tile_dir.glob("MT_*")):
        images = sorted((folder / "Imgs").glob("*.jpg"))[:4]
        if folder.name == "MT_Uneven":
            images.append(folder / "Imgs" / f"{EMPTY_UNEVEN}.jpg")
        for jpg in images:
            dst = root / folder.name / "Imgs"
            dst.mkdir(parents=True, exist_ok=True)
            shutil.copy(jpg, dst)
            shutil.copy(jpg.with_suffix(".png"), dst)
    return root


def _same_annotations(a: Dataset, b: Dataset, rename=lambda i: i) -> None:
    """Every image of ``a`` is in ``b`` (under ``rename(id)``) with identical masks, boxes,
    size, classes present and defect flag."""
    assert b.classes == a.classes and len(b) == len(a)
    other = b.by_id()
    for r in a:
        o = other[rename(r.image_id)]
        assert o.shape == r.shape, r.image_id
        assert {k: v for k, v in o.rles.items() if v} == {k: v for k, v in r.rles.items() if v}
        assert sorted(o.boxes, key=_box_key) == sorted(r.boxes, key=_box_key), r.image_id
        assert o.present == r.present and o.defective == r.defective, r.image_id


def _box_key(b: Box) -> tuple[int, ...]:
    return (b.class_index, b.x1, b.y1, b.x2, b.y2)


def _flat(image_id: str) -> str:
    return image_id.replace("/", "__")


# ---------------------------------------------------------------- real images, round trips


def test_magnetic_tile_masks_round_trip(mt_sample, tmp_path):
    """magnetic-tile -> coco -> masks / severstal, and -> severstal directly: identical masks."""
    src = load_dataset(mt_sample)
    assert len({r.shape for r in src}) > 10  # every image its own size
    coco = convert_dataset(mt_sample, "coco", tmp_path / "coco")
    assert coco.images == len(src) and coco.annotations == sum(len(r.rles) for r in src)
    assert any("labels.csv" in n for n in coco.notes)  # the empty-mask MT_Uneven image
    _same_annotations(src, load_dataset(tmp_path / "coco"))
    convert_dataset(tmp_path / "coco", "masks", tmp_path / "masks")
    _same_annotations(src, load_dataset(tmp_path / "masks"))
    convert_dataset(tmp_path / "coco", "severstal", tmp_path / "sev-from-coco")
    _same_annotations(src, load_dataset(tmp_path / "sev-from-coco"), _flat)
    convert_dataset(mt_sample, "severstal", tmp_path / "sev")
    sev = load_dataset(tmp_path / "sev")
    assert sev.layout == "severstal" and sev.classes == src.classes
    _same_annotations(src, sev, _flat)
    empty = sev.by_id()[_flat(f"MT_Uneven/Imgs/{EMPTY_UNEVEN}.jpg")]
    assert empty.rles == {} and empty.present == (False, False, False, False, True)


def test_coco_written_loads_in_pycocotools(mt_sample, tmp_path):
    """The COCO file is standard: pycocotools' own COCO() decodes the same masks."""
    from pycocotools.coco import COCO

    src = load_dataset(mt_sample)
    convert_dataset(src, "coco", tmp_path / "coco")
    coco = COCO(str(tmp_path / "coco" / "annotations.json"))
    names = {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())}
    by = src.by_id()
    for img in coco.loadImgs(coco.getImgIds()):
        r = by[img["file_name"]]
        assert (img["height"], img["width"]) == r.shape
        assert (tmp_path / "coco" / "images" / img["file_name"]).is_file()
        for a in coco.loadAnns(coco.getAnnIds(imgIds=img["id"])):
            k = src.classes.index(names[a["category_id"]])
            assert np.array_equal(coco.annToMask(a), r.mask(k))
            assert a["area"] == r.mask(k).sum()


def test_neu_boxes_round_trip(neu_dir, tmp_path):
    """neu (VOC) -> coco -> yolo: all 3,335 boxes equal, and the image-level labels kept."""
    neu = load_dataset(neu_dir)
    r = convert_dataset(neu, "coco", tmp_path / "coco")
    assert r.annotations == 3335 and r.notes == []
    coco = load_dataset(tmp_path / "coco")
    assert coco.layout == "coco" and not coco.has_masks
    _same_annotations(neu, coco)
    convert_dataset(tmp_path / "coco", "yolo", tmp_path / "yolo")
    yolo = load_dataset(tmp_path / "yolo")
    assert yolo.layout == "yolo" and not yolo.has_masks
    _same_annotations(neu, yolo)
    back = convert_dataset(tmp_path / "yolo", "coco", tmp_path / "coco2")
    assert back.annotations == 3335
    _same_annotations(neu, load_dataset(tmp_path / "coco2"))


# ---------------------------------------------------------------- what a target cannot hold


def _synthetic(root: Path) -> Path:
    """Two images of different sizes; one with two blobs of class 'pit' (two components)."""
    for name, (h, w) in {"a.png": (30, 40), "b.jpg": (17, 23)}.items():
        arr = np.random.default_rng(h).integers(0, 255, (h, w), dtype=np.uint8)
        (root / "images").mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(root / "images" / name)
    m = np.zeros((30, 40), np.uint8)
    m[2:6, 3:9] = 255
    m[20:28, 30:33] = 255
    (root / "masks" / "pit").mkdir(parents=True)
    (root / "masks" / "scale").mkdir(parents=True)
    Image.fromarray(m).save(root / "masks" / "pit" / "a.png")
    return root


def test_masks_to_yolo_needs_boxes(tmp_path):
    src = _synthetic(tmp_path / "src")
    with pytest.raises(DataError, match="holds boxes, not pixel masks.*pass --boxes"):
        convert_dataset(src, "yolo", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    r = convert_dataset(src, "yolo", tmp_path / "out", boxes=True)
    assert r.annotations == 2 and "one per connected component" in r.notes[0]
    ds = load_dataset(tmp_path / "out")
    assert ds.classes == ("pit", "scale") and not ds.has_masks
    assert sorted(ds.by_id()["a.png"].boxes, key=_box_key) == [
        Box(0, 3, 2, 9, 6),
        Box(0, 30, 20, 33, 28),
    ]
    assert (tmp_path / "out" / "labels" / "a.txt").read_text().count("\n") == 2
    r = convert_dataset(src, "coco", tmp_path / "coco-boxes", boxes=True)  # --boxes for COCO too
    assert load_dataset(tmp_path / "coco-boxes").by_id()["a.png"].boxes == tuple(
        ds.by_id()["a.png"].boxes
    )


def test_boxes_to_mask_layouts_need_fill_boxes(tmp_path):
    src = _synthetic(tmp_path / "src")
    convert_dataset(src, "yolo", tmp_path / "yolo", boxes=True)
    for to in ("severstal", "masks"):
        with pytest.raises(DataError, match="holds pixel masks, not boxes.*--fill-boxes"):
            convert_dataset(tmp_path / "yolo", to, tmp_path / to)
    convert_dataset(tmp_path / "yolo", "severstal", tmp_path / "sev", fill_boxes=True)
    a = load_dataset(tmp_path / "sev").by_id()["a.png"]
    m = np.zeros((30, 40), np.uint8)
    m[2:6, 3:9] = m[20:28, 30:33] = 1  # the blobs were rectangles: filled boxes are exact
    assert np.array_equal(a.mask(0), m)


def test_masks_round_trip_mixed_sizes_all_targets(tmp_path):
    src = load_dataset(_synthetic(tmp_path / "src"))
    for to in ("coco", "masks", "severstal"):
        convert_dataset(src, to, tmp_path / to)
        _same_annotations(src, load_dataset(tmp_path / to))
    assert (tmp_path / "severstal" / "classes.txt").read_text() == "pit\nscale\n"
    doc = json.loads((tmp_path / "coco" / "annotations.json").read_text())
    assert [c["name"] for c in doc["categories"]] == ["pit", "scale"]
    assert {i["file_name"]: (i["height"], i["width"]) for i in doc["images"]} == {
        "a.png": (30, 40),
        "b.jpg": (17, 23),
    }


def test_image_level_labels_survive_every_target(tmp_path):
    """A defective image whose mask is empty keeps its class (labels.csv) in every layout."""
    root = tmp_path / "src"
    for name in ("x.jpg", "y.jpg"):
        (root / "crack").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((12, 14), 90, np.uint8)).save(root / "crack" / name)
        Image.fromarray(np.zeros((12, 14), np.uint8)).save(
            root / "crack" / name.replace("jpg", "png")
        )
    m = np.zeros((12, 14), np.uint8)
    m[1:3, 1:3] = 255
    Image.fromarray(m).save(root / "crack" / "x.png")
    src = load_dataset(root)
    for to, kw in (("coco", {}), ("masks", {}), ("severstal", {}), ("yolo", {"boxes": True})):
        convert_dataset(src, to, tmp_path / to, **kw)
        y = next(r for r in load_dataset(tmp_path / to) if r.image_id.endswith("y.jpg"))
        assert y.present == (True,) and y.defective and y.rles == {} and y.boxes == (), to


# ---------------------------------------------------------------- output, names, CLI


def test_output_is_atomic_and_never_overwrites(tmp_path):
    src = _synthetic(tmp_path / "src")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="exists and is not an empty folder"):
        convert_dataset(src, "coco", tmp_path / "full")
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["keep.txt"]
    (tmp_path / "empty").mkdir()
    convert_dataset(src, "coco", tmp_path / "empty")  # an empty folder is fine
    assert (tmp_path / "empty" / "annotations.json").is_file()
    # a failure half-way (a class name that cannot be a folder) leaves nothing behind
    ds = load_dataset(src)
    bad = Dataset(
        ds.root,
        ds.layout,
        ("pit", "a/b"),
        ds.class_ids,
        [AnnotatedImage(r.image_id, r.path, r.height, r.width, ("pit", "a/b"), r.rles) for r in ds],
    )
    with pytest.raises(DataError, match="cannot be a folder name"):
        convert_dataset(bad, "masks", tmp_path / "never")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "full", "src"]


def test_ids_with_folders_become_flat_severstal_names(tmp_path):
    root = tmp_path / "src"
    (root / "images" / "line1").mkdir(parents=True)
    (root / "masks").mkdir()
    Image.fromarray(np.zeros((8, 9), np.uint8)).save(root / "images" / "line1" / "a.png")
    Image.fromarray(np.zeros((8, 9), np.uint8)).save(root / "images" / "line1__a.png")
    with pytest.raises(DataError, match="would both be written as line1__a.png"):
        convert_dataset(root, "severstal", tmp_path / "sev")
    (root / "images" / "line1__a.png").unlink()
    convert_dataset(root, "severstal", tmp_path / "sev")
    assert [r.image_id for r in load_dataset(tmp_path / "sev")] == ["line1__a.png"]
    convert_dataset(root, "yolo", tmp_path / "yolo")  # YOLO and COCO keep sub-folders
    assert (tmp_path / "yolo" / "images" / "line1" / "a.png").is_file()


def _cli(argv: list, capsys) -> tuple[int, str]:
    """Run the real entry point (user errors: one red line, exit 2); exit code and output."""
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    out = capsys.readouterr()
    return int(exc.value.code or 0), out.out + out.err


def test_cli_convert(tmp_path, capsys):
    src = _synthetic(tmp_path / "src")
    c, y = tmp_path / "c", tmp_path / "y"
    code, out = _cli(["data", "convert", src, "--to", "coco", "--out", c], capsys)
    assert code == 0 and "wrote 2 images and 1 annotations" in out, out
    code, out = _cli(["data", "convert", src, "--to", "yolo", "--out", y], capsys)
    assert code == 2 and "error:" in out and "pass --boxes" in out, out
    assert not y.exists()
    argv = ["data", "convert", c, "--layout", "coco", "--to", "yolo", "--boxes", "--out", y]
    code, out = _cli(argv, capsys)
    assert code == 0 and "note: wrote 2 boxes" in out, out
    code, out = _cli(["data", "convert", src, "--to", "voc", "--out", tmp_path / "v"], capsys)
    assert code == 2 and "unknown --to 'voc'" in out
    code, out = _cli(["data", "check", y], capsys)
    assert code == 0 and "OK" in out, out
