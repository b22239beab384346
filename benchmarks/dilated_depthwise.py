"""Dilated depthwise convolutions against undilated ones of the same shape, layer by layer.

    python -m benchmarks.dilated_depthwise                       # Lite0 at stride 8, crop 224
    python -m benchmarks.dilated_depthwise --output-stride 16 --crop 448 --layouts nhwc

For each dilated depthwise layer of EfficientNet-Lite0 at ``--output-stride`` (batch
``--batch``, input ``--crop``), one training pass of the layer alone (forward, then the input
and weight gradients of a random output gradient) in four variants, alternated repeat by repeat
so that load from other processes hits all alike:

- ``plain``: PyTorch's own dilated kernel (``F.conv2d``, oneDNN on CPU);
- ``fast (before)``: ``dilated_depthwise_conv2d`` with a fixed rule (oneDNN's weight gradient;
  forward and input gradient by oneDNN up to a padding of 4, on the sub-grids beyond:
  ``PLDA_DILATED_WEIGHT_GRAD=native PLDA_DILATED_FORWARD=padding``);
- ``fast``: ``dilated_depthwise_conv2d`` as training runs it (each path measured per layer shape
  on this machine);
- ``undilated``: the same layer with dilation 1 (same input, output and kernel).

Medians over ``--repeat`` passes after ``--warmup``, milliseconds; the ratio columns divide by
the undilated pass (the output sizes are equal, so it is the cost per output pixel). The last row
sums the layers: what the dilation costs a training step's depthwise convolutions.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import time


def layer_shapes(output_stride: int, crop: int, batch: int) -> list[dict]:
    """The dilated depthwise layers of Lite0 at ``output_stride``: input shape, kernel,
    dilation, padding (F.pad order), counted once per distinct shape with their number."""
    import torch

    from plda.models.backbones import build_backbone
    from plda.models.backbones.efficientnet_lite import tf_same_padding

    net = build_backbone("efficientnet_lite0", pretrained=None, output_stride=output_stride)
    found: dict[tuple, dict] = {}

    def hook(block, inputs):  # the block calls its depthwise conv on the expanded input
        conv = block._depthwise_conv
        size = inputs[0].shape[-2:]
        if max(conv.dilation) == 1:
            return
        pads = tf_same_padding(size, conv.kernel_size, conv.stride, conv.dilation)
        shape = (batch, conv.in_channels, *size)
        key = (shape, conv.kernel_size, conv.dilation, pads)
        entry = found.setdefault(key, {"shape": shape, "kernel": conv.kernel_size,
                                       "dilation": conv.dilation, "padding": pads, "count": 0})
        entry["count"] += 1

    handles = [b.register_forward_pre_hook(hook) for b in net._blocks]
    with torch.no_grad():
        net.eval()(torch.zeros(1, 3, crop, crop))
    for h in handles:
        h.remove()
    return list(found.values())


def _pass(fn, x, weight, grad) -> float:
    t0 = time.perf_counter()
    out = fn(x, weight)
    out.backward(grad)
    x.grad = weight.grad = None
    return time.perf_counter() - t0


def measure(layer: dict, layout: str, repeat: int, warmup: int) -> dict[str, float]:
    """Median milliseconds per training pass of each variant for one layer."""
    import torch
    import torch.nn.functional as F

    from plda.models import layers

    g = torch.Generator().manual_seed(0)
    fmt = torch.channels_last if layout == "nhwc" else torch.contiguous_format
    x = torch.randn(*layer["shape"], generator=g).contiguous(memory_format=fmt)
    x.requires_grad_(True)
    c, (kh, kw), dilation, pads = layer["shape"][1], layer["kernel"], layer["dilation"], \
        layer["padding"]
    weight = torch.randn(c, 1, kh, kw, generator=g, requires_grad=True)
    grad = torch.randn(*layer["shape"], generator=g).contiguous(memory_format=fmt)
    undilated_pad = ((kh - 1) // 2, (kw - 1) // 2)

    def fast(x, w):
        return layers.dilated_depthwise_conv2d(x, w, dilation=dilation, padding=pads)

    # (pass, (PLDA_DILATED_WEIGHT_GRAD, PLDA_DILATED_FORWARD) while it runs, backward included)
    variants = {
        "plain": (lambda x, w: F.conv2d(F.pad(x, pads), w, None, 1, 0, dilation, c), None),
        "fast (before)": (fast, ("native", "padding")),
        "fast": (fast, ("auto", "auto")),
        "undilated": (lambda x, w: F.conv2d(x, w, None, 1, undilated_pad, 1, c), None),
    }
    # The weight gradient's path is measured on first use (out of the timed passes).
    times: dict[str, list[float]] = {k: [] for k in variants}
    for i in range(warmup + repeat):
        for name, (fn, settings) in variants.items():
            before = layers.DILATED_WEIGHT_GRAD, layers.DILATED_FORWARD
            if settings:
                layers.DILATED_WEIGHT_GRAD, layers.DILATED_FORWARD = settings
            try:
                seconds = _pass(fn, x, weight, grad)
            finally:
                layers.DILATED_WEIGHT_GRAD, layers.DILATED_FORWARD = before
            if i >= warmup:
                times[name].append(seconds)
    return {k: 1e3 * statistics.median(v) for k, v in times.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--output-stride", type=int, default=8)
    p.add_argument("--crop", type=int, default=224)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--layouts", default="nchw,nhwc", help="comma list of nchw,nhwc")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    import torch

    from benchmarks.common import commit
    from benchmarks.table import print_table
    from plda.models.fastpath import describe_cpu
    from plda.utils.malloc import tune_allocator

    allocator = tune_allocator()  # as training runs (PLDA_MALLOC=system for glibc's own)
    if args.threads:
        torch.set_num_threads(args.threads)
    shapes = layer_shapes(args.output_stride, args.crop, args.batch)
    if not shapes:
        raise SystemExit(f"output stride {args.output_stride}: no dilated depthwise layer")
    print(f"{dt.date.today()} | commit {commit()} | torch {torch.__version__}")
    print(f"{describe_cpu()} | malloc: {allocator['mode']}")
    print(f"efficientnet_lite0 at output stride {args.output_stride}, crop {args.crop}, batch "
          f"{args.batch}: ms per training pass of one layer (median of {args.repeat})")
    names = ("plain", "fast (before)", "fast", "undilated")
    rows = []
    layouts = args.layouts.split(",")
    for layout in layouts:
        totals = dict.fromkeys(names, 0.0)
        for k, layer in enumerate(shapes):
            ms = measure(layer, layout, args.repeat, args.warmup)
            for n in names:
                totals[n] += ms[n] * layer["count"]
            rows.append((layout, "x".join(map(str, layer["shape"])), layer["kernel"][0],
                         layer["dilation"][0], layer["count"], *(ms[n] for n in names),
                         ms["plain"] / ms["undilated"], ms["fast"] / ms["undilated"]))
            print(f"  measured {layout} layer {k + 1}/{len(shapes)}", flush=True)
        rows.append((layout, "all layers", None, None, None, *(totals[n] for n in names),
                     totals["plain"] / totals["undilated"], totals["fast"] / totals["undilated"]))
    print_table(["layout", "input", "k", "d", "n", *names, "plain/und", "fast/und"], rows,
                {**dict.fromkeys(names, ".1f"), "plain/und": ".2f", "fast/und": ".2f"})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
