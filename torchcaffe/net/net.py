"""``Net``: a Caffe net as a ``torch.nn.Module``, with pycaffe's API as its primary face.

Construction follows Caffe's ``Net::Init``: the prototxt is read and upgraded, filtered by the
NetState (phase, level, stages), Split layers are inserted where a blob fans out, every layer is
built with its bottom shapes known, and the backward bookkeeping (loss weights, propagate_down,
force_backward, lr_mult) is settled. The computation itself is only the layers' ``forward``;
backward passes come from autograd.

Two ways to run it, one computation:

* pycaffe: ``net.blobs['data'].data[...] = x; net.forward(); net.backward()`` — every blob keeps
  its value and diff as Caffe leaves them (see ``docs/caffe-semantics.md``);
* torch: ``outputs = net(data=x_tensor)`` returns the output blobs as tensors with the autograd
  graph intact, keeping nothing else alive.
"""
from __future__ import annotations

import logging
import os
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import CaffeError, NetError, WeightsError
from ..io.prototxt import read_net
from ..io.weights import read_weights, write_caffemodel, write_caffemodel_h5
from ..proto import caffe_pb2
from .blob import Blob, as_numpy, sync_host_mirrors
from .graph import ANONYMOUS_TOP, Node, build_graph
from ..layers.normalization import BatchNormScale
from .inplace import CaffeInPlace, needs_inplace_quirk
from .shapes import infer_top_shapes
from .splits import insert_splits
from .state import filter_net, make_state

log = logging.getLogger("torchcaffe")

TRAIN = caffe_pb2.TRAIN
TEST = caffe_pb2.TEST
PathLike = (str, os.PathLike)


