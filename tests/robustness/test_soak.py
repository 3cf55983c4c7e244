"""A few seconds of the soak test (bench/soak.py runs the long one): file descriptors stay flat
across training epochs, snapshot cycles and test passes, and memory does not climb."""
from __future__ import annotations

import os

import torchcaffe
from tests.solvers.helpers import write_setup

SOLVER = """test_iter: 1 test_interval: 2 base_lr: 0.01 momentum: 0.9 lr_policy: "fixed" display: 0
max_iter: 1000 snapshot: 2 snapshot_prefix: "snap" test_initialization: false"""


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def test_file_handles_and_memory_stay_flat_across_epochs_and_snapshots(tmp_path, monkeypatch):
    path = write_setup(tmp_path, SOLVER)
    monkeypatch.chdir(tmp_path)
    solver = torchcaffe.get_solver(str(path))
    solver.step(4)  # warm-up: data files opened, first snapshots and tests done
    fds, rss = open_fds(), rss_mb()
    for _ in range(10):  # 20 iterations: 10 snapshots, 10 test passes, 10 restores
        solver.step(2)
        solver.restore(f"snap_iter_{solver.iter}.solverstate")
        assert open_fds() <= fds, sorted(os.listdir("/proc/self/fd"))
    assert solver.iter == 24
    assert rss_mb() - rss < 32, f"RSS grew from {rss:.1f} to {rss_mb():.1f} MiB"
    assert len(list(tmp_path.glob("snap_iter_*.solverstate"))) == 12
