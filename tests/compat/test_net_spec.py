"""pycaffe's test_net_spec.py, as behaviour: NetSpec generation, auto-naming, zero tops, type
errors; and that the text parses back with our reader and builds a net."""
from __future__ import annotations

import pytest
from google.protobuf import text_format

import torchcaffe as caffe
from torchcaffe import layers as L
from torchcaffe import params as P
from torchcaffe.compat.net_spec import NetSpecError
from torchcaffe.io.prototxt import read_net
from torchcaffe.proto import caffe_pb2


def lenet(batch_size: int) -> caffe_pb2.NetParameter:
    n = caffe.NetSpec()
    n.data, n.label = L.DummyData(shape=[dict(dim=[batch_size, 1, 28, 28]), dict(dim=[batch_size, 1, 1, 1])],
                                  transform_param=dict(scale=1. / 255), ntop=2)
    n.conv1 = L.Convolution(n.data, kernel_size=5, num_output=20, weight_filler=dict(type="xavier"))
    n.pool1 = L.Pooling(n.conv1, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.conv2 = L.Convolution(n.pool1, kernel_size=5, num_output=50, weight_filler=dict(type="xavier"))
    n.pool2 = L.Pooling(n.conv2, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.ip1 = L.InnerProduct(n.pool2, num_output=500, weight_filler=dict(type="xavier"))
    n.relu1 = L.ReLU(n.ip1, in_place=True)
    n.ip2 = L.InnerProduct(n.relu1, num_output=10, weight_filler=dict(type="xavier"))
    n.loss = L.SoftmaxWithLoss(n.ip2, n.label)
    return n.to_proto()


def anon_lenet(batch_size: int) -> caffe_pb2.NetParameter:
    data, label = L.DummyData(shape=[dict(dim=[batch_size, 1, 28, 28]), dict(dim=[batch_size, 1, 1, 1])],
                              transform_param=dict(scale=1. / 255), ntop=2)
    conv1 = L.Convolution(data, kernel_size=5, num_output=20, weight_filler=dict(type="xavier"))
    pool1 = L.Pooling(conv1, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    ip1 = L.InnerProduct(pool1, num_output=500, weight_filler=dict(type="xavier"))
    relu1 = L.ReLU(ip1, in_place=True)
    ip2 = L.InnerProduct(relu1, num_output=10, weight_filler=dict(type="xavier"))
    loss = L.SoftmaxWithLoss(ip2, label)
    return loss.to_proto()


def silent_net() -> caffe_pb2.NetParameter:
    n = caffe.NetSpec()
    n.data, n.data2 = L.DummyData(shape=dict(dim=3), ntop=2)
    n.silence_data = L.Silence(n.data, ntop=0)
    n.silence_data2 = L.Silence(n.data2, ntop=0)
    return n.to_proto()


def write(tmp_path, proto, name="net.prototxt") -> str:
    path = tmp_path / name
    path.write_text(str(proto))
    return str(path)


def test_lenet_names_and_parameters(tmp_path):
    proto = lenet(50)
    assert [layer.name for layer in proto.layer] == ["data", "conv1", "pool1", "conv2", "pool2", "ip1", "relu1",
                                                     "ip2", "loss"]
    assert list(proto.layer[0].top) == ["data", "label"]
    assert proto.layer[1].convolution_param.kernel_size == [5]  # a single value fills the repeated field
    assert proto.layer[1].convolution_param.weight_filler.type == "xavier"
    assert proto.layer[2].pooling_param.pool == caffe_pb2.PoolingParameter.MAX
    assert proto.layer[0].transform_param.scale == pytest.approx(1 / 255)
    assert list(proto.layer[6].bottom) == list(proto.layer[6].top) == ["ip1"]  # in place
    assert list(proto.layer[8].bottom) == ["ip2", "label"]
    net = caffe.Net(write(tmp_path, proto), caffe.TRAIN)
    assert len(net.layers) == 9
    assert net.blobs["label"].data.shape == (50, 1, 1, 1)
    assert net.forward()["loss"] > 0


def test_generated_text_parses_back_identically(tmp_path):
    proto = lenet(8)
    assert read_net(write(tmp_path, proto)) == proto
    assert text_format.Parse(str(proto), caffe_pb2.NetParameter()) == proto


def test_anonymous_tops_are_named_per_type(tmp_path):
    proto = anon_lenet(50)
    assert [layer.name for layer in proto.layer] == ["DummyData1", "Convolution1", "Pooling1", "InnerProduct1",
                                                     "ReLU1", "InnerProduct2", "SoftmaxWithLoss1"]
    assert list(proto.layer[0].top) == ["DummyData1", "DummyData2"]
    assert list(proto.layer[4].top) == ["InnerProduct1"]  # in place keeps its bottom's name
    net = caffe.Net(write(tmp_path, proto), caffe.TRAIN)
    assert len(net.layers) == 7


def test_zero_tops_make_layers_without_outputs(tmp_path):
    net = caffe.Net(write(tmp_path, silent_net()), caffe.TRAIN)
    assert len(net.forward()) == 0


def test_layer_parameter_fields_and_repeated_messages():
    data = L.Input(shape=[dict(dim=[1, 3, 8, 8])])
    conv = L.Convolution(data, num_output=4, kernel_size=[3, 3], pad=1, name="conv",
                         param=[dict(lr_mult=1, decay_mult=1), dict(lr_mult=2, decay_mult=0)],
                         include=dict(phase=caffe.TRAIN), loss_weight=0.5)
    layer = conv.to_proto().layer[1]
    assert layer.name == "conv"  # name= overrides the automatic name
    assert list(layer.convolution_param.kernel_size) == [3, 3] and list(layer.convolution_param.pad) == [1]
    assert [p.lr_mult for p in layer.param] == [1, 2] and layer.param[1].decay_mult == 0
    assert layer.include[0].phase == caffe.TRAIN and list(layer.loss_weight) == [0.5]


def test_deconvolution_keywords_go_to_convolution_param():
    data = L.Input(shape=dict(dim=[1, 2, 4, 4]))
    layer = L.Deconvolution(data, num_output=2, kernel_size=4, stride=2).to_proto().layer[1]
    assert layer.convolution_param.num_output == 2 and list(layer.convolution_param.stride) == [2]


def test_python_layer_keywords():
    data = L.Input(shape=dict(dim=[2, 3]))
    layer = L.Python(data, module="mod", layer="Cls", param_str="{'x': 1}", ntop=1).to_proto().layer[1]
    assert (layer.python_param.module, layer.python_param.layer) == ("mod", "Cls")
    assert layer.python_param.param_str == "{'x': 1}"


def test_a_non_top_bottom_is_a_type_error():
    data = L.DummyData(ntop=2)
    with pytest.raises(TypeError, match=r"^Silence input 0 is not a Top \(type is <class 'tuple'>\)$"):
        L.Silence(data, ntop=0)
    with pytest.raises(TypeError, match="Silence input 1 is not a Top"):
        L.Silence(data[0], data, ntop=0)


def test_unknown_keyword_names_the_type():
    data = L.Input(shape=dict(dim=[2]))
    with pytest.raises(NetSpecError, match="ReLU: keyword 'kernel_sise'"):
        L.ReLU(data, kernel_sise=3).to_proto()


def test_params_give_enum_values():
    assert P.Pooling.AVE == caffe_pb2.PoolingParameter.AVE
    assert P.Eltwise.SUM == caffe_pb2.EltwiseParameter.SUM
    assert P.Data.LMDB == caffe_pb2.DataParameter.LMDB
    with pytest.raises(AttributeError):
        P.Pooling.MAXIMUM
