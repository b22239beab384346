"""Fast dilated depthwise convolutions: space-to-batch and the flipped-kernel backward equal
F.conv2d (forward and gradients) for odd/even sizes, symmetric and asymmetric padding; the
EfficientNet uses them on CPU only and computes the same features and gradients with them."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from plda.models import layers
from plda.models.backbones import build_backbone
from plda.models.backbones.efficientnet_lite import Conv2dSame, tf_same_padding
from plda.models.layers import (
    dilated_depthwise_conv2d,
    space_to_batch_conv2d,
    use_fast_dilated_depthwise,
)

SIZES = ((12, 12), (7, 9), (13, 10))


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The tensors are tiny: with several threads, OpenMP start-up dominates (and on a busy
    machine, waiting for descheduled threads does)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _paddings(kernel: int, dilation: tuple[int, int], size: tuple[int, int]):
    """TF "same" padding (symmetric for odd kernels) and a lopsided one, F.pad order."""
    same = tf_same_padding(size, (kernel, kernel), (1, 1), dilation)
    lopsided = (same[0] + 1, max(same[1] - 1, 0), max(same[2] - 2, 0), same[3] + 1)
    return same, lopsided


def _cases():
    for kernel, dilation, size in itertools.product((3, 5), (2, 4), SIZES):
        for padding in _paddings(kernel, (dilation, dilation), size):
            yield kernel, (dilation, dilation), size, padding
    # even kernel (asymmetric TF padding) and unequal dilations
    yield 4, (2, 2), (9, 12), tf_same_padding((9, 12), (4, 4), (1, 1), (2, 2))
    yield 3, (2, 3), (11, 8), tf_same_padding((11, 8), (3, 3), (1, 1), (2, 3))


def _compare(fn, kernel, dilation, size, padding, dtype, groups=None, channels=6):
    """Forward and input/weight/bias gradients of ``fn`` against F.conv2d on the padded input."""
    g = torch.Generator().manual_seed(sum(size) * kernel)
    groups = groups or channels
    x = torch.randn(2, channels, *size, generator=g, dtype=dtype, requires_grad=True)
    weight = torch.randn(channels, channels // groups, kernel, kernel, generator=g, dtype=dtype,
                         requires_grad=True)
    bias = torch.randn(channels, generator=g, dtype=dtype, requires_grad=True)
    expected = F.conv2d(F.pad(x, padding), weight, bias, 1, 0, dilation, groups)
    grad_out = torch.randn(expected.shape, generator=g, dtype=dtype)
    expected_grads = torch.autograd.grad(expected, (x, weight, bias), grad_out)
    out = fn(x, weight, bias, dilation=dilation, padding=padding)
    assert out.shape == expected.shape
    tol = {"rtol": 1e-10, "atol": 1e-10} if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-4}
    torch.testing.assert_close(out, expected, **tol)
    for got, want in zip(torch.autograd.grad(out, (x, weight, bias), grad_out), expected_grads):
        torch.testing.assert_close(got, want, **tol)


@pytest.mark.parametrize("kernel,dilation,size,padding", list(_cases()))
def test_space_to_batch_equals_dilated_conv(kernel, dilation, size, padding):
    def fn(x, weight, bias, **kw):
        return space_to_batch_conv2d(x, weight, bias, groups=x.shape[1], **kw)

    _compare(fn, kernel, dilation, size, padding, torch.float64)


def test_space_to_batch_handles_dense_and_grouped_convs():
    def fn(groups):
        return lambda x, weight, bias, **kw: space_to_batch_conv2d(x, weight, bias,
                                                                   groups=groups, **kw)

    for groups in (1, 2):
        _compare(fn(groups), 3, (2, 2), (10, 11), (2, 2, 2, 2), torch.float64, groups=groups,
                 channels=4)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("kernel,dilation,size,padding", list(_cases()))
def test_dilated_depthwise_equals_dilated_conv(kernel, dilation, size, padding, dtype):
    # paddings above NATIVE_MAX_PADDING (5x5 at dilation 4) take the space-to-batch route
    _compare(dilated_depthwise_conv2d, kernel, dilation, size, padding, dtype)


@pytest.mark.parametrize("forward", ["native", "subgrid"])
@pytest.mark.parametrize("wgrad", ["native", "subgrid"])
@pytest.mark.parametrize("kernel,dilation,size,padding", list(_cases()))
def test_each_fast_path_equals_dilated_conv(kernel, dilation, size, padding, forward, wgrad,
                                            monkeypatch):
    """Every combination of the forward's (and input gradient's) and the weight gradient's
    paths gives F.conv2d's output and gradients."""
    monkeypatch.setattr(layers, "DILATED_FORWARD", forward)
    monkeypatch.setattr(layers, "DILATED_WEIGHT_GRAD", wgrad)
    _compare(dilated_depthwise_conv2d, kernel, dilation, size, padding, torch.float64)


