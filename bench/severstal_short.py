"""Show the pipeline runs on the real Severstal format: a short CPU training on the 38 real images.

    .venv/bin/python bench/severstal_short.py [--shared ../shared] [--out DIR] [--minutes 6]

The 15 original JPEGs (`images/`) and the 23 re-encoded copies (`reencoded/`, PNG files under
`.jpg` ids) are joined into one temporary Severstal-layout folder of symbolic links (nothing is
copied), then: train both stages (256x512 crops, validation at 1600x256), tune, predict the
validation split and evaluate it. Too few images for a quality bar: this proves the format, the
RLE and the full-resolution path on real steel, and prints what the model reached.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def join_severstal(shared: Path, dst: Path) -> Path:
    """One Severstal folder (train.csv + images/ + images.csv) linking both real sets."""
    (dst / "images").mkdir(parents=True)
    rows, labels = [], []
    for sub in (shared, shared / "reencoded"):
        for img in sorted((sub / "images").iterdir()):
            (dst / "images" / img.name).symlink_to(img.resolve())
        with open(sub / "train.csv", newline="") as f:
            rows += list(csv.DictReader(f))
        with open(sub / "images.csv", newline="") as f:
            labels += [(r["ImageId"], r["has_defect"]) for r in csv.DictReader(f)]
    with open(dst / "train.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["ImageId", "ClassId", "EncodedPixels"])
        w.writeheader()
        w.writerows(rows)
    with open(dst / "images.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ImageId", "has_defect"])
        w.writerows(labels)
    return dst


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "severstal")
    ap.add_argument("--minutes", type=float, default=6.0)
    args = ap.parse_args()
    src = args.shared / "data" / "severstal"
    if not (src / "train.csv").exists():
        print(f"skip: real Severstal data not found at {src} (it lives in ../shared)")
        return 0

    from steelscan.data import load_dataset
    from steelscan.evaluation.evaluate import evaluate
    from steelscan.training import TrainConfig, train

    with tempfile.TemporaryDirectory() as tmp:
        data = join_severstal(src, Path(tmp) / "severstal38")
        ds = load_dataset(data)
        cfg = TrainConfig.demo().model_copy(update={"max_minutes": args.minutes})
        t0 = time.perf_counter()
        model = train(data, args.out / "model", cfg)
        seconds = time.perf_counter() - t0
        m = evaluate(model, data, args.out / "report", split="val")
    seg = m["segmentation"]
    results = {
        "images": len(ds),
        "defective": sum(r.defective for r in ds),
        "val_images": m["n_images"],
        "training_seconds": round(seconds, 1),
        "val_kaggle": round(seg["score"], 4),
        "val_all_empty_baseline": round(seg["empty_baseline"], 4),
        "val_dice_nonempty": round(seg["dice_nonempty"], 4),
        "gate_accuracy": round(m["gate"]["defect"]["accuracy"], 4) if m["gate"] else None,
    }
    print(json.dumps(results, indent=2))
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
