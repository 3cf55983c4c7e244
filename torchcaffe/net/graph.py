"""The net's structure as Caffe's ``Net::Init`` builds it, before anything runs.

For each layer (after NetState filtering and Split insertion) we record its bottoms and tops as
*slots* — one slot per value a blob takes, so an in-place layer gives its blob a new slot under
the same name — its loss weights, and Caffe's backward bookkeeping:

* ``bottom_need_backward`` per bottom: the blob needs backward (it descends from a learnable
  parameter), or ``propagate_down`` says so — an explicit ``propagate_down`` overrides either way;
* ``need_backward`` per layer: a bottom blob needs backward or a parameter has ``lr_mult != 0``
  (read from the prototxt's ``param`` specs, before layers such as BatchNorm add their own);
* then, walking backwards, layers that contribute nothing to a loss, or whose tops no consumer
  back-propagates into, skip backward;
* ``force_backward`` finally makes every layer back-propagate, into every bottom it allows.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import NetError, layer_label
from ..layers.base import Layer, LayerSetup
from ..limits import MemoryBudget, check_declared_shapes
from ..layers.registry import layer_class
from ..proto import caffe_pb2
from .shapes import infer_top_shapes

ANONYMOUS_TOP = "(automatic)"


@dataclass
class Node:
    """One layer of the net and everything Caffe's Net knows about it."""

    index: int
    layer: Layer
    param: caffe_pb2.LayerParameter  # the layer's own copy, as Caffe's Layer::layer_param()
    bottoms: list[str]
    tops: list[str]
    bottom_slots: list[int]
    top_slots: list[int]
    loss_weights: list[float]
    bottom_need_backward: list[bool]
    param_propagate_down: list[bool]
    need_backward: bool = False
    detach: tuple[bool, ...] = ()  # bottoms whose gradient the layer never passes on

    @property
    def name(self) -> str:
        return self.param.name

    @property
    def type(self) -> str:
        return self.param.type

    @property
    def label(self) -> str:
        return layer_label(self.param.name, self.param.type)


@dataclass
class ParamEntry:
    """A parameter blob as the solver sees it (Caffe's learnable_params_ entry)."""

    layer: int
    blob: int
    tensor_name: str
    owner: int  # index of the owning entry in the param table, -1 when it owns itself
    lr_mult: float = 1.0
    decay_mult: float = 1.0
    has_lr: bool = False
    has_decay: bool = False
    name: str = ""
    max_norm: float = 0.0  # ParamSpec.max_norm: after each update, slices are renormed to it (0: off)
    max_norm_axis: int = 0  # ParamSpec.max_norm_axis: the axis whose slices are constrained


@dataclass
class Graph:
    nodes: list[Node] = field(default_factory=list)
    slot_names: list[str] = field(default_factory=list)
    slot_shapes: list[torch.Size] = field(default_factory=list)
    blob_names: list[str] = field(default_factory=list)  # Caffe's blob order
    last_slot: dict[str, int] = field(default_factory=dict)
    params: list[ParamEntry] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)
    blob_loss_weights: dict[str, float] = field(default_factory=dict)

    def new_slot(self, name: str, shape: torch.Size) -> int:
        if name == ANONYMOUS_TOP or name not in self.last_slot:
            self.blob_names.append(name)
        self.slot_names.append(name)
        self.slot_shapes.append(shape)
        self.last_slot[name] = len(self.slot_names) - 1
        return self.last_slot[name]


def build_graph(net: caffe_pb2.NetParameter, source: str = "", allow_python: bool = True) -> Graph:
    """Create every layer of ``net`` (already filtered and split) with Caffe's net rules."""
    graph = Graph()
    blob_need_backward: dict[int, bool] = {}
    available: set[str] = set()
    named_params: dict[str, int] = {}
    budget = MemoryBudget(source)
    for index, declared in enumerate(net.layer):
        own = caffe_pb2.LayerParameter()
        own.CopyFrom(declared)
        if not own.HasField("phase"):
            own.phase = net.state.phase
        check_declared_shapes(declared, _where(source, declared))  # before the layer allocates
        node = _add_layer(graph, index, declared, own, source, blob_need_backward, available, allow_python)
        _count_blobs(budget, graph, node, _where(source, declared))
        _add_params(graph, node, declared, named_params)
        if node.need_backward:
            for slot in node.top_slots:
                blob_need_backward[slot] = True
        graph.nodes.append(node)
    graph.outputs = sorted(available)
    _skip_backward_without_loss(graph)
    if net.force_backward:
        _force_backward(graph)
    _set_detach(graph, net.force_backward)
    return graph


def _where(source: str, declared) -> str:
    label = layer_label(declared.name, declared.type)
    return f"{source}: {label}" if source else label


