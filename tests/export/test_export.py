"""ONNX and PyTorch-source export, checked against torchcaffe.

* every deploy net of ``../shared/corpus`` (TEST phase, fed by Input layers) that runs: the ONNX
  model in onnxruntime within 1e-4 and the generated module within 1e-5 of torchcaffe (relative
  to each output's largest value), on random weights and inputs other than the ones traced; the
  generated file compiles (``py_compile``) and imports nothing but torch and safetensors. A net
  that cannot be exported must fail with the ``ExportError`` that ``CANNOT_EXPORT`` states;
* every sample of every layer type that has a PyTorch-source hook, both ways;
* the batch axis of the ONNX models is dynamic; the errors name the layer and write nothing.

The terminal summary (``tests/conftest.py``) prints ``N/M nets export`` for each exporter: the
deploy nets whose test passed, less the ones ``CANNOT_EXPORT`` lists for it.
"""
from __future__ import annotations

import ast
import py_compile

import numpy as np
import pytest
import torch

import torchcaffe
from torchcaffe.export import ExportError, export_onnx, export_pytorch, load_generated
from torchcaffe.export.common import plan_export, reference_outputs, relative_error
from torchcaffe.export.to_onnx import onnx_output_name, run_onnx
from torchcaffe.layers import registered_layers

from ..conftest import REPO, requires_shared, shared_dir
from ..corpus import IMAGE_SHAPES, build, corpus_nets, fill_inputs
from ..layers import harness

ROOT = shared_dir("corpus")
PYTHON_STANDINS = REPO / "tests" / "corpus_python"
ONNX_TOLERANCE, PYTORCH_TOLERANCE = 1e-4, 1e-5
DATA_TYPES = {"Data", "ImageData", "WindowData", "HDF5Data", "MemoryData", "AnnotatedData", "DummyData"}
NETS = corpus_nets(ROOT) if (ROOT / "INDEX.tsv").is_file() else []
#: Deploy nets: TEST phase, their data fed through Input layers (no data layer, no loss).
DEPLOY = [n for n in NETS if n.relative not in IMAGE_SHAPES and not n.is_train_net
          and not n.layer_types & DATA_TYPES]

_DETECTION = "DetectionOutput"
_PYTHON = "Python"
#: Nets that cannot be exported, and the layer type whose ExportError says why, per exporter.
CANNOT_EXPORT = {
    "mobilenet_ssd/MobileNetSSD_deploy.prototxt": {"onnx": _DETECTION, "pytorch": _DETECTION},
    "opencv_face_detector/deploy.prototxt": {"onnx": _DETECTION, "pytorch": _DETECTION},
    "opencv_face_detector/deploy.prototxt.txt": {"onnx": _DETECTION, "pytorch": _DETECTION},
    "ssd300_vgg16/deploy.prototxt": {"onnx": _DETECTION, "pytorch": _DETECTION},
    "faster_rcnn_vgg16/test.prototxt": {"onnx": _PYTHON, "pytorch": _PYTHON},
    "rfcn_resnet101v2/deploy_rfcn_voc_resnet101-v2-merge.prototxt": {"onnx": _PYTHON, "pytorch": _PYTHON},
}
#: Smaller inputs (height = width) for nets whose every layer allows them, to keep the suite fast.
SMALLER = {
    "bvlc_net_surgery/bvlc_caffenet_full_conv.prototxt": 227,
    "bvlc_net_surgery/conv.prototxt": 32,
    "colorization/colorization_deploy_v2.prototxt": 96,
    "fast_rcnn_zf/test.prototxt": 128,
    "fcn8s/deploy.prototxt": 128,
    "hed/deploy.prototxt": 128,
    "mobilenet_v1/mobilenet_deploy.prototxt": 128,
    "mobilenet_v2/mobilenet_v2_deploy.prototxt": 128,
    "resnext50/deploy_resnext50-32x4d.prototxt": 128,
    "squeezenet_v1.1/deploy.prototxt": 128,
}
#: Input scales for nets whose random-weight logits would otherwise be huge (no normalization in
#: PSPNet's merged ResNet: the activations double at every residual sum), where a softmax output
#: becomes a near-tie lottery that no two float32 implementations agree on. The nets are
#: positively homogeneous up to their softmax (ReLU, convolutions without bias, linear resizing),
#: so a smaller input only scales the logits down.
INPUT_SCALE = {"pspnet_resnet101v2/deploy_psp_resnet101-v2-merge.prototxt": 1e-6,
               "senet/SE-ResNeXt-50.prototxt": 1e-2}


