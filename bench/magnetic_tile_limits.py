"""What limits a Magnetic-tile bundle: the gate's ranking, flip averaging, and a perfect gate.

    .venv/bin/python bench/magnetic_tile_limits.py runs/mt6/model [--data DIR]

Reads the bundle's validation split (the seeded split it was trained with) and prints, from the
float32 torch model:

- the gate's ROC-AUC and its accuracy at 0.5 and at the best threshold, alone and averaged over
  the horizontal flip and over all four flips (does test-time flipping help the gate?);
- the segmenter's own evidence as a gate (its most confident pixel, and its area over 0.5);
- mean IoU with a perfect gate: each class's masks drawn only on the images that truly hold
  that class, at several pixel thresholds (the segmentation quality alone, whatever the gate);
- the tiles the gate gets most wrong, by name, to look at.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
PIXEL_THRESHOLDS = (0.3, 0.5, 0.7, 0.9)


def _accuracies(y, p) -> str:
    import numpy as np
    from sklearn.metrics import roc_auc_score

    ts = np.linspace(0.02, 0.98, 49)
    accs = [((p >= t) == y).mean() for t in ts]
    best = int(np.argmax(accs))
    return (
        f"ROC-AUC {roc_auc_score(y, p):.3f}, accuracy at 0.5 {((p >= 0.5) == y).mean():.3f}, "
        f"best {accs[best]:.3f} (threshold {ts[best]:.2f})"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("model", type=Path)
    ap.add_argument("--data", type=Path, default=SHARED / "data" / "magnetic-tile")
    args = ap.parse_args()
    if not args.data.exists():
        print(f"skip: Magnetic-tile data not found at {args.data} (it lives in ../shared)")
        return 0

    import numpy as np
    import torch

    from steelscan.bundle import load_bundle
    from steelscan.evaluation.evaluate import iter_samples, split_records
    from steelscan.evaluation.overlap import OverlapAccumulator, mask_areas
    from steelscan.imageio import read_image
    from steelscan.inference.predictor import Predictor
    from steelscan.inference.preprocess import to_batch

    predictor = Predictor(args.model, engine="torch")
    manifest = predictor.manifest
    _, records = split_records(args.data, manifest, "val")
    gate_net = load_bundle(args.model).classifier
    k = len(manifest.classes)
    views: dict[str, list[float]] = {"plain": [], "h-flip": [], "4 flips": []}
    seg_max, seg_area, truths, masks = [], [], [], []
    drift = 0.0  # largest difference between "plain" and the predictor's own gate probability
    with torch.no_grad():
        for s in iter_samples(predictor, records, skip_gated=False, progress=False):
            truth = s.record.masks().astype(bool)
            truths.append(truth)
            probs = np.asarray(s.raw.mask_probs, dtype=np.float32)
            masks.append(probs.astype(np.float16))
            seg_max.append(probs.reshape(k, -1).max())
            seg_area.append(int((probs > 0.5).reshape(k, -1).sum(1).max()))
            if gate_net is None:
                continue
            # each flipped view padded as the predictor pads an image, so "plain" is its gate
            img = read_image(s.record.path, channels=manifest.in_channels)
            flips = (img, img[:, ::-1], img[::-1], img[::-1, ::-1])
            logits = []
            for v in flips:
                x, _ = to_batch([np.ascontiguousarray(v)], manifest, pad_mode=predictor.pad_mode)
                logits.append(gate_net(torch.from_numpy(x)).float())
            drift = max(drift, abs(float(torch.sigmoid(logits[0]).max()) - s.raw.class_probs.max()))
            views["plain"].append(float(torch.sigmoid(logits[0]).max()))
            views["h-flip"].append(float(torch.sigmoid((logits[0] + logits[1]) / 2).max()))
            views["4 flips"].append(float(torch.sigmoid(sum(logits) / 4).max()))
    y = np.array([t.any() for t in truths])
    print(f"{args.model}: {len(y)} validation images, {int(y.sum())} defective")
    if views["plain"]:
        print(f"(the plain gate differs from the predictor's by at most {drift:.4f})")
    for name, p in views.items():
        if p:
            print(f"gate, {name}: {_accuracies(y, np.array(p))}")
    print(f"segmenter's most confident pixel as the gate: {_accuracies(y, np.array(seg_max))}")
    area = np.array(seg_area, dtype=float)
    print(f"segmenter's largest area over 0.5 as the gate: {_accuracies(y, area / area.max())}")
    print("mean IoU with a perfect gate (pixels pooled over the images holding the class):")
    for thr in PIXEL_THRESHOLDS:
        # the project's own pooled IoU, fed masks drawn only where the class truly is
        acc = OverlapAccumulator(manifest.classes)
        for truth, prob in zip(truths, masks, strict=True):
            present = truth.reshape(k, -1).any(1)[:, None, None]
            acc.add_areas(*mask_areas((prob >= thr) & present, truth))
        rep = acc.report()
        per = ", ".join(f"{c['name']} {c['iou_pooled']:.3f}" for c in rep["classes"])
        print(f"  pixel threshold {thr}: mean {rep['mean_iou']:.3f} ({per})")
    if views["plain"]:
        g = np.array(views["plain"])
        order = np.argsort(g)
        print("most confident misses (defective, lowest gate):")
        for i in [i for i in order if y[i]][:6]:
            print(f"  {records[i].image_id}: {g[i]:.3f}")
        print("most confident false alarms (clean, highest gate):")
        for i in [i for i in order[::-1] if not y[i]][:6]:
            print(f"  {records[i].image_id}: {g[i]:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
