"""The stage-2 training step: pixel-wise cross-entropy on pseudo masks, for the shared Trainer.

Logits are upsampled to the mask (bilinear) rather than masks shrunk to the logits, as SEAM's
segmentation code does: every labelled pixel of the crop counts. The loss is the sum over
labelled pixels divided by their number (at least one), so a crop whose pixels are all ignored
(255) contributes an exact, finite zero instead of the 0/0 = NaN of a plain mean, and the
Trainer's non-finite-loss guard only fires on real divergence.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from plda.errors import DataError

IGNORE_INDEX = 255


def segmentation_loss(logits: Tensor, mask: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Mean cross-entropy over the labelled pixels of ``logits`` (B, C, H, W) against ``mask``
    (B, H, W); 0 (with a graph) when no pixel is labelled."""
    summed = F.cross_entropy(logits.float(), mask, ignore_index=ignore_index, reduction="sum")
    labelled = (mask != ignore_index).sum().clamp(min=1)
    return summed / labelled


def check_mask_values(mask: Tensor, num_classes: int, ids=None,
                      ignore_index: int = IGNORE_INDEX) -> None:
    """Raise ``DataError`` naming the images whose masks hold a value that is neither a class
    (0..num_classes-1) nor ``ignore_index``: cross-entropy would fail on it with an opaque
    index error (or a device assert on GPU)."""
    bad = (mask != ignore_index) & ((mask < 0) | (mask >= num_classes))
    if not bool(bad.any()):
        return
    rows = bad.flatten(1).any(1).nonzero().flatten().tolist()
    names = [str(ids[i]) if ids is not None and i < len(ids) else f"batch index {i}"
             for i in rows]
    values = sorted(set(mask[bad].unique().tolist()))
    raise DataError(f"mask values {values[:10]} of image(s) {names[:10]} are out of range: "
                    f"expected 0..{num_classes - 1} or {ignore_index} (ignore) for a network with "
                    f"{num_classes} classes; check that the masks were made for this dataset")


class SegmentationTrainModel(nn.Module):
    """``net`` (a :class:`~plda.segmentation.models.SegmentationNet`) under the Trainer contract:
    ``forward(batch, progress)`` -> ``{"loss", "ce", "stat/pixel_acc", "stat/labelled"}`` for a
    batch ``{"image": (B, 3, H, W), "mask": (B, H, W) long, "id": [...]}``."""

    def __init__(self, net: nn.Module, ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        self.net = net
        self.ignore_index = ignore_index

    def parameter_groups(self) -> list[dict]:
        return self.net.parameter_groups()

    def forward(self, batch: dict, progress: float = 0.0) -> dict[str, Tensor]:
        image, mask = batch["image"], batch["mask"]
        if image.dim() != 4 or image.shape[1] != 3:
            raise DataError(f"batch['image'] has shape {tuple(image.shape)}; expected "
                            "(B, 3, H, W)")
        if mask.dim() != 3 or mask.shape[0] != image.shape[0]:
            raise DataError(f"batch['mask'] has shape {tuple(mask.shape)}; expected "
                            f"({image.shape[0]}, H, W) for images {tuple(image.shape)}")
        mask = mask.long()
        check_mask_values(mask, self.net.num_classes, batch.get("id"), self.ignore_index)
        logits = self.net(image)
        logits = F.interpolate(logits.float(), size=mask.shape[-2:], mode="bilinear",
                               align_corners=False)
        loss = segmentation_loss(logits, mask, self.ignore_index)
        with torch.no_grad():
            labelled = mask != self.ignore_index
            correct = ((logits.argmax(1) == mask) & labelled).sum()
            n = labelled.sum()
            accuracy = correct.float() / n.clamp(min=1).float()
            fraction = n.float() / labelled.numel()
        return {"loss": loss, "ce": loss.detach(), "stat/pixel_acc": accuracy,
                "stat/labelled": fraction}


__all__ = ["IGNORE_INDEX", "SegmentationTrainModel", "check_mask_values", "segmentation_loss"]