@pytest.mark.parametrize("size,lopsided", [((12, 12), False), ((7, 9), False), ((12, 12), True)])
def test_sub_grids_made_once_when_forward_and_weight_gradient_share_them(size, lopsided,
                                                                        monkeypatch):
    """On the sub-grid paths the forward's sub-grid input serves the weight gradient, and the
    output gradient's sub-grids serve both gradients where they are the same tensor (TF "same"
    padding, odd sizes included): two interleaves per training pass instead of four; with a
    lopsided padding the gradient is padded differently for each: three."""
    monkeypatch.setattr(layers, "DILATED_FORWARD", "subgrid")
    monkeypatch.setattr(layers, "DILATED_WEIGHT_GRAD", "subgrid")
    made = []
    to_subgrids = layers._to_subgrids

    def counting(x, dh, dw):
        made.append(tuple(x.shape))
        return to_subgrids(x, dh, dw)

    monkeypatch.setattr(layers, "_to_subgrids", counting)
    padding = _paddings(3, (2, 2), size)[int(lopsided)]
    _compare(dilated_depthwise_conv2d, 3, (2, 2), size, padding, torch.float64)
    made.clear()  # _compare also ran F.conv2d's reference; count one pass of ours alone
    x = torch.randn(2, 6, *size, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(6, 1, 3, 3, dtype=torch.float64, requires_grad=True)
    dilated_depthwise_conv2d(x, weight, dilation=2, padding=padding).sum().backward()
    assert len(made) == (3 if lopsided else 2)


def test_subgrid_weight_gradient_in_channels_last_and_float32():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 16, 14, 14, generator=g).contiguous(memory_format=torch.channels_last)
    grad = torch.randn(3, 16, 14, 14, generator=g).contiguous(memory_format=torch.channels_last)
    for kernel, dilation in ((5, 4), (3, 2), (5, 2)):
        pad = (kernel - 1) * dilation // 2
        want = torch.nn.grad.conv2d_weight(x, (16, 1, kernel, kernel), grad, 1, pad, dilation, 16)
        got = layers.subgrid_weight_grad(x, grad, (16, 1, kernel, kernel), dilation=dilation,
                                         padding=(pad,) * 4)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_weight_gradient_path_is_measured_once_per_shape_and_cached(monkeypatch, tmp_path):
    from plda.models import fastpath
    from plda.models.fastpath import ConvPathTuner

    tuner = ConvPathTuner(tmp_path / "paths.json", repeats=1)
    monkeypatch.setattr(fastpath, "TUNER", tuner)
    monkeypatch.setattr(layers, "DILATED_WEIGHT_GRAD", "auto")
    monkeypatch.setattr(layers, "DILATED_FORWARD", "auto")
    x = torch.randn(2, 8, 12, 12, requires_grad=True)
    weight = torch.randn(8, 1, 5, 5, requires_grad=True)
    dilated_depthwise_conv2d(x, weight, dilation=2, padding=(4, 4, 4, 4)).sum().backward()
    import json

    choices = json.loads((tmp_path / "paths.json").read_text())["choices"]
    [(key, choice)] = [(k, v) for k, v in choices.items() if k.startswith("dwgrad|")]
    assert "2x8x12x12" in key and "|k5x5|d2x2|" in key and choice in layers.PATHS
    # the forward and the flipped-kernel input gradient (same padding here): one measured key
    assert [k for k in choices if k.startswith("dwfwd|")] == [key.replace("dwgrad", "dwfwd")]
    # measured once: a second pass adds nothing to the cache
    dilated_depthwise_conv2d(x, weight, dilation=2, padding=(4, 4, 4, 4)).sum().backward()
    assert json.loads((tmp_path / "paths.json").read_text())["choices"] == choices
    # A forced path is taken without measuring; an unknown one is refused by name.
    monkeypatch.setattr(layers, "DILATED_WEIGHT_GRAD", "subgrid")
    assert layers.weight_grad_path(x, x, weight.shape, (3, 3), (6, 6, 6, 6)) == "subgrid"
    monkeypatch.setattr(layers, "DILATED_WEIGHT_GRAD", "fastest")
    from plda.errors import ConfigError

    with pytest.raises(ConfigError, match="PLDA_DILATED_WEIGHT_GRAD='fastest'"):
        layers.weight_grad_path(x, x, weight.shape, (2, 2), (4, 4, 4, 4))


