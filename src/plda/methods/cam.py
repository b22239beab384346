"""Plain CAM (Zhou et al., CVPR 2016) trained as IRN's ``resnet50_cam``: global average pooling
of the final features, a bias-free 1x1 classifier, multilabel soft-margin loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from plda.methods.base import CamOutput, StageOneModel, ViewOutput
from plda.methods.config import MethodConfig
from plda.methods.heads import ClassifierHead
from plda.methods.plda import WithPLDA
from plda.models.fastpath import full_precision
from plda.registry import METHODS


def classification_loss(scores: Tensor, labels: Tensor) -> Tensor:
    """Multilabel soft margin: mean over batch and classes of
    -[y log sigmoid(s) + (1 - y) log sigmoid(-s)] for scores (B, C) and multi-hot labels."""
    return F.multilabel_soft_margin_loss(scores, labels)


@METHODS.register("cam")
class CAMModel(StageOneModel):
    """Backbone + GAP + 1x1 classifier (C outputs, no background channel).

    For PLDA (``cam_plda``) a view's ``raw`` and ``cam_rv`` are the CAM itself with a constant
    background channel first (``method.cps.background_logit``, the value CPS's pseudo labels
    give the background): MaskAssign reads the CAM, CPS trains its logits against that constant.
    """

    def __init__(self, cfg: MethodConfig, backbone: nn.Module, num_classes: int) -> None:
        super().__init__(backbone, num_classes, cfg.weights)
        self.classifier = ClassifierHead(backbone.channels[backbone.final_level], num_classes)
        self.background_logit = cfg.cps.background_logit

    def run_views(self, images: list[Tensor]) -> list[ViewOutput]:
        views = []
        for levels in self.backbone.forward_views(images):
            features = levels[self.backbone.final_level]
            cam = full_precision(self.classifier(features))
            raw = torch.cat([torch.full_like(cam[:, :1], self.background_logit), cam], 1)
            views.append(ViewOutput(features=features, raw=raw, cam_rv=raw))
        return views

    def baseline_losses(self, images: list[Tensor], views: list[ViewOutput], label: Tensor
                        ) -> dict[str, Tensor]:
        # IRN pools before classifying; for a linear classifier this equals GAP of the CAM.
        scores = [full_precision(self.classifier(F.adaptive_avg_pool2d(v.features, 1))).flatten(1)
                  for v in views]
        return {"cls": sum(classification_loss(s, label) for s in scores) / len(scores)}

    @torch.no_grad()
    def cams(self, image: Tensor, chunk_size: int | None = None,
             revised: bool = True) -> CamOutput:
        features = self.backbone(image)[self.backbone.final_level]
        cam = full_precision(self.classifier.conv(features))
        return CamOutput(cam=cam, raw=cam)


@METHODS.register("cam_plda")
class CAMPLDAModel(WithPLDA, CAMModel):
    """Plain CAM plus PLDA: MaskAssign on the CAM itself (no PCM), the erased pass, the domain
    classifier on the final features and CPS on the CAM's logits; two backbone passes per step."""
