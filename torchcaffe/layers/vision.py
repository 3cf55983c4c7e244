"""Vision layers: Convolution, Deconvolution, Pooling, SPP, Im2col and Crop.

Each layer calls torch's own kernels (``F.conv2d``, ``F.max_pool2d``, ``F.avg_pool2d``,
``F.unfold``) wherever they give exactly Caffe's numbers, and pads explicitly where Caffe's
windows are not torch's (pooling with ``pad > kernel / 2`` or with windows that start past the
input). Geometry is worked out per bottom shape (Caffe's ``Reshape``), so nets may be reshaped.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Sequence

import torch
import torch.nn.functional as F

from ..proto import caffe_pb2
from .base import TEST, TRAIN, Layer, LayerSetup, Sample, axis_index
from .registry import register_layer

FLT_MAX = torch.finfo(torch.float32).max  # Caffe's starting value for MAX pooling is -FLT_MAX
FLT_MIN = torch.finfo(torch.float32).tiny  # Caffe's STOCHASTIC test-time sum starts at FLT_MIN

Pool = caffe_pb2.PoolingParameter
GAUSS = "weight_filler { type: 'gaussian' std: 0.5 } bias_filler { type: 'gaussian' std: 0.5 }"


# ------------------------------------------------------------------------------------------------
# Convolution geometry (shared by Convolution, Deconvolution and Im2col)
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ConvGeometry:
    """Kernel, stride, pad and dilation per spatial axis (Caffe's ``kernel_shape_`` & co.)."""

    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    pad: tuple[int, ...]
    dilation: tuple[int, ...]

    @property
    def extent(self) -> tuple[int, ...]:
        """The dilated kernel size ``dilation * (kernel - 1) + 1`` per axis."""
        return tuple(d * (k - 1) + 1 for k, d in zip(self.kernel, self.dilation))


def _per_axis(layer: Layer, p, name: str, n: int, default: int | None, hw: tuple[str, str] | None):
    """One repeated ConvolutionParameter field, or its ``_h``/``_w`` form, as ``n`` values."""
    if hw is not None and (p.HasField(hw[0]) or p.HasField(hw[1])):
        if n != 2:
            raise layer.fail(f"{hw[0]}/{hw[1]} can only be used for 2-D convolution, but the bottom has "
                             f"{n} spatial axes; give '{name}' once or once per spatial axis instead")
        if len(getattr(p, name)):
            raise layer.fail(f"give either '{name}' or {hw[0]}/{hw[1]}, not both")
        return (getattr(p, hw[0]), getattr(p, hw[1]))
    values = tuple(getattr(p, name))
    if not values and default is not None:
        return (default,) * n
    if len(values) == 1:
        return values * n
    if len(values) != n:
        hint = f" (or {hw[0]} and {hw[1]})" if hw is not None and n == 2 else ""
        raise layer.fail(f"'{name}' must be given once, or once per spatial axis ({n}){hint}; "
                         f"got {len(values)} value(s)")
    return values


def conv_geometry(layer: Layer, p: caffe_pb2.ConvolutionParameter, n: int) -> ConvGeometry:
    """Caffe's BaseConvolutionLayer::LayerSetUp rules for kernel/stride/pad/dilation."""
    kernel = _per_axis(layer, p, "kernel_size", n, None, ("kernel_h", "kernel_w"))
    stride = _per_axis(layer, p, "stride", n, 1, ("stride_h", "stride_w"))
    pad = _per_axis(layer, p, "pad", n, 0, ("pad_h", "pad_w"))
    dilation = _per_axis(layer, p, "dilation", n, 1, None)
    hole = _hole(layer, p, n)
    if hole is not None:
        if len(p.dilation) and dilation != hole:
            raise layer.fail(f"convolution_param gives both dilation {list(dilation)} and DeepLab's hole "
                             f"{list(hole)} (the same setting under its old name); keep one of them")
        dilation = hole
    for field, values in (("kernel_size", kernel), ("stride", stride), ("dilation", dilation)):
        if any(v <= 0 for v in values):
            raise layer.fail(f"convolution_param {field} must be positive on every spatial axis, got "
                             f"{list(values)}")
    return ConvGeometry(kernel, stride, pad, dilation)


def _hole(layer: Layer, p: caffe_pb2.ConvolutionParameter, n: int) -> tuple[int, ...] | None:
    """DeepLab v1's ``hole`` (or ``hole_h`` + ``hole_w``, 2-D only): its name for the dilation.
    None when neither is set. As DeepLab checks: ``hole_h`` and ``hole_w`` together and without
    ``hole``."""
    has_h, has_w = p.HasField("hole_h"), p.HasField("hole_w")
    if has_h or has_w:
        if p.HasField("hole") or not (has_h and has_w):
            raise layer.fail("give DeepLab's hole once, or hole_h and hole_w together (without hole)")
        if n != 2:
            raise layer.fail(f"hole_h/hole_w can only be used for 2-D convolution, but the bottom has {n} "
                             f"spatial axes; give 'hole' (or 'dilation') instead")
        return (p.hole_h, p.hole_w)
    return (p.hole,) * n if p.HasField("hole") else None


def _conv_out(layer: Layer, size: int, k_extent: int, stride: int, pad: int, axis: int) -> int:
    """Caffe's convolution output size ``(in + 2p - dilated_k) / s + 1`` (floor)."""
    span = size + 2 * pad - k_extent
    if span < 0:
        raise layer.fail(f"the dilated kernel ({k_extent}) is larger than the padded input "
                         f"({size} + 2*{pad}) on spatial axis {axis}; shrink kernel_size/dilation or add pad")
    return span // stride + 1


def _leading_batch(x: torch.Tensor, axis: int) -> torch.Tensor:
    """Fold the axes before the channel axis into one batch axis (Caffe's ``num_``)."""
    return x.reshape((-1,) + tuple(x.shape[axis:]))


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_DECONV = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


class _ConvolutionBase(Layer):
    """What Convolution and Deconvolution share (Caffe's BaseConvolutionLayer)."""

    min_bottoms = 1
    min_tops = 1
    transposed: ClassVar[bool] = False

    def __init__(self, setup: LayerSetup):
        super().__init__(setup)
        if setup.num_tops != len(setup.bottom_shapes):
            raise self.fail(f"needs as many tops as bottoms (bottom i -> top i); got "
                            f"{len(setup.bottom_shapes)} bottom(s) and {setup.num_tops} top(s)")
        p = setup.param.convolution_param
        shape = setup.bottom_shapes[0]
        self.num_axes = len(shape)
        self.axis = axis_index(self, p.axis, self.num_axes, "convolution_param.axis")
        self.num_spatial = self.num_axes - self.axis - 1
        if self.num_spatial > 3:
            raise self.fail(f"{self.num_spatial} spatial axes: only 1-D, 2-D and 3-D convolution are "
                            f"supported (torch has no conv{self.num_spatial}d)")
        self.geometry = conv_geometry(self, p, self.num_spatial)
        self.channels = shape[self.axis]
        self.num_output, self.group = p.num_output, p.group
        if self.num_output <= 0:
            raise self.fail("convolution_param num_output must be positive (it is required)")
        if self.group <= 0 or self.channels % self.group:
            raise self.fail(f"the bottom's {self.channels} channels (axis {self.axis}) must be divisible "
                            f"by convolution_param group ({self.group})")
        if self.num_output % self.group:
            raise self.fail(f"convolution_param num_output ({self.num_output}) must be a multiple of "
                            f"group ({self.group})")
        k = self.geometry.kernel
        if self.transposed:
            weight_shape = (self.channels, self.num_output // self.group, *k)
        else:
            weight_shape = (self.num_output, self.channels // self.group, *k)
        self.add_blob("weight", weight_shape, p.weight_filler)
        if p.bias_term:
            self.add_blob("bias", (self.num_output,), p.bias_filler)
        else:
            self.register_parameter("bias", None)
        # Fast path: channel axis 1 and 1..3 spatial axes go straight to torch.
        self.direct = self.axis == 1 and self.num_spatial >= 1
        ops = _DECONV if self.transposed else _CONV
        self.op = ops[max(self.num_spatial, 1)]
        g = self.geometry
        self.op_args = (g.stride or (1,), g.pad or (0,), g.dilation or (1,))
        self.top_shapes(setup.bottom_shapes)

    def _spatial_out(self, sizes: Sequence[int]) -> tuple[int, ...]:
        raise NotImplementedError

    def top_shapes(self, bottom_shapes):
        shape = tuple(bottom_shapes[0])
        for i, other in enumerate(bottom_shapes[1:], 1):
            if tuple(other) != shape:
                raise self.fail(f"all bottoms must have the same shape; bottom 0 is {list(shape)}, "
                                f"bottom {i} is {list(other)}")
        if len(shape) != self.num_axes:
            raise self.fail(f"the bottom's number of axes may not change: set up with {self.num_axes}, "
                            f"now {len(shape)}")
        if shape[self.axis] != self.channels:
            raise self.fail(f"the bottom has {shape[self.axis]} channels on axis {self.axis}, but the "
                            f"layer was set up for {self.channels}")
        top = shape[:self.axis] + (self.num_output,) + self._spatial_out(shape[self.axis + 1:])
        return [torch.Size(top)] * len(bottom_shapes)

    def forward(self, *bottoms):
        tops = tuple(self._one(x) for x in bottoms)
        return tops[0] if len(tops) == 1 else tops

    def _one(self, x: torch.Tensor) -> torch.Tensor:
        stride, pad, dilation = self.op_args
        if self.direct:
            return self._call(x, self.weight, stride, pad, dilation)
        lead = x.shape[:self.axis]
        x = _leading_batch(x, self.axis)
        weight = self.weight
        if self.num_spatial == 0:  # Caffe allows it: a grouped matrix product
            x, weight = x.unsqueeze(-1), weight.unsqueeze(-1)
        y = self._call(x, weight, stride, pad, dilation)
        if self.num_spatial == 0:
            y = y.squeeze(-1)
        return y.reshape(lead + y.shape[1:])

    def _call(self, x, weight, stride, pad, dilation):
        raise NotImplementedError

    # -- export hooks (torchcaffe.export) ----------------------------------------------------------
    def export_source(self, code):
        """``nn.Conv{1,2,3}d`` / ``nn.ConvTranspose{1,2,3}d`` (channel axis 1); several bottoms call the
        one submodule each."""
        if not self.direct:
            raise code.unsupported(f"convolution_param axis {self.axis} with {self.num_spatial} spatial axes "
                                   f"(torch convolves axis 1 of 3-D to 5-D tensors)")
        g, ints = self.geometry, code.ints
        kind = "nn.ConvTranspose" if self.transposed else "nn.Conv"
        args = [str(self.channels), str(self.num_output), f"kernel_size={ints(g.kernel)}"]
        args += [f"{name}={ints(values)}" for name, values, default in
                 (("stride", g.stride, 1), ("padding", g.pad, 0), ("dilation", g.dilation, 1))
                 if set(values) != {default}]
        if self.group != 1:
            args.append(f"groups={self.group}")
        state = {"weight": self.weight}
        if self.bias is None:
            args.append("bias=False")
        else:
            state["bias"] = self.bias
        constructor = f"{kind}{self.num_spatial}d({', '.join(args)})"
        calls = [f"{code.attribute}({x})" for x in code.bottoms]
        call = calls[0] if len(calls) == 1 else f"({', '.join(calls)})"
        return code.module(constructor, call, **state)


@register_layer("Convolution")
class Convolution(_ConvolutionBase):
    """Cross-correlation of each bottom with the same learned filters (N-D, grouped, dilated).

    ``top[n, o, y] = bias[o] + sum_{c in group(o), i} weight[o, c, i] * bottom[n, c, s*y - p + d*i]``
    with zero padding; output size ``floor((in + 2p - (d*(k-1)+1)) / s) + 1`` per spatial axis.

    Parameters: ``convolution_param { num_output (required) bias_term (true) pad (0) kernel_size
    (required) stride (1) dilation (1) pad_h/pad_w kernel_h/kernel_w stride_h/stride_w (2-D only,
    instead of the repeated fields) group (1) weight_filler (constant 0) bias_filler (constant 0)
    axis (1) engine force_nd_im2col }``. ``pad/kernel_size/stride/dilation`` are given once for
    every spatial axis or once per axis. ``engine`` and ``force_nd_im2col`` have no effect.
    DeepLab v1's ``hole`` (or ``hole_h`` + ``hole_w``) is its name for the dilation; giving both
    names with different values is an error.

    Blobs: weight ``(num_output, C / group, k...)``, bias ``(num_output,)``.
    Shapes: bottom i ``(N..., C, S...)`` -> top i ``(N..., num_output, S_out...)`` for every bottom;
    axes before ``axis`` are batch axes, all axes after it spatial (0 to 3 of them).

    Example::

        layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
                convolution_param { num_output: 20 kernel_size: 5 stride: 1
                                    weight_filler { type: "xavier" } } }

    Differs from torch: ``nn.Conv2d`` initialises its weights (Kaiming uniform); Caffe's fillers
    default to constant 0. Several bottoms share one set of weights, bottom i giving top i.
    """

    samples = (
        Sample(f"convolution_param {{ num_output: 2 kernel_size: 3 pad: 1 {GAUSS} }}", bottoms=((2, 2, 4, 3),)),
        Sample("convolution_param { num_output: 2 kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1 pad_h: 1 "
               "pad_w: 0 bias_term: false weight_filler { type: 'gaussian' } }", bottoms=((1, 2, 6, 5),),
               note="batch 1, 2-D _h/_w forms, no bias"),
        Sample(f"convolution_param {{ num_output: 4 group: 2 kernel_size: 2 stride: 2 dilation: 2 pad: 1 {GAUSS} }}",
               bottoms=((1, 4, 5, 4),), note="group, stride, dilation"),
        Sample(f"convolution_param {{ num_output: 2 kernel_size: 2 kernel_size: 3 pad: 1 pad: 0 stride: 1 "
               f"stride: 2 {GAUSS} }}", bottoms=((1, 2, 5, 7),), note="per-axis repeated fields"),
        Sample(f"convolution_param {{ num_output: 2 kernel_size: 3 stride: 2 {GAUSS} }}", bottoms=((2, 3, 7),),
               note="1-D"),
        Sample(f"convolution_param {{ num_output: 2 kernel_size: 2 kernel_size: 3 kernel_size: 2 pad: 1 {GAUSS} }}",
               bottoms=((1, 2, 3, 4, 3),), note="3-D, per-axis kernel"),
        Sample(f"convolution_param {{ num_output: 2 kernel_size: 2 {GAUSS} }}", bottoms=((1, 2, 4, 4), (1, 2, 4, 4)),
               tops=2, note="two bottoms share the weights"),
        Sample(f"convolution_param {{ num_output: 2 kernel_size: 3 axis: 2 {GAUSS} }}", bottoms=((2, 1, 2, 4, 3),),
               note="channel axis 2: axes 0-1 are batch"),
        Sample(f"convolution_param {{ num_output: 3 axis: -1 {GAUSS} }}", bottoms=((3, 4),),
               note="no spatial axis: a matrix product"),
        Sample(f"convolution_param {{ num_output: 3 kernel_size: 1 {GAUSS} }}", bottoms=((2, 3, 3, 2),), note="1x1"),
        Sample(f"convolution_param {{ num_output: 2 kernel_size: 3 pad: 2 hole: 2 {GAUSS} }}", bottoms=((1, 2, 5, 4),),
               note="DeepLab v1's hole: the dilation"),
        Sample(f"convolution_param {{ num_output: 2 kernel_size: 2 hole_h: 2 hole_w: 1 {GAUSS} }}",
               bottoms=((1, 1, 4, 3),), note="DeepLab v1's hole_h/hole_w"),
    )

    def _spatial_out(self, sizes):
        g = self.geometry
        return tuple(_conv_out(self, n, e, s, p, i) for i, (n, e, s, p)
                     in enumerate(zip(sizes, g.extent, g.stride, g.pad)))

    def _call(self, x, weight, stride, pad, dilation):
        return self.op(x, weight, self.bias, stride, pad, dilation, self.group)


@register_layer("Deconvolution")
class Deconvolution(_ConvolutionBase):
    """Transposed convolution: the backward (data gradient) of Convolution, with a bias.

    Each bottom pixel scatters ``bottom[n, c, x] * weight[c, o, i]`` to ``top[n, o, s*x - p + d*i]``;
    output size ``s * (in - 1) + d*(k-1) + 1 - 2p`` per spatial axis.

    Parameters: as Convolution's ``convolution_param`` (``num_output`` is the number of top
    channels).  Blobs: weight ``(C, num_output / group, k...)``, bias ``(num_output,)``.
    Shapes: bottom i ``(N..., C, S...)`` -> top i ``(N..., num_output, S_out...)``.

    Example::

        layer { name: "up" type: "Deconvolution" bottom: "score" top: "up"
                convolution_param { num_output: 21 kernel_size: 4 stride: 2 bias_term: false
                                    weight_filler { type: "bilinear" } } }

    Differs from torch: the weight layout is torch's ``conv_transpose`` layout (Caffe's), and there
    is no ``output_padding``: the size above is the only one Caffe produces.
    """

    transposed = True
    samples = (
        Sample(f"convolution_param {{ num_output: 2 kernel_size: 3 stride: 2 pad: 1 {GAUSS} }}",
               bottoms=((2, 1, 3, 2),)),
        Sample(f"convolution_param {{ num_output: 2 group: 2 kernel_size: 3 stride: 2 {GAUSS} }}",
               bottoms=((1, 4, 3, 2),), note="batch 1, group"),
        Sample("convolution_param { num_output: 2 kernel_h: 2 kernel_w: 3 stride_h: 1 stride_w: 2 dilation: 2 "
               "bias_term: false weight_filler { type: 'gaussian' } }", bottoms=((1, 2, 3, 3),),
               note="_h/_w forms, dilation, no bias"),
        Sample(f"convolution_param {{ num_output: 2 kernel_size: 3 stride: 2 pad: 1 {GAUSS} }}", bottoms=((2, 2, 4),),
               note="1-D"),
        Sample(f"convolution_param {{ num_output: 1 kernel_size: 2 stride: 2 {GAUSS} }}", bottoms=((1, 2, 2, 2, 3),),
               note="3-D"),
        Sample(f"convolution_param {{ num_output: 2 kernel_size: 2 stride: 2 {GAUSS} }}",
               bottoms=((1, 2, 2, 3), (1, 2, 2, 3)), tops=2, note="two bottoms share the weights"),
        Sample(f"convolution_param {{ num_output: 2 kernel_size: 2 axis: 2 {GAUSS} }}", bottoms=((2, 1, 2, 3, 2),),
               note="channel axis 2"),
    )

    def _spatial_out(self, sizes):
        g = self.geometry
        out = tuple(s * (n - 1) + e - 2 * p for n, e, s, p in zip(sizes, g.extent, g.stride, g.pad))
        if any(o <= 0 for o in out):
            raise self.fail(f"output size {list(out)} is not positive for spatial input {list(sizes)}: "
                            f"pad is too large for this kernel/stride")
        return out

    def _call(self, x, weight, stride, pad, dilation):
        return self.op(x, weight, self.bias, stride, pad, 0, self.group, dilation)


# ------------------------------------------------------------------------------------------------
# Pooling
# ------------------------------------------------------------------------------------------------
def _pooled_size(size: int, kernel: int, stride: int, pad: int, ceil: bool, clip_last: bool) -> int:
    """Caffe's pooled size: ceil (or floor) of ``(in + 2p - k) / s`` plus one; with padding the last
    window is dropped when it would start at or beyond ``in + p`` (in the padding)."""
    span = size + 2 * pad - kernel
    out = (-(-span // stride) if ceil else span // stride) + 1
    if clip_last and (out - 1) * stride >= size + pad:
        out -= 1
    return out


@dataclass(frozen=True)
class PoolGeometry:
    """The pooling windows for one input size: Caffe's sizes and whether torch's kernels match."""

    size: tuple[int, int]
    kernel: tuple[int, int]
    stride: tuple[int, int]
    pad: tuple[int, int]
    ceil: bool
    out: tuple[int, int]
    torch_ok: bool  # F.max_pool2d/avg_pool2d(padding, ceil_mode) give exactly these windows
    empty: bool  # some window starts past the input (possible only without padding)

    @property
    def explicit_pad(self) -> tuple[int, int, int, int]:
        """F.pad amounts (left, right, top, bottom) that make every window fit, none spare."""
        (h, w), (kh, kw), (sh, sw), (ph, pw) = self.size, self.kernel, self.stride, self.pad
        (oh, ow) = self.out
        return (pw, (ow - 1) * sw + kw - w - pw, ph, (oh - 1) * sh + kh - h - ph)

    def window_sizes(self, axis: int) -> list[int]:
        """Caffe's AVE divisor factor per output index: the window clipped to the *padded* input."""
        n, k, s, p = self.size[axis], self.kernel[axis], self.stride[axis], self.pad[axis]
        return [min(i * s - p + k, n + p) - (i * s - p) for i in range(self.out[axis])]


def pool_geometry(layer: Layer, size: Sequence[int], kernel, stride, pad, ceil: bool, what: str) -> PoolGeometry:
    """Windows of Caffe's PoolingLayer::Reshape for a ``size = (H, W)`` input."""
    clip = any(pad)
    out = tuple(_pooled_size(n, k, s, p, ceil, clip) for n, k, s, p in zip(size, kernel, stride, pad))
    if min(out) <= 0:
        raise layer.fail(f"{what}: the pooled size {list(out)} is not positive for input {list(size)} "
                         f"with kernel {list(kernel)}, stride {list(stride)}, pad {list(pad)}")
    torch_out = tuple(_pooled_size(n, k, s, p, ceil, ceil) for n, k, s, p in zip(size, kernel, stride, pad))
    torch_ok = torch_out == out and all(p <= k // 2 for p, k in zip(pad, kernel))
    empty = any((o - 1) * s - p >= n for n, o, s, p in zip(size, out, stride, pad))
    return PoolGeometry(tuple(size), tuple(kernel), tuple(stride), tuple(pad), ceil, out, torch_ok, empty)


def max_pool(x: torch.Tensor, g: PoolGeometry, with_mask: bool):
    """Caffe's MAX pooling: strict ``>`` (the first maximum wins, and only it gets the gradient);
    returns ``(top, mask)`` with mask the argmax ``h * W + w`` as a float (or None)."""
    if g.torch_ok:
        if not with_mask:
            return F.max_pool2d(x, g.kernel, g.stride, g.pad, ceil_mode=g.ceil), None
        y, index = F.max_pool2d(x, g.kernel, g.stride, g.pad, ceil_mode=g.ceil, return_indices=True)
        return y, index.to(x.dtype)
    padded = F.pad(x, g.explicit_pad, value=-math.inf)
    y, index = F.max_pool2d(padded, g.kernel, g.stride, return_indices=True)
    empty = None
    if g.empty:  # Caffe leaves -FLT_MAX and index -1 where a window holds no input
        empty = _empty_windows(g, x.device)
        y = torch.where(empty, torch.full_like(y, -FLT_MAX), y)
    if not with_mask:
        return y, None
    width = padded.shape[-1]
    h, w = index // width - g.pad[0], index % width - g.pad[1]
    mask = (h * g.size[1] + w).to(x.dtype)
    if empty is not None:
        mask = torch.where(empty, torch.full_like(mask, -1), mask)
    return y, mask


def _empty_windows(g: PoolGeometry, device) -> torch.Tensor:
    rows, cols = ([i * g.stride[a] - g.pad[a] >= g.size[a] for i in range(g.out[a])] for a in (0, 1))
    return (torch.tensor(rows, device=device)[:, None] | torch.tensor(cols, device=device)[None, :])


def ave_pool(x: torch.Tensor, g: PoolGeometry) -> torch.Tensor:
    """Caffe's AVE pooling: the window's sum over the image divided by the window size clipped to
    the padded input (``min(start + k, H + p) - start``, computed before clipping to the image)."""
    if g.torch_ok:  # torch's count_include_pad divisor is exactly Caffe's there
        if x.is_cuda and any(g.pad) and not x.is_contiguous():
            x = x.contiguous()  # torch's CUDA channels-last avg_pool2d backward is wrong with padding
        return F.avg_pool2d(x, g.kernel, g.stride, g.pad, ceil_mode=g.ceil, count_include_pad=True)
    sums = F.avg_pool2d(F.pad(x, g.explicit_pad), g.kernel, g.stride, divisor_override=1)
    rows, cols = (torch.tensor(g.window_sizes(a), dtype=x.dtype, device=x.device) for a in (0, 1))
    return sums / (rows[:, None] * cols[None, :])


def stochastic_pool(x: torch.Tensor, g: PoolGeometry, train: bool) -> torch.Tensor:
    """Caffe's STOCHASTIC pooling (its GPU kernels; the CPU build has none).

    TRAIN: per window draw ``u`` in (0, 1] and take the first element (row-major) whose running sum
    reaches ``u * sum(window)``; the gradient goes to that element. TEST: ``sum(x^2) / sum(x)``
    over the window, the sum starting at FLT_MIN.
    """
    padded = F.pad(x, g.explicit_pad)  # no pad is allowed: this only fits the last windows
    if not train:
        sums = F.avg_pool2d(padded, g.kernel, g.stride, divisor_override=1)
        squares = F.avg_pool2d(padded * padded, g.kernel, g.stride, divisor_override=1)
        return squares / (sums + FLT_MIN)
    n, c = x.shape[:2]
    windows = F.unfold(padded, g.kernel, stride=g.stride).view(n, c, g.kernel[0] * g.kernel[1], -1)
    u = 1 - torch.rand((n, c, 1, windows.shape[-1]), dtype=x.dtype, device=x.device)
    with torch.no_grad():
        reached = windows.cumsum(2) >= u * windows.sum(2, keepdim=True)
        choice = reached.to(torch.uint8).argmax(2, keepdim=True)  # the first True (0 if none)
    return windows.gather(2, choice).view(n, c, *g.out)


def pool(x: torch.Tensor, method: int, g: PoolGeometry, train: bool, with_mask: bool = False):
    """One pooling of a 4-D tensor with Caffe's windows: the top (and the MAX mask when asked)."""
    if method == Pool.MAX:
        return max_pool(x, g, with_mask)
    if method == Pool.AVE:
        return ave_pool(x, g), None
    return stochastic_pool(x, g, train), None


def _check_pool_pad(layer: Layer, method: int, kernel, pad, what: str) -> None:
    if any(pad):
        if method not in (Pool.MAX, Pool.AVE):
            raise layer.fail(f"{what}: padding is implemented only for MAX and AVE pooling, got pad "
                             f"{list(pad)} with {Pool.PoolMethod.Name(method)}")
        if any(p >= k for p, k in zip(pad, kernel)):
            raise layer.fail(f"{what}: pad {list(pad)} must be smaller than the kernel {list(kernel)}")


@register_layer("Pooling")
class Pooling(Layer):
    """2-D pooling over windows: MAX, AVE or STOCHASTIC, optionally global.

    Output size per axis ``ceil((in + 2p - k) / s) + 1`` (``round_mode: FLOOR``: floor); with
    ``pad > 0`` the last window is dropped when it starts at or beyond ``in + p``. MAX takes the
    first maximum of the window (strict ``>``; ties go to the earliest in row-major order, and so does
    the gradient). AVE divides the sum over the image part of the window by the window's size
    clipped to the padded input. STOCHASTIC: TRAIN samples one element per window with probability
    proportional to its value (torch's random generator), TEST gives ``sum(x^2) / sum(x)``.

    Parameters: ``pooling_param { pool (MAX) kernel_size | kernel_h + kernel_w (required unless
    global_pooling) stride (1) | stride_h + stride_w, pad (0) | pad_h + pad_w, global_pooling
    (false) round_mode (CEIL) ceil_mode (true) engine }``; ``engine`` has no effect. ``ceil_mode``
    comes from the DenseNet/ResNeXt forks (BVLC PR #3057): ``false`` means ``round_mode: FLOOR``;
    when both are set they must agree.

    Shapes: ``(N, C, H, W)`` -> ``(N, C, H_out, W_out)``; MAX may give a second top of the same shape,
    the argmax index ``h * W + w`` within the (unpadded) input plane, as a float.

    Example::

        layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
                pooling_param { pool: MAX kernel_size: 3 stride: 2 } }

    Differs from torch: torch's ``ceil_mode`` also drops a last window that starts past the input
    when there is no padding, and torch refuses ``pad > kernel / 2``; in both cases we pad
    explicitly to get Caffe's windows. ``nn.AvgPool2d(count_include_pad=True, ceil_mode=True)``
    gives Caffe's divisor where its windows are Caffe's. Global AVE is ``mean`` over H and W.
    """

    exact_bottoms = 1
    min_tops = 1
    max_tops = 2
    samples = (
        Sample("pooling_param { pool: MAX kernel_size: 3 stride: 2 }", bottoms=((2, 2, 6, 7),),
               note="ceil overhang"),
        Sample("pooling_param { pool: MAX kernel_size: 2 stride: 2 pad: 1 }", bottoms=((1, 2, 6, 6),),
               note="pad drops the last window"),
        Sample("pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 }", bottoms=((1, 2, 5, 5),), tops=2,
               note="mask top"),
        Sample("pooling_param { pool: MAX kernel_size: 3 stride: 1 pad: 2 }", bottoms=((1, 2, 4, 5),), tops=2,
               note="pad > kernel/2: explicit padding, mask top"),
        Sample("pooling_param { pool: MAX kernel_size: 1 stride: 3 }", bottoms=((1, 1, 5, 4),), tops=2,
               note="windows starting past the input: -FLT_MAX and mask -1"),
        Sample("pooling_param { pool: MAX kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1 pad_h: 1 pad_w: 0 }",
               bottoms=((1, 2, 7, 5),), tops=2, note="rectangular"),
        Sample("pooling_param { pool: MAX kernel_size: 2 stride: 2 }", bottoms=((1, 2, 4, 4),),
               values=(("choice", 0.0, 1.0),), gradcheck=False, tops=2, note="ties: the first maximum wins"),
        Sample("pooling_param { pool: MAX kernel_size: 3 stride: 2 round_mode: FLOOR }", bottoms=((2, 1, 8, 7),)),
        Sample("pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 ceil_mode: false }", bottoms=((1, 2, 8, 7),),
               note="fork ceil_mode: false (ResNeXt's pool1) floors"),
        Sample("pooling_param { pool: AVE kernel_size: 3 stride: 2 ceil_mode: true round_mode: CEIL }",
               bottoms=((1, 1, 6, 7),), note="ceil_mode and round_mode agreeing"),
        Sample("pooling_param { pool: MAX global_pooling: true }", bottoms=((2, 3, 5, 4),), tops=2),
        Sample("pooling_param { pool: AVE kernel_size: 3 stride: 2 }", bottoms=((1, 2, 7, 6),),
               note="ceil overhang: divisor clipped to the input"),
        Sample("pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 }", bottoms=((2, 2, 6, 5),),
               note="divisor counts the padding"),
        Sample("pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 2 }", bottoms=((1, 2, 5, 6),),
               note="pad > kernel/2: explicit padding and divisor map"),
        Sample("pooling_param { pool: AVE kernel_size: 1 stride: 3 }", bottoms=((1, 1, 5, 4),),
               note="windows starting past the input (Caffe divides by a negative size)"),
        Sample("pooling_param { pool: AVE kernel_h: 2 kernel_w: 3 stride_h: 1 stride_w: 2 pad_h: 0 pad_w: 1 "
               "round_mode: FLOOR }", bottoms=((1, 2, 5, 6),)),
        Sample("pooling_param { pool: AVE global_pooling: true }", bottoms=((2, 3, 5, 4),)),
        Sample("pooling_param { pool: STOCHASTIC kernel_size: 3 stride: 2 }", bottoms=((2, 2, 5, 6),),
               values=(("uniform", 0.5, 2.0),), phase=TRAIN, note="sampled"),
        Sample("pooling_param { pool: STOCHASTIC kernel_size: 2 stride: 2 }", bottoms=((1, 2, 5, 4),),
               values=(("uniform", 0.5, 2.0),), phase=TEST, note="probability-weighted average"),
    )

    def __init__(self, setup: LayerSetup):
        super().__init__(setup)
        p = setup.param.pooling_param
        self.method = p.pool
        if setup.num_tops > 1 and self.method != Pool.MAX:
            raise self.fail(f"only MAX pooling has a second (mask) top; pool is "
                            f"{Pool.PoolMethod.Name(self.method)} with {setup.num_tops} tops")
        self.global_pooling = p.global_pooling
        has = p.HasField
        if self.global_pooling:
            if has("kernel_size") or has("kernel_h") or has("kernel_w"):
                raise self.fail("with global_pooling: true the kernel size comes from the bottom; "
                                "remove kernel_size/kernel_h/kernel_w")
        elif has("kernel_size") == (has("kernel_h") and has("kernel_w")):
            raise self.fail("give the kernel as kernel_size, or as both kernel_h and kernel_w (not both forms)")
        for field in ("pad", "stride"):
            if (has(f"{field}_h") or has(f"{field}_w")) and not (has(f"{field}_h") and has(f"{field}_w")
                                                                and not has(field)):
                raise self.fail(f"give {field}, or both {field}_h and {field}_w (not both forms)")
        self.kernel = None if self.global_pooling else (
            (p.kernel_size,) * 2 if has("kernel_size") else (p.kernel_h, p.kernel_w))
        self.pad = (p.pad_h, p.pad_w) if has("pad_h") else (p.pad,) * 2
        self.stride = (p.stride_h, p.stride_w) if has("stride_h") else (p.stride,) * 2
        if self.kernel is not None and min(self.kernel) <= 0:
            raise self.fail(f"pooling_param kernel must be positive, got {list(self.kernel)}")
        if min(self.stride) <= 0:
            raise self.fail(f"pooling_param stride must be positive, got {list(self.stride)}")
        if self.global_pooling and (any(self.pad) or self.stride != (1, 1)):
            raise self.fail("with global_pooling: true only pad 0 and stride 1 are allowed")
        if self.kernel is not None:
            _check_pool_pad(self, self.method, self.kernel, self.pad, "pooling_param")
        self.ceil = self._rounds_up(p)
        self.train = self.phase == TRAIN
        self._geometries: dict[tuple[int, int], PoolGeometry] = {}
        self.top_shapes(setup.bottom_shapes)

    def _rounds_up(self, p) -> bool:
        """BVLC's ``round_mode``, or the DenseNet/ResNeXt forks' ``ceil_mode`` (false: floor) when set.
        Both set must agree."""
        if not p.HasField("ceil_mode"):
            return p.round_mode == Pool.CEIL
        if p.HasField("round_mode") and p.ceil_mode != (p.round_mode == Pool.CEIL):
            raise self.fail(f"pooling_param ceil_mode: {str(p.ceil_mode).lower()} (a fork's field) contradicts "
                            f"round_mode: {Pool.RoundMode.Name(p.round_mode)}; keep one of the two")
        return p.ceil_mode

    def geometry(self, shape: Sequence[int]) -> PoolGeometry:
        if len(shape) != 4:
            raise self.fail(f"the bottom must have 4 axes (N, C, H, W), got shape {list(shape)}")
        size = (int(shape[2]), int(shape[3]))
        g = self._geometries.get(size)
        if g is None:
            kernel = size if self.global_pooling else self.kernel
            g = pool_geometry(self, size, kernel, self.stride, self.pad, self.ceil, "pooling_param")
            self._geometries[size] = g
        return g

    def top_shapes(self, bottom_shapes):
        shape = bottom_shapes[0]
        top = torch.Size((shape[0], shape[1]) + self.geometry(shape).out)
        return [top] * self.num_tops

    def forward(self, x):
        g = self.geometry(x.shape)
        if self.global_pooling and self.method == Pool.AVE:
            return x.mean((2, 3), keepdim=True)
        y, mask = pool(x, self.method, g, self.train, self.num_tops > 1)
        return (y, mask) if self.num_tops > 1 else y

    # -- export hooks (torchcaffe.export) ----------------------------------------------------------
    def torch_windows_always(self) -> bool:
        """Whether torch's pooling (``padding``, ``ceil_mode``) gives Caffe's windows for *every* input
        size: pad at most half the kernel, and in ceil mode either some padding (both then drop a last
        window starting in the padding) or kernel >= stride (no window can start past the input)."""
        if any(p > k // 2 for p, k in zip(self.pad, self.kernel)):
            return False
        return not self.ceil or any(self.pad) or all(k >= s for k, s in zip(self.kernel, self.stride))

    def export_onnx(self, x):
        """As forward; but AVE pooling over Caffe's own windows divides the window sums by the
        divisor map itself (the ONNX exporter silently drops ``divisor_override``)."""
        g = self.geometry(x.shape)
        if self.method != Pool.AVE or self.global_pooling or g.torch_ok:
            return self.forward(x)
        area = g.kernel[0] * g.kernel[1]
        sums = F.avg_pool2d(F.pad(x, g.explicit_pad), g.kernel, g.stride) * area
        rows, cols = (torch.tensor(g.window_sizes(a), dtype=x.dtype, device=x.device) for a in (0, 1))
        return sums / (rows[:, None] * cols[None, :])

    def export_source(self, code):
        """``F.max_pool2d`` / ``F.avg_pool2d`` where torch's windows are Caffe's for any input size,
        else the ``caffe_max_pool2d`` / ``caffe_avg_pool2d`` helpers; global pooling is a reduction."""
        x, ints = code.bottoms[0], code.ints
        if self.num_tops > 1:
            raise code.unsupported("the argmax (mask) top of MAX pooling")
        if self.method not in (Pool.MAX, Pool.AVE):
            raise code.unsupported(f"{Pool.PoolMethod.Name(self.method)} pooling")
        if self.global_pooling:
            if self.method == Pool.AVE:
                return code.line(f"{x}.mean((2, 3), keepdim=True)")
            return code.line(f"{x}.amax((2, 3), keepdim=True)")
        op = "max" if self.method == Pool.MAX else "avg"
        if self.torch_windows_always():
            args = [x, ints(self.kernel)]
            if self.stride != self.kernel:
                args.append(f"stride={ints(self.stride)}")
            if any(self.pad):
                args.append(f"padding={ints(self.pad)}")
            if self.ceil:
                args.append("ceil_mode=True")
            return code.line(f"F.{op}_pool2d({', '.join(args)})")
        helper = code.helper(f"caffe_{op}_pool2d")
        return code.line(f"{helper}({x}, {self.kernel}, {self.stride}, {self.pad}, ceil_mode={self.ceil})")


@register_layer("SPP")
class SPP(Layer):
    """Spatial pyramid pooling: pool into 1, 2x2, 4x4, ... bins and concatenate the flattened levels.

    Level ``l`` (``bins = 2^l``) pools with ``kernel = stride = ceil(H / bins)`` and
    ``pad = (kernel * bins - H + 1) // 2`` (likewise for W) under Pooling's rules (ceil rounding,
    last window dropped when it starts in the padding), then flattens to ``(N, C * out_h * out_w)``.

    Parameters: ``spp_param { pyramid_height (required) pool (MAX) engine }``.
    Shapes: ``(N, C, H, W)`` -> ``(N, C * sum_l out_h(l) * out_w(l))``; with ``pyramid_height: 1``
    the single level is *not* flattened: ``(N, C, 1, 1)``, as in Caffe.

    Example::

        layer { name: "spp" type: "SPP" bottom: "conv5" top: "spp"
                spp_param { pyramid_height: 3 pool: MAX } }

    Caffe quirks kept: the inner pooling layers are built with a default LayerParameter, so
    STOCHASTIC samples (TRAIN behaviour) in every phase; sizes whose level needs ``pad >= kernel``
    are refused, as Caffe's inner Pooling refuses them.
    """

    exact_bottoms = 1
    exact_tops = 1
    samples = (
        Sample("spp_param { pyramid_height: 3 pool: MAX }", bottoms=((2, 1, 7, 6),)),
        Sample("spp_param { pyramid_height: 3 pool: AVE }", bottoms=((1, 1, 8, 7),), note="batch 1"),
        Sample("spp_param { pyramid_height: 1 pool: MAX }", bottoms=((2, 3, 4, 5),), note="one level: 4-D top"),
        Sample("spp_param { pyramid_height: 2 pool: STOCHASTIC }", bottoms=((1, 2, 4, 6),),
               values=(("uniform", 0.5, 2.0),), phase=TEST, note="samples even in TEST"),
    )

    def __init__(self, setup: LayerSetup):
        super().__init__(setup)
        p = setup.param.spp_param
        if p.pyramid_height <= 0:
            raise self.fail(f"spp_param pyramid_height must be at least 1, got {p.pyramid_height}")
        self.levels, self.method = p.pyramid_height, p.pool
        self._geometries: dict[tuple[int, int], list[PoolGeometry]] = {}
        self.top_shapes(setup.bottom_shapes)

    def geometries(self, shape: Sequence[int]) -> list[PoolGeometry]:
        if len(shape) != 4:
            raise self.fail(f"the bottom must have 4 axes (N, C, H, W), got shape {list(shape)}")
        size = (int(shape[2]), int(shape[3]))
        if size in self._geometries:
            return self._geometries[size]
        if min(size) <= 0:
            raise self.fail(f"the bottom's height and width must be positive, got {list(size)}")
        levels = []
        for level in range(self.levels):
            bins = 2 ** level
            kernel = tuple(-(-n // bins) for n in size)
            pad = tuple((k * bins - n + 1) // 2 for k, n in zip(kernel, size))
            what = f"pyramid level {level} ({bins}x{bins} bins) of a {size[0]}x{size[1]} bottom"
            _check_pool_pad(self, self.method, kernel, pad, what)
            levels.append(pool_geometry(self, size, kernel, kernel, pad, True, what))
        self._geometries[size] = levels
        return levels

    def top_shapes(self, bottom_shapes):
        n, c = bottom_shapes[0][:2]
        levels = self.geometries(bottom_shapes[0])
        if self.levels == 1:
            return [torch.Size((n, c) + levels[0].out)]
        return [torch.Size((n, c * sum(g.out[0] * g.out[1] for g in levels)))]

    def forward(self, x):
        tops = [pool(x, self.method, g, True)[0] for g in self.geometries(x.shape)]
        if self.levels == 1:
            return tops[0]
        return torch.cat([t.flatten(1) for t in tops], 1)


# ------------------------------------------------------------------------------------------------
# Im2col and Crop
# ------------------------------------------------------------------------------------------------
@register_layer("Im2col")
class Im2col(Layer):
    """Caffe's im2col as a layer: every convolution window laid out along the channel axis.

    ``top[n, (c * kh + i) * kw + j, y, x] = bottom[n, c, s_h*y - p_h + d_h*i, s_w*x - p_w + d_w*j]``
    (zero outside the input): channels ordered ``c``, then kernel row, then kernel column; N-D alike.

    Parameters: ``convolution_param`` — ``kernel_size``/``stride``/``pad``/``dilation`` (once or per
    spatial axis, or the 2-D ``_h``/``_w`` forms) and ``axis`` (1); the rest is ignored.
    Shapes: ``(N..., C, S...)`` -> ``(N..., C * prod(k), S_out...)``, ``S_out`` as Convolution's.

    Example::

        layer { name: "cols" type: "Im2col" bottom: "data" top: "cols"
                convolution_param { kernel_size: 3 stride: 2 pad: 1 } }

    Differs from torch: ``F.unfold`` flattens the output positions into one axis; Caffe keeps them
    as spatial axes.
    """

    exact_bottoms = 1
    exact_tops = 1
    samples = (
        Sample("convolution_param { kernel_size: 3 stride: 2 pad: 1 }", bottoms=((2, 2, 5, 5),)),
        Sample("convolution_param { kernel_h: 2 kernel_w: 3 stride_h: 1 stride_w: 2 pad_h: 1 pad_w: 0 dilation: 2 }",
               bottoms=((1, 2, 5, 6),), note="batch 1, _h/_w, dilation"),
        Sample("convolution_param { kernel_size: 3 stride: 2 pad: 1 }", bottoms=((2, 2, 7),), note="1-D"),
        Sample("convolution_param { kernel_size: 2 stride: 1 stride: 2 stride: 1 pad: 1 pad: 0 pad: 0 dilation: 2 "
               "dilation: 1 dilation: 1 }", bottoms=((1, 2, 3, 4, 3),), note="3-D, per-axis"),
        Sample("convolution_param { kernel_size: 2 axis: 2 }", bottoms=((2, 1, 2, 3, 3),), note="channel axis 2"),
    )

    def __init__(self, setup: LayerSetup):
        super().__init__(setup)
        p = setup.param.convolution_param
        shape = setup.bottom_shapes[0]
        self.axis = axis_index(self, p.axis, len(shape), "convolution_param.axis")
        self.num_spatial = len(shape) - self.axis - 1
        if self.num_spatial < 1:
            raise self.fail(f"needs at least one spatial axis after the channel axis {self.axis}; the "
                            f"bottom has shape {list(shape)}")
        self.geometry = conv_geometry(self, p, self.num_spatial)
        self.top_shapes(setup.bottom_shapes)

    def top_shapes(self, bottom_shapes):
        shape = tuple(bottom_shapes[0])
        if len(shape) != self.axis + 1 + self.num_spatial:
            raise self.fail(f"the bottom's number of axes may not change, got shape {list(shape)}")
        g = self.geometry
        out = tuple(_conv_out(self, n, e, s, p, i) for i, (n, e, s, p)
                    in enumerate(zip(shape[self.axis + 1:], g.extent, g.stride, g.pad)))
        return [torch.Size(shape[:self.axis] + (shape[self.axis] * math.prod(g.kernel),) + out)]

    def forward(self, x):
        g = self.geometry
        lead = x.shape[:self.axis]
        x = _leading_batch(x, self.axis)
        if self.num_spatial == 2:
            cols = F.unfold(x, g.kernel, g.dilation, g.pad, g.stride)
            out = [(n + 2 * p - e) // s + 1 for n, e, s, p in zip(x.shape[2:], g.extent, g.stride, g.pad)]
            cols = cols.view(cols.shape[0], cols.shape[1], *out)
        else:
            cols = _im2col_nd(x, g)
        return cols.reshape(lead + cols.shape[1:])


def _im2col_nd(x: torch.Tensor, g: ConvGeometry) -> torch.Tensor:
    """im2col for any number of spatial axes, with strided views: ``(B, C, S...)`` ->
    ``(B, C * prod(k), S_out...)``."""
    n = len(g.kernel)
    pads = [q for p in reversed(g.pad) for q in (p, p)]
    x = F.pad(x, pads) if any(g.pad) else x
    for d in range(n):  # appends one window axis per spatial axis
        x = x.unfold(2 + d, g.extent[d], g.stride[d])
    if any(d > 1 for d in g.dilation):
        x = x[(Ellipsis,) + tuple(slice(None, None, d) for d in g.dilation)]
    order = (0, 1) + tuple(range(2 + n, 2 + 2 * n)) + tuple(range(2, 2 + n))
    x = x.permute(order)
    return x.reshape(x.shape[0], -1, *x.shape[2 + n:])


@register_layer("Crop")
class Crop(Layer):
    """Crop bottom 0 to bottom 1's size on every axis from ``axis`` on, starting at ``offset``.

    ``top = bottom0[..., o_a : o_a + size1_a, ...]`` for axes ``a >= axis``; earlier axes are kept.
    Only bottom 0 gets a gradient (the cropped window); bottom 1 only supplies its shape.

    Parameters: ``crop_param { axis (2) offset }``: no offset means 0, one offset applies to every
    cropped axis, otherwise one per cropped axis.
    Shapes: bottom 0 ``(D_0, ..., D_k)``, bottom 1 (the reference, at least as many axes) ->
    ``(D_0, ..., D_{axis-1}, R_axis, ..., R_k)``.

    Example::

        layer { name: "score" type: "Crop" bottom: "upscore" bottom: "data" top: "score"
                crop_param { axis: 2 offset: 19 } }

    The top is a view of bottom 0 (no copy).
    """

    exact_bottoms = 2
    exact_tops = 1
    samples = (
        Sample("", bottoms=((2, 2, 5, 6), (1, 1, 3, 4)), note="default axis 2, offset 0"),
        Sample("crop_param { axis: 1 offset: 1 }", bottoms=((2, 4, 5, 5), (2, 2, 3, 3)), note="one offset"),
        Sample("crop_param { axis: 2 offset: 1 offset: 2 }", bottoms=((1, 2, 6, 6), (1, 3, 4, 3)),
               note="batch 1, one offset per axis"),
        Sample("crop_param { axis: -1 offset: 2 }", bottoms=((3, 7), (1, 4)), note="negative axis, 2-D"),
        Sample("crop_param { axis: 0 offset: 1 offset: 0 offset: 2 }", bottoms=((3, 2, 5), (2, 2, 2)),
               note="every axis cropped"),
    )

    def __init__(self, setup: LayerSetup):
        super().__init__(setup)
        p = setup.param.crop_param
        ndim = len(setup.bottom_shapes[0])
        start = axis_index(self, p.axis, ndim, "crop_param.axis")
        if len(p.offset) > 1 and start + len(p.offset) != ndim:
            raise self.fail(f"crop_param offset must be given once, or once per cropped axis ({ndim - start} "
                            f"axes from axis {start}); got {len(p.offset)} values")
        self.axis_param, self.offsets = p.axis, tuple(p.offset)
        self._plans: dict = {}
        self.top_shapes(setup.bottom_shapes)

    def plan(self, shape: Sequence[int], reference: Sequence[int]) -> tuple[slice, ...]:
        key = (tuple(shape), tuple(reference))
        if key in self._plans:
            return self._plans[key]
        ndim = len(shape)
        start = axis_index(self, self.axis_param, ndim, "crop_param.axis")
        if len(self.offsets) > 1 and start + len(self.offsets) != ndim:
            raise self.fail(f"crop_param gives {len(self.offsets)} offsets for {ndim - start} cropped axes")
        if len(reference) < ndim:
            raise self.fail(f"bottom 1 (shape {list(reference)}) needs at least the {ndim} axes of bottom 0")
        index = [slice(None)] * start
        for a in range(start, ndim):
            offset = 0 if not self.offsets else self.offsets[0 if len(self.offsets) == 1 else a - start]
            if shape[a] - offset < reference[a]:
                raise self.fail(f"the crop of axis {a} is out of bounds: offset {offset} + size "
                                f"{reference[a]} (bottom 1) exceeds bottom 0's size {shape[a]}")
            index.append(slice(offset, offset + reference[a]))
        self._plans[key] = tuple(index)
        return self._plans[key]

    def top_shapes(self, bottom_shapes):
        shape = bottom_shapes[0]
        index = self.plan(shape, bottom_shapes[1])
        return [torch.Size([len(range(*s.indices(n))) for s, n in zip(index, shape)])]

    def forward(self, x, reference):
        return x[self.plan(x.shape, reference.shape)]

    # -- export hooks (torchcaffe.export) ----------------------------------------------------------
    def export_source(self, code):
        """Slicing: ``x[:, :, 19:19 + ref.shape[2], 19:19 + ref.shape[3]]``."""
        x, reference = code.bottoms
        index = self.plan(code.bottom_shapes[0], code.bottom_shapes[1])
        parts = [":" if s == slice(None) else
                 f"{s.start}:{s.start} + {reference}.shape[{a}]" if s.start else f":{reference}.shape[{a}]"
                 for a, s in enumerate(index)]
        while parts and parts[-1] == ":":
            parts.pop()
        return code.line(f"{x}[{', '.join(parts)}]" if parts else x)
