"""Python layers: both styles, param_str/phase, blobs, devices, and the refusal of non-layers."""
from __future__ import annotations

import sys
import textwrap

import numpy as np
import pytest
import torch
from google.protobuf import text_format

import torchcaffe
from torchcaffe.errors import NetError
from torchcaffe.proto import caffe_pb2


def python_net(module: str, layer: str, param_str: str = "", shape=(2, 3, 4, 4), extra="", **kwargs):
    text = f"""force_backward: true
        layer {{ name: "x" type: "Input" top: "x" input_param {{ shape {{ {' '.join(f'dim: {d}' for d in shape)} }} }} }}
        layer {{ name: "py" type: "Python" bottom: "x" top: "y" {extra}
                python_param {{ module: "{module}" layer: "{layer}" param_str: "{param_str}" }} }}"""
    return torchcaffe.Net(text_format.Parse(text, caffe_pb2.NetParameter()), torchcaffe.TRAIN, **kwargs)


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A module on sys.path, as a user's PYTHONPATH would provide it."""
    source = textwrap.dedent('''
        import numpy as np
        import torch
        import torchcaffe as caffe

        class Doubler(caffe.Layer):
            def setup(self, bottom, top):
                self.seen = (self.param_str, self.param_str_, self.phase)
            def reshape(self, bottom, top):
                top[0].reshape(*bottom[0].data.shape)
            def forward(self, bottom, top):
                top[0].data[...] = 2 * bottom[0].data
            def backward(self, top, propagate_down, bottom):
                if propagate_down[0]:
                    bottom[0].diff[...] = 2 * top[0].diff

        class Scaled(caffe.Layer):
            def setup(self, bottom, top):
                self.blobs.add_blob(1)
                self.blobs[0].data[...] = float(self.param_str)
            def reshape(self, bottom, top):
                top[0].reshape(*bottom[0].data.shape)
            def forward(self, bottom, top):
                top[0].data[...] = self.blobs[0].data * bottom[0].data
            def backward(self, top, propagate_down, bottom):
                self.blobs[0].diff[...] += (top[0].diff * bottom[0].data).sum()
                bottom[0].diff[...] = self.blobs[0].data * top[0].diff

        class L2Norm(caffe.TorchLayer):
            def forward(self, x):
                return x / (x * x).sum((2, 3), keepdim=True).add(1e-12).sqrt()

        class NotALayer:
            pass

        def a_function(*args):
            raise AssertionError("must never be called")
    ''')
    (tmp_path / "user_layers.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("user_layers", None)
    yield "user_layers"
    sys.modules.pop("user_layers", None)


def test_classic_layer_gets_param_str_and_phase_and_backprops(user_module):
    net = python_net(user_module, "Doubler", "hello")
    impl = net.layer_dict["py"].classic
    assert impl.seen == ("hello", "hello", torchcaffe.TRAIN)
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 4))
    np.testing.assert_allclose(net.forward(x=x)["y"], 2 * x, rtol=1e-6)
    np.testing.assert_allclose(net.backward(y=np.ones_like(x))["x"], 2 * np.ones_like(x))


def test_classic_layer_blobs_are_net_params_and_accumulate(user_module):
    net = python_net(user_module, "Scaled", "3")
    assert net.params["py"][0].data.tolist() == [3.0]
    x = np.ones((2, 3, 4, 4))
    net.forward(x=x)
    net.backward(y=np.ones_like(x))
    net.backward(y=np.ones_like(x))
    assert net.params["py"][0].diff.tolist() == [2 * x.size]


def test_torch_layer_is_differentiated_by_autograd(user_module):
    net = python_net(user_module, "L2Norm").double()
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: net(x=t)["y"], (x,))


@pytest.mark.parametrize("module,layer", [("os", "system"), ("user_layers", "NotALayer"),
                                          ("user_layers", "a_function"), ("builtins", "eval")])
def test_anything_but_a_layer_class_is_refused_before_it_is_called(user_module, module, layer):
    with pytest.raises(NetError, match="not a subclass of torchcaffe.Layer"):
        python_net(module, layer)


def test_python_layers_can_be_refused_altogether(user_module):
    with pytest.raises(NetError, match="allow_python_layers=False"):
        python_net(user_module, "Doubler", allow_python_layers=False)


def test_missing_module_names_it():
    with pytest.raises(NetError, match="cannot import python_param module 'no_such_module_xyz'.*PYTHONPATH"):
        python_net("no_such_module_xyz", "Layer")
