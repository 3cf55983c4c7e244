"""A TEST net as plain PyTorch source: one ``nn.Module`` file plus its weights as safetensors.

The generated ``model.py`` imports only torch (and safetensors, inside ``load``). Its class has
one submodule per Caffe layer that holds weights (``self.conv1 = nn.Conv2d(...)``), named after
the layer, in Caffe's order; its ``forward`` has one line per layer, in-place layers written as
reassignments (``conv1 = F.relu(conv1)  # relu1``). Where torch's own call does not compute what
Caffe computes, the file carries a small helper function (``caffe_max_pool2d``...) copied from
``torchcaffe/export/helpers.py``. ``weights.safetensors`` holds the module's ``state_dict``.

Each layer says how it reads in its ``export_source(code)`` hook, beside its forward: given a
:class:`SourceCode` (the bottoms' variable names and shapes, the submodule's attribute), it
returns ``code.line(expression)`` or ``code.module(constructor, **state)``, or raises
``code.unsupported(why)``. A layer without the hook cannot be exported this way.
"""
from __future__ import annotations

import inspect
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ..io.files import atomic_output_file, atomic_output_path
from ..net.graph import Node
from . import helpers as helper_module
from .common import (ExportError, ExportPlan, check_errors, open_net, plan_export, python_name, python_names,
                     reference_outputs, relative_error, sample_inputs)

#: How close the generated module's outputs must be to torchcaffe's in the export's own check.
TOLERANCE = 1e-5
MODEL_FILE = "model.py"
WEIGHTS_FILE = "weights.safetensors"
HELPERS = {name: obj for name, obj in vars(helper_module).items()
           if getattr(obj, "__module__", None) == helper_module.__name__}


@dataclass
class LayerSource:
    """How one layer reads in generated code (what an ``export_source`` hook returns).

    ``expression``: the right-hand side of the layer's line (a tuple for several tops), or None
    when the tops are the bottoms themselves (Split). ``constructor``: the submodule's
    construction, when the layer holds weights; ``state``: its ``state_dict`` entries.
    """

    expression: str | None
    constructor: str | None = None
    state: dict[str, torch.Tensor] = field(default_factory=dict)


class SourceCode:
    """What an ``export_source`` hook knows and the ways it answers."""

    def __init__(self, node: Node, plan: ExportPlan, attribute: str, bottoms: list[str], used: list[str]):
        self.node = node
        self.layer = node.layer
        self.bottoms = bottoms
        self.bottom_shapes = plan.bottom_shapes(node)
        self.top_shapes = [tuple(plan.net._graph.slot_shapes[s]) for s in node.top_slots]
        self.attribute = f"self.{attribute}"
        self._used = used

    def line(self, expression: str) -> LayerSource:
        """The layer as an expression of its bottoms, no submodule (``F.relu(conv1)``)."""
        return LayerSource(expression)

    def module(self, constructor: str, call: str | None = None, **state: torch.Tensor) -> LayerSource:
        """The layer as a submodule built by ``constructor`` with ``state`` as its state_dict; its
        line calls it on the bottoms unless ``call`` says otherwise."""
        if call is None:
            call = f"{self.attribute}({', '.join(self.bottoms)})"
        return LayerSource(call, constructor, {k: v.detach() for k, v in state.items()})

    def same_as_bottoms(self) -> LayerSource:
        """The tops are the bottom (Split): no line at all."""
        return LayerSource(None)

    def helper(self, name: str) -> str:
        """Copy the helper ``name`` (from ``torchcaffe/export/helpers.py``) into the file."""
        if name not in HELPERS:
            raise KeyError(f"no export helper named {name!r}")
        for dependency in helper_module.USES.get(name, ()):
            self.helper(dependency)
        if name not in self._used:
            self._used.append(name)
        return name

    @staticmethod
    def number(value: float) -> str:
        """A float32 parameter as the shortest literal that gives it back (``0.0001``, not
        ``9.999999747378752e-05``)."""
        return repr(float(str(np.float32(value))))

    @staticmethod
    def ints(values: Sequence[int]) -> str:
        """``3`` for ``(3, 3)``, ``(3, 2)`` otherwise: what torch's size arguments accept."""
        values = tuple(int(v) for v in values)
        return str(values[0]) if len(set(values)) == 1 else str(values)

    def unsupported(self, why: str) -> ExportError:
        """The error to raise for a configuration the generated code cannot express."""
        return ExportError(f"{self.node.label}: no PyTorch-source export for {why}")


