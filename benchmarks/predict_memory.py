"""Peak memory of ``plda predict`` on a large photo, by ``--max-side``.

    python -m benchmarks.predict_memory [--size 6000x4000] [--max-sides 2048,1024,0]

Makes a light DeepLab checkpoint (``deeplab_lite_plus`` on EfficientNet-Lite0, the CPU presets'
stage 2, random weights: memory does not depend on them) and a smooth synthetic JPEG of the given
size, then runs ``plda predict`` once per ``--max-side`` value, each in a fresh process, and
prints one table: the process's peak resident memory (``ru_maxrss``), seconds, and the mask
size written (always the photo's). ``0`` means no limit; ``--limit-gb`` caps each process's
address space (0 = no cap), so an unbounded run ends in the toolkit's out-of-memory message
instead of taking the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.table import print_table

CHILD = r"""
import json, resource, sys, time
limit = int(sys.argv[1])
if limit:
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
from plda.cli.main import main
t0 = time.perf_counter()
status = main(sys.argv[2:])
print(json.dumps({"status": status, "seconds": time.perf_counter() - t0,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _photo(path: Path, width: int, height: int) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    coarse = Image.fromarray(rng.integers(0, 256, (height // 64 + 1, width // 64 + 1, 3),
                                          dtype=np.uint8))
    coarse.resize((width, height), Image.BICUBIC).save(path, quality=90)


def _checkpoint(path: Path) -> None:
    import torch

    from plda.segmentation.models import build_segmentation_net, save_segmentation_net

    torch.manual_seed(0)
    net = build_segmentation_net("deeplab_lite_plus", "efficientnet_lite0", 21,
                                 output_stride=32)
    save_segmentation_net(path, net, ["background", *(f"c{i}" for i in range(1, 21))])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="6000x4000", help="photo WIDTHxHEIGHT")
    p.add_argument("--max-sides", default="2048,1024,0")
    p.add_argument("--limit-gb", type=float, default=12.0)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        _photo(tmp / "photo.jpg", width, height)
        _checkpoint(tmp / "seg.safetensors")
        for side in (int(s) for s in args.max_sides.split(",")):
            out = tmp / f"out{side}"
            cmd = [sys.executable, "-c", CHILD, str(int(args.limit_gb * 2**30)), "predict",
                   str(tmp / "seg.safetensors"), str(tmp / "photo.jpg"), "--out", str(out),
                   "--max-side", str(side), "--no-overlay"]
            env = {**os.environ, "PLDA_NO_PROGRESS": "1"}
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
            res = json.loads(lines[-1]) if lines else {"status": proc.returncode,
                                                      "seconds": time.perf_counter() - t0,
                                                      "peak_mb": None}
            mask = out / "photo.png"
            shape = None
            if mask.is_file():
                from PIL import Image

                with Image.open(mask) as img:
                    shape = f"{img.width}x{img.height}"
            error = [ln for ln in proc.stderr.splitlines() if "error:" in ln]
            rows.append({"max_side": side or "none", "status": res["status"],
                         "peak_mb": res["peak_mb"], "seconds": res["seconds"], "mask": shape,
                         "error": error[-1] if error else None})
    print(f"plda predict on a {width}x{height} photo; machine {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, address-space cap {args.limit_gb or 'none'} GB")
    print_table(["max_side", "status", "peak MB", "seconds", "mask", "error"],
                [(str(r["max_side"]), r["status"], r["peak_mb"], r["seconds"], r["mask"],
                  r["error"]) for r in rows], {"peak MB": ".0f", "seconds": ".1f"})
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
