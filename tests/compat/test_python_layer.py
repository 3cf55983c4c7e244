"""pycaffe's test_python_layer.py and test_python_layer_with_param_str.py, as behaviour, and
torchcaffe's additions: TorchLayer with autograd, learnable torch parameters, CUDA, refusal."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

import torchcaffe as caffe
from torchcaffe.errors import NetError

MODULE = "tests.compat.pylayers"


def python_layers_net(tmp_path, layers, inputs="input: 'data' input_shape { dim: 10 dim: 9 dim: 8 }",
                      name="pythonnet") -> str:
    """A net of Python layers named by (name, class, param_str, bottom, top)."""
    text = [f"name: '{name}' force_backward: true {inputs}"]
    for layer, cls, param_str, bottom, top in layers:
        bottom_text = f"bottom: '{bottom}'" if bottom else ""
        text.append(f"layer {{ type: 'Python' name: '{layer}' {bottom_text} top: '{top}' "
                    f"python_param {{ module: '{MODULE}' layer: '{cls}' param_str: '{param_str}' }} }}")
    path = tmp_path / f"{name}.prototxt"
    path.write_text("\n".join(text))
    return str(path)


@pytest.fixture
def chain(tmp_path):
    """Three TimesTen layers: data -> one -> two -> three."""
    return caffe.Net(python_layers_net(tmp_path, [("one", "TimesTen", "", "data", "one"),
                                                  ("two", "TimesTen", "", "one", "two"),
                                                  ("three", "TimesTen", "", "two", "three")]), caffe.TRAIN)


def test_forward_through_python_layers(chain):
    chain.blobs["data"].data[...] = 8
    chain.forward()
    assert (chain.blobs["three"].data == 10 ** 3 * 8).all()


def test_backward_through_python_layers(chain):
    chain.forward()
    chain.blobs["three"].diff[...] = 7
    chain.backward()
    assert (chain.blobs["data"].diff == 10 ** 3 * 7).all()


def test_reshape_propagates_through_python_layers(chain):
    chain.blobs["data"].reshape(4, 4, 4, 4)
    chain.forward()
    for blob in chain.blobs.values():
        assert blob.data.shape == (4, 4, 4, 4)


def test_an_exception_in_setup_reaches_the_caller(tmp_path):
    path = python_layers_net(tmp_path, [("layer", "FailsInSetup", "", "data", "top")])
    with pytest.raises(RuntimeError, match="refuses to be set up"):
        caffe.Net(path, caffe.TEST)


def test_python_layer_blobs_learn_save_load_and_share(tmp_path):
    path = python_layers_net(tmp_path, [("layer", "OneBlob", "", "data", "top")])
    net = caffe.Net(path, caffe.TRAIN)
    net.forward()
    net.backward()
    layer = net.layers[list(net._layer_names).index("layer")]
    assert layer.blobs[0].data[0] == 0
    assert layer.blobs[0].diff[0] == 1
    layer.blobs[0].data[0] += layer.blobs[0].diff[0]
    assert layer.blobs[0].data[0] == 1
    weights = str(tmp_path / "python.caffemodel")
    net.save(weights)
    layer.blobs[0].data[0] = -1
    net.copy_from(weights)
    assert layer.blobs[0].data[0] == 1
    other = caffe.Net(path, caffe.TRAIN)
    other.share_with(net)
    assert other.layers[list(other._layer_names).index("layer")].blobs[0].data[0] == 1


def test_python_layer_sees_the_phase(tmp_path):
    path = python_layers_net(tmp_path, [("layer", "ReportsPhase", "", "", "phase")], inputs="")
    for phase in (caffe.TRAIN, caffe.TEST):
        assert caffe.Net(path, phase).forward()["phase"] == phase


@pytest.fixture
def param_str_chain(tmp_path):
    return caffe.Net(python_layers_net(tmp_path, [("mul10", "TimesParamStr", "10", "data", "mul10"),
                                                  ("mul2", "TimesParamStr", "2", "mul10", "mul2")]), caffe.TRAIN)


def test_param_str_forward(param_str_chain):
    param_str_chain.blobs["data"].data[...] = 8
    param_str_chain.forward()
    assert (param_str_chain.blobs["mul2"].data == 2 * 10 * 8).all()


def test_param_str_backward(param_str_chain):
    param_str_chain.forward()
    param_str_chain.blobs["mul2"].diff[...] = 7
    param_str_chain.backward()
    assert (param_str_chain.blobs["data"].diff == 2 * 10 * 7).all()


def test_param_str_reaches_setup_with_faster_rcnn_spelling(tmp_path):
    net = caffe.Net(python_layers_net(tmp_path, [("mul3", "TimesParamStr", "3", "data", "mul3")]), caffe.TEST)
    impl = net.layer_dict["mul3"].classic
    assert impl.param_str == impl.param_str_ == "3" and impl.value == 3.0


def test_bad_param_str_fails_in_setup(tmp_path):
    with pytest.raises(ValueError, match="param_str must be a number"):
        caffe.Net(python_layers_net(tmp_path, [("bad", "TimesParamStr", "ten", "data", "bad")]), caffe.TEST)


def test_torch_layer_backward_comes_from_autograd(tmp_path):
    net = caffe.Net(python_layers_net(tmp_path, [("norm", "L2Norm", "", "data", "norm")],
                                      inputs="input: 'data' input_shape { dim: 2 dim: 3 dim: 4 dim: 5 }"),
                    caffe.TRAIN).double()
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: net(data=t)["norm"], (x,))
    norms = (net(data=x)["norm"] ** 2).sum((2, 3))
    torch.testing.assert_close(norms, torch.ones_like(norms))


def test_torch_layer_parameters_are_net_params_and_learn(tmp_path):
    net = caffe.Net(python_layers_net(tmp_path, [("scale", "LearnedScale", "1", "data", "scaled")],
                                      inputs="input: 'data' input_shape { dim: 2 dim: 3 dim: 4 }"), caffe.TRAIN)
    assert net.params["scale"][0].data.tolist() == [2.0, 2.0, 2.0]
    net.blobs["data"].data[...] = 1
    net.forward()
    net.blobs["scaled"].diff[...] = 1
    net.backward()
    assert net.params["scale"][0].diff.tolist() == [8.0, 8.0, 8.0]


def test_python_loss_layer_in_a_net(tmp_path):
    text = """name: "pyloss" force_backward: true
        layer { name: "a" type: "Input" top: "a" input_param { shape { dim: 4 dim: 3 } } }
        layer { name: "b" type: "Input" top: "b" input_param { shape { dim: 4 dim: 3 } } }
        layer { name: "loss" type: "Python" bottom: "a" bottom: "b" top: "loss" loss_weight: 2
                python_param { module: "tests.compat.pylayers" layer: "EuclideanLoss" } }"""
    path = tmp_path / "pyloss.prototxt"
    path.write_text(text)
    net = caffe.Net(str(path), caffe.TRAIN)
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    out = net.forward(a=a, b=b)
    np.testing.assert_allclose(out["loss"], ((a - b) ** 2).sum() / 4 / 2, rtol=1e-5)
    grads = net.backward()
    np.testing.assert_allclose(grads["a"], 2 * (a - b) / 4, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(net.blobs["b"].diff, -2 * (a - b) / 4, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("module,layer", [("os", "system"), ("builtins", "eval"), ("subprocess", "Popen"),
                                          (MODULE, "json"), ("torchcaffe.layers.base", "Layer")])
def test_only_layer_classes_are_accepted(tmp_path, module, layer, monkeypatch):
    calls = []
    monkeypatch.setattr(os, "system", lambda *args: calls.append(args))
    text = f"""layer {{ name: "x" type: "Input" top: "x" input_param {{ shape {{ dim: 1 }} }} }}
        layer {{ name: "py" type: "Python" bottom: "x" top: "y"
                python_param {{ module: "{module}" layer: "{layer}" param_str: "echo hacked" }} }}"""
    path = tmp_path / "evil.prototxt"
    path.write_text(text)
    with pytest.raises(NetError, match="not a subclass of torchcaffe.Layer"):
        caffe.Net(str(path), caffe.TEST)
    assert calls == []


def test_python_layers_refused_when_not_allowed(chain, tmp_path):
    with pytest.raises(NetError, match="allow_python_layers=False"):
        caffe.Net(chain.source, caffe.TEST, allow_python_layers=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_python_layers_run_on_cuda(tmp_path):
    net = caffe.Net(python_layers_net(tmp_path, [("one", "TimesTen", "", "data", "one"),
                                                 ("norm", "L2Norm", "", "one", "norm")],
                                      inputs="input: 'data' input_shape { dim: 2 dim: 3 dim: 4 dim: 5 }"),
                    caffe.TRAIN).to("cuda")
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 5)).astype(np.float32)
    net.blobs["data"].data[...] = x
    out = net.forward()["norm"]
    expected = x / np.sqrt((x * x).sum((2, 3), keepdims=True) + 1e-12 / 100)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)
    net.blobs["norm"].diff[...] = 1
    assert np.isfinite(net.backward()["data"]).all()
