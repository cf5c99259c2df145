"""Exploration report: a handful of plots and one HTML page about a dataset.

Before training on a dataset, people want to see it: how many images per class, how many are
clean, how large the defects are, where they sit, and what they look like. ``write_report``
answers that for any layout ``steelscan.data.load_dataset`` reads (Severstal masks, Pascal VOC
boxes, synthetic data). Statistics come from the annotations alone (RLE run lengths, box sizes),
so only the few gallery images are decoded, even for a dataset of thousands.

Plots are drawn on bare ``matplotlib.figure.Figure`` objects (Agg canvas, no pyplot state), so
reports can be made from threads and servers without touching a GUI backend.
"""

from __future__ import annotations

import html
import math
import os
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator
from tqdm.auto import tqdm

from steelscan import rle
from steelscan.data import load_dataset
from steelscan.data.records import AnnotatedImage, DataError, DataProblem, Dataset
from steelscan.imageio import read_image
from steelscan.reports.overlay import class_colors, draw_boxes, hex_color, overlay

# Files the report writes, in page order: (file, title, caption).
PLOTS: tuple[tuple[str, str, str], ...] = (
    ("class_counts.png", "Images per class", "How many images hold each defect class."),
    (
        "classes_per_image.png",
        "Defect classes per image",
        "0 = clean image; 2 or more = the image holds several defect classes.",
    ),
    ("defect_vs_clean.png", "Defective vs clean", "Images with at least one defect vs none."),
    (
        "area_distribution.png",
        "Defect area per class",
        "Mask area per (image, class) in pixels (box area for box datasets); log scale.",
    ),
    (
        "location_heatmap.png",
        "Where defects are",
        "Fraction of annotated images of each class covering each position (image resized).",
    ),
    (
        "gallery.png",
        "Gallery",
        "Sample images with their annotations in the class colours (stratified by class).",
    ),
)
HEATMAP_SAMPLES = 300  # masks decoded per class for the location heatmap
DPI = 100


@dataclass
class ReportStats:
    """The numbers behind the report, computed from annotations only (no image decoding)."""

    layout: str
    classes: tuple[str, ...]
    images: int
    defective: int
    classes_per_image: dict[int, int]
    images_per_class: list[int]
    instances_per_class: list[int]  # mask rows (Severstal) or boxes (VOC) per class
    areas: pd.DataFrame = field(repr=False)  # columns: class, area
    area_kind: str = "mask"

    @property
    def clean(self) -> int:
        return self.images - self.defective

    @property
    def multi_class(self) -> int:
        return sum(v for k, v in self.classes_per_image.items() if k >= 2)


def class_label(name: str) -> str:
    """``"class 3"`` for numeric Severstal class names, the name itself otherwise."""
    return f"class {name}" if name.isdigit() else name


def summarize(ds: Dataset, progress: bool = True) -> ReportStats:
    """Count images, classes and defect areas of ``ds`` from its RLE strings and boxes."""
    k = len(ds.classes)
    per_class = [0] * k
    instances = [0] * k
    n_classes: Counter[int] = Counter()
    area_rows: list[tuple[str, int]] = []
    defective = 0
    for rec in tqdm(ds.records, desc="reading annotations", unit="img", disable=not progress):
        present = rec.present
        n_classes[sum(present)] += 1
        defective += bool(rec.defective)
        for i, p in enumerate(present):
            per_class[i] += p
        for i, code in rec.rles.items():
            if code:
                instances[i] += 1
                area_rows.append((ds.classes[i], rle.area(code, rec.shape)))
        for b in rec.boxes:
            instances[b.class_index] += 1
            area_rows.append((ds.classes[b.class_index], b.area))
    areas = pd.DataFrame(area_rows, columns=["class", "area"])
    kind = "mask" if ds.has_masks else "box"
    return ReportStats(
        layout=ds.layout,
        classes=tuple(ds.classes),
        images=len(ds),
        defective=defective,
        classes_per_image=dict(sorted(n_classes.items())),
        images_per_class=per_class,
        instances_per_class=instances,
        areas=areas,
        area_kind=kind,
    )


