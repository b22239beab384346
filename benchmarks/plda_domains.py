"""Where PLDA's source and target domains fall, measured against the ground-truth masks.

    python -m benchmarks.plda_domains RUN [RUN ...] --images 200 --long-side 288

PLDA aligns, per class c, the features of its source S_c (pixels whose min-max normalised
revised CAM exceeds tau) with those of its target T_c (the same rule on the image with every
source pixel erased, minus S_c): the method assumes T_c is the object's non-discriminative part.
For each finished stage-1 run (a ``plda run`` folder with ``stage1.safetensors``: CAM, SEAM or
either with PLDA) this recomputes S_c and T_c exactly as training does (``PLDA.domains``:
``mask_assign`` on the map PLDA reads, ``erase``, the erased pass with dropout off) and CPS's
pseudo labels inside them on the first N images of the training split, resized
so the long side is ``--long-side`` px (training crops at 224 from long sides of 224-384), and
scores them on the CAM grid against the ground-truth mask (nearest-resized):

- S in c / T in c: the fraction of S_c's / T_c's pixels that belong to class c (precision);
- T in bg: the fraction of T_c on background — the part of the target that is not an object;
- |S|, |T|: pixels per (image, present class) as a fraction of the grid;
- c covered: the fraction of class c's ground-truth pixels inside S_c or T_c;
- c, % grid: class c's share of the grid — the precision a mask placed at random would have;
- CPS S in c / CPS T in c: the fraction of CPS's pseudo labels for c inside S_c (from the image)
  / inside T_c (from the erased image) that are class c (its label accuracy).

Pixel-weighted over every (image, present class) pair. A baseline run (no PLDA layers) shows
what PLDA would be given by its maps, with the run's ``method.plda`` / ``cps`` settings.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.table import print_table


def plda_part(model, cfg):
    """The model's PLDA component, or (a baseline run) one built from the run's settings, to
    show what PLDA would be given by the baseline's maps."""
    if hasattr(model, "plda"):
        return model.plda
    from plda.methods.plda import PLDA

    backbone = model.backbone
    return PLDA(cfg.method, backbone.channels[backbone.final_level], model.num_classes,
                backbone.input_mean, backbone.input_std)


def domain_masks(model, plda, image, label):
    """(source, target, CPS pseudo labels) of a stage-1 model on a normalised image batch, as
    PLDA's training computes them (target excludes source; the run's ``target_near`` rule and
    tau from ``plda``): pseudo labels (B, C, h, w) bool, the source image's inside S followed by
    the erased image's inside T, as CPS trains on them."""
    import torch

    from plda.methods.cps import cps_targets
    from plda.methods.plda import dropout_disabled

    with torch.no_grad(), dropout_disabled(model):
        view = model.run_views([image])[0]
        source, target, erased, second = plda.domains(model, image, view, label)
        restricted, _ = cps_targets(
            torch.cat([view.raw, second.raw]),
            torch.cat([image, erased]) * plda._pixel_std + plda._pixel_mean,
            label.repeat(2, 1), torch.cat([source, target]), plda.pamr, plda.cps_cfg)
    cps_source, cps_target = restricted[:, 1:].chunk(2)
    return source, target & ~source, cps_source, cps_target


def score_domains(source: np.ndarray, target: np.ndarray, gt: np.ndarray, classes,
                  cps_source: np.ndarray | None = None, cps_target: np.ndarray | None = None
                  ) -> dict:
    """Pixel counts of one image on the CAM grid: ``source``/``target`` (C, h, w) bool, ``gt``
    (h, w) label map (255 ignored), ``classes`` the present foreground class indices (0-based
    into the C channels; label value = index + 1); optionally CPS's pseudo labels in S and T
    (C, h, w) bool."""
    keep = gt != 255
    counts = dict.fromkeys(("s", "s_in", "t", "t_in", "t_bg", "gt", "covered", "pairs",
                            "cps_s", "cps_s_in", "cps_t", "cps_t_in"), 0)
    for c in classes:
        s, t, obj = source[c] & keep, target[c] & keep, gt == c + 1
        if cps_source is not None:
            for name, pseudo in (("cps_s", cps_source[c] & keep), ("cps_t", cps_target[c] & keep)):
                counts[name] += int(pseudo.sum())
                counts[name + "_in"] += int((pseudo & obj).sum())
        counts["s"] += int(s.sum())
        counts["s_in"] += int((s & obj).sum())
        counts["t"] += int(t.sum())
        counts["t_in"] += int((t & obj).sum())
        counts["t_bg"] += int((t & (gt == 0)).sum())
        counts["gt"] += int(obj.sum())
        counts["covered"] += int(((s | t) & obj).sum())
        counts["pairs"] += 1
    counts["grid"] = int(keep.sum()) * len(classes)
    return counts


