"""The stage-1 model of a run: built from its config (backbone, method head, ``init_from``), or
loaded with the run's trained weights (ours, or the reference implementations' checkpoints).
``cfg`` is the run's ``RunConfig``; this module reads its fields and imports nothing above the
methods."""

from __future__ import annotations

from pathlib import Path

from plda.errors import ConfigError
from plda.utils.dist import is_main_process

# The trained stage-1 model inside a run folder (``plda.runfolder`` lists the folder's files).
STAGE1_WEIGHTS = "stage1.safetensors"


def build_stage1_model(cfg, num_classes: int, pretrained: bool = True):
    """Backbone + method head as configured, then ``model.init_from`` loaded over it;
    ``pretrained=False`` skips both (used when a trained checkpoint is loaded right after)."""
    from plda.engine.seed import seeded
    from plda.methods import build_method
    from plda.models.backbones import build_backbone

    with seeded(cfg.train.seed):  # the same initial weights in every run of this config
        backbone = build_backbone(cfg.model.backbone,
                                  pretrained=cfg.model.pretrained if pretrained else None,
                                  output_stride=cfg.model.output_stride,
                                  frozen_bn=cfg.model.frozen_bn,
                                  **({} if cfg.model.dilate else {"dilate": False}))
        model = build_method(cfg.method, backbone, num_classes)
    if pretrained and cfg.model.init_from:
        from plda.methods.init_from import init_from

        report = init_from(model, cfg.model.init_from, strict=cfg.model.init_from_strict)
        if is_main_process():
            print(f"[train] {report.summary()}", flush=True)
    return model


def load_stage1_model(cfg, num_classes: int, weights: str | Path | None = None):
    """The trained stage-1 model of a run (``<run_dir>/stage1.safetensors``, else the latest
    training checkpoint), or the weights file given; eval mode."""
    from plda.weights.io import load_state_dict_file, state_dict_mismatch

    model = build_stage1_model(cfg, num_classes, pretrained=False)
    path = Path(weights) if weights else Path(cfg.run_dir) / STAGE1_WEIGHTS
    if path.is_file():
        state = load_state_dict_file(path)
    else:
        from plda.engine.checkpoint import latest_checkpoint, load_checkpoint

        ckpt = latest_checkpoint(Path(cfg.run_dir) / "checkpoints")
        if ckpt is None:
            raise ConfigError(f"no trained stage-1 model in {Path(cfg.run_dir)}: expected "
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


__all__ = ["STAGE1_WEIGHTS", "build_stage1_model", "load_stage1_model"]
