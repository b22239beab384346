"""Multi-scale, flipped inference of a stage-2 segmentation network, optionally CRF-refined.

The protocol is the usual DeepLab evaluation of WSSS papers (SEAM and PLDA evaluate their
DeepLab with scales 0.5…1.75 and flips): for each scale the normalised image is resized
(bilinear, antialiased when shrinking — :func:`plda.inference.runtime.resize_image`, the CAM
stage's resize, so both stages see the same pixels), the image and its mirror go through the
network as one batch, the head-stride logits are upsampled bilinearly straight to the image size,
turned into probabilities, the mirror's flipped back, and every scale × flip is averaged.
Averaging *probabilities* (not logits or a max over scales, as deeplab-pytorch's MSC) keeps
each view's vote bounded, which is what the optional dense CRF expects as its unary.

The CRF parameters are deeplab-pytorch's VOC ones (the segmentation code SEAM points to):
10 iterations, Gaussian kernel sxy 1 / weight 3, bilateral kernel sxy 67 / srgb 3 / weight 4 —
not the CAM-refinement ones of :mod:`plda.inference.crf`, which smooth much more.
"""

from __future__ import annotations

from typing import Any, Hashable, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from plda.errors import ConfigError, DataError
from plda.inference.runtime import (autocast, eval_mode, input_stats, resize_image, scaled_size,
                                    working_size)

DEFAULT_SCALES: tuple[float, ...] = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
# deeplab-pytorch configs/voc12.yaml CRF section, in plda.inference.crf.dense_crf's names.
SEG_CRF_PARAMS: dict[str, float] = {
    "iterations": 10, "gaussian_sxy": 1, "gaussian_compat": 3,
    "bilateral_sxy": 67, "bilateral_srgb": 3, "bilateral_compat": 4,
}


def to_rgb_array(image: Any) -> np.ndarray:
    """``(H, W, 3) uint8`` RGB pixels of a PIL image of any mode or of an array.

    Inputs to ``plda predict`` come in every flavour; converting here means the network, the
    CRF and the overlay all see the same RGB pixels. 16-/32-bit grayscale is scaled to 8 bits
    (PIL's own conversion clips it, which turns most 16-bit images white); alpha is dropped
    (the colour channels are kept as stored); palette images are expanded.
    """
    from PIL import Image

    if isinstance(image, Image.Image):
        mode = image.mode
        if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
            arr = np.asarray(image, dtype=np.float64)
            if mode.startswith("I;16") or arr.max(initial=0) > 255:
                arr = arr / 257.0
            gray = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
            return np.repeat(gray[..., None], 3, axis=2)
        if mode == "P" and "transparency" in image.info:
            image = image.convert("RGBA")
        return np.asarray(image if image.mode == "RGB" else image.convert("RGB"), dtype=np.uint8)
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise DataError(f"image array must be uint8, got {arr.dtype}")
    if arr.ndim == 2:
        return np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim == 3 and arr.shape[2] in (3, 4):
        return np.ascontiguousarray(arr[..., :3])
    raise DataError(f"image array must be (H, W), (H, W, 3) or (H, W, 4), got {arr.shape}")


def net_device(net: nn.Module) -> torch.device:
    """Where the net's parameters live (the CPU for a parameterless net)."""
    param = next(iter(net.parameters()), None)
    return param.device if param is not None else torch.device("cpu")


def _normalised(net: nn.Module, images: Sequence[np.ndarray], device: torch.device) -> Tensor:
    """``(B, 3, H, W)`` float32 batch normalised with the net's own statistics."""
    from plda.data.transforms import normalize, to_chw_tensor

    mean, std = input_stats(net)
    return torch.stack([to_chw_tensor(normalize(a, mean, std)) for a in images]).to(device)


def _check_scales(scales: Sequence[float]) -> tuple[float, ...]:
    scales = tuple(float(s) for s in scales)
    if not scales or min(scales) <= 0:
        raise ConfigError(f"scales={list(scales)}: expected one or more positive numbers")
    return scales


