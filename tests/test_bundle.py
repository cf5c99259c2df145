"""Model bundles: exact save/load round trips, atomic re-saves, manifest updates, and a clear
BundleError naming the file for every way a bundle can be broken."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import steelscan
from steelscan.bundle import (
    BundleError,
    LoadedBundle,
    load_bundle,
    load_model,
    read_manifest,
    save_bundle,
    update_manifest,
)
from steelscan.manifest import MANIFEST_NAME, ModelManifest, PostProcess
from steelscan.models.factory import create_classifier, create_segmenter, spec_for

K = 4


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _manifest(classifier=None, segmenter=None, in_channels: int = 1) -> ModelManifest:
    return ModelManifest(
        steelscan_version=steelscan.__version__,
        created="2026-01-01T00:00:00+00:00",
        classes=[f"class_{i}" for i in range(1, K + 1)],
        class_ids=list(range(1, K + 1)),
        in_channels=in_channels,
        image_height=256,
        image_width=1600,
        classifier=classifier,
        segmenter=segmenter,
        postprocess=PostProcess(
            class_thresholds=[0.5] * K,
            pixel_thresholds=[0.5] * K,
            min_areas=[0] * K,
            min_component_areas=[0] * K,
        ),
    )


def _warm(model: torch.nn.Module, x: torch.Tensor) -> torch.nn.Module:
    """One train-mode forward so BatchNorm running stats differ from their init (the round trip
    must carry buffers, not just parameters)."""
    model.train()
    with torch.no_grad():
        model(x)
    return model.eval()


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    x = torch.randn(2, 1, 64, 96)
    clf = _warm(create_classifier("mobilenetv2_100", K, in_channels=1), x)
    seg = _warm(create_segmenter("resunet", None, K, in_channels=1, aux_head=True), x)
    return clf, seg


@pytest.fixture()
def bundle(tmp_path, models) -> Path:
    clf, seg = models
    man = _manifest(spec_for(clf), spec_for(seg))
    return save_bundle(tmp_path / "model", man, classifier=clf, segmenter=seg)


def test_round_trip_gives_identical_outputs(bundle, models) -> None:
    clf, seg = models
    loaded = load_bundle(bundle)
    assert isinstance(loaded, LoadedBundle) and loaded.path == bundle
    assert not loaded.classifier.training and not loaded.segmenter.training
    x = torch.randn(2, 1, 80, 200)
    with torch.no_grad():
        assert torch.equal(loaded.classifier(x), clf(x))
        assert torch.equal(loaded.segmenter(x), seg(x))
        assert torch.equal(loaded.segmenter.forward_with_aux(x)[1], seg.forward_with_aux(x)[1])
    assert loaded.manifest == ModelManifest.model_validate_json(
        (bundle / MANIFEST_NAME).read_text()
    )
    # the layout other tools rely on
    assert sorted(p.name for p in bundle.iterdir()) == [
        "classifier.safetensors",
        "manifest.json",
        "segmenter.safetensors",
    ]
    raw = json.loads((bundle / MANIFEST_NAME).read_text())
    assert raw["segmenter"]["arch"] == "resunet" and raw["segmenter"]["aux_head"] is True
    assert raw["classifier"]["weights_file"] == "classifier.safetensors"
    sd = load_file(str(bundle / "segmenter.safetensors"))
    assert set(sd) == set(seg.state_dict())


def test_smp_segmenter_only_bundle(tmp_path) -> None:
    seg = _warm(
        create_segmenter("unet", "mobilenet_v2", K, in_channels=3), torch.randn(2, 3, 64, 64)
    )
    path = save_bundle(
        tmp_path / "seg", _manifest(segmenter=spec_for(seg), in_channels=3), None, seg
    )
    loaded = load_model(path)
    assert loaded.classifier is None
    x = torch.randn(1, 3, 200, 200)
    with torch.no_grad():
        assert torch.equal(loaded.segmenter(x), seg(x))
    # the package-level entry point and a path to manifest.json work too
    assert steelscan.load_model(path / MANIFEST_NAME).segmenter is not None


def test_resave_keeps_other_files_and_leaves_no_temp_dirs(bundle, models) -> None:
    clf, seg = models
    (bundle / "onnx").mkdir()
    (bundle / "onnx" / "segmenter.onnx").write_bytes(b"onnx bytes")
    (bundle / "report.html").write_text("<html></html>")
    seg2 = create_segmenter("resunet", None, K, in_channels=1, aux_head=True).eval()
    save_bundle(bundle, _manifest(spec_for(clf), spec_for(seg2)), clf, seg2)
    assert (bundle / "onnx" / "segmenter.onnx").read_bytes() == b"onnx bytes"
    assert (bundle / "report.html").read_text() == "<html></html>"
    assert [p.name for p in bundle.parent.iterdir()] == ["model"]  # no .tmp / .old leftovers
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(load_bundle(bundle).segmenter(x), seg2(x))


def test_update_manifest_rewrites_thresholds(bundle) -> None:
    pp = PostProcess(
        gate_mode="soft",
        gate_threshold=0.3,
        class_thresholds=[0.4] * K,
        pixel_thresholds=[0.6, 0.5, 0.45, 0.7],
        min_areas=[100, 0, 50, 600],
        min_component_areas=[10] * K,
    )
    new = update_manifest(bundle, postprocess=pp, metrics={"kaggle": 0.81})
    assert new.postprocess == pp
    again = load_bundle(bundle).manifest
    assert again.postprocess == pp and again.metrics == {"kaggle": 0.81}
    with pytest.raises(BundleError, match=r"manifest.json: update is invalid: field 'postprocess"):
        update_manifest(bundle, postprocess={"gate_mode": "sometimes"})
    with pytest.raises(BundleError, match="unknown manifest field"):
        update_manifest(bundle, thresholds=[0.5])
    assert load_bundle(bundle).manifest.postprocess == pp  # failed updates wrote nothing
    assert [p.name for p in bundle.iterdir() if p.name.startswith(".")] == []


# --------------------------------------------------------------------------- errors


def test_missing_directory(tmp_path) -> None:
    with pytest.raises(BundleError, match=r"model bundle .*nowhere does not exist"):
        load_bundle(tmp_path / "nowhere")
    f = tmp_path / "file.bin"
    f.write_bytes(b"x")
    with pytest.raises(BundleError, match="is not a directory"):
        load_bundle(f)


def test_missing_manifest(bundle) -> None:
    (bundle / MANIFEST_NAME).unlink()
    with pytest.raises(BundleError, match=r"manifest.json is missing"):
        load_bundle(bundle, weights=True)


def test_manifest_not_json(bundle) -> None:
    (bundle / MANIFEST_NAME).write_text("{ not json")
    with pytest.raises(BundleError, match=r"manifest.json is not valid JSON \(line 1"):
        load_bundle(bundle, weights=True)


def test_manifest_names_the_bad_field(bundle) -> None:
    data = json.loads((bundle / MANIFEST_NAME).read_text())
    del data["postprocess"]
    data["in_channels"] = "one"
    (bundle / MANIFEST_NAME).write_text(json.dumps(data))
    with pytest.raises(BundleError) as err:
        load_bundle(bundle, weights=True)
    msg = str(err.value)
    assert "manifest.json is invalid" in msg
    assert "field 'postprocess'" in msg and "field 'in_channels'" in msg


def test_newer_format_version_is_refused(bundle) -> None:
    data = json.loads((bundle / MANIFEST_NAME).read_text())
    data["format_version"] = 99
    (bundle / MANIFEST_NAME).write_text(json.dumps(data))
    with pytest.raises(BundleError, match="format_version 99 was written by a newer steelscan"):
        load_bundle(bundle, weights=True)


def test_missing_weights_file(bundle) -> None:
    (bundle / "segmenter.safetensors").unlink()
    with pytest.raises(BundleError, match=r"segmenter.safetensors is missing \(named by manifest"):
        load_bundle(bundle, weights=True)


def test_truncated_weights_file(bundle) -> None:
    path = bundle / "classifier.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(BundleError, match=r"classifier.safetensors: its sha256 differs"):
        load_bundle(bundle)
    # without recorded hashes (a bundle written before they existed) the loader still says why
    manifest = read_manifest(bundle).model_copy(update={"files": {}})
    (bundle / MANIFEST_NAME).write_text(manifest.model_dump_json())
    with pytest.raises(BundleError, match=r"classifier.safetensors is corrupted"):
        load_bundle(bundle, weights=True)
    path.write_bytes(b"\x00" * 16)
    with pytest.raises(BundleError, match=r"classifier.safetensors is corrupted"):
        load_bundle(bundle, weights=True)


@pytest.mark.parametrize("name", ["classifier.safetensors", "segmenter.safetensors"])
def test_tampered_weights_of_the_same_size_are_refused(bundle, name) -> None:
    """One flipped byte deep inside the tensors: safetensors still parses, the hash does not."""
    path = bundle / name
    data = bytearray(path.read_bytes())
    data[-100] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=rf"{name}: its sha256 differs"):
        load_bundle(bundle)


def test_saved_bundles_record_every_file_hash(bundle) -> None:
    from steelscan.bundle import sha256_file

    manifest = read_manifest(bundle)
    assert set(manifest.files) == {"classifier.safetensors", "segmenter.safetensors"}
    for name, digest in manifest.files.items():
        assert sha256_file(bundle / name) == digest


def test_weights_that_do_not_match_the_manifest(bundle) -> None:
    data = json.loads((bundle / MANIFEST_NAME).read_text())
    data["classifier"]["num_outputs"] = 3  # head shape no longer matches the stored weights
    (bundle / MANIFEST_NAME).write_text(json.dumps(data))
    with pytest.raises(BundleError) as err:
        load_bundle(bundle, weights=True)
    msg = str(err.value)
    assert "classifier.safetensors does not match the classifier" in msg
    assert "size mismatch" in msg


def test_weights_file_must_stay_inside_the_bundle(bundle) -> None:
    data = json.loads((bundle / MANIFEST_NAME).read_text())
    data["segmenter"]["weights_file"] = "../elsewhere.safetensors"
    (bundle / MANIFEST_NAME).write_text(json.dumps(data))
    with pytest.raises(BundleError, match="segmenter.weights_file must be a file name inside"):
        load_bundle(bundle, weights=True)


def test_save_rejects_inconsistent_arguments(tmp_path, models) -> None:
    clf, seg = models
    with pytest.raises(BundleError, match="segmenter has a model but no spec"):
        save_bundle(tmp_path / "a", _manifest(spec_for(clf)), clf, seg)
    with pytest.raises(BundleError, match="classifier has a spec in the manifest but no model"):
        save_bundle(tmp_path / "b", _manifest(spec_for(clf), spec_for(seg)), None, seg)
    wrong = spec_for(clf).model_copy(update={"arch": "resnet18"})
    with pytest.raises(BundleError, match="manifest.classifier.arch is 'resnet18'"):
        save_bundle(tmp_path / "c", _manifest(wrong), clf)
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_predict_refuses_a_tampered_bundle_naming_the_file(bundle, tmp_path, capsys) -> None:
    import numpy as np
    from PIL import Image

    from steelscan.cli import main

    path = bundle / "segmenter.safetensors"
    data = bytearray(path.read_bytes())
    data[-64] ^= 0x80
    path.write_bytes(bytes(data))
    img = tmp_path / "strip.png"
    Image.fromarray(np.zeros((64, 96), np.uint8)).save(img)
    with pytest.raises(SystemExit) as exc:
        main(["predict", str(bundle), str(img), "--out", str(tmp_path / "out")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "segmenter.safetensors: its sha256 differs" in err and "Traceback" not in err
    assert not (tmp_path / "out" / "submission.csv").exists()
