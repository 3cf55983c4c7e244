"""Upgrading deprecated nets and solvers the way Caffe's upgrade_proto.cpp does."""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest

from torchcaffe.errors import NetError, ParseError
from torchcaffe.io.prototxt import net_to_text, parse_text, read_net
from torchcaffe.io.upgrade import (V0_LAYER_TYPES, V1_LAYER_TYPE_NAMES, net_needs_upgrade,
                                   upgrade_net, upgrade_solver, upgrade_v0_padding_layers,
                                   upgrade_v1_layer_type)
from torchcaffe.proto import caffe_pb2

REPO = Path(__file__).resolve().parents[2]
CORPUS = Path(os.environ.get("TORCHCAFFE_SHARED", REPO.parent / "shared")) / "corpus"
needs_corpus = pytest.mark.skipif(not (CORPUS / "INDEX.tsv").exists(),
                                  reason="the shared prototxt corpus is not available")


def net(text: str) -> caffe_pb2.NetParameter:
    return parse_text(text, caffe_pb2.NetParameter())


def upgraded(text: str) -> caffe_pb2.NetParameter:
    return upgrade_net(net(text), source="test.prototxt")


def corpus_net(path: str) -> caffe_pb2.NetParameter:
    return read_net(CORPUS / path)


# ---------------------------------------------------------------------------------------------
# V0 nets
# ---------------------------------------------------------------------------------------------

# What Caffe's upgrade_net_proto_text writes for examples/lenet/lenet_train.prototxt (V0).
LENET_V2 = """
name: "LeNet"
layer { name: "mnist" type: "Data" top: "data" top: "label"
        transform_param { scale: 0.00390625 }
        data_param { source: "mnist-train-leveldb" batch_size: 64 } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        param { lr_mult: 1 } param { lr_mult: 2 }
        convolution_param { num_output: 20 kernel_size: 5 stride: 1
          weight_filler { type: "xavier" } bias_filler { type: "constant" } } }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
        param { lr_mult: 1 } param { lr_mult: 2 }
        convolution_param { num_output: 50 kernel_size: 5 stride: 1
          weight_filler { type: "xavier" } bias_filler { type: "constant" } } }
layer { name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "ip1" type: "InnerProduct" bottom: "pool2" top: "ip1"
        param { lr_mult: 1 } param { lr_mult: 2 }
        inner_product_param { num_output: 500
          weight_filler { type: "xavier" } bias_filler { type: "constant" } } }
layer { name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
        param { lr_mult: 1 } param { lr_mult: 2 }
        inner_product_param { num_output: 10
          weight_filler { type: "xavier" } bias_filler { type: "constant" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" }
"""


@needs_corpus
def test_v0_lenet_train_upgrades_like_caffe():
    assert net_to_text(corpus_net("bvlc_legacy_v0/lenet_train.prototxt")) == net_to_text(
        net(LENET_V2))


@needs_corpus
def test_v0_imagenet_deploy_upgrades_like_caffe():
    result = corpus_net("bvlc_legacy_v0/imagenet_deploy.prototxt")
    assert not result.layers and not result.input and not result.input_dim
    assert [(l.name, l.type) for l in result.layer] == [
        ("input", "Input"),
        ("conv1", "Convolution"), ("relu1", "ReLU"), ("pool1", "Pooling"), ("norm1", "LRN"),
        ("conv2", "Convolution"), ("relu2", "ReLU"), ("pool2", "Pooling"), ("norm2", "LRN"),
        ("conv3", "Convolution"), ("relu3", "ReLU"),
        ("conv4", "Convolution"), ("relu4", "ReLU"),
        ("conv5", "Convolution"), ("relu5", "ReLU"), ("pool5", "Pooling"),
        ("fc6", "InnerProduct"), ("relu6", "ReLU"), ("drop6", "Dropout"),
        ("fc7", "InnerProduct"), ("relu7", "ReLU"), ("drop7", "Dropout"),
        ("fc8", "InnerProduct"), ("prob", "Softmax")]
    inputs = result.layer[0]
    assert list(inputs.top) == ["data"]
    assert list(inputs.input_param.shape[0].dim) == [10, 3, 227, 227]
    conv2 = result.layer[5]
    assert conv2.convolution_param.group == 2
    assert list(conv2.convolution_param.pad) == [2]
    assert list(conv2.convolution_param.kernel_size) == [5]
    assert [(p.lr_mult, p.decay_mult) for p in conv2.param] == [(1, 1), (2, 0)]
    assert result.layer[4].lrn_param.local_size == 5
    assert result.layer[4].lrn_param.alpha == pytest.approx(0.0001)
    assert result.layer[18].dropout_param.dropout_ratio == pytest.approx(0.5)


