"""The command line's device flags: ``--amp`` for train/test/time, ``--optimize`` for test/time,
several ``--gpu`` ids (data-parallel training) and training under a torchrun-style launch."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from torchcaffe.cli import main
from torchcaffe.solvers.distributed import spawn

from ..solvers.helpers import write_setup
from ..solvers.test_distributed import _write_solver, _write_source
from .helpers import messages, run_main

SOLVER = 'type: "SGD" base_lr: 0.05 lr_policy: "fixed" display: 2 max_iter: 4 snapshot_prefix: "amp"'


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_setup(tmp_path, SOLVER)
    return tmp_path


def test_amp_bf16_trains_tests_and_times(folder, capsys):
    status, lines = run_main(capsys, "train", "--solver", "solver.prototxt", "--amp", "bf16")
    assert status == 0, "\n".join(lines)
    assert any(m.startswith("Iteration 2 (") for m in messages(lines))
    status, lines = run_main(capsys, "test", "--model", "train.prototxt", "--weights", "amp_iter_4.caffemodel",
                             "--amp", "bf16", "--iterations", "2")
    assert status == 0, "\n".join(lines)
    assert any(m.startswith("accuracy = ") for m in messages(lines))
    status, lines = run_main(capsys, "time", "--model", "train.prototxt", "--amp", "bf16", "--iterations", "1")
    assert status == 0, "\n".join(lines)
    assert any(m.startswith("Average Forward-Backward:") for m in messages(lines))


@pytest.mark.parametrize("verb", [["train", "--solver", "solver.prototxt"],
                                  ["test", "--model", "train.prototxt", "--weights", "x.caffemodel"],
                                  ["time", "--model", "train.prototxt"]])
def test_amp_fp16_on_the_cpu_is_one_clear_error(folder, capsys, verb):
    status, lines = run_main(capsys, *verb, "--amp", "fp16")
    assert status == 1
    assert lines[-1] == (f"torchcaffe {verb[0]}: error: fp16 mixed precision needs a CUDA device, but this runs "
                         f"on cpu (select a GPU with --gpu N), or use --amp bf16, which the CPU supports")


def test_unknown_amp_mode_is_a_usage_error(folder, capsys):
    status, lines = run_main(capsys, "time", "--model", "train.prototxt", "--amp", "fp8")
    assert status == 1 and "invalid choice: 'fp8'" in lines[-1]


def test_optimize_scores_through_the_optimized_plan(folder, capsys):
    """``test --optimize`` builds the net in optimized mode and scores what the plain mode scores."""
    assert run_main(capsys, "train", "--solver", "solver.prototxt")[0] == 0
    weights = sorted(Path().glob("*.caffemodel"))[-1]
    scores = []
    for flags in ([], ["--optimize"]):
        status, lines = run_main(capsys, "test", "--model", "train.prototxt", "--weights", str(weights),
                                 "--iterations", "2", *flags)
        assert status == 0, "\n".join(lines)
        scores.append([float(m.split()[1]) for m in messages(lines) if m.startswith("Loss: ")])
    assert len(scores[0]) == 1 and scores[1] == pytest.approx(scores[0], rel=1e-4)


def test_time_has_no_optimize_flag(folder, capsys):
    status, lines = run_main(capsys, "time", "--model", "train.prototxt", "--optimize")
    assert status == 1 and "unrecognized arguments: --optimize" in lines[-1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
@pytest.mark.parametrize("gpus", ["all", "0,1"])
def test_several_gpus_without_cuda_say_how_to_train_in_parallel(folder, capsys, gpus):
    status, lines = run_main(capsys, "train", "--solver", "solver.prototxt", "--gpu", gpus)
    assert status == 1
    assert lines[-1].startswith(f"torchcaffe train: error: --gpu {gpus}: this PyTorch")
    assert lines[-1].endswith("launch under torchrun without --gpu: torchrun --nproc_per_node=N -m torchcaffe "
                              "train --solver ...")


def _cli_rank(rank: int, world: int, folder: str, solver: str) -> None:
    """What ``torchrun --nproc_per_node=2 -m torchcaffe train`` runs in each process."""
    workdir = Path(folder) / f"rank{rank}"
    workdir.mkdir()
    os.chdir(workdir)
    torch.set_num_threads(1)
    status = main(["train", "--solver", solver, "--log_file", "train.log"])
    assert status == 0, (workdir / "train.log").read_text()


def test_train_under_a_torchrun_launch_joins_the_ranks(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _write_source(tmp_path)
    solver = _write_solver(tmp_path, batch=2)
    spawn(_cli_rank, 2, (str(tmp_path), str(solver)))
    root = (tmp_path / "rank0" / "train.log").read_text()
    other = (tmp_path / "rank1" / "train.log").read_text()
    assert "Data-parallel training: 2 ranks (gloo), batch per rank, gradients averaged" in root
    assert "Snapshotting to binary proto file snap_iter_5.caffemodel" in root
    assert (tmp_path / "rank0" / "snap_iter_5.caffemodel").exists()
    assert not list((tmp_path / "rank1").glob("snap_*"))
    assert "Iteration" not in other and "] Snapshotting" not in other
