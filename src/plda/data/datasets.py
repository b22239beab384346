"""torch Datasets over a :class:`~plda.data.layout.DatasetLayout`.

Augmentation is reproducible whatever the number of DataLoader workers or DDP ranks: sample
``index`` of epoch ``e`` draws all its randomness from ``np.random.default_rng([seed, e, index])``.
Call :meth:`set_epoch` before iterating each epoch (with ``persistent_workers=False``, the
default, workers receive a fresh copy of the dataset, epoch included, at every epoch).
Batches are dicts; ``torch.utils.data.default_collate`` stacks them and turns string ids into
lists. Variable-size samples (:class:`ImageDataset`) use :func:`list_collate`.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from plda.data.layout import DatasetLayout
from plda.data.transforms import EvalTransform
from plda.errors import DataError
from plda.utils.io import check_id


def as_layout(layout: DatasetLayout | str | os.PathLike) -> DatasetLayout:
    return layout if isinstance(layout, DatasetLayout) else DatasetLayout(layout)


class LayoutDataset(Dataset):
    """Common part: the ids of a split (or an explicit id list), seeding and epochs."""

    def __init__(self, layout: DatasetLayout | str | os.PathLike, split: str | Sequence[str],
                 seed: int = 0):
        self.layout = as_layout(layout)
        self.ids = (self.layout.ids(split) if isinstance(split, str)
                    else [check_id(i, "id list") for i in split])
        self.seed = int(seed)
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.ids)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def rng(self, index: int) -> np.random.Generator:
        """The generator of sample ``index`` in the current epoch."""
        return np.random.default_rng([self.seed, self.epoch, int(index)])

    def _labels_tensor(self, image_id: str) -> torch.Tensor:
        return torch.tensor(self.layout.labels(image_id))

    def _check_files(self, mask_dir: str | os.PathLike | None = None, masks: bool = False) -> None:
        """Fail before training, not hours into it, when an id has no image (or no mask).

        One ``stat`` per file: cheap next to an epoch; corrupt contents are still only found
        when a sample is decoded.
        """
        missing_images, missing_masks = [], []
        for image_id in self.ids:
            try:
                self.layout.image_path(image_id)
            except DataError:
                missing_images.append(image_id)
            if masks:
                if mask_dir is None:
                    found = self.layout.mask_path(image_id) is not None
                else:
                    found = (Path(mask_dir) / f"{image_id}.png").is_file()
                if not found:
                    missing_masks.append(image_id)
        if missing_images:
            raise DataError(f"{_few(missing_images)} of the {len(self.ids)} ids have no image in "
                            f"{self.layout.root / 'JPEGImages'} (expected <id>.jpg, .jpeg, .png, "
                            ".bmp or .webp, in any letter case)")
        if missing_masks:
            where = mask_dir if mask_dir is not None else self.layout.mask_dir
            raise DataError(f"{_few(missing_masks)} of the {len(self.ids)} ids have no mask "
                            f"<id>.png in {where}")


def _few(ids: Sequence[str], limit: int = 5) -> str:
    """``"3 ('a', 'b', 'c')"``: a count and the first few ids, for messages about many files."""
    shown = ", ".join(repr(i) for i in ids[:limit])
    return f"{len(ids)} ({shown}{', ...' if len(ids) > limit else ''})"


class ClassificationDataset(LayoutDataset):
    """Images with image-level labels: ``{"image": (3, H, W), "label": (C,), "id": str}``.

    ``transform(image, rng=...)`` maps a PIL image to a tensor
    (:class:`~plda.data.transforms.Stage1Transform` for training). Labels from json or XML and
    the images' existence are checked up front, so a missing image or a bad label fails before
    training starts.

    An image whose label list is empty is kept, with one warning counting such images: it is
    a legitimate background-only example (``plda prepare coco --keep-empty`` writes them on
    purpose, and its CAM file simply holds no planes), but an accidental empty list should not
    pass unnoticed.
    """

    def __init__(self, layout, split, transform: Callable | None = None, seed: int = 0):
        super().__init__(layout, split, seed)
        self.transform = transform or EvalTransform()
        self._check_files()
        if self.layout.label_source != "masks":
            empty = [i for i in self.ids if not self.layout.labels(i).any()]
            if empty:
                warnings.warn(f"{_few(empty)} of the {len(self.ids)} images have an empty label "
                              f"list in {self.layout.root}: they are used as background-only "
                              "examples", stacklevel=2)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image_id = self.ids[index]
        image = self.transform(self.layout.load_image(image_id), rng=self.rng(index))
        return {"image": image, "label": self._labels_tensor(image_id), "id": image_id}


class SegmentationDataset(LayoutDataset):
    """Images with masks: ``{"image": (3, H, W), "mask": LongTensor (H, W), "id": str}``.

    ``mask_dir`` reads ``<mask_dir>/<id>.png`` (pseudo masks for stage 2) instead of the
    ground truth. ``transform(image, mask, rng=...)``: :class:`SegTransform` for training,
    :class:`EvalTransform` (the default) for evaluation. 255 marks ignored pixels.
    """

    def __init__(self, layout, split, transform: Callable | None = None,
                 mask_dir: str | os.PathLike | None = None, seed: int = 0):
        super().__init__(layout, split, seed)
        self.transform = transform or EvalTransform()
        self.mask_dir = mask_dir
        if mask_dir is None and not self.layout.has_masks:
            raise DataError(f"{self.layout.root}: no SegmentationClassAug/ or SegmentationClass/ "
                            "folder; pass mask_dir to train on pseudo masks")
        if mask_dir is not None and not os.path.isdir(mask_dir):
            raise DataError(f"mask folder {mask_dir} not found")
        self._check_files(mask_dir, masks=True)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image_id = self.ids[index]
        image = self.layout.load_image(image_id)
        mask = self.layout.load_mask(image_id, self.mask_dir)
        image, mask = self.transform(image, mask, rng=self.rng(index))
        return {"image": image, "mask": mask, "id": image_id}


class ImageDataset(LayoutDataset):
    """Whole images for inference: ``{"image": uint8 (H, W, 3), "id": str, "size": (H, W)}``,
    plus ``"label"`` ``(C,)`` with ``with_labels=True``. Batch with :func:`list_collate`."""

    def __init__(self, layout, split, with_labels: bool = False):
        super().__init__(layout, split)
        self.with_labels = with_labels

    def __getitem__(self, index: int) -> dict[str, Any]:
        image_id = self.ids[index]
        image = np.asarray(self.layout.load_image(image_id))
        sample = {"image": image, "id": image_id, "size": image.shape[:2]}
        if self.with_labels:
            sample["label"] = self._labels_tensor(image_id)
        return sample


def list_collate(batch: list[dict[str, Any]]) -> dict[str, list]:
    """Collate dict samples into a dict of lists, without stacking (variable sizes)."""
    return {key: [sample[key] for sample in batch] for key in batch[0]}
