"""Model factory, the course's ResUNet and classic gate, and pretrained-weight loading.

Sizes are small (64x320) except one full 256x1600 forward, to keep the suite fast on 2 cores.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from steelscan.manifest import StageSpec
from steelscan.models.factory import (
    SegmentationModel,
    build_from_spec,
    create_classifier,
    create_segmenter,
    spec_for,
)
from steelscan.models.pretrained import (
    PretrainedWeightsError,
    load_local_weights,
    read_state_dict,
    sha256_of,
)
from steelscan.models.resunet import ResBlock, ResUNet

MOBILENET = "mobilenet_v2-b0353104.pth"
MOBILENET_SHA = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"
LITE0 = "efficientnet-lite0-57934424.pth"
LITE0_SHA = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small CPU forwards are many times faster single-threaded on a shared 2-core machine
    (intra-op threads spin waiting for each other); restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


# --------------------------------------------------------------------------- segmenters


@pytest.mark.parametrize(
    ("arch", "encoder", "channels"),
    [
        ("resunet", None, 1),
        ("resunet", None, 3),
        ("unet", "mobilenet_v2", 1),
        ("unet", "mobilenet_v2", 3),
        ("unet", "resnet18", 1),
        ("fpn", "tu-resnet18", 3),
    ],
)
def test_segmenter_forward_shapes(arch: str, encoder: str | None, channels: int) -> None:
    model = create_segmenter(arch, encoder, 4, in_channels=channels).eval()
    assert isinstance(model, SegmentationModel) and model.num_outputs == 4
    with torch.no_grad():
        out = model(torch.randn(2, channels, 64, 320))
    assert out.shape == (2, 4, 64, 320)
    assert out.dtype == torch.float32
    # logits, not probabilities: a sigmoid head would confine values to [0, 1]
    assert out.min() < 0 or out.max() > 1


@pytest.mark.parametrize(
    ("arch", "encoder", "hw"),
    [
        ("resunet", None, (200, 200)),
        ("resunet", None, (128, 800)),
        ("unet", "mobilenet_v2", (200, 200)),
        ("unet", "mobilenet_v2", (37, 91)),
    ],
)
def test_segmenter_odd_sizes_are_padded_and_cropped(arch, encoder, hw) -> None:
    model = create_segmenter(arch, encoder, 4).eval()
    x = torch.randn(1, 3, *hw)
    with torch.no_grad():
        out = model(x)
        # the crop is of the padded run: same values as running the padded input ourselves
        h, w = hw
        ph, pw = (-h) % 32, (-w) % 32
        ref = model.net(nn.functional.pad(x, (0, pw, 0, ph)))
    assert out.shape == (1, 4, *hw)
    assert torch.equal(out, ref[..., :h, :w])


def test_full_size_severstal_forward() -> None:
    model = create_segmenter("unet", "mobilenet_v2", 4, in_channels=1).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 1, 256, 1600))
    assert out.shape == (1, 4, 256, 1600)


@pytest.mark.parametrize(("arch", "encoder"), [("resunet", None), ("unet", "mobilenet_v2")])
def test_aux_head_is_separate_from_forward(arch: str, encoder: str | None) -> None:
    model = create_segmenter(arch, encoder, 4, aux_head=True).eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        masks = model(x)
        masks2, labels = model.forward_with_aux(x)
    assert masks.shape == (2, 4, 64, 96)
    assert torch.equal(masks, masks2)
    assert labels is not None and labels.shape == (2, 4)
    plain = create_segmenter(arch, encoder, 4).eval()
    assert plain.forward_with_aux(x)[1] is None


def test_resunet_matches_the_course_structure() -> None:
    net = ResUNet(in_channels=1, num_classes=4)
    # stem: two 3x3 convs of 16 filters
    assert [(c.kernel_size, c.out_channels) for c in (net.stem.conv1, net.stem.conv2)] == [
        ((3, 3), 16),
        ((3, 3), 16),
    ]
    assert net.stem.conv1.in_channels == 1
    enc = [net.enc1, net.enc2, net.enc3, net.bottleneck]
    dec = [net.dec4.block, net.dec3.block, net.dec2.block, net.dec1.block]
    assert [b.conv2.out_channels for b in enc] == [32, 64, 128, 256]
    assert [b.conv2.out_channels for b in dec] == [128, 64, 32, 16]
    # decoder inputs are [upsampled, skip] concatenations
    assert [b.conv1.in_channels for b in dec] == [256 + 128, 128 + 64, 64 + 32, 32 + 16]
    for block in enc + dec:
        assert isinstance(block, ResBlock)
        assert block.conv1.kernel_size == (1, 1) and block.conv2.kernel_size == (3, 3)
        assert isinstance(block.bn1, nn.BatchNorm2d) and isinstance(block.bn2, nn.BatchNorm2d)
        conv, bn = block.shortcut
        assert isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1)
        assert isinstance(bn, nn.BatchNorm2d) and bn.num_features == conv.out_channels
    assert sum(isinstance(m, nn.MaxPool2d) for m in net.modules()) == 1  # one shared 2x2 pool
    assert net.head.kernel_size == (1, 1) and net.head.out_channels == 4
    assert net.enc1.eval()(torch.randn(1, 16, 8, 8)).shape == (1, 32, 8, 8)


def test_resunet_learns_a_simple_mask() -> None:
    """A few optimisation steps on one image reduce the loss: gradients reach every layer."""
    from steelscan.models.losses import create_loss

    model = create_segmenter("resunet", None, 1)
    x = torch.randn(2, 3, 16, 16)
    y = (x[:, :1] > 0.5).float()
    loss_fn = create_loss("bce")
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = None
    for _ in range(8):
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        first = first if first is not None else loss.item()
    assert loss.item() < 0.5 * first
    assert all(p.grad is not None for p in model.parameters())


def test_segmenter_bad_arguments_are_clear() -> None:
    with pytest.raises(ValueError, match="unknown segmenter arch 'unett'"):
        create_segmenter("unett", "mobilenet_v2", 4)
    with pytest.raises(ValueError, match="unknown smp encoder 'mobilenet_v3'"):
        create_segmenter("unet", "mobilenet_v3", 4)
    with pytest.raises(ValueError, match="not a timm model name"):
        create_segmenter("unet", "tu-resnet1888", 4)
    with pytest.raises(PretrainedWeightsError, match="resunet has no pretrained encoder"):
        create_segmenter("resunet", None, 4, encoder_weights="imagenet")


# --------------------------------------------------------------------------- classifiers


@pytest.mark.parametrize("channels", [1, 3])
def test_timm_classifier_gives_multilabel_logits(channels: int) -> None:
    model = create_classifier("mobilenetv2_100", 4, in_channels=channels).eval()
    with torch.no_grad():
        out = model(torch.randn(2, channels, 64, 320))
    assert out.shape == (2, 4) and model.num_outputs == 4


def test_classic_gate_is_the_course_head() -> None:
    channels = 1
    model = create_classifier("resnet50_classic", 4, in_channels=channels).eval()
    assert model.body.conv1.in_channels == 1
    assert model.num_outputs == 1 and spec_for(model).num_outputs == 1
    linear1, linear2 = [m for m in model.head if isinstance(m, nn.Linear)]
    # 2x2 grid of 2048 ResNet50 features -> dense 256 -> dropout 0.3 -> one output
    assert (linear1.in_features, linear1.out_features) == (2048 * 2 * 2, 256)
    assert (linear2.in_features, linear2.out_features) == (256, 1)
    assert [m.p for m in model.head if isinstance(m, nn.Dropout)] == [0.3]
    with torch.no_grad():
        a = model(torch.randn(2, channels, 64, 320))
        b = model(torch.randn(1, channels, 64, 64))  # any size: adaptive pooling
    assert a.shape == (2, 1) and b.shape == (1, 1)


def test_unknown_classifier_suggests_names() -> None:
    with pytest.raises(ValueError, match="mobilenetv2_100"):
        create_classifier("mobilenetv2_10", 4)


def test_any_defect_probability() -> None:
    from steelscan.inference.postprocess import any_defect_probability

    p = np.array([[0.1, 0.7, 0.2, 0.0], [0.2, 0.2, 0.2, 0.2]], dtype=np.float32)
    np.testing.assert_allclose(any_defect_probability(p), [0.7, 0.2])
    gate = np.array([[0.33], [0.9]], dtype=np.float32)  # the one-output classic gate
    np.testing.assert_allclose(any_defect_probability(gate), [0.33, 0.9])
    t = torch.tensor(p)
    assert torch.allclose(any_defect_probability(t), torch.tensor([0.7, 0.2]))


# --------------------------------------------------------------------------- specs


@pytest.mark.parametrize(
    "make",
    [
        lambda: create_segmenter("unet", "resnet18", 4, aux_head=True, decoder_channels=[64] * 5),
        lambda: create_segmenter("resunet", None, 3, in_channels=1),
        lambda: create_classifier("resnet18", 4, drop_rate=0.1),
    ],
)
def test_build_from_spec_rebuilds_the_same_structure(make) -> None:
    model = make()
    spec = spec_for(model)
    assert isinstance(spec, StageSpec)
    in_ch = next(p for p in model.parameters() if p.ndim == 4).shape[1]
    rebuilt = build_from_spec(StageSpec.model_validate_json(spec.model_dump_json()), in_ch)
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    model.eval(), rebuilt.eval()
    x = torch.randn(1, in_ch, 64, 96)
    with torch.no_grad():
        assert torch.equal(model(x), rebuilt(x))


# --------------------------------------------------------------------------- pretrained files


def test_mobilenet_file_loads_into_unet_encoder(weights_dir) -> None:
    path = weights_dir / MOBILENET
    sd = read_state_dict(path)
    model = create_segmenter(
        "unet", "mobilenet_v2", 4, encoder_weights=path, weights_sha256=MOBILENET_SHA
    )
    report = model.weights_report
    assert report.method == "name" and report.loaded == report.total == 312
    enc = model.net.encoder.state_dict()
    assert torch.equal(enc["features.0.0.weight"], sd["features.0.0.weight"])
    assert torch.equal(enc["features.18.1.running_var"], sd["features.18.1.running_var"])


def test_mobilenet_file_into_timm_classifier_matches_torchvision(weights_dir) -> None:
    """Position remapping is exact: timm's mobilenetv2_100 with the torchvision file computes
    the same features as torchvision's own mobilenet_v2 with it."""
    import torchvision

    path = weights_dir / MOBILENET
    clf = create_classifier("mobilenetv2_100", 4, encoder_weights=path).eval()
    report = clf.weights_report
    assert report.method == "position"
    assert report.loaded == 312 and report.total == 314  # all but the new 4-class head
    assert set(report.missing) == {"classifier.weight", "classifier.bias"}
    tv = torchvision.models.mobilenet_v2()
    tv.load_state_dict(read_state_dict(path), strict=True)
    tv.eval()
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        ours = clf.forward_head(clf.forward_features(x), pre_logits=True)
        ref = torch.flatten(nn.functional.adaptive_avg_pool2d(tv.features(x), 1), 1)
    assert torch.allclose(ours, ref, atol=1e-5)


