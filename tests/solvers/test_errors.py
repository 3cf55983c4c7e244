"""A bad solver file gives one clear error that names the file and the field."""
from __future__ import annotations

import pytest

import torchcaffe
from torchcaffe.errors import CaffeError, ParseError
from torchcaffe.solvers import SolverError

from .helpers import write_setup

GOOD = 'type: "SGD" base_lr: 0.01 lr_policy: "fixed"'


@pytest.mark.parametrize("fields,error,words", [
    (f"{GOOD} foo_bar: 1", ParseError, ["foo_bar", "SolverParameter"]),
    (f"{GOOD} base_lr: 0.1", ParseError, ["base_lr", "more than once"]),
    ('type: "SGD" base_lr: 0.01 lr_policy: "stepz"', SolverError, ["lr_policy", "stepz", '"multistep"']),
    ('type: "SGD" base_lr: 0.01', SolverError, ["lr_policy is not set"]),
    ('type: "SGD" base_lr: 0.01 lr_policy: "step" gamma: 0.1', SolverError, ["stepsize", "lr_policy"]),
    ('type: "Adamax" base_lr: 0.01 lr_policy: "fixed"', SolverError, ["unknown solver type", "Adamax", "type",
                                                                     '"Adam"']),
    ('solver_type: ADAM type: "Adam" base_lr: 0.01 lr_policy: "fixed"', ParseError, ["solver_type", "type"]),
    (f'{GOOD} regularization_type: "L3"', SolverError, ["regularization_type", "L3"]),
    (f"{GOOD} average_loss: 0", SolverError, ["average_loss"]),
    (f"{GOOD} iter_size: 0", SolverError, ["iter_size"]),
    (f'{GOOD} train_net: "train.prototxt"', SolverError, ["net and train_net", "exactly one"]),
    (f"{GOOD} test_iter: 1", SolverError, ["test_interval"]),
    (f'{GOOD} test_net: "train.prototxt" test_interval: 1', SolverError, ["test_iter"]),
    (f"{GOOD} test_iter: 1 test_interval: 1 test_state {{ }} test_state {{ }}", SolverError, ["test_state"]),
])
def test_bad_solver_file(tmp_path, monkeypatch, fields, error, words):
    path = write_setup(tmp_path, fields)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(error) as info:
        torchcaffe.get_solver(str(path))
    message = str(info.value)
    assert str(path) in message, message
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"


def test_missing_net(tmp_path):
    path = tmp_path / "solver.prototxt"
    path.write_text(GOOD)
    with pytest.raises(SolverError) as info:
        torchcaffe.get_solver(str(path))
    message = str(info.value)
    assert str(path) in message and "net, net_param, train_net, train_net_param" in message


def test_missing_net_file_names_it(tmp_path, monkeypatch):
    path = tmp_path / "solver.prototxt"
    path.write_text(f'{GOOD} net: "nowhere.prototxt"')
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ParseError, match="nowhere.prototxt: no such file"):
        torchcaffe.get_solver(str(path))


def test_missing_solver_file(tmp_path):
    with pytest.raises(ParseError, match="no such file"):
        torchcaffe.SGDSolver(str(tmp_path / "absent.prototxt"))


def test_solver_errors_are_caffe_errors():
    assert issubclass(SolverError, CaffeError)
