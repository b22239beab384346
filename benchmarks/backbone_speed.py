"""Seconds per backbone forward+backward on CPU, with and without one of the CPU speed-ups of
``plda.models.layers``: the fast path for dilated depthwise convolutions
(``dilated_depthwise_conv2d``, ``--switch dilated``, the default) or frozen BatchNorm folded into
the convolutions (``conv_frozen_bn``, ``--switch fold``).

    python -m benchmarks.backbone_speed
    python -m benchmarks.backbone_speed --crops 96 --configs efficientnet_lite0:8 --threads 1
    python -m benchmarks.backbone_speed --switch fold --configs efficientnet_lite0:32 --crops 224
    python -m benchmarks.backbone_speed --switch fold --mode infer --batch 2 \
        --crops 500x375 --configs efficientnet_lite0:32

A pass is what training does with the backbone: train mode (default frozen layers and BN),
forward to every level, backward from the sum of the level means. Random weights and images,
batch 8 by default. The two variants alternate pass by pass, so that load from other processes
hits both alike; the table gives medians over ``--repeat`` passes after ``--warmup``, as wall
and as CPU seconds of this process. ``--mode infer`` times what CAM inference and segmentation
evaluation do instead: eval mode, forward only, no gradients. On a shared machine use
``--threads 1``: CPU seconds are then hardly affected by other processes, while wall time of
multi-threaded passes is (every parallel region waits for its slowest thread). The fast path only
changes dilated depthwise layers, and folding only EfficientNet-Lite0's, so ResNet-50 is a
control.
"""

from __future__ import annotations

import argparse
import statistics
import time

from benchmarks.table import print_table

DEFAULT_CONFIGS = "efficientnet_lite0:8,efficientnet_lite0:16,efficientnet_lite0:32,resnet50:8"
SWITCHES = {"dilated": "FAST_DILATED_DEPTHWISE", "fold": "FOLD_FROZEN_BN"}


def time_pass(backbone, image, mode: str = "train") -> tuple[float, float]:
    """Wall and CPU seconds of one forward+backward pass (``infer``: forward, no grad)."""
    import torch

    wall, cpu = time.perf_counter(), time.process_time()
    if mode == "infer":
        with torch.no_grad():
            backbone(image)
    else:
        out = backbone(image)
        sum(level.mean() for level in out.values()).backward()
    return time.perf_counter() - wall, time.process_time() - cpu


def _size(text: str) -> tuple[int, int]:
    """'256' (square) or 'WxH' -> (height, width)."""
    width, _, height = text.partition("x")
    return int(height or width), int(width)


def measure(name: str, output_stride: int, size: tuple[int, int], batch: int, repeat: int,
            warmup: int, switch: str = "dilated", mode: str = "train"
            ) -> dict[bool, list[tuple[float, float]]]:
    """(wall, CPU) pass times with the speed-up on (True) and off (False), alternating."""
    import torch

    from plda.models import layers
    from plda.models.backbones import build_backbone

    torch.manual_seed(0)
    backbone = build_backbone(name, output_stride=output_stride)
    backbone.train(mode == "train").to(memory_format=torch.channels_last)
    image = torch.randn(batch, 3, *size).contiguous(memory_format=torch.channels_last)
    times: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
    for step in range(warmup + repeat):
        for fast in (True, False):
            setattr(layers, SWITCHES[switch], fast)
            seconds = time_pass(backbone, image, mode)
            backbone.zero_grad(set_to_none=True)
            if step >= warmup:
                times[fast].append(seconds)
    return times


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", default=DEFAULT_CONFIGS,
                   help="comma list of backbone:output_stride")
    p.add_argument("--crops", default="96,256",
                   help="comma list of crop sizes: 256 (square) or WxH")
    p.add_argument("--switch", choices=sorted(SWITCHES), default="dilated",
                   help="the speed-up toggled: dilated depthwise fast path, or frozen-BN folding")
    p.add_argument("--mode", choices=("train", "infer"), default="train")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeat", type=int, default=3, help="measured passes per variant")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = p.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    what = "forward+backward" if args.mode == "train" else "no-grad eval forward"
    print(f"switch {args.switch}, batch {args.batch}, {torch.get_num_threads()} threads, median "
          f"of {args.repeat} passes after {args.warmup} warm-up; seconds per {what}, wall / CPU")
    rows = []
    for config in args.configs.split(","):
        name, output_stride = config.split(":")
        for crop in args.crops.split(","):
            times = measure(name, int(output_stride), _size(crop), args.batch, args.repeat,
                            args.warmup, args.switch, args.mode)
            off, on = ([statistics.median(column) for column in zip(*times[fast])]
                       for fast in (False, True))
            rows.append((name, int(output_stride), crop, f"{off[0]:.2f}/{off[1]:.2f}",
                         f"{on[0]:.2f}/{on[1]:.2f}",
                         f"{off[0] / on[0]:.2f}x/{off[1] / on[1]:.2f}x"))
    print_table(["backbone", "OS", "crop", "off", "on", "speed-up"], rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
