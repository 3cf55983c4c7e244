"""Segmentation and region-based detection fork layers: ROIPooling, PSROIPooling, Interp, BN
(PSPNet and SegNet), Upsample (SegNet unpooling and YOLOv3 nearest), SegAccuracy, DenseCRF,
MatWrite, DeepLab's ``hole`` convolution field and SegNet's SoftmaxWithLoss ``class_weighting``.

The references are loop implementations of each fork's CPU code, written here in numpy with the
fork's float32 arithmetic: rbgirshick/caffe-fast-rcnn's ROIPoolingLayer, daijifeng001/caffe-rfcn's
PSROIPoolingForward_cpu, DeepLab's caffe_cpu_interp2, hszhao/PSPNet's and alexgkendall/caffe-segnet's
bn_layer.cpp, caffe-segnet's upsample and softmax_loss layers, DeepLab's seg_accuracy_layer and
ConfusionMatrix, and a literal port of densecrf's permutohedral.cpp with DeepLab's mean field.
"""
from __future__ import annotations

import math
import struct

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from google.protobuf import text_format

import torchcaffe
from torchcaffe.io.prototxt import read_net
from torchcaffe.layers import LayerSetup, layer_class
from torchcaffe.layers.forks import PermutohedralLattice, bn_flavour
from torchcaffe.proto import caffe_pb2

from ..conftest import requires_shared, shared_dir
from ..corpus import VARIABLES, substitute
from .harness import expect_error, make_layer, net_from

RNG = np.random.default_rng(23)
F32 = np.float32
FLT_MAX = float(np.finfo(np.float32).max)
FLT_MIN = float(np.finfo(np.float32).tiny)


def c_round(v: float) -> int:
    """C's round(): halves away from zero."""
    return int(math.copysign(math.floor(abs(float(v)) + 0.5), float(v)))


def forward_backward(layer, *arrays, dtype=torch.float32, grad_of=(0,), top_grad=None):
    """Forward ``arrays`` (float ``dtype``), backward a random top diff; returns top, bottom grads, top diff."""
    layer = layer.to(dtype)
    xs = [torch.tensor(np.asarray(a), dtype=dtype, requires_grad=i in grad_of) for i, a in enumerate(arrays)]
    top = layer(*xs)
    grad = RNG.standard_normal(tuple(top.shape)).astype(np.float32) if top_grad is None else top_grad
    top.backward(torch.tensor(grad, dtype=dtype))
    return top.detach().numpy(), [x.grad.numpy() if x.grad is not None else None for x in xs], grad


def random_rois(r, n, extent, rng, scale_to=1.0):
    """ROIs [b, x1, y1, x2, y2] with .5 corners, malformed and outside boxes among them."""
    rois = np.zeros((r, 5), dtype=np.float32)
    rois[:, 0] = rng.integers(0, n, size=r)
    rois[:, 1:] = rng.integers(-2, extent + 3, size=(r, 4)) + rng.choice([0.0, 0.5, 0.25], size=(r, 4))
    return rois * np.array([1, scale_to, scale_to, scale_to, scale_to], dtype=np.float32)


# ================================================================================================
# ROIPooling
# ================================================================================================
def roi_pool_ref(x, rois, pooled_h, pooled_w, scale):
    """rbgirshick/caffe-fast-rcnn ROIPoolingLayer::Forward_cpu, float32, with its argmax."""
    n, c, h, w = x.shape
    r = rois.shape[0]
    top = np.full((r, c, pooled_h, pooled_w), -FLT_MAX, dtype=np.float32)
    arg = np.full((r, c, pooled_h, pooled_w), -1, dtype=np.int64)
    s = F32(scale)
    for i in range(r):
        b = int(rois[i, 0])
        xs, ys, xe, ye = (c_round(F32(rois[i, k]) * s) for k in (1, 2, 3, 4))
        roi_h, roi_w = max(ye - ys + 1, 1), max(xe - xs + 1, 1)
        bin_h, bin_w = F32(roi_h) / F32(pooled_h), F32(roi_w) / F32(pooled_w)
        for ch in range(c):
            for ph in range(pooled_h):
                for pw in range(pooled_w):
                    hs = min(max(int(math.floor(F32(ph) * bin_h)) + ys, 0), h)
                    he = min(max(int(math.ceil(F32(ph + 1) * bin_h)) + ys, 0), h)
                    ws = min(max(int(math.floor(F32(pw) * bin_w)) + xs, 0), w)
                    we = min(max(int(math.ceil(F32(pw + 1) * bin_w)) + xs, 0), w)
                    if he <= hs or we <= ws:
                        top[i, ch, ph, pw] = 0
                        continue
                    for yy in range(hs, he):
                        for xx in range(ws, we):
                            if x[b, ch, yy, xx] > top[i, ch, ph, pw]:
                                top[i, ch, ph, pw] = x[b, ch, yy, xx]
                                arg[i, ch, ph, pw] = yy * w + xx
    return top, arg


def roi_pool_backward_ref(x_shape, rois, arg, dtop):
    """The fork's backward: each top diff goes to its bin's argmax (summed)."""
    dx = np.zeros(x_shape, dtype=np.float64)
    n, c, h, w = x_shape
    for i, ch, ph, pw in np.ndindex(arg.shape):
        if arg[i, ch, ph, pw] >= 0:
            b = int(rois[i, 0])
            dx[b, ch].reshape(-1)[arg[i, ch, ph, pw]] += dtop[i, ch, ph, pw]
    return dx


@pytest.mark.parametrize("shape,pooled,scale,r", [((2, 3, 7, 9), (3, 2), 0.5, 6), ((1, 2, 6, 6), (2, 2), 0.25, 5),
                                                  ((3, 1, 5, 4), (4, 3), 1.0, 7), ((1, 2, 9, 8), (7, 7), 0.0625, 4)])
def test_roi_pooling_matches_the_fork(shape, pooled, scale, r):
    x = RNG.standard_normal(shape).astype(np.float32)
    rois = random_rois(r, shape[0], max(shape[2:]), RNG, scale_to=1 / scale)
    layer = make_layer("ROIPooling", f"roi_pooling_param {{ pooled_h: {pooled[0]} pooled_w: {pooled[1]} "
                                     f"spatial_scale: {scale} }}", shape, rois.shape)
    top, (dx, drois), dtop = forward_backward(layer, x, rois)
    ref, arg = roi_pool_ref(x, rois, *pooled, scale)
    np.testing.assert_array_equal(top, ref)
    np.testing.assert_allclose(dx, roi_pool_backward_ref(shape, rois, arg, dtop), rtol=1e-6, atol=1e-6)
    assert drois is None


def test_roi_pooling_rounds_half_away_from_zero_and_ends_are_inclusive():
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    # 0.5 and 2.5 round to 1 and 3 (half to even: 0 and 2); the box [1, 3] x [1, 3] includes its ends
    layer = make_layer("ROIPooling", "roi_pooling_param { pooled_h: 1 pooled_w: 1 spatial_scale: 0.5 }",
                       x.shape, (1, 5))
    top, _, _ = forward_backward(layer, x, np.array([[0, 1, 1, 5, 5]], dtype=np.float32))
    assert top.item() == x[0, 0, 1:4, 1:4].max() == 15
    top, _, _ = forward_backward(layer, x, np.array([[0, 1, 1, 3, 3]], dtype=np.float32))
    assert top.item() == x[0, 0, 1:3, 1:3].max() == 10


def test_roi_pooling_ties_go_to_the_first_maximum_in_scan_order():
    x = np.array([[[[1, 3, 3], [3, 0, 3], [2, 2, 2]]]], dtype=np.float32)
    layer = make_layer("ROIPooling", "roi_pooling_param { pooled_h: 1 pooled_w: 1 }", x.shape, (2, 5))
    rois = np.array([[0, 0, 0, 2, 2], [0, 0, 1, 2, 2]], dtype=np.float32)
    top, (dx, _), _ = forward_backward(layer, x, rois, top_grad=np.array([[[[1.0]]], [[[10.0]]]], dtype=np.float32))
    assert top.ravel().tolist() == [3, 3]
    want = np.zeros_like(x)
    want[0, 0, 0, 1] = 1  # first 3 of the whole map
    want[0, 0, 1, 0] = 10  # first 3 from row 1 on
    np.testing.assert_array_equal(dx, want)


