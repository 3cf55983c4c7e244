"""SSD's detection layers (weiliu89/caffe, branch ``ssd``) and the ``SmoothL1Loss`` of the
Fast/Faster R-CNN fork (rbgirshick/caffe-fast-rcnn), which SSD modified.

* ``Normalize`` — L2 normalization (over C*H*W, or over channels at each position) times a
  learned scale.
* ``Permute`` — reorders the axes.
* ``PriorBox`` — the default boxes of one feature map, from shapes only.
* ``DetectionOutput`` — decodes the location predictions against the priors, per-class NMS,
  ``keep_top_k``; rows ``[image, label, score, xmin, ymin, xmax, ymax]``.
* ``MultiBoxLoss`` — SSD's training loss: matching, hard negative mining, localization and
  confidence losses.
* ``SmoothL1Loss`` — the two forks' layer behind one type string (see its docstring).

Box logic (matching, mining, NMS, decoding) runs on float32 numpy arrays with Caffe's operation
order, as the forks do it in ``NormalizedBBox`` (a message of floats) whatever the net's Dtype;
the losses are torch ops, so autograd gives the gradients, with the selections as constants.
The rules where the forks differ from the obvious are listed in ``docs/forks/ssd.md``.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..proto import caffe_pb2
from .base import Layer, LayerSetup, Sample
from .loss import FLT_MIN, floor_keep_grad, legacy_shape, normalization_mode
from .registry import register_layer

SSD = "SSD (weiliu89/caffe, branch ssd)"
Code = caffe_pb2.PriorBoxParameter
MB = caffe_pb2.MultiBoxLossParameter
Norm = caffe_pb2.LossParameter
F32 = np.float32
FLT_MAX = float(np.finfo(np.float32).max)
CODE_NAMES = {Code.CORNER: "CORNER", Code.CENTER_SIZE: "CENTER_SIZE", Code.CORNER_SIZE: "CORNER_SIZE"}


# ================================================================================================
# Box arithmetic on float32 arrays (bbox_util.cpp), shared by the layers below
# ================================================================================================
def box_sizes(b: np.ndarray) -> np.ndarray:
    """``BBoxSize`` of normalized boxes ``(..., 4)``: width * height, 0 for an inverted box."""
    w = b[..., 2] - b[..., 0]
    h = b[..., 3] - b[..., 1]
    return np.where((w < 0) | (h < 0), F32(0), w * h).astype(F32)


def jaccard(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``JaccardOverlap`` of every box of ``a`` (A, 4) with every box of ``b`` (B, 4): (A, B).

    0 unless the intersection has a positive width *and* height (touching boxes overlap 0);
    ``inter / (size_a + size_b - inter)`` in float32."""
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        w = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
        h = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
        inter = w * h
        union = (box_sizes(a)[:, None] + box_sizes(b)[None, :]) - inter
        return np.where((w > 0) & (h > 0), inter / union, F32(0)).astype(F32)


def _positive_sides(layer: Layer, boxes: np.ndarray, what: str, code: int) -> tuple[np.ndarray, np.ndarray]:
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    bad = ~((w > 0) & (h > 0))
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise layer.fail(f"{what} {k} is {boxes[k].tolist()}: code_type {CODE_NAMES[code]} needs boxes of "
                         f"positive width and height (the fork aborts on CHECK_GT(width, 0)). Check the "
                         f"prior/ground-truth blob, or use code_type CORNER")
    return w, h


def _positive_variances(layer: Layer, var: np.ndarray) -> None:
    if not (var > 0).all():
        raise layer.fail(f"prior variances must be positive to encode/scale offsets, got "
                         f"{var[~(var > 0)][0]}; check the PriorBox variance values")


def decode_boxes(layer: Layer, loc: np.ndarray, prior: np.ndarray, var: np.ndarray, code: int,
                 variance_in_target: bool) -> np.ndarray:
    """``DecodeBBox`` of predictions ``loc`` (P, 4) against ``prior`` (P, 4) with ``var`` (P, 4).

    CORNER: ``prior + var * loc``; CENTER_SIZE: centre ``var0 * l0 * pw + pcx``, size
    ``exp(var2 * l2) * pw``; CORNER_SIZE: ``prior + var * loc * (pw, ph, pw, ph)``. With
    ``variance_in_target`` the variances are left out (the network predicts them in)."""
    v = np.ones_like(var) if variance_in_target else var
    with np.errstate(over="ignore", invalid="ignore"):
        if code == Code.CORNER:
            return (prior + loc).astype(F32) if variance_in_target else (prior + v * loc).astype(F32)
        pw, ph = _positive_sides(layer, prior, "prior box", code)
        if code == Code.CENTER_SIZE:
            pcx = (prior[:, 0] + prior[:, 2]) / F32(2)
            pcy = (prior[:, 1] + prior[:, 3]) / F32(2)
            if variance_in_target:
                cx, cy = loc[:, 0] * pw + pcx, loc[:, 1] * ph + pcy
                w, h = np.exp(loc[:, 2]) * pw, np.exp(loc[:, 3]) * ph
            else:
                cx, cy = v[:, 0] * loc[:, 0] * pw + pcx, v[:, 1] * loc[:, 1] * ph + pcy
                w, h = np.exp(v[:, 2] * loc[:, 2]) * pw, np.exp(v[:, 3] * loc[:, 3]) * ph
            half_w, half_h = w / F32(2), h / F32(2)
            return np.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], axis=1).astype(F32)
        if code == Code.CORNER_SIZE:
            scale = np.stack([pw, ph, pw, ph], axis=1)
            step = loc * scale if variance_in_target else v * loc * scale
            return (prior + step).astype(F32)
    raise layer.fail(f"unknown code_type {code}")


def encode_boxes(layer: Layer, gt: np.ndarray, prior: np.ndarray, var: np.ndarray, code: int,
                 variance_in_target: bool) -> np.ndarray:
    """``EncodeBBox``: the regression targets of ground-truth boxes ``gt`` (M, 4) for their priors.

    The inverse of :func:`decode_boxes`: CORNER ``(g - p) / var``; CENTER_SIZE
    ``((gc - pc) / pw / var0, ..., log(gw / pw) / var2, ...)``; CORNER_SIZE ``(g - p) / pw / var``.
    With ``variance_in_target`` the division by the variances is left out."""
    with np.errstate(divide="ignore", invalid="ignore"):
        if code == Code.CORNER:
            if variance_in_target:
                return (gt - prior).astype(F32)
            _positive_variances(layer, var)
            return ((gt - prior) / var).astype(F32)
        pw, ph = _positive_sides(layer, prior, "prior box", code)
        if code == Code.CENTER_SIZE:
            bw, bh = _positive_sides(layer, gt, "ground-truth box", code)
            pcx, pcy = (prior[:, 0] + prior[:, 2]) / F32(2), (prior[:, 1] + prior[:, 3]) / F32(2)
            gcx, gcy = (gt[:, 0] + gt[:, 2]) / F32(2), (gt[:, 1] + gt[:, 3]) / F32(2)
            out = np.stack([(gcx - pcx) / pw, (gcy - pcy) / ph, np.log(bw / pw), np.log(bh / ph)], axis=1)
            return out.astype(F32) if variance_in_target else (out / var).astype(F32)
        if code == Code.CORNER_SIZE:
            scale = np.stack([pw, ph, pw, ph], axis=1)
            out = (gt - prior) / scale
            if variance_in_target:
                return out.astype(F32)
            _positive_variances(layer, var)
            return (out / var).astype(F32)
    raise layer.fail(f"unknown code_type {code}")


def _descending(scores: np.ndarray) -> np.ndarray:
    """Indices of ``scores`` from highest to lowest; equal scores keep their index order."""
    return np.argsort(-scores, kind="stable")


def nms_fast(boxes: np.ndarray, scores: np.ndarray, score_threshold, nms_threshold: float, eta: float,
             top_k: int) -> list[int]:
    """``ApplyNMSFast``: the kept indices, best first.

    Candidates score strictly above ``score_threshold``; sorted by score (stable: the lower index
    first among equals); the first ``top_k`` (-1: all) are visited in order; one is kept when its
    overlap with every kept box is ``<= threshold``. After each kept box, while the threshold is
    above 0.5 and ``eta < 1``, the threshold is multiplied by ``eta`` (adaptive NMS)."""
    candidates = np.flatnonzero(scores > score_threshold)
    order = candidates[_descending(scores[candidates])]
    if top_k > -1:
        order = order[:top_k]
    if order.size == 0:
        return []
    overlaps = jaccard(boxes[order], boxes[order])
    worst = np.full(order.size, -np.inf, dtype=F32)  # max overlap with the kept boxes so far
    threshold, eta = F32(nms_threshold), F32(eta)
    kept = []
    for a in range(order.size):
        if worst[a] <= threshold:
            kept.append(a)
            worst = np.maximum(worst, overlaps[a])
            if eta < 1 and threshold > 0.5:
                threshold = F32(threshold * eta)
    return order[kept].tolist()


