"""The training-loop settings shared by stage 1 (CAM / SEAM / PLDA) and stage 2 (DeepLab).

``TrainConfig`` holds plain types only so that a YAML preset fills it directly and a checkpoint
stores it as a plain dict.

Optimizer fidelity switch (``reference_optimizer``): SEAM and PLDA build their SGD as
``torch.optim.SGD(param_groups, lr, weight_decay)``. The third positional argument of
``torch.optim.SGD`` is *momentum*, so the reference trains with momentum = 5e-4 (practically
plain SGD). Weight decay is still applied, because every reference parameter group sets its own
``weight_decay`` (5e-4 on weights, 0 on biases), which overrides the constructor default.
``reference_optimizer=True`` reproduces exactly that: momentum = ``weight_decay``, per-group
decay unchanged. With ``False`` (the default) momentum is ``momentum`` (0.9). The published
stage-1 learning rates were tuned for the momentum-free optimizer (momentum 0.9 multiplies the
effective step by ~10), so the stage-1 presets turn the switch on; stage 2 (DeepLab, momentum 0.9
in the reference too) leaves it off.
"""

from __future__ import annotations

import math

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from plda.errors import ConfigError

AMP_MODES = ("none", "bf16", "fp16")


@dataclass
class TrainConfig:
    """Optimisation, schedule, precision, checkpointing and logging of one training run."""

    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    # True: momentum = weight_decay, as the SEAM/PLDA reference's positional-argument slip does.
    reference_optimizer: bool = False
    poly_power: float = 0.9
    # Exactly one budget: whole epochs over the dataset, or optimizer steps.
    epochs: int | None = None
    iterations: int | None = None
    # Global batch: summed over all ranks and all gradient-accumulation micro-steps.
    batch_size: int = 8
    grad_accum_steps: int = 1
    amp: str = "none"
    deterministic: bool = False
    seed: int = 0
    num_workers: int = 4
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    log_every: int = 50
    vis_every: int = 0
    drop_last: bool = True
    max_grad_norm: float | None = None
    sync_batchnorm: bool = False
    find_unused_parameters: bool = False
    # Update each parameter inside the backward pass and free its gradient at once (same math,
    # ~one model's worth of gradient memory less). Applies when one backward pass makes one
    # update: a single process, grad_accum_steps 1, no fp16 loss scaling, no max_grad_norm;
    # otherwise the usual step after backward runs.
    step_in_backward: bool = True
    # 4-d weights and activations in NHWC ("channels last") memory order, or NCHW. Which is
    # faster on a CPU depends on the network, the dtype and the CPU (EfficientNet-Lite0's
    # depthwise convs: NHWC 1.2x faster in fp32; ResNet-38 in bf16: NCHW a little faster), so
    # "auto" times one step both ways once per machine and setting (plda.models.fastpath) on
    # CPU (a resumed run keeps its first choice; deterministic runs take NHWC), and takes NHWC
    # on GPUs (tensor cores want it). Same math; float sums may differ in
    # the last bits.
    channels_last: bool | Literal["auto"] = "auto"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ConfigError`` naming the first invalid field."""
        if (self.epochs is None) == (self.iterations is None):
            raise ConfigError(
                f"train: set exactly one of 'epochs' and 'iterations' "
                f"(got epochs={self.epochs!r}, iterations={self.iterations!r})")
        positive = {"batch_size": self.batch_size, "grad_accum_steps": self.grad_accum_steps,
                    "keep_checkpoints": self.keep_checkpoints, "log_every": self.log_every}
        if self.epochs is not None:
            positive["epochs"] = self.epochs
        if self.iterations is not None:
            positive["iterations"] = self.iterations
        for name, value in positive.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"train.{name}: expected an integer >= 1, got {value!r}")
        for name in ("num_workers", "checkpoint_every", "vis_every", "seed"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"train.{name}: expected an integer >= 0, got {value!r}")
        for name in ("lr", "momentum", "weight_decay", "poly_power"):
            value = getattr(self, name)
            if (not isinstance(value, (int, float)) or isinstance(value, bool)
                    or not math.isfinite(value) or value < 0):
                raise ConfigError(f"train.{name}: expected a finite number >= 0, got {value!r}")
        if self.momentum >= 1:
            raise ConfigError(f"train.momentum: expected a number in [0, 1), got "
                              f"{self.momentum!r}")
        if self.channels_last not in (True, False, "auto"):
            raise ConfigError(f"train.channels_last: expected true, false or auto, got "
                              f"{self.channels_last!r}")
        if self.amp not in AMP_MODES:
            raise ConfigError(f"train.amp: expected one of {AMP_MODES}, got {self.amp!r}")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ConfigError(f"train.max_grad_norm: expected a number > 0 or null, "
                              f"got {self.max_grad_norm!r}")

    def steps_in_backward(self, world_size: int) -> bool:
        """Whether the trainer runs the optimizer inside backward (see ``step_in_backward``)."""
        return (self.step_in_backward and world_size == 1 and self.grad_accum_steps == 1
                and self.amp != "fp16" and self.max_grad_norm is None)

    def effective_momentum(self) -> float:
        """The SGD momentum actually used (see the module docstring for the reference quirk)."""
        return float(self.weight_decay if self.reference_optimizer else self.momentum)

    def local_batch_size(self, world_size: int) -> int:
        """Samples per forward pass on one rank: ``batch_size / (world_size * grad_accum_steps)``."""
        parts = world_size * self.grad_accum_steps
        if self.batch_size % parts:
            raise ConfigError(
                f"train.batch_size={self.batch_size} is not divisible by world_size {world_size} "
                f"x grad_accum_steps {self.grad_accum_steps}; choose a multiple of {parts}")
        return self.batch_size // parts

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        """Build from a plain mapping, rejecting unknown keys by name."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"train: unknown key(s) {unknown}; known keys: {sorted(known)}")
        return cls(**values)
