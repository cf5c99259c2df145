"""Training: config, data pipeline, Lightning stages, the bundle it writes, resume and the CLI.

Everything trains with ``TrainConfig.tiny()`` (seconds on a CPU); the shared ``trained_bundle``
fixture is the same run the inference/service tests use.
"""

from __future__ import annotations

import json
import os
import shutil
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch

from steelscan.training import ConfigError, TrainConfig, train
from steelscan.training.config import preset_path


def _tiny(tmp_path: Path, **overrides) -> TrainConfig:
    return TrainConfig.tiny().with_overrides({"run_dir": str(tmp_path / "runs"), **overrides})


# --------------------------------------------------------------------------- config


def test_packaged_yaml_presets_match_the_code():
    assert TrainConfig.from_yaml(preset_path("default")) == TrainConfig()
    assert TrainConfig.from_yaml(preset_path("demo")) == TrainConfig.demo()
    assert TrainConfig.from_yaml(preset_path("tiny")) == TrainConfig.tiny()


def test_yaml_and_dotted_overrides(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("seed: 7\nsegmenter:\n  arch: fpn\n  epochs: 3\nmax_minutes: 2.5\n")
    cfg = TrainConfig.from_yaml(path)
    assert (cfg.seed, cfg.segmenter.arch, cfg.segmenter.epochs, cfg.max_minutes) == (
        7,
        "fpn",
        3,
        2.5,
    )
    assert cfg.classifier == TrainConfig().classifier  # untouched sections keep their defaults
    cfg2 = cfg.with_overrides(
        {"segmenter.loss": "focal", "classifier.lr": "1e-4", "max_minutes": "none", "devices": "2"}
    )
    assert cfg2.segmenter.loss == "focal"
    assert cfg2.classifier.lr == pytest.approx(1e-4)
    assert cfg2.max_minutes is None and cfg2.devices == 2
    assert cfg.segmenter.loss == "bce_dice"  # with_overrides returns a copy
    # round trip through YAML
    cfg2.to_yaml(tmp_path / "out.yaml")
    assert TrainConfig.from_yaml(tmp_path / "out.yaml") == cfg2


def test_bad_config_keys_and_values_are_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("segmenter:\n  archh: unet\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: unknown key 'segmenter\.archh'"):
        TrainConfig.from_yaml(bad)
    bad.write_text("segmenter:\n  loss: hinge\n")
    with pytest.raises(ConfigError, match=r"segmenter\.loss.*hinge"):
        TrainConfig.from_yaml(bad)
    with pytest.raises(ConfigError, match=r"unknown config key 'classifier\.nope'"):
        TrainConfig().with_overrides({"classifier.nope": 1})
    with pytest.raises(ConfigError, match="val_fraction"):
        TrainConfig().with_overrides({"val_fraction": 1.5})
    with pytest.raises(ConfigError, match="not found"):
        TrainConfig.from_yaml(tmp_path / "missing.yaml")


def test_trainer_gets_time_budget_precision_and_accumulation(tmp_path):
    import time

    from lightning.pytorch.callbacks import ModelCheckpoint, Timer

    from steelscan.training.fit import build_trainer, stage_minutes

    cfg = _tiny(tmp_path, max_minutes=10, accumulate_grad_batches=3)
    now = time.monotonic()
    clf_min = stage_minutes(cfg, "classifier", ["classifier", "segmenter"], now)
    seg_min = stage_minutes(cfg, "segmenter", ["classifier", "segmenter"], now)
    assert clf_min + 0.7 / 0.3 * clf_min == pytest.approx(9.0, rel=1e-3)  # 10% kept for tuning
    assert seg_min == pytest.approx(9.0, rel=1e-3)  # the last stage gets all that is left
    three = ["classifier", "segmenter", "detector"]
    assert stage_minutes(cfg, "classifier", three, now) == pytest.approx(9.0 * 0.3 / 1.7, rel=1e-3)
    # time the classifier leaves unused goes to the stages after it
    assert stage_minutes(cfg, "segmenter", three, now - 60) == pytest.approx(8.0 * 0.5, rel=1e-3)
    trainer = build_trainer(
        cfg, tmp_path / "s", epochs=5, monitor="val_kaggle", max_minutes=seg_min, progress=False
    )
    timers = [c for c in trainer.callbacks if isinstance(c, Timer)]
    assert len(timers) == 1 and timers[0]._duration == timedelta(minutes=seg_min).total_seconds()
    assert trainer.accumulate_grad_batches == 3 and trainer.max_epochs == 5
    assert trainer.precision == "32-true"
    ckpt = trainer.checkpoint_callback
    assert isinstance(ckpt, ModelCheckpoint) and ckpt.monitor == "val_kaggle" and ckpt.save_last
    # no budget: no Timer
    cfg = _tiny(tmp_path)
    trainer = build_trainer(
        cfg, tmp_path / "t", epochs=1, monitor="val_kaggle", max_minutes=None, progress=False
    )
    assert not any(isinstance(c, Timer) for c in trainer.callbacks)
    assert TrainConfig(accelerator="cpu").resolved_precision() == "32"


def test_progress_in_a_log_file_is_one_line_per_epoch(tmp_path, capsys):
    """Under pytest stderr is not a terminal, as in `steelscan demo > log`: no bar redrawn with
    carriage returns, one summary line per epoch instead."""
    from types import SimpleNamespace

    from lightning.pytorch.callbacks import TQDMProgressBar

    from steelscan.training.callbacks import EpochSummary
    from steelscan.training.fit import build_trainer

    trainer = build_trainer(
        _tiny(tmp_path), tmp_path / "segmenter", epochs=3, monitor="val_kaggle",
        max_minutes=None, progress=True,
    )  # fmt: skip
    assert not any(isinstance(c, TQDMProgressBar) for c in trainer.callbacks)
    summaries = [c for c in trainer.callbacks if isinstance(c, EpochSummary)]
    assert len(summaries) == 1 and summaries[0].stage == "segmenter"
    fake = SimpleNamespace(
        is_global_zero=True,
        max_epochs=3,
        current_epoch=1,
        callback_metrics={"train_loss": torch.tensor(0.5), "val_kaggle": torch.tensor(0.875)},
    )
    summaries[0].on_train_epoch_end(fake, None)
    err = capsys.readouterr().err
    assert err.startswith("segmenter epoch 2/3: train_loss 0.5000, val_kaggle 0.8750 (")
    assert err.count("\n") == 1 and "\r" not in err
    quiet = build_trainer(
        _tiny(tmp_path), tmp_path / "q", epochs=1, monitor="val_kaggle", max_minutes=None,
        progress=False,
    )  # fmt: skip
    assert not any(isinstance(c, (EpochSummary, TQDMProgressBar)) for c in quiet.callbacks)


# --------------------------------------------------------------------------- data pipeline


def test_dataset_samples_crops_presence_and_padding(synth_small):
    from steelscan.data import load_dataset
    from steelscan.training.datamodule import SteelDataset, pad_collate

    ds = load_dataset(synth_small)
    defective = (
        [r for r in ds.records if r.has_masks_any]
        if False
        else [r for r in ds.records if any(r.present)]
    )
    assert defective, "synthetic data should contain defects"
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    crops = SteelDataset(
        defective[:4],
        in_channels=3,
        mean=mean,
        std=std,
        crop_hw=(64, 128),
        defect_crop_bias=1.0,
        augment=True,
        seed=0,
    )
    for i in range(len(crops)):
        s = crops[i]
        assert s["image"].shape == (3, 64, 128) and s["mask"].shape == (len(ds.classes), 64, 128)
        # the crop is centred on a defect pixel, and presence follows the crop's mask
        assert s["mask"].sum() > 0
        assert torch.equal(s["presence"], (s["mask"].flatten(1).amax(1) > 0).float())
    full = SteelDataset(ds.records[:2], in_channels=1, mean=mean, std=std)
    s = full[0]
    assert s["image"].shape == (1, 128, 800)  # 128 x 800 is already a multiple of 32
    assert tuple(s["size"].tolist()) == (128, 800)
    assert torch.equal(s["presence"], torch.tensor(ds.records[0].present, dtype=torch.float32))
    raw, _ = full.load(0)
    expected = (raw[..., 0] / 255.0 - np.mean(mean)) / np.mean(std)
    np.testing.assert_allclose(s["image"][0].numpy(), expected, atol=1e-5)
    batch = pad_collate([full[0], full[1]])
    assert batch["image"].shape == (2, 1, 128, 800) and batch["presence"].shape == (2, 4)


# --------------------------------------------------------------------------- training runs


def test_tiny_training_writes_a_loadable_bundle(trained_bundle):
    from steelscan.bundle import load_bundle

    b = load_bundle(trained_bundle)
    m = b.manifest
    k = m.num_classes
    assert m.classes and len(m.class_ids) == k and m.in_channels == 3
    assert (m.image_height, m.image_width) == (128, 800)
    assert m.classifier is not None and m.segmenter is not None
    pp = m.postprocess
    assert len(pp.pixel_thresholds) == len(pp.class_thresholds) == len(pp.min_areas) == k
    for key in (
        "kaggle_before_tuning",
        "kaggle_after_tuning",
        "kaggle_all_empty_baseline",
        "gate_accuracy",
        "mean_dice_nonempty",
    ):
        assert key in m.metrics
    assert m.metrics["kaggle_after_tuning"] >= m.metrics["kaggle_before_tuning"] - 1e-9
    t = m.training
    assert t["num_train_images"] + t["num_val_images"] == 32
    # what `steelscan tune`/`evaluate` need to find the validation split again
    assert len(t["val_ids"]) == t["num_val_images"] == m.metrics["val_images_scored"]
    assert Path(t["dataset"]).is_absolute() and t["config"]["tune_max_images"] == 16
    assert set(t["step_seconds"]) == {"fit", "tune"}  # the tiny preset does not export
    assert "engines" not in m.metrics and m.segmenter.onnx_file is None
    assert t["config"]["segmenter"]["crop_height"] == 128 and t["crop"] == [128, 256]
    assert set(t["class_counts_train"]) == {*m.classes, "no_defect"}
    # the rebuilt networks run at full resolution
    x = torch.zeros(1, 3, 128, 800)
    with torch.no_grad():
        assert b.classifier(x).shape == (1, k)
        assert b.segmenter(x).shape == (1, k, 128, 800)
    # bundle = manifest + safetensors only; run artefacts live beside it
    assert {p.suffix for p in trained_bundle.iterdir()} <= {".json", ".safetensors"}
    runs = trained_bundle.parent / f"{trained_bundle.name}.runs"
    assert (runs / "segmenter" / "checkpoints" / "last.ckpt").exists()
    assert (runs / "classifier" / "logs" / "csv" / "metrics.csv").exists()
    assert not list(trained_bundle.parent.glob(f".{trained_bundle.name}.tmp-*"))
    # as shareable as the umask allows (the temporary files it was built from were private)
    umask = os.umask(0)
    os.umask(umask)
    assert trained_bundle.stat().st_mode & 0o777 == 0o777 & ~umask
    assert all(p.stat().st_mode & 0o777 == 0o666 & ~umask for p in trained_bundle.iterdir())


def test_resume_continues_from_last_checkpoint(synth_small, tmp_path):
    cfg = _tiny(tmp_path, **{"classifier.enabled": False, "segmenter.epochs": 1})
    out = train(synth_small, tmp_path / "model", cfg)
    first = json.loads((out / "manifest.json").read_text())["metrics"]["segmenter"]
    assert first["global_steps"] == 4 and first["resumed_from"] is None
    last = tmp_path / "runs" / "segmenter" / "checkpoints" / "last.ckpt"
    # Lightning's checkpoint must load without unpickling code
    assert "state_dict" in torch.load(last, map_location="cpu", weights_only=True)
    cfg2 = cfg.with_overrides({"resume": True, "segmenter.epochs": 2})
    out = train(synth_small, tmp_path / "model", cfg2)
    second = json.loads((out / "manifest.json").read_text())["metrics"]["segmenter"]
    assert second["resumed_from"] == str(last)
    assert second["global_steps"] == 8  # continued: 4 steps from epoch 1, 4 new in epoch 2
    # without --resume the old run is discarded and training starts from step 0
    out = train(synth_small, tmp_path / "model", cfg)
    third = json.loads((out / "manifest.json").read_text())["metrics"]["segmenter"]
    assert third["global_steps"] == 4 and third["resumed_from"] is None


def test_failed_training_leaves_no_bundle(synth_small, tmp_path):
    cfg = _tiny(tmp_path, **{"segmenter.encoder": "no_such_encoder"})
    out = tmp_path / "model"
    with pytest.raises(ValueError, match="no_such_encoder"):
        train(synth_small, out, cfg)
    assert not out.exists()
    assert not list(tmp_path.glob(".model.tmp-*"))
    with pytest.raises(ConfigError, match="nothing to train"):
        train(
            synth_small,
            out,
            _tiny(tmp_path, **{"classifier.enabled": False, "segmenter.enabled": False}),
        )


def test_a_run_failing_after_the_fit_keeps_the_old_bundle(
    synth_small, trained_bundle, tmp_path, monkeypatch
):
    """The bundle is built in the run directory and moved to ``out`` only when finished: a
    failure in a late step (here tuning) neither leaves a half-made bundle nor harms the old."""
    import steelscan.evaluation.evaluate as evaluate

    out = tmp_path / "model"
    shutil.copytree(trained_bundle, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def broken(*args, **kwargs):
        raise RuntimeError("tuning exploded")

    monkeypatch.setattr(evaluate, "tune_on", broken)
    with pytest.raises(RuntimeError, match="tuning exploded"):
        train(synth_small, out, _tiny(tmp_path, **{"classifier.enabled": False}))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not list(tmp_path.glob(".model.*"))


def test_training_refuses_to_replace_a_folder_that_is_not_a_bundle(synth_small, tmp_path):
    out = tmp_path / "notes"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not a steelscan bundle"):
        train(synth_small, out, _tiny(tmp_path))
    assert (out / "keep.txt").read_text() == "mine"


def test_thresholds_tuned_by_train_equal_what_steelscan_tune_finds(
    trained_bundle, synth_small, tmp_path
):
    """The end of `steelscan train` tunes with what `steelscan tune MODEL DATA` runs, on the same
    images: re-tuning the trained model on its data finds exactly the same settings."""
    from steelscan.bundle import read_manifest
    from steelscan.cli import main
    from steelscan.inference.postprocess import default_postprocess

    trained = read_manifest(trained_bundle)
    assert trained.postprocess != default_postprocess(4, "hard")  # tuning moved something
    copy = tmp_path / "model"
    shutil.copytree(trained_bundle, copy)
    with pytest.raises(SystemExit) as exc:
        main(["tune", str(copy), str(synth_small)])
    assert exc.value.code == 0
    retuned = read_manifest(copy)
    assert retuned.postprocess == trained.postprocess
    assert retuned.metrics["tuned_on"].startswith(f"{Path(synth_small).name}:val")
    assert retuned.metrics["tuned_kaggle_before"] == trained.metrics["kaggle_before_tuning"]
    assert retuned.metrics["tuned_kaggle_after"] == trained.metrics["kaggle_after_tuning"]


def test_training_ends_with_an_export_and_auto_picks_the_fastest_engine(synth_small, tmp_path):
    """export.enabled: ONNX files in the bundle, one record per engine runnable here (scored
    through the predictor on the validation images), and `Predictor(bundle)` takes the fastest
    record that keeps the score."""
    from steelscan.bundle import load_bundle
    from steelscan.inference.engines import SCORE_TOLERANCE, cpu_has_bf16, runnable_here
    from steelscan.inference.predictor import Predictor

    pytest.importorskip("onnxruntime")
    cfg = _tiny(tmp_path, **{"export.enabled": True, "export.warmup_images": 1})
    out = train(synth_small, tmp_path / "model", cfg)
    bundle = load_bundle(out)
    m = bundle.manifest
    assert m.classifier.onnx_file == "classifier.onnx" and m.segmenter.onnx_file == "segmenter.onnx"
    records = m.metrics["engines"]
    labels = [r["label"] for r in records]
    assert labels[0] == "torch fp32" and records[0]["kaggle_delta"] == 0.0
    assert {"onnx fp32", "onnx int8"} <= set(labels) and len(set(labels)) == len(labels)
    assert any("bf16" in label for label in labels) == cpu_has_bf16()
    n_val = m.training["num_val_images"]
    for r in records:
        assert r["images"] == n_val and r["batch_size"] >= 1
        assert r["keeps_score"] == (r["kaggle_delta"] >= -SCORE_TOLERANCE)
        assert r["images_per_s"] > 0 and 0.0 <= r["kaggle"] <= 1.0
    # the reference record is the predictor's view of the tuning images: the same score
    assert records[0]["kaggle"] == pytest.approx(m.metrics["kaggle_score"], abs=1e-6)
    int8_kept = any(r["keeps_score"] for r in records if r["options"].get("int8"))
    assert (m.segmenter.onnx_int8_file is not None) == int8_kept
    assert ((out / "segmenter.int8.onnx").is_file()) == int8_kept
    assert set(m.training["step_seconds"]) == {"fit", "tune", "export"}
    runnable = [
        r for r in records
        if r["keeps_score"] and runnable_here(bundle, r["engine"], r["options"]) is None
    ]  # fmt: skip
    best = max(runnable, key=lambda r: r["images_per_s"])
    p = Predictor(out, device="cpu")
    assert p.engine_label == best["label"] and p.batch_size == best["batch_size"]
    assert p.engine_choice.options == {
        **best["options"],
        **({"device": "cpu"} if best["engine"] == "torch" else {}),
    }


def test_int8_is_dropped_where_it_loses_the_score(trained_bundle, tmp_path):
    from steelscan.bundle import read_manifest
    from steelscan.inference.export import drop_int8
    from steelscan.training.measure import candidates, int8_keeps_score

    records = [
        {"options": {}, "keeps_score": True},
        {"options": {"int8": True}, "keeps_score": False},
    ]
    assert not int8_keeps_score(records)
    records[1]["keeps_score"] = True
    assert int8_keeps_score(records)
    labels = [c.label for c in candidates(int8=False, bf16=False)]
    assert labels == ["torch fp32", "onnx fp32", "openvino fp32"]
    assert len(candidates(int8=True, bf16=True)) == 8
    # a bundle whose manifest names an int8 file loses both the name and the file
    copy = tmp_path / "model"
    shutil.copytree(trained_bundle, copy)
    (copy / "segmenter.int8.onnx").write_bytes(b"int8")
    m = read_manifest(copy)
    m.segmenter.onnx_int8_file = "segmenter.int8.onnx"
    (copy / "manifest.json").write_text(m.model_dump_json())
    assert drop_int8(copy).segmenter.onnx_int8_file is None
    assert read_manifest(copy).segmenter.onnx_int8_file is None
    assert not (copy / "segmenter.int8.onnx").exists()


def test_a_few_steps_on_real_severstal_images(severstal_dir, tmp_path):
    """Real 256 x 1600 JPEGs: 256 x 512 crops, validation and tuning at full resolution."""
    cfg = _tiny(
        tmp_path,
        **{
            "classifier.enabled": False,
            "segmenter.epochs": 1,
            "segmenter.crop_height": 256,
            "segmenter.crop_width": 512,
            "segmenter.batch_size": 2,
            "limit_train_batches": 2,
            "tune_max_images": 3,
        },
    )
    out = train(severstal_dir, tmp_path / "model", cfg)
    m = json.loads((out / "manifest.json").read_text())
    assert (m["image_height"], m["image_width"]) == (256, 1600)
    assert m["classifier"] is None and m["postprocess"]["gate_mode"] == "none"
    assert m["training"]["num_train_images"] + m["training"]["num_val_images"] == 15
    assert m["metrics"]["segmenter"]["global_steps"] == 2
    assert 0.0 <= m["metrics"]["kaggle_after_tuning"] <= 1.0


def test_voc_images_smaller_than_the_crop_train_on_full_images(neu_dir, tmp_path):
    """NEU-DET (200 x 200, boxes): the 128 x 256 crop does not fit, so crops are switched off."""
    sub = tmp_path / "neu"
    (sub / "images").mkdir(parents=True)
    (sub / "annotations").mkdir()
    for cls in ("crazing", "inclusion", "patches", "scratches"):
        for i in (1, 2, 3):
            shutil.copy(neu_dir / "images" / f"{cls}_{i}.jpg", sub / "images")
            shutil.copy(neu_dir / "annotations" / f"{cls}_{i}.xml", sub / "annotations")
    cfg = _tiny(tmp_path, **{"classifier.epochs": 1, "segmenter.epochs": 1, "val_fraction": 0.34})
    out = train(sub, tmp_path / "model", cfg)
    m = json.loads((out / "manifest.json").read_text())
    assert m["crop_height"] is None and m["training"]["crop"] is None
    assert (m["image_height"], m["image_width"]) == (200, 200)
    assert m["training"]["layout"] == "voc"


# --------------------------------------------------------------------------- CLI


def test_cli_train_end_to_end(synth_small, tmp_path):
    from steelscan.cli import main

    out = tmp_path / "cli_model"
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "train", str(synth_small), "--out", str(out), "--preset", "tiny", "--quiet",
                "--no-classifier", "--epochs", "1", "--set", f"run_dir={tmp_path / 'runs'}",
            ]
        )  # fmt: skip
    assert exc.value.code == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["classifier"] is None and m["segmenter"]["arch"] == "unet"
    assert m["training"]["config"]["segmenter"]["epochs"] == 1


