"""Seconds per image of multi-scale + flip CAM inference and its peak memory: fp32 and bf16 side
by side, and the published model run the way SEAM's ``infer_SEAM.py`` runs it, back to back.

    python -m benchmarks.cam_inference --backbone resnet38 --method seam_plda --size 500x375 \
        --amp none,bf16 --reference PATH_TO_usr922_plda [--json out.json]

Each variant runs in a fresh subprocess: the model is built (random weights), the peak-RSS mark
is reset (Linux; otherwise ``ru_maxrss``), then ``--warmup`` untimed and ``--repeat`` timed
images; the median seconds per image and the peak resident memory are reported (on CUDA the
allocator's peak). Ours is ``plda.inference.cams.multiscale_cam`` with two classes present, as
``plda cam`` runs it: NHWC weights, an image and its flip as one batch per scale (``--flip-batch
off``: one pass each), one autocast context per image. The published variant is its ``Net``
(``benchmarks/published_code.py``) in fp32 as ``infer_SEAM.py`` drives it: one pass per scale
and flip, the revised CAM of all 20 classes upsampled to the image, masked by the labels,
flipped back and summed, then normalised.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

from benchmarks import published_code
from benchmarks.common import module_command, run_worker
from benchmarks.table import print_table
from plda.registry import BACKBONES, METHODS
CLASSES = 20


def _parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--size {text!r}: expected WIDTHxHEIGHT, e.g. 500x375")
    return w, h


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


def _timed(run, device: str, warmup: int, repeat: int) -> dict:
    import torch

    cuda = device.startswith("cuda")
    exact = _reset_peak_rss()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(warmup + repeat):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        run()
        if cuda:
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    peak = _status_mib("VmHWM") if exact else None
    if peak is None:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = {"seconds_per_image": statistics.median(times), "seconds_min": min(times),
           "peak_rss_mib": peak}
    if cuda:
        out["cuda_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def _inputs(size: tuple[int, int], device: str):
    import torch

    w, h = size
    image = torch.randn(3, h, w, generator=torch.Generator().manual_seed(0)).to(device)
    labels = torch.zeros(CLASSES, device=device)
    labels[:2] = 1.0
    return image, labels


def ours_worker(args) -> dict:
    import torch

    from plda.inference.cams import multiscale_cam
    from plda.methods import MethodConfig, build_method
    from plda.models.backbones import build_backbone
    from plda.models.fastpath import resolve_amp

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_method(MethodConfig(name=args.method), build_backbone(args.backbone), CLASSES)
    model = model.to(args.device).eval()
    if args.layout == "nhwc":  # what plda cam does
        model = model.to(memory_format=torch.channels_last)
    image, labels = _inputs(args.size, args.device)
    flip_batch = {"on": True, "off": False, "auto": None}[args.flip_batch]
    if flip_batch is None:  # what plda cam does: batched on GPUs only
        flip_batch = not args.device.startswith("cpu")
    amp_run = resolve_amp(args.amp, torch.device(args.device), "--amp")
    row = _timed(lambda: multiscale_cam(model, image, args.scales, True, labels, amp=amp_run,
                                        flip_batch=flip_batch),
                 args.device, args.warmup, args.repeat)
    row.update(code="ours", amp=args.amp, amp_run=amp_run, flip_batch=flip_batch,
               layout=args.layout)
    return row


def reference_worker(args) -> dict:
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(args.threads)
    model = published_code.cam_model(Path(args.reference).resolve())
    image, labels = _inputs(args.size, "cpu")
    h, w = image.shape[-2:]

    def run() -> None:
        total = None
        with torch.no_grad():
            for scale in args.scales:
                size = (round(h * scale), round(w * scale))
                x = F.interpolate(image[None], size=size, mode="bicubic", align_corners=False)
                for flip in (False, True):
                    _, cam = model(x.flip(-1) if flip else x)
                    cam = F.interpolate(cam[:, 1:], (h, w), mode="bilinear",
                                        align_corners=False)[0] * labels.view(CLASSES, 1, 1)
                    cam = cam.flip(-1) if flip else cam
                    total = cam if total is None else total + cam
        total[total < 0] = 0
        cam_max = total.flatten(1).amax(1)[:, None, None]
        cam_min = total.flatten(1).amin(1)[:, None, None]
        total[total < cam_min + 1e-5] = 0
        (total - cam_min - 1e-5) / (cam_max - cam_min + 1e-5)

    row = _timed(run, "cpu", args.warmup, args.repeat)
    row.update(code="published", amp="none", amp_run="none", flip_batch=False, layout="nchw")
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet38", choices=BACKBONES)
    parser.add_argument("--method", default="seam_plda", choices=METHODS)
    parser.add_argument("--size", type=_parse_size, default=(500, 375), help="WIDTHxHEIGHT")
    parser.add_argument("--scales", type=float, nargs="+", default=[0.5, 1.0, 1.5, 2.0])
    parser.add_argument("--amp", default="none,bf16", help="comma list of none,bf16,fp16")
    parser.add_argument("--flip-batch", default="auto", help="comma list of on,off,auto (what "
                        "plda cam does: batched on GPUs, not on CPUs)")
    parser.add_argument("--layout", default="nhwc", help="comma list of nhwc (what plda cam "
                        "uses), nchw: the weights' memory format")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1, help="untimed images before timing")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--reference", help="a checkout of the published code (usr922/plda)")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    parser.add_argument("--worker", choices=["ours", "reference"], help=argparse.SUPPRESS)
    parser.add_argument("--one-amp", dest="one_amp", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        if args.worker == "ours":
            args.amp = args.one_amp
            print(json.dumps(ours_worker(args)))
        else:
            print(json.dumps(reference_worker(args)))
        return 0

    import torch

    from plda.models.fastpath import cpu_features, describe_cpu

    w, h = args.size
    common = ["--backbone", args.backbone, "--method", args.method, "--size", f"{w}x{h}",
              "--repeat", str(args.repeat), "--warmup", str(args.warmup), "--device",
              args.device, "--threads", str(args.threads),
              "--scales", *[str(s) for s in args.scales]]
    reference = None
    if args.reference:
        reference = run_worker(module_command("cam_inference", "--worker", "reference",
                                              "--reference", args.reference, *common),
                               published_code.worker_env(args.reference), "published code")
    rows = [run_worker(module_command("cam_inference", "--worker", "ours", "--one-amp", amp,
                                      "--flip-batch", fb, "--layout", layout, *common),
                       None, f"amp={amp} flip-batch={fb} layout={layout}")
            for amp in args.amp.split(",") for layout in args.layout.split(",")
            for fb in args.flip_batch.split(",")]
    print(f"{dt.date.today()} | torch {torch.__version__} | {platform.machine()}")
    print(describe_cpu() if args.device == "cpu" else f"device: {args.device}")
    print(f"CAM inference: {args.method} on {args.backbone} (random weights), {w}x{h}, scales "
          f"{args.scales} + flip, {args.threads} threads, median of {args.repeat} after "
          f"{args.warmup} warm-up")
    mem = "cuda_peak_mib" if args.device.startswith("cuda") else "peak_rss_mib"
    table = []
    for r in ([reference] if reference else []) + rows:
        amp = r["amp"] if r["amp"] == r["amp_run"] else f"{r['amp']}->{r['amp_run']}"
        cells = [r["code"], amp, r["layout"], "yes" if r["flip_batch"] else "no",
                 r["seconds_per_image"], r[mem]]
        if reference:
            cells += published_code.ratios(r, reference, "seconds_per_image", "peak_rss_mib")
        table.append(cells)
    print_table(["code", "amp", "layout", "flips batched", "s/image", "peak MiB",
                 *(published_code.RATIO_COLUMNS if reference else ())], table,
                {"s/image": ".3f", "peak MiB": ".0f", **published_code.RATIO_FORMATS})
    if args.json:
        from plda.utils.io import atomic_write_json

        atomic_write_json(args.json, {
            "backbone": args.backbone, "method": args.method, "size": [w, h],
            "scales": args.scales, "device": args.device, "threads": args.threads,
            "repeat": args.repeat, "date": dt.date.today().isoformat(), "torch": torch.__version__,
            "cpu": cpu_features(), "rows": rows, "reference": reference})
    return 0


if __name__ == "__main__":
    sys.exit(main())
