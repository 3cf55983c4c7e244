"""Utility layers that compute: InnerProduct, Embed, Softmax, Eltwise, Reduction, ArgMax,
Accuracy and Parameter (Caffe's "common" layers that are not neurons, losses or pure reshapes).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..proto import caffe_pb2
from .base import TEST, Layer, LayerSetup, Sample, axis_index
from .registry import register_layer

Eltwise_ = caffe_pb2.EltwiseParameter
Reduction_ = caffe_pb2.ReductionParameter


def _count(shape, start: int = 0, end: int | None = None) -> int:
    """Caffe's ``Blob::count(start, end)``: the product of the dims in [start, end)."""
    return math.prod(int(d) for d in tuple(shape)[start:end])


def _check_indices(layer: Layer, values: torch.Tensor, high: int, what: str, fix: str) -> None:
    """Integer-valued entries in [0, high): Caffe's (debug-build) CHECKs, made always-on."""
    if values.is_meta or values.numel() == 0:
        return
    bad = (values < 0) | (values >= high) | (values != torch.trunc(values))
    if bool(bad.any()):
        first = values[bad].flatten()[0].item()
        raise layer.fail(f"{what} must be integers in [0, {high}); got {first!r}. {fix}")


@register_layer("InnerProduct")
class InnerProduct(Layer):
    """Fully connected layer: ``y = x W^T + b`` over the axes from ``axis`` on, flattened.

    With ``K = prod(shape[axis:])`` and ``N = num_output``, every one of the
    ``M = prod(shape[:axis])`` rows of the flattened bottom gives ``y = W x + b``.

    Parameters: ``inner_product_param { num_output (required) bias_term (true) weight_filler
    (constant 0) bias_filler (constant 0) axis (1) transpose (false) }``.
    Blobs: weight ``(N, K)`` (``(K, N)`` with ``transpose``), bias ``(N,)``.
    Shapes: ``(d0, ..., d_{axis-1}, *) -> (d0, ..., d_{axis-1}, N)``.

    Example: ``layer { name: "fc6" type: "InnerProduct" bottom: "pool5" top: "fc6"
    inner_product_param { num_output: 4096 weight_filler { type: "gaussian" std: 0.005 } } }``

    Differs from torch: ``nn.Linear`` only acts on the last axis and fills with Kaiming uniform;
    Caffe flattens every axis from ``axis`` and its fillers default to constant 0. Old models may
    store the weight as 4-D ``(1, 1, N, K)``: the net's loader accepts that legacy shape.
    """

    exact_bottoms = 1
    exact_tops = 1
    samples = (
        Sample("inner_product_param { num_output: 3 weight_filler { type: 'gaussian' std: 0.5 } "
               "bias_filler { type: 'uniform' min: -1 max: 1 } }", bottoms=((2, 3, 2, 2),)),
        Sample("inner_product_param { num_output: 5 bias_term: false weight_filler { type: 'xavier' } }",
               bottoms=((1, 7),), note="batch 1, no bias"),
        Sample("inner_product_param { num_output: 2 axis: 2 weight_filler { type: 'gaussian' } "
               "bias_filler { type: 'gaussian' } }", bottoms=((2, 3, 4, 1),), note="axis 2"),
        Sample("inner_product_param { num_output: 4 transpose: true weight_filler { type: 'gaussian' } "
               "bias_filler { type: 'gaussian' } }", bottoms=((3, 5),), note="transposed weight"),
        Sample("inner_product_param { num_output: 3 axis: -1 weight_filler { type: 'gaussian' } }",
               bottoms=((2, 3, 4),), note="negative axis"),
        Sample("inner_product_param { num_output: 2 axis: 0 weight_filler { type: 'gaussian' } }",
               bottoms=((3, 2),), note="axis 0: one row, top (N,)"),
    )

    def __init__(self, setup: LayerSetup):
        super().__init__(setup)
        p = setup.param.inner_product_param
        if p.num_output == 0:
            raise self.fail("inner_product_param num_output must be set to a positive number "
                            f"(got {p.num_output})")
        shape = setup.bottom_shapes[0]
        self.axis_param = p.axis
        axis = axis_index(self, p.axis, len(shape), "inner_product_param axis")
        self.num_output, self.transpose = p.num_output, p.transpose
        self.K = _count(shape, axis)
        weight_shape = (self.K, self.num_output) if p.transpose else (self.num_output, self.K)
        self.add_blob("weight", weight_shape, p.weight_filler)
        self.bias_term = p.bias_term
        if p.bias_term:
            self.add_blob("bias", (self.num_output,), p.bias_filler)

    def forward(self, x):
        axis = axis_index(self, self.axis_param, x.dim(), "inner_product_param axis")
        k = _count(x.shape, axis)
        if k != self.K:
            raise self.fail(f"input size incompatible with the weights: the axes from {axis} of a "
                            f"bottom of shape {tuple(x.shape)} hold {k} values per row, but the "
                            f"layer was built for K = {self.K}")
        x = x.reshape(tuple(x.shape[:axis]) + (k,))
        weight = self.weight.t() if self.transpose else self.weight
        return F.linear(x, weight, self.bias if self.bias_term else None)

    # -- export hooks (torchcaffe.export) ----------------------------------------------------------
    def export_source(self, code):
        """``nn.Linear(K, N)`` on the bottom flattened from ``axis``."""
        x, shape = code.bottoms[0], code.bottom_shapes[0]
        axis = axis_index(self, self.axis_param, len(shape), "inner_product_param axis")
        if axis != len(shape) - 1:
            x = f"{x}.flatten({axis})"
        weight = self.weight.t() if self.transpose else self.weight
        state = {"weight": weight, **({"bias": self.bias} if self.bias_term else {})}
        bias = "" if self.bias_term else ", bias=False"
        return code.module(f"nn.Linear({self.K}, {self.num_output}{bias})", f"{code.attribute}({x})", **state)


