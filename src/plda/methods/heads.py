"""New layers shared by the methods: SEAM-style 1x1 convs and the CAM classifier head."""

from __future__ import annotations

from torch import Tensor, nn


def conv1x1(in_channels: int, out_channels: int, *, bias: bool = False, init: str = "xavier",
            gain: float = 1.0) -> nn.Conv2d:
    """A new 1x1 conv initialised as in SEAM: Xavier-uniform (with ``gain``) or Kaiming-normal
    weights; a bias, if any, keeps PyTorch's default initialisation as the reference does."""
    conv = nn.Conv2d(in_channels, out_channels, 1, bias=bias)
    if init == "xavier":
        nn.init.xavier_uniform_(conv.weight, gain=gain)
    elif init == "kaiming":
        nn.init.kaiming_normal_(conv.weight)
    else:
        raise ValueError(f"conv1x1 init={init!r}: expected 'xavier' or 'kaiming'")
    return conv


class ClassifierHead(nn.Module):
    """Dropout2d then a bias-free Xavier 1x1 conv: SEAM's ``fc8`` (C+1 outputs, dropout 0.5) or
    IRN's CAM classifier (C outputs, no dropout)."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv = conv1x1(in_channels, out_channels)

    def forward(self, features: Tensor) -> Tensor:
        return self.conv(self.dropout(features))
