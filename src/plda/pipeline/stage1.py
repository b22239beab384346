"""Stage 1: train the image-level classifier (CAM / SEAM / SEAM+PLDA)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from plda.config.schema import RunConfig
from plda.methods.build import build_stage1_model
from plda.runfolder import (STAGE1_WEIGHTS, load_layout, run_dir, stored_config, update_metrics,
                            write_run_config)
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


class CamOverlayCallback:
    """Every ``train.vis_every`` steps: the first image of the batch with the CAM of each of
    its classes, written to ``<run_dir>/vis/step_XXXXXXXX.png`` (rank 0)."""

    def __init__(self, out_dir: Path, class_names: list[str], mean, std, max_classes: int = 3):
        self.out_dir = Path(out_dir)
        self.class_names = class_names
        self.mean, self.std = mean, std
        self.max_classes = max_classes

    def on_visualise(self, step: int, model, batch: dict) -> None:
        import torch.nn.functional as F

        from plda.data.transforms import denormalize
        from plda.vis.overlay import cam_overlay, save_panel

        module = getattr(model, "module", model)
        image = batch["image"][:1]
        was_training = module.training
        module.eval()
        try:
            cam = module.cams(image).cam
        finally:
            module.train(was_training)
        cam = F.interpolate(cam.float(), size=image.shape[-2:], mode="bilinear",
                            align_corners=False)[0].relu()
        rgb = denormalize(image[0].float().cpu(), self.mean, self.std).clamp(0, 255)
        rgb = rgb.permute(1, 2, 0).numpy().astype(np.uint8)
        panels = [("image", rgb)]
        present = batch["label"][0].nonzero().flatten().tolist()[: self.max_classes]
        for c in present:
            m = cam[c].cpu().numpy()
            m = m / (m.max() + 1e-5)
            panels.append((self.class_names[c + 1], cam_overlay(rgb, m)))
        save_panel(self.out_dir / f"step_{step:08d}.png", panels)


def train_stage1(cfg: RunConfig, *, resume: bool = False, dist=None) -> dict:
    """Train the stage-1 classifier of ``cfg`` in ``cfg.run_dir``; return its summary.

    Writes ``config.yaml``, ``checkpoints/``, ``logs/train.jsonl``, ``vis/`` and, at the end,
    the model weights ``stage1.safetensors`` (rank 0). Under ``torchrun`` every rank calls it.
    """
    from plda.data.datasets import ClassificationDataset
    from plda.data.transforms import Stage1Transform
    from plda.engine.distributed import init_distributed
    from plda.engine.trainer import Trainer
    from plda.utils.io import clean_stale_temporaries
    from plda.weights.io import save_state_dict_file

    dist = dist if dist is not None else init_distributed()
    out = run_dir(cfg)
    if is_main_process():
        # Temporaries of files a killed run was writing (weights, metrics, config, panels).
        clean_stale_temporaries(out, [STAGE1_WEIGHTS, "metrics.json", "config.yaml",
                                      "train_config.json"])
        clean_stale_temporaries(out / "vis")
    write_run_config(cfg)
    layout = load_layout(cfg)
    verify_data(cfg, layout)  # every image and mask, before hours of training
    model = build_stage1_model(cfg, layout.num_classes)
    from plda.engine.memory import check_training_memory

    # Refuse a crop / batch that cannot fit before any training (an estimate, module doc).
    check_training_memory(model.to(dist.device), layout.num_classes, cfg.data.crop,
                          cfg.train.local_batch_size(dist.world_size), dist.device)
    backbone = model.backbone
    transform = Stage1Transform(resize_long=tuple(cfg.data.resize_long), crop=cfg.data.crop,
                                flip=cfg.data.flip, jitter=tuple(cfg.data.color_jitter),
                                mean=tuple(backbone.input_mean), std=tuple(backbone.input_std))
    dataset = ClassificationDataset(layout, cfg.data.train_split, transform, seed=cfg.train.seed)
    callbacks = []
    if cfg.train.vis_every > 0:
        callbacks.append(CamOverlayCallback(out / "vis", layout.class_names,
                                            backbone.input_mean, backbone.input_std))
    trainer = Trainer(model, dataset, cfg.train, out, dist=dist, callbacks=callbacks,
                      config_dict=stored_config(cfg))
    result = trainer.fit(resume=resume)
    summary = {"steps": result.step, "total_steps": result.total_steps,
               "interrupted": result.interrupted, "wall_time_s": result.wall_time_s,
               "images": len(dataset), "final": {k: v for k, v in (result.metrics or {}).items()
                                                 if isinstance(v, (int, float))}}
    if not result.interrupted and is_main_process():
        save_state_dict_file(out / STAGE1_WEIGHTS, {k: v.detach().cpu() for k, v in
                                                    getattr(trainer.model, "module", trainer.model)
                                                    .state_dict().items()})
        update_metrics(cfg, "train", summary)
    return summary