def test_roi_pooling_values_at_or_below_minus_flt_max_give_minus_flt_max():
    x = np.full((1, 1, 2, 2), -np.inf, dtype=np.float32)
    layer = make_layer("ROIPooling", "roi_pooling_param { pooled_h: 1 pooled_w: 2 }", x.shape, (1, 5))
    top, _, _ = forward_backward(layer, x, np.array([[0, 0, 0, 3, 1]], dtype=np.float32))
    # bin 0 covers real pixels (all -inf: never > -FLT_MAX), bin 1 lies outside the map (empty: 0)
    assert top.ravel().tolist() == [-FLT_MAX, 0.0]


def test_roi_pooling_in_a_net_gives_no_gradient_to_the_rois():
    net = net_from("""force_backward: true
        layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 1 dim: 2 dim: 4 dim: 4 } } }
        layer { name: "r" type: "Input" top: "rois" input_param { shape { dim: 2 dim: 5 } } }
        layer { name: "p" type: "ROIPooling" bottom: "x" bottom: "rois" top: "p"
                roi_pooling_param { pooled_h: 2 pooled_w: 2 } loss_weight: 1 }""")
    net.blobs["x"].data[...] = RNG.standard_normal((1, 2, 4, 4))
    net.blobs["rois"].data[...] = [[0, 0, 0, 3, 3], [0, 1, 0, 2, 3]]
    net.forward()
    net.backward()
    assert not net.blobs["rois"].diff.any() and net.blobs["x"].diff.any()


@pytest.mark.parametrize("params,shapes,words", [
    ("roi_pooling_param { pooled_h: 0 pooled_w: 2 }", [(1, 1, 3, 3), (1, 5)], ["pooled_h"]),
    ("roi_pooling_param { pooled_h: 2 pooled_w: 2 }", [(1, 1, 3, 3), (1, 4)], ["ROIs", "5"]),
    ("roi_pooling_param { pooled_h: 2 pooled_w: 2 }", [(1, 3, 3), (1, 5)], ["4 axes"]),
])
def test_roi_pooling_malformed_parameters_are_refused(params, shapes, words):
    expect_error(['"L" (ROIPooling)'] + words, make_layer, "ROIPooling", params, *shapes)


def test_roi_pooling_batch_index_out_of_range_is_refused():
    layer = make_layer("ROIPooling", "roi_pooling_param { pooled_h: 1 pooled_w: 1 }", (2, 1, 3, 3), (1, 5))
    expect_error(["batch index 2", "[0, 1]"], layer, torch.zeros(2, 1, 3, 3), torch.tensor([[2.0, 0, 0, 1, 1]]))


# ================================================================================================
# PSROIPooling
# ================================================================================================
def psroi_ref(x, rois, scale, output_dim, group):
    """daijifeng001/caffe-rfcn PSROIPoolingForward_cpu (float32), and each bin's [h0, h1, w0, w1, c]."""
    n, c, h, w = x.shape
    r = rois.shape[0]
    top = np.zeros((r, output_dim, group, group), dtype=np.float32)
    bins = {}
    s = F32(scale)
    for i in range(r):
        b = int(rois[i, 0])
        xs, ys = F32(c_round(rois[i, 1])) * s, F32(c_round(rois[i, 2])) * s
        xe, ye = F32(c_round(rois[i, 3]) + 1.0) * s, F32(c_round(rois[i, 4]) + 1.0) * s
        rw, rh = max(F32(xe - xs), F32(0.1)), max(F32(ye - ys), F32(0.1))
        bh, bw = F32(rh / F32(group)), F32(rw / F32(group))
        for o, ph, pw in np.ndindex(output_dim, group, group):
            hs = min(max(int(math.floor(F32(F32(ph) * bh) + ys)), 0), h)
            he = min(max(int(math.ceil(F32(F32(ph + 1) * bh) + ys)), 0), h)
            ws = min(max(int(math.floor(F32(F32(pw) * bw) + xs)), 0), w)
            we = min(max(int(math.ceil(F32(F32(pw + 1) * bw) + xs)), 0), w)
            ch = (o * group + ph) * group + pw
            bins[i, o, ph, pw] = (b, ch, hs, he, ws, we)
            if he <= hs or we <= ws:
                continue
            total = F32(0)
            for yy in range(hs, he):
                for xx in range(ws, we):
                    total = F32(total + x[b, ch, yy, xx])
            top[i, o, ph, pw] = total / F32((he - hs) * (we - ws))
    return top, bins


@pytest.mark.parametrize("shape,od,g,scale,r", [((2, 8, 6, 7), 2, 2, 0.5, 6), ((1, 9, 5, 5), 1, 3, 1.0, 5),
                                               ((2, 12, 4, 6), 3, 2, 0.25, 7), ((1, 49, 8, 8), 1, 7, 0.0625, 3)])
def test_psroi_pooling_matches_the_fork(shape, od, g, scale, r):
    x = RNG.standard_normal(shape).astype(np.float32)
    rois = random_rois(r, shape[0], max(shape[2:]), RNG, scale_to=1 / scale)
    layer = make_layer("PSROIPooling", f"psroi_pooling_param {{ spatial_scale: {scale} output_dim: {od} "
                                       f"group_size: {g} }}", shape, rois.shape)
    top, (dx, _), dtop = forward_backward(layer, x, rois)
    ref, bins = psroi_ref(x, rois, scale, od, g)
    np.testing.assert_allclose(top, ref, rtol=1e-5, atol=1e-6)
    want = np.zeros(shape)
    for (i, o, ph, pw), (b, ch, hs, he, ws, we) in bins.items():
        if he > hs and we > ws:
            want[b, ch, hs:he, ws:we] += dtop[i, o, ph, pw] / ((he - hs) * (we - ws))
    np.testing.assert_allclose(dx, want, rtol=1e-5, atol=1e-6)


def test_psroi_pooling_rounds_image_coordinates_half_away_from_zero():
    x = np.arange(36, dtype=np.float32).reshape(1, 1, 6, 6)
    layer = make_layer("PSROIPooling", "psroi_pooling_param { spatial_scale: 1 output_dim: 1 group_size: 1 }",
                       x.shape, (1, 5))
    top, _, _ = forward_backward(layer, x, np.array([[0, 0.5, 0.5, 2.5, 2.5]], dtype=np.float32))
    # round(0.5) = 1, round(2.5) + 1 = 4: rows and columns 1..3 (half to even would give 0..2)
    assert top.item() == pytest.approx(x[0, 0, 1:4, 1:4].mean())


@pytest.mark.parametrize("params,shapes,words", [
    ("psroi_pooling_param { spatial_scale: 1 output_dim: 2 group_size: 2 }", [(1, 7, 3, 3), (1, 5)], ["8"]),
    ("psroi_pooling_param { spatial_scale: 1 output_dim: 0 group_size: 2 }", [(1, 4, 3, 3), (1, 5)], ["output_dim"]),
])
def test_psroi_pooling_malformed_parameters_are_refused(params, shapes, words):
    expect_error(['"L" (PSROIPooling)'] + words, make_layer, "PSROIPooling", params, *shapes)


# ================================================================================================
# Interp
# ================================================================================================
def interp_ref(x, h_out, w_out, pad_beg=0, pad_end=0):
    """DeepLab's caffe_cpu_interp2 on the crop [-pad_beg, -pad_beg + eff), float32."""
    n, c, h, w = x.shape
    he, we = h + pad_beg + pad_end, w + pad_beg + pad_end
    crop = x[:, :, -pad_beg:-pad_beg + he, -pad_beg:-pad_beg + we]
    if (he, we) == (h_out, w_out):
        return crop.copy()
    out = np.zeros((n, c, h_out, w_out), dtype=np.float32)
    rh = F32(he - 1) / F32(h_out - 1) if h_out > 1 else F32(0)
    rw = F32(we - 1) / F32(w_out - 1) if w_out > 1 else F32(0)
    for y in range(h_out):
        pos_h = F32(rh * F32(y))
        y0 = int(pos_h)
        yp = 1 if y0 < he - 1 else 0
        l1 = F32(pos_h - F32(y0))
        l0 = F32(1) - l1
        for xx in range(w_out):
            pos_w = F32(rw * F32(xx))
            x0 = int(pos_w)
            xp = 1 if x0 < we - 1 else 0
            m1 = F32(pos_w - F32(x0))
            m0 = F32(1) - m1
            out[:, :, y, xx] = (l0 * (m0 * crop[:, :, y0, x0] + m1 * crop[:, :, y0, x0 + xp])
                                + l1 * (m0 * crop[:, :, y0 + yp, x0] + m1 * crop[:, :, y0 + yp, x0 + xp]))
    return out


