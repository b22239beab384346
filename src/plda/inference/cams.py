"""Multi-scale, flipped CAM inference and CAM files for a whole split.

Follows SEAM's ``infer_SEAM.py`` (the PLDA reference ships no inference script):

* each scale ``s`` resizes the image to ``(round(H·s), round(W·s))`` with Python's ``round``
  (half to even), as ``VOC12ClsDatasetMSF`` does. ``resize="reference"`` makes each scale's input
  as the reference does: the uint8 image resized with PIL bicubic, then normalised.
  ``resize="tensor"`` (the default) resizes the normalised tensor bilinearly with antialiasing
  (PIL-like smoothing when shrinking; identical to plain bilinear when enlarging), which works
  on any tensor input on any device; docs/methods.md gives the measured difference;
* the image and its horizontal flip go through the model as one batch of two per scale;
* each CAM is upsampled bilinearly in two steps, as there: to the network input size with
  ``align_corners=True`` (inside SEAM's ``Net.forward``), then to ``(H, W)`` with
  ``align_corners=False`` (``infer_SEAM.py``); the flipped one is flipped back, all are summed,
  multiplied by the image labels, and passed through ReLU;
* per-class min–max normalisation, as the reference:
  ``(x − min − 1e-5) / (max − min + 1e-5)`` with pixels below ``min + 1e-5`` set to 0.
  The reference zeroes those pixels *before* subtracting, which leaves them slightly negative
  (and absent classes at −1); here they are 0, so values lie in ``[0, 1)`` and an absent class is
  all 0. Pixels above ``min + 1e-5`` get exactly the reference value; seeds are unchanged since
  the background threshold is positive.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from plda.engine.memory import is_allocation_failure
from plda.inference.runtime import (autocast, check_amp, eval_mode, input_stats, resize_image,
                                    scaled_size, working_size)
from plda.errors import ConfigError, DataError, PldaError
from plda.methods.seam import max_norm
from plda.utils.dist import get_rank, get_world_size
from plda.utils.io import check_id, clean_stale_temporaries, safe_join
from plda.utils.progress import progress_bar

DEFAULT_SCALES: tuple[float, ...] = (0.5, 1.0, 1.5, 2.0)
LABEL_SOURCES = ("gt", "predicted")
RESIZE_MODES = ("tensor", "reference")
# Makes one scale's normalised input (1, 3, h, w) for a size (h, w).
Scaler = Callable[[tuple[int, int]], Tensor]


def reference_scaler(image: Any, transform: Callable[[Any], Tensor],
                     device: torch.device | str = "cpu") -> Scaler:
    """The reference's per-scale input (SEAM's ``VOC12ClsDatasetMSF``): the uint8 PIL
    ``image`` resized with PIL bicubic to (h, w) (unchanged at its own size), then
    ``transform`` (normalisation) -> ``(1, 3, h, w)`` on ``device``."""
    from PIL import Image

    rgb = image if image.mode == "RGB" else image.convert("RGB")

    def scaled(size: tuple[int, int]) -> Tensor:
        h, w = size
        img = rgb if (w, h) == rgb.size else rgb.resize((w, h), resample=Image.BICUBIC)
        return transform(img)[None].to(device)

    return scaled


def _working_image(image: Any, max_side: int | None) -> Any:
    """``image`` (PIL), or a copy whose longer side is ``max_side`` when it is longer."""
    from PIL import Image

    size = working_size(image.height, image.width, max_side)
    if size == (image.height, image.width):
        return image
    return image.resize(size[::-1], Image.BILINEAR)


def normalize_cams(cams: Tensor) -> Tensor:
    """ReLU, then SEAM's per-class min–max normalisation of ``(B, C, H, W)`` maps (module doc);
    the same formula as SEAM training's ``max_norm``, which it reuses."""
    return max_norm(cams)


def class_scores(output: Any) -> Tensor:
    """Classification logits ``(B, C)`` of a ``CamOutput``: the GAP of ``output.raw``, the
    classifier map (for SEAM/PLDA ``cam`` is the PCM-revised CAM, not logits), or of
    ``output.cam`` when there is no ``raw``. A ``raw`` with ``C + 1`` channels leads with
    background (SEAM/PLDA), which is dropped."""
    raw = getattr(output, "raw", None)
    source = output.cam if raw is None else raw
    if source.shape[1] == output.cam.shape[1] + 1:
        source = source[:, 1:]
    return source.float().mean(dim=(2, 3))


