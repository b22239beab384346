"""``plda segment train``: stage 2, the DeepLab network trained on the pseudo masks.

Inputs: the run folder's pseudo masks of ``seg.train_split`` (``seg.mask_dir``, by default
``<run_dir>/pseudo/train`` from ``plda refine``). Outputs in ``<run_dir>/deeplab/``:
``checkpoints/``, ``logs/train.jsonl``, ``train_config.json`` and, once training finishes,
``segmentation.safetensors`` (self-describing: arch, backbone, classes); the summary goes to
``metrics.json`` section ``seg_train``. An interrupted run continues with ``--resume``.
"""

from __future__ import annotations

from pathlib import Path

from plda.config.schema import RunConfig
from plda.errors import ConfigError, DataError
from plda.engine.masks import train_on_masks
from plda.runfolder import (load_layout, run_dir, stored_config, stored_path, update_metrics,
                            write_run_config)
from plda.segmentation.models import SEG_DIR, SEG_WEIGHTS
from plda.utils.dist import is_main_process


# seg.model.pretrained value: start the DeepLab backbone from the run's stage-1 classifier.
STAGE1_INIT = "stage1"


def seg_dir(cfg: RunConfig) -> Path:
    return run_dir(cfg) / SEG_DIR


def seg_weights_path(cfg: RunConfig) -> Path:
    return seg_dir(cfg) / SEG_WEIGHTS


def resolve_mask_dir(cfg: RunConfig) -> Path:
    """``seg.mask_dir`` as a path; a relative one is inside the run folder."""
    path = Path(cfg.seg.mask_dir).expanduser()
    return path if path.is_absolute() else run_dir(cfg) / path


def build_seg_net(cfg: RunConfig, num_classes: int, pretrained: bool = True):
    """The configured segmentation network; ``num_classes`` counts the background."""
    from plda.engine.seed import seeded
    from plda.segmentation.models import build_segmentation_net

    m = cfg.seg.model
    from_stage1 = m.pretrained == STAGE1_INIT
    if from_stage1 and m.backbone != cfg.model.backbone:
        raise ConfigError(f"seg.model.pretrained={STAGE1_INIT!r} needs the stage-1 backbone: "
                          f"seg.model.backbone={m.backbone!r} but model.backbone="
                          f"{cfg.model.backbone!r}")
    with seeded(cfg.seg.train.seed):  # the same initial head in every run of this config
        net = build_segmentation_net(m.arch, m.backbone, num_classes,
                                     output_stride=m.output_stride,
                                     pretrained=m.pretrained if pretrained and not from_stage1
                                     else None, frozen_bn=m.frozen_bn)
    if from_stage1 and pretrained:
        from plda.methods.build import load_stage1_model

        # The stage-1 classifier predicts the foreground classes only (no background plane).
        stage1 = load_stage1_model(cfg, num_classes - 1)
        net.backbone.load_state_dict(stage1.backbone.state_dict(), strict=True)
    return net


def train_segmentation(cfg: RunConfig, *, resume: bool = False, dist=None) -> dict:
    """Train the segmentation net of ``cfg`` on its pseudo masks; return the training summary.
    Under ``torchrun`` every rank calls it (rank 0 writes the files)."""
    from plda.engine.distributed import init_distributed
    from plda.segmentation.models import save_segmentation_net
    from plda.segmentation.training import SegmentationTrainModel

    dist = dist if dist is not None else init_distributed()
    mask_dir = resolve_mask_dir(cfg)
    if not mask_dir.is_dir():
        raise DataError(f"pseudo-mask folder {mask_dir} (seg.mask_dir={cfg.seg.mask_dir!r}) not "
                        f"found: run 'plda refine' first, or set seg.mask_dir to a folder of "
                        f"<id>.png label maps for split {cfg.seg.train_split!r}")
    # The resolved config (seg overrides included) goes to <run_dir>/config.yaml, as stage 1
    # does: 'plda segment train <run> --resume' and 'plda segment eval <run>' then see the
    # settings this training used.
    write_run_config(cfg)
    layout = load_layout(cfg, generate=False)
    class_names = layout.class_names
    net = build_seg_net(cfg, len(class_names))

    def save(path: Path, trained) -> None:
        save_segmentation_net(path, trained, class_names)

    from plda.engine.memory import check_training_memory, segmentation_probe

    model = SegmentationTrainModel(net)
    # Refuse a seg.crop / batch that cannot fit before any training (an estimate).
    check_training_memory(model.to(dist.device), len(class_names), cfg.seg.crop,
                          cfg.seg.train.local_batch_size(dist.world_size), dist.device,
                          what="seg.crop", probe_batch=segmentation_probe)
    summary = train_on_masks(load_layout(cfg, generate=False), model, net, cfg.seg, mask_dir,
                             seg_dir(cfg), seg_weights_path(cfg), split=cfg.seg.train_split,
                             resume=resume, dist=dist, config_dict=stored_config(cfg),
                             save=save)
    summary.update({"arch": net.arch, "backbone": net.backbone_name,
                    "weights": stored_path(cfg, seg_weights_path(cfg))})
    if not summary["interrupted"] and is_main_process():
        update_metrics(cfg, "seg_train", summary)
    return summary


__all__ = ["SEG_DIR", "SEG_WEIGHTS", "build_seg_net", "resolve_mask_dir", "seg_dir",
           "seg_weights_path", "train_segmentation"]