def test_mobilenet_file_into_timm_unet_encoder(weights_dir) -> None:
    model = create_segmenter(
        "unet", "tu-mobilenetv2_100", 4, encoder_weights=weights_dir / MOBILENET
    )
    assert model.weights_report.method == "position"
    assert model.weights_report.loaded == model.weights_report.total == 306


def test_lite0_file_single_channel(weights_dir) -> None:
    path = weights_dir / LITE0
    sd = read_state_dict(path)
    seg = create_segmenter(
        "fpn",
        "tu-tf_efficientnet_lite0",
        4,
        in_channels=1,
        encoder_weights=path,
        weights_sha256=LITE0_SHA,
    )
    rep = seg.weights_report
    assert rep.loaded == rep.total == 288 and rep.adapted == ["model.conv_stem.weight"]
    stem = seg.net.encoder.state_dict()["model.conv_stem.weight"]
    # one channel: the RGB kernels are summed
    assert stem.shape == (32, 1, 3, 3)
    assert torch.allclose(stem, sd["_conv_stem.weight"].sum(dim=1, keepdim=True))
    clf = create_classifier("tf_efficientnet_lite0", 4, in_channels=1, encoder_weights=path)
    assert clf.weights_report.loaded == 294
    assert torch.allclose(clf.conv_stem.weight, sd["_conv_stem.weight"].sum(1, keepdim=True))
    with torch.no_grad():
        assert seg.eval()(torch.randn(1, 1, 64, 96)).shape == (1, 4, 64, 96)


