"""Training a network on label PNGs with the shared Trainer: IRN's boundary net, AffinityNet and
the DeepLab all learn from per-pixel labels of one split, through one data path and one loop."""

from __future__ import annotations

from pathlib import Path

from plda.utils.dist import is_main_process


def train_on_masks(layout, model, net, opts, mask_dir: Path, out: Path, weights: Path, *,
                   split: str, resume: bool, dist, config_dict: dict, save=None) -> dict:
    """Train ``model`` (which wraps ``net``) with the shared Trainer on ``split``'s label PNGs in
    ``mask_dir`` (images from the dataset ``layout``; ``opts``: crop, scale, flip, train),
    checkpoints and logs in ``out`` (``config_dict``: the run's config, stored in each
    checkpoint); after an
    uninterrupted run rank 0 writes ``weights`` (``save(weights, net)`` if given, else the plain
    state dict). Returns the training summary. Used by every network trained on masks (IRN,
    AffinityNet, DeepLab), so they share one data path, one loop and one summary."""
    from plda.data.datasets import SegmentationDataset
    from plda.data.transforms import SegTransform
    from plda.engine.trainer import Trainer
    from plda.weights.io import save_state_dict_file

    transform = SegTransform(crop=opts.crop, scale=tuple(opts.scale), flip=opts.flip,
                             mean=tuple(net.input_mean), std=tuple(net.input_std))
    dataset = SegmentationDataset(layout, split, transform, mask_dir=mask_dir,
                                  seed=opts.train.seed)
    result = Trainer(model, dataset, opts.train, out, dist=dist,
                     config_dict=config_dict).fit(resume=resume)
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


__all__ = ["train_on_masks"]
