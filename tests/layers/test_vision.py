"""Vision layers against straightforward loop implementations of Caffe's own formulas.

The references below follow Caffe's CPU code paths (im2col + GEMM for Convolution, col2im for
Deconvolution, the window loops of PoolingLayer, SPPLayer's level parameters, the GPU kernels'
STOCHASTIC rules) so that every Caffe-specific rule is checked independently of torch's kernels.
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

import torchcaffe
from torchcaffe import NetError
from torchcaffe.layers import Sample

from .harness import make_layer, net_param

FLT_MAX = float(np.finfo(np.float32).max)
FLT_MIN = float(np.finfo(np.float32).tiny)


def run_layer(layer, *arrays, top_grads=None):
    """Forward the layer in float64; backward ``top_grads`` (default: random) into the bottoms."""
    layer = layer.double()
    xs = [torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in arrays]
    tops = layer(*xs)
    tops = tops if isinstance(tops, tuple) else (tops,)
    rng = np.random.default_rng(5)
    grads = top_grads or [rng.standard_normal(tuple(tops[0].shape))]
    torch.autograd.backward(tops[0], torch.tensor(grads[0]))
    return [t.detach().numpy() for t in tops], [x.grad.numpy() if x.grad is not None else None for x in xs], grads[0]


# -- references ------------------------------------------------------------------------------
def im2col_ref(x, kernel, stride, pad, dilation):
    """Caffe's im2col of one image ``(C, S...)`` -> ``(C * prod(k), S_out...)``."""
    channels, sizes = x.shape[0], x.shape[1:]
    out = [(n + 2 * p - (d * (k - 1) + 1)) // s + 1 for n, k, s, p, d in zip(sizes, kernel, stride, pad, dilation)]
    cols = np.zeros((channels, *kernel, *out))
    for c in range(channels):
        for ki in itertools.product(*map(range, kernel)):
            for oi in itertools.product(*map(range, out)):
                pos = [o * s - p + k * d for o, k, s, p, d in zip(oi, ki, stride, pad, dilation)]
                if all(0 <= q < n for q, n in zip(pos, sizes)):
                    cols[(c, *ki, *oi)] = x[(c, *pos)]
    return cols.reshape(channels * math.prod(kernel), *out)


def col2im_ref(cols, channels, sizes, kernel, stride, pad, dilation):
    """Caffe's col2im (the adjoint of im2col): accumulate columns back into ``(C, S...)``."""
    out = [(n + 2 * p - (d * (k - 1) + 1)) // s + 1 for n, k, s, p, d in zip(sizes, kernel, stride, pad, dilation)]
    cols = cols.reshape(channels, *kernel, *out)
    image = np.zeros((channels, *sizes))
    for c in range(channels):
        for ki in itertools.product(*map(range, kernel)):
            for oi in itertools.product(*map(range, out)):
                pos = [o * s - p + k * d for o, k, s, p, d in zip(oi, ki, stride, pad, dilation)]
                if all(0 <= q < n for q, n in zip(pos, sizes)):
                    image[(c, *pos)] += cols[(c, *ki, *oi)]
    return image


def conv_ref(x, weight, bias, group, stride, pad, dilation):
    """Caffe's ConvolutionLayer: im2col, then one GEMM per group, then the bias."""
    out_channels, kernel = weight.shape[0], weight.shape[2:]
    tops = []
    for image in x:
        cols = im2col_ref(image, kernel, stride, pad, dilation)
        out_sizes = cols.shape[1:]
        cols = cols.reshape(group, -1, math.prod(out_sizes))
        w = weight.reshape(group, out_channels // group, -1)
        top = np.einsum("gok,gkl->gol", w, cols).reshape(out_channels, *out_sizes)
        if bias is not None:
            top += bias.reshape(-1, *[1] * len(out_sizes))
        tops.append(top)
    return np.stack(tops)


def deconv_ref(x, weight, bias, group, stride, pad, dilation):
    """Caffe's DeconvolutionLayer: a GEMM with the transposed weights, then col2im, then the bias."""
    channels, out_per_group, kernel = weight.shape[0], weight.shape[1], weight.shape[2:]
    out_channels = out_per_group * group
    in_sizes = x.shape[2:]
    sizes = [s * (n - 1) + d * (k - 1) + 1 - 2 * p for n, k, s, p, d in zip(in_sizes, kernel, stride, pad, dilation)]
    tops = []
    for image in x:
        data = image.reshape(group, channels // group, -1)
        w = weight.reshape(group, channels // group, -1)
        cols = np.einsum("gck,gcl->gkl", w, data).reshape(out_channels * math.prod(kernel), -1)
        top = col2im_ref(cols, out_channels, sizes, kernel, stride, pad, dilation)
        if bias is not None:
            top += bias.reshape(-1, *[1] * len(sizes))
        tops.append(top)
    return np.stack(tops)


def pooled_sizes(size, kernel, stride, pad, ceil=True):
    out = []
    for n, k, s, p in zip(size, kernel, stride, pad):
        o = int((math.ceil if ceil else math.floor)((n + 2 * p - k) / s)) + 1
        if any(pad) and (o - 1) * s >= n + p:
            o -= 1
        out.append(o)
    return out


def pool_ref(x, method, kernel, stride, pad, ceil=True, top_diff=None):
    """Caffe's PoolingLayer Forward_cpu/Backward_cpu loops: ``(top, mask, bottom_diff)``."""
    num, channels, height, width = x.shape
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, pad
    oh, ow = pooled_sizes((height, width), kernel, stride, pad, ceil)
    top = np.zeros((num, channels, oh, ow))
    mask = np.full(top.shape, -1.0)
    diff = np.zeros(x.shape)
    top_diff = np.ones(top.shape) if top_diff is None else top_diff
    for n, c, i, j in itertools.product(range(num), range(channels), range(oh), range(ow)):
        hs, ws = i * sh - ph, j * sw - pw
        if method == "MAX":
            he, we, hs, ws = min(hs + kh, height), min(ws + kw, width), max(hs, 0), max(ws, 0)
            best, where = -FLT_MAX, -1
            for h in range(hs, he):
                for w in range(ws, we):
                    if x[n, c, h, w] > best:
                        best, where = x[n, c, h, w], h * width + w
            top[n, c, i, j], mask[n, c, i, j] = best, where
            if where >= 0:
                diff[n, c, where // width, where % width] += top_diff[n, c, i, j]
        else:
            he, we = min(hs + kh, height + ph), min(ws + kw, width + pw)
            size = (he - hs) * (we - ws)
            hs, ws, he, we = max(hs, 0), max(ws, 0), min(he, height), min(we, width)
            with np.errstate(invalid="ignore", divide="ignore"):  # a window past the input may have size 0
                top[n, c, i, j] = x[n, c, hs:he, ws:we].sum() / size
                diff[n, c, hs:he, ws:we] += top_diff[n, c, i, j] / size
    return top, mask, diff


def pool_params(method, kernel, stride, pad, ceil=True, extra=""):
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, pad
    mode = "" if ceil else " round_mode: FLOOR"
    return (f"pooling_param {{ pool: {method} kernel_h: {kh} kernel_w: {kw} stride_h: {sh} stride_w: {sw} "
            f"pad_h: {ph} pad_w: {pw}{mode} {extra}}}")


# -- Convolution / Deconvolution ----------------------------------------------------------------
CONV_CASES = [
    # bottom shape, num_output, group, kernel, stride, pad, dilation
    ((2, 3, 7, 6), 4, 1, (3, 3), (1, 1), (1, 1), (1, 1)),
    ((1, 4, 9, 8), 6, 2, (3, 2), (2, 1), (2, 0), (2, 3)),
    ((2, 6, 5, 5), 3, 3, (1, 1), (2, 2), (0, 0), (1, 1)),
    ((2, 2, 9), 3, 1, (4,), (3,), (2,), (2,)),
    ((1, 2, 4, 5, 3), 2, 2, (2, 3, 1), (1, 2, 1), (1, 0, 1), (2, 1, 1)),
]


def _conv_text(num_output, group, kernel, stride, pad, dilation, bias=True):
    fields = " ".join(f"kernel_size: {k}" for k in kernel) + " " + " ".join(f"stride: {s}" for s in stride)
    fields += " " + " ".join(f"pad: {p}" for p in pad) + " " + " ".join(f"dilation: {d}" for d in dilation)
    return (f"convolution_param {{ num_output: {num_output} group: {group} {fields} bias_term: {str(bias).lower()} "
            f"weight_filler {{ type: 'gaussian' }} bias_filler {{ type: 'gaussian' }} }}")


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: f"{len(c[0]) - 2}d")
@pytest.mark.parametrize("bias", [True, False])
def test_convolution_matches_im2col_gemm(case, bias):
    shape, num_output, group, kernel, stride, pad, dilation = case
    layer = make_layer("Convolution", _conv_text(num_output, group, kernel, stride, pad, dilation, bias), shape)
    assert tuple(layer.weight.shape) == (num_output, shape[1] // group, *kernel)
    x = np.random.default_rng(0).standard_normal(shape)
    (top,), _, _ = run_layer(layer, x)
    b = layer.bias.detach().numpy() if bias else None
    expected = conv_ref(x, layer.weight.detach().numpy(), b, group, stride, pad, dilation)
    np.testing.assert_allclose(top, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: f"{len(c[0]) - 2}d")
def test_deconvolution_matches_gemm_col2im(case):
    shape, num_output, group, kernel, stride, pad, dilation = case
    layer = make_layer("Deconvolution", _conv_text(num_output, group, kernel, stride, pad, dilation), shape)
    assert tuple(layer.weight.shape) == (shape[1], num_output // group, *kernel)
    assert tuple(layer.bias.shape) == (num_output,)
    x = np.random.default_rng(1).standard_normal(shape)
    (top,), _, _ = run_layer(layer, x)
    expected = deconv_ref(x, layer.weight.detach().numpy(), layer.bias.detach().numpy(), group, stride, pad, dilation)
    np.testing.assert_allclose(top, expected, rtol=1e-10, atol=1e-10)


def test_convolution_channel_axis_and_no_spatial_axes():
    layer = make_layer("Convolution", "convolution_param { num_output: 2 kernel_size: 3 axis: 2 "
                       "weight_filler { type: 'gaussian' } bias_filler { type: 'gaussian' } }", (2, 3, 2, 5, 4))
    x = np.random.default_rng(2).standard_normal((2, 3, 2, 5, 4))
    (top,), _, _ = run_layer(layer, x)
    w, b = layer.weight.detach().numpy(), layer.bias.detach().numpy()
    expected = conv_ref(x.reshape(6, 2, 5, 4), w, b, 1, (1, 1), (0, 0), (1, 1)).reshape(2, 3, 2, 3, 2)
    np.testing.assert_allclose(top, expected, rtol=1e-10, atol=1e-10)
    # No spatial axis (axis = last): a grouped matrix product with a (num_output, C / group) weight.
    layer = make_layer("Convolution", "convolution_param { num_output: 4 group: 2 axis: -1 "
                       "weight_filler { type: 'gaussian' } bias_filler { type: 'gaussian' } }", (3, 6))
    assert tuple(layer.weight.shape) == (4, 3)
    x = np.random.default_rng(3).standard_normal((3, 6))
    (top,), _, _ = run_layer(layer, x)
    w, b = layer.weight.detach().numpy(), layer.bias.detach().numpy()
    expected = np.concatenate([x[:, :3] @ w[:2].T, x[:, 3:] @ w[2:].T], 1) + b
    np.testing.assert_allclose(top, expected, rtol=1e-10, atol=1e-10)


def test_convolution_blobs_default_to_constant_zero_and_follow_bias_term():
    layer = make_layer("Convolution", "convolution_param { num_output: 4 group: 2 kernel_h: 3 kernel_w: 2 }",
                       (1, 6, 5, 5))
    assert [tuple(b.shape) for b in layer.caffe_blobs()] == [(4, 3, 3, 2), (4,)]
    assert all(not b.any() for b in layer.caffe_blobs())
    layer = make_layer("Deconvolution",
                       "convolution_param { num_output: 4 group: 2 kernel_size: 3 bias_term: false }", (1, 6, 5, 5))
    assert [tuple(b.shape) for b in layer.caffe_blobs()] == [(6, 2, 3, 3)]


def test_convolution_two_bottoms_share_weights_and_accumulate_diffs():
    sample = Sample("convolution_param { num_output: 2 kernel_size: 2 weight_filler { type: 'gaussian' } }",
                    bottoms=((1, 2, 3, 3), (1, 2, 3, 3)), tops=2)
    net = torchcaffe.Net(net_param("Convolution", sample, loss_weights=[1.0, 1.0]), torchcaffe.TRAIN)
    rng = np.random.default_rng(4)
    a, b = rng.standard_normal((1, 2, 3, 3)), rng.standard_normal((1, 2, 3, 3))
    net.blobs["b0"].data[...], net.blobs["b1"].data[...] = a, b
    net.forward()
    net.backward()
    w = net.params["under_test"][0].data.astype(np.float64)
    np.testing.assert_allclose(net.blobs["t0"].data, conv_ref(a, w, np.zeros(2), 1, (1, 1), (0, 0), (1, 1)),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(net.blobs["t1"].data, conv_ref(b, w, np.zeros(2), 1, (1, 1), (0, 0), (1, 1)),
                               rtol=1e-5, atol=1e-5)
    # d(sum of both tops)/dw: each weight sees the sum of both bottoms' windows.
    expected = np.stack([im2col_ref(a[0] + b[0], (2, 2), (1, 1), (0, 0), (1, 1)).sum(axis=(1, 2))] * 2)
    np.testing.assert_allclose(net.params["under_test"][0].diff, expected.reshape(2, 2, 2, 2), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(net.params["under_test"][1].diff, [8.0, 8.0])


# -- Im2col --------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape,kernel,stride,pad,dilation", [
    ((2, 2, 5, 5), (3, 3), (2, 2), (1, 1), (1, 1)),
    ((1, 3, 6, 7), (2, 3), (1, 2), (1, 0), (2, 1)),
    ((2, 2, 7), (3,), (2,), (1,), (2,)),
    ((1, 2, 3, 4, 5), (2, 2, 3), (1, 2, 1), (1, 0, 1), (1, 2, 1)),
])
def test_im2col_layout_is_channel_major(shape, kernel, stride, pad, dilation):
    text = _conv_text(1, 1, kernel, stride, pad, dilation).replace("num_output: 1 group: 1 ", "")
    layer = make_layer("Im2col", text, shape)
    x = np.random.default_rng(6).standard_normal(shape)
    (top,), (grad,), top_diff = run_layer(layer, x)
    expected = np.stack([im2col_ref(image, kernel, stride, pad, dilation) for image in x])
    np.testing.assert_allclose(top, expected, rtol=0, atol=0)
    expected_grad = np.stack([col2im_ref(d, shape[1], shape[2:], kernel, stride, pad, dilation) for d in top_diff])
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-12, atol=1e-12)


# -- Pooling ---------------------------------------------------------------------------------------
def _pool_configs():
    """Random windows, including Caffe-only ones (pad > k/2, windows past the input, FLOOR)."""
    rng = np.random.default_rng(7)
    configs = []
    while len(configs) < 60:
        size = tuple(int(v) for v in rng.integers(1, 9, 2))
        kernel = tuple(int(v) for v in rng.integers(1, 5, 2))
        stride = tuple(int(v) for v in rng.integers(1, 4, 2))
        pad = tuple(int(rng.integers(0, k)) for k in kernel)
        ceil = bool(rng.integers(0, 4))
        if min(pooled_sizes(size, kernel, stride, pad, ceil)) > 0:
            configs.append((size, kernel, stride, pad, ceil))
    return configs


POOL_CONFIGS = _pool_configs()


@pytest.mark.parametrize("method", ["MAX", "AVE"])
def test_pooling_matches_caffe_loops(method):
    rng = np.random.default_rng(8)
    paths = set()
    for size, kernel, stride, pad, ceil in POOL_CONFIGS:
        tops = 2 if method == "MAX" else 1
        layer = make_layer("Pooling", pool_params(method, kernel, stride, pad, ceil), (2, 2, *size), tops=tops)
        paths.add(layer.geometry((2, 2, *size)).torch_ok)
        x = rng.integers(-3, 3, size=(2, 2, *size)).astype(np.float64)  # many ties
        tops_out, (grad,), top_diff = run_layer(layer, x)
        top, mask, diff = pool_ref(x, method, kernel, stride, pad, ceil, top_diff)
        what = f"{method} size={size} kernel={kernel} stride={stride} pad={pad} ceil={ceil}"
        np.testing.assert_allclose(tops_out[0], top, rtol=1e-12, atol=1e-12, err_msg=what)
        if method == "MAX":
            np.testing.assert_array_equal(tops_out[1], mask, err_msg=what)
        np.testing.assert_allclose(grad, diff, rtol=1e-12, atol=1e-12, err_msg=what)
    assert paths == {True, False}, "both the torch path and the explicit path must be exercised"


def test_max_pooling_ties_send_the_gradient_to_the_first_maximum_only():
    x = np.ones((1, 1, 4, 4))
    for params in ("pooling_param { kernel_size: 2 stride: 2 }",
                   "pooling_param { kernel_size: 3 stride: 1 pad: 2 }"):  # torch path, explicit path
        layer = make_layer("Pooling", params, x.shape, tops=2)
        (top, mask), (grad,), top_diff = run_layer(layer, x)
        expected_top, expected_mask, expected_diff = pool_ref(
            x, "MAX", layer.kernel, layer.stride, layer.pad, True, top_diff)
        np.testing.assert_array_equal(mask, expected_mask)
        np.testing.assert_allclose(grad, expected_diff, rtol=1e-12, atol=1e-12)
    # 2x2 windows of ones: only each window's top-left element is a winner.
    layer = make_layer("Pooling", "pooling_param { kernel_size: 2 stride: 2 }", x.shape)
    _, (grad,), _ = run_layer(layer, x, top_grads=[np.ones((1, 1, 2, 2))])
    np.testing.assert_array_equal(grad[0, 0], [[1, 0, 1, 0], [0, 0, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]])


def test_pooling_windows_past_the_input_keep_caffe_values():
    # 5 rows, kernel 1, stride 3, no pad: Caffe's ceil gives 3 rows, the last starting at row 6.
    x = np.arange(20.0).reshape(1, 1, 5, 4)
    layer = make_layer("Pooling", "pooling_param { pool: MAX kernel_size: 1 stride: 3 }", x.shape, tops=2)
    (top, mask), _, _ = run_layer(layer, x)
    assert top.shape == (1, 1, 3, 2)
    np.testing.assert_array_equal(top[0, 0], [[0, 3], [12, 15], [-FLT_MAX, -FLT_MAX]])
    np.testing.assert_array_equal(mask[0, 0], [[0, 3], [12, 15], [-1, -1]])
    layer = make_layer("Pooling", "pooling_param { pool: AVE kernel_size: 1 stride: 3 }", x.shape)
    (top,), _, _ = run_layer(layer, x)
    np.testing.assert_array_equal(top[0, 0], [[0, 3], [12, 15], [0, 0]])  # 0 / -1 in Caffe


def test_global_pooling():
    x = np.random.default_rng(9).standard_normal((2, 3, 5, 4))
    layer = make_layer("Pooling", "pooling_param { pool: AVE global_pooling: true }", x.shape)
    (top,), (grad,), top_diff = run_layer(layer, x)
    np.testing.assert_allclose(top, x.mean(axis=(2, 3), keepdims=True))
    np.testing.assert_allclose(grad, np.broadcast_to(top_diff / 20, x.shape))
    layer = make_layer("Pooling", "pooling_param { pool: MAX global_pooling: true }", x.shape, tops=2)
    (top, mask), _, _ = run_layer(layer, x)
    np.testing.assert_allclose(top[..., 0, 0], x.reshape(2, 3, -1).max(-1))
    np.testing.assert_array_equal(mask[..., 0, 0], x.reshape(2, 3, -1).argmax(-1))


def test_pooling_follows_a_reshaped_net():
    sample = Sample("pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 }", bottoms=((1, 1, 6, 6),))
    net = torchcaffe.Net(net_param("Pooling", sample), torchcaffe.TEST)
    x = np.random.default_rng(10).standard_normal((2, 1, 7, 5))
    net.blobs["b0"].reshape(*x.shape)
    net.reshape()
    net.blobs["b0"].data[...] = x
    net.forward()
    np.testing.assert_allclose(net.blobs["t0"].data, pool_ref(x, "AVE", (3, 3), (2, 2), (1, 1))[0], rtol=1e-6)


def test_stochastic_pooling_test_phase_is_the_probability_weighted_average():
    x = np.random.default_rng(11).uniform(0, 2, (2, 2, 5, 6))
    x[0, 0, :3, :3] = 0  # an all-zero window: 0 / FLT_MIN = 0
    layer = make_layer("Pooling", "pooling_param { pool: STOCHASTIC kernel_size: 3 stride: 2 }", x.shape,
                       phase=torchcaffe.TEST)
    (top,), _, _ = run_layer(layer, x)
    oh, ow = pooled_sizes((5, 6), (3, 3), (2, 2), (0, 0))
    expected = np.zeros((2, 2, oh, ow))
    for i, j in itertools.product(range(oh), range(ow)):
        window = x[:, :, 2 * i:2 * i + 3, 2 * j:2 * j + 3]
        expected[:, :, i, j] = (window ** 2).sum((2, 3)) / (FLT_MIN + window.sum((2, 3)))
    np.testing.assert_allclose(top, expected, rtol=1e-12)
    assert top[0, 0, 0, 0] == 0


def test_stochastic_pooling_train_samples_by_value_and_routes_the_gradient():
    torch.manual_seed(0)
    values = np.array([[0.0, 1.0], [3.0, 0.0]])  # window of 2x2: P = 1/4 and 3/4, zeros never
    x = np.tile(values, (4000, 1, 1, 1))
    layer = make_layer("Pooling", "pooling_param { pool: STOCHASTIC kernel_size: 2 stride: 2 }", x.shape)
    (top,), (grad,), _ = run_layer(layer, x, top_grads=[np.ones((4000, 1, 1, 1))])
    assert set(np.unique(top)) <= {1.0, 3.0}
    assert abs((top == 3.0).mean() - 0.75) < 0.03
    # The gradient goes to the sampled element only.
    np.testing.assert_array_equal(grad[:, 0, 0, 1], (top[:, 0, 0, 0] == 1.0))
    np.testing.assert_array_equal(grad[:, 0, 1, 0], (top[:, 0, 0, 0] == 3.0))
    assert not grad[:, 0, 0, 0].any() and not grad[:, 0, 1, 1].any()
    # A window with one non-zero element always gives it, even in the clipped last window.
    x = np.zeros((3, 1, 3, 3))
    x[:, 0, 2, 2] = 5.0
    layer = make_layer("Pooling", "pooling_param { pool: STOCHASTIC kernel_size: 2 stride: 2 }", x.shape)
    (top,), _, _ = run_layer(layer, x)
    np.testing.assert_array_equal(top[:, 0, 1, 1], 5.0)


# -- SPP ---------------------------------------------------------------------------------------------
def spp_ref(x, levels, method):
    height, width = x.shape[2:]
    parts = []
    for level in range(levels):
        bins = 2 ** level
        kernel = (math.ceil(height / bins), math.ceil(width / bins))
        pad = ((kernel[0] * bins - height + 1) // 2, (kernel[1] * bins - width + 1) // 2)
        parts.append(pool_ref(x, method, kernel, kernel, pad)[0])
    if levels == 1:
        return parts[0]
    return np.concatenate([p.reshape(len(x), -1) for p in parts], 1)


@pytest.mark.parametrize("shape", [(2, 3, 7, 6), (1, 2, 8, 7), (1, 1, 13, 9), (2, 1, 4, 4)])
@pytest.mark.parametrize("method", ["MAX", "AVE"])
@pytest.mark.parametrize("levels", [1, 3])
def test_spp_matches_pooled_levels(shape, method, levels):
    x = np.random.default_rng(12).standard_normal(shape)
    layer = make_layer("SPP", f"spp_param {{ pyramid_height: {levels} pool: {method} }}", shape)
    (top,), _, _ = run_layer(layer, x)
    expected = spp_ref(x, levels, method)
    assert top.shape == expected.shape
    np.testing.assert_allclose(top, expected, rtol=1e-12, atol=1e-12)
    if levels == 1:
        assert top.shape == (shape[0], shape[1], 1, 1)


# -- Crop ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("params,shape,reference,index", [
    ("", (2, 3, 6, 7), (1, 1, 4, 5), np.s_[:, :, 0:4, 0:5]),
    ("crop_param { axis: 1 offset: 1 }", (2, 5, 6, 6), (2, 3, 4, 4), np.s_[:, 1:4, 1:5, 1:5]),
    ("crop_param { axis: 2 offset: 1 offset: 2 }", (1, 2, 8, 8), (1, 3, 5, 4), np.s_[:, :, 1:6, 2:6]),
    ("crop_param { axis: -2 offset: 3 }", (2, 3, 8, 9), (9, 9, 4, 5), np.s_[:, :, 3:7, 3:8]),
])
def test_crop(params, shape, reference, index):
    sample = Sample(params, bottoms=(shape, reference))
    net = torchcaffe.Net(net_param("Crop", sample, loss_weights=[1.0], force_backward=True), torchcaffe.TRAIN)
    x = np.random.default_rng(13).standard_normal(shape)
    net.blobs["b0"].data[...] = x
    net.blobs["b1"].data[...] = 1.0
    net.forward()
    net.backward()
    np.testing.assert_allclose(net.blobs["t0"].data, x[index].astype(np.float32))
    expected = np.zeros(shape)
    expected[index] = 1
    np.testing.assert_array_equal(net.blobs["b0"].diff, expected)
    assert not net.blobs["b1"].diff.any(), "Caffe never back-propagates into the reference bottom"


# -- malformed parameters --------------------------------------------------------------------------
BAD = [
    ("Convolution", "convolution_param { kernel_size: 3 }", [(1, 2, 5, 5)], 1, "num_output"),
    ("Convolution", "convolution_param { num_output: 2 }", [(1, 2, 5, 5)], 1, "kernel_size"),
    ("Convolution", "convolution_param { num_output: 4 group: 3 kernel_size: 1 }", [(1, 6, 5, 5)], 1, "group"),
    ("Convolution", "convolution_param { num_output: 4 group: 4 kernel_size: 1 }", [(1, 6, 5, 5)], 1, "group"),
    ("Convolution", "convolution_param { num_output: 2 kernel_h: 3 kernel_w: 3 }", [(1, 2, 5, 5, 5)], 1, "kernel_h"),
    ("Convolution", "convolution_param { num_output: 2 kernel_size: 3 kernel_h: 3 kernel_w: 3 }", [(1, 2, 5, 5)], 1,
     "kernel_size"),
    ("Convolution", "convolution_param { num_output: 2 kernel_h: 3 }", [(1, 2, 5, 5)], 1, "kernel_size"),
    ("Convolution", "convolution_param { num_output: 2 kernel_size: 3 kernel_size: 2 kernel_size: 1 }",
     [(1, 2, 5, 5)], 1, "kernel_size"),
    ("Convolution", "convolution_param { num_output: 2 kernel_size: 3 stride: 0 }", [(1, 2, 5, 5)], 1, "stride"),
    ("Convolution", "convolution_param { num_output: 2 kernel_size: 7 }", [(1, 2, 5, 5)], 1, "kernel"),
    ("Convolution", "convolution_param { num_output: 2 kernel_size: 3 }", [(1, 2, 5, 5), (1, 2, 5, 5)], 1, "tops"),
    ("Convolution", "convolution_param { num_output: 2 kernel_size: 3 }", [(1, 2, 5, 5), (1, 2, 6, 5)], 2, "shape"),
    ("Convolution", "convolution_param { num_output: 2 kernel_size: 1 axis: 4 }", [(1, 2, 5, 5)], 1, "axis"),
    ("Deconvolution", "convolution_param { num_output: 3 group: 2 kernel_size: 2 }", [(1, 4, 3, 3)], 1, "group"),
    ("Deconvolution", "convolution_param { num_output: 2 kernel_size: 2 pad: 3 }", [(1, 2, 2, 2)], 1, "pad"),
    ("Pooling", "pooling_param { pool: MAX }", [(1, 2, 5, 5)], 1, "kernel"),
    ("Pooling", "pooling_param { kernel_size: 2 kernel_h: 2 kernel_w: 2 }", [(1, 2, 5, 5)], 1, "kernel_size"),
    ("Pooling", "pooling_param { global_pooling: true kernel_size: 2 }", [(1, 2, 5, 5)], 1, "global_pooling"),
    ("Pooling", "pooling_param { global_pooling: true stride: 2 }", [(1, 2, 5, 5)], 1, "global_pooling"),
    ("Pooling", "pooling_param { kernel_size: 2 pad: 2 }", [(1, 2, 5, 5)], 1, "pad"),
    ("Pooling", "pooling_param { kernel_size: 3 pad_h: 1 }", [(1, 2, 5, 5)], 1, "pad_h"),
    ("Pooling", "pooling_param { kernel_size: 3 stride: 2 stride_h: 1 stride_w: 1 }", [(1, 2, 5, 5)], 1, "stride"),
    ("Pooling", "pooling_param { pool: STOCHASTIC kernel_size: 3 pad: 1 }", [(1, 2, 5, 5)], 1, "STOCHASTIC"),
    ("Pooling", "pooling_param { pool: AVE kernel_size: 2 }", [(1, 2, 5, 5)], 2, "MAX"),
    ("Pooling", "pooling_param { kernel_size: 2 }", [(2, 5, 5)], 1, "4 axes"),
    ("Pooling", "pooling_param { kernel_size: 4 round_mode: FLOOR }", [(1, 1, 2, 2)], 1, "pooled size"),
    ("SPP", "spp_param { pool: MAX }", [(1, 2, 8, 8)], 1, "pyramid_height"),
    ("SPP", "spp_param { pyramid_height: 3 }", [(1, 2, 5, 8)], 1, "pad"),
    ("Im2col", "convolution_param { kernel_size: 2 axis: -1 }", [(1, 4)], 1, "spatial"),
    ("Im2col", "convolution_param { stride: 2 }", [(1, 2, 4, 4)], 1, "kernel_size"),
    ("Crop", "crop_param { axis: 1 offset: 1 offset: 1 }", [(1, 4, 5, 5), (1, 2, 3, 3)], 1, "offset"),
    ("Crop", "crop_param { axis: 2 offset: 3 }", [(1, 4, 5, 5), (1, 4, 3, 3)], 1, "offset 3"),
    ("Crop", "crop_param { axis: 5 }", [(1, 4, 5, 5), (1, 4, 3, 3)], 1, "crop_param.axis"),
]


@pytest.mark.parametrize("type_name,params,shapes,tops,field", BAD, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD)])
def test_malformed_parameters_are_refused(type_name, params, shapes, tops, field):
    sample = Sample(params, bottoms=shapes, tops=tops)
    with pytest.raises(NetError) as error:
        torchcaffe.Net(net_param(type_name, sample), torchcaffe.TRAIN)
    message = str(error.value)
    assert f'layer "under_test" ({type_name})' in message
    assert field in message, message