@register_layer("Embed")
class Embed(Layer):
    """A learned lookup table: ``y[..., :] = W[x[...], :] + b``.

    The bottom holds indices (stored as floats) that must be integers in ``[0, input_dim)``.

    Parameters: ``embed_param { num_output (required) input_dim (required) bias_term (true)
    weight_filler (constant 0) bias_filler (constant 0) }``.
    Blobs: weight ``(input_dim, num_output)``, bias ``(num_output,)``.
    Shapes: ``(*) -> (*, num_output)``.

    Example: ``layer { name: "embed" type: "Embed" bottom: "words" top: "vectors"
    embed_param { num_output: 50 input_dim: 10000 weight_filler { type: "uniform" min: -0.1 max: 0.1 } } }``

    Differs from torch: ``nn.Embedding`` has no bias and takes integer tensors. Caffe cannot
    back-propagate into the indices (it aborts when asked): no gradient reaches the bottom, and
    ``force_backward`` does not ask for one. Out-of-range or fractional indices raise here
    (Caffe checks them only in debug builds).
    """

    exact_bottoms = 1
    exact_tops = 1
    samples = (
        Sample("embed_param { num_output: 3 input_dim: 5 weight_filler { type: 'gaussian' } "
               "bias_filler { type: 'gaussian' } }", bottoms=((4, 2),), values=(("int", 0, 5),)),
        Sample("embed_param { num_output: 4 input_dim: 3 bias_term: false weight_filler { type: 'gaussian' } }",
               bottoms=((1,),), values=(("int", 0, 3),), note="batch 1, no bias"),
        Sample("embed_param { num_output: 2 input_dim: 4 weight_filler { type: 'uniform' min: -1 max: 1 } }",
               bottoms=((2, 3, 2),), values=(("choice_int", 0, 3, 3),), note="repeated indices accumulate"),
    )

    def __init__(self, setup: LayerSetup):
        super().__init__(setup)
        p = setup.param.embed_param
        if p.num_output == 0:
            raise self.fail(f"embed_param num_output must be positive, got {p.num_output}")
        if p.input_dim == 0:
            raise self.fail(f"embed_param input_dim (the vocabulary size) must be positive, got {p.input_dim}")
        self.input_dim, self.bias_term = p.input_dim, p.bias_term
        self.add_blob("weight", (p.input_dim, p.num_output), p.weight_filler)
        if p.bias_term:
            self.add_blob("bias", (p.num_output,), p.bias_filler)

    def allow_force_backward(self, bottom_index: int) -> bool:
        return False  # the indices: Caffe refuses to back-propagate into them

    def forward(self, x):
        x = x.detach()
        _check_indices(self, x, self.input_dim, "embed indices (bottom 0)",
                       "Check the bottom's values against embed_param input_dim.")
        y = F.embedding(x.long(), self.weight)
        return y + self.bias if self.bias_term else y