PADDED_V0 = """
name: "CaffeNet"
layers { layer { name: "data" type: "data" source: "train-leveldb" meanfile: "mean.binaryproto"
                 batchsize: 256 cropsize: 227 mirror: true } top: "data" top: "label" }
layers { layer { name: "pad1" type: "padding" pad: 2 } bottom: "data" top: "pad1" }
layers { layer { name: "conv1" type: "conv" num_output: 96 kernelsize: 11 stride: 4
                 blobs_lr: 1. blobs_lr: 2. weight_decay: 1. weight_decay: 0. }
         bottom: "pad1" top: "conv1" }
layers { layer { name: "conv2" type: "conv" num_output: 8 kernelsize: 3 }
         bottom: "pad1" top: "conv2" }
layers { layer { name: "pad2" type: "padding" pad: 1 } bottom: "conv1" top: "pad2" }
layers { layer { name: "pool1" type: "pool" pool: AVE kernelsize: 3 stride: 2 }
         bottom: "pad2" top: "pool1" }
layers { layer { name: "loss" type: "softmax_loss" } bottom: "pool1" bottom: "label" }
"""


def test_v0_padding_layers_fold_into_every_reader():
    folded = upgrade_v0_padding_layers(net(PADDED_V0))
    names = [entry.layer.name for entry in folded.layers]
    assert names == ["data", "conv1", "conv2", "pool1", "loss"]
    conv1, conv2, pool1 = folded.layers[1], folded.layers[2], folded.layers[3]
    assert (conv1.layer.pad, list(conv1.bottom)) == (2, ["data"])
    assert (conv2.layer.pad, list(conv2.bottom)) == (2, ["data"])
    assert (pool1.layer.pad, list(pool1.bottom)) == (1, ["conv1"])
    assert upgrade_v0_padding_layers(folded) == folded  # idempotent, as Caffe's test checks


def test_v0_padded_net_upgrades_to_v2():
    result = upgraded(PADDED_V0)
    data, conv1, conv2, pool1, loss = result.layer
    assert data.type == "Data"
    assert data.data_param.source == "train-leveldb" and data.data_param.batch_size == 256
    assert data.transform_param.mean_file == "mean.binaryproto"
    assert data.transform_param.crop_size == 227 and data.transform_param.mirror
    assert list(conv1.convolution_param.pad) == [2] and list(conv1.bottom) == ["data"]
    assert [(p.lr_mult, p.decay_mult) for p in conv1.param] == [(1, 1), (2, 0)]
    assert list(conv2.convolution_param.pad) == [2]
    assert pool1.type == "Pooling" and pool1.pooling_param.pad == 1
    assert pool1.pooling_param.pool == caffe_pb2.PoolingParameter.AVE
    assert loss.type == "SoftmaxWithLoss"


def test_v0_padding_before_a_non_conv_layer_is_refused():
    text = """
    input: "x"
    layers { layer { name: "pad" type: "padding" pad: 1 } bottom: "x" top: "p" }
    layers { layer { name: "r" type: "relu" } bottom: "p" top: "r" }
    """
    with pytest.raises(NetError, match=r'layer "r" \(relu\) reads padding layer "pad" '
                                       r"\(padding\).*conv or pool"):
        upgraded(text)


def test_v0_unknown_bottom_is_refused():
    text = 'layers { layer { name: "r" type: "relu" } bottom: "nowhere" top: "r" }'
    with pytest.raises(NetError, match=r'layer "r" \(relu\): bottom "nowhere" is neither'):
        upgraded(text)


