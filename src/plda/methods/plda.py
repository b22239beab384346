"""PLDA (Du, Fu, Liu, IEEE TIP 2024) as a component that adds to any CAM baseline.

:class:`PLDA` holds what the method adds: MaskAssign (source S = the discriminative pixels of each
present class), the no-grad pass on the source-erased image (target T = what responds once S is
gone), the multi-head domain classifier behind gradient reversal, and Confident Pseudo-Supervision
(CPS: PAMR-refined pseudo labels inside S and T train the classifier's logits).

It talks to the baseline through three methods (:class:`PLDABaseline`), each returning or taking
:class:`plda.methods.base.ViewOutput` (``features``: what the domain classifier sees; ``cam_rv``:
the map MaskAssign reads; ``raw``: the logits CPS trains, background first):

- ``training_views(image)``: the image batches of one step (SEAM: the image and its 0.3x view);
- ``run_views(images)``: the baseline's forward pass on each, in train mode;
- ``baseline_losses(images, views, label)``: the baseline's own terms.

:class:`WithPLDA` composes the two: ``class CAMPLDAModel(WithPLDA, CAMModel)`` is CAM + PLDA, and a
new baseline gets PLDA the same way, with no change here. PLDA's terms are averaged over the views.
"""

from __future__ import annotations

import contextlib
from functools import reduce
from operator import add
from typing import Iterator, Protocol

import torch
from torch import Tensor, nn

from plda.methods.base import ViewOutput
from plda.methods.config import MethodConfig, cps_loss_background
from plda.methods.cps import balanced_cross_entropy, constant_background, cps_targets
from plda.methods.domain import (DomainClassifier, domain_labels, domain_loss, erase,
                                 grl_alpha, mask_assign, near_source, reverse_gradient)
from plda.methods.pamr import PAMR

# Keys of the layers PLDA adds, before they moved into the component (``domain.*``), and now.
_LEGACY_PREFIX, _PREFIX = "domain.", "plda.domain."


@contextlib.contextmanager
def dropout_disabled(module: nn.Module) -> Iterator[None]:
    """Switch every active dropout layer of ``module`` to eval for the block, then back."""
    active = [m for m in module.modules()
              if isinstance(m, nn.modules.dropout._DropoutNd) and m.training]
    for m in active:
        m.train(False)
    try:
        yield
    finally:
        for m in active:
            m.train(True)


class PLDABaseline(Protocol):
    """What a stage-1 model offers PLDA (module doc)."""

    def training_views(self, image: Tensor) -> list[Tensor]: ...

    def run_views(self, images: list[Tensor]) -> list[ViewOutput]: ...

    def baseline_losses(self, images: list[Tensor], views: list[ViewOutput], label: Tensor
                        ) -> dict[str, Tensor]: ...


