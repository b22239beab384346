"""Wide ResNet-38 ("ResNet-38d"), the backbone of PSA / SEAM / PLDA, with the reference's
parameter names so that their state dicts and the converted MXNet ImageNet weights load strictly.

Pre-activation blocks (BN-ReLU-conv); b5..b7 are dilated instead of strided, so every level from
``conv4`` on is at output stride 8. Architecture: Wu, Shen, van den Hengel, "Wider or Deeper:
Revisiting the ResNet Model for Visual Recognition" (2016), as ``network/resnet38d.py`` of
jiwoon-ahn/psa and YudeWang/SEAM builds it.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from plda.errors import ConfigError
from plda.models.backbones.base import Backbone
from plda.models.joint_conv import joint_conv2d
from plda.weights.convert import ConvertReport, convert_resnet38, resnet38_name_map
from plda.registry import BACKBONES
from plda.weights.mxnet import strip_name


class ResBlock(nn.Module):
    """Pre-activation basic block: two 3x3 convs; 1x1 projection shortcut when the shape changes.

    ``forward`` returns ``(output, bn_relu(input))``: the reference exposes the block's
    normalised input as its ``conv3/4/5`` features.
    """

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, stride: int = 1,
                 first_dilation: int | None = None, dilation: int = 1) -> None:
        super().__init__()
        first_dilation = dilation if first_dilation is None else first_dilation
        self.same_shape = in_channels == out_channels and stride == 1
        self.bn_branch2a = nn.BatchNorm2d(in_channels)
        self.conv_branch2a = nn.Conv2d(in_channels, mid_channels, 3, stride, padding=first_dilation,
                                       dilation=first_dilation, bias=False)
        self.bn_branch2b1 = nn.BatchNorm2d(mid_channels)
        self.conv_branch2b1 = nn.Conv2d(mid_channels, out_channels, 3, padding=dilation,
                                        dilation=dilation, bias=False)
        if not self.same_shape:
            self.conv_branch1 = nn.Conv2d(in_channels, out_channels, 1, stride, bias=False)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x_bn_relu = F.relu(self.bn_branch2a(x))
        shortcut = x if self.same_shape else self.conv_branch1(x_bn_relu)
        branch2 = self.conv_branch2a(x_bn_relu)
        branch2 = self.conv_branch2b1(F.relu(self.bn_branch2b1(branch2)))
        return shortcut + branch2, x_bn_relu

    def forward_views(self, xs: list[Tensor]) -> list[tuple[Tensor, Tensor]]:
        """:meth:`forward` of each view, every convolution one GEMM over all views."""
        pre = [F.relu(self.bn_branch2a(x)) for x in xs]
        shortcut = xs if self.same_shape else joint_conv2d(self.conv_branch1, pre)
        branch2 = joint_conv2d(self.conv_branch2a, pre)
        branch2 = joint_conv2d(self.conv_branch2b1,
                               [F.relu(self.bn_branch2b1(b)) for b in branch2])
        return [(s + b, p) for s, b, p in zip(shortcut, branch2, pre)]


class ResBlockBottleneck(nn.Module):
    """Pre-activation bottleneck (1x1 -> dilated 3x3 -> 1x1, widths out/4, out/2, out) with
    Dropout2d before the 3x3 and the last 1x1, as the reference's ``ResBlock_bot``."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, dilation: int = 1,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.bn_branch2a = nn.BatchNorm2d(in_channels)
        self.conv_branch2a = nn.Conv2d(in_channels, out_channels // 4, 1, stride, bias=False)
        self.bn_branch2b1 = nn.BatchNorm2d(out_channels // 4)
        self.dropout_2b1 = nn.Dropout2d(dropout)
        self.conv_branch2b1 = nn.Conv2d(out_channels // 4, out_channels // 2, 3, padding=dilation,
                                        dilation=dilation, bias=False)
        self.bn_branch2b2 = nn.BatchNorm2d(out_channels // 2)
        self.dropout_2b2 = nn.Dropout2d(dropout)
        self.conv_branch2b2 = nn.Conv2d(out_channels // 2, out_channels, 1, bias=False)
        # The reference always projects the shortcut here (in != out for both uses).
        self.conv_branch1 = nn.Conv2d(in_channels, out_channels, 1, stride, bias=False)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x_bn_relu = F.relu(self.bn_branch2a(x))
        branch2 = self.conv_branch2a(x_bn_relu)
        branch2 = self.conv_branch2b1(self.dropout_2b1(F.relu(self.bn_branch2b1(branch2))))
        branch2 = self.conv_branch2b2(self.dropout_2b2(F.relu(self.bn_branch2b2(branch2))))
        return self.conv_branch1(x_bn_relu) + branch2, x_bn_relu

    def forward_views(self, xs: list[Tensor]) -> list[tuple[Tensor, Tensor]]:
        """:meth:`forward` of each view, every convolution one GEMM over all views."""
        pre = [F.relu(self.bn_branch2a(x)) for x in xs]
        branch2 = joint_conv2d(self.conv_branch2a, pre)
        branch2 = joint_conv2d(self.conv_branch2b1, [
            self.dropout_2b1(F.relu(self.bn_branch2b1(b))) for b in branch2])
        branch2 = joint_conv2d(self.conv_branch2b2, [
            self.dropout_2b2(F.relu(self.bn_branch2b2(b))) for b in branch2])
        shortcut = joint_conv2d(self.conv_branch1, pre)
        return [(s + b, p) for s, b, p in zip(shortcut, branch2, pre)]


@BACKBONES.register("resnet38", low_level="conv3")
class ResNet38(Backbone):
    """ResNet-38d: levels ``conv3`` (256 ch, /4), ``conv4`` (512, /8), ``conv5`` (1024, /8) and
    ``conv6`` = ReLU(bn7(b7)) (4096, /8), named as SEAM's ``forward_as_dict``."""

    name = "resnet38"
    level_names = ("conv3", "conv4", "conv5", "conv6")
    channels = {"conv3": 256, "conv4": 512, "conv5": 1024, "conv6": 4096}
    strides = {"conv3": 4, "conv4": 8, "conv5": 8, "conv6": 8}
    final_level = "conv6"
    pcm_levels = ("conv4", "conv5")
    default_frozen_layers = ("conv1a", "b2", "b2_1", "b2_2")  # SEAM's ``not_training``

    def __init__(self, *, output_stride: int = 8, frozen_bn: bool = True,
                 frozen_layers: Sequence[str] | None = None) -> None:
        if output_stride != 8:
            raise ConfigError(f"output_stride={output_stride} is not supported by resnet38: "
                              "its dilations fix it at 8")
        super().__init__(frozen_bn=frozen_bn)
        self.conv1a = nn.Conv2d(3, 64, 3, padding=1, bias=False)
        self.b2 = ResBlock(64, 128, 128, stride=2)
        self.b2_1 = ResBlock(128, 128, 128)
        self.b2_2 = ResBlock(128, 128, 128)
        self.b3 = ResBlock(128, 256, 256, stride=2)
        self.b3_1 = ResBlock(256, 256, 256)
        self.b3_2 = ResBlock(256, 256, 256)
        self.b4 = ResBlock(256, 512, 512, stride=2)
        self.b4_1 = ResBlock(512, 512, 512)
        self.b4_2 = ResBlock(512, 512, 512)
        self.b4_3 = ResBlock(512, 512, 512)
        self.b4_4 = ResBlock(512, 512, 512)
        self.b4_5 = ResBlock(512, 512, 512)
        self.b5 = ResBlock(512, 512, 1024, stride=1, first_dilation=1, dilation=2)
        self.b5_1 = ResBlock(1024, 512, 1024, dilation=2)
        self.b5_2 = ResBlock(1024, 512, 1024, dilation=2)
        self.b6 = ResBlockBottleneck(1024, 2048, stride=1, dilation=4, dropout=0.3)
        self.b7 = ResBlockBottleneck(2048, 4096, dilation=4, dropout=0.5)
        self.bn7 = nn.BatchNorm2d(4096)
        self._setup_freezing(frozen_layers)

    # The block chain after conv1a; a named level is the block's normalised input (its
    # ``x_bn_relu``), as SEAM's ``forward_as_dict``: conv3 = b4's, conv4 = b5's, conv5 = b6's.
    _chain = (("b2", None), ("b2_1", None), ("b2_2", None), ("b3", None), ("b3_1", None),
              ("b3_2", None), ("b4", "conv3"), ("b4_1", None), ("b4_2", None), ("b4_3", None),
              ("b4_4", None), ("b4_5", None), ("b5", "conv4"), ("b5_1", None), ("b5_2", None),
              ("b6", "conv5"), ("b7", None))

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return self.forward_views([x])[0]

    def forward_views(self, images: Sequence[Tensor]) -> list[dict[str, Tensor]]:
        xs = [self.conv1a(x) for x in images]
        levels: list[dict[str, Tensor]] = [{} for _ in xs]
        for name, level in self._chain:
            for i, (x, normalised) in enumerate(getattr(self, name).forward_views(xs)):
                xs[i] = x
                if level is not None:
                    levels[i][level] = normalised
        for i, x in enumerate(xs):
            levels[i]["conv6"] = F.relu(self.bn7(x))
        return levels

    def convert_state_dict(self, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return convert_mxnet_names(state)


def convert_mxnet_names(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename the MXNet ResNet-38 ImageNet parameters (``ilsvrc-cls_rna-a1_cls1000_ep-0001``) to
    ours: ``res2a_branch2a_weight`` -> ``b2.conv_branch2a.weight``, ``bn4b3_branch2b1_gamma`` ->
    ``b4_3.bn_branch2b1.weight``, ``bn7_moving_var`` -> ``bn7.running_var``, ``conv1a_weight``.

    The rule is :func:`plda.weights.convert.resnet38_name_map`'s. ``arg:``/``aux:`` prefixes are
    stripped; names already in our form and unknown names pass through unchanged, so the check
    in ``load_checked`` reports the latter (and drops ``linear1000``).
    """
    return {resnet38_name_map(k) or strip_name(k): v for k, v in state.items()}


def state_shapes() -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """``{key: (shape, dtype)}`` of a freshly built :class:`ResNet38` state dict, built on the
    ``meta`` device: only shapes are needed, not 105 M initialised parameters."""
    with torch.device("meta"):
        model = ResNet38()
    return {k: (tuple(v.shape), v.dtype) for k, v in model.state_dict().items()}


def convert_imagenet_params(params_path, out_path, fmt: str | None = None,
                            allow_missing: bool = False) -> ConvertReport:
    """The MXNet ImageNet weights (``ilsvrc-cls_rna-a1_cls1000_ep-0001.params``) renamed,
    shape-checked against :class:`ResNet38` and saved (:func:`plda.weights.convert.
    convert_resnet38`)."""
    return convert_resnet38(params_path, out_path, state_shapes(), fmt=fmt,
                            allow_missing=allow_missing)
