"""``plda segment eval``: the trained segmentation network's label maps of the evaluation
splits (multi-scale, flipped, optionally CRF-refined) and their scores.

Outputs, beside the rest of the run:

* ``<run_dir>/seg/<split>/<id>.png`` — VOC palette label maps, nothing else, so the folder can
  be handed to ``plda eval --pred`` or any VOC tool as it is;
* ``<run_dir>/seg/source_<split>.json`` — the weights digest and settings the maps came from;
  maps of other weights or settings are deleted before a run, maps of the same are kept, so a
  killed evaluation resumes where it stopped;
* ``<run_dir>/seg/eval_<split>.json`` — the full scores (per-class IoU, precision, recall);
* ``metrics.json`` section ``seg`` — ``{split: {miou, iou, images, written, seconds_per_image}}``.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

from plda.config.schema import RunConfig
from plda.errors import ConfigError, DataError
from plda.runfolder import drop_stale_outputs, file_sha256
from plda.runfolder import load_layout, run_dir, update_metrics
from plda.utils.dist import is_main_process

SEG_OUT_DIR = "seg"


def seg_out_dir(cfg: RunConfig) -> Path:
    """``<run_dir>/seg``: the label maps and scores of the stage-2 network."""
    return run_dir(cfg) / SEG_OUT_DIR


def seg_weights_path(cfg: RunConfig, weights=None) -> Path:
    """The weights file to evaluate: ``weights`` (a file or a run folder), else the run's own
    ``<run_dir>/deeplab/segmentation.safetensors``; a ``DataError`` when that is missing."""
    from plda.pipeline.segment import seg_weights_path as trained_weights_path
    from plda.segmentation.models import resolve_weights_path

    if weights is not None:
        return resolve_weights_path(weights)
    path = trained_weights_path(cfg)
    if not path.is_file():
        raise DataError(f"no trained segmentation network in {run_dir(cfg)}: expected {path} "
                        "(run 'plda segment train' first)")
    return path


def _source(cfg: RunConfig, weights: Path) -> dict:
    """What a split's label maps depend on; maps made from anything else are stale."""
    from plda.runfolder import stored_path

    return {"weights": stored_path(cfg, weights), "sha256": file_sha256(weights),
            "scales": list(cfg.seg.scales), "flip": cfg.seg.eval_flip, "crf": cfg.seg.crf,
            "amp": cfg.seg.amp}


def _pending(folder: Path, ids: list[str]) -> list[str]:
    """The ids among this rank's ``ids`` without a label map yet; this rank's temporaries of a
    killed run are removed first (``atomic_write`` makes every existing map complete)."""
    from plda.utils.io import clean_stale_temporaries, safe_join

    folder.mkdir(parents=True, exist_ok=True)
    clean_stale_temporaries(folder, [f"{i}.png" for i in ids])
    return [i for i in ids if not safe_join(folder, f"{i}.png").is_file()]