class PLDA(nn.Module):
    """MaskAssign, the erased pass, the GRL domain classifier and CPS of one baseline."""

    def __init__(self, cfg: MethodConfig, feature_channels: int, num_classes: int,
                 input_mean, input_std) -> None:
        super().__init__()
        self.reference = cfg.reference
        self.cfg = cfg.plda
        self.cps_cfg = cfg.cps
        self.domain = DomainClassifier(feature_channels, num_classes, cfg.plda.domain_hidden,
                                       cfg.plda.domain_dropout)
        self.pamr = PAMR(cfg.pamr.iterations, cfg.pamr.dilations)
        self.cps_constant_background = cps_loss_background(cfg) == "constant"
        self.register_buffer("_pixel_mean", torch.tensor(input_mean).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("_pixel_std", torch.tensor(input_std).view(1, 3, 1, 1),
                             persistent=False)

    def alpha(self, progress: float) -> float:
        """The gradient-reversal strength at training ``progress`` (DANN schedule)."""
        return grl_alpha(progress, self.cfg.grl_gamma)

    @torch.no_grad()
    def domains(self, model: PLDABaseline, image: Tensor, view: ViewOutput, label: Tensor
                ) -> tuple[Tensor, Tensor, Tensor, ViewOutput]:
        """(source, target, erased image, erased view) of one view: S from ``view``, T from
        the no-grad pass of ``model`` on the image with S erased. Reference: that pass runs in
        train mode (dropout active); default: with ``model``'s dropout off, as at inference."""
        tau = self.cfg.tau
        source = mask_assign(view.cam_rv, label, tau)
        erased = erase(image, source)
        with contextlib.nullcontext() if self.reference else dropout_disabled(model):
            second = model.run_views([erased])[0]
        target = near_source(mask_assign(second.cam_rv, label, tau), source, self.cfg.target_near)
        return source, target, erased, second

    def forward(self, model: PLDABaseline, image: Tensor, view: ViewOutput, label: Tensor,
                alpha: float) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Domain and CPS losses of one view of ``model``, plus the source/target fractions."""
        with torch.no_grad():
            source, target, erased, second = self.domains(model, image, view, label)
            labels = domain_labels(source, target)
            # Both images' pseudo labels in one batched PAMR run.
            restricted, full = cps_targets(
                torch.cat([view.raw, second.raw]),
                torch.cat([image, erased]) * self._pixel_std + self._pixel_mean,
                label.repeat(2, 1), torch.cat([source, target]), self.pamr, self.cps_cfg)
            del second
        y_source, y_target = restricted.chunk(2)
        full_source, full_target = full.chunk(2)
        logits = self.domain(reverse_gradient(view.features, alpha))
        cps_logits = (constant_background(view.raw, self.cps_cfg.background_logit)
                      if self.cps_constant_background else view.raw)
        terms = {
            "domain": domain_loss(logits, labels, average_classes=not self.reference),
            "cps_source": balanced_cross_entropy(
                cps_logits, y_source, None if self.reference else full_source),
            "cps_target": balanced_cross_entropy(
                cps_logits, y_target, None if self.reference else full_target),
        }
        stats = {"source_fraction": source.any(1).float().mean(),
                 "target_fraction": (labels == 1).any(1).float().mean()}
        return terms, stats


def _view_mean(per_view: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    return {k: reduce(add, (d[k] for d in per_view)) / len(per_view) for k in per_view[0]}


class WithPLDA:
    """Mixin that adds :class:`PLDA` to a baseline ``StageOneModel`` placed after it in the
    bases: ``class XPLDAModel(WithPLDA, XModel)``. The baseline's layers keep their names; PLDA's
    are under ``plda.``. Checkpoints that kept them under ``domain.`` still load."""

    def __init__(self, cfg: MethodConfig, backbone: nn.Module, num_classes: int) -> None:
        super().__init__(cfg, backbone, num_classes)  # type: ignore[call-arg]
        self.plda = PLDA(cfg, backbone.channels[backbone.final_level], num_classes,
                         backbone.input_mean, backbone.input_std)
        self._register_load_state_dict_pre_hook(_rename_legacy_keys)

    def forward(self, batch: dict[str, Tensor], progress: float = 0.0) -> dict[str, Tensor]:
        image, label = self._inputs(batch)
        alpha = self.plda.alpha(progress)
        images = self.training_views(image)
        views = self.run_views(images)
        extra, stats = [], []
        for img, view in zip(images, views):
            terms, view_stats = self.plda(self, img, view, label, alpha)
            extra.append(terms)
            stats.append(view_stats)
        losses = self.baseline_losses(images, views, label)
        losses.update(_view_mean(extra))
        summary = _view_mean(stats)
        summary["grl_alpha"] = alpha
        return self._total(losses, summary)


def _rename_legacy_keys(state_dict, prefix, *_args) -> None:
    """Load hook: ``<prefix>domain.*`` (PLDA's layers before they moved into ``plda``) ->
    ``<prefix>plda.domain.*``, in place."""
    old = prefix + _LEGACY_PREFIX
    for key in [k for k in state_dict if k.startswith(old)]:
        state_dict[prefix + _PREFIX + key[len(old):]] = state_dict.pop(key)


def rename_legacy_keys(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A state dict with PLDA's old top-level ``domain.*`` keys under ``plda.domain.*``."""
    return {(_PREFIX + k[len(_LEGACY_PREFIX):] if k.startswith(_LEGACY_PREFIX) else k): v
            for k, v in state.items()}