class Net(nn.Module):
    """A Caffe net. ``Net(prototxt, phase, level=0, stages=None, weights=None)``, or pycaffe's
    legacy ``Net(prototxt, weights, phase)``.

    ``prototxt`` is a path to a text (or binary) NetParameter, or a ``caffe_pb2.NetParameter``.
    ``phase`` is ``torchcaffe.TRAIN`` or ``torchcaffe.TEST`` (default TEST, Caffe's NetState
    default). The net is built on the CPU in float32; move it with ``.to()`` like any module.
    ``allow_python_layers=False`` refuses every ``Python`` layer (for files you do not trust).
    ``optimize=True`` (TEST nets; ``"compile"`` adds ``torch.compile``) makes the torch call
    ``net(data=x)`` run the inference-only optimized plan of ``torchcaffe.net.optimize`` (folded
    BatchNorm/Scale, in-place ReLU, channels_last; no autograd graph); the pycaffe API
    (``forward()``, ``backward()``, ``blobs``, ``params``) keeps the plain layers.
    """

    def __init__(self, network, *args, level: int = 0, stages: Sequence[str] | None = None,
                 weights: str | os.PathLike | None = None, phase: int | None = None,
                 allow_python_layers: bool = True, optimize: bool | str = False):
        super().__init__()
        phase, level, stages, weights = _net_arguments(args, phase, level, stages, weights)
        param, source = _read_network(network)
        state = make_state(phase, level, stages, param.state if param.HasField("state") else None)
        filtered = filter_net(param, state)
        self.name = param.name
        self.phase = phase
        self.source = source
        self._graph = graph = build_graph(insert_splits(filtered, source), source, allow_python_layers)
        self.layers = nn.ModuleList(node.layer for node in graph.nodes)
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)  # tracks dtype/device
        self._shapes = {name: graph.slot_shapes[slot] for name, slot in graph.last_slot.items()}
        self._data: dict[str, torch.Tensor] = {}
        self._diff: dict[str, torch.Tensor] = {}
        self._vals: list | None = None
        self._vals_fused = False  # the last pass left some values unset (see _run_layers)
        self._torch_call = False
        self._caffe_hooks: dict[str, list] = {when: [] for when in _HOOK_POINTS}
        self._plan_backward()
        self._set_requires_grad()
        self._set_loss_diffs()
        self._make_views()
        if weights is not None:
            self.copy_from(weights)
        self._follow_caffe_mode()
        self.optimized = None
        if optimize:
            from .optimize import optimize as optimized_runner
            # Not a submodule (the runner refers back to this net): set past nn.Module's __setattr__.
            object.__setattr__(self, "optimized", optimized_runner(self, compile=optimize == "compile"))

    # -- construction -----------------------------------------------------------------------
    def _follow_caffe_mode(self) -> None:
        """pycaffe's global mode: after ``caffe.set_mode_gpu()`` new nets live on that GPU."""
        from ..compat.runtime import mode_device
        device = mode_device()
        if device is not None and device.type != "cpu":
            self.to(device)

    def _plan_backward(self) -> None:
        """Which slots a pycaffe backward writes diffs for, and which layers run."""
        nodes = self._graph.nodes
        self._active = {slot for node in nodes if node.need_backward
                        for slot, need in zip(node.bottom_slots, node.bottom_need_backward) if need}
        self._diff_slot: dict[str, int] = {}
        for slot, name in enumerate(self._graph.slot_names):
            if slot in self._active and name not in self._diff_slot:
                self._diff_slot[name] = slot
        self._any_backward = any(node.need_backward for node in nodes)
        last = self._graph.last_slot
        self._inplace_quirk: dict[int, str] = {}
        for node in nodes:
            for j, (name, slot) in enumerate(zip(node.tops, node.top_slots)):
                in_place = j < len(node.bottoms) and node.bottoms[j] == name
                if needs_inplace_quirk(node.layer, in_place, last[name] == slot):
                    self._inplace_quirk[node.index] = name
        self._final_slots = {last[name]: name for name in self._inplace_quirk.values()}
        last_use: dict[int, int] = {}
        for node in nodes:
            for slot in node.bottom_slots:
                last_use[slot] = node.index
        keep = {self._graph.last_slot[name] for name in self._graph.outputs}
        self._release: list[list[int]] = [[] for _ in nodes]
        for slot, index in last_use.items():
            if slot not in keep:
                self._release[index].append(slot)
        overwritable = _overwritable_slots(nodes)
        self._steps = [_Step.of(node, self._inplace_quirk.get(node.index), self._final_slots,
                                self._release[node.index], overwritable) for node in nodes]
        self._call_steps = _fuse_batchnorm_scale(nodes, self._steps, self._graph.slot_shapes)
        # A solver's iteration keeps every blob, so it fuses and overwrites only values that are
        # neither a blob's final value nor the one whose diff the blob shows (in-place chains).
        seen = set(self._diff_slot.values()) | set(self._graph.last_slot.values())
        steps = [_Step.of(node, self._inplace_quirk.get(node.index), self._final_slots,
                          self._release[node.index], overwritable - seen) for node in nodes]
        fused = _fuse_batchnorm_scale(nodes, steps, self._graph.slot_shapes, seen)
        leaner = fused is not steps or any(step.in_place is not None for step in steps)
        self._iteration_steps = fused if leaner else self._steps

    def _set_requires_grad(self) -> None:
        """lr_mult 0 freezes a parameter (unless force_backward): it gets no gradient."""
        wanted: dict[int, bool] = {}
        for node in self._graph.nodes:
            for attr, propagate in zip(node.layer.blob_names, node.param_propagate_down):
                tensor = node.layer._parameters.get(attr)
                if tensor is not None:
                    wanted[id(tensor)] = wanted.get(id(tensor), False) or propagate
        for param in self.parameters():
            param.requires_grad_(wanted.get(id(param), False))

    def _set_loss_diffs(self) -> None:
        """Caffe writes each loss weight into its top's diff at setup: d(total loss)/d(top)."""
        self._loss_weight = {name: weight for node in self._graph.nodes
                             for name, weight in zip(node.tops, node.loss_weights) if weight}
        for name, weight in self._loss_weight.items():
            self._diff[name] = torch.full(self._shapes[name], weight)

    def _make_views(self) -> None:
        graph = self._graph
        self._layer_names = [node.name for node in graph.nodes]
        self.layer_dict = OrderedDict((node.name, node.layer) for node in graph.nodes)
        self.blobs = OrderedDict((name, Blob(self, name)) for name in graph.blob_names)
        self.params = OrderedDict((node.name, node.layer.blobs) for node in graph.nodes if node.layer.blob_names)
        self.inputs = list(graph.inputs)
        self.outputs = list(graph.outputs)
        self.blob_loss_weights = OrderedDict((name, graph.blob_loss_weights.get(name, 0.0))
                                             for name in graph.blob_names)
        self.top_names = OrderedDict((node.name, list(node.tops)) for node in graph.nodes)
        self.bottom_names = OrderedDict((node.name, list(node.bottoms)) for node in graph.nodes)

    @property
    def _blob_names(self) -> list[str]:
        return list(self._graph.blob_names)

    # -- blob storage --------------------------------------------------------------------------
    def _blob_data(self, name: str) -> torch.Tensor:
        tensor = self._data.get(name)
        if tensor is None:
            tensor = self._data[name] = self._anchor.new_zeros(self._shapes[name])
        return tensor

    def _blob_diff(self, name: str) -> torch.Tensor:
        data = self._blob_data(name)
        diff = self._diff.get(name)
        if diff is None or diff.shape != data.shape or diff.dtype != data.dtype or diff.device != data.device:
            # A loss top keeps its weight as its diff through a reshape (Caffe keeps the buffer).
            weight = self._loss_weight.get(name, 0.0)
            diff = self._diff[name] = torch.full_like(data, weight, requires_grad=False)
        return diff

    def _reshape_blob(self, name: str, shape: tuple[int, ...]) -> None:
        sync_host_mirrors()
        self._shapes[name] = torch.Size(shape)
        self._data[name] = self._anchor.new_zeros(shape)
        self._diff.pop(name, None)

    def reshape(self) -> None:
        """Propagate the input blobs' shapes through the net (Caffe's ``Net::Reshape``)."""
        graph = self._graph
        shapes = list(graph.slot_shapes)
        for node in graph.nodes:
            if getattr(node.layer, "is_input", False):
                tops = [self._shapes[name] for name in node.tops]
            else:
                tops = infer_top_shapes(node.layer, [shapes[s] for s in node.bottom_slots], self._anchor.dtype)
            for slot, shape in zip(node.top_slots, tops):
                shapes[slot] = shape
        graph.slot_shapes = shapes
        for name, slot in graph.last_slot.items():
            if self._shapes[name] != shapes[slot]:
                self._shapes[name] = shapes[slot]
                if name not in self.inputs:
                    self._data.pop(name, None)
        self._vals = None

    def _apply(self, fn, recurse=True):
        sync_host_mirrors()
        super()._apply(fn, recurse)
        self._data = {k: fn(v) for k, v in self._data.items()}
        self._diff = {k: fn(v) for k, v in self._diff.items()}
        self._vals = None
        if self._anchor.is_cuda:
            keep_ieee_float32()
        return self

    # -- forward -------------------------------------------------------------------------------
    def __call__(self, *args, **kwargs):
        """``net(x, ...)`` / ``net(data=x)``: the torch way, always (see :meth:`forward`)."""
        set_flag = object.__setattr__  # a plain attribute: skip nn.Module's __setattr__ checks
        set_flag(self, "_torch_call", True)
        try:
            return super().__call__(*args, **kwargs)
        finally:
            set_flag(self, "_torch_call", False)

    def forward(self, *args, blobs: Sequence[str] | None = None, start: str | None = None,
                end: str | None = None, **kwargs):
        """Run the net.

        Given torch tensors (positionally in ``net.inputs`` order, or by input name), returns an
        ``OrderedDict`` of the output blobs as tensors, graph intact: the torch way.

        Otherwise pycaffe's ``forward(blobs=None, start=None, end=None, **inputs)``: numpy inputs
        are copied into the input blobs, layers ``start``..``end`` run, every blob keeps its value,
        and a dict of numpy arrays comes back (the outputs, or the tops of ``end``, plus ``blobs``).
        """
        sync_host_mirrors()
        if self._torch_call or args or any(isinstance(v, torch.Tensor) for v in kwargs.values()):
            if blobs is not None or start is not None or end is not None:
                raise TypeError("blobs/start/end are pycaffe arguments; they take numpy inputs, not tensors")
            return self._forward_tensors(args, kwargs)
        return self._forward_pycaffe(blobs, start, end, kwargs)

    def _forward_tensors(self, args, kwargs) -> "OrderedDict[str, torch.Tensor]":
        if len(args) > len(self.inputs):
            raise NetError(f"the net takes {len(self.inputs)} input(s) {self.inputs}, got {len(args)}")
        given = dict(zip(self.inputs, args))
        for name, value in kwargs.items():
            if name not in self.inputs:
                raise NetError(f"{name!r} is not an input of the net; inputs are {self.inputs}")
            if name in given:
                raise TypeError(f"input {name!r} given twice")
            given[name] = value
        if self.optimized is not None:
            return self.optimized.run(given)
        vals: list = [None] * len(self._graph.slot_names)
        self._execute(vals, 0, len(self._graph.nodes) - 1, given=given, release=True)
        last = self._graph.last_slot
        return OrderedDict((name, vals[last[name]]) for name in self.outputs)

    def _forward_pycaffe(self, blobs, start, end, kwargs) -> dict[str, np.ndarray]:
        for name, value in kwargs.items():
            if name not in self.inputs:
                raise NetError(f"{name!r} is not an input blob of the net; inputs are {self.inputs}")
            self._set_input(name, value)
        first = self._layer_index(start, 0)
        last = self._layer_index(end, len(self._graph.nodes) - 1)
        self._run_layers(first, last)
        wanted = list(self.top_names[self._layer_names[last]]) if end is not None else list(self.outputs)
        wanted += [b for b in (blobs or ()) if b not in wanted]
        return {name: self.blobs[name].data for name in wanted}

    def _run_layers(self, first: int, last: int, iteration: bool = False) -> list:
        """Run layers ``first..last`` keeping every blob's value (pycaffe's and Caffe's forward);
        ``iteration``: the whole net for a solver's forward-backward, whose fused steps leave
        the values no blob shows unset (``_iteration_steps``)."""
        record = self._any_backward and torch.is_grad_enabled()
        vals = self._values_before(first, mark=record)
        with torch.set_grad_enabled(record):
            steps = self._execute(vals, first, last, mark_inputs=record, iteration=iteration)
        for node in self._graph.nodes[first:last + 1]:
            if not getattr(node.layer, "is_input", False):
                for name, slot in zip(node.tops, node.top_slots):
                    if vals[slot] is not None:
                        self._data[name] = vals[slot]
        self._vals = vals
        self._vals_fused = steps is self._iteration_steps and steps is not self._steps
        return vals

    def _set_input(self, name: str, value) -> None:
        array = np.asarray(value)
        target = self._blob_data(name)
        if tuple(array.shape) != tuple(target.shape):
            raise NetError(f"input {name!r} has shape {tuple(array.shape)} but the blob is "
                           f"{tuple(target.shape)}; call net.blobs[{name!r}].reshape(...) first")
        with torch.no_grad():
            target.copy_(torch.from_numpy(np.ascontiguousarray(array)))

    def _layer_index(self, name: str | None, default: int) -> int:
        if name is None:
            return default
        try:
            return self._layer_names.index(name)
        except ValueError:
            raise NetError(f"no layer named {name!r} in the net") from None

    def _values_before(self, first: int, mark: bool = False) -> list:
        """Slot values for a run starting at layer ``first``: the blobs' current data (with
        ``mark``, the ones backward writes diffs for become leaves that record their gradient,
        so that ``backward(end=...)`` can reach them after ``forward(start=...)``)."""
        vals: list = [None] * len(self._graph.slot_names)
        for node in self._graph.nodes[:first]:
            for name, slot in zip(node.tops, node.top_slots):
                tensor = self._blob_data(name)
                if mark and slot in self._active and not tensor.requires_grad:
                    tensor = tensor.detach().requires_grad_()
                vals[slot] = tensor
        return vals

    def _execute(self, vals: list, first: int, last: int, *, given: Mapping | None = None,
                 mark_inputs: bool = False, release: bool = False, iteration: bool = False) -> list:
        """Run layers ``first..last`` over the slot values ``vals`` (the plan made at construction:
        no lookups by name, no shape inference) and return the steps run: with no forward hooks,
        the whole net runs the torch call's or the iteration's fused steps. ``release`` drops each
        slot after its last reader, as the torch call does: only the outputs stay alive, so an
        in-place neuron may also overwrite its bottom there (``_Step.in_place``), as Caffe does;
        pycaffe's face keeps every value for the blob views and diffs, and computes out of place."""
        finals: dict[str, torch.Tensor] = {}  # blob values the in-place quirk reads in backward
        hooks = self._caffe_hooks
        before, after = hooks["before_forward"], hooks["after_forward"]
        recording = torch.is_grad_enabled()
        whole = first == 0 and last == len(self._steps) - 1 and not (before or after)
        steps = self._call_steps if whole and release else self._iteration_steps if whole and iteration \
            else self._steps[first:last + 1]
        overwrite = release or steps is self._iteration_steps
        for step in steps:
            if before:
                self._call_hooks("before_forward", step.index)
            if step.is_input:
                self._feed_inputs(step, vals, given, mark_inputs)
            else:
                tops = self._run_step(step, vals, finals, recording, overwrite)
                if isinstance(tops, tuple):
                    for slot, tensor in zip(step.tops, tops):
                        vals[slot] = tensor
                else:
                    vals[step.tops[0]] = tops
                for position, name in step.finals:
                    finals[name] = vals[step.tops[position]].detach()
                if release:
                    for slot in step.release:
                        vals[slot] = None
            if after:
                self._call_hooks("after_forward", step.index)
        return steps

    def _run_step(self, step: "_Step", vals: list, finals: dict, recording: bool, overwrite: bool = False):
        bottoms = [vals[s] for s in step.bottoms]
        if step.detach:
            bottoms = [b.detach() if stop else b for b, stop in zip(bottoms, step.detach)]
        try:
            if step.quirk is not None and recording and bottoms[0].requires_grad:
                return CaffeInPlace.apply(bottoms[0], step.layer, finals, step.quirk)
            if overwrite and step.in_place is not None:
                j = step.in_place
                return step.layer.forward_in_place(bottoms[j], *bottoms[:j], *bottoms[j + 1:])
            return step.layer(*bottoms)
        except CaffeError:
            raise
        except Exception as error:
            shapes = [tuple(b.shape) for b in bottoms]
            raise NetError(f"{step.label}: forward failed for bottoms of shape {shapes}: {error}") from error

    def _feed_inputs(self, step: "_Step", vals: list, given: Mapping | None, mark_inputs: bool) -> None:
        for name, slot in zip(step.names, step.tops):
            tensor = given.get(name) if given else None
            if tensor is None:
                tensor = self._blob_data(name)
                if mark_inputs and slot in self._active:
                    tensor = tensor.detach().requires_grad_()
            vals[slot] = tensor

    # -- backward ------------------------------------------------------------------------------
    def backward(self, diffs: Sequence[str] | None = None, start: str | None = None,
                 end: str | None = None, **kwargs) -> dict[str, np.ndarray]:
        """pycaffe's ``backward``: back-propagate from the tops' diffs (loss weights, or what was
        put into the output blobs' diffs), leaving every blob's and parameter's diff as Caffe does.
        Parameter diffs accumulate until ``clear_param_diffs``; blob diffs are overwritten.

        ``start``/``end`` name the first and last layer to run (Caffe's ``BackwardFromTo``: from
        ``start`` down to ``end``, inclusive); the layers then run one by one from the tops' current
        diffs, on the values of the last ``forward()``. The result holds the diffs of the inputs
        (of ``end``'s bottoms when ``end`` is given) plus those named in ``diffs``."""
        sync_host_mirrors()
        for name, value in kwargs.items():
            if name not in self.outputs:
                raise NetError(f"{name!r} is not an output blob of the net; outputs are {self.outputs}")
            diff = self._blob_diff(name)
            with torch.no_grad():
                diff.copy_(torch.from_numpy(np.ascontiguousarray(np.asarray(value))).reshape(diff.shape))
        if self._vals is None:
            raise NetError("backward() needs a forward() first")
        layered = start is not None or end is not None or self._caffe_hooks["before_backward"] \
            or self._caffe_hooks["after_backward"]
        if layered and self._vals_fused:
            raise NetError("backward layer by layer (start/end, or backward callbacks) needs every layer's "
                           "values, but the last pass was forward_backward(), which fuses in-place "
                           "BatchNorm + Scale pairs and overwrites values no blob shows; call forward() first")
        first = self._layer_index(start, len(self._graph.nodes) - 1)
        last = self._layer_index(end, 0)
        if layered:
            self._backward_layers(self._vals, first, last)
        elif self._any_backward:
            self._backward_all(self._vals)
        wanted = list(self.bottom_names[self._layer_names[last]]) if end is not None else list(self.inputs)
        wanted += [d for d in (diffs or ()) if d not in wanted]
        return {name: self.blobs[name].diff for name in wanted}

    def _backward_layers(self, vals: list, first: int, last: int) -> None:
        """Caffe's ``BackwardFromTo(first, last)``: layer by layer, each reading its tops' diffs
        and writing its bottoms' diffs (parameter diffs accumulate), with the hooks around each."""
        for node in reversed(self._graph.nodes[last:first + 1]):
            self._call_hooks("before_backward", node.index)
            if node.need_backward:
                self._backward_layer(node, vals)
            self._call_hooks("after_backward", node.index)

    def _backward_layer(self, node: Node, vals: list) -> None:
        tops, top_diffs = [], []
        for j, (name, slot) in enumerate(zip(node.tops, node.top_slots)):
            tensor = vals[slot]
            if tensor is None or not tensor.requires_grad:
                continue
            diff = torch.full_like(tensor, node.loss_weights[j]) if name == ANONYMOUS_TOP else self._blob_diff(name)
            if diff.shape == tensor.shape:
                tops.append(tensor)
                top_diffs.append(diff)
        bottoms = [(name, vals[slot]) for name, slot, need in
                   zip(node.bottoms, node.bottom_slots, node.bottom_need_backward) if need]
        reachable = [(name, t) for name, t in bottoms if t is not None and t.requires_grad]
        params = [node.layer._parameters[attr] for attr, propagate in
                  zip(node.layer.blob_names, node.param_propagate_down)
                  if propagate and node.layer._parameters.get(attr) is not None
                  and node.layer._parameters[attr].requires_grad]
        targets = [t for _, t in reachable] + params
        grads: Sequence = [None] * len(targets)
        if tops and targets:
            grads = torch.autograd.grad(tops, targets, top_diffs, allow_unused=True, retain_graph=True)
        found = {name: grad for (name, _), grad in zip(reachable, grads)}
        with torch.no_grad():
            for name, _ in bottoms:  # written even where no gradient arrives, as Caffe's layers do
                grad, diff = found.get(name), self._blob_diff(name)
                diff.copy_(grad) if grad is not None else diff.zero_()
            for param, grad in zip(params, grads[len(reachable):]):
                if grad is not None:
                    if param.grad is None:
                        param.grad = grad.clone()
                    else:
                        param.grad.add_(grad)

    # -- Caffe's per-layer callbacks (pycaffe's net.before_forward(fn) & co.) -------------------
    def before_forward(self, callback) -> None:
        """Call ``callback(i)`` before layer ``i`` runs forward (Caffe's ``add_before_forward``)."""
        self._caffe_hooks["before_forward"].append(callback)

    def after_forward(self, callback) -> None:
        """Call ``callback(i)`` after layer ``i`` ran forward."""
        self._caffe_hooks["after_forward"].append(callback)

    def before_backward(self, callback) -> None:
        """Call ``callback(i)`` before layer ``i``'s backward; with backward callbacks registered,
        ``backward()`` runs layer by layer, as Caffe's does."""
        self._caffe_hooks["before_backward"].append(callback)

    def after_backward(self, callback) -> None:
        """Call ``callback(i)`` after layer ``i``'s backward (its diffs are then written)."""
        self._caffe_hooks["after_backward"].append(callback)

    def _call_hooks(self, when: str, index: int) -> None:
        for callback in self._caffe_hooks[when]:
            callback(index)

    def _backward_all(self, vals: list) -> None:
        seeds, seed_grads = self._backward_seeds(vals)
        blobs = {name: vals[slot] for name, slot in self._diff_slot.items()}
        reachable = {name: t for name, t in blobs.items() if t is not None and t.requires_grad}
        params = self._backward_params()
        targets = list(reachable.values()) + params
        grads: Sequence = [None] * len(targets)
        if seeds and targets:
            grads = torch.autograd.grad(seeds, targets, seed_grads, allow_unused=True, retain_graph=True)
        blob_grads = dict(zip(reachable, grads))
        with torch.no_grad():
            for name in blobs:  # Caffe writes these diffs, zeros where no gradient arrives
                grad, diff = blob_grads.get(name), self._blob_diff(name)
                diff.copy_(grad) if grad is not None else diff.zero_()
            for param, grad in zip(params, grads[len(reachable):]):  # parameter diffs accumulate
                if grad is None:
                    continue
                if param.grad is None:
                    param.grad = grad.clone()
                else:
                    param.grad.add_(grad)

    def _backward_seeds(self, vals: list):
        """The tops whose diffs no later layer overwrites: backward starts from what they hold."""
        seeds, grads = [], []
        for node in self._graph.nodes:
            if not node.need_backward:
                continue
            for j, (name, slot) in enumerate(zip(node.tops, node.top_slots)):
                tensor = vals[slot]
                if slot in self._active or tensor is None or not tensor.requires_grad:
                    continue
                if name == ANONYMOUS_TOP:  # no blob to hold it: its diff is its loss weight
                    diff = torch.full_like(tensor, node.loss_weights[j])
                else:
                    diff = self._blob_diff(name)
                if diff.shape == tensor.shape:  # zero diffs too: Caffe runs every backward
                    seeds.append(tensor)
                    grads.append(diff)
        return seeds, grads

    def _backward_params(self) -> list[torch.Tensor]:
        seen, params = set(), []
        for node in self._graph.nodes:
            if not node.need_backward:
                continue
            for attr, propagate in zip(node.layer.blob_names, node.param_propagate_down):
                tensor = node.layer._parameters.get(attr)
                if propagate and tensor is not None and tensor.requires_grad and id(tensor) not in seen:
                    seen.add(id(tensor))
                    params.append(tensor)
        return params

    def clear_param_diffs(self) -> None:
        """Zero every parameter's diff (Caffe's ``ClearParamDiffs``), BatchNorm's statistics too."""
        sync_host_mirrors()
        for param in self.parameters():
            if param.grad is not None:
                param.grad.zero_()
        for node in self._graph.nodes:
            for diff in node.layer.__dict__.get("_buffer_diffs", {}).values():
                diff.zero_()

    # -- what the solver needs -----------------------------------------------------------------
    def forward_loss(self) -> float:
        """Caffe's ``Net::Forward(&loss)``: run every layer (blobs keep their values, as after
        ``forward()``) and return the total loss, the sum of ``loss_weight * sum(top)`` over
        every top with a loss weight."""
        sync_host_mirrors()
        return self._total_loss(self._run_layers(0, len(self._graph.nodes) - 1))

    def forward_backward(self) -> float:
        """Caffe's ``Net::ForwardBackward``: :meth:`forward_loss`, then ``backward()`` (parameter
        diffs accumulate); returns the loss. Without callbacks the forward runs the iteration's
        plan: on an in-place blob, a BatchNorm + Scale pair is one step and a ReLU overwrites the
        fresh value before it (values no blob shows)."""
        sync_host_mirrors()
        last = len(self._graph.nodes) - 1
        if self._caffe_hooks["before_backward"] or self._caffe_hooks["after_backward"]:
            loss = self._total_loss(self._run_layers(0, last))
            self._backward_layers(self._vals, last, 0)
        else:
            loss = self._total_loss(self._run_layers(0, last, iteration=True))
            if self._any_backward:
                self._backward_all(self._vals)
        return loss

    def _total_loss(self, vals: list) -> float:
        total = None
        for node in self._graph.nodes:
            for slot, weight in zip(node.top_slots, node.loss_weights):
                if weight and vals[slot] is not None:
                    term = vals[slot].detach().sum() * weight
                    total = term if total is None else total + term
        return 0.0 if total is None else float(total)

    def share_with(self, other: "Net") -> None:
        """Use ``other``'s blobs in every layer named like one of ``other``'s (pycaffe's
        ``share_with``, Caffe's ``ShareTrainedLayersWith``): the layers then hold the very same
        tensors — parameters and buffers such as BatchNorm's statistics — so an update of
        ``other`` is seen here at once. Layer names ``other`` has and this net lacks are skipped;
        the blob counts and shapes of a shared layer must match."""
        sync_host_mirrors()
        index: dict[str, Node] = {}
        for node in self._graph.nodes:
            index.setdefault(node.name, node)
        for source in other._graph.nodes:
            target = index.get(source.name)
            if target is None:
                log.debug("Ignoring source layer %s", source.name)
                continue
            _share_layer_blobs(source, target)

    @property
    def learnable_params(self):
        """Caffe's learnable parameters (owners only) with their lr_mult and decay_mult."""
        return [e for e in self._graph.params if e.owner == -1]

    # -- weights -------------------------------------------------------------------------------
    def copy_from(self, path: str | os.PathLike) -> None:
        """Load weights by layer name from a ``.caffemodel`` or ``.caffemodel.h5`` (Caffe's
        ``CopyTrainedLayersFrom``): source layers the net lacks are skipped with one log line;
        a blob count or shape that differs is an error naming the layer, blob and both shapes."""
        path = os.fspath(path)
        sync_host_mirrors()
        index = {}
        for i, name in enumerate(self._layer_names):
            index.setdefault(name, i)
        for source in read_weights(path):
            if source.name not in index:
                log.info("Ignoring source layer %s", source.name)
                continue
            self._copy_layer(path, self._graph.nodes[index[source.name]], source)

    def _copy_layer(self, path: str, node, source) -> None:
        targets = node.layer.caffe_blobs()
        if len(source.blobs) != len(targets):
            raise WeightsError(f"{path}: {node.label} has {len(targets)} blob(s) in the net but "
                               f"{len(source.blobs)} in the weights file")
        for j, (target, blob) in enumerate(zip(targets, source.blobs)):
            if not _shape_matches(tuple(target.shape), blob):
                raise WeightsError(
                    f"{path}: cannot copy blob {j} of {node.label}: the file has shape {blob.shape}, "
                    f"the net expects {tuple(target.shape)}. To learn this layer from scratch instead, "
                    f"rename it in the prototxt.")
            with torch.no_grad():
                target.copy_(torch.from_numpy(np.asarray(blob.data)).reshape(target.shape))

    def save(self, path: str | os.PathLike, write_diff: bool = False) -> None:
        """Write the net's layers and blobs as a binary ``.caffemodel`` (Caffe's ``Net::ToProto``;
        with ``write_diff`` the diffs too, as a ``snapshot_diff`` snapshot)."""
        sync_host_mirrors()
        param = caffe_pb2.NetParameter(name=self.name)
        for node in self._graph.nodes:
            layer = param.layer.add()
            layer.CopyFrom(node.param)
            del layer.blobs[:]
        blobs = [[as_numpy(t) for t in node.layer.caffe_blobs()] for node in self._graph.nodes]
        diffs = [[b.diff for b in node.layer.blobs] for node in self._graph.nodes] if write_diff else None
        write_caffemodel(os.fspath(path), param, blobs, diffs)

    def save_hdf5(self, path: str | os.PathLike, write_diff: bool = False) -> None:
        """Write the blobs in Caffe's HDF5 layout; shared parameters are stored once, by their owner
        (with ``write_diff``, every diff is stored as well, as Caffe's ``Net::ToHDF5`` does)."""
        sync_host_mirrors()
        owned = {(e.layer, e.blob) for e in self._graph.params if e.owner == -1}
        layers, diffs = [], []
        for node in self._graph.nodes:
            arrays = [as_numpy(t) if (node.index, j) in owned else None
                      for j, t in enumerate(node.layer.caffe_blobs())]
            if any(a is not None for a in arrays) or (write_diff and arrays):
                layers.append((node.name, arrays))
                diffs.append([b.diff for b in node.layer.blobs])
        write_caffemodel_h5(os.fspath(path), layers, diffs if write_diff else None)

    def load_hdf5(self, path: str | os.PathLike) -> None:
        self.copy_from(path)

    def __repr__(self) -> str:
        return f"<torchcaffe.Net {self.name!r}: {len(self._graph.nodes)} layers, phase " \
               f"{caffe_pb2.Phase.Name(self.phase)}, inputs {self.inputs}, outputs {self.outputs}>"


