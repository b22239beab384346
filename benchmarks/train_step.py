"""Seconds per stage-1 training step and peak memory, as the trainer runs it, with each speed
switch's effect, and the published code's step measured in the same run.

    python -m benchmarks.train_step --backbone resnet38 --method seam_plda --batch 2 --crop 128 \
        --amp none,bf16 --reference PATH_TO_usr922_plda [--json out.json]
    python -m benchmarks.train_step --conv-path auto,joint,onednn --channels-last on,off

Every variant runs in a fresh subprocess, so its peak resident memory (``ru_maxrss``: torch,
model, optimizer state and activations) is its own; variants run back to back. A step is what
``plda train`` does per batch: forward (all views and passes of the method), backward, SGD
update with the per-group learning rates, poly LR. Random weights, random images, two classes
per image; the median over ``--steps`` steps after ``--warmup`` (the first step also measures
the convolution paths on a machine that has not cached them yet).

Switches: ``--amp`` (``none`` = fp32, ``bf16``, ``fp16``; bf16 on a CPU without bf16
instructions runs fp32 and the table says so), ``--conv-path`` (``auto``: per layer shape the
faster of oneDNN and the joint-view GEMM, measured once per machine; or forced), ``--channels-last``
(the trainer's ``train.channels_last``; ``auto`` times both once per machine, as the trainer
does), ``--step-in-backward``, ``--dilated-paths`` (the dilated depthwise convolutions' kernels:
``auto`` each of forward and weight gradient measured per layer shape, ``fixed`` oneDNN's weight
gradient and the forward by the padding rule, ``benchmarks/dilated_depthwise.py``),
``--malloc`` (``tuned``: glibc keeps freed blocks for reuse, as the ``plda`` command sets it;
``system``: the C library's thresholds, under which every large activation is mapped and zeroed
again each step; ``plda.utils.malloc``).

``--shapes 224/16,224/8,448/16``: rows for each crop/output-stride pair side by side (the
coarse and fine CAM grids), each with its CAM grid and its time per step relative to the first
shape's, per image pixel and per CAM cell. ``--profile`` adds the step's top operators
(``torch.profiler``, self CPU time of one measured step) under each row.

``--reference PATH``: a checkout of the published code; its training loop's body runs unchanged
(``benchmarks/published_code.py``) in fp32 in its own subprocess, and the table gives each
variant's time and memory as a ratio to it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import statistics
import time
from pathlib import Path

from benchmarks import published_code
from benchmarks.common import commit, module_command, run_worker
from benchmarks.table import print_table
from plda.utils.malloc import MODES as MALLOC_MODES


def _peak_mb(device) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def worker(args) -> dict:
    import torch

    from plda.engine.config import TrainConfig
    from plda.engine.optim import PolyLR, build_optimizer
    from plda.methods import build_method
    from plda.methods.config import MethodConfig
    from plda.models.backbones import build_backbone
    from plda.models.fastpath import resolve_amp
    from plda.utils.malloc import tune_allocator

    allocator = tune_allocator()  # PLDA_MALLOC, set per variant (--malloc)
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    amp_run = resolve_amp(args.amp, device, "--amp")
    backbone = build_backbone(args.backbone, pretrained=None, output_stride=args.output_stride)
    model = build_method(MethodConfig(name=args.method), backbone, args.classes).to(device)
    model.train()
    g = torch.Generator().manual_seed(0)
    image = torch.randn(args.batch, 3, args.crop, args.crop, generator=g).to(device)
    label = torch.zeros(args.batch, args.classes, device=device)
    label[:, :2] = 1.0  # two classes per image so every PLDA term is active
    dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp_run]
    if args.channels_last == "auto":  # as the trainer decides: measured once per machine
        from plda.models.fastpath import choose_channels_last

        channels_last = device.type != "cpu" or choose_channels_last(
            model, {"image": image, "label": label}, dtype, device)
    else:
        channels_last = args.channels_last == "on"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        image = image.contiguous(memory_format=torch.channels_last)
    total = args.warmup + args.steps
    cfg = TrainConfig(iterations=total, batch_size=args.batch, amp=amp_run,
                      step_in_backward=args.step_in_backward == "on")
    opt = build_optimizer(model.parameter_groups(), cfg)
    in_backward = cfg.steps_in_backward(world_size=1)
    if in_backward:  # as the trainer does: update each parameter inside backward
        opt.attach_to_backward()
    scaler = torch.amp.GradScaler(device.type) if amp_run == "fp16" else None
    sched = PolyLR(opt, total, cfg.poly_power)
    batch = {"image": image, "label": label}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def train_step(progress: float, schedule: bool = True):
        """One step as the trainer runs it; the loss. ``schedule=False`` leaves the LR as is."""
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            losses = model(batch, progress=progress)
        loss = losses["loss"].float()
        (scaler.scale(loss) if scaler is not None else loss).backward()
        if not in_backward:
            if scaler is not None:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
        if schedule:
            sched.step()
        opt.zero_grad(set_to_none=True)
        _sync(device)
        return loss

    times, losses_seen = [], []
    for step in range(total):
        _sync(device)
        t0 = time.perf_counter()
        loss = train_step(step / total)
        times.append(time.perf_counter() - t0)
        losses_seen.append(float(loss))
        if not torch.isfinite(loss):
            raise SystemExit(f"non-finite loss at step {step}: {float(loss)}")
    measured = times[args.warmup:]
    # One more step, profiled; the schedule has run its course, so the LR stays.
    top_ops = _profile(lambda: train_step(0.5, schedule=False), device) if args.profile else None
    with torch.no_grad():
        grid = list(model.backbone(image[:1])[model.backbone.final_level].shape[-2:])
    return {
        "output_stride": args.output_stride, "cam_grid": [int(n) for n in grid],
        "top_ops": top_ops, "code": "ours", "backbone": args.backbone, "method": args.method,
        "batch": args.batch,
        "crop": args.crop, "amp": args.amp, "amp_run": amp_run, "conv_path": args.conv_path,
        "channels_last": channels_last, "threads": args.threads, "device": args.device,
        "step_in_backward": in_backward, "malloc": allocator["mode"],
        "seconds_per_step": statistics.median(measured),
        "seconds_min": min(measured), "peak_memory_mb": _peak_mb(device),
        "loss_first": losses_seen[0], "loss_last": losses_seen[-1],
    }


def _profile(step, device, top: int = 12) -> list[dict]:
    """The ``top`` operators of one training step (``step()``) by self CPU time (ms and % of
    the step)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda"
                                           else [])
    with profile(activities=activities) as prof:
        step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    events = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    return [{"op": e.key, "calls": e.count, "ms": e.self_cpu_time_total / 1e3,
             "percent": 100.0 * e.self_cpu_time_total / total} for e in events]


