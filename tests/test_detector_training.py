"""The box detector stage: it learns, it trains through `steelscan train`, its bundle reloads."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

torch = pytest.importorskip("torch")

NEU_CLASSES = ["crazing", "inclusion", "patches", "pitted_surface", "rolled-in_scale", "scratches"]


def _neu_subset(neu_dir: Path, dst: Path, per_class: int = 3) -> Path:
    (dst / "images").mkdir(parents=True)
    (dst / "annotations").mkdir()
    for cls in NEU_CLASSES:
        for i in range(1, per_class + 1):
            shutil.copy(neu_dir / "images" / f"{cls}_{i}.jpg", dst / "images")
            shutil.copy(neu_dir / "annotations" / f"{cls}_{i}.xml", dst / "annotations")
    return dst


def _synthetic_boxes(n: int, size: int = 96, seed: int = 0):
    """Grey noise with one bright square per image (class 0) or one dark bar (class 1)."""
    rng = np.random.default_rng(seed)
    images, targets = [], []
    for i in range(n):
        img = rng.normal(0, 0.2, (3, size, size)).astype(np.float32)
        s = int(rng.integers(20, 40))
        x, y = (int(v) for v in rng.integers(4, size - s - 4, 2))
        cls = i % 2
        if cls == 0:
            img[:, y : y + s, x : x + s] += 2.0
            box = [x, y, x + s, y + s]
        else:
            img[:, y : y + s // 3, x : x + s] -= 2.0
            box = [x, y, x + s, y + s // 3]
        images.append(img)
        targets.append(
            {"boxes": torch.tensor([box], dtype=torch.float32), "labels": torch.tensor([cls])}
        )
    return torch.from_numpy(np.stack(images)), targets


def test_detector_learns_synthetic_boxes():
    """A few dozen steps on squares and bars: the best box of each image finds its object."""
    from steelscan.data.records import Box
    from steelscan.evaluation.detection import box_map
    from steelscan.inference.boxes import select_boxes
    from steelscan.models.factory import create_detector

    torch.manual_seed(0)
    x, targets = _synthetic_boxes(8)
    model = create_detector("fcos", "mobilenetv3_small_050", 2, fpn_channels=32)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    first = None
    for _ in range(60):
        loss = sum(model.losses(x, targets).values())
        first = float(loss) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss) < 0.5 * first
    model.eval()
    with torch.no_grad():
        boxes, scores = model(x)
    dets = [select_boxes(b.numpy(), s.numpy(), 96, 96) for b, s in zip(boxes, scores, strict=True)]
    truths = [[Box(int(t["labels"][0]), *map(int, t["boxes"][0].tolist()))] for t in targets]
    m = box_map(truths, dets, [(96, 96)] * len(truths), ["square", "bar"])
    assert m["map50"] > 0.5, m


def test_detector_bundle_reloads_with_identical_outputs(tmp_path):
    from tiny_models import tiny_detector_bundle

    from steelscan.bundle import load_bundle
    from steelscan.models.factory import create_detector

    torch.manual_seed(1)
    det = create_detector("fcos", "mobilenetv3_small_050", 6, fpn_channels=32)
    state = {
        k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v
        for k, v in det.state_dict().items()
    }
    path = tiny_detector_bundle(tmp_path / "b", detector_state=state)
    loaded = load_bundle(path).detector.eval()
    det.load_state_dict(state)
    det.eval()
    x = torch.randn(2, 3, 200, 200)
    with torch.no_grad():
        a, b = det(x), loaded(x)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["detector"]["arch"] == "fcos"
    assert "detector.safetensors" in manifest["files"]


def test_train_on_neu_trains_the_detector_by_default(neu_dir, tmp_path):
    """VOC boxes switch the detector on ("auto"); the bundle predicts boxes with scores and the
    manifest records pycocotools box mAP on the validation split."""
    from steelscan.inference.predictor import Predictor
    from steelscan.training import TrainConfig, train

    data = _neu_subset(neu_dir, tmp_path / "neu")
    cfg = TrainConfig.tiny().with_overrides(
        {"segmenter.enabled": False, "run_dir": str(tmp_path / "runs")}
    )
    out = train(data, tmp_path / "model", cfg, progress=False)
    m = json.loads((out / "manifest.json").read_text())
    assert m["detector"]["arch"] == "fcos" and m["segmenter"] is None
    assert 0.0 <= m["metrics"]["box_map50"] <= 1.0
    assert [c["class"] for c in m["metrics"]["box_ap_per_class"]] == NEU_CLASSES
    assert m["metrics"]["detector"]["epochs_run"] >= 1
    predictor = Predictor(out, engine="torch", workers=0, gate_mode="none")
    pp = predictor.postprocess.model_copy(update={"box_score_threshold": 0.0})
    predictor.postprocess = pp
    res = predictor.inspect(data / "images" / "scratches_1.jpg")
    assert res.detections, "an untuned detector at threshold 0 still yields boxes"
    d = res.to_dict(include_rle=False)["detections"][0]
    assert set(d) >= {"class_id", "name", "score", "box"} and d["name"] in NEU_CLASSES
    x1, y1, x2, y2 = d["box"]
    assert 0 <= x1 < x2 <= 200 and 0 <= y1 < y2 <= 200


def test_detector_switched_on_without_boxes_is_a_clear_error(synth_small, tmp_path):
    from steelscan.training import TrainConfig, train
    from steelscan.training.config import ConfigError

    data = synth_small
    cfg = TrainConfig.tiny().with_overrides({"detector.enabled": True})
    with pytest.raises(ConfigError, match="no boxes"):
        train(data, tmp_path / "model", cfg, progress=False)


def test_detector_alone_trains_and_resumes_from_its_last_checkpoint(neu_dir, tmp_path):
    """Gate and segmenter off: a detector-only bundle. A second run with more epochs and
    ``resume`` continues the detector's Lightning run instead of starting over."""
    from steelscan.bundle import read_manifest
    from steelscan.training import TrainConfig, train

    data = _neu_subset(neu_dir, tmp_path / "neu", per_class=2)
    base = {
        "classifier.enabled": False,
        "segmenter.enabled": False,
        "run_dir": str(tmp_path / "runs"),
        "limit_train_batches": 2,
    }
    cfg = TrainConfig.tiny().with_overrides(base)
    first = read_manifest(train(data, tmp_path / "model", cfg, progress=False))
    assert first.classifier is None and first.segmenter is None and first.detector is not None
    assert first.metrics["detector"]["epochs_run"] == 1
    assert first.metrics["detector"]["resumed_from"] is None
    cfg2 = TrainConfig.tiny().with_overrides({**base, "detector.epochs": 2, "resume": True})
    second = read_manifest(train(data, tmp_path / "model", cfg2, progress=False))
    assert second.metrics["detector"]["resumed_from"].endswith("last.ckpt")
    assert second.metrics["detector"]["epochs_run"] == 2
    assert "box_map50_after_tuning" in second.metrics


@pytest.mark.parametrize(
    ("encoder", "weights"),
    [
        ("mobilenetv2_100", "mobilenet_v2-b0353104.pth"),
        ("tf_efficientnet_lite0", "efficientnet-lite0-57934424.pth"),
    ],
)
def test_imagenet_weights_from_shared_load_into_the_detector_encoder(encoder, weights):
    """Both ImageNet files in ../shared/weights fill every tensor of the detector's encoder, and
    the encoder then computes what the same file gives a plain timm feature extractor."""
    import timm
    from conftest import shared_path

    from steelscan.models.factory import create_detector
    from steelscan.models.pretrained import load_local_weights

    path = shared_path("weights", weights)
    model = create_detector("fcos", encoder, 6, encoder_weights=str(path))
    report = model.weights_report
    assert report.loaded == report.total and not report.missing
    ref = timm.create_model(encoder, features_only=True, out_indices=(2, 3, 4))
    load_local_weights(ref, path)
    model.eval()
    ref.eval()
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        for a, b in zip(model.encoder(x), ref(x), strict=True):
            assert torch.allclose(a, b)
