"""SIGINT/SIGHUP during training: Caffe's snapshot/stop/none effects, and a clean exit."""
from __future__ import annotations

import os
import queue
import signal
import threading

import pytest

import torchcaffe
from torchcaffe.cli.signals import SignalRequests, handling_signals
from torchcaffe.solvers import read_solverstate

from ..solvers.helpers import write_setup
from .helpers import NUM, assert_in_order, messages, popen_torchcaffe

LONG = ('type: "SGD" base_lr: 0.01 momentum: 0.9 lr_policy: "fixed" display: 1 max_iter: 1000000 '
        'snapshot_prefix: "snap"')


def test_requests_are_answered_once_sighup_first():
    requests = SignalRequests("stop", "snapshot")
    assert requests.poll() == "none"
    requests.receive("SIGINT")
    requests.receive("SIGHUP")
    assert [requests.poll(), requests.poll(), requests.poll()] == ["snapshot", "stop", "none"]


def test_second_sigint_before_the_first_is_taken_aborts():
    requests = SignalRequests("stop", "snapshot")
    requests.receive("SIGINT")
    with pytest.raises(KeyboardInterrupt):
        requests.receive("SIGINT")
    ignoring = SignalRequests("none", "snapshot")
    ignoring.receive("SIGINT")
    ignoring.receive("SIGINT")  # --sigint_effect none: ignored, as in Caffe
    assert ignoring.poll() == "none"


def test_handlers_record_signals_and_are_restored():
    before = signal.getsignal(signal.SIGINT)
    requests = SignalRequests("snapshot", "stop")
    with handling_signals(requests):
        os.kill(os.getpid(), signal.SIGINT)
        assert requests.poll() == "snapshot"
    assert signal.getsignal(signal.SIGINT) is before


def read_lines(process) -> queue.Queue:
    """The process's stderr lines, as they come, on a queue (None at the end)."""
    lines: queue.Queue = queue.Queue()

    def pump():
        for line in process.stderr:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def drain(process, lines: queue.Queue, seen: list[str], timeout: float = 120) -> None:
    """Wait for the process to end, collecting the rest of its lines."""
    process.wait(timeout=timeout)
    while (line := lines.get(timeout=timeout)) is not None:
        seen.append(line)


def wait_for(lines: queue.Queue, seen: list[str], text: str, timeout: float = 120) -> None:
    while True:
        line = lines.get(timeout=timeout)
        assert line is not None, f"the process ended before {text!r}:\n" + "\n".join(seen)
        seen.append(line)
        if text in line:
            return


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="SIGHUP is POSIX-only")
def test_sighup_snapshots_and_sigint_stops_with_a_snapshot(tmp_path, monkeypatch):
    write_setup(tmp_path, LONG)
    process = popen_torchcaffe("train", "-solver", "solver.prototxt", cwd=tmp_path)
    try:
        lines, seen = read_lines(process), []
        wait_for(lines, seen, "] Iteration 3 (")
        process.send_signal(signal.SIGHUP)  # --sighup_effect snapshot (the default): snapshot, go on
        wait_for(lines, seen, "Snapshotting solver state to binary proto file")
        wait_for(lines, seen, "] Iteration ")
        process.send_signal(signal.SIGINT)  # --sigint_effect stop (the default): snapshot, stop
        drain(process, lines, seen)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, "\n".join(seen)
    assert not any("Traceback" in line for line in seen)
    found = messages(seen)
    snapshots = [int(m.split("_iter_")[1].split(".")[0]) for m in found
                 if m.startswith("Snapshotting solver state to binary proto file snap_iter_")]
    assert len(snapshots) == 2 and 4 <= snapshots[0] < snapshots[1], found
    assert_in_order(found, [rf"Iteration 3 \({NUM} iter/s, .*",
                            r"Snapshotting to binary proto file snap_iter_\d+\.caffemodel",
                            r"Snapshotting to binary proto file snap_iter_\d+\.caffemodel",
                            r"Optimization stopped early\.", r"Optimization Done\."])
    assert found[-1] == "Optimization Done."
    last = snapshots[-1]
    state = read_solverstate(str(tmp_path / f"snap_iter_{last}.solverstate"))
    assert state.iter == last and state.learned_net == f"snap_iter_{last}.caffemodel"
    monkeypatch.chdir(tmp_path)
    net = torchcaffe.Net("train.prototxt", torchcaffe.TRAIN, weights=f"snap_iter_{last}.caffemodel")
    solver = torchcaffe.get_solver("solver.prototxt")
    solver.restore(f"snap_iter_{last}.solverstate")  # the state fits the solver: resumable
    assert solver.iter == last and net.params["ip1"][0].data.any()


def test_sigint_effect_none_keeps_training(tmp_path):
    write_setup(tmp_path, LONG.replace("max_iter: 1000000", "max_iter: 60"))
    process = popen_torchcaffe("train", "--solver=solver.prototxt", "--sigint_effect=none", cwd=tmp_path)
    try:
        lines, seen = read_lines(process), []
        wait_for(lines, seen, "] Iteration 2 (")
        process.send_signal(signal.SIGINT)
        drain(process, lines, seen)
    finally:
        if process.poll() is None:
            process.kill()
    found = messages(seen)
    assert process.returncode == 0 and "Optimization stopped early." not in found
    assert "Snapshotting to binary proto file snap_iter_60.caffemodel" in found
