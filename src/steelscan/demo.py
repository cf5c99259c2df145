"""The main job on the embedded default: synthesise, train, tune, export, predict, evaluate, report.

Everything a new user needs to see steelscan work end to end on a CPU, in a few minutes, with no
download: a synthetic Severstal-layout dataset, both stages trained, post-processing tuned on the
validation split, the model exported and every engine measured, predictions (submission, JSON
lines, overlays) with the engine ``--engine auto`` picks and the evaluation report, with the
Kaggle score printed next to the all-empty baseline.

The training is budgeted by epochs and sizes (``TrainConfig.demo()``), not minutes, so a slower
or busier machine takes longer but reaches the same model.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

KAGGLE_BAR = 0.90
DICE_BAR = 0.60
GATE_BAR = 0.90


@dataclass
class DemoResult:
    out: Path
    kaggle: float
    empty_baseline: float
    dice_nonempty: float
    gate_accuracy: float | None
    seconds: float
    metrics: dict[str, Any]
    engine: str = ""  # what predicted and was evaluated, e.g. "openvino int8+bf16"
    engine_reason: str = ""
    engines: list[dict[str, Any]] = field(default_factory=list)  # measured at the end of training

    @property
    def bars(self) -> dict[str, bool]:
        """Each bar and whether it is met (the gate's only with a gate)."""
        out = {"kaggle": self.kaggle >= KAGGLE_BAR, "dice": self.dice_nonempty >= DICE_BAR}
        if self.gate_accuracy is not None:
            out["gate"] = self.gate_accuracy >= GATE_BAR
        return out

    @property
    def passed(self) -> bool:
        return all(self.bars.values())


def run_demo(
    out: str | Path,
    *,
    n: int = 160,
    seed: int = 0,
    max_minutes: float | None = None,
    progress: bool = True,
    log: Callable[[str], Any] = print,
    config: Any = None,
) -> DemoResult:
    """Run the whole pipeline into ``out`` (data/, model/, predictions/, report/).

    ``config`` replaces the demo's training preset (tests use ``TrainConfig.tiny()``);
    ``max_minutes`` caps the training time (off by default: a cap makes the model depend on the
    machine's speed). Progress bars appear on a terminal only; in a log file training reports one
    line per epoch.
    """
    from steelscan.data.synthetic import synthesize
    from steelscan.training import TrainConfig, train
    from steelscan.training.callbacks import interactive

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    bars = progress and interactive()

    data = out / "data"
    if (data / "train.csv").exists():
        log(f"[1/5] reusing synthetic dataset in {data}")
    else:
        log(f"[1/5] synthesising {n} steel images (1600x256) into {data}")
        synthesize(data, n=n, seed=seed, progress=bars)

    cfg = config if config is not None else TrainConfig.demo()
    if max_minutes is not None:
        cfg = cfg.model_copy(update={"max_minutes": max_minutes})
    cfg = cfg.model_copy(update={"seed": seed, "progress": progress})
    log(
        "[2/5] training the classifier gate and the segmenter, tuning post-processing, "
        "exporting and measuring the engines"
    )
    model = train(data, out / "model", cfg)
    return _predict_and_evaluate(out, data, model, bars, log, t0)


def _predict_and_evaluate(
    out: Path, data: Path, model: Path, bars: bool, log: Callable[[str], Any], t0: float
) -> DemoResult:
    """Steps 3-5: predict the validation images with the engine ``auto`` picks, evaluate them."""
    from steelscan.evaluation.evaluate import evaluate, predictions, split_records
    from steelscan.inference.engines import ENGINE_RECORDS
    from steelscan.inference.predictor import Predictor
    from steelscan.inference.writers import PredictionWriter

    log("[3/5] predicting the validation images (submission.csv, predictions.jsonl, overlays)")
    predictor = Predictor(model)
    choice = predictor.engine_choice
    reason = choice.reason if choice is not None else ""
    log(f"      engine: {predictor.engine_label} (auto: {reason})")
    _, val = split_records(data, predictor.manifest, "val")
    with PredictionWriter(out / "predictions", overlays=True) as writer:
        for rec, pred in predictions(predictor, val, keep_images=True, progress=bars):
            writer.write(pred.result, path=rec.path, image=pred.image, truth=rec)

    log("[4/5] evaluating on the validation split")
    m = evaluate(predictor, data, out / "report", split="val", progress=bars)
    seg = m["segmentation"]
    gate = m["gate"]
    records = predictor.manifest.metrics.get(ENGINE_RECORDS) or []
    result = DemoResult(
        out=out,
        kaggle=float(seg["score"]),
        empty_baseline=float(seg["empty_baseline"]),
        dice_nonempty=float(seg["dice_nonempty"]),
        gate_accuracy=float(gate["defect"]["accuracy"]) if gate else None,
        seconds=time.perf_counter() - t0,
        metrics=m,
        engine=predictor.engine_label,
        engine_reason=reason,
        engines=[r for r in records if isinstance(r, dict)],
    )
    log("[5/5] done")
    return result
