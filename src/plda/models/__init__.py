"""Networks: backbones (``plda.models.backbones``) and the heads built on them."""

from plda.models.backbones import BACKBONES, Backbone, build_backbone

__all__ = ["BACKBONES", "Backbone", "build_backbone"]
