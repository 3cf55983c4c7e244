"""The solver's machinery: train and test nets, sharing, testing, logging, callbacks, settings."""
from __future__ import annotations

import logging
import os

import numpy as np
import pytest
import torch

import torchcaffe
from torchcaffe.errors import ParseError

from .helpers import NET, write_setup

SGD = 'type: "SGD" base_lr: 0.05 momentum: 0.9 lr_policy: "fixed"'


def rewrite(path: str, old: str, new: str) -> None:
    with open(path) as f:
        text = f.read()
    assert old in text
    with open(path, "w") as f:
        f.write(text.replace(old, new))


@pytest.fixture
def setup(tmp_path, monkeypatch):
    """``make(solver_fields) -> solver path`` inside a temporary working directory."""
    monkeypatch.chdir(tmp_path)
    return lambda fields, **kw: str(write_setup(tmp_path, fields, **kw))


def test_test_nets_share_the_train_nets_tensors(setup):
    solver = torchcaffe.get_solver(setup(f"{SGD} test_iter: 2 test_interval: 2"))
    (test,) = solver.test_nets
    assert solver.net.phase == torchcaffe.TRAIN and test.phase == torchcaffe.TEST
    assert "accuracy" in test.outputs and "accuracy" not in solver.net.outputs
    for name in ("conv1", "bn1", "sc1", "ip1"):
        train_layer, test_layer = solver.net.layer_dict[name], test.layer_dict[name]
        for attr in train_layer.blob_names:  # parameters and BatchNorm's statistics alike
            assert getattr(test_layer, attr) is getattr(train_layer, attr), f"{name}.{attr}"
    solver.step(2)
    np.testing.assert_array_equal(test.params["bn1"][0].data, solver.net.params["bn1"][0].data)
    assert solver.net.params["bn1"][2].data[0] > 0, "TRAIN forwards updated the running sums"


def test_test_scores_are_means_over_test_iter(setup, caplog):
    path = setup(f"{SGD} test_iter: 2 test_interval: 2 display: 1")
    solver = torchcaffe.get_solver(path)
    reference = torchcaffe.Net("train.prototxt", torchcaffe.TEST)
    reference.share_with(solver.net)
    outs = [reference.forward() for _ in range(2)]  # 8 rows, batch 4: every test row once
    expected = [np.mean([o["accuracy"] for o in outs]), np.mean([o["loss"] for o in outs])]
    with caplog.at_level(logging.INFO, logger="torchcaffe"):
        solver.step(1)  # test_initialization: the test runs at iteration 0, before the update
    np.testing.assert_allclose(solver.mean_scores[0], expected, rtol=1e-6)
    assert "Iteration 0, Testing net (#0)" in caplog.text
    assert f"    Test net output #0: accuracy = {expected[0]:.6g}" in caplog.text
    assert f"    Test net output #1: loss = {expected[1]:.6g} (* 1 = {expected[1]:.6g} loss)" in caplog.text


def test_test_initialization_false_skips_the_first_test(setup, caplog):
    solver = torchcaffe.get_solver(setup(f"{SGD} test_iter: 1 test_interval: 2 test_initialization: false"))
    with caplog.at_level(logging.INFO, logger="torchcaffe"):
        solver.step(3)
    assert "Iteration 0, Testing" not in caplog.text and "Iteration 2, Testing net (#0)" in caplog.text


def test_test_compute_loss(setup, caplog):
    solver = torchcaffe.get_solver(setup(f"{SGD} test_iter: 2 test_interval: 1 test_compute_loss: true"))
    with caplog.at_level(logging.INFO, logger="torchcaffe"):
        solver.step(1)
    assert "Test loss: " in caplog.text


