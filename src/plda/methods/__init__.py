"""Stage-1 methods: CAM, SEAM and SEAM+PLDA, each a ``StageOneModel`` built by ``build_method``."""

from __future__ import annotations

from torch import nn

from plda.methods.base import CamOutput, StageOneModel
from plda.methods.cam import CAMModel
from plda.methods.config import (CPSConfig, LossWeights, MethodConfig, PAMRConfig, PLDAConfig,
                                 SEAMConfig)
from plda.methods.seam import SEAMModel
from plda.methods.seam_plda import SEAMPLDAModel, convert_reference_state_dict

METHODS: dict[str, type[StageOneModel]] = {
    "cam": CAMModel,
    "seam": SEAMModel,
    "seam_plda": SEAMPLDAModel,
}


def build_method(cfg: MethodConfig, backbone: nn.Module, num_classes: int) -> StageOneModel:
    """The stage-1 model ``cfg.name`` on ``backbone`` for ``num_classes`` foreground classes."""
    return METHODS[cfg.name](cfg, backbone, num_classes)


__all__ = [
    "CAMModel", "CPSConfig", "CamOutput", "LossWeights", "METHODS", "MethodConfig",
    "PAMRConfig", "PLDAConfig", "SEAMConfig", "SEAMModel", "SEAMPLDAModel", "StageOneModel",
    "build_method", "convert_reference_state_dict",
]
