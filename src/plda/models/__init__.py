"""Networks: backbones (``plda.models.backbones``) and the heads built on them."""

from plda.models.backbones import Backbone, build_backbone

__all__ = ["Backbone", "build_backbone"]
