"""Small fork layers and our own L2Norm.

* ``ShuffleChannel`` — ShuffleNet's channel shuffle (farmingyard/ShuffleNet).
* ``ConvolutionDepthwise`` — MobileNet's depthwise convolution by sp2823 (BVLC/caffe PR #5665, as
  shipped in farmingyard/caffe-mobilenet): one filter per channel, ``num_output``/``group`` ignored.
* ``DepthwiseConvolution`` — yonghenglh6/DepthwiseConvolution: a faster GPU kernel behind an
  ordinary grouped convolution (the CPU path *is* Caffe's grouped convolution).
* ``Axpy`` — SENet's fused channel-wise scale plus sum, ``a * x + y`` (hujie-frank/SENet).
* ``L2Norm`` — torchcaffe's own L2 normalization over chosen axes (no fork has it; see
  ``docs/l2norm.md`` for the same result built from stock Caffe layers).

Each fork layer follows the fork's own source; where the fork has undefined behaviour (reading a
repeated field out of range, in-place runs that overwrite their input) we refuse or pick the
BVLC default and say so in the docstring and in ``docs/forks/misc.md``.
"""
from __future__ import annotations

import dataclasses

import torch

from ..errors import NetError, layer_label
from ..proto import caffe_pb2
from .base import Layer, LayerSetup, Sample, axis_index, setup_source
from .registry import register_layer
from .vision import GAUSS, Convolution


