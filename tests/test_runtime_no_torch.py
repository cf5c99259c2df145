"""The deploy path needs no torch: predict, score and the default engine run in a fresh interpreter
in which importing torch, timm, smp, Lightning or albumentations is impossible."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tiny_models import tiny_bundle

TRAIN_ONLY = (
    "torch",
    "torchvision",
    "timm",
    "segmentation_models_pytorch",
    "lightning",
    "albumentations",
)

# Runs the CLI with the training packages made unimportable, then reports what got imported.
RUNNER = f"""
import json, sys
BLOCKED = {TRAIN_ONLY!r}
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None
sys.meta_path.insert(0, Block())
from steelscan.cli import main
code = 0
try:
    main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
print("RESULT " + json.dumps({{"code": code, "loaded": loaded}}))
"""


def run_without_torch(*argv: str | Path) -> tuple[dict, str]:
    proc = subprocess.run(
        [sys.executable, "-c", RUNNER, *map(str, argv)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    assert line is not None, f"runner failed:\n{proc.stdout}\n{proc.stderr}"
    return json.loads(line[len("RESULT ") :]), proc.stderr


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    from steelscan.inference.export import export_bundle

    root = tmp_path_factory.mktemp("notorch")
    bundle = tiny_bundle(root / "model")
    return export_bundle(bundle, root / "model-onnx")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("notorch-images")
    rng = np.random.default_rng(0)
    for i in range(3):
        arr = rng.integers(0, 255, (256, 320), dtype=np.uint8)
        Image.fromarray(arr).save(folder / f"strip{i}.png")
    return folder


@pytest.mark.parametrize("engine", ["openvino", "onnx", "auto"])
def test_predict_runs_without_torch(exported, images, tmp_path, engine):
    out = tmp_path / "out"
    result, err = run_without_torch("predict", exported, images, "--out", out, "--engine", engine)
    assert result == {"code": 0, "loaded": []}, err
    rows = (out / "submission.csv").read_text().splitlines()
    assert len(rows) == 1 + 3 * 4  # header + every image x class
    if engine == "auto":
        assert "engine: openvino fp32" in err  # an exported bundle defaults to the fast engine


def test_score_runs_without_torch(tmp_path):
    truth = tmp_path / "truth.csv"
    truth.write_text("ImageId,ClassId,EncodedPixels\na.jpg,1,1 3\n")
    result, err = run_without_torch("score", truth, truth)
    assert result == {"code": 0, "loaded": []}, err


def test_torch_engine_without_torch_says_how_to_install_it(exported, images, tmp_path):
    out = tmp_path / "out"
    result, err = run_without_torch("predict", exported, images, "--out", out, "--engine", "torch")
    assert result["code"] == 2
    assert 'pip install "steelscan[train]"' in err and "Traceback" not in err
    assert not (out / "submission.csv").exists()