def test_display_lines_in_caffes_format(setup, caplog):
    solver = torchcaffe.get_solver(setup(f"{SGD} display: 2"))
    with caplog.at_level(logging.INFO, logger="torchcaffe"):
        solver.step(3)
    lines = [r.getMessage() for r in caplog.records]
    assert any(line.startswith("Iteration 0 (0 iter/s, ") and "s/2 iters), loss = " in line for line in lines)
    assert any(line.startswith("    Train net output #0: loss = ") and line.endswith(" loss)") for line in lines)
    assert "Iteration 0, lr = 0.05" in lines and "Iteration 2, lr = 0.05" in lines
    assert not any(line.startswith("Iteration 1,") for line in lines)


def test_average_loss_smooths_over_the_last_iterations(setup):
    solver = torchcaffe.get_solver(setup(f"{SGD} average_loss: 3"))
    losses = []
    solver.add_callback(lambda: None, lambda: losses.append(np.float32(solver.net.blobs["loss"].data)))
    solver.step(5)
    assert float(solver.smoothed_loss) == pytest.approx(float(np.mean(losses[-3:])), rel=1e-6)


def test_callbacks_run_in_caffes_order(setup):
    solver = torchcaffe.get_solver(setup(f"{SGD} test_iter: 1 test_interval: 2"))
    events = []
    solver.add_callback(lambda: events.append(("start", solver.iter)), lambda: events.append(("ready", solver.iter)))
    original = solver.test
    solver.test = lambda i=0: (events.append(("test", solver.iter)), original(i))[1]
    solver.step(3)
    assert events == [("test", 0), ("start", 0), ("ready", 0), ("start", 1), ("ready", 1), ("test", 2),
                      ("start", 2), ("ready", 2)]


def test_solve_logs_and_runs_to_max_iter(setup, caplog):
    solver = torchcaffe.get_solver(setup(f"{SGD} max_iter: 3 display: 3 snapshot_after_train: false "
                                         f"test_iter: 1 test_interval: 3"))
    with caplog.at_level(logging.INFO, logger="torchcaffe"):
        solver.solve()
    assert solver.iter == 3
    lines = [r.getMessage() for r in caplog.records]
    assert "Solving small" in lines and "Learning Rate Policy: fixed" in lines
    assert lines[-1] == "Optimization Done."
    assert any(line.startswith("Iteration 3, loss = ") for line in lines)
    assert "Iteration 3, Testing net (#0)" in lines
    assert not [n for n in os.listdir(".") if "_iter_" in n], "snapshot_after_train: false"


def test_action_function_can_snapshot_and_stop(setup):
    solver = torchcaffe.get_solver(setup(f'{SGD} snapshot_prefix: "a"'))
    answers = iter(["none", "snapshot", "stop"])
    solver.set_action_function(lambda: next(answers, "none"))
    solver.step(10)
    assert solver.iter == 3 and solver.requested_early_exit
    assert os.path.exists("a_iter_2.caffemodel")


def test_test_nets_from_every_source_in_caffes_order(setup):
    path = setup(f'{SGD} test_iter: 1 test_iter: 2 test_iter: 3 test_interval: 5 test_net: "train.prototxt" '
                 f'test_state {{ stage: "x" }} test_state {{ }} test_state {{ level: 2 }}')
    solver = torchcaffe.get_solver(path)
    assert len(solver.test_nets) == 3  # one test_net file, then `net` for each remaining test_iter
    assert all(net.phase == torchcaffe.TEST for net in solver.test_nets)


def test_train_state_and_test_state_select_layers(setup):
    net = NET.replace('include { phase: TEST } }', 'include { phase: TEST stage: "val" } }')
    net = net.replace('layer { name: "loss"', 'layer { name: "extra" type: "Accuracy" bottom: "ip1" bottom: "label" '
                      'top: "extra" include { stage: "more" } }\nlayer { name: "loss"')
    path = setup(f'{SGD} test_iter: 1 test_interval: 5 train_state {{ stage: "more" }} test_state {{ stage: "val" }}',
                 net=net)
    solver = torchcaffe.get_solver(path)
    assert "extra" in solver.net.outputs
    assert "accuracy" in solver.test_nets[0].outputs and "extra" not in solver.test_nets[0].outputs


