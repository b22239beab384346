"""Backbones: ResNet-38d (SEAM/PSA), torchvision ResNet-50/101 and EfficientNet-Lite0, all
returning a dict of named feature levels (see ``Backbone``). Each registers its name in
``plda.registry.BACKBONES`` where it is defined; a module added to this package registers its
own the same way (and one outside it, through a config's ``imports``)."""

from __future__ import annotations

from plda.errors import ConfigError
from plda.models.backbones.base import IMAGENET_MEAN, IMAGENET_STD, Backbone, LoadReport
from plda.models.backbones.efficientnet_lite import (
    EFFNET_LITE_MEAN,
    EFFNET_LITE_STD,
    EfficientNetLite0,
    EfficientNetLite0Classifier,
)
from plda.models.backbones.resnet import TorchvisionResNet
from plda.models.backbones.resnet38 import ResNet38

__all__ = ["Backbone", "LoadReport", "build_backbone", "ResNet38",
           "TorchvisionResNet", "EfficientNetLite0", "EfficientNetLite0Classifier",
           "IMAGENET_MEAN", "IMAGENET_STD", "EFFNET_LITE_MEAN", "EFFNET_LITE_STD"]


def _takes_dilate(name: str) -> bool:
    import inspect

    from plda.registry import BACKBONES

    return "dilate" in inspect.signature(BACKBONES.get(name).obj).parameters


def build_backbone(name: str, *, pretrained: str | None = None, output_stride: int = 8,
                   frozen_bn: bool = True, **kwargs) -> Backbone:
    """Build backbone ``name`` (registered in ``plda.registry.BACKBONES``) and load
    ``pretrained`` weights: a file (.safetensors, weights-only .pth, MXNet .params for
    resnet38) or a special name ("imagenet" for efficientnet_lite0; "torchvision" /
    "torchvision:IMAGENET1K_V2" for the ResNets). ``kwargs``: ``frozen_layers`` (module names
    kept frozen; default per backbone), ``dilate`` (False: strides below the backbone's own
    dropped without dilating, where the backbone supports it)."""
    unknown = sorted(set(kwargs) - {"frozen_layers", "dilate"})
    if unknown:
        raise ConfigError(f"unknown backbone option(s) {unknown}; expected frozen_layers, "
                          "dilate")
    from plda.registry import BACKBONES

    entry = BACKBONES.get(name)
    if "dilate" in kwargs and not _takes_dilate(name):
        raise ConfigError(f"model.dilate={kwargs['dilate']}: backbone {name!r} always dilates "
                          "below its own stride; dilate=false is supported by "
                          f"{[n for n in BACKBONES if _takes_dilate(n)]}")
    backbone: Backbone = entry.build(output_stride=output_stride, frozen_bn=frozen_bn, **kwargs)
    if pretrained:
        backbone.load_pretrained(pretrained)
    return backbone
