"""Training-speed options: channels-last convolutions, bf16 autocast and the warm-up schedule.

They change how a stage trains, never what the bundle holds: weights come back in the usual
layout (safetensors and ONNX want contiguous tensors) and the bundle loads as any other.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from steelscan.training import TrainConfig, train
from steelscan.training.module import WARMUP_STEPS, warmup_cosine


def test_warmup_cosine_rises_then_decays_to_two_percent() -> None:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = warmup_cosine(opt, 2000)
    rates = []
    for _ in range(2000):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert rates[0] == pytest.approx(1 / WARMUP_STEPS)
    assert rates[WARMUP_STEPS - 1] == pytest.approx(1.0)
    warm = rates[:WARMUP_STEPS]
    assert all(a <= b for a, b in zip(warm, warm[1:], strict=False))
    tail = rates[WARMUP_STEPS:]
    assert all(a >= b for a, b in zip(tail, tail[1:], strict=False))
    assert rates[-1] == pytest.approx(0.02, abs=1e-3)
    # a short run warms up over a tenth of it, and "flat" stays at the full rate
    opt2 = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    flat = warmup_cosine(opt2, 50, cosine=False)
    for _ in range(5):
        opt2.step()
        flat.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(1.0)


def test_channels_last_bf16_warmup_training_gives_an_ordinary_bundle(
    synth_small: Path, tmp_path: Path
) -> None:
    cfg = TrainConfig.tiny().with_overrides(
        {
            "run_dir": str(tmp_path / "runs"),
            "channels_last": True,
            "precision": "bf16-mixed",
            "scheduler": "warmup_cosine",
        }
    )
    out = train(synth_small, tmp_path / "model", cfg)
    from steelscan.bundle import load_bundle

    bundle = load_bundle(out)
    for stage in (bundle.classifier, bundle.segmenter):
        assert stage is not None
        convs = [p for p in stage.parameters() if p.ndim == 4]
        assert convs and all(p.is_contiguous() for p in convs)
    metrics = json.loads((out / "manifest.json").read_text())["metrics"]
    assert metrics["segmenter"]["global_steps"] == cfg.segmenter.epochs * 4
    # the per-step schedule really ran: the rate logged at the start of epoch 2 (step 4 of 8)
    # is warmup_cosine's, not the per-epoch cosine's (0.5 of the rate)
    log = (tmp_path / "runs" / "segmenter" / "logs" / "csv" / "metrics.csv").read_text()
    rates = [float(v) for v in _column(log, "lr-AdamW")]
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.segmenter.lr)
    sched = warmup_cosine(opt, 8)
    for _ in range(4):
        opt.step()
        sched.step()
    assert rates == pytest.approx([cfg.segmenter.lr, opt.param_groups[0]["lr"]])


def _column(csv_text: str, name: str) -> list[str]:
    lines = csv_text.strip().splitlines()
    i = lines[0].split(",").index(name)
    return [row.split(",")[i] for row in lines[1:] if row.split(",")[i]]