@dataclass(frozen=True)
class _Step:
    """One layer as the executor runs it, settled at construction: slots instead of blob names,
    and what the forward does besides calling the layer."""

    index: int
    label: str
    layer: nn.Module
    is_input: bool
    names: tuple[str, ...]  # the top blob names (read by input layers)
    bottoms: tuple[int, ...]
    tops: tuple[int, ...]
    detach: tuple[bool, ...]  # empty when every bottom passes its gradient on
    quirk: str | None  # the blob whose final value Caffe's in-place backward reads, if any
    finals: tuple[tuple[int, str], ...]  # (top position, blob name) holding such final values
    release: tuple[int, ...]  # slots this layer reads last
    in_place: int | None  # the bottom the torch call may overwrite (see _writable_bottom)

    @classmethod
    def of(cls, node: Node, quirk: str | None, final_slots: Mapping[int, str], release,
           overwritable: set[int]) -> "_Step":
        finals = tuple((j, final_slots[slot]) for j, slot in enumerate(node.top_slots) if slot in final_slots)
        in_place = _writable_bottom(node, quirk, overwritable)
        return cls(node.index, node.label, node.layer, bool(getattr(node.layer, "is_input", False)),
                   tuple(node.tops), tuple(node.bottom_slots), tuple(node.top_slots),
                   node.detach if True in node.detach else (), quirk, finals, tuple(release), in_place)


