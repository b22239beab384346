"""A backbone, a stage-1 method and a refiner of one's own, registered the way a user's module
would (``tests/test_extensions.py`` names this module under ``imports:`` in a preset). Nothing
outside this module and that preset knows them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from plda.methods.base import CamOutput, StageOneModel, ViewOutput
from plda.models.backbones.base import Backbone
from plda.refinement.base import Refiner, seed_scores
from plda.registry import BACKBONES, METHODS, REFINERS


@BACKBONES.register("toy_convnet", low_level="s2")
class ToyConvNet(Backbone):
    """Three strided 3x3 conv stages (strides 2, 4, 8) and a fourth at the output stride."""

    name = "toy_convnet"
    level_names = ("s1", "s2", "s3", "s4")
    pcm_levels = ("s2", "s3")
    final_level = "s4"

    def __init__(self, *, output_stride: int = 16, frozen_bn: bool = True,
                 frozen_layers=None) -> None:
        super().__init__(frozen_bn=frozen_bn)
        widths = {"s1": 8, "s2": 16, "s3": 24, "s4": 32}
        last = 2 if output_stride >= 16 else 1
        steps = {"s1": 2, "s2": 2, "s3": 2, "s4": last}
        self.channels = dict(widths)
        self.strides, total, c_in = {}, 1, 3
        for level in self.level_names:
            total *= steps[level]
            self.strides[level] = total
            setattr(self, level, nn.Sequential(
                nn.Conv2d(c_in, widths[level], 3, steps[level], 1), nn.ReLU()))
            c_in = widths[level]
        self._setup_freezing(frozen_layers)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        out = {}
        for level in self.level_names:
            x = getattr(self, level)(x)
            out[level] = x
        return out


@METHODS.register("toy_gmp_cam")
class ToyGMPCAM(StageOneModel):
    """CAM with global max pooling instead of average pooling."""

    def __init__(self, cfg, backbone: nn.Module, num_classes: int) -> None:
        super().__init__(backbone, num_classes, cfg.weights)
        self.classifier = nn.Conv2d(backbone.channels[backbone.final_level], num_classes, 1,
                                    bias=False)

    def run_views(self, images: list[Tensor]) -> list[ViewOutput]:
        views = []
        for levels in self.backbone.forward_views(images):
            features = levels[self.backbone.final_level]
            cam = self.classifier(features)
            raw = torch.cat([torch.zeros_like(cam[:, :1]), cam], 1)
            views.append(ViewOutput(features=features, raw=raw, cam_rv=raw))
        return views

    def baseline_losses(self, images, views, label) -> dict[str, Tensor]:
        scores = [F.adaptive_max_pool2d(v.raw[:, 1:], 1).flatten(1) for v in views]
        return {"cls": sum(F.multilabel_soft_margin_loss(s, label) for s in scores)
                / len(scores)}

    @torch.no_grad()
    def cams(self, image: Tensor, chunk_size=None, revised: bool = True) -> CamOutput:
        cam = self.classifier(self.backbone(image)[self.backbone.final_level])
        return CamOutput(cam=cam, raw=cam)


@dataclass
class GrowOptions:
    """``refine.options`` of the toy refiner."""

    grow: int = 1  # pixels each class grows into the background


@REFINERS.register("toy_grow", description="the seeds, each class grown into the background")
class GrowRefiner(Refiner):
    """Seeds (threshold argmax) with every class dilated ``grow`` pixels into background."""

    options = GrowOptions

    def setup(self, dist) -> None:
        from plda.runfolder import background_threshold

        self.threshold = background_threshold(self.cfg)

    def pseudo_info(self) -> dict:
        return {"bg_threshold": self.threshold, "grow": self.section().grow}

    def mask(self, image_id, cam_path, image_path) -> np.ndarray:
        probs, keys = seed_scores(cam_path, self.threshold)
        label = torch.from_numpy(np.argmax(probs, 0))
        k = 2 * self.section().grow + 1
        grown = label.clone()
        for index in range(1, len(keys)):
            mask = (label == index).float()[None, None]
            near = F.max_pool2d(mask, k, 1, k // 2)[0, 0] > 0
            grown[(grown == 0) & near] = index
        return keys[grown.numpy()].astype(np.uint8)
