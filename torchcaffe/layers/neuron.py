"""Neuron layers: element-wise functions of one bottom (Caffe's ``NeuronLayer`` family).

Every neuron layer takes one bottom, gives one top of the same shape, and may run in place.
Layers whose Caffe backward reads bottom or top data also define ``caffe_inplace_backward``:
Caffe's backward formula with the blob's final value standing for both, which is what Caffe
computes in place (see ``torchcaffe/net/inplace.py``).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..fillers import fill
from ..proto import caffe_pb2
from .base import TEST, TRAIN, Layer, LayerSetup, Sample
from .registry import register_layer

KINKS = ("choice", -1.0, 0.0, 1.0)


class NeuronLayer(Layer):
    """One bottom, one top of the same shape; in place allowed."""

    exact_bottoms = 1
    exact_tops = 1


def _samples(params: str = "", *extra: Sample, values=None, gradcheck=True) -> tuple[Sample, ...]:
    """The neuron table: odd sizes, batch 1, N-D, and (forward only) values at the kinks."""
    v = None if values is None else (values,)
    return (
        Sample(params, bottoms=((2, 3, 4, 5),), values=v, inplace=True, gradcheck=gradcheck),
        Sample(params, bottoms=((1, 7),), values=v, gradcheck=gradcheck, note="batch 1, 2-D"),
        Sample(params, bottoms=((3, 2, 5),), values=v, gradcheck=gradcheck, note="3-D, odd sizes"),
        *extra,
    )


@register_layer("ReLU")
class ReLU(NeuronLayer):
    """Rectified linear unit, leaky when ``negative_slope`` is set.

    ``y = max(0, x) + negative_slope * min(0, x)``; the gradient at ``x = 0`` is ``negative_slope``
    (Caffe tests ``x > 0``).

    Parameters: ``relu_param { negative_slope (0) engine }``.
    Shapes: (*) -> (*).

    Example: ``layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }``
    """

    samples = _samples() + _samples("relu_param { negative_slope: 0.1 }") + (
        Sample("relu_param { negative_slope: 0.1 }", bottoms=((4, 3),), values=(KINKS,), gradcheck=False,
               note="values at the kink"),
    )

    def __init__(self, setup: LayerSetup):
        super().__init__(setup)
        self.negative_slope = setup.param.relu_param.negative_slope

    def forward(self, x):
        if self.negative_slope == 0:
            return F.relu(x)
        return F.leaky_relu(x, self.negative_slope)

    def forward_in_place(self, x):
        """The forward overwriting ``x`` (the executor's fast path for ``top == bottom``; autograd
        takes the mask from the result, which has the sign of ``x`` for a slope >= 0)."""
        if self.negative_slope == 0:
            return torch.relu_(x)
        return F.leaky_relu_(x, self.negative_slope) if self.negative_slope > 0 else self.forward(x)

    inplace_exact_when_last = True

    def caffe_inplace_backward(self, x, final, grad):
        return grad * torch.where(final > 0, 1.0, self.negative_slope).to(grad.dtype)

    # -- export hooks (torchcaffe.export) ----------------------------------------------------------
    def export_source(self, code):
        x = code.bottoms[0]
        if self.negative_slope == 0:
            return code.line(f"F.relu({x})")
        return code.line(f"F.leaky_relu({x}, {code.number(self.negative_slope)})")


@register_layer("Sigmoid")
class Sigmoid(NeuronLayer):
    """``y = 1 / (1 + exp(-x))``.  Shapes: (*) -> (*)."""

    samples = _samples()

    def forward(self, x):
        return torch.sigmoid(x)

    inplace_exact_when_last = True

    def caffe_inplace_backward(self, x, final, grad):
        return grad * final * (1 - final)

    # -- export hooks (torchcaffe.export) ----------------------------------------------------------
    def export_source(self, code):
        return code.line(f"torch.sigmoid({code.bottoms[0]})")


@register_layer("TanH")
class TanH(NeuronLayer):
    """``y = tanh(x)``.  Shapes: (*) -> (*)."""

    samples = _samples()

    def forward(self, x):
        return torch.tanh(x)

    inplace_exact_when_last = True

    def caffe_inplace_backward(self, x, final, grad):
        return grad * (1 - final * final)

    # -- export hooks (torchcaffe.export) ----------------------------------------------------------
    def export_source(self, code):
        return code.line(f"torch.tanh({code.bottoms[0]})")


@register_layer("AbsVal")
class AbsVal(NeuronLayer):
    """``y = |x|``; the gradient is ``sign(x)``, 0 at 0.  Shapes: (*) -> (*)."""

    samples = (Sample(bottoms=((2, 3, 4, 5),)), Sample(bottoms=((1, 7),), note="batch 1"),
               Sample(bottoms=((5,),), values=(KINKS,), gradcheck=False, note="kink"))

    def __init__(self, setup: LayerSetup):
        super().__init__(setup)
        if list(setup.param.top) == list(setup.param.bottom):
            raise self.fail("does not allow in-place computation (as in Caffe): give the top its own name")

    def forward(self, x):
        return torch.abs(x)

    # -- export hooks (torchcaffe.export) ----------------------------------------------------------
    def export_source(self, code):
        return code.line(f"{code.bottoms[0]}.abs()")


@register_layer("BNLL")
class BNLL(NeuronLayer):
    """Binomial normal log likelihood: ``y = log(1 + exp(x))`` (softplus), computed stably.

    Shapes: (*) -> (*).
    """

    samples = _samples(values=("uniform", -30.0, 30.0))

    def forward(self, x):
        return F.softplus(x)

    def caffe_inplace_backward(self, x, final, grad):
        e = torch.exp(torch.clamp(final, max=50.0))
        return grad * e / (e + 1)

    # -- export hooks (torchcaffe.export) ----------------------------------------------------------
    def export_source(self, code):
        return code.line(f"F.softplus({code.bottoms[0]})")


@register_layer("ELU")
class ELU(NeuronLayer):
    """Exponential linear unit: ``y = x`` for ``x > 0``, else ``alpha * (exp(x) - 1)``.

    Parameters: ``elu_param { alpha (1) }``.  Shapes: (*) -> (*).
    """

    samples = _samples("elu_param { alpha: 0.7 }") + _samples()

    def __init__(self, setup: LayerSetup):
        super().__init__(setup)
        self.alpha = setup.param.elu_param.alpha

    def forward(self, x):
        return F.elu(x, self.alpha)

    inplace_exact_when_last = True

    def caffe_inplace_backward(self, x, final, grad):
        return torch.where(final > 0, grad, grad * (final + self.alpha))

    # -- export hooks (torchcaffe.export) ----------------------------------------------------------
    def export_source(self, code):
        return code.line(f"F.elu({code.bottoms[0]}, {code.number(self.alpha)})")


@register_layer("Swish")
class Swish(NeuronLayer):
    """``y = x * sigmoid(beta * x)``.  Parameters: ``swish_param { beta (1) }``.  Shapes: (*) -> (*)."""

    samples = _samples("swish_param { beta: 1.5 }") + _samples()

    def __init__(self, setup: LayerSetup):
        super().__init__(setup)
        self.beta = setup.param.swish_param.beta

    def forward(self, x):
        return x * torch.sigmoid(self.beta * x)

    def caffe_inplace_backward(self, x, final, grad):
        s = torch.sigmoid(self.beta * x)  # Caffe caches sigmoid(beta * x) of the real input
        return grad * (self.beta * final + s * (1 - self.beta * final))

    # -- export hooks (torchcaffe.export) ----------------------------------------------------------
    def export_source(self, code):
        x = code.bottoms[0]
        scaled = x if self.beta == 1 else f"{code.number(self.beta)} * {x}"
        return code.line(f"{x} * torch.sigmoid({scaled})")


@register_layer("Clip")
class Clip(NeuronLayer):
    """``y = min(max(x, min), max)``; the gradient passes where ``min <= x <= max`` (inclusive).

    Parameters: ``clip_param { min max }`` (both required).  Shapes: (*) -> (*).
    """

    samples = _samples("clip_param { min: -0.5 max: 0.8 }") + (
        Sample("clip_param { min: -1 max: 1 }", bottoms=((6,),), values=(KINKS,), gradcheck=False,
               note="values on the bounds"),
    )

    def __init__(self, setup: LayerSetup):
        super().__init__(setup)
        p = setup.param.clip_param
        if p.min > p.max:
            raise self.fail(f"clip_param min ({p.min}) must not exceed max ({p.max})")
        self.min, self.max = p.min, p.max

    def forward(self, x):
        return torch.clamp(x, self.min, self.max)

    def caffe_inplace_backward(self, x, final, grad):
        return grad * ((final >= self.min) & (final <= self.max)).to(grad.dtype)

    # -- export hooks (torchcaffe.export) ----------------------------------------------------------
    def export_source(self, code):
        return code.line(f"{code.bottoms[0]}.clamp({code.number(self.min)}, {code.number(self.max)})")


@register_layer("Power")
class Power(NeuronLayer):
    """``y = (shift + scale * x) ^ power``.

    When ``scale * power == 0`` the top is the constant ``shift ^ power`` (1 when ``power == 0``)
    and no gradient flows, as in Caffe.

    Parameters: ``power_param { power (1) scale (1) shift (0) }``.  Shapes: (*) -> (*).
    """

    samples = (_samples("power_param { power: 2 scale: 0.5 shift: 1 }")
               + _samples("power_param { power: -0.5 scale: 1 shift: 3 }", values=("uniform", 0.5, 2.0))
               + _samples("power_param { power: 0.5 scale: 2 }", values=("uniform", 0.5, 2.0))
               + (Sample("power_param { power: 3 scale: 0 shift: 2 }", bottoms=((2, 3),),
                         note="scale 0: constant top, zero gradient"),
                  Sample("power_param { power: 1 scale: -1.5 shift: 0.5 }", bottoms=((4, 3),), inplace=True)))

    def __init__(self, setup: LayerSetup):
        super().__init__(setup)
        p = setup.param.power_param
        self.power, self.scale, self.shift = p.power, p.scale, p.shift

    def forward(self, x):
        if self.scale * self.power == 0:
            value = 1.0 if self.power == 0 else self.shift ** self.power
            return torch.full_like(x, value).detach()
        y = x * self.scale + self.shift if (self.scale != 1 or self.shift != 0) else x
        if self.power == 1:
            return y
        if self.power == 2:
            return y * y
        return torch.pow(y, self.power)

    def caffe_inplace_backward(self, x, final, grad):
        """Caffe's formulas, written in terms of bottom and top data (both ``final`` in place)."""
        diff_scale = self.power * self.scale
        if diff_scale == 0:
            return torch.zeros_like(grad)
        if self.power == 1:
            return grad * diff_scale
        if self.power == 2:
            return grad * (diff_scale * self.shift + diff_scale * self.scale * final)
        if self.shift == 0:
            return grad * self.power * final / final
        return grad * diff_scale * final / (self.shift + self.scale * final)

    # -- export hooks (torchcaffe.export) ----------------------------------------------------------
    def export_source(self, code):
        """``(shift + scale * x) ** power``, written as forward computes it."""
        x, n = code.bottoms[0], code.number
        if self.scale * self.power == 0:
            value = 1.0 if self.power == 0 else self.shift ** self.power
            return code.line(f"torch.full_like({x}, {n(value)})")
        y = x
        if self.scale != 1 or self.shift != 0:
            y = f"({x} * {n(self.scale)} + {n(self.shift)})"
        if self.power == 1:
            return code.line(y)
        return code.line(f"{y} * {y}" if self.power == 2 else f"torch.pow({y}, {n(self.power)})")


