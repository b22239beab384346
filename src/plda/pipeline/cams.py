"""Multi-scale CAMs of a trained stage-1 model, the background-threshold sweep, and seeds."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from plda.config.schema import RunConfig
from plda.pipeline.common import load_layout, load_stage1_model, run_dir, update_metrics
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

    from plda.pipeline.common import STAGE1_WEIGHTS, file_sha256, stored_path

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
    from plda.pipeline.common import drop_stale_outputs

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


def make_seeds(cfg: RunConfig, splits=None, *, workers: int | None = None) -> dict:
    """Choose the background threshold (``cam.bg_threshold``, or the sweep's best on
    ``cam.sweep_split``), evaluate the CAM seeds of every split at it in one pass over the
    files, write ``<run_dir>/seeds/<split>/<id>.png`` and record it all in ``metrics.json``."""
    from plda.evaluation.evaluate import evaluate_cams
    from plda.inference.seeds import write_seeds

    layout = load_layout(cfg, generate=False)
    out = run_dir(cfg)
    splits = list(splits or cfg.data.eval_splits)
    gt_dir = layout.mask_dir
    result: dict = {}
    threshold = cfg.cam.bg_threshold
    if threshold is None:
        sweep = evaluate_cams(out / "cams" / cfg.cam.sweep_split, gt_dir,
                              layout.ids(cfg.cam.sweep_split), layout.class_names,
                              sweep_thresholds(cfg), num_workers=workers)
        threshold = float(sweep["best_threshold"])
        result["sweep"] = {"split": cfg.cam.sweep_split, "curve": sweep["sweep"],
                           "best_threshold": threshold}
    result["bg_threshold"] = threshold
    for split in splits:
        ids = layout.ids(split)
        # Seeds depend on the threshold, which a new sweep may move: always rewrite them.
        write_seeds(out / "cams" / split, out / "seeds" / split, ids, threshold,
                    workers=workers, skip_existing=False)
        if gt_dir is not None:
            ev = evaluate_cams(out / "cams" / split, gt_dir, ids, layout.class_names,
                               [threshold], num_workers=workers)
            result[split] = {k: ev[k] for k in ("miou", "iou", "images") if k in ev}
    update_metrics(cfg, "seeds", result)
    return result
