"""``ema_decay``: validation, the best checkpoint and the bundle hold the weights' moving average.

On a few hundred images the validation figure of the raw weights jumps between epochs; the
average is the steadier model. These tests check that the average really is what gets judged and
saved (not the last step's weights), and that a run with it resumes from its checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import torch

from steelscan.bundle import load_bundle
from steelscan.training import TrainConfig, train


def _cfg(tmp_path: Path, **extra: object) -> TrainConfig:
    return TrainConfig.tiny().with_overrides(
        {"run_dir": str(tmp_path / "runs"), "ema_decay": 0.5, **extra}
    )


def test_the_bundle_holds_the_average_not_the_last_step(synth_small: Path, tmp_path: Path) -> None:
    out = train(synth_small, tmp_path / "model", _cfg(tmp_path))
    ckpts = tmp_path / "runs" / "segmenter" / "checkpoints"
    last = torch.load(ckpts / "last.ckpt", map_location="cpu", weights_only=True)
    averaged, current = last["state_dict"], last["current_model_state"]
    assert averaged.keys() == current.keys()
    moved = [k for k in averaged if averaged[k].is_floating_point()]
    assert any(not torch.equal(averaged[k], current[k]) for k in moved)
    best = next(ckpts.glob("best-*.ckpt"))
    best_state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
    seg = load_bundle(out).segmenter
    assert seg is not None
    saved = seg.state_dict()
    for name, value in saved.items():
        assert torch.equal(value, best_state[f"model.{name}"]), name


def test_a_run_with_the_average_resumes(synth_small: Path, tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    train(synth_small, tmp_path / "model", cfg)
    epochs = cfg.segmenter.epochs + 1
    more = cfg.model_copy(
        update={"resume": True, "segmenter": cfg.segmenter.model_copy(update={"epochs": epochs})}
    )
    out = train(synth_small, tmp_path / "model", more)
    last = torch.load(
        tmp_path / "runs" / "segmenter" / "checkpoints" / "last.ckpt",
        map_location="cpu",
        weights_only=True,
    )
    # the resumed run trained one more epoch from where the first stopped, with the average
    assert last["global_step"] == epochs * 4
    assert "current_model_state" in last and "averaging_state" in last
    assert load_bundle(out).segmenter is not None
