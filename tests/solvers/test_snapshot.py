"""Snapshots: Caffe's file names and formats, atomic writes, and resuming exactly where we left off."""
from __future__ import annotations

import os

import h5py
import numpy as np
import pytest

import torchcaffe
from torchcaffe.proto import caffe_pb2
from torchcaffe.solvers import SnapshotError, SolverError, read_solverstate
from torchcaffe.solvers import snapshot as snapshot_module

from .helpers import write_setup

RULES = {
    "SGD": 'type: "SGD" momentum: 0.9 weight_decay: 0.001 lr_policy: "multistep" gamma: 0.5 stepvalue: 2 stepvalue: 5',
    "Adam": 'type: "Adam" momentum: 0.9 momentum2: 0.999 lr_policy: "fixed"',
    "AdaDelta": 'type: "AdaDelta" momentum: 0.95 delta: 0.000001 lr_policy: "fixed"',
}


def losses_of(solver, steps: int) -> list[float]:
    out = []
    for _ in range(steps):
        solver.step(1)
        out.append(float(solver.net.blobs["loss"].data))
    return out


def state_of(solver) -> dict:
    values = {f"{layer}/{i}": b.data.copy() for layer, blobs in solver.net.params.items() for i, b in enumerate(blobs)}
    values.update({f"history/{k}": h.numpy().copy() for k, h in enumerate(solver.history)})
    return values


@pytest.mark.parametrize("fmt", ["BINARYPROTO", "HDF5"])
@pytest.mark.parametrize("rule", sorted(RULES))
def test_resume_equals_uninterrupted(tmp_path, monkeypatch, fmt, rule):
    # 8 rows, batch 4: the data repeats every 2 iterations, so a fresh data layer at iteration 4
    # reads what the uninterrupted run reads there (Caffe does not snapshot the data position).
    path = write_setup(tmp_path, f'base_lr: 0.05 max_iter: 8 snapshot: 4 snapshot_prefix: "snap" '
                                 f'snapshot_format: {fmt} {RULES[rule]}')
    monkeypatch.chdir(tmp_path)
    whole = torchcaffe.get_solver(str(path))
    losses = losses_of(whole, 8)
    suffix = ".h5" if fmt == "HDF5" else ""
    assert os.path.exists(f"snap_iter_4.solverstate{suffix}") and os.path.exists(f"snap_iter_4.caffemodel{suffix}")

    resumed = torchcaffe.get_solver(str(path))
    resumed.restore(f"snap_iter_4.solverstate{suffix}")
    assert resumed.iter == 4
    assert resumed.current_step == (1 if rule == "SGD" else 0)
    assert losses_of(resumed, 4) == losses[4:]  # bit-identical on the CPU
    expected, got = state_of(whole), state_of(resumed)
    for key, value in expected.items():
        np.testing.assert_array_equal(got[key], value, err_msg=key)


def test_solve_resumes_from_a_state_file(tmp_path, monkeypatch):
    path = write_setup(tmp_path, f'base_lr: 0.05 max_iter: 6 snapshot: 2 snapshot_prefix: "snap" {RULES["SGD"]}')
    monkeypatch.chdir(tmp_path)
    whole = torchcaffe.get_solver(str(path))
    whole.solve()
    resumed = torchcaffe.get_solver(str(path))
    resumed.solve("snap_iter_4.solverstate")
    assert resumed.iter == 6
    for key, value in state_of(whole).items():
        np.testing.assert_array_equal(state_of(resumed)[key], value, err_msg=key)


def test_snapshot_files_parse_with_caffes_schema(tmp_path, monkeypatch):
    path = write_setup(tmp_path, f'base_lr: 0.05 max_iter: 4 snapshot_prefix: "out/lenet" snapshot_diff: true '
                                 f'{RULES["Adam"]}')
    (tmp_path / "out").mkdir()
    monkeypatch.chdir(tmp_path)
    solver = torchcaffe.get_solver(str(path))
    solver.step(3)
    model, state_path = solver.snapshot()
    assert (model, state_path) == ("out/lenet_iter_3.caffemodel", "out/lenet_iter_3.solverstate")

    state = caffe_pb2.SolverState()
    state.ParseFromString(open(state_path, "rb").read())
    assert (state.iter, state.learned_net, state.current_step) == (3, model, 0)
    assert len(state.history) == len(solver.history) == 2 * len(solver.net.learnable_params)
    for blob, h in zip(state.history, solver.history):
        assert tuple(blob.shape.dim) == tuple(h.shape)
        np.testing.assert_array_equal(np.array(blob.data, dtype=np.float32).reshape(h.shape), h.numpy())

    net = caffe_pb2.NetParameter()
    net.ParseFromString(open(model, "rb").read())
    layers = {layer.name: layer for layer in net.layer}
    assert [tuple(b.shape.dim) for b in layers["bn1"].blobs] == [(3,), (3,), (1,)]
    ip = layers["ip1"].blobs[0]
    np.testing.assert_array_equal(np.array(ip.data, np.float32).reshape(3, 27), solver.net.params["ip1"][0].data)
    assert len(ip.diff) == 81, "snapshot_diff writes the diffs"

    ours = read_solverstate(state_path)
    assert (ours.iter, ours.learned_net, ours.current_step) == (3, model, 0)
    for array, h in zip(ours.history, solver.history):
        np.testing.assert_array_equal(array, h.numpy())