@register_layer("Softmax")
class Softmax(Layer):
    """``y_i = exp(x_i - max_j x_j) / sum_j exp(x_j - max_j x_j)`` along ``axis``.

    Parameters: ``softmax_param { axis (1) engine (DEFAULT; accepted, ignored) }``.
    Shapes: (*) -> (*).

    Example: ``layer { name: "prob" type: "Softmax" bottom: "fc8" top: "prob" }``
    """

    exact_bottoms = 1
    exact_tops = 1
    samples = (
        Sample(bottoms=((2, 4, 3),), inplace=True),
        Sample("softmax_param { axis: 2 }", bottoms=((2, 3, 5),), note="axis 2"),
        Sample("softmax_param { axis: -1 engine: CAFFE }", bottoms=((1, 6),), note="batch 1, axis -1"),
        Sample(bottoms=((3, 4),), values=(("uniform", 80.0, 90.0),), note="large values: stable"),
    )

    def __init__(self, setup: LayerSetup):
        super().__init__(setup)
        self.axis = setup.param.softmax_param.axis
        axis_index(self, self.axis, len(setup.bottom_shapes[0]), "softmax_param axis")

    def forward(self, x):
        return F.softmax(x, dim=axis_index(self, self.axis, x.dim(), "softmax_param axis"))

    # -- export hooks (torchcaffe.export) ----------------------------------------------------------
    def export_source(self, code):
        axis = axis_index(self, self.axis, len(code.bottom_shapes[0]), "softmax_param axis")
        return code.line(f"F.softmax({code.bottoms[0]}, dim={axis})")


