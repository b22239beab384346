"""One convolution over several views at once, as a single matrix product (CPU training).

SEAM and PLDA pass each training image through the backbone twice: at the crop size and at 0.3x
(a 128 crop gives 16x16 and 5x5 maps at output stride 8). On the deep, wide layers of ResNet-38
(1024-4096 channels, dilation 2-4) at these sizes oneDNN's convolution kernels can run well below
the CPU's matrix-multiply speed, above all on the 5x5 maps. ``joint_conv2d`` can compute the same
convolution of every view as one GEMM over the concatenated im2col columns of all views and all
images::

    out[:, views] = W (Cout x C*k*k)  @  [cols(view 1) | cols(view 2)]  (C*k*k x sum of pixels)

and, in backward, the weight gradient of all views in one GEMM (which is also their sum, so the
layer's gradient is complete at once) and the input gradients with one GEMM plus ``fold``. Only
the views' inputs are saved; the columns are rebuilt in backward, so activation memory is that of
``F.conv2d``. Results equal ``F.conv2d`` to float rounding (tests/test_layers.py).

Which is faster depends on the CPU, the layer and the dtype: on an AVX2-only CPU the joint GEMM
won on most fp32 layers, on an AVX512-BF16 one it lost 30 % of the step in fp32, and in bf16 on
an AMX CPU oneDNN wins on the 16x16 maps while the joint GEMM wins on the 5x5 ones. So every
eligible layer shape is measured both ways once per machine and the faster is kept
(:class:`plda.models.fastpath.ConvPathTuner`); ``PLDA_CONV_PATH=joint|onednn`` forces one.
Under CPU bf16 autocast the joint GEMM runs in bf16 as oneDNN's convolution would.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from plda.models.fastpath import TUNER, conv_path_mode

# Above this many output pixels per image (largest view) the joint GEMM's columns grow large and
# oneDNN is about as fast: F.conv2d, never measured.
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


def _compute_dtype(inputs: Sequence[Tensor]) -> torch.dtype | None:
    """The dtype the convolution would run in: autocast's CPU dtype when autocast is on (bf16
    only; fp16 on CPU keeps oneDNN), else the inputs' (float32 only); ``None``: not eligible."""
    if torch.is_autocast_enabled("cpu"):
        dtype = torch.get_autocast_dtype("cpu")
        ok = dtype == torch.bfloat16 and all(x.dtype in (torch.float32, torch.bfloat16)
                                             for x in inputs)
        return dtype if ok else None
    return torch.float32 if all(x.dtype == torch.float32 for x in inputs) else None


def _joint_geometry(conv: nn.Conv2d, inputs: Sequence[Tensor]) -> ConvGeometry | None:
    """The geometry to run ``conv`` jointly over ``inputs`` with, or ``None`` to keep F.conv2d."""
    if not (torch.is_grad_enabled() and conv.groups == 1 and conv.bias is None
            and conv.padding_mode == "zeros" and not isinstance(conv.padding, str)):
        return None
    if not all(x.device.type == "cpu" for x in inputs):
        return None
    if not (conv.weight.requires_grad or any(x.requires_grad for x in inputs)):
        return None
    geometry = ConvGeometry(conv.weight, tuple(conv.stride), tuple(conv.padding),
                            tuple(conv.dilation))
    largest = max(geometry.out_size(*x.shape[-2:]) for x in inputs)
    return geometry if largest[0] * largest[1] <= JOINT_CONV_MAX_PIXELS else None


def _joint(conv: nn.Conv2d, inputs: Sequence[Tensor], geometry: ConvGeometry,
           dtype: torch.dtype) -> list[Tensor]:
    weight = conv.weight
    if dtype != torch.float32:  # what autocast does to a convolution: operands cast to bf16
        weight = weight.to(dtype)
        inputs = [x.to(dtype) for x in inputs]
        with torch.autocast("cpu", enabled=False):
            return list(_JointConv2d.apply(weight, geometry, *inputs))
    return list(_JointConv2d.apply(weight, geometry, *inputs))


def _like(x: Tensor, generator: torch.Generator, requires_grad: bool) -> Tensor:
    """A random tensor with ``x``'s shape, strides (memory format) and dtype; drawn from its own
    generator so that measuring never moves the global RNG (dropout streams stay as they are)."""
    t = torch.empty_strided(x.shape, x.stride(), dtype=x.dtype)
    t.normal_(generator=generator)
    return t.requires_grad_(requires_grad)


def _path_key(conv: nn.Conv2d, inputs: Sequence[Tensor], dtype: torch.dtype) -> str:
    layout = "nhwc" if (not inputs[0].is_contiguous()
                        and inputs[0].is_contiguous(memory_format=torch.channels_last)) else "nchw"
    grads = "".join("1" if x.requires_grad else "0" for x in inputs)
    grads += "1" if conv.weight.requires_grad else "0"
    views = ",".join("x".join(str(d) for d in x.shape) for x in inputs)
    return (f"{str(dtype).replace('torch.', '')}|w{'x'.join(map(str, conv.weight.shape))}"
            f"|s{conv.stride}|p{conv.padding}|d{conv.dilation}|{views}|{layout}|g{grads}"
            f"|t{torch.get_num_threads()}").replace(" ", "")


_PATHS = ("onednn", "joint")


def _candidates(conv: nn.Conv2d, inputs: Sequence[Tensor], geometry: ConvGeometry,
                dtype: torch.dtype) -> dict:
    """Forward + backward of each path on random tensors of this call's shapes."""
    g = torch.Generator().manual_seed(0)
    probe = nn.utils.skip_init(nn.Conv2d, conv.in_channels, conv.out_channels,
                               conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                               bias=False)  # no initialisation: it would draw from the global RNG
    probe.weight = nn.Parameter(_like(conv.weight, g, conv.weight.requires_grad),
                                requires_grad=conv.weight.requires_grad)
    xs = [_like(x.detach(), g, x.requires_grad) for x in inputs]

    def run(joint: bool) -> None:
        with torch.enable_grad(), torch.autocast("cpu", dtype=torch.bfloat16,
                                                 enabled=dtype == torch.bfloat16):
            outs = _joint(probe, xs, geometry, dtype) if joint else [probe(x) for x in xs]
            sum(o.float().sum() for o in outs).backward()
        probe.weight.grad = None
        for x in xs:
            x.grad = None

    return {"onednn": lambda: run(False), "joint": lambda: run(True)}


def joint_conv2d(conv: nn.Conv2d, inputs: Sequence[Tensor]) -> list[Tensor]:
    """``[conv(x) for x in inputs]``, or the same as one GEMM over all views: in CPU training
    (fp32, or bf16 under autocast) of bias-free, ungrouped convolutions on small maps, whichever
    of the two this machine runs faster (:mod:`plda.models.fastpath`)."""
    dtype = _compute_dtype(inputs)
    geometry = None if dtype is None else _joint_geometry(conv, inputs)
    mode = conv_path_mode()
    if geometry is None or mode == "onednn":
        return [conv(x) for x in inputs]
    if mode == "auto":
        choice = TUNER.choose(_path_key(conv, inputs, dtype),
                              lambda: _candidates(conv, inputs, geometry, dtype), _PATHS)
        if choice == "onednn":
            return [conv(x) for x in inputs]
    return _joint(conv, inputs, geometry, dtype)
