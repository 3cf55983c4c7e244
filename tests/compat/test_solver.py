"""pycaffe's test_solver.py, as behaviour: solve, apply_update, nets outliving the solver,
snapshot, plus callbacks and weight sharing."""
from __future__ import annotations

import os

import numpy as np
import pytest

import torchcaffe as caffe

from .helpers import fill_labels, simple_net_file

NUM_OUTPUT = 13


@pytest.fixture
def solver(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # snapshots land beside the test, as pycaffe's relative prefix does
    net_file = simple_net_file(tmp_path, NUM_OUTPUT)
    solver_file = tmp_path / "solver.prototxt"
    solver_file.write_text(f"""train_net: "{net_file}" test_net: "{net_file}"
        test_iter: 10 test_interval: 10 base_lr: 0.01 momentum: 0.9 weight_decay: 0.0005
        lr_policy: "inv" gamma: 0.0001 power: 0.75 display: 100 max_iter: 100
        snapshot_after_train: false snapshot_prefix: "model" solver_mode: CPU""")
    caffe.set_mode_cpu()
    solver = caffe.SGDSolver(str(solver_file))
    assert type(caffe.get_solver(str(solver_file))) is caffe.SGDSolver
    fill_labels(solver.net, NUM_OUTPUT)
    fill_labels(solver.test_nets[0], NUM_OUTPUT)
    return solver


def test_solve_runs_to_max_iter(solver):
    assert solver.iter == 0
    solver.solve()
    assert solver.iter == 100


def test_apply_update_moves_weights_by_the_rate(solver):
    net = solver.net
    data = net.layers[1].blobs[0].data
    data[...] = 0
    net.layers[1].blobs[0].diff[...] = 1
    solver.apply_update()
    np.testing.assert_allclose(data, np.full(data.shape, -0.01), atol=1e-7)


def test_nets_outlive_their_solver(solver):
    nets = [solver.net] + list(solver.test_nets)
    assert len(nets) == 2
    del solver
    total = 0.0
    for net in nets:
        for params in net.params.values():
            total += sum(float(p.data.sum() + p.diff.sum()) for p in params)
        for blob in net.blobs.values():
            total += float(blob.data.sum() + blob.diff.sum())
    assert np.isfinite(total)


def test_snapshot_writes_weights_and_state(solver, tmp_path):
    solver.snapshot()
    for name in ("model_iter_0.caffemodel", "model_iter_0.solverstate"):
        assert (tmp_path / name).is_file()


def test_callbacks_and_solver_param(solver):
    events = []
    solver.add_callback(lambda: events.append("start"), lambda: events.append("gradients"))
    solver.step(2)
    assert events == ["start", "gradients"] * 2
    assert solver.param.max_iter == 100 and solver.param.base_lr == pytest.approx(0.01)


def test_share_weights_gives_a_net_the_solvers_blobs(solver, tmp_path):
    other = caffe.Net(solver.net.source, caffe.TEST)
    solver.share_weights(other)
    solver.net.params["ip"][0].data[...] = 0.25
    assert (other.params["ip"][0].data == 0.25).all()


def test_restore_continues_from_a_snapshot(solver, tmp_path):
    solver.step(3)
    solver.snapshot()
    weights = solver.net.params["conv"][0].data.copy()
    solver.step(2)
    solver.restore(os.fspath(tmp_path / "model_iter_3.solverstate"))
    assert solver.iter == 3
    np.testing.assert_array_equal(solver.net.params["conv"][0].data, weights)