# ------------------------------------------------------------------------------------------------
# ShuffleChannel
# ------------------------------------------------------------------------------------------------
@register_layer("ShuffleChannel")
class ShuffleChannel(Layer):
    """ShuffleNet's channel shuffle: the C channels as ``group`` rows of ``C / group``, transposed.

    ``top[n, j * group + i, ...] = bottom[n, i * (C / group) + j, ...]`` for ``i < group``,
    ``j < C / group``; i.e. reshape ``(N, g, C/g, S...)`` -> transpose axes 1, 2 -> ``(N, C, S...)``.

    Parameters: ``shuffle_channel_param { group (1) }``; ``group`` must be positive and divide C.
    Shapes: ``(N, C, S...)`` -> ``(N, C, S...)`` (any number of axes after the channel axis).

    Example::

        layer { name: "shuffle2" type: "ShuffleChannel" bottom: "resx2_conv1" top: "shuffle2"
                shuffle_channel_param { group: 3 } }

    Fork quirks: the fork declares no blob counts but only reads bottom 0 and writes top 0, so we
    require exactly one of each; its ``Reshape`` is empty (the top keeps the shape of the first
    bottom it saw), we follow the bottom; run in place it would overwrite channels it has yet to
    read, we always compute the shuffle. ``torch.nn.ChannelShuffle`` gives the same order.
    """

    origin = "ShuffleNet (farmingyard/ShuffleNet)"
    exact_bottoms = 1
    exact_tops = 1
    samples = (
        Sample("shuffle_channel_param { group: 3 }", bottoms=((2, 6, 3, 2),)),
        Sample("shuffle_channel_param { group: 2 }", bottoms=((1, 8, 2, 3),), note="batch 1"),
        Sample("shuffle_channel_param { group: 4 }", bottoms=((3, 4),), note="2-D (N, C): spatial size 1"),
        Sample("shuffle_channel_param { group: 3 }", bottoms=((2, 6, 5),), note="3-D"),
        Sample("", bottoms=((2, 3, 2, 2),), note="default group 1: identity"),
        Sample("shuffle_channel_param { group: 5 }", bottoms=((1, 5, 2, 1),), note="group == C: identity"),
    )

    def __init__(self, setup: LayerSetup):
        super().__init__(setup)
        self.group = setup.param.shuffle_channel_param.group
        if self.group <= 0:
            raise self.fail(f"shuffle_channel_param group must be greater than 0, got {self.group}")
        self.top_shapes(setup.bottom_shapes)

    def top_shapes(self, bottom_shapes):
        shape = bottom_shapes[0]
        if len(shape) < 2:
            raise self.fail(f"needs a bottom with a channel axis (N, C, ...), got shape {list(shape)}")
        if shape[1] % self.group:
            raise self.fail(f"the bottom's {shape[1]} channels are not divisible by shuffle_channel_param "
                            f"group {self.group}; pick a group that divides the channel count")
        return [torch.Size(shape)]

    def forward(self, x):
        n, c = x.shape[:2]
        rows = x.reshape(n, self.group, c // self.group, -1)
        return rows.transpose(1, 2).reshape(x.shape)

    # -- export hooks (torchcaffe.export) ----------------------------------------------------------
    def export_source(self, code):
        x, shape = code.bottoms[0], code.bottom_shapes[0]
        if self.group == 1:
            return code.line(x)
        return code.line(f"{x}.reshape({x}.shape[0], {self.group}, {shape[1] // self.group}, -1)"
                         f".transpose(1, 2).reshape({x}.shape)")


# ------------------------------------------------------------------------------------------------
# Depthwise convolutions
# ------------------------------------------------------------------------------------------------
def _two(setup: LayerSetup, p, name: str, hw: tuple[str, str] | None, default: int | None, type_name: str):
    """One of ConvolutionDepthwise's 2-D fields, read as the fork reads it: ``<f>_h`` and ``<f>_w``
    when *both* are set, else the repeated field once (square) or twice (h, w)."""
    if hw is not None and p.HasField(hw[0]) and p.HasField(hw[1]):
        return (getattr(p, hw[0]), getattr(p, hw[1]))
    values = tuple(getattr(p, name))
    if not values and default is not None:
        return (default, default)
    if len(values) not in (1, 2):
        pair = f", or as {hw[0]} and {hw[1]}" if hw is not None else ""
        raise NetError(f"{layer_label(setup.param.name, type_name)}: convolution_param {name} must be given "
                       f"once (square) or twice (height, width){pair}; got {len(values)} value(s)"
                       f"{setup_source(setup)}")
    return (values[0], values[-1])


@register_layer("ConvolutionDepthwise")
class ConvolutionDepthwise(Convolution):
    """Depthwise 2-D convolution: each channel with its own filter (``num_output``/``group`` ignored).

    Channel c of the top is channel c of the bottom cross-correlated with its own ``kh x kw``
    filter, plus a bias:

    ``top[n, c, y, x] = bias[c] + sum_{i,j} weight[c, 0, i, j] * bottom[n, c, s_h*y - p_h + d_h*i,
    s_w*x - p_w + d_w*j]`` with zero padding; output size ``floor((in + 2p - (d(k-1)+1)) / s) + 1``.

    Parameters (``convolution_param``): ``kernel_size`` (once, or height and width) or
    ``kernel_h + kernel_w``; ``stride`` (1) / ``stride_h + stride_w``; ``pad`` (0) /
    ``pad_h + pad_w``; ``dilation`` (1; once or height and width); ``bias_term`` (true);
    ``weight_filler``, ``bias_filler``. ``num_output``, ``group``, ``axis`` and ``engine`` are
    ignored: the top has the bottom's channel count.

    Blobs: weight ``(C, 1, kh, kw)``, bias ``(C,)`` — Convolution's layout with
    ``num_output = group = C``. Shapes: ``(N, C, H, W)`` -> ``(N, C, H_out, W_out)``.

    Example::

        layer { name: "conv2_1/dw" type: "ConvolutionDepthwise" bottom: "conv1" top: "conv2_1/dw"
                convolution_param { num_output: 32 bias_term: false pad: 1 kernel_size: 3 stride: 1
                                    weight_filler { type: "msra" } } }

    Fork quirks: ``kernel_h``/``kernel_w`` (and the stride/pad pairs) count only when both are set;
    with neither ``stride`` nor ``stride_h + stride_w`` (or no ``pad``) the fork reads a repeated
    field out of range — we use BVLC's defaults 1 and 0. ``num_output`` is never checked against C.
    Exactly one bottom and one top (unlike Convolution). The result is ``F.conv2d(groups=C)``.
    """

    origin = "MobileNet depthwise by sp2823 (farmingyard/caffe-mobilenet)"
    exact_bottoms = 1
    exact_tops = 1
    samples = (
        Sample(f"convolution_param {{ num_output: 3 kernel_size: 3 pad: 1 {GAUSS} }}", bottoms=((2, 3, 4, 5),)),
        Sample(f"convolution_param {{ num_output: 3 kernel_size: 3 stride: 2 pad: 1 bias_term: false {GAUSS} }}",
               bottoms=((1, 3, 5, 6),), note="batch 1, stride, no bias"),
        Sample(f"convolution_param {{ num_output: 99 group: 7 kernel_h: 2 kernel_w: 3 stride_h: 1 stride_w: 2 "
               f"pad_h: 0 pad_w: 1 {GAUSS} }}", bottoms=((2, 2, 4, 5),),
               note="_h/_w pairs; num_output and group ignored"),
        Sample(f"convolution_param {{ num_output: 2 kernel_size: 2 kernel_size: 3 dilation: 2 pad: 1 {GAUSS} }}",
               bottoms=((1, 2, 5, 6),), note="kernel (h, w) as two kernel_size values, dilation"),
        Sample(f"convolution_param {{ kernel_size: 3 {GAUSS} }}", bottoms=((2, 4, 3, 3),),
               note="no stride/pad given: 1 and 0"),
    )

    def __init__(self, setup: LayerSetup):
        shape = setup.bottom_shapes[0] if setup.bottom_shapes else ()
        if setup.bottom_shapes and len(shape) != 4:
            raise NetError(f"{layer_label(setup.param.name, self.type)}: the bottom must have 4 axes "
                           f"(N, C, H, W), got shape {list(shape)}{setup_source(setup)}")
        p = setup.param.convolution_param
        if not len(p.kernel_size) and not (p.HasField("kernel_h") and p.HasField("kernel_w")):
            raise NetError(f"{layer_label(setup.param.name, self.type)}: convolution_param needs kernel_size, "
                           f"or both kernel_h and kernel_w{setup_source(setup)}")
        kernel = _two(setup, p, "kernel_size", ("kernel_h", "kernel_w"), None, self.type)
        stride = _two(setup, p, "stride", ("stride_h", "stride_w"), 1, self.type)
        pad = _two(setup, p, "pad", ("pad_h", "pad_w"), 0, self.type)
        dilation = _two(setup, p, "dilation", None, 1, self.type)
        channels = int(shape[1]) if setup.bottom_shapes else 1
        # The fork's geometry in Convolution's terms: one filter per channel.
        plain = caffe_pb2.ConvolutionParameter(num_output=channels, group=channels, bias_term=p.bias_term,
                                               kernel_size=kernel, stride=stride, pad=pad, dilation=dilation)
        if p.HasField("weight_filler"):
            plain.weight_filler.CopyFrom(p.weight_filler)
        if p.HasField("bias_filler"):
            plain.bias_filler.CopyFrom(p.bias_filler)
        param = caffe_pb2.LayerParameter()
        param.CopyFrom(setup.param)
        param.convolution_param.CopyFrom(plain)
        super().__init__(dataclasses.replace(setup, param=param))


@register_layer("DepthwiseConvolution")
class DepthwiseConvolution(Convolution):
    """yonghenglh6's depthwise convolution: Caffe's grouped Convolution under another type name.

    Every field is read as Convolution reads it (``group`` included); the fork only adds a GPU
    kernel written for ``num_output == group == C``.

    Math, parameters, blobs and shapes: those of ``Convolution`` (weight
    ``(num_output, C / group, k...)``; MobileNet files set ``num_output == group == C``, giving
    ``(C, 1, kh, kw)``).

    Example::

        layer { name: "conv2_1/dw" type: "DepthwiseConvolution" bottom: "conv1" top: "conv2_1/dw"
                convolution_param { num_output: 32 group: 32 bias_term: false pad: 1 kernel_size: 3
                                    weight_filler { type: "msra" } } }

    Fork quirks: the fork's CPU code is Caffe's grouped convolution, which we follow; its CUDA
    kernel assumes ``num_output == group == C``, 2-D, and ignores ``dilation`` (it agrees with the
    CPU code only there, and also goes wrong where the input is smaller than the kernel).
    """

    origin = "DepthwiseConvolution (yonghenglh6/DepthwiseConvolution)"
    samples = (
        Sample(f"convolution_param {{ num_output: 3 group: 3 kernel_size: 3 pad: 1 {GAUSS} }}",
               bottoms=((2, 3, 4, 5),)),
        Sample(f"convolution_param {{ num_output: 4 group: 4 kernel_size: 3 stride: 2 pad: 1 bias_term: false "
               f"{GAUSS} }}", bottoms=((1, 4, 5, 5),), note="batch 1, stride 2, no bias (MobileNet)"),
        Sample(f"convolution_param {{ num_output: 4 group: 2 kernel_size: 2 {GAUSS} }}", bottoms=((1, 2, 3, 4),),
               note="channel multiplier 2 (grouped convolution, as the CPU path computes)"),
        Sample(f"convolution_param {{ num_output: 2 group: 2 kernel_size: 3 pad: 1 {GAUSS} }}",
               bottoms=((1, 2, 3, 3), (1, 2, 3, 3)), tops=2, note="two bottoms share the weights"),
    )


# ------------------------------------------------------------------------------------------------
# Axpy
# ------------------------------------------------------------------------------------------------
@register_layer("Axpy")
class Axpy(Layer):
    """SENet's fused channel scale and sum: ``top = a * x + y`` with one scale per (n, c).

    ``top[n, c, ...] = a[n, c] * x[n, c, ...] + y[n, c, ...]``; the gradients are
    ``da[n, c] = sum(dtop[n, c, ...] * x[n, c, ...])``, ``dx = a * dtop``, ``dy = dtop``.

    No parameters. Shapes: ``a (N, C)`` or ``(N, C, 1, 1)``, ``x (N, C, S...)``, ``y`` as x ->
    ``(N, C, S...)``.

    Example::

        layer { name: "conv2_1" type: "Axpy" bottom: "conv2_1_1x1_up" bottom: "conv2_1_1x1_increase"
                bottom: "conv2_1_1x1_proj" top: "conv2_1" }

    Fork rules: a's first two axes must be x's; a 4-D ``a`` must be ``(N, C, 1, 1)``; y must have
    x's shape. The fork checks the trailing axes of ``a`` only when it is 4-D and would then read
    ``a`` as a flat ``N * C`` array; we require every axis of ``a`` after the channel axis to be 1.
    """

    origin = "SENet (hujie-frank/SENet)"
    exact_bottoms = 3
    exact_tops = 1
    samples = (
        Sample(bottoms=((2, 3, 1, 1), (2, 3, 2, 3), (2, 3, 2, 3))),
        Sample(bottoms=((1, 4, 1, 1), (1, 4, 3, 2), (1, 4, 3, 2)), note="batch 1"),
        Sample(bottoms=((3, 2), (3, 2, 5), (3, 2, 5)), note="2-D scale, 3-D x"),
        Sample(bottoms=((2, 3), (2, 3), (2, 3)), note="all (N, C)"),
        Sample(bottoms=((2, 2, 1, 1), (2, 2, 2, 2), (2, 2, 2, 2)), values=(("const", 0.0), None, None),
               note="zero scale: x still gets its (zero) gradient, a gets sum(dtop * x)"),
    )

    def __init__(self, setup: LayerSetup):
        super().__init__(setup)
        self.top_shapes(setup.bottom_shapes)

    def top_shapes(self, bottom_shapes):
        a, x, y = (tuple(s) for s in bottom_shapes)
        if len(a) < 2 or len(x) < 2:
            raise self.fail(f"bottoms 0 (scale) and 1 (x) need (N, C, ...) axes; got shapes {list(a)} and {list(x)}")
        if a[:2] != x[:2]:
            raise self.fail(f"bottom 0 (scale, shape {list(a)}) must have the (N, C) of bottom 1 (x, shape "
                            f"{list(x)})")
        if any(d != 1 for d in a[2:]):
            raise self.fail(f"bottom 0 (scale) must be (N, C) or (N, C, 1, 1), got shape {list(a)}")
        if x != y:
            raise self.fail(f"bottoms 1 (x) and 2 (y) must have the same shape, got {list(x)} and {list(y)}")
        return [torch.Size(x)]

    def forward(self, a, x, y):
        return a.reshape(a.shape[:2] + (1,) * (x.dim() - 2)) * x + y

    # -- export hooks (torchcaffe.export) ----------------------------------------------------------
    def export_source(self, code):
        a, x, y = code.bottoms
        missing = len(code.bottom_shapes[1]) - len(code.bottom_shapes[0])
        if missing:
            a = f"{a}[..., {', '.join(['None'] * missing)}]"
        return code.line(f"{a} * {x} + {y}")


# ------------------------------------------------------------------------------------------------
# L2Norm (ours)
# ------------------------------------------------------------------------------------------------
@register_layer("L2Norm")
class L2Norm(Layer):
    """L2 normalization over chosen axes, optionally followed by a learned per-channel scale.

    ``y = x / sqrt(sum_{axes} x^2 + eps)`` (the sum keeps the other axes: every vector along the
    chosen axes gets unit norm), then, with ``scale: true``, ``y[:, c, ...] *= s[c]`` (channel
    axis 1) or ``y *= s`` with ``channel_shared``. Backward is autograd's exact derivative.

    Parameters: ``l2_norm_param { axis (repeated; none given means axis 1) eps (1e-10, inside the
    square root) scale (false) scale_filler (constant 1) channel_shared (false) }``. Negative axes
    count from the end; an axis may be listed once.

    Blobs (only with ``scale: true``): scale ``(C,)``, or ``(1,)`` with ``channel_shared`` — the
    layout of SSD's Normalize, so ``axis: 1 scale: true`` reproduces Normalize with
    ``across_spatial: false`` (and its weights load unchanged).
    Shapes: ``(*)`` -> ``(*)``; ``scale`` needs a channel axis (at least 2 axes).

    Example::

        layer { name: "conv4_3_norm" type: "L2Norm" bottom: "conv4_3" top: "conv4_3_norm"
                l2_norm_param { axis: 1 scale: true scale_filler { type: "constant" value: 20 } } }

    Differs from torch: ``F.normalize`` divides by ``max(||x||, eps)``; here eps is added to the
    sum of squares inside the square root (so the derivative is smooth at 0, and equals the
    stock-Caffe composition Reduction SUMSQ -> Power(-0.5, shift eps) -> multiply).
    """

    origin = "torchcaffe"
    exact_bottoms = 1
    exact_tops = 1
    samples = (
        Sample(bottoms=((2, 3, 2, 3),), inplace=True, note="default: across channels (axis 1)"),
        Sample(bottoms=((1, 5),), note="batch 1, (N, C): row normalization"),
        Sample("l2_norm_param { axis: 0 axis: 1 }", bottoms=((2, 3, 2, 2),), note="the seed's axes (0, 1)"),
        Sample("l2_norm_param { axis: 1 axis: 2 axis: 3 }", bottoms=((2, 2, 3, 2),), note="across spatial"),
        Sample("l2_norm_param { axis: -1 eps: 0.01 }", bottoms=((3, 2, 4),), note="negative axis, large eps"),
        Sample("l2_norm_param { scale: true scale_filler { type: 'uniform' min: 0.5 max: 2 } }",
               bottoms=((2, 3, 2, 2),), note="per-channel scale"),
        Sample("l2_norm_param { scale: true channel_shared: true scale_filler { type: 'uniform' min: 0.5 "
               "max: 2 } axis: 2 }", bottoms=((2, 3, 4),), note="one shared scale"),
        Sample("l2_norm_param { scale: true }", bottoms=((1, 4, 2, 1),), note="scale filler default: constant 1"),
        Sample("l2_norm_param { eps: 0.0001 }", bottoms=((2, 3),), values=(("const", 0.0),),
               note="zero vectors: the top is 0 and the gradient 1/sqrt(eps)"),
    )

    def __init__(self, setup: LayerSetup):
        super().__init__(setup)
        p = setup.param.l2_norm_param
        shape = setup.bottom_shapes[0]
        self.ndim = ndim = len(shape)
        self.axis_param = tuple(p.axis) or (1,)
        self.axes = self._axes(ndim)
        if p.eps < 0:
            raise self.fail(f"l2_norm_param eps must not be negative (it is added under the square root), "
                            f"got {p.eps}")
        self.eps = p.eps
        self.has_scale, self.channel_shared = p.scale, p.channel_shared
        if p.scale:
            if ndim < 2 and not p.channel_shared:
                raise self.fail(f"l2_norm_param scale: true needs a channel axis (axis 1), but the bottom has "
                                f"shape {list(shape)}; use channel_shared: true or a bottom with 2+ axes")
            filler = p.scale_filler if p.HasField("scale_filler") else caffe_pb2.FillerParameter(
                type="constant", value=1.0)
            self.add_blob("scale", (1,) if p.channel_shared else (shape[1],), filler)

    def _axes(self, ndim: int) -> tuple[int, ...]:
        axes = tuple(axis_index(self, a, ndim, "l2_norm_param axis") for a in self.axis_param)
        if len(set(axes)) != len(axes):
            raise self.fail(f"l2_norm_param axis lists an axis twice: {list(self.axis_param)} on a {ndim}-D "
                            f"bottom; give each axis once")
        return axes

    def top_shapes(self, bottom_shapes):
        shape = bottom_shapes[0]
        self._axes(len(shape))
        if self.has_scale and not self.channel_shared and (len(shape) < 2 or shape[1] != self.scale.shape[0]):
            raise self.fail(f"the bottom has shape {list(shape)}, but the scale was set up for "
                            f"{self.scale.shape[0]} channels on axis 1")
        return [torch.Size(shape)]

    def forward(self, x):
        axes = self.axes if x.dim() == self.ndim else self._axes(x.dim())
        y = x * torch.rsqrt((x * x).sum(axes, keepdim=True) + self.eps)
        if self.has_scale:
            scale = self.scale if self.channel_shared else self.scale.view((1, -1) + (1,) * (x.dim() - 2))
            y = y * scale
        return y
