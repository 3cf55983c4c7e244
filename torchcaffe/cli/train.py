"""``torchcaffe train``: train or finetune a model (Caffe's ``caffe train``).

Several devices (``--gpu 0,1``, ``--gpu all``) train data-parallel, one process per GPU, as
Caffe's multi-GPU training does; under ``torchrun`` every launched process is one rank (see
``torchcaffe/solvers/distributed.py`` and ``docs/distributed.md``)."""
from __future__ import annotations

import argparse

import torch

from ..errors import CaffeError
from ..logs import LogSession, log, logging_session
from ..solvers import Solver, distributed, get_solver
from ..solvers.base import read_solver_param
from .common import (DeviceError, UsageError, add_amp_flag, add_gpu_flag, add_net_state_flags,
                     add_python_layers_flag, copy_weights, parse_gpus, split_list)
from .registry import register_verb
from .signals import EFFECTS, SignalRequests, handling_signals


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--solver", default="", metavar="FILE", help="the solver definition (solver.prototxt)")
    parser.add_argument("--weights", default="", metavar="A,B",
                        help="pretrained weights to finetune from, separated by ','; not with --snapshot")
    parser.add_argument("--snapshot", default="", metavar="FILE",
                        help="a .solverstate (or .solverstate.h5) to resume training from")
    add_gpu_flag(parser, "the CUDA device to train on, e.g. 0; several ids (0,1) or 'all' train data-parallel, "
                         "one process per GPU; default: the solver's solver_mode and device_id")
    add_amp_flag(parser)
    add_net_state_flags(parser, "the train net")
    parser.add_argument("--sigint_effect", default="stop", choices=EFFECTS,
                        help="what SIGINT (Ctrl-C) does: stop (snapshot, then stop), snapshot, none (default stop)")
    parser.add_argument("--sighup_effect", default="snapshot", choices=EFFECTS,
                        help="what SIGHUP does (default snapshot)")
    parser.add_argument("--allow_nonfinite", "--allow-nonfinite", dest="allow_nonfinite", action="store_true",
                        help="train on when the loss or a gradient is NaN/Inf (default: stop, naming the layer)")
    add_python_layers_flag(parser)


@register_verb("train", "train or finetune a model", _arguments)
def train(args: argparse.Namespace, session: LogSession) -> int:
    if not args.solver:
        raise UsageError("Need a solver definition to train: give --solver FILE")
    if args.snapshot and args.weights:
        raise UsageError("Give a snapshot to resume training or weights to finetune but not both "
                         "(--snapshot and --weights)")
    gpus = _parse_train_gpus(args.gpu)
    if distributed.launched_by_torchrun():
        info = distributed.init_from_env(gpus)
        try:
            return _train(args, session, info.device, parallel=True)
        finally:
            distributed.shutdown()
    if len(gpus) > 1:
        log.info("Using GPUs %s", ", ".join(map(str, gpus)))
        distributed.spawn(_spawned_rank, len(gpus), (args, gpus))
        return 0
    return _train(args, session, torch.device("cuda", gpus[0]) if gpus else None, parallel=False)


def _parse_train_gpus(text: str) -> list[int]:
    """``--gpu``'s ids; asking for several where there are none says how to train in parallel anyway."""
    try:
        return parse_gpus(text)
    except DeviceError as err:
        if text == "all" or "," in text:
            raise DeviceError(f"{err}. To train data-parallel in CPU processes (gloo), launch under torchrun "
                              f"without --gpu: torchrun --nproc_per_node=N -m torchcaffe train --solver ...") from None
        raise


def _spawned_rank(rank: int, world: int, args: argparse.Namespace, gpus: list[int]) -> None:
    """One process of ``--gpu 0,1``: its own log session (rank 0 writes ``--log_file``)."""
    with logging_session(log_file=args.log_file if rank == 0 else None) as session:
        try:
            info = distributed.init_from_env(gpus)
            _train(args, session, info.device, parallel=True)
        except CaffeError as err:
            session.fail(f"torchcaffe train (rank {rank})", str(err))
            raise SystemExit(1) from None


def _train(args: argparse.Namespace, session: LogSession, device, parallel: bool) -> int:
    """Build the solver on ``device`` (None: the solver file decides), load weights or a
    snapshot, join the data-parallel run when ``parallel``, and solve."""
    requests = SignalRequests(args.sigint_effect, args.sighup_effect)
    with handling_signals(requests):
        solver = build_solver(args.solver, args.level, split_list(args.stage), device, args.amp,
                              allow_nonfinite=args.allow_nonfinite, allow_python_layers=not args.no_python_layers)
        _log_device(solver.device)
        if args.snapshot:
            log.info("Resuming from %s", args.snapshot)
            solver.restore(args.snapshot)
        elif args.weights:
            copy_weights([solver.net, *solver.test_nets], args.weights)
        if parallel:
            distributed.data_parallel(solver)
        bar = session.progress(solver.param.max_iter) if solver.root_solver else None

        def action() -> str:
            if bar is not None:
                bar.update(solver.iter, solver.smoothed_loss)
            return requests.poll()

        solver.set_action_function(action)
        log.info("Starting Optimization")
        solver.solve()
        session.close_progress()
    log.info("Optimization Done.")
    return 0


def build_solver(path: str, level: int | None, stages: list[str], device, amp: str | None = None,
                 **options) -> Solver:
    """The solver of ``path`` with ``--level``/``--stage`` applied to its ``train_state``, as
    ``caffe train`` does: the level replaces the file's (when given), the stages are added;
    ``amp`` is ``--amp``; ``options`` go to :func:`~torchcaffe.solvers.get_solver`."""
    param, source = read_solver_param(path, None)
    if level is not None:
        param.train_state.level = level
    if stages:
        param.train_state.stage.extend(stages)
    return get_solver(param, device, source=source, amp=amp, **options)


def _log_device(device: torch.device) -> None:
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        log.info("Using GPUs %d", index)
        log.info("GPU %d: %s", index, torch.cuda.get_device_name(index))
    else:
        log.info("Use CPU.")