#: Layers whose top is a fresh tensor that their own backward does not read: an in-place layer
#: after them may overwrite it (as Caffe's in-place ReLU after a convolution does).
_FRESH_TOPS = frozenset({"Convolution", "Deconvolution", "InnerProduct", "BatchNorm", "Scale", "Bias", "Eltwise"})


def _writable_bottom(node: Node, quirk: str | None, overwritable: set[int]) -> int | None:
    """The bottom a layer with ``forward_in_place`` may overwrite in the torch call: an in-place
    neuron's own (``top == bottom``), or for a layer with ``in_place_any_bottom`` (a two-bottom
    Eltwise SUM) whichever bottom is overwritable; None when none may be."""
    layer = node.layer
    if quirk is not None or True in node.detach or not hasattr(layer, "forward_in_place"):
        return None
    if getattr(layer, "in_place_any_bottom", False):
        slots = node.bottom_slots
        return next((j for j, slot in enumerate(slots) if slot in overwritable and slots.count(slot) == 1), None)
    same = len(node.bottoms) == 1 and node.tops == node.bottoms and node.bottom_slots[0] in overwritable
    return 0 if same else None


def _fuse_batchnorm_scale(nodes, steps: list["_Step"], slot_shapes, seen: set[int] = frozenset()) -> list["_Step"]:
    """``steps`` with each BatchNorm whose top only a per-channel Scale reads, and is not one of
    the ``seen`` slots, run as one :class:`BatchNormScale` step writing the Scale's top (Caffe's
    BatchNorm + Scale pair, as ResNets and MobileNets use it). ``steps`` itself when none fuses."""
    readers: dict[int, list[int]] = {}
    for node in nodes:
        for slot in node.bottom_slots:
            readers.setdefault(slot, []).append(node.index)
    out, skip = [], set()
    for node, step in zip(nodes, steps):
        if node.index in skip:
            continue
        after = readers.get(node.top_slots[0], []) if len(node.top_slots) == 1 else []
        partner = steps[after[0]] if len(after) == 1 else None
        if (partner is not None and len(step.bottoms) == 1 and len(partner.bottoms) == 1
                and node.top_slots[0] not in seen and not (step.quirk or partner.quirk or step.finals
                or partner.finals or step.detach or partner.detach)
                and BatchNormScale.fuses(node.layer, partner.layer, len(slot_shapes[node.bottom_slots[0]]))):
            out.append(replace(step, layer=BatchNormScale(node.layer, partner.layer), tops=partner.tops,
                               names=partner.names, release=step.release + partner.release,
                               in_place=None))
            skip.add(partner.index)
        else:
            out.append(step)
    return out if skip else steps


