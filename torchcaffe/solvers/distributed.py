"""Data-parallel training with ``torch.distributed``, with the semantics of Caffe's multi-GPU
training (``P2PSync`` / ``NCCL<Dtype>`` in ``parallel.cpp``, ``caffe train --gpu 0,1``).

One process per device, each with its own solver and nets:

* **the batch is per device**: each rank's data layers read ``batch_size`` items a step, so N
  ranks see N × batch_size items per iteration;
* **ranks read different items**: Caffe's ``DataLayer::Skip`` rule — of the records a TRAIN
  data layer reads in order, rank r keeps the ones whose position ``offset`` satisfies
  ``offset % N == r`` (record 0 to rank 0, record 1 to rank 1, ...). Together the ranks' step-t
  batches are exactly the records one process with an N-times larger batch reads at step t. We
  apply it to ``Data`` (LMDB/LevelDB) and ``AnnotatedData`` records, as Caffe does, and to the
  list-file layers (``ImageData``, ``DenseImageData``, ``ImageLabelmapData``, ``ImageSegData``),
  where Caffe's older ``DataReader`` did the same; other data layers (``HDF5Data``, ``MemoryData``,
  ``Input``, ``Python``, ``WindowData``, ``DummyData``) are not sharded and a warning says so.
  TEST nets are not sharded (only rank 0 tests, as in Caffe);
* **identical start**: after the solver is built (and weights or a snapshot are loaded) rank 0's
  parameters, buffers and solver history are broadcast to every rank;
* **gradients averaged**: once the diffs of the ``iter_size`` passes are accumulated (Caffe's
  ``on_gradients_ready``), they are summed over ranks with one all-reduce per dtype and divided by
  N, before Caffe's update: clipping, ``iter_size`` normalization and regularization then act on
  the averaged gradient, as they would on one process's gradient of the N-times larger batch;
* **only rank 0 tests, snapshots and logs** (``Caffe::root_solver()``); the other ranks log
  warnings and errors only. The displayed train loss is rank 0's own.

Differences from one process with the larger batch: BatchNorm statistics are each rank's own
(Caffe does the same; rank 0's are the ones snapshotted); with ``random_seed`` set, rank r is
reseeded with ``random_seed + r`` after the broadcast, so Dropout masks differ across ranks.

Launching: under ``torchrun`` (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT`` in the environment; :func:`init_from_env`), or with :func:`spawn`, which starts
one process per rank on this machine (``torchcaffe train --gpu all`` uses it). NCCL on CUDA
devices, gloo on the CPU. See ``docs/distributed.md``.

    def worker(rank, world_size):
        info = init_from_env()                  # spawn() sets the environment
        solver = get_solver("solver.prototxt", device=info.device)
        data_parallel(solver)
        solver.solve()

    spawn(worker, nprocs=2)
"""
from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from typing import Callable

import torch
import torch.distributed as dist

from ..errors import CaffeError
from .base import Solver

__all__ = ["DistributedError", "DistributedInfo", "launched_by_torchrun", "init_from_env", "data_parallel",
           "shard_data_layers", "RoundRobinShard", "average_gradients", "broadcast_state", "spawn",
           "free_port", "shutdown"]

log = logging.getLogger("torchcaffe")

_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


class DistributedError(CaffeError):
    """A data-parallel run that cannot be set up: missing launcher variables, a device list that
    does not fit the ranks, a worker process that failed."""


@dataclass(frozen=True)
class DistributedInfo:
    """Where this process stands: its ``rank`` of ``world_size``, its ``local_rank`` on this
    machine, and the device it trains on."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_root(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    """Whether a launcher (``torchrun``, :func:`spawn`) set up more than one rank."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


