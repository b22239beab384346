"""Seeding, determinism switches and RNG-state capture for exact resume.

Two kinds of randomness are kept apart: per-rank streams (dropout, the second PLDA pass) come
from the global torch/numpy/python generators seeded with ``seed + rank``; per-sample data
augmentation comes from generators seeded by :func:`derive_seed` ``(seed, epoch, index)`` so a
sample looks the same whatever the number of ranks or loader workers.
"""

from __future__ import annotations

import contextlib

import os
import random
from typing import Any, Iterator

import numpy as np
import torch


def derive_seed(*parts: int) -> int:
    """A 63-bit seed mixed from non-negative integers (e.g. ``seed, epoch, index``)."""
    state = np.random.SeedSequence([int(p) for p in parts]).generate_state(1, dtype=np.uint64)
    return int(state[0] & np.uint64((1 << 63) - 1))


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices) with ``seed``."""
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the block with torch's CPU RNG seeded by ``seed``, restoring the outer state after.

    Wrap model construction in it: new layers are then initialised the same way in every run
    of a config (two runs, or a run and its resumed continuation, start from equal weights)
    without disturbing the RNG stream of whatever comes next."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def configure_determinism(deterministic: bool) -> dict[str, Any]:
    """Switch deterministic kernels on or off; return the previous settings for :func:`restore_determinism`."""
    previous = {
        "algorithms": torch.are_deterministic_algorithms_enabled(),
        "warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
    }
    if deterministic:
        # cuBLAS needs a fixed workspace for reproducible GEMMs; only effective before CUDA starts.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic
    return previous


def restore_determinism(previous: dict[str, Any]) -> None:
    torch.use_deterministic_algorithms(previous["algorithms"], warn_only=previous["warn_only"])
    torch.backends.cudnn.deterministic = previous["cudnn_deterministic"]
    torch.backends.cudnn.benchmark = previous["cudnn_benchmark"]


def capture_rng_state(device: torch.device | None = None) -> dict[str, Any]:
    """This process's RNG states as weights-only-loadable values (tensors, ints, floats, tuples).

    Only ``device``'s CUDA generator is read: touching every GPU would create a context on each.
    """
    np_state = np.random.get_state(legacy=False)
    cuda = []
    if device is not None and device.type == "cuda":
        cuda.append(torch.cuda.get_rng_state(device))
    return {
        "torch": torch.get_rng_state(),
        "cuda": cuda,
        "numpy": {
            "bit_generator": str(np_state["bit_generator"]),
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "python": random.getstate(),
    }


def restore_rng_state(state: dict[str, Any], device: torch.device | None = None) -> None:
    """Inverse of :func:`capture_rng_state`."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and device is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"][0], device)
    npst = state["numpy"]
    np.random.set_state({
        "bit_generator": npst["bit_generator"],
        "state": {"key": npst["key"].numpy().astype(np.uint32), "pos": npst["pos"]},
        "has_gauss": npst["has_gauss"],
        "gauss": npst["gauss"],
    })
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
