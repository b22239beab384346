"""Settings of the stage-1 methods (CAM, SEAM, SEAM+PLDA), with the reference values as defaults.

Plain types and nested dataclasses only, so ``plda.config.loader.from_dict`` can fill them from
YAML. Section letters refer to ``docs/methods.md``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Annotated, Literal, Optional

from plda.errors import ConfigError
from plda.registry import METHODS


def _check_range(section: str, name: str, value: float, low: float, high: float,
                 low_open: bool = False, high_open: bool = False) -> None:
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if too_low or too_high:
        left, right = "(" if low_open else "[", ")" if high_open else "]"
        raise ConfigError(f"method.{section}.{name}={value!r}: expected a value in "
                          f"{left}{low}, {high}{right}")


@dataclass
class SEAMConfig:
    """SEAM (Wang et al., CVPR 2020): CAM head, pixel correlation module and the two-view losses.

    ``pcm_chunk_size``: query pixels per block when computing the PCM affinity (0 = the whole
    hw x hw matrix at once). Chunked and full results are equal; chunks bound the memory of the
    no-grad inference pass on large images.

    ``pcm_stride``: null (the reference) runs PCM on the CAM's own grid (the backbone's output
    stride). A stride finer than that (a level of the backbone must have it) upsamples the raw
    CAM bilinearly to that level's grid first, so PCM's affinity (and every loss on the CAMs)
    works on the finer grid while the classifier keeps an undilated backbone: EfficientNet-Lite0
    at output stride 32 with ``pcm_stride: 16`` gives PCM a 14 x 14 grid at crop 224, not 7 x 7.
    """

    view_scale: float = 0.3
    classifier_dropout: float = 0.5
    pcm_channels: tuple[int, int] = (64, 128)
    pcm_embed_channels: int = 192
    pcm_embed_gain: float = 4.0
    pcm_chunk_size: int = 4096
    ecr_top_fraction: float = 0.2
    rvmin_fraction: float = 0.25
    pcm_stride: Optional[int] = None

    def __post_init__(self) -> None:
        self.pcm_channels = tuple(self.pcm_channels)
        if self.pcm_stride is not None and (not isinstance(self.pcm_stride, int)
                                            or isinstance(self.pcm_stride, bool)
                                            or self.pcm_stride < 1):
            raise ConfigError(f"method.seam.pcm_stride={self.pcm_stride!r}: expected null or a "
                              "positive stride such as 16")
        _check_range("seam", "view_scale", self.view_scale, 0.0, 1.0, low_open=True)
        _check_range("seam", "classifier_dropout", self.classifier_dropout, 0.0, 1.0,
                     high_open=True)
        _check_range("seam", "ecr_top_fraction", self.ecr_top_fraction, 0.0, 1.0, low_open=True)
        _check_range("seam", "rvmin_fraction", self.rvmin_fraction, 0.0, 1.0, low_open=True)
        if len(self.pcm_channels) != 2 or min(self.pcm_channels) < 1:
            raise ConfigError(f"method.seam.pcm_channels={self.pcm_channels!r}: expected two "
                              "positive channel counts")
        if self.pcm_embed_channels < 1 or self.pcm_chunk_size < 0:
            raise ConfigError("method.seam: pcm_embed_channels must be >= 1 and pcm_chunk_size "
                              f">= 0, got {self.pcm_embed_channels} and {self.pcm_chunk_size}")


@dataclass
class PLDAConfig:
    """PLDA's MaskAssign threshold and the multi-head domain classifier behind the GRL."""

    tau: float = 0.6
    domain_hidden: tuple[int, int] = (1024, 512)
    domain_dropout: float = 0.5
    grl_gamma: float = 10.0
    # 0 (the reference): every pixel found again after erasing is target. k > 0: only those
    # within k cells (Chebyshev, on the CAM grid) of the class's source, the "non-discriminative
    # part next to the discriminative one"; benchmarks/plda_domains.py measures what it changes.
    target_near: int = 0

    def __post_init__(self) -> None:
        self.domain_hidden = tuple(self.domain_hidden)
        if isinstance(self.target_near, bool) or not isinstance(self.target_near, int) \
                or self.target_near < 0:
            raise ConfigError(f"method.plda.target_near={self.target_near!r}: expected a "
                              "non-negative integer (grid cells; 0 = no restriction)")
        _check_range("plda", "tau", self.tau, 0.0, 1.0, high_open=True)
        _check_range("plda", "domain_dropout", self.domain_dropout, 0.0, 1.0, high_open=True)
        if len(self.domain_hidden) != 2 or min(self.domain_hidden) < 1:
            raise ConfigError(f"method.plda.domain_hidden={self.domain_hidden!r}: expected two "
                              "positive channel counts")
        if self.grl_gamma <= 0:
            raise ConfigError(f"method.plda.grl_gamma={self.grl_gamma!r}: expected > 0")


@dataclass
class PAMRConfig:
    """Pixel-adaptive mask refinement (Araslanov & Roth, CVPR 2020) used by CPS."""

    iterations: int = 10
    dilations: tuple[int, ...] = (1, 2, 4, 8, 12, 24)

    def __post_init__(self) -> None:
        self.dilations = tuple(self.dilations)
        if self.iterations < 0 or not self.dilations or min(self.dilations) < 1:
            raise ConfigError(f"method.pamr: iterations={self.iterations!r} must be >= 0 and "
                              f"dilations={list(self.dilations)!r} positive integers")