def test_dilated_depthwise_under_bf16_autocast():
    x = torch.randn(2, 8, 12, 12, requires_grad=True)
    weight = torch.randn(8, 1, 5, 5, requires_grad=True)
    results = []
    for fast in (True, False):
        layers.FAST_DILATED_DEPTHWISE = fast
        try:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = dilated_depthwise_conv2d(x, weight, dilation=4, padding=(8, 8, 8, 8))
            grads = torch.autograd.grad(out.float().square().sum(), (x, weight))
        finally:
            layers.FAST_DILATED_DEPTHWISE = True
        assert out.dtype == torch.bfloat16 and grads[0].dtype == torch.float32
        results.append((out.float(), *grads))
    for fast, plain in zip(*results):
        torch.testing.assert_close(fast, plain, rtol=0.05, atol=0.05 * plain.abs().max().item())


def test_dilated_depthwise_rejects_non_depthwise_weight():
    with pytest.raises(ValueError, match=r"\(4, 1, kh, kw\)"):
        dilated_depthwise_conv2d(torch.zeros(1, 4, 8, 8), torch.zeros(4, 2, 3, 3), dilation=2,
                                 padding=(2, 2, 2, 2))


def test_fast_path_only_for_stride1_dilated_depthwise_on_cpu():
    conv = Conv2dSame(4, 4, 3, dilation=2, groups=4, bias=False)
    x = torch.zeros(1, 4, 8, 8)
    assert use_fast_dilated_depthwise(x, conv.weight, (1, 1), (2, 2), 4)
    assert not use_fast_dilated_depthwise(x, conv.weight, (2, 2), (2, 2), 4)
    assert not use_fast_dilated_depthwise(x, conv.weight, (1, 1), (1, 1), 4)
    assert not use_fast_dilated_depthwise(x, torch.zeros(4, 4, 3, 3), (1, 1), (2, 2), 1)
    # any other device (cuDNN's dilated kernels are fast) keeps plain F.conv2d
    assert not use_fast_dilated_depthwise(x.to("meta"), conv.weight, (1, 1), (2, 2), 4)
    out = conv(x.requires_grad_())
    assert type(out.grad_fn).__name__ == "_DilatedDepthwiseConv2dBackward"


def _levels_and_grads(net, image):
    out = net(image)
    sum(level.square().mean() for level in out.values()).backward()
    grads = {name: p.grad.clone() for name, p in net.named_parameters() if p.grad is not None}
    net.zero_grad(set_to_none=True)
    return {k: v.detach() for k, v in out.items()}, grads