@pytest.mark.parametrize("v0_type", sorted(V0_LAYER_TYPES))
def test_v0_type_strings_map_through_v1_to_v2(v0_type):
    result = upgraded(f'layers {{ layer {{ name: "l" type: "{v0_type}" }} }}')
    v1_name = V0_LAYER_TYPES[v0_type]
    assert result.layer[0].type == V1_LAYER_TYPE_NAMES[v1_name]


def test_v0_unknown_type_is_refused():
    with pytest.raises(NetError, match=r'test\.prototxt: layer "x" \(convolution\): unknown V0 '
                                       r'layer type "convolution"'):
        upgraded('layers { layer { name: "x" type: "convolution" } }')


def test_v0_setting_for_the_wrong_type_is_dropped_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="torchcaffe"):
        result = upgraded('layers { layer { name: "r" type: "relu" num_output: 3 '
                          'dropout_ratio: 0.2 } }')
    assert result.layer[0] == caffe_pb2.LayerParameter(name="r", type="ReLU")
    assert 'V0 setting "num_output" does not apply to type "relu"' in caplog.text
    assert 'V0 setting "dropout_ratio" does not apply' in caplog.text


def test_v0_field_mapping_for_data_layers():
    text = """
    layers { layer { name: "w" type: "window_data" source: "windows.txt" batchsize: 128
                     det_fg_threshold: 0.6 det_bg_threshold: 0.4 det_fg_fraction: 0.3
                     det_context_pad: 16 det_crop_mode: "square" scale: 2 } top: "d" }
    layers { layer { name: "i" type: "images" source: "list.txt" batchsize: 5 rand_skip: 7
                     shuffle_images: true new_height: 32 new_width: 48 } top: "e" }
    layers { layer { name: "h" type: "hdf5_data" source: "h5.txt" batchsize: 3 } top: "f" }
    layers { layer { name: "c" type: "concat" concat_dim: 2 } bottom: "d" bottom: "e" top: "c" }
    layers { layer { name: "o" type: "hdf5_output" hdf5_output_param { file_name: "o.h5" } }
             bottom: "c" }
    layers { layer { name: "g" type: "infogain_loss" source: "H.binaryproto" }
             bottom: "c" bottom: "f" }
    layers { layer { name: "n" type: "lrn" local_size: 3 alpha: 2 beta: 0.5 k: 4 }
             bottom: "c" top: "n" }
    layers { layer { name: "ip" type: "innerproduct" num_output: 7 biasterm: false
                     weight_filler { type: "xavier" } } bottom: "n" top: "ip" }
    """
    w, i, h, c, o, g, n, ip = upgraded(text).layer
    wp = w.window_data_param
    assert (w.type, wp.source, wp.batch_size, wp.context_pad, wp.crop_mode) == (
        "WindowData", "windows.txt", 128, 16, "square")
    assert (wp.fg_threshold, wp.bg_threshold, wp.fg_fraction) == pytest.approx((0.6, 0.4, 0.3))
    assert w.transform_param.scale == 2
    ip_ = i.image_data_param
    assert (i.type, ip_.source, ip_.batch_size, ip_.rand_skip, ip_.shuffle, ip_.new_height,
            ip_.new_width) == ("ImageData", "list.txt", 5, 7, True, 32, 48)
    assert (h.type, h.hdf5_data_param.source, h.hdf5_data_param.batch_size) == (
        "HDF5Data", "h5.txt", 3)
    assert (c.type, c.concat_param.concat_dim) == ("Concat", 2)
    assert (o.type, o.hdf5_output_param.file_name) == ("HDF5Output", "o.h5")
    assert (g.type, g.infogain_loss_param.source) == ("InfogainLoss", "H.binaryproto")
    assert (n.lrn_param.local_size, n.lrn_param.alpha, n.lrn_param.beta, n.lrn_param.k) == (
        3, 2, 0.5, 4)
    assert ip.inner_product_param.num_output == 7 and not ip.inner_product_param.bias_term
    assert ip.inner_product_param.weight_filler.type == "xavier"