def _summed_cams(model: nn.Module, images: Tensor, scales: Sequence[float], flip: bool, amp: str,
                 flip_batch: bool | None, model_kwargs: dict, classes: Tensor | None = None,
                 score_scale: float | None = None, scaled: Scaler | None = None
                 ) -> tuple[Tensor, Tensor | None]:
    """Sum over scales and flips of the CAMs at image size, and the class scores of the
    unflipped pass at ``score_scale`` (``None``: no scores). ``classes`` (indices) restricts the
    sum to those CAM channels, in that order: upsampling only them saves time and memory.
    ``scaled`` makes each scale's input (one image); ``None`` resizes ``images``."""
    if flip_batch is None:
        flip_batch = images.device.type != "cpu"
    with autocast(images.device, amp):
        total, scores = _scale_loop(model, images, scales, flip, flip_batch, model_kwargs,
                                    classes, score_scale, scaled)
    if total is None:
        raise ConfigError("scales: expected at least one scale, got none")
    return total, scores


def _scale_loop(model: nn.Module, images: Tensor, scales: Sequence[float], flip: bool,
                flip_batch: bool, model_kwargs: dict, classes: Tensor | None,
                score_scale: float | None, scaled: Scaler | None
                ) -> tuple[Tensor | None, Tensor | None]:
    n, _, height, width = images.shape
    total: Tensor | None = None
    scores: Tensor | None = None
    for scale in scales:
        size = scaled_size(height, width, scale)
        x = resize_image(images, size) if scaled is None else scaled(size)
        if not flip:
            views = [x]
        elif flip_batch:
            views = [torch.cat([x, x.flip(-1)])]
        else:
            views = [x, x.flip(-1)]
        cams = []
        for view in views:
            out = model.cams(view, **model_kwargs)
            if score_scale is not None and scale == score_scale and scores is None:
                scores = class_scores(out)[:n]
            cam = out.cam.float() if classes is None else out.cam[:, classes].float()
            cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=True)
            cams.append(F.interpolate(cam, size=(height, width), mode="bilinear",
                                      align_corners=False))
        cam = torch.cat(cams)
        if flip:
            cam = cam[:n] + cam[n:].flip(-1)
        total = cam if total is None else total + cam
    return total, scores


def multiscale_cam_batch(model: nn.Module, images: Tensor, scales: Sequence[float] = DEFAULT_SCALES,
                         flip: bool = True, labels: Tensor | None = None, *, amp: str = "none",
                         flip_batch: bool | None = None, scaled: Scaler | None = None,
                         **model_kwargs) -> Tensor:
    """Multi-scale (+ flip) normalised CAMs of same-size normalised images.

    Args:
        model: a stage-1 model with ``cams(images, **model_kwargs) -> CamOutput``.
        images: ``(B, 3, H, W)`` normalised images (all one size).
        labels: ``(B, C)`` multi-hot labels; CAMs of absent classes become 0. ``None``: keep all.
        amp: ``"none"``, ``"bf16"`` or ``"fp16"`` autocast around the model.
        flip_batch: pass an image and its flip as one batch; ``False`` runs them one after the
            other (half the peak memory of the largest scale); ``None``: batched on GPUs, one
            after the other on CPUs, where batching was slower and a third heavier (ResNet-38,
            500x375: 10.6 against 9.6 s per image in bf16, docs/performance.md).
        scaled: makes each scale's input from the original image (:func:`reference_scaler`)
            instead of resizing ``images``; one image only.
        model_kwargs: passed to ``model.cams`` (e.g. a chunk size for the PCM affinity).
    Returns:
        ``(B, C, H, W) float32`` CAMs in ``[0, 1)`` (see the module docstring).
    """
    if scaled is not None and images.shape[0] != 1:
        raise ConfigError(f"a per-scale input maker takes one image, got a batch of "
                          f"{images.shape[0]}")
    if labels is None:
        with eval_mode(model):
            total, _ = _summed_cams(model, images, scales, flip, amp, flip_batch, model_kwargs,
                                    scaled=scaled)
        return normalize_cams(total)
    labels = labels.to(device=images.device, dtype=torch.float32)
    present = torch.nonzero(labels.amax(0) > 0).flatten()
    out = images.new_zeros((images.shape[0], labels.shape[1], *images.shape[-2:]),
                           dtype=torch.float32)
    if len(present):
        with eval_mode(model):
            total, _ = _summed_cams(model, images, scales, flip, amp, flip_batch, model_kwargs,
                                    present, scaled=scaled)
        out[:, present] = normalize_cams(total * labels[:, present, None, None])
    return out


