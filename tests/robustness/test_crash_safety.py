"""kill -9 a training process — during a snapshot write and between iterations — and check
that every ``*.caffemodel`` / ``*.solverstate`` on disk is complete and that training resumes
from the latest snapshot and finishes.

The net carries an 8 MiB parameter so that a snapshot (weights + momentum history) takes long
enough to be caught mid-write: the test polls the snapshot folder and kills the moment a
temporary ``.*.tmp`` file appears, which makes "killed during a snapshot write" deterministic.
"""
from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from torchcaffe.io.weights import read_weights
from torchcaffe.solvers.snapshot import read_solverstate

ROOT = Path(__file__).resolve().parents[2]
MAX_ITER = 40  # room for every kill below to come before the end, even on a fast machine

NET = """name: "crash"
layer { name: "data" type: "HDF5Data" top: "data" top: "label" hdf5_data_param { source: "train_h5.txt" batch_size: 4 } }
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1"
        inner_product_param { num_output: 1024 weight_filler { type: "gaussian" std: 0.01 } } }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.01 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }
"""

SOLVER = f"""net: "train.prototxt"
base_lr: 0.01 momentum: 0.9 lr_policy: "fixed" display: 1 max_iter: {MAX_ITER}
snapshot: 2 snapshot_prefix: "snap/crash" solver_mode: CPU random_seed: 3
"""


@pytest.fixture
def setup(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    with h5py.File(tmp_path / "train.h5", "w") as h5:
        h5.create_dataset("data", data=rng.standard_normal((8, 2048)).astype(np.float32))
        h5.create_dataset("label", data=rng.integers(0, 3, 8).astype(np.float32))
    (tmp_path / "train_h5.txt").write_text("train.h5\n")
    (tmp_path / "train.prototxt").write_text(NET)
    (tmp_path / "solver.prototxt").write_text(SOLVER)
    (tmp_path / "snap").mkdir()
    return tmp_path


def _start(folder: Path, resume: Path | None) -> subprocess.Popen:
    command = [sys.executable, "-m", "torchcaffe", "train", "--solver", "solver.prototxt"]
    if resume is not None:
        command += ["--snapshot", str(resume.relative_to(folder))]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen(command, cwd=folder, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _iteration(path: Path) -> int:
    return int(re.search(r"_iter_(\d+)\.", path.name).group(1))


def _snapshots(folder: Path, pattern: str) -> list[Path]:
    return sorted((folder / "snap").glob(pattern), key=_iteration)


def _kill_when(process: subprocess.Popen, ready, timeout: float = 60.0) -> bool:
    """SIGKILL ``process`` as soon as ``ready()`` holds; False if it ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        if ready():
            process.send_signal(signal.SIGKILL)
            process.wait()
            return True
        time.sleep(0.001)
    process.kill()
    raise AssertionError("the training process neither snapshotted nor ended in time")


def _temp_files(folder: Path) -> set[str]:
    return {name for name in os.listdir(folder / "snap") if name.endswith(".tmp")}


def _check_every_file_is_complete(folder: Path) -> None:
    for path in _snapshots(folder, "*.caffemodel"):
        assert read_weights(str(path)), path
    for path in _snapshots(folder, "*.solverstate"):
        state = read_solverstate(str(path))
        assert state.iter == _iteration(path) and len(state.history) == 4, path


def test_killed_training_leaves_complete_snapshots_and_resumes(setup):
    rng = random.Random(1234)
    resume = None
    kills = []
    for round_ in range(3):
        process = _start(setup, resume)
        before = len(_snapshots(setup, "*.solverstate"))
        if round_ % 2 == 0:  # in the middle of writing a snapshot: a new temporary file exists
            old = _temp_files(setup)
            killed = _kill_when(process, lambda: bool(_temp_files(setup) - old))
            kills.append(("during a snapshot write", killed))
        else:  # at a random moment after a new snapshot, between iterations or inside one
            delay = rng.uniform(0.0, 0.25)
            first_new = []

            def ready():
                if not first_new and len(_snapshots(setup, "*.solverstate")) > before:
                    first_new.append(time.monotonic())
                return bool(first_new) and time.monotonic() - first_new[0] >= delay
            killed = _kill_when(process, ready)
            kills.append((f"{delay:.2f} s after a snapshot", killed))
        assert killed, f"round {round_}: training ended before it could be killed: {process.stderr.read()[-2000:]}"
        _check_every_file_is_complete(setup)
        states = _snapshots(setup, "*.solverstate")
        resume = states[-1] if states else None
    assert len(_temp_files(setup)) >= 2, "the kills did not land during snapshot writes"
    process = _start(setup, resume)
    assert process.wait(timeout=120) == 0, process.stderr.read()[-3000:]
    _check_every_file_is_complete(setup)
    last = _snapshots(setup, "*.solverstate")[-1]
    assert _iteration(last) == MAX_ITER and read_solverstate(str(last)).iter == MAX_ITER
