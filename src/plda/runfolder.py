"""The run folder: where a run's files live, the dataset it reads (``data.root``, or the
built-in synthetic set generated inside it), how its config and metrics are written, and how
its records read in words, and which weights its outputs were made from. Every step, the pipeline
and the report share these."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from plda.config.loader import save_config
from plda.config.schema import RunConfig
from plda.errors import DataError
from plda.methods.build import STAGE1_WEIGHTS
from plda.utils.dist import is_main_process



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


def stored_config(cfg: RunConfig) -> dict:
    """The config as checkpoints of the run store it: a plain dict with ``run_dir: .``."""
    from plda.config import HERE
    from plda.config.loader import to_dict

    return {**to_dict(cfg), "run_dir": HERE}


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


def file_sha256(path: str | Path) -> str | None:
    """Hex SHA-256 of a file's bytes (``None`` when there is no such file): outputs record
    the digest of the weights they came from, so retrained weights make them stale."""
    import hashlib

    path = Path(path)
    if not path.is_file():
        return None
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def drop_stale_outputs(folder: Path, source: dict, pattern: str,
                       marker: Path | None = None) -> bool:
    """Delete the ``pattern`` files of ``folder`` unless the JSON ``marker`` (default
    ``folder/source.json``) records the same ``source`` (weights digest and settings); then
    record ``source``. Resumable steps skip files that exist, so outputs of other weights or
    settings must go first (rank 0, before the others start). Returns whether files were kept."""
    from plda.utils.io import atomic_write_json

    marker = Path(marker) if marker is not None else Path(folder) / "source.json"
    if marker.is_file():
        try:
            if json.loads(marker.read_text()) == source:
                return True
        except (json.JSONDecodeError, UnicodeDecodeError):
            pass
    for f in Path(folder).glob(pattern):
        f.unlink()
    atomic_write_json(marker, source)
    return False


def background_threshold(cfg: RunConfig) -> float:
    """``cam.bg_threshold``, else the one the seed sweep chose (``metrics.json``)."""
    if cfg.cam.bg_threshold is not None:
        return float(cfg.cam.bg_threshold)
    path = run_dir(cfg) / "metrics.json"
    try:
        return float(json.loads(path.read_text())["seeds"]["bg_threshold"])
    except (OSError, ValueError, KeyError, TypeError):
        raise DataError(f"no background threshold: set cam.bg_threshold or run 'plda seeds' "
                        f"first (it records the sweep's choice in {path})") from None


# ------------------------------------------------------------------ what each stage leaves

STAGES = ("data", "train", "cam", "seeds", "refine", "seg_train", "seg_eval", "report")


@dataclass(frozen=True)
class StageFiles:
    """What one pipeline stage leaves in the run folder: ``outputs`` (entries removed when its
    settings change), ``metrics`` (``metrics.json`` sections it writes, dropped with them),
    ``marker`` (the entry whose presence says it finished; None: nothing to check), ``labels``
    (its folder of label PNGs, for the report) and ``logs`` (``(metrics section, log folder,
    title)`` of each network it trains)."""

    title: str
    outputs: tuple[str, ...] = ()
    metrics: tuple[str, ...] = ()
    marker: str | None = None
    labels: str | None = None
    logs: tuple[tuple[str, str, str], ...] = ()


def stage_files(stage: str) -> StageFiles:
    """The :class:`StageFiles` of ``stage``; refinement's come from every registered refiner
    (a change of method removes the old refiner's folder too)."""
    if stage == "refine":
        from plda.registry import REFINERS

        refiners = [REFINERS.get(name).obj for name in REFINERS.names()]
        return StageFiles(
            "pseudo masks",
            outputs=(*dict.fromkeys(r.folder for r in refiners if r.folder), "pseudo"),
            metrics=("pseudo", *dict.fromkeys(r.train_section for r in refiners
                                              if r.train_section)),
            marker="pseudo", labels="pseudo",
            logs=tuple((r.train_section, r.folder, r.title) for r in refiners
                       if r.train_section and r.folder))
    if stage == "seg_train":
        from plda.segmentation.models import SEG_DIR, SEG_WEIGHTS

        return StageFiles("segmentation net (stage 2)", outputs=(SEG_DIR,),
                          metrics=("seg_train",), marker=f"{SEG_DIR}/{SEG_WEIGHTS}",
                          logs=(("seg_train", SEG_DIR, "segmentation net (stage 2)"),))
    if stage not in _FIXED_STAGE_FILES:
        from plda.errors import ConfigError

        raise ConfigError(f"unknown stage {stage!r}; stages are {', '.join(STAGES)}")
    return _FIXED_STAGE_FILES[stage]


_FIXED_STAGE_FILES = {
    # a generated synthetic set checks its own parameters (dataset_root)
    "data": StageFiles("data"),
    "train": StageFiles("stage 1 (classifier)",
                        outputs=("checkpoints", "logs", "vis", STAGE1_WEIGHTS,
                                 "train_config.json"),
                        metrics=("train",), marker=STAGE1_WEIGHTS,
                        logs=(("train", ".", "stage 1 (classifier)"),)),
    "cam": StageFiles("CAMs", outputs=("cams",), metrics=("cam", "classification"),
                      marker="cams"),
    "seeds": StageFiles("CAM seeds", outputs=("seeds",), metrics=("seeds",), marker="seeds",
                        labels="seeds"),
    "seg_eval": StageFiles("segmentation", outputs=("seg",), metrics=("seg",), marker="seg",
                           labels="seg"),
    "report": StageFiles("report", outputs=("report.html",), marker="report.html"),
}
