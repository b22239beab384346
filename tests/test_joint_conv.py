"""The joint-view GEMM convolution equals one F.conv2d per view (outputs and every gradient);
ResNet-38's lockstep ``forward_views`` equals per-view ``forward``; and it is used only where it
is meant to be (tests/test_fastpath.py: which path runs, and bf16)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from plda.models import joint_conv
from plda.models.backbones import build_backbone
from plda.models.joint_conv import joint_conv2d


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


GEOMETRIES = [  # (in, out, kernel, stride, padding, dilation)
    (6, 5, 3, 1, 1, 1), (6, 5, 3, 1, 2, 2), (6, 5, 3, 1, 4, 4), (6, 5, 1, 1, 0, 1),
    (6, 5, 3, 2, 1, 1), (6, 5, 1, 2, 0, 1), (4, 7, 3, 1, 0, 1)]


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_joint_conv_equals_per_view_conv(geometry):
    cin, cout, k, stride, padding, dilation = geometry
    torch.manual_seed(0)
    conv = nn.Conv2d(cin, cout, k, stride, padding, dilation, bias=False).double()
    shapes = [(2, cin, 9, 11), (2, cin, 4, 3), (1, cin, 6, 6)][: 3 if k == 1 else 2]
    views = [torch.randn(s, dtype=torch.float64, requires_grad=True) for s in shapes]
    out_ref = [conv(x) for x in views]
    upstream = [torch.randn_like(o) for o in out_ref]
    grads_ref = torch.autograd.grad(out_ref, [conv.weight, *views], upstream)
    out = list(joint_conv._JointConv2d.apply(
        conv.weight, joint_conv.ConvGeometry(conv.weight, conv.stride, conv.padding,
                                             conv.dilation), *views))
    grads = torch.autograd.grad(out, [conv.weight, *views], upstream)
    for a, b in zip(out, out_ref):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    for a, b in zip(grads, grads_ref):  # weight gradient = sum over views; input gradients
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_joint_conv_skips_gradients_nobody_needs():
    conv = nn.Conv2d(3, 4, 3, padding=2, dilation=2, bias=False)
    conv.weight.requires_grad_(False)
    x = torch.randn(1, 3, 5, 5, requires_grad=True)
    y = torch.randn(1, 3, 4, 4)  # a view that needs no input gradient
    out = joint_conv2d(conv, [x, y])
    gx, = torch.autograd.grad(sum(o.sum() for o in out), [x])
    torch.testing.assert_close(gx, torch.autograd.grad(conv(x).sum(), [x])[0])


def test_resnet38_lockstep_views_equal_separate_forwards():
    """Two views (128 and 38 px, as SEAM's 0.3 scale) through the joint convolutions give the
    levels and parameter gradients of two separate forward passes (dropout off: eval mode for
    the comparison; frozen layers stay frozen either way)."""
    torch.manual_seed(0)
    net = build_backbone("resnet38", pretrained=None).eval()
    views = [torch.randn(1, 3, 64, 64), torch.randn(1, 3, 19, 19)]
    params = [p for p in net.parameters() if p.requires_grad]
    joint = net.forward_views(views)
    g_joint = torch.autograd.grad(sum(v["conv6"].square().mean() for v in joint), params)
    separate = [net(x) for x in views]
    g_sep = torch.autograd.grad(sum(v["conv6"].square().mean() for v in separate), params)
    for a, b in zip(joint, separate):
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)
    for a, b in zip(g_joint, g_sep):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-6)
