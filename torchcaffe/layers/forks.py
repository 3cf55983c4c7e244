"""Layers of the segmentation and region-based detection forks.

* ``ROIPooling`` — Fast/Faster R-CNN (rbgirshick/caffe-fast-rcnn): max pooling over regions.
* ``PSROIPooling`` — R-FCN (daijifeng001/caffe-rfcn): position-sensitive average pooling.
* ``Interp`` — DeepLab v2 (deeplab-public-ver2; PSPNet ships the same layer): align-corners
  bilinear resizing, with cropping.
* ``BN`` — one type string, two forks: PSPNet's batch normalization (hszhao/PSPNet, 4 blobs) and
  SegNet's (alexgkendall/caffe-segnet, 2 blobs); the parameters decide which (see :class:`BN`).
* ``Upsample`` — one type string, two meanings: SegNet/ENet max-unpooling (2 bottoms) and the
  YOLOv3 ports' nearest-neighbour upsampling (1 bottom).
* ``SegAccuracy``, ``DenseCRF``, ``MatWrite`` — DeepLab v2's evaluation, CRF post-processing and
  MAT-file dump layers (DeepLab v1's ``SEG_ACCURACY``, ``DENSE_CRF``, ``MAT_WRITE`` upgrade to them).

DeepLab v1's ``hole`` convolution field lives in ``vision.py`` and SegNet's ``class_weighting``
in ``loss.py``. Each layer follows its fork's own source; where the fork has undefined behaviour
(indices out of range, reads past a plane) we refuse with an error and say so in the docstring and
in ``docs/forks/segmentation_and_rcnn.md``.
"""
from __future__ import annotations

import math
import os
import struct
import tempfile
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from ..proto import caffe_pb2
from .base import TEST, TRAIN, Layer, LayerSetup, Sample
from .registry import register_layer

FLT_MAX = float(np.finfo(np.float32).max)  # Caffe's starting value for a running maximum
FLT_MIN = float(np.finfo(np.float32).tiny)  # DenseCRF floors probabilities here before the log
_ELEMENT_BUDGET = 1 << 22  # elements per chunk when gathering pooling windows


def _c_round(x: torch.Tensor) -> torch.Tensor:
    """C's ``round``: halves away from zero (``torch.round`` rounds them to even)."""
    whole = torch.trunc(x)
    return whole + torch.sign(x) * ((x - whole).abs() >= 0.5).to(x.dtype)


def _div(x: torch.Tensor, divisor) -> torch.Tensor:
    """``x / divisor`` rounded as C rounds it: CUDA kernels turn a division by a Python scalar into a
    multiplication by its reciprocal (7 * (1/7) < 1), which moves floor/ceil bin edges."""
    return x / torch.full_like(x, divisor)


def _legacy_4d(layer: Layer, shape, what: str) -> tuple[int, int, int, int]:
    """A bottom read through Caffe's num/channels/height/width: exactly 4 axes here."""
    if len(shape) != 4:
        raise layer.fail(f"{what} must have 4 axes (N, C, H, W), got shape {list(shape)}")
    return tuple(int(d) for d in shape)


def _check_rois(layer: Layer, shape) -> int:
    """The R x 5 ROI blob ``[batch_index, x1, y1, x2, y2]`` (channels*height*width must be 5)."""
    if len(shape) < 1 or len(shape) > 4 or math.prod(shape[1:]) != 5:
        raise layer.fail(f"bottom 1 (the ROIs) must hold 5 values per ROI [batch_index x1 y1 x2 y2], "
                         f"shape (R, 5); got shape {list(shape)}")
    return int(shape[0])


def _check_batch_index(layer: Layer, batch: torch.Tensor, num: int) -> None:
    bad = (batch < 0) | (batch >= num)
    if bool(bad.any()):
        raise layer.fail(f"ROI batch index {int(batch[bad][0])} is out of range: bottom 0 holds {num} "
                         f"image(s); the first ROI value must be in [0, {num - 1}]")


def _bin_windows(hstart, hend, wstart, wend):
    """Every feature-map position of every bin, padded to the largest bin.

    ``hstart/hend`` are (R, PH) and ``wstart/wend`` (R, PW) integer bounds (end excluded). Returns
    the rows (R, PH, kh) and columns (R, PW, kw) of each bin's window, the mask (R, PH, PW, kh, kw)
    of the positions inside the bin, and kh, kw; flattened, ``(kh, kw)`` runs in the fork's scan
    order (row by row).
    """
    kh = int((hend - hstart).clamp(min=0).max()) if hstart.numel() else 0
    kw = int((wend - wstart).clamp(min=0).max()) if wstart.numel() else 0
    rows = hstart.unsqueeze(-1) + torch.arange(kh, device=hstart.device)      # (R, PH, kh)
    cols = wstart.unsqueeze(-1) + torch.arange(kw, device=wstart.device)      # (R, PW, kw)
    valid = (rows < hend.unsqueeze(-1))[:, :, None, :, None] & (cols < wend.unsqueeze(-1))[:, None, :, None, :]
    return rows, cols, valid, kh, kw


