"""DDP check: a 2-process CPU data-parallel training run through the real CLI.

Runs ``python -m steelscan train DATA --strategy ddp --accelerator cpu --devices 2`` on a small
synthetic dataset with the tiny preset, then checks that it exited cleanly, that both processes
trained on their own half of the data (the steps per epoch equal those of a 2-way
DistributedSampler split, not of one process seeing everything) and that ONE loadable bundle was
written.

    .venv/bin/python bench/ddp_check.py [--keep DIR]

Lightning's DDP launcher re-runs the command for rank 1, which is why this goes through the CLI
(a subprocess) rather than calling ``train()`` in this interpreter.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--keep", type=Path, help="work in this folder and keep it (default: a temp dir)"
    )
    ap.add_argument("--n", type=int, default=16, help="synthetic images")
    args = ap.parse_args()

    from steelscan.data.synthetic import synthesize

    work = args.keep or Path(tempfile.mkdtemp(prefix="steelscan-ddp-"))
    work.mkdir(parents=True, exist_ok=True)
    data = synthesize(work / "data", n=args.n, seed=3, height=128, width=800, progress=False)
    out = work / "model"
    batches = 4  # per process; with 2 processes each sees half of the training images
    cmd = [
        sys.executable, "-m", "steelscan", "train", str(data), "--out", str(out),
        "--preset", "tiny", "--quiet", "--strategy", "ddp", "--accelerator", "cpu",
        "--devices", "2", "--set", "segmenter.batch_size=2", "--set", "classifier.batch_size=2",
        "--set", f"limit_train_batches={batches}",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "RANK", "WORLD_SIZE")}
    print("$", " ".join(cmd[1:]))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - t0
    print(proc.stdout.strip())
    if proc.returncode != 0:
        print(proc.stderr[-4000:], file=sys.stderr)
        print(f"FAILED: exit code {proc.returncode} after {wall:.1f} s")
        return 1

    from steelscan.bundle import load_bundle

    b = load_bundle(out)
    m = b.manifest
    seg, clf = m.metrics["segmenter"], m.metrics["classifier"]
    n_train = m.training["num_train_images"]
    per_rank_steps = min(batches, -(-n_train // 2) // 2)  # ceil(n/2) per rank, batch 2, drop_last
    one_process_steps = min(batches, n_train // 2)
    checks = {
        "exit code 0": proc.returncode == 0,
        "bundle loads (classifier + segmenter)": b.classifier is not None
        and b.segmenter is not None,
        "postprocess tuned for every class": len(m.postprocess.pixel_thresholds) == m.num_classes,
        "no stray temp dirs": not list(out.parent.glob(f".{out.name}.tmp-*")),
        f"data split across 2 ranks ({per_rank_steps} steps/epoch, one process would take "
        f"{one_process_steps})": clf["global_steps"] == per_rank_steps
        and seg["global_steps"] == 2 * per_rank_steps
        and per_rank_steps != one_process_steps,
    }
    print(f"wall time: {wall:.1f} s (2 processes, CPU, gloo)")
    print(f"train/val images: {m.training['num_train_images']}/{m.training['num_val_images']}")
    print(f"classifier steps: {clf['global_steps']}, segmenter steps: {seg['global_steps']}")
    print(f"kaggle after tuning: {m.metrics['kaggle_after_tuning']:.4f}")
    for name, ok in checks.items():
        print(f"[{'ok' if ok else 'FAIL'}] {name}")
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
