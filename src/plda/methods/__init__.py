"""Stage-1 methods: CAM, SEAM, and PLDA added to either (``cam_plda``, ``seam_plda``), each a
``StageOneModel`` built by ``build_method``.

The model classes (and torch with them) load on first use, so that reading a config, which
needs only :mod:`plda.methods.config`, stays fast (``plda config show``, ``plda report``).
"""

from __future__ import annotations

import importlib
from typing import Any

from plda.methods.config import (CPSConfig, LossWeights, MethodConfig, PAMRConfig, PLDAConfig,
                                 SEAMConfig)

_LAZY = {
    "CamOutput": "plda.methods.base", "StageOneModel": "plda.methods.base",
    "CAMModel": "plda.methods.cam", "SEAMModel": "plda.methods.seam",
    "SEAMPLDAModel": "plda.methods.seam_plda", "CAMPLDAModel": "plda.methods.cam",
    "PLDA": "plda.methods.plda", "WithPLDA": "plda.methods.plda",
    "convert_reference_state_dict": "plda.methods.seam_plda",
    "to_reference_state_dict": "plda.methods.seam_plda",
}


def _methods() -> dict[str, Any]:
    from plda.methods.cam import CAMModel, CAMPLDAModel
    from plda.methods.seam import SEAMModel
    from plda.methods.seam_plda import SEAMPLDAModel

    return {"cam": CAMModel, "seam": SEAMModel, "cam_plda": CAMPLDAModel,
            "seam_plda": SEAMPLDAModel}


def build_method(cfg: MethodConfig, backbone, num_classes: int):
    """The stage-1 model ``cfg.name`` on ``backbone`` for ``num_classes`` foreground classes."""
    return _methods()[cfg.name](cfg, backbone, num_classes)


def __getattr__(name: str) -> Any:
    if name == "METHODS":
        return _methods()
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'plda.methods' has no attribute {name!r}")


__all__ = [
    "CAMModel", "CAMPLDAModel", "CPSConfig", "CamOutput", "LossWeights", "METHODS", "MethodConfig",
    "PAMRConfig", "PLDA", "PLDAConfig", "SEAMConfig", "SEAMModel", "SEAMPLDAModel", "StageOneModel",
    "WithPLDA", "build_method", "convert_reference_state_dict", "to_reference_state_dict",
]
