"""``plda run``: every pipeline stage in order, each cached by the config it depends on.

Stages: ``data`` (generate the synthetic set, or check the dataset folder) → ``train``
(stage-1 classifier) → ``cam`` (multi-scale CAMs) → ``seeds`` (background-threshold sweep,
seed label maps) → ``refine`` (pseudo masks) → ``seg_train`` (DeepLab on the pseudo masks) →
``seg_eval`` (multi-scale segmentation of the evaluation splits, scored) → ``report``
(``report.html``).

Caching. A stage's *fingerprint* is a digest of the config keys that change its outputs (not
of bookkeeping such as ``num_workers`` or ``log_every``) and of the fingerprint of the stage
before it, so a change reaches every later stage and no earlier one. ``<run_dir>/stages.json``
records, per stage, the fingerprint it was started with and whether it finished:

- finished with the same fingerprint and its outputs present → skipped;
- started with the same fingerprint but not finished (killed, Ctrl-C) → resumed: training from
  its last checkpoint, per-image steps from the files already written;
- recorded with another fingerprint → its outputs are removed (they belong to the old config)
  and the stage runs again.

Per-stage wall time goes to ``metrics.json`` (section ``pipeline``).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from plda.config.schema import RunConfig
from plda.errors import ConfigError
from plda.runfolder import STAGES, StageFiles, run_dir, stage_files, tuning_text, update_metrics
from plda.utils.dist import is_main_process

STAGES_FILE = "stages.json"
# Settings that change how a stage runs but not what it produces.
_BOOKKEEPING = {"num_workers", "log_every", "checkpoint_every", "keep_checkpoints", "vis_every",
                "find_unused_parameters", "step_in_backward"}


def _train_settings(train) -> dict:
    return {k: v for k, v in asdict(train).items() if k not in _BOOKKEEPING}


def _refine_settings(cfg: RunConfig) -> dict:
    from plda.refinement.base import build_refiner

    method = cfg.refine.method
    settings: dict[str, Any] = {"method": method, "splits": refine_splits(cfg)}
    refiner = build_refiner(cfg)
    values = refiner.settings()
    if values is not None:
        if isinstance(values.get("train"), dict):  # its training section, bookkeeping left out
            values["train"] = _train_settings(refiner.section().train)
        settings[method] = values
    return settings


def _method_settings(method) -> dict:
    """The method's settings with CPS's loss background resolved (``null`` means different
    things in and out of reference mode) and recorded only when it is not ``real``, the one
    behaviour runs had before the switch existed, so their fingerprints stay the same."""
    from plda.methods.config import cps_loss_background

    values = asdict(method)
    values["cps"].pop("loss_background", None)
    resolved = cps_loss_background(method)
    if resolved != "real":
        values["cps"]["loss_background"] = resolved
    return values


def _model_settings(model) -> dict:
    """The backbone settings, plus ``init_from`` (with the digest of the file it resolves to,
    so a re-trained baseline makes the run stale) only when set: runs made before the setting
    existed keep their fingerprints."""
    values = asdict(model)
    if not values.pop("dilate"):  # recorded only when off: earlier runs keep their prints
        values["dilate"] = False
    source, strict = values.pop("init_from"), values.pop("init_from_strict")
    if source:
        from plda.methods.init_from import file_digest

        values["init_from"] = {"source": source, "digest": file_digest(source), "strict": strict}
    return values


def _data_settings(cfg: RunConfig) -> dict:
    d = cfg.data
    return {"root": d.root, "synth": asdict(d.synth) if d.root == "synth" else None}


def _stage1_settings(cfg: RunConfig) -> dict:
    d = cfg.data
    return {"split": d.train_split, "resize_long": list(d.resize_long), "crop": d.crop,
            "flip": d.flip, "color_jitter": list(d.color_jitter),
            "model": _model_settings(cfg.model), "method": _method_settings(cfg.method),
            "train": _train_settings(cfg.train)}


def _cam_settings(cfg: RunConfig) -> dict:
    c = cfg.cam
    return {"splits": cam_splits(cfg), "scales": list(c.scales), "flip": c.flip,
            "amp": c.amp, "label_source": c.label_source,
            "score_threshold": c.score_threshold,
            # only when not the default: runs made before the switch keep their fingerprint
            **({"map": c.map} if c.map != "revised" else {}),
            **({"resize": c.resize} if c.resize != "tensor" else {}),
            # images above it only; recorded when not the default, as the two above
            **({"max_side": c.max_side} if c.max_side != 1024 else {})}


def _seeds_settings(cfg: RunConfig) -> dict:
    from plda.config.schema import LABEL_FREE_DEFAULT

    c = cfg.cam
    return {"bg_threshold": c.bg_threshold, "sweep": list(c.sweep),
            "sweep_split": c.sweep_split,
            # only when not the default: runs made before the setting keep their fingerprint
            **({"label_free": c.label_free} if c.label_free != LABEL_FREE_DEFAULT else {})}


def _seg_train_settings(cfg: RunConfig) -> dict:
    s = cfg.seg
    return {"model": asdict(s.model), "mask_dir": s.mask_dir, "split": s.train_split,
            "crop": s.crop, "scale": list(s.scale), "flip": s.flip,
            "train": _train_settings(s.train)}


def _seg_eval_settings(cfg: RunConfig) -> dict:
    s = cfg.seg
    return {"splits": list(s.eval_splits), "scales": list(s.scales), "flip": s.eval_flip,
            "crf": s.crf, "amp": s.amp}


def stage_settings(cfg: RunConfig, stage: str) -> dict:
    """The config values the outputs of ``stage`` depend on (besides earlier stages)."""
    return stage_record(stage).settings(cfg)


def cam_splits(cfg: RunConfig) -> list[str]:
    """Splits that need CAMs: the evaluation splits, the training split when IRN or AffinityNet
    learn from its CAMs, and the split DeepLab trains on (its pseudo masks come from CAMs)."""
    from plda.registry import REFINERS

    splits = [*cfg.data.eval_splits]
    if REFINERS.get(cfg.refine.method).obj.needs_train_cams:
        splits.append(cfg.data.train_split)
    splits.append(cfg.seg.train_split)
    splits += refine_splits(cfg)
    return list(dict.fromkeys(splits))


def fingerprints(cfg: RunConfig) -> dict[str, str]:
    """Each stage's fingerprint: its own settings chained with the previous stage's."""
    out, previous = {}, ""
    for stage in STAGES:
        blob = json.dumps({"stage": stage, "settings": stage_settings(cfg, stage),
                           "after": previous}, sort_keys=True, default=str)
        previous = out[stage] = hashlib.sha256(blob.encode()).hexdigest()[:16]
    return out


def stage_range(start: str | None, until: str | None) -> list[str]:
    for name in (start, until):
        if name is not None and name not in STAGES:
            raise ConfigError(f"unknown stage {name!r}; stages are {', '.join(STAGES)}")
    lo = STAGES.index(start) if start else 0
    hi = STAGES.index(until) if until else len(STAGES) - 1
    if lo > hi:
        raise ConfigError(f"--from {start} comes after --until {until}; stages run in the "
                          f"order {', '.join(STAGES)}")
    return list(STAGES[lo:hi + 1])


def read_stage_records(out: Path) -> dict[str, dict]:
    path = out / STAGES_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}  # a record we cannot read means "unknown": stages resume from their files
    return data if isinstance(data, dict) else {}


def _write_records(out: Path, records: dict) -> None:
    from plda.utils.io import atomic_write_json

    if is_main_process():
        atomic_write_json(out / STAGES_FILE, records)


def _remove_outputs(cfg: RunConfig, stage: str) -> list[str]:
    """Delete ``stage``'s outputs and metrics (rank 0); return what was removed."""
    out = run_dir(cfg)
    removed = []
    files = stage_record(stage).files
    for name in files.outputs:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
            removed.append(name + "/")
        elif path.exists():
            path.unlink()
            removed.append(name)
    metrics_path = out / "metrics.json"
    sections = files.metrics
    if metrics_path.is_file():
        try:
            data = json.loads(metrics_path.read_text())
        except json.JSONDecodeError:
            data = {}
        timing = data.get("pipeline") if isinstance(data.get("pipeline"), dict) else {}
        if any(s in data for s in sections) or stage in timing:
            from plda.utils.io import atomic_write_json

            kept = {k: v for k, v in data.items() if k not in sections}
            if stage in timing:  # the old outputs' time is not this run's
                kept["pipeline"] = {k: v for k, v in timing.items() if k != stage}
            atomic_write_json(metrics_path, kept)
    return removed


