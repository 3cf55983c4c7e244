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


# Corpus files that do not parse as they are: (line, column, field) of the error, and why. The
# DeepLab files are templates of martinkersner/train-DeepLab: a shell script substitutes
# ${VAR} placeholders before Caffe reads them, and an unquoted one is not a valid value.
# Every other file, fork files included (docs/schema.md), must parse.
EXPECTED_PARSE_ERRORS = {
    "deeplab_largefov/test.prototxt": (400, 17, "num_output",
                                       "unsubstituted ${NUM_LABELS} placeholder"),
    "deeplab_largefov/train.prototxt": (473, 17, "num_output",
                                        "unsubstituted ${NUM_LABELS} placeholder"),
}

READABLE_ROWS = [r for r in corpus_rows() if r["local_path"] not in EXPECTED_PARSE_ERRORS]


def _read(row):
    path = CORPUS / row["local_path"]
    return read_solver(path) if row["kind"] == "solver" else read_net(path)


# ---------------------------------------------------------------------------------------------
# The corpus
# ---------------------------------------------------------------------------------------------

@needs_corpus
@pytest.mark.parametrize("row", READABLE_ROWS, ids=lambda r: r["local_path"])
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
@pytest.mark.parametrize("path", sorted(EXPECTED_PARSE_ERRORS))
def test_corpus_placeholder_file_fails_naming_place_and_field(path):
    line, col, name, _why = EXPECTED_PARSE_ERRORS[path]
    row = next(r for r in corpus_rows() if r["local_path"] == path)
    with pytest.raises(ParseError) as info:
        _read(row)
    message = str(info.value)
    assert message.startswith(f"{CORPUS / path}:{line}:{col}: ")
    assert name in message and "$" in message
    assert "Traceback" not in message


@needs_corpus
def test_every_expected_failure_is_in_the_index():
    listed = {r["local_path"] for r in corpus_rows()}
    assert set(EXPECTED_PARSE_ERRORS) <= listed


@needs_corpus
@pytest.mark.parametrize("path", sorted(EXPECTED_PARSE_ERRORS))
def test_corpus_deeplab_template_reads_once_substituted(path):
    # With the placeholder filled in, the V1 DeepLab net parses and upgrades to DeepLab v2's
    # layer types.
    text = (CORPUS / path).read_text().replace("${NUM_LABELS}", "21")
    net = read_net(text)
    types = {layer.type for layer in net.layer}
    assert {"ImageSegData", "Interp"} <= types
    assert all(layer.type for layer in net.layer)


# ---------------------------------------------------------------------------------------------
# The superset schema: fork fields parse by name
# ---------------------------------------------------------------------------------------------

FORK_SNIPPETS = {
    "SSD": """layer { name: "mbox" type: "MultiBoxLoss" bottom: "a" top: "l"
        multibox_loss_param { loc_loss_type: SMOOTH_L1 conf_loss_type: SOFTMAX num_classes: 21
          match_type: PER_PREDICTION mining_type: MAX_NEGATIVE code_type: CENTER_SIZE } }
      layer { name: "data" type: "AnnotatedData" top: "data"
        transform_param { resize_param { prob: 1 resize_mode: WARP height: 300 width: 300
            interp_mode: LINEAR interp_mode: CUBIC }
          emit_constraint { emit_type: CENTER } distort_param { brightness_prob: 0.5 }
          expand_param { prob: 0.5 max_expand_ratio: 4 } }
        annotated_data_param { batch_sampler { sampler { min_scale: 0.3 }
            sample_constraint { min_jaccard_overlap: 0.1 } max_trials: 50 }
          label_map_file: "labelmap.prototxt" } }
      layer { name: "pb" type: "PriorBox" prior_box_param { min_size: 30 max_size: 60
          aspect_ratio: 2 flip: true clip: false variance: 0.1 step: 8 offset: 0.5 } }
      layer { name: "p" type: "Permute" permute_param { order: 0 order: 2 order: 3 order: 1 } }
      layer { name: "n" type: "Normalize" norm_param { across_spatial: false
          scale_filler { type: "constant" value: 20 } channel_shared: false } }
      layer { name: "d" type: "DetectionOutput" detection_output_param { num_classes: 21
          nms_param { nms_threshold: 0.45 top_k: 400 } code_type: CENTER_SIZE keep_top_k: 200
          confidence_threshold: 0.01 clip: true } }""",
    "Faster R-CNN": """layer { name: "r" type: "ROIPooling" roi_pooling_param { pooled_w: 7
        pooled_h: 7 spatial_scale: 0.0625 } }
      layer { name: "s" type: "SmoothL1Loss" smooth_l1_loss_param { sigma: 3 } }
      layer { name: "d" type: "Dropout" dropout_param { scale_train: false } }""",
    "R-FCN": """layer { name: "p" type: "PSROIPooling" psroi_pooling_param { spatial_scale: 0.0625
        output_dim: 21 group_size: 7 } }
      layer { name: "l" type: "SoftmaxWithLoss" loss_param { normalization: PRE_FIXED
        pre_fixed_normalizer: 128 } }""",
    "DeepLab/PSPNet": """layer { name: "i" type: "Interp" interp_param { zoom_factor: 8 } }
      layer { name: "bn" type: "BN" bn_param { slope_filler { value: 1 } frozen: true } }
      layer { name: "c" type: "Convolution" convolution_param { num_output: 1 kernel_size: 3
        hole: 2 } }
      layer { name: "d" type: "ImageSegData" image_data_param { label_type: PIXEL
        ignore_label: 255 } transform_param { scale_factors: 0.5 scale_factors: 1.5 } }""",
    "SegNet": """layer { name: "u" type: "Upsample" upsample_param { scale: 2 upsample_h: 45 } }
      layer { name: "bn" type: "BN" bn_param { bn_mode: INFERENCE scale_filler { value: 1 } } }
      layer { name: "l" type: "SoftmaxWithLoss" loss_param { weight_by_label_freqs: true
        class_weighting: 0.2 class_weighting: 0.8 } }""",
    "ShuffleNet": """layer { name: "s" type: "ShuffleChannel" shuffle_channel_param { group: 3 } }""",
    "ResNeXt/DenseNet": """layer { name: "p" type: "Pooling" pooling_param { pool: MAX
        kernel_size: 3 stride: 2 ceil_mode: false } }""",
}


