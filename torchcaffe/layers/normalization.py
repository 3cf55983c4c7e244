"""Normalization layers: BatchNorm, MVN, LRN, and the affine pair Scale and Bias.

Caffe's BatchNorm has no affine part: nets follow it with a ``Scale`` layer (``bias_term: true``).
Its three blobs are running *sums* (not averages) and the factor that turns them into averages.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from ..proto import caffe_pb2
from .base import TEST, Layer, LayerSetup, Sample, axis_index
from .registry import register_layer

#: Activation dtypes whose batch statistics torch keeps in float32.
LOW_PRECISION = (torch.float16, torch.bfloat16)

NormRegion = caffe_pb2.LRNParameter


# -- BatchNorm ---------------------------------------------------------------------------------
@register_layer("BatchNorm")
class BatchNorm(Layer):
    """Batch normalization without the affine part, with Caffe's running sums.

    With batch statistics (TRAIN, unless ``use_global_stats``), per channel ``c`` (axis 1; the
    statistics run over every other axis, ``m = count / C`` values)::

        mu = mean(x),  var = mean((x - mu)^2)            # biased variance
        y = (x - mu) / sqrt(var + eps)
        then, without gradient:  factor = maf * factor + 1
                                 mean_sum = maf * mean_sum + mu
                                 variance_sum = maf * variance_sum + var * m / (m - 1)   (m > 1)

    With the stored statistics (TEST, or ``use_global_stats: true``)::

        s = 0 if factor == 0 else 1 / factor
        y = (x - s * mean_sum) / sqrt(s * variance_sum + eps)

    The backward with batch statistics is the full batch-norm gradient through ``mu`` and ``var``
    (Caffe's ``(dy - mean(dy) - mean(dy * y) * y) / sqrt(var + eps)`` is that exact derivative);
    with stored statistics only the per-channel affine part.

    Parameters: ``batch_norm_param { use_global_stats (unset: false in TRAIN, true in TEST)
    moving_average_fraction (0.999) eps (1e-5) }``.
    Blobs (buffers, never learned): ``mean_sum [C]``, ``variance_sum [C]``, ``scale_factor [1]``.
    As Caffe's LayerSetUp does, the layer's own parameter copy gets ``param { lr_mult: 0 }`` for
    every blob the prototxt leaves unspecified; a ``param`` with a non-zero ``lr_mult`` is an error.
    Shapes: (N, C, *) -> (N, C, *).

    Example::

        layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" }
        layer { name: "sc1" type: "Scale" bottom: "conv1" top: "conv1" scale_param { bias_term: true } }

    Differs from torch: ``nn.BatchNorm2d`` keeps running *averages* with ``momentum = 1 - maf``
    weighting the *new* value and no scale factor; it also has an affine part and its own
    ``training`` flag. Caffe's sums and factor are kept as they are, so ``.caffemodel`` files
    load and save unchanged, and the mode comes from the phase and ``use_global_stats`` only.
    """

    exact_bottoms = 1
    exact_tops = 1
    samples = (
        Sample(bottoms=((2, 3, 2, 3),), inplace=True, note="TRAIN: batch statistics, 4-D"),
        Sample(bottoms=((5, 4),), note="TRAIN, 2-D (N, C)"),
        Sample(bottoms=((2, 3, 5),), note="TRAIN, 3-D"),
        Sample(bottoms=((1, 3, 2, 2),), note="batch 1"),
        Sample(bottoms=((1, 3),), note="m == 1: zero variance, no bias correction"),
        Sample("batch_norm_param { eps: 0.001 moving_average_fraction: 0.9 }", bottoms=((4, 2, 3),)),
        Sample(bottoms=((2, 3, 2, 2),), phase=TEST, inplace=True,
               note="TEST: stored statistics (all zero: factor 0 gives mean 0, variance 0)"),
        Sample("batch_norm_param { use_global_stats: true }", bottoms=((3, 2, 3),),
               note="global statistics in TRAIN"),
        Sample("batch_norm_param { use_global_stats: false }", bottoms=((3, 2, 3),), phase=TEST,
               note="batch statistics in TEST"),
        Sample("param { lr_mult: 0 } param { lr_mult: 0 decay_mult: 0 }", bottoms=((3, 2),),
               note="two specs given, the third added"),
    )

    def __init__(self, setup: LayerSetup):
        super().__init__(setup)
        p = setup.param.batch_norm_param
        shape = setup.bottom_shapes[0]
        if len(shape) < 2:
            # Caffe's LayerSetUp takes 1 channel here but its Reshape then reads shape(1) and aborts.
            raise self.fail(f"needs a bottom with at least 2 axes (N, C, ...), got shape {tuple(shape)}; "
                            f"reshape it to (N, 1) first")
        self.use_global_stats = p.use_global_stats if p.HasField("use_global_stats") else setup.phase == TEST
        self.moving_average_fraction = p.moving_average_fraction
        self.eps = p.eps
        self.channels = int(shape[1])
        self.add_blob("mean_sum", (self.channels,), None, learnable=False)
        self.add_blob("variance_sum", (self.channels,), None, learnable=False)
        self.add_blob("scale_factor", (1,), None, learnable=False)
        self._freeze_statistics(setup.param)

    def _freeze_statistics(self, param: caffe_pb2.LayerParameter) -> None:
        """Caffe's LayerSetUp: every blob's ParamSpec has ``lr_mult: 0`` (added when missing)."""
        for i in range(len(self.blob_names)):
            if i == len(param.param):
                param.param.add(lr_mult=0.0)
            elif param.param[i].lr_mult != 0:
                raise self.fail(f"param[{i}].lr_mult is {param.param[i].lr_mult}, but the batch "
                                f"statistics cannot be learned; set 'lr_mult: 0' or remove the "
                                f"'param {{}}' blocks")

    def forward(self, x):
        if x.dim() < 2 or x.shape[1] != self.channels:
            raise self.fail(f"was built for {self.channels} channels (axis 1), got a bottom of shape "
                            f"{tuple(x.shape)}")
        return self.normalize(x)

    def normalize(self, x, weight=None, bias=None):
        """This layer's forward followed by ``* weight + bias`` per channel (a Scale after it), in
        one ``F.batch_norm`` pass: torch's fused kernels forward and backward."""
        if self.use_global_stats:  # the statistics get no gradient, as in Caffe
            mean, var = self.stored_statistics(x.dtype)
            return F.batch_norm(x, mean.detach(), var.detach(), weight, bias, False, 0.0, self.eps)
        if x.numel() == self.channels:  # one value per channel, which torch's kernel refuses:
            self._accumulate(x.detach().reshape(-1), torch.zeros_like(x).reshape(-1))
            y = x - x  # x - mean is 0, and so is its gradient
            if weight is None:
                return y
            shape = (1, -1) + (1,) * (x.dim() - 2)
            return y * weight.view(shape) + (0 if bias is None else bias.view(shape))
        # With momentum 1 torch's "running" statistics are this batch's mean and unbiased
        # variance (sum / (m - 1)): what Caffe adds to its sums, with no extra pass over x.
        mean = torch.zeros(self.channels, dtype=torch.float32 if x.dtype in LOW_PRECISION else x.dtype,
                           device=x.device)
        var = torch.zeros_like(mean)
        y = F.batch_norm(x, mean, var, weight, bias, True, 1.0, self.eps)
        self._accumulate(mean, var)
        return y

    def _accumulate(self, mean: torch.Tensor, unbiased_var: torch.Tensor) -> None:
        """Caffe's moving sums: decay by ``maf``, add this batch's mean and unbiased variance
        (Caffe multiplies the biased one by ``m / (m - 1)``; for ``m = 1`` it adds 0)."""
        maf = self.moving_average_fraction
        with torch.no_grad():
            self.scale_factor.mul_(maf).add_(1)
            self.mean_sum.mul_(maf).add_(mean.to(self.mean_sum.dtype))
            self.variance_sum.mul_(maf).add_(unbiased_var.to(self.variance_sum.dtype))

    # -- export hooks (torchcaffe.export) ----------------------------------------------------------
    def stored_statistics(self, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """The mean and variance TEST uses: the running sums divided by the scale factor (0 if 0)."""
        factor = self.scale_factor.to(dtype)
        inverse = torch.where(factor == 0, torch.zeros_like(factor), 1 / factor)
        return self.mean_sum.to(dtype) * inverse, self.variance_sum.to(dtype) * inverse

    def export_onnx(self, x):
        """One BatchNormalization node, the scale factor folded into its mean and variance (constant
        folding turns them into plain initializers). With batch statistics the ops are traced, the
        running sums left alone."""
        if not self.use_global_stats:
            dims = [0, *range(2, x.dim())]
            shape = (1, -1) + (1,) * (x.dim() - 2)
            mean = x.mean(dim=dims)
            var = (x - mean.view(shape)).square().mean(dim=dims)
            return (x - mean.view(shape)) / torch.sqrt(var + self.eps).view(shape)
        from ..export.onnx_ops import untraced
        mean, var = untraced(lambda: self.stored_statistics(x.dtype))  # constants in the graph
        return F.batch_norm(x, mean, var, None, None, False, 0.0, self.eps)

    def export_source(self, code):
        """The ``BatchNorm`` helper module holding the folded statistics (Caffe's formula exactly)."""
        if not self.use_global_stats:
            return code.line(f"F.batch_norm({code.bottoms[0]}, None, None, training=True, eps={code.number(self.eps)})")
        mean, var = self.stored_statistics()
        return code.module(f"{code.helper('BatchNorm')}({self.channels}, eps={code.number(self.eps)})",
                           mean=mean, var=var)


class BatchNormScale(nn.Module):
    """A BatchNorm and the per-channel Scale that alone reads its top, as one ``F.batch_norm``
    pass with the Scale's blobs as its weight and bias: what a net runs in their place where the
    BatchNorm's own top is not seen (the torch call; a solver's iteration when that top is an
    in-place step, see ``net.py``). ``y = (x - mean) / sqrt(var + eps) * s + b``; torch multiplies
    by ``1 / sqrt(var + eps)``, so results differ from the two layers by float rounding (about
    1e-7 relative). With batch statistics the running sums are updated as the BatchNorm alone
    updates them. The gradients reach ``x`` and the Scale's blobs; stored statistics get none."""

    def __init__(self, batch_norm: "BatchNorm", scale: "Scale"):
        super().__init__()
        self.parts = (batch_norm, scale)  # a tuple: not submodules of this one (no second copy of the blobs)

    @staticmethod
    def fuses(batch_norm, scale, bottom_dims: int) -> bool:
        """Whether ``scale`` (reading only ``batch_norm``'s top, of ``bottom_dims`` axes) can be fused."""
        return (isinstance(batch_norm, BatchNorm) and isinstance(scale, Scale)
                and bottom_dims >= 2 and scale.axis % bottom_dims == 1 and scale.scale.dim() == 1
                and (not scale.bias_term or scale.bias.dim() == 1))

    def forward(self, x):
        batch_norm, scale = self.parts
        return batch_norm.normalize(x, scale.scale, scale.bias if scale.bias_term else None)


# -- MVN ---------------------------------------------------------------------------------------
class _MeanVarianceNorm(torch.autograd.Function):
    """``y = (x - mean) / (std + eps)`` with Caffe's backward.

    Caffe back-propagates ``(dy - mean(dy) - mean(dy * y) * y) / (std + eps)``. Because ``eps`` is
    added *after* the square root, the exact derivative has ``y * (std + eps) / std`` in the last
    term; Caffe's formula drops that factor (a relative difference of ``eps / std``: invisible at
    the default 1e-9, 0.1% of the term at ``eps: 0.001``), and it stays finite for constant inputs
    (``std = 0``) where the exact derivative does not exist. We reproduce Caffe's formula.
    """

    @staticmethod
    def forward(ctx, x, dims: tuple[int, ...], eps: float):
        centred = x - x.mean(dim=dims, keepdim=True)
        denominator = centred.square().mean(dim=dims, keepdim=True).sqrt() + eps
        y = centred / denominator
        ctx.save_for_backward(y, denominator)
        ctx.dims = dims
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        y, denominator = ctx.saved_tensors
        dims = ctx.dims
        dx = dy - dy.mean(dim=dims, keepdim=True) - (dy * y).mean(dim=dims, keepdim=True) * y
        return dx / denominator, None, None


@register_layer("MVN")
class MVN(Layer):
    """Mean-variance normalization per (sample, channel), or per sample across channels.

    ``y = (x - mean(x)) / (std(x) + eps)`` with ``std = sqrt(mean((x - mean(x))^2))`` (biased),
    the statistics taken over (H, W) for each (n, c), or over (C, H, W) for each n when
    ``across_channels``. Without ``normalize_variance`` only the mean is subtracted.

    Parameters: ``mvn_param { normalize_variance (true) across_channels (false) eps (1e-9) }``.
    Shapes: Caffe reads the bottom through its legacy 4-D accessors: at most 4 axes, missing
    trailing axes count as 1, and the top is always 4-D: (N, C, H, W) -> (N, C, H, W),
    (N, C) -> (N, C, 1, 1).

    Example: ``layer { name: "mvn" type: "MVN" bottom: "data" top: "mvn" mvn_param { eps: 1e-6 } }``

    Differs from torch: ``F.instance_norm`` / ``F.layer_norm`` add eps to the variance inside the
    square root; Caffe adds it to the standard deviation. The backward is Caffe's formula (see
    ``_MeanVarianceNorm``), which differs from the exact derivative by a relative ``eps / std``.
    """

    exact_bottoms = 1
    exact_tops = 1
    samples = (
        Sample(bottoms=((2, 3, 4, 5),), inplace=True),
        Sample("mvn_param { across_channels: true }", bottoms=((2, 3, 2, 3),), inplace=True),
        Sample("mvn_param { normalize_variance: false }", bottoms=((2, 3, 3, 2),), inplace=True),
        Sample("mvn_param { normalize_variance: false across_channels: true }", bottoms=((3, 2, 2, 2),)),
        Sample(bottoms=((1, 2, 3, 3),), note="batch 1"),
        Sample(bottoms=((2, 3, 5),), note="3-D: the top is (N, C, H, 1)"),
        Sample("mvn_param { across_channels: true }", bottoms=((3, 5),), note="2-D: the top is (N, C, 1, 1)"),
        Sample("mvn_param { eps: 0.001 }", bottoms=((2, 2, 3, 3),), gradcheck=False,
               note="large eps: Caffe's backward is not the exact derivative"),
        Sample(bottoms=((2, 2, 2, 2),), values=(("const", 1.5),), gradcheck=False,
               note="constant input: zero variance, y = 0"),
    )

    def __init__(self, setup: LayerSetup):
        super().__init__(setup)
        p = setup.param.mvn_param
        self.normalize_variance = p.normalize_variance
        self.across_channels = p.across_channels
        self.eps = p.eps
        self._legacy_shape(setup.bottom_shapes[0])

    def _legacy_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        if len(shape) > 4:
            raise self.fail(f"reads its bottom as (num, channels, height, width), so it takes at most 4 "
                            f"axes; got shape {tuple(shape)}. Reshape the bottom first")
        return tuple(shape) + (1,) * (4 - len(shape))

    def forward(self, x):
        x = x.reshape(self._legacy_shape(x.shape))
        dims = (1, 2, 3) if self.across_channels else (2, 3)
        if self.normalize_variance:
            return _MeanVarianceNorm.apply(x, dims, self.eps)
        return x - x.mean(dim=dims, keepdim=True)


# -- LRN ---------------------------------------------------------------------------------------
@register_layer("LRN")
class LRN(Layer):
    """Local response normalization across channels or within each channel.

    ACROSS_CHANNELS (n = ``local_size``, the window centred on channel c, zero padded)::

        y = x * (k + alpha / n * sum_{c' in window(c)} x_{c'}^2) ^ -beta

    WITHIN_CHANNEL: ``avg`` is x^2 average-pooled over an n x n window (stride 1, pad (n-1)/2,
    the divisor always n^2: padding counts), then ``y = x * (1 + alpha * avg) ^ -beta``; ``k`` is
    not used.

    Parameters: ``lrn_param { local_size (5, odd) alpha (1) beta (0.75)
    norm_region (ACROSS_CHANNELS) k (1) engine }``.
    Shapes: (N, C, H, W) -> (N, C, H, W) (Caffe requires exactly 4 axes).

    Example::

        layer { name: "norm1" type: "LRN" bottom: "pool1" top: "norm1"
                lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 } }

    Differs from torch: ``F.local_response_norm`` computes the same ACROSS_CHANNELS formula
    (``x / (k + alpha * avg)^beta``) but only across channels; we write both regions directly in
    Caffe's form, which also keeps torch's 3-D/5-D behaviour out of a layer Caffe restricts to 4-D.
    """

    exact_bottoms = 1
    exact_tops = 1
    samples = (
        Sample(bottoms=((2, 7, 2, 2),), inplace=True, note="defaults: local_size 5"),
        Sample("lrn_param { local_size: 3 alpha: 0.5 beta: 0.6 k: 2 }", bottoms=((1, 4, 3, 3),)),
        Sample("lrn_param { local_size: 7 alpha: 0.3 }", bottoms=((2, 3, 2, 3),), note="window wider than C"),
        Sample("lrn_param { local_size: 1 alpha: 0.4 beta: 1.5 }", bottoms=((2, 3, 1, 2),)),
        Sample("lrn_param { local_size: 3 alpha: 0.3 norm_region: WITHIN_CHANNEL }", bottoms=((2, 2, 4, 4),),
               inplace=True),
        Sample("lrn_param { local_size: 5 alpha: 0.2 beta: 0.5 k: 3 norm_region: WITHIN_CHANNEL }",
               bottoms=((1, 2, 5, 3),), note="k ignored; window wider than W"),
        Sample("lrn_param { local_size: 1 alpha: 0.5 norm_region: WITHIN_CHANNEL }", bottoms=((2, 1, 3, 3),)),
    )

    def __init__(self, setup: LayerSetup):
        super().__init__(setup)
        p = setup.param.lrn_param
        if p.local_size % 2 != 1:
            raise self.fail(f"lrn_param local_size must be odd (the window is centred), got {p.local_size}")
        self.size = p.local_size
        self.pad = (p.local_size - 1) // 2
        self.alpha, self.beta, self.k = p.alpha, p.beta, p.k
        self.within_channel = p.norm_region == NormRegion.WITHIN_CHANNEL
        self._check_axes(setup.bottom_shapes[0])

    def _check_axes(self, shape) -> None:
        if len(shape) != 4:
            raise self.fail(f"needs a 4-D bottom (num, channels, height, width), got shape {tuple(shape)}")

    def forward(self, x):
        self._check_axes(x.shape)
        average, offset = self._window_average(x * x)
        if torch.is_grad_enabled() and x.requires_grad:
            return x * (average * self.alpha + offset).pow(-self.beta)
        # nothing to save for backward: one temporary (the average) becomes the result
        return average.mul_(self.alpha).add_(offset).pow_(-self.beta).mul_(x)

    def _window_average(self, squares):
        """The mean of x^2 over the window (zero padding counted, as Caffe's divisor is always n or
        n^2) and the constant added to ``alpha`` times it. Across channels the window runs along a
        unit depth axis of a 3-D average pool (along the rows of a 1-D one for channels_last input),
        which pads without copying the squares (unless the window is wider than the channels)."""
        if self.within_channel:
            return F.avg_pool2d(squares, self.size, stride=1, padding=self.pad), 1.0
        n, c, h, w = squares.shape
        pad = self.pad
        if c < self.size:  # torch's pools want the window to fit the unpadded input
            squares, pad = F.pad(squares, (0, 0, 0, 0, pad, pad)), 0
        if squares.is_contiguous() or not squares.is_contiguous(memory_format=torch.channels_last):
            window = F.avg_pool3d(squares.unsqueeze(1), (self.size, 1, 1), stride=1, padding=(pad, 0, 0))
            return window.squeeze(1), self.k
        # channels_last (the optimized mode's layout): the channels are the innermost axis
        rows = squares.permute(0, 2, 3, 1).reshape(n * h * w, 1, -1)
        window = F.avg_pool1d(rows, self.size, stride=1, padding=pad)
        return window.reshape(n, h, w, c).permute(0, 3, 1, 2), self.k

    # -- export hooks (torchcaffe.export) ----------------------------------------------------------
    def export_onnx(self, x):
        """ACROSS_CHANNELS is ONNX's LRN exactly (odd ``local_size``: a centred window, the sum scaled
        by ``alpha / size``); WITHIN_CHANNEL traces to AveragePool as it is."""
        if self.within_channel:
            return self.forward(x)
        from ..export.onnx_ops import as_onnx_node
        return as_onnx_node("LRN", lambda: self.forward(x), x, size_i=self.size, alpha_f=self.alpha,
                            beta_f=self.beta, bias_f=self.k)

    def export_source(self, code):
        """ACROSS_CHANNELS: torch's ``F.local_response_norm`` (the same formula); WITHIN_CHANNEL: the
        ``caffe_lrn_within_channel`` helper."""
        x, n = code.bottoms[0], code.number
        if self.within_channel:
            helper = code.helper("caffe_lrn_within_channel")
            return code.line(f"{helper}({x}, {self.size}, alpha={n(self.alpha)}, beta={n(self.beta)})")
        return code.line(f"F.local_response_norm({x}, {self.size}, alpha={n(self.alpha)}, beta={n(self.beta)}, "
                         f"k={n(self.k)})")


# -- Scale and Bias ----------------------------------------------------------------------------
def _learned_shape(layer: Layer, shape: Sequence[int], axis: int, num_axes: int, what: str) -> tuple[int, ...]:
    """The shape of a learned scale/bias blob: ``shape[axis : axis + num_axes]`` (-1: to the end)."""
    start = axis_index(layer, axis, len(shape), f"{what}_param axis")
    if num_axes < -1:
        raise layer.fail(f"{what}_param num_axes must be >= 0, or -1 for every axis from 'axis' on; "
                         f"got {num_axes}")
    if num_axes >= 0 and start + num_axes > len(shape):
        raise layer.fail(f"{what}_param axis {axis} with num_axes {num_axes} reaches past the "
                         f"{len(shape)}-D bottom of shape {tuple(shape)}; lower num_axes or axis")
    end = len(shape) if num_axes == -1 else start + num_axes
    return tuple(int(d) for d in shape[start:end])


def _aligned_shape(layer: Layer, operand: Sequence[int], bottom: Sequence[int], axis: int, what: str) -> tuple[int, ...]:
    """The shape that lines ``operand`` up with ``bottom``'s axes from ``axis`` (trailing 1s; a
    0-axis operand is a scalar and ignores ``axis``), after Caffe's Reshape checks."""
    operand, bottom = tuple(operand), tuple(bottom)
    if not operand:
        return ()
    start = axis_index(layer, axis, len(bottom), f"{what}_param axis")
    if bottom[start:start + len(operand)] != operand:
        raise layer.fail(f"the {what} of shape {operand} must match the bottom's axes from {start} on, "
                         f"but the bottom has shape {bottom}")
    return operand + (1,) * (len(bottom) - start - len(operand))


def _broadcastable(layer: Layer, operand: torch.Tensor, x: torch.Tensor, axis: int, what: str) -> torch.Tensor:
    """``operand`` reshaped to broadcast against ``x`` from ``axis`` on."""
    return operand.reshape(_aligned_shape(layer, operand.shape, x.shape, axis, what))


class _Affine(Layer):
    """One or two bottoms (the second replaces the learned blob), one top; in place allowed."""

    min_bottoms = 1
    max_bottoms = 2
    exact_tops = 1

    def _add_operand(self, setup: LayerSetup, name: str, num_axes: int, filler) -> bool:
        """Set up the operand ``name`` (``scale`` or ``bias``); returns whether it is bottom 1.

        As in Caffe's Scale and Bias layers, bottom 1 (when given) must equal bottom 0's axes from
        ``self.axis`` on; otherwise the operand is a learned blob of shape
        ``x.shape[axis : axis + num_axes]`` filled by ``filler``.
        """
        shape = setup.bottom_shapes[0]
        if len(setup.bottom_shapes) == 2:
            _aligned_shape(self, setup.bottom_shapes[1], shape, self.axis, name)
            return True
        self.add_blob(name, _learned_shape(self, shape, self.axis, num_axes, name), filler)
        return False

    def _operand(self, name: str, x: torch.Tensor, bottoms: tuple) -> torch.Tensor:
        """Bottom 1 when given, else the learned blob ``name``, shaped to broadcast against ``x``."""
        return _broadcastable(self, bottoms[0] if bottoms else getattr(self, name), x, self.axis, name)


@register_layer("Scale")
class Scale(_Affine):
    """Multiplies by a scale broadcast along the axes it spans, optionally adds a bias.

    ``y = x * s (+ b)``, where ``s`` spans ``x``'s axes ``axis .. axis + s.dim() - 1`` and is
    broadcast over the others. ``s`` is bottom 1 when given (its shape must equal those axes of
    bottom 0; it receives a gradient), otherwise a learned blob of shape
    ``x.shape[axis : axis + num_axes]`` (``num_axes: -1`` = every axis from ``axis``,
    ``0`` = a scalar). With ``bias_term`` a learned bias of the same span is added, as Caffe's
    internal Bias layer does (with bottom 1, the bias spans ``bottom[1].dim()`` axes).

    Parameters: ``scale_param { axis (1) num_axes (1) filler (constant 1) bias_term (false)
    bias_filler (constant 0) }``.
    Blobs: ``scale`` (learned case only), then ``bias`` (with ``bias_term``): Caffe appends its
    internal Bias layer's blob to the Scale layer's blobs.
    Shapes: x (*), [s] -> (*) like x.

    Example: ``layer { name: "sc1" type: "Scale" bottom: "bn1" top: "bn1" scale_param { bias_term: true } }``

    Differs from torch: nothing beyond broadcasting rules — Caffe lines the scale up from ``axis``
    (leading axes broadcast), where torch broadcasting lines shapes up from the last axis.
    """

    samples = (
        Sample("scale_param { filler { type: 'uniform' min: -1 max: 1 } }", bottoms=((2, 3, 4),), inplace=True),
        Sample("scale_param { bias_term: true filler { type: 'uniform' min: 0.5 max: 2 } "
               "bias_filler { type: 'uniform' min: -1 max: 1 } }", bottoms=((2, 3, 2, 2),), inplace=True),
        Sample("scale_param { num_axes: 0 bias_term: true filler { type: 'constant' value: 1.5 } }",
               bottoms=((2, 3, 2),), note="scalar scale and bias (0-axis blobs)"),
        Sample("scale_param { axis: 2 num_axes: 2 filler { type: 'gaussian' } }", bottoms=((2, 3, 2, 3),)),
        Sample("scale_param { axis: 0 num_axes: -1 filler { type: 'gaussian' } }", bottoms=((2, 3),),
               note="element-wise"),
        Sample("scale_param { axis: -1 filler { type: 'gaussian' } }", bottoms=((1, 3, 4),), note="negative axis"),
        Sample(bottoms=((2, 3, 4), (3,)), inplace=True, note="scale from bottom 1"),
        Sample("scale_param { axis: 0 }", bottoms=((2, 3, 2), (2, 3))),
        Sample("scale_param { bias_term: true bias_filler { type: 'gaussian' } }", bottoms=((2, 3, 2), (3, 2)),
               note="bottom-1 scale plus learned bias spanning bottom 1's axes"),
        Sample(bottoms=((2, 3), ()), note="0-axis scale bottom"),
    )

    def __init__(self, setup: LayerSetup):
        super().__init__(setup)
        p = setup.param.scale_param
        self.axis = p.axis
        filler = p.filler if p.HasField("filler") else caffe_pb2.FillerParameter(type="constant", value=1)
        two_bottoms = self._add_operand(setup, "scale", p.num_axes, filler)
        self.bias_term = p.bias_term
        if p.bias_term:
            bias_axes = len(setup.bottom_shapes[1]) if two_bottoms else p.num_axes
            bias_shape = _learned_shape(self, setup.bottom_shapes[0], p.axis, bias_axes, "scale")
            self.add_blob("bias", bias_shape, p.bias_filler)

    def forward(self, x, *scale_bottom):
        scale = self._operand("scale", x, scale_bottom)
        if self.bias_term:  # one fused pass
            return torch.addcmul(_broadcastable(self, self.bias, x, self.axis, "scale"), x, scale)
        return x * scale

    # -- export hooks (torchcaffe.export) ----------------------------------------------------------
    def export_source(self, code):
        """A learned scale: the ``Scale`` helper module, its parameters shaped to broadcast
        (``(C, 1, 1)`` for NCHW); a scale from bottom 1: ``x * s[..., None, None]``."""
        x_shape = code.bottom_shapes[0]
        if len(code.bottoms) == 2:
            x, s = code.bottoms
            trailing = len(_aligned_shape(self, code.bottom_shapes[1], x_shape, self.axis, "scale")) - len(code.bottom_shapes[1])
            product = f"{x} * {s}" + (f"[..., {', '.join(['None'] * trailing)}]" if trailing else "")
            if not self.bias_term:
                return code.line(product)
            shape = _aligned_shape(self, self.bias.shape, x_shape, self.axis, "scale")
            return code.module(f"{code.helper('Bias')}({shape})", f"{code.attribute}({product})",
                               bias=self.bias.reshape(shape))
        shape = _aligned_shape(self, self.scale.shape, x_shape, self.axis, "scale")
        state = {"weight": self.scale.reshape(shape)}
        if self.bias_term:
            state["bias"] = self.bias.reshape(shape)
        bias = ", bias=True" if self.bias_term else ""
        return code.module(f"{code.helper('Scale')}({shape}{bias})", **state)


@register_layer("Bias")
class Bias(_Affine):
    """Adds a bias broadcast along the axes it spans.

    ``y = x + b``, where ``b`` spans ``x``'s axes ``axis .. axis + b.dim() - 1``. ``b`` is bottom 1
    when given (its shape must equal those axes of bottom 0; it receives a gradient), otherwise a
    learned blob of shape ``x.shape[axis : axis + num_axes]`` (``-1`` = every axis from ``axis``,
    ``0`` = a scalar).

    Parameters: ``bias_param { axis (1) num_axes (1) filler (constant 0) }``.
    Blobs: ``bias`` (learned case only).  Shapes: x (*), [b] -> (*) like x.

    Example: ``layer { name: "b1" type: "Bias" bottom: "x" top: "x" }``

    Differs from torch: Caffe lines the bias up from ``axis`` (leading axes broadcast), where torch
    broadcasting lines shapes up from the last axis.
    """

    samples = (
        Sample("bias_param { filler { type: 'gaussian' } }", bottoms=((2, 3, 4),), inplace=True),
        Sample(bottoms=((1, 3),), note="default filler (constant 0), batch 1"),
        Sample("bias_param { num_axes: 0 filler { type: 'constant' value: 0.5 } }", bottoms=((2, 3, 2),),
               note="scalar"),
        Sample("bias_param { axis: 2 num_axes: -1 filler { type: 'gaussian' } }", bottoms=((2, 3, 2, 3),)),
        Sample("bias_param { axis: -2 num_axes: 2 filler { type: 'gaussian' } }", bottoms=((2, 3, 2),)),
        Sample(bottoms=((2, 3, 2, 2), (3, 2)), inplace=True, note="bias from bottom 1"),
        Sample("bias_param { axis: 0 }", bottoms=((2, 3), (2,))),
        Sample(bottoms=((2, 3), ()), note="0-axis bias bottom"),
    )

    def __init__(self, setup: LayerSetup):
        super().__init__(setup)
        p = setup.param.bias_param
        self.axis = p.axis
        self._add_operand(setup, "bias", p.num_axes, p.filler)

    def forward(self, x, *bias_bottom):
        return x + self._operand("bias", x, bias_bottom)

    # -- export hooks (torchcaffe.export) ----------------------------------------------------------
    def export_source(self, code):
        x_shape = code.bottom_shapes[0]
        if len(code.bottoms) == 2:
            x, b = code.bottoms
            trailing = len(_aligned_shape(self, code.bottom_shapes[1], x_shape, self.axis, "bias")) - len(code.bottom_shapes[1])
            return code.line(f"{x} + {b}" + (f"[..., {', '.join(['None'] * trailing)}]" if trailing else ""))
        shape = _aligned_shape(self, self.bias.shape, x_shape, self.axis, "bias")
        return code.module(f"{code.helper('Bias')}({shape})", bias=self.bias.reshape(shape))
