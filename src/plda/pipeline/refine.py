"""``plda refine {irn,crf,pamr}``: CAMs -> pseudo masks.

``crf`` and ``pamr`` refine each image's threshold seed scores (background plane = the chosen
background threshold, the CAMs of its classes) with the dense CRF (psa / SEAM parameters, in
worker processes) or with PAMR (pure torch, no extra dependency), and take the argmax.

``irn`` is IRN's boundary branch:

1. relation labels for the training split from its CAM files (confident fg / bg, label CRF):
   ``<run_dir>/irn/relations/<id>.png``;
2. the boundary head trained on them with the shared trainer (frozen backbone from the
   stage-1 run): ``<run_dir>/irn/`` (checkpoints, logs), weights ``irn/boundary.safetensors``;
3. for every evaluation split, the CAMs walked over the boundary's affinities:
   ``<run_dir>/pseudo/<split>/<id>.png``, scored against the ground truth in ``metrics.json``
   (section ``pseudo``).

Every step resumes: finished files are kept, training continues from its last checkpoint.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from plda.config.schema import RunConfig
from plda.errors import DataError
from plda.runfolder import load_layout, run_dir, update_metrics
from plda.utils.dist import is_main_process
from plda.utils.io import safe_join

BOUNDARY_WEIGHTS = "boundary.safetensors"


def irn_dir(cfg: RunConfig) -> Path:
    return run_dir(cfg) / "irn"


def _pending(cfg: RunConfig, split: str, ids: list[str], out: Path
              ) -> list[tuple[str, Path, Path]]:
    """``(id, output file, CAM file)`` of the images in ``ids`` whose output is not written
    yet; makes ``out``, removes its stale temporaries, and requires every needed CAM file."""
    from plda.inference.cams import clean_temporaries

    out.mkdir(parents=True, exist_ok=True)
    clean_temporaries(out, [f"{i}.png" for i in ids])
    todo = []
    for image_id in ids:
        target = safe_join(out, f"{image_id}.png")
        if target.is_file():
            continue
        cam_path = safe_join(run_dir(cfg) / "cams" / split, f"{image_id}.npz")
        if not cam_path.is_file():
            raise DataError(f"CAM file {cam_path} not found: run 'plda cam' for split "
                            f"{split!r} first")
        todo.append((image_id, target, cam_path))
    return todo


def _relation_task(task: tuple) -> None:
    from plda.data.camfile import load_cams
    from plda.inference.seeds import load_image_for_cams
    from plda.inference.runtime import scaled_size
    from plda.refinement.relations import relation_labels
    from plda.vis.palette import save_label_png

    cam_path, image_path, out_path, fg, bg, crf, image_scale = task
    cam_file = load_cams(cam_path)
    cams = np.asarray(cam_file.cams, np.float32)
    image = load_image_for_cams(image_path, cam_file, cam_path) if crf else None
    size = cams.shape[1:]
    if image_scale != 1.0:
        small = scaled_size(*size, image_scale)
        cams = _resize_maps(cams, small)
        image = None if image is None else _resize_image(image, small)
    labels = relation_labels(cams, list(cam_file.keys), image, fg_threshold=fg, bg_threshold=bg)
    if labels.shape != size:  # nearest neighbour back to the image size the trainer expects
        labels = _resize_labels(labels, size)
    save_label_png(out_path, labels)


def _resize_maps(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    import torch.nn.functional as F

    return F.interpolate(torch.from_numpy(maps)[None], size=size, mode="bilinear",
                         align_corners=False)[0].numpy()


def _resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    return np.ascontiguousarray(Image.fromarray(image).resize((size[1], size[0]),
                                                              Image.BILINEAR))


def _resize_labels(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(labels).resize((size[1], size[0]), Image.NEAREST))


# IRN's seed threshold (cam_eval_thres), for which its relation and walk thresholds were set.
IRN_SEED_THRESHOLD = 0.15
_MAX_THRESHOLD = 0.95


def irn_thresholds(cfg: RunConfig) -> dict[str, float]:
    """IRN's confident-foreground, confident-background and walked-background thresholds:
    ``refine.irn``'s values, or with ``relative_to_seeds`` those values moved with the run's
    chosen seed threshold ``t``: ``v ** (ln t / ln 0.15)`` (``relative_rule: power``, the
    monotone map of CAM values that sends ``t`` onto IRN's 0.15) or ``v * t / 0.15`` capped at
    0.95 (``linear``)."""
    import math

    irn = cfg.refine.irn
    values = {"fg": irn.fg_threshold, "bg": irn.bg_threshold, "walk_bg": irn.sem_seg_bg_threshold}
    if not irn.relative_to_seeds:
        return values
    seed_threshold = background_threshold(cfg)
    if not 0 < seed_threshold < 1:
        raise DataError(f"refine.irn.relative_to_seeds needs a seed threshold in (0, 1), got "
                        f"{seed_threshold}")
    if irn.relative_rule == "linear":
        ratio = seed_threshold / IRN_SEED_THRESHOLD
        return {k: min(v * ratio, _MAX_THRESHOLD) for k, v in values.items()}
    exponent = math.log(seed_threshold) / math.log(IRN_SEED_THRESHOLD)
    return {k: v ** exponent for k, v in values.items()}


def make_relation_labels(cfg: RunConfig, *, workers: int | None = None) -> dict:
    """Relation-label PNGs of the training split from its CAM files (skips finished ones)."""
    import os

    from plda.refinement.crf import map_in_workers, require_pydensecrf

    irn = cfg.refine.irn
    if irn.crf:
        require_pydensecrf()
    layout = load_layout(cfg, generate=False)
    split = cfg.data.train_split
    ids = layout.ids(split)
    thresholds = irn_thresholds(cfg)
    tasks = [(str(cam_path), str(layout.image_path(image_id)), str(target), thresholds["fg"],
              thresholds["bg"], irn.crf, irn.image_scale)
             for image_id, target, cam_path in _pending(cfg, split, ids,
                                                        irn_dir(cfg) / "relations")]
    start = time.perf_counter()
    workers = workers if workers is not None else (os.cpu_count() or 1)
    map_in_workers(_relation_task, tasks, workers, desc="relation labels")
    return {"written": len(tasks), "skipped": len(ids) - len(tasks),
            "seconds": time.perf_counter() - start, "thresholds": thresholds}


def build_boundary_net(cfg: RunConfig, num_classes: int):
    """The boundary net on the stage-1 run's trained backbone (frozen)."""
    from plda.pipeline.common import load_stage1_model
    from plda.refinement.irn import BoundaryNet

    stage1 = load_stage1_model(cfg, num_classes)
    from plda.engine.seed import seeded

    with seeded(cfg.refine.irn.train.seed):
        return BoundaryNet(stage1.backbone, width=cfg.refine.irn.width)


def _train_on_labels(cfg: RunConfig, model, net, opts, label_dir: Path, out: Path,
                     weights: str, *, resume: bool, dist) -> dict:
    """Train a refinement network (``model`` wraps ``net``) on the training split's label PNGs
    in ``label_dir`` (``opts``: crop, scale, flip, train); ``out/weights`` at the end."""
    from plda.pipeline.common import train_on_masks

    return train_on_masks(cfg, model, net, opts, label_dir, out, out / weights,
                          split=cfg.data.train_split, resume=resume, dist=dist)


def train_boundary(cfg: RunConfig, *, resume: bool = False, dist=None) -> dict:
    """Train the boundary head on the relation labels; write ``irn/boundary.safetensors``."""
    from plda.engine.distributed import init_distributed
    from plda.refinement.irn import IRNModel

    irn = cfg.refine.irn
    net = build_boundary_net(cfg, load_layout(cfg, generate=False).num_classes)
    return _train_on_labels(cfg, IRNModel(net, radius=irn.train_radius), net, irn,
                            irn_dir(cfg) / "relations", irn_dir(cfg), BOUNDARY_WEIGHTS,
                            resume=resume, dist=dist if dist is not None else init_distributed())


def load_boundary_net(cfg: RunConfig, num_classes: int):
    from plda.weights.io import load_state_dict_file

    net = build_boundary_net(cfg, num_classes)
    path = irn_dir(cfg) / BOUNDARY_WEIGHTS
    if not path.is_file():
        raise DataError(f"no trained boundary net at {path}: run 'plda refine irn' first")
    net.load_state_dict(load_state_dict_file(path), strict=True)
    return net.eval().to(memory_format=torch.channels_last)  # faster convolutions, same math


def irn_boundary(cfg: RunConfig, net, image):
    """The boundary map ``(h, w)`` (float, CPU) of a normalised image ``(3, H, W)``, computed
    at ``refine.irn.image_scale`` (a smaller grid; the walked mask keeps the CAMs' size)."""
    import torch.nn.functional as F

    from plda.inference.runtime import scaled_size
    from plda.refinement.irn import boundary_map

    scale = cfg.refine.irn.image_scale
    if scale != 1.0:
        size = scaled_size(*image.shape[-2:], scale)
        image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False,
                              antialias=True)[0]
    return boundary_map(net, image).float().cpu()


