"""`steelscan predict MODEL IMAGES` with no engine flags against `--engine torch` (eager fp32).

The bar of the "fast engine by default" issue: with no flags, predict picks the fastest engine
that training recorded as keeping the validation score (``--engine auto``) and must run at least
5x faster end to end than the torch engine on the same images. End to end means whole processes:
start-up, model loading/compilation, decoding, the networks, post-processing and writing every
output. The two commands run in turn (A B A B ...), ``--runs`` pairs after one warm-up pair; the
ratio is taken pair by pair and its median reported. With ``--labelled``, both submissions are
scored against the labels with ``steelscan score`` (same score within 0.005 is the other bar).

    python bench/default_engine.py --model MODEL --images IMAGES [--labelled DATA] [--runs 5]
        [--write-doc]

``MODEL`` is a bundle from ``steelscan train`` (which exports it and records its engines), e.g.
the one ``bench/inference_model.py`` trains, and ``IMAGES`` its held-out images.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import cpu_name, write_section  # noqa: E402
from runtime_install import cpu_flags  # noqa: E402

SECTION = "## Default engine: `steelscan predict` with no flags"
STEELSCAN = str(Path(sys.executable).with_name("steelscan"))


def run(cmd: list[str]) -> tuple[float, str]:
    """One whole process, timed; its --out starts empty (a finished journal would make a rerun a
    no-op: predict resumes)."""
    out = Path(cmd[cmd.index("--out") + 1])
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    took = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return took, proc.stderr


def score(labelled: Path, submission: Path) -> float | None:
    """Kaggle score over every labelled image (clean ones too, listed by the image-level CSV)."""
    cmd = [STEELSCAN, "score", str(labelled / "train.csv"), str(submission), "--json"]
    ids = labelled / "defect_and_no_defect.csv"
    if ids.exists():
        cmd += ["--images", str(ids)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return None
    return float(json.loads(proc.stdout)["score"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--images", type=Path, required=True)
    ap.add_argument("--labelled", type=Path, help="dataset with train.csv to score both runs")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--write-doc", action="store_true")
    args = ap.parse_args()
    if not args.model.is_dir() or not args.images.exists():
        print(f"skip: {args.model} or {args.images} not found")
        return 0
    n_images = sum(1 for p in Path(args.images).rglob("*") if p.suffix.lower() in (".jpg", ".png"))
    tmp = Path(tempfile.mkdtemp(prefix="steelscan-default-engine-"))
    auto = [STEELSCAN, "predict", str(args.model), str(args.images), "--out", str(tmp / "auto")]
    torch = [STEELSCAN, "predict", str(args.model), str(args.images), "--out", str(tmp / "torch")]
    torch += ["--engine", "torch", "--device", "cpu"]
    _, chosen = run(auto)  # warm-up pair (page cache, first compilation caches)
    run(torch)
    times: dict[str, list[float]] = {"auto": [], "torch": []}
    for _ in range(args.runs):
        times["auto"].append(run(auto)[0])
        times["torch"].append(run(torch)[0])
    ratios = [t / a for a, t in zip(times["auto"], times["torch"], strict=True)]
    engine_line = next((x for x in chosen.splitlines() if x.startswith("engine:")), "engine: ?")
    scores = {}
    if args.labelled:
        scores = {k: score(args.labelled, tmp / k / "submission.csv") for k in ("auto", "torch")}
    med = {k: statistics.median(v) for k, v in times.items()}
    lines = [
        SECTION,
        "",
        f"Command: `python bench/default_engine.py --model {args.model} --images {args.images}"
        + (f" --labelled {args.labelled}" if args.labelled else "")
        + f" --runs {args.runs} --write-doc`  ",
        f"Machine: {cpu_name()}, {os.cpu_count()} cores, CPU flags: {cpu_flags()}; "
        f"1-minute load average at the end: {os.getloadavg()[0]:.1f}  ",
        f"Images: {n_images} in `{args.images}`; whole processes (start-up, loading, every "
        f"output written), A/B interleaved, median of {args.runs} pairs after a warm-up pair.  ",
        f"What `--engine auto` chose: `{engine_line}`",
        "",
        "| command | wall s (median) | img/s | Kaggle score |",
        "| --- | ---: | ---: | ---: |",
    ]
    for key, label in (
        ("auto", "`steelscan predict MODEL IMAGES`"),
        ("torch", "`... --engine torch`"),
    ):
        s = scores.get(key)
        lines.append(
            f"| {label} | {med[key]:.2f} | {n_images / med[key]:.2f} | "
            f"{'' if s is None else f'{s:.4f}'} |"
        )
    lines += [
        "",
        f"Speed-up of the default over torch eager fp32, median of the pair ratios: "
        f"**{statistics.median(ratios):.2f}x** (min {min(ratios):.2f}x, max {max(ratios):.2f}x; "
        "bar: 5x).",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write_doc:
        write_section(SECTION, text)
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
