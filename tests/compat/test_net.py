"""pycaffe's test_net.py, as behaviour: the net API, forward/backward ranges, saving, levels
and stages; plus the pycaffe-only methods (forward_all, _batch, hooks)."""
from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch

import torchcaffe as caffe
from torchcaffe.errors import NetError

from .helpers import fill_labels, simple_net_file


@pytest.fixture
def net(tmp_path):
    net = caffe.Net(simple_net_file(tmp_path, 12), caffe.TRAIN)
    fill_labels(net, 12)
    return net


def test_views_outlive_the_net(net):
    blobs, params = dict(net.blobs), dict(net.params)
    del net
    total = sum(float(b.data.sum() + b.diff.sum()) for b in blobs.values())
    total += sum(float(p.data.sum() + p.diff.sum()) for ps in params.values() for p in ps)
    assert np.isfinite(total)


def test_layer_dict_follows_the_layers(net):
    assert list(net.layer_dict) == list(net._layer_names) == ["data", "conv", "ip", "loss"]
    for name, layer in zip(net._layer_names, net.layers):
        assert net.layer_dict[name] is layer
    assert [layer.type for layer in net.layers] == ["DummyData", "Convolution", "InnerProduct", "SoftmaxWithLoss"]


def test_forward_backward_leaves_diffs(net):
    net.forward()
    net.backward()
    assert np.abs(net.params["conv"][0].diff).max() > 0
    assert np.abs(net.blobs["conv"].diff).max() > 0


