"""Stage-2 segmentation networks (DeepLab family) on the shared backbones, and their weights file.

Heads, all reading the backbone's levels dict:

* ``deeplab_v2``: DeepLab-v2's ASPP classifier, four 3x3 convolutions straight to the class
  scores at dilations 6/12/18/24, summed (Chen et al. 2017; the ResNet-101 recipe of WSSS work).
* ``deeplab_v1_largefov``: the LargeFOV head of SEAM's segmentation code on ResNet-38: 3x3
  dilation 12 -> 512, BN, ReLU, dropout; 1x1 -> 512, BN, ReLU, dropout; 1x1 -> classes.
* ``deeplab_lite``: a light ASPP for CPU work (EfficientNet-Lite0): 1x1, two depthwise-separable
  dilated 3x3 branches and image pooling at a small width, then a 1x1 classifier.
* ``deeplab_v3plus``: DeepLab-v3's ASPP (1x1, 3x3 at 6/12/18, image pooling) and the v3+
  decoder that fuses the stride-4 level; its logits are at stride 4.
* ``deeplab_lite_plus``: ``deeplab_lite``'s ASPP and a light v3+ decoder (the stride-4 level
  reduced to 32 channels, one depthwise-separable 3x3 fuse at the ASPP width); logits at stride
  4. With it the backbone can run at output stride 32 (EfficientNet-Lite0 as ImageNet trained
  it, no dilated depthwise convolutions): on 2 CPU cores a batch of 8 crops of 224 trains in
  0.65 s against ``deeplab_lite``'s 1.31 s at stride 16 (``benchmarks/seg_step.py``), with
  logits 4x finer per side.

Dilations are quoted for the stride they were published at (8 for v1/v2, 16 for v3/v3+) and
scaled for the other output stride, so the field of view stays the same in input pixels.

The weights file is safetensors whose metadata says how to rebuild the network (arch, backbone,
output stride, classes, input normalisation): a file alone is enough to predict, no config needed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from plda.errors import ConfigError, WeightsError
from plda.models.layers import dilated_depthwise_conv2d, use_fast_dilated_depthwise
from plda.registry import BACKBONES

ARCHS: tuple[str, ...] = ("deeplab_v2", "deeplab_v1_largefov", "deeplab_lite", "deeplab_v3plus",
                          "deeplab_lite_plus")
# The heads with a decoder, which read a stride-4 level beside the final one.
DECODER_ARCHS = ("deeplab_v3plus", "deeplab_lite_plus")
WEIGHTS_FORMAT = "plda-segmentation"
WEIGHTS_VERSION = "1"
# Inside a run folder the trained network is <run>/<SEG_DIR>/<SEG_WEIGHTS>
# (plda.pipeline.segment re-exports these names).
SEG_DIR = "deeplab"
SEG_WEIGHTS = "segmentation.safetensors"



def low_level(backbone: str) -> str | None:
    """The stride-4 level backbone ``backbone`` offers the decoders: its registry entry's
    ``low_level`` (``plda.registry.BACKBONES``), or None when it names none."""
    return BACKBONES.meta(backbone).get("low_level")


def _rates(rates: tuple[int, ...], published_stride: int, output_stride: int) -> tuple[int, ...]:
    return tuple(max(1, r * published_stride // output_stride) for r in rates)


class ASPPv2(nn.Module):
    """DeepLab-v2's classifier: parallel dilated 3x3 convolutions to the class scores, summed.
    Initialised N(0, 0.01), bias 0, as DeepLab-v2 (a small start keeps the summed scores tame)."""

    def __init__(self, in_channels: int, num_classes: int, rates: tuple[int, ...]) -> None:
        super().__init__()
        self.rates = tuple(rates)
        self.branches = nn.ModuleList(
            nn.Conv2d(in_channels, num_classes, 3, padding=r, dilation=r, bias=True)
            for r in self.rates)
        for conv in self.branches:
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, x: Tensor) -> Tensor:
        out = self.branches[0](x)
        for conv in self.branches[1:]:
            out = out + conv(x)
        return out


class LargeFOVHead(nn.Module):
    """SEAM's DeepLab-v1 LargeFOV head (fc6 3x3 dilated, fc7 1x1, fc8 classifier), with BN after
    fc6/fc7 as in its segmentation code; Kaiming (fan-out) initialisation, as there."""

    def __init__(self, in_channels: int, num_classes: int, dilation: int = 12,
                 width: int = 512, dropout: float = 0.5) -> None:
        super().__init__()
        self.dilation = dilation
        self.fc6 = nn.Conv2d(in_channels, width, 3, padding=dilation, dilation=dilation,
                             bias=False)
        self.bn6 = nn.BatchNorm2d(width)
        self.fc7 = nn.Conv2d(width, width, 1, bias=False)
        self.bn7 = nn.BatchNorm2d(width)
        self.dropout = nn.Dropout(dropout)
        self.fc8 = nn.Conv2d(width, num_classes, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.dropout(F.relu(self.bn6(self.fc6(x))))
        x = self.dropout(F.relu(self.bn7(self.fc7(x))))
        return self.fc8(x)


class DepthwiseConv2d(nn.Conv2d):
    """3x3 dilated depthwise convolution ("same" padding) that takes the project's fast CPU path
    (``plda.models.layers``): PyTorch's own dilated depthwise kernels are slow on CPU."""

    def __init__(self, channels: int, dilation: int) -> None:
        super().__init__(channels, channels, 3, padding=dilation, dilation=dilation,
                         groups=channels, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        if use_fast_dilated_depthwise(x, self.weight, self.stride, self.dilation, self.groups):
            d = self.dilation[0]
            return dilated_depthwise_conv2d(x, self.weight, None, dilation=self.dilation,
                                            padding=(d, d, d, d))
        return super().forward(x)


def _conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


def _separable(in_channels: int, out_channels: int, dilation: int) -> nn.Sequential:
    return nn.Sequential(DepthwiseConv2d(in_channels, dilation), nn.BatchNorm2d(in_channels),
                         nn.ReLU(inplace=True), *_conv_bn_relu(in_channels, out_channels))


class ImagePooling(nn.Module):
    """Global-average-pool branch of ASPP, broadcast back to the feature size. No BatchNorm: a
    pooled 1x1 map of a single image would give it one value per channel to normalise."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        pooled = F.relu(self.conv(F.adaptive_avg_pool2d(x, 1)))
        return pooled.expand(-1, -1, *x.shape[-2:])


class ASPP(nn.Module):
    """DeepLab-v3 ASPP: a 1x1 branch, dilated 3x3 branches (depthwise-separable when
    ``separable``), image pooling; concatenated and projected to ``width`` (BN, ReLU, dropout)."""

    def __init__(self, in_channels: int, width: int, rates: tuple[int, ...], *,
                 separable: bool, dropout: float) -> None:
        super().__init__()
        self.rates = tuple(rates)
        branches: list[nn.Module] = [_conv_bn_relu(in_channels, width)]
        for r in self.rates:
            if separable:
                branches.append(_separable(in_channels, width, r))
            else:
                branches.append(nn.Sequential(
                    nn.Conv2d(in_channels, width, 3, padding=r, dilation=r, bias=False),
                    nn.BatchNorm2d(width), nn.ReLU(inplace=True)))
        branches.append(ImagePooling(in_channels, width))
        self.branches = nn.ModuleList(branches)
        self.project = _conv_bn_relu(width * len(branches), width)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.project(torch.cat([b(x) for b in self.branches], 1)))


class LiteHead(nn.Module):
    """``deeplab_lite``: separable ASPP at a small width and a 1x1 classifier."""

    def __init__(self, in_channels: int, num_classes: int, rates: tuple[int, ...],
                 width: int = 96) -> None:
        super().__init__()
        self.aspp = ASPP(in_channels, width, rates, separable=True, dropout=0.1)
        self.classifier = nn.Conv2d(width, num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.aspp(x))


class _DecoderHead(nn.Module):
    """The v3+ decoder's forward: ``aspp`` on the final level, upsampled to the stride-4 level
    (after ``reduce``), concatenated, ``fuse``d and classified. Subclasses build the modules."""

    aspp: nn.Module
    reduce: nn.Module
    fuse: nn.Module
    classifier: nn.Module

    def forward(self, x: Tensor, low: Tensor) -> Tensor:
        low = self.reduce(low)
        x = F.interpolate(self.aspp(x), size=low.shape[-2:], mode="bilinear",
                          align_corners=False)
        return self.classifier(self.fuse(torch.cat([x, low], 1)))


class V3PlusHead(_DecoderHead):
    """DeepLab-v3+: ASPP on the final level, upsampled and fused with the stride-4 level."""

    def __init__(self, in_channels: int, low_channels: int, num_classes: int,
                 rates: tuple[int, ...], width: int = 256, low_width: int = 48) -> None:
        super().__init__()
        self.aspp = ASPP(in_channels, width, rates, separable=False, dropout=0.5)
        self.reduce = _conv_bn_relu(low_channels, low_width)
        self.fuse = nn.Sequential(
            nn.Conv2d(width + low_width, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        self.classifier = nn.Conv2d(width, num_classes, 1)


class LitePlusHead(_DecoderHead):
    """``deeplab_lite_plus``: the lite ASPP, upsampled to the stride-4 level (reduced to
    ``low_width`` channels) and fused by one depthwise-separable 3x3 convolution."""

    def __init__(self, in_channels: int, low_channels: int, num_classes: int,
                 rates: tuple[int, ...], width: int = 96, low_width: int = 32) -> None:
        super().__init__()
        self.aspp = ASPP(in_channels, width, rates, separable=True, dropout=0.1)
        self.reduce = _conv_bn_relu(low_channels, low_width)
        self.fuse = _separable(width + low_width, width, 1)
        self.classifier = nn.Conv2d(width, num_classes, 1)


class SegmentationNet(nn.Module):
    """A backbone and a DeepLab head: ``forward(images)`` -> class logits ``(B, num_classes, h,
    w)`` at ``logit_stride`` (not upsampled: callers choose how to resize, and training upsamples
    to the mask size). ``num_classes`` counts the background; ``output_stride`` is the
    backbone's; inputs are normalised with ``input_mean`` / ``input_std`` (0-1 RGB units)."""

    def __init__(self, backbone: nn.Module, head: nn.Module, *, arch: str, backbone_name: str,
                 num_classes: int, output_stride: int, low_level: str | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.arch, self.backbone_name = arch, backbone_name
        self.num_classes, self.output_stride = num_classes, output_stride
        self.final_level, self.low_level = backbone.final_level, low_level
        self.logit_stride = int(backbone.strides[low_level or backbone.final_level])
        self.input_mean = tuple(backbone.input_mean)
        self.input_std = tuple(backbone.input_std)

    def forward(self, images: Tensor) -> Tensor:
        levels = self.backbone(images)
        if self.low_level is not None:
            return self.head(levels[self.final_level], levels[self.low_level])
        return self.head(levels[self.final_level])

    def parameter_groups(self) -> list[dict]:
        """The reference's four SGD groups: backbone weights/biases at 1x/2x learning rate, head
        weights/biases at 10x/20x; biases without weight decay."""
        from plda.methods.base import backbone_and_new_groups

        return backbone_and_new_groups(self, self.backbone)


def build_segmentation_net(arch: str, backbone: str, num_classes: int, *, output_stride: int = 8,
                           pretrained: str | None = None, frozen_bn: bool = True
                           ) -> SegmentationNet:
    """The ``arch`` head on backbone ``backbone`` (registered in ``plda.registry.BACKBONES``) with
    ``pretrained`` ImageNet weights (a file or a special name, see ``build_backbone``).
    ``frozen_bn`` keeps the backbone's BatchNorm statistics and affine parameters fixed (as the
    reference); the head's BatchNorm always trains."""
    from plda.models.backbones import build_backbone

    if arch not in ARCHS:
        raise ConfigError(f"seg.model.arch={arch!r}: unknown; expected one of {list(ARCHS)}")
    if backbone not in BACKBONES:
        raise ConfigError(f"seg.model.backbone={backbone!r}: unknown; expected one of "
                          f"{list(BACKBONES)}")
    decoder_level = low_level(backbone)
    if arch in DECODER_ARCHS and decoder_level is None:
        with_level = [b for b in BACKBONES if low_level(b)]
        raise ConfigError(f"seg.model.arch={arch} needs a stride-4 level; backbone "
                          f"{backbone!r} registers none (low_level=...), expected one of "
                          f"{with_level}")
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ConfigError(f"num_classes={num_classes!r}: expected at least 2 (background and "
                          "one class)")
    if output_stride not in (8, 16, 32):
        raise ConfigError(f"seg.model.output_stride={output_stride!r}: expected 8, 16 or 32")
    net = build_backbone(backbone, pretrained=pretrained, output_stride=output_stride,
                         frozen_bn=frozen_bn)
    channels = net.channels[net.final_level]
    level = None
    if arch == "deeplab_v2":
        head: nn.Module = ASPPv2(channels, num_classes, _rates((6, 12, 18, 24), 8, output_stride))
    elif arch == "deeplab_v1_largefov":
        head = LargeFOVHead(channels, num_classes, dilation=_rates((12,), 8, output_stride)[0])
    elif arch == "deeplab_lite":
        head = LiteHead(channels, num_classes, _rates((6, 12), 16, output_stride))
    elif arch == "deeplab_lite_plus":
        level = decoder_level
        head = LitePlusHead(channels, net.channels[level], num_classes,
                            _rates((6, 12), 16, output_stride))
    else:
        level = decoder_level
        head = V3PlusHead(channels, net.channels[level], num_classes,
                          _rates((6, 12, 18), 16, output_stride))
    return SegmentationNet(net, head, arch=arch, backbone_name=backbone, num_classes=num_classes,
                           output_stride=output_stride, low_level=level)


# ---- weights file ------------------------------------------------------------------------------

def save_segmentation_net(path: str | os.PathLike, net: SegmentationNet,
                          class_names: list[str]) -> None:
    """Write ``net``'s weights as safetensors (atomically) with the metadata that rebuilds it."""
    from safetensors.torch import save

    from plda.utils.io import atomic_write_bytes

    module = getattr(net, "module", net)
    if len(class_names) != module.num_classes:
        raise ConfigError(f"{len(class_names)} class names for a network with "
                          f"{module.num_classes} classes; expected one name per class, "
                          "background first")
    tensors = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    metadata = {"format": WEIGHTS_FORMAT, "version": WEIGHTS_VERSION, "arch": module.arch,
                "backbone": module.backbone_name, "output_stride": str(module.output_stride),
                "num_classes": str(module.num_classes), "class_names": json.dumps(class_names),
                "input_mean": json.dumps(list(module.input_mean)),
                "input_std": json.dumps(list(module.input_std))}
    atomic_write_bytes(path, save(tensors, metadata=metadata))


def resolve_weights_path(path: str | os.PathLike) -> Path:
    """``path`` itself, or for a folder its trained network: ``<run>/deeplab/`` or the
    ``deeplab`` folder itself."""
    path = Path(path).expanduser()
    if path.is_dir():
        for candidate in (path / SEG_DIR / SEG_WEIGHTS, path / SEG_WEIGHTS):
            if candidate.is_file():
                return candidate
        raise WeightsError(f"no segmentation weights in folder {path}: expected "
                           f"{path / SEG_DIR / SEG_WEIGHTS} (run 'plda segment train' first)")
    if not path.is_file():
        raise WeightsError(f"segmentation weights {path} not found: expected a "
                           f"{SEG_WEIGHTS} file or a run folder")
    return path


def read_segmentation_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The decoded metadata of a segmentation weights file (no tensors are read)."""
    from safetensors import SafetensorError, safe_open

    path = resolve_weights_path(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            raw = fh.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise WeightsError(f"{path}: not a segmentation weights file (not readable as "
                           f"safetensors: {exc})") from None
    if raw.get("format") != WEIGHTS_FORMAT:
        raise WeightsError(f"{path}: not a segmentation weights file of this toolkit (metadata "
                           f"format {raw.get('format')!r}, expected {WEIGHTS_FORMAT!r}); "
                           "stage-1 or backbone weights cannot be used here")
    try:
        meta = {"arch": raw["arch"], "backbone": raw["backbone"],
                "output_stride": int(raw["output_stride"]),
                "num_classes": int(raw["num_classes"]),
                "class_names": [str(c) for c in json.loads(raw["class_names"])],
                "input_mean": tuple(float(v) for v in json.loads(raw["input_mean"])),
                "input_std": tuple(float(v) for v in json.loads(raw["input_std"])),
                "version": raw.get("version"), "path": str(path)}
    except (KeyError, ValueError, TypeError) as exc:
        raise WeightsError(f"{path}: segmentation metadata missing or malformed ({exc!r}); "
                           "expected arch, backbone, output_stride, num_classes, class_names, "
                           "input_mean, input_std") from None
    if len(meta["class_names"]) != meta["num_classes"]:
        raise WeightsError(f"{path}: metadata lists {len(meta['class_names'])} class names for "
                           f"num_classes={meta['num_classes']}")
    return meta


def load_segmentation_net(path: str | os.PathLike, device: torch.device | str | None = None
                          ) -> tuple[SegmentationNet, dict[str, Any]]:
    """Rebuild the network a weights file (or run folder) describes, load it strictly and
    return it in eval mode with its metadata (``class_names``, ``arch``, ...). Safetensors only:
    nothing is unpickled."""
    from plda.weights.io import load_state_dict_file

    meta = read_segmentation_metadata(path)
    source = meta["path"]
    try:
        net = build_segmentation_net(meta["arch"], meta["backbone"], meta["num_classes"],
                                     output_stride=meta["output_stride"], pretrained=None)
    except ConfigError as exc:
        raise WeightsError(f"{source}: its metadata does not describe a buildable network: "
                           f"{exc}") from None
    state = load_state_dict_file(source)
    own = net.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in own if k in state and state[k].shape != own[k].shape]
    problems = [f"{what} ({len(keys)}): {keys[:6]}{' ...' if len(keys) > 6 else ''}"
                for what, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                                   ("shape mismatches", mismatched)) if keys]
    if problems:
        raise WeightsError(f"{source}: weights do not fit {meta['arch']} on {meta['backbone']} "
                           f"with {meta['num_classes']} classes: " + "; ".join(problems))
    net.load_state_dict(state, strict=True)
    if device is not None:
        net = net.to(device)
    # NHWC weights: oneDNN's (and cuDNN's) faster convolution layout; the math is the same.
    return net.eval().to(memory_format=torch.channels_last), meta


__all__ = ["ARCHS", "low_level", "SEG_DIR", "SEG_WEIGHTS", "WEIGHTS_FORMAT", "SegmentationNet",
           "build_segmentation_net", "load_segmentation_net", "read_segmentation_metadata",
           "resolve_weights_path", "save_segmentation_net"]
