"""The command line end to end on a tiny HDF5 net: train (tests, snapshots) -> test -> time -> plot,
with the log lines checked against the patterns Caffe's log parsers use."""
from __future__ import annotations

import datetime
import io
import re
import sys

import numpy as np
import pytest
import torch

import torchcaffe
from torchcaffe.logs import format_float
from torchcaffe.plot import parse_log

from ..solvers.helpers import NET, write_setup
from .helpers import GLOG_LINE, NUM, assert_in_order, messages, run_main

SOLVER = ('type: "SGD" base_lr: 0.05 momentum: 0.9 lr_policy: "fixed" display: 2 max_iter: 6 '
          'test_iter: 2 test_interval: 3 snapshot: 3 snapshot_prefix: "snap"')

# tools/extra/parse_log.py's regular expressions, and the line Caffe's solver.cpp writes since 2017.
PARSE_LOG_ITERATION = re.compile(r"Iteration (\d+)")
PARSE_LOG_TRAIN = re.compile(r"Train net output #(\d+): (\S+) = ([\.\deE+-]+)")
PARSE_LOG_TEST = re.compile(r"Test net output #(\d+): (\S+) = ([\.\deE+-]+)")
PARSE_LOG_LR = re.compile(r"lr = ([-+]?[0-9]*\.?[0-9]+([eE]?[-+]?[0-9]+)?)")
TIMED_ITERATION = re.compile(rf"Iteration (\d+) \(({NUM}) iter/s, ({NUM})s/(\d+) iters\), loss = ({NUM})")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One training run shared by the tests below: (folder, stderr lines, log file lines)."""
    folder = tmp_path_factory.mktemp("train")
    write_setup(folder, SOLVER)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        err = io.StringIO()
        patch.setattr(sys, "stderr", err)
        status = torchcaffe.cli.main(["train", "-solver=solver.prototxt", "-log_file", "train.log"])
    assert status == 0, err.getvalue()
    return folder, err.getvalue().splitlines(), (folder / "train.log").read_text().splitlines()


def parse_like_parse_log(lines: list[str]):
    """What parse_log.py extracts: rows of (iteration, {output: value}) for train and test, the
    learning rates; and it reads a timestamp from every line after the first iteration."""
    iteration, train, test, rates = -1, {}, {}, {}
    for line in lines:
        found = PARSE_LOG_ITERATION.search(line)
        if found:
            iteration = int(found.group(1))
        if iteration == -1:
            continue
        fields = line.split()
        month, day = int(fields[0][1:3]), int(fields[0][3:])
        clock, micros = fields[1].rsplit(".", 1)
        datetime.datetime(2024, month, day, *(int(x) for x in clock.split(":")), int(micros))
        if (rate := PARSE_LOG_LR.search(line)):
            rates[iteration] = float(rate.group(1))
        for regex, rows in ((PARSE_LOG_TRAIN, train), (PARSE_LOG_TEST, test)):
            if (output := regex.search(line)):
                rows.setdefault(iteration, {})[output.group(2)] = float(output.group(3))
    return train, test, rates


def test_train_log_lines_are_caffes(trained):
    folder, stderr, log_file = trained
    assert log_file[0].startswith("Log file created at: ") and log_file[2].startswith("Log line format: ")
    assert log_file[3:] == stderr, "the log file holds what stderr shows (no progress bar off a terminal)"
    solving = next(i for i, line in enumerate(stderr) if "] Solving " in line)
    assert all(GLOG_LINE.match(line) for line in stderr[solving:]), "glog lines only, once training starts"
    found = messages(stderr)
    assert_in_order(found, [
        r"Initializing solver from parameters: ",
        r"Creating training net from net file: train\.prototxt",
        r"Creating test net \(#0\) specified by net file: train\.prototxt",
        r"Use CPU\.", r"Starting Optimization", r"Solving small", r"Learning Rate Policy: fixed",
        r"Iteration 0, Testing net \(#0\)",
        rf"    Test net output #0: accuracy = {NUM}",
        rf"    Test net output #1: loss = {NUM} \(\* 1 = {NUM} loss\)",
        rf"Iteration 0 \(0 iter/s, {NUM}s/2 iters\), loss = {NUM}",
        rf"    Train net output #0: loss = {NUM} \(\* 1 = {NUM} loss\)",
        r"Iteration 0, lr = 0\.05",
        rf"Iteration 2 \({NUM} iter/s, {NUM}s/2 iters\), loss = {NUM}",
        r"Iteration 2, lr = 0\.05",
        r"Snapshotting to binary proto file snap_iter_3\.caffemodel",
        r"Snapshotting solver state to binary proto file snap_iter_3\.solverstate",
        r"Iteration 3, Testing net \(#0\)",
        rf"Iteration 4 \({NUM} iter/s, {NUM}s/2 iters\), loss = {NUM}",
        r"Snapshotting to binary proto file snap_iter_6\.caffemodel",
        rf"Iteration 6, loss = {NUM}",
        r"Iteration 6, Testing net \(#0\)",
        r"Optimization Done\.", r"Optimization Done\.",
    ])
    timed = [TIMED_ITERATION.fullmatch(m) for m in found if TIMED_ITERATION.fullmatch(m)]
    assert [int(m.group(1)) for m in timed] == [0, 2, 4]
    assert all(float(m.group(2)) > 0 and float(m.group(3)) > 0 for m in timed[1:])
    assert all(int(m.group(4)) == 2 for m in timed)


def test_train_log_parses_like_parse_log(trained):
    _, stderr, _ = trained
    train, test, rates = parse_like_parse_log(stderr)
    assert sorted(train) == [0, 2, 4] and all(set(row) == {"loss"} for row in train.values())
    assert sorted(test) == [0, 3, 6] and all(set(row) == {"accuracy", "loss"} for row in test.values())
    assert rates == {0: 0.05, 2: 0.05, 4: 0.05}


def test_snapshots_load(trained, monkeypatch):
    folder, _, _ = trained
    monkeypatch.chdir(folder)
    state = torchcaffe.solvers.read_solverstate(str(folder / "snap_iter_6.solverstate"))
    assert state.iter == 6 and state.learned_net == "snap_iter_6.caffemodel"
    net = torchcaffe.Net("train.prototxt", torchcaffe.TEST, weights="snap_iter_6.caffemodel")
    assert np.isfinite(net.params["ip1"][0].data).all()


def test_test_verb_scores_the_snapshot(trained, capsys, monkeypatch):
    folder, _, _ = trained
    monkeypatch.chdir(folder)
    status, lines = run_main(capsys, "test", "--model", "train.prototxt", "--weights", "snap_iter_6.caffemodel",
                             "-iterations", "3")
    assert status == 0
    found = messages(lines)
    reference = torchcaffe.Net("train.prototxt", torchcaffe.TEST, weights="snap_iter_6.caffemodel")
    outputs = [reference.forward() for _ in range(3)]
    batches = [f"Batch {i}, {name} = {format_float(out[name])}" for i, out in enumerate(outputs)
               for name in ("accuracy", "loss")]
    accuracy = np.float32(sum(np.float32(o["accuracy"]) for o in outputs)) / np.float32(3)
    loss = np.float32(sum(np.float32(o["loss"]) for o in outputs)) / np.float32(3)
    assert_in_order(found, [r"Use CPU\.", r"Running for 3 iterations\."] + [re.escape(b) for b in batches] + [
        re.escape(f"Loss: {format_float(loss)}"),
        re.escape(f"accuracy = {format_float(accuracy)}"),
        re.escape(f"loss = {format_float(loss)} (* 1 = {format_float(loss)} loss)"),
    ])
    assert sum(m.startswith("Batch ") for m in found) == 6


@pytest.mark.parametrize("phase", ["TRAIN", "TEST"])
def test_time_verb_reports_every_layer(trained, capsys, monkeypatch, phase):
    folder, _, _ = trained
    monkeypatch.chdir(folder)
    status, lines = run_main(capsys, "time", "-model", "train.prototxt", "-iterations", "2", "-phase", phase,
                             "--weights", "snap_iter_3.caffemodel")
    assert status == 0
    found = messages(lines)
    layers = list(torchcaffe.Net("train.prototxt", getattr(torchcaffe, phase)).layer_dict)
    assert ("accuracy" in layers and "ip1_ip1_0_split" in layers) == (phase == "TEST")
    per_layer = [re.escape(f"{name:>10}\t{kind}: ") + rf"{NUM} ms\." for name in layers
                 for kind in ("forward", "backward")]
    assert_in_order(found, [r"Performing Forward", rf"Initial loss: {NUM}", r"Performing Backward",
                            r"\*\*\* Benchmark begins \*\*\*", r"Testing for 2 iterations\.",
                            rf"Iteration: 1 forward-backward time: {NUM} ms\.",
                            rf"Iteration: 2 forward-backward time: {NUM} ms\.",
                            r"Average time per layer: "] + per_layer + [
                            rf"Average Forward pass: {NUM} ms\.", rf"Average Backward pass: {NUM} ms\.",
                            rf"Average Forward-Backward: {NUM} ms\.", rf"Total Time: {NUM} ms\.",
                            r"\*\*\* Benchmark ends \*\*\*"])
    assert sum("\tforward: " in m for m in found) == len(layers)
    conv_forward = next(m for m in found if m.strip().startswith("conv1\tforward: "))
    assert float(conv_forward.split(": ")[1].split()[0]) > 0


def test_plot_verb_writes_a_png(trained, capsys, monkeypatch):
    folder, _, _ = trained
    monkeypatch.chdir(folder)
    status, lines = run_main(capsys, "plot", "train.log")
    assert status == 0 and (folder / "train.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Wrote train.png" in messages(lines)
    status, _ = run_main(capsys, "plot", "train.log", "--out", "curves.png")
    assert status == 0 and (folder / "curves.png").stat().st_size > 1000
    curves = parse_log(folder / "train.log")
    assert curves.smoothed_loss.iterations == [0, 2, 4, 6]
    labels = {s.label: s for s in curves.series()}
    assert labels["train loss"].iterations == [0, 2, 4] and labels["train loss"].is_loss
    assert labels["test accuracy"].iterations == [0, 3, 6] and not labels["test accuracy"].is_loss
    assert labels["test loss"].is_loss


def test_weights_comma_list_is_copied_in_order(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_setup(tmp_path, 'type: "SGD" base_lr: 0.05 lr_policy: "fixed" max_iter: 0 snapshot_prefix: "ft" '
                          'test_iter: 1 test_interval: 1')
    first = torchcaffe.Net("train.prototxt", torchcaffe.TRAIN)
    first.params["ip1"][0].data[...] = 0.25
    first.params["conv1"][1].data[...] = -1
    first.save("a.caffemodel")
    (tmp_path / "ip_only.prototxt").write_text(
        'layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 4 dim: 27 } } }\n'
        'layer { name: "ip1" type: "InnerProduct" bottom: "x" top: "ip1" inner_product_param { num_output: 3 } }\n')
    second = torchcaffe.Net("ip_only.prototxt", torchcaffe.TEST)
    second.params["ip1"][0].data[...] = 0.5
    second.save("b.caffemodel")
    status, lines = run_main(capsys, "train", "--solver", "solver.prototxt", "--weights", "a.caffemodel,b.caffemodel")
    assert status == 0, lines
    assert_in_order(messages(lines), [r"Finetuning from a\.caffemodel", r"Finetuning from b\.caffemodel",
                                      r"Starting Optimization", r"Iteration 0, Testing net \(#0\)"])
    result = torchcaffe.Net("train.prototxt", torchcaffe.TRAIN, weights="ft_iter_0.caffemodel")
    assert (result.params["conv1"][1].data == -1).all(), "from a.caffemodel"
    assert (result.params["ip1"][0].data == 0.5).all(), "from b.caffemodel, copied after a.caffemodel"


def test_snapshot_resume_continues_from_the_stored_iteration(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_setup(tmp_path, 'type: "SGD" base_lr: 0.05 momentum: 0.9 lr_policy: "step" gamma: 0.5 stepsize: 3 '
                          'display: 1 max_iter: 5 snapshot: 2 snapshot_prefix: "snap"')
    status, lines = run_main(capsys, "train", "--solver", "solver.prototxt")
    assert status == 0
    whole = {int(m.group(1)): m.group(5) for m in map(TIMED_ITERATION.fullmatch, messages(lines)) if m}
    assert sorted(whole) == [0, 1, 2, 3, 4]
    (tmp_path / "snap_iter_5.caffemodel").rename(tmp_path / "uninterrupted.caffemodel")
    status, lines = run_main(capsys, "train", "--solver", "solver.prototxt", "--snapshot", "snap_iter_2.solverstate")
    assert status == 0
    found = messages(lines)
    assert_in_order(found, [r"Resuming from snap_iter_2\.solverstate", r"Starting Optimization",
                            rf"Iteration 2 \(0 iter/s, {NUM}s/1 iters\), loss = {NUM}", r"Iteration 3, lr = 0\.025"])
    resumed = {int(m.group(1)): m.group(5) for m in map(TIMED_ITERATION.fullmatch, found) if m}
    assert resumed == {k: whole[k] for k in (2, 3, 4)}, "the same losses as the uninterrupted run"
    a = torchcaffe.Net("train.prototxt", torchcaffe.TRAIN, weights="uninterrupted.caffemodel")
    b = torchcaffe.Net("train.prototxt", torchcaffe.TRAIN, weights="snap_iter_5.caffemodel")
    for name in a.params:
        for x, y in zip(a.params[name], b.params[name]):
            np.testing.assert_array_equal(x.data, y.data)


@pytest.mark.parametrize("flags,present", [([], False), (["--stage", "more"], True), (["-stage=x,more"], True),
                                           (["--level", "2"], True), (["--level", "1"], False)])
def test_level_and_stage_select_train_layers(capsys, tmp_path, monkeypatch, flags, present):
    monkeypatch.chdir(tmp_path)
    net = NET.replace('layer { name: "loss"', 'layer { name: "extra" type: "Accuracy" bottom: "ip1" bottom: "label" '
                      'top: "extra" include { stage: "more" } include { min_level: 2 } }\nlayer { name: "loss"')
    write_setup(tmp_path, 'type: "SGD" base_lr: 0.05 lr_policy: "fixed" display: 1 max_iter: 1 '
                          'snapshot_after_train: false', net=net)
    status, lines = run_main(capsys, "train", "--solver", "solver.prototxt", *flags)
    assert status == 0
    assert any("Train net output #0: extra = " in m for m in messages(lines)) == present


def test_progress_bar_on_a_terminal_only(tmp_path, monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.chdir(tmp_path)
    write_setup(tmp_path, 'type: "SGD" base_lr: 0.05 lr_policy: "fixed" display: 2 max_iter: 4 '
                          'snapshot_after_train: false')
    screen = Terminal()
    monkeypatch.setattr(sys, "stderr", screen)
    assert torchcaffe.cli.main(["train", "--solver", "solver.prototxt", "--log_file", "run.log"]) == 0
    shown = screen.getvalue()
    assert "\rIteration 4/4 [" in shown and "loss " in shown
    text = (tmp_path / "run.log").read_text()
    assert "\r" not in text and "/4 [" not in text
    assert [m for m in messages(shown.replace("\r", "\n").splitlines()) if m.startswith("Iteration 2 (")]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_train_and_time_on_the_gpu(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_setup(tmp_path, 'type: "SGD" base_lr: 0.05 lr_policy: "fixed" display: 1 max_iter: 2 snapshot_prefix: "g"')
    status, lines = run_main(capsys, "train", "--solver", "solver.prototxt", "--gpu", "0")
    assert status == 0 and "Using GPUs 0" in messages(lines)
    status, lines = run_main(capsys, "time", "--model", "train.prototxt", "--iterations", "2", "--gpu", "0")
    assert status == 0 and "Use GPU with device ID 0" in messages(lines)
