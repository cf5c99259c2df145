"""Shared test fixtures. Real data is read in place from ../shared (never copied into the repo);
tests that need it skip with a reason where it is absent, as on a user's fresh clone."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from serving import serve_process

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


# -- inspection service (tests/test_service.py, tests/test_web.py) ------------------------------
@pytest.fixture(scope="session")
def service_images(tmp_path_factory, trained_bundle) -> list[Path]:
    """Real Severstal images (JPEG and PNG) resized to the tiny model's size; synthetic without
    ../shared. The tiny model is trained at a reduced size, so full-size images are 'wrong size'."""
    import json

    from PIL import Image

    meta = json.loads((trained_bundle / "manifest.json").read_text())
    size = (meta["image_width"], meta["image_height"])
    src = sorted((SHARED / "data" / "severstal" / "images").glob("*.jpg"))[:3]
    if not src:
        from steelscan.data.synthetic import synthesize

        root = synthesize(
            tmp_path_factory.mktemp("svc_synth"),
            n=3,
            seed=5,
            height=size[1],
            width=size[0],
            progress=False,
        )
        src = sorted((root / "train_images").glob("*.jpg"))
    out = tmp_path_factory.mktemp("service_images")
    paths = []
    for i, p in enumerate(src):
        img = Image.open(p).convert("RGB").resize(size, Image.Resampling.BILINEAR)
        dst = out / (p.stem + (".png" if i == 1 else ".jpg"))
        img.save(dst)
        paths.append(dst)
    return paths


@pytest.fixture(scope="session")
def service_bundle(tmp_path_factory, trained_bundle, service_images) -> Path:
    """A copy of ``trained_bundle`` whose thresholds make its masks non-empty on the test images.

    The tiny model is barely trained, so at its tuned thresholds it finds nothing; the service
    tests need real masks to check RLE, areas and boxes. Pixel thresholds are set at each class's
    97th percentile of mask probability on the test images; class 4 is made never present (its
    presence threshold is above 1) so 'present after gating' and candidate masks are exercised.
    """
    import shutil

    import numpy as np

    from steelscan.imageio import read_image
    from steelscan.inference.predictor import Inspector
    from steelscan.manifest import ModelManifest

    dst = tmp_path_factory.mktemp("service_bundle") / "model"
    shutil.copytree(trained_bundle, dst)
    insp = Inspector(dst)
    raws = insp.raw([read_image(p) for p in service_images], skip_gated=False)
    probs = np.stack([r.mask_probs for r in raws])  # (N, K, H, W)
    k = probs.shape[1]
    pixel = [float(np.quantile(probs[:, i], 0.97)) for i in range(k)]
    manifest = ModelManifest.model_validate_json((dst / "manifest.json").read_text())
    pp = manifest.postprocess.model_copy(
        update={
            "gate_mode": "hard",
            "gate_threshold": 0.0,
            "class_thresholds": [0.0] * (k - 1) + [1.5],
            "pixel_thresholds": pixel,
            "min_areas": [0] * k,
            "min_component_areas": [0] * k,
        }
    )
    manifest = manifest.model_copy(update={"postprocess": pp, "name": "service-test-model"})
    (dst / "manifest.json").write_text(manifest.model_dump_json(indent=2))
    return dst


@pytest.fixture(scope="session")
def service_url(service_bundle, tmp_path_factory):
    """A real ``steelscan serve`` process on 127.0.0.1 (upload limit 2 MB, queue bound 1)."""
    args = [str(service_bundle), "--max-upload-mb", "2", "--max-queue", "1", "--max-batch", "8"]
    log = tmp_path_factory.mktemp("service_log") / "server.log"
    with serve_process([*args, "--log-level", "warning"], log) as url:
        yield url
