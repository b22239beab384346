"""Evaluate label maps, and CAM seeds over a sweep of background thresholds, against ground truth.

Decoding the PNG / npz files dominates the cost, so images are split into chunks that worker
processes decode and reduce to small integer histograms; only those travel back.

Seeds follow SEAM: label = argmax over [background threshold t, CAM_1 .. CAM_K]. ``np.argmax``
returns the first maximum, so background wins a tie: a pixel is foreground only when its
highest CAM is *strictly* above t, and ties between classes go to the lower class index.
Thresholds are compared in float32, as in the reference's float32 score array.

A sweep over T thresholds is one pass over the files: the foreground maximum and its class
do not depend on t, so each pixel falls into one of T+1 bins by how many thresholds lie below
its maximum; one bincount per image over (bin, ground truth, class) gives every threshold's
confusion matrix after a cumulative sum over the bins.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from plda.data.camfile import load_cams
from plda.errors import ConfigError, DataError
from plda.data.layout import VOC_CLASSES
from plda.evaluation.metrics import confusion_matrix, scores
from plda.inference.seeds import foreground
from plda.utils.io import check_id, safe_join
from plda.utils.parallel import map_sum
from plda.data.labels import load_label_png


def read_id_list(path: str | os.PathLike) -> list[str]:
    """Image ids of a list file (:func:`plda.data.layout.read_id_list`); an empty list is an
    error here, since there would be nothing to score."""
    from plda.data.layout import read_id_list as read_layout_list

    ids = read_layout_list(path)
    if not ids:
        raise DataError(f"id list {path} is empty")
    return ids


def read_class_names(path: str | os.PathLike | None) -> list[str]:
    """Every class name, background first, from a ``classes.txt`` of foreground names (one per
    line; a leading ``background`` line is accepted). ``None`` gives VOC's 21 classes."""
    if path is None:
        return ["background", *VOC_CLASSES]
    path = Path(path)
    from plda.utils.io import read_text_file

    names = [line.strip() for line in read_text_file(path, "class list").splitlines()]
    names = [name for name in names if name]
    if names and names[0].lower() == "background":
        names = names[1:]
    if not names:
        raise DataError(f"class list {path} names no foreground classes")
    if len(set(names)) != len(names):
        raise DataError(f"class list {path} repeats a name: {names}")
    return ["background", *names]