@register_layer("Exp")
class Exp(NeuronLayer):
    """``y = base ^ (shift + scale * x)``; ``base = -1`` (default) means e.

    Parameters: ``exp_param { base (-1) scale (1) shift (0) }``.  Shapes: (*) -> (*).
    """

    samples = _samples() + _samples("exp_param { base: 2 scale: 0.5 shift: 1 }")

    def __init__(self, setup: LayerSetup):
        super().__init__(setup)
        p = setup.param.exp_param
        if p.base != -1 and p.base <= 0:
            raise self.fail(f"exp_param base must be -1 (for e) or positive, got {p.base}")
        log_base = 1.0 if p.base == -1 else math.log(p.base)
        self.inner_scale = log_base * p.scale
        self.outer_scale = 1.0 if p.shift == 0 else (math.e if p.base == -1 else p.base) ** p.shift

    def forward(self, x):
        y = torch.exp(x * self.inner_scale if self.inner_scale != 1 else x)
        return y * self.outer_scale if self.outer_scale != 1 else y

    inplace_exact_when_last = True

    def caffe_inplace_backward(self, x, final, grad):
        return grad * final * self.inner_scale

    # -- export hooks (torchcaffe.export) ----------------------------------------------------------
    def export_source(self, code):
        """``base ** (shift + scale * x)`` as ``exp(x * log(base) * scale) * base ** shift``."""
        x, n = code.bottoms[0], code.number
        y = f"torch.exp({x} * {n(self.inner_scale)})" if self.inner_scale != 1 else f"torch.exp({x})"
        return code.line(f"{y} * {n(self.outer_scale)}" if self.outer_scale != 1 else y)


