"""The optimized mode (``torchcaffe.net.optimize``) computes what the plain plan computes.

Every comparison runs the plain and the optimized plan on the same input with forward hooks on
every layer: each layer the optimized plan still calls (all but the folded ones and the ReLUs it
runs in place) must give the plain values within 1e-4 relative to the largest, and so must every
output. Corpus deploy nets get random BatchNorm statistics (scale factor 2) and Scale blobs, so that
folding is not the identity.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from google.protobuf import text_format

import torchcaffe
from torchcaffe.errors import NetError
from torchcaffe.net.optimize import optimize
from torchcaffe.proto import caffe_pb2

from ..conftest import requires_shared, shared_dir
from ..corpus import build, corpus_nets

TOLERANCE = 1e-4
ROOT = shared_dir("corpus")
#: Deploy nets with batch norms, depthwise convolutions, fan-outs, concatenations; input size.
#: (bench/nets.py checks GoogLeNet and CaffeNet, too slow to build here, the same way.)
CORPUS = {
    "resnet/ResNet-50-deploy.prototxt": 224,
    "mobilenet_v1/mobilenet_deploy.prototxt": 128,
    "mobilenet_v2/mobilenet_v2_deploy.prototxt": 128,
    "squeezenet_v1.1/deploy.prototxt": 128,
}


def net_from(text: str, **kwargs) -> torchcaffe.Net:
    param = caffe_pb2.NetParameter()
    text_format.Merge(text, param)
    return torchcaffe.Net(param, torchcaffe.TEST, **kwargs)


def randomize(net: torchcaffe.Net, seed: int = 0) -> None:
    """Every blob random: statistics around mean 0 / variance 1 with scale factor 2."""
    rng = np.random.default_rng(seed)
    for layer in net.layers:
        for j, blob in enumerate(layer.blobs):
            if layer.type == "BatchNorm":
                blob.data[...] = [rng.normal(0, 0.2, blob.shape), rng.uniform(1, 3, blob.shape), 2][j]
            elif layer.type == "BN" and j == 3:  # the fork's variance
                blob.data[...] = rng.uniform(0.5, 1.5, blob.shape)
            else:
                blob.data[...] = rng.normal(0, 1 / np.sqrt(max(blob.count // blob.shape[0], 1)), blob.shape) \
                    if len(blob.shape) > 1 else rng.uniform(0.5, 1.5, blob.shape)


def run_with_hooks(net: torchcaffe.Net, run):
    """``run()``'s outputs and every layer's tops (cloned) as the layers were called."""
    seen: dict[str, list[torch.Tensor]] = {}

    def save(name, module, inputs, output):
        tops = output if isinstance(output, tuple) else (output,)
        seen[name] = [t.detach().clone() for t in tops]
    hooks = [layer.register_forward_hook(lambda m, i, o, name=name: save(name, m, i, o))
             for name, layer in net.layer_dict.items()]
    try:
        with torch.no_grad():
            outputs = run()
    finally:
        for hook in hooks:
            hook.remove()
    return outputs, seen


def layer_by_layer(net: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The plain plan's outputs, every layer called on its own (the torch call fuses some)."""
    vals = [None] * len(net._graph.slot_names)
    net._execute(vals, 0, len(net._steps) - 1, given=inputs)
    return {name: vals[net._graph.last_slot[name]] for name in net.outputs}


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    scale = expected.abs().max().clamp_min(1e-30)
    return float((got.float() - expected.float()).abs().max() / scale)


def assert_same_as_plain(net: torchcaffe.Net, inputs: dict[str, torch.Tensor], runner=None) -> dict:
    runner = runner or optimize(net)
    plain, plain_tops = run_with_hooks(net, lambda: layer_by_layer(net, inputs))
    fast, fast_tops = run_with_hooks(net, lambda: runner(**inputs))
    assert list(fast) == list(plain)
    errors = {f"output {k}": relative_error(fast[k], plain[k]) for k in plain}
    for name, tops in fast_tops.items():
        for j, (got, expected) in enumerate(zip(tops, plain_tops[name])):
            errors[f"{name} top {j}"] = relative_error(got, expected)
    bad = {k: v for k, v in errors.items() if not v <= TOLERANCE}
    assert not bad, bad
    return errors


# -- corpus deploy nets -------------------------------------------------------------------------------
@requires_shared
@pytest.mark.parametrize("relative", sorted(CORPUS))
def test_corpus_net_optimized_equals_plain(relative):
    spec = {n.relative: n for n in corpus_nets(ROOT)}[relative]
    net, _ = build(spec, torchcaffe.TEST)
    size = CORPUS[relative]
    for name in net.inputs:
        shape = list(net.blobs[name].shape)
        net.blobs[name].reshape(1, shape[1], size, size)
    net.reshape()
    randomize(net)
    runner = optimize(net)
    inputs = {name: torch.rand(tuple(net.blobs[name].shape), generator=torch.Generator().manual_seed(3))
              for name in net.inputs}
    errors = assert_same_as_plain(net, inputs, runner)
    assert len(errors) > len(net.outputs)  # intermediate tops were compared too
    if any(layer.type == "BatchNorm" for layer in net.layers):
        assert runner._folds, "a net with BatchNorm layers after convolutions folds some"