def find_ids(folder: str | os.PathLike, suffix: str) -> list[str]:
    """The sorted stems of the files ending in ``suffix`` in ``folder``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"folder not found: {folder}")
    ids = sorted(p.name[: -len(suffix)] for p in folder.iterdir()
                 if p.name.endswith(suffix) and not p.name.startswith("."))
    if not ids:
        raise DataError(f"no '*{suffix}' files in {folder}")
    return [check_id(i, source=str(folder)) for i in ids]


def _load_gt(gt_dir: str, image_id: str) -> tuple[np.ndarray, Path]:
    gt_path = safe_join(gt_dir, image_id + ".png")
    if not gt_path.is_file():
        raise DataError(f"ground-truth mask not found: {gt_path}")
    return load_label_png(gt_path), gt_path


def _label_chunk(ids: Sequence[str], pred_dir: str, gt_dir: str, n: int,
                 ignore_index: int, skip_bad: bool = False) -> tuple[np.ndarray, list]:
    """Confusion ``(n, n + 1)`` of a chunk and the ``(id, reason)`` of the images skipped."""
    conf = np.zeros((n, n + 1), dtype=np.int64)
    skipped: list[tuple[str, str]] = []
    for image_id in ids:
        try:
            pred_path = safe_join(pred_dir, image_id + ".png")
            if not pred_path.is_file():
                raise DataError(f"prediction not found: {pred_path}")
            gt, gt_path = _load_gt(gt_dir, image_id)
            pred = load_label_png(pred_path)
            if pred.shape != gt.shape:
                raise DataError(f"prediction {pred_path} is {pred.shape[0]}x{pred.shape[1]} but "
                                f"ground truth {gt_path} is {gt.shape[0]}x{gt.shape[1]}")
            try:
                conf += confusion_matrix(pred, gt, n, ignore_index, count_unassigned=True)
            except ValueError as exc:
                raise DataError(f"{gt_path}: {exc}") from exc
        except DataError as exc:
            if not skip_bad:
                raise
            skipped.append((image_id, str(exc)))
    return conf, skipped


def _cam_chunk(ids: Sequence[str], cam_dir: str, gt_dir: str, n: int, ignore_index: int,
               thresholds: np.ndarray, skip_bad: bool = False) -> tuple[np.ndarray, list]:
    """Histogram ``(T+1, n+2, n)`` over (threshold bin, ground truth, CAM argmax class).

    Ground-truth row n holds ignored pixels and row n+1 invalid values (an error), so that
    lookup tables map every pixel without masking copies. The CAMs stay float16: their bit
    patterns order like their values once the sign bit is clear, so the maximum is taken on
    uint16 and a 65,536-entry table gives each value's threshold bin. With ``skip_bad`` an
    image whose files are missing or do not fit is left out and listed as ``(id, reason)``.
    """
    nbins = len(thresholds) + 1
    all_f16 = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16)
    # bin b = number of thresholds strictly below the value: foreground for t_0..t_{b-1}.
    bin_code = np.searchsorted(thresholds, all_f16.astype(np.float32), side="left")
    bin_code = (bin_code * ((n + 2) * n)).astype(np.int32)
    gt_code = np.full(256, n + 1, dtype=np.int32)
    gt_code[:n] = np.arange(n)
    if 0 <= ignore_index < 256:
        gt_code[ignore_index] = n
    gt_code *= n
    hist = np.zeros(nbins * (n + 2) * n, dtype=np.int64)
    skipped: list[tuple[str, str]] = []
    for image_id in ids:
        try:
            image_hist = _cam_image_hist(image_id, cam_dir, gt_dir, n, ignore_index, nbins,
                                         bin_code, gt_code, hist.size)
        except DataError as exc:
            if not skip_bad:
                raise
            skipped.append((image_id, str(exc)))
            continue
        hist += image_hist
    return hist.reshape(nbins, n + 2, n), skipped


def _cam_image_hist(image_id: str, cam_dir: str, gt_dir: str, n: int, ignore_index: int,
                    nbins: int, bin_code: np.ndarray, gt_code: np.ndarray, size: int) -> np.ndarray:
    """One image's flat histogram for :func:`_cam_chunk`; any defect is a ``DataError``."""
    cam_path = safe_join(cam_dir, image_id + ".npz")
    if not cam_path.is_file():
        raise DataError(f"CAM file not found: {cam_path}")
    camfile = load_cams(cam_path, dtype=np.float16)
    if camfile.num_classes + 1 != n:
        raise DataError(f"{cam_path}: holds {camfile.num_classes} foreground classes, "
                        f"expected {n - 1} (the class list has {n} classes with background)")
    gt, gt_path = _load_gt(gt_dir, image_id)
    if gt.shape != tuple(camfile.image_size):
        raise DataError(f"CAM file {cam_path} is {camfile.image_size[0]}x"
                        f"{camfile.image_size[1]} but ground truth {gt_path} is "
                        f"{gt.shape[0]}x{gt.shape[1]}")
    bits = camfile.cams.view(np.uint16)
    if bits.size and bits.max() >= 0x8000:
        # Slightly negative values (allowed on load) are background at any t >= 0.
        bits = np.where(bits >= 0x8000, np.uint16(0), bits)
    fg_bits, fg_label = foreground(bits, camfile.keys, camfile.image_size)
    code = bin_code[fg_bits]
    code += gt_code[gt]
    code += fg_label
    image_hist = np.bincount(code.ravel(), minlength=size)
    if image_hist.reshape(nbins, n + 2, n)[:, n + 1].any():
        bad = np.unique(gt[gt_code[gt] == (n + 1) * n])
        raise DataError(f"{gt_path}: ground-truth values {bad.tolist()} outside the classes "
                        f"0..{n - 1} and not the ignore index {ignore_index}")
    return image_hist


def sweep_confusions(hist: np.ndarray) -> np.ndarray:
    """Turn a ``(T+1, n+2, n)`` threshold-bin histogram into ``(T, n, n)`` confusion matrices,
    one per (ascending) threshold."""
    nbins, _, n = hist.shape
    valid = hist[:, :n, :]
    # Threshold j labels bins b > j with their CAM class and bins b <= j background.
    above = np.cumsum(valid[::-1], axis=0)[::-1]
    below = np.cumsum(valid.sum(axis=2), axis=0)
    conf = above[1:].copy()
    conf[:, :, 0] += below[:-1]
    return conf


