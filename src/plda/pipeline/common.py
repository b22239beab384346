"""Pieces shared by the pipeline steps: the data check, the stage-1 model, training on masks
and the bookkeeping of outputs made from weights (the run folder and its dataset:
``plda.runfolder``)."""

from __future__ import annotations

import json
from pathlib import Path

from plda.config.loader import to_dict
from plda.config.schema import RunConfig
from plda.errors import ConfigError
from plda.runfolder import STAGE1_WEIGHTS, load_layout, run_dir
from plda.utils.dist import is_main_process


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


__all__ = ["build_stage1_model", "drop_stale_outputs", "file_sha256", "load_stage1_model",
           "train_on_masks", "verify_data"]
