"""Confusion matrices, scores, CAM files and the one-pass threshold sweep."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from plda.data.camfile import FORMAT_VERSION, CamFile, load_cams, save_cams
from plda.errors import ConfigError, DataError
from plda.evaluation.evaluate import evaluate_cams, evaluate_labels
from plda.inference.seeds import seeds_from_cams
from plda.evaluation.metrics import (all_reduce_confusion, confusion_matrix,
                                     confusion_matrix_torch, scores)
from plda.data.labels import load_label_png, save_label_png

NAMES3 = ["background", "cat", "dog"]
# gt/pred pixel pairs: (0,0) (0,0) (0,1) (1,1) (1,1) (2,0) and one ignored pixel predicted 2.
GT = np.array([[0, 0, 0, 1], [1, 2, 255, 1]], np.uint8)
PRED = np.array([[0, 0, 1, 1], [1, 0, 2, 255]], np.uint8)


# ---------------------------------------------------------------- confusion and scores by hand


def test_confusion_matrix_hand_case_both_paths():
    expected = np.array([[2, 1, 0], [0, 2, 0], [1, 0, 0]])
    gt = np.array([[0, 0, 0], [1, 1, 2]], np.uint8)
    pred = np.array([[0, 0, 1], [1, 1, 0]], np.uint8)
    fast = confusion_matrix(pred, gt, 3)
    generic = confusion_matrix(pred.astype(np.int64), gt.astype(np.int32), 3)
    assert fast.dtype == np.int64 and fast.shape == (3, 3)
    np.testing.assert_array_equal(fast, expected)
    np.testing.assert_array_equal(generic, expected)


def test_unassigned_prediction_is_a_miss_like_seam():
    # The last pixel: GT 1 predicted 255 -> counts in T(1) but in no P.
    conf = confusion_matrix(PRED, GT, 3, count_unassigned=True)
    np.testing.assert_array_equal(conf, [[2, 1, 0, 0], [0, 2, 0, 1], [1, 0, 0, 0]])
    np.testing.assert_array_equal(confusion_matrix(PRED.astype(np.int16), GT, 3,
                                                   count_unassigned=True), conf)
    s = scores(conf, NAMES3)
    assert s["recall"]["cat"] == pytest.approx(100 * 2 / 3)  # TP 2 of T 3
    assert s["precision"]["cat"] == pytest.approx(100 * 2 / 3)  # TP 2 of P 3
    assert s["iou"]["cat"] == pytest.approx(100 * 2 / 4)
    assert s["pixels"] == 7


def test_scores_hand_case():
    conf = np.array([[2, 1, 0], [0, 2, 0], [1, 0, 0]])
    s = scores(conf, NAMES3)
    # background: TP 2, T 3, P 3, union 4; cat: TP 2, T 2, P 3, union 3; dog: TP 0, T 1, P 0.
    assert s["iou"] == pytest.approx({"background": 50.0, "cat": 200 / 3, "dog": 0.0})
    assert s["precision"]["background"] == pytest.approx(200 / 3)
    assert s["precision"]["cat"] == pytest.approx(200 / 3)
    assert s["precision"]["dog"] is None  # never predicted: 0/0
    assert s["recall"] == pytest.approx({"background": 200 / 3, "cat": 100.0, "dog": 0.0})
    assert s["fp_ratio"] == pytest.approx({"background": 25.0, "cat": 100 / 3, "dog": 0.0})
    assert s["fn_ratio"] == pytest.approx({"background": 25.0, "cat": 0.0, "dog": 100.0})
    for c in NAMES3:  # SEAM's FP_ALL and FN_ALL split the union with the IoU
        assert s["iou"][c] + s["fp_ratio"][c] + s["fn_ratio"][c] == pytest.approx(100.0)
    assert s["miou"] == pytest.approx((50 + 200 / 3 + 0) / 3)
    assert s["pixel_accuracy"] == pytest.approx(400 / 6)
    assert s["classes_in_miou"] == 3


def test_absent_class_is_null_and_excluded_from_miou():
    conf = np.zeros((4, 4), np.int64)
    conf[:3, :3] = [[2, 1, 0], [0, 2, 0], [1, 0, 0]]
    s = scores(conf, [*NAMES3, "bird"])
    assert all(s[k]["bird"] is None for k in ("iou", "precision", "recall", "fp_ratio", "fn_ratio"))
    assert s["miou"] == pytest.approx((50 + 200 / 3 + 0) / 3)
    assert s["classes_in_miou"] == 3
    # Predicted but absent from GT: a false positive class, IoU 0, counted in the mean.
    conf[3, 0], conf[0, 3] = 0, 1
    s2 = scores(conf, [*NAMES3, "bird"])
    assert s2["iou"]["bird"] == 0.0 and s2["recall"]["bird"] is None
    assert s2["classes_in_miou"] == 4


def test_ignore_index_is_excluded():
    gt = np.full((4, 4), 255, np.uint8)
    gt[0, 0] = 1
    pred = np.full((4, 4), 2, np.uint8)
    pred[0, 0] = 1
    conf = confusion_matrix(pred, gt, 3)
    assert conf.sum() == 1 and conf[1, 1] == 1
    assert scores(conf, NAMES3)["iou"] == {"background": None, "cat": 100.0, "dog": None}
    # Another ignore value works through the generic path.
    np.testing.assert_array_equal(confusion_matrix(pred, np.where(gt == 255, 9, gt), 3,
                                                   ignore_index=9), conf)


def test_ground_truth_outside_classes_raises():
    gt = np.array([[0, 7]], np.uint8)
    with pytest.raises(ValueError, match=r"\[7\]"):
        confusion_matrix(gt, gt, 3)
    with pytest.raises(ValueError, match=r"\[7\]"):
        confusion_matrix(gt.astype(np.int64), gt.astype(np.int64), 3)
    with pytest.raises(ValueError, match="class names"):
        scores(np.zeros((3, 3)), ["a", "b"])


def test_torch_confusion_matches_numpy():
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 5, (3, 17, 19)).astype(np.uint8)
    gt[rng.random(gt.shape) < 0.1] = 255
    pred = rng.integers(0, 6, gt.shape).astype(np.uint8)  # 5 = out of range: unassigned
    for unassigned in (False, True):
        ref = confusion_matrix(pred, gt, 5, count_unassigned=unassigned)
        got = confusion_matrix_torch(torch.from_numpy(pred), torch.from_numpy(gt), 5,
                                     count_unassigned=unassigned)
        assert got.dtype == torch.int64
        np.testing.assert_array_equal(got.numpy(), ref)
    assert scores(got, [str(i) for i in range(5)]) == scores(ref, [str(i) for i in range(5)])


def _all_reduce_worker(rank: int, world: int, init: str, pred, gt, out_path: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        mine = confusion_matrix_torch(torch.from_numpy(pred[rank::world]),
                                      torch.from_numpy(gt[rank::world]), 4)
        total = all_reduce_confusion(mine)
        if rank == 0:
            torch.save(total, out_path)
    finally:
        dist.destroy_process_group()


def test_all_reduce_confusion_sums_over_two_ranks(tmp_path):
    import torch.multiprocessing as tmp_mp

    rng = np.random.default_rng(1)
    gt = rng.integers(0, 4, (6, 8, 8)).astype(np.uint8)
    pred = rng.integers(0, 4, (6, 8, 8)).astype(np.uint8)
    local = torch.ones(2, 2, dtype=torch.int64)
    assert all_reduce_confusion(local) is local and local.sum() == 4  # no group: a no-op
    out = tmp_path / "total.pt"
    # fork: the children share the imported torch instead of importing it again.
    tmp_mp.start_processes(_all_reduce_worker, nprocs=2, start_method="fork",
                           args=(2, f"file://{tmp_path / 'store'}", pred, gt, str(out)))
    np.testing.assert_array_equal(torch.load(out, weights_only=True).numpy(),
                                  confusion_matrix(pred, gt, 4))


# ------------------------------------------------------------------------------- CAM files


def test_camfile_round_trip(tmp_path):
    rng = np.random.default_rng(2)
    cams = rng.random((2, 5, 7)).astype(np.float32)
    save_cams(tmp_path / "a.npz", cams, np.array([9, 3]), 20, (5, 7))
    cf = load_cams(tmp_path / "a.npz")
    assert isinstance(cf, CamFile) and cf.cams.dtype == np.float32
    assert cf.keys.tolist() == [3, 9]  # stored in ascending class order
    np.testing.assert_allclose(cf.cams, cams[::-1], atol=1e-3)
    assert (cf.num_classes, cf.image_size) == (20, (5, 7))
    with np.load(tmp_path / "a.npz") as raw:
        assert raw["cams"].dtype == np.float16 and raw["keys"].dtype == np.int16
        assert int(raw["format_version"]) == FORMAT_VERSION
    save_cams(tmp_path / "empty.npz", np.zeros((0, 4, 6)), np.zeros(0, int), 20, (4, 6))
    empty = load_cams(tmp_path / "empty.npz")
    assert empty.cams.shape == (0, 4, 6) and empty.keys.size == 0
    assert seeds_from_cams(empty, 0.0).tolist() == np.zeros((4, 6), int).tolist()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp")] == []


def _write_raw(path, **overrides):
    arrays = dict(cams=np.zeros((1, 2, 3), np.float16), keys=np.array([1], np.int16),
                  num_classes=np.int64(20), image_size=np.array([2, 3]),
                  format_version=np.int64(1))
    arrays.update(overrides)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})


@pytest.mark.parametrize("overrides, message", [
    (dict(keys=None), "missing arrays"),
    (dict(cams=np.zeros((1, 3, 3), np.float16)), "shape"),
    (dict(keys=np.array([21], np.int16)), "outside the foreground classes 1..20"),
    (dict(keys=np.array([0], np.int16)), "outside the foreground classes"),
    (dict(cams=np.zeros((2, 2, 3), np.float16), keys=np.array([4, 4], np.int16)), "duplicates"),
    (dict(cams=np.full((1, 2, 3), 3.0, np.float16)), "expected 0..1"),
    (dict(format_version=np.int64(99)), "newer"),
    (dict(keys=np.array([object()], dtype=object)), "cannot read"),
])
def test_camfile_validation_names_the_file(tmp_path, overrides, message):
    path = tmp_path / "bad.npz"
    _write_raw(path, **overrides)
    with pytest.raises(DataError, match=message) as info:
        load_cams(path)
    assert str(path) in str(info.value)


def test_camfile_unreadable_and_save_errors(tmp_path):
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="junk.npz"):
        load_cams(tmp_path / "junk.npz")
    with pytest.raises(DataError, match="not found"):
        load_cams(tmp_path / "missing.npz")
    with pytest.raises(ValueError, match="shape"):
        save_cams(tmp_path / "x.npz", np.zeros((2, 4, 4)), [1], 20, (4, 4))
    with pytest.raises(ValueError, match="0..1"):
        save_cams(tmp_path / "x.npz", np.full((1, 4, 4), 2.0), [1], 20, (4, 4))
    assert not (tmp_path / "x.npz").exists()


# ------------------------------------------------------------------- seeds and the sweep


def test_seed_ties_go_to_background_and_lower_class():
    cams = np.array([[[0.5, 0.25, 0.75]], [[0.5, 0.125, 0.75]]], np.float32)
    cf = CamFile(cams=cams, keys=np.array([2, 5]), num_classes=20, image_size=(1, 3))
    # Reference: argmax over [t, CAM_2, CAM_5] -> background wins ties, then class 2 over 5.
    assert seeds_from_cams(cf, 0.5).tolist() == [[0, 0, 2]]
    assert seeds_from_cams(cf, 0.4999).tolist() == [[2, 0, 2]]
    assert seeds_from_cams(cf, 0.25).tolist() == [[2, 0, 2]]
    assert seeds_from_cams(cf, 0.2499).tolist() == [[2, 2, 2]]


def _reference_seed(cf: CamFile, t: float) -> np.ndarray:
    """SEAM's rule written out: a dense (C+1)-channel float32 array, channel 0 = t, argmax."""
    dense = np.zeros((cf.num_classes + 1, *cf.image_size), np.float32)
    dense[cf.keys] = cf.cams
    dense[0] = t
    return np.argmax(dense, axis=0).astype(np.uint8)