def _skip_report(skipped: list[tuple[str, str]], total: int) -> dict[str, Any]:
    """The result entries of a ``skip_bad`` evaluation; all images skipped is still an error."""
    if len(skipped) == total:
        raise DataError(f"all {total} images were skipped as bad, nothing to score; first: "
                        f"{skipped[0][1]}")
    return {"skipped": [{"id": i, "reason": r} for i, r in skipped]}


def _check_gt_dir(gt_dir) -> None:
    """Fail before any work when there is no ground-truth folder to score against."""
    if gt_dir is None:
        raise DataError("no ground-truth mask folder to score against (the dataset has no "
                        "SegmentationClassAug/ or SegmentationClass/); score only images "
                        "that have masks, or set cam.bg_threshold to skip the sweep")
    if not Path(gt_dir).is_dir():
        raise DataError(f"ground-truth folder {gt_dir} not found: expected a folder of "
                        "<id>.png label maps")


def _check_names(class_names: Sequence[str]) -> int:
    n = len(class_names)
    if not 2 <= n <= 255:
        raise DataError(f"need 2..255 class names (background first), got {n}")
    return n


def evaluate_labels(pred_dir: str | os.PathLike, gt_dir: str | os.PathLike, ids: Sequence[str],
                    class_names: Sequence[str], num_workers: int | None = None,
                    ignore_index: int = 255, skip_bad: bool = False) -> dict[str, Any]:
    """Score label PNGs ``pred_dir/<id>.png`` against ``gt_dir/<id>.png``.

    ``class_names`` names every class, background first. Returns :func:`scores`' dict plus
    ``images``. A missing, unreadable or differently sized prediction or ground truth is a
    ``DataError`` naming the file; with ``skip_bad`` such an image is left out instead and
    listed under ``skipped`` (``[{"id", "reason"}]``), ``images`` counting those scored.
    """
    n = _check_names(class_names)
    _check_gt_dir(gt_dir)
    ids = [check_id(i) for i in ids]
    conf, skipped = map_sum(_label_chunk, ids,
                            (str(pred_dir), str(gt_dir), n, ignore_index, skip_bad),
                            num_workers, "eval")
    report = _skip_report(skipped, len(ids)) if skip_bad else {}
    return {**scores(conf, class_names), "images": len(ids) - len(skipped), **report}


def evaluate_cams(cam_dir: str | os.PathLike, gt_dir: str | os.PathLike, ids: Sequence[str],
                  class_names: Sequence[str], thresholds: Sequence[float],
                  num_workers: int | None = None, ignore_index: int = 255,
                  skip_bad: bool = False) -> dict[str, Any]:
    """Score the seeds of CAM files ``cam_dir/<id>.npz`` at every background threshold at once.

    Returns the scores at the best threshold (highest mIoU; the lowest threshold among equals)
    plus ``images`` and ``threshold``; with more than one threshold also ``sweep``
    (``[{"threshold", "miou"}]`` in the given order) and ``best_threshold``. ``skip_bad`` as
    in :func:`evaluate_labels`.
    """
    n = _check_names(class_names)
    _check_gt_dir(gt_dir)
    given = [float(t) for t in thresholds]
    if not given:
        raise ConfigError("no background thresholds to evaluate")
    # Below 0 the reference's argmax would pick absent classes whose dense CAM plane is 0.
    outside = [t for t in given if not 0.0 <= t <= 1.0]
    if outside:
        raise ConfigError(f"background thresholds {outside} outside 0..1 (CAMs lie in 0..1)")
    ids = [check_id(i) for i in ids]
    order = np.argsort(np.asarray(given, dtype=np.float32), kind="stable")
    sorted_t = np.asarray(given, dtype=np.float32)[order]
    hist, skipped = map_sum(_cam_chunk, ids,
                            (str(cam_dir), str(gt_dir), n, ignore_index, sorted_t, skip_bad),
                            num_workers, "eval seeds")
    report = _skip_report(skipped, len(ids)) if skip_bad else {}
    confs = sweep_confusions(hist)
    results: list[dict[str, Any] | None] = [None] * len(given)
    for j, idx in enumerate(order):
        results[idx] = scores(confs[j], class_names)
    mious = [-1.0 if r["miou"] is None else r["miou"] for r in results]
    best = min(range(len(given)), key=lambda i: (-mious[i], given[i]))
    out = {**results[best], "images": len(ids) - len(skipped), "threshold": given[best]}
    if len(given) > 1:
        out["sweep"] = [{"threshold": t, "miou": r["miou"]} for t, r in zip(given, results)]
        out["best_threshold"] = given[best]
    return {**out, **report}
