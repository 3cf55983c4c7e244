"""The small functions and modules a generated PyTorch file carries for Caffe's numerics.

The PyTorch-source exporter copies the source of the ones a net needs into the generated file
(with the ones they use, listed in ``USES``), so everything here must stand alone: it may use
``torch``, ``torch.nn.functional as F``, ``torch.nn as nn`` and the other helpers, nothing else.
Each says what Caffe does that torch's own call does not. They are tested against torchcaffe's
layers through the corpus export tests.
"""
import torch
import torch.nn.functional as F
from torch import nn


def caffe_pool_size(size, kernel, stride, pad, ceil_mode):
    """Caffe's pooled size of one axis: ceil (or floor) of ``(size + 2 pad - kernel) / stride``,
    plus one; with padding, a last window that would start in the padding is dropped."""
    span = size + 2 * pad - kernel
    out = (-(-span // stride) if ceil_mode else span // stride) + 1
    if pad > 0 and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def caffe_max_pool2d(x, kernel, stride, pad, ceil_mode=True):
    """Caffe's MAX pooling where torch's windows differ (pad > kernel / 2, or a last window that
    starts past the input): the input padded with -inf to exactly Caffe's windows. A window that
    holds no input at all gives Caffe's -FLT_MAX."""
    height, width = x.shape[-2:]
    out_h = caffe_pool_size(height, kernel[0], stride[0], pad[0], ceil_mode)
    out_w = caffe_pool_size(width, kernel[1], stride[1], pad[1], ceil_mode)
    right = (out_w - 1) * stride[1] + kernel[1] - width - pad[1]
    bottom = (out_h - 1) * stride[0] + kernel[0] - height - pad[0]
    padded = F.pad(x, (pad[1], right, pad[0], bottom), value=float("-inf"))
    y = F.max_pool2d(padded, kernel, stride)
    return y.clamp(min=torch.finfo(x.dtype).min)


def caffe_avg_pool2d(x, kernel, stride, pad, ceil_mode=True):
    """Caffe's AVE pooling where torch's windows differ: the sum over the image part of each window
    divided by the window clipped to the padded input (``min(start + k, size + pad) - start``)."""
    height, width = x.shape[-2:]
    out_h = caffe_pool_size(height, kernel[0], stride[0], pad[0], ceil_mode)
    out_w = caffe_pool_size(width, kernel[1], stride[1], pad[1], ceil_mode)
    right = (out_w - 1) * stride[1] + kernel[1] - width - pad[1]
    bottom = (out_h - 1) * stride[0] + kernel[0] - height - pad[0]
    sums = F.avg_pool2d(F.pad(x, (pad[1], right, pad[0], bottom)), kernel, stride, divisor_override=1)
    rows = torch.arange(out_h, device=x.device) * stride[0] - pad[0]
    cols = torch.arange(out_w, device=x.device) * stride[1] - pad[1]
    rows = (torch.clamp(rows + kernel[0], max=height + pad[0]) - rows).to(x.dtype)
    cols = (torch.clamp(cols + kernel[1], max=width + pad[1]) - cols).to(x.dtype)
    return sums / (rows[:, None] * cols[None, :])


def caffe_lrn_within_channel(x, size, alpha, beta):
    """Caffe's WITHIN_CHANNEL LRN: ``x * (1 + alpha * avg)^-beta``, ``avg`` the mean of x^2 over a
    size x size window (padding counts in the divisor); Caffe ignores ``k`` here."""
    average = F.avg_pool2d(x * x, size, stride=1, padding=(size - 1) // 2, count_include_pad=True)
    return x * (1 + alpha * average).pow(-beta)


class BatchNorm(nn.Module):
    """Caffe's BatchNorm at test time: ``(x - mean) / sqrt(var + eps)`` per channel (axis 1), with
    Caffe's running sums already divided by its scale factor. No affine part: a Scale layer follows.
    (``nn.BatchNorm2d(C, eps, affine=False)`` in eval mode computes the same up to rounding: it
    multiplies by ``1 / sqrt(var + eps)``.)"""

    def __init__(self, channels, eps=1e-5):
        super().__init__()
        self.register_buffer("mean", torch.zeros(channels))
        self.register_buffer("var", torch.ones(channels))
        self.eps = eps

    def forward(self, x):
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return (x - self.mean.view(shape)) / torch.sqrt(self.var + self.eps).view(shape)


class Scale(nn.Module):
    """Caffe's Scale layer: ``x * weight (+ bias)``, the parameters shaped to broadcast along the
    axes they span (e.g. ``(C, 1, 1)`` for a per-channel scale of an NCHW tensor)."""

    def __init__(self, shape, bias=False):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(shape))
        self.bias = nn.Parameter(torch.zeros(shape)) if bias else None

    def forward(self, x):
        y = x * self.weight
        return y if self.bias is None else y + self.bias


class Bias(nn.Module):
    """Caffe's Bias layer: ``x + bias``, the bias shaped to broadcast along the axes it spans."""

    def __init__(self, shape):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(shape))

    def forward(self, x):
        return x + self.bias


class Normalize(nn.Module):
    """SSD's Normalize: ``x / sqrt(sum(x^2) + eps)`` over the channels at each position (or over
    C*H*W with ``across_spatial``), times a learned scale per channel (or one shared scale)."""

    def __init__(self, channels, across_spatial=False, channel_shared=False, eps=1e-10):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(() if channel_shared else (channels,)))
        self.across_spatial, self.channel_shared, self.eps = across_spatial, channel_shared, eps

    def forward(self, x):
        n, c = x.shape[0], x.shape[1]
        flat = x.reshape(n, c, -1)
        if self.across_spatial:
            y = flat * (1.0 / torch.sqrt((flat * flat).sum(dim=(1, 2), keepdim=True) + self.eps))
        else:
            y = flat / torch.sqrt((flat * flat).sum(dim=1, keepdim=True) + self.eps)
        scale = self.weight if self.channel_shared else self.weight.reshape(1, c, 1)
        return (y * scale).reshape(x.shape)


