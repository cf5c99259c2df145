"""Readers (and the writer) for datasets that store each mask as an image file beside its image.

Two layouts:

* ``class-folders`` (Magnetic tile, as the source ships it): one folder per class under the root,
  each image anywhere below it with its mask beside it: ``MT_Crack/Imgs/x.jpg`` + ``x.png``
  (also ``x_mask.png`` / ``x_label.png``, which lets images be PNGs too). In a folder where any
  image has a same-stem ``.png`` mask, every ``.png`` is a mask. The class is the top folder's
  name. A **clean folder** means "no defect": its name, case-folded, is one of
  :data:`CLEAN_NAMES` or ends in ``_``/``-`` plus one of them (``MT_Free``, ``good``, ``OK``);
  its images may go without masks, and a mask with defect pixels there is a problem. Every
  image of a defect folder is labelled with its folder's class (so an empty mask there, as in
  four Magnetic tile ``MT_Uneven`` images, is still a defective image) and must have a mask.
* ``masks`` (``images/`` + ``masks/``, same relative path and stem): either one mask per class
  under ``masks/<class>/`` (binary), or one mask per image directly under ``masks/`` (or in
  sub-folders mirroring ``images/``): values are class indices named by ``classes.txt`` /
  ``classes.yaml`` (beside ``masks/`` or in it; 0 is background); without such a file it is a
  binary mask of the single class ``defect``. With a class file, ``masks/<class>/`` folders are
  told from mirrored sub-folders by their names. An image with no mask is clean.

Binary masks are thresholded at half range (:mod:`steelscan.data._masks`). Image ids are paths
relative to the root (class-folders) or to ``images/`` (masks), in ``/`` form. Images of any
size and any mix of sizes are fine; each mask must have its own image's size.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from steelscan import rle as rle_codec
from steelscan.data._common import read_sizes
from steelscan.data._labels import (
    apply_labels,
    find_class_file,
    read_class_map,
    read_labels_csv,
    write_class_names,
)
from steelscan.data._masks import open_mask, read_binary_mask, write_mask_png
from steelscan.data.records import AnnotatedImage, DataProblem, Dataset
from steelscan.imageio import IMAGE_SUFFIXES

CLEAN_NAMES = frozenset(
    {"free", "good", "ok", "clean", "normal", "defect_free", "defect-free", "no_defect", "nodefect"}
)
MASK_TAGS = ("_mask", "_label")
MASK_SUFFIXES = (".png", ".bmp")
_WORKERS = min(4, os.cpu_count() or 1)


def is_clean_folder(name: str) -> bool:
    """The clean-folder rule (see the module docstring)."""
    n = name.casefold()
    return n in CLEAN_NAMES or any(n.endswith(sep + c) for c in CLEAN_NAMES for sep in "_-")


def _is_image(name: str) -> bool:
    return Path(name).suffix.lower() in IMAGE_SUFFIXES and not name.startswith(".")


def _pair_folder(
    folder: Path, names: list[str]
) -> tuple[list[tuple[Path, Path | None]], list[Path]]:
    """Images of one folder with their mask (or None), and masks that have no image."""
    files = sorted(n for n in names if _is_image(n))
    by_stem: dict[str, list[str]] = {}
    for n in files:
        by_stem.setdefault(Path(n).stem, []).append(n)
    same_stem = any(
        any(Path(n).suffix.lower() != ".png" for n in group)
        and any(Path(n).suffix.lower() == ".png" for n in group)
        for group in by_stem.values()
    )
    masks: set[str] = set()
    for n in files:
        p = Path(n)
        tagged = p.suffix.lower() in MASK_SUFFIXES and p.stem.endswith(MASK_TAGS)
        if tagged or (same_stem and p.suffix.lower() == ".png"):
            masks.add(n)
    pairs: list[tuple[Path, Path | None]] = []
    claimed: set[str] = set()
    for n in files:
        if n in masks:
            continue
        stem = Path(n).stem
        options = [f"{stem}.png"] if Path(n).suffix.lower() != ".png" else []
        options += [f"{stem}{tag}{s}" for tag in MASK_TAGS for s in MASK_SUFFIXES]
        mask = next((m for m in options if m in masks), None)
        if mask:
            claimed.add(mask)
        pairs.append((folder / n, folder / mask if mask else None))
    return pairs, [folder / m for m in sorted(masks - claimed)]


def masks_beside_images(folder: Path, names: list[str]) -> list[Path]:
    """Which of ``names`` (files directly in ``folder``, as already listed) are masks beside their
    images by the pairing rule above (``x.jpg`` + ``x.png``, ``x_mask.png``), so that a plain
    folder of such images is inspected without its masks. Only a folder where every would-be
    mask has its image counts: elsewhere (a ``.png`` of its own among them) every file is taken
    for an image."""
    pairs, orphans = _pair_folder(folder, names)
    return [] if orphans else sorted(mask for _, mask in pairs if mask is not None)


def _walk(top: Path) -> Iterator[tuple[Path, list[str]]]:
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        yield Path(dirpath), filenames


def _class_dirs(root: Path) -> list[Path]:
    return sorted(
        (d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")),
        key=lambda d: d.name,
    )


def _holds_images(top: Path) -> bool:
    """A folder with an image somewhere below it (other folders are no class)."""
    return any(_is_image(n) for _, names in _walk(top) for n in names)


def is_class_folders(root: Path) -> bool:
    """Some folder under the root holds an image with its mask beside it."""
    for top in _class_dirs(root):
        for folder, names in _walk(top):
            pairs, _ = _pair_folder(folder, names)
            if any(mask is not None for _, mask in pairs):
                return True
    return False


@dataclass
class _Item:
    """One image found on disk, before its mask is read."""

    image_id: str
    path: Path
    masks: dict[int, Path]  # class index -> binary mask file
    labels: frozenset[int] = frozenset()
    clean: bool = False  # from a clean folder: a mask with defect pixels is a problem
    index_mask: Path | None = None  # masks layout, index mode


def _class_folder_items(root: Path) -> tuple[list[_Item], tuple[str, ...], list[DataProblem]]:
    """Every image of every class folder, with its mask and folder label."""
    tops = [d for d in _class_dirs(root) if _holds_images(d)]
    classes = tuple(d.name for d in tops if not is_clean_folder(d.name))
    problems = [
        DataProblem(str(p), "image outside any class folder (put it in one, e.g. good/)")
        for p in sorted(root.iterdir())
        if p.is_file() and _is_image(p.name)
    ]
    items: list[_Item] = []
    for top in tops:
        clean = is_clean_folder(top.name)
        k = None if clean else classes.index(top.name)
        for folder, names in _walk(top):
            pairs, orphans = _pair_folder(folder, names)
            problems += [
                DataProblem(str(m), "mask without image (no image of the same stem beside it)")
                for m in orphans
            ]
            for image, mask in pairs:
                if mask is None and not clean:
                    problems.append(
                        DataProblem(
                            str(image),
                            f"image in class folder {top.name!r} has no mask beside it "
                            f"(expected {image.stem}.png, or {image.stem}_mask.png)",
                        )
                    )
                    continue
                item = _Item(image.relative_to(root).as_posix(), image, {}, clean=clean)
                if k is not None:
                    item.masks[k] = mask  # type: ignore[assignment]
                    item.labels = frozenset({k})
                elif mask is not None:
                    item.masks[0] = mask  # read to check it is empty
                items.append(item)
    return items, classes, problems


def _read_item(
    item: _Item, shape: tuple[int, int], classes: tuple[str, ...], index: dict[int, int]
) -> tuple[dict[int, str], list[DataProblem]]:
    """(rles, problems) of one image's mask files."""
    rles: dict[int, str] = {}
    problems: list[DataProblem] = []
    for k, path in item.masks.items():
        code, problem = read_binary_mask(path, shape)
        if problem is not None:
            problems.append(problem)
        elif item.clean and code:
            problems.append(
                DataProblem(
                    str(path),
                    f"has {rle_codec.area(code, shape)} defect pixels but its folder "
                    f"{item.image_id.split('/')[0]!r} is a clean folder (no defects)",
                )
            )
        elif code:
            rles[k] = code
    if item.index_mask is not None:
        found, probs = _read_index_mask(item.index_mask, shape, classes, index)
        rles.update(found)
        problems += probs
    return dict(sorted(rles.items())), problems