@register_layer("Log")
class Log(NeuronLayer):
    """``y = log_base(shift + scale * x)``; ``base = -1`` (default) means e.

    Parameters: ``log_param { base (-1) scale (1) shift (0) }``.  Shapes: (*) -> (*).
    """

    samples = (_samples(values=("uniform", 0.5, 3.0))
               + _samples("log_param { base: 2 scale: 0.5 shift: 1 }", values=("uniform", 0.1, 3.0)))

    def __init__(self, setup: LayerSetup):
        super().__init__(setup)
        p = setup.param.log_param
        if p.base != -1 and p.base <= 0:
            raise self.fail(f"log_param base must be -1 (for e) or positive, got {p.base}")
        self.base_scale = 1.0 if p.base == -1 else 1.0 / math.log(p.base)
        self.scale, self.shift = p.scale, p.shift

    def forward(self, x):
        if self.scale != 1 or self.shift != 0:
            x = x * self.scale + self.shift
        y = torch.log(x)
        return y * self.base_scale if self.base_scale != 1 else y

    def caffe_inplace_backward(self, x, final, grad):
        return grad * (self.scale * self.base_scale) / (self.shift + self.scale * final)

    # -- export hooks (torchcaffe.export) ----------------------------------------------------------
    def export_source(self, code):
        """``log_base(shift + scale * x)`` as ``log(scale * x + shift) / log(base)``."""
        x, n = code.bottoms[0], code.number
        if self.scale != 1 or self.shift != 0:
            x = f"{x} * {n(self.scale)} + {n(self.shift)}"
        y = f"torch.log({x})"
        return code.line(f"{y} * {n(self.base_scale)}" if self.base_scale != 1 else y)