def _outputs_present(cfg: RunConfig, stage: str) -> bool:
    """Whether the file or folder that marks ``stage`` as finished is still there (a user may
    have deleted it by hand)."""
    marker = stage_record(stage).files.marker
    return marker is None or (run_dir(cfg) / marker).exists()


# ---------------------------------------------------------------------------------- stages

def _run_data(cfg: RunConfig, dist) -> None:
    from plda.pipeline.stage1 import verify_data
    from plda.runfolder import load_layout

    layout = load_layout(cfg)
    for split in {cfg.data.train_split, *cfg.data.eval_splits}:
        layout.ids(split)  # a missing or malformed list file fails here, not hours later
    verify_data(cfg, layout)  # and so does an unreadable image or a bad mask
    if is_main_process():
        coverage = mask_coverage(cfg, layout)
        update_metrics(cfg, "data", {"root": str(layout.root), "classes": layout.num_classes,
                                     "masks": coverage})
        print("[data] ground-truth masks: " + ", ".join(
            f"{split} {c['masked']} of {c['images']}" for split, c in coverage.items())
            + ("" if any(c["masked"] for c in coverage.values()) else
               " (none: nothing is scored, the background threshold is chosen without labels)"),
            flush=True)


def mask_coverage(cfg: RunConfig, layout) -> dict[str, dict[str, int]]:
    """Per split the run uses: how many images, how many with a ground-truth mask."""
    splits = dict.fromkeys([cfg.data.train_split, *cfg.data.eval_splits])
    return {s: {"images": len(layout.ids(s)), "masked": len(layout.masked_ids(s))}
            for s in splits}


