"""Benchmark: end-to-end two-stage inspection per engine and precision, against plain eager PyTorch.

Usage (from the repository root):

    .venv/bin/python bench/inference.py --model MODEL_DIR [--export-dir DIR] [--runs 5] [--write]

End to end means decode -> gate -> segment -> post-process -> RLE for 256x1600 images: by default
the real Severstal images of ``../shared/data/severstal`` (the 15 original JPEGs and the 23
re-encoded PNG/JPEGs), or the labelled set given with ``--labelled``.
Every configuration runs on the same model and the same images, in the same process, with the
runs interleaved (run 1 of every configuration, then run 2, ...) so machine load hits all of them
alike. Reported per configuration: images/s and the speed-up over the baseline (medians over
``--runs``), the median per-image latency, peak resident memory, the fraction of images the hard
gate let skip segmentation, how many (image, class) RLEs equal the torch fp32 ones, and the Kaggle
score (mean Dice over (image, class) pairs) on the labelled held-out set (``--labelled``).

Baseline: plain PyTorch eager fp32, no pipelining, batch 1 (read, inspect, encode, one image after
the other). The other configurations use :meth:`steelscan.inference.predictor.Predictor.stream`.

``--model`` is a trained bundle; ``bench/inference_model.py`` trains the one docs/benchmarks.md
reports (Unet/MobileNetV2 segmenter + MobileNetV2 gate from the ImageNet weights in
``../shared/weights``, on synthetic 256x1600 steel, with a 100-image held-out set). Without
``--export-dir`` the bundle is exported here (fp32 + int8, calibrated on ``--calibration``; the
labelled held-out set is never used for calibration). On a CUDA machine the torch engine also
runs on the GPU (fp32, bf16 and fp16 autocast) and ONNX Runtime's CUDA provider is used where
installed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _report  # bench/_report.py: shared machine name and doc writing
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from steelscan import rle  # noqa: E402

SHARED = REPO.parent / "shared" / "data" / "severstal"
DOC = REPO / "docs" / "benchmarks.md"
SECTION = "## Inference"


# --------------------------------------------------------------------------- measurement helpers


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (MiB): model, sessions, buffers, everything."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@dataclass
class Config:
    name: str
    engine: str
    precision: str
    batch: int
    pipelined: bool
    opts: dict[str, Any] = field(default_factory=dict)
    inspector: Any = None
    throughput: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    peak_rss: float = 0.0
    rles: dict[str, list[str]] = field(default_factory=dict)
    gated: int = 0
    errors: int = 0
    stages: dict[str, float] = field(default_factory=dict)

    def spec(self) -> dict[str, Any]:
        keys = ("name", "engine", "precision", "batch", "pipelined", "opts")
        return {k: getattr(self, k) for k in keys}


def run_baseline(cfg: Config, items: list[tuple[str, Path]]) -> list[Any]:
    """Plain loop: read -> inspect (gate, segment, post-process) -> RLE, one image at a time."""

    ins = cfg.inspector
    out = []
    for image_id, path in items:
        t0 = time.perf_counter()
        res = ins.inspect_batch([(image_id, path)])[0]
        t2 = time.perf_counter()
        rles = [c.rle() for c in res.classes]
        res.timings_ms["rle"] = (time.perf_counter() - t2) * 1000
        cfg.latencies.append((time.perf_counter() - t0) * 1000)
        out.append((res, rles))
    return out


def run_pipelined(cfg: Config, items: list[tuple[str, Path]], workers: int) -> list[Any]:
    out = []
    for pred in cfg.inspector.stream(items, workers=workers):
        res = pred.result
        t0 = time.perf_counter()
        rles = [c.rle() for c in res.classes]  # the consumer encodes, as `predict` does
        res.timings_ms["rle"] = (time.perf_counter() - t0) * 1000
        cfg.latencies.append(res.timings_ms.get("latency", float("nan")))
        out.append((res, rles))
    return out


def kaggle_score(rles: dict[str, list[str]], truth: dict[str, list[np.ndarray]]) -> float:
    """Mean Dice over every (image, class) pair of the labelled images (empty/empty = 1)."""
    from steelscan.evaluation.metrics import dice

    scores = []
    for image_id, masks in truth.items():
        if image_id not in rles:  # a --images subset need not cover every labelled image
            continue
        for k, t in enumerate(masks):
            scores.append(dice(rle.decode(rles[image_id][k]), t))
    return float(np.mean(scores)) if scores else float("nan")


def machine() -> str:
    import torch

    cpu = _report.cpu_name()
    import onnxruntime as ort

    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return (
        f"{cpu}, {os.cpu_count()} cores{gpu}; Python {platform.python_version()}, "
        f"torch {torch.__version__}, onnxruntime {ort.__version__}"
    )


def write_section(text: str) -> None:
    _report.write_section(SECTION, text)


# --------------------------------------------------------------------------- main


def build_configs(
    bundle: Path,
    batch: int,
    cuda: bool,
    ort_cuda: bool,
    bf16_ok: bool,
    openvino_ok: bool = False,
) -> list[Config]:
    cfgs = [Config("baseline: torch eager fp32, sequential", "torch", "fp32", 1, False)]
    for b in (1, batch):
        cfgs.append(Config(f"torch fp32 b{b}", "torch", "fp32", b, True))
        if bf16_ok:
            cfgs.append(
                Config(
                    f"torch bf16+channels_last b{b}",
                    "torch",
                    "bf16",
                    b,
                    True,
                    {"bf16": True, "channels_last": True},
                )
            )
        cfgs.append(Config(f"onnx fp32 b{b}", "onnx", "fp32", b, True))
        cfgs.append(Config(f"onnx int8 b{b}", "onnx", "int8", b, True, {"int8": True}))
        if openvino_ok:
            cfgs.append(Config(f"openvino fp32 b{b}", "openvino", "fp32", b, True))
            if bf16_ok:
                cfgs.append(
                    Config(
                        f"openvino bf16 b{b}", "openvino", "bf16", b, True, {"precision": "bf16"}
                    )
                )
            cfgs.append(Config(f"openvino int8 b{b}", "openvino", "int8", b, True, {"int8": True}))
            if bf16_ok:
                cfgs.append(
                    Config(
                        f"openvino int8+bf16 b{b}",
                        "openvino",
                        "int8+bf16",
                        b,
                        True,
                        {"int8": True, "precision": "bf16"},
                    )
                )
    if cuda:
        for b in (1, batch):
            cfgs.append(
                Config(f"torch cuda fp32 b{b}", "torch", "fp32", b, True, {"device": "cuda"})
            )
            cfgs.append(
                Config(
                    f"torch cuda bf16 b{b}",
                    "torch",
                    "bf16",
                    b,
                    True,
                    {"device": "cuda", "bf16": True, "channels_last": True},
                )
            )
            cfgs.append(
                Config(
                    f"torch cuda fp16 b{b}",
                    "torch",
                    "fp16",
                    b,
                    True,
                    {"device": "cuda", "fp16": True, "channels_last": True},
                )
            )
            if ort_cuda:
                cfgs.append(
                    Config(f"onnx cuda fp32 b{b}", "onnx", "fp32", b, True, {"device": "cuda"})
                )
    for c in cfgs:
        if c.engine == "torch":
            c.opts.setdefault("device", "cpu")
    return cfgs


def child(job: dict[str, Any]) -> dict[str, Any]:
    """One timed run of one configuration, in a fresh process (own memory peak, own threads)."""
    from steelscan.inference.predictor import Inspector

    c = Config(**job["config"])
    items = [(i, Path(p)) for i, p in job["items"]]
    c.inspector = Inspector(job["bundle"], engine=c.engine, batch_size=c.batch, **c.opts)
    pp = c.inspector.postprocess
    warm = items[: max(2, c.batch)]  # first-call allocations, oneDNN/ORT kernel selection
    run_pipelined(c, warm, job["workers"]) if c.pipelined else run_baseline(c, warm)
    c.latencies.clear()
    t0 = time.perf_counter()
    out = run_pipelined(c, items, job["workers"]) if c.pipelined else run_baseline(c, items)
    elapsed = time.perf_counter() - t0
    stages: dict[str, float] = {}
    for res, _ in out:
        for k, v in res.timings_ms.items():
            if k != "latency":
                stages[k] = stages.get(k, 0.0) + v / len(out)
    return {
        "throughput": len(items) / elapsed,
        "latencies": c.latencies,
        "peak_rss": peak_rss_mb(),
        "rles": {i: rles for (i, _), (_, rles) in zip(items, out, strict=True)},
        "errors": sum(res.error is not None for res, _ in out),
        "gated": sum(
            pp.gate_mode == "hard" and res.defect_probability < pp.gate_threshold for res, _ in out
        ),
        "stages": stages,
    }


def run_child(job: dict[str, Any]) -> dict[str, Any]:
    import json
    import subprocess

    proc = subprocess.run(
        [sys.executable, __file__, "--child"],
        input=json.dumps(job),
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{job['config']['name']} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    if sys.argv[1:] == ["--child"]:
        import json

        print(json.dumps(child(json.loads(sys.stdin.read()))))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, required=True, help="trained model bundle")
    ap.add_argument("--export-dir", type=Path, help="bundle already exported with --int8")
    ap.add_argument(
        "--calibration", type=Path, default=SHARED / "reencoded", help="int8 calibration data"
    )
    ap.add_argument("--labelled", type=Path, default=SHARED, help="held-out labelled dataset")
    ap.add_argument(
        "--images", type=Path, nargs="*", help="throughput images (default: the --labelled ones)"
    )
    ap.add_argument("--runs", type=int, default=5, help="timed runs per configuration (>= 5)")
    ap.add_argument("--batch", type=int, default=8, help="the larger batch size")
    ap.add_argument("--workers", type=int, default=2, help="decode/post-process threads")
    ap.add_argument("--only", nargs="*", help="substrings of configuration names to run")
    ap.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = ap.parse_args()
    if args.runs < 5:
        print("error: --runs must be at least 5 (the median of several runs is reported)")
        return 2
    if not (args.model / "manifest.json").is_file():
        print(f"error: {args.model}: not a model bundle (no manifest.json)", file=sys.stderr)
        return 2
    if not SHARED.is_dir() and not args.images:
        print(f"error: {SHARED} not found; pass --images and --labelled", file=sys.stderr)
        return 2

    import onnxruntime as ort
    import torch

    from steelscan.data import load_dataset
    from steelscan.inference.engines import bf16_supported
    from steelscan.inference.export import export_bundle

    load0 = os.getloadavg()[0]
    exported = args.export_dir
    tmp = None
    if exported is None:
        tmp = tempfile.TemporaryDirectory(prefix="steelscan-bench-")
        exported = Path(tmp.name) / "exported"
        print(f"exporting {args.model} (fp32 + int8, calibration {args.calibration}) ...")
        export_bundle(args.model, exported, int8=True, calibration=args.calibration)

    labelled = load_dataset(args.labelled)
    truth = {
        r.image_id: [r.mask(k) for k in range(len(labelled.classes))] for r in labelled.records
    }
    if args.images:
        paths = list(args.images)
    else:
        paths = [r.path for r in labelled.records]
        if args.labelled == SHARED:  # the 15 originals are few: add the 23 re-encoded copies
            paths += [r.path for r in load_dataset(SHARED / "reencoded").records]
    items = [(Path(p).name, Path(p)) for p in paths]
    # Ground truth is keyed by ImageId (``<id>.jpg``); files may be stored as ``<id>.png``.
    id_of = {r.path.name: r.image_id for r in labelled.records}

    cuda = torch.cuda.is_available()
    ort_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    try:
        import openvino  # noqa: F401

        openvino_ok = True
    except ImportError:
        openvino_ok = False
    cfgs = build_configs(exported, args.batch, cuda, ort_cuda, bf16_supported("cpu"), openvino_ok)
    if args.only:
        cfgs = [
            c for c in cfgs if c.name.startswith("baseline") or any(s in c.name for s in args.only)
        ]
    from steelscan.inference.predictor import Inspector

    probe = Inspector(exported, engine="onnx")  # fails early if the export lacks a stage
    pp, manifest = probe.postprocess, probe.manifest
    del probe

    print(f"{len(items)} images, {len(cfgs)} configurations, {args.runs} runs each")
    for run in range(args.runs):
        for c in cfgs:
            job = {
                "config": c.spec(),
                "items": [(i, str(p)) for i, p in items],
                "bundle": str(exported),
                "workers": args.workers,
            }
            r = run_child(job)
            c.throughput.append(r["throughput"])
            c.latencies += r["latencies"]
            c.peak_rss = max(c.peak_rss, r["peak_rss"])
            if run == 0:
                c.rles, c.errors, c.gated, c.stages = (
                    r["rles"],
                    r["errors"],
                    r["gated"],
                    r["stages"],
                )
            print(
                f"run {run + 1}/{args.runs}  {c.name:<40} {r['throughput']:6.2f} img/s", flush=True
            )

    base, ref = cfgs[0], cfgs[0]
    fp32_score = None
    rows = []
    for c in cfgs:
        tp = statistics.median(c.throughput)
        score = kaggle_score({id_of.get(k, k): v for k, v in c.rles.items() if k in id_of}, truth)
        if c is ref:
            fp32_score = score
        pairs = [(a, b) for k in ref.rles for a, b in zip(ref.rles[k], c.rles[k], strict=True)]
        same = sum(a == b for a, b in pairs)
        rows.append(
            {
                "name": c.name,
                "tp": tp,
                "speedup": tp / statistics.median(base.throughput),
                "lat": statistics.median(c.latencies),
                "score": score,
                "same": f"{same}/{len(pairs)}",
                "gated": f"{c.gated}/{len(items)}",
                "rss": c.peak_rss,
                "c": c,
            }
        )
    ok = [r for r in rows if abs(r["score"] - fp32_score) <= 0.005 and r["c"] is not base]
    best = max(ok, key=lambda r: r["tp"]) if ok else None

    cmd = "python bench/inference.py " + " ".join(sys.argv[1:])
    real = (
        SHARED.resolve() in Path(args.labelled).resolve().parents
        or Path(args.labelled).resolve() == SHARED.resolve()
    )
    kind = "real Severstal" if real else "labelled (not from ../shared, e.g. synthetic)"
    metrics = manifest.metrics or {}
    val = (
        f"its validation Kaggle score {metrics['kaggle_score']:.4f}"
        if isinstance(metrics.get("kaggle_score"), float)
        else "no validation metrics in its manifest"
    )
    lines = [
        SECTION,
        "",
        f"Command: `{cmd}`  ",
        f"Machine: {machine()}  ",
        f"Date: {dt.date.today().isoformat()}; 1-minute load average at start: {load0:.1f} "
        f"(the cores are shared with other jobs, so absolute numbers are noisy; ratios are "
        f"measured in the same run with interleaved repetitions)  ",
        f"Model: `{args.model}` ({manifest.segmenter.arch}/"
        f"{manifest.segmenter.encoder} segmenter, "
        f"{manifest.classifier.arch} gate; gate mode {pp.gate_mode}, "
        f"threshold {pp.gate_threshold}; {val})  ",
        f"Data: {len(items)} {kind} 256x1600 images; median of {args.runs} runs; "
        f"decode/post-process threads: {args.workers}; Kaggle score on the {len(truth)} labelled "
        f"images of `{args.labelled}` (not used for training or calibration)  ",
        "Reproduce: `python bench/inference_model.py --out OUT` trains a model like this one "
        "(and writes OUT/train_data, OUT/heldout), then `python bench/inference.py --model "
        "OUT/model --calibration OUT/train_data --labelled OUT/heldout --runs 5 --write`; "
        "`--export-dir EXPORTED` reuses an export.  ",
        "Latency: sequential = wall time per image; pipelined = from the start of the image's "
        "decode until its result is ready (includes queueing behind earlier images).",
        "",
        "| configuration | img/s | speed-up vs baseline | median latency (ms/img) | "
        "Kaggle score | RLE = torch fp32 | gate skipped segmentation | peak RSS (MiB) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['tp']:.2f} | {r['speedup']:.2f}x | {r['lat']:.0f} | "
            f"{r['score']:.4f} | {r['same']} | {r['gated']} | {r['rss']:.0f} |"
        )
    cols = ["decode", "preprocess", "classify", "segment", "model", "postprocess", "rle"]
    lines += [
        "",
        "Where the time goes: mean ms per image and stage (run 1). Pipelined stages overlap in "
        "threads, so they add up to more than the wall time; `model` is the batch's gate + "
        "segment time (preprocessing included) divided by its images.",
        "",
        "| configuration | " + " | ".join(cols) + " |",
        "| --- |" + " ---: |" * len(cols),
    ]
    for c in cfgs:
        cells = [f"{c.stages[k]:.1f}" if k in c.stages else "" for k in cols]
        lines.append(f"| {c.name} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        "Peak RSS: the peak resident memory of the process that ran the configuration (a fresh "
        "process per run, model loading included)."
    )
    lines.append("")
    if best is not None:
        verdict = "meets" if best["speedup"] >= 4 else "does NOT meet"
        lines.append(
            f"Fastest configuration within 0.005 Kaggle score of torch fp32: **{best['name']}**, "
            f"{best['speedup']:.2f}x the baseline end to end; this {verdict} the 4x bar."
        )
    errors = sum(c.errors for c in cfgs)
    if errors:
        lines.append(f"\n{errors} image results had errors (see the run output).")
    text = "\n".join(lines) + "\n"
    print()
    print(text)
    if args.write:
        write_section(text)
        print(f"wrote the {SECTION!r} section of {DOC}")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
