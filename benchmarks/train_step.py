"""Seconds per stage-1 training step and peak memory, as the trainer runs it.

    python benchmarks/train_step.py --backbone resnet38 --method seam_plda --batch 2 --crop 128
    python benchmarks/train_step.py --amp none,bf16 --json out.json

Each variant runs in a fresh subprocess so that its peak resident memory (ru_maxrss) is its
own. A step is what ``plda train`` does per batch: forward (all views and passes of the
method), backward, SGD update with the per-group learning rates, poly LR. Random weights,
random images with random labels; the median over ``--steps`` steps after ``--warmup``.
Reference figure on the 2-core CPU: the published usr922/plda code, ResNet-38 SEAM+PLDA,
batch 2, crop 128, fp32 — 8.0 s per step, 1.68 GB peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time


def worker(args) -> dict:
    import torch

    # What the process holds before any model exists (the torch build's own footprint).
    baseline_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0

    from plda.engine.config import TrainConfig
    from plda.engine.optim import PolyLR, build_optimizer
    from plda.methods import build_method
    from plda.methods.config import MethodConfig
    from plda.models.backbones import build_backbone

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    backbone = build_backbone(args.backbone, pretrained=None, output_stride=args.output_stride)
    model = build_method(MethodConfig(name=args.method), backbone, args.classes)
    model.train()
    total = args.warmup + args.steps
    cfg = TrainConfig(iterations=total, batch_size=args.batch, amp=args.amp,
                      step_in_backward=args.step_in_backward == "on")
    opt = build_optimizer(model.parameter_groups(), cfg)
    in_backward = cfg.steps_in_backward(world_size=1)
    if in_backward:  # as the trainer does: update each parameter inside backward
        opt.attach_to_backward()
    sched = PolyLR(opt, total, cfg.poly_power)
    g = torch.Generator().manual_seed(0)
    image = torch.randn(args.batch, 3, args.crop, args.crop, generator=g)
    label = torch.zeros(args.batch, args.classes)
    label[:, :2] = 1.0  # two classes per image so every PLDA term is active
    batch = {"image": image, "label": label}
    amp = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.amp]
    times = []
    for step in range(total):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=amp, enabled=amp is not None):
            losses = model(batch, progress=step / total)
        losses["loss"].backward()
        if not in_backward:
            opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
        if not torch.isfinite(losses["loss"]):
            raise SystemExit(f"non-finite loss at step {step}: {float(losses['loss'])}")
    measured = times[args.warmup:]
    return {
        "backbone": args.backbone, "method": args.method, "batch": args.batch, "crop": args.crop,
        "amp": args.amp, "threads": args.threads, "step_in_backward": in_backward,
        "import_torch_mb": baseline_mb,
        "seconds_per_step": statistics.median(measured),
        "seconds_min": min(measured),
        "peak_memory_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="resnet38")
    p.add_argument("--method", default="seam_plda", choices=["cam", "seam", "seam_plda"])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--classes", type=int, default=20)
    p.add_argument("--output-stride", type=int, default=8)
    p.add_argument("--amp", default="none", help="comma list of none,bf16,fp16")
    p.add_argument("--step-in-backward", default="on",
                   help="comma list of on,off: the trainer's default (on) updates each parameter "
                        "inside backward; off steps after backward as torch.optim does")
    p.add_argument("--steps", type=int, default=3, help="measured steps (median reported)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--json", default=None, help="write the first variant's figures here")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    rows = []
    variants = [(amp, sib) for amp in args.amp.split(",")
                for sib in args.step_in_backward.split(",")]
    for amp, sib in variants:
        cmd = [sys.executable, __file__, "--worker", "--amp", amp, "--step-in-backward", sib]
        for k in ("backbone", "method", "batch", "crop", "classes", "steps", "warmup", "threads"):
            cmd += [f"--{k.replace('_', '-')}", str(getattr(args, k))]
        cmd += ["--output-stride", str(args.output_stride)]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            sys.stderr.write(out.stderr)
            raise SystemExit(f"benchmark variant amp={amp} step-in-backward={sib} failed "
                             f"(exit {out.returncode})")
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"{'backbone':12s} {'method':10s} {'batch':>5s} {'crop':>5s} {'amp':>5s} "
          f"{'step in bwd':>11s} {'s/step (median)':>16s} {'s/step (min)':>13s} "
          f"{'peak RSS MB':>12s} {'of which torch':>15s}")
    for r in rows:
        print(f"{r['backbone']:12s} {r['method']:10s} {r['batch']:5d} {r['crop']:5d} {r['amp']:>5s} "
              f"{'yes' if r['step_in_backward'] else 'no':>11s} {r['seconds_per_step']:16.2f} "
              f"{r['seconds_min']:13.2f} {r['peak_memory_mb']:12.0f} {r['import_torch_mb']:15.0f}")
    print("reference (usr922/plda, resnet38 seam_plda, batch 2, crop 128, fp32, this CPU): "
          "8.0 s/step, 1680 MB peak RSS")
    if args.json:
        from plda.utils.io import atomic_write_json

        atomic_write_json(args.json, {"seconds_per_step": rows[0]["seconds_per_step"],
                                      "peak_memory_mb": rows[0]["peak_memory_mb"],
                                      "variants": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
