"""Loss layers (Caffe's ``LossLayer`` family): a scalar loss from predictions and targets.

Every loss layer gives a 0-axis top (shape ``()``, Caffe's ``vector<int> loss_shape(0)``), gets
``loss_weight: 1`` on it when the prototxt gives none, takes bottoms whose first dimensions agree,
and never back-propagates into its labels (``force_backward`` does not reach them). Caffe's shape
checks (its ``Reshape``) run in ``top_shapes``: at construction and at every reshape.

Shared ``loss_param``: ``ignore_label`` (only when set) and ``normalization`` (VALID, BATCH_SIZE,
FULL, NONE), with the deprecated ``normalize`` standing in when ``normalization`` is unset. The
divisor is ``max(1, n)`` with n = the count of non-ignored targets (VALID), outer (BATCH_SIZE),
outer * inner (FULL) or 1 (NONE).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import CaffeError
from ..proto import caffe_pb2
from .base import Layer, LayerSetup, Sample, axis_index
from .registry import register_layer

Norm = caffe_pb2.LossParameter
FLT_MIN = float(np.finfo(np.float32).tiny)  # SoftmaxWithLoss floors p at FLT_MIN before the log
LOG_THRESHOLD = float(np.float32(1e-20))  # Caffe's kLOG_THRESHOLD, a float constant
CONTRASTIVE_EPS = 1e-4  # ContrastiveLoss's backward divides by (distance + 1e-4)


# -- helpers shared by the family -----------------------------------------------------------------
def normalization_mode(param: caffe_pb2.LossParameter, unset: int) -> int:
    """The normalization a layer uses: ``normalization`` if set, else the deprecated ``normalize``
    (true: VALID, false: BATCH_SIZE), else ``unset`` (the layer's own default)."""
    if param.HasField("normalization"):
        return param.normalization
    if param.HasField("normalize"):
        return Norm.VALID if param.normalize else Norm.BATCH_SIZE
    return unset


def ignore_label_of(param: caffe_pb2.LossParameter) -> int | None:
    """The label whose targets are skipped, or None: Caffe ignores a label only when
    ``has_ignore_label()`` (the field's default 0 is not a label to skip)."""
    return param.ignore_label if param.HasField("ignore_label") else None


def normalizer(mode: int, outer: int, inner: int, valid: torch.Tensor | None):
    """Caffe's ``get_normalizer``: the loss divisor, never below 1. ``valid`` marks the targets that
    count (None: all of them); VALID divides by their number."""
    if mode == Norm.VALID and valid is not None:
        return valid.sum().clamp(min=1)
    n = {Norm.FULL: outer * inner, Norm.VALID: outer * inner, Norm.BATCH_SIZE: outer, Norm.NONE: 1}[mode]
    return max(1, n)


def floor_keep_grad(value: torch.Tensor, floor: float) -> torch.Tensor:
    """``max(value, floor)`` in value, with the gradient of ``value`` itself everywhere.

    Caffe clamps probabilities before taking their log in the forward pass but its backward
    ignores the clamp (SoftmaxWithLoss, InfogainLoss: ``p - onehot``; MultinomialLogisticLoss:
    ``-1 / max(p, threshold)``), where autograd of a clamp would give zero.
    """
    return torch.where(value < floor, (value - value.detach()) + floor, value)


def legacy_shape(layer: Layer, shape, what: str) -> tuple[int, int, int, int]:
    """Caffe's num/channels/height/width of a blob (missing trailing axes count as 1); Caffe
    refuses those accessors on blobs of more than 4 axes."""
    if len(shape) > 4:
        raise layer.fail(f"{what} has shape {tuple(shape)}: {layer.type} reads it through Caffe's legacy "
                         f"num/channels/height/width accessors, which allow at most 4 axes. Reshape it "
                         f"(e.g. with a Flatten or Reshape layer) first")
    return tuple(shape) + (1,) * (4 - len(shape))


def class_labels(layer: Layer, label: torch.Tensor, outer: int, inner: int, classes: int,
                 ignore_label: int | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Labels as class indices of shape (outer, inner), truncated toward zero as Caffe's
    ``static_cast<int>`` does; ``valid`` marks the non-ignored ones (None without ignore_label).
    Ignored positions get index 0. A label outside [0, classes) that is not ignored is an error."""
    labels = label.detach().reshape(outer, inner).long()
    valid = None if ignore_label is None else labels != ignore_label
    index = labels if valid is None else labels.masked_fill(~valid, 0)
    check_label_range(layer, index, classes)
    return index, valid


def check_label_range(layer: Layer, index: torch.Tensor, classes: int) -> None:
    bad = (index < 0) | (index >= classes)
    if bool(bad.any()):
        value = int(index[bad][0])
        raise layer.fail(f"label {value} is out of range: labels must be integers in [0, {classes - 1}] "
                         f"(bottom 1 indexes {classes} classes of bottom 0). If {value} marks targets to "
                         f"skip, set loss_param {{ ignore_label: {value} }}")


def _split_at(shape, axis: int) -> tuple[int, int, int]:
    return math.prod(shape[:axis]), shape[axis], math.prod(shape[axis + 1:])


class LossLayer(Layer):
    """Caffe's ``LossLayer``: two bottoms (predictions, labels), one scalar top, loss_weight 1."""

    exact_bottoms = 2
    exact_tops = 1
    is_loss = True

    def check_batch(self, shapes) -> None:
        """Caffe's ``LossLayer::Reshape``: bottoms 0 and 1 have the same first dimension."""
        a, b = shapes[0], shapes[1]
        if len(a) == 0 or len(b) == 0 or a[0] != b[0]:
            raise self.fail(f"bottom 0 (shape {tuple(a)}) and bottom 1 (shape {tuple(b)}) must have the same "
                            f"first dimension (the batch size): one target per prediction")

    def top_shapes(self, bottom_shapes):
        self.check_batch(bottom_shapes)
        return [torch.Size(())]

    def split_at_class_axis(self, bottom_shapes, axis: int, param_name: str) -> tuple[int, int, int]:
        """``(outer, classes, inner)``: bottom 0 split at its class ``axis`` (``<param_name>.axis``).

        Caffe's SoftmaxWithLoss and InfogainLoss ``Reshape`` check that bottom 1 holds one label
        per prediction: ``outer * inner`` values, e.g. N*H*W labels for N x C x H x W scores.
        """
        x, label = bottom_shapes[0], bottom_shapes[1]
        outer, classes, inner = _split_at(x, axis_index(self, axis, len(x), f"{param_name}.axis"))
        if outer * inner != math.prod(label):
            raise self.fail(f"bottom 1 (labels, shape {tuple(label)}) must hold one label per prediction: "
                            f"{outer * inner} values for predictions of shape {tuple(x)} with {param_name} "
                            f"axis {axis} (e.g. N*H*W labels for N x C x H x W scores)")
        return outer, classes, inner


def _loss_samples(params: str, shape, label_shape, classes: int, **kwargs) -> Sample:
    return Sample(params, bottoms=(shape, label_shape), values=(None, ("int", 0, classes)), **kwargs)


# -- SoftmaxWithLoss ------------------------------------------------------------------------------
@register_layer("SoftmaxWithLoss")
class SoftmaxWithLoss(LossLayer):
    """Multinomial logistic loss of the softmax of bottom 0 (cross-entropy from logits).

    ``p = softmax(x)`` over ``softmax_param.axis``; with outer = the dims before the axis and
    inner = the dims after it, ``loss = -sum_{i,j not ignored} log(max(p[i, label[i,j], j], FLT_MIN))
    / normalizer``. Gradient: ``(p - onehot(label)) * loss_weight / normalizer``, zero at ignored
    positions — also where ``p < FLT_MIN``: Caffe's backward ignores the floor, and so do we.

    Parameters: ``loss_param { ignore_label (unset) normalization (VALID) normalize (deprecated)
    weight_by_label_freqs (false) class_weighting (repeated) }``, ``softmax_param { axis (1) }``.
    ``normalize`` is used only when ``normalization`` is unset: false means BATCH_SIZE, true VALID.

    SegNet's class weighting (alexgkendall/caffe-segnet): with ``weight_by_label_freqs: true``,
    ``class_weighting`` must give one weight per class and each target's loss and gradient are
    multiplied by the weight of its label; the divisor is unchanged (the count of non-ignored
    targets under VALID, not the sum of their weights). ``class_weighting`` without
    ``weight_by_label_freqs`` is ignored, as in the fork.

    Shapes: (outer, C, inner...), labels with outer * inner values -> () [, probabilities like
    bottom 0]. The optional second top holds ``p``; Caffe never back-propagates from it (its diff
    is ignored), so it is detached here. A second top needs two ``loss_weight`` values (e.g.
    ``loss_weight: 1 loss_weight: 0``).

    Example::

        layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc8" bottom: "label" top: "loss"
                loss_param { ignore_label: 255 normalization: VALID } }

    Differs from torch: ``F.cross_entropy`` does not floor p at FLT_MIN (it can return more than
    87.34 per target), knows neither BATCH_SIZE/FULL/NONE normalization nor ``max(1, n)``, and
    needs the class axis at 1; labels are float blobs truncated toward zero here.
    """

    exact_tops = None
    min_tops, max_tops = 1, 2
    samples = (
        _loss_samples("", (6, 5), (6,), 5, note="default VALID, no ignore"),
        _loss_samples("", (1, 3), (1,), 3, note="batch 1"),
        _loss_samples("loss_param { ignore_label: 2 normalization: VALID }", (2, 4, 3, 3), (2, 1, 3, 3), 4),
        _loss_samples("loss_param { ignore_label: 2 normalization: FULL }", (2, 4, 3, 3), (2, 1, 3, 3), 4),
        _loss_samples("loss_param { ignore_label: 0 normalization: BATCH_SIZE }", (2, 3, 5), (2, 5), 3),
        _loss_samples("loss_param { ignore_label: 1 normalization: NONE }", (2, 3, 5), (2, 1, 5), 3),
        _loss_samples("loss_param { normalize: false }", (3, 4, 2), (3, 2), 4, note="deprecated: BATCH_SIZE"),
        _loss_samples("loss_param { normalize: true ignore_label: 1 }", (3, 4, 2), (3, 2), 4,
                      note="deprecated: VALID"),
        _loss_samples("softmax_param { axis: -1 }", (2, 3, 4), (2, 3), 4, note="class axis last"),
        _loss_samples("softmax_param { axis: 2 }", (2, 3, 4, 2), (2, 6), 4, note="classes on axis 2"),
        Sample("loss_param { ignore_label: 3 }", bottoms=((3, 4), (3,)), values=(None, ("choice_int", 3.0)),
               note="every label ignored: normalizer max(1, 0) = 1, loss 0"),
        Sample("loss_weight: 1 loss_weight: 0", bottoms=((3, 5), (3,)), values=(None, ("int", 0, 5)), tops=2,
               note="second top: the probabilities"),
        _loss_samples("loss_param { weight_by_label_freqs: true class_weighting: 0.5 class_weighting: 2 "
                      "class_weighting: 1.25 ignore_label: 1 }", (2, 3, 2, 2), (2, 1, 2, 2), 3,
                      note="SegNet class weighting, VALID divisor"),
        _loss_samples("loss_param { weight_by_label_freqs: true class_weighting: 3 class_weighting: 0.2 "
                      "normalize: false }", (4, 2), (4,), 2, note="SegNet class weighting, normalize: false"),
    )

    def __init__(self, setup: LayerSetup):
        super().__init__(setup)
        p = setup.param.loss_param
        self.ignore_label = ignore_label_of(p)
        self.normalization = normalization_mode(p, unset=p.normalization)
        self.axis = setup.param.softmax_param.axis
        # SegNet: a weight per class, used only with weight_by_label_freqs (as the fork does)
        weights = list(p.class_weighting) if p.weight_by_label_freqs else None
        self.register_buffer("class_weights", None if weights is None else torch.tensor(weights), persistent=False)
        if weights is not None:
            self.top_shapes(setup.bottom_shapes)  # the fork checks the weight count at set-up

    def top_shapes(self, bottom_shapes):
        self.check_batch(bottom_shapes)
        _, classes, _ = self.split_at_class_axis(bottom_shapes, self.axis, "softmax_param")
        if self.class_weights is not None and len(self.class_weights) != classes:
            raise self.fail(f"loss_param class_weighting gives {len(self.class_weights)} weight(s) but bottom 0 has "
                            f"{classes} classes: with weight_by_label_freqs give one class_weighting per class")
        return [torch.Size(())] + [bottom_shapes[0]] * (self.num_tops - 1)

    def forward(self, x, label):
        axis = self.axis % x.dim()
        outer, classes, inner = _split_at(x.shape, axis)
        index, valid = class_labels(self, label, outer, inner, classes, self.ignore_label)
        log_p = F.log_softmax(x, dim=axis).reshape(outer, classes, inner)
        picked = floor_keep_grad(log_p.gather(1, index.unsqueeze(1)).squeeze(1), math.log(FLT_MIN))
        if self.class_weights is not None:
            picked = picked * self.class_weights.to(picked.dtype)[index]
        if valid is not None:
            picked = torch.where(valid, picked, 0.0)
        loss = -picked.sum() / normalizer(self.normalization, outer, inner, valid)
        if self.num_tops == 1:
            return loss
        return loss, torch.softmax(x.detach(), dim=axis)


# -- EuclideanLoss --------------------------------------------------------------------------------
@register_layer("EuclideanLoss")
class EuclideanLoss(LossLayer):
    """Half the mean (over the batch) squared distance: ``loss = sum((a - b)^2) / (2 N)``.

    ``N = a.shape[0]`` (Caffe's ``num()``), whatever the other axes are. The gradient reaches both
    bottoms, with opposite signs: ``+-(a - b) * loss_weight / N``; unlike other loss layers,
    ``force_backward`` reaches bottom 1 too.

    Parameters: none besides ``loss_weight``.

    Shapes: (N, *), (N, *) with the same count per sample (the shapes may differ, e.g.
    (N, C, 1, 1) and (N, C); at most 4 axes) -> ().

    Example::

        layer { name: "loss" type: "EuclideanLoss" bottom: "pred" bottom: "target" top: "loss" }

    Differs from torch: ``F.mse_loss`` divides by the number of elements and has no 1/2.
    """

    samples = (
        Sample(bottoms=((4, 3), (4, 3))),
        Sample(bottoms=((1, 5), (1, 5)), note="batch 1"),
        Sample(bottoms=((2, 3, 2, 2), (2, 12)), note="different shapes, same count per sample"),
        Sample(bottoms=((3,), (3,)), note="1-D"),
        Sample(bottoms=((2, 3, 1, 1), (2, 3)), values=(("const", 0.5), ("const", 0.5)), note="zero loss"),
    )

    def allow_force_backward(self, bottom_index: int) -> bool:
        return True

    def top_shapes(self, bottom_shapes):
        self.check_batch(bottom_shapes)
        a, b = bottom_shapes
        legacy_shape(self, a, "bottom 0")
        legacy_shape(self, b, "bottom 1")
        if math.prod(a[1:]) != math.prod(b[1:]):
            raise self.fail(f"bottoms must have the same number of values per sample; got shapes {tuple(a)} "
                            f"and {tuple(b)}")
        return [torch.Size(())]

    def forward(self, a, b):
        diff = a - b.reshape(a.shape)
        return (diff * diff).sum() / a.shape[0] / 2


# -- SigmoidCrossEntropyLoss ----------------------------------------------------------------------
@register_layer("SigmoidCrossEntropyLoss")
class SigmoidCrossEntropyLoss(LossLayer):
    """Cross-entropy of targets against the sigmoid of the scores, computed stably from the scores.

    ``loss = sum_{not ignored} [max(x, 0) - x t + log(1 + exp(-|x|))] / normalizer``; the gradient
    is ``(sigmoid(x) - t) * loss_weight / normalizer``, zero at ignored targets. A target is ignored
    when ``int(t)`` (truncated toward zero, as Caffe's ``static_cast<int>``) equals ``ignore_label``.

    Parameters: ``loss_param { ignore_label (unset) normalization normalize }``; when neither
    ``normalization`` nor ``normalize`` is set this layer uses BATCH_SIZE (not VALID);
    ``normalize: true`` means VALID, false BATCH_SIZE. outer = shape(0), inner = count / outer.

    Shapes: (N, *), targets with the same count -> ().

    Example::

        layer { name: "loss" type: "SigmoidCrossEntropyLoss" bottom: "score" bottom: "target" top: "loss" }

    Differs from torch: ``F.binary_cross_entropy_with_logits`` (used per element) averages over
    every element by default; Caffe divides by the batch size.
    """

    TARGETS = ("choice_int", 0.0, 1.0)
    samples = (
        Sample(bottoms=((4, 3), (4, 3)), values=(None, TARGETS), note="default BATCH_SIZE"),
        Sample(bottoms=((1, 2, 3), (1, 6)), values=(None, TARGETS), note="batch 1, other target shape"),
        Sample(bottoms=((3, 4), (3, 4)), values=(("uniform", -30, 30), ("choice_int", 0.0, 0.25, 1.0)),
               note="large scores, soft targets"),
        Sample("loss_param { ignore_label: -1 }", bottoms=((4, 3), (4, 3)),
               values=(None, ("choice_int", -1.0, 0.0, 1.0))),
        Sample("loss_param { ignore_label: -1 normalization: VALID }", bottoms=((2, 3, 2), (2, 3, 2)),
               values=(None, ("choice_int", -1.0, 0.0, 1.0))),
        Sample("loss_param { normalization: FULL }", bottoms=((3, 4), (3, 4)), values=(None, TARGETS)),
        Sample("loss_param { normalization: NONE }", bottoms=((3, 4), (3, 4)), values=(None, TARGETS)),
        Sample("loss_param { normalize: true ignore_label: 0 }", bottoms=((3, 4), (3, 4)),
               values=(None, ("choice_int", 0.0, 0.5, 1.0)), note="deprecated normalize: VALID; int(0.5) == 0"),
    )

    def __init__(self, setup: LayerSetup):
        super().__init__(setup)
        p = setup.param.loss_param
        self.ignore_label = ignore_label_of(p)
        self.normalization = normalization_mode(p, unset=Norm.BATCH_SIZE)

    def top_shapes(self, bottom_shapes):
        self.check_batch(bottom_shapes)
        x, t = bottom_shapes
        if math.prod(x) != math.prod(t):
            raise self.fail(f"bottom 1 (targets, shape {tuple(t)}) must have as many values as bottom 0 "
                            f"(scores, shape {tuple(x)})")
        return [torch.Size(())]

    def forward(self, x, target):
        t = target.detach().reshape(x.shape).to(x.dtype)
        per_value = F.binary_cross_entropy_with_logits(x, t, reduction="none")  # backward: sigmoid(x) - t
        valid = None
        if self.ignore_label is not None:
            valid = t.long() != self.ignore_label
            per_value = torch.where(valid, per_value, 0.0)
        outer = x.shape[0]
        return per_value.sum() / normalizer(self.normalization, outer, math.prod(x.shape[1:]), valid)


# -- HingeLoss ------------------------------------------------------------------------------------
@register_layer("HingeLoss")
class HingeLoss(LossLayer):
    """One-versus-all hinge loss: ``loss = sum_{i,k} max(0, 1 - t_ik x_ik)^p / N``.

    Each sample i of bottom 0 is flattened to ``dim = count / N`` scores; ``t_ik = +1`` for the
    true class ``k = label[i]`` and -1 otherwise; p = 1 (L1) or 2 (L2). The gradient is zero
    where the hinge is exactly at its kink (``1 - t x = 0``), as in Caffe (``sign(0) = 0``).

    Parameters: ``hinge_loss_param { norm (L1) }``: L1 or L2.

    Shapes: (N, *) scores (at most 4 axes), labels with N values (Caffe reads the first N values of
    bottom 1) -> ().

    Example::

        layer { name: "loss" type: "HingeLoss" bottom: "fc" bottom: "label" top: "loss"
                hinge_loss_param { norm: L2 } }

    Differs from torch: ``F.multi_margin_loss`` compares each wrong class with the true class's
    score (Crammer-Singer); this is one-versus-all with targets +-1, summed over the classes and
    divided by N only.
    """

    samples = (
        _loss_samples("", (5, 4), (5,), 4, note="L1"),
        _loss_samples("hinge_loss_param { norm: L2 }", (5, 4), (5,), 4),
        _loss_samples("", (1, 3), (1,), 3, note="batch 1"),
        _loss_samples("hinge_loss_param { norm: L2 }", (2, 3, 1, 2), (2,), 6, note="4-D: dim = C*H*W"),
        Sample("", bottoms=((4, 3), (4,)), values=(("choice", -1.0, 0.0, 1.0), ("int", 0, 3)), gradcheck=False,
               note="scores at the kinks"),
    )

    def __init__(self, setup: LayerSetup):
        super().__init__(setup)
        self.squared = setup.param.hinge_loss_param.norm == caffe_pb2.HingeLossParameter.L2

    def top_shapes(self, bottom_shapes):
        self.check_batch(bottom_shapes)
        legacy_shape(self, bottom_shapes[0], "bottom 0")
        return [torch.Size(())]

    def forward(self, x, label):
        n = x.shape[0]
        scores = x.reshape(n, -1)
        index = label.detach().reshape(-1)[:n].long()
        check_label_range(self, index, scores.shape[1])
        sign = torch.ones_like(scores).scatter(1, index.unsqueeze(1), -1.0)  # -t: -1 on the true class
        margin = F.relu(1 + sign * scores)
        return (margin * margin if self.squared else margin).sum() / n


# -- InfogainLoss ---------------------------------------------------------------------------------
@register_layer("InfogainLoss")
class InfogainLoss(LossLayer):
    """Infogain-weighted multinomial logistic loss of the softmax of bottom 0.

    ``p = softmax(x)`` over ``infogain_loss_param.axis``; ``loss = -sum_{i,j not ignored}
    sum_k H[label_ij, k] log(max(p_ikj, 1e-20)) / normalizer``. With ``H = I`` this is
    SoftmaxWithLoss (floored at 1e-20 instead of FLT_MIN). Gradient: ``(p * sum_k H[label, k] -
    H[label, :]) * loss_weight / normalizer``, zero at ignored positions; as in Caffe the floor is
    ignored by the backward. H gets no gradient.

    H (C x C, any shape with C*C values) comes from bottom 2 or, with two bottoms, from the
    binaryproto file ``infogain_loss_param.source`` (read once, at construction).

    Parameters: ``infogain_loss_param { source axis (1) }``, ``loss_param { ignore_label
    normalization (VALID) }``; Caffe refuses the deprecated ``normalize`` here.

    Shapes: (outer, C, inner...), labels with outer * inner values [, H] -> () [, probabilities].
    The optional second top holds ``p`` (detached: Caffe ignores its diff) and needs two
    ``loss_weight`` values.

    Example::

        layer { name: "loss" type: "InfogainLoss" bottom: "fc" bottom: "label" top: "loss"
                infogain_loss_param { source: "infogain.binaryproto" } }

    Differs from Caffe: with ``force_backward`` or ``propagate_down: true`` on bottom 2, Caffe
    aborts ("cannot backpropagate to infogain inputs"); here H is simply never back-propagated into.
    """

    exact_bottoms = None
    min_bottoms, max_bottoms = 2, 3
    exact_tops = None
    min_tops, max_tops = 1, 2
    H_VALUES = ("choice_int", 0.0, 0.5, 1.0, 2.0)
    samples = (
        Sample(bottoms=((4, 3), (4,), (3, 3)), values=(None, ("int", 0, 3), H_VALUES)),
        Sample(bottoms=((1, 4), (1,), (1, 1, 4, 4)), values=(None, ("int", 0, 4), H_VALUES), note="batch 1"),
        Sample("loss_param { ignore_label: 1 normalization: FULL }", bottoms=((2, 3, 2, 2), (2, 1, 2, 2), (3, 3)),
               values=(None, ("int", 0, 3), H_VALUES)),
        Sample("loss_param { ignore_label: 0 }", bottoms=((2, 3, 5), (2, 5), (9,)),
               values=(None, ("int", 0, 3), H_VALUES), note="VALID with ignored labels"),
        Sample("loss_param { normalization: BATCH_SIZE } infogain_loss_param { axis: -1 }",
               bottoms=((2, 3, 4), (2, 3), (4, 4)), values=(None, ("int", 0, 4), H_VALUES)),
        Sample("loss_param { normalization: NONE } loss_weight: 1 loss_weight: 0", tops=2,
               bottoms=((3, 4), (3,), (4, 4)), values=(None, ("int", 0, 4), H_VALUES), note="probabilities top"),
    )

    def __init__(self, setup: LayerSetup):
        super().__init__(setup)
        lp, p = setup.param.loss_param, setup.param.infogain_loss_param
        if lp.HasField("normalize"):
            raise self.fail("loss_param.normalize is deprecated and InfogainLoss refuses it (as Caffe does); "
                            "use loss_param { normalization: VALID | BATCH_SIZE | FULL | NONE }")
        self.ignore_label = ignore_label_of(lp)
        self.normalization = lp.normalization
        self.axis = p.axis
        matrix = None
        if len(setup.bottom_shapes) < 3:
            if not p.HasField("source"):
                raise self.fail("needs the infogain matrix H: set infogain_loss_param { source: "
                                "\"H.binaryproto\" } or give H as a third bottom")
            matrix = self._read_source(p.source)
        self.register_buffer("infogain", matrix, persistent=False)  # not a Caffe blob: never saved

    def _read_source(self, path: str) -> torch.Tensor:
        from ..io.binaryproto import read_blobproto
        try:
            array = read_blobproto(path)
        except CaffeError as error:
            raise self.fail(f"cannot read infogain_loss_param.source: {error}") from error
        return torch.from_numpy(np.asarray(array, dtype=np.float32).reshape(-1).copy())

    def allow_force_backward(self, bottom_index: int) -> bool:
        return bottom_index == 0

    def top_shapes(self, bottom_shapes):
        self.check_batch(bottom_shapes)
        _, classes, _ = self.split_at_class_axis(bottom_shapes, self.axis, "infogain_loss_param")
        h_count = math.prod(bottom_shapes[2]) if len(bottom_shapes) > 2 else self.infogain.numel()
        if h_count != classes * classes:
            where = "bottom 2" if len(bottom_shapes) > 2 else "infogain_loss_param.source"
            raise self.fail(f"the infogain matrix H ({where}) has {h_count} values; it must be "
                            f"{classes} x {classes} ({classes * classes} values) for {classes} classes")
        return [torch.Size(())] + [bottom_shapes[0]] * (self.num_tops - 1)

    def forward(self, x, label, infogain=None):
        axis = self.axis % x.dim()
        outer, classes, inner = _split_at(x.shape, axis)
        index, valid = class_labels(self, label, outer, inner, classes, self.ignore_label)
        h = (self.infogain if infogain is None else infogain).detach().reshape(classes, classes).to(x.dtype)
        log_p = floor_keep_grad(F.log_softmax(x, dim=axis), math.log(LOG_THRESHOLD))
        log_p = log_p.reshape(outer, classes, inner).transpose(1, 2)  # (outer, inner, classes)
        per_target = -(h[index] * log_p).sum(2)
        if valid is not None:
            per_target = torch.where(valid, per_target, 0.0)
        loss = per_target.sum() / normalizer(self.normalization, outer, inner, valid)
        if self.num_tops == 1:
            return loss
        return loss, torch.softmax(x.detach(), dim=axis)


# -- MultinomialLogisticLoss ----------------------------------------------------------------------
@register_layer("MultinomialLogisticLoss")
class MultinomialLogisticLoss(LossLayer):
    """Negative log-likelihood of probabilities: ``loss = -sum_i log(max(p[i, label_i], 1e-20)) / N``.

    Bottom 0 holds probabilities (e.g. a Softmax top), flattened per sample to ``count / N``
    classes. The gradient at the picked entries is ``-loss_weight / (N * max(p, 1e-20))`` — Caffe
    keeps the floor in the backward too, so a probability below 1e-20 gets ``-1e20 / N``, not 0.

    Parameters: none besides ``loss_weight``.

    Shapes: (N, *) probabilities (at most 4 axes), (N[, 1, 1, 1]) labels -> ().

    Example::

        layer { name: "loss" type: "MultinomialLogisticLoss" bottom: "prob" bottom: "label" top: "loss" }

    Differs from torch: ``F.nll_loss`` takes log-probabilities, not probabilities, and has no floor.
    """

    samples = (
        Sample(bottoms=((4, 3), (4,)), values=(("uniform", 0.1, 1.0), ("int", 0, 3))),
        Sample(bottoms=((1, 5), (1, 1, 1, 1)), values=(("uniform", 0.1, 1.0), ("int", 0, 5)), note="batch 1"),
        Sample(bottoms=((3, 2, 1, 2), (3, 1)), values=(("uniform", 0.1, 1.0), ("int", 0, 4)),
               note="4-D: classes = C*H*W"),
    )

    def top_shapes(self, bottom_shapes):
        self.check_batch(bottom_shapes)
        legacy_shape(self, bottom_shapes[0], "bottom 0")
        if legacy_shape(self, bottom_shapes[1], "bottom 1")[1:] != (1, 1, 1):
            raise self.fail(f"bottom 1 (labels) must have shape (N,) or (N, 1[, 1, 1]): one label per sample; "
                            f"got {tuple(bottom_shapes[1])}")
        return [torch.Size(())]

    def forward(self, prob, label):
        n = prob.shape[0]
        flat = prob.reshape(n, -1)
        index = label.detach().reshape(n).long()
        check_label_range(self, index, flat.shape[1])
        picked = flat.gather(1, index.unsqueeze(1)).squeeze(1)
        return -torch.log(floor_keep_grad(picked, LOG_THRESHOLD)).sum() / n


# -- ContrastiveLoss ------------------------------------------------------------------------------
class _CaffeDistance(torch.autograd.Function):
    """``sqrt(d)`` whose backward is ContrastiveLoss's: ``g / (2 (sqrt(d) + 1e-4))``.

    Caffe's backward for dissimilar pairs divides by ``distance + 1e-4`` instead of the distance
    (the exact derivative), which also keeps it finite at distance 0.
    """

    @staticmethod
    def forward(d):
        return torch.sqrt(d)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx, grad):
        distance, = ctx.saved_tensors
        return grad / (2 * (distance + CONTRASTIVE_EPS))


@register_layer("ContrastiveLoss")
class ContrastiveLoss(LossLayer):
    """Contrastive loss of pairs (Hadsell et al.): pull similar pairs together, push dissimilar
    pairs at least ``margin`` apart.

    With ``d_i = ||a_i - b_i||^2``: ``loss = sum_i [y_i ? d_i : max(margin - sqrt(d_i), 0)^2] / (2N)``
    (``legacy_version``: ``max(margin - d_i, 0)`` for dissimilar pairs). A pair is similar when
    ``int(y_i) != 0`` (truncated toward zero). Gradients reach a and b with opposite signs; y gets
    none. For dissimilar pairs (non-legacy) the gradient is Caffe's, not the exact one:
    ``-(margin - dist) / (dist + 1e-4) * (a - b) * loss_weight / N`` (zero when ``dist >= margin``).

    Parameters: ``contrastive_loss_param { margin (1.0) legacy_version (false) }``.

    Shapes: (N, C[, 1, 1]), (N, C[, 1, 1]), (N[, 1, 1, 1]) -> ().

    Example::

        layer { name: "loss" type: "ContrastiveLoss" bottom: "feat" bottom: "feat_p" bottom: "sim"
                top: "loss" contrastive_loss_param { margin: 1 } }

    Differs from torch: no built-in; the (distance + 1e-4) in the backward is reproduced with a
    custom autograd function.
    """

    exact_bottoms = 3
    PAIRS = ("uniform", -0.5, 0.5)
    SIMILAR = ("choice_int", 0.0, 1.0)
    samples = (
        Sample("contrastive_loss_param { margin: 1.5 }", bottoms=((6, 3), (6, 3), (6,)),
               values=(PAIRS, PAIRS, SIMILAR)),
        Sample(bottoms=((1, 4), (1, 4), (1,)), values=(PAIRS, PAIRS, ("const", 0.0)), note="batch 1, dissimilar"),
        Sample("contrastive_loss_param { legacy_version: true margin: 2 }", bottoms=((5, 3), (5, 3), (5,)),
               values=(PAIRS, PAIRS, SIMILAR)),
        Sample(bottoms=((3, 2, 1, 1), (3, 2), (3, 1, 1, 1)), values=(PAIRS, PAIRS, ("choice_int", 0.0, 0.5, 2.0)),
               note="4-D pairs; int(0.5) == 0 is dissimilar"),
    )

    def __init__(self, setup: LayerSetup):
        super().__init__(setup)
        p = setup.param.contrastive_loss_param
        self.margin, self.legacy = p.margin, p.legacy_version

    def allow_force_backward(self, bottom_index: int) -> bool:
        return bottom_index != 2

    def top_shapes(self, bottom_shapes):
        self.check_batch(bottom_shapes)
        (n, c, h, w), (_, c1, h1, w1), (n2, c2, h2, w2) = (
            legacy_shape(self, s, f"bottom {i}") for i, s in enumerate(bottom_shapes))
        if c != c1 or (h, w, h1, w1) != (1, 1, 1, 1):
            raise self.fail(f"bottoms 0 and 1 must both be (N, C) or (N, C, 1, 1) with the same C; got "
                            f"{tuple(bottom_shapes[0])} and {tuple(bottom_shapes[1])}")
        if (c2, h2, w2) != (1, 1, 1) or n2 < n:
            raise self.fail(f"bottom 2 (similarity labels) must be (N,) or (N, 1[, 1, 1]) with N = {n}; got "
                            f"{tuple(bottom_shapes[2])}")
        return [torch.Size(())]

    def forward(self, a, b, similarity):
        n = a.shape[0]
        diff = a.reshape(n, -1) - b.reshape(n, -1)
        d = (diff * diff).sum(1)
        similar = similarity.detach().reshape(-1)[:n].long() != 0
        if self.legacy:
            apart = F.relu(self.margin - d)
        else:
            apart = F.relu(self.margin - _CaffeDistance.apply(d)) ** 2
        return torch.where(similar, d, apart).sum() / n / 2
