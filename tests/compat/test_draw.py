"""pycaffe's test_draw.py, as behaviour: every net of the corpus draws; labels, colours, phase
filtering and display_lrm follow pycaffe's draw.py; images need Graphviz's dot."""
from __future__ import annotations

import shutil

import pytest

import torchcaffe as caffe
from torchcaffe.cli import main as cli
from torchcaffe.compat.draw import GraphvizMissingError
from torchcaffe.io.prototxt import read_net
from torchcaffe.proto import caffe_pb2

from ..conftest import SHARED, requires_shared
from ..corpus import corpus_nets, read_corpus_net

HAS_DOT = shutil.which("dot") is not None
NO_DOT = "Graphviz's dot program is not installed (apt-get install graphviz)"

NET = """name: "small"
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TRAIN }
        data_param { source: "x" batch_size: 64 } }
layer { name: "input" type: "Input" top: "data" include { phase: TEST }
        input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" param { lr_mult: 1 } param { lr_mult: 2 }
        convolution_param { num_output: 20 kernel_size: 5 stride: 1 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "pool1" bottom: "label" top: "loss" include { phase: TRAIN } }
"""


@pytest.fixture
def net():
    return read_net(NET)


def test_graph_has_pycaffe_labels_and_colours(net):
    source = caffe.draw.get_pydot_graph(net, "LR", display_lrm=True).to_string()
    assert '"conv1\\n(Convolution)\\nkernel size: 5\\nstride: 1\\npad: 0\\nlr mult: 1.0, 2.0"' in source
    assert '"pool1\\n(Pooling MAX)' in source
    assert "#FF5050" in source and "#FF9900" in source and "#90EE90" in source  # conv, pool, in-place ReLU
    assert 'label="Batch 64"' in source and 'label=20' in source
    assert "digraph small" in source and "rankdir=LR" in source


def test_top_to_bottom_layouts_join_label_lines_with_spaces(net):
    assert caffe.draw.get_layer_label(net.layer[2], "TB") == '"conv1 (Convolution) kernel size: 5 stride: 1 pad: 0"'


def test_phase_keeps_the_layers_of_that_phase(net):
    train = caffe.draw.get_pydot_graph(net, "LR", phase=caffe_pb2.TRAIN).to_string()
    test = caffe.draw.get_pydot_graph(net, "LR", phase=caffe_pb2.TEST).to_string()
    assert "SoftmaxWithLoss" in train and "(Data)" in train and "(Input)" not in train
    assert "SoftmaxWithLoss" not in test and "(Input)" in test


def test_dot_source_needs_no_graphviz(net, tmp_path):
    path = tmp_path / "net.dot"
    caffe.draw.draw_net_to_file(net, str(path), rankdir="TB")
    assert path.read_text().startswith("digraph small {")


@requires_shared
def test_every_corpus_net_draws():
    nets = corpus_nets(SHARED / "corpus")
    assert nets
    for net in nets:
        param = read_corpus_net(net)
        for phase in (None, caffe_pb2.TRAIN, caffe_pb2.TEST):
            source = caffe.draw.draw_net(param, "LR", ext="dot", phase=phase).decode()
            assert source.startswith("digraph"), net.relative


@pytest.mark.skipif(HAS_DOT, reason="Graphviz's dot is installed here")
def test_images_without_dot_are_one_clear_error(net, tmp_path):
    with pytest.raises(GraphvizMissingError, match="apt-get install graphviz"):
        caffe.draw.draw_net_to_file(net, str(tmp_path / "net.png"))
    assert not (tmp_path / "net.png").exists()
    assert cli(["draw", str(_write(tmp_path)), str(tmp_path / "net.svg")]) == 1


@pytest.mark.skipif(not HAS_DOT, reason=NO_DOT)
@pytest.mark.parametrize("ext,magic", [("png", b"\x89PNG"), ("svg", b"<?xml")])
def test_images_with_dot(net, tmp_path, ext, magic):
    path = tmp_path / f"net.{ext}"
    caffe.draw.draw_net_to_file(net, str(path), phase=caffe_pb2.TEST)
    assert path.read_bytes().startswith(magic)


def test_cli_writes_a_dot_file(tmp_path, capsys):
    out = tmp_path / "cli.dot"
    assert cli(["draw", str(_write(tmp_path)), str(out), "--rankdir", "BT", "--phase", "TEST", "-display_lrm"]) == 0
    source = out.read_text()
    assert "rankdir=BT" in source and "SoftmaxWithLoss" not in source and "lr mult" in source


def _write(tmp_path):
    path = tmp_path / "small.prototxt"
    path.write_text(NET)
    return path
