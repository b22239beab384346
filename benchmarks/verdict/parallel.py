"""Several verdict jobs at once, each in its own process (``OUT/logs/<job>.log``), with the CPU
cores shared out and, where several GPUs are visible, one GPU per job in turn; a job starts once
the jobs it starts from have finished."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import ROOT


def child_argv(args, *, seeds: str, methods: str, arms: str | None, epochs: str,
                budget_mode: bool) -> list[str]:
    argv = [sys.executable, "-m", "benchmarks.plda_verdict", "--out", str(args.out), "--data",
            str(args.data), "--seeds", seeds, "--methods", methods, "--epochs", epochs,
            "--amp", args.amp, "--domain-images", str(args.domain_images),
            "--continue-epochs", str(args.continue_epochs), "--no-summary",
            "--grid", args.grid]
    if args.keep is not None:
        argv += ["--keep", str(args.keep)]
    if args.start_from is not None:
        argv += ["--start-from", str(args.start_from)]
    if budget_mode:
        argv.append("--budget")
    if arms:
        argv += ["--arms", arms]
    return argv + ["--", *args.overrides]


def run_parallel(jobs: list[dict], n: int, out: Path) -> list[str]:
    """Run ``jobs`` ({name, argv, after: [names]}) ``n`` at a time; the names of those failed.

    A job starts once every job named in its ``after`` has finished well; one whose prerequisite
    failed is not started (and counts as failed).
    """
    import torch

    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    threads = max(1, (os.cpu_count() or 1) // n)
    pending, running, done, failed = list(jobs), {}, set(), []
    slot = 0
    start = time.perf_counter()
    names = {j["name"] for j in jobs}
    while pending or running:
        for job in list(pending):
            after = [a for a in job.get("after", []) if a in names]
            if any(a in failed for a in after):
                pending.remove(job)
                failed.append(job["name"])
                print(f"   skipped {job['name']}: a job it starts from failed", flush=True)
            elif len(running) < n and all(a in done for a in after):
                pending.remove(job)
                env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
                if gpus > 1:
                    env["CUDA_VISIBLE_DEVICES"] = str(slot % gpus)
                slot += 1
                log = open(logs / f"{job['name']}.log", "ab")
                proc = subprocess.Popen(job["argv"], stdout=log, stderr=subprocess.STDOUT,
                                        env=env, cwd=ROOT)
                running[job["name"]] = (proc, log, time.perf_counter())
                print(f"   started {job['name']} ({time.strftime('%H:%M:%S')})", flush=True)
        for name, (proc, log, t0) in list(running.items()):
            code = proc.poll()
            if code is None:
                continue
            log.close()
            del running[name]
            (done.add(name) if code == 0 else failed.append(name))
            finished = len(done) + len(failed)
            elapsed = time.perf_counter() - start
            eta = elapsed / finished * (len(jobs) - finished)
            print(f"   {'finished' if code == 0 else f'FAILED (exit {code})'} {name} in "
                  f"{(time.perf_counter() - t0) / 60:.1f} min; {finished}/{len(jobs)} jobs, "
                  f"{elapsed / 60:.1f} min so far, about {eta / 60:.1f} min left"
                  + ("" if code == 0 else f" (log: {logs / (name + '.log')})"), flush=True)
        time.sleep(1.0)
    return failed
