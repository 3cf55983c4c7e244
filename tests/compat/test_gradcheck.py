"""GradientChecker with Caffe's semantics, on registered layers, Python layers of both styles
and whole nets; seed 001's wrong BatchNorm backward caught; the `gradcheck` verb."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import torchcaffe as caffe
from torchcaffe.cli import main as cli
from torchcaffe.gradcheck import GradientChecker, make_layer
from torchcaffe.layers.python import Python

from .pylayers import BatchNormRight, BatchNormSeed001, EuclideanLoss, L2Norm, LearnedScale, TimesTen

RNG = np.random.default_rng(1701)
X = RNG.standard_normal((2, 3, 3, 2))


@pytest.fixture
def checker():
    return GradientChecker(stepsize=1e-2, threshold=1e-3)


# -- registered layers ---------------------------------------------------------------------------
@pytest.mark.parametrize("spec,bottoms,mode", [
    ('type: "InnerProduct" inner_product_param { num_output: 4 weight_filler { type: "gaussian" } '
     'bias_filler { type: "gaussian" } }', [X], "exhaustive"),
    ('type: "Convolution" convolution_param { num_output: 2 kernel_size: 2 pad: 1 '
     'weight_filler { type: "gaussian" } }', [X], "exhaustive"),
    ('type: "TanH"', [X], "eltwise"),
    ('type: "Dropout" dropout_param { dropout_ratio: 0.5 }', [X], "exhaustive"),  # reseeded masks
    ('type: "SoftmaxWithLoss"', [X.reshape(2, 18), np.array([3.0, 11.0])], "bottom0"),
    ('type: "BatchNorm"', [X], "single"),
])
def test_registered_layers_pass(checker, spec, bottoms, mode):
    torch.manual_seed(0)
    if mode == "exhaustive":
        report = checker.check_gradient_exhaustive(spec, bottoms)
    elif mode == "eltwise":
        report = checker.check_gradient_eltwise(spec, bottoms)
    elif mode == "bottom0":
        report = checker.check_gradient_exhaustive(spec, bottoms, check_bottom=0)
    else:
        report = checker.check_gradient(spec, bottoms)
    assert report.ok and all(b.compared for b in report.blobs)


def test_kinks_are_skipped_with_caffe_s_range():
    x = np.array([[-1.0, -0.004, 0.003, 0.5]])
    relu = make_layer('type: "ReLU"', [x.shape])
    report = GradientChecker(1e-2, 1e-3, kink=0.0, kink_range=1e-2).check_gradient_exhaustive(relu, [x])
    assert report.blobs[0].skipped == 2 * 4 and report.blobs[0].compared == 2 * 4
    with pytest.raises(caffe.GradientCheckError):  # without the kink range, |x| < h breaks the check
        GradientChecker(1e-2, 1e-3).check_gradient_exhaustive(relu, [x])


def test_the_relative_tolerance_has_a_floor_of_one(checker):
    scaled = make_layer('type: "Power" power_param { scale: 1000 }', [(1, 2)])
    report = checker.check_gradient_exhaustive(scaled, [np.array([[0.5, -0.25]])])
    worst = report.worst()
    assert worst.scale == pytest.approx(2000) and worst.ok


def test_check_bottom_selects_what_is_compared(checker):
    ip = 'type: "InnerProduct" inner_product_param { num_output: 2 weight_filler { type: "gaussian" } }'
    x = RNG.standard_normal((2, 3))
    assert [b.blob for b in checker.check_gradient(ip, [x]).blobs] == ["param 0", "param 1", "bottom 0"]
    assert [b.blob for b in checker.check_gradient(ip, [x], check_bottom=-2).blobs] == ["param 0", "param 1"]


def test_layer_state_is_restored(checker):
    bn = make_layer('type: "BatchNorm"', [X.shape])
    before = [t.clone() for t in bn.buffers()]
    checker.check_gradient(bn, [X])
    for old, new in zip(before, bn.buffers()):
        assert new.dtype == torch.float32
        torch.testing.assert_close(old, new)


# -- Python layers -------------------------------------------------------------------------------
def test_autograd_only_torch_layers_pass(checker):
    report = checker.check_gradient_exhaustive(L2Norm, [X])
    assert report.ok and report.blobs[0].source == "autograd"
    scale = Python.from_class(LearnedScale, [X.shape], param_str="0.5")
    report = checker.check_gradient_exhaustive(scale, [X])
    assert [b.blob for b in report.blobs] == ["param 0", "bottom 0"] and report.ok


def test_classic_layers_are_checked_against_their_own_backward(checker):
    report = checker.check_gradient_exhaustive(EuclideanLoss, [X, X + 0.3])
    assert report.ok and {b.source for b in report.blobs} == {"backward"}
    assert checker.check_gradient_eltwise(TimesTen, [X]).ok


def test_a_wrong_hand_written_backward_is_named(checker):
    class Wrong(TimesTen):
        def backward(self, top, propagate_down, bottom):
            bottom[0].diff[...] = 10 * top[0].diff
            bottom[0].diff.flat[5] += 1.0  # one wrong element

    with pytest.raises(caffe.GradientCheckError) as info:
        checker.check_gradient_exhaustive(Wrong, [X])
    message = str(info.value)
    assert "bottom 0 at index (0, 0, 2, 1)" in message and "finite differences" in message
    assert info.value.report.blobs[0].worst_index == np.unravel_index(5, X.shape)


@pytest.mark.parametrize("phase", [caffe.TRAIN, caffe.TEST])
def test_the_right_batchnorm_backward_passes(checker, phase):
    x = RNG.standard_normal((6, 3))
    layer = Python.from_class(BatchNormRight, [x.shape], phase=phase)
    assert checker.check_gradient_exhaustive(layer, [x]).ok


def test_seed_001_backward_is_right_for_batch_statistics(checker):
    x = RNG.standard_normal((6, 3))
    layer = Python.from_class(BatchNormSeed001, [x.shape], phase=caffe.TRAIN)
    assert checker.check_gradient_exhaustive(layer, [x]).ok


def test_seed_001_backward_is_caught_with_fixed_statistics(checker):
    x = RNG.standard_normal((6, 3))
    layer = Python.from_class(BatchNormSeed001, [x.shape], phase=caffe.TEST)
    with pytest.raises(caffe.GradientCheckError, match=r"gradient check failed .* worst: (bottom 0|param 0) at index"):
        checker.check_gradient_exhaustive(layer, [x])


# -- nets and the verb ---------------------------------------------------------------------------
NET = """name: "checked" force_backward: true
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 4 dim: 3 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 4 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "ip"
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" } bias_filler { type: "gaussian" } } }
layer { name: "bn" type: "Python" bottom: "ip" top: "bn"
        python_param { module: "tests.compat.pylayers" layer: "%s" } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "bn" bottom: "label" top: "loss" }
