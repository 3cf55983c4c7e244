"""Small fork layers (ShuffleChannel, ConvolutionDepthwise, DepthwiseConvolution, Axpy), the fork
fields Pooling ``ceil_mode`` and Dropout ``scale_train``, and our own L2Norm.

The references are loop implementations of each fork's CPU code (farmingyard/ShuffleNet's
Resize_cpu, sp2823's conv_dw_layer.cpp, hujie-frank/SENet's axpy_layer.cpp, the ceil/floor rule
of soeaver's pooling_layer.cpp, rbgirshick/caffe-fast-rcnn's dropout_layer.cpp). L2Norm is checked
against numpy, against the stock-Caffe compositions of ``docs/l2norm.md`` (values and gradients,
float64), and against what BVLC Caffe computed for the seed-000 conformance cases.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

import torchcaffe
from torchcaffe import NetError
from torchcaffe.layers import Sample

from ..conftest import requires_shared, shared_dir
from .harness import make_layer, net_from, net_param

RNG = np.random.default_rng(11)


def run_layer(layer, *arrays, top_grad=None):
    """Forward in float64, backward ``top_grad`` (default: random); returns top, bottom grads, param grads."""
    layer = layer.double()
    xs = [torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in arrays]
    top = layer(*xs)
    grad = RNG.standard_normal(tuple(top.shape)) if top_grad is None else top_grad
    top.backward(torch.tensor(grad))
    params = {name: p.grad.numpy() for name, p in layer.named_parameters()}
    return top.detach().numpy(), [x.grad.numpy() for x in xs], params, grad


# -- ShuffleChannel --------------------------------------------------------------------------------
def shuffle_ref(x, group):
    """farmingyard/ShuffleNet's Resize_cpu per image: block (i, j) of a (group x C/group) grid goes to (j, i)."""
    n, c = x.shape[:2]
    flat = x.reshape(n, c, -1)
    out = np.empty_like(flat)
    rows, cols = group, c // group
    for b, i, j in itertools.product(range(n), range(rows), range(cols)):
        out[b, j * rows + i] = flat[b, i * cols + j]
    return out.reshape(x.shape)


@pytest.mark.parametrize("shape,group", [((2, 6, 3, 2), 3), ((1, 8, 2, 3), 2), ((3, 12), 4), ((2, 6, 5), 2),
                                         ((1, 5, 2, 2), 1), ((2, 4, 1, 3), 4)])
