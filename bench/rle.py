"""Benchmark: steelscan.rle encode/decode vs a plain per-run Python loop, on real Kaggle masks.

Usage (from the repository root):

    .venv/bin/python bench/rle.py [--csv PATH] [--repeats 5] [--write]

Reads the 2,947 recovered Severstal ground-truth RLE rows (``../shared/data/severstal/reference/
train_rle_partial.csv``), checks both implementations agree on every mask, then times each one
``--repeats`` times over all masks and reports the median masks per second and the ratio.
``--write`` replaces the "## RLE codec" section of docs/benchmarks.md with the result.

The baseline is what Kaggle kernels typically do: decode fills one slice per run in a Python
``for`` loop; encode finds run boundaries with NumPy and formats the string run by run in Python.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import _report  # bench/_report.py: shared machine name and doc writing
import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from steelscan import rle  # noqa: E402

DEFAULT_CSV = REPO.parent / "shared" / "data" / "severstal" / "reference" / "train_rle_partial.csv"
DOC = REPO / "docs" / "benchmarks.md"
SECTION = "## RLE codec"
SHAPE = (256, 1600)


def loop_decode(s: str, shape: tuple[int, int] = SHAPE) -> np.ndarray:
    """Baseline: one slice assignment per run, in a Python loop."""
    h, w = shape
    flat = np.zeros(h * w, dtype=np.uint8)
    tokens = s.split()
    for start, length in zip(tokens[0::2], tokens[1::2], strict=True):
        lo = int(start) - 1
        flat[lo : lo + int(length)] = 1
    return flat.reshape(w, h).T


def loop_encode(mask: np.ndarray) -> str:
    """Baseline: NumPy finds the boundaries, a Python loop writes each run."""
    flat = np.concatenate([[0], mask.T.ravel(), [0]])
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    parts = []
    for i in range(0, len(changes), 2):
        parts.append(f"{changes[i]} {changes[i + 1] - changes[i]}")
    return " ".join(parts)


def time_runs(fn: Callable[[], None], repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def machine() -> str:
    py, npv = platform.python_version(), np.__version__
    return f"{_report.cpu_name()}, {os.cpu_count()} cores (shared), Python {py}, NumPy {npv}"


def write_section(text: str) -> None:
    _report.write_section(SECTION, text)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--csv", type=Path, default=DEFAULT_CSV, help="Kaggle RLE CSV to time on")
    ap.add_argument("--repeats", type=int, default=5, help="timed runs per implementation (>= 5)")
    ap.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = ap.parse_args()
    if not args.csv.is_file():
        print(
            f"error: {args.csv} not found. This benchmark needs the recovered Severstal RLE table "
            "(../shared/data/severstal/reference/train_rle_partial.csv); pass --csv PATH.",
            file=sys.stderr,
        )
        return 2
    if args.repeats < 5:
        print("error: --repeats must be at least 5 (the median of several runs is reported)")
        return 2
    strings = pd.read_csv(args.csv, dtype=str, keep_default_na=False)["EncodedPixels"].tolist()
    strings = [s for s in strings if s.strip()]
    masks = [rle.decode(s, SHAPE) for s in strings]
    for s, m in zip(strings, masks, strict=True):  # both agree before anything is timed
        assert np.array_equal(loop_decode(s), m), "decode mismatch"
        assert loop_encode(m) == rle.encode(m) == s, "encode mismatch"
    n = len(strings)
    print(f"{n} masks from {args.csv}; both implementations agree on all of them", file=sys.stderr)

    cases = {
        ("decode", "steelscan.rle"): lambda: [rle.decode(s, SHAPE) for s in strings],
        ("decode", "Python loop"): lambda: [loop_decode(s) for s in strings],
        ("encode", "steelscan.rle"): lambda: [rle.encode(m) for m in masks],
        ("encode", "Python loop"): lambda: [loop_encode(m) for m in masks],
    }
    load = os.getloadavg()[0]  # other work on the machine slows both sides alike
    med = {}
    for key, fn in cases.items():
        times = time_runs(fn, args.repeats)
        med[key] = statistics.median(times)
        print(f"{key[0]:6s} {key[1]:14s} median {med[key]:.3f} s over {n} masks", file=sys.stderr)

    cmd = f".venv/bin/python bench/rle.py --repeats {args.repeats}" + (
        " --write" if args.write else ""
    )
    lines = [
        SECTION,
        "",
        f"Command: `{cmd}`  ",
        f"Machine: {machine()}  ",
        f"Date: {dt.date.today().isoformat()}; 1-minute load average at start: {load:.1f}  ",
        f"Data: {n} real Severstal masks (256x1600) from `train_rle_partial.csv`; median of "
        f"{args.repeats} runs over all masks; both implementations checked equal on every mask.",
        "",
        "Baseline: decode fills one slice per run in a Python loop; encode finds boundaries with "
        "NumPy and formats each run in a Python loop (the usual Kaggle-kernel code).",
        "",
        "| operation | steelscan.rle (masks/s) | Python loop (masks/s) | speed-up |",
        "| --- | ---: | ---: | ---: |",
    ]
    for op in ("decode", "encode"):
        ours, base = n / med[(op, "steelscan.rle")], n / med[(op, "Python loop")]
        lines.append(f"| {op} | {ours:,.0f} | {base:,.0f} | {ours / base:.2f}x |")
    dec = med[("decode", "Python loop")] / med[("decode", "steelscan.rle")]
    if dec < 1:
        lines += [
            "",
            "Decode is slower than the loop: `rle.decode` builds a full-size edge array, "
            "takes a cumulative sum over all 409,600 pixels and copies the transposed result, "
            "while the loop touches only the run pixels (5% of the image on average, 2.5% "
            "median) and returns a transposed view. Scattering only the run pixels into a "
            "C-ordered mask (row `p % H`, column `p // H`) would avoid both costs.",
        ]
    table = "\n".join(lines) + "\n"
    print(table)
    if args.write:
        write_section(table)
        print(f"updated {DOC}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