def _read_index_mask(
    path: Path, shape: tuple[int, int], classes: tuple[str, ...], index: dict[int, int]
) -> tuple[dict[int, str], list[DataProblem]]:
    """Per-class RLEs of a mask whose pixel values are class values (0: background)."""
    arr, mode, problem = open_mask(path, shape)
    if problem is not None or arr is None:
        return {}, [problem] if problem else []
    if mode in ("RGB", "RGBA", "LA", "CMYK"):
        return {}, [
            DataProblem(str(path), f"an index mask must be single-channel (L or P), not {mode}")
        ]
    values = [int(v) for v in np.unique(arr) if v != 0]
    unknown = [v for v in values if v not in index]
    if unknown:
        named = ", ".join(f"{v}={c}" for v, c in zip(index, classes, strict=True))
        return {}, [
            DataProblem(
                str(path), f"unknown class value(s) {unknown} in the mask (classes: {named})"
            )
        ]
    return {index[v]: rle_codec.encode(arr == v) for v in values}, []


def _records(
    items: list[_Item], classes: tuple[str, ...], index: dict[int, int] | None = None
) -> tuple[list[AnnotatedImage], list[DataProblem]]:
    """Read sizes and masks (a few threads: PNG decoding releases the GIL) into records."""
    sizes, problems = read_sizes(it.path for it in items)
    todo = [it for it in items if it.path in sizes]
    with ThreadPoolExecutor(max_workers=_WORKERS) as pool:
        results = list(
            pool.map(lambda it: _read_item(it, sizes[it.path], classes, index or {}), todo)
        )
    records = []
    for it, (rles, probs) in zip(todo, results, strict=True):
        problems += probs
        h, w = sizes[it.path]
        present = frozenset(it.labels) | frozenset(rles)
        records.append(
            AnnotatedImage(
                image_id=it.image_id,
                path=it.path,
                height=h,
                width=w,
                classes=classes,
                rles=rles,
                labels=it.labels if it.labels or it.clean else None,
                has_defect=bool(present),
            )
        )
    return sorted(records, key=lambda r: r.image_id), problems