def multiscale_probs_batch(net: nn.Module, images: Tensor, scales: Sequence[float] = DEFAULT_SCALES,
                           flip: bool = True, amp: str = "none") -> Tensor:
    """Averaged class probabilities ``(B, K, H, W) float32`` of same-size *normalised* images
    ``(B, 3, H, W)`` already on the net's device (see the module docstring). No gradients; the
    net runs in eval mode and gets its previous mode back."""

    scales = _check_scales(scales)
    n, _, height, width = images.shape
    total: Tensor | None = None
    with eval_mode(net):
        for scale in scales:
            x = resize_image(images, scaled_size(height, width, scale))
            if flip:
                x = torch.cat([x, x.flip(-1)])
            with autocast(images.device, amp):
                logits = net(x)
            logits = F.interpolate(logits.float(), size=(height, width), mode="bilinear",
                                   align_corners=False)
            probs = torch.softmax(logits, dim=1)
            if flip:
                probs = probs[:n] + probs[n:].flip(-1)
            total = probs if total is None else total + probs
    return total / (len(scales) * (2 if flip else 1))


def multiscale_probs(net: nn.Module, image: Any, scales: Sequence[float] = DEFAULT_SCALES,
                     flip: bool = True, amp: str = "none",
                     device: str | torch.device | None = None) -> Tensor:
    """Averaged class probabilities ``(K, H, W) float32`` of one image (a PIL image or a uint8
    ``(H, W[, 3|4])`` array), on the device the net runs on.

    ``device`` moves the net there first (default: where it is)."""
    if device is not None:
        net.to(device)
    x = _normalised(net, [to_rgb_array(image)], net_device(net))
    return multiscale_probs_batch(net, x, scales, flip, amp)[0]


def labels_from_probs(probs: Tensor, image: np.ndarray | None = None, crf: bool = False,
                      crf_params: dict | None = None) -> np.ndarray:
    """``(H, W) uint8`` argmax of ``(K, H, W)`` probabilities; with ``crf`` the dense CRF over
    ``image`` (uint8 RGB, needed then) refines them first."""
    if probs.shape[0] > 256:
        raise ConfigError(f"{probs.shape[0]} classes do not fit a uint8 label map (at most 256)")
    if not crf:
        return probs.argmax(0).to(torch.uint8).cpu().numpy()
    from plda.inference.crf import dense_crf

    if image is None:
        raise ConfigError("the dense CRF needs the image the probabilities belong to")
    q = dense_crf(image, probs.float().cpu().numpy(), **(crf_params or SEG_CRF_PARAMS))
    return q.argmax(0).astype(np.uint8)


def predict_labels(net: nn.Module, image: Any, scales: Sequence[float] = DEFAULT_SCALES,
                   flip: bool = True, amp: str = "none", device: str | torch.device | None = None,
                   *, crf: bool = False, crf_params: dict | None = None) -> np.ndarray:
    """The ``(H, W) uint8`` label map of one image: :func:`multiscale_probs`, optionally refined
    by the dense CRF (:data:`SEG_CRF_PARAMS` unless ``crf_params``), then argmax."""
    rgb = to_rgb_array(image)
    probs = multiscale_probs(net, rgb, scales, flip, amp, device)
    return labels_from_probs(probs, rgb, crf, crf_params)


def upsampled_argmax(probs: Tensor, size: tuple[int, int], band: int = 256) -> np.ndarray:
    """``(H, W) uint8`` argmax of ``probs`` ``(K, h, w)`` upsampled bilinearly
    (align_corners=False, as ``F.interpolate``) to ``size``, ``band`` output rows at a time,
    so the full ``(K, H, W)`` never exists."""
    k, h, w = probs.shape
    height, width = size
    out = np.empty((height, width), np.uint8)
    xs = (torch.arange(width, dtype=torch.float32, device=probs.device) + 0.5) / width * 2 - 1
    for top in range(0, height, band):
        rows = torch.arange(top, min(top + band, height), dtype=torch.float32,
                            device=probs.device)
        ys = (rows + 0.5) / height * 2 - 1
        grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij")[::-1], -1)[None]
        part = F.grid_sample(probs[None].float(), grid, mode="bilinear",
                             padding_mode="border", align_corners=False)[0]
        out[top:top + len(rows)] = part.argmax(0).to(torch.uint8).cpu().numpy()
    return out


