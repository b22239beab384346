"""``plda refine METHOD``: CAMs -> pseudo masks with the configured refiner
(``refine.method``, a :class:`plda.refinement.base.Refiner` from the registry).

1. a refiner that trains: its training labels (rank 0), then its network, trained with the
   shared trainer (resumed if interrupted, skipped once its weights exist), summary in
   ``metrics.json`` under the refiner's ``train_section``;
2. for every split asked for (default ``data.eval_splits``), each image's pseudo mask in
   ``<run_dir>/pseudo/<split>/<id>.png``: sharded across ranks (network refiners) or over
   worker processes on rank 0; then scored against the ground truth where there are masks
   (section ``pseudo``).

Every step resumes: finished files are kept.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from plda.config.schema import RunConfig
from plda.refinement.base import Refiner, build_refiner, pending
from plda.runfolder import load_layout, run_dir, update_metrics
from plda.utils.dist import is_main_process


def _split_entry(cfg: RunConfig, layout, split: str, out: Path, written: int,
                 seconds: float) -> dict:
    """Written count and timing of one split's pseudo masks, with their scores on the images
    that have masks (not on those that tuned the background threshold); a reason when none."""
    from plda.evaluation.evaluate import evaluate_labels
    from plda.pipeline.cams import no_masks_reason, score_entry, scored_ids, unscored_entry

    entry = {"written": written, "seconds": seconds,
             "seconds_per_image": seconds / written if written else 0.0}
    ids = layout.ids(split)
    scored, skip = scored_ids(cfg, layout, split)
    if scored:
        ev = evaluate_labels(out, layout.mask_dir, scored, layout.class_names)
        entry.update(score_entry(ev, len(ids), len(scored)))
    else:
        entry.update(unscored_entry(len(ids), no_masks_reason(layout, split, skip)))
    return entry


def _mask_task(task: tuple) -> None:
    """One image: the refiner's mask -> pseudo-mask PNG (in a worker process or in this one)."""
    from plda.data.labels import save_label_png

    refiner, image_id, cam_path, image_path, target = task
    save_label_png(target, refiner.mask(image_id, Path(cam_path), Path(image_path)))


def _processes(refiner: Refiner, workers: int | None) -> int:
    if workers is not None:
        return workers
    return (os.cpu_count() or 1) if refiner.processes == "all" else int(refiner.processes)


def make_pseudo_masks(cfg: RunConfig, refiner: Refiner, splits=None, *, dist,
                      workers: int | None = None) -> dict:
    """The refiner's pseudo masks of each split (default ``data.eval_splits``; finished files
    kept), scored (rank 0). A sharded refiner splits the images across ranks; the others run
    on rank 0, over worker processes."""
    from plda.engine.distributed import barrier
    from plda.utils.parallel import map_in_workers
    from plda.utils.progress import progress

    layout = load_layout(cfg, generate=False)
    if not refiner.sharded and not is_main_process():
        barrier()
        return {}
    refiner.setup(dist)
    result: dict = {}
    for split in splits or cfg.data.eval_splits:
        ids = layout.ids(split)
        mine = ids[dist.rank::dist.world_size] if refiner.sharded else ids
        out = run_dir(cfg) / "pseudo" / split
        tasks = [(refiner, image_id, str(cam_path), str(layout.image_path(image_id)), str(target))
                 for image_id, target, cam_path in pending(cfg, split, mine, out)]
        start = time.perf_counter()
        desc = f"pseudo masks {refiner.name} {split}"
        if refiner.sharded:
            for task in progress(tasks, desc=desc, unit="img"):
                _mask_task(task)
        else:
            map_in_workers(_mask_task, tasks, _processes(refiner, workers), desc=desc)
        seconds = time.perf_counter() - start
        if refiner.sharded:
            barrier()
        result[split] = _split_entry(cfg, layout, split, out, len(tasks), seconds) \
            if is_main_process() else {"written": len(tasks), "seconds": seconds}
    if is_main_process():
        update_metrics(cfg, "pseudo", {"method": refiner.name, **refiner.pseudo_info(),
                                       **result})
    if not refiner.sharded:
        barrier()
    return result


def train_refiner(cfg: RunConfig, refiner: Refiner, *, dist, workers: int | None = None) -> dict:
    """A training refiner's labels (rank 0) and network (skipped once its weights exist,
    resumed from its last checkpoint); the summary under its ``train_section``."""
    from plda.engine.checkpoint import latest_checkpoint
    from plda.engine.distributed import barrier

    summary: dict = {}
    if is_main_process():
        summary["labels"] = refiner.make_labels(workers=workers)
    barrier()
    folder = refiner.out_dir()
    if not (folder / refiner.weights).is_file():
        resume = latest_checkpoint(folder / "checkpoints") is not None
        summary["train"] = refiner.train(resume=resume, dist=dist)
        if summary["train"]["interrupted"]:
            raise KeyboardInterrupt
        if is_main_process() and refiner.train_section:
            update_metrics(cfg, refiner.train_section, summary["train"])
    barrier()
    return summary


def refine(cfg: RunConfig, *, splits=None, dist=None, workers: int | None = None) -> dict:
    """The configured refinement (``refine.method``): training labels -> network (when the
    refiner trains) -> pseudo masks of ``splits`` (default ``data.eval_splits``)."""
    from plda.engine.distributed import init_distributed

    dist = dist if dist is not None else init_distributed()
    refiner = build_refiner(cfg)
    summary = train_refiner(cfg, refiner, dist=dist, workers=workers) if refiner.trains else {}
    summary["pseudo"] = make_pseudo_masks(cfg, refiner, splits, dist=dist, workers=workers)
    return summary


__all__ = ["make_pseudo_masks", "refine", "train_refiner"]
