"""The torch call (``net(data=x)``) runs a leaner plan than pycaffe's face: in-place ReLUs
overwrite fresh tops, BatchNorm + Scale pairs run as one ``F.batch_norm``. Both must compute what
the layer-by-layer plan computes, values and gradients, and must never overwrite a value another
layer still reads."""
from __future__ import annotations

import pytest
import torch

import torchcaffe
from torchcaffe.layers.normalization import BatchNormScale

from ..layers.harness import net_from

RESIDUAL = """
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 6 dim: 6 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" batch_norm_param { use_global_stats: true } }
layer { name: "scale1" type: "Scale" bottom: "conv1" top: "conv1"
        scale_param { bias_term: true filler { type: "gaussian" } bias_filler { type: "gaussian" } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "conv2" type: "Convolution" bottom: "conv1" top: "conv2"
        convolution_param { num_output: 4 kernel_size: 1 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "bn2" type: "BatchNorm" bottom: "conv2" top: "bn2" batch_norm_param { use_global_stats: true } }
layer { name: "scale2" type: "Scale" bottom: "bn2" top: "bn2" scale_param { filler { type: "gaussian" } } }
layer { name: "sum" type: "Eltwise" bottom: "conv1" bottom: "bn2" top: "sum" }
layer { name: "relu2" type: "ReLU" bottom: "sum" top: "sum" relu_param { negative_slope: 0.1 } }
layer { name: "ip" type: "InnerProduct" bottom: "sum" top: "ip"
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.3 } } }
"""


def residual_net() -> torchcaffe.Net:
    torch.manual_seed(3)
    net = net_from(RESIDUAL, torchcaffe.TRAIN).to(torch.float64)
    for layer in ("bn1", "bn2"):
        mean, var, factor = net.params[layer]
        mean.data[...] = torch.randn(4).numpy()
        var.data[...] = torch.rand(4).numpy() + 0.5
        factor.data[...] = 2.0
    return net


def test_the_torch_call_fuses_batchnorm_scale_and_overwrites_fresh_tops():
    net = residual_net()
    fused = [step for step in net._call_steps if isinstance(step.layer, BatchNormScale)]
    assert [step.label.split('"')[1] for step in fused] == ["bn1", "bn2"]
    assert len(net._call_steps) == len(net._steps) - 2
    in_place = {step.label.split('"')[1] for step in net._call_steps if step.in_place is not None}
    assert in_place == {"relu1", "sum", "relu2"}  # conv1 fans out after relu1 (Caffe's Split comes there)
    sum_step = next(step for step in net._call_steps if step.label.startswith('layer "sum"'))
    assert sum_step.in_place == 1  # bn2 (fresh), not the Split's view of conv1


def test_only_tops_whose_backward_does_not_read_them_are_overwritten():
    """Sigmoid's backward reads its top: a ReLU in place after it computes out of place."""
    net = net_from("""
        layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 } } }
        layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { num_output: 3 } }
        layer { name: "sig" type: "Sigmoid" bottom: "ip" top: "sig" }
        layer { name: "relu" type: "ReLU" bottom: "sig" top: "sig" }
    """, torchcaffe.TRAIN)
    assert all(step.in_place is None for step in net._call_steps)
    x = torch.randn(2, 3, requires_grad=True)
    out = net(data=x)["sig"]
    out.sum().backward()  # would fail had the Sigmoid's saved top been overwritten
    assert x.grad is not None


def test_the_torch_call_equals_the_layer_by_layer_plan_values_and_gradients():
    net = residual_net()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    params = list(net.parameters())
    vals = [None] * len(net._graph.slot_names)
    net._execute(vals, 0, len(net._steps) - 1, given={"data": x})  # every layer, out of place
    expected = vals[net._graph.last_slot["ip"]]
    expected_grads = torch.autograd.grad(expected.sum(), params, allow_unused=True)
    got = net(data=x)["ip"]
    grads = torch.autograd.grad(got.sum(), params, allow_unused=True)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    assert sum(g is not None for g in grads) >= 8
    for grad, want in zip(grads, expected_grads):
        assert (grad is None) == (want is None)
        if grad is not None:
            torch.testing.assert_close(grad, want, rtol=1e-10, atol=1e-12)


def test_hooks_make_the_torch_call_run_every_layer():
    net = residual_net()
    seen = []
    net.after_forward(lambda index: seen.append(index))
    net(data=torch.randn(2, 3, 6, 6, dtype=torch.float64))
    assert seen == list(range(len(net._steps)))


@pytest.mark.parametrize("text, fuses", [
    ('batch_norm_param { use_global_stats: false }', False),   # batch statistics: the sums update
    ('', True),                                                  # TEST: stored statistics
])
def test_only_stored_statistics_fuse(text, fuses):
    net = net_from(f"""
        layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ dim: 2 dim: 3 dim: 2 dim: 2 }} }} }}
        layer {{ name: "bn" type: "BatchNorm" bottom: "data" top: "bn" {text} }}
        layer {{ name: "scale" type: "Scale" bottom: "bn" top: "out" }}
    """, torchcaffe.TEST)
    assert any(isinstance(step.layer, BatchNormScale) for step in net._call_steps) == fuses
