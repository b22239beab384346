"""One convolution over several views at once, as a single matrix product (CPU training).

SEAM and PLDA pass each training image through the backbone twice: at the crop size and at 0.3x
(a 128 crop gives 16x16 and 5x5 maps at output stride 8). On the deep, wide layers of ResNet-38
(1024-4096 channels, dilation 2-4) oneDNN's backward kernels run at a third to a half of the
CPU's matrix-multiply speed, and on the 5x5 maps at a tenth. ``joint_conv2d`` computes the same
convolution of every view as one GEMM over the concatenated im2col columns of all views and all
images::

    out[:, views] = W (Cout x C*k*k)  @  [cols(view 1) | cols(view 2)]  (C*k*k x sum of pixels)

and, in backward, the weight gradient of all views in one GEMM (which is also their sum, so the
layer's gradient is complete at once) and the input gradients with one GEMM plus ``fold``. Only
the views' inputs are saved; the columns are rebuilt in backward, so activation memory is that of
``F.conv2d``. Results equal ``F.conv2d`` to float rounding (tests/test_layers.py).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# PLDA_JOINT_CONV=0 keeps one F.conv2d per view (benchmarks/train_step.py compares both).
JOINT_CONV = os.environ.get("PLDA_JOINT_CONV", "1") != "0"
# Above this many output pixels per image (largest view) oneDNN is about as fast: F.conv2d.
JOINT_CONV_MAX_PIXELS = 16 * 16


class ConvGeometry:
    def __init__(self, weight: Tensor, stride: tuple[int, int], padding: tuple[int, int],
                 dilation: tuple[int, int]) -> None:
        self.kernel = tuple(weight.shape[-2:])
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self.pointwise = self.kernel == (1, 1) and stride == (1, 1) and padding == (0, 0)

    def out_size(self, h: int, w: int) -> tuple[int, int]:
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self.kernel, self.stride, self.padding, \
            self.dilation
        return ((h + 2 * ph - dh * (kh - 1) - 1) // sh + 1,
                (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1)


def _columns(x: Tensor, conv: ConvGeometry) -> Tensor:
    """(C*k*k, N*L) im2col columns of x (N, C, H, W), images side by side."""
    c = x.shape[1]
    if conv.pointwise:
        return x.transpose(0, 1).reshape(c, -1)
    cols = F.unfold(x, conv.kernel, dilation=conv.dilation, padding=conv.padding,
                    stride=conv.stride)                      # (N, C*k*k, L)
    return cols.transpose(0, 1).reshape(cols.shape[1], -1)


class _JointConv2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight: Tensor, geometry: ConvGeometry, *inputs: Tensor) -> tuple[Tensor, ...]:
        cout = weight.shape[0]
        w2d = weight.reshape(cout, -1)
        cols = torch.cat([_columns(x, geometry) for x in inputs], 1)
        out = w2d @ cols                                     # (Cout, sum N*L)
        del cols
        outputs, start = [], 0
        for x in inputs:
            n = x.shape[0]
            ho, wo = geometry.out_size(*x.shape[-2:])
            part = out[:, start:start + n * ho * wo]
            start += n * ho * wo
            outputs.append(part.reshape(cout, n, ho, wo).transpose(0, 1).contiguous())
        ctx.geometry = geometry
        ctx.save_for_backward(weight, *inputs)
        return tuple(outputs)

    @staticmethod
    def backward(ctx, *grads: Tensor):
        weight, *inputs = ctx.saved_tensors
        geometry = ctx.geometry
        cout = weight.shape[0]
        g = torch.cat([gr.transpose(0, 1).reshape(cout, -1) for gr in grads], 1)  # (Cout, T)
        grad_weight = None
        if ctx.needs_input_grad[0]:
            cols = torch.cat([_columns(x, geometry) for x in inputs], 1)
            grad_weight = (g @ cols.t()).reshape(weight.shape)
            del cols
        grad_inputs: list[Tensor | None] = [None] * len(inputs)
        wanted = [i for i, x in enumerate(inputs) if ctx.needs_input_grad[2 + i]]
        if wanted:
            gcols = weight.reshape(cout, -1).t() @ g         # (C*k*k, T)
            start = 0
            for i, x in enumerate(inputs):
                n, c, h, w = x.shape
                ho, wo = geometry.out_size(h, w)
                part = gcols[:, start:start + n * ho * wo]
                start += n * ho * wo
                if i not in wanted:
                    continue
                if geometry.pointwise:
                    grad_inputs[i] = part.reshape(c, n, h, w).transpose(0, 1).contiguous()
                else:
                    part = part.reshape(part.shape[0], n, ho * wo).transpose(0, 1)
                    grad_inputs[i] = F.fold(part, (h, w), geometry.kernel,
                                            dilation=geometry.dilation, padding=geometry.padding,
                                            stride=geometry.stride)
        return (grad_weight, None, *grad_inputs)


def _joint_geometry(conv: nn.Conv2d, inputs: Sequence[Tensor]) -> ConvGeometry | None:
    """The geometry to run ``conv`` jointly over ``inputs`` with, or ``None`` to keep F.conv2d."""
    if not (JOINT_CONV and torch.is_grad_enabled() and conv.groups == 1 and conv.bias is None
            and conv.padding_mode == "zeros" and not isinstance(conv.padding, str)):
        return None
    if not all(x.device.type == "cpu" and x.dtype == torch.float32 for x in inputs):
        return None
    if torch.is_autocast_enabled("cpu"):  # mixed precision keeps oneDNN's bf16/fp16 kernels
        return None
    if not (conv.weight.requires_grad or any(x.requires_grad for x in inputs)):
        return None
    geometry = ConvGeometry(conv.weight, tuple(conv.stride), tuple(conv.padding),
                            tuple(conv.dilation))
    largest = max(geometry.out_size(*x.shape[-2:]) for x in inputs)
    return geometry if largest[0] * largest[1] <= JOINT_CONV_MAX_PIXELS else None


def joint_conv2d(conv: nn.Conv2d, inputs: Sequence[Tensor]) -> list[Tensor]:
    """``[conv(x) for x in inputs]``, as one GEMM when that is faster (CPU fp32 training of
    bias-free, ungrouped convolutions on small maps); otherwise exactly that list."""
    geometry = _joint_geometry(conv, inputs)
    if geometry is None:
        return [conv(x) for x in inputs]
    return list(_JointConv2d.apply(conv.weight, geometry, *inputs))
