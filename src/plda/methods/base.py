"""The interface every stage-1 method implements, and what they share.

A ``StageOneModel`` owns its backbone and new layers. ``forward(batch, progress)`` is the whole
training step up to the loss (DDP wraps this call, so every pass of a step happens inside it):
``training_views`` -> ``run_views`` -> ``baseline_losses``, the three methods PLDA composes with
(``plda.methods.plda``);
``cams(image)`` is the inference output; ``parameter_groups()`` gives the four SGD groups of
SEAM/PLDA (backbone weights/biases, new-layer weights/biases at 1x/2x/10x/20x learning rate).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from plda.errors import ConfigError, DataError
from plda.methods.config import LossWeights

# Learning-rate and weight-decay multipliers of the reference's four parameter groups.
_GROUPS = (("backbone_weights", 1.0, 1.0), ("backbone_biases", 2.0, 0.0),
           ("new_weights", 10.0, 1.0), ("new_biases", 20.0, 0.0))


@dataclass
class CamOutput:
    """Inference output on the backbone's feature grid (h, w = input size / stride).

    ``cam``: (B, C, h, w) foreground class maps as the method's inference uses them (plain CAM:
    the classifier map; SEAM/PLDA: the PCM-revised CAM). Not ReLU'd, not normalised, not masked
    by labels. SEAM's inference upsamples them to the network input size (bilinear,
    align_corners=True) before resizing to the original image.
    ``raw``: (B, C or C+1, h, w) the classifier output (SEAM/PLDA: channel 0 is background).
    """

    cam: Tensor
    raw: Tensor


@dataclass
class ViewOutput:
    """One image batch's training pass on the CAM grid (h, w): the final ``features``, ``raw``
    the classifier's logits with the background first (C+1 channels; a baseline without a
    background channel puts a constant there) and ``cam_rv`` the map that PLDA's MaskAssign
    reads (C+1, background first: SEAM's PCM-revised CAM, plain CAM's own map)."""

    features: Tensor
    raw: Tensor
    cam_rv: Tensor


class StageOneModel(nn.Module, abc.ABC):
    """Base class: a backbone plus method-specific new layers and losses."""

    has_background: bool = False

    def __init__(self, backbone: nn.Module, num_classes: int, weights: LossWeights) -> None:
        super().__init__()
        if num_classes < 1:
            raise ConfigError(f"num_classes={num_classes}: expected at least one class")
        self.backbone = backbone
        self.num_classes = num_classes
        self.loss_weights = weights

    @abc.abstractmethod
    def cams(self, image: Tensor, chunk_size: int | None = None,
             revised: bool = True) -> CamOutput:
        """Class activation maps of a normalised image batch (call in eval mode).
        ``chunk_size`` overrides the PCM affinity block size; ``revised=False`` returns the
        classifier's raw CAM as ``cam`` instead of PCM's revision (methods without PCM ignore
        both)."""

    def training_views(self, image: Tensor) -> list[Tensor]:
        """The image batches one training step runs (default: the batch itself)."""
        return [image]

    def run_views(self, images: list[Tensor]) -> list[ViewOutput]:
        """The training pass of each image batch (what PLDA builds on, ``plda.methods.plda``)."""
        raise NotImplementedError(f"{type(self).__name__} does not expose its views")

    def baseline_losses(self, images: list[Tensor], views: list[ViewOutput], label: Tensor
                        ) -> dict[str, Tensor]:
        """The method's own loss terms from ``run_views``'s output."""
        raise NotImplementedError(f"{type(self).__name__} does not expose its losses")

    def forward(self, batch: dict[str, Tensor], progress: float = 0.0) -> dict[str, Tensor]:
        """One training step's losses: ``{"loss": total, <term>: value, "stat/<x>": value}``."""
        image, label = self._inputs(batch)
        images = self.training_views(image)
        return self._total(self.baseline_losses(images, self.run_views(images), label))

    def parameter_groups(self) -> list[dict]:
        """Four torch.optim groups: backbone weights, backbone biases, new-layer weights,
        new-layer biases, with ``lr_mult`` 1/2/10/20 and ``weight_decay_mult`` 1/0/1/0."""
        return backbone_and_new_groups(self, self.backbone)

    def _inputs(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        image, label = batch["image"], batch["label"]
        if image.dim() != 4 or image.shape[1] != 3:
            raise DataError(f"batch['image'] has shape {tuple(image.shape)}; expected (B, 3, H, W)")
        if label.shape != (image.shape[0], self.num_classes):
            raise DataError(f"batch['label'] has shape {tuple(label.shape)}; expected "
                            f"({image.shape[0]}, {self.num_classes}) multi-hot labels for "
                            f"num_classes={self.num_classes}")
        return image, label.to(image.dtype)

    def _total(self, terms: dict[str, Tensor], stats: dict[str, Tensor | float] | None = None
               ) -> dict[str, Tensor]:
        """Weighted sum of ``terms`` under "loss", plus every term and stat detached."""
        total = sum(getattr(self.loss_weights, k) * v for k, v in terms.items())
        out = {"loss": total}
        out.update({k: v.detach() for k, v in terms.items()})
        for k, v in (stats or {}).items():
            out[f"stat/{k}"] = torch.as_tensor(v, dtype=total.dtype, device=total.device).detach()
        return out


def backbone_and_new_groups(model: nn.Module, backbone: nn.Module) -> list[dict]:
    """The reference's four SGD groups of ``model``: ``backbone``'s trainable weights (1x lr)
    and biases (2x, no decay), then every other trainable weight (10x) and bias (20x, no decay).
    Shared by stage 1 and the stage-2 segmentation net, so both train with the same recipe."""
    backbone_ids = {id(p) for p in backbone.parameters()}
    new_weights: list[nn.Parameter] = []
    new_biases: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        if p.requires_grad and id(p) not in backbone_ids:
            (new_biases if name.endswith("bias") else new_weights).append(p)
    lists = (*backbone.parameter_groups(), new_weights, new_biases)
    return [{"params": list(params), "lr_mult": lr, "weight_decay_mult": wd, "name": name}
            for params, (name, lr, wd) in zip(lists, _GROUPS)]
