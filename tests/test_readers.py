"""The mask-folder, COCO and YOLO readers: real Magnetic tile masks from ../shared, small synthetic
datasets for every annotation kind (polygons, RLE, boxes, segments, index masks), mixed image
sizes, and the problems ``data check`` reports (all at once, each naming its file)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import shared_path
from PIL import Image
from pycocotools import mask as coco_mask
from typer.testing import CliRunner

from steelscan import rle
from steelscan.cli import app
from steelscan.data import DataError, detect_layout, load_dataset, scan_dataset
from steelscan.data.check import check_dataset
from steelscan.data.mask_folders import is_clean_folder
from steelscan.data.records import Box

MT_CLASSES = ("MT_Blowhole", "MT_Break", "MT_Crack", "MT_Fray", "MT_Uneven")
EMPTY_UNEVEN = "exp3_num_45042"  # one of the four MT_Uneven images whose mask is empty


@pytest.fixture(scope="session")
def magnetic_tile_dir() -> Path:
    """The real Magnetic tile copy: one folder per class, each image beside its mask PNG."""
    return shared_path("data", "magnetic-tile")


@pytest.fixture(scope="module")
def mt_sample(magnetic_tile_dir, tmp_path_factory) -> Path:
    """A few real images per class (plus one with an empty MT_Uneven mask), copied to tmp."""
    root = tmp_path_factory.mktemp("mt") / "magnetic-tile"
    for folder in sorted(magnetic_tile_dir.glob("MT_*")):
        images = sorted((folder / "Imgs").glob("*.jpg"))[:3]
        if folder.name == "MT_Uneven":
            images.append(folder / "Imgs" / f"{EMPTY_UNEVEN}.jpg")
        for jpg in images:
            dst = root / folder.name / "Imgs"
            dst.mkdir(parents=True, exist_ok=True)
            shutil.copy(jpg, dst)
            shutil.copy(jpg.with_suffix(".png"), dst)
    return root


def _image(path: Path, h: int, w: int) -> Path:
    rng = np.random.default_rng(len(path.name) * 7919 + h * 31 + w)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (h, w), dtype=np.uint8)).save(path)
    return path


def _mask(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(arr, dtype=np.uint8)).save(path)
    return path


def _problems(root: Path, **kwargs) -> list[str]:
    with pytest.raises(DataError) as info:
        load_dataset(root, **kwargs)
    return [str(p) for p in info.value.problems]


def _has(problems: list[str], path: Path, *parts: str) -> bool:
    return any(p.startswith(str(path)) and all(x in p for x in parts) for p in problems)


# ---------------------------------------------------------------- Magnetic tile (real masks)


def test_magnetic_tile_whole_set(magnetic_tile_dir):
    ds = load_dataset(magnetic_tile_dir)
    assert detect_layout(magnetic_tile_dir) == "class-folders"
    assert ds.layout == "class-folders" and ds.has_masks
    assert ds.classes == MT_CLASSES and ds.class_ids == (1, 2, 3, 4, 5)
    assert len(ds) == 1076
    per_class = {c: sum(r.present[i] for r in ds) for i, c in enumerate(MT_CLASSES)}
    assert per_class == {
        "MT_Blowhole": 92,
        "MT_Break": 68,
        "MT_Crack": 46,
        "MT_Fray": 26,
        "MT_Uneven": 82,
    }
    assert sum(not r.defective for r in ds) == 762  # MT_Free: clean
    assert all(sum(r.present) <= 1 for r in ds)
    empty = [r.image_id for r in ds if r.defective and not any(r.rles.values())]
    assert len(empty) == 4 and all(i.startswith("MT_Uneven/") for i in empty)
    assert len({r.shape for r in ds}) > 100  # every image its own size


def test_class_folders_threshold_soft_edges_at_half_range(mt_sample):
    ds = load_dataset(mt_sample)
    assert ds.layout == "class-folders" and len(ds) == 19
    for r in ds:
        assert r.image_id == r.path.relative_to(mt_sample).as_posix()
        raw = np.asarray(Image.open(r.path.with_suffix(".png")))
        assert raw.shape == r.shape
        k = MT_CLASSES.index(r.image_id.split("/")[0]) if "Free" not in r.image_id else None
        expected = (raw >= 128).astype(np.uint8)
        if k is None:
            assert not r.defective and r.rles == {} and r.labels == frozenset()
            continue
        assert np.array_equal(r.mask(k), expected), r.image_id
        assert r.labels == frozenset({k}) and r.defective
        soft = (raw > 0) & (raw < 128)
        assert soft.any() or r.image_id.endswith(f"{EMPTY_UNEVEN}.jpg")  # soft edges exist


def test_clean_folder_rule():
    for name in ("MT_Free", "good", "OK", "clean", "defect-free", "Normal", "part_ok"):
        assert is_clean_folder(name), name
    for name in ("MT_Crack", "scratch", "freeze", "okapi", "goodness"):
        assert not is_clean_folder(name), name


def test_class_folders_problems_all_at_once(tmp_path):
    """Mask of another size, mask without image, image without mask, defects in a clean
    folder: every one reported, naming its file."""
    root = tmp_path / "ds"
    _image(root / "scratch" / "a.jpg", 20, 30)
    _mask(root / "scratch" / "a.png", np.full((20, 30), 255))
    _image(root / "scratch" / "wrong.jpg", 20, 30)
    _mask(root / "scratch" / "wrong.png", np.zeros((21, 30)))
    _mask(root / "scratch" / "orphan.png", np.zeros((20, 30)))
    _image(root / "scratch" / "nomask.bmp", 12, 12)
    _image(root / "dent" / "sub" / "d.png", 40, 50)  # PNG images with tagged masks
    _mask(root / "dent" / "sub" / "d_mask.png", np.zeros((40, 50)))
    _mask(root / "dent" / "sub" / "lone_mask.png", np.zeros((4, 5)))
    _image(root / "good" / "g.jpg", 20, 30)
    _mask(root / "good" / "g.png", np.full((20, 30), 200))
    _image(root / "good" / "plain.jpg", 20, 30)  # clean folder: no mask needed
    probs = _problems(root)
    assert len(probs) == 5, probs
    assert _has(probs, root / "scratch" / "wrong.png", "mask is 30x21 but its image is 30x20")
    assert _has(probs, root / "scratch" / "orphan.png", "mask without image")
    assert _has(probs, root / "dent" / "sub" / "lone_mask.png", "mask without image")
    assert _has(probs, root / "scratch" / "nomask.bmp", "has no mask beside it")
    assert _has(probs, root / "good" / "g.png", "600 defect pixels", "clean folder")
    # check_dataset and the CLI report the same, all at once
    assert len(check_dataset(root, progress=False)) == 5
    res = CliRunner().invoke(app, ["data", "check", str(root)])
    assert res.exit_code == 1 and "5 problem(s) found" in res.output
    assert str(root / "scratch" / "wrong.png") in res.output


def test_class_folders_zero_one_masks_and_sizes(tmp_path):
    """A 0/1 mask is read as it is (thresholding it at 128 would silently empty it)."""
    m = np.zeros((30, 40), np.uint8)
    m[5:10, 3:9] = 1
    _image(tmp_path / "pit" / "a.jpg", 30, 40)
    _mask(tmp_path / "pit" / "a.png", m)
    _image(tmp_path / "pit" / "b.jpg", 64, 17)
    _mask(tmp_path / "pit" / "b.png", np.full((64, 17), 127))  # soft, under half: nothing
    ds = load_dataset(tmp_path)
    a, b = ds.records
    assert np.array_equal(a.mask(0), m) and a.shape == (30, 40)
    assert b.shape == (64, 17) and b.rles == {} and b.defective  # labelled by its folder


# ---------------------------------------------------------------- images/ + masks/


def test_masks_per_class_folders_mixed_sizes(tmp_path):
    sizes = {"a.jpg": (20, 30), "b.png": (48, 16), "sub/c.jpg": (33, 21), "d.jpg": (10, 10)}
    for name, (h, w) in sizes.items():
        _image(tmp_path / "images" / name, h, w)
    dent = np.zeros((48, 16), np.uint8)
    dent[3:9, 2:5] = 255
    _mask(tmp_path / "masks" / "dent" / "b.png", dent)
    scratch = np.zeros((33, 21), np.uint8)
    scratch[0:33, 7] = 255
    _mask(tmp_path / "masks" / "scratch" / "sub" / "c.png", scratch)
    _mask(tmp_path / "masks" / "dent" / "sub" / "c.png", np.zeros((33, 21)))
    (tmp_path / "classes.txt").write_text("scratch\ndent\n")  # the order of the classes
    ds = load_dataset(tmp_path)
    assert detect_layout(tmp_path) == "masks" and ds.classes == ("scratch", "dent")
    by = ds.by_id()
    assert set(by) == set(sizes) and {k: by[k].shape for k in sizes} == sizes
    assert np.array_equal(by["b.png"].mask(1), dent > 0) and by["b.png"].present == (False, True)
    assert np.array_equal(by["sub/c.jpg"].mask(0), scratch > 0)
    assert not by["a.jpg"].defective and not by["d.jpg"].defective  # no mask: clean
    (tmp_path / "classes.txt").unlink()  # without it: sorted folder names
    assert load_dataset(tmp_path).classes == ("dent", "scratch")


def test_masks_index_masks_with_class_file(tmp_path):
    _image(tmp_path / "images" / "train" / "a.jpg", 20, 30)
    _image(tmp_path / "images" / "val" / "b.jpg", 25, 12)
    idx = np.zeros((20, 30), np.uint8)
    idx[0:4, 0:5] = 1
    idx[10:20, 20:30] = 3
    _mask(tmp_path / "masks" / "train" / "a.png", idx)
    _mask(tmp_path / "masks" / "val" / "b.png", np.zeros((25, 12)))
    (tmp_path / "classes.txt").write_text("_background_\nhole\ncrack\nrust\n")  # labelme style
    ds = load_dataset(tmp_path)
    assert ds.classes == ("hole", "crack", "rust") and ds.class_ids == (1, 2, 3)
    a = ds.by_id()["train/a.jpg"]
    assert a.present == (True, False, True)
    assert np.array_equal(a.mask(0), idx == 1) and np.array_equal(a.mask(2), idx == 3)
    # the same names as YAML, values given outright
    (tmp_path / "classes.txt").unlink()
    (tmp_path / "masks" / "classes.yaml").write_text("names:\n  1: hole\n  3: rust\n")
    ds = load_dataset(tmp_path)
    assert ds.classes == ("hole", "rust") and ds.class_ids == (1, 3)
    assert ds.by_id()["train/a.jpg"].present == (True, True)


def test_masks_index_problems(tmp_path):
    _image(tmp_path / "images" / "a.jpg", 20, 30)
    _image(tmp_path / "images" / "b.jpg", 20, 30)
    _image(tmp_path / "images" / "c.jpg", 20, 30)
    _mask(tmp_path / "masks" / "a.png", np.full((20, 30), 7))
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "masks" / "b.png")
    _mask(tmp_path / "masks" / "c.png", np.zeros((30, 20)))
    _mask(tmp_path / "masks" / "ghost.png", np.zeros((20, 30)))
    (tmp_path / "classes.txt").write_text("hole\ncrack\n")
    probs = _problems(tmp_path)
    assert len(probs) == 4, probs
    m = tmp_path / "masks"
    assert _has(probs, m / "a.png", "unknown class value(s) [7]", "1=hole, 2=crack")
    assert _has(probs, m / "b.png", "single-channel")
    assert _has(probs, m / "c.png", "mask is 20x30 but its image is 30x20")
    assert _has(probs, m / "ghost.png", "mask without image")


def test_masks_binary_without_class_file(tmp_path):
    _image(tmp_path / "images" / "a.png", 16, 16)
    m = np.zeros((16, 16), np.uint8)
    m[2:5, 2:5] = 255
    _mask(tmp_path / "masks" / "a_mask.png", m)
    ds = load_dataset(tmp_path)
    assert ds.classes == ("defect",) and np.array_equal(ds[0].mask(0), m > 0)


# ---------------------------------------------------------------- COCO


def _coco(root: Path, doc: dict, name: str = "annotations.json") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / name).write_text(json.dumps(doc))
    return root / name


def _counts(mask: np.ndarray) -> list[int]:
    """Uncompressed COCO RLE counts, written out by hand: column-major runs, zeros first."""
    counts, value, run = [], 0, 0
    for v in mask.ravel(order="F"):
        if v != value:
            counts.append(run)
            value, run = v, 0
        run += 1
    return [*counts, run]


def _coco_fixture(root: Path) -> dict:
    """Three images of three sizes: polygons, uncompressed RLE, compressed RLE, a bare bbox."""
    _image(root / "images" / "a.jpg", 40, 60)
    _image(root / "images" / "sub" / "b.png", 30, 20)
    _image(root / "images" / "c.jpg", 25, 25)
    m = np.zeros((30, 20), np.uint8, order="F")
    m[5:12, 3:9] = 1
    compressed = coco_mask.encode(np.asfortranarray(m))
    compressed["counts"] = compressed["counts"].decode()
    flat = np.zeros((30, 20), np.uint8)
    flat[20:25, 10:15] = 1
    uncompressed = {"size": [30, 20], "counts": _counts(flat)}
    return {
        "images": [
            {"id": 10, "file_name": "a.jpg", "height": 40, "width": 60},
            {"id": 11, "file_name": "sub/b.png", "height": 30, "width": 20},
            {"id": 12, "file_name": "c.jpg", "height": 25, "width": 25},
        ],
        "categories": [{"id": 7, "name": "scratch"}, {"id": 3, "name": "dent"}],
        "annotations": [
            {
                "id": 1,
                "image_id": 10,
                "category_id": 7,
                "segmentation": [[2, 2, 20, 2, 20, 10, 2, 10]],
            },
            {"id": 2, "image_id": 10, "category_id": 7, "segmentation": [[30, 20, 50, 20, 40, 35]]},
            {"id": 3, "image_id": 11, "category_id": 3, "segmentation": compressed},
            {"id": 4, "image_id": 11, "category_id": 3, "segmentation": uncompressed},
            {"id": 5, "image_id": 10, "category_id": 3, "bbox": [40, 1, 10, 5], "segmentation": []},
        ],
    }


def test_coco_polygons_rle_and_boxes(tmp_path):
    doc = _coco_fixture(tmp_path)
    path = _coco(tmp_path, doc)
    ds = load_dataset(tmp_path)
    assert detect_layout(tmp_path) == "coco" and ds.layout == "coco" and ds.has_masks
    assert ds.classes == ("dent", "scratch") and ds.class_ids == (3, 7)  # by category id
    by = ds.by_id()
    assert {k: r.shape for k, r in by.items()} == {
        "a.jpg": (40, 60),
        "sub/b.png": (30, 20),
        "c.jpg": (25, 25),
    }
    from pycocotools.coco import COCO

    coco = COCO(str(path))  # the reference decoder: our masks are its union per category
    for img in doc["images"]:
        r = by[img["file_name"]]
        for cat in doc["categories"]:
            k = ds.classes.index(cat["name"])
            anns = coco.loadAnns(coco.getAnnIds(imgIds=img["id"], catIds=cat["id"]))
            want = np.zeros(r.shape, np.uint8)
            for a in anns:
                if a["segmentation"]:
                    want |= coco.annToMask(a)
                else:  # a bare box in a mask dataset is a filled rectangle
                    x, y, w, h = a["bbox"]
                    want[y : y + h, x : x + w] = 1
            assert np.array_equal(r.mask(k), want), (img["file_name"], cat["name"])
    assert not by["c.jpg"].defective and by["sub/b.png"].mask(0).sum() == 42 + 25


def test_coco_box_only_is_a_box_dataset(tmp_path):
    _image(tmp_path / "images" / "a.jpg", 40, 60)
    doc = {
        "images": [{"id": 1, "file_name": "a.jpg", "height": 40, "width": 60}],
        "categories": [{"id": 1, "name": "pit"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [3.0, 4.0, 10.0, 5.0]}],
    }
    _coco(tmp_path / "annotations", doc, "instances_default.json")  # CVAT's place
    ds = load_dataset(tmp_path)
    assert not ds.has_masks and ds[0].boxes == (Box(0, 3, 4, 13, 9),) and ds[0].present == (True,)
    # the JSON file itself is a dataset path too
    assert load_dataset(tmp_path / "annotations" / "instances_default.json")[0].boxes == ds[0].boxes


def test_coco_problems_all_at_once(tmp_path):
    doc = _coco_fixture(tmp_path)
    doc["images"].append({"id": 13, "file_name": "missing.jpg", "height": 5, "width": 5})
    doc["images"][2]["width"] = 26  # c.jpg is 25 wide
    doc["annotations"] += [
        {"id": 20, "image_id": 10, "category_id": 99, "segmentation": [[1, 1, 5, 1, 5, 5]]},
        {"id": 21, "image_id": 10, "category_id": 7, "segmentation": [[1, 1, 75, 1, 5, 5]]},
        {
            "id": 22,
            "image_id": 10,
            "category_id": 3,
            "segmentation": {"size": [30, 20], "counts": "0"},
        },
        {"id": 23, "image_id": 77, "category_id": 3, "bbox": [0, 0, 1, 1]},
        {"id": 24, "image_id": 12, "category_id": 3, "bbox": [30, 30, 4, 4]},
    ]
    path = _coco(tmp_path, doc)
    probs = _problems(tmp_path)
    assert len(probs) == 7, probs
    f = str(path)
    assert all(p.startswith(f) for p in probs)
    joined = "\n".join(probs)
    assert "image 'missing.jpg' (id 13) not found" in joined
    assert "c.jpg: states 26x25 but the file is 25x25" in joined
    assert (
        "field annotation id 20: a.jpg: unknown category_id 99 (categories: dent, scratch)"
        in joined
    )
    assert "field annotation id 21: a.jpg: polygon outside the 60x40 image (vertex x=75" in joined
    assert "field annotation id 22: a.jpg: RLE mask is 20x30 but its image is 60x40" in joined
    assert "field annotation id 23: unknown image_id 77" in joined
    assert "field annotation id 24: c.jpg: bbox [30, 30, 4, 4] is empty or outside" in joined
    assert len(check_dataset(tmp_path, progress=False)) == 7


def test_coco_several_files_and_labels_csv(tmp_path):
    doc = _coco_fixture(tmp_path)
    _coco(tmp_path, doc)
    (tmp_path / "labels.csv").write_text("image,label\nc.jpg,scratch\n")
    ds = load_dataset(tmp_path)
    assert ds.by_id()["c.jpg"].present == (False, True) and ds.by_id()["c.jpg"].rles == {}
    _coco(tmp_path / "annotations", doc, "instances_val.json")
    (p,) = _problems(tmp_path)
    assert "several COCO JSON files (annotations.json, instances_val.json)" in p


# ---------------------------------------------------------------- YOLO


def _yolo(root: Path, labels: dict[str, str], sizes: dict[str, tuple[int, int]]) -> Path:
    for name, (h, w) in sizes.items():
        _image(root / "images" / name, h, w)
    for name, text in labels.items():
        p = root / "labels" / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root


def test_yolo_boxes(tmp_path):
    _yolo(
        tmp_path,
        {
            "a.txt": "1 0.5 0.5 0.2 0.4\n0 0.1 0.1 0.2 0.2\n",
            "sub/b.txt": "",
            "c.txt": "1 .5 .5 1 1",
        },
        {"a.jpg": (50, 100), "sub/b.jpg": (30, 30), "c.png": (7, 9), "d.jpg": (8, 8)},
    )
    (tmp_path / "data.yaml").write_text("names:\n  0: hole\n  1: crack\nnc: 2\n")
    ds = load_dataset(tmp_path)
    assert detect_layout(tmp_path) == "yolo" and ds.layout == "yolo" and not ds.has_masks
    assert ds.classes == ("hole", "crack") and ds.class_ids == (0, 1)
    by = ds.by_id()
    assert set(by) == {"a.jpg", "sub/b.jpg", "c.png", "d.jpg"}
    assert sorted(by["a.jpg"].boxes, key=lambda b: b.class_index) == [
        Box(0, 0, 0, 20, 10),
        Box(1, 40, 15, 60, 35),
    ]
    assert by["c.png"].boxes == (Box(1, 0, 0, 9, 7),)
    assert not by["sub/b.jpg"].defective and not by["d.jpg"].defective
    (tmp_path / "data.yaml").unlink()  # darknet / Label Studio: classes.txt, line 1 = class 0
    (tmp_path / "classes.txt").write_text("hole\ncrack\n")
    assert load_dataset(tmp_path).classes == ("hole", "crack")


def test_yolo_segments_are_masks(tmp_path):
    _yolo(
        tmp_path,
        {"a.txt": "0 0.1 0.1 0.5 0.1 0.5 0.6 0.1 0.6\n1 0.5 0.5 0.2 0.2\n"},
        {"a.jpg": (40, 80), "b.jpg": (12, 34)},
    )
    (tmp_path / "data.yaml").write_text("names: [pit, scale]\n")
    ds = load_dataset(tmp_path)
    assert ds.has_masks
    a = ds.by_id()["a.jpg"]
    want = coco_mask.decode(
        coco_mask.merge(coco_mask.frPyObjects([[8, 4, 40, 4, 40, 24, 8, 24]], 40, 80))
    )
    assert np.array_equal(a.mask(0), want)
    box = np.zeros((40, 80), np.uint8)
    box[16:24, 32:48] = 1  # the box line, in a segment dataset, is a filled rectangle
    assert np.array_equal(a.mask(1), box) and a.boxes == ()


def test_yolo_problems_all_at_once(tmp_path):
    _yolo(
        tmp_path,
        {
            "a.txt": "0 0.5 0.5 0.2 0.2\n5 0.5 0.5 0.1 0.1\n0 0.5 0.5 0.1\n0 1.5 0.5 0.2 0.2\n",
            "b.txt": "1 0.1 0.1 0.9 0.1 0.9 1.4\nx y z\n",
            "ghost.txt": "0 0.5 0.5 0.1 0.1\n",
        },
        {"a.jpg": (20, 20), "b.jpg": (20, 20)},
    )
    (tmp_path / "data.yaml").write_text("names: [pit, scale]\n")
    probs = _problems(tmp_path)
    assert len(probs) == 6, probs
    lab = tmp_path / "labels"
    assert _has(probs, lab / "a.txt", "row 2", "unknown class 5")
    assert _has(probs, lab / "a.txt", "row 3", "3 coordinates")
    assert _has(probs, lab / "a.txt", "row 4", "box outside the 20x20 image")
    assert _has(probs, lab / "b.txt", "row 1", "polygon outside the 20x20 image")
    assert _has(probs, lab / "b.txt", "row 2", "not numbers")
    assert _has(probs, lab / "ghost.txt", "label file without image")


# ---------------------------------------------------------------- layout choice, no torch


def test_layout_named_outright(tmp_path):
    """A folder two readers could read: detection picks the first, ``layout=`` the other."""
    _coco(tmp_path, _coco_fixture(tmp_path))
    (tmp_path / "masks").mkdir()
    assert detect_layout(tmp_path) == "coco"
    ds = load_dataset(tmp_path, layout="masks")
    assert ds.layout == "masks" and ds.classes == ("defect",) and len(ds) == 3
    with pytest.raises(DataError, match="unknown layout 'nope'"):
        load_dataset(tmp_path, layout="nope")
    with pytest.raises(DataError, match="not a yolo dataset: expected images/ \\+ labels/"):
        load_dataset(tmp_path, layout="yolo")
    res = CliRunner().invoke(app, ["data", "check", str(tmp_path), "--layout", "masks"])
    assert res.exit_code == 0 and "OK" in res.output, res.output
    res = CliRunner().invoke(app, ["data", "check", str(tmp_path), "--layout", "nope"])
    assert res.exit_code == 2 and "unknown --layout 'nope'" in res.output
    res = CliRunner().invoke(app, ["data", "check", str(tmp_path), "--layout", "voc"])
    assert res.exit_code == 2 and "not a voc dataset" in res.output


def test_data_layer_imports_no_torch():
    code = (
        "import sys; import steelscan.data.coco, steelscan.data.yolo, "
        "steelscan.data.mask_folders, steelscan.data.convert, steelscan.data.check; "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_scan_reports_instead_of_raising(tmp_path):
    _yolo(tmp_path, {"a.txt": "3 0.5 0.5 0.2 0.2\n"}, {"a.jpg": (20, 20)})
    (tmp_path / "data.yaml").write_text("names: [pit]\n")
    ds, probs = scan_dataset(tmp_path)
    assert len(ds) == 1 and len(probs) == 1 and probs[0].row == 1
    assert rle.decode("", (2, 2)).sum() == 0
