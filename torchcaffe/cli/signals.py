"""SIGINT and SIGHUP during training (Caffe's ``SignalHandler``, ``--sigint_effect``/``--sighup_effect``).

A signal only records a request; the solver asks for it through its action function after
every iteration and every test iteration (``Solver.set_action_function``) and then snapshots,
stops (with the final snapshot of ``snapshot_after_train``), or ignores it. SIGHUP is looked
at first, and each signal is answered once, as Caffe's ``CheckForSignals`` does.

One addition: a second SIGINT arriving before the solver has taken the first (a forward pass
that hangs, a net still being built) raises ``KeyboardInterrupt``, so Ctrl-C pressed twice
always ends the program. With ``--sigint_effect none`` SIGINT is ignored, as in Caffe.
"""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator

from ..logs import log

__all__ = ["EFFECTS", "SignalRequests", "handling_signals"]

#: The effects a signal may have: Caffe's ``SolverAction`` values.
EFFECTS = ("stop", "snapshot", "none")


class SignalRequests:
    """The signals received and not yet answered; :meth:`poll` is the solver's action function."""

    def __init__(self, sigint_effect: str = "stop", sighup_effect: str = "snapshot"):
        self.effects = {"SIGINT": sigint_effect, "SIGHUP": sighup_effect}
        self.pending = {"SIGINT": False, "SIGHUP": False}

    def poll(self) -> str:
        """``"stop"``, ``"snapshot"`` or ``"none"``: the effect of the oldest kind of signal pending."""
        for name in ("SIGHUP", "SIGINT"):
            if self.pending[name]:
                self.pending[name] = False
                return self.effects[name]
        return "none"

    def receive(self, name: str) -> None:
        """Record signal ``name`` (what the installed handlers call)."""
        if name == "SIGINT" and self.pending["SIGINT"] and self.effects["SIGINT"] != "none":
            raise KeyboardInterrupt
        self.pending[name] = True  # nothing is logged here: the handler may interrupt a log write


@contextmanager
def handling_signals(requests: SignalRequests) -> Iterator[SignalRequests]:
    """Install handlers feeding ``requests`` for SIGINT (and SIGHUP where the platform has it);
    the previous handlers come back on exit. Outside the main thread (where Python cannot handle
    signals) nothing is installed."""
    if threading.current_thread() is not threading.main_thread():
        log.warning("not in the main thread: SIGINT and SIGHUP keep their default effect")
        yield requests
        return
    names = [name for name in ("SIGINT", "SIGHUP") if hasattr(signal, name)]
    previous = {}
    try:
        for name in names:
            previous[name] = signal.signal(getattr(signal, name), lambda number, frame, n=name: requests.receive(n))
        yield requests
    finally:
        for name, handler in previous.items():
            signal.signal(getattr(signal, name), handler)