def _overwritable_slots(nodes) -> set[int]:
    """Slots the torch call may overwrite in place: written by a ``_FRESH_TOPS`` layer and read by
    exactly one layer (a Split's views, or a blob with two readers, are never overwritten)."""
    readers: dict[int, int] = {}
    for node in nodes:
        for slot in node.bottom_slots:
            readers[slot] = readers.get(slot, 0) + 1
    return {slot for node in nodes if node.type in _FRESH_TOPS for slot in node.top_slots
            if readers.get(slot) == 1}


_HOOK_POINTS = ("before_forward", "after_forward", "before_backward", "after_backward")
_TF32 = {"allowed": False}


def allow_tf32(allowed: bool = True) -> None:
    """Let cuDNN convolutions use TF32 on GPUs that have it: faster, but no longer Caffe's float32
    numbers (about 1e-3 relative error instead of 1e-7). Off by default."""
    _TF32["allowed"] = bool(allowed)
    torch.backends.cudnn.allow_tf32 = bool(allowed)


def keep_ieee_float32() -> None:
    """Caffe computes in IEEE float32; PyTorch lets cuDNN convolutions use TF32 by default. A net
    moved to a GPU turns that off (process-wide, as the flag is) unless ``allow_tf32`` said yes."""
    if not _TF32["allowed"]:
        torch.backends.cudnn.allow_tf32 = False


