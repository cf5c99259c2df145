"""The end of a run: export the tuned bundle to ONNX and measure every engine it can run on.

Each engine and precision this machine can run (:func:`candidates`, filtered by
:func:`steelscan.inference.engines.runnable_here`) is scored and timed on the same validation
images through :class:`~steelscan.inference.predictor.Predictor`, the road every image takes in
production, so the record says what ``steelscan predict`` will do: its score (with the tuned
post-processing; the Kaggle score, or box mAP@0.5 for a bundle whose only defect-finding stage is
a detector: :func:`score_metric`), how far that is from torch float32's, and its end-to-end speed
(decode, model, post-processing; pipelined; the first images left out as warm-up). The records go
to ``manifest.metrics["engines"]`` (format: :data:`steelscan.inference.engines.ENGINE_RECORDS`),
where ``--engine auto`` reads them. The int8 model is kept only if an int8 engine keeps the
score.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from steelscan.data.records import AnnotatedImage
from steelscan.inference.engines import SCORE_TOLERANCE, EngineChoice, cpu_has_bf16, runnable_here
from steelscan.training.config import ExportConfig

log = logging.getLogger(__name__)

# The batch size each runtime is timed at: eager torch gains from a few images per call; ONNX
# Runtime and OpenVINO were fastest at batch 1 with the pipelined predictor on 2 cores
# (docs/benchmarks.md: the decode and post-process threads then overlap the model best).
BATCH_SIZES = {"torch": 4, "onnx": 1, "openvino": 1}


@dataclass(frozen=True)
class Candidate:
    """One engine and precision to measure."""

    engine: str
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return EngineChoice(self.engine, dict(self.options)).label

    @property
    def batch_size(self) -> int:
        return BATCH_SIZES.get(self.engine, 1)

    @property
    def int8(self) -> bool:
        return bool(self.options.get("int8"))


def candidates(*, int8: bool, bf16: bool) -> list[Candidate]:
    """Every engine and precision worth measuring; torch float32 (the reference) first.

    bf16 variants only where the CPU has native bfloat16 (elsewhere they are emulated, slower
    and not what a user of this machine would run); int8 ones only with an int8 export.
    """
    out = [Candidate("torch")]
    if bf16:
        out.append(Candidate("torch", {"bf16": True, "channels_last": True}))
    out.append(Candidate("onnx"))
    if int8:
        out.append(Candidate("onnx", {"int8": True}))
    out.append(Candidate("openvino"))
    if bf16:
        out.append(Candidate("openvino", {"precision": "bf16"}))
    if int8:
        out.append(Candidate("openvino", {"int8": True}))
        if bf16:
            out.append(Candidate("openvino", {"int8": True, "precision": "bf16"}))
    return out


def _warmup_count(n: int, warmup: int, batch_size: int) -> int:
    """Images left out of the timing: whole batches covering ``warmup``, at least one image
    timed (with a single image, nothing is left out)."""
    if n <= 1 or warmup <= 0:
        return 0
    return min(n - 1, math.ceil(warmup / batch_size) * batch_size)


def score_metric(manifest: Any) -> str:
    """What an engine is scored by: the Kaggle score (Dice) where the bundle has a segmenter,
    else box mAP@0.5 (pycocotools), the only measure of a detector-only bundle."""
    return "kaggle" if manifest.segmenter is not None else "box_map50"


def _kaggle(manifest: Any, records: Sequence[AnnotatedImage], preds: Sequence[Any]) -> float:
    """Kaggle score of the predictions' masks against the records' (tuned post-processing)."""
    from steelscan.evaluation.metrics import DiceAccumulator

    acc = DiceAccumulator(manifest.class_ids, manifest.classes)
    for rec, pred in zip(records, preds, strict=True):
        acc.add_masks(np.stack([c.mask for c in pred.result.classes]), rec.masks())
    return float(acc.report().score)


def _box_map50(predictor: Any, records: Sequence[AnnotatedImage], preds: Sequence[Any]) -> float:
    """Box mAP@0.5 of the raw detector outputs, every box down to the mAP floor (as training's
    validation computes it), against the records' boxes."""
    from steelscan.evaluation.detection import box_map
    from steelscan.inference.boxes import SCORE_FLOOR

    pp = predictor.postprocessor
    sizes = [(p.result.height, p.result.width) for p in preds]
    dets = [
        pp.detections(p.raw, h, w, score_threshold=SCORE_FLOOR)
        for p, (h, w) in zip(preds, sizes, strict=True)
    ]
    truths = [list(r.boxes) for r in records]
    return float(box_map(truths, dets, sizes, pp.class_names)["map50"])


def measure(
    bundle_dir: Path, records: Sequence[AnnotatedImage], cand: Candidate, warmup: int
) -> dict[str, Any]:
    """Score and time one engine on ``records`` through the predictor; returns its record
    (the ``*_delta`` and ``keeps_score`` fields are filled in by :func:`measure_engines`)."""
    from steelscan.inference.predictor import Predictor

    opts = {"device": "cpu"} if cand.engine == "torch" else {}
    predictor = Predictor(
        bundle_dir, engine=cand.engine, batch_size=cand.batch_size, **cand.options, **opts
    )
    metric = score_metric(predictor.manifest)
    items = [(r.image_id, r.path) for r in records]
    skip = _warmup_count(len(items), warmup, predictor.batch_size)
    preds = []
    t0 = time.perf_counter()
    # box mAP needs every box down to the floor: the raw outputs, not the shown boxes
    for i, pred in enumerate(predictor.stream(items, keep_raw=metric == "box_map50")):
        if pred.error is not None:
            raise RuntimeError(pred.error)
        preds.append(pred)
        if i + 1 == skip:
            t0 = time.perf_counter()
    seconds = time.perf_counter() - t0
    if metric == "kaggle":
        score = _kaggle(predictor.manifest, records, preds)
    else:
        score = _box_map50(predictor, records, preds)
    return {
        "engine": cand.engine,
        "options": dict(cand.options),
        "label": cand.label,
        "batch_size": predictor.batch_size,
        "images": len(items),
        "metric": metric,
        metric: round(score, 6),
        "images_per_s": round((len(items) - skip) / max(seconds, 1e-9), 3),
    }