def test_v0_net_keeps_name_inputs_and_force_backward():
    text = """
    name: "old" input: "x" input_dim: 2 input_dim: 3 input_dim: 4 input_dim: 5
    force_backward: true
    layers { layer { name: "r" type: "relu" } bottom: "x" top: "y" }
    """
    result = upgraded(text)
    assert result.name == "old" and result.force_backward
    assert [l.type for l in result.layer] == ["Input", "ReLU"]
    assert list(result.layer[0].input_param.shape[0].dim) == [2, 3, 4, 5]


def test_v0_and_v1_entries_cannot_mix():
    text = """
    layers { layer { name: "r" type: "relu" } bottom: "x" top: "y" }
    layers { name: "t" type: TANH bottom: "y" top: "z" }
    """
    with pytest.raises(NetError, match=r"entry #2 \(layer \"t\" \(TANH\)\) is not a V0 layer"):
        upgraded(text)


# ---------------------------------------------------------------------------------------------
# V1 nets
# ---------------------------------------------------------------------------------------------

V1_TO_V2_PAIRS = [
    ("bvlc_legacy_v1/caffenet_train_val.prototxt", "bvlc_reference_caffenet/train_val.prototxt"),
    ("bvlc_legacy_v1/lenet_train_test.prototxt", "bvlc_mnist/lenet_train_test.prototxt"),
    ("bvlc_legacy_v1/mnist_autoencoder.prototxt", "bvlc_mnist/mnist_autoencoder.prototxt"),
    ("bvlc_legacy_v1/mnist_siamese_train_test.prototxt",
     "bvlc_siamese/mnist_siamese_train_test.prototxt"),
]


@needs_corpus
@pytest.mark.parametrize("v1, v2", V1_TO_V2_PAIRS, ids=[p[0] for p in V1_TO_V2_PAIRS])
def test_v1_corpus_file_upgrades_to_what_bvlc_ships_as_v2(v1, v2):
    # BVLC converted these examples with upgrade_net_proto_text; the results are in master.
    assert net_to_text(corpus_net(v1)) == net_to_text(corpus_net(v2))


@needs_corpus
def test_v1_googlenet_deploy_upgrades():
    result = corpus_net("bvlc_legacy_v1/googlenet_deploy.prototxt")
    reference = corpus_net("bvlc_googlenet/deploy.prototxt")
    assert result.layer[0].name == "input"  # Caffe names the generated Input layer "input"
    result.layer[0].name = reference.layer[0].name
    assert result == reference


@needs_corpus
def test_vgg19_v1_gist_upgrades():
    result = corpus_net("vgg19_v1_gist/VGG_ILSVRC_19_layers_deploy.prototxt")
    assert len(result.layer) == 38 and result.layer[0].type == "Input"


@pytest.mark.parametrize("enum_name", [v.name for v in
                                       caffe_pb2.V1LayerParameter.LayerType.DESCRIPTOR.values])
def test_every_v1_enum_has_a_type_string(enum_name):
    value = caffe_pb2.V1LayerParameter.LayerType.Value(enum_name)
    result = upgraded(f'layers {{ name: "l" type: {enum_name} }}')
    assert result.layer[0].type == upgrade_v1_layer_type(value) == V1_LAYER_TYPE_NAMES[enum_name]


@pytest.mark.parametrize("enum_name, type_string", [
    ("DECONVOLUTION", "Deconvolution"), ("ELTWISE", "Eltwise"), ("SLICE", "Slice"),
    ("POWER", "Power"), ("SILENCE", "Silence"), ("THRESHOLD", "Threshold"),
    ("ARGMAX", "ArgMax"), ("MVN", "MVN"), ("ABSVAL", "AbsVal"), ("EXP", "Exp"),
    ("CONTRASTIVE_LOSS", "ContrastiveLoss"), ("HINGE_LOSS", "HingeLoss"),
    ("IMAGE_DATA", "ImageData"), ("MEMORY_DATA", "MemoryData"), ("DUMMY_DATA", "DummyData"),
    ("HDF5_OUTPUT", "HDF5Output"), ("SOFTMAX_LOSS", "SoftmaxWithLoss"), ("TANH", "TanH"),
    ("IM2COL", "Im2col"), ("SIGMOID_CROSS_ENTROPY_LOSS", "SigmoidCrossEntropyLoss"),
    ("NONE", "")])
