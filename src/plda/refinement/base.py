"""The refiner interface: CAMs (and seeds) -> pseudo masks.

A refiner is a class registered in :data:`plda.registry.REFINERS` that says

- what it needs from the run: the CAM files of the evaluation splits always, those of the
  training split too when ``needs_train_cams`` (it learns from them);
- how it trains, if it does: ``make_labels`` (rank 0) writes its training labels, ``train``
  fits a network and writes ``weights`` into its own folder ``folder``; its training summary
  goes to ``metrics.json`` section ``train_section`` (the report draws that log as ``title``);
- how it writes masks: ``mask(image_id, cam_path, image_path)`` returns one image's label map;
  ``sharded`` refiners (a network) split the images across ranks and run in this process
  after ``setup``; the others run on rank 0 over ``processes`` worker processes;
- what outputs and metrics it declares (``folder``, ``train_section``), which the pipeline
  removes when the stage's settings change and the report reads.

Settings: a built-in refiner with a config section of its own (``refine.irn``) reads it; a
refiner of one's own declares ``options`` (a dataclass) and reads ``refine.options``, checked
when the config is read. ``settings()`` is what its stage fingerprint hashes.

Adding a refiner is one module::

    @REFINERS.register("mine", description="...")
    class Mine(Refiner):
        def mask(self, image_id, cam_path, image_path): ...
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import ClassVar

import numpy as np

from plda.config.schema import RunConfig
from plda.errors import DataError
from plda.runfolder import run_dir
from plda.utils.io import safe_join


class Refiner:
    """Base of every refiner (module docstring). Instances are picklable (cfg only, until
    ``setup``), so rank-0 refiners can run in worker processes."""

    name: str = ""  # set to the registered name by build_refiner
    options: ClassVar[type | None] = None
    needs_train_cams: ClassVar[bool] = False
    folder: ClassVar[str | None] = None
    weights: ClassVar[str | None] = None
    train_section: ClassVar[str | None] = None
    title: ClassVar[str] = ""
    sharded: ClassVar[bool] = False
    processes: ClassVar[str | int] = 1  # worker processes on rank 0: a count, or "all" CPUs

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg

    # -- settings
    def section(self):
        """The refiner's settings: its own config section, else ``refine.options`` parsed by
        ``options`` (None when it has neither)."""
        own = getattr(self.cfg.refine, self.name, None)
        if own is not None:
            return own
        if self.options is not None:
            from plda.config.loader import from_dict

            return from_dict(self.options, self.cfg.refine.options, prefix="refine.options")
        return None

    def settings(self) -> dict | None:
        """What its outputs depend on (besides the seeds), for the stage fingerprint."""
        section = self.section()
        return None if section is None else dataclasses.asdict(section)

    # -- training
    @property
    def trains(self) -> bool:
        return self.weights is not None

    def out_dir(self) -> Path:
        if self.folder is None:
            raise DataError(f"refiner {self.name!r} declares no folder of its own")
        return run_dir(self.cfg) / self.folder

    def make_labels(self, *, workers: int | None = None) -> dict:
        """Rank 0: the training labels (skips finished files)."""
        return {}

    def train(self, *, resume: bool, dist) -> dict:
        """Fit the network on the labels; write ``out_dir() / weights``. Returns the trainer's
        summary (``interrupted`` among its keys)."""
        raise NotImplementedError(f"refiner {self.name!r} declares weights but no train()")

    # -- masks
    def setup(self, dist) -> None:
        """Before ``mask`` in this process (a sharded refiner loads its network here)."""

    def pseudo_info(self) -> dict:
        """Extra keys of ``metrics.json``'s ``pseudo`` section (thresholds it used)."""
        return {}

    def mask(self, image_id: str, cam_path: Path, image_path: Path) -> np.ndarray:
        """One image's pseudo mask: a uint8 label map at the CAMs' size (0 = background,
        class indices, 255 = ignore)."""
        raise NotImplementedError