# -- hand-made nets ------------------------------------------------------------------------------------
INPUT = "layer { name: 'data' type: 'Input' top: 'data' input_param { shape { dim: 2 dim: 3 dim: 6 dim: 5 } } }\n"
CONV = "layer {{ name: '{name}' type: 'Convolution' bottom: '{bottom}' top: '{top}' convolution_param {{ " \
       "num_output: 4 kernel_size: 3 pad: 1 {extra} }} }}\n"
BN = "layer {{ name: '{name}' type: 'BatchNorm' bottom: '{bottom}' top: '{top}' }}\n"
SCALE = "layer {{ name: '{name}' type: 'Scale' bottom: '{bottom}' top: '{top}' scale_param {{ {extra} }} }}\n"
RELU = "layer {{ name: '{name}' type: 'ReLU' bottom: '{bottom}' top: '{top}' }}\n"


def data(net: torchcaffe.Net, seed: int = 1) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {name: torch.randn(tuple(net.blobs[name].shape), generator=generator) for name in net.inputs}


@pytest.mark.parametrize("bias", ["", "bias_term: false"])
@pytest.mark.parametrize("scale_bias", ["bias_term: true", ""])
def test_conv_batchnorm_scale_in_place_chain_folds(bias, scale_bias):
    net = net_from(INPUT + CONV.format(name="conv", bottom="data", top="conv", extra=bias)
                   + BN.format(name="bn", bottom="conv", top="conv")
                   + SCALE.format(name="sc", bottom="conv", top="conv", extra=scale_bias)
                   + RELU.format(name="relu", bottom="conv", top="conv"))
    randomize(net)
    runner = optimize(net)
    errors = assert_same_as_plain(net, data(net), runner)
    assert [f.affines for f in runner._folds.values()] == [[1 + 1, 1 + 2]]  # bn and sc into conv
    assert runner._inplace_relu == {4}
    assert set(errors) == {"output conv"}  # nothing else was called as a module


def test_out_of_place_chain_and_inner_product_fold():
    net = net_from(INPUT + CONV.format(name="conv", bottom="data", top="c", extra="")
                   + BN.format(name="bn", bottom="c", top="b")
                   + SCALE.format(name="sc", bottom="b", top="s", extra="bias_term: true")
                   + "layer { name: 'ip' type: 'InnerProduct' bottom: 's' top: 'ip' "
                     "inner_product_param { num_output: 3 } }\n"
                   + BN.format(name="bn2", bottom="ip", top="ip")
                   + "layer { name: 'bias' type: 'Bias' bottom: 'ip' top: 'out' }\n")
    randomize(net)
    runner = optimize(net)
    assert_same_as_plain(net, data(net), runner)
    assert sorted(len(f.affines) for f in runner._folds.values()) == [2, 2]


def test_transposed_inner_product_folds():
    net = net_from("layer { name: 'data' type: 'Input' top: 'data' input_param { shape { dim: 4 dim: 5 } } }\n"
                   "layer { name: 'ip' type: 'InnerProduct' bottom: 'data' top: 'ip' "
                   "inner_product_param { num_output: 3 transpose: true } }\n"
                   + BN.format(name="bn", bottom="ip", top="ip")
                   + SCALE.format(name="sc", bottom="ip", top="ip", extra="bias_term: true"))
    randomize(net)
    runner = optimize(net)
    assert_same_as_plain(net, data(net), runner)
    assert runner._folds


def test_conv_read_by_two_layers_is_not_folded():
    net = net_from(INPUT + CONV.format(name="conv", bottom="data", top="conv", extra="")
                   + BN.format(name="bn", bottom="conv", top="bn")
                   + SCALE.format(name="sc", bottom="bn", top="bn", extra="bias_term: true")
                   + CONV.format(name="other", bottom="conv", top="other", extra="")
                   + RELU.format(name="relu", bottom="other", top="other"))
    randomize(net)
    runner = optimize(net)
    assert_same_as_plain(net, data(net), runner)
    assert not runner._folds
    assert runner._inplace_relu == {net._layer_names.index("relu")}


def test_batchnorm_top_read_twice_stops_the_chain_and_split_views_are_not_overwritten():
    net = net_from(INPUT + CONV.format(name="conv", bottom="data", top="conv", extra="")
                   + BN.format(name="bn", bottom="conv", top="conv")
                   + RELU.format(name="relu", bottom="conv", top="r")
                   + SCALE.format(name="sc", bottom="conv", top="s", extra=""))
    randomize(net)
    runner = optimize(net)
    assert_same_as_plain(net, data(net), runner)
    assert [f.affines for f in runner._folds.values()] == [[1 + 1]]  # conv <- bn; the split stops it
    assert not runner._inplace_relu  # its bottom is a view made by the Split layer


