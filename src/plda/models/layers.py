"""Fast dilated depthwise convolutions on CPU, for the DeepLab-style dilated EfficientNet, and
convolutions with a frozen BatchNorm folded in (``conv_frozen_bn``).

PyTorch's CPU (oneDNN) kernels for dilated depthwise convolutions are slow in two places: the
input gradient (5-20x an undilated one) and the forward pass once the padding exceeds
``NATIVE_MAX_PADDING`` (5x5 kernel at dilation 4: 5-10x). ``dilated_depthwise_conv2d`` computes
the same function with fast kernels only:

* the input gradient of a stride-1 depthwise convolution is the same convolution of the output
  gradient with the flipped kernel, so it runs as a forward pass;
* forward passes run natively or "space-to-batch" (``space_to_batch_conv2d``, as
  TensorFlow's ``atrous_conv2d`` does): an undilated convolution over the d x d interleaved
  sub-grids, whose padding oneDNN handles fast; oneDNN's own kernel is slow beyond a padding of
  ``NATIVE_MAX_PADDING``, and which is faster below depends on the machine and layout, so the
  path is measured per layer shape like the weight gradient's (``PLDA_DILATED_FORWARD=native|
  subgrid|padding`` forces one, ``padding`` the fixed rule);
* the weight gradient, which oneDNN computes 4-15x slower dilated than undilated (EfficientNet-
  Lite0's layers at stride 8), runs either natively or as the undilated weight gradient over the
  sub-grids (``subgrid_weight_grad``), whichever this machine runs faster for the layer's
  shape: measured once and cached per machine like the convolution paths
  (``PLDA_DILATED_WEIGHT_GRAD=native|subgrid`` forces one).

The results equal ``F.conv2d`` to float rounding (tests/test_layers.py). The choices were timed
on EfficientNet-Lite0's layers with torch 2.x on CPU (benchmarks/backbone_speed.py): routing
all dilated layers, their weight gradients included, through space-to-batch was slower.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# PLDA_FOLD_FROZEN_BN=0 runs frozen BatchNorm as its own layer (benchmarks compare both).
FOLD_FROZEN_BN = os.environ.get("PLDA_FOLD_FROZEN_BN", "1") != "0"
# PLDA_FAST_DILATED_DEPTHWISE=0 keeps plain F.conv2d (benchmarks/backbone_speed.py compares both).
FAST_DILATED_DEPTHWISE = os.environ.get("PLDA_FAST_DILATED_DEPTHWISE", "1") != "0"
# oneDNN's dilated depthwise forward is 5-10x slower beyond this padding (5x5 kernel, dilation 4).
NATIVE_MAX_PADDING = 4
# The paths of the weight gradient and of the forward (and input gradient): auto (measured per
# layer shape), native or subgrid; the forward also takes "padding" (NATIVE_MAX_PADDING's rule).
PATHS = ("native", "subgrid")
DILATED_WEIGHT_GRAD = os.environ.get("PLDA_DILATED_WEIGHT_GRAD", "auto").strip().lower()
DILATED_FORWARD = os.environ.get("PLDA_DILATED_FORWARD", "auto").strip().lower()

Padding = tuple[int, int, int, int]  # F.pad order: left, right, top, bottom


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def _axis_plan(size: int, before: int, after: int, d: int) -> tuple[int, int, int]:
    """Split the padding of one axis into explicit zeros (before, after) and a symmetric padding
    of the sub-grids: ``before`` is a multiple of d once the explicit part is added, so every
    sub-grid starts with the same number of padded rows, and the padded length is a multiple of
    d. Trailing extra zeros only add output rows that are cropped."""
    explicit_before = before % d
    sub = before // d
    explicit_after = max(0, after - sub * d)
    explicit_after += -(explicit_before + size + explicit_after) % d
    return explicit_before, explicit_after, sub


def _to_subgrids(x: Tensor, dh: int, dw: int) -> Tensor:
    """(N, C, H, W) with H, W divisible by dh, dw -> (dh*dw*N, C, H/dh, W/dw), sub-grid (p, q)
    holding pixels (p + i*dh, q + j*dw). Channels-last memory: the copy moves runs of C values
    and oneDNN's depthwise kernels are fastest in that layout."""
    n, c, h, w = x.shape
    return (x.permute(0, 2, 3, 1).reshape(n, h // dh, dh, w // dw, dw, c)
            .permute(2, 4, 0, 1, 3, 5).reshape(dh * dw * n, h // dh, w // dw, c)
            .permute(0, 3, 1, 2))


def _from_subgrids(y: Tensor, dh: int, dw: int, channels_last: bool) -> Tensor:
    """Inverse of ``_to_subgrids``: interleave the sub-grids back into full images, stored
    channels-last or contiguous. Keeping the caller's layout matters: a channels-last tensor
    reaching PyTorch's NCHW-tuned layers downstream makes them several times slower."""
    b, c, h, w = y.shape
    n = b // (dh * dw)
    if channels_last:
        return (y.permute(0, 2, 3, 1).reshape(dh, dw, n, h, w, c).permute(2, 3, 0, 4, 1, 5)
                .reshape(n, h * dh, w * dw, c).permute(0, 3, 1, 2))
    return y.reshape(dh, dw, n, c, h, w).permute(2, 3, 4, 0, 5, 1).reshape(n, c, h * dh, w * dw)


def _subgrid_plan(x: Tensor, kernel: Sequence[int], dilation: tuple[int, int],
                  padding: Padding):
    """Explicit F.pad amounts, sub-grid conv padding and the exact output size."""
    (dh, dw), (left, right, top, bottom) = dilation, padding
    h, w = x.shape[-2:]
    kh, kw = kernel
    out_h, out_w = h + top + bottom - (kh - 1) * dh, w + left + right - (kw - 1) * dw
    if out_h < 1 or out_w < 1:
        raise ValueError(f"input {tuple(x.shape)} padded by {tuple(padding)} is smaller than the "
                         f"{kh}x{kw} kernel dilated by {dilation}")
    pad_top, pad_bottom, sub_h = _axis_plan(h, top, bottom, dh)
    pad_left, pad_right, sub_w = _axis_plan(w, left, right, dw)
    return (pad_left, pad_right, pad_top, pad_bottom), (sub_h, sub_w), (out_h, out_w)


def _subgrid_input(x: Tensor, kernel: Sequence[int], dilation: tuple[int, int],
                   padding: Padding):
    """The padded input's sub-grids and what the undilated convolution over them needs: (sub-
    grids, the explicit F.pad amounts, the sub-grids' symmetric padding, the exact output size,
    whether ``x`` is channels-last)."""
    explicit, sub_padding, out_size = _subgrid_plan(x, kernel, dilation, padding)
    channels_last = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
    if any(explicit):
        x = F.pad(x, explicit)
    return _to_subgrids(x, *dilation), explicit, sub_padding, out_size, channels_last


def _subgrid_conv(sub, weight: Tensor, bias: Tensor | None, dilation: tuple[int, int],
                  groups: int) -> Tensor:
    """The convolution over ``sub`` (from ``_subgrid_input``), back on the full grid."""
    sub_x, _, sub_padding, (out_h, out_w), channels_last = sub
    y = F.conv2d(sub_x, weight, bias, 1, sub_padding, 1, groups)
    return _from_subgrids(y, *dilation, channels_last)[:, :, :out_h, :out_w]


def space_to_batch_conv2d(x: Tensor, weight: Tensor, bias: Tensor | None = None, *,
                          dilation: int | Sequence[int], padding: Sequence[int] = (0, 0, 0, 0),
                          groups: int = 1) -> Tensor:
    """``F.conv2d(F.pad(x, padding), weight, bias, 1, 0, dilation, groups)`` computed as an
    undilated convolution over the batch of the dh x dw interleaved sub-grids of the padded
    input (stride 1 only; ``padding`` in F.pad order left, right, top, bottom).

    Output pixel (i, j) only reads padded pixels congruent to it modulo the dilation, so each
    sub-grid is an independent image on which the kernel taps, d apart on the full grid, are
    adjacent. Differentiable through plain tensor ops."""
    dilation = _pair(dilation)
    sub = _subgrid_input(x, weight.shape[-2:], dilation, tuple(padding))
    return _subgrid_conv(sub, weight, bias, dilation, groups)


def _grad_padding(sub_x: Tensor, kernel: Sequence[int], dilation: tuple[int, int],
                  sub_padding: tuple[int, int], out_size: tuple[int, int]) -> Padding:
    """The zeros that extend the output gradient to the sub-grids' full output (F.pad order)."""
    sub_h = sub_x.shape[-2] + 2 * sub_padding[0] - (kernel[0] - 1)
    sub_w = sub_x.shape[-1] + 2 * sub_padding[1] - (kernel[1] - 1)
    return 0, sub_w * dilation[1] - out_size[1], 0, sub_h * dilation[0] - out_size[0]


def subgrid_weight_grad(x: Tensor | None, grad: Tensor, weight_shape: Sequence[int], *,
                        dilation: int | Sequence[int], padding: Sequence[int],
                        sub=None, sub_grad: Tensor | None = None) -> Tensor:
    """The weight gradient of ``F.conv2d(F.pad(x, padding), w, None, 1, 0, dilation,
    groups=C)`` for a depthwise ``w`` of ``weight_shape`` (C, 1, kh, kw), given the output's
    gradient ``grad``, as the undilated weight gradient over the sub-grids of
    ``space_to_batch_conv2d``: tap t of the kernel pairs output pixel i with input pixel
    i + t * d, and on the sub-grids that pair is one pixel apart. ``grad`` is zero-padded to
    the sub-grids' full output (the rows the forward crops contribute nothing).

    ``sub``: the input's sub-grids as the forward made them (``_subgrid_input``), in place of
    ``x``; ``sub_grad``: the gradient's sub-grids already made (for the input gradient) when
    they are the same tensor this needs. Either saves its copies."""
    dilation = _pair(dilation)
    kernel = tuple(weight_shape[-2:])
    if sub is None:
        sub = _subgrid_input(x, kernel, dilation, tuple(padding))
    sub_x, _, sub_padding, out_size, _ = sub
    if sub_grad is None:
        sub_grad = _to_subgrids(F.pad(grad, _grad_padding(sub_x, kernel, dilation, sub_padding,
                                                          out_size)), *dilation)
    return torch.nn.grad.conv2d_weight(sub_x, tuple(weight_shape), sub_grad, 1, sub_padding, 1,
                                       sub_x.shape[1])


def _native_weight_grad(x: Tensor, grad: Tensor, weight_shape: Sequence[int],
                        dilation: tuple[int, int], padding: Padding) -> Tensor:
    conv_input, conv_padding = _conv_input_and_padding(x, padding)
    return torch.nn.grad.conv2d_weight(conv_input, tuple(weight_shape), grad, 1, conv_padding,
                                       dilation, x.shape[1])


def _measured_path(kind: str, mode: str, setting: str, x: Tensor, kernel: Sequence[int],
                   dilation: tuple[int, int], padding: Padding, candidates) -> str:
    """``native`` or ``subgrid``: ``mode`` when it names one, else the faster for this shape,
    dtype, layout and thread count on this machine (measured once and cached with the
    convolution paths, ``plda.models.fastpath.TUNER``)."""
    if mode in PATHS:
        return mode
    if mode != "auto":
        from plda.errors import ConfigError

        raise ConfigError(f"{setting}={mode!r}: expected auto, native or subgrid")
    from plda.models.fastpath import TUNER

    layout = "nhwc" if (not x.is_contiguous()
                        and x.is_contiguous(memory_format=torch.channels_last)) else "nchw"
    key = (f"{kind}|{'x'.join(map(str, x.shape))}|k{'x'.join(map(str, kernel))}"
           f"|d{dilation[0]}x{dilation[1]}|p{'x'.join(map(str, padding))}"
           f"|{str(x.dtype).replace('torch.', '')}|{layout}|t{torch.get_num_threads()}")
    return TUNER.choose(key, candidates, PATHS)


def weight_grad_path(x: Tensor, grad: Tensor, weight_shape: Sequence[int],
                     dilation: tuple[int, int], padding: Padding) -> str:
    """The weight gradient's path (``PLDA_DILATED_WEIGHT_GRAD``, ``auto``: measured)."""
    def candidates():
        return {"native": lambda: _native_weight_grad(x, grad, weight_shape, dilation, padding),
                "subgrid": lambda: subgrid_weight_grad(x, grad, weight_shape, dilation=dilation,
                                                       padding=padding)}

    return _measured_path("dwgrad", DILATED_WEIGHT_GRAD, "PLDA_DILATED_WEIGHT_GRAD", x,
                          weight_shape[-2:], dilation, padding, candidates)


def forward_path(x: Tensor, weight: Tensor, dilation: tuple[int, int], padding: Padding) -> str:
    """The forward's (and the flipped-kernel input gradient's) path: ``PLDA_DILATED_FORWARD``
    (``auto``: measured; ``padding``: oneDNN up to ``NATIVE_MAX_PADDING``, sub-grids beyond)."""
    if DILATED_FORWARD == "padding":
        return "subgrid" if max(padding) > NATIVE_MAX_PADDING else "native"

    def candidates():
        return {"native": lambda: _plain_depthwise(x, weight, None, dilation, padding),
                "subgrid": lambda: space_to_batch_conv2d(x, weight, None, dilation=dilation,
                                                         padding=padding, groups=x.shape[1])}

    return _measured_path("dwfwd", DILATED_FORWARD, "PLDA_DILATED_FORWARD", x,
                          weight.shape[-2:], dilation, padding, candidates)


def _conv_input_and_padding(x: Tensor, padding: Padding) -> tuple[Tensor, tuple[int, int]]:
    """Symmetric padding is left to the convolution (no padded copy), asymmetric is explicit."""
    left, right, top, bottom = padding
    if left == right and top == bottom:
        return x, (top, left)
    return F.pad(x, padding), (0, 0)


def _plain_depthwise(x: Tensor, weight: Tensor, bias: Tensor | None,
                     dilation: tuple[int, int], padding: Padding) -> Tensor:
    conv_input, conv_padding = _conv_input_and_padding(x, padding)
    return F.conv2d(conv_input, weight, bias, 1, conv_padding, dilation, x.shape[1])


def _depthwise_forward(x: Tensor, weight: Tensor, bias: Tensor | None,
                       dilation: tuple[int, int], padding: Padding):
    """The dilated depthwise convolution by whichever of oneDNN's kernel and space-to-batch is
    faster for this layer (``forward_path``): (output, the input's sub-grids or None)."""
    if forward_path(x, weight, dilation, padding) == "subgrid":
        sub = _subgrid_input(x, weight.shape[-2:], dilation, padding)
        return _subgrid_conv(sub, weight, bias, dilation, x.shape[1]), sub
    return _plain_depthwise(x, weight, bias, dilation, padding), None


class _DilatedDepthwiseConv2d(torch.autograd.Function):
    """Stride-1 dilated depthwise convolution with fast CPU kernels in both directions.

    When the forward and the weight gradient both run on the sub-grids, the forward keeps its
    sub-grid input for the weight gradient (in place of the input: same size), and the output
    gradient's sub-grids made for the input gradient serve the weight gradient too where they
    are the same tensor (symmetric padding a multiple of the dilation): each saves a padded
    copy and an interleave per pass."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None,
                dilation: tuple[int, int], padding: Padding, weight_grad: bool) -> Tensor:
        ctx.dilation, ctx.padding, ctx.has_bias = dilation, padding, bias is not None
        out, sub = _depthwise_forward(x, weight, bias, dilation, padding)
        # Under autocast the output's dtype differs from the input's: the weight gradient's
        # path is then chosen in backward, for the gradient's dtype.
        if (sub is not None and weight_grad and out.dtype == x.dtype
                and weight_grad_path(x, out, weight.shape, dilation, padding) == "subgrid"):
            ctx.sub_plan = sub[1:]
            ctx.save_for_backward(sub[0], weight)
        else:
            ctx.sub_plan = None
            ctx.save_for_backward(x, weight)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        saved, weight = ctx.saved_tensors
        dilation, (left, right, top, bottom) = ctx.dilation, ctx.padding
        (dh, dw), (kh, kw) = dilation, weight.shape[-2:]
        # An autocast forward leaves grad in its lower precision; compute in that dtype.
        saved, weight = saved.to(grad.dtype), weight.to(grad.dtype)
        x, sub = (None, (saved, *ctx.sub_plan)) if ctx.sub_plan is not None else (saved, None)
        grad_x = grad_w = grad_b = grad_sub = None
        with torch.autocast(grad.device.type, enabled=False):
            if ctx.needs_input_grad[0]:
                # dL/dx[i] = sum_t w[t] g[i + pad - t*d]: the correlation of g with the flipped
                # kernel, padded by (k - 1) * d - pad on each side.
                flipped_padding = ((kw - 1) * dw - left, (kw - 1) * dw - right,
                                   (kh - 1) * dh - top, (kh - 1) * dh - bottom)
                grad_x, grad_sub = _depthwise_forward(grad, weight.flip(-2, -1), None, dilation,
                                                      flipped_padding)
            if ctx.needs_input_grad[1]:
                if sub is not None or weight_grad_path(x, grad, weight.shape, dilation,
                                                       ctx.padding) == "subgrid":
                    if sub is None:
                        sub = _subgrid_input(x, (kh, kw), dilation, ctx.padding)
                    shared = None
                    if grad_sub is not None and grad_sub[1] == _grad_padding(
                            sub[0], (kh, kw), dilation, sub[2], sub[3]):
                        shared = grad_sub[0]
                    grad_w = subgrid_weight_grad(None, grad, weight.shape, dilation=dilation,
                                                 padding=ctx.padding, sub=sub, sub_grad=shared)
                else:
                    grad_w = _native_weight_grad(x, grad, weight.shape, dilation, ctx.padding)
            if ctx.has_bias and ctx.needs_input_grad[2]:
                grad_b = grad.sum((0, 2, 3))
        return grad_x, grad_w, grad_b, None, None, None


def dilated_depthwise_conv2d(x: Tensor, weight: Tensor, bias: Tensor | None = None, *,
                             dilation: int | Sequence[int], padding: Sequence[int]) -> Tensor:
    """``F.conv2d(F.pad(x, padding), weight, bias, 1, 0, dilation, groups=C)`` for a depthwise
    ``weight`` of shape (C, 1, kh, kw), stride 1; ``padding`` in F.pad order (left, right, top,
    bottom). On CPU with ``FAST_DILATED_DEPTHWISE`` it runs the fast kernels described in the
    module docstring (first-order gradients only); elsewhere (cuDNN) it is plain F.conv2d."""
    channels = x.shape[1]
    if weight.shape[:2] != (channels, 1):
        raise ValueError(f"depthwise weight must have shape ({channels}, 1, kh, kw) for "
                         f"{channels} input channels, got {tuple(weight.shape)}")
    dilation, padding = _pair(dilation), tuple(int(p) for p in padding)
    if x.device.type == "cpu" and FAST_DILATED_DEPTHWISE:
        weight_grad = torch.is_grad_enabled() and weight.requires_grad
        return _DilatedDepthwiseConv2d.apply(x, weight, bias, dilation, padding, weight_grad)
    return _plain_depthwise(x, weight, bias, dilation, padding)


def use_fast_dilated_depthwise(x: Tensor, weight: Tensor, stride: Sequence[int],
                               dilation: Sequence[int], groups: int) -> bool:
    """Whether a convolution is a stride-1 dilated depthwise one on CPU, which
    ``dilated_depthwise_conv2d`` speeds up; GPUs keep cuDNN's native dilated kernels."""
    return (FAST_DILATED_DEPTHWISE and x.device.type == "cpu" and max(dilation) > 1
            and tuple(stride) == (1, 1) and groups == x.shape[1] and weight.shape[1] == 1)


def conv_frozen_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d, x: Tensor) -> Tensor:
    """``bn(conv(x))``. A BatchNorm in eval mode (inference, or the backbones' ``frozen_bn``
    training) is an affine map per channel, so it is folded into the convolution: one conv with
    weight ``w * s`` and bias ``b * s + t`` (``s = gamma / sqrt(var + eps)``,
    ``t = beta - mean * s``), computed from the parameters on every call. No pass over the
    activations for the BN, forward or backward; gradients reach ``w`` (and ``gamma``/``beta`` if
    they train) through the fold; the state dict is unchanged. Equal to the two layers up to
    float rounding. A training-mode BN (batch statistics) runs as its own layer."""
    if bn.training or not FOLD_FROZEN_BN or bn.running_var is None:
        return bn(conv(x))
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    weight = conv.weight * scale.reshape(-1, *([1] * (conv.weight.dim() - 1)))
    bias = shift if conv.bias is None else conv.bias * scale + shift
    return conv._conv_forward(x, weight, bias)
