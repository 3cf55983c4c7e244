"""``Solver``: Caffe's ``Solver`` and ``SGDSolver`` machinery — nets, the training loop, tests,
the update pipeline, snapshots — with the update rule left to the subclasses in ``sgd.py``.

Construction (Caffe's ``Solver::Init``)
    The solver file is read and upgraded (``read_solver``). ``random_seed`` (>= 0) seeds torch.
    The train net comes from exactly one of ``net``, ``net_param``, ``train_net``,
    ``train_net_param``, in NetState phase TRAIN merged with the net's own ``state`` and then with
    ``train_state``. The test nets come from ``test_net_param`` entries, then ``test_net`` files,
    then ``net_param``/``net`` once for each remaining ``test_iter`` entry, each in phase TEST
    merged with the net's ``state`` and ``test_state[i]``. Paths (nets, ``weights``, data sources,
    ``snapshot_prefix``) are relative to the working directory, as in Caffe: pycaffe users
    ``os.chdir`` to the solver's folder, and so should you. Every test net shares the train net's
    blobs, layer by layer name (``Net.share_with``: the very same tensors, BatchNorm's statistics
    included); ``weights`` (a comma-separated list, several entries allowed) are copied into every
    net. ``solver_mode: GPU`` (Caffe's default) runs on ``cuda:<device_id>`` when CUDA is there and
    on the CPU otherwise (with a warning when the file asks for GPU explicitly); ``device=``
    overrides both.

The loop (``Solver::Step``)
    Per iteration: zero the parameter diffs; test when ``test_interval`` divides the iteration
    (at iteration 0 only with ``test_initialization``); ``iter_size`` forward/backward passes whose
    diffs accumulate (the reported loss is their mean, smoothed over ``average_loss`` iterations);
    the update; ``iter += 1``; a snapshot when ``snapshot`` divides the new iteration.

The update (``SGDSolver::ApplyUpdate``)
    ``rate`` from the lr policy; clip all diffs together when their global L2 norm exceeds
    ``clip_gradients`` (>= 0); per learnable parameter, divide the diff by ``iter_size``, add the
    regularization ``weight_decay * decay_mult * w`` (L2) or ``... * sign(w)`` (L1), turn the diff
    into the update value with the solver's rule at ``local_rate = rate * lr_mult``, then
    ``w -= diff``. Afterwards slices of parameters with ``ParamSpec.max_norm`` are renormed.
    Parameters with ``lr_mult: 0`` go through the same steps with a zero rate, so they never
    change, while their histories evolve as in Caffe.
"""
from __future__ import annotations

import logging
import os
import time
from typing import Callable, Sequence

import numpy as np
import torch
from google.protobuf import text_format

from ..amp import autocast, mixed_precision
from ..errors import CaffeError
from ..io.prototxt import read_net, read_solver
from ..io.upgrade import upgrade_solver
from ..logs import format_float as _fmt
from ..net.debug import check_finite, debug_info, log_update
from ..net.net import Net
from ..proto import caffe_pb2
from . import lr_policies
from .maxnorm import renorm_
from .snapshot import (SolverStateData, history_arrays, read_solverstate, snapshot_filename, write_solverstate,
                       write_solverstate_h5)

log = logging.getLogger("torchcaffe")
f32 = np.float32

_TRAIN_NET_FIELDS = ("net", "net_param", "train_net", "train_net_param")


class SolverError(CaffeError):
    """A solver definition Caffe would refuse, or a solver state that does not fit the solver."""