@dataclass
class CPSConfig:
    """Confident pseudo-supervision: PAMR-refined CAM cut into one-hot pseudo labels.

    A class k claims pixel u when P_k(u) > max(cutoff_low, cutoff_top * max_u P_k)
    (``cutoff_top_bg`` for the background); ``background_logit`` replaces the CAM's background
    logit before the softmax.

    ``loss_background``: the background logit that the CPS cross-entropy sees. ``real``: the
    classifier's own. ``constant``: ``background_logit`` in value, with the gradient still passed
    to the real logit (A0 - sg(A0) + 1), as the published code computes it (there the in-place
    write of 1 into a ``.detach()`` alias of the CAM reaches the tensor the loss reads). null
    follows ``method.reference``: ``constant`` when it is true, otherwise the default.
    """

    cutoff_low: float = 0.2
    cutoff_top: float = 0.6
    cutoff_top_bg: float = 0.7
    background_logit: float = 1.0
    loss_background: Optional[Literal["real", "constant"]] = None

    def __post_init__(self) -> None:
        if self.loss_background not in (None, "real", "constant"):
            raise ConfigError(f"method.cps.loss_background={self.loss_background!r}: expected "
                              "null, 'real' or 'constant'")
        if not math.isfinite(self.background_logit):
            raise ConfigError(f"method.cps.background_logit={self.background_logit!r}: expected "
                              "a finite number")
        for name in ("cutoff_low", "cutoff_top", "cutoff_top_bg"):
            _check_range("cps", name, getattr(self, name), 0.0, 1.0)


@dataclass
class LossWeights:
    """Weight of each loss term in the total (the terms are returned unweighted)."""

    cls: float = 1.0
    rvmin: float = 1.0
    er: float = 1.0
    ecr: float = 1.0
    domain: float = 1.0
    cps_source: float = 1.0
    cps_target: float = 1.0

    def __post_init__(self) -> None:
        for f in fields(self):
            if getattr(self, f.name) < 0:
                raise ConfigError(f"method.weights.{f.name}={getattr(self, f.name)!r}: "
                                  "expected a weight >= 0")


@dataclass
class MethodConfig:
    """Which stage-1 method to train and all its settings.

    ``reference=True`` reproduces the published PLDA code (usr922/plda) exactly (a pinned step,
    ``tests/test_reference_step.py``); the default (False) differs in these details:

    1. Erased second pass. Reference: run in train mode, so Dropout2d(0.5) before the classifier
       (and the backbone's own dropout) is active and the target regions T come from a randomly
       thinned, 2x-rescaled feature map. Default: dropout is switched off for that no-grad pass
       only, so T is the model's deterministic answer on the erased image, as at inference.
    2. Domain loss over classes. Reference: summed over the classes, so its size (and the
       reversed gradient reaching the backbone) grows with the number of classes in the batch.
       Default: averaged over the classes that have at least one labelled pixel in the batch
       (the count the reference computes and never uses); scale it with ``weights.domain``.
    3. CPS class balance. Reference: pixel weights (N - N_k)/(N + 1) counted on the pseudo
       label after restricting it to S (or T) with the background removed, so an image with one
       foreground class (most VOC images) gets weight 0 and no CPS loss. Default: the counts N,
       N_k come from the full PAMR pseudo label (background included), as in 1-stage-wseg where
       this weighting comes from; the loss is still applied only on S (or T) pixels.
    4. CPS's background logit (``cps.loss_background``). Reference: the cross-entropy reads the
       constant 1 in channel 0 (its gradient still reaches the real logit). Default: see
       ``DEFAULT_CPS_LOSS_BACKGROUND`` and docs/methods.md for the measurement behind it.
    """

    # A stage-1 method registered in ``plda.registry.METHODS`` (built in: cam, seam, cam_plda,
    # seam_plda).
    name: Annotated[str, METHODS] = "seam_plda"
    reference: bool = False
    seam: SEAMConfig = field(default_factory=SEAMConfig)
    plda: PLDAConfig = field(default_factory=PLDAConfig)
    pamr: PAMRConfig = field(default_factory=PAMRConfig)
    cps: CPSConfig = field(default_factory=CPSConfig)
    weights: LossWeights = field(default_factory=LossWeights)

    def __post_init__(self) -> None:
        if self.name not in METHODS:
            METHODS.get(self.name)  # a ConfigError naming the registered methods


# What ``method.cps.loss_background: null`` means outside reference mode.
DEFAULT_CPS_LOSS_BACKGROUND = "real"


def cps_loss_background(cfg: MethodConfig) -> str:
    """``real`` or ``constant``: the background logit CPS's cross-entropy sees
    (:class:`CPSConfig`); null follows ``reference``."""
    if cfg.cps.loss_background is not None:
        return cfg.cps.loss_background
    return "constant" if cfg.reference else DEFAULT_CPS_LOSS_BACKGROUND