def _run_train(cfg: RunConfig, dist) -> None:
    from plda.engine.checkpoint import latest_checkpoint
    from plda.pipeline.stage1 import train_stage1

    resume = latest_checkpoint(run_dir(cfg) / "checkpoints") is not None
    if train_stage1(cfg, resume=resume, dist=dist)["interrupted"]:
        raise KeyboardInterrupt


def _run_cam(cfg: RunConfig, dist) -> None:
    from plda.pipeline.cams import make_cams

    make_cams(cfg, cam_splits(cfg), dist=dist)


def _run_seeds(cfg: RunConfig, dist) -> None:
    from plda.engine.distributed import barrier
    from plda.pipeline.cams import make_seeds

    if is_main_process():
        make_seeds(cfg)
    barrier()


def _run_refine(cfg: RunConfig, dist) -> None:
    from plda.pipeline.refine import refine

    refine(cfg, splits=refine_splits(cfg), dist=dist)


def refine_splits(cfg: RunConfig) -> list[str]:
    """``refine.splits``, else the segmentation's training split and the evaluation splits."""
    if cfg.refine.splits is not None:
        return list(cfg.refine.splits)
    return list(dict.fromkeys([cfg.seg.train_split, *cfg.data.eval_splits]))


def _run_seg_train(cfg: RunConfig, dist) -> None:
    from plda.engine.checkpoint import latest_checkpoint
    from plda.pipeline.segment import seg_dir, train_segmentation

    resume = latest_checkpoint(seg_dir(cfg) / "checkpoints") is not None
    if train_segmentation(cfg, resume=resume, dist=dist)["interrupted"]:
        raise KeyboardInterrupt


def _run_seg_eval(cfg: RunConfig, dist) -> None:
    from plda.pipeline.segment_eval import evaluate_segmentation

    evaluate_segmentation(cfg, dist=dist)


def _run_report(cfg: RunConfig, dist) -> None:
    from plda.engine.distributed import barrier
    from plda.report import write_report

    if is_main_process():
        write_report(run_dir(cfg))
    barrier()


