"""Pieces shared by the pipeline steps: the run folder, the dataset, the stage-1 model."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from plda.config.loader import save_config, to_dict
from plda.config.schema import RunConfig
from plda.errors import ConfigError, DataError
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


def verify_data(cfg: RunConfig, layout) -> dict:
    """Check every image and mask of the splits the run uses (rank 0; remembered in the run
    folder, so a re-run checks only changed files): ``plda.data.check``."""
    from plda.data.check import check_dataset
    from plda.engine.distributed import barrier

    summary = {}
    if is_main_process():
        summary = check_dataset(layout, [cfg.data.train_split, *cfg.data.eval_splits],
                                cache_dir=run_dir(cfg))
    barrier()
    return summary


def build_stage1_model(cfg: RunConfig, num_classes: int, pretrained: bool = True):
    """Backbone + method head as configured, then ``model.init_from`` loaded over it;
    ``pretrained=False`` skips both (used when a trained checkpoint is loaded right after)."""
    from plda.engine.seed import seeded
    from plda.methods import build_method
    from plda.models.backbones import build_backbone

    with seeded(cfg.train.seed):  # the same initial weights in every run of this config
        backbone = build_backbone(cfg.model.backbone,
                                  pretrained=cfg.model.pretrained if pretrained else None,
                                  output_stride=cfg.model.output_stride,
                                  frozen_bn=cfg.model.frozen_bn)
        model = build_method(cfg.method, backbone, num_classes)
    if pretrained and cfg.model.init_from:
        from plda.methods.init_from import init_from

        report = init_from(model, cfg.model.init_from, strict=cfg.model.init_from_strict)
        if is_main_process():
            print(f"[train] {report.summary()}", flush=True)
    return model


def load_stage1_model(cfg: RunConfig, num_classes: int, weights: str | Path | None = None):
    """The trained stage-1 model of a run (``<run_dir>/stage1.safetensors``, else the latest
    training checkpoint), or the weights file given; eval mode."""
    from plda.weights.io import load_state_dict_file, state_dict_mismatch

    model = build_stage1_model(cfg, num_classes, pretrained=False)
    path = Path(weights) if weights else run_dir(cfg) / STAGE1_WEIGHTS
    if path.is_file():
        state = load_state_dict_file(path)
    else:
        from plda.engine.checkpoint import latest_checkpoint, load_checkpoint

        ckpt = latest_checkpoint(run_dir(cfg) / "checkpoints")
        if ckpt is None:
            raise ConfigError(f"no trained stage-1 model in {run_dir(cfg)}: expected "
                              f"{STAGE1_WEIGHTS} or checkpoints/ (run 'plda train' first)")
        state = load_checkpoint(ckpt)["model"]
    state = _maybe_convert_reference(state)
    problem = state_dict_mismatch(model.state_dict(), state)
    if problem:
        from plda.errors import WeightsError

        raise WeightsError(
            f"{path}: weights do not fit the configured model ({cfg.model.backbone}, "
            f"{cfg.method.name}, {num_classes} classes): {problem}")
    model.load_state_dict(state, strict=False)
    return model.eval()


def _maybe_convert_reference(state: dict) -> dict:
    """Accept the reference implementations' checkpoints (SEAM, usr922/plda key names) and ours
    from before PLDA's layers moved under ``plda.``."""
    if any(k.startswith(("backbone.", "head.", "classifier.")) for k in state):
        from plda.methods.plda import rename_legacy_keys

        return rename_legacy_keys(state)
    from plda.methods import convert_reference_state_dict

    return convert_reference_state_dict(state)


def train_on_masks(cfg: RunConfig, model, net, opts, mask_dir: Path, out: Path,
                   weights: Path, *, split: str, resume: bool, dist, save=None) -> dict:
    """Train ``model`` (which wraps ``net``) with the shared Trainer on ``split``'s label PNGs in
    ``mask_dir`` (``opts``: crop, scale, flip, train), checkpoints and logs in ``out``; after an
    uninterrupted run rank 0 writes ``weights`` (``save(weights, net)`` if given, else the plain
    state dict). Returns the training summary. Used by every network trained on masks (IRN,
    AffinityNet, DeepLab), so they share one data path, one loop and one summary."""
    from plda.data.datasets import SegmentationDataset
    from plda.data.transforms import SegTransform
    from plda.engine.trainer import Trainer
    from plda.weights.io import save_state_dict_file

    transform = SegTransform(crop=opts.crop, scale=tuple(opts.scale), flip=opts.flip,
                             mean=tuple(net.input_mean), std=tuple(net.input_std))
    dataset = SegmentationDataset(load_layout(cfg, generate=False), split, transform,
                                  mask_dir=mask_dir, seed=opts.train.seed)
    result = Trainer(model, dataset, opts.train, out, dist=dist,
                     config_dict={**to_dict(cfg), "run_dir": "."}).fit(resume=resume)
    if not result.interrupted and is_main_process():
        if save is not None:
            save(weights, net)
        else:
            save_state_dict_file(weights, {k: v.detach().cpu()
                                           for k, v in net.state_dict().items()})
    return {"steps": result.step, "total_steps": result.total_steps,
            "interrupted": result.interrupted, "wall_time_s": result.wall_time_s,
            "images": len(dataset),
            "final": {k: v for k, v in (result.metrics or {}).items()
                      if isinstance(v, (int, float))}}


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


__all__ = ["STAGE1_WEIGHTS", "build_stage1_model", "verify_data", "dataset_root", "drop_stale_outputs",
           "file_sha256", "load_layout", "load_stage1_model", "run_dir", "stored_path", "to_dict",
           "train_on_masks", "update_metrics", "write_run_config"]
