"""Seconds per image of multi-scale + flip CAM inference, and the peak memory of the 2.0 scale.

Compares the image and its flip as one batch per scale (``flip_batch=True``, what
``plda.inference.cams`` does) with one pass per scale per flip (``flip_batch=False``), on a SEAM
model with random weights, fp32. Peak memory is measured in a fresh subprocess per variant that
runs only the 2.0 scale: the process's maximum RSS (``ru_maxrss``) on CPU, the allocator's peak
on CUDA. Prints a table; ``--json FILE`` also writes the numbers.

    python benchmarks/cam_inference.py --backbone efficientnet_lite0 --size 500x375 --repeat 3
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

VARIANTS = {"batched flips": True, "pass per flip": False}


def _parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--size {text!r}: expected WIDTHxHEIGHT, e.g. 500x375")
    return w, h


def _build(backbone: str, method: str, device: str, layout: str = "nhwc"):
    import torch

    try:
        from plda.methods import MethodConfig, build_method
        from plda.models.backbones import build_backbone
    except ImportError as exc:
        sys.exit(f"cannot build a model: {exc} (plda.methods.build_method and "
                 "plda.models.backbones.build_backbone are required)")
    torch.manual_seed(0)
    model = build_method(MethodConfig(name=method), build_backbone(backbone), 20)
    model = model.to(device).eval()
    # plda cam keeps the weights channels-last (NHWC); "nchw" measures the plain layout.
    return model.to(memory_format=torch.channels_last) if layout == "nhwc" else model


def _image(size: tuple[int, int], device: str):
    import torch

    w, h = size
    return torch.randn(3, h, w, generator=torch.Generator().manual_seed(0)).to(device)


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _status_mib(field: str) -> float | None:
    """A ``/proc/self/status`` memory field (``VmRSS``, ``VmHWM``) in MiB; ``None`` off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (Linux >= 4.0), so it covers only what follows."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def measure_memory(args) -> dict:
    """Run in a fresh process: peak memory of one 2.0-scale (+ flip) pass of ``args.variant``.

    ``ru_maxrss`` alone would mislead: Linux carries the parent's RSS at fork into the child's
    ``ru_maxrss``, and it includes building the model. Where possible the peak mark is reset
    after the model is built and read back from ``VmHWM``."""
    import gc

    import torch

    from plda.inference.cams import multiscale_cam

    model = _build(args.backbone, args.method, args.device, args.layout)
    image = _image(args.size, args.device)
    gc.collect()
    exact = _reset_peak_rss()
    before = _status_mib("VmRSS") if exact else None
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    multiscale_cam(model, image, (2.0,), True, flip_batch=VARIANTS[args.variant])
    _sync(args.device)
    peak = _status_mib("VmHWM") if exact else None
    if peak is None:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {"peak_rss_mib": peak, "rss_increase_mib": peak - before if exact else float("nan")}
    if args.device.startswith("cuda"):
        result["cuda_peak_mib"] = (torch.cuda.max_memory_allocated() - base) / 2**20
    return result


def time_variant(model, image, scales, flip_batch: bool, repeat: int, warmup: int,
                 device: str) -> float:
    """Median seconds per image over ``repeat`` runs, after ``warmup`` untimed runs."""
    from plda.inference.cams import multiscale_cam

    times = []
    for i in range(warmup + repeat):
        _sync(device)
        start = time.perf_counter()
        multiscale_cam(model, image, scales, True, flip_batch=flip_batch)
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="efficientnet_lite0",
                        choices=["resnet38", "efficientnet_lite0", "resnet50", "resnet101"])
    parser.add_argument("--method", default="seam", choices=["cam", "seam", "seam_plda"])
    parser.add_argument("--size", type=_parse_size, default=(500, 375), help="WIDTHxHEIGHT")
    parser.add_argument("--scales", type=float, nargs="+", default=[0.5, 1.0, 1.5, 2.0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs before timing")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    parser.add_argument("--layout", choices=["nhwc", "nchw"], default="nhwc",
                        help="weights memory layout (plda cam uses nhwc)")
    parser.add_argument("--measure-memory", dest="variant", choices=list(VARIANTS),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.variant:
        print(json.dumps(measure_memory(args)))
        return 0

    import torch

    model = _build(args.backbone, args.method, args.device, args.layout)
    image = _image(args.size, args.device)
    rows = []
    for name, flip_batch in VARIANTS.items():
        row = {"variant": name, "seconds_per_image":
               time_variant(model, image, args.scales, flip_batch, args.repeat,
                                    args.warmup, args.device)}
        if not args.no_memory:
            cmd = [sys.executable, __file__, "--backbone", args.backbone, "--method", args.method,
                   "--size", f"{args.size[0]}x{args.size[1]}", "--device", args.device,
                   "--layout", args.layout, "--measure-memory", name]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            row.update(json.loads(out.strip().splitlines()[-1]))
        rows.append(row)

    w, h = args.size
    print(f"\nCAM inference: {args.method} on {args.backbone} (random weights, fp32), "
          f"{w}x{h}, scales {args.scales} + flip, {args.layout}, device {args.device}, "
          f"{torch.get_num_threads()} threads, median of {args.repeat} after {args.warmup} warm-up")
    mem_cols = [k for k in ("peak_rss_mib", "rss_increase_mib", "cuda_peak_mib") if k in rows[0]]
    header = ["variant", "s/image", *[f"{k} @2.0" for k in mem_cols]]
    print(" | ".join(f"{c:>20}" for c in header))
    for row in rows:
        cells = [row["variant"], f"{row['seconds_per_image']:.3f}",
                 *[f"{row[k]:.0f}" for k in mem_cols]]
        print(" | ".join(f"{c:>20}" for c in cells))
    speedup = rows[1]["seconds_per_image"] / rows[0]["seconds_per_image"]
    print(f"batched flips are {speedup:.2f}x the speed of one pass per flip")
    if args.json:
        args.json.write_text(json.dumps({
            "backbone": args.backbone, "method": args.method, "size": [w, h],
            "scales": args.scales, "device": args.device, "threads": torch.get_num_threads(),
            "repeat": args.repeat, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