def multiscale_cam(model: nn.Module, image: Tensor, scales: Sequence[float] = DEFAULT_SCALES,
                   flip: bool = True, labels: Tensor | None = None, *, amp: str = "none",
                   flip_batch: bool | None = None, scaled: Scaler | None = None,
                   **model_kwargs) -> Tensor:
    """:func:`multiscale_cam_batch` for one image ``(3, H, W)`` and labels ``(C,)``:
    returns ``(C, H, W)``."""
    return multiscale_cam_batch(model, image[None], scales, flip,
                                None if labels is None else labels[None], amp=amp,
                                flip_batch=flip_batch, scaled=scaled, **model_kwargs)[0]


def _is_complete(path: Path, num_classes: int, image_size: tuple[int, int] | None = None) -> bool:
    """Whether ``path`` is a readable CAM file for ``num_classes`` classes (and, if given, an
    image of ``image_size``: a file left from another dataset with the same ids is redone)."""
    from plda.data.camfile import load_cams

    try:
        cam_file = load_cams(path)
    except (PldaError, OSError, ValueError, EOFError, KeyError):
        return False
    if image_size is not None and tuple(cam_file.image_size) != tuple(image_size):
        return False
    return int(cam_file.num_classes) == num_classes


def clean_temporaries(folder: Path, names: Sequence[str]) -> int:
    """Remove ``atomic_write`` temporaries of the files ``names`` in ``folder``; return how many.

    Only these names, so a rank never deletes another rank's file in the making."""
    return clean_stale_temporaries(folder, names)