def deploy_net(net_file, batch: int = 1) -> torchcaffe.Net:
    """The corpus net with random weights, its inputs cut to ``batch`` (and ``SMALLER``)."""
    net, _ = build(net_file, torchcaffe.TEST)
    size = SMALLER.get(net_file.relative)
    for name in net.inputs:
        shape = list(net.blobs[name].shape)
        if len(shape) > 1 and name != "rois":
            shape[0] = batch
        if size and len(shape) == 4 and shape[2] > 1:
            shape[2:] = [size, size]
        net.blobs[name].reshape(*shape)
    net.reshape()
    return net


def net_inputs(net: torchcaffe.Net, relative: str, seed: int = 7) -> dict[str, torch.Tensor]:
    """Values for the inputs (the corpus's kinds; a real box for Fast R-CNN's ROIs), scaled by
    ``INPUT_SCALE``; drawn with another seed than the exporters' own sample inputs."""
    fill_inputs(net, {}, np.random.default_rng(seed))
    values = {name: torch.from_numpy(np.array(net.blobs[name].data, dtype=np.float32)) for name in net.inputs}
    if "rois" in values:
        height, width = net.blobs["data"].shape[2:]
        values["rois"] = torch.tensor([[0, 8, 12, width - 20, height - 30]], dtype=torch.float32)
    scale = INPUT_SCALE.get(relative)
    if scale and "data" in values:
        values["data"] = values["data"] * scale
    return values


def check_generated_file(path) -> None:
    """``python -m py_compile`` passes, and the only imports are torch and safetensors (no
    ``import torchcaffe`` anywhere, functions included)."""
    py_compile.compile(str(path), doraise=True)
    tree = ast.parse(path.read_text())
    modules = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    modules |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert modules and all(m.split(".")[0] in ("torch", "safetensors") for m in modules), modules


def expect_refusal(export, type_name: str, **kwargs) -> str:
    with pytest.raises(ExportError) as caught:
        export(**kwargs)
    message = str(caught.value)
    assert f"({type_name})" in message and "layer " in message, message
    return message


def onnx_vs_torchcaffe(net, inputs, path, **kwargs) -> dict[str, float]:
    model = export_onnx(net, out_path=path, verify=False, **kwargs)
    assert path.is_file()
    plan = plan_export(net, kwargs.get("outputs"))
    got = run_onnx(model.SerializeToString(), inputs)
    expected = reference_outputs(plan, inputs)
    return {name: relative_error(got[onnx_output_name(plan, name)], expected[name]) for name in plan.outputs}


def pytorch_vs_torchcaffe(net, inputs, out_dir, **kwargs) -> dict[str, float]:
    path = export_pytorch(net, out_dir=out_dir, verify=False, **kwargs)
    check_generated_file(path)
    assert (out_dir / "weights.safetensors").is_file()
    plan = plan_export(net, kwargs.get("outputs"))
    module = load_generated(out_dir)
    with torch.no_grad():
        got = module(*(inputs[name] for name in plan.inputs))
    got = got if isinstance(got, dict) else {plan.outputs[0]: got}
    expected = reference_outputs(plan, inputs)
    return {name: relative_error(got[name].numpy(), expected[name]) for name in plan.outputs}


# ------------------------------------------------------------------------------------------------
# The corpus
# ------------------------------------------------------------------------------------------------
@requires_shared
@pytest.mark.parametrize("net_file", DEPLOY, ids=[n.relative for n in DEPLOY])
def test_deploy_net_exports(net_file, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(PYTHON_STANDINS))
    monkeypatch.chdir(tmp_path)
    net = deploy_net(net_file)
    refused = CANNOT_EXPORT.get(net_file.relative, {})
    inputs = net_inputs(net, net_file.relative)
    if "onnx" in refused:
        expect_refusal(export_onnx, refused["onnx"], net=net, out_path=tmp_path / "model.onnx", verify=False)
        assert not (tmp_path / "model.onnx").exists()
    else:
        errors = onnx_vs_torchcaffe(net, inputs, tmp_path / "model.onnx")
        assert max(errors.values()) <= ONNX_TOLERANCE, errors
    if "pytorch" in refused:
        expect_refusal(export_pytorch, refused["pytorch"], net=net, out_dir=tmp_path / "pt", verify=False)
        assert not (tmp_path / "pt" / "model.py").exists()
    else:
        errors = pytorch_vs_torchcaffe(net, inputs, tmp_path / "pt")
        assert max(errors.values()) <= PYTORCH_TOLERANCE, errors


@requires_shared
def test_export_coverage_list_names_deploy_nets():
    """``CANNOT_EXPORT`` (which the terminal summary's ``N/M nets export`` lines subtract) names only
    deploy nets of the corpus, and the corpus holds enough of them to mean something."""
    assert len(DEPLOY) > 30
    assert set(CANNOT_EXPORT) <= {n.relative for n in DEPLOY}


