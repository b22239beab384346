"""Backbone base class: named multi-level features, frozen layers and checked weight loading."""

from __future__ import annotations

import abc
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from torch import Tensor, nn

from plda.data.transforms import IMAGENET_MEAN, IMAGENET_STD  # one definition, shared
from plda.errors import ConfigError, WeightsError

log = logging.getLogger(__name__)

# ImageNet classifier weights that pretrained files carry but a backbone has no use for.
CLASSIFIER_PREFIXES = ("fc.", "_fc.", "linear1000")


@dataclass(frozen=True)
class LoadReport:
    """What ``Backbone.load_pretrained`` did: where from, how many tensors, what it ignored."""

    source: str
    loaded: int
    dropped: tuple[str, ...]


class Backbone(nn.Module, abc.ABC):
    """A feature extractor that returns a dict of named levels, shallow to deep.

    Subclasses set the class/instance attributes below, build their layers, then call
    ``_setup_freezing``. ``frozen_layers`` (module names) get ``requires_grad=False`` and stay in
    eval mode; with ``frozen_bn`` every BatchNorm also stays in eval mode with frozen affine
    parameters, as SEAM's ``resnet38d.Net.train`` does.
    """

    name: str = "backbone"  # the registry name, used in messages
    level_names: tuple[str, ...]
    channels: dict[str, int]
    strides: dict[str, int]
    final_level: str
    pcm_levels: tuple[str, str]
    input_mean: tuple[float, float, float] = IMAGENET_MEAN  # 0-1 RGB units
    input_std: tuple[float, float, float] = IMAGENET_STD
    default_frozen_layers: tuple[str, ...] = ()
    pretrained_names: tuple[str, ...] = ()  # special values of ``pretrained`` besides a path

    def __init__(self, *, frozen_bn: bool = True) -> None:
        super().__init__()
        self.frozen_bn = frozen_bn
        self.frozen_layers: tuple[str, ...] = ()

    @abc.abstractmethod
    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Return every level in ``level_names`` for an image batch ``x`` (N, 3, H, W)."""

    def forward_views(self, images: Sequence[Tensor]) -> list[dict[str, Tensor]]:
        """:meth:`forward` of several batches (sizes may differ), one result per batch.

        Backbones whose layers form a chain override this to run the batches layer by layer in
        lockstep: the backward pass then reaches each layer's weights from every view in turn,
        so a layer's gradient is complete (and, with the in-backward optimizer step, freed)
        before the next layer's is computed, instead of one view's gradients for the whole
        network waiting for the other view's backward pass.
        """
        return [self(x) for x in images]

    def _setup_freezing(self, frozen_layers: Sequence[str] | None) -> None:
        names = self.default_frozen_layers if frozen_layers is None else tuple(frozen_layers)
        modules = dict(self.named_modules())
        unknown = [n for n in names if n not in modules or n == ""]
        if unknown:
            top = [n for n, _ in self.named_children()]
            raise ConfigError(f"frozen_layers: {unknown} are not layers of {self.name}; "
                              f"expected names among {top}")
        self.frozen_layers = tuple(names)
        self.train(self.training)

    def train(self, mode: bool = True) -> "Backbone":
        """Set train/eval mode but keep frozen layers (and, if ``frozen_bn``, all BN) frozen."""
        super().train(mode)
        modules = dict(self.named_modules())
        for name in self.frozen_layers:
            modules[name].requires_grad_(False)
            modules[name].eval()
        if self.frozen_bn:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
                    m.requires_grad_(False)
        return self

    def parameter_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(weights, biases) of the trainable parameters, for the 1x / 2x learning-rate groups."""
        weights: list[nn.Parameter] = []
        biases: list[nn.Parameter] = []
        for name, p in self.named_parameters():
            if p.requires_grad:
                (biases if name.endswith("bias") else weights).append(p)
        return weights, biases

    # ---- pretrained weights -------------------------------------------------------------------

    def load_pretrained(self, pretrained: str | Path) -> LoadReport:
        """Load ImageNet weights from a file (.safetensors, .pth, MXNet .params for ResNet-38)
        or one of ``pretrained_names``; raises ``WeightsError`` when they do not fit."""
        source = str(pretrained)
        if source in self.pretrained_names:
            state = self._named_pretrained(source)
        else:
            path = Path(source).expanduser()
            if not path.is_file():
                names = f" or one of {list(self.pretrained_names)}" if self.pretrained_names else ""
                raise WeightsError(f"pretrained weights for {self.name}: file not found: {source} "
                                   f"(expected a .safetensors, .pth or MXNet .params file{names})")
            from plda.weights.io import load_state_dict_file

            state = load_state_dict_file(path)
        return self.load_checked(self.convert_state_dict(state), source)

    def _named_pretrained(self, name: str) -> dict[str, Tensor]:
        """Fetch the weights behind a special ``pretrained`` name (overridden by subclasses)."""
        raise ConfigError(f"pretrained={name!r} is not available for {self.name}")

    def convert_state_dict(self, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Rename foreign parameter names to ours (identity unless a subclass knows a format)."""
        return dict(state)

    def load_checked(self, state: Mapping[str, Tensor], source: str) -> LoadReport:
        """Load ``state`` into the backbone: classifier keys are dropped, anything else that is
        missing, unexpected or of the wrong shape raises ``WeightsError`` naming the keys."""
        own = self.state_dict()
        extra = [k for k in state if k not in own]
        dropped = tuple(k for k in extra if k.startswith(CLASSIFIER_PREFIXES))
        unexpected = [k for k in extra if k not in dropped]
        # num_batches_tracked is a counter, absent from MXNet and older PyTorch files.
        missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
        mismatched = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                      for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
        problems = [f"{what} ({len(keys)}): {keys[:8]}{' ...' if len(keys) > 8 else ''}"
                    for what, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                                       ("shape mismatches", mismatched)) if keys]
        if problems:
            raise WeightsError(f"weights {source} do not fit {self.name}: " + "; ".join(problems))
        matched = {k: state[k] for k in own if k in state}
        self.load_state_dict(matched, strict=False)
        log.info("loaded %d tensors into %s from %s (dropped %d classifier tensors)",
                 len(matched), self.name, source, len(dropped))
        return LoadReport(source=source, loaded=len(matched), dropped=dropped)
