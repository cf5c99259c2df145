"""Mask files and mask geometry shared by the mask-folder, COCO and YOLO readers and writers.

Records keep masks as Kaggle RLE strings (:mod:`steelscan.rle`), so a dataset of thousands of
images stays a few megabytes: every mask file is decoded once at load, thresholded, encoded and
dropped. Polygons and COCO RLE go through ``pycocotools.mask`` (the reference rasteriser users'
own tools use), never through a hand-written one.

Binary mask rule (soft edges, as Magnetic tile ships them): a pixel is defective when its value
is at least half the range of its type (128 of 255 for 8 bits, 32768 for 16 bits). A mask whose
values are only 0 and 1 is a 0/1 mask and every 1 counts (else it would silently read as empty).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from steelscan import rle as rle_codec
from steelscan.data.records import Box, DataProblem
from steelscan.imageio import ImageReadError, check_pixels

# A polygon vertex may lie this many pixels outside the image (tools snap to the border with
# float noise); further out it is a problem, because the annotation was made for another image.
OUTSIDE_TOLERANCE = 1.0


def _size_problem(got: tuple[int, int], shape: tuple[int, int], what: str) -> str:
    return f"{what} is {got[1]}x{got[0]} but its image is {shape[1]}x{shape[0]} (width x height)"


def open_mask(
    path: Path, shape: tuple[int, int], what: str = "mask"
) -> tuple[np.ndarray | None, str | None, DataProblem | None]:
    """The raw pixel values of a mask file and its mode, checked against the image's (H, W).

    The size comes from the header, so a mask of the wrong size is refused before decoding.
    """
    try:
        with Image.open(path) as img:
            got = (img.height, img.width)
            if got != shape:
                return None, None, DataProblem(str(path), _size_problem(got, shape, what))
            check_pixels(img.height, img.width, str(path))
            img.load()
            mode = img.mode
            arr = np.asarray(img.convert("L") if mode in ("RGB", "RGBA", "LA", "CMYK") else img)
    except ImageReadError as exc:
        return None, None, DataProblem(str(path), str(exc).removeprefix(f"{path}: "))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        return None, None, DataProblem(str(path), f"not a readable mask image ({exc})")
    return arr, mode, None


def binary(arr: np.ndarray, mode: str) -> np.ndarray:
    """Defective pixels of a binary mask: half range and up; 0/1 masks taken as they are."""
    if arr.dtype == bool or mode == "1":
        return arr.astype(bool)
    peak = int(arr.max()) if arr.size else 0
    if peak <= 1:
        return arr > 0
    if mode == "P":  # palette indices: any non-zero index is drawn
        return arr > 0
    half = 32768 if arr.dtype.itemsize >= 2 and peak > 255 else 128
    return arr >= half


def read_binary_mask(path: Path, shape: tuple[int, int]) -> tuple[str | None, DataProblem | None]:
    """The Kaggle RLE of a binary (or soft-edged) mask file, or the problem naming it."""
    arr, mode, problem = open_mask(path, shape)
    if problem is not None or arr is None:
        return None, problem
    return rle_codec.encode(binary(arr, mode or "L")), None


def write_mask_png(path: Path, mask: np.ndarray) -> None:
    """A 0/255 8-bit PNG: what every viewer shows and every reader (ours too) reads back."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.asarray(mask) > 0).astype(np.uint8) * 255, mode="L").save(path)


# --------------------------------------------------------------------------- geometry


def polygon_outside(
    coords: list[float], shape: tuple[int, int], tolerance: float = OUTSIDE_TOLERANCE
) -> tuple[float, float] | None:
    """The first vertex ``(x, y)`` farther than ``tolerance`` outside the image, or None."""
    h, w = shape
    xs, ys = np.asarray(coords[0::2], float), np.asarray(coords[1::2], float)
    bad = (xs < -tolerance) | (xs > w + tolerance) | (ys < -tolerance) | (ys > h + tolerance)
    if bad.any():
        i = int(np.argmax(bad))
        return float(xs[i]), float(ys[i])
    return None


def coco_rles(segmentation: list | dict, shape: tuple[int, int]) -> list[dict]:
    """COCO RLE objects of a segmentation (polygons, uncompressed or compressed RLE)."""
    from pycocotools import mask as coco_mask

    h, w = shape
    if isinstance(segmentation, list):
        return coco_mask.frPyObjects(segmentation, h, w)
    if isinstance(segmentation.get("counts"), list):
        return [coco_mask.frPyObjects(segmentation, h, w)]
    counts = segmentation["counts"]
    return [{"size": [h, w], "counts": counts.encode() if isinstance(counts, str) else counts}]


def union_to_kaggle(rles: list[dict], shape: tuple[int, int]) -> str:
    """The Kaggle RLE of the union of COCO RLE objects (empty list: an empty mask)."""
    from pycocotools import mask as coco_mask

    if not rles:
        return ""
    merged = coco_mask.merge(rles, intersect=0) if len(rles) > 1 else rles[0]
    return rle_codec.encode(coco_mask.decode(merged))


def kaggle_to_coco(code: str, shape: tuple[int, int]) -> dict:
    """A compressed COCO RLE (``counts`` as text) of a Kaggle RLE, without decoding the mask.

    Both number pixels column-major; Kaggle lists (start, length) runs from 1, COCO alternates
    background/foreground run lengths from 0, so the runs convert by differences alone.
    """
    from pycocotools import mask as coco_mask

    h, w = shape
    runs = rle_codec.parse(code, shape)
    counts = np.empty(2 * len(runs) + 1, dtype=np.int64)
    if len(runs):
        starts, lengths = runs[:, 0] - 1, runs[:, 1]
        ends = starts + lengths
        counts[0:-1:2] = starts - np.concatenate(([0], ends[:-1]))
        counts[1::2] = lengths
        counts[-1] = h * w - ends[-1]
    else:
        counts[0] = h * w
    obj = coco_mask.frPyObjects({"size": [h, w], "counts": counts.tolist()}, h, w)
    return {"size": [h, w], "counts": obj["counts"].decode("ascii")}


def rasterise_box(box: Box, shape: tuple[int, int]) -> np.ndarray:
    m = np.zeros(shape, dtype=np.uint8)
    m[box.y1 : box.y2, box.x1 : box.x2] = 1
    return m


def component_boxes(mask: np.ndarray, class_index: int) -> list[Box]:
    """One box per 8-connected component of a mask (what ``convert --boxes`` writes)."""
    import cv2

    m = np.ascontiguousarray(mask, dtype=np.uint8)
    n, _, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
    boxes = []
    for x, y, bw, bh, _area in stats[1:n]:
        boxes.append(Box(class_index, int(x), int(y), int(x + bw), int(y + bh)))
    return boxes
