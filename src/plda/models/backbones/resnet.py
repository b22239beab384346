"""ResNet-50 / ResNet-101 from torchvision, dilated to output stride 8 or 16 (DeepLab-style),
without avgpool/fc; parameter names are torchvision's so its ImageNet state dicts load as they are.
"""

from __future__ import annotations

from typing import Sequence

from torch import Tensor

from plda.errors import ConfigError, PldaError
from plda.models.backbones.base import Backbone
from plda.registry import BACKBONES

_DILATE = {8: [False, True, True], 16: [False, False, True], 32: [False, False, False]}


@BACKBONES.register("resnet101", kwargs={"depth": 101}, low_level="layer1")
@BACKBONES.register("resnet50", kwargs={"depth": 50}, low_level="layer1")
class TorchvisionResNet(Backbone):
    """Levels ``stem`` (64 ch, /4, after max-pool), ``layer1`` (256, /4), ``layer2`` (512, /8),
    ``layer3`` (1024) and ``layer4`` (2048) at the output stride; CAMs come from ``layer4``."""

    level_names = ("stem", "layer1", "layer2", "layer3", "layer4")
    final_level = "layer4"
    pcm_levels = ("layer2", "layer3")
    # Stem and the first stage stay at their ImageNet values (detectron2's freeze_at=2).
    default_frozen_layers = ("conv1", "bn1", "layer1")
    pretrained_names = ("torchvision", "torchvision:IMAGENET1K_V1", "torchvision:IMAGENET1K_V2")

    def __init__(self, depth: int = 50, *, output_stride: int = 8, frozen_bn: bool = True,
                 frozen_layers: Sequence[str] | None = None) -> None:
        import torchvision

        if depth not in (50, 101):
            raise ConfigError(f"ResNet depth {depth} is not supported; expected 50 or 101")
        if output_stride not in _DILATE:
            raise ConfigError(f"output_stride={output_stride} is not supported by resnet{depth}; "
                              f"expected one of {sorted(_DILATE)}")
        super().__init__(frozen_bn=frozen_bn)
        self.depth, self.name = depth, f"resnet{depth}"
        net = getattr(torchvision.models, f"resnet{depth}")(
            weights=None, replace_stride_with_dilation=_DILATE[output_stride])
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
            setattr(self, name, getattr(net, name))
        self.channels = {"stem": 64, "layer1": 256, "layer2": 512, "layer3": 1024, "layer4": 2048}
        self.strides = {"stem": 4, "layer1": 4, "layer2": 8,
                        "layer3": min(16, output_stride), "layer4": output_stride}
        self._setup_freezing(frozen_layers)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        out = {"stem": self.maxpool(self.relu(self.bn1(self.conv1(x))))}
        x = out["stem"]
        for level in self.level_names[1:]:
            x = out[level] = getattr(self, level)(x)
        return out

    def _named_pretrained(self, name: str) -> dict[str, Tensor]:
        """torchvision's ImageNet weights (downloaded into the torch hub cache on first use);
        ``torchvision`` means IMAGENET1K_V1, the weights WSSS work (IRN, DeepLab) starts from."""
        import torchvision

        from plda.utils.dist import is_main_process

        variant = name.partition(":")[2] or "IMAGENET1K_V1"
        weights = getattr(torchvision.models, f"ResNet{self.depth}_Weights")[variant]
        try:
            return weights.get_state_dict(progress=is_main_process(), weights_only=True)
        except (OSError, RuntimeError) as err:
            raise PldaError(f"could not download torchvision weights {weights} from {weights.url}: "
                            f"{err}. Download the file elsewhere and pass its path as `pretrained`"
                            ) from err
