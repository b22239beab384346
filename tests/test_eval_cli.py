"""``plda eval`` on folders the tests write, and evaluation on the real VOC sample."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from plda.cli import eval as eval_cli
from plda.data.camfile import save_cams
from plda.errors import ConfigError, DataError
from plda.evaluation.evaluate import (evaluate_cams, evaluate_labels, find_ids, read_class_names,
                                      read_id_list)
from plda.data.layout import VOC_CLASSES
from plda.data.labels import load_label_png, save_label_png


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="plda")
    eval_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["eval", *map(str, argv)])
    return args.func(args)


@pytest.fixture()
def label_folders(tmp_path):
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    # Image a: pairs (0,0) (0,0) (0,1) (1,1) (1,1) (2,0), one ignored pixel, one GT-1 pixel
    # predicted 255 (a miss); image b: four background pixels right; image c: not in the list.
    save_label_png(gt_dir / "a.png", np.array([[0, 0, 0, 1], [1, 2, 255, 1]]))
    save_label_png(pred_dir / "a.png", np.array([[0, 0, 1, 1], [1, 0, 2, 255]]))
    save_label_png(gt_dir / "b.png", np.zeros((2, 2)))
    save_label_png(pred_dir / "b.png", np.zeros((2, 2)))
    save_label_png(gt_dir / "c.png", np.ones((3, 3)))
    save_label_png(pred_dir / "c.png", np.zeros((3, 3)))
    (tmp_path / "classes.txt").write_text("cat\ndog\n\nbird\n")
    (tmp_path / "ids.txt").write_text("a\nb extra-column-ignored\n\n")
    return tmp_path


def test_eval_cli_labels_hand_case(label_folders, capsys):
    root = label_folders
    out = root / "res" / "eval.json"
    assert run_cli("--pred", root / "pred", "--gt", root / "gt", "--list", root / "ids.txt",
                   "--classes", root / "classes.txt", "--json", out, "--workers", "0") == 0
    res = json.loads(out.read_text())
    # background: TP 6, T 7, P 7 -> 6/8; cat: TP 2, T 3, P 3 -> 2/4; dog: TP 0, T 1, P 0.
    assert res["iou"] == pytest.approx({"background": 75.0, "cat": 50.0, "dog": 0.0, "bird": None})
    assert res["precision"] == pytest.approx(
        {"background": 600 / 7, "cat": 200 / 3, "dog": None, "bird": None})
    assert res["recall"] == pytest.approx(
        {"background": 600 / 7, "cat": 200 / 3, "dog": 0.0, "bird": None})
    assert res["miou"] == pytest.approx(125 / 3)
    assert res["pixel_accuracy"] == pytest.approx(800 / 11)
    assert res["images"] == 2 and res["classes_in_miou"] == 3
    table = capsys.readouterr().out
    assert "bird" in table and "—  (absent from GT and prediction, excluded from mIoU)" in table
    assert "mIoU 41.67 over 3 classes" in table and "2 images" in table
    assert [p.name for p in out.parent.iterdir()] == ["eval.json"]


def test_eval_cli_default_list_is_every_png(label_folders):
    root = label_folders
    assert find_ids(root / "pred", ".png") == ["a", "b", "c"]
    assert run_cli("--pred", root / "pred", "--gt", root / "gt", "--classes",
                   root / "classes.txt", "--json", root / "all.json") == 0
    res = json.loads((root / "all.json").read_text())
    assert res["images"] == 3 and res["recall"]["cat"] == pytest.approx(200 / 12)


def test_eval_cli_cam_sweep(tmp_path, capsys):
    rng = np.random.default_rng(5)
    for i in range(3):
        gt = rng.integers(0, 3, (6, 8))
        save_label_png(tmp_path / "gt" / f"x{i}.png", gt)
        cams = np.stack([(gt == c) * 0.6 + rng.random(gt.shape) * 0.4 for c in (1, 2)])
        save_cams(tmp_path / "cams" / f"x{i}.npz", cams, [1, 2], 2, gt.shape)
    (tmp_path / "classes.txt").write_text("background\ncat\ndog\n")
    out = tmp_path / "sweep.json"
    assert run_cli("--cams", tmp_path / "cams", "--gt", tmp_path / "gt", "--classes",
                   tmp_path / "classes.txt", "--sweep", "0.2:0.6:0.1", "--json", out) == 0
    res = json.loads(out.read_text())
    names = read_class_names(tmp_path / "classes.txt")
    assert names == ["background", "cat", "dog"]
    direct = evaluate_cams(tmp_path / "cams", tmp_path / "gt", ["x0", "x1", "x2"], names,
                           [0.2, 0.3, 0.4, 0.5])
    assert res == json.loads(json.dumps(direct))
    assert [s["threshold"] for s in res["sweep"]] == [0.2, 0.3, 0.4, 0.5]
    text = capsys.readouterr().out
    assert "<- best" in text and f"background threshold {res['best_threshold']:g}" in text
    assert run_cli("--cams", tmp_path / "cams", "--gt", tmp_path / "gt", "--classes",
                   tmp_path / "classes.txt", "--bg-threshold", "0.3", "--json", out) == 0
    single = json.loads(out.read_text())
    assert "sweep" not in single and single["miou"] == res["sweep"][1]["miou"]


def test_eval_cli_usage_errors(label_folders, tmp_path):
    root = label_folders
    with pytest.raises(ConfigError, match="--cams needs"):
        run_cli("--cams", root / "pred", "--gt", root / "gt", "--list", root / "ids.txt")
    with pytest.raises(ConfigError, match="--cams only"):
        run_cli("--pred", root / "pred", "--gt", root / "gt", "--bg-threshold", "0.3")
    for bad in ("0.2:0.6", "0.6:0.2:0.1", "a:b:c", "0.2:0.6:0"):
        with pytest.raises(ConfigError, match="--sweep"):
            eval_cli.parse_sweep(bad)
    assert eval_cli.parse_sweep("0.20:0.60:0.01")[6] == 0.26
    assert len(eval_cli.parse_sweep("0.20:0.60:0.01")) == 40
    (tmp_path / "bad_ids.txt").write_text("a\n../etc/passwd\n")
    with pytest.raises(DataError, match="bad_ids.txt"):
        read_id_list(tmp_path / "bad_ids.txt")
    assert read_class_names(None) == ["background", *VOC_CLASSES]


# ------------------------------------------------------------------------ real VOC sample


def _plain_scores(pairs, n: int) -> dict:
    """SEAM-style per-class counting with boolean masks: an independent implementation."""
    tp, t, p = np.zeros(n), np.zeros(n), np.zeros(n)
    for pred, gt in pairs:
        valid = gt != 255
        for c in range(n):
            t[c] += np.sum((gt == c) & valid)
            p[c] += np.sum((pred == c) & valid)
            tp[c] += np.sum((gt == c) & (pred == c) & valid)
    union = t + p - tp
    iou = [100 * tp[c] / union[c] if union[c] else None for c in range(n)]
    present = [v for v in iou if v is not None]
    return {"iou": iou, "miou": sum(present) / len(present),
            "precision": [100 * tp[c] / p[c] if p[c] else None for c in range(n)],
            "recall": [100 * tp[c] / t[c] if t[c] else None for c in range(n)],
            "fn_ratio": [100 * (t[c] - tp[c]) / union[c] if union[c] else None for c in range(n)],
            "pixel_accuracy": 100 * tp.sum() / t.sum()}


@pytest.mark.realdata
@pytest.mark.slow
def test_real_gt_against_itself_is_perfect(voc_subset):
    gt_dir = voc_subset / "SegmentationClassAug"
    ids = find_ids(gt_dir, ".png")
    assert len(ids) == 1545
    names = read_class_names(None)
    res = evaluate_labels(gt_dir, gt_dir, ids, names, num_workers=2)
    present = set()
    for image_id in ids:
        present.update(np.unique(load_label_png(gt_dir / f"{image_id}.png")).tolist())
    for c, name in enumerate(names):
        assert res["iou"][name] == (100.0 if c in present else None), name
    assert res["miou"] == 100.0 and res["classes_in_miou"] == len(present - {255})
    assert res["images"] == 1545


@pytest.mark.realdata
def test_real_perturbed_predictions_match_plain_numpy(voc_subset, tmp_path):
    gt_dir = voc_subset / "SegmentationClassAug"
    ids = find_ids(gt_dir, ".png")[::13]  # 119 images: enough for the worker pool
    rng = np.random.default_rng(2024)
    pairs = []
    for image_id in ids:
        gt = load_label_png(gt_dir / f"{image_id}.png")
        pred = gt.copy()
        h, w = gt.shape
        for _ in range(4):  # relabel random blocks, sometimes with 255 ("undecided")
            y, x = rng.integers(0, h - 20), rng.integers(0, w - 20)
            pred[y:y + rng.integers(10, 120), x:x + rng.integers(10, 120)] = rng.choice(
                [*range(21), 255])
        save_label_png(tmp_path / "pred" / f"{image_id}.png", pred)
        pairs.append((pred, gt))
    names = read_class_names(None)
    res = evaluate_labels(tmp_path / "pred", gt_dir, ids, names, num_workers=2)
    plain = _plain_scores(pairs, 21)
    assert res["miou"] == pytest.approx(plain["miou"], abs=1e-9)
    assert res["pixel_accuracy"] == pytest.approx(plain["pixel_accuracy"], abs=1e-9)
    for key in ("iou", "precision", "recall", "fn_ratio"):
        for name, expected in zip(names, plain[key]):
            got = res[key][name]
            assert (got is None) == (expected is None), (key, name)
            if expected is not None:
                assert got == pytest.approx(expected, abs=1e-9), (key, name)
    assert 0 < res["miou"] < 100
    (tmp_path / "ids.txt").write_text("\n".join(ids))
    assert run_cli("--pred", tmp_path / "pred", "--gt", gt_dir, "--list", tmp_path / "ids.txt",
                   "--json", tmp_path / "r.json") == 0
    assert json.loads((tmp_path / "r.json").read_text()) == json.loads(json.dumps(res))
