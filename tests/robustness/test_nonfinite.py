"""NaN/Inf stop training with a message naming the first layer that produced them (unless
``allow_nonfinite``), and ``debug_info: true`` prints Caffe's per-layer lines."""
from __future__ import annotations

import logging
import math

import pytest

import torchcaffe
from torchcaffe.net.debug import NonFiniteError

NET = """name: "nf"
layer {{ name: "data" type: "DummyData" top: "data" top: "label"
        dummy_data_param {{ shape {{ dim: 4 dim: 3 }} shape {{ dim: 4 }}
                           data_filler {{ type: "uniform" min: 0.5 max: 1 }} data_filler {{ type: "constant" value: 1 }} }} }}
layer {{ name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1"
        inner_product_param {{ num_output: 3 weight_filler {{ type: "gaussian" std: {std} }} }} }}
layer {{ name: "bad" type: "{bad_type}" bottom: "ip1" top: "bad" {bad_param} }}
layer {{ name: "ip2" type: "InnerProduct" bottom: "bad" top: "ip2" inner_product_param {{ num_output: 2 }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }}
"""
SOLVER = 'net: "net.prototxt" base_lr: {lr} lr_policy: "fixed" max_iter: 5 display: 2 solver_mode: CPU random_seed: 1 {extra}'


def make_solver(tmp_path, monkeypatch, bad_type="ReLU", bad_param="", lr=0.01, extra="", std=0.1, **kwargs):
    (tmp_path / "net.prototxt").write_text(NET.format(bad_type=bad_type, bad_param=bad_param, std=std))
    (tmp_path / "solver.prototxt").write_text(SOLVER.format(lr=lr, extra=extra))
    monkeypatch.chdir(tmp_path)
    return torchcaffe.get_solver("solver.prototxt", **kwargs)


def test_nan_in_forward_names_the_layer_that_made_it(tmp_path, monkeypatch):
    # log(x) of negative values: NaN from layer "bad", whose bottom was finite
    solver = make_solver(tmp_path, monkeypatch, "Log", "log_param { shift: -100 }")
    with pytest.raises(NonFiniteError) as info:
        solver.step(1)
    message = str(info.value)
    assert "iteration 0" in message and "the loss is nan" in message
    assert 'layer "bad" (Log) is the first to produce one, in its top blob \'bad\'' in message
    assert "12 NaN" in message and "allow_nonfinite" in message and "--allow_nonfinite" in message
    assert solver.iter == 0  # nothing was applied


def test_inf_in_backward_names_the_layer(tmp_path, monkeypatch):
    # ip1 outputs zeros (zero weights): sqrt(0) = 0 is finite, its gradient 0.5 / sqrt(0) is not
    solver = make_solver(tmp_path, monkeypatch, "Power", "power_param { power: 0.5 }", std=0)
    with pytest.raises(NonFiniteError) as info:
        solver.step(1)
    assert "a gradient is not finite" in str(info.value)
    assert 'layer "bad" (Power) is the first to produce one in backward' in str(info.value)


def test_opt_out_trains_on(tmp_path, monkeypatch):
    solver = make_solver(tmp_path, monkeypatch, "Log", "log_param { shift: -100 }", allow_nonfinite=True)
    solver.step(2)
    assert solver.iter == 2 and math.isnan(solver.smoothed_loss)


def test_debug_info_prints_caffes_lines_in_caffes_order(tmp_path, monkeypatch, caplog):
    solver = make_solver(tmp_path, monkeypatch, extra="debug_info: true")
    with caplog.at_level(logging.INFO, logger="torchcaffe"):
        solver.step(2)
    lines = [r.getMessage() for r in caplog.records]
    debug = [line for line in lines if line.startswith("    [")]
    assert debug[0].startswith("    [Forward] Layer data, top blob data data: ")
    expected = ["    [Forward] Layer ip1, top blob ip1 data: ", "    [Forward] Layer ip1, param blob 0 data: ",
                "    [Backward] Layer loss, bottom blob ip2 diff: ", "    [Backward] Layer ip1, param blob 1 diff: ",
                "    [Backward] All net params (data, diff): L1 norm = (", "    [Update] Layer ip2, param 0 data: "]
    positions = [next(i for i, line in enumerate(debug) if line.startswith(text)) for text in expected]
    assert positions == sorted(positions)
    assert not any("[Backward] Layer data" in line for line in debug)  # data needs no backward
    assert len([line for line in debug if "All net params" in line]) == 1  # display iterations only
    value = float(debug[1].rsplit(": ", 1)[1])
    ip1 = solver.net.layer_dict["ip1"]
    assert value >= 0 and math.isfinite(value) and ip1 is not None