INTERP_CASES = [  # params, bottom shape, expected (H_out, W_out)
    ("interp_param { zoom_factor: 8 }", (1, 2, 5, 4), (33, 25)),
    ("interp_param { shrink_factor: 8 }", (1, 1, 321, 313), (41, 40)),
    ("interp_param { shrink_factor: 8 pad_beg: 0 pad_end: 0 }", (2, 1, 17, 9), (3, 2)),
    ("interp_param { height: 7 width: 3 }", (1, 2, 4, 6), (7, 3)),
    ("interp_param { shrink_factor: 2 zoom_factor: 3 }", (1, 1, 7, 6), (10, 7)),
    ("interp_param { zoom_factor: 2 pad_beg: -1 pad_end: -2 }", (1, 1, 8, 9), (9, 11)),
    ("interp_param { zoom_factor: 2 shrink_factor: 2 height: 5 width: 5 }", (1, 1, 6, 6), (5, 5)),
    ("interp_param { height: 1 width: 1 }", (1, 2, 3, 4), (1, 1)),
]


@pytest.mark.parametrize("params,shape,out", INTERP_CASES)
def test_interp_sizes_and_values_follow_the_fork(params, shape, out):
    x = RNG.standard_normal(shape).astype(np.float32)
    layer = make_layer("Interp", params, shape)
    assert layer.top_shapes([torch.Size(shape)])[0][2:] == out
    p = text_format.Parse(params, caffe_pb2.LayerParameter())
    top, (dx, ), dtop = forward_backward(layer, x)
    ref = interp_ref(x, *out, p.interp_param.pad_beg, p.interp_param.pad_end)
    np.testing.assert_allclose(top, ref, rtol=1e-6, atol=1e-6)
    # the backward is the adjoint: <top(x), g> == <x, dx> for the linear map
    assert float((top.astype(np.float64) * dtop).sum()) == pytest.approx(float((x.astype(np.float64) * dx).sum()),
                                                                         rel=1e-5, abs=1e-5)


def test_interp_takes_the_size_of_a_second_bottom_which_gets_no_gradient():
    layer = make_layer("Interp", "", (1, 2, 3, 3), (4, 7, 5, 6))
    x = RNG.standard_normal((1, 2, 3, 3)).astype(np.float32)
    top, (dx, dsize), _ = forward_backward(layer, x, np.zeros((4, 7, 5, 6), np.float32), grad_of=(0, 1))
    assert top.shape == (1, 2, 5, 6) and dsize is None
    np.testing.assert_allclose(top, interp_ref(x, 5, 6), rtol=1e-6, atol=1e-6)


def test_interp_is_align_corners_bilinear():
    x = torch.randn(2, 3, 5, 7)
    layer = make_layer("Interp", "interp_param { height: 11 width: 8 }", tuple(x.shape))
    torch.testing.assert_close(layer(x), F.interpolate(x, size=(11, 8), mode="bilinear", align_corners=True),
                               rtol=1e-5, atol=1e-5)


def test_interp_shrinks_labels_onto_exact_pixels():
    """DeepLab shrinks label maps with Interp: 321 -> 41 samples every 8th pixel, no blending."""
    label = RNG.integers(0, 21, size=(1, 1, 321, 321)).astype(np.float32)
    layer = make_layer("Interp", "interp_param { shrink_factor: 8 pad_beg: 0 pad_end: 0 }", label.shape)
    np.testing.assert_array_equal(layer(torch.tensor(label)).numpy(), label[:, :, ::8, ::8])


@pytest.mark.parametrize("params,shapes,words", [
    ("interp_param { zoom_factor: 2 pad_beg: 1 }", [(1, 1, 3, 3)], ["pad_beg", "<= 0"]),
    ("interp_param { zoom_factor: 0 }", [(1, 1, 3, 3)], ["zoom_factor", ">= 1"]),
    ("interp_param { height: 3 }", [(1, 1, 3, 3)], ["output size", "height and width"]),
    ("interp_param { zoom_factor: 2 pad_beg: -2 pad_end: -1 }", [(1, 1, 3, 3)], ["cropping"]),
    ("interp_param { zoom_factor: 2 }", [(1, 3, 3)], ["4 axes"]),
])
def test_interp_malformed_parameters_are_refused(params, shapes, words):
    expect_error(['"L" (Interp)'] + words, make_layer, "Interp", params, *shapes)


# ================================================================================================
# BN
# ================================================================================================
PSP = "bn_param { slope_filler { type: 'gaussian' } bias_filler { type: 'gaussian' } "


def psp_bn_ref(x, slope, bias, mean, var, eps, momentum, train, unbiased):
    """PSPNet bn_layer.cpp (CAFFE) / cuDNN (unbiased running variance); returns top and new mean/var."""
    dims = (0,) + tuple(range(2, x.ndim))
    view = (1, -1) + (1,) * (x.ndim - 2)
    if train:
        mu = x.mean(axis=dims)
        v = ((x - mu.reshape(view)) ** 2).mean(axis=dims)
        m = x.size // x.shape[1]
        stored_v = v * m / (m - 1) if unbiased else v
        new_mean, new_var = momentum * mean + (1 - momentum) * mu, momentum * var + (1 - momentum) * stored_v
    else:
        mu, v, new_mean, new_var = mean, var, mean, var
    y = (x - mu.reshape(view)) * (v.reshape(view) + eps) ** -0.5 * slope.reshape(view) + bias.reshape(view)
    return y, new_mean, new_var