def test_v1_type_strings(enum_name, type_string):
    assert V1_LAYER_TYPE_NAMES[enum_name] == type_string


def test_v1_enum_without_a_type_string_is_refused(monkeypatch):
    # As when the schema learns a fork's V1 enum value before the table learns its string.
    monkeypatch.delitem(V1_LAYER_TYPE_NAMES, "SILENCE")
    with pytest.raises(NetError, match=r'test\.prototxt: layer "s" \(SILENCE\): V1 layer type '
                                       r"SILENCE has no current-format type"):
        upgraded('layers { name: "s" type: SILENCE }')


def test_v1_per_blob_lists_become_param_specs():
    text = """
    layers { name: "ip" type: INNER_PRODUCT bottom: "x" top: "y"
             param: "w" param: "b" blob_share_mode: PERMISSIVE
             blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0 blobs_lr: 3 }
    """
    specs = upgraded(text).layer[0].param
    assert len(specs) == 3
    assert (specs[0].name, specs[0].share_mode, specs[0].lr_mult, specs[0].decay_mult) == (
        "w", caffe_pb2.ParamSpec.PERMISSIVE, 1, 1)
    assert (specs[1].name, specs[1].HasField("share_mode"), specs[1].lr_mult,
            specs[1].decay_mult) == ("b", False, 2, 0)
    assert (specs[2].HasField("name"), specs[2].lr_mult, specs[2].HasField("decay_mult")) == (
        False, 3, False)


def test_v1_rules_loss_weights_blobs_and_params_are_copied():
    text = """
    layers { name: "loss" type: EUCLIDEAN_LOSS bottom: "a" bottom: "b" top: "l"
             include { phase: TRAIN stage: "s" } exclude { min_level: 2 }
             loss_weight: 0.5 loss_param { ignore_label: 3 }
             blobs { data: 1 data: 2 } }
    layers { name: "e" type: ELTWISE bottom: "a" bottom: "b" top: "e"
             eltwise_param { operation: MAX } }
    layers { name: "d" type: DUMMY_DATA top: "z" dummy_data_param { num: 1 channels: 2 } }
    layers { name: "t" type: THRESHOLD bottom: "a" top: "t" threshold_param { threshold: 0.3 } }
    """
    loss, eltwise, dummy, threshold = upgraded(text).layer
    assert loss.include[0].phase == caffe_pb2.TRAIN and list(loss.include[0].stage) == ["s"]
    assert loss.exclude[0].min_level == 2
    assert list(loss.loss_weight) == [0.5] and loss.loss_param.ignore_label == 3
    assert list(loss.blobs[0].data) == [1, 2]
    assert eltwise.eltwise_param.operation == caffe_pb2.EltwiseParameter.MAX
    assert list(dummy.dummy_data_param.num) == [1]
    assert threshold.threshold_param.threshold == pytest.approx(0.3)


@pytest.mark.parametrize("enum_name, type_string", [
    ("IMAGE_SEG_DATA", "ImageSegData"), ("SEG_ACCURACY", "SegAccuracy"), ("INTERP", "Interp"),
    ("MAT_WRITE", "MatWrite"), ("MAT_READ", "MatRead"), ("DENSE_CRF", "DenseCRF"),
    ("BIAS_CHANNEL", "BiasChannel"), ("UNIQUE_LABEL", "UniqueLabel"),
    ("ADAPTIVE_BIAS_CHANNEL", "AdaptiveBiasChannel"), ("PADDING", "Padding"),
    ("DOMINANT_CHANNEL", "DominantChannel")])
def test_deeplab_v1_type_strings(enum_name, type_string):
    assert V1_LAYER_TYPE_NAMES[enum_name] == type_string