def infer_cams(model: nn.Module, layout: Any, split: str | Sequence[str], out_dir: str | os.PathLike,
               *, scales: Sequence[float] = DEFAULT_SCALES, flip: bool = True,
               label_source: str = "gt", score_threshold: float = 0.5, amp: str = "none",
               resize: str = "tensor", max_side: int | None = None,
               device: str | torch.device | None = None, skip_existing: bool = True,
               rank: int | None = None, world_size: int | None = None,
               **model_kwargs) -> dict[str, Any]:
    """Write ``out_dir/<id>.npz`` CAM files for a split (this rank's share: ``ids[rank::world]``).

    Each file holds the normalised multi-scale CAMs of the present classes only, in float16,
    with their label values as keys (:func:`plda.data.camfile.save_cams`). Present classes are
    the image labels (``label_source="gt"``) or the predicted ones (``"predicted"``:
    ``sigmoid(class_scores) > score_threshold`` at scale 1.0, unflipped; see :func:`class_scores`).
    ``resize``: ``"tensor"`` or ``"reference"`` (module doc). ``max_side``: an image whose
    longer side exceeds it is inferred at that size (aspect kept) and its CAMs upsampled
    bilinearly to the image, which bounds memory; ``None``: no limit.
    With ``skip_existing``, an image whose file exists and loads is skipped; an unreadable file
    is redone and this rank's stale temporaries are removed first, so a killed run resumes where
    it stopped.

    Args:
        layout: a :class:`plda.data.layout.DatasetLayout` or its root folder.
        split: a split name or an explicit list of ids.
        device: where the model runs (default: where its parameters are).
        rank, world_size: the shard (default: from :mod:`plda.utils.dist`).
        model_kwargs: passed to ``model.cams``.
    Returns:
        ``{"written", "skipped", "total", "seconds", "seconds_per_image", "rank", "world_size"}``
        (``seconds_per_image`` over the written images).
    """
    from plda.data.camfile import save_cams
    from plda.data.datasets import as_layout
    from plda.data.transforms import EvalTransform

    if label_source not in LABEL_SOURCES:
        raise ConfigError(f"label_source={label_source!r}: expected one of {', '.join(LABEL_SOURCES)}")
    check_amp(amp)
    if resize not in RESIZE_MODES:
        raise ConfigError(f"resize={resize!r}: expected one of {', '.join(RESIZE_MODES)}")
    scales = tuple(float(s) for s in scales)
    if not scales or min(scales) <= 0:
        raise ConfigError(f"scales={list(scales)}: expected one or more positive numbers")
    layout = as_layout(layout)
    rank = get_rank() if rank is None else rank
    world_size = get_world_size() if world_size is None else world_size
    all_ids = layout.ids(split) if isinstance(split, str) else [check_id(i, "id list") for i in split]
    ids = all_ids[rank::world_size]
    if device is not None:
        model.to(device)
    device = next(iter(model.parameters())).device if device is None else torch.device(device)
    # NHWC weights: oneDNN's (and cuDNN's) faster convolution layout; the math is the same.
    model.to(memory_format=torch.channels_last)
    num_classes = int(model.num_classes)
    if num_classes != layout.num_classes:
        raise ConfigError(f"the model predicts {num_classes} classes but dataset {layout.root} has "
                          f"{layout.num_classes}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    clean_temporaries(out_dir, [f"{i}.npz" for i in ids])
    transform = EvalTransform(*input_stats(model))
    # Predicted labels need the scale-1.0 logits: add that pass if 1.0 is not among the scales.
    extra_scale = label_source == "predicted" and 1.0 not in scales

    def infer_one(image_id: str) -> bool:
        """Write one image's CAM file; False when a complete one is already there."""
        path = safe_join(out_dir, f"{image_id}.npz")
        if (skip_existing and path.exists()
                and _is_complete(path, num_classes, layout.image_size(image_id))):
            return False
        image = layout.load_image(image_id)
        full_size = (image.height, image.width)
        work = _working_image(image, max_side)
        x = transform(work).to(device)
        scaled = reference_scaler(work, transform, device) if resize == "reference" else None
        if label_source == "gt":
            labels = torch.tensor(layout.labels(image_id))
            present = torch.nonzero(labels).flatten()
            cams = multiscale_cam(model, x, scales, flip, labels, amp=amp, scaled=scaled,
                                  **model_kwargs)[present]
        else:
            with eval_mode(model):
                total, scores = _summed_cams(model, x[None], scales, flip, amp, None,
                                             model_kwargs, score_scale=1.0, scaled=scaled)
                if extra_scale:
                    _, scores = _summed_cams(model, x[None], (1.0,), False, amp, True,
                                             model_kwargs, score_scale=1.0, scaled=scaled)
            present = torch.nonzero(torch.sigmoid(scores[0]) > score_threshold).flatten()
            cams = normalize_cams(total[:, present])[0]
        if tuple(cams.shape[-2:]) != full_size:  # inferred at max_side: back to the image
            cams = F.interpolate(cams[None].float(), size=full_size, mode="bilinear",
                                 align_corners=False)[0]
        save_cams(path, cams.cpu().numpy().astype(np.float16),
                  (present + 1).cpu().numpy().astype(np.int64), num_classes, full_size)
        return True

    written = skipped = 0
    start = time.perf_counter()
    bar = progress_bar(len(ids), desc=f"CAMs {split if isinstance(split, str) else ''}".strip(),
                       unit="img")
    try:
        for image_id in ids:
            try:
                done = infer_one(image_id)
            except (MemoryError, RuntimeError) as exc:
                if not is_allocation_failure(exc):
                    raise
                raise DataError(f"out of memory on image {image_id!r} "
                                f"({layout.image_path(image_id)}): lower cam.max_side (now "
                                f"{max_side or 'no limit'}) or the largest of cam.scales "
                                f"({max(scales)})") from None
            written += done
            skipped += not done
            bar.update(1)
            bar.set_postfix(written=written, skipped=skipped, refresh=False)
    finally:
        bar.close()
    seconds = time.perf_counter() - start
    return {"written": written, "skipped": skipped, "total": len(ids), "seconds": seconds,
            "seconds_per_image": seconds / written if written else 0.0,
            "rank": rank, "world_size": world_size}
