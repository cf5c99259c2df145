"""Proof on real steel: train steelscan on NEU-DET on the CPU and report its quality.

    .venv/bin/python bench/neu.py [--data ../shared/data/neu] [--weights ../shared/weights/...]
                                  [--out runs/neu] [--max-minutes 28]

Seeded 80/20 split by image (stratified), MobileNetV2 ImageNet weights from ../shared/weights for
both the classifier gate and the Unet encoder, both stages trained within the time budget. Prints
(and writes ``results.json`` next to the bundle): classifier top-1 accuracy on the validation
images (the predicted class with the highest probability against the class in the file name),
multi-label gate metrics, and the segmenter's box mAP@0.5 from connected components of its masks.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
MOBILENET = SHARED / "weights" / "mobilenet_v2-b0353104.pth"
MOBILENET_SHA = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", type=Path, default=SHARED / "data" / "neu")
    ap.add_argument("--weights", type=Path, default=MOBILENET)
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "neu")
    ap.add_argument("--max-minutes", type=float, default=28.0)
    ap.add_argument("--cls-epochs", type=int, default=4)
    ap.add_argument("--seg-epochs", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    for p, what in ((args.data, "NEU-DET data"), (args.weights, "MobileNetV2 weights")):
        if not p.exists():
            print(f"skip: {what} not found at {p} (it lives in ../shared beside the repo)")
            return 0

    import torch

    from steelscan.bundle import load_bundle
    from steelscan.data import load_dataset
    from steelscan.evaluation.evaluate import evaluate, iter_samples, select_records
    from steelscan.inference.predictor import Inspector
    from steelscan.training import TrainConfig, train
    from steelscan.training.config import ClassifierConfig, SegmenterConfig

    sha = MOBILENET_SHA if args.weights == MOBILENET else None
    cfg = TrainConfig(
        seed=args.seed,
        val_fraction=0.2,
        classifier=ClassifierConfig(
            arch="mobilenetv2_100",
            encoder_weights=str(args.weights),
            weights_sha256=sha,
            epochs=args.cls_epochs,
            lr=1e-3,
            batch_size=16,
        ),
        segmenter=SegmenterConfig(
            arch="unet",
            encoder="mobilenet_v2",
            encoder_weights=str(args.weights),
            weights_sha256=sha,
            epochs=args.seg_epochs,
            lr=1e-3,
            batch_size=16,
            crop_height=None,
            crop_width=None,
            loss="bce_dice",
            options={"decoder_channels": [128, 64, 32, 16, 16]},
        ),
        scheduler="cosine",
        early_stopping_patience=None,
        max_minutes=args.max_minutes,
        num_workers=2,
        accelerator="cpu",
        devices=1,
        tensorboard=False,
    )
    t0 = time.perf_counter()
    model = train(args.data, args.out / "model", cfg)
    train_s = time.perf_counter() - t0

    bundle = load_bundle(model)
    ds = load_dataset(args.data)
    val = select_records(ds, bundle.manifest, "val")
    inspector = Inspector(bundle, gate_mode="none")
    correct = 0
    for s in iter_samples(inspector, val):
        label = s.record.image_id.rsplit("_", 1)[0]
        pred = bundle.manifest.classes[int(np.argmax(s.raw.class_probs))]
        correct += pred == label
    top1 = correct / len(val)
    m = evaluate(bundle, args.data, args.out / "report", split="val")
    per_class = (m["gate"] or {}).get("per_class") or {}
    results = {
        "train_images": len(ds) - len(val),
        "val_images": len(val),
        "training_seconds": round(train_s, 1),
        "classifier_top1_accuracy": round(top1, 4),
        "classifier_multilabel_exact_match": per_class.get("exact_match_accuracy"),
        "box_map50": m["boxes"]["map50"] if m["boxes"] else None,
        "box_ap50_per_class": m["boxes"]["ap_per_class"] if m["boxes"] else None,
        "kaggle_score_box_masks": m["segmentation"]["score"],
        "dice_nonempty_box_masks": m["segmentation"]["dice_nonempty"],
        "torch_threads": torch.get_num_threads(),
        "report": m["report"],
    }
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
