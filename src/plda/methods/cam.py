"""Plain CAM (Zhou et al., CVPR 2016) trained as IRN's ``resnet50_cam``: global average pooling
of the final features, a bias-free 1x1 classifier, multilabel soft-margin loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from plda.methods.base import CamOutput, StageOneModel
from plda.methods.config import MethodConfig
from plda.methods.heads import ClassifierHead
from plda.models.fastpath import full_precision


def classification_loss(scores: Tensor, labels: Tensor) -> Tensor:
    """Multilabel soft margin: mean over batch and classes of
    -[y log sigmoid(s) + (1 - y) log sigmoid(-s)] for scores (B, C) and multi-hot labels."""
    return F.multilabel_soft_margin_loss(scores, labels)


class CAMModel(StageOneModel):
    """Backbone + GAP + 1x1 classifier (C outputs, no background channel)."""

    def __init__(self, cfg: MethodConfig, backbone: nn.Module, num_classes: int) -> None:
        super().__init__(backbone, num_classes, cfg.weights)
        self.classifier = ClassifierHead(backbone.channels[backbone.final_level], num_classes)

    def forward(self, batch: dict[str, Tensor], progress: float = 0.0) -> dict[str, Tensor]:
        image, label = self._inputs(batch)
        features = self.backbone(image)[self.backbone.final_level]
        # IRN pools before classifying; for a linear classifier this equals GAP of the CAM.
        scores = full_precision(self.classifier(F.adaptive_avg_pool2d(features, 1))).flatten(1)
        return self._total({"cls": classification_loss(scores, label)})

    @torch.no_grad()
    def cams(self, image: Tensor, chunk_size: int | None = None,
             revised: bool = True) -> CamOutput:
        features = self.backbone(image)[self.backbone.final_level]
        cam = full_precision(self.classifier.conv(features))
        return CamOutput(cam=cam, raw=cam)