def test_deeplab_v1_layers_keep_their_params():
    text = """
    layers { name: "data" type: IMAGE_SEG_DATA top: "data" top: "label"
             image_data_param { source: "list.txt" label_type: PIXEL has_label: true }
             transform_param { crop_size: 321 } }
    layers { name: "i" type: INTERP bottom: "label" top: "s" interp_param { shrink_factor: 8 } }
    layers { name: "c" type: CONVOLUTION bottom: "data" top: "c" strict_dim: false
             convolution_param { num_output: 2 kernel_size: 3 hole: 12 } }
    layers { name: "crf" type: DENSE_CRF bottom: "c" top: "crf"
             dense_crf_param { max_iter: 10 pos_w: 3 } }
    layers { name: "w" type: MAT_WRITE bottom: "crf" mat_write_param { prefix: "out/" } }
    layers { name: "a" type: SEG_ACCURACY bottom: "c" bottom: "s" top: "acc"
             seg_accuracy_param { ignore_label: 255 } }
    """
    data, interp, conv, crf, write, acc = upgraded(text).layer
    assert data.type == "ImageSegData" and data.transform_param.crop_size == 321
    assert data.image_data_param.label_type == caffe_pb2.ImageDataParameter.PIXEL
    assert interp.interp_param.shrink_factor == 8
    assert conv.convolution_param.hole == 12  # strict_dim has no current-format field
    assert crf.dense_crf_param.max_iter == 10 and list(crf.dense_crf_param.pos_w) == [3]
    assert write.type == "MatWrite" and write.mat_write_param.prefix == "out/"
    assert list(acc.seg_accuracy_param.ignore_label) == [255]


def test_deeplab_v1_strict_dim_is_dropped_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="torchcaffe"):
        result = upgraded('layers { name: "c" type: CONVOLUTION strict_dim: false }')
    assert result.layer[0].type == "Convolution"
    assert 'layer "c" (CONVOLUTION)' in caplog.text and "strict_dim" in caplog.text


@pytest.mark.parametrize("params, ignore_label", [
    ("softmaxloss_param { ignore_label: 255 }", 255),
    ("softmaxloss_param { ignore_label: 255 } loss_param { ignore_label: 7 }", 7),
    ("softmaxloss_param { ignore_label: 1 ignore_label: 2 }", None),
    ('softmaxloss_param { weight_source: "w.txt" }', None)])
def test_deeplab_v1_softmaxloss_param(params, ignore_label):
    (loss,) = upgraded(f'layers {{ name: "l" type: SOFTMAX_LOSS {params} }}').layer
    assert loss.HasField("softmaxloss_param")  # kept as it is
    if ignore_label is None:
        assert not loss.loss_param.HasField("ignore_label")
    else:
        assert loss.loss_param.ignore_label == ignore_label


def test_v1_empty_param_message_is_kept():
    result = upgraded('layers { name: "r" type: RELU relu_param { } }')
    assert result.layer[0].HasField("relu_param")


def test_net_mixing_layer_and_layers_is_refused():
    text = 'layer { name: "a" type: "ReLU" }\nlayers { name: "b" type: RELU }'
    with pytest.raises(NetError, match=r"test\.prototxt: the net mixes 1 'layer' entries"):
        upgraded(text)


# ---------------------------------------------------------------------------------------------
# Data transformation fields
# ---------------------------------------------------------------------------------------------

def test_data_transformation_fields_move_to_transform_param():
    text = """
    layers { name: "d" type: DATA top: "x"
             data_param { source: "db" batch_size: 4 scale: 0.5 mean_file: "m" crop_size: 9
                          mirror: true } }
    layers { name: "i" type: IMAGE_DATA top: "y" image_data_param { source: "l" mirror: true } }
    layers { name: "w" type: WINDOW_DATA top: "z" window_data_param { crop_size: 3 }
             transform_param { crop_size: 5 scale: 2 } }
    layers { name: "d2" type: DATA top: "q" data_param { source: "db2" } }
    """
    d, i, w, d2 = upgraded(text).layer
    assert d.data_param == caffe_pb2.DataParameter(source="db", batch_size=4)
    assert d.transform_param == caffe_pb2.TransformationParameter(
        scale=0.5, mean_file="m", crop_size=9, mirror=True)
    assert not i.image_data_param.HasField("mirror") and i.transform_param.mirror
    assert w.transform_param.crop_size == 3 and w.transform_param.scale == 2  # overwritten
    assert not w.window_data_param.HasField("crop_size")
    assert d2.HasField("transform_param")  # Caffe touches every data layer once it upgrades