@pytest.fixture()
def cam_folder(tmp_path):
    """Six images, 4 foreground classes: K = 0, 1 and 2 planes, ignored pixels, and CAM values
    on a 1/16 grid so that many pixels tie exactly with the swept thresholds."""
    rng = np.random.default_rng(3)
    cam_dir, gt_dir = tmp_path / "cams", tmp_path / "gt"
    keys_per_image = [[], [2], [1, 3], [4], [2, 4], [1, 2]]
    for i, keys in enumerate(keys_per_image):
        h, w = 9 + i, 11
        gt = rng.choice([0, *keys], size=(h, w)).astype(np.uint8)
        gt[rng.random((h, w)) < 0.1] = 255
        cams = np.round(rng.random((len(keys), h, w)) * 16) / 16
        save_cams(cam_dir / f"im{i}.npz", cams, np.array(keys, int), 4, (h, w))
        save_label_png(gt_dir / f"im{i}.png", gt)
    return cam_dir, gt_dir, [f"im{i}" for i in range(len(keys_per_image))]


NAMES5 = ["background", "a", "b", "c", "d"]


def test_sweep_equals_separate_evaluations_exactly(cam_folder):
    cam_dir, gt_dir, ids = cam_folder
    thresholds = [0.5, 0.0, 0.1, 0.125, 0.25, 0.3, 0.4375, 0.6, 0.9375, 1.0, 0.0625]
    sweep = evaluate_cams(cam_dir, gt_dir, ids, NAMES5, thresholds, num_workers=0)
    assert [s["threshold"] for s in sweep["sweep"]] == thresholds
    for t, entry in zip(thresholds, sweep["sweep"]):
        single = evaluate_cams(cam_dir, gt_dir, ids, NAMES5, [t], num_workers=0)
        conf = np.zeros((5, 5), np.int64)
        for image_id in ids:
            cf = load_cams(cam_dir / f"{image_id}.npz")
            seed = _reference_seed(cf, t)
            np.testing.assert_array_equal(seed, seeds_from_cams(cf, t))
            conf += confusion_matrix(seed.astype(np.int64),
                                     load_label_png(gt_dir / f"{image_id}.png"), 5)
        expected = scores(conf, NAMES5)
        assert entry["miou"] == expected["miou"] == single["miou"]
        assert single["iou"] == expected["iou"] and single["precision"] == expected["precision"]
        assert single["threshold"] == t and "sweep" not in single
    # Equal mIoU (no CAM value between 0.0625 and 0.1): the lower threshold is reported.
    best = min(sweep["sweep"], key=lambda s: (-s["miou"], s["threshold"]))
    assert best["threshold"] == 0.0625
    assert sweep["best_threshold"] == best["threshold"] == sweep["threshold"]
    assert sweep["images"] == len(ids)