@dataclass(frozen=True)
class Stage:
    """One pipeline stage: the settings its fingerprint hashes, how it runs, and what it leaves
    in the run folder (:class:`plda.runfolder.StageFiles`)."""

    name: str
    settings: Callable[[RunConfig], dict]
    run: Callable[[RunConfig, Any], None]

    @property
    def files(self) -> StageFiles:
        return stage_files(self.name)


PIPELINE: tuple[Stage, ...] = (
    Stage("data", _data_settings, _run_data),
    Stage("train", _stage1_settings, _run_train),
    Stage("cam", _cam_settings, _run_cam),
    Stage("seeds", _seeds_settings, _run_seeds),
    Stage("refine", _refine_settings, _run_refine),
    Stage("seg_train", _seg_train_settings, _run_seg_train),
    Stage("seg_eval", _seg_eval_settings, _run_seg_eval),
    Stage("report", lambda cfg: {}, _run_report),
)
assert tuple(stage.name for stage in PIPELINE) == STAGES


def stage_record(stage: str) -> Stage:
    for record in PIPELINE:
        if record.name == stage:
            return record
    raise ConfigError(f"unknown stage {stage!r}; stages are {', '.join(STAGES)}")


def plan(cfg: RunConfig, stages: list[str] | None = None) -> dict[str, str]:
    """What ``run_pipeline`` would do with each stage: ``skip``, ``resume``, ``rerun``
    (settings changed: outputs removed first) or ``run``."""
    out = run_dir(cfg)
    records = read_stage_records(out)
    prints = fingerprints(cfg)
    actions = {}
    for stage in stages or STAGES:
        rec = records.get(stage)
        if rec is None:
            actions[stage] = "run"
        elif rec.get("fingerprint") != prints[stage]:
            actions[stage] = "rerun"
        elif rec.get("done") and _outputs_present(cfg, stage):
            actions[stage] = "skip"
        else:
            actions[stage] = "resume"
    return actions


def run_pipeline(cfg: RunConfig, *, start: str | None = None, until: str | None = None,
                 log: Callable[[str], None] | None = None) -> dict:
    """Run the stages of ``cfg`` from ``start`` to ``until`` (inclusive), skipping those whose
    outputs are current; return ``metrics.json``. Under torchrun every rank calls it.

    The report stage is re-written whenever any earlier stage ran in this call (it is cheap and
    shows them all). Holds the run folder's lock (:mod:`plda.utils.runlock`) throughout."""
    from plda.utils.malloc import tune_allocator
    from plda.utils.runlock import run_lock

    tune_allocator()  # freed activations reused, not mapped again each step (PLDA_MALLOC)
    with run_lock(run_dir(cfg)):
        return _run_pipeline(cfg, start=start, until=until, log=log)


def _run_pipeline(cfg: RunConfig, *, start: str | None, until: str | None,
                  log: Callable[[str], None] | None) -> dict:
    from plda.engine.distributed import barrier, broadcast_object, init_distributed
    from plda.runfolder import write_run_config

    dist = init_distributed()
    out = run_dir(cfg)
    stages = stage_range(start, until)
    say = log if log is not None else (print if is_main_process() else (lambda _: None))
    if is_main_process():
        out.mkdir(parents=True, exist_ok=True)
        write_run_config(cfg)
    actions = broadcast_object(plan(cfg, stages) if is_main_process() else None)
    prints = fingerprints(cfg)
    records = read_stage_records(out) if is_main_process() else {}
    timings: dict[str, float] = {}
    ran_any = False
    for stage in stages:
        action = actions[stage]
        if stage == "report" and action == "skip" and ran_any:
            action = "run"
        if action == "skip":
            say(f"[{stage}] up to date, skipped")
            continue
        if action == "rerun" and is_main_process():
            removed = _remove_outputs(cfg, stage)
            say(f"[{stage}] settings changed since the last run: removed "
                f"{', '.join(removed) or 'nothing'}; running again")
        else:
            say(f"[{stage}] {'resuming' if action == 'resume' else 'running'}")
        barrier()
        if is_main_process():
            records[stage] = {"fingerprint": prints[stage], "done": False,
                              "settings": stage_settings(cfg, stage)}
            _write_records(out, records)
        t0 = time.perf_counter()
        stage_record(stage).run(cfg, dist)
        timings[stage] = round(time.perf_counter() - t0, 3)
        ran_any = True
        if is_main_process():
            records[stage].update(done=True, seconds=timings[stage],
                                  finished=time.strftime("%Y-%m-%dT%H:%M:%S"))
            _write_records(out, records)
            # Recorded as each stage ends, so the report (the last stage) shows this run's time
            # of every stage that ran and no figure of an earlier run of a stage that re-ran.
            _record_timing(cfg, stage, timings[stage])
            say(f"[{stage}] done in {timings[stage]:.1f} s")
        barrier()
    path = out / "metrics.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _record_timing(cfg: RunConfig, stage: str, seconds: float) -> None:
    """Set ``stage``'s seconds in ``metrics.json`` section ``pipeline`` (kept in stage order)."""
    path = run_dir(cfg) / "metrics.json"
    previous: dict = {}
    if path.is_file():
        try:
            previous = json.loads(path.read_text()).get("pipeline", {}) or {}
        except (json.JSONDecodeError, AttributeError):
            previous = {}
    merged = {**previous, stage: seconds}
    order = {name: k for k, name in enumerate(STAGES)}
    update_metrics(cfg, "pipeline", dict(sorted(merged.items(),
                                                key=lambda kv: order.get(kv[0], len(order)))))