def measure_engines(
    bundle_dir: Path,
    records: Sequence[AnnotatedImage],
    *,
    int8: bool,
    warmup: int = 2,
    say: Callable[[str], None] = log.info,
) -> list[dict[str, Any]]:
    """One record per engine runnable here (see :data:`~steelscan.inference.engines.
    ENGINE_RECORDS`); the score is ``kaggle`` where the bundle has a segmenter, else
    ``box_map50`` (:func:`score_metric`, named in each record's ``metric``), and its
    ``kaggle_delta`` / ``box_map50_delta`` is against torch float32 on the same images."""
    from steelscan.bundle import load_bundle

    bundle = load_bundle(bundle_dir)
    metric = score_metric(bundle.manifest)
    out: list[dict[str, Any]] = []
    for cand in candidates(int8=int8, bf16=cpu_has_bf16()):
        why = runnable_here(bundle, cand.engine, cand.options)
        if why is not None:
            say(f"not measured: {cand.label} ({why})")
            continue
        try:
            rec = measure(bundle_dir, records, cand, warmup)
        except (ValueError, RuntimeError, OSError, ImportError) as exc:
            if cand.engine == "torch" and not cand.options:
                raise  # the reference: without it nothing can be judged
            say(f"{cand.label} failed: {exc}")
            rec = {
                "engine": cand.engine,
                "options": dict(cand.options),
                "label": cand.label,
                "batch_size": cand.batch_size,
                "images": len(records),
                "metric": metric,
                metric: None,
                "images_per_s": None,
                "error": str(exc)[:500],
            }
        out.append(rec)
    _judge(out, metric, say)
    return out


def _judge(out: list[dict[str, Any]], metric: str, say: Callable[[str], None]) -> None:
    """Fill in each record's delta against the first (torch float32) and ``keeps_score``."""
    reference = out[0][metric]
    name = "Kaggle" if metric == "kaggle" else "box mAP@0.5"
    for rec in out:
        ok = rec[metric] is not None
        delta = round(rec[metric] - reference, 6) if ok else None
        rec[f"{metric}_delta"] = delta
        rec["keeps_score"] = bool(ok and delta >= -SCORE_TOLERANCE)
        if ok:
            say(
                f"{rec['label']:<22} batch {rec['batch_size']}  {rec['images_per_s']:7.2f} img/s"
                f"  {name} {rec[metric]:.4f} ({delta:+.4f})"
                + ("" if rec["keeps_score"] else "  loses the score")
            )


def int8_keeps_score(records: Sequence[dict[str, Any]]) -> bool:
    """Whether any int8 engine kept the score (otherwise the int8 model is not worth shipping)."""
    return any(r.get("keeps_score") and (r.get("options") or {}).get("int8") for r in records)


def spread(records: Sequence[AnnotatedImage], n: int) -> list[AnnotatedImage]:
    """``n`` records evenly spaced over ``records``, in order (all of them when there are <= n)."""
    records = list(records)
    if len(records) <= n:
        return records
    step = len(records) / n
    return [records[int(i * step)] for i in range(n)]


def export_and_measure(
    bundle_dir: Path,
    train_records: Sequence[AnnotatedImage],
    val_records: Sequence[AnnotatedImage],
    cfg: ExportConfig,
    say: Callable[[str], None] = log.info,
) -> list[dict[str, Any]]:
    """Export ``bundle_dir`` in place (fp32; int8 calibrated on training images), measure every
    engine on ``cfg.measure_images`` validation images spread evenly over the split (the first
    ones of a split sorted by name can all be one class: NEU's first 64 are crazing and
    inclusion) and drop the int8 model if no int8 engine kept the score. Returns the records."""
    from steelscan.bundle import read_manifest
    from steelscan.inference.export import drop_int8, export_in_place, record_batches

    manifest = read_manifest(bundle_dir)
    calibration = None
    if cfg.int8:
        calibration = record_batches(train_records, manifest, limit=cfg.calibration_images, seed=0)
    export_in_place(bundle_dir, calibration=calibration, progress=say)
    records = measure_engines(
        bundle_dir,
        spread(val_records, cfg.measure_images),
        int8=calibration is not None,
        warmup=cfg.warmup_images,
        say=say,
    )
    if calibration is not None and not int8_keeps_score(records):
        say(f"int8 did not keep the score within {SCORE_TOLERANCE}: the bundle ships fp32 only")
        drop_int8(bundle_dir)
    return records


def fastest(records: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The fastest record that keeps the score (what ``--engine auto`` picks where all of them
    can run)."""
    ok = [r for r in records if r.get("keeps_score") and r.get("images_per_s")]
    return max(ok, key=lambda r: float(r["images_per_s"])) if ok else None
