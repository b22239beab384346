"""Training and evaluation transforms, seedable through an explicit ``numpy.random.Generator``.

:class:`Stage1Transform` reproduces the SEAM/PLDA classification pipeline (psa/SEAM ``imutils``
+ torchvision): random long-side resize (bicubic, ``PIL.Image.CUBIC`` in the reference),
horizontal flip, colour jitter, ImageNet normalisation, then a random crop that places a smaller
image at a random offset in a zero canvas — zero *after* normalising, i.e. the mean colour.
Unlike the reference, every random draw comes from the ``rng`` argument (never torch's or
Python's global generators), so a sample's augmentation depends only on its seed.

Random draws, in this order (the order is part of reproducibility):
``Stage1Transform``: long side, flip, jitter (order permutation, then brightness, contrast,
saturation, hue factors), crop offsets. ``SegTransform``: scale, flip, crop offsets.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def normalize(image: np.ndarray, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
    """``(H, W, 3) uint8`` → ``float32`` ``(x / 255 − mean) / std`` (the reference ``Normalize``)."""
    std = np.asarray(std, np.float32)
    out = np.asarray(image, dtype=np.float32) * (1.0 / (255.0 * std))
    out -= np.asarray(mean, np.float32) / std
    return out


def denormalize(image: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """Undo :func:`normalize` on ``(..., 3, H, W)`` tensors: RGB values in 0..255 (float)."""
    m = torch.as_tensor(mean, dtype=image.dtype, device=image.device).view(3, 1, 1)
    s = torch.as_tensor(std, dtype=image.dtype, device=image.device).view(3, 1, 1)
    return (image * s + m) * 255.0


def to_chw_tensor(arr: np.ndarray) -> torch.Tensor:
    """``(H, W, 3)`` float array → contiguous ``(3, H, W)`` ``FloatTensor``."""
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1), dtype=np.float32))


def resize_long(image, long_side: int):
    """Resize a PIL image so that its longer side is ``long_side`` (bicubic, aspect kept)."""
    from PIL import Image

    w, h = image.size
    # Python's round (half to even), exactly as the reference RandomResizeLong.
    size = (round(w * long_side / h), long_side) if w < h else (long_side, round(h * long_side / w))
    size = (max(1, size[0]), max(1, size[1]))
    return image.resize(size, resample=Image.BICUBIC)


def color_jitter(image, strength: tuple[float, float, float, float], rng: np.random.Generator):
    """torchvision ``ColorJitter(brightness, contrast, saturation, hue)`` with ``rng`` draws.

    As torchvision: the four adjustments are applied in a random order, factors uniform in
    ``[max(0, 1 − s), 1 + s]`` (hue: ``[−h, h]``); a zero strength skips that adjustment.
    All five draws happen regardless, so the stream does not depend on which are enabled.
    """
    import torchvision.transforms.functional as TF

    b, c, s, h = strength
    order = rng.permutation(4)
    factors = [rng.uniform(max(0.0, 1 - b), 1 + b), rng.uniform(max(0.0, 1 - c), 1 + c),
               rng.uniform(max(0.0, 1 - s), 1 + s), rng.uniform(-h, h)]
    ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    for k in order:
        if strength[k] > 0:
            image = ops[k](image, float(factors[k]))
    return image


def random_crop_box(height: int, width: int, crop: int, rng: np.random.Generator
                    ) -> tuple[int, int, int, int, int, int]:
    """``(src_top, src_left, dst_top, dst_left, h, w)`` of a random ``crop``×``crop`` window.

    Along a side longer than ``crop`` the window moves over the image; along a shorter side the
    image moves inside the canvas (the reference ``RandomCrop``). Top/row offset drawn first.
    """
    def axis(size: int) -> tuple[int, int]:
        space = size - crop
        if space > 0:
            return int(rng.integers(0, space + 1)), 0
        return 0, int(rng.integers(0, -space + 1))

    src_top, dst_top = axis(height)
    src_left, dst_left = axis(width)
    return src_top, src_left, dst_top, dst_left, min(crop, height), min(crop, width)


def paste_crop(arr: np.ndarray, box: tuple[int, int, int, int, int, int], crop: int,
               fill: float | int) -> np.ndarray:
    """Cut ``box`` (from :func:`random_crop_box`) out of ``arr`` onto a ``fill`` canvas."""
    st, sl, dt, dl, h, w = box
    out = np.full((crop, crop, *arr.shape[2:]), fill, dtype=arr.dtype)
    out[dt:dt + h, dl:dl + w] = arr[st:st + h, sl:sl + w]
    return out


def _normalized_crop(arr: np.ndarray, box, crop: int, mean, std) -> np.ndarray:
    # Normalising only the kept pixels equals the reference's normalise-then-crop, and the
    # padding is 0 in normalised space (the mean colour).
    st, sl, dt, dl, h, w = box
    kept = normalize(arr[st:st + h, sl:sl + w], mean, std)
    return paste_crop(kept, (0, 0, dt, dl, h, w), crop, 0.0)


def _rgb(image):
    return image if image.mode == "RGB" else image.convert("RGB")


@dataclass
class Stage1Transform:
    """CAM/SEAM/PLDA training augmentation: ``t(image, rng) -> FloatTensor (3, crop, crop)``.

    ``resize_long`` is an inclusive range of the long side; ``None`` for ``resize_long``,
    ``crop`` or ``jitter`` turns that step off (no crop: variable-size output).
    """

    resize_long: tuple[int, int] | None = (448, 768)
    crop: int | None = 448
    flip: bool = True
    jitter: tuple[float, float, float, float] | None = (0.3, 0.3, 0.3, 0.1)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __call__(self, image, rng: np.random.Generator) -> torch.Tensor:
        from PIL import Image

        image = _rgb(image)
        if self.resize_long is not None:
            lo, hi = self.resize_long
            image = resize_long(image, int(rng.integers(lo, hi + 1)))
        if self.flip and rng.random() < 0.5:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        if self.jitter is not None:
            image = color_jitter(image, self.jitter, rng)
        arr = np.asarray(image)
        if self.crop is None:
            return to_chw_tensor(normalize(arr, self.mean, self.std))
        box = random_crop_box(arr.shape[0], arr.shape[1], self.crop, rng)
        return to_chw_tensor(_normalized_crop(arr, box, self.crop, self.mean, self.std))


@dataclass
class SegTransform:
    """Joint image + mask augmentation for segmentation training (DeepLab recipe).

    ``t(image, mask, rng) -> (FloatTensor (3, crop, crop), LongTensor (crop, crop))``: random
    scale (image bilinear, mask nearest), flip, normalise, random crop; padding is 0 in
    normalised space for the image and ``ignore_index`` for the mask. ``None`` turns a step off.
    """

    crop: int | None = 448
    scale: tuple[float, float] | None = (0.5, 1.5)
    flip: bool = True
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    ignore_index: int = 255

    def __call__(self, image, mask: np.ndarray, rng: np.random.Generator
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        from PIL import Image

        image = _rgb(image)
        mask = np.asarray(mask, dtype=np.uint8)
        if mask.shape != (image.height, image.width):
            raise ValueError(f"mask shape {mask.shape} differs from image size "
                             f"{(image.height, image.width)}")
        if self.scale is not None:
            s = rng.uniform(*self.scale)
            size = (max(1, round(image.width * s)), max(1, round(image.height * s)))
            image = image.resize(size, resample=Image.BILINEAR)
            mask = np.asarray(Image.fromarray(mask).resize(size, resample=Image.NEAREST))
        arr = np.asarray(image)
        if self.flip and rng.random() < 0.5:
            arr, mask = arr[:, ::-1], mask[:, ::-1]
        if self.crop is not None:
            box = random_crop_box(arr.shape[0], arr.shape[1], self.crop, rng)
            arr = _normalized_crop(arr, box, self.crop, self.mean, self.std)
            mask = paste_crop(mask, box, self.crop, self.ignore_index)
        else:
            arr = normalize(arr, self.mean, self.std)
        return to_chw_tensor(arr), torch.from_numpy(np.ascontiguousarray(mask).astype(np.int64))


@dataclass
class EvalTransform:
    """Normalisation only: ``t(image) -> FloatTensor (3, H, W)``; with a mask also returns it as
    a ``LongTensor (H, W)``. ``rng`` is accepted and unused, to share the training call style."""

    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __call__(self, image, mask: np.ndarray | None = None,
                 rng: np.random.Generator | None = None):
        tensor = to_chw_tensor(normalize(np.asarray(_rgb(image)), self.mean, self.std))
        if mask is None:
            return tensor
        return tensor, torch.from_numpy(np.asarray(mask, dtype=np.int64))
