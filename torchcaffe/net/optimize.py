"""The optimized (inference-only) mode of a net: ``Net(..., optimize=True)`` or :func:`optimize`.

What it does to the plain plan, without touching the net's own layers or blobs:

* **folding**: a Convolution or InnerProduct whose top only feeds a chain of per-channel affine
  layers — BatchNorm with stored statistics, then Scale and/or Bias with learned ``(C,)`` blobs,
  or the PSPNet/SegNet fork ``BN`` in its inference forms — runs once with folded weights
  ``W' = a * W``, ``b' = a * b + c`` (computed in float64), where ``y = a * x + c`` is the chain.
  The folded layers are shallow copies of the originals that hold the new tensors, so the
  convolution code is the layer's own;
* **ReLU in place**: a ReLU whose bottom was just made by a layer that returns fresh memory and
  has no other reader overwrites it (no new buffer, one pass less over memory);
* **channels_last**: 4-D inputs of a conv net enter as ``torch.channels_last`` and the folded
  convolution weights are kept in that format (oneDNN/cuDNN's fast layout); outputs leave
  contiguous;
* **torch.compile** (``compile=True`` / ``optimize="compile"``): the plan is compiled on first use;
  when that fails (no compiler, unsupported platform) one warning says why and eager runs instead.

Folded copies are rebuilt automatically when a parameter or statistic they came from changes
(``copy_from``, a solver step, ``.to(device)``): each call compares the tensors' version counters.
The net's ``params`` and ``blobs`` keep showing the original layers; the optimized plan never
writes them. Everything runs under ``torch.no_grad()``: outputs carry no autograd graph.
"""
from __future__ import annotations

import copy
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import NetError
from ..proto import caffe_pb2

#: Layer types whose top is freshly allocated memory (never a view of a bottom): a ReLU may then
#: overwrite it in place.
FRESH_TOPS = frozenset({"Convolution", "Deconvolution", "InnerProduct", "BatchNorm", "Scale", "Bias",
                        "Eltwise", "Concat", "Pooling", "LRN", "BN"})
#: Layer types known to compute the same values on channels_last tensors (torch ops that take any
#: memory format): the net is switched to channels_last only when every layer is one of these.
CHANNELS_LAST_SAFE = frozenset({"Input", "Convolution", "Deconvolution", "InnerProduct", "BatchNorm",
                                "Scale", "Bias", "ReLU", "Sigmoid", "TanH", "Pooling", "LRN", "Eltwise",
                                "Concat", "Dropout", "Split", "Softmax", "BN", "Flatten", "PReLU"})


def optimize(net, compile: bool = False, channels_last: bool | None = None) -> "OptimizedNet":
    """An inference-only runner of ``net`` (a TEST-phase ``torchcaffe.Net``): called like the net,
    ``runner(data=x)`` returns the output blobs as tensors, equal to ``net(data=x)`` within float
    rounding. ``channels_last`` defaults to on for nets with 4-D convolutions."""
    return OptimizedNet(net, compile=compile, channels_last=channels_last)


@dataclass
class _Fold:
    """A Convolution/InnerProduct and the per-channel affine layers folded into it."""

    producer: int  # node index of the convolution / inner product
    affines: list[int]  # node indices of the folded layers, in net order
    top_slot: int  # the slot the last folded layer writes