def pick_gallery(ds: Dataset, n: int, seed: int = 0) -> list[AnnotatedImage]:
    """Up to ``n`` records, stratified: each class in turn, then multi-class, then clean ones.

    Round-robin over the buckets so a rare class is shown even in a small gallery; shuffled
    with a fixed seed so the same dataset always gives the same gallery.
    """
    if n <= 0 or not ds.records:
        return []
    rng = np.random.default_rng(seed)
    order = [ds.records[i] for i in rng.permutation(len(ds.records))]
    k = len(ds.classes)
    buckets: list[list[AnnotatedImage]] = [[] for _ in range(k + 2)]
    for rec in order:
        present = rec.present
        for i, p in enumerate(present):
            if p:
                buckets[i].append(rec)
        if sum(present) >= 2:
            buckets[k].append(rec)
        if not rec.defective:
            buckets[k + 1].append(rec)
    buckets.append(order)  # then anything, to fill up
    chosen: list[AnnotatedImage] = []
    seen: set[str] = set()
    want = min(n, len(order))
    while len(chosen) < want:
        progressed = False
        for bucket in buckets:
            while bucket and bucket[0].image_id in seen:
                bucket.pop(0)
            if bucket and len(chosen) < want:
                rec = bucket.pop(0)
                chosen.append(rec)
                seen.add(rec.image_id)
                progressed = True
        if not progressed:
            break
    return chosen


# --- plots ---------------------------------------------------------------------------------


def _figure(width: float, height: float) -> Figure:
    sns.set_theme(style="whitegrid", context="notebook")  # only sets rcParams, no pyplot
    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _label_bars(ax, total: int | None = None) -> None:
    for container in ax.containers:
        labels = []
        for v in container.datavalues:
            text = f"{int(v)}"
            if total:
                text += f" ({100.0 * v / total:.0f}%)"
            labels.append(text)
        ax.bar_label(container, labels=labels, padding=2, fontsize=9)
    ax.margins(y=0.15)


def _bar(path: Path, names: list[str], values: list[int], colors: list[str], title: str, *,
         xlabel: str, ylabel: str, total: int | None = None) -> None:  # fmt: skip
    fig = _figure(max(5.5, 0.9 * len(names) + 2.0), 4.0)
    ax = fig.subplots()
    sns.barplot(x=names, y=values, hue=names, palette=colors, legend=False, ax=ax)
    _label_bars(ax, total)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    if len(names) > 4:
        ax.tick_params(axis="x", labelrotation=20)
    fig.savefig(path)


def plot_class_counts(stats: ReportStats, path: Path) -> None:
    names = [class_label(c) for c in stats.classes]
    colors = [hex_color(c) for c in class_colors(len(names))]
    _bar(path, names, stats.images_per_class, colors, f"Images per class ({stats.images} images)",
         xlabel="", ylabel="images", total=stats.images)  # fmt: skip


def plot_classes_per_image(stats: ReportStats, path: Path) -> None:
    top = max(stats.classes_per_image, default=0)
    keys = list(range(top + 1))
    values = [stats.classes_per_image.get(k, 0) for k in keys]
    colors = ["#9e9e9e"] + ["#3a6ea5"] * top
    _bar(path, [str(k) for k in keys], values, colors, "Defect classes per image",
         xlabel="number of classes in the image", ylabel="images", total=stats.images)  # fmt: skip


def plot_defect_vs_clean(stats: ReportStats, path: Path) -> None:
    _bar(path, ["defective", "clean"], [stats.defective, stats.clean], ["#d55e00", "#9e9e9e"],
         "Defective vs clean images", xlabel="", ylabel="images", total=stats.images)  # fmt: skip