def _fmt(value, spec: str = "6.1f") -> str:
    width = int(spec.split(".")[0] or 0)
    return "-".rjust(width) if value is None else format(value, spec)


def format_metrics(metrics: dict) -> str:
    """mIoU of every scored stage per split, the threshold and the timings, as a table."""
    lines = []
    train = metrics.get("train")
    if train:
        lines.append(f"stage-1 training: {train['steps']} steps, {train['wall_time_s']:.0f} s")
    for split, res in (metrics.get("classification") or {}).items():
        lines.append(f"image-level classification on {split}: F1 {res['f1']:.2f} (score > "
                     f"{res.get('threshold', 0.5):g}), mAP {_fmt(res.get('map'), '.1f')} %, "
                     f"{res['images']} images")
    seeds = metrics.get("seeds")
    if seeds and "bg_threshold" in seeds:
        lines.append(f"background threshold: {seeds['bg_threshold']:.3g} ({tuning_text(seeds)})")
    rows = [("seeds", metrics.get("seeds")), ("pseudo masks", metrics.get("pseudo")),
            ("segmentation", metrics.get("seg"))]
    splits: list[str] = []
    for _, section in rows:
        for split, res in (section or {}).items():
            if isinstance(res, dict) and "miou" in res and split not in splits:
                splits.append(split)
    if splits:
        lines.append(f"{'mIoU (%)':14s} " + " ".join(f"{s:>8s}" for s in splits))
        for name, section in rows:
            if not section:
                continue
            cells = []
            for split in splits:
                res = section.get(split)
                cells.append(_fmt(res.get("miou") if isinstance(res, dict) else None, "8.1f"))
            lines.append(f"{name:14s} " + " ".join(cells))
        unscored: dict[str, list[str]] = {}
        for name, section in rows:
            for split in splits:
                res = (section or {}).get(split)
                if not isinstance(res, dict):
                    continue
                total, scored = res.get("images_total"), res.get("images")
                if res.get("miou") is None and res.get("reason"):
                    unscored.setdefault(res["reason"], []).append(f"{name} on {split}")
                elif isinstance(total, int) and isinstance(scored, int) and scored < total:
                    lines.append(f"{name} on {split}: scored on the {scored} of {total} images "
                                 "with masks")
        for reason, where in unscored.items():
            lines.append(f"not scored, {reason}: {', '.join(where)}")
        lines.append(
            "mIoU against the ground-truth masks (0-100, higher is better). seeds: the CAMs "
            "thresholded, with the true image labels; pseudo masks: the seeds refined, what the "
            "segmentation network trains on; segmentation: that network's own prediction, no "
            "labels given.")
    timing = metrics.get("pipeline")
    if timing:
        lines.append("stage seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in timing.items()))
    return "\n".join(lines)
