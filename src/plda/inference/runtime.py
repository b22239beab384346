"""What every inference path shares (CAMs, segmentation, classification scores): image sizes
per scale and under a memory cap, resizing, the precision context, eval mode and the input
normalisation a model expects."""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from plda.errors import ConfigError
from plda.models.fastpath import resolve_amp

AMP_MODES = ("none", "bf16", "fp16")


def scaled_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """``(round(H·s), round(W·s))`` with Python's ``round``, as SEAM's ``VOC12ClsDatasetMSF``."""
    return max(1, round(height * scale)), max(1, round(width * scale))


def resize_image(images: Tensor, size: tuple[int, int]) -> Tensor:
    """Resize normalised images ``(B, 3, H, W)`` to ``size`` (bilinear, antialiased)."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=True)


def working_size(height: int, width: int, max_side: int | None) -> tuple[int, int]:
    """The size an image is processed at: itself, or scaled so its longer side is
    ``max_side`` (aspect kept) when it is longer than that."""
    if max_side is None or max(height, width) <= max_side:
        return height, width
    f = max_side / max(height, width)
    return max(1, round(height * f)), max(1, round(width * f))


def check_amp(amp: str) -> None:
    if amp not in AMP_MODES:
        raise ConfigError(f"amp={amp!r}: expected one of {', '.join(AMP_MODES)}")


def autocast(device: torch.device, amp: str, setting: str = "amp"):
    """Autocast for ``amp``; bf16 on a CPU without bf16 instructions runs fp32 (one warning).
    One context around all of an image's passes: autocast then casts each weight once."""
    check_amp(amp)
    amp = resolve_amp(amp, device, setting)
    if amp == "none":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


def input_stats(model: nn.Module) -> tuple[Sequence[float], Sequence[float]]:
    """The normalisation the model's backbone expects (ImageNet statistics by default)."""
    from plda.data.transforms import IMAGENET_MEAN, IMAGENET_STD

    for holder in (getattr(model, "backbone", None), model):
        if holder is not None and hasattr(holder, "input_mean"):
            return holder.input_mean, holder.input_std
    return IMAGENET_MEAN, IMAGENET_STD