@pytest.mark.parametrize("output_stride", [8, 16])
def test_efficientnet_same_features_and_gradients_with_fast_path(output_stride):
    torch.manual_seed(0)
    net = build_backbone("efficientnet_lite0", output_stride=output_stride).train()
    image = torch.randn(2, 3, 72, 56)  # 9x7 at stride 8: odd sizes reach the dilated stages
    _assert_same_with_switch_off(net, image, "FAST_DILATED_DEPTHWISE")


def _assert_same_with_switch_off(net, image, switch: str) -> None:
    """Levels and gradients with ``layers.<switch>`` on equal those with it off."""
    try:
        setattr(layers, switch, False)
        plain = _levels_and_grads(net, image)
    finally:
        setattr(layers, switch, True)
    fast = _levels_and_grads(net, image)
    assert list(fast[1]) == list(plain[1]) and len(fast[1]) == 46  # conv weights; BN is frozen
    for got, want in zip(fast, plain):
        for name in want:
            torch.testing.assert_close(got[name], want[name], rtol=1e-4,
                                       atol=1e-4 * want[name].abs().max().item(), msg=name)


# ---- frozen BatchNorm folded into the convolution ---------------------------------------------

def _bn_with_statistics(channels: int) -> torch.nn.BatchNorm2d:
    bn = torch.nn.BatchNorm2d(channels, eps=1e-3)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2.0)
        bn.bias.uniform_(-1.0, 1.0)
        bn.running_mean.uniform_(-1.0, 1.0)
        bn.running_var.uniform_(0.2, 3.0)
    return bn


@pytest.mark.parametrize("conv", [
    torch.nn.Conv2d(6, 5, 3, padding=1, bias=False),
    torch.nn.Conv2d(6, 5, 1, bias=True),
    Conv2dSame(6, 6, 5, 2, groups=6, bias=False),               # asymmetric TF padding
    Conv2dSame(6, 6, 3, 1, dilation=2, groups=6, bias=False),   # the fast dilated path
], ids=["conv3x3", "conv1x1-bias", "same-stride2-dw", "same-dilated-dw"])
def test_conv_frozen_bn_equals_conv_then_bn_with_gradients(conv):
    torch.manual_seed(0)
    bn = _bn_with_statistics(conv.out_channels).eval()
    x = torch.randn(2, 6, 11, 9, requires_grad=True)
    want = bn(conv(x))
    (want * torch.linspace(-1, 1, want.numel()).view_as(want)).sum().backward()
    want_grads = [x.grad.clone(), conv.weight.grad.clone(), bn.weight.grad.clone()]
    x.grad = conv.weight.grad = bn.weight.grad = None
    got = layers.conv_frozen_bn(conv, bn, x)
    (got * torch.linspace(-1, 1, got.numel()).view_as(got)).sum().backward()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for g, w in zip([x.grad, conv.weight.grad, bn.weight.grad], want_grads):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)
    # The module's own parameters are untouched: the fold is recomputed on every call.
    assert torch.equal(bn(conv(x)), want)


def test_conv_frozen_bn_keeps_batch_statistics_in_training_mode():
    torch.manual_seed(0)
    conv, bn = torch.nn.Conv2d(3, 4, 3, padding=1), _bn_with_statistics(4).train()
    x = torch.randn(4, 3, 8, 8)
    out = layers.conv_frozen_bn(conv, bn, x)
    # Batch statistics: each channel comes out normalised to mean beta, std gamma.
    torch.testing.assert_close(out.mean((0, 2, 3)), bn.bias.detach(), atol=1e-5, rtol=0)
    assert not torch.allclose(out, torch.nn.functional.batch_norm(
        conv(x), bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps))


@pytest.mark.parametrize("output_stride", [16, 32])
def test_efficientnet_same_features_and_gradients_with_folded_bn(output_stride):
    torch.manual_seed(0)
    net = build_backbone("efficientnet_lite0", output_stride=output_stride).train()
    with torch.no_grad():  # BN statistics no fresh network has
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    _assert_same_with_switch_off(net, torch.randn(2, 3, 72, 56), "FOLD_FROZEN_BN")