def _count_blobs(budget: MemoryBudget, graph: Graph, node: Node, where: str) -> None:
    """Add the layer's new tops (in-place tops reuse their bottom) and its blobs to the net's
    memory budget (``torchcaffe.limits``): an absurd shape fails here, before any data exists."""
    for j, (name, slot) in enumerate(zip(node.tops, node.top_slots)):
        if not (j < len(node.bottoms) and node.bottoms[j] == name):
            budget.add(where, f"top blob {name!r}", graph.slot_shapes[slot])
    for j, tensor in enumerate(node.layer.caffe_blobs()):
        budget.add(where, f"parameter blob {j}", tensor.shape)


def _add_layer(graph, index, declared, own, source, blob_need_backward, available, allow_python) -> Node:
    label = layer_label(declared.name, declared.type)
    cls = layer_class(declared.type, declared.name)
    if declared.propagate_down and len(declared.propagate_down) != len(declared.bottom):
        raise NetError(f"{label}: propagate_down must be given 0 or {len(declared.bottom)} times "
                       f"(once per bottom), got {len(declared.propagate_down)}")
    bottom_slots, need = [], []
    for j, name in enumerate(declared.bottom):
        if name not in available:
            raise NetError(f"{label}: bottom blob {name!r} (bottom {j}) is not available here: no "
                           f"earlier layer produces it, or another layer already consumed it")
        slot = graph.last_slot[name]
        available.discard(name)
        bottom_slots.append(slot)
        need.append(declared.propagate_down[j] if declared.propagate_down else blob_need_backward.get(slot, False))
    tops = list(declared.top)
    if cls.is_loss:  # Caffe's AutoTopBlobs: loss layers get the tops they need even when unnamed
        wanted = max(cls.min_tops or 0, cls.exact_tops or 0)
        tops += [ANONYMOUS_TOP] * max(0, wanted - len(tops))
    bottom_shapes = [graph.slot_shapes[s] for s in bottom_slots]
    setup = LayerSetup(own, bottom_shapes, own.phase, source, num_tops=len(tops), allow_python=allow_python)
    layer = cls(setup)
    top_shapes = infer_top_shapes(layer, bottom_shapes)
    if len(top_shapes) != len(tops):
        raise NetError(f"{label}: produced {len(top_shapes)} tops but the prototxt names {len(tops)}")
    top_slots = []
    for j, (name, shape) in enumerate(zip(tops, top_shapes)):
        in_place = j < len(declared.bottom) and name == declared.bottom[j]
        if not in_place and name != ANONYMOUS_TOP and name in graph.last_slot:
            raise NetError(f"{label}: top blob {name!r} is produced by more than one layer. A layer "
                           f"may reuse a blob only in place, as top {j} for bottom {j}")
        top_slots.append(graph.new_slot(name, shape))
        if name != ANONYMOUS_TOP:
            available.add(name)
    loss_weights = _loss_weights(layer, own, len(tops), label)
    for name, weight in zip(tops, loss_weights):
        graph.blob_loss_weights[name] = weight
    if getattr(layer, "is_input", False):
        graph.inputs.extend(tops)
    # Caffe: a layer needs backward when a bottom *blob* does (propagate_down aside) ...
    needs = any(blob_need_backward.get(s, False) for s in bottom_slots)
    return Node(index, layer, own, list(declared.bottom), tops, bottom_slots, top_slots,
                loss_weights, need, [], needs)


def _loss_weights(layer: Layer, own: caffe_pb2.LayerParameter, num_tops: int, label: str) -> list[float]:
    """Caffe's SetLossWeights: loss layers default to 1 on top 0; otherwise one weight per top."""
    if layer.is_loss and not own.loss_weight:
        own.loss_weight.append(1.0)
    if own.loss_weight and len(own.loss_weight) != num_tops:
        raise NetError(f"{label}: loss_weight must be given 0 or {num_tops} times (once per top), "
                       f"got {len(own.loss_weight)}")
    return list(own.loss_weight) or [0.0] * num_tops