"""


def write_net(tmp_path, layer: str) -> str:
    path = tmp_path / f"{layer}.prototxt"
    path.write_text(NET % layer)
    return str(path)


def test_whole_net_check(checker, tmp_path):
    net = caffe.Net(write_net(tmp_path, "BatchNormRight"), caffe.TRAIN)
    reports = checker.check_gradient_net(net, {"x": RNG.standard_normal((4, 3)), "label": np.zeros(4)})
    assert [r.layer for r in reports] == ['layer "ip" (InnerProduct)', 'layer "bn" (Python)',
                                          'layer "loss" (SoftmaxWithLoss)']
    assert [b.blob for b in reports[2].blobs] == ["bottom 0 (bn)"]  # not the label
    assert net.params["ip"][0].data.dtype == np.float32  # the net is given back as it was


def test_cli_passes_a_right_net(tmp_path, capsys):
    assert cli(["gradcheck", write_net(tmp_path, "BatchNormRight"), "--phase", "TEST"]) == 0
    out = capsys.readouterr().out
    assert 'layer "bn" (Python):' in out and "backward" in out and "3 layer(s) checked, 0 failed" in out


def test_cli_fails_on_seed_001_in_test_phase(tmp_path, capsys):
    path = write_net(tmp_path, "BatchNormSeed001")
    assert cli(["gradcheck", path, "--phase", "TRAIN", "--layer", "bn"]) == 0
    assert cli(["gradcheck", path, "-phase", "TEST", "-layer=bn", "--max_elements", "0"]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "1 layer(s) checked, 1 failed" in out


def test_cli_reports_bad_input(tmp_path, capsys):
    assert cli(["gradcheck", str(tmp_path / "missing.prototxt")]) == 1
    assert "missing.prototxt" in capsys.readouterr().err
    assert cli(["gradcheck", write_net(tmp_path, "BatchNormRight"), "--layer", "nope"]) == 1
    assert "no layer named ['nope']" in capsys.readouterr().err
    assert cli(["gradcheck", write_net(tmp_path, "BatchNormRight"), "--no_python_layers"]) == 1
    assert "allow_python_layers=False" in capsys.readouterr().err
