"""The main job on the embedded default: synthesise, train, tune, predict, evaluate, report.

Everything a new user needs to see steelscan work end to end on a CPU, in a few minutes, with no
download: a synthetic Severstal-layout dataset, both stages trained briefly, post-processing
tuned on the validation split, predictions (submission, JSON lines, overlays) and the evaluation
report, with the Kaggle score printed next to the all-empty baseline.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

KAGGLE_BAR = 0.90
DICE_BAR = 0.60


@dataclass
class DemoResult:
    out: Path
    kaggle: float
    empty_baseline: float
    dice_nonempty: float
    gate_accuracy: float | None
    seconds: float
    metrics: dict[str, Any]

    @property
    def passed(self) -> bool:
        return self.kaggle >= KAGGLE_BAR and self.dice_nonempty >= DICE_BAR


def run_demo(
    out: str | Path,
    *,
    n: int = 160,
    seed: int = 0,
    max_minutes: float | None = None,
    progress: bool = True,
    log=print,
    config: Any = None,
) -> DemoResult:
    """Run the whole pipeline into ``out`` (data/, model/, predictions/, report/).

    ``config`` replaces the demo's training preset (tests use ``TrainConfig.tiny()``).
    """
    from steelscan.data.synthetic import synthesize
    from steelscan.evaluation.evaluate import evaluate, predictions, split_records
    from steelscan.inference.predictor import Predictor
    from steelscan.inference.writers import PredictionWriter
    from steelscan.training import TrainConfig, train

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    data = out / "data"
    if (data / "train.csv").exists():
        log(f"[1/5] reusing synthetic dataset in {data}")
    else:
        log(f"[1/5] synthesising {n} steel images (1600x256) into {data}")
        synthesize(data, n=n, seed=seed, progress=progress)

    cfg = config if config is not None else TrainConfig.demo()
    if max_minutes is not None:
        cfg = cfg.model_copy(update={"max_minutes": max_minutes})
    cfg = cfg.model_copy(update={"seed": seed, "progress": progress})
    log("[2/5] training the classifier gate and the segmenter, then tuning post-processing")
    model = train(data, out / "model", cfg)

    log("[3/5] predicting the validation images (submission.csv, predictions.jsonl, overlays)")
    predictor = Predictor(model)
    log(f"      engine: {predictor.engine_label}")
    _, val = split_records(data, predictor.manifest, "val")
    with PredictionWriter(out / "predictions", overlays=True) as writer:
        for rec, pred in predictions(predictor, val, keep_images=True, progress=progress):
            writer.write(pred.result, path=rec.path, image=pred.image, truth=rec)

    log("[4/5] evaluating on the validation split")
    m = evaluate(predictor, data, out / "report", split="val", progress=progress)
    seg = m["segmentation"]
    gate = m["gate"]
    result = DemoResult(
        out=out,
        kaggle=float(seg["score"]),
        empty_baseline=float(seg["empty_baseline"]),
        dice_nonempty=float(seg["dice_nonempty"]),
        gate_accuracy=float(gate["defect"]["accuracy"]) if gate else None,
        seconds=time.perf_counter() - t0,
        metrics=m,
    )
    log("[5/5] done")
    return result