class Solver:
    """Caffe's solver, pycaffe's API: ``solver.net``, ``solver.test_nets``, ``solver.iter``,
    ``solver.param``, ``step(n)``, ``solve(resume_file=None)``, ``restore(path)``,
    ``snapshot()``, ``apply_update()``, ``add_callback(on_start, on_gradients_ready)``,
    ``share_weights(net)``.

    ``Solver(solver, device=None, amp=None)``: ``solver`` is a solver prototxt path, prototxt text, or a
    ``caffe_pb2.SolverParameter``; ``amp`` is mixed precision (see :attr:`amp`). A subclass supplies the update rule
    (:meth:`compute_update_value`) and how many history blobs it keeps per parameter.
    """

    #: Caffe's solver type string.
    type = ""
    #: History blobs per learnable parameter (AdaDelta and Adam keep two).
    history_sets = 1

    def __init__(self, solver, device: str | torch.device | None = None, *, source: str | None = None,
                 amp: str | None = None, allow_nonfinite: bool = False, allow_python_layers: bool = True):
        self._iter = 0
        self.param, self.source = read_solver_param(solver, source)
        log.info("Initializing solver from parameters: \n%s", text_format.MessageToString(self.param))
        self._check_param()
        self._check_snapshot_prefix()
        if self.param.random_seed >= 0:
            torch.manual_seed(self.param.random_seed)
        self.device = self._choose_device(device)
        self.allow_python_layers = allow_python_layers
        self.net = self._init_train_net()
        self.test_nets = self._init_test_nets()
        log.info("Solver scaffolding done.")
        self.current_step = 0
        self.history = [torch.zeros_like(self._param_tensor(e)) for _ in range(self.history_sets)
                        for e in self.net.learnable_params]
        self._callbacks: list[tuple[Callable, Callable]] = []
        self._action: Callable[[], str] | None = None
        self.requested_early_exit = False
        self._losses: list = []
        self.smoothed_loss = f32(0)
        self.mean_scores: list[list[float]] = [[] for _ in self.test_nets]
        self._check_max_norm()
        #: Caffe's ``Caffe::root_solver()``: only the root tests and snapshots (data-parallel
        #: training sets it False on every other rank, see ``solvers/distributed.py``).
        self.root_solver = True
        self.amp = amp
        #: False (default): a NaN/Inf loss or gradient stops training naming the layer (net/debug.py).
        self.allow_nonfinite = allow_nonfinite

    # -- pycaffe's API ---------------------------------------------------------------------------
    @property
    def iter(self) -> int:
        """The number of updates done so far."""
        return self._iter

    def add_callback(self, on_start: Callable[[], None], on_gradients_ready: Callable[[], None]) -> None:
        """Call ``on_start()`` at the start of each iteration (after any test) and
        ``on_gradients_ready()`` once the diffs are accumulated, before the update."""
        self._callbacks.append((on_start, on_gradients_ready))

    def share_weights(self, net: Net) -> None:
        """Let ``net`` use this solver's train-net blobs (``net.share_with(solver.net)``)."""
        net.share_with(self.net)

    @property
    def amp(self):
        """Mixed precision (ours, see ``torchcaffe/amp.py``): ``None``, or the
        :class:`~torchcaffe.amp.MixedPrecision` that ``solver.amp = "bf16"`` / ``"fp16"`` sets up
        for the solver's device. Forward passes (train and test nets) run under autocast; with fp16
        the loss is scaled and the update skipped when the diffs overflow."""
        return self._amp

    @amp.setter
    def amp(self, mode) -> None:
        self._amp = mixed_precision(mode, self.device)
        if self._amp is not None and self._amp.scaler is not None:
            self._amp.scaler.install(self.net)

    def set_action_function(self, action: Callable[[], str] | None) -> None:
        """``action()`` is asked after every iteration (and test iteration) whether to go on:
        ``"none"``, ``"snapshot"`` or ``"stop"`` (Caffe's ``SolverAction``, used by the CLI's signals)."""
        self._action = action

    # -- the loop --------------------------------------------------------------------------------
    def step(self, iters: int) -> None:
        """Run ``iters`` iterations (Caffe's ``Solver::Step``)."""
        p = self.param
        start_iter, stop_iter = self._iter, self._iter + int(iters)
        self._losses = []
        self.smoothed_loss = f32(0)
        self._iteration_timer = time.perf_counter()  # Caffe's iteration_timer_: display to display
        self._iterations_last = self._iter
        while self._iter < stop_iter:
            self.net.clear_param_diffs()
            if p.test_interval and self._iter % p.test_interval == 0 and (self._iter > 0 or p.test_initialization) \
                    and self.root_solver:
                self.test_all()
                if self.requested_early_exit:
                    break
            for on_start, _ in self._callbacks:
                on_start()
            display = bool(p.display) and self._iter % p.display == 0
            loss = f32(0)
            with debug_info(self.net, display and p.debug_info):  # Caffe's net_->set_debug_info
                for _ in range(p.iter_size):
                    with autocast(self._amp):
                        loss += f32(self.net.forward_backward())
            loss /= f32(p.iter_size)
            if not self.allow_nonfinite and (self._amp is None or self._amp.scaler is None):
                check_finite(self.net, float(loss), self._iter)  # fp16 scaling skips overflows itself
            self._update_smoothed_loss(loss, start_iter)
            if display:
                self._log_train_outputs()
            for _, on_gradients_ready in self._callbacks:
                on_gradients_ready()
            if self._unscale_gradients():
                self.apply_update()
            else:
                self.learning_rate()  # the schedule moves on as if the update had happened
            self._iter += 1
            request = self._requested_action()
            if ((p.snapshot and self._iter % p.snapshot == 0) or request == "snapshot") and self.root_solver:
                self.snapshot()
            if request == "stop":
                self.requested_early_exit = True
                break

    def solve(self, resume_file: str | os.PathLike | None = None) -> None:
        """Train to ``max_iter`` (Caffe's ``Solver::Solve``), first restoring ``resume_file``."""
        p = self.param
        log.info("Solving %s", self.net.name)
        log.info("Learning Rate Policy: %s", p.lr_policy)
        self.requested_early_exit = False
        if resume_file is not None:
            log.info("Restoring previous solver status from %s", os.fspath(resume_file))
            self.restore(resume_file)
        start_iter = self._iter
        self.step(p.max_iter - self._iter)
        if p.snapshot_after_train and (not p.snapshot or self._iter % p.snapshot != 0) and self.root_solver:
            self.snapshot()
        if self.requested_early_exit:
            log.info("Optimization stopped early.")
            return
        if p.display and self._iter % p.display == 0:
            with torch.no_grad(), autocast(self._amp):
                loss = f32(self.net.forward_loss())
            self._update_smoothed_loss(loss, start_iter)
            log.info("Iteration %d, loss = %s", self._iter, _fmt(self.smoothed_loss))
        if p.test_interval and self._iter % p.test_interval == 0 and self.root_solver:
            self.test_all()
        log.info("Optimization Done.")

    def _update_smoothed_loss(self, loss, start_iter: int) -> None:
        """Caffe's ``UpdateSmoothedLoss``: the mean of the last ``average_loss`` losses."""
        average = self.param.average_loss
        if len(self._losses) < average:
            self._losses.append(loss)
            size = len(self._losses)
            self.smoothed_loss = f32((self.smoothed_loss * f32(size - 1) + loss) / f32(size))
        else:
            index = (self._iter - start_iter) % average
            self.smoothed_loss = f32(self.smoothed_loss + (loss - self._losses[index]) / f32(average))
            self._losses[index] = loss

    def _requested_action(self) -> str:
        return self._action() if self._action is not None else "none"

    # -- testing ---------------------------------------------------------------------------------
    def test_all(self) -> None:
        """Run every test net (Caffe's ``TestAll``)."""
        for net_id in range(len(self.test_nets)):
            if self.requested_early_exit:
                break
            self.test(net_id)

    def test(self, test_net_id: int = 0) -> list[float]:
        """Run test net ``test_net_id`` for its ``test_iter`` iterations and log the mean of
        every output value (Caffe's ``Solver::Test``); returns those means."""
        p = self.param
        log.info("Iteration %d, Testing net (#%d)", self._iter, test_net_id)
        net = self.test_nets[test_net_id]
        net.share_with(self.net)
        iterations = p.test_iter[test_net_id]
        scores, loss = None, f32(0)
        with torch.no_grad(), autocast(self._amp):
            for _ in range(iterations):
                request = self._requested_action()
                while request != "none":
                    if request == "snapshot":
                        self.snapshot()
                    elif request == "stop":
                        self.requested_early_exit = True
                    request = self._requested_action()
                if self.requested_early_exit:
                    break
                iter_loss = net.forward_loss()
                if p.test_compute_loss:
                    loss += f32(iter_loss)
                values = torch.cat([net._blob_data(name).detach().reshape(-1).to(torch.float64)
                                    for name in net.outputs]) if net.outputs else torch.zeros(0)
                scores = values if scores is None else scores + values
        if self.requested_early_exit:
            log.info("Test interrupted.")
            return []
        if p.test_compute_loss:
            log.info("Test loss: %s", _fmt(loss / f32(iterations)))
        means = [] if scores is None else (scores / iterations).tolist()
        self.mean_scores[test_net_id] = means
        for k, (name, mean) in enumerate(zip(_output_names(net), means)):
            weight = net.blob_loss_weights.get(name, 0.0)
            extra = f" (* {_fmt(weight)} = {_fmt(weight * mean)} loss)" if weight else ""
            log.info("    Test net output #%d: %s = %s%s", k, name, _fmt(mean), extra)
        return means

    # -- the update ------------------------------------------------------------------------------
    def learning_rate(self) -> float:
        """The rate of the current iteration (advances ``current_step`` as Caffe's does)."""
        rate, self.current_step = lr_policies.learning_rate(self.param, self._iter, self.current_step)
        return rate

    def apply_update(self) -> None:
        """Caffe's ``SGDSolver::ApplyUpdate`` (see the module docstring), then max-norm."""
        p = self.param
        rate = self.learning_rate()
        if p.display and self._iter % p.display == 0:
            log.info("Iteration %d, lr = %s", self._iter, _fmt(rate))
        entries = self.net.learnable_params
        with torch.no_grad():
            tensors = [self._param_tensor(e) for e in entries]
            diffs = [self._param_diff(e) for e in entries]
            self._clip_gradients(diffs)
            for i, (entry, w, g) in enumerate(zip(entries, tensors, diffs)):
                self._normalize(g)
                self._regularize(entry, w, g)
                self._move_history(i, w)
                local_rate = float(f32(rate) * f32(entry.lr_mult))
                self.compute_update_value(i, w, g, local_rate)
            for w, g in zip(tensors, diffs):
                w.sub_(g)  # Caffe's Net::Update: data -= diff
            for entry, w in zip(entries, tensors):
                if entry.max_norm > 0:
                    renorm_(w, entry.max_norm_axis, entry.max_norm)
        if p.debug_info and p.display and self._iter % p.display == 0:
            self._log_debug_update(entries, tensors, diffs)

    def _unscale_gradients(self) -> bool:
        """With fp16 loss scaling: divide the diffs by the scale, adapt it; False when they
        overflowed and the update must be skipped. Always True otherwise."""
        scaler = self._amp.scaler if self._amp is not None else None
        if scaler is None:
            return True
        with torch.no_grad():
            finite = scaler.unscale_([self._param_diff(e) for e in self.net.learnable_params])
        scaler.update(finite, self._iter)
        return finite

    def compute_update_value(self, index: int, w: torch.Tensor, g: torch.Tensor, local_rate: float) -> None:
        """Turn the diff ``g`` of learnable parameter ``index`` into the value ``w -= g`` subtracts,
        in place, updating ``self.history`` (the solver's rule)."""
        raise NotImplementedError(f"{type(self).__name__} has no update rule; use SGDSolver, AdamSolver...")

    def _clip_gradients(self, diffs: Sequence[torch.Tensor]) -> None:
        clip = f32(self.param.clip_gradients)
        if clip < 0 or not diffs:
            return
        sumsq = torch.stack([(g * g).sum().to(torch.float32) for g in diffs]).sum()
        norm = f32(np.sqrt(f32(sumsq.item())))
        if norm > clip:
            scale = f32(clip / norm)
            log.info("Gradient clipping: scaling down gradients (L2 norm %s > %s) by scale factor %s",
                     _fmt(norm), _fmt(clip), _fmt(scale))
            for g in diffs:
                g.mul_(float(scale))

    def _normalize(self, g: torch.Tensor) -> None:
        if self.param.iter_size != 1:
            g.mul_(float(f32(1) / f32(self.param.iter_size)))

    def _regularize(self, entry, w: torch.Tensor, g: torch.Tensor) -> None:
        local_decay = float(f32(self.param.weight_decay) * f32(entry.decay_mult))
        if not local_decay:
            return
        if self.param.regularization_type == "L2":
            g.add_(w, alpha=local_decay)
        else:  # "L1", checked at construction
            g.add_(torch.sign(w), alpha=local_decay)

    def _move_history(self, index: int, w: torch.Tensor) -> None:
        """Keep the histories on the parameter's device, dtype and memory layout (after
        ``net.to(...)``, channels_last included)."""
        n = len(self.net.learnable_params)
        for k in range(index, len(self.history), n):
            h = self.history[k]
            if h.device != w.device or h.dtype != w.dtype or h.stride() != w.stride():
                self.history[k] = torch.empty_like(w).copy_(h)

    # -- parameters and their diffs ---------------------------------------------------------------
    def _param_tensor(self, entry) -> torch.Tensor:
        layer = self.net._graph.nodes[entry.layer].layer
        return getattr(layer, layer.blob_names[entry.blob])

    def _param_diff(self, entry) -> torch.Tensor:
        """The diff Caffe keeps beside the blob: the parameter's ``.grad`` (created as zeros when a
        frozen parameter has none), or the layer's buffer diff (BatchNorm's statistics)."""
        layer = self.net._graph.nodes[entry.layer].layer
        attr = layer.blob_names[entry.blob]
        tensor = getattr(layer, attr)
        if attr in layer._parameters:
            if tensor.grad is None or tensor.grad.shape != tensor.shape:
                tensor.grad = torch.zeros_like(tensor)
            return tensor.grad
        diff = layer.buffer_diff(attr)
        if diff.device != tensor.device or diff.dtype != tensor.dtype:
            diff = layer.__dict__["_buffer_diffs"][attr] = torch.zeros_like(tensor)
        return diff

    # -- snapshots -------------------------------------------------------------------------------
    def snapshot(self) -> tuple[str, str]:
        """Write ``<prefix>_iter_<N>.caffemodel`` and ``.solverstate`` (or the ``.h5`` pair);
        returns both paths."""
        p = self.param
        hdf5 = p.snapshot_format == caffe_pb2.SolverParameter.HDF5
        if hdf5:
            model = snapshot_filename(p.snapshot_prefix, self._iter, ".caffemodel.h5")
            log.info("Snapshotting to HDF5 file %s", model)
            self.net.save_hdf5(model, write_diff=p.snapshot_diff)
        else:
            model = snapshot_filename(p.snapshot_prefix, self._iter, ".caffemodel")
            log.info("Snapshotting to binary proto file %s", model)
            self.net.save(model, write_diff=p.snapshot_diff)
        state = SolverStateData(self._iter, model, self.current_step, history_arrays(self.history))
        if hdf5:
            path = snapshot_filename(p.snapshot_prefix, self._iter, ".solverstate.h5")
            log.info("Snapshotting solver state to HDF5 file %s", path)
            write_solverstate_h5(path, state)
        else:
            path = snapshot_filename(p.snapshot_prefix, self._iter, ".solverstate")
            log.info("Snapshotting solver state to binary proto file %s", path)
            write_solverstate(path, state)
        return model, path

    def restore(self, state_file: str | os.PathLike) -> None:
        """Continue from a ``.solverstate`` or ``.solverstate.h5`` (recognised by content): the
        iteration, ``current_step``, the histories, and the weights of its ``learned_net``."""
        state_file = os.fspath(state_file)
        state = read_solverstate(state_file)
        if state.has_learned_net and state.learned_net:
            self.net.copy_from(_learned_net_path(state.learned_net, state_file))
        self._iter = state.iter
        self.current_step = state.current_step
        if len(state.history) != len(self.history):
            raise SolverError(
                f"{state_file}: holds {len(state.history)} history blob(s), this {self.type} solver keeps "
                f"{len(self.history)} ({self.history_sets} per learnable parameter); was it written by "
                f"another solver type or for another net?")
        log.info("SGDSolver: restoring history")
        entries = self.net.learnable_params
        with torch.no_grad():
            for k, (h, array) in enumerate(zip(self.history, state.history)):
                if array.size != h.numel():
                    entry = entries[k % len(entries)]
                    node = self.net._graph.nodes[entry.layer]
                    raise SolverError(f"{state_file}: history blob {k} has shape {array.shape}, but "
                                      f"{node.label} blob {entry.blob} has shape {tuple(h.shape)}")
                h.copy_(torch.from_numpy(np.ascontiguousarray(array)).reshape(h.shape))

    # -- construction ----------------------------------------------------------------------------
    def _fail(self, message: str) -> SolverError:
        return SolverError(f"{self.source}: {message}")

    def _check_param(self) -> None:
        """Caffe's CHECKs on the solver settings, at construction rather than mid-training."""
        p = self.param
        if p.average_loss < 1:
            raise self._fail(f"average_loss must be >= 1, got {p.average_loss}")
        if p.iter_size < 1:
            raise self._fail(f"iter_size must be >= 1, got {p.iter_size}")
        if p.regularization_type not in ("L1", "L2"):
            raise self._fail(f"regularization_type must be \"L2\" or \"L1\", got \"{p.regularization_type}\"")
        if not p.lr_policy:
            known = ", ".join(f'"{name}"' for name in lr_policies.POLICIES)
            raise self._fail(f"lr_policy is not set; give one of {known}")
        try:
            lr_policies.learning_rate(p, 0, 0)
        except ValueError as err:
            raise self._fail(f"{err} (field lr_policy and its parameters)") from None
        self.check_solver_settings()

    def check_solver_settings(self) -> None:
        """A solver type's own checks on the settings (Caffe's ``constructor_sanity_check``)."""

    def _check_snapshot_prefix(self) -> None:
        """Caffe's ``CheckSnapshotWritePermissions``: with ``snapshot`` set, the prefix must be writable."""
        p = self.param
        if not p.snapshot:
            return
        if not p.HasField("snapshot_prefix"):
            raise self._fail("snapshot is set but snapshot_prefix is not; set snapshot_prefix")
        probe = snapshot_filename(p.snapshot_prefix, 0, ".tempfile")
        try:
            with open(probe, "w"):
                pass
            os.remove(probe)
        except OSError as err:
            raise self._fail(f"cannot write to snapshot_prefix '{p.snapshot_prefix}' ({err.strerror or err}). "
                             f"Make sure that the directory exists and is writeable.") from None

    def _choose_device(self, device) -> torch.device:
        if device is not None:
            return torch.device(device)
        from ..compat.runtime import mode_device
        if mode_device() is not None:  # pycaffe's set_mode_cpu/gpu wins over solver_mode
            return mode_device()
        p = self.param
        if p.solver_mode == caffe_pb2.SolverParameter.GPU:
            if torch.cuda.is_available():
                if not 0 <= p.device_id < torch.cuda.device_count():
                    raise self._fail(f"device_id {p.device_id} does not exist: this machine has "
                                     f"{torch.cuda.device_count()} CUDA device(s)")
                return torch.device("cuda", p.device_id)
            if p.HasField("solver_mode"):
                log.warning("%s: solver_mode is GPU but CUDA is not available; running on the CPU", self.source)
        return torch.device("cpu")

    def _init_train_net(self) -> Net:
        p = self.param
        given = [name for name in _TRAIN_NET_FIELDS if p.HasField(name)]
        if not given:
            raise self._fail("no train net: the solver must give one of net, net_param, train_net, train_net_param")
        if len(given) > 1:
            raise self._fail(f"sets {' and '.join(given)}; give exactly one of net, net_param, train_net, "
                             f"train_net_param for the train net")
        field = given[0]
        network = getattr(p, field)
        log.info("Creating training net %s",
                 f"from {field} file: {network}" if isinstance(network, str) else f"specified in {field}.")
        state = caffe_pb2.NetState(phase=caffe_pb2.TRAIN)
        net = self._build_net(network, field, state, p.train_state if p.HasField("train_state") else None)
        return net

    def _init_test_nets(self) -> list[Net]:
        p = self.param
        generic = [name for name in ("net_param", "net") if p.HasField(name)]
        specific = len(p.test_net_param) + len(p.test_net)
        if generic and len(p.test_iter) < specific:
            raise self._fail(f"test_iter must be given for each test net: {specific} test net(s) "
                             f"(test_net, test_net_param), {len(p.test_iter)} test_iter")
        if not generic and len(p.test_iter) != specific:
            raise self._fail(f"test_iter must be given once per test net: {specific} test net(s) "
                             f"(test_net, test_net_param), {len(p.test_iter)} test_iter")
        sources = [(net, "test_net_param") for net in p.test_net_param]
        sources += [(path, "test_net") for path in p.test_net]
        if generic:
            sources += [(getattr(p, generic[0]), generic[0])] * (len(p.test_iter) - specific)
        if p.test_state and len(p.test_state) != len(sources):
            raise self._fail(f"test_state must be given not at all or once per test net ({len(sources)}), "
                             f"got {len(p.test_state)}")
        if sources and p.test_interval <= 0:
            raise self._fail(f"test_interval must be > 0 when there are test nets ({len(sources)} here); "
                             f"got {p.test_interval}")
        nets = []
        for i, (network, field) in enumerate(sources):
            label = f"{field} file: {network}" if isinstance(network, str) else field
            log.info("Creating test net (#%d) specified by %s", i, label)
            state = caffe_pb2.NetState(phase=caffe_pb2.TEST)
            net = self._build_net(network, field, state, p.test_state[i] if p.test_state else None)
            net.share_with(self.net)
            nets.append(net)
        return nets

    def _build_net(self, network, field: str, state: caffe_pb2.NetState, extra) -> Net:
        """A net in Caffe's merged NetState: ``state``, then the net's own, then ``extra``."""
        if isinstance(network, str) and not network:
            raise self._fail(f"{field} is empty; give the path of a net prototxt")
        param = read_net(network) if isinstance(network, str) else network
        merged = caffe_pb2.NetState()
        merged.CopyFrom(state)
        merged.MergeFrom(param.state)
        if extra is not None:
            merged.MergeFrom(extra)
        extra_stages = list(extra.stage) if extra is not None else []
        net = Net(network, phase=merged.phase, level=merged.level, stages=extra_stages,
                  allow_python_layers=self.allow_python_layers)
        net.to(self.device)
        for weights in self.param.weights:
            for path in weights.split(","):
                log.info("Finetuning from %s", path)
                net.copy_from(path)
        return net

    def _check_max_norm(self) -> None:
        for entry in self.net.learnable_params:
            if entry.max_norm < 0:
                node = self.net._graph.nodes[entry.layer]
                raise self._fail(f"{node.label}: param {entry.blob} has max_norm {entry.max_norm}; it must be "
                                 f">= 0 (0 = no constraint)")
            if entry.max_norm > 0:
                dims = self._param_tensor(entry).dim()
                if not -dims <= entry.max_norm_axis < max(dims, 1):
                    node = self.net._graph.nodes[entry.layer]
                    raise self._fail(f"{node.label}: param {entry.blob} has max_norm_axis {entry.max_norm_axis}, "
                                     f"out of range for its {dims}-D blob (allowed: {-dims}..{dims - 1})")

    # -- logging ---------------------------------------------------------------------------------
    def _log_train_outputs(self) -> None:
        """``Iteration N (x iter/s, ys/D iters), loss = L`` (the rate and seconds since the last
        display, tests included, as Caffe's timer runs) and every train net output value."""
        lapse = f32(time.perf_counter() - self._iteration_timer)
        per_s = f32(self._iter - self._iterations_last) / (lapse if lapse else f32(1))
        log.info("Iteration %d (%s iter/s, %ss/%d iters), loss = %s", self._iter, _fmt(per_s), _fmt(lapse),
                 self.param.display, _fmt(self.smoothed_loss))
        self._iteration_timer = time.perf_counter()
        self._iterations_last = self._iter
        net = self.net
        values = [net._blob_data(name).detach().reshape(-1).tolist() for name in net.outputs]
        k = 0
        for name, vals in zip(net.outputs, values):
            weight = net.blob_loss_weights.get(name, 0.0)
            for v in vals:
                extra = f" (* {_fmt(weight)} = {_fmt(f32(weight) * f32(v))} loss)" if weight else ""
                log.info("    Train net output #%d: %s = %s%s", k, name, _fmt(v), extra)
                k += 1

    def _log_debug_update(self, entries, tensors, diffs) -> None:
        log_update(self.net, entries, tensors, diffs)

    def __repr__(self) -> str:
        net = getattr(self, "net", None)
        return f"<torchcaffe.{type(self).__name__} {getattr(self, 'source', '?')!r}: iter {self._iter}, " \
               f"net {net.name if net else None!r}, {len(getattr(self, 'test_nets', []))} test net(s)>"