class Fixed(nn.Module):
    """A blob whose values depend only on the sizes of the net's blobs (SSD's PriorBox), stored as
    computed for the exported input size: feed inputs of that size."""

    def __init__(self, shape):
        super().__init__()
        self.register_buffer("value", torch.zeros(shape))

    def forward(self, *sizes_from):
        return self.value


def caffe_interp(x, height, width):
    """DeepLab's Interp: bilinear resize with the corners aligned, its sampling grid computed in
    float32 as the fork does (``F.interpolate(..., mode="bilinear", align_corners=True)`` samples
    the same points, with weights rounded differently)."""
    def axis(size_in, size_out):
        ratio = (torch.tensor(size_in - 1, dtype=torch.float32) / (size_out - 1)) if size_out > 1 else torch.tensor(0.0)
        pos = ratio * torch.arange(size_out, dtype=torch.float32)
        low = pos.long()
        high = low + (low < size_in - 1).long()
        return low.to(x.device), high.to(x.device), (pos - low.to(torch.float32)).to(x.device, x.dtype)

    r0, r1, lam_h = axis(x.shape[2], height)
    c0, c1, lam_w = axis(x.shape[3], width)
    lam_h = lam_h.view(-1, 1)
    top, bottom = x.index_select(2, r0), x.index_select(2, r1)
    return ((1 - lam_h) * ((1 - lam_w) * top.index_select(3, c0) + lam_w * top.index_select(3, c1))
            + lam_h * ((1 - lam_w) * bottom.index_select(3, c0) + lam_w * bottom.index_select(3, c1)))


