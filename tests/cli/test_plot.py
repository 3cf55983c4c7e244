"""Parsing Caffe logs (ours and the original's) into curves, and the PNG."""
from __future__ import annotations

import math

import pytest

from torchcaffe.plot import LogError, default_plot_path, parse_log, plot_log

# Lines as BVLC Caffe writes them (older releases: no timing in the iteration line).
CAFFE_LOG = """\
Log file created at: 2016/05/02 10:00:00
Running on machine: box
I0502 10:00:00.100000  1234 caffe.cpp:185] Using GPUs 0
I0502 10:00:01.000000  1234 solver.cpp:317] Solving LeNet
I0502 10:00:01.000010  1234 solver.cpp:318] Learning Rate Policy: inv
I0502 10:00:01.000020  1234 solver.cpp:397] Iteration 0, Testing net (#0)
I0502 10:00:01.500000  1234 solver.cpp:464]     Test net output #0: accuracy = 0.0842
I0502 10:00:01.500001  1234 solver.cpp:464]     Test net output #1: loss = 2.38 (* 1 = 2.38 loss)
I0502 10:00:01.510000  1234 solver.cpp:397] Iteration 0, Testing net (#1)
I0502 10:00:01.600000  1234 solver.cpp:464]     Test net output #0: accuracy = 0.09
I0502 10:00:01.600001  1234 solver.cpp:464]     Test net output #1: loss = 2.4 (* 1 = 2.4 loss)
I0502 10:00:01.700000  1234 solver.cpp:218] Iteration 0, loss = 2.34
I0502 10:00:01.700001  1234 solver.cpp:237]     Train net output #0: loss = 2.34 (* 1 = 2.34 loss)
I0502 10:00:01.700002  1234 solver.cpp:237]     Train net output #1: per_class = 0.5
I0502 10:00:01.700003  1234 solver.cpp:237]     Train net output #2: per_class = 0.25
I0502 10:00:01.700010  1234 sgd_solver.cpp:105] Iteration 0, lr = 0.01
I0502 10:00:03.000000  1234 solver.cpp:218] Iteration 100 (76.9 iter/s, 1.3s/100 iters), loss = nan
I0502 10:00:03.000001  1234 solver.cpp:237]     Train net output #0: loss = 0.21 (* 1 = 0.21 loss)
I0502 10:00:03.000002  1234 solver.cpp:237]     Train net output #1: per_class = 0.75
I0502 10:00:03.000003  1234 solver.cpp:237]     Train net output #2: per_class = 1
I0502 10:00:03.000010  1234 sgd_solver.cpp:105] Iteration 100, lr = 0.00992565
I0502 10:00:05.000000  1234 solver.cpp:397] Iteration 200, Testing net (#0)
I0502 10:00:05.500000  1234 solver.cpp:464]     Test net output #0: accuracy = 9.5e-01
I0502 10:00:05.500001  1234 solver.cpp:464]     Test net output #1: loss = 0.15 (* 1 = 0.15 loss)
"""


def test_parse_a_caffe_log(tmp_path):
    path = tmp_path / "caffe.log"
    path.write_text(CAFFE_LOG)
    curves = parse_log(path)
    assert curves.smoothed_loss.iterations == [0, 100]
    assert curves.smoothed_loss.values[0] == 2.34 and math.isnan(curves.smoothed_loss.values[1])
    assert curves.learning_rate.iterations == [0, 100] and curves.learning_rate.values == [0.01, 0.00992565]
    by_label = {s.label: s for s in curves.series()}
    assert set(by_label) == {"train loss", "train per_class #1", "train per_class #2", "test accuracy", "test loss",
                             "test#1 accuracy", "test#1 loss"}
    assert by_label["test accuracy"].iterations == [0, 200] and by_label["test accuracy"].values == [0.0842, 0.95]
    assert by_label["test#1 loss"].values == [2.4] and by_label["test#1 loss"].is_loss
    assert by_label["train per_class #2"].values == [0.25, 1.0] and not by_label["train per_class #2"].is_loss
    assert by_label["train loss"].iterations == [0, 100] and by_label["train loss"].is_loss


def test_plot_a_caffe_log(tmp_path):
    path = tmp_path / "caffe.log"
    path.write_text(CAFFE_LOG)
    written = plot_log(path)
    assert written == str(tmp_path / "caffe.png")
    assert (tmp_path / "caffe.png").read_bytes()[:4] == b"\x89PNG"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")], "no temporary file left behind"


def test_lines_before_the_first_iteration_are_ignored(tmp_path):
    path = tmp_path / "x.log"
    path.write_text("    Train net output #0: loss = 5 (* 1 = 5 loss)\n")
    with pytest.raises(LogError, match="no training curves"):
        plot_log(path)
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("log,png", [("train.log", "train.png"), ("train", "train.png"),
                                     ("runs/a.b.txt", "runs/a.b.png"), ("plot.png", "plot.png.png")])
def test_default_plot_path(log, png):
    assert default_plot_path(log) == png