def _net_arguments(args, phase, level, stages, weights):
    """pycaffe accepts ``(phase, level, stages, weights)`` and the legacy ``(weights, phase)``."""
    args = list(args)
    if args and isinstance(args[0], PathLike):
        weights = args.pop(0)
        if args:
            phase = args.pop(0)
    else:
        names = ["phase", "level", "stages", "weights"]
        values = dict(phase=phase, level=level, stages=stages, weights=weights)
        for name, value in zip(names, args):
            values[name] = value
        phase, level, stages, weights = (values[n] for n in names)
        args = args[len(names):]
    if args:
        raise TypeError("Net(prototxt, phase, level=0, stages=None, weights=None) got too many arguments")
    if phase is None:
        phase = TEST
    if phase not in (TRAIN, TEST):
        raise ValueError(f"phase must be torchcaffe.TRAIN ({TRAIN}) or torchcaffe.TEST ({TEST}), got {phase!r}")
    return phase, int(level), list(stages or ()), weights


def _read_network(network) -> tuple[caffe_pb2.NetParameter, str]:
    if isinstance(network, caffe_pb2.NetParameter):
        from ..io.upgrade import upgrade_net
        return upgrade_net(network), "<NetParameter>"
    if isinstance(network, PathLike):
        return read_net(os.fspath(network)), os.fspath(network)
    raise TypeError(f"a net is a prototxt path or a caffe_pb2.NetParameter, got {type(network).__name__}")


