"""``plda run``: the pipeline stages in order, each skipped when its outputs are complete.

Stages so far: ``train`` (stage-1 classifier) → ``cam`` (multi-scale CAMs) → ``seeds``
(background-threshold sweep, seed label maps, seed mIoU). A stage that was interrupted
resumes: training from its last checkpoint, CAMs and seeds from the files already written.
"""

from __future__ import annotations

import json
import time

from plda.config.schema import RunConfig
from plda.pipeline.common import STAGE1_WEIGHTS, run_dir
from plda.utils.dist import is_main_process

STAGES = ("train", "cam", "seeds")


def _stage_range(start: str | None, until: str | None) -> list[str]:
    from plda.errors import ConfigError

    for name in (start, until):
        if name is not None and name not in STAGES:
            raise ConfigError(f"unknown stage {name!r}; stages are {', '.join(STAGES)}")
    lo = STAGES.index(start) if start else 0
    hi = STAGES.index(until) if until else len(STAGES) - 1
    return list(STAGES[lo:hi + 1])


def run_pipeline(cfg: RunConfig, *, start: str | None = None, until: str | None = None) -> dict:
    """Run the stages of ``cfg`` from ``start`` to ``until`` (inclusive); return metrics.json."""
    from plda.engine.distributed import init_distributed
    from plda.engine.checkpoint import latest_checkpoint
    from plda.pipeline.cams import make_cams, make_seeds
    from plda.pipeline.stage1 import train_stage1

    dist = init_distributed()
    out = run_dir(cfg)
    timings = {}
    for stage in _stage_range(start, until):
        t0 = time.perf_counter()
        if stage == "train":
            if (out / STAGE1_WEIGHTS).is_file():
                continue
            resume = latest_checkpoint(out / "checkpoints") is not None
            summary = train_stage1(cfg, resume=resume, dist=dist)
            if summary["interrupted"]:
                raise KeyboardInterrupt
        elif stage == "cam":
            make_cams(cfg, dist=dist)
        elif stage == "seeds" and is_main_process():
            make_seeds(cfg)
        timings[stage] = time.perf_counter() - t0
    path = out / "metrics.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def format_metrics(metrics: dict) -> str:
    """The seed mIoU per split, the threshold and the training summary, as a small table."""
    lines = []
    train = metrics.get("train")
    if train:
        lines.append(f"stage-1 training: {train['steps']} steps, {train['wall_time_s']:.0f} s")
    seeds = metrics.get("seeds")
    if seeds:
        lines.append(f"background threshold: {seeds['bg_threshold']:.2f}")
        lines.append(f"{'split':10s} {'seed mIoU':>10s} {'images':>7s}")
        for split, res in seeds.items():
            if isinstance(res, dict) and "miou" in res:
                lines.append(f"{split:10s} {res['miou']:10.1f} {res['images']:7d}")
    return "\n".join(lines)
