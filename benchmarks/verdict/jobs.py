"""The verdict's jobs: what each run is (method, overrides, the baseline a continue run starts
from), running it into its ``plda run`` folder and scoring it (``verdict.json``), carrying a
scratch run on through the chain, and keeping its files in the repository."""

from __future__ import annotations

import json
import time
from pathlib import Path

from benchmarks import plda_domains, voc12subset
from benchmarks.common import commit
from benchmarks.verdict.seedmaps import RESULT, SEED_MAPS, save_seed_maps

# Each baseline and the method that adds PLDA to it.
BASELINES = {"cam": "cam_plda", "seam": "seam_plda"}
METHODS = tuple(m for pair in BASELINES.items() for m in pair)
ARMS = ("scratch", "continue")
CHAIN = "chain.json"


def common_overrides(epochs: int, seed: int, amp: str) -> list[str]:
    return [f"train.epochs={epochs}", f"train.seed={seed}", f"train.amp={amp}", f"cam.amp={amp}"]


def baseline_of(method: str) -> str:
    """The baseline a method is (cam, seam) or adds PLDA to (cam_plda -> cam)."""
    return method if method in BASELINES else next(b for b, v in BASELINES.items()
                                                   if v == method)


def job_overrides(arm: str, method: str, seed: int, args) -> tuple[str, list[str]]:
    """(the method run, its overrides) of one job of ``arm``."""
    if arm == "scratch":
        return method, common_overrides(args.epochs, seed, args.amp)
    start = (getattr(args, "start_from", None) or args.out) / "scratch" / f"seed{seed}" / \
        baseline_of(method)
    return method, [*common_overrides(args.continue_epochs, seed, args.amp),
                    f"model.init_from={start}"]


def _stage1(run: Path):
    from plda.config import load_run_folder_config
    from plda.methods.build import load_stage1_model
    from plda.runfolder import load_layout

    cfg = load_run_folder_config(run)
    layout = load_layout(cfg, generate=False)
    return cfg, layout, load_stage1_model(cfg, layout.num_classes, run / "stage1.safetensors")


def cam_grid(model, crop: int) -> list[int]:
    """[h, w] of the CAM (the backbone's final level) for a ``crop`` x ``crop`` training image."""
    import torch

    backbone = model.backbone
    with torch.no_grad():
        levels = backbone.eval()(torch.zeros(1, 3, crop, crop))
    return [int(n) for n in levels[backbone.final_level].shape[-2:]]


def score_run(run: Path, row: dict, splits: list[str], amp: str, domain_images: int) -> dict:
    """``row`` (voc12subset's results row) plus classification, domain purity and the CAM grid;
    with ``val`` among ``splits`` the val seeds are kept as ``seeds_val.npz``."""
    from plda.evaluation.classification import evaluate_classification

    cfg, layout, model = _stage1(run)
    row["cam_grid"] = cam_grid(model, cfg.data.crop)
    if "val" in splits:
        save_seed_maps(run, "val")
    row["classification"] = {s: evaluate_classification(model, layout, s, amp=amp)
                             for s in splits}
    if domain_images:
        start = time.perf_counter()
        counts = plda_domains.run_domains(run, domain_images, 288, None)
        row["domains"] = {"counts": counts, "purity": plda_domains.purity(counts),
                          "seconds": time.perf_counter() - start}
    return row


def _begin(label: str) -> tuple[str | None, float]:
    """Announce a job; the commit it runs (HEAD may move while it trains) and its start."""
    print(f"== {label} ({time.strftime('%Y-%m-%d %H:%M:%S')})", flush=True)
    return commit(), time.perf_counter()


def _finish(result: Path, row: dict, began: tuple[str | None, float], **fields) -> dict:
    """``row`` with ``fields``, the commit and minutes of ``began`` and the time, written."""
    from plda.utils.io import atomic_write_json

    started_at, t0 = began
    row.update({**fields, "minutes": (time.perf_counter() - t0) / 60.0, "commit": started_at,
                "finished": time.strftime("%Y-%m-%dT%H:%M:%S")})
    atomic_write_json(result, row)
    return row


def run_job(arm: str, method: str, seed: int, args) -> dict:
    """One run (skipped when its verdict.json exists); its verdict row."""
    folder = args.out / arm / f"seed{seed}"
    run = folder / method
    result = run / RESULT
    if result.is_file():
        return json.loads(result.read_text())
    method, overrides = job_overrides(arm, method, seed, args)
    if arm == "continue":
        start = Path(overrides[-1].split("=", 1)[1])
        if not (start / "stage1.safetensors").is_file():
            print(f"   (waiting for {start}: its scratch run is not finished)", flush=True)
            return {}
    began = _begin(f"{arm} seed {seed} {method}")
    grid = getattr(args, "grid", "coarse")
    row = voc12subset.run_method(method, folder, args.data, [*overrides, *args.overrides],
                                 refine="none", seg=False, label_free=False, grid=grid)
    row = score_run(run, row, ["train", "val"], args.amp, args.domain_images)
    row = _finish(result, row, began, arm=arm, seed=seed, overrides=overrides, grid=grid)
    keep_result(run, getattr(args, "keep", None), args.out)
    return row


def keep_result(run: Path, keep: Path | None, out: Path) -> None:
    """Copy a finished run's ``verdict.json`` and ``seeds_val.npz`` to the same place under
    ``keep`` (the repository's results folder): what re-scoring and the summary need."""
    if keep is None:
        return
    from plda.utils.io import atomic_write_bytes

    target = keep / run.relative_to(out)
    for name in (RESULT, SEED_MAPS):
        if (run / name).is_file():
            atomic_write_bytes(target / name, (run / name).read_bytes())


def run_chain(method: str, seed: int, args) -> dict:
    """The scratch run of ``method`` and ``seed`` carried on to IRN masks and the DeepLab."""
    folder = args.out / "scratch" / f"seed{seed}"
    run = folder / method
    result = run / CHAIN
    if result.is_file():
        return json.loads(result.read_text())
    if not (run / RESULT).is_file():
        print(f"   (no finished scratch run at {run}: run the verdict first)", flush=True)
        return {}
    # The overrides the run was made with: any other value would change a stage's fingerprint
    # and retrain it.
    overrides = json.loads((run / RESULT).read_text())["overrides"]
    from plda.config import load_run_folder_config
    from plda.pipeline.run import plan

    data = Path(load_run_folder_config(run).data.root)  # as the run spelt it
    _, _, cfg = voc12subset.method_config(method, folder, data, [*overrides, *args.overrides])
    redo = {k: v for k, v in plan(cfg, ["data", "train", "cam", "seeds"]).items() if v != "skip"}
    if redo:
        raise SystemExit(f"{run}: the chain would not reuse the finished stages ({redo}): give "
                         "the overrides the verdict was run with (train.*, cam.*, data.*)")
    began = _begin(f"chain seed {seed} {method}")
    row = voc12subset.run_method(method, folder, data, [*overrides, *args.overrides],
                                 refine="irn", seg=True, label_free=False)
    keep = ("method", "bg_threshold", "train_miou_13", "train_miou_present", "val_miou_13",
            "val_miou_present", "refine", "refine_minutes", "seg_minutes")
    row = {k: v for k, v in row.items() if k in keep or k.startswith(("pseudo_train_",
                                                                          "seg_val_"))}
    return _finish(result, row, began, arm="scratch", seed=seed, overrides=overrides)