def scan_class_folders(root: Path, *, validate: bool = True) -> tuple[Dataset, list[DataProblem]]:
    """Read a class-folders dataset (Magnetic tile); the dataset plus EVERY problem found."""
    root = Path(root)
    items, classes, problems = _class_folder_items(root)
    if not items and not problems:
        problems.append(DataProblem(str(root), "no image with a mask in any class folder"))
    records, probs = _records(items, classes)
    class_ids = tuple(range(1, len(classes) + 1))
    ds = Dataset(root, "class-folders", classes, class_ids, records, has_masks=True)
    return ds, problems + probs


# --------------------------------------------------------------------------- images/ + masks/


def is_masks(root: Path) -> bool:
    return (root / "images").is_dir() and (root / "masks").is_dir()


def _files_below(top: Path, suffixes: tuple[str, ...]) -> list[Path]:
    return sorted(
        folder / n
        for folder, names in _walk(top)
        for n in names
        if Path(n).suffix.lower() in suffixes and not n.startswith(".")
    )


def _image_of(mask: Path, top: Path, keys: dict[str, Path]) -> tuple[Path | None, str]:
    """A mask's image: same relative path and stem, else without a ``_mask``/``_label`` tag."""
    key = mask.relative_to(top).with_suffix("").as_posix()
    if key in keys:
        return keys[key], key
    for tag in MASK_TAGS:
        if key.endswith(tag) and key[: -len(tag)] in keys:
            return keys[key[: -len(tag)]], key
    return None, key


