"""Normalization family (BatchNorm, MVN, LRN, Scale, Bias): the semantics the sample table cannot
cover, each checked against a plain numpy loop over Caffe's formula."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from google.protobuf import text_format

import torchcaffe
from torchcaffe import NetError
from torchcaffe.proto import caffe_pb2

RNG = np.random.default_rng(20240611)


def make_net(layers: str, inputs: dict[str, tuple[int, ...]], phase=torchcaffe.TRAIN, weights=None,
             force_backward: bool = True) -> torchcaffe.Net:
    """Input layers for ``inputs``, then ``layers`` (prototxt text)."""
    param = caffe_pb2.NetParameter(name="normalization_test", force_backward=force_backward)
    for name, shape in inputs.items():
        layer = param.layer.add(name=f"in_{name}", type="Input", top=[name])
        layer.input_param.shape.add(dim=list(shape))
    text_format.Merge(layers, param)
    return torchcaffe.Net(param, phase, weights=weights)


def forward_backward(net, inputs: dict[str, np.ndarray], top: str, top_diff: np.ndarray | None = None):
    for name, value in inputs.items():
        net.blobs[name].data[...] = value
    net.forward()
    y = net.blobs[top].data.copy()
    if top_diff is None:
        return y
    net.clear_param_diffs()
    net.blobs[top].diff[...] = top_diff
    net.backward()
    return y


def assert_names(error: pytest.ExceptionInfo, layer: str, *words: str) -> None:
    message = str(error.value)
    assert f'"{layer}"' in message, message
    for word in words:
        assert word in message, message


# -- BatchNorm ---------------------------------------------------------------------------------
def bn_reference_train(x: np.ndarray, eps: float):
    """Caffe's TRAIN forward, one channel at a time: y, batch mean, biased variance."""
    c = x.shape[1]
    y = np.empty_like(x)
    means, variances = np.empty(c), np.empty(c)
    for ch in range(c):
        values = x[:, ch].ravel()
        mean = values.sum() / values.size
        var = ((values - mean) ** 2).sum() / values.size
        y[:, ch] = (x[:, ch] - mean) / np.sqrt(var + eps)
        means[ch], variances[ch] = mean, var
    return y, means, variances


def bn_reference_global(x: np.ndarray, sums: list[np.ndarray], eps: float) -> np.ndarray:
    factor = sums[2][0]
    scale = 0.0 if factor == 0 else 1.0 / factor
    y = np.empty_like(x)
    for ch in range(x.shape[1]):
        y[:, ch] = (x[:, ch] - scale * sums[0][ch]) / np.sqrt(scale * sums[1][ch] + eps)
    return y


BN = 'layer {{ name: "bn" type: "BatchNorm" bottom: "x" top: "y" {} }}'