def plot_areas(stats: ReportStats, path: Path) -> None:
    names = [class_label(c) for c in stats.classes]
    fig = _figure(max(6.0, 1.2 * len(names) + 2.5), 4.5)
    ax = fig.subplots()
    df = stats.areas.assign(
        label=stats.areas["class"].map(dict(zip(stats.classes, names, strict=True)))
    )
    df = df[df["area"] > 0]
    palette = {n: hex_color(c) for n, c in zip(names, class_colors(len(names)), strict=True)}
    if df.empty:
        ax.text(0.5, 0.5, "no annotated defects", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
    else:
        kws = dict(x="label", y="area", order=names, hue="label", palette=palette, ax=ax)
        sns.boxplot(
            data=df, showfliers=False, legend=False, width=0.6, boxprops={"alpha": 0.5}, **kws
        )
        sample = df.groupby("label", observed=True).head(400)  # keep dots readable on big sets
        sns.stripplot(data=sample, size=3, alpha=0.6, jitter=0.25, legend=False, **kws)
        ax.set_yscale("log")
        counts = df["label"].value_counts()
        ax.set_xticks(range(len(names)), [f"{n}\n(n={counts.get(n, 0)})" for n in names])
    what = "Mask" if stats.area_kind == "mask" else "Box"
    ax.set(title=f"{what} area per class", xlabel="", ylabel=f"{what.lower()} area (pixels)")
    fig.savefig(path)


def _heat_grid(ds: Dataset) -> tuple[int, int]:
    shapes = Counter(r.shape for r in ds.records)
    h, w = shapes.most_common(1)[0][0] if shapes else (1, 1)
    gw = 200 if w >= h else max(16, round(200 * w / h))
    gh = max(16, round(gw * h / w)) if w >= h else 200
    return gh, gw


def location_maps(
    ds: Dataset, progress: bool = True, seed: int = 0
) -> tuple[np.ndarray, list[int]]:
    """Per class, the fraction of its annotated images covering each cell of a resized grid.

    Masks are decoded for at most :data:`HEATMAP_SAMPLES` images per class (a seeded sample),
    boxes are all used (cheap). Returns ``(maps (K, gh, gw) float32, images used per class)``.
    """
    k = len(ds.classes)
    gh, gw = _heat_grid(ds)
    maps = np.zeros((k, gh, gw), np.float32)
    used = [0] * k
    rng = np.random.default_rng(seed)
    take: list[tuple[AnnotatedImage, int]] = []
    for i in range(k):
        recs = [r for r in ds.records if r.rles.get(i) or any(b.class_index == i for b in r.boxes)]
        if ds.has_masks and len(recs) > HEATMAP_SAMPLES:  # boxes are cheap: use all
            recs = [recs[j] for j in sorted(rng.choice(len(recs), HEATMAP_SAMPLES, replace=False))]
        take += [(r, i) for r in recs]
    for rec, i in tqdm(take, desc="reading masks", unit="mask", disable=not progress):
        h, w = rec.shape
        m = np.zeros((gh, gw), np.float32)
        if rec.rles.get(i):
            full = rle.decode(rec.rles[i], rec.shape).astype(np.float32)
            m = np.maximum(m, cv2.resize(full, (gw, gh), interpolation=cv2.INTER_AREA) > 0)
        for b in rec.boxes:
            if b.class_index == i:
                ys = slice(math.floor(b.y1 * gh / h), max(math.ceil(b.y2 * gh / h), 1))
                xs = slice(math.floor(b.x1 * gw / w), max(math.ceil(b.x2 * gw / w), 1))
                m[ys, xs] = 1.0
        maps[i] += m
        used[i] += 1
    for i in range(k):
        if used[i]:
            maps[i] /= used[i]
    return maps, used


def plot_locations(ds: Dataset, path: Path, progress: bool = True) -> None:
    maps, used = location_maps(ds, progress)
    k, gh, gw = maps.shape
    wide = gw >= 2 * gh
    cols = 1 if wide else min(3, k)
    rows = math.ceil(k / cols)
    cell_w = 12.0 if wide else 3.6
    cell_h = cell_w * gh / gw + 0.6
    fig = _figure(cell_w * cols + 1.2, cell_h * rows + 0.3)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    colors = class_colors(k)
    for i, ax in enumerate(axes):
        if i >= k:
            ax.set_axis_off()
            continue
        cmap = sns.light_palette(hex_color(colors[i]), as_cmap=True)
        im = ax.imshow(maps[i], cmap=cmap, vmin=0, vmax=max(float(maps[i].max()), 1e-6),
                       aspect="equal", interpolation="nearest")  # fmt: skip
        ax.set_title(f"{class_label(ds.classes[i])} ({used[i]} images)", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.grid(False)
        fig.colorbar(im, ax=ax, fraction=0.03 if wide else 0.05, pad=0.01)
    fig.suptitle("Where defects are (fraction of the class's images covering each spot)")
    fig.savefig(path)


def _annotated(rec: AnnotatedImage, colors) -> np.ndarray:
    image = read_image(rec.path, channels=3)
    if image.shape[:2] != rec.shape:
        raise DataError(
            [
                DataProblem(
                    str(rec.path),
                    f"image is {image.shape[1]}x{image.shape[0]}, "
                    f"annotations say {rec.width}x{rec.height}",
                )
            ]  # fmt: skip
        )
    if rec.rles:
        image = overlay(image, rec.masks(boxes=False), colors, alpha=0.3, edge=2)
    if rec.boxes:
        thick = max(2, round(max(rec.shape) / 200))
        boxes = [(b.class_index, b.x1, b.y1, b.x2, b.y2) for b in rec.boxes]
        image = draw_boxes(image, boxes, colors, thickness=thick)
    return image


def plot_gallery(ds: Dataset, records: list[AnnotatedImage], path: Path, progress: bool = True):
    """Images with masks (translucent fill + outline) or boxes in the class colours."""
    colors = class_colors(len(ds.classes))
    names = [class_label(c) for c in ds.classes]
    if not records:
        fig = _figure(6, 1.5)
        ax = fig.subplots()
        ax.text(0.5, 0.5, "no images in the gallery", ha="center", va="center")
        ax.set_axis_off()
        fig.savefig(path)
        return
    h, w = records[0].shape
    wide = w >= 2.5 * h
    cols = 1 if wide else min(4, len(records))
    rows = math.ceil(len(records) / cols)
    cell_w = 16.0 if wide else 3.4
    cell_h = cell_w * h / w + 0.35
    fig = _figure(cell_w * cols, cell_h * rows + 0.6)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    bar = tqdm(records, desc="reading images", unit="img", disable=not progress)
    for i, rec in enumerate(bar):  # iterate the bar itself so it reaches 100% and closes
        ax = axes[i]
        image = _annotated(rec, colors)
        ax.imshow(image, interpolation="antialiased")
        present = [names[k] for k, p in enumerate(rec.present) if p]
        ax.set_title(f"{rec.image_id}: {', '.join(present) or 'clean'}", fontsize=9, loc="left")
        ax.set_axis_off()
    for ax in axes[len(records) :]:
        ax.set_axis_off()
    handles = [Patch(color=hex_color(c), label=n) for n, c in zip(names, colors, strict=True)]
    fig.legend(handles=handles, loc="outside upper center", ncols=min(len(names), 6), frameon=False)
    fig.savefig(path)


# --- page ----------------------------------------------------------------------------------


def _html(ds: Dataset, stats: ReportStats, gallery_n: int) -> str:
    e = html.escape
    pct = (lambda v: f"{100.0 * v / stats.images:.1f}%") if stats.images else (lambda v: "-")
    colors = class_colors(len(stats.classes))
    med = stats.areas.groupby("class")["area"].median() if len(stats.areas) else pd.Series()
    what = "Masks" if stats.area_kind == "mask" else "Boxes"
    class_rows = "\n".join(
        f"<tr><td><span class=sw style='background:{hex_color(colors[i])}'></span>"
        f"{e(class_label(c))}</td><td>{ds.class_ids[i]}</td><td>{stats.images_per_class[i]}</td>"
        f"<td>{pct(stats.images_per_class[i])}</td><td>{stats.instances_per_class[i]}</td>"
        f"<td>{int(med[c]) if c in med.index else '-'}</td></tr>"
        for i, c in enumerate(stats.classes)
    )
    summary = [
        ("Folder", e(str(ds.root))),
        ("Layout", e(ds.layout) + ("" if ds.has_masks else " (boxes only)")),
        ("Images", f"{stats.images}"),
        ("Defective", f"{stats.defective} ({pct(stats.defective)})"),
        ("Clean", f"{stats.clean} ({pct(stats.clean)})"),
        ("Multi-class images", f"{stats.multi_class} ({pct(stats.multi_class)})"),
        ("Gallery", f"{gallery_n} images"),
    ]
    summary_rows = "\n".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in summary)
    sections = [
        f"<section><h2>{e(title)}</h2><p>{e(caption)}</p>"
        f"<img src='{name}' alt='{e(title)}'></section>"
        for name, title, caption in PLOTS
    ]
    figures = "<div class=row>" + "\n".join(sections[:3]) + "</div>\n" + "\n".join(sections[3:])
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>steelscan exploration: {e(ds.root.name)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1700px; padding: 0 1em;
       color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 2em 1em 0; display: inline-table;
         vertical-align: top; }}
