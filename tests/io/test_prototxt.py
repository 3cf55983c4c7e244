"""Reading Caffe text files: the real-file corpus, text quirks, error messages, writing text."""
from __future__ import annotations

import csv
import logging
import os
from pathlib import Path

import pytest

from torchcaffe.errors import ParseError
from torchcaffe.io.prototxt import (format_double, format_float, net_to_text, parse_text,
                                    read_net, read_solver)
from torchcaffe.proto import caffe_pb2

REPO = Path(__file__).resolve().parents[2]
CORPUS = Path(os.environ.get("TORCHCAFFE_SHARED", REPO.parent / "shared")) / "corpus"
needs_corpus = pytest.mark.skipif(not (CORPUS / "INDEX.tsv").exists(),
                                  reason="the shared prototxt corpus is not available")


def corpus_rows():
    if not (CORPUS / "INDEX.tsv").exists():
        return []
    with open(CORPUS / "INDEX.tsv", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


# Corpus files that use fields or enum values of Caffe forks, missing from our schema for
# now: (line, column, name) of the first one. Remove entries as the schema learns them.
FORK_FILES = {
    "deeplab_largefov/test.prototxt": (13, 9, "IMAGE_SEG_DATA"),
    "deeplab_largefov/train.prototxt": (23, 9, "IMAGE_SEG_DATA"),
    "fast_rcnn_zf/test.prototxt": (168, 3, "roi_pooling_param"),
    "faster_rcnn_vgg16/test.prototxt": (483, 3, "roi_pooling_param"),
    "faster_rcnn_vgg16/train.prototxt": (470, 3, "smooth_l1_loss_param"),
    "mobilenet_ssd/MobileNetSSD_deploy.prototxt": (1177, 3, "permute_param"),
    "mobilenet_ssd/MobileNetSSD_train.prototxt": (16, 5, "resize_param"),
    "mobilenet_ssd/solver_train.prototxt": (22, 1, "eval_type"),
    "opencv_face_detector/deploy.prototxt": (984, 3, "norm_param"),
    "opencv_face_detector/deploy.prototxt.txt": (984, 3, "norm_param"),
    "pspnet_resnet101v2/deploy_psp_resnet101-v2-merge.prototxt": (4581, 3, "interp_param"),
    "resnext50/deploy_resnext50-32x4d.prototxt": (55, 5, "ceil_mode"),
    "rfcn_resnet101v2/deploy_rfcn_voc_resnet101-v2-merge.prototxt": (4762, 3,
                                                                     "psroi_pooling_param"),
    "ssd300_vgg16/deploy.prototxt": (817, 3, "norm_param"),
    "ssd300_vgg16/solver.prototxt": (25, 1, "eval_type"),
    "ssd300_vgg16/train.prototxt": (15, 5, "resize_param"),
}

BVLC_ROWS = [r for r in corpus_rows() if r["local_path"] not in FORK_FILES]


def _read(row):
    path = CORPUS / row["local_path"]
    return read_solver(path) if row["kind"] == "solver" else read_net(path)


# ---------------------------------------------------------------------------------------------
# The corpus
# ---------------------------------------------------------------------------------------------

@needs_corpus
@pytest.mark.parametrize("row", BVLC_ROWS, ids=lambda r: r["local_path"])
def test_corpus_file_reads_and_upgrades(row):
    result = _read(row)
    if row["kind"] == "solver":
        assert not result.HasField("solver_type")
        return
    assert len(result.layers) == 0 and len(result.input) == 0 and len(result.input_dim) == 0
    assert len(result.layer) == int(row["num_layers"]) + (1 if _declares_inputs(row) else 0)
    assert all(layer.type for layer in result.layer)


def _declares_inputs(row) -> bool:
    text = (CORPUS / row["local_path"]).read_text(encoding="utf-8", errors="replace")
    return any(line.startswith("input:") for line in text.splitlines())


@needs_corpus
@pytest.mark.parametrize("path", sorted(FORK_FILES))
def test_corpus_fork_file_fails_naming_place_and_field(path):
    line, col, name = FORK_FILES[path]
    row = next(r for r in corpus_rows() if r["local_path"] == path)
    with pytest.raises(ParseError) as info:
        _read(row)
    message = str(info.value)
    assert message.startswith(f"{CORPUS / path}:{line}:{col}: ")
    assert name in message
    assert "Caffe fork" in message
    assert "Traceback" not in message


@needs_corpus
def test_every_fork_file_is_in_the_index():
    listed = {r["local_path"] for r in corpus_rows()}
    assert set(FORK_FILES) <= listed


@needs_corpus
def test_corpus_file_text_round_trips():
    net = read_net(CORPUS / "bvlc_googlenet" / "train_val.prototxt")
    again = parse_text(net_to_text(net), caffe_pb2.NetParameter())
    assert again == net


@needs_corpus
def test_corpus_quirks_capital_false_and_no_final_newline():
    # colorization writes "bias_term: False" and has no newline at the end.
    path = CORPUS / "colorization" / "colorization_deploy_v2.prototxt"
    assert not path.read_bytes().endswith(b"\n")
    net = read_net(path)
    scale = next(layer for layer in net.layer if layer.name == "conv8_313_rh")
    assert scale.scale_param.HasField("bias_term") and not scale.scale_param.bias_term
    assert scale.scale_param.filler.value == pytest.approx(2.606)


# ---------------------------------------------------------------------------------------------
# What real files contain
# ---------------------------------------------------------------------------------------------

TINY = """name: "tiny"
layer {
  name: "data"
  type: "Input"
  top: "data"
  input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } }
}
layer {
  name: "conv1"
  type: "Convolution"
  bottom: "data"
  top: "conv1"
  param { lr_mult: 1 }
  convolution_param { num_output: 4 kernel_size: 3 bias_term: false }
}
"""


def _tiny(text) -> caffe_pb2.NetParameter:
    return parse_text(text, caffe_pb2.NetParameter(), "tiny.prototxt")


VARIANTS = {
    "crlf": TINY.replace("\n", "\r\n"),
    "lone_cr": TINY.replace("\n", "\r"),
    "capital_False": TINY.replace("bias_term: false", "bias_term: False"),
    "f": TINY.replace("bias_term: false", "bias_term: f"),
    "zero": TINY.replace("bias_term: false", "bias_term: 0"),
    "no_final_newline": TINY.rstrip("\n"),
    "comments": "# a net\n" + TINY.replace("\n", "  # note: { } 'x\"\n"),
    "bom": "\ufeff" + TINY,
    "bom_crlf_no_newline": "\ufeff" + TINY.replace("\n", "\r\n").rstrip(),
    "single_quotes": TINY.replace('"', "'"),
    "tabs": TINY.replace("  ", "\t"),
    "separators": TINY.replace('top: "data"\n', 'top: "data";\n').replace("dim: 1 ", "dim: 1, "),
    "colon_before_brace": TINY.replace("param {", "param: {"),
    "angle_brackets": TINY.replace("param { lr_mult: 1 }", "param < lr_mult: 1 >"),
    "list_syntax": TINY.replace("dim: 1 dim: 3 dim: 8 dim: 8", "dim: [1, 3, 8, 8]"),
    "float_suffix": TINY.replace("lr_mult: 1", "lr_mult: 1.0f"),
}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_text_variants_parse_to_the_same_net(name):
    assert _tiny(VARIANTS[name]) == _tiny(TINY)


@pytest.mark.parametrize("name", ["crlf", "bom", "bom_crlf_no_newline", "capital_False"])
def test_text_variants_as_bytes(name):
    assert _tiny(VARIANTS[name].encode("utf-8")) == _tiny(TINY)


def test_bytes_that_are_not_utf8_in_comments_are_accepted(caplog):
    data = TINY.encode("utf-8").replace(b'name: "tiny"', b'name: "tiny"  # caf\xe9 \xc3')
    with caplog.at_level(logging.WARNING, logger="torchcaffe"):
        assert _tiny(data) == _tiny(TINY)
    assert "not UTF-8" in caplog.text


def test_parse_text_merges_into_the_given_message():
    net = caffe_pb2.NetParameter(name="kept")
    parse_text('layer { name: "a" type: "ReLU" }', net)
    assert net.name == "kept" and net.layer[0].name == "a"


def test_positions_after_bom_and_crlf_count_from_the_visible_text():
    text = "\ufeffname: 'x'\r\nlayer {\r\n  nme: 'a'\r\n}\r\n"
    with pytest.raises(ParseError, match=r"^t\.prototxt:3:3: "):
        parse_text(text, caffe_pb2.NetParameter(), "t.prototxt")


# ---------------------------------------------------------------------------------------------
# Error messages
# ---------------------------------------------------------------------------------------------

def _error(text, source="net.prototxt", message=None) -> str:
    with pytest.raises(ParseError) as info:
        parse_text(text, message if message is not None else caffe_pb2.NetParameter(), source)
    err = info.value
    # No protobuf exception chained: the traceback ends in our code.
    assert err.__cause__ is None and (err.__context__ is None or err.__suppress_context__)
    return str(err)


def test_unknown_field_names_layer_and_suggests():
    text = ('name: "n"\nlayer {\n  name: "conv1"\n  type: "Convolution"\n'
            "  convolution_parm { num_output: 3 }\n}\n")
    assert _error(text) == (
        'net.prototxt:5:3: layer "conv1" (Convolution): LayerParameter has no field named '
        '"convolution_parm" — did you mean "convolution_param"?')


def test_unknown_nested_field_names_the_path():
    text = 'layer { name: "c" convolution_param { weight_filler { tyep: "xavier" } } }'
    message = _error(text)
    assert message.startswith('net.prototxt:1:55: layer "c": convolution_param.weight_filler: ')
    assert 'FillerParameter has no field named "tyep" — did you mean "type"?' in message


def test_unknown_field_before_the_layer_name_uses_the_layer_number():
    text = 'layer { name: "a" }\nlayer {\n  bottm: "a"\n  name: "b"\n}\n'
    assert _error(text).startswith('net.prototxt:3:3: layer #2: LayerParameter has no field '
                                   'named "bottm" — did you mean "bottom"?')


def test_unknown_top_level_field():
    message = _error("nmae: 'x'\n")
    assert message.startswith('net.prototxt:1:1: NetParameter has no field named "nmae"')
    assert 'did you mean "name"' in message


def test_unknown_field_in_v0_layer_names_the_v0_layer():
    text = 'layers {\n  layer {\n    name: "c1"\n    type: "conv"\n    kernelsiz: 3\n  }\n}\n'
    assert _error(text) == ('net.prototxt:5:5: layer "c1" (conv): V0LayerParameter has no '
                            'field named "kernelsiz" — did you mean "kernelsize"?')


def test_bad_enum_value():
    text = 'layer {\n  name: "pool1"\n  type: "Pooling"\n  pooling_param {\n    pool: MAXX\n  }\n}'
    assert _error(text) == (
        'net.prototxt:5:11: layer "pool1" (Pooling): pooling_param.pool: PoolMethod has no '
        'value MAXX — did you mean "MAX"? (expected one of MAX, AVE, STOCHASTIC)')


def test_bad_enum_number():
    message = _error('layer { name: "p" pooling_param { pool: 7 } }')
    assert message.startswith("net.prototxt:1:41: ")
    assert "pooling_param.pool" in message and "number 7" in message


@pytest.mark.parametrize("value, words", [
    ('"a"', "integer"), ("6.5", "integer"), ("-1", "out of range"),
    ("99999999999", "out of range")])
def test_bad_integer_values(value, words):
    message = _error(f'layer {{ name: "c" convolution_param {{ num_output: {value} }} }}')
    assert message.startswith('net.prototxt:1:51: layer "c": convolution_param.num_output: ')
    assert words in message and value in message


def test_bad_float_value():
    message = _error('layer { name: "c" param { lr_mult: abc } }')
    assert message.startswith('net.prototxt:1:36: layer "c": param.lr_mult: ')
    assert "float" in message and "abc" in message


@pytest.mark.parametrize("value", ["yes", "TRUE", "2"])
def test_bad_bool_value(value):
    message = _error(f'layer {{ name: "c" convolution_param {{ bias_term: {value} }} }}')
    assert message.startswith('net.prototxt:1:50: layer "c": convolution_param.bias_term: ')
    assert value in message


def test_unquoted_string_value():
    message = _error('layer {\n  name: conv1\n}\n')
    assert message.startswith("net.prototxt:2:9: layer #1: name: ")
    assert "string" in message


def test_missing_closing_brace_at_end_of_file():
    text = 'name: "n"\nlayer {\n  name: "c"\n  pooling_param {\n    pool: MAX\n'
    message = _error(text)
    assert message.startswith("net.prototxt:5:11: unbalanced braces: ")
    assert 'layer "c" opened at 2:1' in message and '2 closing "}" missing' in message


def test_missing_closing_brace_in_the_middle_hints_at_it():
    text = ('layer {\n  name: "a"\n  convolution_param {\n    num_output: 1\n}\n'
            'layer {\n  name: "b"\n}\n')
    message = _error(text)
    assert message.startswith('net.prototxt:6:1: layer "a": LayerParameter has no field named '
                              '"layer"')
    assert 'is a "}" missing?' in message and "opened at 1:1" in message


def test_extra_closing_brace():
    assert _error('layer { name: "c" }\n}\n') == (
        'net.prototxt:2:1: unbalanced braces: "}" closes nothing (no block is open here)')


def test_truncated_file():
    message = _error('layer {\n  name: "c"\n  type:')
    assert message.startswith('net.prototxt:3:8: layer "c": type: the file ends too early')


def test_truncated_string():
    message = _error('layer { name: "c')
    assert message.startswith("net.prototxt:1:15: layer #1: name: ")
    assert "quote" in message


def test_missing_colon():
    assert _error('layer { name "c" }') == (
        'net.prototxt:1:14: layer #1: name: Expected ":", found "c"')


def test_scalar_given_for_message_field():
    message = _error('layer { name: "c" convolution_param: 3 }')
    assert message.startswith('net.prototxt:1:38: layer "c": convolution_param: ')
    assert "{" in message


def test_non_repeated_field_given_twice():
    message = _error('layer { name: "c" type: "ReLU" type: "TanH" }')
    assert message.startswith('net.prototxt:1:38: layer "c" (ReLU): ')
    assert 'field "type" is given more than once' in message


def test_missing_required_field():
    text = 'layer {\n  name: "clip"\n  type: "Clip"\n  clip_param { min: 0 }\n}\n'
    assert _error(text) == ('net.prototxt:4:3: layer "clip" (Clip): clip_param: ClipParameter '
                            'is missing its required field "max"')


def test_solver_errors_name_the_solver_field():
    message = _error("base_lr: 0.01\nlr_policy: step\n", "solver.prototxt",
                     caffe_pb2.SolverParameter())
    assert message.startswith("solver.prototxt:2:12: lr_policy: ")


# ---------------------------------------------------------------------------------------------
# read_net / read_solver
# ---------------------------------------------------------------------------------------------

V1_NET = """name: "v1"
input: "data"
input_dim: 1 input_dim: 1 input_dim: 4 input_dim: 4
layers { name: "ip" type: INNER_PRODUCT bottom: "data" top: "ip"
         blobs_lr: 1 blobs_lr: 2 inner_product_param { num_output: 2 } }
"""


def _check_v1_net_upgraded(net):
    assert [layer.type for layer in net.layer] == ["Input", "InnerProduct"]
    assert [p.lr_mult for p in net.layer[1].param] == [1, 2]


def test_read_net_from_path_text_bytes_and_pathlike(tmp_path):
    path = tmp_path / "v1.prototxt"
    path.write_text(V1_NET)
    for source in (str(path), path, V1_NET, V1_NET.encode()):
        _check_v1_net_upgraded(read_net(source))


def test_read_net_reads_binary_files(tmp_path):
    net = parse_text(V1_NET, caffe_pb2.NetParameter())
    net.layers[0].blobs.add().data.extend([0.5] * 8)
    path = tmp_path / "v1.caffemodel"
    path.write_bytes(net.SerializeToString())
    upgraded = read_net(path)
    _check_v1_net_upgraded(upgraded)
    assert list(upgraded.layer[1].blobs[0].data) == [0.5] * 8


def test_read_net_damaged_binary(tmp_path):
    path = tmp_path / "bad.caffemodel"
    path.write_bytes(b"\x0a\xff\xff\xff\x0f\x01\x02\xfe")
    with pytest.raises(ParseError, match=r"bad\.caffemodel: neither text format nor a valid "
                                         r"binary NetParameter"):
        read_net(path)


def test_read_net_missing_file():
    with pytest.raises(ParseError, match=r"^/no/such/dir/net\.prototxt: no such file$"):
        read_net("/no/such/dir/net.prototxt")


def test_read_net_errors_name_the_file(tmp_path):
    path = tmp_path / "net.prototxt"
    path.write_text('layer {\n  name: "a"\n  typ: "ReLU"\n}\n')
    with pytest.raises(ParseError, match=rf"^{path}:3:3: layer \"a\": "):
        read_net(path)


def test_read_net_accepts_a_net_parameter():
    net = parse_text(V1_NET, caffe_pb2.NetParameter())
    _check_v1_net_upgraded(read_net(net))


def test_read_solver_upgrades_type_and_snapshot_prefix(tmp_path):
    path = tmp_path / "solver.prototxt"
    path.write_text('net: "train.prototxt"\nbase_lr: 0.001\nsolver_type: ADAM\r\n')
    solver = read_solver(path)
    assert solver.type == "Adam" and not solver.HasField("solver_type")
    assert solver.snapshot_prefix == str(tmp_path / "solver")


def test_read_solver_snapshot_prefix_directory(tmp_path):
    (tmp_path / "snaps").mkdir()
    path = tmp_path / "s.prototxt"
    path.write_text(f'snapshot_prefix: "{tmp_path / "snaps"}/"\n')
    assert read_solver(path).snapshot_prefix == str(tmp_path / "snaps" / "s")


def test_read_solver_from_text_keeps_snapshot_prefix_unset():
    solver = read_solver('type: "SGD"\nbase_lr: 0.1\n')
    assert not solver.HasField("snapshot_prefix")


@needs_corpus
def test_read_solver_corpus_adam():
    solver = read_solver(CORPUS / "bvlc_legacy_v1" / "lenet_solver_adam.prototxt")
    assert solver.type == "Adam" and not solver.HasField("solver_type")


@needs_corpus
def test_read_solver_upgrades_inline_v1_net():
    solver = read_solver(CORPUS / "bvlc_mnist" / "lenet_consolidated_solver.prototxt")
    assert len(solver.net_param.layers) == 0
    assert [layer.type for layer in solver.net_param.layer][:2] == ["Data", "Data"]


# ---------------------------------------------------------------------------------------------
# Writing text
# ---------------------------------------------------------------------------------------------

def test_net_to_text_layout_matches_caffe():
    net = _tiny(TINY)
    net.layer[1].param[0].decay_mult = 0.0001
    net.layer[1].convolution_param.weight_filler.std = 0.1
    assert net_to_text(net) == """name: "tiny"
layer {
  name: "data"
  type: "Input"
  top: "data"
  input_param {
    shape {
      dim: 1
      dim: 3
      dim: 8
      dim: 8
    }
  }
}
layer {
  name: "conv1"
  type: "Convolution"
  bottom: "data"
  top: "conv1"
  param {
    lr_mult: 1
    decay_mult: 0.0001
  }
  convolution_param {
    num_output: 4
    bias_term: false
    kernel_size: 3
    weight_filler {
      std: 0.1
    }
  }
}
"""


def test_net_to_text_escapes_strings_like_caffe():
    net = caffe_pb2.NetParameter(name='a"b\\c\nd\'é')
    assert net_to_text(net) == 'name: "a\\"b\\\\c\\nd\\\'\\303\\251"\n'
    assert parse_text(net_to_text(net), caffe_pb2.NetParameter()) == net


@pytest.mark.parametrize("value, text", [
    (1.0, "1"), (0.1, "0.1"), (0.0001, "0.0001"), (1e-05, "1e-05"), (0.00390625, "0.00390625"),
    (1 / 3, "0.333333343"), (-0.0, "-0"), (1e10, "1e+10"), (float("inf"), "inf"),
    (float("-inf"), "-inf"), (float("nan"), "nan"), (0.75, "0.75"), (255.0, "255")])
def test_format_float_like_protobuf_cpp(value, text):
    assert format_float(value) == text


def test_format_double_like_protobuf_cpp():
    assert format_double(0.1) == "0.1"
    assert format_double(1 / 3) == "0.33333333333333331"
    assert format_double(2.0) == "2"