def test_cli_train_reports_bad_settings_without_traceback(synth_small, tmp_path, capsys):
    from steelscan.cli import main

    out = tmp_path / "m"
    for args, message in [
        (["--set", "segmenter.nope=1"], "unknown config key 'segmenter.nope'"),
        (["--set", "seed"], "expected key=value"),
        (["--seg-arch", "transformer"], "segmenter.arch"),
        (["--config", str(tmp_path / "none.yaml")], "config file not found"),
    ]:
        with pytest.raises(SystemExit) as exc:
            main(["train", str(synth_small), "--out", str(out), *args])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
    assert not out.exists()


def test_segmenter_aux_head_is_trained_and_metrics_follow_kaggle_rules():
    from steelscan.models.factory import create_segmenter
    from steelscan.models.losses import create_loss
    from steelscan.training.module import OptimSettings, SegmenterModule, pair_dice

    model = create_segmenter(
        "unet", "tu-mobilenetv3_small_050", 4, aux_head=True, decoder_channels=[16, 16, 8, 8, 8]
    )
    module = SegmenterModule(model, create_loss("bce"), OptimSettings(), aux_weight=1.0)
    batch = {
        "image": torch.randn(2, 3, 64, 128),
        "mask": torch.zeros(2, 4, 64, 128),
        "presence": torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 0]]),
    }
    module._loss(batch).backward()
    aux_grads = [p.grad for n, p in model.named_parameters() if "classification_head" in n]
    assert aux_grads and all(g is not None and g.abs().sum() > 0 for g in aux_grads)
    # Kaggle pair Dice: empty/empty = 1, prediction on empty truth = 0, overlap = 2|A&B|/(|A|+|B|)
    pred = torch.zeros(3, 4, 4, dtype=torch.bool)
    truth = torch.zeros(3, 4, 4, dtype=torch.bool)
    pred[1, 0, 0] = True
    pred[2, :2] = True
    truth[2, :1] = True
    assert pair_dice(pred, truth).tolist() == pytest.approx([1.0, 0.0, 2 * 4 / (8 + 4)])