def export_pytorch(net, weights=None, out_dir: str | os.PathLike = "model_pytorch", *,
                   outputs: Sequence[str] | None = None, class_name: str | None = None,
                   verify: bool = True) -> Path:
    """Write ``model.py`` and ``weights.safetensors`` into ``out_dir``; returns the ``model.py`` path.

    ``net``: a prototxt path (built in the TEST phase with ``weights`` loaded) or a built
    :class:`~torchcaffe.Net`. ``outputs``: the blobs ``forward`` returns (default: the net's
    outputs; a single output is returned as a tensor, several as a dict by blob name).
    ``verify``: load the written module and compare it with torchcaffe on random inputs.
    A layer that cannot be written raises :class:`ExportError` naming it, before any file is written.
    """
    net = open_net(net, weights)
    plan = plan_export(net, outputs)
    name = class_name or _class_name(plan.net.name)
    source, state = generate_source(plan, name)
    module = _instantiate(source, state, name)
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ExportError(f"{out}: cannot create the output folder: {error.strerror or error}") from None
    with atomic_output_file(str(out / MODEL_FILE), ExportError) as f:
        f.write(source.encode())
    _save_weights(module, out / WEIGHTS_FILE)
    if verify:
        verify_pytorch(plan, out)
    return out / MODEL_FILE


def load_generated(out_dir: str | os.PathLike) -> nn.Module:
    """The module a folder written by :func:`export_pytorch` defines, with its weights (eval mode)."""
    path = Path(out_dir) / MODEL_FILE
    namespace = {"__name__": "torchcaffe_generated_model", "__file__": str(path)}
    exec(compile(path.read_text(), str(path), "exec"), namespace)
    return namespace["load"]()


