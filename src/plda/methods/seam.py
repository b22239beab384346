"""SEAM (Wang et al., CVPR 2020): pixel correlation module (PCM) and the equivariant losses,
computed as YudeWang/SEAM's ``train_SEAM.py`` does (kept unchanged by usr922/plda)."""

from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import Tensor, nn

from plda.errors import ConfigError
from plda.methods.base import CamOutput, StageOneModel, ViewOutput
from plda.methods.cam import classification_loss
from plda.methods.config import MethodConfig
from plda.methods.heads import ClassifierHead, conv1x1
from plda.models.fastpath import full_precision
from plda.registry import METHODS

_EPS = 1e-5


def _resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear, align_corners=True (SEAM's choice everywhere); a no-op at the same size."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


def max_norm(cam: Tensor, eps: float = _EPS) -> Tensor:
    """Per-map min-max normalisation of ReLU(cam): ReLU(x - min - eps) / (max - min + eps)."""
    cam = F.relu(cam)
    flat = cam.flatten(2)
    low = flat.amin(-1)[..., None, None]
    high = flat.amax(-1)[..., None, None]
    return F.relu(cam - low - eps) / (high - low + eps)


def with_background(label: Tensor) -> Tensor:
    """(B, C) foreground labels -> (B, C+1, 1, 1) with the always-present background first."""
    return torch.cat([torch.ones_like(label[:, :1]), label], 1)[:, :, None, None]


@torch.no_grad()
def pcm_seed(raw: Tensor) -> Tensor:
    """The CAM that PCM propagates (SEAM's ``cam_d_norm``): ReLU(A) over its per-map peak,
    background = 1 - max foreground, foreground kept only where it is the per-pixel maximum."""
    cam = F.relu(raw.detach())
    peak = cam.flatten(2).amax(-1)[..., None, None] + _EPS
    seed = F.relu(cam - _EPS) / peak
    fg = seed[:, 1:]
    fg_max = fg.amax(1, keepdim=True)
    return torch.cat([1 - fg_max, fg * (fg >= fg_max)], 1)


def pcm_revise(seed: Tensor, embedding: Tensor, chunk_size: int = 0) -> Tensor:
    """Revised CAM seed . S with S = ReLU(g^T g) column-normalised (+1e-5), g the per-pixel
    L2-normalised embedding. ``chunk_size`` > 0 builds S a block of query columns at a time
    (identical result; each column's normaliser only needs that column)."""
    b, k, h, w = seed.shape
    # Normalisations in full precision; under bf16 autocast only the two products run in bf16.
    g = full_precision(embedding).flatten(2)
    g = g / (g.norm(dim=1, keepdim=True) + _EPS)
    seed = full_precision(seed).flatten(2)
    n = h * w
    step = n if chunk_size <= 0 else chunk_size
    blocks = []
    for start in range(0, n, step):
        aff = F.relu(full_precision(g.transpose(1, 2) @ g[:, :, start:start + step]))
        aff = aff / (aff.sum(1, keepdim=True) + _EPS)
        blocks.append(full_precision(seed @ aff))
    out = blocks[0] if len(blocks) == 1 else torch.cat(blocks, -1)
    return out.view(b, k, h, w)


class PixelCorrelationModule(nn.Module):
    """SEAM's PCM: an embedding from the image and two detached backbone levels (``f8_3``,
    ``f8_4``, ``f9`` in the reference) whose self-affinity propagates the CAM seed."""

    def __init__(self, channels_a: int, channels_b: int, reduced: tuple[int, int] = (64, 128),
                 embed_channels: int = 192, embed_gain: float = 4.0) -> None:
        super().__init__()
        self.reduce_a = conv1x1(channels_a, reduced[0], init="kaiming")
        self.reduce_b = conv1x1(channels_b, reduced[1], init="kaiming")
        self.embed = conv1x1(3 + reduced[0] + reduced[1], embed_channels, gain=embed_gain)

    def forward(self, raw: Tensor, image: Tensor, level_a: Tensor, level_b: Tensor,
                chunk_size: int = 0) -> Tensor:
        """Revised CAM (B, K, h, w) on the grid of ``raw`` (B, K, h, w)."""
        size = raw.shape[-2:]
        # PCM must not train the backbone (SEAM detaches both levels). A 1x1 conv commutes with
        # bilinear resizing, so levels on another grid are resized after the cheap reduction.
        feats = [_resize(image, size),
                 F.relu(_resize(self.reduce_a(level_a.detach()), size)),
                 F.relu(_resize(self.reduce_b(level_b.detach()), size))]
        return pcm_revise(pcm_seed(raw), self.embed(torch.cat(feats, 1)), chunk_size)


def _pcm_grid_level(backbone: nn.Module, pcm_stride: int | None) -> str | None:
    """The level whose grid PCM works on for ``method.seam.pcm_stride`` (``None``: the CAM's)."""
    final = int(backbone.strides[backbone.final_level])
    if pcm_stride is None or pcm_stride == final:
        return None
    finer = [n for n in backbone.level_names if int(backbone.strides[n]) == pcm_stride]
    if pcm_stride > final or not finer:
        offered = sorted({int(s) for s in backbone.strides.values() if int(s) <= final})
        raise ConfigError(f"method.seam.pcm_stride={pcm_stride}: {backbone.name} at output "
                          f"stride {final} has no level at that stride; expected null or one "
                          f"of {offered}")
    return finer[-1]  # the deepest level on that grid


def rvmin_loss(cam_rv_fg: Tensor, fraction: float = 0.25) -> Tensor:
    """Mean of ReLU of the lowest ``fraction`` of per-pixel max over classes, per image
    (``adaptive_min_pooling_loss``); input: label-masked foreground revised CAMs (B, C, H, W)."""
    b, _, h, w = cam_rv_fg.shape
    k = max(1, int(h * w * fraction))
    lowest = cam_rv_fg.amax(1).flatten(1).topk(k, dim=1, largest=False).values
    return F.relu(lowest).sum() / (k * b)


def er_loss(cam_a_fg: Tensor, cam_b_fg: Tensor) -> Tensor:
    """Equivariant regularisation: mean |A - B| over batch, foreground channels and pixels."""
    return (cam_a_fg - cam_b_fg).abs().mean()


def ecr_target(cam: Tensor) -> Tensor:
    """SEAM's ``max_onehot`` target from a max-normalised, label-masked CAM (B, C+1, h, w):
    background = 1 - max foreground; foreground values kept only at the per-pixel maximum."""
    fg = cam[:, 1:]
    fg_max = fg.amax(1, keepdim=True)
    return torch.cat([1 - fg_max, fg * (fg == fg_max)], 1)


def ecr_loss(other_cam: Tensor, cam_rv: Tensor, fraction: float = 0.2) -> Tensor:
    """Equivariant cross regularisation, one direction: mean of the largest ``fraction`` of
    |ecr_target(other view's CAM) - revised CAM| over all C+1 channels and pixels, per image."""
    b, k1, h, w = cam_rv.shape
    diff = (ecr_target(other_cam.detach()) - cam_rv).abs().flatten(1)
    return diff.topk(max(1, int(k1 * h * w * fraction)), dim=1).values.mean()


@METHODS.register("seam")
class SEAMModel(StageOneModel):
    """Backbone + ``fc8`` (C+1, Dropout2d) + PCM; losses cls, rvmin, ER, ECR over two views."""

    has_background = True

    def __init__(self, cfg: MethodConfig, backbone: nn.Module, num_classes: int) -> None:
        super().__init__(backbone, num_classes, cfg.weights)
        self.seam_cfg = cfg.seam
        channels = backbone.channels
        level_a, level_b = backbone.pcm_levels
        self.classifier = ClassifierHead(channels[backbone.final_level], num_classes + 1,
                                         cfg.seam.classifier_dropout)
        self.pcm = PixelCorrelationModule(channels[level_a], channels[level_b],
                                          cfg.seam.pcm_channels, cfg.seam.pcm_embed_channels,
                                          cfg.seam.pcm_embed_gain)
        self.pcm_grid_level = _pcm_grid_level(backbone, cfg.seam.pcm_stride)

    def run_view(self, image: Tensor, chunk_size: int | None = None) -> ViewOutput:
        return self.run_views([image], chunk_size)[0]

    def run_views(self, images: list[Tensor], chunk_size: int | None = None) -> list[ViewOutput]:
        """Backbone, classifier and PCM of each image batch; the backbone runs the views in
        lockstep (:meth:`Backbone.forward_views`), which bounds the backward pass's memory."""
        level_a, level_b = self.backbone.pcm_levels
        chunk = self.seam_cfg.pcm_chunk_size if chunk_size is None else chunk_size
        views = []
        for image, levels in zip(images, self.backbone.forward_views(images)):
            features = levels[self.backbone.final_level]
            raw = full_precision(self.classifier(features))  # losses and PCM's seed in fp32
            if self.pcm_grid_level is not None:
                raw = _resize(raw, levels[self.pcm_grid_level].shape[-2:])
            cam_rv = self.pcm(raw, image, levels[level_a], levels[level_b], chunk)
            views.append(ViewOutput(features=features, raw=raw, cam_rv=cam_rv))
        return views

    def second_view(self, image: Tensor) -> Tensor:
        return F.interpolate(image, scale_factor=self.seam_cfg.view_scale, mode="bilinear",
                             align_corners=True)

    def training_views(self, image: Tensor) -> list[Tensor]:
        """The image and its ``view_scale`` rescaled copy."""
        return [image, self.second_view(image)]

    def baseline_losses(self, images: list[Tensor], views: list[ViewOutput], label: Tensor
                        ) -> dict[str, Tensor]:
        return self.seam_losses((views[0], views[1]), (images[0].shape[-2:],
                                                       images[1].shape[-2:]), label)

    def seam_losses(self, views: tuple[ViewOutput, ViewOutput],
                    sizes: tuple[tuple[int, int], tuple[int, int]], label: Tensor
                    ) -> dict[str, Tensor]:
        """cls, rvmin, ER and ECR as ``train_SEAM.py``: CAMs are first upsampled to their view's
        input size; view 1's max-normalised maps are then resized to view 2's size."""
        cfg = self.seam_cfg
        full_label = with_background(label)
        small = sizes[1]
        cls, rvmin, cams, rvs = [], [], [], []
        for view, size in zip(views, sizes):
            cam = _resize(view.raw, size)
            cam_rv = _resize(view.cam_rv, size)
            cls.append(classification_loss(cam.mean((2, 3))[:, 1:], label))
            rvmin.append(rvmin_loss(cam_rv[:, 1:] * label[:, :, None, None], cfg.rvmin_fraction))
            cams.append(_resize(max_norm(cam), small) * full_label)
            rvs.append(_resize(max_norm(cam_rv), small) * full_label)
        return {
            "cls": (cls[0] + cls[1]) / 2,
            "rvmin": (rvmin[0] + rvmin[1]) / 2,
            "er": er_loss(cams[0][:, 1:], cams[1][:, 1:]),
            # SEAM sums the two directions of ECR (and averages cls and rvmin).
            "ecr": ecr_loss(cams[1], rvs[0], cfg.ecr_top_fraction)
            + ecr_loss(cams[0], rvs[1], cfg.ecr_top_fraction),
        }

    @torch.no_grad()
    def cams(self, image: Tensor, chunk_size: int | None = None,
             revised: bool = True) -> CamOutput:
        if not revised:  # the classifier's map on PCM's grid, PCM itself skipped
            levels = self.backbone(image)
            raw = full_precision(self.classifier(levels[self.backbone.final_level]))
            if self.pcm_grid_level is not None:
                raw = _resize(raw, levels[self.pcm_grid_level].shape[-2:])
            return CamOutput(cam=raw[:, 1:], raw=raw)
        view = self.run_view(image, chunk_size)
        return CamOutput(cam=view.cam_rv[:, 1:], raw=view.raw)