class OptimizedNet(nn.Module):
    """The optimized plan of a net (see the module docstring). Holds no state of its own but the
    folded copies, which it rebuilds when the net's weights change."""

    def __init__(self, net, compile: bool = False, channels_last: bool | None = None):
        super().__init__()
        if net.phase != caffe_pb2.TEST:
            raise NetError(f"optimize: net {net.name!r} is a TRAIN net; the optimized mode is for "
                           f"inference (build the net with phase TEST)")
        object.__setattr__(self, "net", net)  # not a submodule: the net may hold this runner
        graph = net._graph
        self._folds = _find_folds(graph)
        self._folded_away = {i for fold in self._folds.values() for i in fold.affines}
        types = {node.type for node in graph.nodes}
        has_conv = any(node.type == "Convolution" and len(graph.slot_shapes[node.bottom_slots[0]]) == 4
                       for node in graph.nodes)
        self.channels_last = (has_conv and types <= CHANNELS_LAST_SAFE) if channels_last is None else channels_last
        exclusive = _exclusive_slots(graph, self._folds)
        self._inplace_relu = _inplace_relus(graph, exclusive)
        self._inplace_sum = _inplace_sums(graph, exclusive)
        self._signature: tuple | None = None
        self._steps: list | None = None
        self._runner: Callable = self._run
        if compile:
            self._runner = _compiled(self._run)

    # -- the folded layers ----------------------------------------------------------------------
    def _source_tensors(self) -> list[torch.Tensor]:
        nodes = self.net._graph.nodes
        layers = [nodes[i].layer for fold in self._folds.values() for i in (fold.producer, *fold.affines)]
        return [t for layer in layers for t in layer.caffe_blobs()]

    def _current_signature(self) -> tuple:
        return tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in self._source_tensors())

    def _build_steps(self) -> list:
        graph = self.net._graph
        steps = []
        for node in graph.nodes:
            if node.index in self._folded_away:
                continue
            fold = self._folds.get(node.index)
            layer = _folded_layer(graph, fold, self.channels_last) if fold else node.layer
            tops = (fold.top_slot,) if fold else tuple(node.top_slots)
            kind = "input" if getattr(node.layer, "is_input", False) else \
                "relu_" if node.index in self._inplace_relu else "add_" if node.index in self._inplace_sum else "layer"
            bottoms = self._inplace_sum.get(node.index, tuple(node.bottom_slots))
            steps.append((kind, layer, bottoms, tops, tuple(node.tops), tuple(self.net._release[node.index])))
        return steps

    def refresh(self) -> None:
        """Rebuild the folded copies now (done by itself when the source weights change)."""
        self._steps = self._build_steps()
        self._signature = self._current_signature()

    # -- running --------------------------------------------------------------------------------
    def forward(self, *args, **kwargs) -> "OrderedDict[str, torch.Tensor]":
        net = self.net
        given = dict(zip(net.inputs, args))
        given.update(kwargs)
        unknown = [name for name in given if name not in net.inputs]
        if unknown:
            raise NetError(f"{unknown} not input(s) of the net; inputs are {net.inputs}")
        return self.run(given)

    def run(self, given: Mapping[str, torch.Tensor]) -> "OrderedDict[str, torch.Tensor]":
        if self._steps is None or self._signature != self._current_signature():
            self.refresh()
        with torch.no_grad():
            outputs = self._runner(given)
        if self.channels_last:
            outputs = OrderedDict((k, v.contiguous()) for k, v in outputs.items())
        return outputs

    def _run(self, given: Mapping[str, torch.Tensor]) -> "OrderedDict[str, torch.Tensor]":
        net = self.net
        vals: list = [None] * len(net._graph.slot_names)
        for kind, layer, bottoms, tops, names, release in self._steps:
            if kind == "input":
                for name, slot in zip(names, tops):
                    vals[slot] = self._input_value(given, name)
                continue
            if kind == "relu_":
                vals[tops[0]] = _relu_(vals[bottoms[0]], layer.negative_slope)
            elif kind == "add_":
                vals[tops[0]] = vals[bottoms[0]].add_(vals[bottoms[1]])
            else:
                result = layer(*[vals[s] for s in bottoms])
                if isinstance(result, tuple):
                    for slot, tensor in zip(tops, result):
                        vals[slot] = tensor
                else:
                    vals[tops[0]] = result
            for slot in release:
                vals[slot] = None
        last = net._graph.last_slot
        return OrderedDict((name, vals[last[name]]) for name in net.outputs)

    def _input_value(self, given: Mapping[str, torch.Tensor], name: str) -> torch.Tensor:
        tensor = given.get(name)
        if tensor is None:
            tensor = self.net._blob_data(name)
        if self.channels_last and tensor.dim() == 4:
            tensor = tensor.contiguous(memory_format=torch.channels_last)
        return tensor

    def extra_repr(self) -> str:
        return (f"net={self.net.name!r}, folded={len(self._folded_away)} layer(s) into "
                f"{len(self._folds)}, in-place ReLUs={len(self._inplace_relu)}, "
                f"channels_last={self.channels_last}")