th, td {{ border: 1px solid #ccc; padding: 0.25em 0.7em; text-align: left; }}
td:nth-child(n+2) {{ text-align: right; }}
.sw {{ display: inline-block; width: 0.9em; height: 0.9em; margin-right: 0.4em;
       vertical-align: middle; border: 1px solid #555; }}
img {{ max-width: 100%; border: 1px solid #ddd; }}
section {{ margin-top: 2em; }}
.row {{ display: flex; flex-wrap: wrap; gap: 0 2em; }}
.row section {{ flex: 1 1 400px; max-width: 640px; }}
</style></head><body>
<h1>Dataset exploration: {e(ds.root.name)}</h1>
<table>{summary_rows}</table>
<table><tr><th>Class</th><th>Id in files</th><th>Images</th><th>% of images</th>
<th>{what}</th><th>Median area (px)</th></tr>
{class_rows}
</table>
{figures}
<p><small>Written by <code>steelscan data report</code>.</small></p>
</body></html>
"""


def write_report(
    data: str | Path | Dataset, out: str | Path, gallery: int = 12, progress: bool = True
) -> Path:
    """Write the exploration plots and ``index.html`` for ``data`` into ``out``; return the page.

    Everything is drawn into a temporary folder first and moved into ``out`` only when all of
    it succeeded, ``index.html`` last, so a failure never leaves a half-written report. Other
    files already in ``out`` are left alone; the report's own files are replaced.
    """
    if isinstance(gallery, bool) or not isinstance(gallery, int) or gallery < 0:
        raise ValueError(f"gallery must be a non-negative integer, got {gallery!r}")
    ds = load_dataset(data)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataError(
            [DataProblem(str(out), "exists and is not a folder; cannot write a report")]
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        stats = summarize(ds, progress)
        plot_class_counts(stats, tmp / "class_counts.png")
        plot_classes_per_image(stats, tmp / "classes_per_image.png")
        plot_defect_vs_clean(stats, tmp / "defect_vs_clean.png")
        plot_areas(stats, tmp / "area_distribution.png")
        plot_locations(ds, tmp / "location_heatmap.png", progress)
        chosen = pick_gallery(ds, gallery)
        plot_gallery(ds, chosen, tmp / "gallery.png", progress)
        (tmp / "index.html").write_text(_html(ds, stats, len(chosen)), encoding="utf-8")
        out.mkdir(exist_ok=True)
        for name, _, _ in PLOTS:
            os.replace(tmp / name, out / name)
        os.replace(tmp / "index.html", out / "index.html")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out / "index.html"
