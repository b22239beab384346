"""The run folder: where a run's files live, the dataset it reads (``data.root``, or the
built-in synthetic set generated inside it), how its config and metrics are written, and how
its records read in words. Every step, the pipeline and the report share these."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from plda.config.loader import save_config
from plda.config.schema import RunConfig
from plda.errors import DataError
from plda.utils.dist import is_main_process

STAGE1_WEIGHTS = "stage1.safetensors"


def run_dir(cfg: RunConfig) -> Path:
    return Path(cfg.run_dir)


def write_run_config(cfg: RunConfig) -> Path:
    """Write the resolved config to ``<run_dir>/config.yaml`` (rank 0), with ``run_dir: .``:
    paths stored in a run folder are relative to it, so a copy is a run of its own and a moved
    run stays current (``plda.config.load_run_folder_config`` reads it back)."""
    from dataclasses import replace

    from plda.config import HERE

    path = run_dir(cfg) / "config.yaml"
    if is_main_process():
        save_config(replace(cfg, run_dir=HERE), path)
    return path


def stored_path(cfg: RunConfig, path: str | Path) -> str:
    """``path`` as recorded inside the run folder: relative to it when it lies inside (so the
    record survives a copy or a move of the folder), else absolute."""
    path = Path(path).resolve()
    try:
        return path.relative_to(run_dir(cfg).resolve()).as_posix()
    except ValueError:
        return str(path)


def update_metrics(cfg: RunConfig, section: str, values: dict) -> dict:
    """Merge ``values`` under ``section`` of ``<run_dir>/metrics.json`` (rank 0, atomic)."""
    from plda.utils.io import atomic_write_json

    path = run_dir(cfg) / "metrics.json"
    data = {}
    if path.is_file():
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError:
            data = {}
    data[section] = values
    if is_main_process():
        atomic_write_json(path, data)
    return data


def tuning_text(seeds: dict) -> str:
    """How the seeds' background threshold was chosen, in words (``metrics.json`` seeds)."""
    tuning = seeds.get("tuning") if isinstance(seeds.get("tuning"), dict) else None
    sweep = seeds.get("sweep") if isinstance(seeds.get("sweep"), dict) else None
    if tuning is None:  # runs recorded before the tuning record existed
        return f"the best of the sweep on {sweep['split']}" if sweep else "set"
    how = tuning.get("how")
    if how == "set":
        return "set by cam.bg_threshold"
    if how == "label-free":
        return (f"chosen without labels: rule {tuning.get('rule')} on the CAMs of "
                f"{tuning.get('split')}, no masks to tune on")
    if how == "held-out sweep":
        return (f"the best of the sweep on {tuning.get('images')} masked images of "
                f"{tuning.get('split')}; that split is scored on its other "
                f"{len(tuning.get('scored_ids') or [])} masked images")
    images, total = tuning.get("images"), tuning.get("images_in_split")
    masks = "" if images == total else f", the {images} of {total} images with masks"
    return f"the best of the sweep on {tuning.get('split')}{masks}"


def dataset_root(cfg: RunConfig, generate: bool = True) -> Path:
    """The dataset folder. ``data.root == "synth"`` means the built-in synthetic dataset in
    ``<run_dir>/data``, generated (rank 0) unless an identical one is already there."""
    if cfg.data.root != "synth":
        root = Path(cfg.data.root).expanduser()
        if not root.is_dir():
            raise DataError(f"data.root {str(root)!r} is not a folder; expected a dataset in VOC "
                            "layout (JPEGImages/, ImageSets/Segmentation/) or 'synth' (make one "
                            "from tagged photos with 'plda prepare folder PHOTOS --tags tags.csv "
                            f"--out {root}')")
        return root
    root = run_dir(cfg) / "data"
    if generate and is_main_process() and not _synth_is_current(root, cfg):
        from plda.data.synth import generate_synthetic

        generate_synthetic(root, **asdict(cfg.data.synth))
    if generate:
        from plda.engine.distributed import barrier

        barrier()
    return root


def _synth_is_current(root: Path, cfg: RunConfig) -> bool:
    meta = root / "synth.json"
    if not (meta.is_file() and (root / "ImageSets/Segmentation/val.txt").is_file()
            and (root / "image_labels.json").is_file()):
        return False
    try:
        saved = json.loads(meta.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return all(saved.get(k) == v for k, v in asdict(cfg.data.synth).items())


def load_layout(cfg: RunConfig, generate: bool = True):
    from plda.data.layout import DatasetLayout

    return DatasetLayout(dataset_root(cfg, generate=generate))