def run_domains(run: Path, images: int, long_side: int, tau: float | None,
                near: int | None = None) -> dict:
    import torch
    import torch.nn.functional as F

    from plda.config import load_run_folder_config
    from plda.data.transforms import EvalTransform
    from plda.methods.build import load_stage1_model
    from plda.runfolder import load_layout

    cfg = load_run_folder_config(run)
    if tau is not None:
        cfg.method.plda.tau = tau
    if near is not None:
        cfg.method.plda.target_near = near
    tau, near = cfg.method.plda.tau, cfg.method.plda.target_near
    layout = load_layout(cfg)
    model = load_stage1_model(cfg, layout.num_classes, run / "stage1.safetensors")
    plda = plda_part(model, cfg)
    plda.cfg.tau, plda.cfg.target_near = tau, near
    transform = EvalTransform(tuple(model.backbone.input_mean), tuple(model.backbone.input_std))
    ids = layout.ids(cfg.data.train_split)[:images]
    total: dict[str, int] = {}
    t0 = time.perf_counter()
    for i, image_id in enumerate(ids):
        image, mask = transform(layout.load_image(image_id), layout.load_mask(image_id))
        h, w = image.shape[-2:]
        scale = long_side / max(h, w)
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        x = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)
        label = torch.tensor(layout.labels(image_id), dtype=torch.float32)[None]
        source, target, cps_s, cps_t = domain_masks(model, plda, x, label)
        grid = source.shape[-2:]
        gt = F.interpolate(mask[None, None].float(), size=grid, mode="nearest")[0, 0]
        classes = torch.nonzero(label[0]).flatten().tolist()
        counts = score_domains(source[0].numpy(), target[0].numpy(), gt.long().numpy(), classes,
                               cps_s[0].numpy(), cps_t[0].numpy())
        for k, v in counts.items():
            total[k] = total.get(k, 0) + v
        if (i + 1) % 50 == 0 or i + 1 == len(ids):
            rate = (i + 1) / (time.perf_counter() - t0)
            print(f"  {run.name}: {i + 1}/{len(ids)} images, {rate:.1f} img/s, "
                  f"ETA {(len(ids) - i - 1) / rate:.0f} s", file=sys.stderr, flush=True)
    return {"run": str(run), "method": cfg.method.name, "seed": cfg.train.seed, "tau": tau,
            "near": near,
            "images": len(ids), **total}


def _ratio(a: int, b: int) -> float:
    return 100.0 * a / b if b else float("nan")


PURITY = {"S in c": ("s_in", "s"), "T in c": ("t_in", "t"), "T in bg": ("t_bg", "t"),
          "S, % grid": ("s", "grid"), "T, % grid": ("t", "grid"), "c covered": ("covered", "gt"),
          "c, % grid": ("gt", "grid"), "CPS S in c": ("cps_s_in", "cps_s"),
          "CPS T in c": ("cps_t_in", "cps_t")}


def purity(row: dict) -> dict[str, float]:
    """The percentages of the table (module doc) from one :func:`run_domains` row."""
    return {name: _ratio(row[a], row[b]) for name, (a, b) in PURITY.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--images", type=int, default=200)
    p.add_argument("--long-side", type=int, default=288)
    p.add_argument("--tau", type=float, default=None, help="default: the run's method.plda.tau")
    p.add_argument("--near", type=int, default=None,
                   help="keep only target pixels within this many grid cells of the source "
                        "(default: the run's method.plda.target_near)")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    rows = [run_domains(run, args.images, args.long_side, args.tau, args.near)
            for run in args.runs]
    print_table(["run", "method", "seed", "tau", "near", *PURITY],
                [(r["run"], r["method"], r["seed"], r["tau"], r["near"], *purity(r).values())
                 for r in rows], {"tau": ".2f", **dict.fromkeys(PURITY, ".1f")}, markdown=True)
    print(f"{args.images} training images per run at long side {args.long_side}; pixel-weighted "
          "over (image, present class) pairs, on the CAM grid.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
