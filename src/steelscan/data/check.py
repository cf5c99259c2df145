"""``check_dataset``: every problem in a dataset at once, including a full decode of each image.

``load_dataset`` only reads image headers (fast); a truncated JPEG passes that and fails only
when its pixels are decoded, so the checker decodes every image (in a few threads: Pillow
releases the GIL while decoding) and reports all problems together rather than the first.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm import tqdm

from steelscan.data import scan_dataset
from steelscan.data.records import DataError, DataProblem
from steelscan.imageio import ImageReadError, read_image


def _decode_problem(path: Path, shape: tuple[int, int]) -> DataProblem | None:
    try:
        arr = read_image(path)
    except ImageReadError as exc:
        return DataProblem(str(path), str(exc).removeprefix(f"{path}: "))
    if arr.shape[:2] != shape:
        return DataProblem(
            str(path),
            f"header says {shape[1]}x{shape[0]} but the decoded image is "
            f"{arr.shape[1]}x{arr.shape[0]}",
        )
    return None


def check_dataset(
    path: str | Path,
    *,
    progress: bool = True,
    workers: int | None = None,
    layout: str | None = None,
) -> list[DataProblem]:
    """Return every problem in the dataset at ``path`` (an empty list means it is clean).

    Covers the layout itself (detected, or ``layout``), every CSV/XML/JSON/label row, every
    mask against its image's size (RLE, mask files, COCO RLE), unknown categories, polygons and
    boxes outside their image, masks and labels without an image, and every image file decoded
    in full; Severstal folders also flag sizes that differ from the majority.
    """
    try:
        ds, problems = scan_dataset(path, layout=layout)
    except DataError as exc:
        return exc.problems
    todo = [(r.path, r.shape) for r in ds.records if r.path is not None]
    workers = workers or min(4, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(lambda item: _decode_problem(*item), todo)
        bar = tqdm(
            results, total=len(todo), desc="decoding images", unit="img", disable=not progress
        )
        problems += [p for p in bar if p is not None]
    return problems