@register_layer("Eltwise")
class Eltwise(Layer):
    """Element-wise PROD, SUM (``y = sum_i coeff_i x_i``) or MAX of two or more same-shape bottoms.

    MAX picks, per element, bottom 1 unless bottom 0 is strictly greater, then each later bottom
    only where it is strictly greater than the running maximum; the gradient goes to the winner
    alone. PROD's gradient is the product of the other bottoms.

    Parameters: ``eltwise_param { operation (SUM) coeff (one per bottom, SUM only; default 1)
    stable_prod_grad (true) }``.
    Shapes: (*), (*), ... -> (*).

    Example: ``layer { name: "res2a" type: "Eltwise" bottom: "res2a_branch1" bottom: "res2a_branch2c"
    top: "res2a" }``

    Differs from torch: ``torch.maximum`` splits the gradient between tied inputs; Caffe routes it
    to one winner (ties between bottoms 0 and 1 go to 1, later ties to the earlier bottom).
    ``stable_prod_grad: false`` in Caffe divides the top by the bottom (NaN when a bottom is 0);
    we always give the exact product of the others, which is what both formulas mean.
    """

    min_bottoms = 2
    exact_tops = 1
    samples = (
        Sample(bottoms=((2, 3, 4), (2, 3, 4)), note="SUM"),
        Sample("eltwise_param { operation: SUM coeff: 0.5 coeff: -2 coeff: 1.5 }",
               bottoms=((1, 5), (1, 5), (1, 5)), note="SUM with coeffs, batch 1"),
        Sample("eltwise_param { operation: PROD }", bottoms=((2, 3, 2), (2, 3, 2), (2, 3, 2))),
        Sample("eltwise_param { operation: PROD stable_prod_grad: false }", bottoms=((3, 4), (3, 4))),
        Sample("eltwise_param { operation: PROD }", bottoms=((2, 5), (2, 5)),
               values=(("choice", 0.0, 1.0, -2.0), ("choice", 0.0, 3.0)), gradcheck=False,
               note="zeros in PROD"),
        Sample("eltwise_param { operation: MAX }", bottoms=((2, 3, 4), (2, 3, 4), (2, 3, 4))),
        Sample("eltwise_param { operation: MAX }", bottoms=((3, 5), (3, 5), (3, 5), (3, 5)),
               values=(("choice", 0.0, 1.0),) * 4, gradcheck=False, note="MAX with ties"),
        Sample("eltwise_param { operation: MAX }", bottoms=((1, 7), (1, 7)), note="MAX, 2 bottoms"),
    )

    def __init__(self, setup: LayerSetup):
        super().__init__(setup)
        p = setup.param.eltwise_param
        n = len(setup.bottom_shapes)
        if p.coeff and len(p.coeff) != n:
            raise self.fail(f"eltwise_param coeff must be given once per bottom ({n}), got {len(p.coeff)}")
        if p.coeff and p.operation == Eltwise_.PROD:
            raise self.fail("eltwise_param coeff is only for operation SUM, not PROD; remove the coeffs")
        self.operation = p.operation
        self.coeffs = list(p.coeff) if p.coeff else [1.0] * n
        self._check_shapes(setup.bottom_shapes)

    def _check_shapes(self, shapes) -> None:
        for i, shape in enumerate(shapes[1:], 1):
            if tuple(shape) != tuple(shapes[0]):
                raise self.fail(f"every bottom must have the shape of bottom 0 {tuple(shapes[0])}, "
                                f"but bottom {i} has {tuple(shape)}")

    def forward(self, *xs):
        self._check_shapes([x.shape for x in xs])
        if self.operation == Eltwise_.PROD:
            y = xs[0] * xs[1]
            for x in xs[2:]:
                y = y * x
            return y
        if self.operation == Eltwise_.SUM:
            y = xs[0] if self.coeffs[0] == 1 else xs[0] * self.coeffs[0]
            for x, c in zip(xs[1:], self.coeffs[1:]):
                y = y + x if c == 1 else y + x * c
            return y
        # MAX: where() sends the gradient only to the branch it took, i.e. to Caffe's winner.
        y = torch.where(xs[0] > xs[1], xs[0], xs[1])
        for x in xs[2:]:
            y = torch.where(x > y, x, y)
        return y

    @property
    def in_place_any_bottom(self) -> bool:
        """A plain sum of two bottoms may be added into either (float addition commutes exactly):
        the executor's fast path for a residual ``out += shortcut``."""
        return self.operation == Eltwise_.SUM and len(self.coeffs) == 2 and all(c == 1 for c in self.coeffs)

    def forward_in_place(self, target, other):
        return target.add_(other)

    # -- export hooks (torchcaffe.export) ----------------------------------------------------------
    def export_source(self, code):
        """SUM and PROD as arithmetic; MAX as ``torch.maximum`` (the same values; only the gradient
        of ties differs: Caffe gives it to one winner)."""
        xs = code.bottoms
        if self.operation == Eltwise_.PROD:
            return code.line(" * ".join(xs))
        if self.operation == Eltwise_.MAX:
            y = xs[0]
            for x in xs[1:]:
                y = f"torch.maximum({y}, {x})"
            return code.line(y)
        terms = [x if c == 1 else f"{x} * {code.number(c)}" for x, c in zip(xs, self.coeffs)]
        return code.line(" + ".join(terms))