def nms_classic(boxes: np.ndarray, scores: np.ndarray, threshold: float, top_k: int) -> list[int]:
    """``ApplyNMS`` (used by MultiBoxLoss's mining with ``nms_param``): like :func:`nms_fast`
    without score threshold or eta, but boxes smaller than 1e-5 are dropped, a box is removed when
    its overlap is ``> threshold``, and the search stops after ``top_k`` kept boxes."""
    order = _descending(scores)
    if top_k > -1:
        order = order[:top_k]
    small = box_sizes(boxes).astype(np.float64) < 1e-5
    remaining, kept = list(order), []
    while remaining:
        best = remaining.pop(0)
        if small[best]:
            continue
        kept.append(int(best))
        if top_k > -1 and len(kept) >= top_k:
            break
        if not remaining:
            break
        rest = np.asarray(remaining)
        overlap = jaccard(boxes[best][None], boxes[rest])[0]
        remaining = rest[~small[rest] & ~(overlap > F32(threshold))].tolist()
    return kept


def _as_f32(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float32).numpy()


def _priors(prior: torch.Tensor, num_priors: int) -> tuple[np.ndarray, np.ndarray]:
    """``GetPriorBBoxes``: the boxes (first ``4P`` values) and variances (next ``4P``)."""
    flat = _as_f32(prior).reshape(-1)
    return flat[:4 * num_priors].reshape(num_priors, 4), flat[4 * num_priors:8 * num_priors].reshape(num_priors, 4)


def _items(t: torch.Tensor, num: int, per_item: int, dtype=torch.float32) -> np.ndarray:
    """The first ``num * per_item`` values of ``t`` as (num, per_item): Caffe steps its pointer by
    ``per_item`` for each image."""
    return t.detach().to("cpu", dtype).numpy().reshape(-1)[:num * per_item].reshape(num, per_item)


def smooth_l1(d: torch.Tensor, sigma2: float = 1.0) -> torch.Tensor:
    """``0.5 * sigma2 * d^2`` where ``|d| < 1 / sigma2``, else ``|d| - 0.5 / sigma2``."""
    a = d.abs()
    return torch.where(a < 1.0 / sigma2, 0.5 * d * d * sigma2, a - 0.5 / sigma2)


class _ValueWithIdentityGrad(torch.autograd.Function):
    """Forward gives ``value``; backward hands the incoming gradient to ``source`` unchanged."""

    @staticmethod
    def forward(ctx, source, value):
        return value.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad, None


# ================================================================================================
# Normalize
# ================================================================================================
@register_layer("Normalize")
class Normalize(Layer):
    """L2 normalization with a learned scale (SSD's ``conv4_3_norm``).

    ``across_spatial: true``: each sample is divided by ``sqrt(sum_{c,h,w} x^2 + eps)``;
    ``false``: each position (n, h, w) by ``sqrt(sum_c x^2 + eps)``. The result is multiplied by
    the scale blob: one value (``channel_shared``) or one per channel.

    Parameters: ``norm_param { across_spatial (true) channel_shared (true) eps (1e-10)
    scale_filler (constant 1.0 when unset) }``.

    Blobs: scale, shape ``()`` when ``channel_shared``, else ``(C,)``.
    Shapes: (N, C[, H[, W]]) -> same (2 to 4 axes: the fork reads num/channels/height/width).

    Example::

        layer { name: "conv4_3_norm" type: "Normalize" bottom: "conv4_3" top: "conv4_3_norm"
                norm_param { across_spatial: false scale_filler { type: "constant" value: 20 }
                             channel_shared: false } }

    Differs from torch: ``F.normalize`` divides by ``max(||x||, eps)``; the fork adds ``eps`` to
    the sum of squares *inside* the square root. The fork's scale gradient is
    ``sum(top * top_diff) / scale`` — NaN at a scale of exactly 0; here it is the exact derivative.
    """

    origin = SSD
    exact_bottoms = 1
    exact_tops = 1
    samples = (
        Sample("", bottoms=((2, 3, 4, 3),), note="defaults: across spatial, one shared scale"),
        Sample("norm_param { across_spatial: false channel_shared: false "
               "scale_filler { type: 'uniform' min: 0.5 max: 2 } }", bottoms=((2, 3, 3, 2),),
               note="per position, per-channel scale (SSD's conv4_3_norm)"),
        Sample("norm_param { across_spatial: true channel_shared: false "
               "scale_filler { type: 'uniform' min: 0.5 max: 2 } }", bottoms=((1, 4, 2, 3),), note="batch 1"),
        Sample("norm_param { across_spatial: false channel_shared: true "
               "scale_filler { type: 'constant' value: 20 } }", bottoms=((2, 5, 1, 3),)),
        Sample("norm_param { across_spatial: false }", bottoms=((3, 4),), note="2-D: one position"),
        Sample("norm_param { across_spatial: false eps: 0.5 }", bottoms=((2, 3, 5),), note="3-D, large eps"),
        Sample("norm_param { eps: 0.25 }", bottoms=((2, 3, 2, 2),), values=(("const", 0.0),),
               note="zeros: eps keeps it finite"),
    )

    def __init__(self, setup: LayerSetup):
        super().__init__(setup)
        p = setup.param.norm_param
        shape = setup.bottom_shapes[0]
        self.top_shapes(setup.bottom_shapes)
        self.across_spatial = p.across_spatial
        self.channel_shared = p.channel_shared
        self.eps = p.eps
        # The fork's default when scale_filler is unset: constant 1.0 (set in its LayerSetUp).
        filler = p.scale_filler if p.HasField("scale_filler") else caffe_pb2.FillerParameter(type="constant",
                                                                                               value=1.0)
        self.add_blob("scale", () if self.channel_shared else (shape[1],), filler)

    def top_shapes(self, bottom_shapes):
        shape = bottom_shapes[0]
        if len(shape) < 2:
            raise self.fail(f"needs a bottom of at least 2 axes (N, C, ...), got shape {list(shape)}")
        legacy_shape(self, shape, "bottom 0")
        if hasattr(self, "scale") and not self.channel_shared and self.scale.shape[0] != shape[1]:
            raise self.fail(f"the scale blob has {self.scale.shape[0]} values but the bottom has {shape[1]} "
                            f"channels (channel_shared: false needs one scale per channel)")
        return [torch.Size(shape)]

    def forward(self, x):
        n, c = x.shape[0], x.shape[1]
        flat = x.reshape(n, c, -1)
        if self.across_spatial:
            norm = torch.sqrt((flat * flat).sum(dim=(1, 2), keepdim=True) + self.eps)
            y = flat * (1.0 / norm)
        else:
            norm = torch.sqrt((flat * flat).sum(dim=1, keepdim=True) + self.eps)
            y = flat / norm
        scale = self.scale if self.channel_shared else self.scale.reshape(1, c, 1)
        return (y * scale).reshape(x.shape)

    # -- export hooks (torchcaffe.export) ----------------------------------------------------------
    def export_source(self, code):
        channels = code.bottom_shapes[0][1]
        args = [str(channels)] + [f"{name}=True" for name in ("across_spatial", "channel_shared")
                                  if getattr(self, name)]
        return code.module(f"{code.helper('Normalize')}({', '.join(args)}, eps={code.number(self.eps)})",
                           weight=self.scale)


# ================================================================================================
# Permute
# ================================================================================================
@register_layer("Permute")
class Permute(Layer):
    """Reorders the axes: ``top.shape[i] = bottom.shape[order[i]]``.

    Axes not named in ``order`` follow in their original order (``order: 0 order: 2`` on a 4-D
    blob means (0, 2, 1, 3)). When the order is the identity the top is the bottom itself.

    Parameters: ``permute_param { order (repeated) }``: each value below the bottom's number of
    axes, no value twice.
    Shapes: (d0, ..., dk) -> (d[order[0]], ..., d[order[k]]).

    Example::

        layer { name: "conv4_3_norm_mbox_loc_perm" type: "Permute" bottom: "conv4_3_norm_mbox_loc"
                top: "conv4_3_norm_mbox_loc_perm" permute_param { order: 0 order: 2 order: 3 order: 1 } }

    Same as ``torch.permute`` (made contiguous, as Caffe's copy is).
    """

    origin = SSD
    exact_bottoms = 1
    exact_tops = 1
    samples = (
        Sample("permute_param { order: 0 order: 2 order: 3 order: 1 }", bottoms=((2, 3, 4, 5),),
               note="SSD's NCHW -> NHWC"),
        Sample("permute_param { order: 0 order: 2 }", bottoms=((2, 3, 4, 2),), note="missing axes appended"),
        Sample("permute_param { order: 3 order: 1 order: 0 order: 2 }", bottoms=((1, 2, 3, 4),), note="batch 1"),
        Sample("permute_param { order: 1 }", bottoms=((3, 5),), note="2-D transpose"),
        Sample("permute_param { order: 0 order: 1 }", bottoms=((2, 3, 2),), note="identity: shared"),
        Sample("", bottoms=((2, 3),), note="no order: identity"),
        Sample("permute_param { order: 2 order: 0 order: 4 }", bottoms=((2, 1, 3, 2, 2),), note="5-D"),
    )

    def __init__(self, setup: LayerSetup):
        super().__init__(setup)
        num_axes = len(setup.bottom_shapes[0])
        order: list[int] = []
        for value in setup.param.permute_param.order:
            if value >= num_axes:
                raise self.fail(f"permute_param order {value} is out of range for a {num_axes}-axis bottom "
                                f"(orders must be below {num_axes})")
            if value in order:
                given = list(setup.param.permute_param.order)
                raise self.fail(f"permute_param order {value} is given twice (orders {given}); name each axis at "
                                f"most once")
            order.append(value)
        self.order = order + [i for i in range(num_axes) if i not in order]
        self.identity = self.order == list(range(num_axes))

    def top_shapes(self, bottom_shapes):
        shape = bottom_shapes[0]
        if len(shape) != len(self.order):
            raise self.fail(f"was set up for {len(self.order)}-axis bottoms, got shape {list(shape)}")
        return [torch.Size([shape[i] for i in self.order])]

    def forward(self, x):
        if self.identity:
            return x
        return x.permute(*self.order).contiguous()

    # -- export hooks (torchcaffe.export) ----------------------------------------------------------
    def export_source(self, code):
        x = code.bottoms[0]
        return code.line(x if self.identity else f"{x}.permute({', '.join(map(str, self.order))})")


