"""IRN's walk on a finished run, swept: background threshold x walk length, against the seeds.

    python -m benchmarks.irn_walk_sweep RUN_DIR --images 200
    python -m benchmarks.irn_walk_sweep RUN_DIR --exp-times 4,6,8 --thresholds 0.05:0.95:0.05

RUN_DIR is a run folder with CAMs and a trained boundary net (``plda refine irn``). On the first
``--images`` images of ``--split`` (default the training split; it needs ground-truth masks) it
walks each image's CAMs over its boundary map ``2^e`` steps for every ``e`` of ``--exp-times``
(IRN: 8), labels the walked scores at every background threshold of ``--thresholds``, and prints
per walk length the best threshold with its mIoU (classes present / the 13 classes the VOC sample
supports) and background IoU, next to the seeds of the same images (their best threshold and
the run's chosen one) and the walk at the run's own IRN thresholds. A diagnostic for choosing
IRN's settings on the training split; never run it on val to pick them.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from benchmarks.table import print_table
from benchmarks.voc12subset import SUPPORTED


def _range(text: str) -> list[float]:
    start, stop, step = (float(x) for x in text.split(":"))
    n = int(np.floor((stop - start) / step + 1e-9)) + 1
    return [round(start + i * step, 6) for i in range(n)]


def _summary(conf: np.ndarray, names: list[str]) -> tuple[float, float, float]:
    from plda.evaluation.metrics import scores

    res = scores(conf, names)
    iou = res["iou"]
    supported = [iou[c] for c in SUPPORTED if c in iou and iou[c] is not None]
    return res["miou"], float(np.mean(supported)) if supported else float("nan"), iou[names[0]]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="run folder (config.yaml, cams/, irn/boundary.safetensors)")
    p.add_argument("--split", default=None, help="default: the run's training split")
    p.add_argument("--images", type=int, default=200, help="first N images of the split")
    p.add_argument("--exp-times", default="4,6,8", help="walk lengths 2^e, comma list of e")
    p.add_argument("--thresholds", default="0.05:0.95:0.05", help="start:stop:step (inclusive)")
    p.add_argument("--seed-thresholds", default="0.05:0.60:0.05", help="start:stop:step")
    p.add_argument("--curves", action="store_true", help="also print every threshold's mIoU")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = p.parse_args(argv)

    import torch

    from plda.config import load_run_folder_config
    from plda.data.camfile import load_cams
    from plda.data.transforms import EvalTransform
    from plda.evaluation.metrics import confusion_matrix
    from plda.inference.seeds import seeds_from_cams
    from plda.refinement.irn import irn_boundary, irn_thresholds, load_boundary_net
    from plda.runfolder import background_threshold
    from plda.runfolder import load_layout, run_dir
    from plda.refinement.irn import irn_walk_scores, label_walked
    from plda.utils.progress import progress
    from plda.data.labels import load_label_png

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_run_folder_config(args.run)
    layout = load_layout(cfg, generate=False)
    if layout.mask_dir is None:
        raise SystemExit(f"{layout.root}: no ground-truth masks to score the walk against")
    split = args.split or cfg.data.train_split
    names = list(layout.class_names)
    n = len(names)
    exps = [int(e) for e in args.exp_times.split(",")]
    walk_ths, seed_ths = _range(args.thresholds), _range(args.seed_thresholds)
    own = irn_thresholds(cfg)
    walk_ths_all = sorted(set(walk_ths) | {round(own["walk_bg"], 6)})
    chosen = background_threshold(cfg)
    seed_ths_all = sorted(set(seed_ths) | {round(chosen, 6)})
    net = load_boundary_net(cfg, layout.num_classes)
    transform = EvalTransform(tuple(net.input_mean), tuple(net.input_std))
    irn = cfg.refine.irn
    walk_conf = np.zeros((len(exps), len(walk_ths_all), n, n), np.int64)
    seed_conf = np.zeros((len(seed_ths_all), n, n), np.int64)
    ids = layout.ids(split)[:args.images]
    start = time.perf_counter()
    for image_id in progress(ids, desc=f"walk sweep {split}", unit="img"):
        cam_file = load_cams(run_dir(cfg) / "cams" / split / f"{image_id}.npz")
        gt = load_label_png(layout.mask_dir / f"{image_id}.png")
        for j, t in enumerate(seed_ths_all):
            seed_conf[j] += confusion_matrix(seeds_from_cams(cam_file, t), gt, n)
        cams = torch.from_numpy(np.asarray(cam_file.cams, np.float32))
        if cams.shape[0] == 0:
            walk_conf += confusion_matrix(np.zeros_like(gt), gt, n)  # every e, threshold
            continue
        boundary = irn_boundary(cfg, net, transform(layout.load_image(image_id)))
        for i, e in enumerate(exps):
            walked = irn_walk_scores(cams, boundary, radius=irn.radius, beta=irn.beta,
                                     exp_times=e)
            for j, t in enumerate(walk_ths_all):
                walk_conf[i, j] += confusion_matrix(
                    label_walked(walked, list(cam_file.keys), t).numpy(), gt, n)
    seconds = time.perf_counter() - start

    rows = []
    seed_scores = [_summary(c, names) for c in seed_conf]
    best = max(range(len(seed_ths_all)), key=lambda j: seed_scores[j][0])
    at = seed_ths_all.index(round(chosen, 6))
    rows.append(("seeds, best threshold", seed_ths_all[best], *seed_scores[best]))
    rows.append(("seeds, the run's threshold", chosen, *seed_scores[at]))
    for i, e in enumerate(exps):
        walk_scores = [_summary(c, names) for c in walk_conf[i]]
        best = max(range(len(walk_ths_all)), key=lambda j: walk_scores[j][0])
        rows.append((f"walk 2^{e}, best threshold", walk_ths_all[best], *walk_scores[best]))
        if e == irn.exp_times:
            j = walk_ths_all.index(round(own["walk_bg"], 6))
            rows.append((f"walk 2^{e}, the run's threshold", own["walk_bg"], *walk_scores[j]))
    print(f"\n{len(ids)} images of {split} ({seconds:.0f} s); the run's IRN thresholds: "
          + ", ".join(f"{k} {v:.3f}" for k, v in own.items()))
    print_table(["labels", "threshold", "mIoU", "mIoU, 13 classes", "background IoU"], rows,
                {"threshold": ".2f", "mIoU": ".1f", "mIoU, 13 classes": ".1f",
                 "background IoU": ".1f"}, markdown=True)
    if args.curves:
        for i, e in enumerate(exps):
            print(f"walk 2^{e}: " + " ".join(
                f"{t:.2f}:{_summary(c, names)[0]:.1f}" for t, c in zip(walk_ths_all, walk_conf[i])))
        print("seeds: " + " ".join(f"{t:.2f}:{s[0]:.1f}" for t, s in zip(seed_ths_all,
                                                                       seed_scores)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