def test_classic_resnet50_gate_and_classifier_crops_train_and_run(synth_small, tmp_path):
    """The course's one-output ResNet50 gate trains on crops and drives the Inspector's gate."""
    from steelscan.bundle import load_bundle
    from steelscan.imageio import read_image
    from steelscan.inference.predictor import Inspector

    cfg = TrainConfig.tiny().with_overrides(
        {
            "classifier.arch": "resnet50_classic",
            "classifier.crop_height": "128",
            "classifier.crop_width": "256",
            "limit_train_batches": "2",
        }
    )
    out = train(synth_small, tmp_path / "model", cfg)
    bundle = load_bundle(out)
    spec = bundle.manifest.classifier
    assert spec.arch == "resnet50_classic" and spec.num_outputs == 1
    img = next((Path(synth_small) / "train_images").iterdir())
    raw = Inspector(bundle, gate_mode="none").raw([read_image(img)])[0]
    # one gate probability, broadcast to every class
    assert raw.class_probs.shape == (4,) and np.allclose(raw.class_probs, raw.class_probs[0])
    calls: list[int] = []
    for threshold, expected in ((1.01, 0), (-1.0, 1)):  # closed gate, then open gate
        ins = Inspector(bundle, gate_mode="hard")
        ins.postprocess = ins.postprocess.model_copy(update={"gate_threshold": threshold})
        segment = ins.engine.segment
        ins.engine.segment = lambda b, segment=segment: calls.append(1) or segment(b)
        calls.clear()
        result = ins.inspect(img)
        assert len(calls) == expected
        if expected == 0:
            assert not result.has_defect