@pytest.mark.parametrize("extra,phase,shape,unbiased,eps", [
    ("momentum: 0.8 engine: CAFFE", torchcaffe.TRAIN, (3, 2, 4, 3), False, 1e-5),
    ("momentum: 0.95 engine: CUDNN", torchcaffe.TRAIN, (2, 3, 2, 2), True, 1e-5),
    ("eps: 1e-7", torchcaffe.TRAIN, (4, 2), True, 1e-5),          # DEFAULT is cuDNN: eps raised to 1e-5
    ("eps: 1e-7 engine: CAFFE", torchcaffe.TRAIN, (4, 2), False, 1e-7),
    ("eps: 0.01", torchcaffe.TEST, (2, 2, 3), False, 0.01),
])
def test_pspnet_bn_matches_the_fork(extra, phase, shape, unbiased, eps):
    layer = make_layer("BN", PSP + extra + " }", shape, phase=phase, seed=1).double()
    c = shape[1]
    mean0, var0 = RNG.standard_normal(c), RNG.uniform(0.5, 2, c)
    with torch.no_grad():
        layer.mean.copy_(torch.tensor(mean0).view(1, c, 1, 1))
        layer.variance.copy_(torch.tensor(var0).view(1, c, 1, 1))
    x = RNG.standard_normal(shape) * 2 + 1
    slope, bias = layer.slope.detach().numpy().ravel(), layer.bias.detach().numpy().ravel()
    y = layer(torch.tensor(x)).detach().numpy()
    momentum = float(np.float32(0.8 if "0.8" in extra else 0.95 if "0.95" in extra else 0.9))
    ref, mean1, var1 = psp_bn_ref(x, slope, bias, mean0, var0, float(np.float32(eps)), momentum,
                                  phase == torchcaffe.TRAIN, unbiased)
    np.testing.assert_allclose(y, ref, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(layer.mean.numpy().ravel(), mean1, rtol=1e-6)
    np.testing.assert_allclose(layer.variance.numpy().ravel(), var1, rtol=1e-6)


def test_pspnet_bn_frozen_uses_and_keeps_the_stored_statistics_and_learns_nothing():
    layer = make_layer("BN", PSP + "frozen: true }", (2, 3, 2, 2), phase=torchcaffe.TRAIN, seed=2)
    assert [n for n, _ in layer.named_parameters()] == [] and layer.blob_names == ["slope", "bias", "mean", "variance"]
    assert layer.variance.flatten().tolist() == [1, 1, 1]  # frozen starts the variance at 1
    x = torch.randn(2, 3, 2, 2)
    y = layer(x)
    eps = float(np.float32(1e-5))
    want = x * (1 + eps) ** -0.5 * layer.slope + layer.bias
    torch.testing.assert_close(y, want)
    assert layer.mean.abs().sum() == 0 and layer.variance.flatten().tolist() == [1, 1, 1]


def test_pspnet_bn_sets_the_statistics_specs_to_lr_mult_zero():
    param = caffe_pb2.LayerParameter(name="bn", type="BN", bottom=["x"], top=["y"])
    param.bn_param.momentum = 0.9
    param.param.add(lr_mult=1)
    layer_class("BN")(LayerSetup(param, [torch.Size((2, 3))]))
    assert [(s.lr_mult, s.decay_mult) for s in param.param] == [(1, 1), (1, 1), (0, 0), (0, 0)]


def test_segnet_bn_learn_mode_uses_batch_statistics_in_every_phase_and_gives_them_as_tops():
    x = RNG.standard_normal((3, 2, 4, 5)) * 3 + 2
    for phase in (torchcaffe.TRAIN, torchcaffe.TEST):
        layer = make_layer("BN", "bn_param { scale_filler { type: 'gaussian' } shift_filler { type: 'gaussian' } }",
                           x.shape, tops=3, phase=phase, seed=3).double()
        y, mean, var = (t.detach().numpy() for t in layer(torch.tensor(x)))
        mu = x.mean(axis=(0, 2, 3))
        v = (x ** 2).mean(axis=(0, 2, 3)) - mu ** 2
        s, b = layer.scale.detach().numpy(), layer.shift.detach().numpy()
        ref = (x - mu.reshape(1, -1, 1, 1)) / np.sqrt(v.reshape(1, -1, 1, 1) + 1e-9) * s + b
        np.testing.assert_allclose(y, ref, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(mean.ravel(), mu, rtol=1e-12)
        np.testing.assert_allclose(var.ravel(), v, rtol=1e-9)
        assert mean.shape == var.shape == (1, 2, 1, 1)


def test_segnet_bn_inference_mode_is_affine():
    layer = make_layer("BN", "bn_param { bn_mode: INFERENCE scale_filler { type: 'gaussian' } "
                             "shift_filler { type: 'gaussian' } }", (2, 3, 2, 2), seed=4)
    x = torch.randn(2, 3, 2, 2)
    torch.testing.assert_close(layer(x), x * layer.scale + layer.shift)
    assert layer.blob_names == ["scale", "shift"]


@pytest.mark.parametrize("text,flavour", [
    ("bn_param { scale_filler { value: 1 } }", "segnet"), ("bn_param { bn_mode: INFERENCE }", "segnet"),
    ("bn_param { frozen: true }", "pspnet"), ("bn_param { slope_filler { value: 1 } momentum: 0.95 }", "pspnet"),
    ("", "pspnet"), ("param { lr_mult: 1 } param { lr_mult: 1 }", "segnet"),
    ("param { lr_mult: 1 } param { lr_mult: 1 } param { lr_mult: 0 } param { lr_mult: 0 }", "pspnet"),
    ("top: 'm' top: 'v'", "segnet"),
    ("blobs { shape { dim: 1 dim: 3 dim: 1 dim: 1 } } blobs { shape { dim: 1 dim: 3 dim: 1 dim: 1 } }", "segnet"),
])
def test_bn_fork_rule(text, flavour):
    assert bn_flavour(text_format.Parse(text, caffe_pb2.LayerParameter())) == flavour


def test_bn_mixing_the_forks_fields_is_refused():
    expect_error(['"L" (BN)', "bn_mode", "frozen"], make_layer, "BN", "bn_param { bn_mode: LEARN frozen: true }",
                 (2, 3))


def test_pspnet_bn_refuses_extra_tops():
    expect_error(['"L" (BN)', "one top"], make_layer, "BN", "bn_param { frozen: true }", (2, 3), tops=2)


@pytest.mark.parametrize("bn,count", [(PSP + "frozen: true }", 4),
                                      ("bn_param { bn_mode: INFERENCE scale_filler { type: 'gaussian' } }", 2)])
def test_bn_models_of_both_forks_save_and_load(tmp_path, bn, count):
    text = f"""layer {{ name: "x" type: "Input" top: "x" input_param {{ shape {{ dim: 2 dim: 3 dim: 2 dim: 2 }} }} }}
        layer {{ name: "bn" type: "BN" bottom: "x" top: "y" {bn} }}"""
    torch.manual_seed(5)
    source = net_from(text, torchcaffe.TEST)
    for blob in source.params["bn"]:
        blob.data[...] = RNG.uniform(0.5, 1.5, blob.data.shape)
    source.save(str(tmp_path / "bn.caffemodel"))
    target = net_from(text, torchcaffe.TEST)
    target.copy_from(str(tmp_path / "bn.caffemodel"))
    assert len(target.params["bn"]) == count and all(b.data.shape == (1, 3, 1, 1) for b in target.params["bn"])
    for a, b in zip(source.params["bn"], target.params["bn"]):
        np.testing.assert_array_equal(a.data, b.data)
    x = RNG.standard_normal((2, 3, 2, 2))
    source.blobs["x"].data[...] = target.blobs["x"].data[...] = x
    np.testing.assert_array_equal(source.forward()["y"], target.forward()["y"])


def test_bn_weights_of_the_other_fork_are_refused(tmp_path):
    psp = """layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 1 dim: 2 } } }
        layer { name: "bn" type: "BN" bottom: "x" top: "y" bn_param { frozen: true } }"""
    net_from(psp, torchcaffe.TEST).save(str(tmp_path / "psp.caffemodel"))
    segnet = net_from(psp.replace("frozen: true", "bn_mode: INFERENCE"), torchcaffe.TEST)
    with pytest.raises(torchcaffe.CaffeError, match="2 blob"):
        segnet.copy_from(str(tmp_path / "psp.caffemodel"))


# ================================================================================================
# Upsample
# ================================================================================================
def unpool_ref(x, mask, out_h, out_w):
    """caffe-segnet UpsampleLayer::Forward_cpu (later positions overwrite) and Backward_cpu (gather)."""
    n, c, h, w = x.shape
    top = np.zeros((n, c, out_h * out_w), dtype=x.dtype)
    for b, ch in np.ndindex(n, c):
        for i in range(h * w):
            top[b, ch, int(mask[b, ch].ravel()[i])] = x[b, ch].ravel()[i]
    return top.reshape(n, c, out_h, out_w)


def test_upsample_unpools_a_max_pooling_mask_like_max_unpool2d():
    net = net_from("""force_backward: true
        layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 7 dim: 6 } } }
        layer { name: "pool" type: "Pooling" bottom: "x" top: "p" top: "mask"
                pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
        layer { name: "up" type: "Upsample" bottom: "p" bottom: "mask" top: "up"
                upsample_param { upsample_h: 7 upsample_w: 6 } loss_weight: 1 }""")
    x = RNG.standard_normal((2, 3, 7, 6))
    net.blobs["x"].data[...] = x
    out = net.forward()["up"]
    pooled, index = F.max_pool2d(torch.tensor(x), 2, 2, ceil_mode=True, return_indices=True)
    np.testing.assert_allclose(out, F.max_unpool2d(pooled, index, 2, 2, output_size=(7, 6)).numpy(), rtol=1e-6)
    np.testing.assert_allclose(out, unpool_ref(net.blobs["p"].data, net.blobs["mask"].data, 7, 6), rtol=1e-6)


def test_upsample_repeated_indices_the_later_wins_and_both_get_the_gradient():
    x = np.array([[[[1.0, 2.0, 3.0]]]], dtype=np.float32)
    mask = np.array([[[[2.0, 2.0, 0.0]]]], dtype=np.float32)
    layer = make_layer("Upsample", "upsample_param { upsample_h: 2 upsample_w: 3 }", x.shape, mask.shape)
    dtop = np.arange(6, dtype=np.float32).reshape(1, 1, 2, 3) + 1
    top, (dx, dmask), _ = forward_backward(layer, x, mask, top_grad=dtop)
    np.testing.assert_array_equal(top, unpool_ref(x, mask, 2, 3))
    assert top.ravel().tolist() == [3, 0, 2, 0, 0, 0]
    assert dx.ravel().tolist() == [3, 3, 1] and dmask is None


@pytest.mark.parametrize("params,shape,out", [
    ("upsample_param { scale: 2 }", (1, 1, 3, 4), (6, 8)),
    ("upsample_param { scale: 2 pad_out_h: true pad_out_w: true }", (1, 1, 3, 4), (5, 7)),
    ("upsample_param { scale_h: 3 scale_w: 2 }", (1, 1, 2, 2), (6, 4)),
    ("upsample_param { scale: 2 upsample_h: 23 upsample_w: 30 }", (1, 1, 12, 15), (23, 30)),
])
def test_upsample_unpooling_output_sizes(params, shape, out):
    assert make_layer("Upsample", params, shape, shape).top_shapes([torch.Size(shape)] * 2)[0][2:] == out


def test_upsample_one_bottom_is_yolo_nearest_upsampling():
    x = torch.randn(2, 3, 4, 5, requires_grad=True)
    layer = make_layer("Upsample", "upsample_param { scale: 2 }", tuple(x.shape))
    y = layer(x)
    torch.testing.assert_close(y, F.interpolate(x, scale_factor=2, mode="nearest"))
    g = torch.randn_like(y)
    y.backward(g)
    torch.testing.assert_close(x.grad, g.reshape(2, 3, 4, 2, 5, 2).sum((3, 5)))


@pytest.mark.parametrize("params,shapes,words", [
    ("upsample_param { scale: 1 }", [(1, 1, 2, 2)] * 2, ["> 1"]),
    ("upsample_param { scale: 2 scale_h: 2 }", [(1, 1, 2, 2)] * 2, ["upsample_h"]),
    ("upsample_param { scale: 3 pad_out_h: true }", [(1, 1, 2, 2)] * 2, ["pad_out_h", "2"]),
    ("upsample_param { scale: 2 }", [(1, 1, 2, 2), (1, 1, 2, 3)], ["mask", "shape"]),
    ("upsample_param { upsample_h: 1 upsample_w: 4 }", [(1, 1, 2, 2)] * 2, ["upsample_h", "> 1"]),
])
def test_upsample_malformed_parameters_are_refused(params, shapes, words):
    expect_error(['"L" (Upsample)'] + words, make_layer, "Upsample", params, *shapes)


def test_upsample_mask_index_out_of_the_plane_is_refused():
    layer = make_layer("Upsample", "upsample_param { scale: 2 }", (1, 1, 1, 1), (1, 1, 1, 1))
    expect_error(["mask index 4", "2 x 2"], layer, torch.ones(1, 1, 1, 1), torch.full((1, 1, 1, 1), 4.0))


# ================================================================================================
# SoftmaxWithLoss class_weighting (SegNet)
# ================================================================================================
def weighted_softmax_loss_ref(x, label, weights, ignore, normalize):
    """caffe-segnet SoftmaxWithLossLayer Forward_cpu/Backward_cpu (axis 1)."""
    n, c = x.shape[:2]
    xs = x.reshape(n, c, -1)
    p = np.exp(xs - xs.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    lab = label.reshape(n, -1).astype(int)
    loss, count, grad = 0.0, 0, p.copy()
    for i, j in np.ndindex(lab.shape):
        if ignore is not None and lab[i, j] == ignore:
            grad[i, :, j] = 0
            continue
        loss -= math.log(max(p[i, lab[i, j], j], FLT_MIN)) * weights[lab[i, j]]
        grad[i, lab[i, j], j] -= 1
        grad[i, :, j] *= weights[lab[i, j]]
        count += 1
    divisor = count if normalize else n
    return loss / divisor, (grad / divisor).reshape(x.shape)


@pytest.mark.parametrize("extra,ignore,normalize", [("ignore_label: 2", 2, True), ("normalize: false", None, False),
                                                    ("", None, True)])
def test_softmax_loss_class_weighting_matches_segnet(extra, ignore, normalize):
    weights = [0.25, 3.0, 1.5, 0.75]
    params = ("loss_param { weight_by_label_freqs: true " + " ".join(f"class_weighting: {w}" for w in weights)
              + f" {extra} }}")
    x = RNG.standard_normal((2, 4, 3, 2))
    label = RNG.integers(0, 4, size=(2, 1, 3, 2)).astype(np.float64)
    layer = make_layer("SoftmaxWithLoss", params, x.shape, label.shape)
    loss, (dx, _), _ = forward_backward(layer, x, label, dtype=torch.float64, top_grad=np.array(1.0))
    ref_loss, ref_grad = weighted_softmax_loss_ref(x, label, np.float32(weights).astype(np.float64), ignore, normalize)
    assert loss.item() == pytest.approx(ref_loss, rel=1e-12)
    np.testing.assert_allclose(dx, ref_grad, rtol=1e-10, atol=1e-12)


def test_class_weighting_without_weight_by_label_freqs_is_ignored():
    x, label = torch.randn(3, 2), torch.tensor([0.0, 1.0, 1.0])
    plain = make_layer("SoftmaxWithLoss", "", (3, 2), (3,))
    weighted = make_layer("SoftmaxWithLoss", "loss_param { class_weighting: 5 class_weighting: 7 }", (3, 2), (3,))
    torch.testing.assert_close(weighted(x, label), plain(x, label))


def test_class_weighting_needs_one_weight_per_class():
    expect_error(['"L" (SoftmaxWithLoss)', "class_weighting", "3 classes"], make_layer, "SoftmaxWithLoss",
                 "loss_param { weight_by_label_freqs: true class_weighting: 1 class_weighting: 2 }", (2, 3), (2,))


# ================================================================================================
# SegAccuracy
# ================================================================================================
def seg_accuracy_ref(batches, classes, ignore):
    """DeepLab's SegAccuracyLayer over several forwards (reset: false) and its ConfusionMatrix."""
    m = np.zeros((classes, classes))
    for x, label in batches:
        for b, h, w in np.ndindex(label.shape[0], label.shape[2], label.shape[3]):
            pairs = sorted(((x[b, c, h, w], c) for c in range(classes)), reverse=True)  # std::greater
            gt = int(label[b, 0, h, w])
            if gt in ignore:
                continue
            m[gt, pairs[0][1]] += 1
    total = m.sum()
    acc = m.trace() / total if total else 0.0
    rows, cols = m.sum(1), m.sum(0)
    recalls = [m[i, i] / rows[i] for i in range(classes) if rows[i] > 0]
    recall = sum(recalls) / len(recalls) if recalls else 0.0
    iou = 0.0
    for i in range(classes):
        union = rows[i] + cols[i] - m[i, i]
        iou += 1.0 if m[i, i] == union else m[i, i] / union
    return np.array([acc, recall, iou / classes])


def test_seg_accuracy_matches_deeplab_and_accumulates_without_reset():
    c = 4
    layer = make_layer("SegAccuracy", "seg_accuracy_param { ignore_label: 255 ignore_label: 0 reset: false }",
                       (2, c, 3, 5), (2, 1, 3, 5))
    batches = []
    for _ in range(3):
        x = RNG.choice([0.0, 0.5, 1.0], size=(2, c, 3, 5))  # many ties
        label = np.where(RNG.random((2, 1, 3, 5)) < 0.2, 255, RNG.integers(0, c - 1, size=(2, 1, 3, 5)))
        batches.append((x, label))
        top = layer(torch.tensor(x), torch.tensor(label, dtype=torch.float64)).numpy()
        assert top.shape == (1, 1, 1, 3)
        np.testing.assert_allclose(top.ravel(), seg_accuracy_ref(batches, c, {255, 0}), rtol=1e-12)


def test_seg_accuracy_resets_by_default_and_ties_go_to_the_larger_class():
    layer = make_layer("SegAccuracy", "", (1, 3, 1, 2), (1, 1, 1, 2))
    x = torch.tensor([[[[1.0, 0.0]], [[1.0, 2.0]], [[0.0, 2.0]]]])  # pixel 0: tie 0/1, pixel 1: tie 1/2
    for _ in range(2):
        top = layer(x, torch.tensor([[[[1.0, 2.0]]]])).ravel().tolist()
        assert top == [1.0, 1.0, 1.0]  # both ties resolved to the larger class: all correct


def test_seg_accuracy_unexpected_label_is_refused():
    layer = make_layer("SegAccuracy", "seg_accuracy_param { ignore_label: 255 }", (1, 2, 1, 1), (1, 1, 1, 1))
    expect_error(['"L" (SegAccuracy)', "unexpected label 7"], layer, torch.zeros(1, 2, 1, 1),
                 torch.full((1, 1, 1, 1), 7.0))


def test_seg_accuracy_label_shape_is_checked():
    expect_error(['"L" (SegAccuracy)', "(N, 1, H, W)"], make_layer, "SegAccuracy", "", (1, 2, 3, 3), (1, 1, 3, 2))


# ================================================================================================
# DenseCRF
# ================================================================================================
def lattice_ref(features):
    """A literal port of densecrf v1's Permutohedral::init (DeepLab's copy; the SSE path's round to
    even and double-computed scale factors) with a dict for its hash table."""
    n, d = features.shape
    inv_std = F32(math.sqrt(2.0 / 3.0) * (d + 1))
    scale = [F32(1.0 / math.sqrt((i + 2) * (i + 1)) * float(inv_std)) for i in range(d)]
    canonical = [[i if j <= d - i else i - (d + 1) for j in range(d + 1)] for i in range(d + 1)]
    down, up = F32(1.0) / F32(d + 1), F32(d + 1)
    table, offsets, barys = {}, np.zeros((n, d + 1), int), np.zeros((n, d + 1), np.float32)
    for k in range(n):
        f = features[k]
        elevated, sm = [F32(0)] * (d + 1), F32(0)
        for j in range(d, 0, -1):
            cf = F32(f[j - 1] * scale[j - 1])
            elevated[j] = F32(sm - F32(j) * cf)
            sm = F32(sm + cf)
        elevated[0] = sm
        rem0, total = [], 0
        for i in range(d + 1):
            rd = int(np.rint(F32(down * elevated[i])))
            rem0.append(F32(F32(rd) * up))
            total += rd
        rank = [0] * (d + 1)
        for i in range(d):
            di = F32(elevated[i] - rem0[i])
            for j in range(i + 1, d + 1):
                if di < F32(elevated[j] - rem0[j]):
                    rank[i] += 1
                else:
                    rank[j] += 1
        for i in range(d + 1):
            rank[i] += total
            if rank[i] < 0:
                rank[i] += d + 1
                rem0[i] = F32(rem0[i] + d + 1)
            elif rank[i] > d:
                rank[i] -= d + 1
                rem0[i] = F32(rem0[i] - (d + 1))
        bary = [F32(0)] * (d + 2)
        for i in range(d + 1):
            v = F32(F32(elevated[i] - rem0[i]) * down)
            bary[d - rank[i]] = F32(bary[d - rank[i]] + v)
            bary[d - rank[i] + 1] = F32(bary[d - rank[i] + 1] - v)
        bary[0] = F32(bary[0] + F32(1 + bary[d + 1]))
        for r in range(d + 1):
            key = tuple(int(rem0[i]) + canonical[r][rank[i]] for i in range(d))
            offsets[k, r] = table.setdefault(key, len(table))
            barys[k, r] = bary[r]
    keys = list(table)
    neighbours = []
    for j in range(d + 1):
        n1, n2 = [], []
        for key in keys:
            a, b = [v - 1 for v in key], [v + 1 for v in key]
            if j < d:
                a[j], b[j] = key[j] + d, key[j] - d
            n1.append(table.get(tuple(a), -1))
            n2.append(table.get(tuple(b), -1))
        neighbours.append((np.array(n1), np.array(n2)))
    return offsets, barys, neighbours, len(table), d


def lattice_filter_ref(lattice, values):
    """Permutohedral::compute: splat (+1 shifted, row 0 = 'none'), blur axis by axis, slice with alpha."""
    offsets, barys, neighbours, m, d = lattice
    grid = np.zeros((m + 2, values.shape[1]), np.float32)
    for i in range(values.shape[0]):
        for j in range(d + 1):
            grid[offsets[i, j] + 1] += barys[i, j] * values[i]
    for n1, n2 in neighbours:
        new = grid.copy()
        new[1:m + 1] = grid[1:m + 1] + F32(0.5) * (grid[n1 + 1] + grid[n2 + 1])
        grid = new
    alpha = F32(1.0) / F32(1 + 2.0 ** -d)
    out = np.zeros_like(values)
    for i in range(values.shape[0]):
        for j in range(d + 1):
            out[i] += F32(barys[i, j] * alpha) * grid[offsets[i, j] + 1]
    return out


def softmax_cut(e):
    s = e - e.max(1, keepdims=True)
    v = np.where(s < -20, 0, np.exp(s)).astype(np.float32)
    return v / v.sum(1, keepdims=True)


def crf_features(h, w, image, pos, bi):
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    xy = np.stack([xs.ravel(), ys.ravel()], 1)
    feats = [(wgt, xy / F32(std)) for wgt, std in pos]
    if image is not None:
        colour = image.reshape(3, -1).T.astype(np.float32)
        feats += [(wgt, np.concatenate([xy / F32(s1), colour / F32(s2)], 1)) for wgt, s1, s2 in bi]
    return feats


def mean_field_ref(scores, image, pos, bi, iters, filt):
    """DeepLab's DenseCRFLayer: Q = softmax(s); Q = softmax(s + sum_k w_k norm_k filt_k(Q)) repeatedly."""
    c, h, w = scores.shape
    unary = scores.reshape(c, -1).T.astype(np.float32)
    kernels = []
    for wgt, feats in crf_features(h, w, image, pos, bi):
        apply = filt(feats)
        norm = F32(1) / (apply(np.ones((h * w, 1), np.float32)) + F32(1e-20))
        kernels.append((apply, F32(wgt) * norm))
    q = softmax_cut(unary)
    for _ in range(iters):
        e = unary.copy()
        for apply, factor in kernels:
            e += factor * apply(q)
        q = softmax_cut(e)
    return q.T.reshape(c, h, w)


def literal_filter(feats):
    lattice = lattice_ref(feats)
    return lambda values: lattice_filter_ref(lattice, values.astype(np.float32))


def gaussian_filter(feats):
    """Exact Gaussian kernel exp(-|f_i - f_j|^2 / 2), self included: what the lattice approximates."""
    k = np.exp(-0.5 * ((feats[:, None, :] - feats[None, :, :]) ** 2).sum(-1))
    return lambda values: (k @ values).astype(np.float32)


CRF = "dense_crf_param { max_iter: 5 pos_w: 3 pos_xy_std: 1.5 bi_w: 5 bi_xy_std: 3 bi_rgb_std: 0.8 }"


def test_permutohedral_lattice_matches_the_literal_port():
    feats = (RNG.standard_normal((30, 5)) * 2).astype(np.float32)
    values = RNG.random((30, 3)).astype(np.float32)
    ours = PermutohedralLattice(torch.tensor(feats)).filter(torch.tensor(values)).numpy()
    np.testing.assert_allclose(ours, literal_filter(feats)(values), rtol=2e-5, atol=1e-6)


def test_dense_crf_matches_the_literal_port_of_deeplab():
    scores = RNG.standard_normal((1, 3, 5, 6)).astype(np.float32) * 2
    image = RNG.standard_normal((1, 3, 5, 6)).astype(np.float32)
    layer = make_layer("DenseCRF", CRF, scores.shape, (1, 1, 1, 2), image.shape, phase=torchcaffe.TEST)
    top = layer(torch.tensor(scores), torch.tensor([[[[5.0, 6.0]]]]), torch.tensor(image)).numpy()
    ref = mean_field_ref(scores[0], image[0], [(3, 1.5)], [(5, 3, 0.8)], 5, literal_filter)
    np.testing.assert_allclose(top[0], ref, rtol=1e-4, atol=2e-6)


def test_dense_crf_is_close_to_exact_gaussian_mean_field():
    """The lattice only approximates the Gaussian kernels. Against a brute-force O(N^2) mean field
    on a 6 x 7 image: with the positional kernel alone (a 2-D lattice) the probabilities agree to
    within 0.06 (observed: 0.030 at most, 0.007 on average); adding a bilateral kernel over random
    colours (a 5-D lattice on 42 scattered points: the approximation is coarse) they differ by
    0.066 on average (up to 0.98 at a pixel that flips) and agree on 90% of the labels; we require
    0.1 and 80%. (Other seeds: 0.02-0.04 on average, 93-100% of the labels.)"""
    rng = np.random.default_rng(7)
    scores = rng.standard_normal((1, 3, 6, 7)).astype(np.float32)
    image = (rng.standard_normal((1, 3, 6, 7)) * 2).astype(np.float32)
    dims = torch.tensor([[[[6.0, 7.0]]]])
    positional = make_layer("DenseCRF", "dense_crf_param { max_iter: 5 pos_w: 3 pos_xy_std: 1.5 }", scores.shape,
                            (1, 1, 1, 2))
    top = positional(torch.tensor(scores), dims).numpy()[0]
    exact = mean_field_ref(scores[0], None, [(3, 1.5)], [], 5, gaussian_filter)
    assert np.abs(top - exact).max() < 0.06 and np.abs(top - exact).mean() < 0.01
    full = make_layer("DenseCRF", CRF, scores.shape, (1, 1, 1, 2), image.shape, phase=torchcaffe.TEST)
    top = full(torch.tensor(scores), dims, torch.tensor(image)).numpy()[0]
    exact = mean_field_ref(scores[0], image[0], [(3, 1.5)], [(5, 3, 0.8)], 5, gaussian_filter)
    assert np.abs(top - exact).mean() < 0.1
    assert (top.argmax(0) == exact.argmax(0)).mean() >= 0.8


def test_dense_crf_region_log_output_and_invariants():
    scores = RNG.standard_normal((2, 4, 6, 5)).astype(np.float32)
    image = RNG.standard_normal((2, 3, 6, 5)).astype(np.float32)
    dims = torch.tensor([[[[4.0, 3.0]]], [[[9.0, 9.0]]]])
    prob = make_layer("DenseCRF", CRF, scores.shape, (2, 1, 1, 2), image.shape)
    log = make_layer("DenseCRF", CRF[:-1] + " output_probability: false }", scores.shape, (2, 1, 1, 2), image.shape)
    p = prob(torch.tensor(scores), dims, torch.tensor(image)).numpy()
    lp = log(torch.tensor(scores), dims, torch.tensor(image)).numpy()
    # image 0 is 4 x 3 inside the 6 x 5 blob: only that region is processed, the rest is 0
    assert not p[0, :, 4:].any() and not p[0, :, :, 3:].any() and not lp[0, :, 4:].any()
    np.testing.assert_allclose(p[0, :, :4, :3].sum(0), 1, rtol=1e-5)
    np.testing.assert_allclose(p[1].sum(0), 1, rtol=1e-5)  # data_dim >= blob: the whole blob
    np.testing.assert_allclose(lp[0, :, :4, :3], np.log(np.maximum(p[0, :, :4, :3], FLT_MIN)), rtol=1e-5, atol=1e-6)
    # the region on its own gives the same result as inside the larger blob
    alone = prob(torch.tensor(scores[:1, :, :4, :3]), torch.tensor([[[[4.0, 3.0]]]]),
                 torch.tensor(image[:1, :, :4, :3]))
    np.testing.assert_allclose(p[0, :, :4, :3], alone.numpy()[0], rtol=1e-5, atol=1e-7)


def test_dense_crf_without_iterations_or_weights_is_the_softmax_of_the_scores():
    scores = torch.randn(1, 3, 4, 4) * 3
    expected = torch.softmax(scores, 1)
    for params in ("dense_crf_param { max_iter: 0 pos_w: 3 pos_xy_std: 3 }",
                   "dense_crf_param { max_iter: 4 pos_w: 0 pos_xy_std: 3 }"):
        layer = make_layer("DenseCRF", params, (1, 3, 4, 4), (1, 1, 1, 2))
        torch.testing.assert_close(layer(scores, torch.tensor([[[[4.0, 4.0]]]])), expected)


def test_dense_crf_cuts_probabilities_below_exp_minus_20():
    scores = torch.tensor([[[[0.0]], [[-25.0]]]])
    layer = make_layer("DenseCRF", "dense_crf_param { max_iter: 0 output_probability: false }",
                       (1, 2, 1, 1), (1, 1, 1, 2))
    top = layer(scores, torch.tensor([[[[1.0, 1.0]]]]))
    assert top[0, 1].item() == pytest.approx(math.log(FLT_MIN))  # fast_exp(-25) is 0, floored at FLT_MIN


@pytest.mark.parametrize("params,shapes,words", [
    ("dense_crf_param { pos_w: 1 pos_w: 2 pos_xy_std: 3 }", [(1, 2, 3, 3), (1, 1, 1, 2)], ["pos_w", "pos_xy_std"]),
    ("dense_crf_param { bi_w: 1 bi_xy_std: 3 }", [(1, 2, 3, 3), (1, 1, 1, 2), (1, 3, 3, 3)], ["bi_rgb_std"]),
    ("dense_crf_param { pos_w: 1 pos_xy_std: 3 }", [(1, 2, 3, 3), (1, 1, 1, 2), (1, 3, 3, 3)], ["bilateral"]),
    (CRF, [(1, 2, 3, 3), (1, 1, 1, 2), (1, 1, 3, 3)], ["bottom 2", "3 colour channels"]),
])
def test_dense_crf_malformed_parameters_are_refused(params, shapes, words):
    expect_error(['"L" (DenseCRF)'] + words, make_layer, "DenseCRF", params, *shapes)


def test_dense_crf_data_dim_larger_in_one_direction_only_is_refused():
    layer = make_layer("DenseCRF", "dense_crf_param { pos_w: 1 pos_xy_std: 1 }", (1, 2, 3, 3), (1, 1, 1, 2))
    expect_error(["data_dim", "5 x 2"], layer, torch.zeros(1, 2, 3, 3), torch.tensor([[[[5.0, 2.0]]]]))


# ================================================================================================
# MatWrite
# ================================================================================================
def read_mat_v5(path):
    """A minimal MAT v5 reader for one uncompressed numeric matrix: (name, array in MATLAB order)."""
    raw = open(path, "rb").read()
    assert raw[:19] == b"MATLAB 5.0 MAT-file" and len(raw) % 8 == 0
    assert struct.unpack("<H", raw[124:126])[0] == 0x0100 and raw[126:128] == b"IM"
    kind, size = struct.unpack("<II", raw[128:136])
    assert kind == 14 and size == len(raw) - 136
    pos, parts = 136, []
    while pos < len(raw):
        word = struct.unpack("<I", raw[pos:pos + 4])[0]
        if word >> 16:  # compact element
            kind, size, data, pos = word & 0xFFFF, word >> 16, raw[pos + 4:pos + 4 + (word >> 16)], pos + 8
        else:
            kind, size = struct.unpack("<II", raw[pos:pos + 8])
            data, pos = raw[pos + 8:pos + 8 + size], pos + 8 + size + (-size % 8)
        parts.append((kind, data))
    (flags_kind, flags), (dims_kind, dims), (name_kind, name), (real_kind, real) = parts
    assert (flags_kind, dims_kind, name_kind) == (6, 5, 1)
    mx_class = struct.unpack("<II", flags)[0] & 0xFF
    shape = struct.unpack(f"<{len(dims) // 4}i", dims)
    dtype = {(7, 7): np.float32, (9, 6): np.float64}[(real_kind, mx_class)]
    return name.decode(), np.frombuffer(real, dtype=dtype).reshape(shape, order="F")


def test_mat_write_writes_matlab_v5_files_named_from_the_source_list(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "ids.txt").write_text("2007_000033 extra\n2007_000042.jpg\n  2008_000123\n")
    net = net_from(f"""
        layer {{ name: "x" type: "Input" top: "x" input_param {{ shape {{ dim: 2 dim: 3 dim: 4 dim: 5 }} }} }}
        layer {{ name: "y" type: "Input" top: "y" input_param {{ shape {{ dim: 1 dim: 2 }} }} }}
        layer {{ name: "w" type: "MatWrite" bottom: "x" bottom: "y"
                 mat_write_param {{ prefix: "{tmp_path}/out/" source: "{tmp_path}/ids.txt" strip: 0 period: 2 }} }}""",
                   torchcaffe.TEST)
    arrays = []
    for _ in range(3):
        x, y = RNG.standard_normal((2, 3, 4, 5)), RNG.standard_normal((1, 2))
        net.blobs["x"].data[...], net.blobs["y"].data[...] = x, y
        net.forward()
        arrays.append((x, y))
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["2007_000033_blob_0.mat", "2007_000033_blob_1.mat",   # forward 0 (period 2)
                     "2008_000123_blob_0.mat", "2008_000123_blob_1.mat"]   # forward 2; forward 1 skipped
    name, data = read_mat_v5(tmp_path / "out" / "2008_000123_blob_0.mat")
    assert name == "data" and data.shape == (5, 4, 3, 2) and data.dtype == np.float32
    np.testing.assert_array_equal(data.transpose(3, 2, 1, 0), arrays[2][0].astype(np.float32))
    _, small = read_mat_v5(tmp_path / "out" / "2007_000033_blob_1.mat")
    assert small.shape == (1, 1, 2, 1)  # a (1, 2) blob is num 1, channels 2, height 1, width 1: [W, H, C, N]
    np.testing.assert_array_equal(small.reshape(2), arrays[0][1].astype(np.float32).ravel())


def test_mat_write_without_source_counts_iterations_and_strips(tmp_path):
    layer = make_layer("MatWrite", f'mat_write_param {{ prefix: "{tmp_path}/f_" }}', (1, 2), tops=0)
    for _ in range(2):
        layer(torch.ones(1, 2, dtype=torch.float64))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f_iter_0_blob_0.mat", "f_iter_1_blob_0.mat"]
    _, data = read_mat_v5(tmp_path / "f_iter_1_blob_0.mat")
    assert data.dtype == np.float64 and data.shape == (1, 1, 2, 1)
    (tmp_path / "ids.txt").write_text("abc.png\nxy.png\n")
    stripped = make_layer("MatWrite", f'mat_write_param {{ prefix: "{tmp_path}/" source: "{tmp_path}/ids.txt" '
                                      f'strip: 4 }}', (1,), tops=0)
    assert stripped.names == ["abc", "xy"]


def test_mat_write_errors(tmp_path):
    (tmp_path / "ids.txt").write_text("a\n")
    params = f'mat_write_param {{ prefix: "{tmp_path}/" source: "{tmp_path}/ids.txt" }}'
    layer = make_layer("MatWrite", params, (1,), tops=0)
    layer(torch.zeros(1))
    expect_error(['"L" (MatWrite)', "forward 1", "1 line"], layer, torch.zeros(1))
    expect_error(["too much stripping"], make_layer, "MatWrite", params[:-2] + " strip: 1 }", (1,), tops=0)
    expect_error(["period"], make_layer, "MatWrite", f'mat_write_param {{ prefix: "x" period: 0 }}', (1,), tops=0)
    expect_error(["cannot open", "missing.txt"], make_layer, "MatWrite",
                 f'mat_write_param {{ prefix: "x" source: "{tmp_path}/missing.txt" }}', (1,), tops=0)
    bad_dir = make_layer("MatWrite", f'mat_write_param {{ prefix: "{tmp_path}/no/such/dir/" }}', (1,), tops=0)
    expect_error(["cannot create MAT file"], bad_dir, torch.zeros(1))


# ================================================================================================
# DeepLab's hole convolution
# ================================================================================================
def test_hole_is_dilation():
    x = torch.randn(1, 2, 7, 6)
    hole = make_layer("Convolution", "convolution_param { num_output: 3 kernel_size: 3 pad: 2 hole: 2 "
                                     "weight_filler { type: 'gaussian' } }", tuple(x.shape), seed=0)
    torch.testing.assert_close(hole(x), F.conv2d(x, hole.weight, hole.bias, padding=2, dilation=2))
    pair = make_layer("Convolution", "convolution_param { num_output: 1 kernel_size: 3 hole_h: 3 hole_w: 1 "
                                     "weight_filler { type: 'gaussian' } }", tuple(x.shape), seed=0)
    torch.testing.assert_close(pair(x), F.conv2d(x, pair.weight, pair.bias, dilation=(3, 1)))


@pytest.mark.parametrize("params,words", [
    ("dilation: 2 hole: 3", ["dilation", "hole", "keep one"]),
    ("hole_h: 2", ["hole_h and hole_w"]),
    ("hole: 2 hole_h: 2 hole_w: 2", ["hole_h and hole_w"]),
])
def test_hole_malformed_is_refused(params, words):
    expect_error(['"L" (Convolution)'] + words, make_layer, "Convolution",
                 f"convolution_param {{ num_output: 1 kernel_size: 3 {params} }}", (1, 1, 9, 9))


def test_hole_and_the_same_dilation_agree():
    layer = make_layer("Convolution", "convolution_param { num_output: 1 kernel_size: 3 dilation: 2 hole: 2 }",
                       (1, 1, 9, 9))
    assert layer.geometry.dilation == (2, 2)


# ================================================================================================
# Corpus nets that use these layers (data and Python layers replaced by inputs)
# ================================================================================================
def _replace_python_proposals(param: caffe_pb2.NetParameter, rois: int) -> caffe_pb2.NetParameter:
    """Faster R-CNN / R-FCN test nets: the Python proposal layer becomes an Input giving the rois."""
    out = caffe_pb2.NetParameter()
    out.CopyFrom(param)
    for layer in out.layer:
        if layer.type == "Python":
            tops = list(layer.top)
            layer.Clear()
            layer.name, layer.type = "proposals", "Input"
            layer.top.extend(tops)
            layer.input_param.shape.add(dim=[rois, 5])
    return out


def _random_rois(r, height, width, rng):
    x = np.sort(rng.uniform(0, width - 1, size=(r, 2)), 1)
    y = np.sort(rng.uniform(0, height - 1, size=(r, 2)), 1)
    return np.stack([np.zeros(r), x[:, 0], y[:, 0], x[:, 1], y[:, 1]], 1)


@requires_shared
@pytest.mark.parametrize("relative,size", [
    ("fast_rcnn_zf/test.prototxt", 224),
    ("faster_rcnn_vgg16/test.prototxt", 160),
    ("rfcn_resnet101v2/deploy_rfcn_voc_resnet101-v2-merge.prototxt", 160),
])
def test_region_detection_corpus_nets_run(relative, size):
    param = _replace_python_proposals(read_net(str(shared_dir("corpus", relative))), rois=6)
    for layer in param.layer:
        if layer.type == "Input":
            for shape in layer.input_param.shape:
                if len(shape.dim) == 4:
                    shape.dim[2] = shape.dim[3] = size
                elif list(shape.dim) == [1, 5]:  # Fast R-CNN's rois input, "changed on-the-fly"
                    shape.dim[0] = 6
    net = torchcaffe.Net(param, torchcaffe.TEST)
    rng = np.random.default_rng(0)
    net.blobs["data"].data[...] = rng.standard_normal(net.blobs["data"].shape)
    net.blobs["rois"].data[...] = _random_rois(6, size, size, rng)
    if "im_info" in net.blobs:
        net.blobs["im_info"].data[...] = [size, size, 1]
    outputs = net.forward()
    assert outputs and all(np.isfinite(v).all() for v in outputs.values())
    pooled = [b for n, b in net.blobs.items() if n in ("roi_pool_conv5", "pool5", "psroipooled_cls_rois")]
    assert pooled and pooled[0].data.shape[0] == 6


@requires_shared
def test_deeplab_largefov_test_net_runs_with_crf_and_mat_files(tmp_path):
    """The DeepLab LargeFOV TEST net: Interp, DenseCRF and two MatWrite layers writing .mat files."""
    text = shared_dir("corpus", "deeplab_largefov", "test.prototxt").read_text()
    exp = tmp_path / "voc12"
    (exp / "list").mkdir(parents=True)
    (exp / "list" / "val_id.txt").write_text("2007_000033\n")
    for sub in ("fc8", "crf"):
        (tmp_path / "features" / "val" / sub).mkdir(parents=True)
    variables = {**VARIABLES, "EXP": str(exp), "FEATURE_DIR": str(tmp_path / "features")}
    param = read_net(substitute(text, variables, shared_dir("corpus", "deeplab_largefov", "test.prototxt")))
    for layer in param.layer:
        if layer.type == "ImageSegData":  # the data layer: an Input of a small crop instead
            tops = list(layer.top)
            layer.Clear()
            layer.name, layer.type = "data", "Input"
            layer.top.extend(tops)
            for dims in ([1, 3, 65, 65], [1, 1, 65, 65], [1, 1, 1, 2]):
                layer.input_param.shape.add(dim=dims)
    net = torchcaffe.Net(param, torchcaffe.TEST)
    rng = np.random.default_rng(1)
    net.blobs["data"].data[...] = rng.standard_normal((1, 3, 65, 65)) * 50
    net.blobs["data_dim"].data[...] = [60, 50]
    net.forward()
    crf = net.blobs["crf_inf"].data
    assert crf.shape == (1, 21, 65, 65) and not crf[:, :, 60:].any() and not crf[:, :, :, 50:].any()
    np.testing.assert_allclose(crf[0, :, :60, :50].sum(0), 1, rtol=1e-4)
    name, fc8 = read_mat_v5(tmp_path / "features" / "val" / "fc8" / "2007_000033_blob_0.mat")
    np.testing.assert_array_equal(fc8.transpose(3, 2, 1, 0), net.blobs["fc8_interp"].data.astype(np.float32))
    assert (tmp_path / "features" / "val" / "crf" / "2007_000033_blob_0.mat").is_file()



@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("type_name,params,shape", [
    ("ROIPooling", "roi_pooling_param { pooled_h: 7 pooled_w: 7 spatial_scale: 0.0625 }", (2, 3, 38, 50)),
    ("PSROIPooling", "psroi_pooling_param { spatial_scale: 0.0625 output_dim: 2 group_size: 7 }", (2, 98, 38, 50)),
])
def test_region_pooling_bins_are_the_same_on_cuda(type_name, params, shape):
    """Bin edges come from true divisions: CUDA's division by a Python scalar multiplies by the
    reciprocal (7 * (1/7) < 1) and would move ceil() edges."""
    rng = np.random.default_rng(3)
    x = torch.tensor(rng.standard_normal(shape), dtype=torch.float32)
    rois = torch.tensor(random_rois(300, 2, 800, rng), dtype=torch.float32)
    layer = make_layer(type_name, params, shape, tuple(rois.shape))
    cpu = layer(x, rois)
    torch.testing.assert_close(layer.to("cuda")(x.cuda(), rois.cuda()).cpu(), cpu, rtol=1e-6, atol=1e-6)