@pytest.mark.parametrize("shape", [(4, 3, 2, 3), (6, 4), (3, 2, 5)])
def test_batchnorm_running_sums_update_on_every_train_forward_and_serve_the_test_net(shape, tmp_path):
    """Seed 002 (moving averages that never update): every TRAIN forward updates Caffe's sums,
    and a TEST net built from the saved weights normalizes with them."""
    maf, eps = 0.9, 1e-3
    layer = BN.format(f"batch_norm_param {{ moving_average_fraction: {maf} eps: {eps} }}")
    net = make_net(layer, {"x": shape})
    sums = [np.zeros(shape[1]), np.zeros(shape[1]), np.zeros(1)]
    m = int(np.prod(shape)) // shape[1]
    for step in range(3):
        x = RNG.standard_normal(shape) * (step + 1) + step
        before = [b.data.copy() for b in net.params["bn"]]
        y = forward_backward(net, {"x": x}, "y")
        ref_y, mean, var = bn_reference_train(x, eps)
        sums = [maf * sums[0] + mean, maf * sums[1] + var * m / (m - 1), maf * sums[2] + 1]
        np.testing.assert_allclose(y, ref_y, rtol=1e-4, atol=1e-5)
        for i, blob in enumerate(net.params["bn"]):
            assert not np.array_equal(blob.data, before[i]), f"blob {i} did not change at step {step}"
            np.testing.assert_allclose(blob.data, sums[i], rtol=1e-5, atol=1e-6, err_msg=f"blob {i}")
    weights = tmp_path / "bn.caffemodel"
    net.save(str(weights))
    test_net = make_net(layer, {"x": shape}, torchcaffe.TEST, weights=str(weights))
    for i, blob in enumerate(test_net.params["bn"]):
        np.testing.assert_allclose(blob.data, sums[i], rtol=1e-5, atol=1e-6)
    x = RNG.standard_normal(shape)
    y = forward_backward(test_net, {"x": x}, "y")
    np.testing.assert_allclose(y, bn_reference_global(x, sums, eps), rtol=1e-4, atol=1e-5)
    again = forward_backward(test_net, {"x": x}, "y")
    np.testing.assert_array_equal(again, y)  # TEST forwards leave the sums alone
    for i, blob in enumerate(test_net.params["bn"]):
        np.testing.assert_allclose(blob.data, sums[i], rtol=1e-5, atol=1e-6)


def seed001_batchnorm_backward_training(dout, x, gamma, eps):
    """The hand-derived backward of seed 001, step by step (only eps made a parameter)."""
    n, d = dout.shape
    mu = 1.0 / n * np.sum(x, axis=0)
    xmu = x - mu
    sq = xmu ** 2
    var = 1.0 / n * np.sum(sq, axis=0)
    sqrtvar = np.sqrt(var + eps)
    ivar = 1.0 / sqrtvar
    xhat = xmu * ivar
    dbeta = np.sum(dout, axis=0)
    dgamma = np.sum(dout * xhat, axis=0)
    dxhat = dout * gamma
    divar = np.sum(dxhat * xmu, axis=0)
    dxmu1 = dxhat * ivar
    dsqrtvar = -1.0 / (sqrtvar ** 2) * divar
    dvar = 0.5 * 1.0 / np.sqrt(var + eps) * dsqrtvar
    dsq = 1.0 / n * np.ones((n, d)) * dvar
    dxmu2 = 2 * xmu * dsq
    dx1 = dxmu1 + dxmu2
    dmu = -1 * np.sum(dxmu1 + dxmu2, axis=0)
    dx2 = 1.0 / n * np.ones((n, d)) * dmu
    return dx1 + dx2, dgamma, dbeta