def reference_worker(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    step = published_code.training_step(Path(args.reference).resolve(), args.batch, args.crop,
                                        args.classes, args.warmup + args.steps)
    times = []
    for _ in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        loss = step()
        times.append(time.perf_counter() - t0)
        if loss != loss:
            raise SystemExit("the published step gave a NaN loss")
    measured = times[args.warmup:]
    return {"code": "published", "backbone": "resnet38", "method": "seam_plda",
            "batch": args.batch, "crop": args.crop, "amp": "none", "amp_run": "none",
            "conv_path": "-", "channels_last": False, "threads": args.threads, "device": "cpu",
            "step_in_backward": False, "seconds_per_step": statistics.median(measured),
            "seconds_min": min(measured), "peak_memory_mb": _peak_mb(torch.device("cpu"))}


# --dilated-paths: (PLDA_DILATED_WEIGHT_GRAD, PLDA_DILATED_FORWARD)
DILATED_PATHS = {"auto": ("auto", "auto"), "fixed": ("native", "padding")}


def _shapes(text: str) -> list[tuple[int, int]]:
    """``224/16,224/8`` -> [(224, 16), (224, 8)]."""
    out = []
    for item in filter(None, (t.strip() for t in text.split(","))):
        try:
            crop, stride = (int(v) for v in item.split("/"))
        except ValueError:
            raise SystemExit(f"--shapes: {item!r} is not CROP/STRIDE (e.g. 224/8)") from None
        out.append((crop, stride))
    return out


def _ratios(row: dict, first: dict) -> tuple[float | None, float | None, float | None]:
    """(step, step per pixel, step per CAM cell) of ``row`` relative to ``first``."""
    if row.get("code") != "ours":
        return None, None, None
    step = row["seconds_per_step"] / first["seconds_per_step"]
    pixels = (row["crop"] / first["crop"]) ** 2
    cells = [a / b for a, b in zip(row.get("cam_grid") or [], first.get("cam_grid") or [])]
    return step, step / pixels, (step / (cells[0] * cells[1]) if len(cells) == 2 else None)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="resnet38")
    p.add_argument("--method", default="seam_plda", choices=["cam", "seam", "cam_plda", "seam_plda"])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--classes", type=int, default=20)
    p.add_argument("--output-stride", type=int, default=8)
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", default="none,bf16", help="comma list of none,bf16,fp16")
    p.add_argument("--conv-path", default="auto", help="comma list of auto,joint,onednn")
    p.add_argument("--channels-last", default="auto",
                   help="comma list of on,off,auto (the trainer's default: measured once)")
    p.add_argument("--step-in-backward", default="on",
                   help="comma list of on,off: the trainer's default (on) updates each parameter "
                        "inside backward; off steps after backward as torch.optim does")
    p.add_argument("--shapes", default=None, help="comma list of crop/output-stride pairs, "
                   "e.g. 224/16,224/8,448/16 (default: --crop/--output-stride)")
    p.add_argument("--profile", action="store_true", help="the top operators of one step")
    p.add_argument("--dilated-paths", default="auto", help="comma list of auto,fixed: the "
                   "dilated depthwise convolutions' paths (module doc)")
    p.add_argument("--malloc", default="tuned", help="comma list of tuned,system: the memory "
                   "allocator's thresholds (PLDA_MALLOC, plda.utils.malloc)")
    p.add_argument("--steps", type=int, default=3, help="measured steps (median reported)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--reference", default=None,
                   help="a checkout of the published code (usr922/plda): time its step too")
    p.add_argument("--json", default=None, help="write the figures here (the first variant's at "
                   "the top level)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--reference-worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    if args.reference_worker:
        print(json.dumps(reference_worker(args)))
        return 0
    import torch

    from plda.models.fastpath import cpu_features, describe_cpu

    common = []
    for k in ("backbone", "method", "batch", "classes", "steps", "warmup", "threads", "device"):
        common += [f"--{k.replace('_', '-')}", str(getattr(args, k))]
    if args.profile:
        common.append("--profile")
    shapes = _shapes(args.shapes) if args.shapes else [(args.crop, args.output_stride)]
    rows = []
    reference = None
    if args.reference:
        if (args.backbone, args.method) != ("resnet38", "seam_plda"):
            raise SystemExit("--reference: the published code trains resnet38 seam_plda only")
        reference = run_worker(module_command("train_step", "--reference-worker",
                                              "--reference", args.reference, *common, "--crop",
                                              str(shapes[0][0])),
                               published_code.worker_env(args.reference), "published code")
    variants = [(crop, stride, amp, path, cl, sib, wgrad, alloc) for crop, stride in shapes
                for amp in args.amp.split(",") for path in args.conv_path.split(",")
                for cl in args.channels_last.split(",")
                for sib in args.step_in_backward.split(",")
                for wgrad in args.dilated_paths.split(",")
                for alloc in args.malloc.split(",")]
    for crop, stride, amp, path, cl, sib, wgrad, alloc in variants:
        if wgrad not in DILATED_PATHS:
            raise SystemExit(f"--dilated-paths: {wgrad!r}: expected {', '.join(DILATED_PATHS)}")
        if alloc not in MALLOC_MODES:
            raise SystemExit(f"--malloc: {alloc!r}: expected {', '.join(MALLOC_MODES)}")
        weight_grad, forward = DILATED_PATHS[wgrad]
        env = dict(os.environ, PLDA_CONV_PATH=path, PLDA_DILATED_WEIGHT_GRAD=weight_grad,
                   PLDA_DILATED_FORWARD=forward, PLDA_MALLOC=alloc)
        row = run_worker(module_command("train_step", "--worker", "--amp", amp, "--conv-path",
                                        path, "--channels-last", cl, "--step-in-backward", sib,
                                        "--crop", crop, "--output-stride", stride, *common), env,
                         f"crop={crop} stride={stride} amp={amp} conv-path={path} "
                   f"channels-last={cl} step-in-backward={sib} dilated-paths={wgrad} "
                   f"malloc={alloc}")
        rows.append({**row, "dilated_paths": wgrad})
    print(f"{dt.date.today()} | commit {commit()} | torch {torch.__version__} | "
          f"{platform.machine()}")
    print(describe_cpu() if args.device == "cpu" else f"device: {args.device}")
    print(f"{args.backbone} {args.method}, batch {args.batch}, "
          f"median of {args.steps} steps after {args.warmup}")
    first = rows[0]
    table, ops = [], []
    for k, r in enumerate(([reference] if reference else []) + rows):
        amp = r["amp"] if r["amp"] == r["amp_run"] else f"{r['amp']}->{r['amp_run']}"
        cells = [k, r["code"], r["crop"], r.get("output_stride"),
                 "x".join(map(str, r.get("cam_grid") or [])) or None, amp, r["conv_path"],
                 "yes" if r["channels_last"] else "no", "yes" if r["step_in_backward"] else "no",
                 r.get("dilated_paths"), r.get("malloc"), r["seconds_per_step"], r["seconds_min"],
                 r["peak_memory_mb"], *_ratios(r, first)]
        if reference:
            cells += published_code.ratios(r, reference, "seconds_per_step", "peak_memory_mb")
        table.append(cells)
        ops += [(k, op["percent"], op["ms"], op["calls"], op["op"])
                for op in r.get("top_ops") or []]
    print_table(["row", "code", "crop", "OS", "grid", "amp", "conv path", "NHWC", "step in bwd",
                 "dilated", "malloc", "s/step", "min", "peak MB", "x step", "x /px", "x /cell",
                 *(published_code.RATIO_COLUMNS if reference else ())], table,
                {"s/step": ".2f", "min": ".2f", "peak MB": ".0f", "x step": ".2f",
                 "x /px": ".2f", "x /cell": ".2f", **published_code.RATIO_FORMATS})
    if ops:
        print("\nthe top ops of each profiled row:")
        print_table(["row", "%", "ms", "calls", "op"], ops, {"%": ".1f", "ms": ".1f"})
    print("x step: seconds per step relative to the first row; x /px: per image pixel; "
          "x /cell: per CAM grid cell.")
    if args.json:
        from plda.utils.io import atomic_write_json

        atomic_write_json(args.json, {
            "seconds_per_step": rows[0]["seconds_per_step"],
            "peak_memory_mb": rows[0]["peak_memory_mb"],
            "date": dt.date.today().isoformat(), "commit": commit(), "torch": torch.__version__,
            "cpu": cpu_features(), "variants": rows, "reference": reference})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