# ================================================================================================
# PriorBox
# ================================================================================================
@register_layer("PriorBox")
class PriorBox(Layer):
    """The prior (default) boxes of one feature map, in coordinates normalized by the image size.

    For each cell (h, w) of bottom 0, centre ``((w + offset) * step_w, (h + offset) * step_h)``,
    and for each ``min_size`` s (truncated to an integer, as the fork stores it in an ``int``), in
    this order: a square of side s; if ``max_size`` is given, a square of side
    ``sqrt(s * max_size)`` (max_size also truncated); then for each aspect ratio r other than 1 a
    box of ``(s sqrt(r), s / sqrt(r))``.
    Aspect ratios: 1, then each given ratio not within 1e-6 of one already listed, followed by
    ``1/r`` when ``flip``. Each box is ``((cx - bw/2) / img_w, (cy - bh/2) / img_h, (cx + bw/2) /
    img_w, (cy + bh/2) / img_h)``, clipped to [0, 1] with ``clip``. The image size is ``img_size``
    or ``img_h``/``img_w``, else bottom 1's height/width; the step ``step`` or ``step_h``/``step_w``,
    else ``img / layer`` (a float division).

    Parameters: ``prior_box_param { min_size (repeated, required) max_size (repeated, as many as
    min_size, each larger) aspect_ratio (repeated) flip (true) clip (false) variance (none: 0.1;
    one value, or four) img_size | img_h + img_w  step | step_h + step_w  offset (0.5) }``.

    Shapes: feature (N, C, H, W), image (N, C', H', W') -> (1, 2, H * W * num_priors * 4): channel 0
    the boxes, channel 1 the variance of each coordinate. Only the shapes of the bottoms are read;
    no gradient flows back.

    Example::

        layer { name: "conv4_3_norm_mbox_priorbox" type: "PriorBox" bottom: "conv4_3_norm" bottom: "data"
                top: "conv4_3_norm_mbox_priorbox"
                prior_box_param { min_size: 30.0 max_size: 60.0 aspect_ratio: 2 flip: true clip: false
                                  variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 step: 8 offset: 0.5 } }

    Fork quirks: the fork declares its two bottoms with a misspelt method, so Caffe never checks
    the count: one bottom is enough when the image size is given. The box arithmetic follows the
    fork: float32 centres, sides rounded to float, coordinates computed in double. OpenCV's extra
    ``width``/``height``/``offset_h``/``offset_w`` fields are refused (not implemented).
    """

    origin = SSD
    min_bottoms = 1
    exact_tops = 1
    differentiable = False
    samples = (
        Sample("prior_box_param { min_size: 30 max_size: 60 aspect_ratio: 2 flip: true clip: false "
               "variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 step: 8 offset: 0.5 }",
               bottoms=((1, 2, 3, 3), (1, 3, 24, 24)), gradcheck=False, note="SSD300 conv4_3 style"),
        Sample("prior_box_param { min_size: 7 aspect_ratio: 2 aspect_ratio: 3 clip: true }",
               bottoms=((2, 1, 2, 3), (2, 3, 10, 13)), gradcheck=False, note="steps from the sizes, clip"),
        Sample("prior_box_param { min_size: 5.7 min_size: 9 max_size: 8 max_size: 12 aspect_ratio: 2 "
               "aspect_ratio: 0.5 flip: false variance: 0.3 img_h: 20 img_w: 30 step_h: 6 step_w: 9 "
               "offset: 0 }", bottoms=((1, 4, 2, 2),), gradcheck=False, note="two sizes, one bottom"),
        Sample("prior_box_param { min_size: 16 img_size: 64 }", bottoms=((3, 2, 1, 1), (3, 3, 64, 64)),
               gradcheck=False, note="1x1 map, defaults"),
    )

    def __init__(self, setup: LayerSetup):
        super().__init__(setup)
        p = setup.param.prior_box_param
        for field in ("width", "height", "offset_h", "offset_w"):
            if len(getattr(p, field)):
                raise self.fail(f"prior_box_param {field} is an OpenCV dnn extension that torchcaffe does not "
                                f"implement; use min_size/max_size/aspect_ratio/offset (the SSD fields)")
        if not p.min_size:
            raise self.fail("prior_box_param min_size is required (one or more box sizes in pixels)")
        self.min_sizes = [F32(m) for m in p.min_size]
        if not all(m > 0 for m in self.min_sizes):
            raise self.fail(f"prior_box_param min_size must be positive, got {list(p.min_size)}")
        self.aspect_ratios = [F32(1)]
        for r in p.aspect_ratio:
            r = F32(r)
            if any(abs(float(r - a)) < 1e-6 for a in self.aspect_ratios):
                continue
            self.aspect_ratios.append(r)
            if p.flip:
                self.aspect_ratios.append(F32(1.0 / float(r)))
        self.max_sizes = [F32(m) for m in p.max_size]
        if self.max_sizes:
            if len(self.max_sizes) != len(self.min_sizes):
                raise self.fail(f"prior_box_param has {len(self.min_sizes)} min_size but {len(self.max_sizes)} "
                                f"max_size values; give one max_size per min_size, or none")
            for lo, hi in zip(self.min_sizes, self.max_sizes):
                if not hi > lo:
                    raise self.fail(f"prior_box_param max_size {hi} must be greater than its min_size {lo}")
        self.num_priors = len(self.aspect_ratios) * len(self.min_sizes) + len(self.max_sizes)
        self.clip = p.clip
        self.variance = self._variances(p)
        self.img_h, self.img_w = self._pair(p, "img_size", "img_h", "img_w")
        self.step_h, self.step_w = self._pair(p, "step", "step_h", "step_w")
        self.offset = F32(p.offset)
        if self.img_h == 0 and len(setup.bottom_shapes) < 2:
            raise self.fail("needs the image as bottom 1 (its height and width give the image size), or "
                            "prior_box_param img_size / img_h + img_w")
        self._cache: dict = {}
        self.top_shapes(setup.bottom_shapes)

    def _variances(self, p) -> list:
        values = [F32(v) for v in p.variance]
        if len(values) > 1 and len(values) != 4:
            raise self.fail(f"prior_box_param variance takes one value or four, got {len(values)}")
        if not all(v > 0 for v in values):
            raise self.fail(f"prior_box_param variance values must be positive, got {list(p.variance)}")
        return values or [F32(0.1)]  # the fork's default when no variance is given

    def _pair(self, p, both: str, h: str, w: str) -> tuple:
        if p.HasField(h) or p.HasField(w):
            if p.HasField(both):
                raise self.fail(f"prior_box_param: give either {both} or {h}/{w}, not both")
            if not (getattr(p, h) > 0 and getattr(p, w) > 0):
                raise self.fail(f"prior_box_param {h} and {w} must both be given and positive, got "
                                f"{getattr(p, h)} and {getattr(p, w)}")
            return getattr(p, h), getattr(p, w)
        if p.HasField(both):
            if not getattr(p, both) > 0:
                raise self.fail(f"prior_box_param {both} must be positive, got {getattr(p, both)}")
            return getattr(p, both), getattr(p, both)
        return 0, 0

    def top_shapes(self, bottom_shapes):
        _, _, height, width = legacy_shape(self, bottom_shapes[0], "bottom 0")
        if len(bottom_shapes) > 1:
            legacy_shape(self, bottom_shapes[1], "bottom 1")
        size = height * width * self.num_priors * 4
        if size <= 0:
            raise self.fail(f"bottom 0 (shape {list(bottom_shapes[0])}) has no cells to put priors on")
        return [torch.Size((1, 2, size))]

    def _box_sides(self) -> list[tuple]:
        sides = []
        for s, min_size in enumerate(self.min_sizes):
            lo = int(min_size)  # the fork keeps the size in an int
            sides.append((F32(lo), F32(lo)))
            hi = int(self.max_sizes[s]) if self.max_sizes else None
            if hi is not None:
                side = F32(math.sqrt(lo * hi))
                sides.append((side, side))
            for r in self.aspect_ratios:
                if abs(float(r) - 1.0) < 1e-6:
                    continue
                sides.append((F32(lo * math.sqrt(float(r))), F32(lo / math.sqrt(float(r)))))
        return sides

    def _boxes(self, shapes) -> np.ndarray:
        _, _, height, width = legacy_shape(self, shapes[0], "bottom 0")
        if self.img_h == 0 or self.img_w == 0:
            _, _, img_h, img_w = legacy_shape(self, shapes[1], "bottom 1")
        else:
            img_h, img_w = self.img_h, self.img_w
        if self.step_h == 0 or self.step_w == 0:
            step_w, step_h = F32(img_w) / F32(width), F32(img_h) / F32(height)
        else:
            step_w, step_h = F32(self.step_w), F32(self.step_h)
        cx = ((np.arange(width, dtype=F32) + self.offset) * step_w).astype(np.float64)[None, :, None]
        cy = ((np.arange(height, dtype=F32) + self.offset) * step_h).astype(np.float64)[:, None, None]
        sides = np.asarray(self._box_sides(), dtype=np.float64)  # float32 values, (K, 2)
        half_w, half_h = sides[:, 0] / 2.0, sides[:, 1] / 2.0
        shape = (height, width, len(sides))
        boxes = np.stack([np.broadcast_to((cx - half_w) / img_w, shape), np.broadcast_to((cy - half_h) / img_h, shape),
                          np.broadcast_to((cx + half_w) / img_w, shape), np.broadcast_to((cy + half_h) / img_h, shape)],
                         axis=-1).reshape(-1)
        if self.clip:
            boxes = np.clip(boxes, 0.0, 1.0)
        variances = np.tile(np.asarray(self.variance, dtype=np.float64), boxes.size // len(self.variance))
        return np.stack([boxes, variances])[None]

    def forward(self, *bottoms):
        shapes = tuple(tuple(b.shape) for b in bottoms[:2])
        key = (shapes, bottoms[0].dtype, bottoms[0].device)
        if key not in self._cache:
            self._cache = {key: torch.tensor(self._boxes(shapes), dtype=bottoms[0].dtype, device=bottoms[0].device)}
        return self._cache[key]

    # -- export hooks (torchcaffe.export) ----------------------------------------------------------
    def export_source(self, code):
        """The priors depend only on sizes: computed here, for the exported input size, and stored."""
        boxes = torch.tensor(self._boxes(code.bottom_shapes[:2]), dtype=torch.float32)
        return code.module(f"{code.helper('Fixed')}({tuple(boxes.shape)})", f"{code.attribute}()", value=boxes)


# ================================================================================================
# DetectionOutput
# ================================================================================================
@register_layer("DetectionOutput")
class DetectionOutput(Layer):
    """SSD's detections: decode, per-class non-maximum suppression, keep the best per image.

    For each image and each class but the background: the priors' boxes decoded from the location
    predictions (see ``code_type``; one box set shared by all classes, or one per class); the
    candidates scoring strictly above ``confidence_threshold`` sorted by score (equal scores: the
    lower prior index first), the first ``nms_param.top_k`` of them, then greedy NMS: a box is kept
    when its Jaccard overlap with every kept box is at most ``nms_threshold`` (times ``eta`` after
    each kept box while above 0.5). If more than ``keep_top_k`` boxes remain in an image, the
    ``keep_top_k`` best across classes are kept. Rows are ordered by image, then label, then score.

    Parameters: ``detection_output_param { num_classes (required) share_location (true)
    background_label_id (0; -1: none) nms_param { nms_threshold (0.3) top_k (all) eta (1) }
    code_type (CORNER) variance_encoded_in_target (false) keep_top_k (-1: all)
    confidence_threshold (unset: every score) clip (false; OpenCV's) save_output_param visualize
    visualize_threshold save_file }`` — the last four are accepted and ignored (see below).

    Shapes: loc (N, P * 4 [* num_classes without share_location]), conf (N, P * num_classes)
    (softmax scores, prior-major), prior (1, 2, P * 4) [, image] -> (1, 1, D, 7), rows
    ``[image, label, score, xmin, ymin, xmax, ymax]``. Before the first forward D is 1 (Caffe's
    Reshape); with no detection at all, D = N and row i is ``[i, -1, -1, -1, -1, -1, -1]``.

    Example::

        layer { name: "detection_out" type: "DetectionOutput" bottom: "mbox_loc"
                bottom: "mbox_conf_flatten" bottom: "mbox_priorbox" top: "detection_out"
                include { phase: TEST }
                detection_output_param { num_classes: 21 share_location: true background_label_id: 0
                  nms_param { nms_threshold: 0.45 top_k: 400 } code_type: CENTER_SIZE keep_top_k: 200
                  confidence_threshold: 0.01 } }

    Follows the fork's CPU path. Not done: ``save_output_param`` (the fork deletes and re-creates
    ``output_directory`` and writes VOC/COCO/ILSVRC result files; we never touch the file system),
    ``visualize`` (an OpenCV window). No backward (as in the fork). Where ``keep_top_k`` cuts
    between equal scores the fork's ``std::sort`` order is unspecified; we keep the (label, rank)
    order. With ``background_label_id: -1`` and ``share_location`` the fork's CPU path aborts
    (it skips decoding label -1); we decode, as its GPU path does.
    """

    origin = SSD
    min_bottoms, max_bottoms = 3, 4
    exact_tops = 1
    differentiable = False
    samples = (
        Sample("detection_output_param { num_classes: 3 keep_top_k: 1 nms_param { nms_threshold: 0.45 } }",
               bottoms=((1, 16), (1, 12), (1, 2, 16)),
               values=(None, ("uniform", 0, 1), ("uniform", 0, 1)), gradcheck=False,
               note="CORNER, keep_top_k 1: one row"),
        Sample("detection_output_param { num_classes: 3 confidence_threshold: 2 }",
               bottoms=((1, 16), (1, 12), (1, 2, 16)),
               values=(None, ("uniform", 0, 1), ("uniform", 0, 1)), gradcheck=False,
               note="nothing above the threshold: one fake row"),
        Sample("detection_output_param { num_classes: 2 share_location: false background_label_id: -1 "
               "keep_top_k: 1 nms_param { nms_threshold: 0.3 top_k: 3 eta: 0.9 } }",
               bottoms=((1, 24), (1, 6), (1, 2, 12), (1, 3, 4, 4)),
               values=(None, ("uniform", 0, 1), ("uniform", 0, 1), None), gradcheck=False,
               note="per-class boxes, no background, image bottom"),
    )

    def __init__(self, setup: LayerSetup):
        super().__init__(setup)
        p = setup.param.detection_output_param
        if not p.HasField("num_classes"):
            raise self.fail("detection_output_param num_classes is required")
        self.num_classes = p.num_classes
        self.share_location = p.share_location
        self.loc_classes = 1 if self.share_location else self.num_classes
        self.background = p.background_label_id
        self.code_type = p.code_type
        self.variance_in_target = p.variance_encoded_in_target
        self.keep_top_k = p.keep_top_k
        self.confidence_threshold = F32(p.confidence_threshold if p.HasField("confidence_threshold") else -FLT_MAX)
        nms = p.nms_param
        self.nms_threshold, self.eta = nms.nms_threshold, nms.eta
        if not self.nms_threshold >= 0:
            raise self.fail(f"nms_param nms_threshold must be non-negative, got {self.nms_threshold}")
        if not 0 < self.eta <= 1:
            raise self.fail(f"nms_param eta must be in (0, 1], got {self.eta}")
        self.top_k = nms.top_k if nms.HasField("top_k") else -1
        self.clip = p.clip
        if not p.normalized_bbox:
            raise self.fail("detection_output_param normalized_bbox: false (OpenCV's pixel-coordinate boxes) is "
                            "not implemented; SSD's priors and boxes are normalized to [0, 1]")
        self.top_shapes(setup.bottom_shapes)

    def _num_priors(self, bottom_shapes) -> int:
        return prior_count(self, bottom_shapes, self.loc_classes, self.num_classes)

    def top_shapes(self, bottom_shapes):
        self._num_priors(bottom_shapes)
        return [torch.Size((1, 1, 1, 7))]

    def forward(self, loc, conf, prior, *image):
        num = loc.shape[0]
        num_priors = self._num_priors([loc.shape, conf.shape, prior.shape])
        locs = _items(loc, num, num_priors * self.loc_classes * 4).reshape(num, num_priors, self.loc_classes, 4)
        scores = _items(conf, num, num_priors * self.num_classes).reshape(num, num_priors, self.num_classes)
        prior_boxes, prior_var = _priors(prior, num_priors)
        rows = []
        for i in range(num):
            boxes = self._decode(locs[i], prior_boxes, prior_var)
            kept = {}
            for c in range(self.num_classes):
                if c == self.background:
                    continue
                kept[c] = nms_fast(boxes[-1 if self.share_location else c], scores[i, :, c],
                                   self.confidence_threshold, self.nms_threshold, self.eta, self.top_k)
            kept = self._keep_top_k(kept, scores[i])
            for c in sorted(kept):
                b = boxes[-1 if self.share_location else c]
                rows.extend([i, c, scores[i, j, c], *b[j]] for j in kept[c])
        if not rows:
            rows = [[i, -1, -1, -1, -1, -1, -1] for i in range(num)]
        out = np.asarray(rows, dtype=np.float64).reshape(1, 1, -1, 7)
        return torch.tensor(out, dtype=loc.dtype, device=loc.device)

    def _decode(self, locs, prior_boxes, prior_var) -> dict:
        boxes = {}
        for c in range(self.loc_classes):
            label = -1 if self.share_location else c
            if not self.share_location and label == self.background:
                continue
            b = decode_boxes(self, locs[:, c], prior_boxes, prior_var, self.code_type, self.variance_in_target)
            boxes[label] = np.clip(b, F32(0), F32(1)) if self.clip else b
        return boxes

    def _keep_top_k(self, kept: dict, scores: np.ndarray) -> dict:
        total = sum(len(v) for v in kept.values())
        if self.keep_top_k <= -1 or total <= self.keep_top_k:
            return kept
        pairs = [(c, j) for c in sorted(kept) for j in kept[c]]
        values = np.asarray([scores[j, c] for c, j in pairs], dtype=F32)
        best = _descending(values)[:self.keep_top_k]
        out: dict = {}
        for k in best:
            c, j = pairs[k]
            out.setdefault(c, []).append(j)
        return out

    # -- export hooks (torchcaffe.export) ----------------------------------------------------------
    def _no_export(self, to: str):
        from ..export.common import ExportError
        return ExportError(f"{self.label}: cannot be exported to {to}: SSD's decoding, per-class NMS (top_k, eta) "
                           f"and keep_top_k run as data-dependent Python here, and ONNX's NonMaxSuppression does "
                           f"not follow the fork's rules; export the blobs it reads instead (outputs=[...] with "
                           f"its bottoms) and run the detection step on them")

    def export_onnx(self, *bottoms):
        raise self._no_export("ONNX")

    def export_source(self, code):
        raise self._no_export("PyTorch source")



def prior_count(layer: Layer, bottom_shapes, loc_classes: int, num_classes: int) -> int:
    """The number of priors bottom 2 holds (SSD's DetectionOutput and MultiBoxLoss), checked
    against the location (bottom 0) and confidence (bottom 1) predictions per image."""
    loc, conf, prior = (legacy_shape(layer, s, f"bottom {i}") for i, s in enumerate(bottom_shapes[:3]))
    if loc[0] != conf[0]:
        raise layer.fail(f"loc (bottom 0, shape {list(bottom_shapes[0])}) and conf (bottom 1, shape "
                         f"{list(bottom_shapes[1])}) must have the same number of images")
    num_priors = prior[2] // 4
    if num_priors * loc_classes * 4 != loc[1]:
        raise layer.fail(f"the {num_priors} priors of bottom 2 (shape {list(bottom_shapes[2])}) need "
                         f"{num_priors * loc_classes * 4} location values per image, bottom 0 has {loc[1]} channels")
    if num_priors * num_classes != conf[1]:
        raise layer.fail(f"the {num_priors} priors of bottom 2 need {num_priors * num_classes} confidence "
                         f"values per image ({num_classes} classes), bottom 1 has {conf[1]} channels")
    return num_priors

# ================================================================================================
# MultiBoxLoss
# ================================================================================================
class _Plan:
    """What MultiBoxLoss selected for one forward pass (constants for the gradient)."""

    def __init__(self):
        # One entry per (image, label) group of matched priors, in the fork's order.
        self.pos_image_id: list[int] = []
        self.pos_prior: list[np.ndarray] = []    # the matched priors
        self.pos_slot: list[int] = []            # the loc class slot of the group
        self.loc_target: list[np.ndarray] = []   # encoded ground truth (M, 4)
        self.loc_mask: list[np.ndarray] = []     # bp_inside: coordinates whose prediction is replaced
        self.loc_var: list[np.ndarray] = []      # encode_variance_in_target: divisors
        self.pos_label: list[np.ndarray] = []    # the class target of each matched prior
        self.negatives: list[np.ndarray] = []    # per image
        self.num_matches = 0


@register_layer("MultiBoxLoss")
class MultiBoxLoss(Layer):
    """SSD's training loss: match priors to ground truth, mine negatives, localization + confidence.

    Per image: priors (``use_prior_for_matching``) or the decoded predictions are matched to the
    ground-truth boxes — bipartite first (repeatedly the highest overlap among unmatched pairs; the
    lowest prior index, then the lowest box index wins ties), then with PER_PREDICTION every other
    prior with an overlap ``>= overlap_threshold`` takes its best box. Mining: MAX_NEGATIVE takes,
    among unmatched priors with best overlap ``< neg_overlap``, the ``int(num_pos * neg_pos_ratio)``
    with the highest confidence loss (``-log p_background``); HARD_EXAMPLE ranks every prior by
    confidence + localization loss, keeps the top ``sample_size`` (matched priors outside it are
    dropped, unmatched ones inside become negatives); NONE uses every prior. With ``nms_param``
    the candidates go through NMS first.

    ``loss = loc_weight * L_loc / n + L_conf / n`` with L_loc the Smooth-L1 (or ``0.5 * d^2``) sum
    over the matched priors' encoded offsets, L_conf the softmax (or per-class logistic) loss summed
    over positives and negatives, n the normalizer (``loss_param.normalization``: VALID = number of
    matches, BATCH_SIZE = N, FULL = N * P, NONE = 1; at least 1). A term is left out (value and
    gradient) when the prototxt's ``propagate_down`` for its bottom (loc 0, conf 1) is false.

    Parameters: ``multibox_loss_param { num_classes (required) loc_loss_type (SMOOTH_L1 | L2)
    conf_loss_type (SOFTMAX | LOGISTIC) loc_weight (1) share_location (true) match_type
    (PER_PREDICTION | BIPARTITE) overlap_threshold (0.5) use_prior_for_matching (true)
    background_label_id (0) use_difficult_gt (true) mining_type (MAX_NEGATIVE | NONE |
    HARD_EXAMPLE) neg_pos_ratio (3) neg_overlap (0.5) code_type (CORNER) encode_variance_in_target
    (false) map_object_to_agnostic (false) ignore_cross_boundary_bbox (false) bp_inside (false)
    nms_param sample_size (64) use_prior_for_nms (false) do_neg_mining (deprecated) }``,
    ``loss_param { normalization (VALID) normalize (deprecated) }``.

    Shapes: loc (N, P * 4 [* num_classes]), conf (N, P * num_classes), prior (1, 2, P * 4),
    ground truth (1, 1, G, 8) rows ``[image, label, instance, xmin, ymin, xmax, ymax, difficult]``
    (image -1: padding) -> (). Gradients reach loc and conf only.

    Example::

        layer { name: "mbox_loss" type: "MultiBoxLoss" bottom: "mbox_loc" bottom: "mbox_conf"
                bottom: "mbox_priorbox" bottom: "label" top: "mbox_loss"
                propagate_down: true propagate_down: true propagate_down: false propagate_down: false
                loss_param { normalization: VALID }
                multibox_loss_param { loc_loss_type: SMOOTH_L1 conf_loss_type: SOFTMAX loc_weight: 1.0
                  num_classes: 21 share_location: true match_type: PER_PREDICTION overlap_threshold: 0.5
                  use_prior_for_matching: true background_label_id: 0 use_difficult_gt: true
                  neg_pos_ratio: 3.0 neg_overlap: 0.5 code_type: CENTER_SIZE ignore_cross_boundary_bbox: false
                  mining_type: MAX_NEGATIVE } }

    Gradient as the fork's: the selection is constant; with ``encode_variance_in_target`` the fork
    divides the predictions by the variances but copies the gradient back *without* that factor,
    and with ``bp_inside`` the predictions of out-of-image coordinates get no gradient — both kept.
    Fork quirks kept: LOGISTIC targets start filled with the value ``background_label_id``; LOGISTIC
    without mining writes image i's targets at offset ``i * P`` instead of ``i * P * C``. Differs:
    equal mining losses are ranked by prior index (the fork's ``std::sort`` leaves them unordered);
    ``force_backward`` reaches loc and conf (the fork, a LossLayer, would refuse conf and abort
    on prior and ground truth).
    """

    origin = SSD
    exact_bottoms = 4
    exact_tops = 1
    is_loss = True
    samples = ()  # set after the class (they need the class's helpers)

    def __init__(self, setup: LayerSetup):
        super().__init__(setup)
        p = setup.param.multibox_loss_param
        if not p.HasField("num_classes"):
            raise self.fail("multibox_loss_param num_classes is required")
        if p.num_classes < 1:
            raise self.fail(f"multibox_loss_param num_classes must be at least 1, got {p.num_classes}")
        self.p = p
        self.num_classes = p.num_classes
        self.share_location = p.share_location
        self.loc_classes = 1 if self.share_location else self.num_classes
        self.background = p.background_label_id
        self.mining = p.mining_type
        if p.HasField("do_neg_mining") and p.do_neg_mining != (self.mining != MB.NONE):
            raise self.fail(f"multibox_loss_param do_neg_mining ({p.do_neg_mining}) contradicts mining_type "
                            f"({MB.MiningType.Name(self.mining)}); do_neg_mining is deprecated: remove it and set "
                            f"mining_type (NONE for no mining)")
        if self.mining != MB.NONE and not self.share_location:
            raise self.fail("multibox_loss_param mining needs share_location: true (the fork supports nothing "
                            "else); set mining_type: NONE or share_location: true")
        if p.map_object_to_agnostic and self.num_classes != 2:
            raise self.fail(f"multibox_loss_param map_object_to_agnostic needs num_classes: 2 (background and "
                            f"object), got {self.num_classes}")
        if p.conf_loss_type == MB.SOFTMAX and self.background >= self.num_classes:
            raise self.fail(f"multibox_loss_param background_label_id {self.background} must be below num_classes "
                            f"{self.num_classes} for the SOFTMAX confidence loss")
        if self.mining == MB.HARD_EXAMPLE and p.sample_size <= 0:
            raise self.fail(f"multibox_loss_param sample_size must be positive for HARD_EXAMPLE, got {p.sample_size}")
        down = list(setup.param.propagate_down) or [True, True, False, False]
        self.use_loc, self.use_conf = bool(down[0]), bool(down[1])
        loss_param = setup.param.loss_param
        self.normalization = normalization_mode(loss_param, unset=loss_param.normalization)
        self.top_shapes(setup.bottom_shapes)

    def allow_force_backward(self, bottom_index: int) -> bool:
        return bottom_index < 2

    def _num_priors(self, bottom_shapes) -> int:
        gt = legacy_shape(self, bottom_shapes[3], "bottom 3")
        num_priors = prior_count(self, bottom_shapes, self.loc_classes, self.num_classes)
        if math.prod(bottom_shapes[3]) < gt[2] * 8:
            raise self.fail(f"bottom 3 (ground truth, shape {list(bottom_shapes[3])}) must hold 8 values per box: "
                            f"(1, 1, G, 8)")
        return num_priors

    def top_shapes(self, bottom_shapes):
        self._num_priors(bottom_shapes)
        return [torch.Size(())]

    # -- the selection (no gradient) ------------------------------------------------------------
    def _ground_truth(self, gt: torch.Tensor) -> dict:
        """``GetGroundTruth``: image -> (boxes (G, 4) float32, labels (G,))."""
        num_gt = legacy_shape(self, gt.shape, "bottom 3")[2]
        rows = gt.detach().to("cpu", torch.float64).numpy().reshape(-1)[:num_gt * 8].reshape(num_gt, 8)
        out: dict = {}
        for row in rows:
            item = int(row[0])  # static_cast<int>: truncation
            if item == -1:
                continue
            label = int(row[1])
            if label == self.background:
                raise self.fail(f"ground-truth box {row.tolist()} has the background label {label}; "
                                f"background_label_id must not label an object")
            if not self.p.use_difficult_gt and row[7] != 0:
                continue
            boxes, labels = out.setdefault(item, ([], []))
            boxes.append(row[3:7].astype(F32))
            labels.append(label)
        return {k: (np.asarray(b, dtype=F32).reshape(-1, 4), np.asarray(l, dtype=np.int64))
                for k, (b, l) in out.items()}

    def _match(self, gt_boxes: np.ndarray, gt_labels: np.ndarray, boxes: np.ndarray, label: int):
        """``MatchBBox``: per prediction the index of its ground-truth box (-1 none, -2 ignored as
        crossing the image boundary) and its best overlap."""
        num = boxes.shape[0]
        index = np.full(num, -1, dtype=np.int64)
        best = np.zeros(num, dtype=F32)
        candidates = np.arange(len(gt_boxes)) if label == -1 else np.flatnonzero(gt_labels == label)
        if candidates.size == 0:
            return index, best
        if self.p.ignore_cross_boundary_bbox:
            cross = ((boxes < 0) | (boxes > 1)).any(axis=1)
            index[cross] = -2
        else:
            cross = np.zeros(num, dtype=bool)
        overlaps = jaccard(boxes, gt_boxes[candidates])
        present = (overlaps.astype(np.float64) > 1e-6) & ~cross[:, None]
        best = np.where(present, overlaps, F32(0)).max(axis=1).astype(F32)
        pool = np.ones(candidates.size, dtype=bool)
        rows = np.flatnonzero(present.any(axis=1))
        sub, sub_present = overlaps[rows], present[rows]
        while pool.any():  # bipartite: the best remaining pair, lowest (prior, box) first
            free = (index[rows] == -1)[:, None] & pool[None, :] & sub_present
            if not free.any():
                break
            flat = int(np.argmax(np.where(free, sub, -np.inf)))
            r, g = divmod(flat, candidates.size)
            index[rows[r]] = candidates[g]
            best[rows[r]] = sub[r, g]
            pool[g] = False
        if self.p.match_type == MB.PER_PREDICTION:
            free = index[rows] == -1
            ok = sub_present & (sub >= F32(self.p.overlap_threshold)) & free[:, None]
            has = ok.any(axis=1)
            pick = np.argmax(np.where(ok, sub, -np.inf), axis=1)  # the first best box
            hit = np.flatnonzero(has)
            index[rows[hit]] = candidates[pick[hit]]
            best[rows[hit]] = sub[hit, pick[hit]]
        return index, best

    def _find_matches(self, locs, prior_boxes, prior_var, gts, num) -> list[dict]:
        """``FindMatches``: per image, label -> (match indices, overlaps)."""
        p = self.p
        out = []
        for i in range(num):
            matches: dict = {}
            if i not in gts:
                out.append(matches)
                continue
            gt_boxes, gt_labels = gts[i]
            if not p.use_prior_for_matching:
                for c in range(self.loc_classes):
                    label = -1 if self.share_location else c
                    if not self.share_location and label == self.background:
                        continue
                    boxes = decode_boxes(self, locs[i, :, c], prior_boxes, prior_var, p.code_type,
                                         p.encode_variance_in_target)
                    matches[label] = self._match(gt_boxes, gt_labels, boxes, label)
            else:
                index, best = self._match(gt_boxes, gt_labels, prior_boxes, -1)
                if self.share_location:
                    matches[-1] = (index, best)
                else:
                    for c in range(self.loc_classes):
                        if c == self.background:
                            continue
                        mine = np.where(index > -1, gt_labels[np.maximum(index, 0)] == c, False)
                        matches[c] = (np.where(mine, index, -1), best.copy())
            out.append(matches)
        return out

    def _prior_labels(self, matches: dict, gt_labels) -> np.ndarray:
        """The class each prior is trained for: its first match's label, else the background."""
        num = next(iter(matches.values()))[0].size if matches else 0
        labels = np.full(num, self.background, dtype=np.int64)
        done = np.zeros(num, dtype=bool)
        for label in sorted(matches):
            index = matches[label][0]
            hit = (index > -1) & ~done
            labels[hit] = gt_labels[index[hit]]
            done |= hit
        return labels

    def _check_labels(self, labels: np.ndarray, what: str) -> None:
        bad = (labels < 0) | (labels >= self.num_classes)
        if bad.any():
            raise self.fail(f"{what} label {int(labels[bad][0])} is out of range [0, {self.num_classes - 1}] "
                            f"(num_classes {self.num_classes})")

    def _mining_conf_loss(self, scores: np.ndarray, matches: dict, gt_labels) -> np.ndarray:
        """``ComputeConfLoss``: each prior's confidence loss for its target class."""
        num_priors = scores.shape[0]
        labels = self._prior_labels(matches, gt_labels) if matches else np.full(num_priors, self.background)
        if self.background >= self.num_classes:
            raise self.fail(f"multibox_loss_param background_label_id {self.background} must be below num_classes "
                            f"{self.num_classes} for mining")
        self._check_labels(labels[labels != self.background], "ground-truth")
        x = scores
        with np.errstate(over="ignore", divide="ignore"):
            if self.p.conf_loss_type == MB.SOFTMAX:
                top = x.max(axis=1)
                total = np.exp(x - top[:, None]).sum(axis=1)
                prob = np.exp(x[np.arange(num_priors), labels] - top) / total
                loss = -np.log(np.maximum(prob, x.dtype.type(FLT_MIN)))
            else:
                target = (np.arange(self.num_classes)[None, :] == labels[:, None]).astype(x.dtype)
                pos = (x >= 0).astype(x.dtype)
                loss = -(x * (target - pos) - np.log(1 + np.exp(x - 2 * x * pos))).sum(axis=1)
        return loss.astype(F32)

    def _encode_positives(self, i, label, priors, locs, prior_boxes, prior_var, gts):
        """``EncodeLocPrediction`` for one (image, label) group: targets, replaced coordinates, divisors."""
        p = self.p
        gt_boxes = gts[i][0]
        target = encode_boxes(self, gt_boxes[priors[1]], prior_boxes[priors[0]], prior_var[priors[0]],
                              p.code_type, p.encode_variance_in_target)
        slot = 0 if self.share_location else label
        pred = locs[i, priors[0], slot]
        mask = np.zeros_like(target, dtype=bool)
        if p.bp_inside:
            where = prior_boxes[priors[0]]
            if not p.use_prior_for_matching:
                where = decode_boxes(self, pred, prior_boxes[priors[0]], prior_var[priors[0]], p.code_type,
                                     p.encode_variance_in_target)
            mask = (where < 0) | (where > 1)
            pred = np.where(mask, target, pred)
        var = None
        if p.encode_variance_in_target:
            var = prior_var[priors[0]]
            _positive_variances(self, var)
        return target, mask, var, pred

    def _mining_loc_loss(self, num, num_priors, matches, locs, prior_boxes, prior_var, gts) -> np.ndarray:
        """``ComputeLocLoss``: the localization loss of each matched prior (0 elsewhere)."""
        loss = np.zeros((num, num_priors), dtype=F32)
        for i in range(num):
            for label in sorted(matches[i]):
                index = matches[i][label][0]
                js = np.flatnonzero(index > -1)
                if js.size == 0:
                    continue
                target, _, var, pred = self._encode_positives(i, label, (js, index[js]), locs, prior_boxes,
                                                              prior_var, gts)
                d = (pred / var - target / var) if var is not None else pred - target
                a = np.abs(d)
                if self.p.loc_loss_type == MB.SMOOTH_L1:
                    per = np.where(a < 1, 0.5 * d * d, a - 0.5)
                else:
                    per = 0.5 * d * d
                loss[i, js] = per.sum(axis=1)
        return loss

    def _mine(self, scores, locs, prior_boxes, prior_var, gts, matches, num, num_priors):
        """``MineHardExamples``: updates ``matches`` in place; returns (num_matches, negatives)."""
        p = self.p
        num_matches = sum(int((m[0] > -1).sum()) for image in matches for m in image.values())
        negatives = [np.zeros(0, dtype=np.int64) for _ in range(num)]
        if self.mining == MB.NONE:
            return num_matches, negatives
        loss = np.stack([self._mining_conf_loss(scores[i], matches[i], gts[i][1] if i in gts else None)
                         for i in range(num)])
        if self.mining == MB.HARD_EXAMPLE:
            loc_loss = self._mining_loc_loss(num, num_priors, matches, locs, prior_boxes, prior_var, gts)
            loss = (loss + loc_loss).astype(F32)
        has_nms = p.HasField("nms_param")
        nms_threshold = p.nms_param.nms_threshold if has_nms else 0.0
        top_k = p.nms_param.top_k if has_nms else -1
        for i in range(num):
            picked = []
            for label in sorted(matches[i]):
                index, overlap = matches[i][label]
                if self.mining == MB.MAX_NEGATIVE:
                    eligible = np.flatnonzero((index == -1) & (overlap < F32(p.neg_overlap)))
                    num_pos = int((index > -1).sum())
                    num_sel = min(int(F32(num_pos) * F32(p.neg_pos_ratio)), eligible.size)
                else:
                    eligible = np.arange(index.size)
                    num_sel = min(p.sample_size, eligible.size)
                if has_nms and nms_threshold > 0:
                    if p.use_prior_for_nms:
                        boxes = prior_boxes[eligible]
                    else:
                        boxes = decode_boxes(self, locs[i, :, 0], prior_boxes, prior_var, p.code_type,
                                             p.encode_variance_in_target)[eligible]
                    kept = nms_classic(boxes, loss[i, eligible], nms_threshold, top_k)
                    chosen = eligible[np.asarray(kept[:min(len(kept), num_sel)], dtype=np.int64)]
                else:
                    chosen = eligible[_descending(loss[i, eligible])[:num_sel]]
                selected = np.zeros(index.size, dtype=bool)
                selected[chosen] = True
                original = index.copy()
                if self.mining == MB.HARD_EXAMPLE:
                    drop = (original > -1) & ~selected
                    num_matches -= int(drop.sum())
                    index[drop] = -1
                picked.append(np.flatnonzero((original == -1) & selected))
            if picked:
                negatives[i] = np.concatenate(picked)
        return num_matches, negatives

    def _plan(self, loc, conf, prior, gt) -> _Plan:
        num = loc.shape[0]
        num_priors = self._num_priors([loc.shape, conf.shape, prior.shape, gt.shape])
        locs = _items(loc, num, num_priors * self.loc_classes * 4).reshape(num, num_priors, self.loc_classes, 4)
        score_dtype = torch.float64 if conf.dtype == torch.float64 else torch.float32
        scores = _items(conf, num, num_priors * self.num_classes, score_dtype).reshape(num, num_priors,
                                                                                       self.num_classes)
        prior_boxes, prior_var = _priors(prior, num_priors)
        gts = self._ground_truth(gt)
        matches = self._find_matches(locs, prior_boxes, prior_var, gts, num)
        plan = _Plan()
        plan.num_matches, plan.negatives = self._mine(scores, locs, prior_boxes, prior_var, gts, matches, num,
                                                      num_priors)
        for i in range(num):
            for label in sorted(matches[i]):
                index = matches[i][label][0]
                js = np.flatnonzero(index > -1)
                if js.size == 0:
                    continue
                target, mask, var, _ = self._encode_positives(i, label, (js, index[js]), locs, prior_boxes,
                                                              prior_var, gts)
                plan.pos_image_id.append(i)
                plan.pos_prior.append(js)
                plan.pos_slot.append(0 if self.share_location else label)
                plan.loc_target.append(target)
                plan.loc_mask.append(mask)
                plan.loc_var.append(var)
                labels = gts[i][1][index[js]]
                if self.p.map_object_to_agnostic:
                    labels = np.full_like(labels, self.background + 1)
                plan.pos_label.append(labels)
        return plan

    # -- the loss (autograd) ----------------------------------------------------------------------
    def _loc_loss(self, loc, plan: _Plan, num_priors):
        if not plan.pos_prior:
            return None
        view = loc.reshape(-1)[:loc.shape[0] * num_priors * self.loc_classes * 4].reshape(
            loc.shape[0], num_priors, self.loc_classes, 4)
        terms = []
        for i, js, slot, target, mask, var in zip(plan.pos_image_id, plan.pos_prior, plan.pos_slot, plan.loc_target,
                                                  plan.loc_mask, plan.loc_var):
            as_t = lambda a: torch.as_tensor(a, device=loc.device)  # noqa: E731
            pred = view[i, as_t(js), slot]
            goal = as_t(target).to(loc.dtype)
            if mask.any():
                pred = torch.where(as_t(mask), goal, pred)
            if var is not None:  # the fork divides the prediction, then copies its diff back undivided
                pred = _ValueWithIdentityGrad.apply(pred, pred.detach() / as_t(var).to(loc.dtype))
                goal = goal / as_t(var).to(loc.dtype)
            d = pred - goal
            terms.append(smooth_l1(d).sum() if self.p.loc_loss_type == MB.SMOOTH_L1 else 0.5 * (d * d).sum())
        return torch.stack(terms).sum()

    def _conf_loss(self, conf, plan: _Plan, num_priors):
        num, classes = conf.shape[0], self.num_classes
        view = conf.reshape(-1)[:num * num_priors * classes]
        softmax = self.p.conf_loss_type == MB.SOFTMAX
        dev = conf.device
        if self.mining != MB.NONE:
            images, priors, labels, is_pos = [], [], [], []
            groups = {}
            for i, js, lab in zip(plan.pos_image_id, plan.pos_prior, plan.pos_label):
                groups.setdefault(i, []).append((js, lab))
            for i in range(num):
                for js, lab in groups.get(i, []):
                    images.append(np.full(js.size, i)), priors.append(js), labels.append(lab)
                    is_pos.append(np.ones(js.size, dtype=bool))
                neg = plan.negatives[i]
                images.append(np.full(neg.size, i)), priors.append(neg)
                labels.append(np.full(neg.size, self.background)), is_pos.append(np.zeros(neg.size, dtype=bool))
            rows_index = np.concatenate(images) * num_priors + np.concatenate(priors) if images else np.zeros(0, int)
            if rows_index.size == 0:
                return None
            rows = view.reshape(num * num_priors, classes)[torch.as_tensor(rows_index, device=dev)]
            labels, is_pos = np.concatenate(labels), np.concatenate(is_pos)
            self._check_labels(labels[is_pos], "ground-truth")
            if softmax:
                return self._softmax_loss(rows, labels)
            target = np.full((rows_index.size, classes), float(self.background))
            target[np.flatnonzero(is_pos), labels[is_pos]] = 1
            if 0 <= self.background < classes:
                target[np.flatnonzero(~is_pos), self.background] = 1
            return F.binary_cross_entropy_with_logits(rows, torch.as_tensor(target, dtype=conf.dtype, device=dev),
                                                      reduction="sum")
        if conf.numel() != num * num_priors * classes:
            raise self.fail(f"conf (bottom 1, shape {list(conf.shape)}) must hold exactly {num * num_priors * classes} "
                            f"values (N * P * num_classes) when mining_type is NONE")
        if softmax:
            labels = np.full(num * num_priors, self.background, dtype=np.int64)
            for i, js, lab in zip(plan.pos_image_id, plan.pos_prior, plan.pos_label):
                labels[i * num_priors + js] = lab
            return self._softmax_loss(view.reshape(num * num_priors, classes), labels)
        target = np.full(num * num_priors * classes, float(self.background))
        for i, js, lab in zip(plan.pos_image_id, plan.pos_prior, plan.pos_label):
            self._check_labels(lab, "ground-truth")
            target[i * num_priors + js * classes + lab] = 1  # the fork's offset: i * P, not i * P * C
        return F.binary_cross_entropy_with_logits(view, torch.as_tensor(target, dtype=conf.dtype, device=dev),
                                                  reduction="sum")

    def _softmax_loss(self, rows, labels: np.ndarray):
        self._check_labels(labels, "confidence target")
        index = torch.as_tensor(labels, device=rows.device).unsqueeze(1)
        picked = F.log_softmax(rows, dim=1).gather(1, index).squeeze(1)
        return -floor_keep_grad(picked, math.log(FLT_MIN)).sum()

    def _normalizer(self, num, num_priors, num_matches) -> int:
        n = {Norm.FULL: num * num_priors, Norm.VALID: num_matches, Norm.BATCH_SIZE: num, Norm.NONE: 1}[
            self.normalization]
        return max(1, n)

    def forward(self, loc, conf, prior, gt):
        plan = self._plan(loc, conf, prior, gt)
        num_priors = legacy_shape(self, prior.shape, "bottom 2")[2] // 4
        normalizer = self._normalizer(loc.shape[0], num_priors, plan.num_matches)
        total = loc.new_zeros(())
        if self.use_loc:
            loc_loss = self._loc_loss(loc, plan, num_priors)
            if loc_loss is not None:
                total = total + self.p.loc_weight * loc_loss / normalizer
        if self.use_conf:
            conf_loss = self._conf_loss(conf, plan, num_priors)
            if conf_loss is not None:
                total = total + conf_loss / normalizer
        return total


_MB = "multibox_loss_param { num_classes: 4 background_label_id: 0 "
# Prior and ground-truth values are drawn from {1, 2, 3} (the generic harness draws every value of
# a non-differentiable bottom from one list): images 1..3, labels 1..3, "difficult" set, and boxes
# on a 3x3 grid, valid (x0 < x1, y0 < y1) one time in nine, overlapping 1/4, 1/2 or fully. The
# shapes are chosen so that each sample's draw has matches (and negatives when it mines).
_GRID = ("choice_int", 1.0, 2.0, 3.0)


def _mb_sample(params: str, num_priors: int, num_gt: int, note: str, loc_classes: int = 1, classes: int = 4):
    return Sample(params, bottoms=((4, num_priors * 4 * loc_classes), (4, num_priors * classes),
                                   (1, 2, num_priors * 4), (1, 1, num_gt, 8)),
                  values=(None, None, _GRID, _GRID), note=note)


MultiBoxLoss.samples = (
    _mb_sample(_MB + "code_type: CENTER_SIZE }", 12, 16, "defaults: MAX_NEGATIVE, SMOOTH_L1, SOFTMAX, VALID"),
    _mb_sample(_MB + "code_type: CORNER mining_type: NONE loc_loss_type: L2 loc_weight: 0.7 }", 10, 20,
               "no mining, L2, loc_weight"),
    _mb_sample(_MB + "code_type: CORNER_SIZE mining_type: HARD_EXAMPLE sample_size: 5 conf_loss_type: LOGISTIC } "
               "loss_param { normalization: BATCH_SIZE }", 9, 20, "HARD_EXAMPLE, LOGISTIC, BATCH_SIZE"),
    _mb_sample(_MB + "code_type: CORNER share_location: false mining_type: NONE } loss_param { normalization: FULL }",
               5, 16, "one box per class, FULL", loc_classes=4),
    _mb_sample(_MB + "code_type: CORNER use_prior_for_matching: false match_type: BIPARTITE }", 12, 16,
               "matching the decoded predictions, BIPARTITE"),
    _mb_sample(_MB + "code_type: CENTER_SIZE mining_type: NONE conf_loss_type: LOGISTIC }", 10, 20,
               "LOGISTIC without mining (the fork's target offsets)"),
    _mb_sample(_MB + "code_type: CORNER nms_param { nms_threshold: 0.5 top_k: 20 } neg_pos_ratio: 2 }", 10, 20,
               "mining through NMS"),
    _mb_sample("multibox_loss_param { num_classes: 2 map_object_to_agnostic: true mining_type: NONE "
               "code_type: CORNER } propagate_down: true propagate_down: false propagate_down: false "
               "propagate_down: false", 9, 20, "agnostic objects; conf term left out by propagate_down",
               classes=2),
)


# ================================================================================================
# SmoothL1Loss (Fast/Faster R-CNN, and SSD's modified copy)
# ================================================================================================
class _SSDSmoothL1(torch.autograd.Function):
    """SSD's weighted Smooth L1: forward ``sum(smoothL1(w * (a - b))) / N``; backward
    ``+-f'(w * (a - b)) / N`` — without the chain-rule factor w (the fork's backward)."""

    @staticmethod
    def forward(ctx, a, b, w):
        d = (a - b) * w
        ctx.save_for_backward(d)
        return smooth_l1(d).sum() / a.shape[0]

    @staticmethod
    def backward(ctx, grad):
        (d,) = ctx.saved_tensors
        g = torch.where(d.abs() < 1, d, torch.sign(d)) * (grad / d.shape[0])
        return g, -g, None


@register_layer("SmoothL1Loss")
class SmoothL1Loss(Layer):
    """Smooth L1 (Huber) loss of Fast/Faster R-CNN, or SSD's weighted variant: by bottom count.

    Faster R-CNN (2 or 4 bottoms, or any ``smooth_l1_loss_param``): with ``d = w_in * (a - b)``,
    ``loss = sum(w_out * f(d)) / N``, ``f(x) = 0.5 sigma^2 x^2`` if ``|x| < 1 / sigma^2`` else
    ``|x| - 0.5 / sigma^2``; the gradient is the exact derivative (``+-w_in w_out f'(d) / N`` for
    a and b). SSD (3 bottoms): ``d = w * (a - b)``, ``loss = sum(f(d)) / N`` with sigma 1, and the
    fork's gradient ``+-f'(d) / N`` leaves the factor w out (equal to the exact one for 0/1
    weights). With 2 bottoms the two forks agree. N is bottom 0's first dimension. Both forks
    back-propagate into a and b (b with the opposite sign) and allow ``force_backward`` on every
    bottom; the weights get no gradient.

    Parameters: ``smooth_l1_loss_param { sigma (1) }`` (Faster R-CNN only).

    Shapes: a, b [, w | , w_in, w_out] with equal channels/height/width (at most 4 axes) -> ().

    Example::

        layer { name: "loss_bbox" type: "SmoothL1Loss" bottom: "bbox_pred" bottom: "bbox_targets"
                bottom: "bbox_inside_weights" bottom: "bbox_outside_weights" top: "loss_bbox"
                loss_weight: 1 smooth_l1_loss_param { sigma: 3.0 } }

    Differs from torch: ``F.smooth_l1_loss(beta=1/sigma^2)`` divides the quadratic part by beta
    and averages over elements; Caffe's f is ``sigma^2``-scaled (``F.huber_loss`` with
    ``delta = 1/sigma^2``, times sigma^2) and divides by N only.
    """

    origin = "Fast/Faster R-CNN (rbgirshick/caffe-fast-rcnn); SSD's 3-bottom variant (weiliu89/caffe)"
    min_bottoms, max_bottoms = 2, 4
    exact_tops = 1
    is_loss = True
    WEIGHTS01 = ("choice_int", 0.0, 1.0)
    samples = (
        Sample("", bottoms=((4, 3), (4, 3)), values=(("uniform", -2, 2), ("uniform", -2, 2)), note="2 bottoms"),
        Sample("smooth_l1_loss_param { sigma: 3 }", bottoms=((2, 4, 2, 2), (2, 4, 2, 2), (2, 4, 2, 2), (2, 4, 2, 2)),
               values=(("uniform", -1, 1), ("uniform", -1, 1), ("choice_int", 0.0, 0.5, 1.0, 2.0),
                       ("choice_int", 0.0, 0.25, 1.0, 3.0)),
               note="Faster R-CNN: sigma, inside/outside weights (exact gradient; weights are constants)"),
        Sample("", bottoms=((1, 8), (1, 8), (1, 8)), values=(("uniform", -3, 3), None, WEIGHTS01),
               note="SSD: 0/1 weights (its gradient is exact there)"),
        Sample("", bottoms=((3, 2, 2), (3, 2, 2), (3, 2, 2)), values=(None, None, ("choice_int", 2.0, 0.5)),
               gradcheck=False, note="SSD: other weights: the fork's gradient leaves w out"),
        Sample("smooth_l1_loss_param { sigma: 0.5 }", bottoms=((3, 5), (3, 5)),
               values=(("uniform", -9, 9), ("uniform", -9, 9)), note="sigma < 1: wide quadratic zone"),
    )

    def __init__(self, setup: LayerSetup):
        super().__init__(setup)
        count = len(setup.bottom_shapes)
        has_param = setup.param.HasField("smooth_l1_loss_param")
        self.ssd = count == 3
        if self.ssd and has_param:
            raise self.fail("3 bottoms select SSD's SmoothL1Loss (prediction, target, weights), which has no "
                            "smooth_l1_loss_param; for Faster R-CNN's sigma give 2 or 4 bottoms (prediction, target, "
                            "inside weights, outside weights)")
        sigma = setup.param.smooth_l1_loss_param.sigma
        self.sigma2 = float(F32(sigma) * F32(sigma))
        self.top_shapes(setup.bottom_shapes)

    def allow_force_backward(self, bottom_index: int) -> bool:
        return True

    def top_shapes(self, bottom_shapes):
        a = legacy_shape(self, bottom_shapes[0], "bottom 0")
        for i, shape in enumerate(bottom_shapes[1:], start=1):
            b = legacy_shape(self, shape, f"bottom {i}")
            if i == 1 and a[0] != b[0]:
                raise self.fail(f"bottom 0 (shape {list(bottom_shapes[0])}) and bottom 1 (shape {list(shape)}) must "
                                f"have the same first dimension (the batch size)")
            if a[1:] != b[1:]:
                raise self.fail(f"bottom {i} (shape {list(shape)}) must have the channels, height and width of "
                                f"bottom 0 (shape {list(bottom_shapes[0])})")
        return [torch.Size(())]

    def forward(self, a, b, *weights):
        b = b.reshape(a.shape)
        if self.ssd:
            return _SSDSmoothL1.apply(a, b, weights[0].detach().reshape(a.shape))
        d = a - b
        if weights:
            d = d * weights[0].detach().reshape(a.shape)
        errors = smooth_l1(d, self.sigma2)
        if weights:
            errors = errors * weights[1].detach().reshape(a.shape)
        return errors.sum() / a.shape[0]