def caffe_roi_pool(x, rois, pooled_h, pooled_w, spatial_scale):
    """Fast R-CNN's ROI max pooling. Each ROI ``[batch, x1, y1, x2, y2]`` is scaled and rounded as
    C rounds (halves away from zero), at least 1 x 1, split into pooled_h x pooled_w bins with
    floor/ceil edges (float32 arithmetic, as the fork's); a bin outside the map gives 0."""
    rois = rois.reshape(-1, 5).to(torch.float32)
    scaled = rois[:, 1:] * spatial_scale
    whole = torch.trunc(scaled)
    x1, y1, x2, y2 = (whole + torch.sign(scaled) * ((scaled - whole).abs() >= 0.5)).long().unbind(1)
    height, width = x.shape[-2:]
    edges = []
    for start, end, pooled, limit in ((y1, y2, pooled_h, height), (x1, x2, pooled_w, width)):
        size = (end - start + 1).clamp(min=1).to(torch.float32)
        bin_size = size / torch.full_like(size, pooled)
        k = torch.arange(pooled, dtype=torch.float32)
        lo = torch.floor(k * bin_size[:, None]).long() + start[:, None]
        hi = torch.ceil((k + 1) * bin_size[:, None]).long() + start[:, None]
        edges.append((lo.clamp(0, limit).tolist(), hi.clamp(0, limit).tolist()))
    (top, bottom), (left, right) = edges
    out = x.new_zeros((rois.shape[0], x.shape[1], pooled_h, pooled_w))
    for r, image in enumerate(rois[:, 0].long().tolist()):
        for i in range(pooled_h):
            for j in range(pooled_w):
                if bottom[r][i] > top[r][i] and right[r][j] > left[r][j]:
                    window = x[image, :, top[r][i]:bottom[r][i], left[r][j]:right[r][j]]
                    out[r, :, i, j] = window.amax(dim=(-2, -1))
    return out


def caffe_psroi_pool(x, rois, output_dim, group, spatial_scale):
    """R-FCN's position-sensitive ROI average pooling. The ROI ends are rounded as C rounds
    (halves away from zero), the end gets ``+ 1``, both are scaled in float32; the ROI is at least
    0.1 wide, split into group x group bins with floor/ceil edges clipped to the map. Bin
    ``(ph, pw)`` of output channel ``o`` averages input channel ``(o * group + ph) * group + pw``
    (an empty bin gives 0)."""
    rois = rois.reshape(-1, 5).to(torch.float32)
    whole = torch.trunc(rois[:, 1:])
    rounded = whole + torch.sign(rois[:, 1:]) * ((rois[:, 1:] - whole).abs() >= 0.5)
    scale = torch.tensor(spatial_scale, dtype=torch.float32)
    start, end = rounded[:, :2] * scale, (rounded[:, 2:] + 1) * scale
    bin_size = (end - start).clamp(min=0.1) / torch.full_like(start, group)
    k = torch.arange(group, dtype=torch.float32)
    height, width = x.shape[-2:]
    edges = []
    for axis, limit in ((1, height), (0, width)):
        lo = torch.floor(k * bin_size[:, axis, None] + start[:, axis, None]).long().clamp(0, limit)
        hi = torch.ceil((k + 1) * bin_size[:, axis, None] + start[:, axis, None]).long().clamp(0, limit)
        edges.append((lo.tolist(), hi.tolist()))
    (top, bottom), (left, right) = edges
    out = x.new_zeros((rois.shape[0], output_dim, group, group))
    first = torch.arange(output_dim, device=x.device) * group * group
    for r, image in enumerate(rois[:, 0].long().tolist()):
        for i in range(group):
            for j in range(group):
                if bottom[r][i] > top[r][i] and right[r][j] > left[r][j]:
                    window = x[image, first + i * group + j, top[r][i]:bottom[r][i], left[r][j]:right[r][j]]
                    out[r, :, i, j] = window.to(torch.float64).mean(dim=(-2, -1)).to(x.dtype)
    return out


#: The helpers each helper calls, copied along with it.
USES = {
    "caffe_max_pool2d": ("caffe_pool_size",),
    "caffe_avg_pool2d": ("caffe_pool_size",),
}
