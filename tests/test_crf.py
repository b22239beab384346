"""Dense CRF wrapper and the ordered process-pool map."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest

from plda.errors import PldaError
from plda.inference.crf import crf_labels, dense_crf
from plda.utils.parallel import map_in_workers


def _two_colour_image(height: int = 24, width: int = 48, edge: int = 24, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.zeros((height, width, 3), np.float32)
    img[:, :edge] = (200, 40, 40)
    img[:, edge:] = (40, 60, 200)
    img += rng.uniform(-8, 8, img.shape)
    return img.clip(0, 255).astype(np.uint8)


def _ramp_probs(height: int, width: int, crossing: float, softness: float) -> np.ndarray:
    """Class 1 fades out left to right, crossing 0.5 at column ``crossing`` (a blurred edge)."""
    p1 = 1.0 / (1.0 + np.exp(-(crossing - np.arange(width)) / softness))
    p1 = np.broadcast_to(p1, (height, width))
    return np.stack([1.0 - p1, p1]).astype(np.float32)


def test_output_is_a_probability_simplex_of_the_input_shape():
    pytest.importorskip("pydensecrf.densecrf")
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    probs = rng.uniform(0, 1, (3, 20, 30)).astype(np.float32)
    q = dense_crf(image, probs)
    assert q.shape == (3, 20, 30) and q.dtype == np.float32
    assert q.min() >= 0
    np.testing.assert_allclose(q.sum(0), 1.0, atol=1e-4)
    # Without pairwise terms and iterations the CRF is the softmax of -unary: probs renormalised.
    q0 = dense_crf(image, probs, iterations=0)
    np.testing.assert_allclose(q0, probs / probs.sum(0, keepdims=True), atol=1e-5)


def test_two_runs_are_identical():
    pytest.importorskip("pydensecrf.densecrf")
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    probs = rng.uniform(0, 1, (4, 16, 16))
    assert np.array_equal(dense_crf(image, probs), dense_crf(image, probs))
    image.setflags(write=False)  # e.g. np.asarray of a PIL image
    probs.setflags(write=False)
    assert np.array_equal(dense_crf(image, probs), dense_crf(image.copy(), probs.copy()))


@pytest.mark.parametrize("crossing,softness", [(32, 6), (14, 6), (34, 8)])
def test_uncertain_boundary_snaps_to_the_colour_edge(crossing, softness):
    pytest.importorskip("pydensecrf.densecrf")
    image = _two_colour_image(edge=24)
    probs = _ramp_probs(24, 48, crossing, softness)
    expected = np.broadcast_to((np.arange(48) < 24).astype(np.uint8), (24, 48))
    assert (probs.argmax(0) != expected).sum() >= 24 * 8  # the input boundary is 8+ px off
    assert np.array_equal(crf_labels(image, probs), expected)


def test_crf_labels_maps_planes_to_keys():
    pytest.importorskip("pydensecrf.densecrf")
    image = _two_colour_image(edge=24)
    probs = _ramp_probs(24, 48, 24, 4)
    labels = crf_labels(image, probs, keys=[0, 7])
    assert labels.dtype == np.uint8
    assert set(np.unique(labels)) == {0, 7}
    assert (labels[:, :24] == 7).all()
    with pytest.raises(ValueError, match="keys"):
        crf_labels(image, probs, keys=[0, 7, 9])


def test_bad_shapes_are_refused():
    image = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="probs"):
        dense_crf(image, np.ones((2, 8, 9)))
    with pytest.raises(ValueError, match="uint8"):
        dense_crf(image.astype(np.float32), np.ones((2, 8, 8)))


def test_missing_pydensecrf_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)  # makes the import fail
    with pytest.raises(PldaError, match=r"pip install plda-wsss\[crf\]"):
        dense_crf(np.zeros((4, 4, 3), np.uint8), np.full((2, 4, 4), 0.5))


@pytest.mark.parametrize("workers", [1, 2])
def test_map_in_workers_keeps_order(workers):
    items = [-5, 3, -1, 0, 8, -2, 7]
    assert map_in_workers(abs, items, workers) == [5, 3, 1, 0, 8, 2, 7]


def test_map_in_workers_propagates_errors():
    with pytest.raises(ValueError):
        map_in_workers(math.sqrt, [4.0, -1.0, 9.0], 2)