def _mask_mode(root: Path, names: dict[int, str] | None) -> str:
    """``per-class`` (masks/<class>/), ``index`` (values named by a class file) or ``binary``."""
    masks = root / "masks"
    subdirs = {d.name for d in masks.iterdir() if d.is_dir() and not d.name.startswith(".")}
    direct = any(p.is_file() and p.suffix.lower() in MASK_SUFFIXES for p in masks.iterdir())
    if not direct and subdirs:
        if names is not None:
            if subdirs <= set(names.values()):
                return "per-class"
        else:
            mirrored = {d.name for d in (root / "images").iterdir() if d.is_dir()}
            if not subdirs & mirrored:
                return "per-class"
    return "index" if names is not None else "binary"


def _image_keys(root: Path) -> tuple[dict[str, Path], list[DataProblem]]:
    images = root / "images"
    keys: dict[str, Path] = {}
    problems: list[DataProblem] = []
    for p in _files_below(images, IMAGE_SUFFIXES):
        k = p.relative_to(images).with_suffix("").as_posix()
        if k in keys:
            problems.append(
                DataProblem(
                    str(p),
                    f"same stem as {keys[k].name}: which image a mask belongs "
                    "to would be a guess; rename one",
                )
            )
            continue
        keys[k] = p
    return keys, problems


def _match_masks(
    top: Path, keys: dict[str, Path], items: dict[Path, _Item], k: int | None
) -> list[DataProblem]:
    """Attach every mask under ``top`` to its image (``k``: class index, None: index mask)."""
    problems = []
    for m in _files_below(top, MASK_SUFFIXES):
        image, key = _image_of(m, top, keys)
        if image is None:
            problems.append(DataProblem(str(m), f"mask without image (no images/{key}.* file)"))
        elif k is None:
            items[image].index_mask = m
        else:
            items[image].masks[k] = m
    return problems


def scan_masks(root: Path, *, validate: bool = True) -> tuple[Dataset, list[DataProblem]]:
    """Read an ``images/`` + ``masks/`` dataset; the dataset plus EVERY problem found."""
    root = Path(root)
    class_file = find_class_file(root, root / "masks")
    names, problems = read_class_map(class_file) if class_file else (None, [])
    mode = _mask_mode(root, names)
    keys, probs = _image_keys(root)
    problems += probs
    images = root / "images"
    items = {p: _Item(p.relative_to(images).as_posix(), p, {}) for p in sorted(keys.values())}
    index: dict[int, int] = {}
    if mode == "per-class":
        subdirs = sorted(d.name for d in (root / "masks").iterdir() if d.is_dir())
        classes = tuple(names.values()) if names else tuple(subdirs)
        for name in subdirs:
            problems += _match_masks(root / "masks" / name, keys, items, classes.index(name))
    elif mode == "index":
        classes = tuple((names or {}).values())
        index = {v: i for i, v in enumerate(names or {})}
        problems += _match_masks(root / "masks", keys, items, None)
    else:
        classes = ("defect",)
        problems += _match_masks(root / "masks", keys, items, 0)
    records, probs = _records(list(items.values()), classes, index)
    problems += probs
    labels, probs = read_labels_csv(root, classes, {r.image_id for r in records})
    apply_labels(records, labels)
    class_ids = tuple(index) if index else tuple(range(1, len(classes) + 1))
    return Dataset(root, "masks", classes, class_ids, records, has_masks=True), problems + probs


def write_masks(ds: Dataset, out: Path, names: dict[str, str]) -> int:
    """Write ``masks/<class>/<stem>.png`` (0/255) for every non-empty mask, and classes.txt.

    ``names`` maps each image id to its file name under ``images/`` (the converter copies the
    images). Returns the number of mask files written.
    """
    for c in ds.classes:
        if not c or "/" in c or c.startswith("."):
            raise ValueError(f"class name {c!r} cannot be a folder name under masks/")
        (out / "masks" / c).mkdir(parents=True, exist_ok=True)
    write_class_names(out / "classes.txt", ds.classes)
    n = 0
    for r in ds.records:
        stem = Path(names[r.image_id]).with_suffix("").as_posix()
        for k, code in r.rles.items():
            if code:
                write_mask_png(
                    out / "masks" / ds.classes[k] / f"{stem}.png", r.mask(k, boxes=False)
                )
                n += 1
    return n
