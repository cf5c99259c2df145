"""Train the model that `bench/inference.py` measures, on synthetic 1600x256 steel.

    .venv/bin/python bench/inference_model.py [--out /tmp/b2] [--minutes 12]

Writes `OUT/train_data` (120 synthetic images, seed 11), `OUT/heldout` (100 images, seed 12, never
trained on: the labelled set the benchmark scores; 400 (image, class) pairs, so one pair that flips
moves the Kaggle score by 0.0025, finer than the 0.005 int8 parity bar) and `OUT/model`: the
issue's architecture (smp Unet with a MobileNetV2 encoder, timm `mobilenetv2_100` gate), both
starting from the ImageNet weights in ../shared/weights, trained on 256x512 crops within the time
budget. Then run:

    .venv/bin/python bench/inference.py --model OUT/model --calibration OUT/train_data \
        --labelled OUT/heldout --runs 5 --write
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

WEIGHTS = Path(__file__).resolve().parents[2] / "shared" / "weights" / "mobilenet_v2-b0353104.pth"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("/tmp/b2"))
    ap.add_argument("--minutes", type=float, default=14.0)
    args = ap.parse_args()
    if not WEIGHTS.exists():
        print(f"skip: {WEIGHTS} not found (ImageNet weights live in ../shared/weights)")
        return 0
    from steelscan.data.synthetic import synthesize
    from steelscan.training import TrainConfig, train

    synthesize(args.out / "train_data", n=120, seed=11, progress=False)
    synthesize(args.out / "heldout", n=100, seed=12, progress=False)
    w = str(WEIGHTS)
    cfg = TrainConfig(
        classifier=dict(
            arch="mobilenetv2_100",
            encoder_weights=w,
            epochs=12,  # a gate good enough that tuning lets it skip clean images
            lr=1e-3,
            batch_size=8,
            crop_height=256,
            crop_width=512,
            options={"global_pool": "max"},
        ),
        segmenter=dict(
            arch="unet",
            encoder="mobilenet_v2",
            encoder_weights=w,
            epochs=30,
            lr=1e-3,
            batch_size=8,
            crop_height=256,
            crop_width=512,
            defect_crop_bias=0.7,
        ),
        accelerator="cpu",
        devices=1,
        precision="32",
        num_workers=1,
        early_stopping_patience=None,
        scheduler="cosine",
        tensorboard=False,
        progress=False,
        max_minutes=args.minutes,
    )
    t0 = time.time()
    model = train(args.out / "train_data", args.out / "model", cfg)
    print(f"{model} trained in {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