@register_layer("Reduction")
class Reduction(Layer):
    """Reduce every axis from ``axis`` to the end with SUM, ASUM (sum of ``|x|``), SUMSQ (sum of
    ``x^2``) or MEAN, then multiply by ``coeff``.

    Parameters: ``reduction_param { operation (SUM) axis (0) coeff (1) }``.
    Shapes: ``(d0, ..., d_{axis-1}, *) -> (d0, ..., d_{axis-1})``; ``axis: 0`` gives a 0-axis scalar.

    Example: ``layer { name: "sumsq" type: "Reduction" bottom: "x" top: "n2"
    reduction_param { operation: SUMSQ axis: 1 } }``

    Differs from torch: only trailing reduction (all axes from ``axis``), not a chosen set of
    dims. ASUM's gradient is ``sign(x)``, 0 at 0 (as torch's ``abs``).
    """

    exact_bottoms = 1
    exact_tops = 1
    samples = (
        Sample(bottoms=((2, 3, 4),), note="SUM, axis 0: scalar"),
        Sample("reduction_param { operation: SUM axis: 1 coeff: -1.5 }", bottoms=((3, 2, 3),)),
        Sample("reduction_param { operation: ASUM axis: 1 }", bottoms=((2, 5),)),
        Sample("reduction_param { operation: ASUM axis: 0 coeff: 2 }", bottoms=((6,),),
               values=(("choice", -1.0, 0.0, 2.0),), gradcheck=False, note="ASUM at the kink"),
        Sample("reduction_param { operation: SUMSQ axis: 2 coeff: 0.5 }", bottoms=((2, 3, 2, 2),)),
        Sample("reduction_param { operation: MEAN axis: -1 }", bottoms=((1, 3, 5),), note="batch 1, axis -1"),
        Sample("reduction_param { operation: MEAN axis: 1 coeff: 3 }", bottoms=((4, 3, 2),)),
    )

    def __init__(self, setup: LayerSetup):
        super().__init__(setup)
        p = setup.param.reduction_param
        self.operation, self.axis, self.coeff = p.operation, p.axis, p.coeff
        axis_index(self, p.axis, len(setup.bottom_shapes[0]), "reduction_param axis")

    def forward(self, x):
        axis = axis_index(self, self.axis, x.dim(), "reduction_param axis")
        dims = tuple(range(axis, x.dim()))
        op = self.operation
        if op == Reduction_.ASUM:
            x = x.abs()
        elif op == Reduction_.SUMSQ:
            x = x * x
        y = x.sum(dims)
        coeff = self.coeff / _count(x.shape, axis) if op == Reduction_.MEAN else self.coeff
        return y if coeff == 1 else y * coeff

    # -- export hooks (torchcaffe.export) ----------------------------------------------------------
    def export_source(self, code):
        x, shape = code.bottoms[0], code.bottom_shapes[0]
        axis = axis_index(self, self.axis, len(shape), "reduction_param axis")
        dims = tuple(range(axis, len(shape)))
        if self.operation == Reduction_.ASUM:
            x = f"{x}.abs()"
        elif self.operation == Reduction_.SUMSQ:
            x = f"({x} * {x})"
        coeff = self.coeff / _count(shape, axis) if self.operation == Reduction_.MEAN else self.coeff
        y = f"{x}.sum({dims})"
        return code.line(y if coeff == 1 else f"{y} * {code.number(coeff)}")


def _caffe_top_k(x: torch.Tensor, k: int):
    """Top ``k`` along the last axis in Caffe's order: by value, ties to the larger index first
    (``std::partial_sort`` of (value, index) pairs with ``std::greater``)."""
    n = x.shape[-1]
    values, flipped = torch.sort(x.flip(-1), dim=-1, descending=True, stable=True)
    return values[..., :k], (n - 1) - flipped[..., :k]


