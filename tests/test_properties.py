"""Property-based tests (hypothesis) of the transforms and the evaluation.

Example-based tests (test_transforms.py, test_metrics.py) pin exact values on hand cases; these
check invariants over many random sizes, label sets, crops and seeds.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from plda.data.camfile import save_cams
from plda.data.transforms import EvalTransform, SegTransform, Stage1Transform, denormalize
from plda.evaluation.evaluate import evaluate_cams, evaluate_labels
from plda.inference.seeds import seeds_from_cams
from plda.evaluation.metrics import confusion_matrix, confusion_matrix_torch, scores
from plda.data.camfile import load_cams
from plda.data.labels import save_label_png

pytestmark = pytest.mark.usefixtures("one_thread")
FAST = settings(max_examples=30, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])
SLOW = settings(max_examples=10, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


@st.composite
def image_and_mask(draw, max_side: int = 40, ignore: bool = True):
    h = draw(st.integers(2, max_side))
    w = draw(st.integers(2, max_side))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    values = draw(st.lists(st.sampled_from([*range(21), *([255] if ignore else [])]),
                           min_size=1, max_size=4, unique=True))
    # Blocky masks, so that nearest-neighbour resizing keeps more than single pixels.
    coarse = rng.choice(np.asarray(values, np.uint8), size=(max(1, h // 4), max(1, w // 4)))
    mask = np.asarray(Image.fromarray(coarse).resize((w, h), Image.NEAREST))
    image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    return image, mask


# ---- transforms -----------------------------------------------------------------------------------

@FAST
@given(sample=image_and_mask(), crop=st.one_of(st.none(), st.integers(4, 48)),
       low=st.floats(0.3, 1.0), span=st.floats(0.0, 1.0), flip=st.booleans(),
       seed=st.integers(0, 2**32 - 1))
def test_seg_transform_invariants(sample, crop, low, span, flip, seed):
    image, mask = sample
    t = SegTransform(crop=crop, scale=(low, low + span), flip=flip)
    out_image, out_mask = t(image, mask, np.random.default_rng(seed))
    # Values: only the input's labels, plus the ignore index where padding was added.
    assert set(torch.unique(out_mask).tolist()) <= set(np.unique(mask).tolist()) | {255}
    assert out_image.dtype == torch.float32 and out_mask.dtype == torch.int64
    assert torch.isfinite(out_image).all()
    if crop is None:
        assert out_image.shape[1:] == out_mask.shape and out_image.shape[0] == 3
    else:
        assert out_image.shape == (3, crop, crop) and out_mask.shape == (crop, crop)
    if 255 not in mask:  # then every 255 is padding, and padding is 0 in normalised space
        assert bool((out_image[:, out_mask == 255] == 0).all())
    again = t(image, mask, np.random.default_rng(seed))
    assert torch.equal(again[0], out_image) and torch.equal(again[1], out_mask)


@FAST
@given(sample=image_and_mask(ignore=False), lo=st.integers(4, 40), extra=st.integers(0, 20),
       crop=st.one_of(st.none(), st.integers(4, 40)), flip=st.booleans(),
       jitter=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_stage1_transform_shape_finite_deterministic(sample, lo, extra, crop, flip, jitter, seed):
    image, _ = sample
    t = Stage1Transform(resize_long=(lo, lo + extra), crop=crop, flip=flip,
                        jitter=(0.3, 0.3, 0.3, 0.1) if jitter else None)
    out = t(image, np.random.default_rng(seed))
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    if crop is None:
        assert out.shape[0] == 3 and lo <= max(out.shape[1:]) <= lo + extra
    else:
        assert out.shape == (3, crop, crop)
    assert torch.equal(out, t(image, np.random.default_rng(seed)))


@FAST
@given(sample=image_and_mask(ignore=False))
def test_eval_transform_round_trips_through_denormalize(sample):
    image, mask = sample
    tensor, mask_t = EvalTransform()(image, mask)
    back = denormalize(tensor).permute(1, 2, 0).numpy()
    np.testing.assert_allclose(back, np.asarray(image, np.float32), atol=1e-3)
    assert torch.equal(mask_t, torch.from_numpy(mask.astype(np.int64)))


# ---- confusion matrix and scores ---------------------------------------------------------------------

@st.composite
def label_pair(draw, n: int | None = None):
    n = n or draw(st.integers(2, 8))
    h, w = draw(st.integers(1, 24)), draw(st.integers(1, 24))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    gt = rng.integers(0, n, (h, w)).astype(np.uint8)
    gt[rng.random((h, w)) < draw(st.floats(0, 0.5))] = 255
    pred = rng.integers(0, n + 2, (h, w)).astype(np.uint8)  # n, n+1: unassigned predictions
    return n, pred, gt


@FAST
@given(pair=label_pair())
def test_confusion_sums_and_paths_agree(pair):
    n, pred, gt = pair
    conf = confusion_matrix(pred, gt, n, count_unassigned=True)
    valid = gt != 255
    assert conf.sum() == valid.sum()
    np.testing.assert_array_equal(conf.sum(axis=1), np.bincount(gt[valid], minlength=n)[:n])
    wide = confusion_matrix(pred.astype(np.int64), gt.astype(np.int64), n, count_unassigned=True)
    np.testing.assert_array_equal(conf, wide)
    torch_conf = confusion_matrix_torch(torch.from_numpy(pred), torch.from_numpy(gt), n,
                                        count_unassigned=True)
    np.testing.assert_array_equal(conf, torch_conf.numpy())


@FAST
@given(pair=label_pair())
def test_miou_in_range_and_perfect_prediction_is_100(pair):
    n, pred, gt = pair
    names = [f"c{i}" for i in range(n)]
    res = scores(confusion_matrix(pred, gt, n, count_unassigned=True), names)
    assert res["miou"] is None or 0.0 <= res["miou"] <= 100.0
    assert all(v is None or 0.0 <= v <= 100.0 for v in res["iou"].values())
    perfect = np.where(gt == 255, pred, gt).astype(np.uint8)  # ignored pixels predict anything
    best = scores(confusion_matrix(perfect, gt, n, count_unassigned=True), names)
    if (gt != 255).any():
        assert best["miou"] == 100.0 and best["pixel_accuracy"] == 100.0
    else:
        assert best["miou"] is None


# ---- evaluation over files ------------------------------------------------------------------------

@st.composite
def label_folders(draw):
    n = draw(st.integers(2, 6))
    pairs = draw(st.lists(label_pair(n), min_size=1, max_size=6))
    order = draw(st.permutations(range(len(pairs))))
    return n, [(p, g) for _, p, g in pairs], list(order)


@SLOW
@given(data=label_folders())
def test_evaluate_labels_is_invariant_to_image_order_and_sums_images(data):
    n, pairs, order = data
    names = [f"c{i}" for i in range(n)]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ids = [f"im{k}" for k in range(len(pairs))]
        for image_id, (pred, gt) in zip(ids, pairs):
            save_label_png(root / "pred" / f"{image_id}.png", pred)
            save_label_png(root / "gt" / f"{image_id}.png", gt)
        if not any((g != 255).any() for _, g in pairs):
            return
        forward = evaluate_labels(root / "pred", root / "gt", ids, names, num_workers=0)
        shuffled = evaluate_labels(root / "pred", root / "gt", [ids[i] for i in order], names,
                                   num_workers=0)
    assert forward == shuffled
    total = sum(confusion_matrix(p, g, n, count_unassigned=True) for p, g in pairs)
    assert forward == {**scores(total, names), "images": len(pairs)}


@st.composite
def cam_folder(draw):
    n_fg = draw(st.integers(1, 4))
    images = []
    for _ in range(draw(st.integers(1, 4))):
        h, w = draw(st.integers(1, 16)), draw(st.integers(1, 16))
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        keys = sorted(draw(st.lists(st.integers(1, n_fg), max_size=n_fg, unique=True)))
        # Values on a coarse grid make ties between planes and with thresholds common.
        cams = rng.integers(0, 11, (len(keys), h, w)) / 10.0
        gt = rng.integers(0, n_fg + 1, (h, w)).astype(np.uint8)
        gt[rng.random((h, w)) < 0.2] = 255
        images.append((cams, keys, gt))
    thresholds = draw(st.lists(st.sampled_from([i / 20 for i in range(21)]), min_size=2,
                               max_size=6, unique=True))
    return n_fg, images, thresholds


@SLOW
@given(data=cam_folder())
def test_sweep_equals_per_threshold_evaluation_and_plain_seeds(data):
    n_fg, images, thresholds = data
    names = ["background", *(f"c{i}" for i in range(1, n_fg + 1))]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ids = [f"im{k}" for k in range(len(images))]
        for image_id, (cams, keys, gt) in zip(ids, images):
            save_cams(root / "cams" / f"{image_id}.npz", cams, np.asarray(keys, np.int64), n_fg,
                      gt.shape)
            save_label_png(root / "gt" / f"{image_id}.png", gt)
        sweep = evaluate_cams(root / "cams", root / "gt", ids, names, thresholds, num_workers=0)
        for t, point in zip(thresholds, sweep["sweep"]):
            single = evaluate_cams(root / "cams", root / "gt", ids, names, [t], num_workers=0)
            assert single["miou"] == point["miou"]
            # The same seeds computed one image at a time with plain numpy.
            conf = sum(confusion_matrix(seeds_from_cams(load_cams(root / "cams" / f"{i}.npz"), t),
                                        gt, n_fg + 1, count_unassigned=True)
                       for i, (_, _, gt) in zip(ids, images))
            assert scores(conf, names)["miou"] == point["miou"]
        best = max(sweep["sweep"], key=lambda p: (-1 if p["miou"] is None else p["miou"],
                                                  -p["threshold"]))
        assert sweep["best_threshold"] == best["threshold"]
