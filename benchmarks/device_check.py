"""Everything an accelerator can tell us in one short run, as one table (``device_check.sh``).

    bash benchmarks/device_check.sh                 # on a GPU machine: at most ~8 minutes
    bash benchmarks/device_check.sh --cpu           # the same checks, tiny, on the CPU (CI)

Checks, in order, each in its own process so one failure never hides the others:

1. versions: torch, CUDA, cuDNN, NCCL, the device (or the CPU's features);
2. training steps of every method (cam, seam, seam_plda) in fp32, bf16 and fp16 with loss
   scaling at the paper setting (ResNet-38, crop 448, batch 8, random init;
   ``benchmarks/train_step.py``'s worker): loss finite, seconds per step, peak memory;
3. ``torchrun --nproc_per_node=1``: a process group (NCCL on GPU, gloo on CPU), this package's
   ``all_reduce_sum`` checked, and one DDP step whose gradients equal a plain step's;
4. CAM inference (seam_plda, ResNet-38, 500x375, 4 scales + flip) images per second, fp32 and
   reduced precision (``benchmarks/cam_inference.py``'s worker);
5. with the time left (``--budget-s``), the real sample's CAM and SEAM+PLDA runs at a longer
   budget than the CPU allows (``benchmarks/voc12subset.py``, seeds scored on train and val).

No network. ``--cpu`` shrinks 2-4 (EfficientNet-Lite0 at stride 16, crop 64, batch 2; CAMs at
160x120, 2 scales) and skips 5 unless ``--real``.
``--out DIR`` keeps every check's JSON and log; ``DIR/device_check.json`` has the table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import ROOT, commit
from benchmarks.table import print_table

PRECISIONS = ("none", "bf16", "fp16")


class Budget:
    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


def _tail(text: str, n: int = 300) -> str:
    text = " ".join(text.strip().split())
    return text[-n:]


def _run_json(cmd: list[str], timeout: float, env: dict | None = None,
              log: Path | None = None) -> tuple[dict | None, str, float]:
    """(last JSON line of stdout or None, error text, seconds) of ``cmd``."""
    t0 = time.monotonic()
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=max(1.0, timeout),
                             env=env, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout:.0f} s", time.monotonic() - t0
    seconds = time.monotonic() - t0
    if log is not None:
        log.write_text(out.stdout + "\n--- stderr ---\n" + out.stderr)
    if out.returncode != 0:
        return None, f"exit {out.returncode}: {_tail(out.stderr or out.stdout)}", seconds
    for line in reversed(out.stdout.strip().splitlines()):
        try:
            return json.loads(line), "", seconds
        except ValueError:
            continue
    return None, f"no result printed: {_tail(out.stdout)}", seconds


def versions(device: str) -> dict:
    import torch

    info = {"date": dt.datetime.now().isoformat(timespec="seconds"), "python": platform.python_version(),
            "torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "device": device}
    try:
        info["nccl"] = ".".join(map(str, torch.cuda.nccl.version())) if torch.cuda.is_available() \
            else None
    except Exception:  # noqa: BLE001 - informative only
        info["nccl"] = None
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, capability=f"{props.major}.{props.minor}",
                    gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    gpus=torch.cuda.device_count(), bf16=torch.cuda.is_bf16_supported())
    from plda.models.fastpath import cpu_features

    info["cpu"] = cpu_features()
    info["commit"] = commit()
    return info


def ddp_probe(device_name: str) -> dict:
    """Run under torchrun: a process group, ``all_reduce_sum`` and one DDP step checked."""
    import torch
    import torch.distributed as tdist
    from torch import nn
    from torch.nn.parallel import DistributedDataParallel

    from plda.engine.distributed import all_reduce_sum

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", 0))
    cuda = device_name.startswith("cuda")
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    backend = "nccl" if cuda else "gloo"
    t0 = time.perf_counter()
    tdist.init_process_group(backend=backend, rank=rank, world_size=world,
                             **({"device_id": device} if cuda else {}))
    from plda.engine.distributed import is_initialized

    value = torch.full((4,), float(rank + 1), device=device)
    reduced = all_reduce_sum(value.clone())  # through the group: is_initialized() must hold
    expected = world * (world + 1) / 2
    reduce_ok = is_initialized() and bool(torch.allclose(reduced,
                                                         torch.full_like(reduced, expected)))
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 2, 1)).to(device)
    plain = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 2, 1)).to(device)
    plain.load_state_dict(net.state_dict())
    ddp = DistributedDataParallel(net, device_ids=[local] if cuda else None)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)).to(device)
    ddp(x).square().mean().backward()
    plain(x).square().mean().backward()
    grads_ok = all(torch.allclose(a.grad, b.grad, rtol=1e-4, atol=1e-6)
                   for a, b in zip(net.parameters(), plain.parameters()))
    tdist.barrier()
    tdist.destroy_process_group()
    return {"backend": backend, "world_size": world, "all_reduce_ok": reduce_ok,
            "ddp_grads_ok": grads_ok, "seconds": time.perf_counter() - t0}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cpu", action="store_true", help="tiny checks on the CPU (what CI runs)")
    p.add_argument("--real", action="store_true", help="with --cpu: run check 5 too")
    p.add_argument("--budget-s", type=float, default=None,
                   help="stop starting checks after this many seconds (default 470 on a GPU, "
                        "600 with --cpu)")
    p.add_argument("--out", type=Path, default=None, help="folder for each check's JSON and log")
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "voc12-subset")
    p.add_argument("--ddp-probe", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--device", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.ddp_probe:
        print(json.dumps(ddp_probe(args.device or "cpu")))
        return 0

    import torch

    if not args.cpu and not torch.cuda.is_available():
        raise SystemExit("device_check: no CUDA device is visible; run with --cpu for the "
                         "tiny CPU version")
    device = "cpu" if args.cpu else "cuda"
    budget = Budget(args.budget_s if args.budget_s is not None else (600 if args.cpu else 470))
    out = args.out or Path(os.environ.get("TMPDIR", "/tmp")) / f"device_check_{os.getpid()}"
    out.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT / "src"), str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
    rows: list[dict] = []

    def row(check: str, setting: str, status: str, seconds: float | None = None,
            memory_mb: float | None = None, detail: str = "") -> None:
        rows.append({"check": check, "setting": setting, "status": status,
                     "seconds": seconds, "memory_mb": memory_mb, "detail": detail})
        mem = "" if memory_mb is None else f" {memory_mb:.0f} MB"
        sec = "" if seconds is None else f" {seconds:.3f} s"
        print(f"[device_check] {check} {setting}: {status}{sec}{mem} {detail}".rstrip(),
              flush=True)

    info = versions(device)
    (out / "versions.json").write_text(json.dumps(info, indent=1))
    ver = (f"torch {info['torch']}, CUDA {info['cuda']}, cuDNN {info['cudnn']}, "
           f"NCCL {info['nccl']}")
    where = (f"{info.get('gpu')} x{info.get('gpus')} (sm {info.get('capability')}, "
             f"{info.get('gpu_memory_gib')} GiB, bf16 {info.get('bf16')})" if device == "cuda"
             else f"{info['cpu']['model']} [{' '.join(info['cpu']['flags'])}]")
    row("versions", device, "ok", detail=f"{ver}; {where}")

    # 2. training steps
    backbone = "efficientnet_lite0" if args.cpu else "resnet38"
    if args.cpu:
        shape = ["--backbone", backbone, "--output-stride", "16", "--crop", "64", "--batch", "2",
                 "--steps", "1", "--warmup", "1", "--threads", str(min(2, os.cpu_count() or 1))]
    else:
        shape = ["--backbone", backbone, "--output-stride", "8", "--crop", "448", "--batch", "8",
                 "--steps", "3", "--warmup", "2"]
    from plda.registry import METHODS

    for method in METHODS.names():  # every registered stage-1 method
        for amp in PRECISIONS:
            setting = f"{method} {amp if amp != 'none' else 'fp32'}" + \
                (" +scaler" if amp == "fp16" else "")
            if budget.left() < 30:
                row("train step", setting, "skipped", detail="budget spent")
                continue
            result, err, _ = _run_json(
                [py, "-m", "benchmarks.train_step", "--worker", "--method", method, "--amp", amp,
                 "--device", device, "--conv-path", "auto", "--channels-last", "auto",
                 "--step-in-backward", "on", "--classes", "20", *shape],
                min(budget.left(), 240), env, out / f"train_{method}_{amp}.log")
            if result is None:
                row("train step", setting, "FAIL", detail=err)
                continue
            ok = result["loss_last"] == result["loss_last"] and abs(result["loss_last"]) < 1e6
            ran = "" if result["amp_run"] == amp else f" (ran {result['amp_run']})"
            row("train step", setting, "ok" if ok else "FAIL", result["seconds_per_step"],
                result["peak_memory_mb"],
                f"loss {result['loss_first']:.3f} -> {result['loss_last']:.3f}{ran}")

    # 3. torchrun + DDP
    torchrun = shutil.which("torchrun", path=str(Path(py).parent)) or shutil.which("torchrun")
    if budget.left() < 20:
        row("torchrun ddp", "nproc 1", "skipped", detail="budget spent")
    elif torchrun is None:
        row("torchrun ddp", "nproc 1", "FAIL", detail="torchrun not found")
    else:
        result, err, seconds = _run_json(
            [torchrun, "--standalone", "--nproc_per_node=1", "-m", "benchmarks.device_check",
             "--ddp-probe", "--device", device], min(budget.left(), 120), env,
            out / "ddp.log")
        if result is None:
            row("torchrun ddp", "nproc 1", "FAIL", seconds, detail=err)
        else:
            ok = result["all_reduce_ok"] and result["ddp_grads_ok"]
            row("torchrun ddp", f"nproc 1 {result['backend']}", "ok" if ok else "FAIL", seconds,
                detail=f"all_reduce {'ok' if result['all_reduce_ok'] else 'WRONG'}, DDP grads "
                       f"{'equal' if result['ddp_grads_ok'] else 'DIFFER'}")

    # 4. CAM inference
    size, scales = ("160x120", ["1.0", "2.0"]) if args.cpu else ("500x375",
                                                                ["0.5", "1.0", "1.5", "2.0"])
    for amp in ("none", "bf16") + (() if args.cpu else ("fp16",)):
        setting = f"seam_plda {amp if amp != 'none' else 'fp32'} {size}"
        if budget.left() < 20:
            row("cam inference", setting, "skipped", detail="budget spent")
            continue
        result, err, _ = _run_json(
            [py, "-m", "benchmarks.cam_inference", "--worker", "ours", "--one-amp", amp,
             "--flip-batch", "auto", "--backbone", backbone, "--method", "seam_plda",
             "--size", size, "--repeat", "1" if args.cpu else "5", "--warmup", "1",
             "--device", device, "--threads", str(os.cpu_count() or 1), "--scales", *scales],
            min(budget.left(), 180), env, out / f"cam_{amp}.log")
        if result is None:
            row("cam inference", setting, "FAIL", detail=err)
            continue
        mem = result.get("cuda_peak_mib", result["peak_rss_mib"])
        ran = "" if result["amp_run"] == amp else f" (ran {result['amp_run']})"
        row("cam inference", setting, "ok", result["seconds_per_image"], mem,
            f"{1 / result['seconds_per_image']:.2f} images/s{ran}")

    # 5. the real sample at a longer budget
    if args.cpu and not args.real:
        row("real sample", "cam, seam_plda", "skipped", detail="--cpu (add --real to run it)")
    elif not (args.data / "image_labels.json").is_file():
        row("real sample", "cam, seam_plda", "skipped", detail=f"no data at {args.data}")
    elif budget.left() < 150:
        row("real sample", "cam, seam_plda", "skipped",
            detail=f"{budget.left():.0f} s left, 150 needed")
    else:
        epochs = "2" if args.cpu else "8"
        workers = "1" if args.cpu else str(min(8, os.cpu_count() or 1))
        real = out / "real"
        cmd = [py, "-m", "benchmarks.voc12subset", "--out", str(real), "--data", str(args.data),
               "--methods", "cam,seam_plda", "--refine", "none", "--no-label-free",
               f"train.epochs={epochs}", f"train.num_workers={workers}"]
        t0 = time.monotonic()
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT,
                                  timeout=max(30.0, budget.left() - 10))
            (out / "real.log").write_text(done.stdout + "\n--- stderr ---\n" + done.stderr)
            status = "ok" if done.returncode == 0 else f"FAIL (exit {done.returncode})"
        except subprocess.TimeoutExpired:
            status = "partial (time)"
        seconds = time.monotonic() - t0
        results = real / "results.json"
        found = json.loads(results.read_text()) if results.is_file() else {}
        by_method = {r.get("method"): r for r in found.get("rows", []) if isinstance(r, dict)}
        for method in ("cam", "seam_plda"):
            r = by_method.get(method)
            if r is None:
                row("real sample", f"{method} {epochs} epochs",
                    "FAIL" if status == "ok" else status, seconds, detail="no result")
                continue
            detail = (f"seed mIoU (13 classes) train {r['train_miou_13']:.1f} / val "
                      f"{r['val_miou_13']:.1f} at threshold {r['bg_threshold']:.2f}, "
                      f"{r['train_minutes']:.1f} min training")
            row("real sample", f"{method} {epochs} epochs", status, seconds, detail=detail)

    print()
    print(f"device_check {info['date']} commit {info['commit']} | {ver} | {where}")
    print(f"train steps and CAM inference: {backbone}, random init; train "
          f"{' '.join(shape[2:8])}")
    print_table(["check", "setting", "status", "seconds", "peak MB", "detail"],
                [(r["check"], r["setting"], r["status"], r["seconds"], r["memory_mb"],
                  r["detail"]) for r in rows], {"seconds": ".3f", "peak MB": ".0f"})
    (out / "device_check.json").write_text(json.dumps({"versions": info, "rows": rows}, indent=1))
    print(f"(logs and JSON in {out})")
    failed = [r for r in rows if r["status"].startswith("FAIL")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