def make_pseudo_masks(cfg: RunConfig, splits=None, *, dist=None) -> dict:
    """IRN pseudo masks of each split (default ``data.eval_splits``), sharded across ranks;
    existing files are kept. Scores them when the dataset has masks (rank 0)."""
    from plda.engine.distributed import init_distributed
    from plda.refinement.irn import irn_pseudo_mask

    dist = dist if dist is not None else init_distributed()
    irn = cfg.refine.irn
    thresholds = irn_thresholds(cfg)  # reads the chosen seed threshold once
    net = load_boundary_net(cfg, load_layout(cfg, generate=False).num_classes).to(dist.device)

    def make_mask(image, cams, keys):
        return irn_pseudo_mask(cams, keys, irn_boundary(cfg, net, image), radius=irn.radius,
                               beta=irn.beta, exp_times=irn.exp_times,
                               bg_threshold=thresholds["walk_bg"])

    return _walk_splits(cfg, splits, dist, "irn", net, make_mask,
                        {"irn_thresholds": thresholds})


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


def _walk_splits(cfg: RunConfig, splits, dist, method: str, net, make_mask,
                 extra: dict | None = None) -> dict:
    """For each split, this rank's images still to do: ``make_mask(image, cams, keys)`` on the
    normalised image and its CAM file -> pseudo-mask PNG; then scores (rank 0)."""
    import torch

    from plda.data.camfile import load_cams
    from plda.data.transforms import EvalTransform
    from plda.engine.distributed import barrier
    from plda.utils.progress import progress
    from plda.vis.palette import save_label_png

    layout = load_layout(cfg, generate=False)
    transform = EvalTransform(tuple(net.input_mean), tuple(net.input_std))
    result: dict = {}
    for split in splits or cfg.data.eval_splits:
        ids = layout.ids(split)[dist.rank::dist.world_size]
        out = run_dir(cfg) / "pseudo" / split
        start, written = time.perf_counter(), 0
        for image_id, target, cam_path in progress(_pending(cfg, split, ids, out),
                                                   desc=f"pseudo masks {split}", unit="img"):
            cam_file = load_cams(cam_path)
            image = transform(layout.load_image(image_id)).to(dist.device)
            cams = torch.from_numpy(np.asarray(cam_file.cams, np.float32))
            save_label_png(target, make_mask(image, cams, list(cam_file.keys)).numpy())
            written += 1
        seconds = time.perf_counter() - start
        barrier()
        result[split] = _split_entry(cfg, layout, split, out, written, seconds) \
            if is_main_process() else {"written": written, "seconds": seconds}
    if is_main_process():
        update_metrics(cfg, "pseudo", {"method": method, **(extra or {}), **result})
    return result


