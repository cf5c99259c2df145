"""Benchmark: `steelscan predict` memory stays flat however many images it inspects.

    .venv/bin/python bench/memory.py --model EXPORTED --images DIR [--counts 100 400 1600]
        [--engine openvino --bf16] [--runs 3] [--write]

For each count N, a folder of N images is made from links to the images in DIR (cycled, each
link with its own ImageId), and `steelscan predict` runs on it as a fresh process, writing
submission.csv and predictions.jsonl as a user would. Reported per N: the child's peak resident
memory (from ``wait4``; median of ``--runs``) and its images/s. The pipelined predictor streams
(bounded queues, results written as they come), so peak memory must not grow with N; a list of
all masks held in memory would add about 1.6 MB per 256x1600 image (4 uint8 masks).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _report

REPO = Path(__file__).resolve().parents[1]
SECTION = "## Streaming memory"


def link_images(src: list[Path], n: int, out: Path) -> Path:
    """A folder of ``n`` links to ``src`` images, cycled, with distinct names."""
    out.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        s = src[i % len(src)]
        (out / f"{i:06d}_{s.stem}{s.suffix}").symlink_to(s.resolve())
    return out


def run_predict(model: Path, images: Path, out: Path, flags: list[str]) -> tuple[float, float]:
    """Run `steelscan predict` as a child; returns (peak RSS in MiB, images/s)."""
    cmd = [sys.executable, "-m", "steelscan", "predict", str(model), str(images)]
    cmd += ["--out", str(out), *flags]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=REPO)
    stderr = proc.stderr.read() if proc.stderr else b""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(
            f"steelscan predict failed ({proc.returncode}):\n{stderr.decode()[-2000:]}"
        )
    n = sum(1 for _ in images.iterdir())
    return usage.ru_maxrss / 1024, n / wall


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", type=Path, required=True, help="bundle (exported for onnx/openvino)")
    ap.add_argument("--images", type=Path, required=True, help="folder of source images")
    ap.add_argument("--counts", type=int, nargs="+", default=[100, 400, 1600])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args, flags = ap.parse_known_args()  # the rest goes to `steelscan predict` (--engine ...)
    src = sorted(p for p in args.images.iterdir() if p.suffix.lower() in (".jpg", ".png"))
    if not src:
        print(f"error: {args.images}: no .jpg/.png images", file=sys.stderr)
        return 2
    results: dict[int, list[tuple[float, float]]] = {n: [] for n in args.counts}
    with tempfile.TemporaryDirectory(prefix="steelscan-mem-") as tmp:
        folders = {n: link_images(src, n, Path(tmp) / f"in{n}") for n in args.counts}
        for run in range(args.runs):
            for n in args.counts:  # interleaved, so machine load hits every count alike
                rss, ips = run_predict(args.model, folders[n], Path(tmp) / f"out{n}_{run}", flags)
                results[n].append((rss, ips))
                print(
                    f"run {run + 1}/{args.runs}  {n:6d} images  peak RSS {rss:7.0f} MiB  "
                    f"{ips:5.2f} img/s",
                    flush=True,
                )
    rows = [
        (n, statistics.median(r for r, _ in v), statistics.median(i for _, i in v))
        for n, v in results.items()
    ]
    growth = rows[-1][1] - rows[0][1]
    per_image = growth / max(1, rows[-1][0] - rows[0][0])
    cmd = "python bench/memory.py " + " ".join(sys.argv[1:])
    lines = [
        SECTION,
        "",
        f"Command: `{cmd}`  ",
        f"Machine: {_report.cpu_name()}, {os.cpu_count()} cores; Python {sys.version.split()[0]}  ",
        f"Date: {dt.date.today().isoformat()}; each count is a fresh `steelscan predict` process "
        f"writing submission.csv and predictions.jsonl; median of {args.runs} runs.",
        "",
        "| images | peak RSS (MiB) | images/s |",
        "| ---: | ---: | ---: |",
        *[f"| {n} | {rss:.0f} | {ips:.2f} |" for n, rss, ips in rows],
        "",
        f"Peak memory from {rows[0][0]} to {rows[-1][0]} images: {growth:+.0f} MiB "
        f"({per_image * 1024:+.1f} KiB per extra image; holding every image's four 256x1600 "
        f"masks would cost about 1,600 KiB per image).",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.write:
        _report.write_section(SECTION, text)
        print(f"wrote the '{SECTION}' section of {_report.DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