def test_sweep_with_worker_pool_matches_in_process(cam_folder, tmp_path):
    cam_dir, gt_dir, ids = cam_folder
    many = [f"{i}-{j}" for j in range(6) for i in ids]  # 36 ids: enough to start a pool
    for image_id in many:
        src = image_id.split("-")[0]
        (cam_dir / f"{image_id}.npz").write_bytes((cam_dir / f"{src}.npz").read_bytes())
        (gt_dir / f"{image_id}.png").write_bytes((gt_dir / f"{src}.png").read_bytes())
    thresholds = [0.1, 0.25, 0.5]
    pooled = evaluate_cams(cam_dir, gt_dir, many, NAMES5, thresholds, num_workers=2)
    serial = evaluate_cams(cam_dir, gt_dir, ids, NAMES5, thresholds, num_workers=0)
    assert pooled["sweep"] == serial["sweep"]  # six copies: same ratios
    assert pooled["pixels"] == 6 * serial["pixels"]


def test_evaluate_errors_name_the_file(cam_folder, tmp_path):
    cam_dir, gt_dir, ids = cam_folder
    with pytest.raises(DataError, match="missing.npz"):
        evaluate_cams(cam_dir, gt_dir, ["missing"], NAMES5, [0.3])
    with pytest.raises(DataError, match="4 foreground classes, expected 20"):
        evaluate_cams(cam_dir, gt_dir, ids, ["background", *"abcdefghijklmnopqrst"], [0.3])
    save_label_png(gt_dir / "im1.png", np.zeros((3, 3), np.uint8))
    with pytest.raises(DataError, match=r"im1\.npz is 10x11 but ground truth .*im1\.png is 3x3"):
        evaluate_cams(cam_dir, gt_dir, ids, NAMES5, [0.3])
    save_label_png(gt_dir / "im1.png", np.full((10, 11), 7, np.uint8))
    with pytest.raises(DataError, match=r"im1\.png: ground-truth values \[7\]"):
        evaluate_cams(cam_dir, gt_dir, ids, NAMES5, [0.3])
    pred_dir = tmp_path / "pred"
    save_label_png(pred_dir / "a.png", np.zeros((4, 4), np.uint8))
    save_label_png(gt_dir / "a.png", np.zeros((4, 5), np.uint8))
    with pytest.raises(DataError, match=r"a\.png is 4x4 but ground truth .*a\.png is 4x5"):
        evaluate_labels(pred_dir, gt_dir, ["a"], NAMES5)
    with pytest.raises(DataError, match=r"prediction not found: .*im0\.png"):
        evaluate_labels(pred_dir, gt_dir, ["im0"], NAMES5)
    with pytest.raises(DataError, match="invalid image id"):
        evaluate_labels(pred_dir, gt_dir, ["../a"], NAMES5)
    with pytest.raises(DataError, match="empty"):
        evaluate_labels(pred_dir, gt_dir, [], NAMES5)
    with pytest.raises(ConfigError, match="-0.1"):
        evaluate_cams(cam_dir, gt_dir, ids, NAMES5, [0.2, -0.1])


