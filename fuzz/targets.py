"""The fuzz targets: one function per reader, ``bytes -> None``, and how an outcome is judged.

A target returns when the input loaded and raises when it did not; :func:`run_one` sorts the
outcome into ``ok`` (loaded), ``refused`` (a :class:`~torchcaffe.errors.CaffeError`) or a
failure (any other exception, or over the per-input deadline).
"""
from __future__ import annotations

import os
import signal
import tempfile
import threading
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from torchcaffe.errors import CaffeError

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "corpus"
REGRESSIONS = HERE / "regressions"
#: Seconds one input may take before it counts as a hang (override: FUZZ_DEADLINE).
DEADLINE = float(os.environ.get("FUZZ_DEADLINE", "5"))

_scratch = tempfile.mkdtemp(prefix="torchcaffe-fuzz-")


def _as_file(data: bytes, suffix: str) -> str:
    """``data`` written to a scratch file (the readers take paths, as users give them)."""
    path = os.path.join(_scratch, f"input{suffix}")
    with open(path, "wb") as f:
        f.write(data)
    return path


# -- the targets ---------------------------------------------------------------------------------

def fuzz_prototxt(data: bytes) -> None:
    """Net prototxt parse and upgrade (text, or binary when it looks binary): ``read_net``."""
    from torchcaffe.io.prototxt import read_net
    read_net(data)


def fuzz_solver_prototxt(data: bytes) -> None:
    """Solver prototxt parse and upgrade (``read_solver``, from a file so the path rules run)."""
    from torchcaffe.io.prototxt import read_solver
    read_solver(_as_file(data, ".prototxt"))


def fuzz_caffemodel(data: bytes) -> None:
    """Binary ``.caffemodel`` weights (``read_weights``)."""
    from torchcaffe.io.weights import read_weights
    read_weights(_as_file(data, ".caffemodel"))


def _any_loads(*attempts: Callable[[], object]) -> None:
    """Return when one of the readers loads the input; else raise the first one's error (each
    reader runs: an exception other than a CaffeError in any of them is a finding)."""
    errors = []
    for attempt in attempts:
        try:
            attempt()
            return
        except CaffeError as err:
            errors.append(err)
    raise errors[0]


def fuzz_binaryproto(data: bytes) -> None:
    """``.binaryproto`` mean files: one BlobProto, or a BlobProtoVector."""
    from torchcaffe.io.binaryproto import read_blobproto, read_blobproto_vector
    path = _as_file(data, ".binaryproto")
    _any_loads(lambda: read_blobproto(path), lambda: read_blobproto_vector(path))


def fuzz_solverstate(data: bytes) -> None:
    """``.solverstate`` snapshots, binary or HDF5 (recognised by content)."""
    from torchcaffe.solvers.snapshot import read_solverstate
    read_solverstate(_as_file(data, ".solverstate"))


def fuzz_hdf5_weights(data: bytes) -> None:
    """``.caffemodel.h5`` weights: the HDF5 layout of ``Net::ToHDF5``."""
    from torchcaffe.io.weights import read_weights
    read_weights(_as_file(data, ".caffemodel.h5"))


def fuzz_datum(data: bytes) -> None:
    """A database record: ``Datum`` parse and pixel decoding (raw, float or encoded image), or
    SSD's ``AnnotatedDatum`` (its Datum decoded the same way)."""
    from torchcaffe.data.datum import datum_image, parse_annotated_datum, parse_datum
    _any_loads(lambda: datum_image(parse_datum(data, "record"), "record"),
               lambda: datum_image(parse_annotated_datum(data, "record").datum, "record"))


def fuzz_net_spec(data: bytes) -> None:
    """The NetSpec writer: a net written with ``L.<Type>(...)`` calls decoded from ``data`` must
    either be refused or give a NetParameter whose text reads back to the same message."""
    from fuzz.net_spec_input import build_and_round_trip
    build_and_round_trip(data)


TARGETS: dict[str, Callable[[bytes], None]] = {
    "prototxt": fuzz_prototxt,
    "solver_prototxt": fuzz_solver_prototxt,
    "caffemodel": fuzz_caffemodel,
    "binaryproto": fuzz_binaryproto,
    "solverstate": fuzz_solverstate,
    "hdf5_weights": fuzz_hdf5_weights,
    "datum": fuzz_datum,
    "net_spec": fuzz_net_spec,
}


# -- judging one input ---------------------------------------------------------------------------

class InputTimeout(BaseException):
    """Raised inside a target that ran past the deadline (a BaseException: no reader catches it)."""


@dataclass
class Outcome:
    kind: str  # "ok", "refused" or "failure"
    detail: str = ""  # the error message, or the traceback of a failure
    seconds: float = 0.0

    @property
    def failed(self) -> bool:
        return self.kind == "failure"


@contextmanager
def deadline(seconds: float, use_alarm: bool = True):
    """Interrupt the block with :class:`InputTimeout` after ``seconds`` (main thread only; Python
    code only: a hang inside one C call is caught by the duration check in :func:`run_one`).
    Under libFuzzer, which owns SIGALRM for its own hang detection, ``use_alarm`` is False."""
    if not use_alarm or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum, frame):
        raise InputTimeout(f"over the {seconds:g} s deadline")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_one(target: str, data: bytes, limit: float = DEADLINE, use_alarm: bool = True) -> Outcome:
    """Run ``target`` on ``data`` and judge the outcome (see the module docstring)."""
    start = time.perf_counter()
    try:
        with deadline(limit, use_alarm):
            TARGETS[target](data)
        kind, detail = "ok", ""
    except CaffeError as err:
        kind, detail = "refused", f"{type(err).__name__}: {err}"
    except InputTimeout as err:
        kind, detail = "failure", f"hang: {err}"
    except Exception:  # noqa: BLE001 - any other exception is what we are looking for
        kind, detail = "failure", traceback.format_exc()
    seconds = time.perf_counter() - start
    if kind != "failure" and seconds > limit:
        kind, detail = "failure", f"hang: took {seconds:.1f} s, over the {limit:g} s deadline"
    if kind == "refused" and not detail.split(": ", 1)[-1].strip():
        kind, detail = "failure", f"{detail}: an error without a message"
    return Outcome(kind, detail, seconds)


def failure_signature(detail: str) -> str:
    """A short key for a failure: the exception type and the innermost torchcaffe frame (so one
    bug reached with many different messages is saved once)."""
    lines = [line for line in detail.strip().splitlines() if line.strip()]
    frames = [line.strip() for line in lines if line.strip().startswith("File ") and "torchcaffe" in line]
    last = lines[-1] if lines else "?"
    kind = last.split(":", 1)[0] if not last.startswith("hang") else "hang"
    return (frames[-1] if frames else "") + " | " + kind


def seeds(target: str) -> list[bytes]:
    """The seed corpus of ``target`` (sorted by name)."""
    folder = CORPUS / target
    return [p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()] if folder.is_dir() else []


def regressions(target: str) -> list[Path]:
    """Saved failing inputs of ``target``."""
    folder = REGRESSIONS / target
    return sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []


def save_regression(target: str, data: bytes) -> Path:
    """Keep a failing input as ``regressions/<target>/crash-<sha1>``."""
    import hashlib
    folder = REGRESSIONS / target
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"crash-{hashlib.sha1(data).hexdigest()[:16]}"
    path.write_bytes(data)
    return path
