"""Net-level rules: NetState filtering, splits, in place, loss weights, backward bookkeeping,
parameter sharing, the torch and pycaffe faces, weights in and out."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from google.protobuf import text_format

import torchcaffe
from torchcaffe.errors import NetError, WeightsError
from torchcaffe.net.state import layer_included, make_state, state_meets_rule
from torchcaffe.proto import caffe_pb2


def net_from(text: str, phase=torchcaffe.TRAIN, **kwargs) -> torchcaffe.Net:
    param = caffe_pb2.NetParameter()
    text_format.Merge(text, param)
    return torchcaffe.Net(param, phase, **kwargs)


def rule(text: str) -> caffe_pb2.NetStateRule:
    return text_format.Parse(text, caffe_pb2.NetStateRule())


INPUT = 'layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 3 dim: 4 } } }\n'
MLP = INPUT + """
layer { name: "t" type: "Input" top: "t" input_param { shape { dim: 3 dim: 2 } } }
layer { name: "ip1" type: "InnerProduct" bottom: "x" top: "h" inner_product_param { num_output: 5
        weight_filler { type: "gaussian" } bias_filler { type: "gaussian" } } }
layer { name: "relu" type: "ReLU" bottom: "h" top: "h" }
layer { name: "ip2" type: "InnerProduct" bottom: "h" top: "y" inner_product_param { num_output: 2
        weight_filler { type: "gaussian" } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "y" bottom: "t" top: "loss" }
"""


# -- NetState --------------------------------------------------------------------------------
class TestNetState:
    state = make_state(caffe_pb2.TEST, level=2, stages=["deploy", "fast"])

    @pytest.mark.parametrize("text,met", [
        ("phase: TEST", True), ("phase: TRAIN", False), ("min_level: 2", True), ("min_level: 3", False),
        ("max_level: 1", False), ("max_level: 2", True), ('stage: "deploy" stage: "fast"', True),
        ('stage: "deploy" stage: "other"', False), ('not_stage: "fast"', False), ('not_stage: "x"', True),
        ("", True),
    ])
    def test_rule(self, text, met):
        assert state_meets_rule(self.state, rule(text)) is met

    def test_include_any_rule_exclude_none(self):
        layer = text_format.Parse('name: "a" include { phase: TRAIN } include { min_level: 2 }',
                                  caffe_pb2.LayerParameter())
        assert layer_included(self.state, layer)
        layer = text_format.Parse('name: "a" exclude { phase: TRAIN } exclude { min_level: 3 }',
                                  caffe_pb2.LayerParameter())
        assert layer_included(self.state, layer)
        layer = text_format.Parse('name: "a" exclude { stage: "fast" }', caffe_pb2.LayerParameter())
        assert not layer_included(self.state, layer)

    def test_include_and_exclude_together_is_an_error(self):
        layer = text_format.Parse('name: "a" type: "ReLU" include { phase: TRAIN } exclude { phase: TEST }',
                                  caffe_pb2.LayerParameter())
        with pytest.raises(NetError, match='"a".*both include and exclude'):
            layer_included(self.state, layer)

    def test_stages_are_appended_to_the_files_state(self):
        text = 'state { stage: "a" } ' + INPUT + """
            layer { name: "both" type: "ReLU" bottom: "x" top: "y" include { stage: "a" stage: "b" } }"""
        assert "both" in net_from(text, torchcaffe.TEST, stages=["b"]).layer_dict
        assert "both" not in net_from(text, torchcaffe.TEST).layer_dict


# -- structure -------------------------------------------------------------------------------
def test_split_layers_are_named_like_caffe():
    net = net_from(INPUT + """
        layer { name: "a" type: "ReLU" bottom: "x" top: "y1" }
        layer { name: "b" type: "Sigmoid" bottom: "x" top: "y2" }""")
    assert list(net.layer_dict) == ["x", "x_x_0_split", "a", "b"]
    assert net.bottom_names["a"] == ["x_x_0_split_0"] and net.bottom_names["b"] == ["x_x_0_split_1"]
    assert net.layer_dict["x_x_0_split"].type == "Split"


def test_split_takes_over_a_loss_weight_and_clears_the_producers():
    net = net_from(INPUT + """
        layer { name: "a" type: "ReLU" bottom: "x" top: "y" loss_weight: 2 }
        layer { name: "b" type: "Sigmoid" bottom: "y" top: "z" }""")
    assert net.blob_loss_weights["y_a_0_split_0"] == 2 and net.blob_loss_weights["y"] == 0


def test_outputs_are_sorted_like_a_std_set_and_inputs_in_order():
    net = net_from(INPUT + """
        layer { name: "b" type: "ReLU" bottom: "x" top: "zeta" }
        layer { name: "a" type: "TanH" bottom: "zeta" top: "alpha" }
        layer { name: "c" type: "Sigmoid" bottom: "x" top: "beta" }""")
    assert net.outputs == ["alpha", "beta"] and net.inputs == ["x"]


def test_top_reused_out_of_place_is_an_error():
    with pytest.raises(NetError, match='"b".*top blob .y. is produced by more than one layer'):
        net_from(INPUT + """
            layer { name: "a" type: "ReLU" bottom: "x" top: "y" }
            layer { name: "b" type: "TanH" bottom: "x" top: "y" }""")


def test_unknown_bottom_and_unknown_type_name_the_layer():
    with pytest.raises(NetError, match='"a" \\(ReLU\\): unknown bottom blob .nope.'):
        net_from(INPUT + 'layer { name: "a" type: "ReLU" bottom: "nope" top: "y" }')
    with pytest.raises(NetError, match='"a" \\(Relu\\): unknown layer type .Relu.*Known types:.*ReLU'):
        net_from(INPUT + 'layer { name: "a" type: "Relu" bottom: "x" top: "y" }')


def test_arity_errors_name_the_layer_and_counts():
    with pytest.raises(NetError, match='"a" \\(ReLU\\): takes exactly 1 bottom.*got 2'):
        net_from(INPUT + 'layer { name: "a" type: "ReLU" bottom: "x" bottom: "x" top: "y" }')


def test_loss_weight_count_and_propagate_down_count_are_checked():
    with pytest.raises(NetError, match="loss_weight must be given 0 or 1 times"):
        net_from(INPUT + 'layer { name: "a" type: "ReLU" bottom: "x" top: "y" loss_weight: 1 loss_weight: 2 }')
    with pytest.raises(NetError, match="propagate_down must be given 0 or 1 times"):
        net_from(INPUT + 'layer { name: "a" type: "ReLU" bottom: "x" top: "y" propagate_down: 1 propagate_down: 0 }')


def test_too_many_param_blocks():
    with pytest.raises(NetError, match='"a" \\(ReLU\\): 1 param'):
        net_from(INPUT + 'layer { name: "a" type: "ReLU" bottom: "x" top: "y" param { lr_mult: 1 } }')


def test_anonymous_loss_top_counts_in_backward():
    net = net_from(MLP.replace('top: "loss" }', "}"))
    assert "(automatic)" in net.blobs and net.outputs == []
    rng = np.random.default_rng(0)
    net.blobs["x"].data[...] = rng.standard_normal((3, 4))
    net.blobs["t"].data[...] = rng.standard_normal((3, 2))
    net.forward()
    net.backward()
    assert np.abs(net.params["ip2"][0].diff).sum() > 0


# -- backward bookkeeping --------------------------------------------------------------------
def run_mlp(text: str, seed: int = 0) -> torchcaffe.Net:
    torch.manual_seed(seed)
    net = net_from(text)
    rng = np.random.default_rng(seed)
    net.blobs["x"].data[...] = rng.standard_normal((3, 4))
    net.blobs["t"].data[...] = rng.standard_normal((3, 2))
    net.forward()
    net.backward()
    return net


def test_loss_weight_is_the_loss_tops_diff_and_inputs_get_no_diff():
    net = run_mlp(MLP)
    assert float(net.blobs["loss"].diff) == 1.0
    assert not net.blobs["x"].diff.any() and not net.blobs["t"].diff.any()
    assert net.blobs["h"].diff.any() and net.params["ip1"][0].diff.any()


def test_force_backward_gives_inputs_diffs_but_not_labels_of_softmax():
    net = run_mlp("force_backward: true\n" + MLP)
    assert net.blobs["x"].diff.any() and net.blobs["t"].diff.any()  # EuclideanLoss allows both


def test_lr_mult_zero_freezes_but_passes_gradient():
    net = run_mlp(MLP.replace('name: "ip2" type: "InnerProduct"',
                              'name: "ip2" type: "InnerProduct" param { lr_mult: 0 } param { lr_mult: 0 }'))
    assert not net.params["ip2"][0].diff.any()
    assert net.params["ip1"][0].diff.any()
    assert not net.layer_dict["ip2"].weight.requires_grad


def test_propagate_down_false_stops_at_that_bottom():
    net = run_mlp(MLP.replace('top: "y" inner_product_param { num_output: 2',
                              'top: "y" propagate_down: false inner_product_param { num_output: 2'))
    assert net.params["ip2"][0].diff.any()
    assert not net.blobs["h"].diff.any() and not net.params["ip1"][0].diff.any()


def test_param_diffs_accumulate_until_cleared_blob_diffs_do_not():
    net = run_mlp(MLP)
    once = net.params["ip1"][0].diff.copy()
    h_once = net.blobs["h"].diff.copy()
    net.forward()
    net.backward()
    np.testing.assert_allclose(net.params["ip1"][0].diff, 2 * once, rtol=1e-6)
    np.testing.assert_allclose(net.blobs["h"].diff, h_once, rtol=1e-6)
    net.clear_param_diffs()
    assert not net.params["ip1"][0].diff.any()


def test_net_without_loss_backpropagates_output_diffs():
    net = net_from("force_backward: true\n" + INPUT + 'layer { name: "s" type: "Sigmoid" bottom: "x" top: "y" }')
    x = np.random.default_rng(1).standard_normal((3, 4))
    net.forward(x=x)
    got = net.backward(y=np.ones((3, 4)))
    s = 1 / (1 + np.exp(-x))
    np.testing.assert_allclose(got["x"], s * (1 - s), rtol=1e-5)


def test_net_without_loss_or_force_backward_writes_no_diff():
    net = net_from(INPUT + 'layer { name: "s" type: "Sigmoid" bottom: "x" top: "y" }')
    net.forward(x=np.ones((3, 4)))
    net.blobs["y"].diff[...] = 1
    net.backward()
    assert not net.blobs["x"].diff.any()


# -- parameter sharing -----------------------------------------------------------------------
SHARED = INPUT + """
layer { name: "a" type: "InnerProduct" bottom: "x" top: "ya" param { name: "w" SPEC_A }
        inner_product_param { num_output: 2 bias_term: false weight_filler { type: "gaussian" } } }
layer { name: "b" type: "InnerProduct" bottom: "x" top: "yb" param { name: "w" SPEC_B }
        inner_product_param { num_output: NB bias_term: false AXIS weight_filler { type: "gaussian" } } }
"""


def shared_net(spec_a="", spec_b="", nb=2, axis=""):
    return net_from(SHARED.replace("SPEC_A", spec_a).replace("SPEC_B", spec_b)
                    .replace("NB", str(nb)).replace("AXIS", axis))


def test_sharing_by_name_shares_values_and_accumulates_diffs():
    net = net_from("force_backward: true\n" + SHARED.replace("SPEC_A", "").replace("SPEC_B", "")
                   .replace("NB", "2").replace("AXIS", ""))
    assert net.layer_dict["a"].weight is net.layer_dict["b"].weight
    x = np.random.default_rng(0).standard_normal((3, 4))
    net.forward(x=x)
    net.backward(ya=np.ones((3, 2)), yb=2 * np.ones((3, 2)))
    expected = 3 * np.ones((2, 1)) * x.sum(0)[None, :]
    np.testing.assert_allclose(net.params["a"][0].diff, expected, rtol=1e-5)
    np.testing.assert_allclose(net.params["b"][0].diff, expected, rtol=1e-5)
    assert len(net.learnable_params) == 1


def test_strict_sharing_needs_equal_shapes_permissive_equal_counts():
    with pytest.raises(NetError, match="cannot share param 'w'.*same shape"):
        shared_net(nb=4)
    with pytest.raises(NetError, match="same number of values"):
        shared_net(spec_b="share_mode: PERMISSIVE", nb=4)
    net = net_from(INPUT.replace("dim: 3 dim: 4", "dim: 3 dim: 4 dim: 2") + """
        layer { name: "a" type: "InnerProduct" bottom: "x" top: "ya" param { name: "w" }
                inner_product_param { num_output: 2 bias_term: false weight_filler { type: "gaussian" } } }
        layer { name: "b" type: "InnerProduct" bottom: "x" top: "yb" param { name: "w" share_mode: PERMISSIVE }
                inner_product_param { num_output: 8 axis: 2 bias_term: false } }""")
    assert net.params["b"][0].shape == (8, 2)
    np.testing.assert_array_equal(net.params["b"][0].data.ravel(), net.params["a"][0].data.ravel())
    out = net(x=torch.ones(3, 4, 2))
    expected = net.layer_dict["a"].weight.detach().reshape(8, 2).sum(1)
    torch.testing.assert_close(out["yb"][0, 0], expected)


def test_shared_lr_mult_must_agree():
    with pytest.raises(NetError, match="lr_mult"):
        shared_net("lr_mult: 1", "lr_mult: 2")
    net = shared_net("", "lr_mult: 3")
    assert net.learnable_params[0].lr_mult == 3


# -- torch face --------------------------------------------------------------------------------
def test_torch_call_returns_tensors_with_graph():
    torch.manual_seed(0)
    net = net_from(MLP).double()
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    out = net(x=x, t=torch.zeros(3, 2, dtype=torch.float64))
    assert list(out) == ["loss"] and out["loss"].dtype == torch.float64
    out["loss"].backward()
    assert x.grad is not None and net.layer_dict["ip1"].weight.grad.abs().sum() > 0


def test_torch_and_pycaffe_faces_agree():
    torch.manual_seed(0)
    net = net_from(MLP)
    rng = np.random.default_rng(3)
    x, t = rng.standard_normal((3, 4)).astype(np.float32), rng.standard_normal((3, 2)).astype(np.float32)
    loss = net.forward(x=x, t=t)["loss"]
    torch_loss = net(torch.from_numpy(x), torch.from_numpy(t))["loss"]
    assert float(loss) == pytest.approx(torch_loss.item(), rel=1e-6)


def test_input_written_in_place_is_what_forward_reads():
    net = net_from(INPUT + 'layer { name: "s" type: "AbsVal" bottom: "x" top: "y" }')
    view = net.blobs["x"].data
    view[...] = -2.0
    net.forward()
    assert (net.blobs["y"].data == 2.0).all()


def test_reshape_propagates_new_input_shapes():
    net = net_from(MLP)
    net.blobs["x"].reshape(7, 4)
    net.blobs["t"].reshape(7, 2)
    net.reshape()
    assert net.blobs["y"].shape == (7, 2) and net.blobs["h"].shape == (7, 5)
    net.forward()
    assert net.blobs["y"].data.shape == (7, 2)


def test_forward_start_end_use_current_blob_values():
    net = net_from(INPUT + """
        layer { name: "a" type: "AbsVal" bottom: "x" top: "y" }
        layer { name: "b" type: "Power" bottom: "y" top: "z" power_param { scale: 2 } }""")
    net.forward(x=-np.ones((3, 4)))
    net.blobs["y"].data[...] = 5
    out = net.forward(start="b")
    assert (out["z"] == 10).all()
    out = net.forward(end="a", x=np.full((3, 4), -3.0))
    assert set(out) == {"y"} and (out["y"] == 3).all()


def test_double_precision_moves_everything():
    net = net_from(MLP).double()
    assert net.blobs["x"].data.dtype == np.float64
    assert net.params["ip1"][0].data.dtype == np.float64


# -- weights ---------------------------------------------------------------------------------
def test_save_then_copy_from_roundtrip(tmp_path):
    torch.manual_seed(0)
    net = net_from(MLP)
    net.save(tmp_path / "w.caffemodel")
    net.save_hdf5(tmp_path / "w.caffemodel.h5")
    for path in ("w.caffemodel", "w.caffemodel.h5"):
        torch.manual_seed(1)
        other = net_from(MLP)
        other.copy_from(tmp_path / path)
        for layer in net.params:
            for a, b in zip(net.params[layer], other.params[layer]):
                np.testing.assert_array_equal(a.data, b.data)


def test_copy_from_skips_unknown_layers_and_rejects_bad_shapes(tmp_path, caplog):
    torch.manual_seed(0)
    source = net_from(MLP.replace('"ip1"', '"other"'))
    source.save(tmp_path / "a.caffemodel")
    with caplog.at_level(logging.INFO, logger="torchcaffe"):
        net_from(MLP).copy_from(tmp_path / "a.caffemodel")
    assert "Ignoring source layer other" in caplog.text
    wide = net_from(MLP.replace("num_output: 5", "num_output: 6"))
    wide.save(tmp_path / "b.caffemodel")
    with pytest.raises(WeightsError, match='b.caffemodel: cannot copy blob 0 of layer "ip1".*\\(6, 4\\).*\\(5, 4\\)'):
        net_from(MLP).copy_from(tmp_path / "b.caffemodel")


def test_legacy_4d_blobs_load_into_2d_weights(tmp_path):
    torch.manual_seed(0)
    net = net_from(MLP)
    param = caffe_pb2.NetParameter()
    layer = param.layer.add(name="ip2", type="InnerProduct")
    weight = np.arange(10, dtype=np.float32).reshape(2, 5)
    for array in (weight, np.zeros(2, np.float32)):
        blob = layer.blobs.add(num=1, channels=1, height=array.shape[0] if array.ndim == 2 else 1,
                               width=array.shape[-1])
        blob.data.extend(array.ravel().tolist())
    (tmp_path / "legacy.caffemodel").write_bytes(param.SerializeToString())
    net.copy_from(tmp_path / "legacy.caffemodel")
    np.testing.assert_array_equal(net.params["ip2"][0].data, weight)


def test_legacy_constructor_and_weights_keyword(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "net.prototxt"
    path.write_text(MLP)
    net = torchcaffe.Net(str(path), torchcaffe.TRAIN)
    net.save(tmp_path / "w.caffemodel")
    a = torchcaffe.Net(str(path), str(tmp_path / "w.caffemodel"), torchcaffe.TEST)
    b = torchcaffe.Net(str(path), torchcaffe.TEST, weights=str(tmp_path / "w.caffemodel"))
    assert a.phase == b.phase == torchcaffe.TEST
    np.testing.assert_array_equal(a.params["ip1"][0].data, net.params["ip1"][0].data)
    np.testing.assert_array_equal(b.params["ip1"][0].data, net.params["ip1"][0].data)


def test_host_mirrors_behave_like_caffes_synced_memory():
    """The GPU path of blob views, exercised on CPU tensors (CI has no GPU)."""
    from torchcaffe.net.blob import host_mirror, sync_host_mirrors
    x = torch.zeros(2, 3)
    y = x.detach().requires_grad_()
    saved = y * 2  # autograd keeps y: a numpy write must not break its version check
    mirror = host_mirror(x)
    assert host_mirror(x) is mirror and not np.shares_memory(mirror, x.numpy())
    mirror[...] = 5
    assert float(x.sum()) == 0  # not yet on the "device"
    sync_host_mirrors()
    assert (x == 5).all() and host_mirror(x) is not mirror
    saved.sum().backward()