class SeedScoreRefiner(Refiner):
    """A refiner of each image's seed scores alone: the background plane at the run's chosen
    threshold stacked on its CAMs (:func:`seed_scores`), with the image at the CAMs' size;
    subclasses implement :meth:`refine_scores`."""

    def setup(self, dist) -> None:
        from plda.runfolder import background_threshold

        self.threshold = background_threshold(self.cfg)

    def pseudo_info(self) -> dict:
        return {"bg_threshold": self.threshold}

    def mask(self, image_id: str, cam_path: Path, image_path: Path) -> np.ndarray:
        from plda.data.camfile import load_cams
        from plda.inference.seeds import load_image_for_cams

        probs, keys = seed_scores(cam_path, self.threshold)
        image = load_image_for_cams(image_path, load_cams(cam_path), cam_path)
        return self.refine_scores(image, probs, keys)

    def refine_scores(self, image: np.ndarray, probs: np.ndarray, keys: np.ndarray
                      ) -> np.ndarray:
        """The label map (uint8, label values ``keys``) of ``probs`` (planes, H, W) refined
        on ``image`` ((H, W, 3) uint8)."""
        raise NotImplementedError


def pending(cfg: RunConfig, split: str, ids: list[str], out: Path
            ) -> list[tuple[str, Path, Path]]:
    """``(id, output file, CAM file)`` of the images in ``ids`` whose output is not written
    yet; makes ``out``, removes its stale temporaries, and requires every needed CAM file."""
    from plda.inference.cams import clean_temporaries

    out.mkdir(parents=True, exist_ok=True)
    clean_temporaries(out, [f"{i}.png" for i in ids])
    todo = []
    for image_id in ids:
        target = safe_join(out, f"{image_id}.png")
        if target.is_file():
            continue
        cam_path = safe_join(run_dir(cfg) / "cams" / split, f"{image_id}.npz")
        if not cam_path.is_file():
            raise DataError(f"CAM file {cam_path} not found: run 'plda cam' for split "
                            f"{split!r} first")
        todo.append((image_id, target, cam_path))
    return todo


def resize_maps(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    return F.interpolate(torch.from_numpy(maps)[None], size=size, mode="bilinear",
                         align_corners=False)[0].numpy()


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    return np.ascontiguousarray(Image.fromarray(image).resize((size[1], size[0]),
                                                              Image.BILINEAR))


def resize_labels(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(labels).resize((size[1], size[0]), Image.NEAREST))


def seed_scores(cam_path: Path, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """An image's seed scores: the background plane (``threshold``) stacked on its CAMs, and
    the label value of each plane (0, then the CAM file's class keys)."""
    from plda.data.camfile import load_cams

    cam_file = load_cams(cam_path)
    cams = np.asarray(cam_file.cams, dtype=np.float32)
    probs = np.concatenate([np.full((1, *cams.shape[1:]), threshold, np.float32), cams])
    return probs, np.asarray([0, *cam_file.keys], dtype=np.int64)


def train_refiner_net(refiner: Refiner, model, net, opts, label_dir: Path, *, resume: bool,
                      dist) -> dict:
    """Train a refinement network (``model`` wraps ``net``) on the training split's label PNGs
    in ``label_dir`` (``opts``: crop, scale, flip, train) into ``refiner.out_dir()``."""
    from plda.engine.masks import train_on_masks
    from plda.runfolder import load_layout, stored_config

    cfg = refiner.cfg
    out = refiner.out_dir()
    return train_on_masks(load_layout(cfg, generate=False), model, net, opts, label_dir, out,
                          out / refiner.weights, split=cfg.data.train_split, resume=resume,
                          dist=dist, config_dict=stored_config(cfg))


def build_refiner(cfg: RunConfig, name: str | None = None) -> Refiner:
    """The refiner ``name`` (default ``refine.method``) for this run."""
    from plda.registry import REFINERS

    entry = REFINERS.get(name or cfg.refine.method)
    refiner = entry.build(cfg)
    if not isinstance(refiner, Refiner):
        raise DataError(f"refiner {entry.name!r} ({type(refiner).__name__}) is not a "
                        "plda.refinement.base.Refiner")
    refiner.name = entry.name
    return refiner


__all__ = ["Refiner", "SeedScoreRefiner", "build_refiner", "pending", "resize_image", "resize_labels",
           "resize_maps", "seed_scores", "train_refiner_net"]