def background_threshold(cfg: RunConfig) -> float:
    """``cam.bg_threshold``, else the one the seed sweep chose (``metrics.json``)."""
    import json

    if cfg.cam.bg_threshold is not None:
        return float(cfg.cam.bg_threshold)
    path = run_dir(cfg) / "metrics.json"
    try:
        return float(json.loads(path.read_text())["seeds"]["bg_threshold"])
    except (OSError, ValueError, KeyError, TypeError):
        raise DataError(f"no background threshold: set cam.bg_threshold or run 'plda seeds' "
                        f"first (it records the sweep's choice in {path})") from None


def _score_task(task: tuple) -> None:
    """Worker: one image's seed scores refined by the CRF or PAMR -> pseudo-mask PNG."""
    import torch

    from plda.data.camfile import load_cams
    from plda.inference.seeds import load_image_for_cams
    from plda.vis.palette import save_label_png

    cam_path, image_path, out_path, method, threshold = task
    cam_file = load_cams(cam_path)
    image = load_image_for_cams(image_path, cam_file, cam_path)
    cams = np.asarray(cam_file.cams, dtype=np.float32)
    probs = np.concatenate([np.full((1, *cams.shape[1:]), threshold, np.float32), cams])
    keys = np.asarray([0, *cam_file.keys], dtype=np.int64)
    if method == "crf":
        from plda.refinement.crf import crf_labels

        label = crf_labels(image, probs, keys)
    else:
        from plda.methods.pamr import PAMR

        rgb = torch.from_numpy(image.copy()).permute(2, 0, 1)[None].float() / 255.0
        refined = PAMR()(rgb, torch.from_numpy(probs)[None])[0]
        label = keys[refined.argmax(0).numpy()].astype(np.uint8)
    save_label_png(out_path, label)


