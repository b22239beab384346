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


class ClassificationDataset(LayoutDataset):
    """Images with image-level labels: ``{"image": (3, H, W), "label": (C,), "id": str}``.

    ``transform(image, rng=...)`` maps a PIL image to a tensor
    (:class:`~plda.data.transforms.Stage1Transform` for training). Labels from json or XML are
    read up front, so a missing or bad label fails before training starts.
    """

    def __init__(self, layout, split, transform: Callable | None = None, seed: int = 0):
        super().__init__(layout, split, seed)
        self.transform = transform or EvalTransform()
        if self.layout.label_source != "masks":
            for image_id in self.ids:
                self.layout.labels(image_id)

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