def test_shuffle_channel_matches_the_fork_and_its_backward_unshuffles(shape, group):
    x = RNG.standard_normal(shape)
    layer = make_layer("ShuffleChannel", f"shuffle_channel_param {{ group: {group} }}", shape)
    top, (dx,), _, dtop = run_layer(layer, x)
    np.testing.assert_array_equal(top, shuffle_ref(x, group))
    # The fork's backward is the same copy with the grid transposed: (C/group) rows of group.
    np.testing.assert_array_equal(dx, shuffle_ref(dtop, shape[1] // group))


def test_shuffle_channel_matches_torch_channel_shuffle():
    x = torch.randn(2, 12, 3, 3)
    layer = make_layer("ShuffleChannel", "shuffle_channel_param { group: 3 }", x.shape)
    torch.testing.assert_close(layer(x), torch.nn.ChannelShuffle(3)(x))


# -- ConvolutionDepthwise --------------------------------------------------------------------------
def depthwise_ref(x, weight, bias, kernel, stride, pad, dilation):
    """sp2823's conv_dw_layer.cpp Forward_cpu: per channel, zero outside the input."""
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, pad, dilation
    oh = (h + 2 * ph - (dh * (kh - 1) + 1)) // sh + 1
    ow = (w + 2 * pw - (dw * (kw - 1) + 1)) // sw + 1
    out = np.zeros((n, c, oh, ow))
    for b, ch, y, xo in itertools.product(range(n), range(c), range(oh), range(ow)):
        value = 0.0
        for i, j in itertools.product(range(kh), range(kw)):
            hi, wi = -ph + y * sh + i * dh, -pw + xo * sw + j * dw
            if 0 <= hi < h and 0 <= wi < w:
                value += weight[ch, 0, i, j] * x[b, ch, hi, wi]
        out[b, ch, y, xo] = value + (bias[ch] if bias is not None else 0.0)
    return out


def depthwise_weight_grad_ref(x, dtop, kernel, stride, pad, dilation):
    """The fork's Backward_cpu for the weight."""
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, pad, dilation
    grad = np.zeros((c, 1, kh, kw))
    for b, ch, y, xo, i, j in itertools.product(range(n), range(c), range(dtop.shape[2]), range(dtop.shape[3]),
                                                range(kh), range(kw)):
        hi, wi = -ph + y * sh + i * dh, -pw + xo * sw + j * dw
        if 0 <= hi < h and 0 <= wi < w:
            grad[ch, 0, i, j] += x[b, ch, hi, wi] * dtop[b, ch, y, xo]
    return grad


GAUSS = "weight_filler { type: 'gaussian' } bias_filler { type: 'gaussian' }"
DEPTHWISE = [
    ("kernel_size: 3 pad: 1", (2, 3, 4, 5), (3, 3), (1, 1), (1, 1), (1, 1)),
    ("kernel_size: 3 stride: 2 pad: 1 bias_term: false", (1, 3, 6, 5), (3, 3), (2, 2), (1, 1), (1, 1)),
    ("num_output: 17 group: 5 kernel_h: 2 kernel_w: 3 stride_h: 1 stride_w: 2 pad_h: 0 pad_w: 1",
     (2, 2, 4, 5), (2, 3), (1, 2), (0, 1), (1, 1)),
    ("kernel_size: 2 kernel_size: 3 dilation: 2 pad: 2 pad: 1 stride: 1 stride: 2", (1, 2, 5, 6), (2, 3), (1, 2),
     (2, 1), (2, 2)),
    ("kernel_size: 3 dilation: 1 dilation: 2", (1, 2, 5, 6), (3, 3), (1, 1), (0, 0), (1, 2)),
    ("kernel_size: 3 kernel_h: 2", (1, 2, 5, 5), (3, 3), (1, 1), (0, 0), (1, 1)),
]


@pytest.mark.parametrize("params,shape,kernel,stride,pad,dilation", DEPTHWISE)
def test_convolution_depthwise_matches_the_fork(params, shape, kernel, stride, pad, dilation):
    layer = make_layer("ConvolutionDepthwise", f"convolution_param {{ {params} {GAUSS} }}", shape, seed=3)
    c = shape[1]
    assert layer.weight.shape == (c, 1) + kernel
    bias_term = "bias_term: false" not in params
    assert (layer.bias is not None) == bias_term and (not bias_term or layer.bias.shape == (c,))
    x = RNG.standard_normal(shape)
    weight = layer.weight.detach().double().numpy()
    bias = layer.bias.detach().double().numpy() if bias_term else None
    top, (dx,), grads, dtop = run_layer(layer, x)
    np.testing.assert_allclose(top, depthwise_ref(x, weight, bias, kernel, stride, pad, dilation), atol=1e-12)
    np.testing.assert_allclose(grads["weight"], depthwise_weight_grad_ref(x, dtop, kernel, stride, pad, dilation),
                               atol=1e-12)
    if bias_term:
        np.testing.assert_allclose(grads["bias"], dtop.sum((0, 2, 3)), atol=1e-12)


def test_convolution_depthwise_loads_the_weights_of_a_grouped_convolution():
    """Same blobs as Convolution with num_output == group == C: a caffemodel serves both."""
    shape = (2, 4, 5, 5)
    dw = make_layer("ConvolutionDepthwise", f"convolution_param {{ num_output: 1 kernel_size: 3 pad: 1 {GAUSS} }}",
                    shape, seed=0)
    conv = make_layer("Convolution", "convolution_param { num_output: 4 group: 4 kernel_size: 3 pad: 1 }", shape)
    assert [tuple(b.shape) for b in dw.caffe_blobs()] == [tuple(b.shape) for b in conv.caffe_blobs()]
    with torch.no_grad():
        for mine, theirs in zip(conv.caffe_blobs(), dw.caffe_blobs()):
            mine.copy_(theirs)
    x = torch.randn(shape)
    torch.testing.assert_close(dw(x), conv(x))


def test_depthwise_convolution_is_caffes_grouped_convolution():
    shape = (2, 4, 5, 4)
    params = f"convolution_param {{ num_output: 8 group: 4 kernel_size: 3 stride: 2 pad: 1 {GAUSS} }}"
    dw = make_layer("DepthwiseConvolution", params, shape, seed=0)
    conv = make_layer("Convolution", params, shape, seed=0)
    assert dw.weight.shape == (8, 1, 3, 3)
    x = torch.randn(shape)
    torch.testing.assert_close(dw(x), conv(x))


# -- Axpy --------------------------------------------------------------------------------------------
def axpy_ref(a, x, y):
    """hujie-frank/SENet's Forward_cpu: copy y, then axpy each (n, c) plane with a[n * C + c]."""
    n, c = x.shape[:2]
    flat_a = a.reshape(-1)
    out = y.reshape(n, c, -1).copy()
    xs = x.reshape(n, c, -1)
    for b, ch in itertools.product(range(n), range(c)):
        out[b, ch] += flat_a[b * c + ch] * xs[b, ch]
    return out.reshape(x.shape)


@pytest.mark.parametrize("a_shape,x_shape", [((2, 3, 1, 1), (2, 3, 4, 5)), ((1, 4), (1, 4, 3)), ((3, 2), (3, 2))])
def test_axpy_matches_the_fork_forward_and_backward(a_shape, x_shape):
    a, x, y = RNG.standard_normal(a_shape), RNG.standard_normal(x_shape), RNG.standard_normal(x_shape)
    layer = make_layer("Axpy", "", a_shape, x_shape, x_shape)
    top, (da, dx, dy), _, dtop = run_layer(layer, a, x, y)
    np.testing.assert_allclose(top, axpy_ref(a, x, y), atol=1e-12)
    n, c = x_shape[:2]
    # The fork: scale diff = sum over the plane of dtop * x; x diff = a * dtop; y diff = dtop.
    np.testing.assert_allclose(da.reshape(n, c), (dtop * x).reshape(n, c, -1).sum(-1), atol=1e-12)
    np.testing.assert_allclose(dx, axpy_ref(a, dtop, np.zeros_like(dtop)), atol=1e-12)
    np.testing.assert_array_equal(dy, dtop)


def test_axpy_in_an_se_block_net():
    net = net_from("""
        layer { name: "in" type: "Input" top: "x" top: "proj" input_param { shape { dim: 2 dim: 4 dim: 3 dim: 3 }
                                                                        shape { dim: 2 dim: 4 dim: 3 dim: 3 } } }
        layer { name: "pool" type: "Pooling" bottom: "x" top: "squeeze"
                pooling_param { pool: AVE global_pooling: true } }
        layer { name: "gate" type: "Sigmoid" bottom: "squeeze" top: "gate" }
        layer { name: "axpy" type: "Axpy" bottom: "gate" bottom: "x" bottom: "proj" top: "out" }""")
    x, proj = RNG.standard_normal((2, 4, 3, 3)), RNG.standard_normal((2, 4, 3, 3))
    out = net.forward(x=x.astype(np.float32), proj=proj.astype(np.float32))["out"]
    gate = 1 / (1 + np.exp(-x.mean((2, 3), keepdims=True)))
    np.testing.assert_allclose(out, gate * x + proj, rtol=1e-5, atol=1e-6)


# -- Pooling ceil_mode ---------------------------------------------------------------------------
def test_ceil_mode_false_floors_like_round_mode_floor():
    """ResNeXt-50's pool1 (soeaver/caffe-model): 3x3/2 pad 1 on 112x112 -> 56 with floor, 57 with ceil."""
    shape = (1, 2, 112, 112)
    base = "pool: MAX kernel_size: 3 stride: 2 pad: 1"
    fork = make_layer("Pooling", f"pooling_param {{ {base} ceil_mode: false }}", shape)
    floor = make_layer("Pooling", f"pooling_param {{ {base} round_mode: FLOOR }}", shape)
    ceil = make_layer("Pooling", f"pooling_param {{ {base} ceil_mode: true }}", shape)
    default = make_layer("Pooling", f"pooling_param {{ {base} }}", shape)
    assert fork.top_shapes([torch.Size(shape)])[0] == (1, 2, 56, 56)
    assert ceil.top_shapes([torch.Size(shape)])[0] == default.top_shapes([torch.Size(shape)])[0] == (1, 2, 57, 57)
    x = torch.randn(shape)
    torch.testing.assert_close(fork(x), floor(x))


@pytest.mark.parametrize("method", ["MAX", "AVE"])
@pytest.mark.parametrize("size,kernel,stride,pad", [(7, 3, 2, 0), (8, 3, 2, 1), (6, 2, 2, 1), (9, 4, 3, 2)])
def test_ceil_mode_sizes_follow_the_fork(method, size, kernel, stride, pad):
    """soeaver's pooling_layer.cpp: ceil or floor of (H + 2p - k) / s, plus one, then the padding clip."""
    for ceil_mode in (True, False):
        rounded = -(-(size + 2 * pad - kernel) // stride) if ceil_mode else (size + 2 * pad - kernel) // stride
        out = rounded + 1
        if pad and (out - 1) * stride >= size + pad:
            out -= 1
        layer = make_layer("Pooling", f"pooling_param {{ pool: {method} kernel_size: {kernel} stride: {stride} "
                                      f"pad: {pad} ceil_mode: {str(ceil_mode).lower()} }}", (1, 1, size, size))
        assert layer(torch.randn(1, 1, size, size)).shape == (1, 1, out, out)


def test_ceil_mode_and_round_mode_agreeing_are_accepted():
    layer = make_layer("Pooling", "pooling_param { kernel_size: 3 stride: 2 ceil_mode: false round_mode: FLOOR }",
                       (1, 1, 8, 8))
    assert layer(torch.randn(1, 1, 8, 8)).shape == (1, 1, 3, 3)


# -- Dropout scale_train -----------------------------------------------------------------------
def dropout_net(params, phase):
    return net_from(f"""force_backward: true
        layer {{ name: "x" type: "Input" top: "x" input_param {{ shape {{ dim: 200 dim: 50 }} }} }}
        layer {{ name: "d" type: "Dropout" bottom: "x" top: "y" dropout_param {{ {params} }} }}""", phase)


def test_dropout_scale_train_false_keeps_values_unscaled_in_train():
    x = RNG.uniform(1, 2, (200, 50)).astype(np.float32)
    net = dropout_net("dropout_ratio: 0.25 scale_train: false", torchcaffe.TRAIN)
    torch.manual_seed(0)
    y = net.forward(x=x)["y"]
    kept = y != 0
    np.testing.assert_array_equal(y[kept], x[kept])
    assert abs(1 - kept.mean() - 0.25) < 0.02
    net.blobs["y"].diff[...] = 1
    net.backward()
    np.testing.assert_array_equal(net.blobs["x"].diff, kept.astype(np.float32))


def test_dropout_scale_train_false_scales_by_keep_probability_in_test():
    x = RNG.standard_normal((200, 50)).astype(np.float32)
    net = dropout_net("dropout_ratio: 0.25 scale_train: false", torchcaffe.TEST)
    np.testing.assert_allclose(net.forward(x=x)["y"], 0.75 * x, rtol=1e-6)
    net.blobs["y"].diff[...] = 2
    net.backward()
    np.testing.assert_allclose(net.blobs["x"].diff, np.full_like(x, 1.5))
    scaled = dropout_net("dropout_ratio: 0.25 scale_train: true", torchcaffe.TEST)
    np.testing.assert_array_equal(scaled.forward(x=x)["y"], x)


# -- L2Norm ------------------------------------------------------------------------------------
def l2norm_ref(x, axes, eps, scale=None):
    """Every vector along ``axes`` divided by sqrt(its sum of squares + eps), element by element."""
    axes = tuple(a % x.ndim for a in axes)
    keep = [a for a in range(x.ndim) if a not in axes]
    out = np.empty_like(x)
    for index in itertools.product(*(range(x.shape[a]) for a in keep)):
        sel = [slice(None)] * x.ndim
        for a, i in zip(keep, index):
            sel[a] = i
        v = x[tuple(sel)]
        out[tuple(sel)] = v / np.sqrt((v * v).sum() + eps)
    if scale is not None:
        out = out * (scale if scale.size == 1 else scale.reshape((1, -1) + (1,) * (x.ndim - 2)))
    return out


@pytest.mark.parametrize("params,shape,axes,eps", [
    ("", (2, 3, 4, 2), (1,), 1e-10),
    ("axis: 0 axis: 1", (3, 2, 2, 3), (0, 1), 1e-10),
    ("axis: 1 axis: 2 axis: 3 eps: 0.5", (2, 3, 2, 2), (1, 2, 3), 0.5),
    ("axis: -1", (2, 3, 4), (-1,), 1e-10),
    ("axis: 2 axis: 0", (2, 3, 4), (2, 0), 1e-10),
])
def test_l2norm_matches_numpy(params, shape, axes, eps):
    x = RNG.standard_normal(shape)
    layer = make_layer("L2Norm", f"l2_norm_param {{ {params} }}", shape)
    assert not layer.caffe_blobs()
    top, *_ = run_layer(layer, x)
    np.testing.assert_allclose(top, l2norm_ref(x, axes, eps), rtol=1e-12)


@pytest.mark.parametrize("shared", [False, True])
def test_l2norm_scale_blob_and_filler(shared):
    shape = (2, 3, 2, 2)
    extra = " channel_shared: true" if shared else ""
    default = make_layer("L2Norm", f"l2_norm_param {{ scale: true{extra} }}", shape)
    assert default.scale.shape == ((1,) if shared else (3,)) and torch.all(default.scale == 1)
    filler = "scale_filler { type: 'constant' value: 20 }"
    layer = make_layer("L2Norm", f"l2_norm_param {{ scale: true{extra} {filler} }}", shape)
    assert torch.all(layer.scale == 20)
    with torch.no_grad():
        layer.scale.copy_(torch.arange(1.0, 1.0 + layer.scale.numel()))
    x = RNG.standard_normal(shape)
    top, _, grads, dtop = run_layer(layer, x)
    scale = layer.scale.detach().numpy()
    np.testing.assert_allclose(top, l2norm_ref(x, (1,), 1e-10, scale), rtol=1e-12)
    unit = l2norm_ref(x, (1,), 1e-10)
    expected = (unit * dtop).sum() if shared else (unit * dtop).sum((0, 2, 3))
    np.testing.assert_allclose(grads["scale"], np.reshape(expected, scale.shape), rtol=1e-10)


def test_l2norm_zero_vector_gives_zero_and_a_finite_gradient():
    layer = make_layer("L2Norm", "l2_norm_param { eps: 0.0001 }", (2, 3))
    top, (dx,), _, dtop = run_layer(layer, np.zeros((2, 3)))
    np.testing.assert_array_equal(top, 0)
    np.testing.assert_allclose(dx, dtop / np.sqrt(1e-4))


# The composition side is the net Caffe itself ran for each seed-000 case (../shared/conformance).
SEED_CASES = ["seed000_l2norm_by_composition", "seed000_l2norm_tile_eltwise"]
OURS = """force_backward: true
layer {{ name: "x" type: "Input" top: "x" input_param {{ shape {{ {dims} }} }} }}
layer {{ name: "l2" type: "L2Norm" bottom: "x" top: "y" l2_norm_param {{ {params} }} }}"""


def values_and_gradient(net, x, dtop):
    """Forward the net (torch way, float64) and back-propagate ``dtop`` from its output ``y``."""
    net = net.double()
    xt = torch.tensor(x, requires_grad=True)
    y = net(x=xt)["y"]
    (dx,) = torch.autograd.grad(y, xt, torch.tensor(dtop))
    return y.detach().numpy(), dx.numpy()


def assert_same_net_function(composition, ours, shape):
    for trial in range(3):
        x = RNG.standard_normal(shape) * (10.0 ** (trial - 1))
        dtop = RNG.standard_normal(shape)
        y_ref, dx_ref = values_and_gradient(composition, x, dtop)
        y, dx = values_and_gradient(ours, x, dtop)
        np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(dx, dx_ref, rtol=1e-9, atol=1e-12)


@requires_shared
@pytest.mark.parametrize("case", SEED_CASES)
def test_l2norm_equals_the_seed_compositions_in_values_and_gradients(case):
    composition = torchcaffe.Net(str(shared_dir("conformance", "cases", case, "net.prototxt")), torchcaffe.TRAIN)
    shape = composition.blobs["x"].shape
    ours = net_from(OURS.format(dims=" ".join(f"dim: {d}" for d in shape), params="eps: 0.000000000001"))
    assert_same_net_function(composition, ours, shape)


@requires_shared
@pytest.mark.parametrize("case", SEED_CASES)
def test_l2norm_reproduces_what_caffe_computed_for_the_seed(case):
    """Caffe's own float32 numbers for the composition: L2Norm gives the same top and bottom diff."""
    folder = shared_dir("conformance", "cases", case)
    data = np.load(folder / "data.npz")
    x = data["s0/in/x"]
    net = net_from(OURS.format(dims=" ".join(f"dim: {d}" for d in x.shape), params="eps: 0.000000000001"))
    y = net.forward(x=x)["y"]
    np.testing.assert_allclose(y, data["s0/out/y"], rtol=1e-4, atol=1e-5)
    net.blobs["y"].diff[...] = data["s0/topdiff/y"]
    net.backward()
    np.testing.assert_allclose(net.blobs["x"].diff, data["s0/diff/x"], rtol=1e-4, atol=1e-5)


# docs/l2norm.md: channel-wise L2 of an (N, C, H, W) blob from stock layers, and the seed's axes (0, 1).
CHANNELWISE = """force_backward: true
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 4 dim: 5 } } }
layer { name: "sq" type: "Power" bottom: "x" top: "sq" power_param { power: 2 } }
layer { name: "sumsq" type: "Convolution" bottom: "sq" top: "sumsq" param { lr_mult: 0 decay_mult: 0 }
        convolution_param { num_output: 1 kernel_size: 1 bias_term: false
                            weight_filler { type: "constant" value: 1 } } }
layer { name: "inv" type: "Power" bottom: "sumsq" top: "inv" power_param { power: -0.5 shift: 1e-10 } }
layer { name: "denom" type: "Tile" bottom: "inv" top: "denom" tile_param { axis: 1 tiles: 3 } }
layer { name: "y" type: "Eltwise" bottom: "x" bottom: "denom" top: "y" eltwise_param { operation: PROD } }"""

SEED_AXES = """force_backward: true
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 4 dim: 5 } } }
layer { name: "sq" type: "Power" bottom: "x" top: "sq" power_param { power: 2 } }
layer { name: "flat" type: "Reshape" bottom: "sq" top: "flat" reshape_param { shape { dim: 1 dim: -1 dim: 0 dim: 0 } } }
layer { name: "sumsq" type: "Convolution" bottom: "flat" top: "sumsq" param { lr_mult: 0 decay_mult: 0 }
        convolution_param { num_output: 1 kernel_size: 1 bias_term: false
                            weight_filler { type: "constant" value: 1 } } }
layer { name: "inv" type: "Power" bottom: "sumsq" top: "inv" power_param { power: -0.5 shift: 1e-10 } }
layer { name: "tile_c" type: "Tile" bottom: "inv" top: "inv_c" tile_param { axis: 1 tiles: 3 } }
layer { name: "tile_n" type: "Tile" bottom: "inv_c" top: "denom" tile_param { axis: 0 tiles: 2 } }
layer { name: "y" type: "Eltwise" bottom: "x" bottom: "denom" top: "y" eltwise_param { operation: PROD } }"""

ACROSS = """force_backward: true
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 4 dim: 5 } } }
layer { name: "sumsq" type: "Reduction" bottom: "x" top: "sumsq" reduction_param { operation: SUMSQ axis: 1 } }
layer { name: "inv" type: "Power" bottom: "sumsq" top: "inv" power_param { power: -0.5 shift: 1e-10 } }
layer { name: "norm" type: "Scale" bottom: "x" bottom: "inv" top: "y" scale_param { axis: 0 } }"""


@pytest.mark.parametrize("composition,params", [(CHANNELWISE, ""), (SEED_AXES, "axis: 0 axis: 1"),
                                                (ACROSS, "axis: 1 axis: 2 axis: 3")],
                         ids=["channelwise", "seed-axes-0-1", "per-image"])
def test_l2norm_equals_the_4d_compositions_of_the_guide(composition, params):
    ours = net_from(OURS.format(dims="dim: 2 dim: 3 dim: 4 dim: 5", params=params + " eps: 1e-10"))
    assert_same_net_function(net_from(composition), ours, (2, 3, 4, 5))


# -- malformed parameters ------------------------------------------------------------------------
BAD = [
    ("ShuffleChannel", "shuffle_channel_param { group: 0 }", [(1, 4, 2, 2)], "group"),
    ("ShuffleChannel", "shuffle_channel_param { group: 3 }", [(1, 4, 2, 2)], "group 3"),
    ("ShuffleChannel", "shuffle_channel_param { group: 2 }", [(4,)], "channel axis"),
    ("ConvolutionDepthwise", "convolution_param { stride: 2 }", [(1, 2, 5, 5)], "kernel_size"),
    ("ConvolutionDepthwise", "convolution_param { kernel_h: 3 }", [(1, 2, 5, 5)], "kernel_h"),
    ("ConvolutionDepthwise", "convolution_param { kernel_size: 3 kernel_size: 3 kernel_size: 3 }",
     [(1, 2, 5, 5)], "kernel_size"),
    ("ConvolutionDepthwise", "convolution_param { kernel_size: 3 pad: 1 pad: 1 pad: 1 }", [(1, 2, 5, 5)], "pad"),
    ("ConvolutionDepthwise", "convolution_param { kernel_size: 3 }", [(1, 2, 5)], "4 axes"),
    ("ConvolutionDepthwise", "convolution_param { kernel_size: 7 }", [(1, 2, 5, 5)], "kernel"),
    ("DepthwiseConvolution", "convolution_param { num_output: 3 group: 2 kernel_size: 3 }", [(1, 2, 5, 5)], "group"),
    ("Axpy", "", [(2, 3, 2, 1), (2, 3, 4, 4), (2, 3, 4, 4)], "bottom 0"),
    ("Axpy", "", [(2, 4, 1, 1), (2, 3, 4, 4), (2, 3, 4, 4)], "(N, C)"),
    ("Axpy", "", [(2, 3, 1, 1), (2, 3, 4, 4), (2, 3, 4, 5)], "same shape"),
    ("Axpy", "", [(2,), (2, 3, 4, 4), (2, 3, 4, 4)], "(N, C, ...)"),
    ("Pooling", "pooling_param { kernel_size: 3 ceil_mode: false round_mode: CEIL }", [(1, 2, 5, 5)], "ceil_mode"),
    ("Pooling", "pooling_param { kernel_size: 3 ceil_mode: true round_mode: FLOOR }", [(1, 2, 5, 5)], "round_mode"),
    ("L2Norm", "l2_norm_param { axis: 4 }", [(1, 2, 5, 5)], "l2_norm_param axis"),
    ("L2Norm", "l2_norm_param { axis: 1 axis: -2 }", [(1, 2, 5)], "twice"),
    ("L2Norm", "l2_norm_param { eps: -1 }", [(1, 2)], "eps"),
    ("L2Norm", "l2_norm_param { axis: 0 scale: true }", [(5,)], "scale"),
]


@pytest.mark.parametrize("type_name,params,shapes,field", BAD, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD)])
def test_malformed_parameters_are_refused(type_name, params, shapes, field):
    sample = Sample(params, bottoms=shapes)
    with pytest.raises(NetError) as error:
        torchcaffe.Net(net_param(type_name, sample), torchcaffe.TRAIN)
    message = str(error.value)
    assert f'layer "under_test" ({type_name})' in message
    assert field in message, message
