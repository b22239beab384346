"""SEAM + PLDA (Du, Fu, Liu, IEEE TIP 2024): SEAM's two views, each adding MaskAssign, a no-grad
pass on the source-erased image, the reversed-gradient domain loss and CPS (docs/methods.md)."""

from __future__ import annotations

import contextlib
import re
from typing import Iterator, Mapping

import torch
from torch import Tensor, nn

from plda.errors import WeightsError
from plda.methods.config import MethodConfig, cps_loss_background
from plda.methods.cps import balanced_cross_entropy, constant_background, cps_targets
from plda.methods.domain import (DomainClassifier, domain_labels, domain_loss, erase,
                                 grl_alpha, mask_assign, near_source, reverse_gradient)
from plda.methods.pamr import PAMR
from plda.methods.seam import SEAMModel, ViewOutput


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


class SEAMPLDAModel(SEAMModel):
    """SEAM plus the multi-head domain classifier and CPS; four backbone passes per step."""

    def __init__(self, cfg: MethodConfig, backbone: nn.Module, num_classes: int) -> None:
        super().__init__(cfg, backbone, num_classes)
        self.reference = cfg.reference
        self.plda_cfg = cfg.plda
        self.cps_cfg = cfg.cps
        self.domain = DomainClassifier(backbone.channels[backbone.final_level], num_classes,
                                       cfg.plda.domain_hidden, cfg.plda.domain_dropout)
        self.pamr = PAMR(cfg.pamr.iterations, cfg.pamr.dilations)
        self.cps_constant_background = cps_loss_background(cfg) == "constant"
        self.register_buffer("_pixel_mean", torch.tensor(backbone.input_mean).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("_pixel_std", torch.tensor(backbone.input_std).view(1, 3, 1, 1),
                             persistent=False)

    def _erased_pass(self, erased: Tensor) -> ViewOutput:
        # Reference: the pass runs in train mode with dropout active; default: dropout off.
        with torch.no_grad(), (contextlib.nullcontext() if self.reference
                               else dropout_disabled(self)):
            return self.run_view(erased)

    def plda_losses(self, image: Tensor, view: ViewOutput, label: Tensor, alpha: float
                    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Domain and CPS losses of one view, plus the source/target pixel fractions."""
        tau = self.plda_cfg.tau
        with torch.no_grad():
            source = mask_assign(view.cam_rv, label, tau)
            erased = erase(image, source)
            second = self._erased_pass(erased)
            target = near_source(mask_assign(second.cam_rv, label, tau), source,
                                 self.plda_cfg.target_near)
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

    def forward(self, batch: dict[str, Tensor], progress: float = 0.0) -> dict[str, Tensor]:
        image, label = self._inputs(batch)
        alpha = grl_alpha(progress, self.plda_cfg.grl_gamma)
        small = self.second_view(image)
        views, extra, stats = self.run_views([image, small]), [], []
        for img, view in zip((image, small), views):
            terms, view_stats = self.plda_losses(img, view, label, alpha)
            extra.append(terms)
            stats.append(view_stats)
        losses = self.seam_losses((views[0], views[1]), (image.shape[-2:], small.shape[-2:]),
                                  label)
        # PLDA averages its terms over the two views.
        losses.update({k: (extra[0][k] + extra[1][k]) / 2 for k in extra[0]})
        summary = {k: (stats[0][k] + stats[1][k]) / 2 for k in stats[0]}
        summary["grl_alpha"] = alpha
        return self._total(losses, summary)


_REFERENCE_NAMES = {
    "fc8.weight": "classifier.conv.weight",
    "f8_3.weight": "pcm.reduce_a.weight",
    "f8_4.weight": "pcm.reduce_b.weight",
    "f9.weight": "pcm.embed.weight",
    "discriminator.d_conv1.weight": "domain.trunk.0.weight",
    "discriminator.d_conv1.bias": "domain.trunk.0.bias",
    "discriminator.d_conv2.weight": "domain.trunk.3.weight",
    "discriminator.d_conv2.bias": "domain.trunk.3.bias",
}
_OUR_NAMES = {ours: theirs for theirs, ours in _REFERENCE_NAMES.items()}
_REFERENCE_HEAD = re.compile(r"head_list\.(\d+)\.(weight|bias)")
_REFERENCE_PAMR = re.compile(r"PAMR\.(aff_x|aff_m|aff_std)\.kernel")


def reference_pamr_kernels() -> dict[str, Tensor]:
    """The fixed shift kernels that the published PAMR registers as buffers (and saves with
    every checkpoint): ``aff_x`` centre +1 and one neighbour -1 per row (8, 1, 3, 3), ``aff_m``
    one neighbour +1 per row (8, 1, 3, 3), ``aff_std`` one cell of the 3x3 window per row
    (9, 1, 3, 3). Neighbours in row-major order, the centre skipped."""
    cells = [(y, x) for y in range(3) for x in range(3)]
    neighbours = [c for c in cells if c != (1, 1)]
    diff = torch.zeros(8, 1, 3, 3)
    copy = torch.zeros(8, 1, 3, 3)
    window = torch.zeros(9, 1, 3, 3)
    for row, (y, x) in enumerate(neighbours):
        diff[row, 0, 1, 1] = 1
        diff[row, 0, y, x] = -1
        copy[row, 0, y, x] = 1
    for row, (y, x) in enumerate(cells):
        window[row, 0, y, x] = 1
    return {"PAMR.aff_x.kernel": diff, "PAMR.aff_m.kernel": copy, "PAMR.aff_std.kernel": window}


def convert_reference_state_dict(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename a YudeWang/SEAM or usr922/plda checkpoint (``resnet38_SEAM`` / ``resnet38_plda``
    ``Net.state_dict()``, optionally with DataParallel's ``module.``) to this package's names:
    new layers as in ``_REFERENCE_NAMES``, ``head_list.<c>`` merged into ``domain.heads``, every
    other key (the ResNet-38 backbone, which keeps the reference names) under ``backbone.``.
    PAMR's three kernel buffers are dropped (this package's PAMR indexes neighbours instead of
    convolving) after checking that they hold the fixed kernels: other values would mean a
    different refinement, which is an error."""
    out: dict[str, Tensor] = {}
    heads: dict[str, dict[int, Tensor]] = {"weight": {}, "bias": {}}
    kernels = reference_pamr_kernels()
    for key, value in state.items():
        key = key[len("module."):] if key.startswith("module.") else key
        head = _REFERENCE_HEAD.fullmatch(key)
        if head:
            heads[head.group(2)][int(head.group(1))] = value
        elif _REFERENCE_PAMR.fullmatch(key):
            expected = kernels[key]
            if tuple(value.shape) != tuple(expected.shape) or not torch.equal(
                    value.detach().to("cpu", torch.float64), expected.double()):
                raise WeightsError(f"reference checkpoint: {key} is not PAMR's fixed shift kernel "
                                   f"(shape {tuple(value.shape)}, expected "
                                   f"{tuple(expected.shape)} with the reference's values)")
        else:
            out[_REFERENCE_NAMES.get(key, f"backbone.{key}")] = value
    if heads["weight"]:
        count = len(heads["weight"])
        expected = list(range(count))
        if sorted(heads["weight"]) != expected or sorted(heads["bias"]) != expected:
            raise WeightsError(f"reference checkpoint: head_list is incomplete: weights for heads "
                             f"{sorted(heads['weight'])}, biases for {sorted(heads['bias'])}")
        weight, bias = DomainClassifier.merge_heads([heads["weight"][c] for c in range(count)],
                                                    [heads["bias"][c] for c in range(count)])
        out["domain.heads.weight"], out["domain.heads.bias"] = weight, bias
    return out


def to_reference_state_dict(state: Mapping[str, Tensor], pamr_kernels: bool = True
                            ) -> dict[str, Tensor]:
    """The inverse of :func:`convert_reference_state_dict` for a ResNet-38 SEAM / SEAM+PLDA
    model's ``state_dict()``: the published ``Net``'s names, ``domain.heads`` split into
    ``head_list.<c>`` and (``pamr_kernels``, for a ``resnet38_plda`` model) PAMR's kernel buffers
    added, so the published code loads it with ``strict=True``."""
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if key in _OUR_NAMES:
            out[_OUR_NAMES[key]] = value
        elif key.startswith("backbone."):
            out[key[len("backbone."):]] = value
        elif key not in ("domain.heads.weight", "domain.heads.bias"):
            raise WeightsError(f"{key}: no counterpart in the published SEAM/PLDA Net")
    if "domain.heads.weight" in state:
        weights = state["domain.heads.weight"].split(2, 0)
        biases = state["domain.heads.bias"].split(2, 0)
        for c, (w, b) in enumerate(zip(weights, biases)):
            out[f"head_list.{c}.weight"], out[f"head_list.{c}.bias"] = w, b
        if pamr_kernels:
            out.update(reference_pamr_kernels())
    return out
