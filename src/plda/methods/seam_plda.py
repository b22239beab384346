"""SEAM + PLDA (Du, Fu, Liu, IEEE TIP 2024), the published pairing: PLDA's component
(``plda.methods.plda``) on SEAM's two views, and the converters between the published
``resnet38_SEAM`` / ``resnet38_plda`` checkpoints and this package's names."""

from __future__ import annotations

import re
from typing import Mapping

import torch
from torch import Tensor

from plda.errors import WeightsError
from plda.methods.domain import DomainClassifier
from plda.methods.plda import WithPLDA, rename_legacy_keys
from plda.methods.seam import SEAMModel
from plda.registry import METHODS


@METHODS.register("seam_plda")
class SEAMPLDAModel(WithPLDA, SEAMModel):
    """SEAM plus the multi-head domain classifier and CPS; four backbone passes per step."""


_REFERENCE_NAMES = {
    "fc8.weight": "classifier.conv.weight",
    "f8_3.weight": "pcm.reduce_a.weight",
    "f8_4.weight": "pcm.reduce_b.weight",
    "f9.weight": "pcm.embed.weight",
    "discriminator.d_conv1.weight": "plda.domain.trunk.0.weight",
    "discriminator.d_conv1.bias": "plda.domain.trunk.0.bias",
    "discriminator.d_conv2.weight": "plda.domain.trunk.3.weight",
    "discriminator.d_conv2.bias": "plda.domain.trunk.3.bias",
}
_HEADS = "plda.domain.heads."
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
    new layers as in ``_REFERENCE_NAMES``, ``head_list.<c>`` merged into ``plda.domain.heads``, every
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
        out[_HEADS + "weight"], out[_HEADS + "bias"] = weight, bias
    return out


def to_reference_state_dict(state: Mapping[str, Tensor], pamr_kernels: bool = True
                            ) -> dict[str, Tensor]:
    """The inverse of :func:`convert_reference_state_dict` for a ResNet-38 SEAM / SEAM+PLDA
    model's ``state_dict()``: the published ``Net``'s names, ``plda.domain.heads`` split into
    ``head_list.<c>`` and (``pamr_kernels``, for a ``resnet38_plda`` model) PAMR's kernel buffers
    added, so the published code loads it with ``strict=True``."""
    out: dict[str, Tensor] = {}
    state = rename_legacy_keys(dict(state))
    for key, value in state.items():
        if key in _OUR_NAMES:
            out[_OUR_NAMES[key]] = value
        elif key.startswith("backbone."):
            out[key[len("backbone."):]] = value
        elif key not in (_HEADS + "weight", _HEADS + "bias"):
            raise WeightsError(f"{key}: no counterpart in the published SEAM/PLDA Net")
    if _HEADS + "weight" in state:
        weights = state[_HEADS + "weight"].split(2, 0)
        biases = state[_HEADS + "bias"].split(2, 0)
        for c, (w, b) in enumerate(zip(weights, biases)):
            out[f"head_list.{c}.weight"], out[f"head_list.{c}.bias"] = w, b
        if pamr_kernels:
            out.update(reference_pamr_kernels())
    return out