@register_layer("Threshold")
class Threshold(NeuronLayer):
    """``y = 1 if x > threshold else 0``. No backward (as in Caffe).

    Parameters: ``threshold_param { threshold (0) }``.  Shapes: (*) -> (*).
    """

    differentiable = False
    samples = (Sample("threshold_param { threshold: 0.2 }", bottoms=((2, 3, 4),), gradcheck=False, inplace=True),
               Sample(bottoms=((5,),), values=(KINKS,), gradcheck=False, note="x == threshold gives 0"))

    def __init__(self, setup: LayerSetup):
        super().__init__(setup)
        self.threshold = setup.param.threshold_param.threshold

    def forward(self, x):
        return (x.detach() > self.threshold).to(x.dtype)

    # -- export hooks (torchcaffe.export) ----------------------------------------------------------
    def export_source(self, code):
        x = code.bottoms[0]
        return code.line(f"({x} > {code.number(self.threshold)}).to({x}.dtype)")


@register_layer("Dropout")
class Dropout(NeuronLayer):
    """Dropout: in TRAIN each value is kept with probability ``1 - p`` and scaled by
    ``1 / (1 - p)``; in TEST the top equals the bottom.

    With ``scale_train: false`` (Fast R-CNN's fork, rbgirshick/caffe-fast-rcnn) TRAIN keeps values
    unscaled and TEST multiplies by ``1 - p`` instead.

    Parameters: ``dropout_param { dropout_ratio (0.5) scale_train (true) }``.  Shapes: (*) -> (*).
    Differs from Caffe: the mask comes from torch's generator, not Caffe's.
    """

    samples = (Sample("dropout_param { dropout_ratio: 0.3 }", bottoms=((4, 5),), inplace=True),
               Sample("dropout_param { dropout_ratio: 0.3 }", bottoms=((2, 3, 4),), phase=TEST, inplace=True),
               Sample(bottoms=((1, 6),)),
               Sample("dropout_param { dropout_ratio: 0.4 scale_train: false }", bottoms=((3, 5),), inplace=True,
                      note="fork scale_train: false, TRAIN: unscaled mask"),
               Sample("dropout_param { dropout_ratio: 0.4 scale_train: false }", bottoms=((2, 3, 2),), phase=TEST,
                      inplace=True, note="fork scale_train: false, TEST: times 1 - p"))

    def __init__(self, setup: LayerSetup):
        super().__init__(setup)
        p = setup.param.dropout_param.dropout_ratio
        if not 0 <= p < 1:
            raise self.fail(f"dropout_ratio must be in [0, 1), got {p}")
        self.ratio = p
        self.active = self.phase == TRAIN
        self.scale_train = setup.param.dropout_param.scale_train

    def forward(self, x):
        if self.ratio == 0:
            return x
        if not self.active:
            return x if self.scale_train else x * (1.0 - self.ratio)
        kept = x * (torch.rand_like(x) >= self.ratio).to(x.dtype)
        return kept * (1.0 / (1.0 - self.ratio)) if self.scale_train else kept

    # -- export hooks (torchcaffe.export) ----------------------------------------------------------
    def export_source(self, code):
        """TEST: the identity, written as ``F.dropout(x, p, self.training)`` so that training the
        generated module drops out as Caffe's TRAIN does (Fast R-CNN's ``scale_train: false``:
        ``x * (1 - p)``, as its TEST does)."""
        x = code.bottoms[0]
        if self.ratio == 0:
            return code.line(x)
        if not self.scale_train:
            return code.line(f"{x} * {code.number(1.0 - self.ratio)}")
        return code.line(f"F.dropout({x}, {code.number(self.ratio)}, self.training)")