def test_hdf5_state_layout(tmp_path, monkeypatch):
    path = write_setup(tmp_path, f'base_lr: 0.05 snapshot_prefix: "s" snapshot_format: HDF5 {RULES["SGD"]}')
    monkeypatch.chdir(tmp_path)
    solver = torchcaffe.get_solver(str(path))
    solver.step(3)
    model, state_path = solver.snapshot()
    assert (model, state_path) == ("s_iter_3.caffemodel.h5", "s_iter_3.solverstate.h5")
    with h5py.File(state_path, "r") as h5:
        assert h5["iter"].shape == () and h5["iter"].dtype == np.int32 and int(h5["iter"][()]) == 3
        assert int(h5["current_step"][()]) == 1
        assert h5["learned_net"][()] == model.encode()
        assert h5["learned_net"].id.get_type().get_strpad() == h5py.h5t.STR_NULLTERM
        assert sorted(h5["history"], key=int) == [str(i) for i in range(len(solver.history))]
        for i, h in enumerate(solver.history):
            np.testing.assert_array_equal(h5["history"][str(i)][()], h.numpy())
    with h5py.File(model, "r") as h5:
        np.testing.assert_array_equal(h5["data/ip1/0"][()], solver.net.params["ip1"][0].data)


def test_state_format_is_recognised_by_content(tmp_path, monkeypatch):
    path = write_setup(tmp_path, f'base_lr: 0.05 snapshot_prefix: "s" snapshot_format: HDF5 {RULES["SGD"]}')
    monkeypatch.chdir(tmp_path)
    solver = torchcaffe.get_solver(str(path))
    solver.step(2)
    _, state_path = solver.snapshot()
    os.rename(state_path, "renamed.state")
    other = torchcaffe.get_solver(str(path))
    other.restore("renamed.state")
    assert other.iter == 2


def test_moved_snapshots_find_their_weights_beside_the_state(tmp_path, monkeypatch):
    path = write_setup(tmp_path, f'base_lr: 0.05 snapshot_prefix: "s" {RULES["SGD"]}')
    monkeypatch.chdir(tmp_path)
    solver = torchcaffe.get_solver(str(path))
    solver.step(2)
    model, state_path = solver.snapshot()
    (tmp_path / "moved").mkdir()
    for name in (model, state_path):
        os.rename(name, tmp_path / "moved" / name)
    other = torchcaffe.get_solver(str(path))
    other.restore(tmp_path / "moved" / state_path)
    np.testing.assert_array_equal(other.net.params["ip1"][0].data, solver.net.params["ip1"][0].data)
    os.remove(tmp_path / "moved" / model)
    with pytest.raises(SolverError, match="learned_net"):
        other.restore(tmp_path / "moved" / state_path)


def test_restore_refuses_a_state_of_another_solver_type(tmp_path, monkeypatch):
    path = write_setup(tmp_path, f'base_lr: 0.05 snapshot_prefix: "s" {RULES["SGD"]}')
    monkeypatch.chdir(tmp_path)
    solver = torchcaffe.get_solver(str(path))
    _, state_path = solver.snapshot()
    adam = torchcaffe.AdamSolver(str(path))
    with pytest.raises(SolverError, match="history blob"):
        adam.restore(state_path)


def test_snapshot_every_n_iterations_and_after_training(tmp_path, monkeypatch):
    path = write_setup(tmp_path, f'base_lr: 0.05 max_iter: 5 snapshot: 2 snapshot_prefix: "p" {RULES["SGD"]}')
    monkeypatch.chdir(tmp_path)
    torchcaffe.get_solver(str(path)).solve()
    names = sorted(n for n in os.listdir(tmp_path) if n.startswith("p_iter_"))
    assert names == [f"p_iter_{i}.{ext}" for i in (2, 4, 5) for ext in ("caffemodel", "solverstate")]


def test_snapshot_prefix_must_be_writable(tmp_path, monkeypatch):
    path = write_setup(tmp_path, f'base_lr: 0.05 snapshot: 2 snapshot_prefix: "missing/dir/p" {RULES["SGD"]}')
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SolverError) as info:
        torchcaffe.get_solver(str(path))
    assert "snapshot_prefix" in str(info.value) and str(path) in str(info.value)


# -- atomic writes ------------------------------------------------------------------------------------

def test_a_failure_while_writing_the_binary_state_leaves_no_file(tmp_path, monkeypatch):
    def half_then_fail(f, pieces):
        f.write(b"\x08\x01")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(snapshot_module, "write_pieces", half_then_fail)
    target = tmp_path / "x.solverstate"
    with pytest.raises(SnapshotError, match="No space left"):
        snapshot_module.write_solverstate(str(target), snapshot_module.SolverStateData(1, "m", 0, [np.ones(3)]))
    assert os.listdir(tmp_path) == []


def test_a_failure_while_writing_the_hdf5_state_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "x.solverstate.h5"
    snapshot_module.write_solverstate_h5(str(target), snapshot_module.SolverStateData(1, "m", 0, [np.ones(3)]))
    before = target.read_bytes()
    calls = []

    def fail_on_second(array, what, error_type):
        calls.append(what)
        if len(calls) == 2:
            raise error_type(f"{what}: simulated failure")
        return np.asarray(array, np.float32)

    monkeypatch.setattr(snapshot_module, "blob_values", fail_on_second)
    with pytest.raises(SnapshotError, match="simulated failure"):
        snapshot_module.write_solverstate_h5(str(target), snapshot_module.SolverStateData(2, "m", 0,
                                                                                         [np.ones(3), np.ones(2)]))
    assert target.read_bytes() == before
    assert os.listdir(tmp_path) == ["x.solverstate.h5"]


def test_a_truncated_state_file_is_a_clear_error(tmp_path):
    target = tmp_path / "t.solverstate"
    snapshot_module.write_solverstate(str(target), snapshot_module.SolverStateData(5, "m", 0, [np.ones(40)]))
    target.write_bytes(target.read_bytes()[:30])
    with pytest.raises(SnapshotError) as info:
        read_solverstate(str(target))
    assert str(target) in str(info.value)
