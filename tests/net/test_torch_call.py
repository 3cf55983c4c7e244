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


TRAINING = """
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 4 dim: 3 dim: 5 dim: 5 } shape { dim: 4 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" }
layer { name: "scale" type: "Scale" bottom: "conv" top: "conv"
        scale_param { bias_term: true filler { type: "gaussian" } bias_filler { type: "gaussian" } } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "bn_out" type: "BatchNorm" bottom: "conv" top: "normed" }
layer { name: "scale_out" type: "Scale" bottom: "normed" top: "normed" scale_param { filler { type: "gaussian" } } }
layer { name: "ip" type: "InnerProduct" bottom: "normed" top: "ip"
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""


def training_net() -> torchcaffe.Net:
    torch.manual_seed(5)
    net = net_from(TRAINING, torchcaffe.TRAIN).to(torch.float64)
    net.blobs["data"].data[...] = torch.randn(4, 3, 5, 5).numpy()
    net.blobs["label"].data[...] = [0, 2, 1, 2]
    return net


def test_batch_statistics_fuse_too():
    """In the torch call every BatchNorm + Scale pair fuses; in a solver's iteration only the pair
    whose BatchNorm top is an in-place step no blob shows (``normed``'s diff is the BatchNorm's),
    and only such a value is overwritten."""
    net = training_net()
    assert [s.label.split('"')[1] for s in net._call_steps if isinstance(s.layer, BatchNormScale)] == ["bn", "bn_out"]
    assert [s.label.split('"')[1] for s in net._iteration_steps if isinstance(s.layer, BatchNormScale)] == ["bn"]
    # the ReLU overwrites the pair's fresh top, which no blob shows ("conv" shows the ReLU's top)
    assert [s.label.split('"')[1] for s in net._iteration_steps if s.in_place is not None] == ["relu"]


def test_a_fused_iteration_equals_the_layer_by_layer_one():
    """forward_backward() (fused) against forward() + backward() (every layer): the loss, every
    blob's data and diff, every parameter diff and BatchNorm's running sums."""
    fused, plain = training_net(), training_net()
    loss = fused.forward_backward()
    plain_loss = float(plain.forward()["loss"])
    plain.backward()
    assert loss == pytest.approx(plain_loss, rel=1e-12)
    for name in plain.blobs:
        torch.testing.assert_close(fused.blobs[name].data, plain.blobs[name].data, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(fused.blobs[name].diff, plain.blobs[name].diff, rtol=1e-10, atol=1e-12)
    for layer, blobs in plain.params.items():
        for mine, theirs in zip(fused.params[layer], blobs):
            torch.testing.assert_close(mine.data, theirs.data, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(mine.diff, theirs.diff, rtol=1e-10, atol=1e-12)


def test_layer_by_layer_backward_after_a_fused_iteration_is_refused():
    net = training_net()
    net.forward_backward()
    with pytest.raises(torchcaffe.NetError, match="call forward\\(\\) first"):
        net.backward(start="loss")
    net.forward()
    net.backward(start="loss")  # every value is there again


def test_with_forward_callbacks_an_iteration_runs_every_layer():
    net = training_net()
    seen = []
    net.after_forward(seen.append)
    net.forward_backward()
    assert seen == list(range(len(net._steps)))
    net.backward(start="loss")  # nothing was fused away