@register_layer("PReLU")
class PReLU(NeuronLayer):
    """Parametric ReLU: ``y = max(0, x) + a_c * min(0, x)`` with a learned slope per channel
    (axis 1), or one shared slope.

    Parameters: ``prelu_param { filler (constant 0.25) channel_shared (false) }``.
    Blobs: slope ``[C]`` (a 0-axis scalar blob when shared).  Shapes: (N, C, *) -> (N, C, *).
    """

    samples = (Sample(bottoms=((2, 3, 4, 5),), inplace=True),
               Sample("prelu_param { channel_shared: true }", bottoms=((2, 3, 4),), inplace=True),
               Sample("prelu_param { filler { type: 'uniform' min: -1 max: 1 } }", bottoms=((1, 4),)))

    def __init__(self, setup: LayerSetup):
        super().__init__(setup)
        p = setup.param.prelu_param
        shape = setup.bottom_shapes[0]
        if len(shape) < 2:
            raise self.fail(f"needs a bottom with at least 2 axes (N, C, ...), got shape {tuple(shape)}")
        filler = p.filler if p.HasField("filler") else caffe_pb2.FillerParameter(type="constant", value=0.25)
        self.add_blob("slope", () if p.channel_shared else (shape[1],), filler)  # Caffe: a 0-axis blob
        self.channel_shared = p.channel_shared

    def forward(self, x):
        slope = self.slope if self.channel_shared else self.slope.view((-1,) + (1,) * (x.dim() - 2))
        return torch.where(x > 0, x, x * slope)

    # -- export hooks (torchcaffe.export) ----------------------------------------------------------
    def export_source(self, code):
        channels = 1 if self.channel_shared else self.slope.shape[0]
        return code.module(f"nn.PReLU({channels})", weight=self.slope.reshape(channels))
