"""Minimal distributed-run facts usable without initialising a process group.

torch is consulted only when something has already imported it, so light commands (``plda
prepare``, ``plda eval``) do not pay torch's import time just to show a progress bar.
"""

from __future__ import annotations

import os
import sys


def _initialised_dist():
    if "torch" not in sys.modules:
        return None
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def get_rank() -> int:
    dist = _initialised_dist()
    return dist.get_rank() if dist is not None else int(os.environ.get("RANK", "0"))


def get_world_size() -> int:
    dist = _initialised_dist()
    return dist.get_world_size() if dist is not None else int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    return get_rank() == 0