def test_current_format_data_layers_are_left_alone():
    text = 'layer { name: "d" type: "Data" top: "x" data_param { source: "db" scale: 0.5 } }'
    assert upgraded(text) == net(text)


# ---------------------------------------------------------------------------------------------
# Net inputs
# ---------------------------------------------------------------------------------------------

def test_input_dims_become_one_input_layer_at_the_front():
    text = """
    name: "n"
    input: "data" input: "label"
    input_dim: 10 input_dim: 3 input_dim: 32 input_dim: 32
    input_dim: 10 input_dim: 1 input_dim: 1 input_dim: 1
    layer { name: "r" type: "ReLU" bottom: "data" top: "r" }
    """
    result = upgraded(text)
    assert not result.input and not result.input_dim and not result.input_shape
    first = result.layer[0]
    assert (first.name, first.type, list(first.top)) == ("input", "Input", ["data", "label"])
    assert [list(s.dim) for s in first.input_param.shape] == [[10, 3, 32, 32], [10, 1, 1, 1]]
    assert [l.name for l in result.layer] == ["input", "r"]


def test_input_shapes_become_an_input_layer():
    text = """
    input: "a" input_shape { dim: 1 dim: 2 } input: "b" input_shape { dim: 5 }
    layer { name: "c" type: "Concat" bottom: "a" bottom: "b" top: "c" }
    """
    first = upgraded(text).layer[0]
    assert list(first.top) == ["a", "b"]
    assert [list(s.dim) for s in first.input_param.shape] == [[1, 2], [5]]


def test_input_shape_wins_over_input_dim():
    text = 'input: "a" input_shape { dim: 7 } input_dim: 1 input_dim: 2 input_dim: 3 input_dim: 4'
    assert [list(s.dim) for s in upgraded(text).layer[0].input_param.shape] == [[7]]


def test_input_names_alone_are_dropped():
    # An old .caffemodel stores input names without shapes; Caffe just drops them.
    result = upgraded('input: "data" layer { name: "r" type: "ReLU" bottom: "data" top: "r" }')
    assert not result.input and [l.name for l in result.layer] == ["r"]


@pytest.mark.parametrize("text, words", [
    ('input: "a" input: "b" input_dim: 1 input_dim: 2 input_dim: 3 input_dim: 4',
     "gives 4 input_dim values; expected 8"),
    ('input: "a" input_shape { dim: 1 } input_shape { dim: 2 }',
     "gives 2 input_shape entries; expected 1")])
def test_input_shape_counts_must_match(text, words):
    with pytest.raises(NetError, match=words):
        upgraded(text)


@needs_corpus
def test_corpus_input_nets_become_input_layers():
    result = corpus_net("vgg16/VGG_ILSVRC_16_layers_deploy.prototxt")
    assert (result.layer[0].name, result.layer[0].type) == ("input", "Input")
    assert list(result.layer[0].input_param.shape[0].dim) == [1, 3, 224, 224]


# ---------------------------------------------------------------------------------------------
# BatchNorm
# ---------------------------------------------------------------------------------------------

def test_batch_norm_with_three_param_specs_gets_zero_multipliers():
    text = """
    layer { name: "bn" type: "BatchNorm" bottom: "x" top: "y"
            param { lr_mult: 1 name: "m" } param { decay_mult: 2 } param { } }
    layer { name: "bn2" type: "BatchNorm" bottom: "y" top: "z" param { lr_mult: 1 } }
    layer { name: "s" type: "Scale" bottom: "z" top: "z" param { } param { } param { } }
    """
    bn, bn2, scale = upgraded(text).layer
    assert [(p.lr_mult, p.decay_mult) for p in bn.param] == [(0, 0)] * 3
    assert all(p.HasField("lr_mult") and p.HasField("decay_mult") for p in bn.param)
    assert bn.param[0].name == "m"
    assert bn2.param[0].lr_mult == 1 and not bn2.param[0].HasField("decay_mult")
    assert not scale.param[0].HasField("lr_mult")


@needs_corpus
def test_corpus_batch_norm_net():
    result = corpus_net("bvlc_cifar10/cifar10_full_sigmoid_train_test_bn.prototxt")
    norms = [l for l in result.layer if l.type == "BatchNorm"]
    assert norms and all([(p.lr_mult, p.decay_mult) for p in l.param] == [(0, 0)] * 3
                         for l in norms)


