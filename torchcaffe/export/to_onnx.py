"""A TEST net as an ONNX model, through torch's TorchScript-based exporter.

The layers the outputs need are traced in Caffe's order, each inside a module named after the
layer, so every ONNX node name starts with its Caffe layer name (``conv1/Conv``) and every weight
is named ``<layer>.<blob>`` (``conv1.weight``); the inputs and outputs keep their blob names and
axis 0 of every input is dynamic (``batch``). A layer whose Caffe semantics the trace of its
``forward`` would not keep defines ``export_onnx(*bottoms)`` beside its forward: it returns the
same tops through ops that export well (see ``onnx_ops.as_onnx_node``), or raises
:class:`ExportError` saying why the layer has no ONNX form.

Why the TorchScript exporter (``dynamo=False``): it traces torchcaffe's Python executor as it
runs, which is exactly right for a static Caffe graph, and needs nothing beyond torch and onnx;
the ``torch.export``-based exporter would also need ``onnxscript``. Its highest opset is 20.

Tracing records the ops that ran: a forward that decides things from tensor *values* in Python
(numpy, ``.tolist()``, loops over detections) would be frozen at the traced values. Such layers
refuse in their hook; and ``verify`` (on by default) runs the model in onnxruntime on other
random inputs, at another batch size, so a frozen trace cannot pass unnoticed.
"""
from __future__ import annotations

import io
import os
import re
import warnings
from typing import Sequence

import torch
from torch import nn

from ..io.files import atomic_output_file
from .common import (ExportError, ExportPlan, check_errors, open_net, plan_export, python_names,
                     reference_outputs, relative_error, sample_inputs)

#: The highest opset torch 2.13's TorchScript-based exporter writes.
OPSET = 20
#: How close onnxruntime's outputs must be to torchcaffe's in the export's own check.
TOLERANCE = 1e-4


def export_onnx(net, weights=None, out_path: str | os.PathLike | None = None, *,
                outputs: Sequence[str] | None = None, opset: int = OPSET, dynamic_batch: bool = True,
                verify: bool = True):
    """Export a TEST net to ONNX; returns the ``onnx.ModelProto`` (also written to ``out_path``).

    ``net``: a prototxt path (built in the TEST phase with ``weights`` loaded) or a built
    :class:`~torchcaffe.Net`. ``outputs``: the blobs to export (default: the net's outputs); only
    the layers they need are exported, which also cuts off a head ONNX cannot express.
    ``dynamic_batch``: axis 0 of every input is symbolic. ``verify``: run the model in
    onnxruntime (CPU) at the net's batch and one more, and compare with torchcaffe.
    The model passes ``onnx.checker``; a layer that cannot be exported raises :class:`ExportError`
    naming it, and no file is written.
    """
    import onnx

    net = open_net(net, weights)
    plan = plan_export(net, outputs)
    model = _trace_to_onnx(plan, opset, dynamic_batch)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as error:
        raise ExportError(f"the exported ONNX model fails onnx.checker: {error}") from None
    if verify:
        verify_onnx(plan, model.SerializeToString(), dynamic_batch)
    if out_path is not None:
        with atomic_output_file(os.fspath(out_path), ExportError) as f:
            f.write(model.SerializeToString())
    return model


def onnx_output_name(plan: ExportPlan, blob: str) -> str:
    """The ONNX name of output ``blob``: its own, unless an input already has it (a layer ran in
    place on an input blob): then ``<blob>_output``."""
    return f"{blob}_output" if blob in plan.inputs else blob


def run_onnx(model_bytes: bytes, inputs: dict) -> dict:
    """Run an exported model in onnxruntime on the CPU: ``{output name: array}``."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    feed = {i.name: inputs[i.name].detach().cpu().numpy() for i in session.get_inputs()}
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feed)))


def onnx_errors(plan: ExportPlan, model_bytes: bytes, inputs: dict) -> dict[str, float]:
    """Each output's relative error, onnxruntime against torchcaffe, for ``inputs``."""
    got = run_onnx(model_bytes, inputs)
    expected = reference_outputs(plan, inputs)
    return {name: relative_error(got[onnx_output_name(plan, name)], expected[name]) for name in plan.outputs}


def verify_onnx(plan: ExportPlan, model_bytes: bytes, dynamic_batch: bool = True,
                tolerance: float = TOLERANCE) -> None:
    """Compare onnxruntime with torchcaffe on random inputs (also at another batch size)."""
    batches = [None]
    if dynamic_batch and plan.inputs:
        batches.append(plan.input_shape(plan.inputs[0])[0] + 1)
    for seed, batch in enumerate(batches, 1):
        errors = onnx_errors(plan, model_bytes, sample_inputs(plan, seed, batch))
        check_errors(errors, tolerance, "the ONNX model" + (f" at batch {batch}" if batch else ""))