def test_mobilenet_single_channel_unet(weights_dir) -> None:
    path = weights_dir / MOBILENET
    sd = read_state_dict(path)
    model = create_segmenter("unet", "mobilenet_v2", 4, in_channels=1, encoder_weights=path)
    w = model.net.encoder.state_dict()["features.0.0.weight"]
    assert w.shape == (32, 1, 3, 3)
    assert torch.allclose(w, sd["features.0.0.weight"].sum(dim=1, keepdim=True))


def test_sha256_mismatch_names_file_and_both_digests(weights_dir) -> None:
    path = weights_dir / MOBILENET
    assert sha256_of(path) == MOBILENET_SHA
    wrong = "0" * 64
    with pytest.raises(PretrainedWeightsError) as err:
        create_segmenter("unet", "mobilenet_v2", 4, encoder_weights=path, weights_sha256=wrong)
    msg = str(err.value)
    assert str(path) in msg and wrong in msg and MOBILENET_SHA in msg


def test_wrong_file_for_the_architecture_is_refused(weights_dir) -> None:
    with pytest.raises(PretrainedWeightsError, match=r"does not fit this model: only 0 of"):
        create_classifier("resnet18", 4, encoder_weights=weights_dir / LITE0)


def test_bad_weights_paths(tmp_path) -> None:
    with pytest.raises(PretrainedWeightsError, match="does not exist"):
        create_classifier("mobilenetv2_100", 4, encoder_weights=tmp_path / "nope.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(PretrainedWeightsError, match="cannot read weights file .*junk.pth"):
        create_classifier("mobilenetv2_100", 4, encoder_weights=junk)
    with pytest.raises(PretrainedWeightsError, match="only applies to a local weights file"):
        create_classifier("mobilenetv2_100", 4, encoder_weights=None, weights_sha256="ab")


def test_safetensors_weights_in_timm_layout(tmp_path) -> None:
    from safetensors.torch import save_file

    donor = create_classifier("resnet18", 10)
    path = tmp_path / "r18.safetensors"
    save_file({k: v.contiguous() for k, v in donor.state_dict().items()}, str(path))
    model = create_classifier("resnet18", 4, encoder_weights=path)
    assert model.weights_report.method == "name"
    assert torch.equal(model.conv1.weight, donor.conv1.weight)
    assert torch.equal(model.layer4[1].bn2.running_mean, donor.layer4[1].bn2.running_mean)
    # an unrelated module refuses it clearly
    with pytest.raises(PretrainedWeightsError, match="does not fit"):
        load_local_weights(nn.Linear(3, 3), path)


@pytest.mark.timeout(120)  # a hang (connection retries) fails instead of stalling the suite
def test_imagenet_offline_fails_at_once_with_alternatives(monkeypatch, tmp_path) -> None:
    """Forced offline with an empty cache: a clear error naming the alternatives."""
    from huggingface_hub import constants

    flag_before = constants.HF_HUB_OFFLINE
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    for make in (
        lambda: create_segmenter("unet", "mobilenet_v2", 4, encoder_weights="imagenet"),
        lambda: create_segmenter("unet", "tu-mobilenetv2_100", 4, encoder_weights="imagenet"),
        lambda: create_classifier("mobilenetv2_100", 4, encoder_weights="imagenet"),
    ):
        with pytest.raises(PretrainedWeightsError) as err:
            make()
        msg = str(err.value)
        assert "--encoder-weights none" in msg and "mobilenet_v2-b0353104.pth" in msg
        assert "offline" in msg
        assert constants.HF_HUB_OFFLINE == flag_before  # the temporary offline flag is undone


@pytest.mark.parametrize("grid", [2, 4])
def test_grid_pool_equals_adaptive_pool_and_exports_with_dynamic_size(grid, tmp_path) -> None:
    """The classic gate's pooling: PyTorch's adaptive bins, exportable to ONNX at any size."""
    import warnings

    import onnxruntime as ort

    from steelscan.models.classic import GridAvgPool

    pool = GridAvgPool(grid)
    for hw in [(8, 8), (7, 7), (8, 50), (2, 3), (1, 1)]:
        x = torch.randn(2, 5, *hw)
        assert torch.allclose(pool(x), nn.AdaptiveAvgPool2d(grid)(x), atol=1e-6)
    path = tmp_path / "pool.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            pool,
            torch.randn(1, 5, 8, 8),
            str(path),
            dynamo=False,
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}, "y": {0: "n"}},
        )
    session = ort.InferenceSession(str(path))
    for hw in [(7, 7), (8, 50), (2, 3)]:
        x = torch.randn(3, 5, *hw)
        got = session.run(None, {"x": x.numpy()})[0]
        np.testing.assert_allclose(got, nn.AdaptiveAvgPool2d(grid)(x).numpy(), atol=1e-6)


def test_input_scale_runs_small_inside_and_answers_at_full_size():
    """A segmenter/classifier with input_scale sees a smaller image but keeps the caller's size."""
    seg = create_segmenter(
        "unet", "resnet18", 4, input_scale=0.5, decoder_channels=(16, 16, 8, 8, 8)
    ).eval()
    seen = []
    seg.net.register_forward_pre_hook(lambda _m, args: seen.append(tuple(args[0].shape[-2:])))
    x = torch.randn(1, 3, 64, 200)
    with torch.no_grad():
        out = seg(x)
    assert out.shape == (1, 4, 64, 200)
    assert seen == [(32, 128)]  # 32x100 scaled, padded to a multiple of 32
    clone = build_from_spec(seg.steelscan_spec, 3).eval()
    clone.load_state_dict(seg.state_dict())
    with torch.no_grad():
        assert torch.equal(clone(x), out)
    cls = create_classifier("resnet10t", 4, input_scale=0.25).eval()
    with torch.no_grad():
        assert cls(x).shape == (1, 4)
    with pytest.raises(ValueError, match="input_scale"):
        create_segmenter("unet", "resnet18", 4, input_scale=1.5)