def test_sweep_reads_negative_zero_and_small_negatives_as_below_every_threshold(tmp_path):
    # Written raw (save_cams would clip): -0.0 has the sign bit set, -5e-4 is within load slack.
    (tmp_path / "cams").mkdir()
    cams = np.array([[[-0.0, -0.0005, 0.5, -0.0002]], [[-0.0004, 0.0, 0.25, 0.5]]], np.float16)
    _write_raw(tmp_path / "cams" / "n.npz", cams=cams, keys=np.array([1, 2], np.int16),
               num_classes=np.int64(2), image_size=np.array([1, 4]))
    save_label_png(tmp_path / "gt" / "n.png", np.array([[0, 1, 1, 2]]))
    cf = load_cams(tmp_path / "cams" / "n.npz")
    for t in (0.0, 0.3):
        assert _reference_seed(cf, t).tolist() == seeds_from_cams(cf, t).tolist() == [[0, 0, 1, 2]]
    res = evaluate_cams(tmp_path / "cams", tmp_path / "gt", ["n"], NAMES3, [0.0, 0.3])
    # bg: TP 1, T 1, P 2; cat: TP 1, T 2, P 1; dog: TP 1, T 1, P 1.
    assert [s["miou"] for s in res["sweep"]] == pytest.approx([(50 + 50 + 100) / 3] * 2)
