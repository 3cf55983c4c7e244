"""Neuron layers: Caffe's formulas against numpy, and Caffe's in-place backward quirk."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from google.protobuf import text_format

import torchcaffe
from torchcaffe.errors import NetError
from torchcaffe.proto import caffe_pb2

RNG = np.random.default_rng(5)


def one_layer(type_name: str, params: str = "", shape=(2, 3, 4), phase=torchcaffe.TRAIN, in_place=False,
              extra: str = "", force_backward=True) -> torchcaffe.Net:
    top = "x" if in_place else "y"
    text = f"""force_backward: {str(force_backward).lower()}
        layer {{ name: "x" type: "Input" top: "x" input_param {{ shape {{ {' '.join(f'dim: {d}' for d in shape)} }} }} }}
        layer {{ name: "n" type: "{type_name}" bottom: "x" top: "{top}" {params} }}
        {extra}"""
    return torchcaffe.Net(text_format.Parse(text, caffe_pb2.NetParameter()), phase)


def forward(type_name, params, x, **kwargs):
    net = one_layer(type_name, params, x.shape, **kwargs)
    return net.forward(x=x)["y"]


@pytest.mark.parametrize("type_name,params,reference", [
    ("ReLU", "relu_param { negative_slope: 0.2 }", lambda x: np.where(x > 0, x, 0.2 * x)),
    ("ELU", "elu_param { alpha: 0.5 }", lambda x: np.where(x > 0, x, 0.5 * (np.exp(x) - 1))),
    ("BNLL", "", lambda x: np.where(x > 0, x + np.log1p(np.exp(-x)), np.log1p(np.exp(x)))),
    ("Swish", "swish_param { beta: 2 }", lambda x: x / (1 + np.exp(-2 * x))),
    ("Exp", "exp_param { base: 3 scale: 0.5 shift: -1 }", lambda x: 3.0 ** (-1 + 0.5 * x)),
    ("Power", "power_param { power: 3 scale: 0.5 shift: 2 }", lambda x: (2 + 0.5 * x) ** 3),
    ("Power", "power_param { power: 0 scale: 3 }", lambda x: np.ones_like(x)),
    ("Threshold", "threshold_param { threshold: 0.25 }", lambda x: (x > 0.25).astype(x.dtype)),
    ("Clip", "clip_param { min: -0.3 max: 0.4 }", lambda x: np.clip(x, -0.3, 0.4)),
])
def test_forward_matches_caffes_formula(type_name, params, reference):
    x = RNG.standard_normal((2, 3, 4)).astype(np.float32)
    x[0, 0, :2] = [0.25, 0.0]
    np.testing.assert_allclose(forward(type_name, params, x), reference(x.astype(np.float64)), rtol=1e-5, atol=1e-6)


def test_log_with_base_scale_shift():
    x = RNG.uniform(0.5, 2, (3, 4)).astype(np.float32)
    got = forward("Log", "log_param { base: 10 scale: 2 shift: 0.5 }", x)
    np.testing.assert_allclose(got, np.log10(0.5 + 2 * x), rtol=1e-5)


def test_dropout_scales_kept_values_in_train_and_is_identity_in_test():
    x = np.ones((200, 50), np.float32)
    torch.manual_seed(0)
    y = forward("Dropout", "dropout_param { dropout_ratio: 0.25 }", x)
    assert set(np.unique(y)) <= {0.0, np.float32(1 / 0.75)}
    assert abs((y == 0).mean() - 0.25) < 0.02
    np.testing.assert_array_equal(forward("Dropout", "", x, phase=torchcaffe.TEST), x)


def test_prelu_slopes_per_channel_and_shared():
    x = RNG.standard_normal((2, 3, 4)).astype(np.float32)
    net = one_layer("PReLU", "", x.shape)
    slopes = np.array([0.1, -0.5, 2.0], np.float32)
    net.params["n"][0].data[...] = slopes
    np.testing.assert_allclose(net.forward(x=x)["y"], np.where(x > 0, x, x * slopes[None, :, None]), rtol=1e-6)
    shared = one_layer("PReLU", "prelu_param { channel_shared: true }", x.shape)
    assert shared.params["n"][0].shape == ()
    np.testing.assert_allclose(shared.forward(x=x)["y"], np.where(x > 0, x, 0.25 * x), rtol=1e-6)


def test_bad_parameters_name_the_layer_and_field():
    with pytest.raises(NetError, match='"n" \\(Dropout\\): dropout_ratio must be in'):
        one_layer("Dropout", "dropout_param { dropout_ratio: 1.5 }")
    with pytest.raises(NetError, match='"n" \\(Clip\\): clip_param min'):
        one_layer("Clip", "clip_param { min: 1 max: 0 }")
    with pytest.raises(NetError, match='"n" \\(Exp\\): exp_param base'):
        one_layer("Exp", "exp_param { base: -2 }")
    with pytest.raises(NetError, match='"n" \\(Log\\): log_param base'):
        one_layer("Log", "log_param { base: 0 }")
    with pytest.raises(NetError, match='"n" \\(AbsVal\\): does not allow in-place'):
        one_layer("AbsVal", in_place=True)
    with pytest.raises(NetError, match='"n" \\(PReLU\\): needs a bottom with at least 2 axes'):
        one_layer("PReLU", shape=(5,))


# -- Caffe's in-place backward --------------------------------------------------------------------
def in_place_diff(type_name: str, params: str, x: np.ndarray, later: str = "", top_diff=None) -> np.ndarray:
    """Run ``x -> type (in place) [-> later layers in place]`` and back-propagate ``top_diff``."""
    net = one_layer(type_name, params, x.shape, in_place=True, extra=later)
    net.forward(x=x)
    diff = np.ones_like(x) if top_diff is None else top_diff
    return net.backward(x=diff)["x"], net.blobs["x"].data.copy()


def test_relu_mask_comes_from_the_blobs_final_value():
    """x -> ReLU (in place) -> Power(scale -1, shift 0.5) (in place): Caffe's ReLU backward reads
    the blob after Power overwrote it, so its mask is (0.5 - relu(x) > 0), not (x > 0)."""
    x = RNG.standard_normal((3, 5)).astype(np.float32)
    later = 'layer { name: "p" type: "Power" bottom: "x" top: "x" power_param { scale: -1 shift: 0.5 } }'
    diff, final = in_place_diff("ReLU", "", x, later)
    np.testing.assert_allclose(final, 0.5 - np.maximum(x, 0), rtol=1e-6)
    np.testing.assert_allclose(diff, -1.0 * (final > 0), rtol=1e-6)


def test_relu_as_last_writer_is_exact():
    x = RNG.standard_normal((3, 5)).astype(np.float32)
    diff, _ = in_place_diff("ReLU", "relu_param { negative_slope: 0.1 }", x)
    np.testing.assert_allclose(diff, np.where(x > 0, 1.0, 0.1), rtol=1e-6)


@pytest.mark.parametrize("type_name,params,caffe_formula", [
    # Caffe's backward with bottom data and top data both read from the (overwritten) blob y.
    ("Power", "power_param { power: 3 scale: 0.5 shift: 1 }", lambda y: 1.5 * y / (1 + 0.5 * y)),
    ("Power", "power_param { power: 2 scale: 0.5 shift: 1 }", lambda y: 1.0 * 1 + 1.0 * 0.5 * y),
    ("Log", "log_param { scale: 2 shift: 3 }", lambda y: 2 / (3 + 2 * y)),
    ("BNLL", "", lambda y: np.exp(np.minimum(y, 50)) / (np.exp(np.minimum(y, 50)) + 1)),
    ("Clip", "clip_param { min: -0.5 max: 0.5 }", lambda y: ((y >= -0.5) & (y <= 0.5)).astype(np.float64)),
])
def test_in_place_layers_whose_caffe_backward_reads_the_bottom(type_name, params, caffe_formula):
    x = RNG.uniform(0.2, 2.0, (4, 3)).astype(np.float32)
    if type_name == "Clip":
        x = RNG.uniform(-1, 1, (4, 3)).astype(np.float32)
    diff, final = in_place_diff(type_name, params, x)
    np.testing.assert_allclose(diff, caffe_formula(final.astype(np.float64)), rtol=1e-5, atol=1e-6)


def test_swish_in_place_uses_its_cached_sigmoid_and_the_final_top():
    x = RNG.standard_normal((4, 3)).astype(np.float32)
    diff, final = in_place_diff("Swish", "swish_param { beta: 1.5 }", x)
    s = 1 / (1 + np.exp(-1.5 * x.astype(np.float64)))
    np.testing.assert_allclose(diff, 1.5 * final + s * (1 - 1.5 * final), rtol=1e-5)


def test_out_of_place_gradient_stays_exact():
    x = RNG.uniform(0.2, 2.0, (4, 3)).astype(np.float32)
    net = one_layer("Log", "log_param { scale: 2 shift: 3 }", x.shape)
    net.forward(x=x)
    np.testing.assert_allclose(net.backward(y=np.ones_like(x))["x"], 2 / (3 + 2 * x), rtol=1e-5)


def test_torch_face_follows_the_same_in_place_rule():
    x = RNG.standard_normal((3, 5)).astype(np.float32)
    later = 'layer { name: "p" type: "Power" bottom: "x" top: "x" power_param { scale: -1 shift: 0.5 } }'
    net = one_layer("ReLU", "", x.shape, in_place=True, extra=later)
    xt = torch.from_numpy(x).requires_grad_()
    net(x=xt)["x"].sum().backward()
    expected, _ = in_place_diff("ReLU", "", x, later)
    np.testing.assert_allclose(xt.grad.numpy(), expected, rtol=1e-6)
