"""Multi-scale CAMs of a trained stage-1 model, the background-threshold sweep, and seeds."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from plda.config.schema import RunConfig
from plda.methods.build import load_stage1_model
from plda.runfolder import load_layout, run_dir, update_metrics
from plda.utils.dist import is_main_process


def sweep_thresholds(cfg: RunConfig) -> list[float]:
    start, stop, step = cfg.cam.sweep
    n = int(np.floor((stop - start) / step + 1e-9))
    return [round(start + i * step, 6) for i in range(n)]


def _cam_source(cfg: RunConfig, weights, data_root=None) -> dict:
    """What the CAM files of a folder were made from: the weights file's digest, the dataset
    (its folder, and the generator's parameters for "synth", whose images change with them)
    and the inference settings. Files made from anything else are stale: another dataset's
    files share ids such as ``2007_000032`` but not the images."""
    from dataclasses import asdict

    from plda.runfolder import file_sha256
    from plda.runfolder import STAGE1_WEIGHTS, stored_path

    path = Path(weights) if weights else run_dir(cfg) / STAGE1_WEIGHTS
    return {"weights": stored_path(cfg, path), "sha256": file_sha256(path),
            "scales": list(cfg.cam.scales),
            "flip": cfg.cam.flip, "label_source": cfg.cam.label_source,
            "score_threshold": cfg.cam.score_threshold,
            # only when not the default, so folders made before the switch stay current
            **({"map": cfg.cam.map} if cfg.cam.map != "revised" else {}),
            **({"resize": cfg.cam.resize} if cfg.cam.resize != "tensor" else {}),
            **({"max_side": cfg.cam.max_side} if cfg.cam.max_side != 1024 else {}),
            "data_root": stored_path(cfg, data_root) if data_root is not None else None,
            "synth": asdict(cfg.data.synth) if cfg.data.root == "synth" else None}


def _drop_stale_cams(folder: Path, source: dict) -> None:
    """Empty ``folder`` if its CAMs came from other weights or settings (rank 0)."""
    from plda.runfolder import drop_stale_outputs

    drop_stale_outputs(folder, source, "*.npz")


def make_cams(cfg: RunConfig, splits=None, *, weights=None, dist=None) -> dict:
    """Write ``<run_dir>/cams/<split>/<id>.npz`` for each split (default ``data.eval_splits``);
    resumable (complete files made from the same weights and settings are skipped, stale ones
    removed) and sharded across torchrun ranks."""
    from plda.engine.distributed import barrier, init_distributed
    from plda.inference.cams import infer_cams

    dist = dist if dist is not None else init_distributed()
    layout = load_layout(cfg)
    model = load_stage1_model(cfg, layout.num_classes, weights).to(dist.device)
    source = _cam_source(cfg, weights, layout.root) if is_main_process() else None
    summary = {}
    for split in splits or cfg.data.eval_splits:
        t0 = time.perf_counter()
        folder = run_dir(cfg) / "cams" / split
        if is_main_process():
            _drop_stale_cams(folder, source)
        barrier()
        res = infer_cams(model, layout, split, folder,
                         scales=cfg.cam.scales, flip=cfg.cam.flip,
                         label_source=cfg.cam.label_source,
                         score_threshold=cfg.cam.score_threshold, amp=cfg.cam.amp,
                         resize=cfg.cam.resize, max_side=cfg.cam.max_side,
                         device=dist.device, rank=dist.rank,
                         world_size=dist.world_size,
                         revised=cfg.cam.map == "revised")
        barrier()
        res["wall_time_s"] = time.perf_counter() - t0
        summary[split] = res
    # Rank 0's share: images written / skipped and its seconds per written image.
    update_metrics(cfg, "cam", {split: {k: res[k] for k in ("written", "skipped", "total",
                                                           "seconds_per_image", "wall_time_s")}
                                for split, res in summary.items()})
    if cfg.data.val_split in summary and is_main_process() and cfg.cam.label_source == "gt":
        # How well the classifier knows which classes an image holds (one pass at scale 1):
        # what a segmentation without image labels depends on. Only where the split's image
        # labels are known (the CAMs were masked with them).
        from plda.evaluation.classification import evaluate_classification

        res = evaluate_classification(model, layout, cfg.data.val_split, amp=cfg.cam.amp)
        update_metrics(cfg, "classification", {cfg.data.val_split: {
            k: res[k] for k in ("map", "f1", "precision", "recall", "images", "threshold")}})
    barrier()
    return summary


def _held_out(ids: list[str], seed: int = 0) -> tuple[list[str], list[str]]:
    """``(tune, score)``: a reproducible half of ``ids`` (rounded up) and the rest."""
    import hashlib

    order = sorted(ids, key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).hexdigest())
    tune = set(order[:(len(ids) + 1) // 2])
    return [i for i in ids if i in tune], [i for i in ids if i not in tune]


def choose_threshold(cfg: RunConfig, layout, splits: list[str], *,
                     workers: int | None = None, say=print) -> tuple[dict, dict[str, list[str]]]:
    """The background threshold and how it was chosen, with masks on none, some or all images.

    1. ``cam.bg_threshold`` set: that value.
    2. Some images of ``cam.sweep_split`` have masks: the sweep's best on those images.
    3. Else, some images of another split in ``splits`` have masks: with two or more, the sweep
       on a reproducible half of them (the split with the most masks) and that split scored on
       the other half only, so no image both tunes and scores the threshold.
    4. Else (no masks, or one): the label-free rule ``cam.label_free`` on the CAMs of
       ``cam.sweep_split`` (:mod:`plda.inference.thresholds`), said in one line.

    Returns ``(record, exclude)``: ``record`` for ``metrics.json`` (``bg_threshold``, ``tuning``
    and, for 2 and 3, ``sweep``) and, per split, the ids not to score (3's tuning half).
    """
    from plda.evaluation.evaluate import evaluate_cams

    out = run_dir(cfg)
    exclude: dict[str, list[str]] = {}
    if cfg.cam.bg_threshold is not None:
        return {"bg_threshold": float(cfg.cam.bg_threshold),
                "tuning": {"how": "set", "setting": "cam.bg_threshold"}}, exclude
    sweep_split = cfg.cam.sweep_split
    masked = {s: layout.masked_ids(s) for s in dict.fromkeys([sweep_split, *splits])}
    tune_split, tune_ids, held_out = sweep_split, masked[sweep_split], False
    if not tune_ids:
        candidates = sorted(((len(ids), s) for s, ids in masked.items() if len(ids) >= 2),
                            key=lambda t: (-t[0], splits.index(t[1]) if t[1] in splits else 0))
        if candidates:
            tune_split = candidates[0][1]
            tune_ids, _ = _held_out(masked[tune_split])
            exclude[tune_split] = tune_ids
            held_out = True
    if tune_ids:
        sweep = evaluate_cams(out / "cams" / tune_split, layout.mask_dir, tune_ids,
                              layout.class_names, sweep_thresholds(cfg), num_workers=workers)
        threshold = float(sweep["best_threshold"])
        total = len(layout.ids(tune_split))
        tuning = {"how": "held-out sweep" if held_out else "sweep", "split": tune_split,
                  "images": len(tune_ids), "images_in_split": total}
        if held_out:
            tuning["tuned_ids"] = list(tune_ids)
            tuning["scored_ids"] = [i for i in masked[tune_split] if i not in set(tune_ids)]
            say(f"[seeds] {sweep_split!r} has no masks: the background threshold {threshold:.2f} "
                f"was tuned on {len(tune_ids)} of the {len(masked[tune_split])} masked images of "
                f"{tune_split!r} and that split is scored on the other "
                f"{len(tuning['scored_ids'])} only (their ids: metrics.json, seeds.tuning)")
        elif len(tune_ids) < total:
            say(f"[seeds] background threshold {threshold:.2f} tuned on the {len(tune_ids)} of "
                f"{total} images of {tune_split!r} that have masks")
        return {"bg_threshold": threshold, "tuning": tuning,
                "sweep": {"split": tune_split, "curve": sweep["sweep"],
                          "best_threshold": threshold, "images": len(tune_ids)}}, exclude
    from plda.inference.thresholds import cam_histogram, rule_threshold

    rule = cfg.cam.label_free
    source = next((s for s in [sweep_split, *splits] if (out / "cams" / s).is_dir()), sweep_split)
    hist = cam_histogram(out / "cams" / source, layout.ids(source), num_workers=workers)
    found = rule_threshold(hist, rule)
    # Kept inside the range the sweep would search (cam.sweep): a flat or empty CAM
    # distribution (an untrained classifier) can put Otsu's split near 0 or 1.
    low, high = cfg.cam.sweep[0], sweep_thresholds(cfg)[-1]
    threshold = round(min(max(found, low), high), 3)
    clamped = "" if threshold == found else f", moved from {found:.3f} into cam.sweep's range"
    say(f"[seeds] no ground-truth masks to tune on: background threshold {threshold:.3f} chosen "
        f"without labels (rule cam.label_free={rule} on the CAMs of {source!r}{clamped}; set "
        f"cam.bg_threshold=T to fix it)")
    tuning = {"how": "label-free", "rule": rule, "split": source,
              "images": len(layout.ids(source)), "rule_threshold": found}
    return {"bg_threshold": threshold, "tuning": tuning}, exclude


def tuning_ids(cfg: RunConfig, split: str) -> list[str]:
    """The images of ``split`` that tuned the background threshold on a held-out half (the
    seeds' ``tuning`` entry in ``metrics.json``); none when the threshold was tuned otherwise."""
    import json

    try:
        tuning = json.loads((run_dir(cfg) / "metrics.json").read_text())["seeds"]["tuning"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    if isinstance(tuning, dict) and tuning.get("split") == split:
        return list(tuning.get("tuned_ids") or [])
    return []


def scored_ids(cfg: RunConfig, layout, split: str, ids=None, tuned=None) -> tuple[list[str],
                                                                                 set[str]]:
    """(the images of ``split`` to score, those left out for having tuned the threshold):
    every image of ``ids`` (default: the split's) that has a mask, minus ``tuned`` (default:
    ``tuning_ids``). Seeds, pseudo masks and segmentation are all scored on these."""
    skip = set(tuning_ids(cfg, split) if tuned is None else tuned)
    masked = layout.masked_ids(split if ids is None else list(ids))
    return [i for i in masked if i not in skip], skip


def score_entry(result: dict, ids_total: int, scored: int) -> dict:
    """A split's score record: the scores and how many of its images had masks."""
    keep = {k: result[k] for k in ("miou", "iou", "precision", "recall") if k in result}
    return {**keep, "images": scored, "images_total": ids_total}


def unscored_entry(ids_total: int, why: str) -> dict:
    """The record of a split that could not be scored, with the reason."""
    return {"miou": None, "images": 0, "images_total": ids_total, "reason": why}


def make_seeds(cfg: RunConfig, splits=None, *, workers: int | None = None) -> dict:
    """Choose the background threshold (:func:`choose_threshold`: set, tuned on the images that
    have masks, or label-free), write ``<run_dir>/seeds/<split>/<id>.png`` and score every
    split on its images that have masks (a split without any gets a reason instead); record it
    all in ``metrics.json``."""
    from plda.evaluation.evaluate import evaluate_cams
    from plda.inference.seeds import write_seeds

    layout = load_layout(cfg, generate=False)
    out = run_dir(cfg)
    splits = list(splits or cfg.data.eval_splits)
    result, exclude = choose_threshold(cfg, layout, splits, workers=workers)
    threshold = result["bg_threshold"]
    for split in splits:
        ids = layout.ids(split)
        # Seeds depend on the threshold, which a new sweep may move: always rewrite them.
        write_seeds(out / "cams" / split, out / "seeds" / split, ids, threshold,
                    workers=workers, skip_existing=False)
        scored, skip = scored_ids(cfg, layout, split, tuned=exclude.get(split, ()))
        if scored:
            ev = evaluate_cams(out / "cams" / split, layout.mask_dir, scored, layout.class_names,
                               [threshold], num_workers=workers)
            result[split] = score_entry(ev, len(ids), len(scored))
            if skip:
                result[split]["held_out_from_tuning"] = True
        else:
            result[split] = unscored_entry(len(ids), no_masks_reason(layout, split, skip))
    update_metrics(cfg, "seeds", result)
    return result


def no_masks_reason(layout, split: str, skip=()) -> str:
    """Why ``split`` has no score."""
    if skip:
        return "its masked images all tuned the threshold"
    if layout.mask_dir is None:
        return f"the dataset has no masks (no SegmentationClass/ in {layout.root})"
    return f"none of its {len(layout.ids(split))} images has a mask in {layout.mask_dir}"
