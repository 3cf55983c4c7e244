"""What the ONNX and the PyTorch-source exporters share.

* :class:`ExportError` — a net, or one of its layers, that an exporter cannot express;
* :func:`open_net` — the TEST net to export, from a prototxt (and weights) or a built ``Net``;
* :func:`plan_export` — the layers that compute the wanted outputs, in Caffe's order;
* :func:`python_names` — Caffe names made into distinct Python identifiers;
* :func:`sample_inputs` / :func:`relative_error` — what both exporters' checks compare with.
"""
from __future__ import annotations

import keyword
import os
import re
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch

from ..errors import CaffeError
from ..net.graph import Node
from ..net.net import TEST, Net


class ExportError(CaffeError):
    """A net, or one of its layers, that an exporter cannot express (the message says why)."""


def open_net(net, weights: str | os.PathLike | None = None) -> Net:
    """The net to export: a built :class:`~torchcaffe.Net` as it is, or a prototxt path (or
    ``NetParameter``) built in the TEST phase, with ``weights`` (``.caffemodel`` or ``.h5``) loaded."""
    if isinstance(net, Net):
        if weights is not None:
            raise TypeError("weights are loaded with a prototxt; a built Net already holds its weights "
                            "(call net.copy_from(weights) first)")
        return net
    return Net(net, TEST, weights=weights)


@dataclass
class ExportPlan:
    """The part of a net an exporter writes: its layers in Caffe's order (Input and Silence layers
    left out), the input blobs they read and the output blobs they give."""

    net: Net
    nodes: list[Node]
    inputs: list[str]
    outputs: list[str]

    def input_shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.net.blobs[name].shape)

    def bottom_shapes(self, node: Node) -> list[tuple[int, ...]]:
        return [tuple(self.net._graph.slot_shapes[s]) for s in node.bottom_slots]


def default_outputs(net: Net) -> list[str]:
    """The blobs an export gives by default: the net's outputs (the blobs no layer reads) less the
    inputs no layer writes (an input nothing reads is no result); when a ``Silence`` layer hides them all (as
    colorization's deploy net does), the blobs it silences."""
    graph = net._graph
    fed = {slot for node in graph.nodes if getattr(node.layer, "is_input", False) for slot in node.top_slots}
    outputs = [name for name in net.outputs if graph.last_slot[name] not in fed]
    if outputs:
        return outputs
    return [name for node in graph.nodes if node.type == "Silence" for name in node.bottoms
            if graph.last_slot[name] not in fed]


def plan_export(net: Net, outputs: Sequence[str] | None = None) -> ExportPlan:
    """The layers needed for ``outputs`` (default: :func:`default_outputs`).

    A layer that produces data by itself (Data, HDF5Data, DummyData...) cannot be exported: the
    exported model takes its data as inputs, as a deploy net's ``Input`` layers give them.
    """
    graph = net._graph
    wanted = list(outputs) if outputs else default_outputs(net)
    unknown = [name for name in wanted if name not in graph.last_slot]
    if unknown:
        raise ExportError(f"no blob named {', '.join(map(repr, unknown))} in the net; its blobs are "
                          f"{', '.join(graph.blob_names)}")
    if not wanted:
        raise ExportError("the net has no output blob to export (every top is consumed or silenced)")
    needed = {graph.last_slot[name] for name in wanted}
    kept: list[Node] = []
    for node in reversed(graph.nodes):
        if not needed.intersection(node.top_slots):
            continue
        kept.append(node)
        needed.update(node.bottom_slots)
    kept.reverse()
    inputs = [name for name in net.inputs if graph.last_slot[name] in needed]
    nodes = []
    for node in kept:
        if getattr(node.layer, "is_input", False):
            continue
        if not node.bottoms and node.type != "Parameter":
            raise ExportError(f"{node.label}: produces its own data, which an exported model cannot do; "
                              f"export a deploy net, whose data come in through Input layers (or pass "
                              f"outputs= to export only what comes after it)")
        nodes.append(node)
    return ExportPlan(net, nodes, inputs, wanted)


#: Names a generated identifier never takes: Python's own, and what generated code refers to.
RESERVED = frozenset(keyword.kwlist) | {"self", "torch", "nn", "F", "None", "True", "False"}


def python_name(name: str) -> str:
    """A Caffe name as a Python identifier: other characters become ``_``; a leading digit or a
    keyword gets an underscore (``conv1/7x7_s2`` -> ``conv1_7x7_s2``, ``1x1`` -> ``_1x1``)."""
    ident = re.sub(r"\W", "_", name, flags=re.ASCII) or "_"
    if ident[0].isdigit():
        ident = "_" + ident
    if keyword.iskeyword(ident):
        ident += "_"
    return ident


def python_names(names: Iterable[str], taken: Iterable[str] = ()) -> dict[str, str]:
    """Distinct identifiers for distinct ``names`` (``_2``, ``_3``... on a clash), none in ``taken``."""
    used = set(taken) | RESERVED
    out: dict[str, str] = {}
    for name in names:
        if name in out:
            continue
        base = python_name(name)
        ident, k = base, 2
        while ident in used:
            ident, k = f"{base}_{k}", k + 1
        used.add(ident)
        out[name] = ident
    return out


def sample_inputs(plan: ExportPlan, seed: int = 0, batch: int | None = None) -> dict[str, torch.Tensor]:
    """Uniform [0, 1) values for every input blob (batch axis resized to ``batch`` when given)."""
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for name in plan.inputs:
        shape = list(plan.input_shape(name))
        if batch is not None and shape:
            shape[0] = batch
        out[name] = torch.rand(shape, generator=generator)
    return out


def relative_error(actual, expected) -> float:
    """``max |actual - expected|`` over ``max |expected|``: the error relative to the output's
    scale (element-wise ratios blow up where a value crosses zero)."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    if actual.shape != expected.shape:
        return float("inf")
    if expected.size == 0:
        return 0.0
    scale = max(float(np.abs(expected).max()), 1e-30)
    return float(np.abs(actual - expected).max()) / scale


def reference_outputs(plan: ExportPlan, inputs: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """What torchcaffe computes for ``outputs`` from ``inputs`` (nothing kept in the blobs)."""
    net = plan.net
    full = dict(inputs)
    for name in net.inputs:  # inputs the wanted outputs do not need still have to be fed
        if name not in full:
            full[name] = torch.zeros(tuple(net.blobs[name].shape))
    with torch.no_grad():
        values = _forward_to(net, full, plan.outputs)
    return {name: values[name].detach().cpu().numpy() for name in plan.outputs}


def _forward_to(net: Net, inputs: Mapping[str, torch.Tensor], wanted: Sequence[str]) -> dict:
    """The values of the ``wanted`` blobs after a forward from ``inputs`` (the torch way)."""
    graph = net._graph
    given = {k: v.to(net._anchor.device, net._anchor.dtype) for k, v in inputs.items()}
    vals: list = [None] * len(graph.slot_names)
    net._execute(vals, 0, len(graph.nodes) - 1, given=given)
    return {name: vals[graph.last_slot[name]] for name in wanted}


def check_errors(errors: Mapping[str, float], tolerance: float, what: str) -> None:
    """Raise when an output's relative error exceeds ``tolerance``."""
    bad = {name: err for name, err in errors.items() if not err <= tolerance}
    if bad:
        listed = ", ".join(f"{name!r}: {err:.3g}" for name, err in bad.items())
        raise ExportError(f"{what} does not reproduce torchcaffe's outputs within {tolerance:g} (relative "
                          f"to each output's largest value): {listed}. Please report this with the prototxt")