@register_layer("ArgMax")
class ArgMax(Layer):
    """The indices (as floats) of the ``top_k`` largest values, optionally with the values.

    Without ``axis``: per sample, over all axes after the first; the top is
    ``(N, 1, top_k)`` (indices) or ``(N, 2, top_k)`` (indices then values) with ``out_max_val``,
    padded with trailing 1s to the bottom's number of axes. With ``axis``: along that axis, the top
    is the bottom's shape with that axis replaced by ``top_k``, holding the indices, or the values
    with ``out_max_val``. Ties: the larger index comes first. No backward.

    Parameters: ``argmax_param { out_max_val (false) top_k (1) axis (unset) }``.

    Example: ``layer { name: "pred" type: "ArgMax" bottom: "prob" top: "pred" argmax_param { top_k: 5 } }``

    Differs from torch: ``torch.topk`` does not fix the order of ties, and returns int64 indices.
    """

    exact_bottoms = 1
    exact_tops = 1
    differentiable = False
    samples = (
        Sample(bottoms=((3, 6),), gradcheck=False),
        Sample("argmax_param { top_k: 2 out_max_val: true }", bottoms=((2, 3, 2, 2),), gradcheck=False,
               note="no axis, values too, 4-D bottom"),
        Sample("argmax_param { axis: 1 top_k: 2 }", bottoms=((2, 4, 3),), gradcheck=False),
        Sample("argmax_param { axis: -1 top_k: 3 out_max_val: true }", bottoms=((1, 2, 5),), gradcheck=False),
        Sample("argmax_param { top_k: 3 }", bottoms=((2, 6),), values=(("choice", 0.0, 1.0),),
               gradcheck=False, note="ties"),
        Sample(bottoms=((4,),), gradcheck=False, note="1-D bottom"),
    )

    def __init__(self, setup: LayerSetup):
        super().__init__(setup)
        p = setup.param.argmax_param
        self.out_max_val, self.top_k = p.out_max_val, p.top_k
        self.axis = p.axis if p.HasField("axis") else None
        if self.top_k < 1:
            raise self.fail(f"argmax_param top_k must be at least 1, got {self.top_k}")
        self._resolve(setup.bottom_shapes[0])

    def _resolve(self, shape) -> tuple[int | None, int]:
        """The canonical axis (None: per sample) and the length top_k is taken from."""
        if self.axis is None:
            length, where = _count(shape, 1), "the values per sample (all axes after the first)"
            axis = None
        else:
            axis = axis_index(self, self.axis, len(shape), "argmax_param axis")
            length, where = int(shape[axis]), f"axis {axis}"
        if self.top_k > length:
            raise self.fail(f"argmax_param top_k ({self.top_k}) exceeds the size of {where}: {length} "
                            f"(bottom shape {tuple(shape)})")
        return axis, length

    def forward(self, x):
        x = x.detach()
        axis, _ = self._resolve(x.shape)
        k = self.top_k
        if axis is not None:
            values, index = _caffe_top_k(x.movedim(axis, -1), k)
            out = values if self.out_max_val else index.to(x.dtype)
            return out.movedim(-1, axis)
        values, index = _caffe_top_k(x.reshape(x.shape[0], -1), k)
        parts = [index.to(x.dtype)] + ([values] if self.out_max_val else [])
        out = torch.stack(parts, dim=1)  # (N, 1 or 2, top_k)
        return out.reshape(tuple(out.shape) + (1,) * (x.dim() - 3))