@requires_shared
@pytest.mark.parametrize("relative, outputs", [
    ("bvlc_mnist/lenet.prototxt", None),
    ("squeezenet_v1.1/deploy.prototxt", None),
    ("bvlc_googlenet/deploy.prototxt", None),
    ("mobilenet_ssd/MobileNetSSD_deploy.prototxt", ["mbox_loc", "mbox_conf_flatten", "mbox_priorbox"]),
])
def test_onnx_batch_axis_is_dynamic(relative, outputs, tmp_path):
    """Exported at batch 1, run at batch 3; an SSD net exports up to its DetectionOutput's bottoms
    (Reshape, Flatten, Permute, PriorBox and Concat keep the batch symbolic)."""
    net_file = next(n for n in DEPLOY if n.relative == relative)
    net = deploy_net(net_file, batch=1)
    model = export_onnx(net, out_path=tmp_path / "m.onnx", outputs=outputs, verify=False)
    first = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert first.dim_param == "batch"
    plan = plan_export(net, outputs)
    generator = torch.Generator().manual_seed(3)
    inputs = {name: torch.rand((3,) + tuple(net.blobs[name].shape)[1:], generator=generator) for name in net.inputs}
    got = run_onnx(model.SerializeToString(), inputs)
    expected = reference_outputs(plan, inputs)
    for name in plan.outputs:
        assert got[name].shape == expected[name].shape
        assert relative_error(got[name], expected[name]) <= ONNX_TOLERANCE, name


# ------------------------------------------------------------------------------------------------
# Every layer's samples
# ------------------------------------------------------------------------------------------------
def _exportable_samples():
    for type_name, cls in sorted(registered_layers().items()):
        if getattr(cls, "export_source", None) is None or cls.type != type_name:
            continue
        for index, sample in enumerate(cls.samples):
            yield pytest.param(type_name, index, id=f"{type_name}-{index}")


@pytest.mark.parametrize("type_name, index", list(_exportable_samples()))
def test_layer_sample_exports(type_name, index, tmp_path):
    """Each sample as a one-layer TEST net: exported both ways and compared, or refused with an
    ExportError naming the layer (a configuration the hook says it cannot write)."""
    sample = registered_layers()[type_name].samples[index]
    torch.manual_seed(0)
    net = torchcaffe.Net(harness.net_param(type_name, sample), torchcaffe.TEST)
    values = harness.bottom_values(type_name, sample, index)
    inputs = {name: torch.tensor(array, dtype=torch.float32) for name, array in values.items()}
    for run, tolerance, where in ((onnx_vs_torchcaffe, ONNX_TOLERANCE, tmp_path / "m.onnx"),
                                  (pytorch_vs_torchcaffe, PYTORCH_TOLERANCE, tmp_path / "pt")):
        try:
            errors = run(net, inputs, where)
        except ExportError as error:
            assert 'layer "under_test"' in str(error), error
            continue
        assert max(errors.values()) <= tolerance, errors


def test_every_type_in_deploy_nets_has_a_source_hook():
    """The layer types the corpus's deploy nets use (but Input/Silence/Python) write PyTorch source."""
    used = {t for n in DEPLOY for t in n.layer_types} - {"Input", "Silence", "Python", "DetectionOutput"}
    missing = sorted(t for t in used if t in registered_layers()
                     and getattr(registered_layers()[t], "export_source", None) is None)
    assert not missing


# ------------------------------------------------------------------------------------------------
# Errors and details
# ------------------------------------------------------------------------------------------------
LENET = """
    name: "LeNet"
    layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 1 dim: 28 dim: 28 } } }
    layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
            convolution_param { num_output: 20 kernel_size: 5 weight_filler { type: "xavier" } } }
    layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
    layer { name: "ip1" type: "InnerProduct" bottom: "pool1" top: "ip1"
            inner_product_param { num_output: 50 weight_filler { type: "xavier" } } }
    layer { name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }
    layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
            inner_product_param { num_output: 10 weight_filler { type: "xavier" } } }
    layer { name: "prob" type: "Softmax" bottom: "ip2" top: "prob" }
"""


def test_unknown_output_is_refused_and_nothing_is_written(tmp_path):
    net = harness.net_from(LENET, torchcaffe.TEST)
    with pytest.raises(ExportError, match="no blob named 'nope'"):
        export_onnx(net, out_path=tmp_path / "m.onnx", outputs=["nope"])
    with pytest.raises(ExportError, match="no blob named 'nope'"):
        export_pytorch(net, out_dir=tmp_path / "pt", outputs=["nope"])
    assert not list(tmp_path.rglob("*.*"))


def test_data_layers_are_refused(tmp_path):
    net = harness.net_from("""
        layer { name: "x" type: "DummyData" top: "x" dummy_data_param { shape { dim: 2 dim: 3 } } }
        layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y" inner_product_param { num_output: 2 } }
    """, torchcaffe.TEST)
    message = expect_refusal(export_onnx, "DummyData", net=net, out_path=tmp_path / "m.onnx")
    assert "Input layers" in message