def init_from_env(gpus: list[int] | None = None, backend: str | None = None) -> DistributedInfo:
    """Join the process group the environment describes (``torchrun``'s variables).

    The device: ``cuda:gpus[LOCAL_RANK]`` when ``gpus`` (``--gpu 0,1``) is given, else
    ``cuda:LOCAL_RANK`` when CUDA is available, else the CPU. The backend: NCCL for CUDA, gloo
    for the CPU, unless ``backend`` says otherwise. Joining twice returns the same answer."""
    missing = [name for name in _ENV if name not in os.environ]
    if missing:
        raise DistributedError(f"data-parallel training needs the launcher's environment variables; "
                               f"{', '.join(missing)} not set (launch with torchrun --nproc_per_node=N, "
                               f"or torchcaffe train --gpu 0,1)")
    rank, world, local = (int(os.environ[name]) for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    device = _rank_device(local, gpus)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        chosen = backend or ("nccl" if device.type == "cuda" else "gloo")
        kwargs = {"device_id": device} if chosen == "nccl" else {}
        dist.init_process_group(chosen, init_method="env://", rank=rank, world_size=world, **kwargs)
    return DistributedInfo(rank, world, local, device)


def _rank_device(local_rank: int, gpus: list[int] | None) -> torch.device:
    if gpus:
        if local_rank >= len(gpus):
            raise DistributedError(f"local rank {local_rank} has no device: --gpu names {len(gpus)} "
                                   f"({','.join(map(str, gpus))}); start at most {len(gpus)} processes per machine")
        return torch.device("cuda", gpus[local_rank])
    if torch.cuda.is_available():
        if local_rank >= torch.cuda.device_count():
            raise DistributedError(f"local rank {local_rank} has no GPU: this machine has "
                                   f"{torch.cuda.device_count()}; start at most that many processes per machine")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def shutdown() -> None:
    """Leave the process group (when one was joined)."""
    if dist.is_initialized():
        dist.destroy_process_group()


# -- the solver ------------------------------------------------------------------------------------

def data_parallel(solver: Solver) -> Solver:
    """Make ``solver`` one rank of a data-parallel run (see the module docstring): broadcast rank
    0's state, shard the train net's data layers, average the diffs before every update, and let
    only rank 0 test, snapshot and log. Call it after weights or a snapshot are loaded and before
    the first step; returns ``solver``."""
    if not dist.is_initialized():
        raise DistributedError("data_parallel(solver) needs a process group: call init_from_env() first "
                               "(under torchrun or spawn)")
    rank, world = dist.get_rank(), dist.get_world_size()
    from ..compat.runtime import set_multiprocess, set_solver_count, set_solver_rank
    set_solver_count(world)
    set_solver_rank(rank)
    set_multiprocess(True)
    solver.root_solver = rank == 0
    if rank != 0:
        log.setLevel(logging.WARNING)  # Caffe logs from the root solver only
    broadcast_state(solver)
    if solver.param.random_seed >= 0:
        torch.manual_seed(solver.param.random_seed + rank)
    shard_data_layers(solver.net, rank, world)
    solver.add_callback(lambda: None, lambda: average_gradients(solver))
    log.info("Data-parallel training: %d ranks (%s), batch per rank, gradients averaged", world,
             dist.get_backend())
    return solver


def broadcast_state(solver: Solver) -> None:
    """Rank 0's parameters, buffers and solver history, copied to every rank."""
    tensors = list(solver.net.parameters()) + list(solver.net.buffers()) + list(solver.history)
    with torch.no_grad():
        for tensor in tensors:
            if tensor.numel():
                dist.broadcast(tensor.data, src=0)


def average_gradients(solver: Solver) -> None:
    """Every learnable parameter's diff replaced by its mean over the ranks (Caffe's
    all-reduce, then ``scale(1 / solver_count)``): one flat all-reduce per dtype."""
    diffs = [solver._param_diff(entry) for entry in solver.net.learnable_params]
    world = dist.get_world_size()
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for diff in diffs:
        by_dtype.setdefault(diff.dtype, []).append(diff)
    with torch.no_grad():
        for group in by_dtype.values():
            flat = torch.cat([d.reshape(-1) for d in group])
            dist.all_reduce(flat)
            flat.div_(world)
            offset = 0
            for d in group:
                d.copy_(flat[offset:offset + d.numel()].view_as(d))
                offset += d.numel()


# -- data sharding ---------------------------------------------------------------------------------

class RoundRobinShard:
    """A view of a record source (``RecordCycle``, ``ListOrder``: anything with ``next()``) that
    yields only this rank's records: those at positions ``offset % count == rank`` of the
    source's own order (Caffe's ``DataLayer::Skip``). Every other attribute is the source's."""

    def __init__(self, source, rank: int, count: int):
        self._source = source
        self._rank = rank
        self._count = count
        self._offset = 0  # records taken from the source so far, kept or skipped

    def _skip_others(self) -> None:
        while self._offset % self._count != self._rank:
            skip = getattr(self._source, "skip", None)
            skip(1) if skip is not None else self._source.next()
            self._offset += 1

    def peek(self):
        self._skip_others()
        return self._source.peek()

    def next(self):
        self._skip_others()
        self._offset += 1
        return self._source.next()

    def __getattr__(self, name: str):
        return getattr(self.__dict__["_source"], name)


#: The loader attributes that hold a record source (DatumBatches' ``records``, the list loaders' ``order``).
_SOURCE_ATTRIBUTES = ("records", "order")
#: Data layers whose items are not sharded (they warn); DummyData and Input have no source to share.
_UNSHARDED_TYPES = ("HDF5Data", "MemoryData", "WindowData", "Python")


def shard_data_layers(net, rank: int, count: int) -> list[str]:
    """Give each data layer of ``net`` this rank's share of its records; call it before the net
    first runs (the prefetch thread starts on the first batch). Returns the sharded layers'
    names; data layers that cannot be sharded get a warning."""
    sharded = []
    for node in net._graph.nodes:
        loader = getattr(node.layer, "loader", None)
        names = [name for name in _SOURCE_ATTRIBUTES if hasattr(loader, name)] if loader is not None else []
        started = getattr(getattr(node.layer, "batches", None), "running", False)
        if names and not started:
            for name in names:
                setattr(loader, name, RoundRobinShard(getattr(loader, name), rank, count))
            sharded.append(node.name)
        elif names or (node.param.type in _UNSHARDED_TYPES and not node.bottoms):
            log.warning("%s: not sharded across the %d ranks (Data, AnnotatedData and the list-file layers "
                        "are, before their first batch): every rank reads the same items", node.label, count)
    return sharded


# -- launching -------------------------------------------------------------------------------------

def free_port() -> int:
    """A TCP port on this machine that nothing listens on now (for ``MASTER_PORT``)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def spawn(worker: Callable, nprocs: int, args: tuple = ()) -> None:
    """Run ``worker(rank, nprocs, *args)`` in ``nprocs`` new processes on this machine, each with
    ``torchrun``'s environment set (rank, world size, local rank, a free port on 127.0.0.1), so
    that :func:`init_from_env` joins them; the process group is left when ``worker`` returns.
    ``worker`` must be a module-level function. A worker that fails raises
    :class:`DistributedError` here, after every process ended."""
    import torch.multiprocessing as mp

    port = free_port()
    try:
        mp.spawn(_run_worker, args=(nprocs, port, worker, args), nprocs=nprocs, join=True)
    except mp.ProcessExitedException as err:
        raise DistributedError(f"data-parallel worker {err.error_index} of {nprocs} exited with status "
                               f"{err.exit_code} (its error is in the log above)") from None
    except mp.ProcessRaisedException as err:
        raise DistributedError(f"data-parallel worker {err.error_index} of {nprocs} failed:\n{err}") from None


def _run_worker(rank: int, nprocs: int, port: int, worker: Callable, args: tuple) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(nprocs), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(nprocs),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    try:
        worker(rank, nprocs, *args)
    finally:
        shutdown()