def iter_label_maps(net: nn.Module, items: Iterable[tuple[Hashable, Any]],
                    scales: Sequence[float] = DEFAULT_SCALES, flip: bool = True,
                    amp: str = "none", *, crf: bool = False, crf_params: dict | None = None,
                    batch_size: int = 1, max_side: int | None = None
                    ) -> Iterator[tuple[Hashable, np.ndarray, np.ndarray]]:
    """Label maps of images of mixed sizes, in order: yields ``(key, rgb, labels)`` for each
    ``(key, image)`` of ``items`` (``rgb`` the ``(H, W, 3) uint8`` pixels used).

    Images of different sizes cannot share a tensor, so each goes through the network alone,
    except that up to ``batch_size`` *consecutive* images of the same size are stacked (one
    forward per scale for all of them) — worthwhile for datasets of equal-size images on a GPU.
    ``items`` is consumed lazily, so a generator that reads files keeps one batch in memory.

    ``max_side`` bounds memory: an image whose longer side exceeds it goes through the network
    at that size (aspect kept); its probabilities are upsampled to the image a band of rows at a
    time (with ``crf``, the CRF runs at the working size and its labels are upsampled, nearest).
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size={batch_size}: expected a positive integer")
    if max_side is not None and max_side < 32:
        raise ConfigError(f"max_side={max_side}: expected at least 32 pixels, or none")
    scales = _check_scales(scales)
    device = net_device(net)
    pending: list[tuple[Hashable, np.ndarray]] = []

    def flush() -> Iterator[tuple[Hashable, np.ndarray, np.ndarray]]:
        x = _normalised(net, [rgb for _, rgb in pending], device)
        probs = multiscale_probs_batch(net, x, scales, flip, amp)
        for (key, rgb), p in zip(pending, probs):
            yield key, rgb, labels_from_probs(p, rgb, crf, crf_params)
        pending.clear()

    for key, image in items:
        rgb = to_rgb_array(image)
        size = working_size(*rgb.shape[:2], max_side)
        if size != rgb.shape[:2]:
            if pending:
                yield from flush()
            yield key, rgb, _large_image_labels(net, rgb, size, scales, flip, amp, crf,
                                                crf_params)
            continue
        if pending and (rgb.shape != pending[0][1].shape or len(pending) >= batch_size):
            yield from flush()
        pending.append((key, rgb))
    if pending:
        yield from flush()


def _large_image_labels(net: nn.Module, rgb: np.ndarray, size: tuple[int, int],
                        scales: Sequence[float], flip: bool, amp: str, crf: bool,
                        crf_params: dict | None) -> np.ndarray:
    from PIL import Image

    small = np.asarray(Image.fromarray(rgb).resize(size[::-1], Image.BILINEAR))
    probs = multiscale_probs_batch(net, _normalised(net, [small], net_device(net)), scales,
                                   flip, amp)[0]
    if crf:
        labels = labels_from_probs(probs, small, True, crf_params)
        return np.asarray(Image.fromarray(labels).resize(rgb.shape[1::-1], Image.NEAREST))
    return upsampled_argmax(probs, rgb.shape[:2])


__all__ = ["DEFAULT_SCALES", "SEG_CRF_PARAMS", "iter_label_maps", "labels_from_probs",
           "multiscale_probs", "multiscale_probs_batch", "net_device", "predict_labels",
           "to_rgb_array", "upsampled_argmax", "working_size"]