# ---------------------------------------------------------------------------------------------
# Solvers
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("enum_name, type_string", [
    ("SGD", "SGD"), ("NESTEROV", "Nesterov"), ("ADAGRAD", "AdaGrad"), ("RMSPROP", "RMSProp"),
    ("ADADELTA", "AdaDelta"), ("ADAM", "Adam")])
def test_solver_type_enum_becomes_type_string(enum_name, type_string):
    solver = parse_text(f"base_lr: 0.1 solver_type: {enum_name}", caffe_pb2.SolverParameter())
    result = upgrade_solver(solver)
    assert result.type == type_string and not result.HasField("solver_type")
    assert solver.HasField("solver_type")  # the input is not changed


def test_solver_with_both_type_fields_is_refused():
    solver = parse_text('solver_type: ADAM type: "Adam"', caffe_pb2.SolverParameter())
    with pytest.raises(ParseError, match=r"s\.prototxt: the solver sets both the deprecated "
                                         r"solver_type \(ADAM\) and type"):
        upgrade_solver(solver, source="s.prototxt")


def test_solver_upgrades_inline_nets():
    solver = parse_text("""
        train_net_param { layers { name: "r" type: RELU } }
        test_net_param { input: "x" input_dim: 1 input_dim: 1 input_dim: 1 input_dim: 1 }
    """, caffe_pb2.SolverParameter())
    result = upgrade_solver(solver)
    assert result.train_net_param.layer[0].type == "ReLU"
    assert result.test_net_param[0].layer[0].type == "Input"


def test_current_solver_is_unchanged():
    solver = parse_text('type: "Adam" base_lr: 0.001 net: "n.prototxt"',
                        caffe_pb2.SolverParameter())
    assert upgrade_solver(solver) == solver


# ---------------------------------------------------------------------------------------------
# Idempotence, copies, logging, speed
# ---------------------------------------------------------------------------------------------

def _v2_corpus_nets():
    import csv
    if not (CORPUS / "INDEX.tsv").exists():
        return []
    with open(CORPUS / "INDEX.tsv", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    return [r["local_path"] for r in rows if r["kind"] == "net" and not r["non_bvlc_types"]
            and r["local_path"] not in ("resnext50/deploy_resnext50-32x4d.prototxt",)]


@needs_corpus
@pytest.mark.parametrize("path", _v2_corpus_nets())
def test_upgrade_is_idempotent_on_corpus(path):
    once = corpus_net(path)
    assert upgrade_net(once) == once
    assert not net_needs_upgrade(once)


@needs_corpus
def test_current_format_nets_come_back_equal():
    original = parse_text((CORPUS / "bvlc_alexnet/train_val.prototxt").read_text(),
                          caffe_pb2.NetParameter())
    result = upgrade_net(original)
    assert result == original and result is not original


def test_upgrade_returns_a_copy_and_leaves_its_input_alone():
    original = net('layers { name: "r" type: RELU }')
    snapshot = caffe_pb2.NetParameter()
    snapshot.CopyFrom(original)
    upgrade_net(original)
    assert original == snapshot


@needs_corpus
def test_one_log_line_per_rule(caplog):
    with caplog.at_level(logging.INFO, logger="torchcaffe"):
        corpus_net("bvlc_legacy_v0/imagenet_deploy.prototxt")
    lines = [r.getMessage() for r in caplog.records if r.name == "torchcaffe"]
    assert len(lines) == 3
    assert "V0" in lines[0] and "V1" in lines[1] and "Input layer" in lines[2]
    assert all("imagenet_deploy.prototxt" in line for line in lines)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="torchcaffe"):
        corpus_net("bvlc_alexnet/deploy.prototxt")
    assert not [r for r in caplog.records if r.name == "torchcaffe"]


@needs_corpus
def test_upgrade_of_a_big_current_net_is_fast():
    big = corpus_net("resnet/ResNet-152-deploy.prototxt")
    start = time.perf_counter()
    for _ in range(20):
        upgrade_net(big)
    assert (time.perf_counter() - start) / 20 < 0.02
