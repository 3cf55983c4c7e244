"""Gradient checking with Caffe's rules (``test_gradient_check_util.hpp``): compare a layer's
backward — autograd's, or the hand-written one of a classic Python layer — with centred finite
differences.

    checker = torchcaffe.GradientChecker(stepsize=1e-2, threshold=1e-3)
    checker.check_gradient_exhaustive(layer, [x])       # raises GradientCheckError on a mismatch

Caffe's procedure, reproduced:

* **objective**: ``1/2 * sum(top^2)`` over all tops (``check_gradient``), or one top element
  taken twice, ``2 * top[i][j]`` (``check_gradient_exhaustive``: every element of every top in
  turn; ``check_gradient_eltwise``: the same, for element-wise layers, where the derivative of
  top element ``j`` by bottom element ``i != j`` must be 0);
* **what is checked**: every learnable blob of the layer and, with ``check_bottom=-1`` (the
  default), every bottom; ``check_bottom=i`` checks bottom ``i`` (and the blobs);
  ``check_bottom < -1`` the blobs only. Parameter diffs are zeroed before the backward.
* **reseeding**: torch's and numpy's generators are seeded with ``seed`` before every forward,
  so Dropout-like layers draw the same mask in each of them (and restored afterwards);
* **finite differences**: ``(f(x + h) - f(x - h)) / 2h`` with ``h = stepsize``, one element at
  a time;
* **tolerance**: ``|computed - estimated| <= threshold * max(|computed|, |estimated|, 1)``;
* **kinks**: an element whose value satisfies ``kink - kink_range <= |x| <= kink + kink_range``
  is not compared (ReLU at 0: ``kink=0, kink_range=stepsize``; the default range -1 skips none).

Where we differ: the check runs in float64 by default (``dtype=``; Caffe uses the layer's type);
the forwards at ``x +- h`` are shared by every objective (the same numbers Caffe's per-objective
loop gets, as every forward is reseeded); buffers (BatchNorm's statistics) are not checked, only
learnable blobs; values are restored exactly after each perturbation, and the layer's state is
restored after the check. ``max_elements`` checks a random sample of each blob's elements.

``check_gradient_net(net)`` checks every layer of a net on the values a forward gives it (Caffe's
``CheckGradientNet``); ``torchcaffe gradcheck NET.prototxt [--layer NAME]`` (:func:`run`) prints
the worst mismatch per bottom and parameter and exits with 1 when any exceeds the threshold.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import sys
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from google.protobuf import text_format

from .errors import CaffeError, GradientCheckError
from .layers.base import Layer, LayerSetup
from .layers.python import Python, PythonLayer, TorchLayer
from .layers.registry import layer_class
from .proto import caffe_pb2

__all__ = ["GradientChecker", "GradientReport", "BlobResult", "make_layer", "add_arguments", "run"]

#: Entries of (objectives x checked elements) gradients kept at once; more are done in chunks.
_CHUNK_ENTRIES = 1 << 22


@dataclass
class BlobResult:
    """The comparison for one bottom or parameter blob: its worst element and the counts."""

    blob: str
    shape: tuple
    source: str  # "autograd", or "backward" for a classic Python layer's own backward
    compared: int = 0
    skipped: int = 0  # comparisons left out at kinks
    failures: int = 0
    worst_index: tuple | None = None
    computed: float = 0.0
    estimated: float = 0.0
    error: float = 0.0
    scale: float = 1.0
    objective: str = ""

    @property
    def ratio(self) -> float:
        """The worst ``|computed - estimated| / scale``: fails when above the threshold."""
        return self.error / self.scale

    @property
    def ok(self) -> bool:
        return self.failures == 0


@dataclass
class GradientReport:
    """All blob comparisons of one layer."""

    layer: str
    threshold: float
    blobs: list[BlobResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(b.ok for b in self.blobs)

    def worst(self) -> BlobResult | None:
        return max(self.blobs, key=lambda b: b.ratio, default=None)

    def format(self) -> str:
        """A table: per blob, the worst mismatch and whether it passed."""
        lines = [f"{self.layer}:"]
        header = f"  {'blob':<24} {'source':<9} {'compared':>9} {'worst index':<16} {'analytic':>12} " \
                 f"{'numeric':>12} {'error/scale':>11}"
        lines.append(header)
        for b in self.blobs:
            index = "-" if b.worst_index is None else str(tuple(int(i) for i in b.worst_index))
            verdict = "ok" if b.ok else f"FAIL ({b.failures} over {self.threshold:g})"
            lines.append(f"  {b.blob:<24} {b.source:<9} {b.compared:>9} {index:<16} {b.computed:>12.6g} "
                         f"{b.estimated:>12.6g} {b.ratio:>11.3g}  {verdict}")
        if not self.blobs:
            lines.append("  (nothing to check: no differentiable bottom and no learnable blob)")
        return "\n".join(lines)

    def failure_message(self) -> str:
        worst = self.worst()
        failures = sum(b.failures for b in self.blobs)
        compared = sum(b.compared for b in self.blobs)
        return (f"{self.layer}: gradient check failed for {failures} of {compared} compared values; worst: "
                f"{worst.blob} at index {tuple(int(i) for i in worst.worst_index)}: {worst.source} gave "
                f"{worst.computed:.6g}, finite differences {worst.estimated:.6g} (|difference| "
                f"{worst.error:.3g} > threshold {self.threshold:g} x scale {worst.scale:.3g}; objective "
                f"{worst.objective})")


@dataclass
class _Blob:
    label: str
    tensor: torch.Tensor  # a leaf: a bottom we made, or the layer's parameter


class GradientChecker:
    """Caffe's ``GradientChecker(stepsize, threshold, seed=1701, kink=0, kink_range=-1)``.

    ``layer`` arguments may be a built layer (any registered type, or ``Python``), a
    ``LayerParameter`` or its prototxt text (built for the given bottoms), or a Python layer
    class (a ``torchcaffe.Layer``/``TorchLayer`` subclass). ``bottoms`` are arrays or tensors;
    the checker works on float64 copies of them (``dtype``) on the layer's device. Every
    ``check_*`` method returns a :class:`GradientReport` and raises
    :class:`~torchcaffe.errors.GradientCheckError` naming the blob and index of the worst
    mismatch when any comparison fails.
    """

    def __init__(self, stepsize: float = 1e-2, threshold: float = 1e-3, seed: int = 1701, kink: float = 0.0,
                 kink_range: float = -1.0, *, dtype: torch.dtype = torch.float64, max_elements: int | None = None):
        if stepsize <= 0 or threshold <= 0:
            raise CaffeError(f"GradientChecker needs stepsize > 0 and threshold > 0, got {stepsize} and {threshold}")
        self.stepsize = float(stepsize)
        self.threshold = float(threshold)
        self.seed = int(seed)
        self.kink = float(kink)
        self.kink_range = float(kink_range)
        self.dtype = dtype
        self.max_elements = max_elements

    # -- Caffe's entry points -----------------------------------------------------------------
    def check_gradient(self, layer, bottoms, check_bottom=-1) -> GradientReport:
        """Objective ``1/2 * sum(top^2)`` (Caffe's ``CheckGradient``)."""
        return self._checked(layer, bottoms, check_bottom, objectives=None, element_wise=False)

    def check_gradient_exhaustive(self, layer, bottoms, check_bottom=-1) -> GradientReport:
        """Every top element in turn as the objective (Caffe's ``CheckGradientExhaustive``)."""
        return self._checked(layer, bottoms, check_bottom, objectives="all", element_wise=False)

    def check_gradient_eltwise(self, layer, bottoms) -> GradientReport:
        """For element-wise layers: top element ``j`` depends on bottom element ``j`` only
        (Caffe's ``CheckGradientEltwise``)."""
        return self._checked(layer, bottoms, -1, objectives="all", element_wise=True)

    def check_gradient_single(self, layer, bottoms, check_bottom: int, top_id: int, top_data_id: int,
                              element_wise: bool = False) -> GradientReport:
        """One objective: ``2 * top[top_id][top_data_id]``, or ``1/2 * sum(top^2)`` for
        ``top_id < 0`` (Caffe's ``CheckGradientSingle``)."""
        objectives = None if top_id < 0 else [(top_id, top_data_id)]
        return self._checked(layer, bottoms, check_bottom, objectives=objectives, element_wise=element_wise)

    def check_gradient_net(self, net, inputs: dict | None = None, layers: Sequence[str] | None = None,
                           exhaustive: bool = True) -> list[GradientReport]:
        """Check each layer of ``net`` (or those named in ``layers``) on the bottoms a forward of
        the net gives it (``inputs``: numpy arrays by input name), one layer at a time (Caffe's
        ``CheckGradientNet``); raises on the first layer that fails, else returns the reports."""
        reports = []
        for report in self.iter_net(net, inputs, layers, exhaustive):
            if not report.ok:
                raise GradientCheckError(report.failure_message(), report)
            reports.append(report)
        return reports

    def iter_net(self, net, inputs: dict | None = None, layers: Sequence[str] | None = None,
                 exhaustive: bool = True):
        """Yield a report per checked layer of ``net`` without raising (what the CLI prints)."""
        wanted = set(layers) if layers is not None else None
        if wanted is not None:
            unknown = wanted - set(net._layer_names)
            if unknown:
                raise CaffeError(f"no layer named {sorted(unknown)} in the net; its layers are {net._layer_names}")
        for node in net._graph.nodes:
            if wanted is not None and node.name not in wanted:
                continue
            checked = _net_checked_bottoms(node)
            if not checked and not _learnable(node.layer):
                continue
            with _seeded_rngs(self.seed):
                _reseed(self.seed)
                net.forward(**(inputs or {}))
            bottoms = [net._vals[slot].detach().clone() for slot in node.bottom_slots]
            yield self._report(node.layer, bottoms, checked, "all" if exhaustive else None, False,
                               node.label, list(node.bottoms))

    # -- the work ---------------------------------------------------------------------------------
    def _checked(self, layer, bottoms, check_bottom, objectives, element_wise) -> GradientReport:
        layer, names = _as_layer(layer, bottoms)
        report = self._report(layer, list(bottoms), _bottom_selection(check_bottom, len(bottoms)), objectives,
                              element_wise, layer.label, names)
        if not report.ok:
            raise GradientCheckError(report.failure_message(), report)
        return report

    def _report(self, layer: Layer, bottoms, checked: list[int], objectives, element_wise: bool, label: str,
                names: list[str]) -> GradientReport:
        device = _layer_device(layer, bottoms)
        source = "backward" if isinstance(layer, Python) and not layer.torch_style else "autograd"
        with _layer_state(layer, self.dtype), _seeded_rngs(self.seed):
            inputs = [_as_tensor(b, self.dtype, device) for b in bottoms]
            blobs = [_Blob(_bottom_label(i, names), inputs[i]) for i in checked]
            if element_wise and layer.blob_names:
                raise CaffeError(f"{label}: check_gradient_eltwise is for layers without blobs")
            blobs = [_Blob(f"param {j}", getattr(layer, name)) for j, name in enumerate(layer.blob_names)
                     if name in layer._parameters] + blobs
            for blob in blobs:
                blob.tensor.requires_grad_(True)
            for i, tensor in enumerate(inputs):
                if i not in checked:
                    tensor.requires_grad_(False)
            tops = self._forward(layer, inputs)
            top_sizes = [t.numel() for t in tops]
            if objectives == "all":
                objectives = [(t, j) for t, size in enumerate(top_sizes) for j in range(size)]
                if not objectives:
                    raise CaffeError(f"{label}: exhaustive checks need at least one top element")
            elif objectives is None:
                objectives = [(-1, -1)]
            results = [BlobResult(b.label, tuple(b.tensor.shape), source) for b in blobs]
            indices = [self._elements(b.tensor) for b in blobs]
            per_chunk = max(1, _CHUNK_ENTRIES // max(1, sum(len(ix) for ix in indices)))
            for start in range(0, len(objectives), per_chunk):
                chunk = objectives[start:start + per_chunk]
                computed = [self._analytic(layer, inputs, blobs, objective) for objective in chunk]
                self._compare(layer, inputs, blobs, indices, chunk, computed, element_wise, results)
        return GradientReport(label, self.threshold, results)

    def _forward(self, layer: Layer, inputs) -> tuple:
        _reseed(self.seed)
        tops = layer(*inputs)
        return tops if isinstance(tops, tuple) else (tops,)

    def _elements(self, tensor: torch.Tensor) -> np.ndarray:
        count = tensor.numel()
        if self.max_elements is None or count <= self.max_elements:
            return np.arange(count)
        rng = np.random.default_rng(self.seed)
        return np.sort(rng.choice(count, self.max_elements, replace=False))

    def _analytic(self, layer: Layer, inputs, blobs: list[_Blob], objective) -> list[np.ndarray]:
        """The gradients the layer's backward gives for ``objective``, per checked blob."""
        for blob in blobs:
            blob.tensor.grad = torch.zeros_like(blob.tensor)  # Caffe zeroes the diffs first
        with torch.enable_grad():
            loss = _objective(self._forward(layer, inputs), objective)
            if loss.requires_grad:
                loss.backward()
        return [blob.tensor.grad.detach().reshape(-1).to("cpu", torch.float64).numpy().copy() for blob in blobs]

    def _compare(self, layer, inputs, blobs, indices, objectives, computed, element_wise, results) -> None:
        h = self.stepsize
        for b, (blob, elements, result) in enumerate(zip(blobs, indices, results)):
            flat = blob.tensor.data.view(-1)
            for i in elements:
                i = int(i)
                feature = float(flat[i])
                if self.kink - self.kink_range <= abs(feature) <= self.kink + self.kink_range:
                    result.skipped += len(objectives)  # a non-smooth point: not compared
                    continue
                plus, minus = self._perturbed_tops(layer, inputs, flat, i, feature, h)
                for o, objective in enumerate(objectives):
                    if element_wise and i != objective[1]:
                        estimated = 0.0
                    else:
                        estimated = (_objective(plus, objective).item() - _objective(minus, objective).item()) / h / 2.0
                    self._record(result, computed[o][b][i], estimated, i, blob.tensor.shape, objective)

    def _perturbed_tops(self, layer, inputs, flat, i, feature, h):
        with torch.no_grad():
            flat[i] = feature + h
            plus = self._forward(layer, inputs)
            flat[i] = feature - h
            minus = self._forward(layer, inputs)
            flat[i] = feature
        return plus, minus

    def _record(self, result: BlobResult, computed: float, estimated: float, i: int, shape, objective) -> None:
        computed, estimated = float(computed), float(estimated)
        scale = max(abs(computed), abs(estimated), 1.0)
        error = abs(computed - estimated)
        if not math.isfinite(error):
            error = math.inf
        result.compared += 1
        if error > self.threshold * scale:
            result.failures += 1
        if result.worst_index is None or error / scale > result.ratio:
            result.worst_index = tuple(int(v) for v in np.unravel_index(i, tuple(shape))) if len(shape) else ()
            result.computed, result.estimated, result.error, result.scale = computed, estimated, error, scale
            result.objective = _describe(objective)


# -- objectives ------------------------------------------------------------------------------------
def _objective(tops: tuple, objective) -> torch.Tensor:
    """Caffe's ``GetObjAndGradient``: half the sum of squares, or twice one top element."""
    top_id, top_data_id = objective
    if top_id < 0:
        return sum((t.to(torch.float64) ** 2).sum() for t in tops) / 2.0
    return tops[top_id].reshape(-1)[top_data_id].to(torch.float64) * 2.0


def _describe(objective) -> str:
    top_id, top_data_id = objective
    return "1/2 sum(top^2)" if top_id < 0 else f"2 * top {top_id}[{top_data_id}]"


# -- the layer under test ------------------------------------------------------------------------
def make_layer(spec, bottom_shapes, phase: int = caffe_pb2.TRAIN) -> Layer:
    """Build one layer from a ``LayerParameter`` or its prototxt text (``'type: "ReLU"'`` or
    ``'layer { type: "ReLU" ... }'``) for bottoms of ``bottom_shapes``."""
    if isinstance(spec, str):
        text = spec.strip()
        param = caffe_pb2.LayerParameter()
        if text.startswith("layer") and "{" in text:
            text = text[text.index("{") + 1:text.rindex("}")]
        try:
            text_format.Merge(text, param)
        except text_format.ParseError as err:
            raise CaffeError(f"cannot read the layer: {err}") from None
        spec = param
    param = caffe_pb2.LayerParameter()
    param.CopyFrom(spec)
    param.name = param.name or "layer"
    if not param.bottom:
        param.bottom.extend(f"bottom{i}" for i in range(len(bottom_shapes)))
    cls = layer_class(param.type, param.name)
    if not param.top:
        wanted = max(cls.min_tops or 0, cls.exact_tops or 0, 1)
        param.top.extend(f"top{i}" for i in range(wanted))
    return cls(LayerSetup(param, [torch.Size(tuple(s)) for s in bottom_shapes], phase))


def _as_layer(layer, bottoms) -> tuple[Layer, list[str]]:
    shapes = [tuple(np.shape(b)) for b in bottoms]
    if isinstance(layer, Layer):
        return layer, [f"bottom {i}" for i in range(len(bottoms))]
    if isinstance(layer, type) and issubclass(layer, (PythonLayer, TorchLayer)):
        return Python.from_class(layer, shapes, name=layer.__name__), [f"bottom {i}" for i in range(len(bottoms))]
    if isinstance(layer, (str, caffe_pb2.LayerParameter)):
        built = make_layer(layer, shapes)
        return built, [f"bottom {i}" for i in range(len(bottoms))]
    raise CaffeError(f"GradientChecker checks a torchcaffe layer, a LayerParameter (or its text) or a Python "
                     f"layer class; got {type(layer).__name__}")


def _bottom_selection(check_bottom, count: int) -> list[int]:
    if isinstance(check_bottom, (list, tuple)):
        return sorted(set(int(i) for i in check_bottom))
    if check_bottom == -1:
        return list(range(count))
    if check_bottom >= 0:
        if check_bottom >= count:
            raise CaffeError(f"check_bottom {check_bottom} is out of range: the layer has {count} bottom(s)")
        return [check_bottom]
    return []


def _bottom_label(i: int, names: list[str]) -> str:
    name = names[i] if i < len(names) else ""
    return f"bottom {i}" if not name or name == f"bottom {i}" else f"bottom {i} ({name})"


def _net_checked_bottoms(node) -> list[int]:
    """The bottoms a net check compares: those the layer back-propagates into (not labels, not
    ``propagate_down: false``), of differentiable layers only."""
    if not node.layer.differentiable:
        return []
    return [j for j in range(len(node.bottoms))
            if node.layer.allow_force_backward(j) and not (node.detach and node.detach[j])]


def _learnable(layer: Layer) -> bool:
    return layer.differentiable and any(name in layer._parameters for name in layer.blob_names)


def _layer_device(layer: Layer, bottoms) -> torch.device:
    for tensor in list(layer.parameters()) + list(layer.buffers()):
        return tensor.device
    for bottom in bottoms:
        if isinstance(bottom, torch.Tensor):
            return bottom.device
    return torch.device("cpu")


def _as_tensor(value, dtype, device) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach().to(device=device, dtype=dtype).clone()
    return torch.tensor(np.asarray(value, dtype=np.float64), dtype=dtype, device=device)


@contextlib.contextmanager
def _layer_state(layer: Layer, dtype: torch.dtype):
    """Run with the layer's parameters and buffers in ``dtype`` (the same tensor objects, so
    sharing survives), parameters requiring their gradient; put everything back afterwards."""
    saved = []
    tensors = {id(t): t for t in list(layer.parameters()) + list(layer.buffers())}
    for tensor in tensors.values():
        saved.append((tensor, tensor.data.clone(), tensor.requires_grad, tensor.grad))
        tensor.data = tensor.data.to(dtype) if tensor.is_floating_point() else tensor.data
        tensor.grad = None
    try:
        yield
    finally:
        for tensor, data, requires_grad, grad in saved:
            tensor.data = data
            tensor.grad = grad
            tensor.requires_grad_(requires_grad)


@contextlib.contextmanager
def _seeded_rngs(seed: int):
    """Restore torch's (CPU and CUDA) and numpy's global generators after the block."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    state = np.random.get_state()
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            np.random.set_state(state)


def _reseed(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


# -- the `torchcaffe gradcheck` verb -------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``torchcaffe gradcheck``."""
    parser.add_argument("net", help="the net's prototxt")
    parser.add_argument("--layer", action="append", metavar="NAME", help="check only this layer (repeatable)")
    parser.add_argument("--weights", default=None, metavar="FILE", help="a .caffemodel or .caffemodel.h5 to load first")
    parser.add_argument("--phase", default="TRAIN", choices=["TRAIN", "TEST"], help="the net's phase (default TRAIN)")
    parser.add_argument("--level", type=int, default=0, help="the net's NetState level")
    parser.add_argument("--stage", action="append", default=[], help="a NetState stage (repeatable)")
    parser.add_argument("--stepsize", type=float, default=1e-2, help="finite-difference step (default 1e-2)")
    parser.add_argument("--threshold", type=float, default=1e-3, help="relative tolerance (default 1e-3)")
    parser.add_argument("--seed", type=int, default=1701, help="seed of the inputs and of every forward (default 1701)")
    parser.add_argument("--kink", type=float, default=0.0, help="skip elements whose |value| is within ...")
    parser.add_argument("--kink_range", "--kink-range", type=float, default=-1.0,
                        help="... this range of --kink (default -1: skip none)")
    parser.add_argument("--max_elements", "--max-elements", type=int, default=100,
                        help="check at most this many elements of each blob, sampled (default 100; 0: all)")
    parser.add_argument("--exhaustive", action="store_true",
                        help="every top element as the objective in turn (Caffe's exhaustive check; slow) "
                             "instead of 1/2 sum(top^2)")
    parser.add_argument("--no_python_layers", "--no-python-layers", action="store_true",
                        help="refuse nets with Python layers (for files you do not trust)")


def run(args: argparse.Namespace, out=None) -> int:
    from .net.net import Net
    out = out or sys.stdout
    phase = caffe_pb2.TRAIN if args.phase == "TRAIN" else caffe_pb2.TEST
    torch.manual_seed(args.seed)
    net = Net(args.net, phase, level=args.level, stages=args.stage, weights=args.weights,
              allow_python_layers=not args.no_python_layers)
    checker = GradientChecker(args.stepsize, args.threshold, args.seed, args.kink, args.kink_range,
                              max_elements=args.max_elements or None)
    inputs = _cli_inputs(net, args.seed)
    failed = checked = 0
    for report in checker.iter_net(net, inputs, args.layer, exhaustive=args.exhaustive):
        print(report.format(), file=out)
        checked += 1
        failed += not report.ok
    print(f"{checked} layer(s) checked, {failed} failed (threshold {args.threshold:g}, stepsize "
          f"{args.stepsize:g})", file=out)
    return 1 if failed else 0


def _cli_inputs(net, seed: int) -> dict[str, np.ndarray]:
    """Values for the net's inputs: standard normal, except zeros for inputs that only feed
    labels (bottoms the layer never back-propagates into), which must be valid class indices."""
    rng = np.random.default_rng(seed)
    return {name: np.zeros(net.blobs[name].shape) if _only_labels(net, name)
            else rng.standard_normal(net.blobs[name].shape) for name in net.inputs}


def _only_labels(net, blob: str) -> bool:
    """Whether every layer reading ``blob`` (through Split layers too) reads it as a label."""
    readers = [(node, j) for node in net._graph.nodes for j, name in enumerate(node.bottoms) if name == blob]
    if not readers:
        return False
    for node, j in readers:
        if node.type == "Split":
            if not all(_only_labels(net, top) for top in node.tops):
                return False
        elif node.layer.allow_force_backward(j):
            return False
    return True
