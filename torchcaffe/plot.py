"""Training curves from a Caffe log: ours or the original Caffe's (``torchcaffe plot LOG``).

:func:`parse_log` reads the lines Caffe's ``tools/extra/parse_log.py`` reads, found anywhere in
a line (so glog prefixes, ``tee``'d output and older Caffe versions all work):

* ``Iteration N`` anywhere sets the current iteration;
* ``Iteration N (x iter/s, ys/D iters), loss = L`` (or the older ``Iteration N, loss = L``): the
  smoothed training loss;
* ``Iteration N, lr = R``: the learning rate;
* ``Train net output #k: name = v`` and, after ``Testing net (#t)``, ``Test net output #k: name = v``,
  each optionally followed by ``(* w = l loss)``, which marks the output as a loss.

:func:`plot_log` draws the losses in one panel (the smoothed loss, each train loss output, each
test loss output) and the other outputs (accuracy...) in a second, against the iteration, and
writes a PNG with matplotlib's Agg canvas (no display needed, no global pyplot state).
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field

from .errors import CaffeError
from .io.files import atomic_output_path, open_for_reading

__all__ = ["LogError", "Series", "TrainingLog", "parse_log", "plot_log"]

_NUMBER = r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:inf|nan))"
_ITERATION = re.compile(r"Iteration (\d+)")
_SMOOTHED_LOSS = re.compile(r"Iteration (\d+)(?: \([^)]*\))?, loss = " + _NUMBER)
_LEARNING_RATE = re.compile(r"Iteration (\d+), lr = " + _NUMBER)
_TESTING = re.compile(r"Testing net \(#(\d+)\)")
_OUTPUT = re.compile(r"(Train|Test) net output #(\d+): (\S+) = " + _NUMBER + r"( \(\* \S+ = \S+ loss\))?")


class LogError(CaffeError):
    """A log file that cannot be read or holds no training curves."""


@dataclass
class Series:
    """One curve: ``values[i]`` at iteration ``iterations[i]``; ``is_loss`` when Caffe printed a
    loss weight for it."""

    label: str
    iterations: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    is_loss: bool = False

    def add(self, iteration: int, value: float) -> None:
        self.iterations.append(iteration)
        self.values.append(value)


@dataclass
class TrainingLog:
    """What a training log holds: the smoothed loss and learning rate per displayed iteration, and
    every train and test output. Outputs are keyed ``(kind, net, k)`` (kind ``"Train"`` or
    ``"Test"``, the test net's number, the output's ``#k``)."""

    smoothed_loss: Series = field(default_factory=lambda: Series("train loss (smoothed)", is_loss=True))
    learning_rate: Series = field(default_factory=lambda: Series("lr"))
    outputs: dict[tuple[str, int, int], Series] = field(default_factory=dict)

    def series(self, kind: str | None = None) -> list[Series]:
        return [s for key, s in self.outputs.items() if kind is None or key[0] == kind]


def parse_log(path: str | os.PathLike) -> TrainingLog:
    """Read the training curves of a Caffe log (see the module docstring)."""
    path = os.fspath(path)
    with open_for_reading(path, LogError, "a log file") as f:
        lines = f.read().decode("utf-8", "replace").splitlines()
    result = TrainingLog()
    iteration, test_net = -1, 0
    for line in lines:
        found = _ITERATION.search(line)
        if found:
            iteration = int(found.group(1))
        if iteration < 0:
            continue  # parse_log.py too starts at the first iteration
        _read_line(line, iteration, test_net, result)
        testing = _TESTING.search(line)
        if testing:
            test_net = int(testing.group(1))
    _label_outputs(result)
    return result


def _read_line(line: str, iteration: int, test_net: int, result: TrainingLog) -> None:
    loss = _SMOOTHED_LOSS.search(line)
    if loss:
        result.smoothed_loss.add(int(loss.group(1)), float(loss.group(2)))
        return
    rate = _LEARNING_RATE.search(line)
    if rate:
        result.learning_rate.add(int(rate.group(1)), float(rate.group(2)))
        return
    output = _OUTPUT.search(line)
    if output:
        kind, k, name, value, weighted = output.groups()
        key = (kind, test_net if kind == "Test" else 0, int(k))
        series = result.outputs.setdefault(key, Series(name))
        series.is_loss = series.is_loss or bool(weighted)
        series.add(iteration, float(value))


def _label_outputs(result: TrainingLog) -> None:
    """``train loss``, ``test accuracy``; ``test#1 accuracy`` for a second test net; an output
    #k appended where one blob gives several values."""
    counts: dict[tuple[str, int, str], int] = {}
    for (kind, net, _), series in result.outputs.items():
        counts[(kind, net, series.label)] = counts.get((kind, net, series.label), 0) + 1
    for (kind, net, k), series in result.outputs.items():
        prefix = kind.lower() + (f"#{net}" if net else "")
        several = counts[(kind, net, series.label)] > 1
        series.label = f"{prefix} {series.label}" + (f" #{k}" if several else "")


def plot_log(log_path: str | os.PathLike, out_path: str | os.PathLike | None = None) -> str:
    """Write the curves of ``log_path`` as a PNG (default: the log's name with ``.png``); returns
    the path written. A log without any curve is an error naming the file."""
    log_path = os.fspath(log_path)
    out_path = default_plot_path(log_path) if out_path is None else os.fspath(out_path)
    data = parse_log(log_path)
    curves = [data.smoothed_loss, *data.series("Train"), *data.series("Test")]
    losses = [s for s in curves if s.is_loss and s.values]
    others = [s for s in curves if not s.is_loss and s.values]
    if not losses and not others:
        raise LogError(f"{log_path}: no training curves found: no 'Iteration N, loss = L' nor "
                       f"'Train/Test net output #k: name = v' lines (is it a Caffe training log?)")
    figure = _figure(os.path.basename(log_path), [panel for panel in (losses, others) if panel])
    with atomic_output_path(out_path, LogError) as temp:
        figure.savefig(temp, format="png", dpi=100)
    return out_path


def default_plot_path(log_path: str) -> str:
    """``train.log`` -> ``train.png``; ``train`` -> ``train.png``."""
    stem, extension = os.path.splitext(log_path)
    return (stem if extension and extension != ".png" else log_path) + ".png"


def _figure(title: str, panels: list[list[Series]]):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4 * len(panels), 4.8), layout="constrained")
    FigureCanvasAgg(figure)
    for index, curves in enumerate(panels):
        axes = figure.add_subplot(1, len(panels), index + 1)
        for series in curves:
            style = "-" if series.label.startswith("train") else "o-"
            axes.plot(series.iterations, series.values, style, label=series.label, markersize=3)
        is_loss = curves[0].is_loss
        axes.set_title("losses" if is_loss else "other outputs", fontsize="medium")
        axes.set_xlabel("iteration")
        axes.set_ylabel("loss" if is_loss else "value")
        if is_loss and _wants_log_scale(curves):
            axes.set_yscale("log")
        axes.grid(True, alpha=0.3)
        axes.legend(fontsize="small")
    figure.suptitle(title)
    return figure


def _wants_log_scale(curves: list[Series]) -> bool:
    values = [v for s in curves for v in s.values if math.isfinite(v)]
    return bool(values) and min(values) > 0 and max(values) / min(values) > 100
