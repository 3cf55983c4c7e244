"""What several verbs share: gflags-style flag spellings, ``--gpu``, net-state flags, weights lists."""
from __future__ import annotations

import argparse
import re
from typing import Iterable, Sequence

import torch

from ..errors import CaffeError
from ..logs import log

__all__ = ["UsageError", "DeviceError", "ArgumentParser", "gflags_to_argparse", "add_gpu_flag", "add_net_state_flags",
           "add_iterations_flag", "add_amp_flag", "add_optimize_flag", "add_python_layers_flag", "net_options", "split_list", "parse_gpus",
           "single_device", "copy_weights"]


class UsageError(CaffeError):
    """A command line the ``torchcaffe`` command cannot run: unknown verb or flag, bad flag value."""

    def __init__(self, message: str, usage: str = ""):
        super().__init__(message)
        self.usage = usage


class DeviceError(CaffeError):
    """A device the command line asks for that this machine does not have."""


class HelpShown(Exception):
    """``--help`` printed its text: leave with ``status``."""

    def __init__(self, status: int):
        super().__init__(status)
        self.status = status


class ArgumentParser(argparse.ArgumentParser):
    """argparse that raises :class:`UsageError` (exit status 1 in ``main``) instead of exiting with 2;
    ``booleans`` names its gflags booleans (:func:`add_bool_flag`)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.booleans: set[str] = set()

    def error(self, message: str):
        raise UsageError(message, self.format_usage())

    def exit(self, status: int = 0, message: str | None = None):
        if message:
            self._print_message(message)
        raise HelpShown(status)


_SINGLE_DASH_FLAG = re.compile(r"-[A-Za-z_][A-Za-z0-9_]+(=.*)?\Z", re.DOTALL)


def gflags_to_argparse(argv: Iterable[str], booleans: Iterable[str] = ()) -> list[str]:
    """gflags accepts ``-flag value`` and ``-flag=value`` as well as the double-dash forms; turn the
    single-dash spellings of long names into double-dash ones (``-solver`` -> ``--solver``). Negative
    numbers (``--level -1``) and one-letter options (``-h``) are left alone; so is everything after ``--``."""
    out: list[str] = []
    rest = False
    for token in argv:
        if token == "--":
            rest = True
        elif not rest and _SINGLE_DASH_FLAG.match(token):
            token = "-" + token
        boolean = _BOOLEAN_VALUE.match(token) if not rest else None
        if boolean and boolean.group(1) in booleans:
            value = boolean.group(2).lower() in ("true", "1")
            token = f"--{'' if value else 'no'}{boolean.group(1)}"
        out.append(token)
    return out


#: gflags' spellings of a boolean's value (``--gray=true``, ``--gray=0``), rewritten for the flags
#: :func:`add_bool_flag` declares to ``--gray`` and ``--nogray``.
_BOOLEAN_VALUE = re.compile(r"\A--([A-Za-z_]\w*)=(true|false|1|0)\Z", re.IGNORECASE)


def add_bool_flag(parser: argparse.ArgumentParser, name: str, help_text: str, default: bool = False) -> None:
    """A gflags boolean: ``--name`` (or ``--name=true``) sets it, ``--noname`` (``--name=false``) clears it."""
    if isinstance(parser, ArgumentParser):
        parser.booleans.add(name)
    parser.add_argument(f"--{name}", dest=name, action="store_true", default=default, help=help_text)
    parser.add_argument(f"--no{name}", dest=name, action="store_false", help=argparse.SUPPRESS)


# -- flags ------------------------------------------------------------------------------------------

def add_gpu_flag(parser: argparse.ArgumentParser, help_text: str) -> None:
    parser.add_argument("--gpu", default="", metavar="IDS", help=help_text)


def add_amp_flag(parser: argparse.ArgumentParser) -> None:
    from ..amp import AMP_MODES

    parser.add_argument("--amp", default=None, choices=list(AMP_MODES),
                        help="mixed precision: run forward passes under torch.autocast in bfloat16 (CPU or GPU) "
                             "or float16 (GPU only, with loss scaling when training); weights stay float32")


def add_optimize_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--optimize", action="store_true",
                        help="build the net in optimized mode (Net(..., optimize=True): folded BatchNorm/Scale, "
                             "fused ReLU, channels_last); results equal the plain mode within 1e-4")


def add_python_layers_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no_python_layers", action="store_true",
                        help="refuse the net's Python layers (for a net you do not trust)")


def net_options(args: argparse.Namespace) -> dict:
    """Extra ``Net(...)`` keywords the flags ask for (``--optimize``, ``--no_python_layers``)."""
    options = {"optimize": True} if getattr(args, "optimize", False) else {}
    if getattr(args, "no_python_layers", False):
        options["allow_python_layers"] = False
    return options


def add_net_state_flags(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--level", type=int, default=None, metavar="N",
                        help=f"the NetState level of {what} (default 0)")
    parser.add_argument("--stage", default="", metavar="S1,S2",
                        help=f"NetState stages of {what}, separated by ','")


def add_iterations_flag(parser: argparse.ArgumentParser, help_text: str) -> None:
    parser.add_argument("--iterations", type=_positive_int, default=50, metavar="N",
                        help=f"{help_text} (default 50)")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def split_list(text: str | None) -> list[str]:
    """A comma-separated flag value as a list, empty entries dropped (``"a,b"`` -> ``["a", "b"]``)."""
    return [item.strip() for item in (text or "").split(",") if item.strip()]


# -- devices ----------------------------------------------------------------------------------------

def parse_gpus(text: str) -> list[int]:
    """The CUDA device ids ``--gpu`` names: ``""`` none, ``"all"`` every device, else ``"0,2"``.
    Ids must exist on this machine."""
    if not text:
        return []
    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if text == "all":
        if not available:
            raise DeviceError(f"--gpu all: {no_cuda_reason()}")
        return list(range(available))
    ids = []
    for item in text.split(","):
        try:
            ids.append(int(item))
        except ValueError:
            raise UsageError(f"--gpu {text}: {item!r} is not a device id; give ids separated by ',' "
                             f"or 'all'") from None
    if not available:
        raise DeviceError(f"--gpu {text}: {no_cuda_reason()}; leave --gpu out to run on the CPU")
    for device in ids:
        if not 0 <= device < available:
            raise DeviceError(f"--gpu {text}: there is no CUDA device {device}; this machine has "
                             f"{available} (ids 0..{available - 1})")
    return ids


def no_cuda_reason() -> str:
    """Why CUDA cannot be used here, in a few words."""
    if torch.version.cuda is None:
        return f"this PyTorch ({torch.__version__}) is built without CUDA"
    return "no CUDA device is available"


def single_device(text: str) -> torch.device:
    """The device for a single-device verb (test, time): the first id of ``--gpu``, the others
    left out with a log line as Caffe does; the CPU without ``--gpu``."""
    gpus = parse_gpus(text)
    for extra in reversed(gpus[1:]):
        log.info("Not using GPU #%d for single-GPU function", extra)
    if not gpus:
        log.info("Use CPU.")
        return torch.device("cpu")
    log.info("Use GPU with device ID %d", gpus[0])
    log.info("GPU device name: %s", torch.cuda.get_device_name(gpus[0]))
    return torch.device("cuda", gpus[0])


# -- weights ----------------------------------------------------------------------------------------

def copy_weights(nets: Sequence, weights: str) -> None:
    """Caffe's ``CopyLayers``: each file of the comma-separated list, in order, is copied by layer
    name into every net (``Finetuning from <file>`` before each)."""
    for path in split_list(weights):
        log.info("Finetuning from %s", path)
        for net in nets:
            net.copy_from(path)