def _add_params(graph: Graph, node: Node, declared, named_params: dict[str, int]) -> None:
    """Caffe's AppendParam: ownership, sharing by ParamSpec name, lr/decay multipliers."""
    blobs = node.layer.blob_names
    if len(declared.param) > len(blobs):
        raise NetError(f"{node.label}: {len(declared.param)} param {{}} blocks given but the layer "
                       f"has only {len(blobs)} parameter blob(s)")
    for j in range(len(blobs)):  # ... or one of its parameters learns (prototxt specs only)
        lr = declared.param[j].lr_mult if j < len(declared.param) else 1.0
        node.param_propagate_down.append(lr != 0)
        node.need_backward = node.need_backward or lr != 0
    own = node.param
    for j, tensor_name in enumerate(blobs):
        spec = own.param[j] if j < len(own.param) else caffe_pb2.ParamSpec()
        entry = ParamEntry(node.index, j, tensor_name, -1, spec.lr_mult, spec.decay_mult,
                           spec.HasField("lr_mult"), spec.HasField("decay_mult"), spec.name,
                           spec.max_norm, spec.max_norm_axis)
        if spec.name and spec.name in named_params:
            _share_param(graph, node, j, spec, named_params[spec.name], entry)
        elif spec.name:
            named_params[spec.name] = len(graph.params)
        graph.params.append(entry)


def _share_param(graph: Graph, node: Node, j: int, spec, owner_index: int, entry: ParamEntry) -> None:
    owner = graph.params[owner_index]
    owner_layer = graph.nodes[owner.layer].layer
    mine = getattr(node.layer, node.layer.blob_names[j])
    theirs = getattr(owner_layer, owner.tensor_name)
    permissive = spec.share_mode == caffe_pb2.ParamSpec.PERMISSIVE
    if (mine.numel() != theirs.numel()) if permissive else (mine.shape != theirs.shape):
        rule = "the same number of values" if permissive else "the same shape (or share_mode: PERMISSIVE)"
        raise NetError(f"{node.label}: cannot share param {spec.name!r} owned by "
                       f"{owner_layer.label}: sharing needs {rule}; owner shape "
                       f"{tuple(theirs.shape)}, this layer's shape {tuple(mine.shape)}")
    entry.owner = owner_index
    for attr in ("lr_mult", "decay_mult"):
        if spec.HasField(attr):
            has = f"has_{attr.split('_')[0]}"
            if getattr(owner, has) and getattr(owner, attr) != getattr(spec, attr):
                raise NetError(f"{node.label}: shared param {spec.name!r} has {attr} "
                               f"{getattr(spec, attr)} here but {getattr(owner, attr)} in {owner_layer.label}")
            setattr(owner, attr, getattr(spec, attr))
            setattr(owner, has, True)
    share_tensor(node.layer, node.layer.blob_names[j], theirs)


def share_tensor(layer: Layer, name: str, owner_tensor: torch.Tensor) -> None:
    """Make ``layer.<name>`` the owner's tensor (a view when only the counts agree)."""
    mine = getattr(layer, name)
    if name in layer._parameters:
        layer._parameters[name] = owner_tensor
    else:
        layer._buffers[name] = owner_tensor
    if mine.shape != owner_tensor.shape:
        shape = mine.shape
        layer.register_forward_pre_hook(
            lambda module, args: module.__dict__.__setitem__(name, module._parameters.get(name, module._buffers.get(name)).view(shape)))
        layer.__dict__[name] = owner_tensor.view(shape)


def _skip_backward_without_loss(graph: Graph) -> None:
    """Caffe's backward pass over the layers: who contributes to a loss, who can skip backward."""
    under_loss: set[str] = set()
    skip: set[str] = set()
    for node in reversed(graph.nodes):
        contributes = any(w != 0 or name in under_loss for name, w in zip(node.tops, node.loss_weights))
        all_skipped = all(name in skip for name in node.tops)
        if node.need_backward and all_skipped:
            node.need_backward = False
            node.bottom_need_backward = [False] * len(node.bottoms)
        if not contributes:
            node.need_backward = False
        for j, name in enumerate(node.bottoms):
            if contributes:
                under_loss.add(name)
            else:
                node.bottom_need_backward[j] = False
            if not node.bottom_need_backward[j]:
                skip.add(name)


def _force_backward(graph: Graph) -> None:
    for node in graph.nodes:
        node.need_backward = True
        node.bottom_need_backward = [need or node.layer.allow_force_backward(j)
                                     for j, need in enumerate(node.bottom_need_backward)]
        node.param_propagate_down = [True] * len(node.param_propagate_down)


def _set_detach(graph: Graph, force_backward: bool) -> None:
    """Bottoms whose gradient never flows, in torch terms: ``propagate_down: false`` (unless
    ``force_backward`` overrides it) and bottoms Caffe never back-propagates into (labels) unless
    the prototxt explicitly asks for them with ``propagate_down: true``."""
    for node in graph.nodes:
        detach = []
        for j in range(len(node.bottoms)):
            forceable = node.layer.allow_force_backward(j)
            given = bool(node.param.propagate_down)
            stopped = given and not node.param.propagate_down[j]
            asked = given and node.param.propagate_down[j]
            detach.append((stopped and not (force_backward and forceable)) or (not forceable and not asked))
        node.detach = tuple(detach)
