"""Stage-1 methods: CAM, SEAM, and PLDA added to either (``cam_plda``, ``seam_plda``), each a
``StageOneModel`` registered in ``plda.registry.METHODS`` where it is defined and built by
``build_method``.

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


def build_method(cfg: MethodConfig, backbone, num_classes: int):
    """The stage-1 model ``cfg.name`` (registered in ``plda.registry.METHODS``) on
    ``backbone`` for ``num_classes`` foreground classes."""
    from plda.registry import METHODS

    return METHODS.build(cfg.name, cfg, backbone, num_classes)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'plda.methods' has no attribute {name!r}")


__all__ = [
    "CAMModel", "CAMPLDAModel", "CPSConfig", "CamOutput", "LossWeights", "MethodConfig",
    "PAMRConfig", "PLDA", "PLDAConfig", "SEAMConfig", "SEAMModel", "SEAMPLDAModel", "StageOneModel",
    "WithPLDA", "build_method", "convert_reference_state_dict", "to_reference_state_dict",
]
