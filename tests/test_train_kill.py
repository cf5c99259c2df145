"""`steelscan train --resume` after a real SIGKILL mid-epoch continues from the last checkpoint
and ends with a valid bundle (issue: training that survives a kill)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

EPOCHS = 6


def _train_cmd(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "steelscan", "train", str(data), "--out", str(out),
        "--preset", "tiny", "--no-classifier", "--no-export", "--epochs", str(EPOCHS),
        "--set", "progress=false", *extra,
    ]  # fmt: skip


def test_sigkill_mid_epoch_then_resume_ends_with_a_valid_bundle(synth_small, tmp_path):
    from steelscan.bundle import load_bundle

    out = tmp_path / "model"
    runs = tmp_path / "model.runs"
    last = runs / "segmenter" / "checkpoints" / "last.ckpt"
    log = (tmp_path / "first.log").open("w")
    proc = subprocess.Popen(_train_cmd(synth_small, out), stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 240
    while not last.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert last.exists(), (tmp_path / "first.log").read_text()[-3000:]
    first_ckpt = last.stat().st_mtime_ns
    time.sleep(0.3)  # into the next epoch: some of its steps done, its checkpoint not yet written
    if proc.poll() is not None:
        pytest.fail("training finished before it could be killed; raise EPOCHS")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    log.close()
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()  # a killed run leaves no bundle, only its run directory
    import torch

    ckpt = torch.load(last, map_location="cpu", weights_only=True)  # what the kill left
    epochs_done = int(ckpt["epoch"]) + 1
    assert 1 <= epochs_done < EPOCHS and last.stat().st_mtime_ns >= first_ckpt
    steps_per_epoch = int(ckpt["global_step"]) // epochs_done

    done = subprocess.run(
        _train_cmd(synth_small, out, "--resume"), capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    bundle = load_bundle(out, weights=True)  # every file present, hashes match, weights load
    seg = bundle.manifest.metrics["segmenter"]
    assert seg["resumed_from"] == str(last)
    # continued from the checkpoint to the end: the same steps per epoch, every epoch done once
    assert steps_per_epoch >= 1 and seg["global_steps"] == EPOCHS * steps_per_epoch
    assert bundle.segmenter is not None and bundle.manifest.postprocess.pixel_thresholds