def test_layer_without_source_hook_is_named(tmp_path):
    net = harness.net_from("""
        layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 4 dim: 3 } } }
        layer { name: "arg" type: "ArgMax" bottom: "x" top: "y" }
    """, torchcaffe.TEST)
    message = expect_refusal(export_pytorch, "ArgMax", net=net, out_dir=tmp_path / "pt")
    assert "outputs=" in message


def test_outputs_cut_the_net_and_names_follow_caffe(tmp_path):
    """Export up to a blob; ONNX nodes and weights carry the Caffe layer names, the generated
    forward reads one line per layer with in-place layers as reassignments."""
    net = harness.net_from(LENET, torchcaffe.TEST)
    model = export_onnx(net, out_path=tmp_path / "m.onnx", outputs=["ip1"])
    assert [o.name for o in model.graph.output] == ["ip1"]
    assert {"conv1.weight", "ip1.bias"} <= {t.name for t in model.graph.initializer}
    assert any(node.name.startswith("conv1/") for node in model.graph.node)
    path = export_pytorch(net, out_dir=tmp_path / "pt")
    text = path.read_text()
    assert "self.conv1 = nn.Conv2d(1, 20, kernel_size=5)" in text
    assert "ip1 = F.relu(ip1)  # relu1" in text
    assert "INPUT_SHAPES = {'data': (2, 1, 28, 28)}" in text


def test_generated_names_are_python_identifiers(tmp_path):
    net = harness.net_from("""
        layer { name: "in" type: "Input" top: "1x/data" input_param { shape { dim: 2 dim: 3 } } }
        layer { name: "conv1/7x7 s2" type: "InnerProduct" bottom: "1x/data" top: "class"
                inner_product_param { num_output: 2 weight_filler { type: "gaussian" } } }
        layer { name: "forward" type: "ReLU" bottom: "class" top: "class" }
    """, torchcaffe.TEST)
    path = export_pytorch(net, out_dir=tmp_path / "pt")
    text = path.read_text()
    assert "self.conv1_7x7_s2 = nn.Linear(3, 2)  # conv1/7x7 s2" in text
    assert "def forward(self, _1x_data):" in text
    assert "class_ = F.relu(class_)  # forward" in text
    check_generated_file(path)


def test_in_place_after_a_fan_out_keeps_the_other_reader(tmp_path):
    """A blob read by two layers, one of them rewriting it in place: the other still sees the
    value before the rewrite (the generated code must not reuse the variable)."""
    net = harness.net_from("""
        layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
        layer { name: "neg" type: "Power" bottom: "x" top: "x" power_param { scale: -1 } }
        layer { name: "relu" type: "ReLU" bottom: "x" top: "r" }
        layer { name: "abs" type: "AbsVal" bottom: "x" top: "a" }
        layer { name: "sum" type: "Eltwise" bottom: "r" bottom: "a" bottom: "x" top: "s" }
    """, torchcaffe.TEST)
    inputs = {"x": torch.randn(2, 3)}
    for run, where in ((pytorch_vs_torchcaffe, tmp_path / "pt"), (onnx_vs_torchcaffe, tmp_path / "m.onnx")):
        assert max(run(net, inputs, where).values()) == 0.0


def test_batchnorm_scale_factor_is_folded(tmp_path):
    net = harness.net_from("""
        layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 2 dim: 2 } } }
        layer { name: "bn" type: "BatchNorm" bottom: "x" top: "x" }
    """, torchcaffe.TEST)
    mean, var, factor = net.params["bn"]
    mean.data[...], var.data[...], factor.data[...] = [2.0, 4.0, 6.0], [8.0, 2.0, 4.0], 2.0
    model = export_onnx(net, out_path=tmp_path / "m.onnx")
    assert [n.op_type for n in model.graph.node] == ["BatchNormalization"]
    stats = {t.name: t for t in model.graph.initializer}
    assert len(stats) >= 2
    path = export_pytorch(net, out_dir=tmp_path / "pt")
    module = load_generated(tmp_path / "pt")
    assert module.bn.mean.tolist() == [1.0, 2.0, 3.0] and module.bn.var.tolist() == [4.0, 1.0, 2.0]
    assert "BatchNorm(3, eps=1e-05)" in path.read_text()


def test_export_checks_its_result_by_default(tmp_path):
    """``verify`` runs onnxruntime / the generated module against torchcaffe (here: it passes)."""
    net = harness.net_from(LENET, torchcaffe.TEST)
    export_onnx(net, out_path=tmp_path / "m.onnx")
    export_pytorch(net, out_dir=tmp_path / "pt")
    assert (tmp_path / "m.onnx").stat().st_size > 1000