def test_batchnorm_scale_gradient_matches_the_seed001_formula():
    """Seed 001: TRAIN-mode BatchNorm + Scale back-propagates the full batch-norm gradient."""
    n, d, eps = 16, 5, 1e-5
    layers = (BN.format("") + 'layer { name: "sc" type: "Scale" bottom: "y" top: "z" '
              "scale_param { bias_term: true filler { type: 'uniform' min: 0.5 max: 2 } "
              "bias_filler { type: 'uniform' min: -1 max: 1 } } }")
    net = make_net(layers, {"x": (n, d)})
    x = RNG.standard_normal((n, d)) * 2 + 0.5
    dout = RNG.standard_normal((n, d))
    gamma, beta = (b.data.copy() for b in net.params["sc"])
    z = forward_backward(net, {"x": x}, "z", dout)
    xhat, _, _ = bn_reference_train(x, eps)
    np.testing.assert_allclose(z, xhat * gamma + beta, rtol=1e-4, atol=1e-5)
    dx, dgamma, dbeta = seed001_batchnorm_backward_training(dout, x, gamma, eps)
    np.testing.assert_allclose(net.blobs["x"].diff, dx, rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(net.params["sc"][0].diff, dgamma, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(net.params["sc"][1].diff, dbeta, rtol=1e-4, atol=1e-5)


def test_batchnorm_global_stats_backward_is_only_the_affine_part(tmp_path):
    shape, eps = (3, 2, 4), 1e-5
    train = make_net(BN.format(""), {"x": shape})
    forward_backward(train, {"x": RNG.standard_normal(shape) + 1}, "y")
    weights = tmp_path / "w.caffemodel"
    train.save(str(weights))
    sums = [b.data.astype(np.float64) for b in train.params["bn"]]
    net = make_net(BN.format("batch_norm_param { use_global_stats: true }"), {"x": shape}, weights=str(weights))
    x, dy = RNG.standard_normal(shape), RNG.standard_normal(shape)
    y = forward_backward(net, {"x": x}, "y", dy)
    np.testing.assert_allclose(y, bn_reference_global(x, sums, eps), rtol=1e-4, atol=1e-5)
    std = np.sqrt(sums[1] / sums[2][0] + eps)
    np.testing.assert_allclose(net.blobs["x"].diff, dy / std[None, :, None], rtol=1e-4, atol=1e-6)
    for i, blob in enumerate(net.params["bn"]):  # use_global_stats in TRAIN: no update
        np.testing.assert_array_equal(blob.data, train.params["bn"][i].data)


def test_batchnorm_zero_scale_factor_means_zero_statistics():
    """Caffe: ``scale = factor == 0 ? 0 : 1 / factor``, so fresh blobs normalize by sqrt(eps)."""
    net = make_net(BN.format("batch_norm_param { eps: 0.01 }"), {"x": (2, 3)}, torchcaffe.TEST)
    x = RNG.standard_normal((2, 3))
    y = forward_backward(net, {"x": x}, "y")
    np.testing.assert_allclose(y, x / np.sqrt(np.float32(0.01)), rtol=1e-5)
    assert np.isfinite(y).all()


def test_batchnorm_single_value_per_channel_skips_the_bias_correction():
    net = make_net(BN.format("batch_norm_param { moving_average_fraction: 0.5 }"), {"x": (1, 3)})
    y = forward_backward(net, {"x": RNG.standard_normal((1, 3))}, "y", np.ones((1, 3)))
    np.testing.assert_array_equal(y, np.zeros((1, 3)))
    np.testing.assert_array_equal(net.params["bn"][1].data, np.zeros(3))  # m == 1: no m/(m-1)
    np.testing.assert_array_equal(net.params["bn"][2].data, [1.0])
    assert np.isfinite(net.blobs["x"].diff).all()


def test_batchnorm_explicit_batch_statistics_in_test_still_update_the_sums():
    net = make_net(BN.format("batch_norm_param { use_global_stats: false }"), {"x": (4, 2)}, torchcaffe.TEST)
    x = RNG.standard_normal((4, 2))
    y = forward_backward(net, {"x": x}, "y")
    np.testing.assert_allclose(y, bn_reference_train(x, 1e-5)[0], rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(net.params["bn"][2].data, [1.0])


def test_batchnorm_adds_lr_mult_zero_specs_to_its_own_param():
    net = make_net(BN.format("param { lr_mult: 0 decay_mult: 0 }"), {"x": (2, 3)})
    node = net._graph.nodes[-1]
    assert [(s.lr_mult, s.HasField("lr_mult")) for s in node.param.param] == [(0, True)] * 3
    assert node.param.param[0].decay_mult == 0
    entries = [e for e in net.learnable_params if e.layer == node.index]
    assert [e.lr_mult for e in entries] == [0, 0, 0]
    assert not list(net.layer_dict["bn"].parameters())  # buffers, never learned


@pytest.mark.parametrize("specs", ["param { lr_mult: 1 }", "param { lr_mult: 0 } param { decay_mult: 0 }"])
def test_batchnorm_refuses_learnable_statistics(specs):
    with pytest.raises(NetError) as error:
        make_net(BN.format(specs), {"x": (2, 3)})
    assert_names(error, "bn", "BatchNorm", "lr_mult")


def test_batchnorm_refuses_a_1d_bottom():
    with pytest.raises(NetError) as error:
        make_net(BN.format(""), {"x": (5,)})
    assert_names(error, "bn", "BatchNorm", "(5,)")


# -- MVN ---------------------------------------------------------------------------------------
def mvn_reference(x: np.ndarray, dy: np.ndarray, normalize_variance: bool, across: bool, eps: float):
    """Caffe's MVN forward and backward, one normalization group at a time."""
    x4 = x.reshape(x.shape + (1,) * (4 - x.ndim))
    dy4 = dy.reshape(x4.shape)
    y, dx = np.empty_like(x4), np.empty_like(x4)
    groups = [(n,) for n in range(x4.shape[0])] if across else \
        [(n, c) for n in range(x4.shape[0]) for c in range(x4.shape[1])]
    for g in groups:
        v, gy = x4[g].ravel(), dy4[g].ravel()
        centred = v - v.sum() / v.size
        if not normalize_variance:
            y[g] = centred.reshape(x4[g].shape)
            dx[g] = (gy - gy.sum() / v.size).reshape(x4[g].shape)
            continue
        denominator = np.sqrt((centred ** 2).sum() / v.size) + eps
        out = centred / denominator
        y[g] = out.reshape(x4[g].shape)
        grad = (gy - gy.mean() - (gy * out).mean() * out) / denominator
        dx[g] = grad.reshape(x4[g].shape)
    return y, dx


@pytest.mark.parametrize("params,shape", [
    ("", (2, 3, 4, 5)),
    ("mvn_param { across_channels: true }", (2, 3, 3, 2)),
    ("mvn_param { normalize_variance: false }", (2, 3, 2, 2)),
    ("mvn_param { normalize_variance: false across_channels: true }", (1, 2, 3, 3)),
    ("mvn_param { eps: 0.5 }", (2, 2, 3, 3)),
    ("mvn_param { across_channels: true eps: 0.01 }", (3, 4)),
    ("", (2, 3, 5)),
])
def test_mvn_matches_caffe_forward_and_backward(params, shape):
    net = make_net(f'layer {{ name: "mvn" type: "MVN" bottom: "x" top: "y" {params} }}', {"x": shape})
    p = text_format.Parse(params, caffe_pb2.LayerParameter()).mvn_param
    x = RNG.standard_normal(shape) * 3 + 1
    top_shape = tuple(shape) + (1,) * (4 - len(shape))
    assert net.blobs["y"].shape == top_shape  # Caffe's top is always 4-D
    dy = RNG.standard_normal(top_shape)
    y = forward_backward(net, {"x": x}, "y", dy)
    ref_y, ref_dx = mvn_reference(x, dy, p.normalize_variance, p.across_channels, p.eps)
    np.testing.assert_allclose(y, ref_y, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(net.blobs["x"].diff, ref_dx.reshape(shape), rtol=1e-4, atol=1e-5)


def test_mvn_constant_input_gives_zero_and_a_finite_gradient():
    net = make_net('layer { name: "mvn" type: "MVN" bottom: "x" top: "y" mvn_param { eps: 0.01 } }',
                   {"x": (1, 2, 2, 2)})
    dy = RNG.standard_normal((1, 2, 2, 2))
    y = forward_backward(net, {"x": np.full((1, 2, 2, 2), 3.0)}, "y", dy)
    np.testing.assert_array_equal(y, 0)
    expected = (dy - dy.mean(axis=(2, 3), keepdims=True)) / np.float32(0.01)
    np.testing.assert_allclose(net.blobs["x"].diff, expected, rtol=1e-4)


def test_mvn_refuses_more_than_4_axes():
    with pytest.raises(NetError) as error:
        make_net('layer { name: "mvn" type: "MVN" bottom: "x" top: "y" }', {"x": (1, 2, 2, 2, 2)})
    assert_names(error, "mvn", "MVN", "4 axes")


# -- LRN ---------------------------------------------------------------------------------------
def lrn_reference(x: np.ndarray, size: int, alpha: float, beta: float, k: float, within: bool) -> np.ndarray:
    n_, c_, h_, w_ = x.shape
    pad = (size - 1) // 2
    y = np.empty_like(x)
    for n in range(n_):
        for c in range(c_):
            for h in range(h_):
                for w in range(w_):
                    if within:
                        total = sum(x[n, c, hh, ww] ** 2
                                    for hh in range(h - pad, h - pad + size) if 0 <= hh < h_
                                    for ww in range(w - pad, w - pad + size) if 0 <= ww < w_)
                        scale = 1 + alpha * total / (size * size)
                    else:
                        total = sum(x[n, cc, h, w] ** 2 for cc in range(c - pad, c - pad + size) if 0 <= cc < c_)
                        scale = k + alpha / size * total
                    y[n, c, h, w] = x[n, c, h, w] * scale ** -beta
    return y


LRN_CASES = [
    ("local_size: 5 alpha: 0.0001 beta: 0.75", (2, 7, 2, 3), False),
    ("local_size: 3 alpha: 0.5 beta: 0.6 k: 2", (1, 6, 3, 3), False),
    ("local_size: 7 alpha: 2 beta: 0.75", (2, 3, 2, 2), False),
    ("local_size: 3 alpha: 0.3 beta: 0.75 norm_region: WITHIN_CHANNEL", (2, 3, 4, 5), True),
    ("local_size: 5 alpha: 1.5 beta: 0.5 k: 7 norm_region: WITHIN_CHANNEL", (1, 2, 3, 6), True),
]


@pytest.mark.parametrize("params,shape,within", LRN_CASES)
def test_lrn_matches_the_loop_reference(params, shape, within):
    net = make_net(f'layer {{ name: "lrn" type: "LRN" bottom: "x" top: "y" lrn_param {{ {params} }} }}',
                   {"x": shape})
    p = text_format.Parse(f"lrn_param {{ {params} }}", caffe_pb2.LayerParameter()).lrn_param
    x = RNG.standard_normal(shape) * 2
    y = forward_backward(net, {"x": x}, "y")
    ref = lrn_reference(x, p.local_size, p.alpha, p.beta, p.k, within)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("params,shape,within", LRN_CASES)
@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
def test_lrn_is_the_same_in_every_layout_and_grad_mode(params, shape, within, grad):
    """channels_last input (the optimized mode's) takes another window path, and without a graph
    the formula runs in place: the values agree with the reference each way, x is untouched."""
    net = make_net(f'layer {{ name: "lrn" type: "LRN" bottom: "x" top: "y" lrn_param {{ {params} }} }}',
                   {"x": shape}).double()
    p = text_format.Parse(f"lrn_param {{ {params} }}", caffe_pb2.LayerParameter()).lrn_param
    x = RNG.standard_normal(shape) * 2
    ref = lrn_reference(x, p.local_size, p.alpha, p.beta, p.k, within)
    for layout in (torch.contiguous_format, torch.channels_last):
        given = torch.tensor(x).to(memory_format=layout).requires_grad_(grad)
        with torch.set_grad_enabled(grad):
            y = net(x=given)["y"]
        np.testing.assert_allclose(y.detach().numpy(), ref, rtol=1e-10, atol=1e-12)
        np.testing.assert_array_equal(given.detach().numpy(), x)


def test_lrn_across_channels_equals_torch_local_response_norm():
    """The claim in LRN's docstring: torch's formula is Caffe's ACROSS_CHANNELS one, values and
    gradients."""
    x = torch.tensor(RNG.standard_normal((2, 6, 3, 3)), requires_grad=True)
    net = make_net('layer { name: "lrn" type: "LRN" bottom: "x" top: "y" '
                   'lrn_param { local_size: 3 alpha: 0.5 beta: 0.6 k: 2 } }', {"x": (2, 6, 3, 3)}).double()
    ours = net(x=x)["y"]
    (g_ours,) = torch.autograd.grad(ours.sum(), x)
    theirs = F.local_response_norm(x, 3, alpha=np.float32(0.5).item(), beta=np.float32(0.6).item(), k=2.0)
    (g_theirs,) = torch.autograd.grad(theirs.sum(), x)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(g_ours, g_theirs, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("params,shape,words", [
    ("lrn_param { local_size: 4 }", (1, 3, 2, 2), ("local_size", "odd", "4")),
    ("", (2, 3, 4), ("4-D", "(2, 3, 4)")),
])
def test_lrn_refuses_bad_configurations(params, shape, words):
    with pytest.raises(NetError) as error:
        make_net(f'layer {{ name: "lrn" type: "LRN" bottom: "x" top: "y" {params} }}', {"x": shape})
    assert_names(error, "lrn", "LRN", *words)


# -- Scale and Bias ----------------------------------------------------------------------------
def affine_reference(x, operand, axis, dy, multiply: bool):
    """Caffe's (outer, dim, inner) loop: top, bottom diff, operand diff."""
    axis = 0 if operand.ndim == 0 else axis % x.ndim
    outer = int(np.prod(x.shape[:axis]))
    inner = int(np.prod(x.shape[axis + operand.ndim:]))
    dim = operand.size
    xs, ds, op = x.reshape(outer, dim, inner), dy.reshape(outer, dim, inner), operand.reshape(dim)
    y, dx, dop = np.empty_like(xs), np.empty_like(xs), np.zeros(dim)
    for o in range(outer):
        for d in range(dim):
            for i in range(inner):
                y[o, d, i] = xs[o, d, i] * op[d] if multiply else xs[o, d, i] + op[d]
                dx[o, d, i] = ds[o, d, i] * op[d] if multiply else ds[o, d, i]
                dop[d] += ds[o, d, i] * xs[o, d, i] if multiply else ds[o, d, i]
    return y.reshape(x.shape), dx.reshape(x.shape), dop.reshape(operand.shape)


@pytest.mark.parametrize("params,shape,operand_shape", [
    ("axis: 1", (2, 3, 4), (3,)),
    ("axis: 2 num_axes: 2", (2, 3, 2, 3), (2, 3)),
    ("axis: 0 num_axes: -1", (2, 3), (2, 3)),
    ("axis: -1", (2, 3, 4), (4,)),
    ("axis: 1 num_axes: 0", (2, 3, 2), ()),
])
@pytest.mark.parametrize("kind", ["Scale", "Bias"])
def test_affine_with_a_learned_blob_matches_the_loop_reference(kind, params, shape, operand_shape):
    field = kind.lower()
    filler = "filler { type: 'gaussian' }"
    net = make_net(f'layer {{ name: "l" type: "{kind}" bottom: "x" top: "y" {field}_param {{ {params} {filler} }} }}',
                   {"x": shape})
    (blob,) = net.params["l"]
    assert blob.shape == operand_shape
    x, dy = RNG.standard_normal(shape), RNG.standard_normal(shape)
    y = forward_backward(net, {"x": x}, "y", dy)
    axis = text_format.Parse(params, caffe_pb2.ScaleParameter()).axis
    ref_y, ref_dx, ref_dop = affine_reference(x, blob.data.astype(np.float64), axis, dy, kind == "Scale")
    np.testing.assert_allclose(y, ref_y, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(net.blobs["x"].diff, ref_dx, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(blob.diff, ref_dop, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("params,shape,operand_shape", [
    ("", (2, 3, 4), (3,)),
    ("axis: 0", (2, 3, 2), (2, 3)),
    ("axis: 1", (2, 3, 2, 2), (3, 2)),
    ("axis: 5", (2, 3), ()),  # a 0-axis operand ignores axis, as Caffe's Reshape does
])
@pytest.mark.parametrize("kind", ["Scale", "Bias"])
def test_affine_with_a_second_bottom_matches_the_loop_reference(kind, params, shape, operand_shape):
    field = kind.lower()
    net = make_net(f'layer {{ name: "l" type: "{kind}" bottom: "x" bottom: "s" top: "y" {field}_param {{ {params} }} }}',
                   {"x": shape, "s": operand_shape})
    assert "l" not in net.params  # no learned blob
    x, s, dy = RNG.standard_normal(shape), RNG.standard_normal(operand_shape), RNG.standard_normal(shape)
    y = forward_backward(net, {"x": x, "s": s}, "y", dy)
    axis = text_format.Parse(params, caffe_pb2.ScaleParameter()).axis
    ref_y, ref_dx, ref_ds = affine_reference(x, s, axis, dy, kind == "Scale")
    np.testing.assert_allclose(y, ref_y, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(net.blobs["x"].diff, ref_dx, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(net.blobs["s"].diff, ref_ds, rtol=1e-5, atol=1e-5)


def test_scale_blobs_are_scale_then_the_internal_bias():
    net = make_net('layer { name: "l" type: "Scale" bottom: "x" top: "y" scale_param { axis: 1 num_axes: 2 '
                   'bias_term: true } }', {"x": (2, 3, 4, 2)})
    scale, bias = net.params["l"]
    assert scale.shape == bias.shape == (3, 4)
    np.testing.assert_array_equal(scale.data, 1)  # default fillers: constant 1 and constant 0
    np.testing.assert_array_equal(bias.data, 0)
    x, dy = RNG.standard_normal((2, 3, 4, 2)), RNG.standard_normal((2, 3, 4, 2))
    scale.data[...] = RNG.standard_normal((3, 4))
    bias.data[...] = RNG.standard_normal((3, 4))
    y = forward_backward(net, {"x": x}, "y", dy)
    np.testing.assert_allclose(y, x * scale.data[None, :, :, None] + bias.data[None, :, :, None], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bias.diff, dy.sum(axis=(0, 3)), rtol=1e-5, atol=1e-5)


def test_scale_from_bottom_with_bias_term_has_only_the_bias_blob():
    net = make_net('layer { name: "l" type: "Scale" bottom: "x" bottom: "s" top: "y" '
                   "scale_param { bias_term: true bias_filler { type: 'constant' value: 0.5 } num_axes: 0 } }",
                   {"x": (2, 3, 4), "s": (3, 4)})
    (bias,) = net.params["l"]
    assert bias.shape == (3, 4)  # spans bottom 1's axes; num_axes is ignored
    np.testing.assert_array_equal(bias.data, 0.5)
    x, s = RNG.standard_normal((2, 3, 4)), RNG.standard_normal((3, 4))
    y = forward_backward(net, {"x": x, "s": s}, "y")
    np.testing.assert_allclose(y, x * s + 0.5, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["Scale", "Bias"])
@pytest.mark.parametrize("params,inputs,words", [
    ("num_axes: -2", {"x": (2, 3)}, ("num_axes", "-2")),
    ("axis: 1 num_axes: 3", {"x": (2, 3, 4)}, ("num_axes", "axis", "(2, 3, 4)")),
    ("axis: 3", {"x": (2, 3, 4)}, ("axis", "3")),
    ("axis: 1", {"x": (2, 3, 4), "s": (4,)}, ("(4,)", "(2, 3, 4)")),
    ("axis: 2", {"x": (2, 3, 4), "s": (4, 2)}, ("(4, 2)", "(2, 3, 4)")),
])
def test_affine_refuses_bad_configurations(kind, params, inputs, words):
    bottoms = " ".join(f'bottom: "{name}"' for name in inputs)
    with pytest.raises(NetError) as error:
        make_net(f'layer {{ name: "l" type: "{kind}" {bottoms} top: "y" {kind.lower()}_param {{ {params} }} }}', inputs)
    assert_names(error, "l", kind, *words)