def make_scored_pseudo_masks(cfg: RunConfig, method: str, splits=None, *,
                             workers: int | None = None) -> dict:
    """``crf`` / ``pamr`` pseudo masks of each split (finished files kept), scored (rank 0)."""
    import os

    from plda.refinement.crf import map_in_workers, require_pydensecrf

    if method == "crf":
        require_pydensecrf()
    threshold = background_threshold(cfg)
    layout = load_layout(cfg, generate=False)
    result: dict = {"method": method, "bg_threshold": threshold}
    for split in splits or cfg.data.eval_splits:
        ids = layout.ids(split)
        out = run_dir(cfg) / "pseudo" / split
        tasks = [(str(cam_path), str(layout.image_path(image_id)), str(target), method,
                  threshold) for image_id, target, cam_path in _pending(cfg, split, ids, out)]
        start = time.perf_counter()
        n = workers if workers is not None else (os.cpu_count() or 1) if method == "crf" else 1
        map_in_workers(_score_task, tasks, n, desc=f"pseudo masks {method} {split}")
        result[split] = _split_entry(cfg, layout, split, out, len(tasks),
                                     time.perf_counter() - start)
    update_metrics(cfg, "pseudo", result)
    return result


def affinity_dir(cfg: RunConfig) -> Path:
    return run_dir(cfg) / "affinity"


AFFINITY_WEIGHTS = "affinitynet.safetensors"


def _affinity_label_task(task: tuple) -> None:
    from plda.refinement.affinitynet import affinity_labels
    from plda.vis.palette import load_label_png, save_label_png

    la_path, ha_path, out_path = task
    save_label_png(out_path, affinity_labels(load_label_png(la_path), load_label_png(ha_path)))


def make_affinity_labels(cfg: RunConfig, *, workers: int | None = None) -> dict:
    """psa's training labels: "la" / "ha" CRF seeds of the training split, then the label
    (class from "la", background from "ha", 255 elsewhere) in ``affinity/labels/``."""
    from plda.inference.seeds import write_seeds
    from plda.refinement.crf import map_in_workers

    layout = load_layout(cfg, generate=False)
    split = cfg.data.train_split
    ids = layout.ids(split)
    cams = run_dir(cfg) / "cams" / split
    seeds = {name: affinity_dir(cfg) / name for name in ("la", "ha")}
    for name, folder in seeds.items():
        write_seeds(cams, folder, ids, None, crf=name, layout=layout, workers=workers)
    out = affinity_dir(cfg) / "labels"
    tasks = [(str(seeds["la"] / f"{i}.png"), str(seeds["ha"] / f"{i}.png"), str(target))
             for i, target, _ in _pending(cfg, split, ids, out)]
    map_in_workers(_affinity_label_task, tasks, 1, desc="affinity labels")
    return {"written": len(tasks), "skipped": len(ids) - len(tasks)}