# ------------------------------------------------------------------------------------------------
# ROIPooling
# ------------------------------------------------------------------------------------------------
@register_layer("ROIPooling")
class ROIPooling(Layer):
    """Max pooling of each region of interest into a fixed ``pooled_h x pooled_w`` grid.

    For ROI ``[b, x1, y1, x2, y2]`` (image coordinates) the feature-map box is
    ``xs = round(x1 * spatial_scale)``, ``xe = round(x2 * spatial_scale)`` (C ``round``, halves away
    from zero), both ends included: width ``max(xe - xs + 1, 1)``, likewise in y. With
    ``bin_w = width / pooled_w`` (in the blob's float type), bin ``pw`` spans columns
    ``[floor(pw * bin_w), ceil((pw + 1) * bin_w)) + xs`` clipped to ``[0, W]``, bin ``ph`` likewise;
    ``top[r, c, ph, pw]`` is the maximum of ``features[b, c]`` over the bin, 0 for an empty bin.

    The maximum is the fork's running ``>`` from ``-FLT_MAX`` in scan order (rows, then columns):
    the first maximal position wins and takes the whole gradient (summed over every bin and ROI
    that picked it); a bin whose values are all ``<= -FLT_MAX`` gives ``-FLT_MAX`` and no gradient.
    ROIs get no gradient.

    Parameters: ``roi_pooling_param { pooled_h (0, must be > 0) pooled_w (0, must be > 0)
    spatial_scale (1) }``.
    Shapes: features ``(N, C, H, W)``, ROIs ``(R, 5)`` -> ``(R, C, pooled_h, pooled_w)``.

    Example::

        layer { name: "roi_pool5" type: "ROIPooling" bottom: "conv5_3" bottom: "rois" top: "pool5"
                roi_pooling_param { pooled_w: 7 pooled_h: 7 spatial_scale: 0.0625 } }

    Differs from torch: torch itself has no ROI pooling (``torchvision.ops.roi_pool`` is a port of
    this layer, outside torch); ``adaptive_max_pool2d`` on a crop has other bins (no inclusive end,
    no rounding of the box) and splits no ties the fork's way. A batch index outside the batch is
    an error here (the fork reads out of bounds).
    """

    origin = "Fast R-CNN (rbgirshick/caffe-fast-rcnn)"
    exact_bottoms = 2
    exact_tops = 1
    samples = (
        Sample("roi_pooling_param { pooled_h: 2 pooled_w: 3 spatial_scale: 2 }", bottoms=((3, 2, 5, 6), (3, 5)),
               values=(None, ("choice_int", 0.0, 0.75, 1.5, 2.25, 2.9)),
               note="batch index = trunc(value); corners round half away (0.75 * 2 = 1.5 -> 2); malformed ROIs"),
        Sample("roi_pooling_param { pooled_h: 3 pooled_w: 2 spatial_scale: 4 }", bottoms=((1, 3, 4, 5), (2, 5)),
               values=(None, ("choice_int", 0.0, 0.5, 0.9)), note="batch 1, more bins than rows: overlapping bins"),
        Sample("roi_pooling_param { pooled_h: 2 pooled_w: 2 spatial_scale: 3 }", bottoms=((2, 2, 3, 3), (3, 5)),
               values=(None, ("choice_int", 0.0, 1.0, 1.9)),
               note="ROIs partly or wholly outside: clipped, empty bins"),
        Sample("roi_pooling_param { pooled_h: 2 pooled_w: 2 spatial_scale: 4 }", bottoms=((1, 1, 3, 3), (2, 5)),
               values=(("choice", -1.0, 0.0, 1.0), ("choice_int", 0.0, 0.4, 0.6)), gradcheck=False,
               note="ties: the first maximum in scan order wins"),
    )

    def __init__(self, setup: LayerSetup):
        super().__init__(setup)
        p = setup.param.roi_pooling_param
        if p.pooled_h <= 0 or p.pooled_w <= 0:
            raise self.fail(f"roi_pooling_param pooled_h and pooled_w must be > 0, got pooled_h: {p.pooled_h} "
                            f"pooled_w: {p.pooled_w}")
        self.pooled = (int(p.pooled_h), int(p.pooled_w))
        self.spatial_scale = p.spatial_scale
        self.top_shapes(setup.bottom_shapes)

    def top_shapes(self, bottom_shapes):
        _, c, _, _ = _legacy_4d(self, bottom_shapes[0], "bottom 0 (the features)")
        return [torch.Size((_check_rois(self, bottom_shapes[1]), c) + self.pooled)]

    def _boxes(self, rois: torch.Tensor, height: int, width: int):
        """Per ROI the bins' [start, end) rows (R, PH) and columns (R, PW), in the fork's arithmetic."""
        scale = torch.tensor(self.spatial_scale, dtype=rois.dtype, device=rois.device)
        start = _c_round(rois[:, 1:3] * scale).long()       # (xs, ys)
        end = _c_round(rois[:, 3:5] * scale).long()         # (xe, ye)
        size = (end - start + 1).clamp(min=1)               # malformed ROIs are 1 x 1
        out = []
        for axis, pooled, limit in ((1, self.pooled[0], height), (0, self.pooled[1], width)):
            bin_size = _div(size[:, axis].to(rois.dtype), pooled)
            k = torch.arange(pooled, dtype=rois.dtype, device=rois.device)
            lo = torch.floor(k * bin_size[:, None]).long() + start[:, axis, None]
            hi = torch.ceil((k + 1) * bin_size[:, None]).long() + start[:, axis, None]
            out += [lo.clamp(0, limit), hi.clamp(0, limit)]
        return out  # hstart, hend, wstart, wend

    def forward(self, x, rois):
        n, c, h, w = x.shape
        r = rois.shape[0]
        ph, pw = self.pooled
        with torch.no_grad():
            rois = rois.detach().reshape(r, 5)
            batch = rois[:, 0].long()
            _check_batch_index(self, batch, n)
            hstart, hend, wstart, wend = self._boxes(rois, h, w)
            source = x.detach().reshape(-1)
            index = torch.zeros((r, c, ph, pw), dtype=torch.long, device=x.device)
            fill = torch.zeros((r, c, ph, pw), dtype=x.dtype, device=x.device)
            found = torch.zeros((r, c, ph, pw), dtype=torch.bool, device=x.device)
            rows, cols, valid, kh, kw = _bin_windows(hstart, hend, wstart, wend)
            chunk = max(1, _ELEMENT_BUDGET // max(1, c * ph * pw * kh * kw))
            channel = torch.arange(c, device=x.device).view(1, c, 1, 1, 1)
            for lo in range(0, r if kh * kw else 0, chunk):
                sl = slice(lo, lo + chunk)
                # positions past a bin's end are masked below; clamp them to stay inside the plane
                spatial = (rows[sl].clamp(max=h - 1)[:, :, None, :, None] * w
                           + cols[sl].clamp(max=w - 1)[:, None, :, None, :])
                spatial = spatial.reshape(spatial.shape[0], 1, ph, pw, kh * kw)
                flat = (batch[sl].view(-1, 1, 1, 1, 1) * c + channel) * (h * w) + spatial
                ok = valid[sl].reshape(-1, 1, ph, pw, kh * kw)
                values = source[flat].masked_fill(~ok, -math.inf)
                best, k = values.max(dim=-1)  # the first maximum, as the fork's strict '>'
                index[sl] = flat.gather(-1, k.unsqueeze(-1)).squeeze(-1)
                hit = best > -FLT_MAX
                found[sl] = hit
                fill[sl] = torch.where(ok.any(-1).expand_as(hit), -FLT_MAX, 0.0).to(x.dtype)
        top = x.reshape(-1)[index]
        return torch.where(found, top, fill)

    # -- export hooks (torchcaffe.export) ----------------------------------------------------------
    def export_onnx(self, x, rois):
        """ONNX's MaxRoiPool is the fork's ROI pooling (onnxruntime rounds as the fork does)."""
        from ..export.onnx_ops import as_onnx_node
        return as_onnx_node("MaxRoiPool", lambda: self.forward(x, rois), x, rois.reshape(rois.shape[0], 5),
                            pooled_shape_i=list(self.pooled), spatial_scale_f=self.spatial_scale)

    def export_source(self, code):
        x, rois = code.bottoms
        helper = code.helper("caffe_roi_pool")
        return code.line(f"{helper}({x}, {rois}, {self.pooled[0]}, {self.pooled[1]}, "
                         f"{code.number(self.spatial_scale)})")


# ------------------------------------------------------------------------------------------------
# PSROIPooling
# ------------------------------------------------------------------------------------------------
@register_layer("PSROIPooling")
class PSROIPooling(Layer):
    """Position-sensitive ROI average pooling (R-FCN).

    For ROI ``[b, x1, y1, x2, y2]``: ``xs = round(x1) * spatial_scale``,
    ``xe = (round(x2) + 1) * spatial_scale`` (C ``round``, then float arithmetic), width
    ``max(xe - xs, 0.1)``, ``bin_w = width / group_size``; bin ``pw`` spans columns
    ``[floor(pw * bin_w + xs), ceil((pw + 1) * bin_w + xs))`` clipped to ``[0, W]``, likewise in y.
    ``top[r, o, ph, pw]`` is the mean of channel ``(o * group_size + ph) * group_size + pw`` of image
    ``b`` over that bin (0 for an empty bin). The gradient spreads ``1 / area`` of each top diff over
    its bin; ROIs get none.

    Parameters: ``psroi_pooling_param { spatial_scale (required) output_dim (required, > 0)
    group_size (required, > 0) }``; the bottom must have ``output_dim * group_size^2`` channels.
    Shapes: ``(N, output_dim * g * g, H, W)``, ROIs ``(R, 5)`` -> ``(R, output_dim, g, g)``.

    Example::

        layer { name: "psroipooled_cls_rois" type: "PSROIPooling" bottom: "rfcn_cls" bottom: "rois"
                top: "psroipooled_cls_rois"
                psroi_pooling_param { spatial_scale: 0.0625 output_dim: 21 group_size: 7 } }

    Differs from torch: ``torchvision.ops.ps_roi_pool`` (outside torch) rounds the *scaled*
    coordinates to integers and has no ``+ 1`` on the end: other bins. The bin sums are taken from
    a summed-area table in float64 (the fork adds the values one by one in float): equal up to float
    rounding. The fork's CUDA kernel may fuse ``k * bin + start`` into one FMA; we round the product
    first, as its CPU code does. A batch index outside the batch is an error (the fork reads out of
    bounds).
    """

    origin = "R-FCN (daijifeng001/caffe-rfcn)"
    exact_bottoms = 2
    exact_tops = 1
    samples = (
        Sample("psroi_pooling_param { spatial_scale: 2 output_dim: 2 group_size: 2 }", bottoms=((2, 8, 3, 4), (3, 5)),
               values=(None, ("choice_int", 0.0, 0.6, 1.2, 1.5, 1.9))),
        Sample("psroi_pooling_param { spatial_scale: 2.5 output_dim: 1 group_size: 3 }",
               bottoms=((1, 9, 4, 4), (2, 5)),
               values=(None, ("choice_int", 0.0, 0.49, 0.5, 0.99)),
               note="batch 1, 0.5 rounds away from zero, bins under one pixel"),
        Sample("psroi_pooling_param { spatial_scale: 5 output_dim: 3 group_size: 1 }", bottoms=((1, 3, 3, 3), (2, 5)),
               values=(None, ("choice_int", 0.0, 0.5, 0.9)), note="ROIs outside the map: clipped and empty bins"),
    )

    def __init__(self, setup: LayerSetup):
        super().__init__(setup)
        p = setup.param.psroi_pooling_param
        if p.output_dim <= 0 or p.group_size <= 0:
            raise self.fail(f"psroi_pooling_param output_dim and group_size must be > 0, got output_dim: "
                            f"{p.output_dim} group_size: {p.group_size}")
        self.spatial_scale, self.output_dim, self.group = p.spatial_scale, int(p.output_dim), int(p.group_size)
        self.top_shapes(setup.bottom_shapes)

    def top_shapes(self, bottom_shapes):
        _, c, _, _ = _legacy_4d(self, bottom_shapes[0], "bottom 0 (the score maps)")
        g = self.group
        if c != self.output_dim * g * g:
            raise self.fail(f"bottom 0 has {c} channels but psroi_pooling_param needs output_dim * group_size^2 "
                            f"= {self.output_dim} * {g}^2 = {self.output_dim * g * g}")
        return [torch.Size((_check_rois(self, bottom_shapes[1]), self.output_dim, g, g))]

    def _bins(self, rois, height, width):
        dtype, device, g = rois.dtype, rois.device, self.group
        scale = torch.tensor(self.spatial_scale, dtype=dtype, device=device)
        start = _c_round(rois[:, 1:3]) * scale               # (xs, ys)
        end = (_c_round(rois[:, 3:5]) + 1) * scale
        size = (end - start).clamp(min=float(np.float32(0.1)))  # the fork's 0.1f floor
        bin_size = _div(size, g)
        k = torch.arange(g, dtype=dtype, device=device)
        out = []
        for axis, limit in ((1, height), (0, width)):
            lo = torch.floor(k * bin_size[:, axis, None] + start[:, axis, None]).long()
            hi = torch.ceil((k + 1) * bin_size[:, axis, None] + start[:, axis, None]).long()
            out += [lo.clamp(0, limit), hi.clamp(0, limit)]
        return out

    def forward(self, x, rois):
        n, c, h, w = x.shape
        r, g, od = rois.shape[0], self.group, self.output_dim
        with torch.no_grad():
            rois = rois.detach().reshape(r, 5)
            batch = rois[:, 0].long()
            _check_batch_index(self, batch, n)
            hstart, hend, wstart, wend = self._bins(rois, h, w)
            # channel (o * g + ph) * g + pw of image b, for top (r, o, ph, pw)
            chan = (torch.arange(od, device=x.device).view(od, 1, 1) * g
                    + torch.arange(g, device=x.device).view(1, g, 1)) * g + torch.arange(g, device=x.device)
            plane = (batch.view(r, 1, 1, 1) * c + chan) * ((h + 1) * (w + 1))       # (r, od, g, g)
            h0, h1 = hstart.view(r, 1, g, 1), hend.view(r, 1, g, 1)
            w0, w1 = wstart.view(r, 1, 1, g), wend.view(r, 1, 1, g)
            area = ((h1 - h0) * (w1 - w0)).to(x.dtype)
            empty = (h1 <= h0) | (w1 <= w0)
            corners = [plane + a * (w + 1) + b for a, b in ((h1, w1), (h0, w1), (h1, w0), (h0, w0))]
        acc = torch.float64
        table = F.pad(x.to(acc).cumsum(2).cumsum(3), (1, 0, 1, 0)).reshape(-1)   # summed-area table
        s11, s01, s10, s00 = (table[i] for i in corners)
        total = ((s11 - s01) - (s10 - s00)).to(x.dtype)
        return torch.where(empty, torch.zeros((), dtype=x.dtype, device=x.device),
                           total / torch.where(empty, torch.ones_like(area), area))

    # -- export hooks (torchcaffe.export) ----------------------------------------------------------
    def export_onnx(self, x, rois):
        from ..export.common import ExportError
        raise ExportError(f"{self.label}: cannot be exported to ONNX: ONNX has no position-sensitive ROI "
                          f"pooling operator and the bins depend on the ROI values; export to PyTorch "
                          f"source, or export the blobs it reads (outputs=[...])")

    def export_source(self, code):
        x, rois = code.bottoms
        return code.line(f"{code.helper('caffe_psroi_pool')}({x}, {rois}, {self.output_dim}, {self.group}, "
                         f"{code.number(self.spatial_scale)})")


# ------------------------------------------------------------------------------------------------
# Interp
# ------------------------------------------------------------------------------------------------
def _interp_axis(size_in: int, size_out: int, device):
    """The fork's sampling grid along one axis, in float32 whatever the blob type: source row
    ``i0``, its neighbour's offset (0 on the last row) and the weight of the neighbour."""
    ratio = np.float32(size_in - 1) / np.float32(size_out - 1) if size_out > 1 else np.float32(0)
    pos = np.float32(ratio) * np.arange(size_out, dtype=np.float32)
    i0 = pos.astype(np.int64)
    step = (i0 < size_in - 1).astype(np.int64)
    lam = (pos - i0.astype(np.float32)).astype(np.float32)
    as_t = lambda a: torch.from_numpy(a).to(device)  # noqa: E731
    return as_t(i0), as_t(i0 + step), as_t(lam), pos


@register_layer("Interp")
class Interp(Layer):
    """Bilinear resizing with the corners aligned (DeepLab v2's ``Interp``; PSPNet uses it too).

    The input is first cropped: ``pad_beg``/``pad_end`` (both <= 0) remove rows and columns at the
    start/end, giving ``H_eff = H + pad_beg + pad_end`` (same for W; the crop starts at row and
    column ``-pad_beg``). The output size is, in the fork's order of precedence:

    * ``shrink_factor`` only: ``(H_eff - 1) / shrink_factor + 1`` (integer division);
    * ``zoom_factor`` only: ``H_eff + (H_eff - 1) * (zoom_factor - 1)``;
    * ``height`` and ``width``: those;
    * ``shrink_factor`` and ``zoom_factor``: shrink, then zoom the result;
    * no size fields and two bottoms: bottom 1's height and width.

    Output pixel ``y`` samples source row ``y * (H_eff - 1) / (H_out - 1)`` (0 when ``H_out == 1``)
    — ratio and position computed in float32 — blending rows ``floor(.)`` and the next (the same row
    on the last one); likewise for columns. Equal sizes copy the crop. The backward is the adjoint
    (autograd of the same gathers); bottom 1 only gives a size and gets no gradient.

    Parameters: ``interp_param { height (0) width (0) zoom_factor (1) shrink_factor (1) pad_beg (0)
    pad_end (0) }`` — only the fields that are *set* count.
    Shapes: ``(N, C, H, W)`` [, ``(*, *, H2, W2)``] -> ``(N, C, H_out, W_out)``.

    Example::

        layer { name: "fc8_interp" type: "Interp" bottom: "fc8" top: "fc8_interp"
                interp_param { zoom_factor: 8 } }

    Differs from torch: ``F.interpolate(mode="bilinear", align_corners=True)`` samples the same
    points but computes the ratio and weights in the input's precision and has no cropping; the
    results agree to float rounding (about 1e-6) for float32 inputs.
    """

    origin = "DeepLab v2 (deeplab-public-ver2; also hszhao/PSPNet)"
    min_bottoms = 1
    max_bottoms = 2
    exact_tops = 1
    samples = (
        Sample("interp_param { zoom_factor: 2 }", bottoms=((2, 2, 3, 4),)),
        Sample("interp_param { shrink_factor: 2 }", bottoms=((1, 2, 5, 4),), note="batch 1, shrink"),
        Sample("interp_param { height: 4 width: 7 }", bottoms=((2, 1, 3, 3),), note="explicit size"),
        Sample("interp_param { shrink_factor: 3 zoom_factor: 2 pad_beg: -1 pad_end: -1 }",
               bottoms=((1, 2, 9, 8),), note="crop, then shrink and zoom"),
        Sample("", bottoms=((1, 2, 3, 2), (1, 1, 5, 4)), note="size from bottom 1"),
        Sample("interp_param { height: 1 width: 3 }", bottoms=((1, 2, 4, 3),), note="one output row"),
        Sample("interp_param { height: 3 width: 4 }", bottoms=((2, 2, 3, 4),), note="same size: a copy"),
        Sample("interp_param { height: 2 width: 5 pad_beg: -1 }", bottoms=((1, 1, 4, 6),),
               note="crop only at the start"),
    )

    def __init__(self, setup: LayerSetup):
        super().__init__(setup)
        p = setup.param.interp_param
        self.p = p
        if p.pad_beg > 0 or p.pad_end > 0:
            raise self.fail(f"interp_param pad_beg ({p.pad_beg}) and pad_end ({p.pad_end}) must be <= 0: only "
                            f"cropping is supported (as in DeepLab)")
        for field in ("zoom_factor", "shrink_factor"):
            if p.HasField(field) and getattr(p, field) < 1:
                raise self.fail(f"interp_param {field} must be >= 1, got {getattr(p, field)}")
        self.top_shapes(setup.bottom_shapes)

    def _sizes(self, bottom_shapes):
        p = self.p
        n, c, h, w = _legacy_4d(self, bottom_shapes[0], "bottom 0")
        h_eff, w_eff = h + p.pad_beg + p.pad_end, w + p.pad_beg + p.pad_end
        zoom, shrink = p.HasField("zoom_factor"), p.HasField("shrink_factor")
        if shrink and not zoom:
            out = ((h_eff - 1) // p.shrink_factor + 1, (w_eff - 1) // p.shrink_factor + 1)
        elif zoom and not shrink:
            out = (h_eff + (h_eff - 1) * (p.zoom_factor - 1), w_eff + (w_eff - 1) * (p.zoom_factor - 1))
        elif p.HasField("height") and p.HasField("width"):
            out = (p.height, p.width)
        elif shrink and zoom:
            hs, ws = (h_eff - 1) // p.shrink_factor + 1, (w_eff - 1) // p.shrink_factor + 1
            out = (hs + (hs - 1) * (p.zoom_factor - 1), ws + (ws - 1) * (p.zoom_factor - 1))
        elif len(bottom_shapes) == 2:
            if len(bottom_shapes[1]) != 4:
                raise self.fail(f"bottom 1 gives the output size and must have 4 axes, got {list(bottom_shapes[1])}")
            out = (int(bottom_shapes[1][2]), int(bottom_shapes[1][3]))
        else:
            raise self.fail("the output size is not specified: set interp_param zoom_factor, shrink_factor, "
                            "or both height and width, or give a second bottom of the wanted size")
        if h_eff <= 0 or w_eff <= 0:
            raise self.fail(f"cropping with pad_beg {p.pad_beg} and pad_end {p.pad_end} leaves nothing of a "
                            f"{h} x {w} input")
        if out[0] <= 0 or out[1] <= 0:
            raise self.fail(f"the output size must be positive, got {out[0]} x {out[1]}")
        return (n, c), (h_eff, w_eff), out

    def top_shapes(self, bottom_shapes):
        lead, _, out = self._sizes(bottom_shapes)
        return [torch.Size(lead + out)]

    def forward(self, x, *size_bottom):
        _, (h_eff, w_eff), (h_out, w_out) = self._sizes([x.shape] + [b.shape for b in size_bottom])
        o = -self.p.pad_beg
        x = x[:, :, o:o + h_eff, o:o + w_eff]
        if (h_eff, w_eff) == (h_out, w_out):
            return x.clone()
        r0, r1, lam_h, _ = _interp_axis(h_eff, h_out, x.device)
        c0, c1, lam_w, _ = _interp_axis(w_eff, w_out, x.device)
        lh1 = lam_h.to(x.dtype).view(-1, 1)
        lw1 = lam_w.to(x.dtype)
        lh0, lw0 = 1 - lh1, 1 - lw1
        top, bottom = x.index_select(2, r0), x.index_select(2, r1)
        return (lh0 * (lw0 * top.index_select(3, c0) + lw1 * top.index_select(3, c1))
                + lh1 * (lw0 * bottom.index_select(3, c0) + lw1 * bottom.index_select(3, c1)))

    # -- export hooks (torchcaffe.export) ----------------------------------------------------------
    def export_source(self, code):
        """The ``caffe_interp`` helper (the fork's float32 grid) after the crop; the size is the one
        computed for the exported input."""
        x = code.bottoms[0]
        _, (h_eff, w_eff), (height, width) = self._sizes(code.bottom_shapes)
        o = -self.p.pad_beg
        if tuple(code.bottom_shapes[0][2:]) != (h_eff, w_eff):
            x = f"{x}[:, :, {o}:{o + h_eff}, {o}:{o + w_eff}]"
        if (h_eff, w_eff) == (height, width):
            return code.line(f"{x}.clone()")
        return code.line(f"{code.helper('caffe_interp')}({x}, {height}, {width})")


# ------------------------------------------------------------------------------------------------
# BN (PSPNet and SegNet)
# ------------------------------------------------------------------------------------------------
_SEGNET_FIELDS = ("scale_filler", "shift_filler", "bn_mode")
_PSPNET_FIELDS = ("slope_filler", "bias_filler", "momentum", "eps", "frozen", "engine")
_SEGNET_EPS = 1e-9  # SegNet's BN hard-codes var_eps_ = 1e-9
_CUDNN_BN_MIN_EPSILON = 1e-5  # cuDNN refuses a smaller epsilon; PSPNet's cuDNN engine takes max(eps, it)


def bn_flavour(param: caffe_pb2.LayerParameter) -> str:
    """Which fork's ``BN`` a layer is: ``"segnet"`` or ``"pspnet"`` (see :class:`BN`)."""
    p = param.bn_param
    segnet = [f for f in _SEGNET_FIELDS if p.HasField(f)]
    pspnet = [f for f in _PSPNET_FIELDS if p.HasField(f)]
    if segnet and pspnet:
        return "mixed:" + ",".join(segnet + pspnet)
    if segnet:
        return "segnet"
    if pspnet:
        return "pspnet"
    if len(param.blobs) in (2, 4):
        return "segnet" if len(param.blobs) == 2 else "pspnet"
    if len(param.top) > 1 or len(param.param) == 2:
        return "segnet"
    return "pspnet"


@register_layer("BN")
class BN(Layer):
    """Batch normalization with a per-channel affine part: PSPNet's or SegNet's, one type string.

    **Which fork.** ``bn_param`` fields ``scale_filler``, ``shift_filler`` or ``bn_mode`` make it
    SegNet's; ``slope_filler``, ``bias_filler``, ``momentum``, ``eps``, ``frozen`` or ``engine``
    make it PSPNet's (fields of both is an error). With no field set: a ``blobs`` list embedded in
    the layer (2 blobs: SegNet, 4: PSPNet), else two or three tops or exactly two ``param {}``
    blocks mean SegNet, anything else PSPNet. Real files always set their fork's fields.

    **PSPNet** (hszhao/PSPNet ``bn_layer.cpp`` / ``cudnn_bn_layer.cu``): blobs ``slope``, ``bias``,
    ``mean``, ``variance``, each ``(1, C, 1, 1)``; ``y = slope * (x - mean) * (var + eps)^-1/2 + bias``.
    In TRAIN (unless ``frozen``) mean and biased variance come from the batch (over N and the spatial
    axes) and the stored ones become ``momentum * stored + (1 - momentum) * batch``; in TEST or when
    ``frozen`` the stored ones are used and not updated. ``frozen`` also freezes slope and bias
    (buffers here) and starts the variance at 1 instead of 0. The statistics blobs are never learned
    (``lr_mult: 0`` is written into the layer's own ``param`` specs, as the fork does). Engine
    ``CAFFE`` is ``bn_layer.cpp``; ``CUDNN`` and ``DEFAULT`` (the fork's factory picks cuDNN when built
    with cuDNN >= 5, PSPNet's build) follow cuDNN: ``eps`` is raised to at least 1e-5 and the stored
    variance is updated with the *unbiased* batch variance (``m / (m - 1)``, m = N * H * W).

    **SegNet** (alexgkendall/caffe-segnet ``bn_layer.cpp``): blobs ``scale``, ``shift``, each
    ``(1, C, 1, 1)``. ``bn_mode: LEARN`` (default) normalizes with the batch statistics *in every
    phase*: ``var = E[x^2] - E[x]^2``, ``y = scale * (x - E[x]) / sqrt(var + 1e-9) + shift``; tops 1
    and 2 (optional) receive the batch mean and variance ``(1, C, 1, 1)`` (no gradient flows back
    from them). ``bn_mode: INFERENCE`` is ``y = scale * x + shift`` (SegNet's
    ``compute_bn_statistics.py`` folds the statistics into scale and shift); its extra tops are
    zeros.

    Parameters: ``bn_param { slope_filler bias_filler momentum (0.9) eps (1e-5) frozen (false) engine
    (DEFAULT) | scale_filler shift_filler bn_mode (LEARN) }``; fillers default to constant 0.
    Shapes: ``(N, C, *)`` -> ``(N, C, *)`` [, ``(1, C, 1, 1)``, ``(1, C, 1, 1)``: SegNet only].

    Example::

        layer { name: "conv1_1_3x3_s2/bn" type: "BN" bottom: "conv1_1_3x3_s2" top: "conv1_1_3x3_s2"
                bn_param { slope_filler { type: "constant" value: 1 } frozen: true momentum: 0.95 } }

    Differs from torch: ``nn.BatchNorm2d`` weights the *new* value by its ``momentum`` (PSPNet's
    weighs the stored one) and always stores the unbiased variance; SegNet's LEARN mode has no
    running statistics at all. The fork's backward in TEST (not frozen) reuses the training-mode
    formula with the stored statistics; ours is the exact derivative of the TEST forward.
    """

    origin = "PSPNet (hszhao/PSPNet) / SegNet (alexgkendall/caffe-segnet)"
    exact_bottoms = 1
    min_tops, max_tops = 1, 3
    samples = (
        Sample("bn_param { slope_filler { type: 'gaussian' } bias_filler { type: 'gaussian' } momentum: 0.8 }",
               bottoms=((2, 3, 2, 3),), inplace=True, note="PSPNet, TRAIN: batch statistics"),
        Sample("bn_param { slope_filler { type: 'gaussian' } bias_filler { type: 'gaussian' } engine: CAFFE }",
               bottoms=((3, 2),), note="PSPNet, CAFFE engine, 2-D"),
        Sample("bn_param { slope_filler { type: 'gaussian' } bias_filler { type: 'gaussian' } frozen: true }",
               bottoms=((1, 3, 2, 2),), inplace=True, note="PSPNet frozen: stored statistics (variance 1)"),
        Sample("bn_param { slope_filler { type: 'gaussian' } bias_filler { type: 'gaussian' } eps: 0.001 }",
               bottoms=((2, 2, 3),), phase=TEST, note="PSPNet, TEST"),
        Sample("bn_param { scale_filler { type: 'gaussian' } shift_filler { type: 'gaussian' } }",
               bottoms=((2, 3, 2, 2),), inplace=True, note="SegNet LEARN"),
        Sample("bn_param { scale_filler { type: 'gaussian' } shift_filler { type: 'gaussian' } }",
               bottoms=((3, 2, 2, 1),), tops=3, phase=TEST, note="SegNet LEARN in TEST, mean/var tops"),
        Sample("bn_param { bn_mode: INFERENCE scale_filler { type: 'gaussian' } shift_filler { type: 'gaussian' } }",
               bottoms=((1, 2, 3, 2),), inplace=True, note="SegNet INFERENCE: affine only"),
    )

    def __init__(self, setup: LayerSetup):
        super().__init__(setup)
        self.flavour = bn_flavour(setup.param)
        if self.flavour.startswith("mixed:"):
            raise self.fail(f"bn_param mixes SegNet's fields (scale_filler, shift_filler, bn_mode) with "
                            f"PSPNet's (slope_filler, bias_filler, momentum, eps, frozen, engine): "
                            f"{self.flavour[6:]}; keep the fields of one fork")
        shape = setup.bottom_shapes[0]
        if len(shape) < 2:
            raise self.fail(f"needs a bottom with a channel axis (N, C, ...), got shape {list(shape)}")
        self.channels = int(shape[1])
        blob = (1, self.channels, 1, 1)
        p = setup.param.bn_param
        if self.flavour == "segnet":
            self.learn = p.bn_mode == caffe_pb2.BNParameter.LEARN
            self.add_blob("scale", blob, p.scale_filler)
            self.add_blob("shift", blob, p.shift_filler)
            return
        if setup.num_tops != 1:
            raise self.fail(f"PSPNet's BN has exactly one top, got {setup.num_tops} (SegNet's BN, chosen by "
                            f"bn_param scale_filler/shift_filler/bn_mode, has up to three)")
        self.frozen, self.momentum = p.frozen, p.momentum
        self.cudnn = p.engine != caffe_pb2.BNParameter.CAFFE
        self.eps = max(p.eps, _CUDNN_BN_MIN_EPSILON) if self.cudnn else p.eps
        self.batch_stats = setup.phase == TRAIN and not self.frozen
        self.add_blob("slope", blob, p.slope_filler, learnable=not self.frozen)
        self.add_blob("bias", blob, p.bias_filler, learnable=not self.frozen)
        self.add_blob("mean", blob, None, learnable=False)
        self.add_blob("variance", blob, None, learnable=False)
        if self.frozen:
            with torch.no_grad():
                self.variance.fill_(1)
        self._freeze_specs(setup.param)

    def _freeze_specs(self, param: caffe_pb2.LayerParameter) -> None:
        """PSPNet's LayerSetUp: four ParamSpecs, lr/decay 0 on the statistics (all four if frozen)."""
        while len(param.param) < 4:
            param.param.add()
        for i in range(4) if self.frozen else (2, 3):
            param.param[i].lr_mult = 0
            param.param[i].decay_mult = 0

    def top_shapes(self, bottom_shapes):
        shape = bottom_shapes[0]
        if len(shape) < 2 or shape[1] != self.channels:
            raise self.fail(f"was built for {self.channels} channels (axis 1), got a bottom of shape {list(shape)}")
        return [torch.Size(shape)] + [torch.Size((1, self.channels, 1, 1))] * (self.num_tops - 1)

    def forward(self, x):
        if x.dim() < 2 or x.shape[1] != self.channels:
            raise self.fail(f"was built for {self.channels} channels (axis 1), got a bottom of shape {tuple(x.shape)}")
        view = (1, -1) + (1,) * (x.dim() - 2)
        dims = [0, *range(2, x.dim())]
        if self.flavour == "segnet":
            return self._segnet(x, view, dims)
        if self.batch_stats:
            mean = x.mean(dim=dims)
            var = (x - mean.view(view)).square().mean(dim=dims)
            self._update(mean.detach(), var.detach(), x.numel() // self.channels)
        else:
            mean = self.mean.to(x.dtype).reshape(-1)
            var = self.variance.to(x.dtype).reshape(-1)
        inv_std = torch.pow(var + self.eps, -0.5)
        y = (x - mean.view(view)) * inv_std.view(view)
        return y * self.slope.to(x.dtype).view(view) + self.bias.to(x.dtype).view(view)

    def _update(self, mean, var, m: int) -> None:
        """``stored = momentum * stored + (1 - momentum) * batch``; cuDNN stores the unbiased variance."""
        if self.cudnn and m > 1:
            var = var * (m / (m - 1))
        with torch.no_grad():
            for stored, stat in ((self.mean, mean), (self.variance, var)):
                stored.mul_(self.momentum).add_(stat.reshape(stored.shape).to(stored.dtype), alpha=1 - self.momentum)

    def _segnet(self, x, view, dims):
        scale, shift = self.scale.to(x.dtype).view(view), self.shift.to(x.dtype).view(view)
        extra = self.num_tops - 1
        if not self.learn:
            y = x * scale + shift
            zeros = torch.zeros((1, self.channels, 1, 1), dtype=x.dtype, device=x.device)
            return (y,) + (zeros,) * extra if extra else y
        mean = x.mean(dim=dims)
        var = x.square().mean(dim=dims) - mean.square()   # E[x^2] - E[x]^2, as the fork
        y = (x - mean.view(view)) / torch.sqrt(var + _SEGNET_EPS).view(view) * scale + shift
        if not extra:
            return y
        stats = (mean.detach().view(1, -1, 1, 1), var.detach().view(1, -1, 1, 1))
        return (y,) + stats[:extra]


# ------------------------------------------------------------------------------------------------
# Upsample (SegNet/ENet max-unpooling, YOLOv3 nearest upsampling)
# ------------------------------------------------------------------------------------------------
class _Unpool(torch.autograd.Function):
    """SegNet's max-unpooling: ``top[idx[i]] = bottom[i]`` per plane, ``dbottom[i] = dtop[idx[i]]``.

    Where two positions of a plane carry the same index the fork's forward keeps the later one
    (its loop runs in order) but its backward still hands ``dtop[idx]`` to both, which is not the
    derivative of its forward; a custom backward reproduces it. Without repeated indices the two
    agree.
    """

    @staticmethod
    def forward(ctx, x, index, out_size: int):
        planes, size = index.shape
        position = torch.arange(size, device=index.device).expand(planes, size)
        winner = torch.full((planes, out_size), -1, dtype=torch.long, device=index.device)
        winner.scatter_reduce_(1, index, position, reduce="amax")   # the last writer in scan order
        top = x.gather(1, winner.clamp(min=0))
        ctx.save_for_backward(index)
        return torch.where(winner >= 0, top, torch.zeros((), dtype=x.dtype, device=x.device))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        (index,) = ctx.saved_tensors
        return grad.gather(1, index), None, None


@register_layer("Upsample")
class Upsample(Layer):
    """SegNet/ENet max-unpooling (two bottoms) or YOLOv3 nearest upsampling (one bottom).

    **Two bottoms** — SegNet (alexgkendall/caffe-segnet ``upsample_layer.cpp``): bottom 1 is the
    mask of a MAX Pooling layer's second top (the index ``h * W_out + w`` of each maximum in the
    plane this layer rebuilds). The top is zeros with each bottom value placed at its index, per
    (n, c) plane; where indices repeat the later position wins, and the backward hands each bottom
    position the top diff at its index (all of them). No gradient to the mask; an index outside the
    output plane is an error. Output size: ``upsample_h``/``upsample_w`` when both are set (each
    > 1); else ``H * scale_h - pad_out_h`` and ``W * scale_w - pad_out_w``, with ``scale_h/scale_w``
    from ``scale`` unless both are set (each > 1; ``pad_out_*`` only with a scale of 2).

    **One bottom** — YOLOv3 ports (``upsample_layer.cpp`` of ChenYingpeng/caffe-yolov3 and
    darknet2caffe, also eric612/MobileNet-YOLO): nearest-neighbour upsampling of the last two axes by the integer
    ``scale``: ``top[n, c, y, x] = bottom[n, c, y // scale, x // scale]``; the backward sums each
    ``scale x scale`` block. An unset ``scale`` means 1 here, the ports' default (our schema's
    default, 2, is SegNet's).

    Parameters: ``upsample_param { scale (2; YOLO: 1) scale_h scale_w pad_out_h (false) pad_out_w
    (false) upsample_h upsample_w }``.
    Shapes: ``(N, C, H, W)``, mask ``(N, C, H, W)`` -> ``(N, C, H_out, W_out)``; or
    ``(N, C, H, W)`` -> ``(N, C, H * scale, W * scale)``.

    Example::

        layer { name: "upsample5" type: "Upsample" bottom: "conv5_1_D" bottom: "pool5_mask"
                top: "pool5_D" upsample_param { scale: 2 upsample_w: 30 upsample_h: 23 } }

    Differs from torch: ``F.max_unpool2d`` leaves the winner among repeated indices unspecified and
    its backward gathers too (as here); ``F.interpolate(mode="nearest")`` equals the one-bottom form.
    """

    origin = "SegNet (alexgkendall/caffe-segnet) / YOLOv3 ports (ChenYingpeng/darknet2caffe)"
    min_bottoms, max_bottoms = 1, 2
    exact_tops = 1
    samples = (
        Sample("upsample_param { scale: 2 }", bottoms=((2, 3, 1, 1), (2, 3, 1, 1)),
               values=(None, ("int", 0, 4)), note="unpooling: one index per plane"),
        Sample("upsample_param { scale: 2 }", bottoms=((2, 2, 2, 3), (2, 2, 2, 3)),
               values=(None, ("int", 0, 24)), gradcheck=False,
               note="unpooling, repeated indices: the later position wins, both get the gradient"),
        Sample("upsample_param { upsample_h: 3 upsample_w: 5 }", bottoms=((1, 2, 1, 1), (1, 2, 1, 1)),
               values=(None, ("int", 0, 15)), note="batch 1, explicit output size"),
        Sample("upsample_param { scale_h: 2 scale_w: 3 pad_out_h: true }", bottoms=((1, 1, 1, 1), (1, 1, 1, 1)),
               values=(None, ("int", 0, 3)), note="scale_h/scale_w, pad_out_h"),
        Sample("upsample_param { scale: 2 }", bottoms=((2, 3, 2, 3),), note="YOLOv3: nearest, x2"),
        Sample("upsample_param { scale: 3 }", bottoms=((1, 2, 1, 2),), note="YOLOv3: batch 1, x3"),
        Sample("", bottoms=((1, 2, 2, 2),), note="YOLOv3 with scale unset: the ports' default 1"),
    )

    def __init__(self, setup: LayerSetup):
        super().__init__(setup)
        p = setup.param.upsample_param
        self.unpool = len(setup.bottom_shapes) == 2
        if not self.unpool:
            self.scale = p.scale if p.HasField("scale") else 1  # the YOLOv3 ports' default (ours is SegNet's 2)
            if self.scale < 1:
                raise self.fail(f"upsample_param scale must be >= 1, got {self.scale}")
        else:
            self._segnet_setup(p)
        self.top_shapes(setup.bottom_shapes)

    def _segnet_setup(self, p) -> None:
        has = p.HasField
        if not ((has("upsample_h") and has("upsample_w")) or (not has("scale") and has("scale_h") and has("scale_w"))
                or (not has("scale_h") and not has("scale_w"))):
            raise self.fail("upsample_param needs upsample_h and upsample_w, or scale, or scale_h and scale_w "
                            "(without scale)")
        if has("upsample_h") and has("upsample_w"):
            self.size = (p.upsample_h, p.upsample_w)
            if min(self.size) <= 1:
                raise self.fail(f"upsample_param upsample_h and upsample_w must be > 1, got {self.size}")
            return
        self.size = None
        self.scales = (p.scale_h, p.scale_w) if has("scale_h") else (p.scale, p.scale)
        if min(self.scales) <= 1:
            raise self.fail(f"upsample_param scale (or scale_h, scale_w) must be > 1, got {self.scales}")
        self.pad_out = (int(p.pad_out_h), int(p.pad_out_w))
        for pad, scale, axis in zip(self.pad_out, self.scales, "hw"):
            if pad and scale != 2:
                raise self.fail(f"upsample_param pad_out_{axis} needs scale_{axis} == 2 (got {scale}); give "
                                f"upsample_h and upsample_w instead")

    def top_shapes(self, bottom_shapes):
        n, c, h, w = _legacy_4d(self, bottom_shapes[0], "bottom 0")
        if not self.unpool:
            return [torch.Size((n, c, h * self.scale, w * self.scale))]
        mask = _legacy_4d(self, bottom_shapes[1], "bottom 1 (the pooling mask)")
        if mask != (n, c, h, w):
            raise self.fail(f"bottom 1 (the pooling mask) must have bottom 0's shape {[n, c, h, w]}, got {list(mask)}")
        if self.size is not None:
            size = self.size
        else:
            size = (h * self.scales[0] - self.pad_out[0], w * self.scales[1] - self.pad_out[1])
        return [torch.Size((n, c) + tuple(size))]

    def forward(self, x, mask=None):
        out = self.top_shapes([x.shape] + ([] if mask is None else [mask.shape]))[0]
        if mask is None:
            s = self.scale
            return x.repeat_interleave(s, dim=2).repeat_interleave(s, dim=3)
        n, c, oh, ow = out
        index = mask.detach().reshape(n * c, -1).long()
        bad = (index < 0) | (index >= oh * ow)
        if bool(bad.any()):
            raise self.fail(f"mask index {int(index[bad][0])} is outside the {oh} x {ow} output plane: check that "
                            f"upsample_param matches the pooling layer that made the mask")
        top = _Unpool.apply(x.reshape(n * c, -1), index, oh * ow)
        return top.reshape(out)


# ------------------------------------------------------------------------------------------------
# SegAccuracy
# ------------------------------------------------------------------------------------------------
@register_layer("SegAccuracy")
class SegAccuracy(Layer):
    """Segmentation accuracy from a confusion matrix: pixel accuracy, mean recall, mean IoU.

    Each pixel's prediction is the arg-max over the channels — ties go to the *larger* class index
    (the fork sorts (score, class) pairs with ``std::greater``). Pixels whose label is in
    ``ignore_label`` are skipped; any other label outside ``[0, C)`` is an error. The confusion
    matrix (actual x predicted) is cleared at every forward when ``reset`` (default), else it keeps
    counting across forwards. The top holds, in float64 arithmetic:

    * ``[0]`` overall accuracy ``trace / total`` (0 when nothing is counted);
    * ``[1]`` mean recall over the classes that occur (``diag / row sum``; 0 if none occurs);
    * ``[2]`` mean IoU ``diag / (row + col - diag)`` over *all* C classes, a class that neither occurs
      nor is predicted counting as 1.

    ``metric`` is read by the fork but not used. No backward.

    Parameters: ``seg_accuracy_param { metric (PixelAccuracy, unused) ignore_label (repeated) reset (true) }``.
    Shapes: scores ``(N, C, H, W)``, labels ``(N, 1, H, W)`` -> ``(1, 1, 1, 3)``.

    Example::

        layer { name: "accuracy" type: "SegAccuracy" bottom: "fc8" bottom: "label_shrink" top: "accuracy"
                seg_accuracy_param { ignore_label: 255 } }

    Differs from torch: ``argmax`` picks the first of tied classes; the fork the last.
    """

    origin = "DeepLab v2 (deeplab-public-ver2; also hszhao/PSPNet)"
    exact_bottoms = 2
    exact_tops = 1
    differentiable = False
    samples = (
        Sample("seg_accuracy_param { ignore_label: 3 }", bottoms=((2, 3, 2, 3), (2, 1, 2, 3)),
               values=(None, ("int", 0, 4)), gradcheck=False, phase=TEST),
        Sample("", bottoms=((1, 4, 3, 2), (1, 1, 3, 2)), values=(("choice", 0.0, 1.0), ("int", 0, 4)),
               gradcheck=False, note="batch 1, ties: the larger class wins"),
        Sample("seg_accuracy_param { ignore_label: 0 ignore_label: 2 reset: false }",
               bottoms=((2, 3, 1, 2), (2, 1, 1, 2)),
               values=(None, ("int", 0, 3)), gradcheck=False, note="two ignore labels, accumulating"),
    )

    def __init__(self, setup: LayerSetup):
        super().__init__(setup)
        p = setup.param.seg_accuracy_param
        self.ignore = sorted(set(p.ignore_label))
        self.reset = p.reset
        self.classes = int(setup.bottom_shapes[0][1]) if len(setup.bottom_shapes[0]) > 1 else 0
        self.register_buffer("confusion", torch.zeros((self.classes, self.classes), dtype=torch.long),
                             persistent=False)
        self.top_shapes(setup.bottom_shapes)

    def top_shapes(self, bottom_shapes):
        scores = _legacy_4d(self, bottom_shapes[0], "bottom 0 (the scores)")
        label = _legacy_4d(self, bottom_shapes[1], "bottom 1 (the labels)")
        if scores[1] != self.classes:
            raise self.fail(f"was built for {self.classes} classes, got scores of shape {list(scores)}")
        if label[0] != scores[0] or label[1] != 1 or label[2:] != scores[2:]:
            raise self.fail(f"bottom 1 (the labels) must have shape (N, 1, H, W) = {[scores[0], 1, *scores[2:]]} "
                            f"for scores of shape {list(scores)}; got {list(label)}")
        return [torch.Size((1, 1, 1, 3))]

    def forward(self, x, label):
        c = self.classes
        with torch.no_grad():
            predicted = (c - 1) - x.detach().flip(1).argmax(dim=1)    # ties: the larger class
            actual = label.detach()[:, 0].long()                       # truncated, as static_cast<int>
            keep = torch.ones_like(actual, dtype=torch.bool)
            for value in self.ignore:
                keep &= actual != value
            actual, predicted = actual[keep], predicted[keep]
            bad = (actual < 0) | (actual >= c)
            if bool(bad.any()):
                raise self.fail(f"unexpected label {int(actual[bad][0])}: labels must be in [0, {c - 1}] or listed "
                                f"in seg_accuracy_param ignore_label")
            if self.reset:
                self.confusion.zero_()
            counts = torch.bincount(actual * c + predicted, minlength=c * c).view(c, c)
            self.confusion += counts.to(self.confusion.device)
            return _confusion_scores(self.confusion.cpu().double()).to(x.dtype).to(x.device).view(1, 1, 1, 3)


def _confusion_scores(m: torch.Tensor) -> torch.Tensor:
    """DeepLab's ConfusionMatrix accuracy(), avgRecall(false), avgJaccard()."""
    diag, rows, cols, total = m.diagonal(), m.sum(1), m.sum(0), m.sum()
    accuracy = diag.sum() / total if total > 0 else torch.zeros((), dtype=m.dtype, device=m.device)
    present = rows > 0
    recall = (diag[present] / rows[present]).sum() / int(present.sum()) if bool(present.any()) \
        else torch.zeros((), dtype=m.dtype)
    union = rows + cols - diag
    iou = torch.where(diag == union, torch.ones_like(diag), diag / torch.where(union > 0, union, 1))
    jaccard = iou.sum() / m.shape[0] if m.shape[0] else torch.zeros((), dtype=m.dtype)
    return torch.stack([accuracy, recall, jaccard])


# ------------------------------------------------------------------------------------------------
# DenseCRF: Krähenbühl's densecrf (v1) mean field on a permutohedral lattice, as DeepLab runs it
# ------------------------------------------------------------------------------------------------
class PermutohedralLattice:
    """Adams et al.'s permutohedral lattice as densecrf v1 builds it (DeepLab's ``permutohedral.cpp``).

    ``features`` (P, d) float32 — already divided by the kernel's standard deviations. Every point
    is elevated onto the d-dimensional hyperplane of Z^(d+1) (scaled so that the blur approximates
    a unit Gaussian), its enclosing simplex found by rounding and ranking, and its d + 1 vertices
    stored with barycentric weights. Vertices are hashed by their integer keys with ``unique``
    (the fork uses a hash table; only the order of the vertices differs, not the result).
    ``filter(values)`` splats, blurs with ``[1/2, 1, 1/2]`` along each of the d + 1 lattice
    directions in turn, and slices with the factor ``1 / (1 + 2^-d)``. All float32, as the fork.
    """

    def __init__(self, features: torch.Tensor):
        f = features.to(torch.float32)
        p, d = f.shape
        self.d, device = d, f.device
        inv_std = np.float32(math.sqrt(2.0 / 3.0) * (d + 1))
        scale = torch.tensor([np.float32(1.0 / math.sqrt((i + 2) * (i + 1)) * float(inv_std)) for i in range(d)],
                             dtype=torch.float32, device=device)
        cf = f * scale                                                     # (P, d)
        # elevated[j] = sum_{k>=j} cf[k] - j * cf[j-1] (the fork's running sum from the last axis)
        tail = torch.flip(torch.cumsum(torch.flip(cf, [1]), 1), [1])        # tail[j] = cf[j] + ... + cf[d-1]
        tail = torch.cat([tail, torch.zeros((p, 1), dtype=torch.float32, device=device)], 1)
        j = torch.arange(1, d + 1, dtype=torch.float32, device=device)
        elevated = torch.cat([tail[:, :1], tail[:, 1:] - j * cf], 1)        # (P, d+1)
        down = np.float32(1.0) / np.float32(d + 1)
        rounded = torch.round(elevated * float(down))                        # SSE: round half to even
        rem0 = rounded * float(d + 1)
        total = rounded.sum(1, keepdim=True)
        diff = elevated - rem0
        # rank[i] = #{j > i: diff_i < diff_j} + #{j < i: diff_j >= diff_i}
        less = diff.unsqueeze(2) < diff.unsqueeze(1)                         # [i, j]: diff_i < diff_j
        upper = torch.triu(torch.ones(d + 1, d + 1, dtype=torch.bool, device=device), 1)
        rank = (less & upper).sum(2) + (~less.transpose(1, 2) & upper.T).sum(2)
        rank = rank.to(torch.float32) + total
        below, above = rank < 0, rank >= d + 1
        shift = below.to(torch.float32) * (d + 1) - above.to(torch.float32) * (d + 1)
        rank, rem0 = (rank + shift).long(), rem0 + shift
        v = (elevated - rem0) * float(down)
        bary = torch.zeros((p, d + 2), dtype=torch.float32, device=device)
        bary.scatter_add_(1, d - rank, v).scatter_add_(1, d - rank + 1, -v)
        bary[:, 0] += 1 + bary[:, d + 1]
        weights = bary[:, :d + 1]
        r = torch.arange(d + 1, device=device)
        canonical = torch.where(r.view(1, -1) <= d - r.view(-1, 1), r.view(-1, 1), r.view(-1, 1) - (d + 1))
        keys = rem0[:, None, :d].long() + canonical[:, rank[:, :d]].permute(1, 0, 2)   # (P, d+1, d)
        offsets, neighbours = self._index_vertices(keys.reshape(-1, d))
        # splat, blur and slice as sparse matrices: (M x P), d+1 times (M x M), (P x M)
        m, points = self.m, torch.arange(p, device=device).repeat_interleave(d + 1)
        alpha = np.float32(1.0 / (1.0 + 2.0 ** -d))
        self.splat = _csr(offsets.reshape(-1), points, weights.reshape(-1), (m, p))
        self.slice = _csr(points, offsets.reshape(-1), (weights * alpha).reshape(-1), (p, m))
        self.blurs = []
        own = torch.arange(m, device=device)
        for n1, n2 in neighbours:
            rows, cols, vals = [own], [own], [torch.ones(m, device=device)]
            for n in (n1, n2):
                there = n < m
                rows.append(own[there])
                cols.append(n[there])
                vals.append(torch.full((int(there.sum()),), 0.5, device=device))
            self.blurs.append(_csr(torch.cat(rows), torch.cat(cols), torch.cat(vals), (m, m)))

    def _index_vertices(self, keys: torch.Tensor):
        """Number the distinct vertex keys; per point its d+1 vertex numbers, and per lattice
        direction each vertex's two neighbours (``m`` where the lattice has none)."""
        d = self.d
        lo = int(keys.min()) - d - 1 if keys.numel() else 0
        radix = (int(keys.max()) + d + 1 - lo + 1) if keys.numel() else 1
        if d and radix ** d >= 2 ** 62:
            raise ValueError(f"lattice coordinates span {radix} values: too large to hash (features too far apart "
                             f"for their standard deviations)")
        weights = torch.tensor([radix ** k for k in range(d)], dtype=torch.long, device=keys.device)
        code = lambda k: ((k - lo) * weights).sum(-1)  # noqa: E731
        vertices, inverse = torch.unique(code(keys), sorted=True, return_inverse=True)
        self.m = m = vertices.numel()
        key_of_vertex = torch.empty((m, d), dtype=torch.long, device=keys.device)
        key_of_vertex[inverse] = keys
        neighbours = []
        for axis in range(d + 1):
            step = torch.ones(d, dtype=torch.long, device=keys.device)
            if axis < d:
                step[axis] = -d
            pair = []
            for sign in (-1, 1):  # n1 = key - 1 (key[axis] + d), n2 = key + 1 (key[axis] - d)
                want = code(key_of_vertex + sign * step)
                at = torch.searchsorted(vertices, want).clamp(max=max(m - 1, 0))
                pair.append(torch.where(vertices[at] == want, at, torch.full_like(at, m)))
            neighbours.append(pair)
        return inverse.view(-1, d + 1), neighbours

    def filter(self, values: torch.Tensor) -> torch.Tensor:
        """Splat ``values`` (P, V), blur, slice: the fork's ``Permutohedral::compute``."""
        grid = self.splat @ values.to(torch.float32)
        for blur in self.blurs:
            grid = blur @ grid
        return self.slice @ grid


def _csr(rows, cols, values, shape):
    """A float32 CSR matrix from (row, column, value) triplets without repeats."""
    order = torch.argsort(rows, stable=True)
    crow = torch.zeros(shape[0] + 1, dtype=torch.long, device=rows.device)
    crow[1:] = torch.cumsum(torch.bincount(rows, minlength=shape[0]), 0)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly disabled")
        return torch.sparse_csr_tensor(crow, cols[order], values[order].to(torch.float32), shape,
                                       check_invariants=False)


def _fast_softmax(energy: torch.Tensor) -> torch.Tensor:
    """densecrf's ExpAndNormalize: max-shifted exp where ``fast_exp`` is 0 below -20, then normalize."""
    shifted = energy - energy.max(dim=1, keepdim=True).values
    weights = torch.where(shifted < -20, torch.zeros_like(shifted), torch.exp(shifted))
    return weights / weights.sum(dim=1, keepdim=True)


@register_layer("DenseCRF")
class DenseCRF(Layer):
    """Fully connected CRF mean-field inference (DeepLab's post-processing; Krähenbühl & Koltun 2011).

    Per image, on the top-left ``H x W`` region given by bottom 1 (``[height, width]`` of the real
    image; when the blob is no larger in both directions the whole blob is used), with pixel
    ``i = (x, y)`` and the raw scores ``s`` of bottom 0 (the unary is ``-s``)::

        Q = softmax(s)
        repeat max_iter times:  Q = softmax(s + sum_k w_k * K_k(Q) / K_k(1))

    where each Potts kernel ``K_k`` is a Gaussian filter over features — ``(x, y) / pos_xy_std`` for
    each positional kernel, ``(x, y) / bi_xy_std, (B, G, R) / bi_rgb_std`` (bottom 2's three
    channels as they are, mean-subtracted) for each bilateral kernel — computed with densecrf's
    permutohedral lattice (self-contribution included), normalized per pixel by its response to
    ones (``+1e-20``). The softmax is densecrf's: exponentials of scores more than 20 below the
    maximum are 0. Everything is float32, as the fork.

    The top holds ``Q`` (``output_probability: true``, default) or ``log(max(Q, FLT_MIN))`` in the
    region and 0 outside it. No backward.

    Parameters: ``dense_crf_param { max_iter (10) pos_xy_std pos_w bi_xy_std bi_rgb_std bi_w
    (repeated: one kernel per entry) output_probability (true) }``.
    Shapes: scores ``(N, C, H, W)``, data_dim ``(N, 1, 1, 2)`` [, image ``(N, 3, H, W)``] ->
    ``(N, C, H, W)``.

    Example::

        layer { name: "crf" type: "DenseCRF" bottom: "fc8_interp" bottom: "data_dim" bottom: "data"
                top: "crf_inf" dense_crf_param { max_iter: 10 pos_w: 3 pos_xy_std: 3 bi_w: 5
                bi_xy_std: 50 bi_rgb_std: 10 } }

    Differs from the fork: ``fast_exp`` is a polynomial approximation of exp (relative error about
    1e-6); we use ``exp`` and keep its cut-off at -20. A ``data_dim`` larger than the blob in one
    direction only makes the fork read past the blob: an error here. With two bottoms the fork's
    Reshape reads a third that is not there; we run without bilateral kernels.
    """

    origin = "DeepLab v2 (deeplab-public-ver2; also hszhao/PSPNet)"
    min_bottoms, max_bottoms = 2, 3
    exact_tops = 1
    differentiable = False
    samples = (
        Sample("dense_crf_param { max_iter: 3 pos_w: 3 pos_xy_std: 1 bi_w: 4 bi_xy_std: 2 bi_rgb_std: 1 }",
               bottoms=((1, 3, 4, 5), (1, 1, 1, 2), (1, 3, 4, 5)), values=(None, ("const", 100.0), None),
               gradcheck=False, phase=TEST, note="whole image"),
        Sample("dense_crf_param { max_iter: 2 pos_w: 3 pos_xy_std: 2 bi_w: 5 bi_xy_std: 3 bi_rgb_std: 0.5 "
               "output_probability: false }",
               bottoms=((2, 2, 4, 4), (2, 1, 1, 2), (2, 3, 4, 4)), values=(None, ("const", 3.0), None),
               gradcheck=False, phase=TEST, note="3 x 3 real image in a 4 x 4 blob, log output"),
        Sample("dense_crf_param { max_iter: 2 pos_w: 1 pos_xy_std: 1 pos_w: 2 pos_xy_std: 3 }",
               bottoms=((1, 2, 3, 3), (1, 1, 1, 2)), values=(None, ("const", 3.0)),
               gradcheck=False, phase=TEST, note="no image: two positional kernels"),
    )

    def __init__(self, setup: LayerSetup):
        super().__init__(setup)
        p = setup.param.dense_crf_param
        self.max_iter, self.output_probability = p.max_iter, p.output_probability
        if len(p.pos_w) != len(p.pos_xy_std):
            raise self.fail(f"dense_crf_param pos_w ({len(p.pos_w)} values) and pos_xy_std ({len(p.pos_xy_std)}) "
                            f"must be given the same number of times")
        if not len(p.bi_w) == len(p.bi_xy_std) == len(p.bi_rgb_std):
            raise self.fail(f"dense_crf_param bi_w, bi_xy_std and bi_rgb_std must be given the same number of times, "
                            f"got {len(p.bi_w)}, {len(p.bi_xy_std)} and {len(p.bi_rgb_std)}")
        self.positional = list(zip(p.pos_w, p.pos_xy_std))
        self.bilateral = list(zip(p.bi_w, p.bi_xy_std, p.bi_rgb_std))
        self.has_image = len(setup.bottom_shapes) == 3
        if self.has_image and not self.bilateral:
            raise self.fail("has an image (bottom 2) but no bilateral kernel: set dense_crf_param bi_w, bi_xy_std "
                            "and bi_rgb_std, or remove bottom 2")
        self.top_shapes(setup.bottom_shapes)

    def top_shapes(self, bottom_shapes):
        n, c, h, w = _legacy_4d(self, bottom_shapes[0], "bottom 0 (the scores)")
        dims = bottom_shapes[1]
        if len(dims) < 1 or dims[0] != n or math.prod(dims[1:]) < 2:
            raise self.fail(f"bottom 1 (data_dim) must hold [height, width] per image, shape (N, 1, 1, 2) with "
                            f"N = {n}; got {list(dims)}")
        if self.has_image:
            image = _legacy_4d(self, bottom_shapes[2], "bottom 2 (the image)")
            if image[0] != n or image[1] != 3 or image[2:] != (h, w):
                raise self.fail(f"bottom 2 (the image) must have shape {[n, 3, h, w]} (3 colour channels, the "
                                f"scores' height and width); got {list(image)}")
        return [torch.Size((n, c, h, w))]

    def forward(self, scores, data_dim, image=None):
        n, c, h, w = scores.shape
        top = torch.zeros((n, c, h, w), dtype=scores.dtype, device=scores.device)
        with torch.no_grad():
            dims = data_dim.detach().reshape(n, -1)[:, :2].long().tolist()
            for b, (real_h, real_w) in enumerate(dims):
                if h <= real_h and w <= real_w:
                    eh, ew = h, w
                elif real_h <= h and real_w <= w:
                    eh, ew = real_h, real_w
                else:
                    raise self.fail(f"data_dim of image {b} is {real_h} x {real_w} but the scores are {h} x {w}: "
                                    f"larger in one direction only (DeepLab would read past the blob)")
                if eh <= 0 or ew <= 0:
                    continue
                img = None if image is None else image[b, :, :eh, :ew]
                q = self._infer(scores[b, :, :eh, :ew], img)
                out = q if self.output_probability else torch.log(q.clamp(min=FLT_MIN))
                top[b, :, :eh, :ew] = out.t().reshape(c, eh, ew).to(top.dtype)
        return top

    def _infer(self, scores: torch.Tensor, image: torch.Tensor | None) -> torch.Tensor:
        c, h, w = scores.shape
        device = scores.device
        unary = scores.to(torch.float32).reshape(c, -1).t()                     # (P, C): -unary
        ys, xs = torch.meshgrid(torch.arange(h, device=device, dtype=torch.float32),
                                torch.arange(w, device=device, dtype=torch.float32), indexing="ij")
        xy = torch.stack([xs.reshape(-1), ys.reshape(-1)], 1)
        kernels = []
        for weight, std in self.positional:
            kernels.append((weight, _div(xy, std)))
        if image is not None:
            colour = image.to(torch.float32).reshape(3, -1).t()
            for weight, xy_std, rgb_std in self.bilateral:
                kernels.append((weight, torch.cat([_div(xy, xy_std), _div(colour, rgb_std)], 1)))
        potentials = []
        ones = torch.ones((h * w, 1), dtype=torch.float32, device=device)
        for weight, features in kernels:
            lattice = PermutohedralLattice(features)
            norm = 1.0 / (lattice.filter(ones) + np.float32(1e-20))
            potentials.append((lattice, np.float32(weight) * norm))
        q = _fast_softmax(unary)
        for _ in range(self.max_iter):
            energy = unary.clone()
            for lattice, factor in potentials:
                energy += factor * lattice.filter(q)
            q = _fast_softmax(energy)
        return q


# ------------------------------------------------------------------------------------------------
# MatWrite
# ------------------------------------------------------------------------------------------------
_MI_INT8, _MI_INT32, _MI_UINT32, _MI_SINGLE, _MI_DOUBLE, _MI_MATRIX = 1, 5, 6, 7, 9, 14
_MX_SINGLE_CLASS, _MX_DOUBLE_CLASS = 7, 6


def _mat_element(data_type: int, payload: bytes) -> bytes:
    """One MAT v5 data element: the 8-byte tag, the data, padding to 8 bytes; payloads of at most
    4 bytes use the compact form (size and type in one 4-byte word, data in the next 4)."""
    if 0 < len(payload) <= 4:
        return struct.pack("<HH", data_type, len(payload)) + payload.ljust(4, b"\0")
    return struct.pack("<II", data_type, len(payload)) + payload + b"\0" * (-len(payload) % 8)


def mat_v5_bytes(name: str, array: np.ndarray) -> bytes:
    """A MAT-file version 5 (uncompressed) holding one numeric array ``name``, as matio's
    ``Mat_VarWrite`` lays it out: a 128-byte header (text, zero subsystem offset, version 0x0100,
    ``IM`` little-endian mark), then one ``miMATRIX`` element: array flags, dimensions, name and
    the real part in column-major order. ``array`` is stored as given (float32: single, float64:
    double); its dimensions are MATLAB's (first index fastest)."""
    array = np.asarray(array)
    kind = {np.dtype(np.float32): (_MI_SINGLE, _MX_SINGLE_CLASS), np.dtype(np.float64): (_MI_DOUBLE, _MX_DOUBLE_CLASS)}
    mi_type, mx_class = kind[array.dtype]
    text = (f"MATLAB 5.0 MAT-file, Platform: {os.name}, Created by: torchcaffe MatWrite on "
            f"{time.strftime('%a %b %d %H:%M:%S %Y')}").encode("ascii")[:116]
    header = text.ljust(116, b" ") + b"\0" * 8 + struct.pack("<H", 0x0100) + b"IM"
    body = (_mat_element(_MI_UINT32, struct.pack("<II", mx_class, 0))
            + _mat_element(_MI_INT32, struct.pack(f"<{array.ndim}i", *array.shape))
            + _mat_element(_MI_INT8, name.encode("ascii"))
            + _mat_element(mi_type, np.asfortranarray(array).astype(array.dtype.newbyteorder("<")).tobytes("F")))
    return header + struct.pack("<II", _MI_MATRIX, len(body)) + body


@register_layer("MatWrite")
class MatWrite(Layer):
    """Write each bottom to a MATLAB file every ``period`` forwards (DeepLab's feature dumps).

    At forward number ``t`` (counting from 0, per layer) with ``t % period == 0``, bottom ``i`` goes to
    ``<prefix><id>_blob_<i>.mat`` where ``id`` is line ``t`` of the ``source`` list (its first
    whitespace-separated word minus its last ``strip`` characters), or ``iter_<t>`` without a
    ``source``; running past the end of the list is an error. The file is MAT version 5 with one
    variable ``data`` — single (or double for a float64 blob), dimensions ``[W, H, C, N]`` so that
    MATLAB's column-major order is the blob's memory order (the whole batch in one file). The
    directory must exist. No top, no backward.

    Parameters: ``mat_write_param { prefix (required) source ("") strip (0) period (1) }``.
    Shapes: any bottoms -> nothing.

    Example::

        layer { name: "fc8_mat" type: "MatWrite" bottom: "fc8_interp"
                mat_write_param { prefix: "features/fc8/" source: "list/val_id.txt" strip: 0 period: 1 }
                include { phase: TEST } }
    """

    origin = "DeepLab v2 (deeplab-public-ver2; also hszhao/PSPNet)"
    exact_tops = 0
    differentiable = False
    samples = (
        Sample(f"mat_write_param {{ prefix: '{os.path.join(tempfile.gettempdir(), 'torchcaffe_matwrite_sample_')}' }}",
               bottoms=((1, 2, 3, 4),), gradcheck=False, phase=TEST,
               note="writes <tempdir>/torchcaffe_matwrite_sample_iter_0_blob_0.mat"),
    )

    def __init__(self, setup: LayerSetup):
        super().__init__(setup)
        p = setup.param.mat_write_param
        if not p.HasField("prefix"):
            raise self.fail("mat_write_param prefix is required (the path the files start with)")
        if p.period <= 0:
            raise self.fail(f"mat_write_param period must be positive, got {p.period}")
        self.prefix, self.period, self.iteration = p.prefix, p.period, 0
        self.names = self._read_source(p) if p.HasField("source") else None

    def _read_source(self, p) -> list[str]:
        if p.strip < 0:
            raise self.fail(f"mat_write_param strip cannot be negative, got {p.strip}")
        try:
            with open(p.source, newline="") as f:
                text = f.read()
        except OSError as error:
            raise self.fail(f"cannot open mat_write_param source {p.source!r}: {error.strerror}") from None
        lines = text.split("\n")  # std::getline: '\n' ends a line, a final '\n' adds none
        if lines and lines[-1] == "":
            lines.pop()
        names = []
        for number, line in enumerate(lines, 1):
            word = line.split()[0] if line.split() else ""
            if len(word) <= p.strip:
                raise self.fail(f"mat_write_param strip {p.strip} removes all of {word!r} (line {number} of "
                                f"{p.source}): too much stripping")
            names.append(word[:len(word) - p.strip])
        return names

    def top_shapes(self, bottom_shapes):
        return []

    def forward(self, *bottoms):
        t = self.iteration
        self.iteration += 1
        if t % self.period:
            return ()
        if self.names is not None and t >= len(self.names):
            raise self.fail(f"forward {t} has no name: the source list has {len(self.names)} line(s) (the test ran "
                            f"for more iterations than it lists)")
        stem = self.prefix + (self.names[t] if self.names is not None else f"iter_{t}")
        for i, blob in enumerate(bottoms):
            array = blob.detach().cpu()
            array = array.numpy() if array.dtype in (torch.float32, torch.float64) else array.float().numpy()
            shape4 = tuple(array.shape) + (1,) * (4 - array.ndim) if array.ndim <= 4 else None
            if shape4 is None:
                raise self.fail(f"bottom {i} has {array.ndim} axes; MatWrite writes blobs of at most 4 (N, C, H, W)")
            # (N, C, H, W) in C order is (W, H, C, N) in MATLAB's column-major order
            matlab = array.reshape(shape4).transpose(3, 2, 1, 0)
            path = f"{stem}_blob_{i}.mat"
            try:
                with open(path, "wb") as f:
                    f.write(mat_v5_bytes("data", matlab))
            except OSError as error:
                raise self.fail(f"cannot create MAT file {path!r}: {error.strerror}") from None
        return ()