def test_fork_bn_pspnet_folds():
    net = net_from(INPUT + CONV.format(name="conv", bottom="data", top="conv", extra="")
                   + "layer { name: 'bn' type: 'BN' bottom: 'conv' top: 'conv' bn_param { frozen: true } }\n")
    randomize(net)
    runner = optimize(net)
    assert_same_as_plain(net, data(net), runner)
    assert runner._folds


def test_net_optimize_keyword_serves_the_torch_call_and_keeps_the_pycaffe_views():
    text = (INPUT + CONV.format(name="conv", bottom="data", top="conv", extra="")
            + BN.format(name="bn", bottom="conv", top="conv")
            + SCALE.format(name="sc", bottom="conv", top="conv", extra="bias_term: true")
            + RELU.format(name="relu", bottom="conv", top="conv"))
    plain, fast = net_from(text), net_from(text, optimize=True)
    randomize(plain)
    randomize(fast)
    x = data(plain)["data"]
    with torch.no_grad():
        expected = plain(data=x)["conv"]
    got = fast(data=x)["conv"]
    assert relative_error(got, expected) <= TOLERANCE
    assert not got.requires_grad
    assert fast.optimized is not None and plain.optimized is None
    # the pycaffe face still runs the plain layers and shows the original blobs
    assert [b.data.shape for b in fast.params["bn"]] == [(4,), (4,), (1,)]
    out = fast.forward(data=x.numpy())
    np.testing.assert_allclose(out["conv"], expected.numpy(), rtol=1e-5, atol=1e-5)
    # weights changed in place through torch are seen (version counters) ...
    with torch.no_grad():
        fast.layer_dict["sc"].scale.mul_(2)
        plain.layer_dict["sc"].scale.mul_(2)
        expected = plain(data=x)["conv"]
    assert relative_error(fast(data=x)["conv"], expected) <= TOLERANCE
    # ... edits through the numpy views need refresh()
    fast.params["conv"][0].data[...] *= -1
    plain.params["conv"][0].data[...] *= -1
    fast.optimized.refresh()
    with torch.no_grad():
        expected = plain(data=x)["conv"]
    assert relative_error(fast(data=x)["conv"], expected) <= TOLERANCE


def test_train_net_is_refused():
    param = caffe_pb2.NetParameter()
    text_format.Merge(INPUT + CONV.format(name="conv", bottom="data", top="conv", extra=""), param)
    with pytest.raises(NetError, match="TRAIN net"):
        torchcaffe.Net(param, torchcaffe.TRAIN, optimize=True)


def test_channels_last_only_for_conv_nets_of_known_layers():
    conv = net_from(INPUT + CONV.format(name="conv", bottom="data", top="conv", extra=""))
    assert optimize(conv).channels_last
    odd = net_from(INPUT + CONV.format(name="conv", bottom="data", top="conv", extra="")
                   + "layer { name: 'r' type: 'Reshape' bottom: 'conv' top: 'r' "
                     "reshape_param { shape { dim: 0 dim: -1 } } }\n")
    assert not optimize(odd).channels_last
    assert_same_as_plain(odd, data(odd))
    out = optimize(conv)(data=data(conv)["data"])["conv"]
    assert out.is_contiguous()


def test_compile_failure_degrades_to_eager_with_one_warning(monkeypatch):
    net = net_from(INPUT + CONV.format(name="conv", bottom="data", top="conv", extra="")
                   + BN.format(name="bn", bottom="conv", top="conv"))
    randomize(net)

    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler found")
    monkeypatch.setattr(torch, "compile", broken)
    runner = optimize(net, compile=True)
    with pytest.warns(RuntimeWarning, match="torch.compile is unavailable here.*no C\\+\\+ compiler"):
        assert_same_as_plain(net, data(net), runner)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        runner(**data(net))  # warned once only


def test_residual_sum_adds_into_the_fresh_branch_only():
    """``out = shortcut + branch``: the sum goes into the branch's fresh top, never into the
    shortcut, which the Split hands to two readers."""
    net = net_from(INPUT + CONV.format(name="conv", bottom="data", top="conv", extra="")
                   + RELU.format(name="relu", bottom="conv", top="conv")
                   + CONV.format(name="branch", bottom="conv", top="branch", extra="")
                   + 'layer { name: "sum" type: "Eltwise" bottom: "conv" bottom: "branch" top: "sum" }\n'
                   + RELU.format(name="relu2", bottom="sum", top="sum"))
    randomize(net)
    runner = optimize(net)
    assert_same_as_plain(net, data(net), runner)
    index = net._layer_names.index("sum")
    assert runner._inplace_sum[index][0] == net._graph.nodes[net._layer_names.index("branch")].top_slots[0]
    assert runner._inplace_relu == {net._layer_names.index("relu"), net._layer_names.index("relu2")}