# ------------------------------------------------------------------------------------------------
# Tracing
# ------------------------------------------------------------------------------------------------
class _LayerCall(nn.Module):
    """One layer as the tracer sees it: its hook or its forward, inside a scope named after it."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, *bottoms):
        hook = getattr(self.layer, "export_onnx", None)
        try:
            return hook(*bottoms) if hook is not None else self.layer.forward(*bottoms)
        except ExportError:
            raise
        except Exception as error:
            raise ExportError(f"{self.layer.label}: cannot be traced for ONNX: {error}") from error


class _TracedNet(nn.Module):
    """The plan's layers run in order on slots, as the net runs them (Split tops are the bottom)."""

    def __init__(self, plan: ExportPlan):
        super().__init__()
        self.plan = plan
        self.scopes = python_names([node.name for node in plan.nodes], taken=dir(nn.Module()))
        for node in plan.nodes:
            self.add_module(self.scopes[node.name], _LayerCall(node.layer))
        self.input_slots = {name: slot for node in plan.net._graph.nodes if getattr(node.layer, "is_input", False)
                            for name, slot in zip(node.tops, node.top_slots)}

    def train(self, mode: bool = True):
        """Caffe's layers follow the net's phase, not torch's training flag: nothing to switch."""
        self.training = mode
        return self

    def forward(self, *inputs):
        graph = self.plan.net._graph
        vals: list = [None] * len(graph.slot_names)
        for name, tensor in zip(self.plan.inputs, inputs):
            vals[self.input_slots[name]] = tensor
        for node in self.plan.nodes:
            bottoms = [vals[s] for s in node.bottom_slots]
            if node.type == "Split":
                tops = tuple(bottoms[0] for _ in node.top_slots)
            else:
                tops = getattr(self, self.scopes[node.name])(*bottoms)
            if not isinstance(tops, (tuple, list)):
                tops = (tops,)
            for slot, tensor in zip(node.top_slots, tops):
                vals[slot] = tensor
        return tuple(vals[graph.last_slot[name]] for name in self.plan.outputs)


def _trace_to_onnx(plan: ExportPlan, opset: int, dynamic_batch: bool):
    import onnx

    traced = _TracedNet(plan).train(False)
    inputs = sample_inputs(plan)
    dynamic = {name: {0: "batch" if i == 0 else f"{name}_batch"} for i, name in enumerate(plan.inputs)
               if dynamic_batch and len(inputs[name].shape)}
    buffer = io.BytesIO()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
            warnings.filterwarnings("ignore", message=".*will be removed.*")
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", message=".*_jit_pass_onnx.*")
            warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")
            torch.onnx.export(traced, tuple(inputs[name] for name in plan.inputs), buffer, dynamo=False,
                              opset_version=opset, input_names=list(plan.inputs),
                              output_names=[onnx_output_name(plan, name) for name in plan.outputs],
                              dynamic_axes=dynamic or None,
                              do_constant_folding=True)
    except ExportError:
        raise
    except Exception as error:
        raise ExportError(_trace_failure(plan, traced, error)) from None
    model = onnx.load_from_string(buffer.getvalue())
    _constants_to_initializers(model)
    _name_after_layers(model, plan, traced.scopes)
    model.producer_name = "torchcaffe"
    model.doc_string = f"Caffe net {plan.net.name!r} ({plan.net.source}) exported by torchcaffe"
    return model


def _trace_failure(plan: ExportPlan, traced: _TracedNet, error: Exception) -> str:
    """Name the layer a torch.onnx failure comes from (the last layer scope its message shows)."""
    message = str(error)
    first = message.strip().splitlines()[0] if message.strip() else type(error).__name__
    by_scope = {scope: name for name, scope in traced.scopes.items()}
    scopes = re.findall(r"_LayerCall::(\w+)", message)
    labels = {node.name: node.label for node in plan.nodes}
    if scopes and scopes[-1] in by_scope:
        return f"{labels[by_scope[scopes[-1]]]}: cannot be exported to ONNX: {first}"
    return f"the net cannot be exported to ONNX: {first}"


def _constants_to_initializers(model) -> None:
    """Tensor ``Constant`` nodes (values a hook computed outside the trace, like BatchNorm's
    folded statistics) become named initializers, as weights are."""
    graph = model.graph
    kept = []
    for node in graph.node:
        value = [a for a in node.attribute if a.name == "value" and a.t.dims] if node.op_type == "Constant" else []
        if value and len(node.attribute) == 1:
            tensor = graph.initializer.add()
            tensor.CopyFrom(value[0].t)
            tensor.name = node.output[0]
        else:
            kept.append(node)
    if len(kept) != len(graph.node):
        del graph.node[:]
        graph.node.extend(kept)


def _name_after_layers(model, plan: ExportPlan, scopes: dict[str, str]) -> None:
    """torch names nodes ``/<scope>/<Op>`` and weights ``<scope>.layer.<blob>``; put the Caffe layer
    names there instead (``conv1/7x7_s2/Conv``, ``conv1/7x7_s2.weight``)."""
    by_scope = {scope: name for name, scope in scopes.items()}

    def rename(value: str) -> str:
        match = re.match(r"^/(\w+)/(.*)$", value)
        if match and match.group(1) in by_scope:
            return f"{by_scope[match.group(1)]}/{match.group(2)}"
        match = re.match(r"^(\w+)\.layer\.(.*)$", value)
        if match and match.group(1) in by_scope:
            return f"{by_scope[match.group(1)]}.{match.group(2)}"
        return value

    graph = model.graph
    keep = {v.name for v in graph.input} | {v.name for v in graph.output}
    names = {}
    for tensor in graph.initializer:
        names[tensor.name] = rename(tensor.name)
    for node in graph.node:
        node.name = rename(node.name)
        for value in node.output:
            names.setdefault(value, rename(value))
    names = {old: new for old, new in names.items() if old not in keep and old != new}
    if len(set(names.values())) != len(names):
        return  # two values would share a name: keep torch's names
    for tensor in graph.initializer:
        tensor.name = names.get(tensor.name, tensor.name)
    for node in graph.node:
        node.input[:] = [names.get(v, v) for v in node.input]
        node.output[:] = [names.get(v, v) for v in node.output]
    for info in graph.value_info:
        info.name = names.get(info.name, info.name)