@register_layer("Accuracy")
class Accuracy(Layer):
    """Top-k classification accuracy, and optionally per-class accuracy.

    A position counts as correct when fewer than ``top_k`` *other* classes score greater than or
    equal to the true class (ties count against it). Positions whose label equals
    ``ignore_label`` are skipped; accuracy = correct / counted (0 when nothing is counted). The
    optional second top holds, per class c, correct_c / count_c (0 where count_c is 0). No backward.

    Parameters: ``accuracy_param { top_k (1) axis (1) ignore_label (unset) }``.
    Shapes: scores ``(d0, ..., C at axis, ...)``, labels with ``d0*...*d_{axis-1}*d_{axis+1}*...``
    values -> accuracy ``()`` [, per-class ``(C,)``].

    Example: ``layer { name: "accuracy" type: "Accuracy" bottom: "ip2" bottom: "label" top: "accuracy"
    include { phase: TEST } }``

    Differs from torch: a top-k test by ``topk`` would break ties in an unspecified way; Caffe
    counts every tie as beating the true class.
    """

    exact_bottoms = 2
    min_tops = 1
    max_tops = 2
    differentiable = False
    samples = (
        Sample(bottoms=((6, 4), (6,)), values=(None, ("int", 0, 4)), phase=TEST, gradcheck=False),
        Sample("accuracy_param { top_k: 2 ignore_label: 1 }", bottoms=((8, 5), (8,)),
               values=(None, ("int", 0, 5)), tops=2, gradcheck=False, note="top-2, ignore, per class"),
        Sample("accuracy_param { axis: 1 }", bottoms=((2, 3, 2, 2), (2, 1, 2, 2)),
               values=(("choice", 0.0, 1.0), ("int", 0, 3)), tops=2, gradcheck=False,
               note="spatial labels, ties"),
        Sample("accuracy_param { axis: -1 top_k: 3 }", bottoms=((1, 2, 4), (1, 2)),
               values=(None, ("int", 0, 4)), gradcheck=False, note="batch 1, last axis"),
    )

    def __init__(self, setup: LayerSetup):
        super().__init__(setup)
        p = setup.param.accuracy_param
        self.top_k, self.axis = p.top_k, p.axis
        self.ignore_label = p.ignore_label if p.HasField("ignore_label") else None
        self._resolve(*setup.bottom_shapes)

    def _resolve(self, scores, labels) -> tuple[int, int, int, int]:
        axis = axis_index(self, self.axis, len(scores), "accuracy_param axis")
        outer, classes, inner = _count(scores, 0, axis), int(scores[axis]), _count(scores, axis + 1)
        if outer * inner != _count(labels):
            raise self.fail(f"the labels (bottom 1, shape {tuple(labels)}) must hold one value per "
                            f"prediction: {outer * inner} for scores of shape {tuple(scores)} with "
                            f"classes on axis {axis}; got {_count(labels)}")
        if self.top_k > classes:
            raise self.fail(f"accuracy_param top_k ({self.top_k}) must not exceed the number of "
                            f"classes ({classes})")
        return axis, outer, classes, inner

    def top_shapes(self, bottom_shapes):
        axis, _, classes, _ = self._resolve(*bottom_shapes)
        return [()] + [(classes,)] * (self.num_tops - 1)

    def forward(self, scores, labels):
        scores, labels = scores.detach(), labels.detach()
        _, outer, classes, inner = self._resolve(scores.shape, labels.shape)
        x = scores.reshape(outer, classes, inner)
        label = labels.reshape(outer, inner).to(torch.long)  # truncates, as static_cast<int>
        valid = torch.ones_like(label, dtype=torch.bool) if self.ignore_label is None else label != self.ignore_label
        if not label.is_meta and bool(((label < 0) | (label >= classes))[valid].any()):
            bad = label[valid & ((label < 0) | (label >= classes))][0].item()
            raise self.fail(f"label {bad} is outside [0, {classes}): labels must index the {classes} "
                            f"classes on the scores' axis (or equal ignore_label)")
        label = torch.where(valid, label, torch.zeros_like(label))
        true_score = x.gather(1, label.unsqueeze(1))
        better = (x >= true_score).sum(dim=1) - 1  # the true class scores >= itself
        correct = (better < self.top_k) & valid
        count = valid.sum().to(x.dtype)
        accuracy = torch.where(count > 0, correct.sum().to(x.dtype) / count.clamp(min=1), 0.0)
        if self.num_tops == 1:
            return accuracy
        flat = label.flatten()
        zeros = torch.zeros(classes, dtype=x.dtype, device=x.device)
        seen = zeros.index_add(0, flat, valid.flatten().to(x.dtype))
        hits = zeros.index_add(0, flat, correct.flatten().to(x.dtype))
        return accuracy, torch.where(seen > 0, hits / seen.clamp(min=1), 0.0)


@register_layer("Parameter")
class Parameter(Layer):
    """A learned blob as a top: ``parameter_param { shape { dim: ... } }``; no bottoms.

    The blob starts at zeros (Caffe's Parameter layer has no filler; load weights or let a
    solver learn it). The top *is* the blob (Caffe shares its data and diff).
    Shapes: () -> the declared shape.

    Example: ``layer { name: "w" type: "Parameter" top: "w" parameter_param { shape { dim: 10 dim: 3 } } }``
    """

    exact_bottoms = 0
    exact_tops = 1
    samples = (
        Sample("parameter_param { shape { dim: 2 dim: 3 } }", bottoms=()),
        Sample("parameter_param { shape { } }", bottoms=(), note="0-axis blob"),
    )

    def __init__(self, setup: LayerSetup):
        super().__init__(setup)
        self.add_blob("value", tuple(setup.param.parameter_param.shape.dim), None)

    def top_shapes(self, bottom_shapes):
        return [self.value.shape]

    def forward(self):
        return self.value
