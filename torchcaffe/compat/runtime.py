"""pycaffe's module-level switches: mode and device, seeding, logging, multi-GPU bookkeeping,
``NCCL`` and ``Timer``.

Caffe keeps one process-wide ``Caffe`` singleton (mode CPU/GPU, device id, solver count and
rank); pycaffe's functions set its fields. Here the same state lives in :data:`_STATE`, and
:func:`mode_device` says which ``torch.device`` it selects. Nets and solvers are ``torch``
objects that live where they are put (``net.to("cuda")``, ``SGDSolver(file, device=...)``), so
the mode is advisory until a net or solver is built by code that asks :func:`mode_device`
(see ``docs/pycaffe.md``).
"""
from __future__ import annotations

import logging
import sys
import time

import torch

from ..errors import CaffeError

log = logging.getLogger("torchcaffe")

_STATE = {"mode": None, "device": 0, "solver_count": 1, "solver_rank": 0, "multiprocess": False}


class NCCLUnavailableError(CaffeError, RuntimeError):
    """pycaffe's NCCL multi-GPU training; torchcaffe trains on several GPUs with torch's own
    data parallelism instead."""


def set_mode_cpu() -> None:
    """Caffe's ``set_mode_cpu``: nets and solvers built from now on by the facade run on the CPU."""
    _STATE["mode"] = "CPU"


def set_mode_gpu() -> None:
    """Caffe's ``set_mode_gpu``: use ``cuda:<device>`` (see :func:`set_device`). Without CUDA
    Caffe's CPU-only build fails here; we log a warning and stay on the CPU, so that scripts
    written for a GPU still run."""
    if not torch.cuda.is_available():
        log.warning("set_mode_gpu: CUDA is not available; running on the CPU")
        _STATE["mode"] = "CPU"
        return
    _STATE["mode"] = "GPU"


def set_device(device_id: int) -> None:
    """Caffe's ``set_device``: the CUDA device that GPU mode uses."""
    device_id = int(device_id)
    if torch.cuda.is_available() and not 0 <= device_id < torch.cuda.device_count():
        raise CaffeError(f"set_device({device_id}): this machine has {torch.cuda.device_count()} CUDA device(s)")
    _STATE["device"] = device_id
    if torch.cuda.is_available():
        torch.cuda.set_device(device_id)


def mode_device() -> torch.device | None:
    """The device the mode selects, or ``None`` when neither ``set_mode_*`` was called."""
    if _STATE["mode"] is None:
        return None
    if _STATE["mode"] == "GPU":
        return torch.device("cuda", _STATE["device"])
    return torch.device("cpu")


def set_random_seed(seed: int) -> None:
    """Caffe's ``set_random_seed``: seeds torch's generators (CPU and every GPU), which draw the
    fillers, Dropout masks and DummyData values. numpy's generator is left alone, as in Caffe."""
    torch.manual_seed(int(seed))


_GLOG_LEVELS = {0: logging.INFO, 1: logging.WARNING, 2: logging.ERROR, 3: logging.CRITICAL}


class _GlogFormatter(logging.Formatter):
    """glog's line prefix: ``I0612 13:45:01.123456 12345 net.py:42] message``."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%m%d %H:%M:%S", time.localtime(record.created))
        micros = int((record.created % 1) * 1e6)
        return (f"{record.levelname[0]}{stamp}.{micros:06d} {record.process} "
                f"{record.filename}:{record.lineno}] {record.getMessage()}")


def init_log(level: int = 0) -> None:
    """Caffe's ``init_log(level=0)``: send torchcaffe's log to stderr in glog's format, showing
    messages of glog severity ``level`` and above (0 INFO, 1 WARNING, 2 ERROR, 3 FATAL)."""
    if level not in _GLOG_LEVELS:
        raise CaffeError(f"init_log: level must be 0 (INFO), 1 (WARNING), 2 (ERROR) or 3 (FATAL), got {level!r}")
    for handler in [h for h in log.handlers if getattr(h, "_torchcaffe_glog", False)]:
        log.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler._torchcaffe_glog = True
    handler.setFormatter(_GlogFormatter())
    log.addHandler(handler)
    log.setLevel(_GLOG_LEVELS[level])


def log_message(message: str) -> None:
    """Caffe's ``log(s)``: one INFO line in the log."""
    log.info("%s", message)


def solver_count() -> int:
    return _STATE["solver_count"]


def set_solver_count(count: int) -> None:
    _STATE["solver_count"] = int(count)


def solver_rank() -> int:
    return _STATE["solver_rank"]


def set_solver_rank(rank: int) -> None:
    _STATE["solver_rank"] = int(rank)


def set_multiprocess(multiprocess: bool) -> None:
    _STATE["multiprocess"] = bool(multiprocess)


def has_nccl() -> bool:
    """Whether pycaffe's ``NCCL`` class works: never here (see :class:`NCCL`)."""
    return False


_NCCL_ADVICE = ("pycaffe's NCCL multi-GPU training is not available in torchcaffe; train on several GPUs "
                "through torch.distributed instead: `torchcaffe train --solver S --gpu all`, or under "
                "`torchrun --nproc_per_node=N` call torchcaffe.solvers.distributed.data_parallel(solver) "
                "before solver.solve() (see docs/distributed.md)")


class NCCL:
    """pycaffe's ``NCCL(solver, uid)`` (with ``new_uid()`` and ``bcast()``), which synchronises
    solvers across GPUs. Not provided: constructing it raises an error that says what to use."""

    def __init__(self, solver=None, uid=None):
        raise NCCLUnavailableError(_NCCL_ADVICE)

    @staticmethod
    def new_uid() -> bytes:
        raise NCCLUnavailableError(_NCCL_ADVICE)


class Timer:
    """Caffe's ``Timer``: ``start()``, ``stop()``, and ``ms``, the milliseconds between them
    (reading ``ms`` of a running timer stops it first, as Caffe's does). In GPU mode the device
    is synchronised at start and stop, so queued CUDA work is counted."""

    def __init__(self):
        self._started = None
        self._elapsed = 0.0

    def start(self) -> None:
        _synchronize()
        self._started = time.perf_counter()

    def stop(self) -> None:
        if self._started is not None:
            _synchronize()
            self._elapsed = time.perf_counter() - self._started
            self._started = None

    @property
    def ms(self) -> float:
        self.stop()
        return self._elapsed * 1e3


def _synchronize() -> None:
    if _STATE["mode"] == "GPU" and torch.cuda.is_available():
        torch.cuda.synchronize()