def read_solver_param(solver, source: str | None) -> tuple[caffe_pb2.SolverParameter, str]:
    if isinstance(solver, caffe_pb2.SolverParameter):
        label = source or "<SolverParameter>"
        return upgrade_solver(solver, label), label
    if isinstance(solver, (str, os.PathLike)):
        param = read_solver(solver)
        text = isinstance(solver, str) and ("\n" in solver or "{" in solver or ": " in solver)
        return param, source or ("<string>" if text else os.fspath(solver))
    raise TypeError(f"a solver is a prototxt path, prototxt text or a caffe_pb2.SolverParameter, "
                    f"got {type(solver).__name__}")


def _learned_net_path(learned_net: str, state_file: str) -> str:
    """The weights named by a solver state: as stored (relative to the working directory, as
    Caffe opens it); failing that, the file of that name beside the state file (snapshots moved
    together)."""
    if os.path.exists(learned_net):
        return learned_net
    beside = os.path.join(os.path.dirname(os.path.abspath(state_file)), os.path.basename(learned_net))
    if os.path.exists(beside):
        return beside
    raise SolverError(f"{state_file}: its weights file {learned_net!r} (learned_net) does not exist, "
                      f"relative to the working directory {os.getcwd()!r} or beside the state file")


def _output_names(net: Net) -> list[str]:
    """One name per output value, in the order the values are concatenated."""
    return [name for name in net.outputs for _ in range(net._blob_data(name).numel())]
