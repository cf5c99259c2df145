"""Shared test fixtures. Real data is read in place from ../shared (never copied into the repo);
tests that need it skip with a reason where it is absent, as on a user's fresh clone."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("STEELSCAN_SHARED", REPO.parent / "shared"))


def shared_path(*parts: str) -> Path:
    """A path under ../shared, or skip the calling test with a clear reason."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"{p} is absent (real data lives in ../shared beside the repo)")
    return p


@pytest.fixture(scope="session")
def severstal_dir() -> Path:
    """The 15 original Severstal JPEGs with their train.csv."""
    return shared_path("data", "severstal")


@pytest.fixture(scope="session")
def severstal_reencoded_dir() -> Path:
    return shared_path("data", "severstal", "reencoded")


@pytest.fixture(scope="session")
def neu_dir() -> Path:
    return shared_path("data", "neu")


@pytest.fixture(scope="session")
def reference_rle_csv() -> Path:
    return shared_path("data", "severstal", "reference", "train_rle_partial.csv")


@pytest.fixture(scope="session")
def weights_dir() -> Path:
    return shared_path("weights")


@pytest.fixture(scope="session")
def synth_small(tmp_path_factory) -> Path:
    """A small synthetic Severstal-layout dataset at reduced size (fast to train on)."""
    from steelscan.data.synthetic import synthesize

    return synthesize(tmp_path_factory.mktemp("synth_small"), n=32, seed=1, height=128, width=800)


@pytest.fixture(scope="session")
def synth_full(tmp_path_factory) -> Path:
    """A few synthetic images at the real 256x1600 size."""
    from steelscan.data.synthetic import synthesize

    return synthesize(tmp_path_factory.mktemp("synth_full"), n=12, seed=2)


@pytest.fixture(scope="session")
def trained_bundle(tmp_path_factory, synth_small) -> Path:
    """A tiny two-stage model trained by the project's own code on ``synth_small``.

    Shared by inference, export and service tests; trains once per session (seconds on a CPU).
    """
    from steelscan.training import TrainConfig, train

    out = tmp_path_factory.mktemp("bundle") / "model"
    cfg = TrainConfig.tiny()
    return train(synth_small, out, cfg)