# -- the plan's analysis ----------------------------------------------------------------------------
def _readers(graph) -> dict[int, list[int]]:
    readers: dict[int, list[int]] = {}
    for node in graph.nodes:
        for slot in node.bottom_slots:
            readers.setdefault(slot, []).append(node.index)
    return readers


def _find_folds(graph) -> dict[int, _Fold]:
    """Every Convolution / InnerProduct followed by foldable affine layers, by producer index."""
    readers = _readers(graph)
    outputs = {graph.last_slot[name] for name in graph.outputs}
    folds = {}
    for node in graph.nodes:
        if not _foldable_producer(node, graph):
            continue
        slot, affines = node.top_slots[0], []
        while slot not in outputs and len(readers.get(slot, ())) == 1:
            reader = graph.nodes[readers[slot][0]]
            if _channel_affine(reader, graph.slot_shapes[slot]) is None:
                break
            affines.append(reader.index)
            slot = reader.top_slots[0]
        if affines:
            folds[node.index] = _Fold(node.index, affines, slot)
    return folds


def _foldable_producer(node, graph) -> bool:
    """A Convolution on axis 1, or an InnerProduct with a 2-D top (its outputs on axis 1)."""
    if node.type == "Convolution":
        return len(node.bottoms) == 1 and node.layer.direct
    return node.type == "InnerProduct" and len(graph.slot_shapes[node.top_slots[0]]) == 2


def _channel_affine(node, shape):
    """For a per-channel affine layer in its inference form, reading a bottom of ``shape``: a
    function of the dtype giving ``(a, c)``, ``y = a * x + c`` per channel (axis 1). Else None."""
    layer, kind, ndim = node.layer, node.type, len(shape)
    if len(node.bottoms) != 1 or len(node.tops) != 1 or ndim < 2:
        return None
    if kind == "BatchNorm" and layer.use_global_stats:
        def batch_norm(dtype):
            mean, var = layer.stored_statistics(dtype)
            a = torch.rsqrt(var + layer.eps)
            return a, -mean * a
        return batch_norm
    if kind in ("Scale", "Bias") and layer.axis % ndim == 1:
        blob = layer.scale if kind == "Scale" else layer.bias
        if tuple(blob.shape) != (shape[1],):
            return None
        if kind == "Bias":
            return lambda dtype: (torch.ones_like(blob, dtype=dtype), blob.to(dtype))
        return lambda dtype: (layer.scale.to(dtype), layer.bias.to(dtype) if layer.bias_term
                              else torch.zeros_like(blob, dtype=dtype))
    if kind == "BN":
        return _fork_bn_affine(layer)
    return None


def _fork_bn_affine(layer):
    if layer.flavour == "segnet":
        if layer.learn:
            return None
        return lambda dtype: (layer.scale.to(dtype).reshape(-1), layer.shift.to(dtype).reshape(-1))
    if layer.batch_stats:
        return None

    def pspnet(dtype):
        inv_std = torch.pow(layer.variance.to(dtype).reshape(-1) + layer.eps, -0.5)
        a = layer.slope.to(dtype).reshape(-1) * inv_std
        return a, layer.bias.to(dtype).reshape(-1) - layer.mean.to(dtype).reshape(-1) * a
    return pspnet