def test_weights_are_copied_into_every_net(setup):
    path = setup(SGD)
    first = torchcaffe.get_solver(path)
    first.net.params["ip1"][0].data[...] = 0.25
    first.net.save("a.caffemodel")
    first.net.params["conv1"][1].data[...] = -1
    first.net.save("b.caffemodel")
    with open(path, "a") as f:
        f.write('weights: "a.caffemodel,b.caffemodel"\ntest_iter: 1 test_interval: 1\n')
    solver = torchcaffe.get_solver(path)
    for net in (solver.net, solver.test_nets[0]):
        assert (net.params["ip1"][0].data == 0.25).all() and (net.params["conv1"][1].data == -1).all()


def test_share_weights_with_a_separate_net(setup):
    solver = torchcaffe.get_solver(setup(SGD))
    net = torchcaffe.Net("train.prototxt", torchcaffe.TEST)
    solver.share_weights(net)
    solver.step(1)
    np.testing.assert_array_equal(net.params["ip1"][0].data, solver.net.params["ip1"][0].data)


def test_random_seed_makes_initialisation_reproducible(setup):
    path = setup(SGD)
    a, b = torchcaffe.get_solver(path), torchcaffe.get_solver(path)
    np.testing.assert_array_equal(a.net.params["ip1"][0].data, b.net.params["ip1"][0].data)
    rewrite(path, "random_seed: 7", "random_seed: 8")
    c = torchcaffe.get_solver(path)
    assert not np.array_equal(a.net.params["ip1"][0].data, c.net.params["ip1"][0].data)


def test_deprecated_solver_type_enum(setup):
    path = setup('solver_type: ADAM base_lr: 0.01 lr_policy: "fixed"')
    assert type(torchcaffe.get_solver(path)) is torchcaffe.AdamSolver


def test_pycaffe_solver_api(setup):
    solver = torchcaffe.SGDSolver(setup(SGD))
    assert solver.param.base_lr == pytest.approx(0.05) and solver.iter == 0
    assert isinstance(solver.net, torchcaffe.Net) and solver.test_nets == []
    before = solver.net.params["ip1"][0].data.copy()
    solver.net.forward()
    solver.net.backward()
    solver.apply_update()  # pycaffe's manual loop; apply_update leaves iter alone, as Caffe's
    assert solver.iter == 0 and not np.array_equal(before, solver.net.params["ip1"][0].data)


def test_solver_mode_gpu_without_cuda_falls_back_to_the_cpu(setup, caplog):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available: nothing to fall back from")
    path = setup(SGD)
    rewrite(path, "solver_mode: CPU", "solver_mode: GPU")
    with caplog.at_level(logging.WARNING, logger="torchcaffe"):
        solver = torchcaffe.get_solver(path)
    assert solver.device.type == "cpu" and "CUDA is not available" in caplog.text


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_solver_mode_gpu_runs_on_the_device(setup):
    path = setup(SGD)
    rewrite(path, "solver_mode: CPU", "solver_mode: GPU")
    solver = torchcaffe.get_solver(path)
    solver.step(2)
    assert solver.net.layer_dict["ip1"].weight.is_cuda and solver.history[0].is_cuda


def test_debug_info_logs_per_layer_values(setup, caplog):
    solver = torchcaffe.get_solver(setup(f"{SGD} display: 1 debug_info: true"))
    with caplog.at_level(logging.INFO, logger="torchcaffe"):
        solver.step(1)
    for text in ("    [Forward] Layer conv1, top blob conv1 data: ", "    [Backward] Layer ip1, param blob 0 diff: ",
                 "    [Backward] All net params (data, diff): L1 norm = (", "    [Update] Layer ip1, param 0 data: "):
        assert text in caplog.text


def test_paths_are_relative_to_the_working_directory(setup, tmp_path, monkeypatch):
    path = setup(SGD)
    monkeypatch.chdir(tmp_path.parent)
    with pytest.raises(ParseError) as info:
        torchcaffe.get_solver(path)
    assert "train.prototxt" in str(info.value) and "no such file" in str(info.value)
