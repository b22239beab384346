"""Seconds per stage-2 (DeepLab) training step on CPU, per head and output stride.

    python -m benchmarks.seg_step
    python -m benchmarks.seg_step --configs deeplab_lite_plus:efficientnet_lite0:32 --batch 4

A step is what ``plda segment train`` does per batch: forward, logits upsampled to the crop,
cross-entropy, backward, SGD update. Random weights (frozen backbone BN, as the trainer), random
images and masks, NHWC; the configurations alternate step by step so that load from other
processes hits all alike; the table gives the minimum and median over ``--steps`` steps after
``--warmup``, and the logit grid of a crop.
"""

from __future__ import annotations

import argparse
import statistics
import time

from benchmarks.table import print_table

DEFAULT_CONFIGS = ",".join(f"{arch}:efficientnet_lite0:{stride}" for arch, stride in (
    ("deeplab_lite", 16), ("deeplab_lite", 32), ("deeplab_lite_plus", 32),
    ("deeplab_lite_plus", 16), ("deeplab_v3plus", 16)))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", default=DEFAULT_CONFIGS, help="comma list of arch:backbone:stride")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--crop", type=int, default=224)
    p.add_argument("--classes", type=int, default=21)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = p.parse_args(argv)

    import torch
    import torch.nn.functional as F

    from plda.segmentation.models import build_segmentation_net

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    configs = [tuple(c.split(":")) for c in args.configs.split(",") if c]
    nets, opts = [], []
    for arch, backbone, stride in configs:
        net = build_segmentation_net(arch, backbone, args.classes, output_stride=int(stride))
        net = net.to(memory_format=torch.channels_last).train()
        nets.append(net)
        opts.append(torch.optim.SGD([q for q in net.parameters() if q.requires_grad], lr=1e-3,
                                    momentum=0.9))
    image = torch.randn(args.batch, 3, args.crop, args.crop)
    image = image.contiguous(memory_format=torch.channels_last)
    mask = torch.randint(0, args.classes, (args.batch, args.crop, args.crop))
    times: list[list[float]] = [[] for _ in configs]
    grids = []
    for step in range(args.warmup + args.steps):
        for i, (net, opt) in enumerate(zip(nets, opts)):
            start = time.perf_counter()
            logits = net(image)
            if step == 0:
                grids.append(tuple(logits.shape[-2:]))
            logits = F.interpolate(logits, size=mask.shape[-2:], mode="bilinear",
                                   align_corners=False)
            loss = F.cross_entropy(logits, mask, ignore_index=255)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if step >= args.warmup:
                times[i].append(time.perf_counter() - start)
    print(f"batch {args.batch}, crop {args.crop}, {torch.get_num_threads()} threads, "
          f"{args.steps} steps after {args.warmup} warm-up; seconds per training step")
    print_table(["arch", "backbone", "OS", "logits", "min", "median"],
                [(arch, backbone, int(stride), f"{grid[0]}x{grid[1]}", min(t),
                  statistics.median(t))
                 for (arch, backbone, stride), grid, t in zip(configs, grids, times)],
                {"min": ".2f", "median": ".2f"})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