def evaluate_segmentation(cfg: RunConfig, splits=None, *, weights=None, dist=None) -> dict:
    """Write ``<run_dir>/seg/<split>/<id>.png`` for each split (default ``seg.eval_splits``)
    with ``seg.scales`` × ``seg.eval_flip`` (``seg.crf``: dense CRF) and score them against the
    dataset's masks when it has them (module docstring for the files). Resumable; sharded over
    torchrun ranks (``ids[rank::world]``).

    Args:
        weights: a segmentation weights file or run folder to use instead of the run's own.
        dist: a :class:`plda.engine.distributed.DistInfo` (default: from the environment).
    Returns:
        ``{split: {"miou", "iou", "images", "written", "seconds_per_image"}}`` (no scores for a
        dataset without masks), the same on every rank.
    """
    from plda.engine.distributed import (all_gather_object, barrier, broadcast_object,
                                         init_distributed)
    from plda.segmentation.inference import iter_label_maps
    from plda.segmentation.models import load_segmentation_net
    from plda.utils.io import atomic_write_json, safe_join
    from plda.utils.progress import progress_bar
    from plda.data.labels import save_label_png

    dist = dist if dist is not None else init_distributed()
    if cfg.seg.crf:  # fail before any work, not at the first image
        from plda.inference.crf import require_pydensecrf

        require_pydensecrf()
    layout = load_layout(cfg, generate=False)
    path = seg_weights_path(cfg, weights)
    net, meta = load_segmentation_net(path, device=dist.device)
    if net.num_classes != layout.num_classes + 1:
        raise ConfigError(f"{path}: the network predicts {net.num_classes} classes (with "
                          f"background) but dataset {layout.root} has {layout.num_classes + 1}")
    if meta.get("class_names") and list(meta["class_names"]) != layout.class_names:
        warnings.warn(f"{path}: class names {meta['class_names']} differ from the dataset's "
                      f"{layout.class_names}; scoring by index", stacklevel=2)
    source = _source(cfg, path) if is_main_process() else None
    out_root = seg_out_dir(cfg)
    summary: dict = {}
    for split in splits or cfg.seg.eval_splits:
        folder = out_root / split
        if is_main_process():
            drop_stale_outputs(folder, source, "*.png", marker=out_root / f"source_{split}.json")
        barrier()
        all_ids = layout.ids(split)
        todo = _pending(folder, all_ids[dist.rank::dist.world_size])
        start, written = time.perf_counter(), 0
        bar = progress_bar(len(todo), desc=f"segment {split}", unit="img")
        try:
            images = ((i, layout.load_image(i)) for i in todo)
            for image_id, _, labels in iter_label_maps(net, images, cfg.seg.scales,
                                                       cfg.seg.eval_flip, cfg.seg.amp,
                                                       crf=cfg.seg.crf):
                save_label_png(safe_join(folder, f"{image_id}.png"), labels)
                written += 1
                bar.update(1)
        finally:
            bar.close()
        seconds = time.perf_counter() - start
        counts = all_gather_object((written, seconds))
        barrier()
        total_written = sum(c[0] for c in counts)
        # Ranks work in parallel: time per image is the slowest rank's time over its images.
        per_image = max((s / w for w, s in counts if w), default=0.0)
        entry: dict = {"images": len(all_ids), "written": total_written,
                       "seconds_per_image": per_image}
        # Scored on the images that have masks (none: VOC's test, or one's own photos), minus
        # those that tuned the background threshold on a held-out half; a reason otherwise.
        from plda.pipeline.cams import no_masks_reason, score_entry, scored_ids, unscored_entry

        scored, skip = scored_ids(cfg, layout, split, ids=all_ids)
        if is_main_process() and scored:
            from plda.evaluation.evaluate import evaluate_labels

            ev = evaluate_labels(folder, layout.mask_dir, scored, layout.class_names)
            ev["weights"], ev["settings"] = source["weights"], {k: source[k] for k in
                                                       ("scales", "flip", "crf", "amp")}
            ev["images_total"] = len(all_ids)
            atomic_write_json(out_root / f"eval_{split}.json", ev)
            entry.update(score_entry(ev, len(all_ids), len(scored)))
        elif is_main_process():
            entry.update(unscored_entry(len(all_ids), no_masks_reason(layout, split, skip)))
        summary[split] = broadcast_object(entry)
    if is_main_process():
        _merge_metrics(cfg, summary)
    barrier()
    return summary


def _merge_metrics(cfg: RunConfig, summary: dict) -> None:
    """Update ``metrics.json`` section ``seg`` split by split, keeping splits evaluated by an
    earlier call (``update_metrics`` replaces a whole section)."""
    path = run_dir(cfg) / "metrics.json"
    section: dict = {}
    if path.is_file():
        try:
            old = json.loads(path.read_text()).get(SEG_OUT_DIR)
            section = old if isinstance(old, dict) else {}
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            section = {}
    update_metrics(cfg, SEG_OUT_DIR, {**section, **summary})


__all__ = ["SEG_OUT_DIR", "evaluate_segmentation", "seg_out_dir", "seg_weights_path"]