def _build_affinity_net(cfg: RunConfig, num_classes: int):
    from plda.pipeline.common import load_stage1_model
    from plda.refinement.affinitynet import AffinityNet

    from plda.engine.seed import seeded

    backbone = load_stage1_model(cfg, num_classes).backbone
    with seeded(cfg.refine.affinity.train.seed):
        return AffinityNet(backbone)


def train_affinity(cfg: RunConfig, *, resume: bool = False, dist=None) -> dict:
    """Train AffinityNet (backbone from the stage-1 run) on the affinity labels."""
    from plda.engine.distributed import init_distributed
    from plda.refinement.affinitynet import AffinityNetModel

    aff = cfg.refine.affinity
    net = _build_affinity_net(cfg, load_layout(cfg, generate=False).num_classes)
    return _train_on_labels(cfg, AffinityNetModel(net, radius=aff.radius), net, aff,
                            affinity_dir(cfg) / "labels", affinity_dir(cfg), AFFINITY_WEIGHTS,
                            resume=resume, dist=dist if dist is not None else init_distributed())


def make_affinity_pseudo_masks(cfg: RunConfig, splits=None, *, dist=None) -> dict:
    """AffinityNet's walked pseudo masks of each split (sharded; finished files kept)."""
    from plda.engine.distributed import init_distributed
    from plda.refinement.affinitynet import affinity_pseudo_mask
    from plda.weights.io import load_state_dict_file

    dist = dist if dist is not None else init_distributed()
    aff = cfg.refine.affinity
    path = affinity_dir(cfg) / AFFINITY_WEIGHTS
    if not path.is_file():
        raise DataError(f"no trained AffinityNet at {path}: run 'plda refine affinity' first")
    net = _build_affinity_net(cfg, load_layout(cfg, generate=False).num_classes)
    net.load_state_dict(load_state_dict_file(path), strict=True)
    net = net.to(dist.device, memory_format=torch.channels_last).eval()

    def make_mask(image, cams, keys):
        return affinity_pseudo_mask(net, image, cams, keys, radius=aff.radius,
                                    alpha=aff.alpha, beta=aff.beta, logt=aff.logt)

    return _walk_splits(cfg, splits, dist, "affinity", net, make_mask)


def refine(cfg: RunConfig, *, splits=None, dist=None, workers: int | None = None) -> dict:
    """The configured refinement (``refine.method``). IRN / AffinityNet: training labels ->
    network training (resumed if interrupted, skipped once its weights exist) -> walked pseudo
    masks; crf / pamr: pseudo masks (rank 0). ``splits``: where to make pseudo masks (default
    ``data.eval_splits``)."""
    from plda.engine.checkpoint import latest_checkpoint
    from plda.engine.distributed import barrier, init_distributed

    dist = dist if dist is not None else init_distributed()
    if cfg.refine.method in ("crf", "pamr"):
        summary = {"pseudo": make_scored_pseudo_masks(cfg, cfg.refine.method, splits,
                                                      workers=workers)
                   if is_main_process() else {}}
        barrier()
        return summary
    if cfg.refine.method == "affinity":
        steps = (make_affinity_labels, affinity_dir(cfg), AFFINITY_WEIGHTS, train_affinity,
                 "affinity_train", make_affinity_pseudo_masks)
    else:
        steps = (make_relation_labels, irn_dir(cfg), BOUNDARY_WEIGHTS, train_boundary,
                 "irn_train", make_pseudo_masks)
    make_labels, folder, weights, train, section, make_masks = steps
    if is_main_process():
        make_labels(cfg, workers=workers)
    barrier()
    summary = {}
    if not (folder / weights).is_file():
        resume = latest_checkpoint(folder / "checkpoints") is not None
        summary["train"] = train(cfg, resume=resume, dist=dist)
        if summary["train"]["interrupted"]:
            raise KeyboardInterrupt
        if is_main_process():
            update_metrics(cfg, section, summary["train"])
    barrier()
    summary["pseudo"] = make_masks(cfg, splits, dist=dist)
    return summary
