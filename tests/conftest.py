"""Shared fixtures. Real-data tests use ``../shared/data`` and skip cleanly without it."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("PLDA_NO_PROGRESS", "1")
# Convolution-path choices measured during tests go to a private folder, never to ~/.cache.
os.environ.setdefault("PLDA_CACHE_DIR", tempfile.mkdtemp(prefix="plda-test-cache-"))

_REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("PLDA_SHARED_DATA", _REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real sample folder (``../shared/data``); skips the test when it is absent."""
    if not (SHARED_DATA / "voc12-subset" / "image_labels.json").is_file():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def voc_subset(shared_data: Path) -> Path:
    return shared_data / "voc12-subset"


@pytest.fixture
def one_thread():
    """Run torch on one thread: small tensors gain nothing from two, and on a shared 2-core
    machine OpenMP spinning makes them many times slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
