"""Bad command lines and bad input: one clear error line, exit status 1, never a traceback."""
from __future__ import annotations

import pytest
import torch

from torchcaffe.cli import common, main
from torchcaffe.cli.common import gflags_to_argparse
from torchcaffe.cli.train import _parse_train_gpus

from ..solvers.helpers import write_setup
from .helpers import run_main

GOOD = 'type: "SGD" base_lr: 0.05 lr_policy: "fixed" max_iter: 1'


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def assert_one_error(lines: list[str], prefix: str, *words: str) -> str:
    errors = [line for line in lines if ": error: " in line]
    assert len(errors) == 1 and errors[0] == lines[-1], lines
    assert errors[0].startswith(f"{prefix}: error: "), errors[0]
    assert not any("Traceback" in line for line in lines), lines
    for word in words:
        assert word in errors[0], f"{word!r} not in {errors[0]!r}"
    return errors[0]


def test_no_verb_prints_the_usage(capsys):
    status, lines = run_main(capsys)
    assert status == 1 and "usage: torchcaffe <command> <args>" in lines
    assert any(line.split() == ["train", "train", "or", "finetune", "a", "model"] for line in lines)


def test_help_exits_zero(capsys):
    assert main(["--help"]) == 0
    assert "usage: torchcaffe <command> <args>" in capsys.readouterr().out
    assert main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    assert "usage: torchcaffe train" in out and "--sigint_effect" in out and "--log_file" in out
    assert main(["--version"]) == 0 and capsys.readouterr().out.startswith("torchcaffe version ")


def test_unknown_verb(capsys):
    status, lines = run_main(capsys, "trian")
    assert status == 1
    assert_one_error(lines, "torchcaffe", "unknown command 'trian'", "did you mean 'train'?")


def test_unknown_flag(capsys):
    status, lines = run_main(capsys, "train", "--solver", "s.prototxt", "--frobnicate", "1")
    assert status == 1 and lines[0].startswith("usage: torchcaffe train")
    assert_one_error(lines, "torchcaffe train", "--frobnicate")


def test_bad_flag_value(capsys):
    status, lines = run_main(capsys, "test", "--model", "m", "--weights", "w", "--iterations", "zero")
    assert status == 1
    assert_one_error(lines, "torchcaffe test", "--iterations", "zero")
    status, lines = run_main(capsys, "train", "--solver", "s", "--sigint_effect", "explode")
    assert status == 1
    assert_one_error(lines, "torchcaffe train", "--sigint_effect", "explode")


def test_single_dash_and_equals_spellings():
    assert gflags_to_argparse(["-solver", "s.prototxt", "-gpu=0", "--weights=a,b", "--level", "-1", "-h",
                               "--", "-x"]) == ["--solver", "s.prototxt", "--gpu=0", "--weights=a,b", "--level",
                                                "-1", "-h", "--", "-x"]


def test_missing_required_flags(capsys, folder):
    assert_one_error(run_main(capsys, "train")[1], "torchcaffe train", "Need a solver definition", "--solver")
    assert_one_error(run_main(capsys, "test", "--model", "m.prototxt")[1], "torchcaffe test",
                     "Need model weights", "--weights")
    assert_one_error(run_main(capsys, "time")[1], "torchcaffe time", "Need a model definition", "--model")


def test_weights_and_snapshot_together(capsys, folder):
    status, lines = run_main(capsys, "train", "--solver", "s.prototxt", "--weights", "a.caffemodel",
                             "--snapshot", "s.solverstate")
    assert status == 1
    assert_one_error(lines, "torchcaffe train", "not both")


def test_missing_solver_file(capsys, folder):
    status, lines = run_main(capsys, "train", "--solver", "absent.prototxt")
    assert status == 1
    assert_one_error(lines, "torchcaffe train", "absent.prototxt", "no such file")


@pytest.mark.parametrize("fields,words", [
    (f"{GOOD} foo_bar: 1", ['no field named "foo_bar"']),
    ('type: "SGD" base_lr: 0.05 lr_policy: "stepz"', ["lr_policy", "stepz"]),
    ('type: "Adamax" base_lr: 0.05 lr_policy: "fixed"', ["unknown solver type", "Adamax"]),
])
def test_bad_solver_file(capsys, folder, fields, words):
    path = write_setup(folder, fields)
    status, lines = run_main(capsys, "train", "--solver", str(path))
    assert status == 1
    assert_one_error(lines, "torchcaffe train", str(path), *words)


def test_solver_without_a_net(capsys, folder):
    (folder / "solver.prototxt").write_text(GOOD)
    status, lines = run_main(capsys, "train", "--solver", "solver.prototxt")
    assert status == 1
    assert_one_error(lines, "torchcaffe train", "solver.prototxt", "no train net")


def test_missing_weights_file(capsys, folder):
    path = write_setup(folder, GOOD)
    status, lines = run_main(capsys, "train", "--solver", str(path), "--weights", "absent.caffemodel")
    assert status == 1
    assert_one_error(lines, "torchcaffe train", "absent.caffemodel")


def test_bad_phase(capsys, folder):
    write_setup(folder, GOOD)
    status, lines = run_main(capsys, "time", "--model", "train.prototxt", "--phase", "VAL")
    assert status == 1
    assert_one_error(lines, "torchcaffe time", '"TRAIN" or "TEST"', "VAL")


def test_gpu_that_does_not_exist(capsys, folder):
    path = write_setup(folder, GOOD)
    status, lines = run_main(capsys, "train", "--solver", str(path), "--gpu", "99")
    assert status == 1
    assert_one_error(lines, "torchcaffe train", "--gpu 99")
    status, lines = run_main(capsys, "train", "--solver", str(path), "--gpu", "zero")
    assert status == 1
    assert_one_error(lines, "torchcaffe train", "'zero' is not a device id")


def test_several_gpus_are_listed_for_data_parallel_training(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert common.parse_gpus("all") == [0, 1]
    assert _parse_train_gpus("all") == [0, 1] and _parse_train_gpus("1,0") == [1, 0]
    assert _parse_train_gpus("1") == [1]
    with pytest.raises(common.DeviceError, match="no CUDA device 2"):
        _parse_train_gpus("0,2")


def test_device_query(capsys):
    status, lines = run_main(capsys, "device_query")
    if torch.cuda.is_available():
        assert status == 0 and any("Device id:" in line for line in lines)
        assert any("Total global memory:" in line for line in lines)
    else:
        assert status == 1
        assert_one_error(lines, "torchcaffe device_query", "no device to query", "CUDA")


def test_plot_of_a_file_without_curves(capsys, folder):
    (folder / "notes.txt").write_text("hello\nIteration is a word\n")
    status, lines = run_main(capsys, "plot", "notes.txt")
    assert status == 1
    assert_one_error(lines, "torchcaffe plot", "notes.txt", "no training curves")
    status, lines = run_main(capsys, "plot", "absent.log")
    assert status == 1
    assert_one_error(lines, "torchcaffe plot", "absent.log", "no such file")


def test_unwritable_log_file(capsys, folder):
    status, lines = run_main(capsys, "plot", "x.log", "--log_file", "missing/dir/run.log")
    assert status == 1
    assert_one_error(lines, "torchcaffe plot", "cannot write the log file")