def _share_layer_blobs(source, target) -> None:
    """Give ``target``'s layer the tensors of ``source``'s layer (Caffe's ``Blob::ShareData``)."""
    theirs, mine = source.layer, target.layer
    if len(theirs.blob_names) != len(mine.blob_names):
        raise NetError(f"cannot share the blobs of {source.label}: it has {len(theirs.blob_names)} "
                       f"blob(s), {target.label} in this net has {len(mine.blob_names)}")
    for j, (src_attr, dst_attr) in enumerate(zip(theirs.blob_names, mine.blob_names)):
        src, dst = getattr(theirs, src_attr), getattr(mine, dst_attr)
        if src is dst:
            continue
        if src.shape != dst.shape:
            raise NetError(f"cannot share blob {j} of {source.label}: its shape is {tuple(src.shape)}, "
                           f"{target.label} in this net has {tuple(dst.shape)}")
        if dst_attr in mine._parameters:
            mine._parameters[dst_attr] = src if isinstance(src, nn.Parameter) else \
                nn.Parameter(src.detach(), requires_grad=False)
        else:
            mine._buffers[dst_attr] = src


def _shape_matches(target: tuple[int, ...], blob) -> bool:
    """Caffe's Blob::ShapeEquals: legacy 4-D shapes compare against the target's trailing axes."""
    if blob.legacy is not None:
        if len(target) > 4:
            return False
        padded = (1,) * (4 - len(target)) + target
        return padded == tuple(blob.legacy)
    return tuple(blob.shape) == target