def pytorch_errors(plan: ExportPlan, module: nn.Module, inputs: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Each output's relative error, the generated module against torchcaffe, for ``inputs``."""
    with torch.no_grad():
        got = module(*(inputs[name] for name in plan.inputs))
    if not isinstance(got, dict):
        got = {plan.outputs[0]: got}
    expected = reference_outputs(plan, inputs)
    return {name: relative_error(got[name].numpy(), expected[name]) for name in plan.outputs}


def verify_pytorch(plan: ExportPlan, out_dir: str | os.PathLike, tolerance: float = TOLERANCE) -> None:
    """Load the written module and compare it with torchcaffe on random inputs."""
    errors = pytorch_errors(plan, load_generated(out_dir), sample_inputs(plan, seed=1))
    check_errors(errors, tolerance, "the generated PyTorch module")


# ------------------------------------------------------------------------------------------------
# Writing the source
# ------------------------------------------------------------------------------------------------
def generate_source(plan: ExportPlan, class_name: str | None = None) -> tuple[str, dict[str, torch.Tensor]]:
    """The text of ``model.py`` and the state_dict its class loads."""
    used: list[str] = []
    attributes = python_names([node.name for node in plan.nodes], taken=dir(nn.Module()) + ["load"])
    namer = _Variables(plan, set(HELPERS))
    init_lines, forward_lines, state = [], [], {}
    for node in plan.nodes:
        attribute = attributes[node.name]
        code = SourceCode(node, plan, attribute, namer.bottoms(node), used)
        piece = _layer_source(node, code)
        if piece.expression is None:
            namer.alias(node)
            continue
        comment = f"  # {node.name}" if node.name != attribute or piece.constructor is None else ""
        if piece.constructor is not None:
            init_lines.append(f"        self.{attribute} = {piece.constructor}{comment}")
            state.update({f"{attribute}.{key}": value for key, value in piece.state.items()})
            comment = ""
        targets = namer.assign(node)
        forward_lines.append(f"        {', '.join(targets)} = {piece.expression}{comment}"
                             if targets else f"        {piece.expression}{comment}")
    name = class_name or _class_name(plan.net.name)
    text = _file_text(plan, name, used, init_lines, forward_lines, namer)
    return text, state


def _layer_source(node: Node, code: SourceCode) -> LayerSource:
    hook = getattr(node.layer, "export_source", None)
    if hook is None:
        raise ExportError(f"{node.label}: the {node.type} layer has no PyTorch-source export; export the "
                          f"net up to its bottoms with outputs=[...] to leave it out")
    return hook(code)


class _Variables:
    """Python variable names for the blobs' values in ``forward``.

    A top takes its blob's name; it reuses (reassigns) the variable while the value held there is
    no longer needed, else takes a fresh ``name_2``. Split tops are their bottom's value.
    """

    def __init__(self, plan: ExportPlan, taken: set[str]):
        self.graph = plan.net._graph
        self.names = python_names(self.graph.blob_names, taken=taken)
        self.value_of: dict[int, int] = {}  # slot -> the slot whose value it is
        self.holder: dict[str, int] = {}  # variable -> value slot it holds
        self.var_of: dict[int, str] = {}  # value slot -> variable
        self.last_use: dict[int, float] = {}
        self.inputs = []
        for name in plan.inputs:
            slot = self._input_slot(name)
            var = self.names[name]
            self.var_of[slot], self.holder[var] = var, slot
            self.value_of[slot] = slot
            self.inputs.append(var)
        for position, node in enumerate(plan.nodes):
            for slot in node.bottom_slots:
                self.last_use[slot] = position
        for name in plan.outputs:
            self.last_use[self.graph.last_slot[name]] = float("inf")
        self.position = 0
        self.order = {node.index: i for i, node in enumerate(plan.nodes)}
        self.outputs = plan.outputs

    def _input_slot(self, name: str) -> int:
        for node in self.graph.nodes:
            if getattr(node.layer, "is_input", False) and name in node.tops:
                return node.top_slots[node.tops.index(name)]
        raise KeyError(name)

    def _value(self, slot: int) -> int:
        return self.value_of.get(slot, slot)

    def bottoms(self, node: Node) -> list[str]:
        return [self.var_of[self._value(s)] for s in node.bottom_slots]

    def alias(self, node: Node) -> None:
        value = self._value(node.bottom_slots[0])
        for slot in node.top_slots:
            self.value_of[slot] = value
            self.last_use[value] = max(self.last_use.get(value, -1), self.last_use.get(slot, -1))

    def _needed_after(self, value: int, position: int) -> bool:
        return self.last_use.get(value, -1) > position

    def assign(self, node: Node) -> list[str]:
        position = self.order[node.index]
        targets = []
        for name, slot in zip(node.tops, node.top_slots):
            base = self.names.get(name, python_name(name))
            var, k = base, 2
            while var in self.holder and self._needed_after(self.holder[var], position) or var in targets:
                var, k = f"{base}_{k}", k + 1
            self.holder[var] = slot
            self.var_of[slot] = var
            self.value_of[slot] = slot
            targets.append(var)
        return targets

    def output(self, name: str) -> str:
        return self.var_of[self._value(self.graph.last_slot[name])]


def _class_name(net_name: str) -> str:
    ident = python_name(net_name) if net_name else "CaffeNet"
    ident = ident.lstrip("_") or "CaffeNet"
    return ident[0].upper() + ident[1:]


def _file_text(plan: ExportPlan, name: str, used: list[str], init_lines, forward_lines, namer: _Variables) -> str:
    shapes = ", ".join(f"{n!r}: {tuple(plan.input_shape(n))}" for n in plan.inputs)
    if len(plan.outputs) == 1:
        returns = f"        return {namer.output(plan.outputs[0])}"
        returns_doc = f"the {plan.outputs[0]!r} blob"
    else:
        pairs = ", ".join(f"{n!r}: {namer.output(n)}" for n in plan.outputs)
        returns = f"        return {{{pairs}}}"
        returns_doc = "a dict of the output blobs by name"
    helpers = "\n\n".join(inspect.getsource(HELPERS[h]).rstrip() for h in _dependency_order(used))
    source = plan.net.source
    parts = [
        f'"""{name}: the Caffe net {plan.net.name!r} ({os.path.basename(source)}) as plain PyTorch.',
        "",
        "Generated by torchcaffe's exporter. One submodule per Caffe layer with weights, in the",
        "net's order; one line of ``forward`` per layer (its Caffe name in the comment where the",
        "code names it differently). Load the weights with ``load()``. Inputs (Caffe's shapes):",
        f"{shapes}. ``forward`` returns {returns_doc}.",
        '"""',
        "import torch",
        "import torch.nn.functional as F",
        "from torch import nn",
        "",
        f"INPUT_SHAPES = {{{shapes}}}",
        f'WEIGHTS = "{WEIGHTS_FILE}"  # beside this file',
    ]
    if helpers:
        parts += ["", "", helpers]
    parts += ["", "", f"class {name}(nn.Module):", "    def __init__(self):", "        super().__init__()"]
    parts += init_lines
    parts += ["", f"    def forward(self, {', '.join(namer.inputs)}):"]
    parts += forward_lines or ["        pass"]
    parts += [returns, "", "",
              "def load(weights=None, device=\"cpu\"):",
              f'    """A {name} with the exported weights (``weights``: default, the file beside this one),',
              '    in eval mode."""',
              "    from safetensors.torch import load_file",
              "",
              "    if weights is None:",
              '        folder = __file__.replace("\\\\", "/").rpartition("/")[0]',
              '        weights = f"{folder}/{WEIGHTS}" if folder else WEIGHTS',
              '    with torch.device("meta"):  # no initialisation: every value comes from the file',
              f"        model = {name}()",
              "    model.load_state_dict(load_file(weights, device=str(device)), assign=True)",
              "    return model.eval()", ""]
    return "\n".join(parts)


def _dependency_order(used: list[str]) -> list[str]:
    """Helpers in the order they were asked for; the ones they use come first (asked for first)."""
    return list(dict.fromkeys(used))


def _instantiate(source: str, state: Mapping[str, torch.Tensor], class_name: str) -> nn.Module:
    """Build the generated class and load ``state`` into it (strict): a hook's state must match
    the submodule it declares."""
    namespace = {"__name__": "torchcaffe_generated_model", "__file__": "<generated>"}
    try:
        exec(compile(source, "<generated>", "exec"), namespace)
    except SyntaxError as error:  # pragma: no cover - a bug in a hook
        raise ExportError(f"the generated source does not compile: {error}") from None
    with torch.device("meta"):
        module = namespace[class_name]()
    expected = module.state_dict()
    for key, value in state.items():
        if key in expected and tuple(value.shape) != tuple(expected[key].shape):
            raise ExportError(f"generated state {key!r} has shape {tuple(value.shape)} but the module expects "
                              f"{tuple(expected[key].shape)}; please report this with the prototxt")
    missing = set(expected) - set(state)
    unexpected = set(state) - set(expected)
    if missing or unexpected:
        raise ExportError(f"the generated module's state_dict does not match the exported weights (missing "
                          f"{sorted(missing)}, unexpected {sorted(unexpected)}); please report this")
    module.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, assign=True)
    return module


def _save_weights(module: nn.Module, path: Path) -> None:
    from safetensors.torch import save_file

    tensors = {key: value.detach().cpu().contiguous().clone() for key, value in module.state_dict().items()}
    with atomic_output_path(str(path), ExportError) as temp:
        save_file(tensors, temp)