def test_forward_from_start_to_end_runs_only_those_layers(net):
    net.forward()
    sample = np.random.default_rng(1).uniform(size=net.blobs["conv"].data.shape).astype(np.float32)
    net.blobs["conv"].data[...] = sample
    out = net.forward(start="ip", end="ip")
    assert set(out) == {"ip"}
    weight, bias = net.params["ip"][0].data, net.params["ip"][1].data
    expected = sample.reshape(len(sample), -1) @ weight.T + bias
    np.testing.assert_allclose(net.blobs["ip"].data, expected, rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(net.blobs["conv"].data, sample)  # conv did not run again


def test_backward_from_start_to_end_runs_only_those_layers(net):
    net.forward()
    net.clear_param_diffs()
    sample = np.random.default_rng(2).uniform(size=net.blobs["ip"].diff.shape).astype(np.float32)
    net.blobs["ip"].diff[...] = sample
    conv_param_diff = net.params["conv"][0].diff.copy()
    out = net.backward(start="ip", end="ip")
    assert set(out) == {"conv"}  # the bottoms of `end`
    expected = (sample @ net.params["ip"][0].data).reshape(net.blobs["conv"].data.shape)
    np.testing.assert_allclose(net.blobs["conv"].diff, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(net.params["ip"][0].diff,
                               sample.T @ net.blobs["conv"].data.reshape(5, -1), rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(net.params["conv"][0].diff, conv_param_diff)  # conv did not run


def test_layer_by_layer_backward_equals_the_whole_backward(net):
    torch.manual_seed(0)
    net.forward()
    net.backward()
    whole = {name: blob.diff.copy() for name, blob in net.blobs.items()}
    params = {name: [p.diff.copy() for p in ps] for name, ps in net.params.items()}
    net.clear_param_diffs()
    torch.manual_seed(0)
    net.forward()
    net.backward(start="loss", end="data")
    for name, blob in net.blobs.items():
        np.testing.assert_allclose(blob.diff, whole[name], rtol=1e-6, atol=1e-6)
    for name, ps in net.params.items():
        for p, expected in zip(ps, params[name]):
            np.testing.assert_allclose(p.diff, expected, rtol=1e-6, atol=1e-6)


def test_clear_param_diffs_zeroes_the_views_in_place(net):
    net.forward()
    net.backward()
    diff = net.params["conv"][0].diff
    assert diff.max() > 0
    net.clear_param_diffs()
    assert (diff == 0).all()


def test_inputs_outputs_top_and_bottom_names(net):
    assert net.inputs == []
    assert net.outputs == ["loss"]
    assert net.top_names == OrderedDict([("data", ["data", "label"]), ("conv", ["conv"]), ("ip", ["ip"]),
                                         ("loss", ["loss"])])
    assert net.bottom_names == OrderedDict([("data", []), ("conv", ["data"]), ("ip", ["conv"]),
                                            ("loss", ["ip", "label"])])
    assert net._top_ids(3) == [list(net.blobs).index("loss")]
    assert net._bottom_ids(3) == [list(net.blobs).index("ip"), list(net.blobs).index("label")]
    assert net._outputs == [list(net.blobs).index("loss")] and net._inputs == []
    assert net.blob_loss_weights["loss"] == 1.0 and net._blob_loss_weights[-1] == 1.0


def test_saved_weights_load_back(net, tmp_path):
    path = tmp_path / "saved.caffemodel"
    net.save(str(path))
    other = caffe.Net(net.source, caffe.TRAIN, weights=str(path))
    legacy = caffe.Net(net.source, str(path), caffe.TRAIN)  # pycaffe's old argument order
    for name in net.params:
        for mine, theirs, old in zip(net.params[name], other.params[name], legacy.params[name]):
            np.testing.assert_array_equal(mine.data, theirs.data)
            np.testing.assert_array_equal(mine.data, old.data)


def test_hdf5_weights_round_trip(net, tmp_path):
    path = str(tmp_path / "saved.caffemodel.h5")
    net.save_hdf5(path)
    other = caffe.Net(net.source, caffe.TRAIN)
    other.load_hdf5(path)
    for name in net.params:
        for mine, theirs in zip(net.params[name], other.params[name]):
            np.testing.assert_array_equal(mine.data, theirs.data)


def test_hooks_run_around_every_layer(net):
    calls = []
    net.before_forward(lambda i: calls.append(("before_forward", i)))
    net.after_forward(lambda i: calls.append(("after_forward", i)))
    net.before_backward(lambda i: calls.append(("before_backward", i)))
    net.after_backward(lambda i: calls.append(("after_backward", i)))
    net.forward()
    net.backward()
    forward = [c for i in range(4) for c in (("before_forward", i), ("after_forward", i))]
    backward = [c for i in reversed(range(4)) for c in (("before_backward", i), ("after_backward", i))]
    assert calls == forward + backward


def test_after_backward_sees_the_layers_diffs(net):
    seen = {}
    net.after_backward(lambda i: seen.setdefault(i, net.blobs["conv"].diff.copy()))
    net.forward()
    net.backward()
    conv_layer = net._layer_names.index("conv")
    ip_layer = net._layer_names.index("ip")
    assert np.abs(seen[ip_layer]).max() > 0  # ip's backward wrote conv's diff
    np.testing.assert_array_equal(seen[conv_layer], net.blobs["conv"].diff)


def test_solver_iterations_call_the_backward_hooks(tmp_path):
    solver_file = tmp_path / "solver.prototxt"
    solver_file.write_text(f'train_net: "{simple_net_file(tmp_path, 5)}" base_lr: 0.01 lr_policy: "fixed" '
                           f'max_iter: 2 solver_mode: CPU')
    solver = caffe.SGDSolver(str(solver_file))
    fill_labels(solver.net, 5)
    layers = []
    solver.net.after_backward(layers.append)
    solver.step(2)
    assert layers == [3, 2, 1, 0] * 2


INPUT_NET = """name: "inputs" force_backward: true
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 4 dim: 3 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        inner_product_param { num_output: 2 weight_filler { type: "gaussian" } } }
"""


@pytest.fixture
def input_net(tmp_path):
    path = tmp_path / "inputs.prototxt"
    path.write_text(INPUT_NET)
    return caffe.Net(str(path), caffe.TEST)


def test_forward_all_batches_and_drops_the_padding(input_net):
    data = np.random.default_rng(3).standard_normal((10, 3)).astype(np.float32)
    out = input_net.forward_all(data=data, blobs=["data"])
    weight, bias = input_net.params["ip"][0].data, input_net.params["ip"][1].data
    assert out["ip"].shape == (10, 2)
    np.testing.assert_allclose(out["ip"], data @ weight.T + bias, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(out["data"], data)


def test_batch_pads_the_last_batch_with_zeros(input_net):
    data = np.arange(18, dtype=np.float32).reshape(6, 3)
    batches = list(input_net._batch({"data": data}))
    assert [b["data"].shape for b in batches] == [(4, 3), (4, 3)]
    np.testing.assert_array_equal(batches[1]["data"][:2], data[4:])
    assert (batches[1]["data"][2:] == 0).all()


def test_forward_backward_all_gives_outputs_and_input_diffs(input_net):
    rng = np.random.default_rng(4)
    data = rng.standard_normal((6, 3)).astype(np.float32)
    top_diff = rng.standard_normal((6, 2)).astype(np.float32)
    outs, diffs = input_net.forward_backward_all(data=data, ip=top_diff)
    weight = input_net.params["ip"][0].data
    assert outs["ip"].shape == (6, 2) and diffs["data"].shape == (6, 3)
    np.testing.assert_allclose(diffs["data"], top_diff @ weight, rtol=1e-5, atol=1e-5)


def test_set_input_arrays_needs_a_memory_data_layer(input_net):
    with pytest.raises(NetError, match="first layer is a MemoryData layer"):
        input_net.set_input_arrays(np.zeros((4, 3, 1, 1), np.float32), np.zeros(4, np.float32))


LEVEL_NET = """name: "levels" force_backward: true
layer { name: "data" type: "DummyData" top: "data" dummy_data_param { shape { dim: 1 dim: 1 dim: 10 dim: 10 } } }
layer { name: "NoLevel" type: "InnerProduct" bottom: "data" top: "NoLevel"
        inner_product_param { num_output: 1 } }
layer { name: "Level0Only" type: "InnerProduct" bottom: "data" top: "Level0Only"
        include { min_level: 0 max_level: 0 } inner_product_param { num_output: 1 } }
layer { name: "Level1Only" type: "InnerProduct" bottom: "data" top: "Level1Only"
        include { min_level: 1 max_level: 1 } inner_product_param { num_output: 1 } }
layer { name: "Level>=0" type: "InnerProduct" bottom: "data" top: "Level>=0"
        include { min_level: 0 } inner_product_param { num_output: 1 } }
layer { name: "Level>=1" type: "InnerProduct" bottom: "data" top: "Level>=1"
        include { min_level: 1 } inner_product_param { num_output: 1 } }
"""


@pytest.mark.parametrize("level,expected", [
    (0, ["NoLevel", "Level0Only", "Level>=0"]),
    (1, ["NoLevel", "Level1Only", "Level>=0", "Level>=1"]),
])
def test_levels_select_layers(tmp_path, level, expected):
    path = tmp_path / "levels.prototxt"
    path.write_text(LEVEL_NET)
    net = caffe.Net(str(path), caffe.TEST, level=level)
    assert sorted(net.outputs) == sorted(expected)


STAGE_NET = """name: "stages" force_backward: true
layer { name: "data" type: "DummyData" top: "data" dummy_data_param { shape { dim: 1 dim: 1 dim: 10 dim: 10 } } }
layer { name: "A" type: "InnerProduct" bottom: "data" top: "A" include { stage: "A" }
        inner_product_param { num_output: 1 } }
layer { name: "B" type: "InnerProduct" bottom: "data" top: "B" include { stage: "B" }
        inner_product_param { num_output: 1 } }
layer { name: "AorB" type: "InnerProduct" bottom: "data" top: "AorB" include { stage: "A" } include { stage: "B" }
        inner_product_param { num_output: 1 } }
layer { name: "AandB" type: "InnerProduct" bottom: "data" top: "AandB" include { stage: "A" stage: "B" }
        inner_product_param { num_output: 1 } }
"""


@pytest.mark.parametrize("stages,expected", [
    (["A"], ["A", "AorB"]),
    (["B"], ["B", "AorB"]),
    (["A", "B"], ["A", "B", "AorB", "AandB"]),
])
def test_stages_select_layers(tmp_path, stages, expected):
    path = tmp_path / "stages.prototxt"
    path.write_text(STAGE_NET)
    net = caffe.Net(str(path), caffe.TEST, stages=stages)
    assert sorted(net.outputs) == sorted(expected)


ALL_IN_ONE = """name: "all_in_one"
layer { name: "train_data" type: "DummyData" top: "data" top: "label"
        dummy_data_param { shape { dim: 1 dim: 1 dim: 10 dim: 10 } shape { dim: 1 dim: 1 dim: 1 dim: 1 } }
        include { phase: TRAIN stage: "train" } }
layer { name: "val_data" type: "DummyData" top: "data" top: "label"
        dummy_data_param { shape { dim: 1 dim: 1 dim: 10 dim: 10 } shape { dim: 1 dim: 1 dim: 1 dim: 1 } }
        include { phase: TEST stage: "val" } }
layer { name: "deploy_data" type: "Input" top: "data"
        input_param { shape { dim: 1 dim: 1 dim: 10 dim: 10 } } include { phase: TEST stage: "deploy" } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { num_output: 2 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss"
        include { phase: TRAIN stage: "train" } include { phase: TEST stage: "val" } }
layer { name: "pred" type: "Softmax" bottom: "ip" top: "pred" include { phase: TEST stage: "deploy" } }
"""


@pytest.mark.parametrize("phase,stages,outputs,inputs", [
    (caffe.TRAIN, ["train"], ["loss"], []),
    (caffe.TEST, ["val"], ["loss"], []),
    (caffe.TEST, ["deploy"], ["pred"], ["data"]),
])
def test_one_file_for_train_val_and_deploy(tmp_path, phase, stages, outputs, inputs):
    path = tmp_path / "all_in_one.prototxt"
    path.write_text(ALL_IN_ONE)
    net = caffe.Net(str(path), phase, stages=stages)
    assert net.outputs == outputs and net.inputs == inputs