@pytest.mark.parametrize("fork", sorted(FORK_SNIPPETS))
def test_fork_fields_parse(fork):
    net = parse_text(FORK_SNIPPETS[fork], caffe_pb2.NetParameter(), "fork.prototxt")
    assert len(net.layer) >= 1
    assert parse_text(net_to_text(net), caffe_pb2.NetParameter()) == net


def test_ssd_solver_fields_parse():
    solver = read_solver('eval_type: "detection"\nap_version: "11point"\n'
                         "show_per_class_result: true\n")
    assert (solver.eval_type, solver.ap_version, solver.show_per_class_result) == (
        "detection", "11point", True)
    assert caffe_pb2.SolverParameter().eval_type == "classification"


@pytest.mark.parametrize("message, field, number", [
    # BVLC numbers stay; fork numbers that collided with BVLC (or with an earlier fork) moved
    # to torchcaffe's 20000+ range; docs/schema.md has the full table.
    ("LayerParameter", "embed_param", 137), ("LayerParameter", "clip_param", 148),
    ("LayerParameter", "annotated_data_param", 200), ("LayerParameter", "roi_pooling_param", 8266711),
    ("LayerParameter", "psroi_pooling_param", 10001), ("LayerParameter", "interp_param", 20000),
    ("LayerParameter", "bn_param", 152), ("LayerParameter", "upsample_param", 20006),
    ("LayerParameter", "l2_norm_param", 21000), ("SolverParameter", "eval_type", 20000),
    ("SolverParameter", "layer_wise_reduce", 41), ("PoolingParameter", "ceil_mode", 20000),
    ("PoolingParameter", "round_mode", 13), ("ParamSpec", "max_norm", 21000),
    ("ParamSpec", "max_norm_axis", 21001), ("V1LayerParameter", "loss_param", 42),
    ("V1LayerParameter", "seg_accuracy_param", 20000)])
def test_field_numbers(message, field, number):
    assert getattr(caffe_pb2, message).DESCRIPTOR.fields_by_name[field].number == number


def test_torchcaffe_fields_and_defaults():
    spec = caffe_pb2.ParamSpec()
    assert (spec.max_norm, spec.max_norm_axis) == (0.0, 0)
    l2 = caffe_pb2.L2NormParameter()
    assert (list(l2.axis), l2.scale, l2.channel_shared) == ([], False, False)
    assert l2.eps == pytest.approx(1e-10)
    net = _tiny('layer { name: "n" type: "L2Norm" param { max_norm: 2 max_norm_axis: 1 }\n'
                "  l2_norm_param { axis: 1 axis: 2 eps: 1e-6 scale: true\n"
                '    scale_filler { type: "constant" value: 20 } channel_shared: true } }\n')
    assert list(net.layer[0].l2_norm_param.axis) == [1, 2]
    assert net.layer[0].param[0].max_norm == 2


@needs_corpus
@pytest.mark.parametrize("path", ["ssd300_vgg16/train.prototxt",
                                  "opencv_face_detector/deploy.prototxt",
                                  "rfcn_resnet101v2/deploy_rfcn_voc_resnet101-v2-merge.prototxt"])
def test_corpus_fork_file_text_round_trips(path):
    net = read_net(CORPUS / path)
    assert parse_text(net_to_text(net), caffe_pb2.NetParameter()) == net


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