def _folded_layer(graph, fold: _Fold, channels_last: bool) -> nn.Module:
    """A shallow copy of the producer holding ``W' = a * W`` and ``b' = a * b + c``."""
    producer = graph.nodes[fold.producer]
    layer = producer.layer
    shape = graph.slot_shapes[producer.top_slots[0]]
    dtype = layer.weight.dtype
    a = torch.ones(layer.num_output, dtype=torch.float64, device=layer.weight.device)
    c = torch.zeros_like(a)
    with torch.no_grad():
        for index in fold.affines:
            scale, shift = _channel_affine(graph.nodes[index], shape)(torch.float64)
            a, c = a * scale.to(a.device), c * scale.to(a.device) + shift.to(a.device)
        weight = layer.weight.detach().to(torch.float64)
        if producer.type == "InnerProduct" and layer.transpose:
            weight = weight * a[None, :]
        else:
            weight = weight * a.view((-1,) + (1,) * (weight.dim() - 1))
        bias = layer.bias.detach().to(torch.float64) if getattr(layer, "bias", None) is not None else None
        bias = c if bias is None else a * bias + c
    folded = copy.copy(layer)
    folded._parameters = dict(layer._parameters)
    folded._buffers = dict(layer._buffers)
    folded._forward_hooks, folded._forward_pre_hooks = OrderedDict(), OrderedDict()
    weight = weight.to(dtype)
    if channels_last and weight.dim() == 4:
        weight = weight.contiguous(memory_format=torch.channels_last)
    folded._parameters["weight"] = nn.Parameter(weight, requires_grad=False)
    folded._parameters["bias"] = nn.Parameter(bias.to(dtype), requires_grad=False)
    if producer.type == "InnerProduct":
        folded.bias_term = True
    return folded


def _exclusive_slots(graph, folds: Mapping[int, _Fold]) -> set[int]:
    """Slots a layer may overwrite: made fresh by their producer, read by one layer only, not a
    net output."""
    readers = _readers(graph)
    outputs = {graph.last_slot[name] for name in graph.outputs}
    producer_of = {}
    for node in graph.nodes:
        for slot in node.top_slots:
            producer_of[slot] = node
    for fold in folds.values():
        producer_of[fold.top_slot] = graph.nodes[fold.producer]
    exclusive = set()
    for slot, producer in producer_of.items():
        fresh = producer.type in FRESH_TOPS and \
            (producer.type not in ("Concat", "Eltwise") or len(producer.bottoms) > 1)  # one bottom: passed through
        if fresh and slot not in outputs and len(readers.get(slot, ())) == 1:
            exclusive.add(slot)
    return exclusive


def _inplace_relus(graph, exclusive: set[int]) -> set[int]:
    """ReLUs that may overwrite their bottom (an exclusive slot)."""
    return {node.index for node in graph.nodes
            if node.type == "ReLU" and len(node.bottoms) == 1 and node.bottom_slots[0] in exclusive}


def _inplace_sums(graph, exclusive: set[int]) -> dict[int, tuple[int, int]]:
    """Two-bottom Eltwise SUMs (coefficients 1) that may add into one of their bottoms, as a
    residual block's ``out += shortcut`` does: layer index -> (the bottom written, the other).
    Float addition commutes exactly, so either bottom may take the sum."""
    chosen = {}
    for node in graph.nodes:
        if not getattr(node.layer, "in_place_any_bottom", False):
            continue
        a, b = node.bottom_slots
        if a != b and (a in exclusive or b in exclusive):
            chosen[node.index] = (a, b) if a in exclusive else (b, a)
    return chosen


def _relu_(x: torch.Tensor, negative_slope: float) -> torch.Tensor:
    """Caffe's ReLU forward, overwriting ``x``."""
    return torch.relu_(x) if negative_slope == 0 else F.leaky_relu_(x, negative_slope)


def _compiled(run: Callable) -> Callable:
    """``torch.compile(run)``, falling back to ``run`` with one warning if compiling fails."""
    state: dict = {}

    def call(given):
        if state.get("failed"):
            return run(given)
        try:
            if "fn" not in state:
                state["fn"] = torch.compile(run)
            return state["fn"](given)
        except Exception as error:  # compile needs a working toolchain; eager is always there
            state["failed"] = True
            warnings.warn(f"torchcaffe optimize: torch.compile is unavailable here ({type(error).__name__}: "
                          f"{str(error).splitlines()[0] if str(error) else ''}); running the optimized "
                          f"plan eagerly", RuntimeWarning, stacklevel=3)
            return run(given)
    return call
