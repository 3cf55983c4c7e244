"""Caffe's log lines (glog's format) and the live progress bar of ``torchcaffe train``.

Every torchcaffe message goes to the ``torchcaffe`` logger (:data:`log`). Nothing is printed
until someone attaches a handler; the command line does that with :func:`logging_session`,
which writes each record the way glog writes Caffe's::

    I1122 16:24:42.123456 12345 base.py:151] Iteration 100 (41.2796 iter/s, 2.42251s/100 iters), loss = 0.2

that is ``<severity><month><day> <hh:mm:ss.microseconds> <thread id, width 5> <file>:<line>] <message>``
(severity ``I``, ``W``, ``E`` or ``F``; local time). Caffe's ``tools/extra/parse_log.py`` and
``extract_seconds.py`` read exactly this: the first whitespace-separated token gives month and
day, the second the time. The file and line are ours (``base.py:151``, where Caffe has
``solver.cpp:218``); no tool reads them.

Numbers inside messages are printed as C++'s ``ostream <<`` prints a ``float`` or ``double``
(six significant digits, :func:`format_float`), so a torchcaffe log and a Caffe log of the same
run differ only in the timestamps and the file names.

The progress bar (:class:`ProgressBar`) is drawn only when the log stream is a terminal
(``isatty()``): one line at the bottom, redrawn in place with a carriage return, erased before
every log line and drawn again after it. It never reaches a log file or a pipe, so
``torchcaffe train ... 2>&1 | tee train.log`` gives a clean Caffe log.

Python warnings raised while a session is open (from torch, numpy...) are logged as ``W`` lines
naming the warning's own file and line, rather than printed in Python's two-line format that
would break ``parse_log.py``.
"""
from __future__ import annotations

import logging
import math
import os
import shutil
import socket
import sys
import threading
import time
import warnings
from contextlib import contextmanager
from typing import IO, Iterator

from .errors import CaffeError

__all__ = ["log", "format_float", "GlogFormatter", "ProgressBar", "LogSession", "logging_session"]

#: The logger every torchcaffe module writes to.
log = logging.getLogger("torchcaffe")

_SEVERITY = {logging.DEBUG: "I", logging.INFO: "I", logging.WARNING: "W", logging.ERROR: "E",
             logging.CRITICAL: "F"}


def format_float(value) -> str:
    """A number as C++'s ``ostream << value`` prints it with the default precision: ``%g`` with
    six significant digits (``0.1``, ``41.2796``, ``1e-05``, ``inf``, ``nan``)."""
    return format(float(value), ".6g")


def glog_prefix(record: logging.LogRecord) -> str:
    """``I1122 16:24:42.123456 12345 file.py:123] `` for ``record`` (glog's ``LogMessage`` header)."""
    severity = _SEVERITY.get(record.levelno) or ("F" if record.levelno > logging.ERROR else "I")
    when = time.localtime(record.created)
    micros = min(int((record.created % 1) * 1_000_000), 999_999)
    thread = threading.get_native_id()  # glog's GetTID(); records are formatted in the logging thread
    return (f"{severity}{when.tm_mon:02d}{when.tm_mday:02d} {when.tm_hour:02d}:{when.tm_min:02d}:"
            f"{when.tm_sec:02d}.{micros:06d} {thread:5d} {record.filename}:{record.lineno}] ")


class GlogFormatter(logging.Formatter):
    """Formats records as glog lines (see the module docstring). A message with several lines is
    written as glog writes it: the header once, then the text as it is."""

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        if record.exc_info:
            text = f"{text}\n{self.formatException(record.exc_info)}"
        return glog_prefix(record) + text


def glog_file_header(now: float | None = None) -> str:
    """The lines glog writes at the top of every log file it creates."""
    stamp = time.strftime("%Y/%m/%d %H:%M:%S", time.localtime(time.time() if now is None else now))
    return (f"Log file created at: {stamp}\nRunning on machine: {socket.gethostname()}\n"
            f"Log line format: [IWEF]mmdd hh:mm:ss.uuuuuu threadid file:line] msg\n")


class ProgressBar:
    """A one-line status for a terminal: ``Iteration 120/1000 [====>    ] 12% loss 0.2345 41.2 it/s
    ETA 0:00:21``.

    ``update(iteration, loss)`` records the state and redraws at most every ``interval``
    seconds; ``hide()`` erases the line (before a log line is written), ``show()`` draws it again,
    ``close()`` erases it for good. The rate is the mean over the iterations since the first
    update, the ETA the iterations left at that rate.
    """

    def __init__(self, stream: IO[str], total: int, *, interval: float = 0.1, clock=time.monotonic):
        self.stream = stream
        self.total = max(int(total), 0)
        self.interval = interval
        self.clock = clock
        self.iteration: int | None = None
        self.loss: float | None = None
        self._start: tuple[float, int] | None = None
        self._drawn = 0  # characters of the bar currently on the screen
        self._last_draw = -math.inf
        self.closed = False

    def update(self, iteration: int, loss=None) -> None:
        now = self.clock()
        if self._start is None:
            self._start = (now, int(iteration))
        reached_end = self.iteration != int(iteration) and int(iteration) >= self.total
        self.iteration = int(iteration)
        self.loss = None if loss is None else float(loss)
        if now - self._last_draw >= self.interval or reached_end:  # the last iteration is always shown
            self.show()

    def rate(self) -> float | None:
        """Iterations per second since the first update (None before two distinct iterations)."""
        if self._start is None or self.iteration is None:
            return None
        seconds, first = self.clock() - self._start[0], self._start[1]
        done = self.iteration - first
        return done / seconds if done > 0 and seconds > 0 else None

    def render(self, width: int) -> str:
        """The bar's text, at most ``width - 1`` characters (the last column stays free so the
        terminal never wraps)."""
        it = self.iteration or 0
        total = self.total
        fraction = min(max(it / total, 0.0), 1.0) if total else 0.0
        head = f"Iteration {it}/{total} "
        tail = f" {fraction * 100:3.0f}%"
        if self.loss is not None:
            tail += f"  loss {format_float(self.loss)}"
        rate = self.rate()
        if rate:
            tail += f"  {rate:.3g} it/s  ETA {_duration((total - it) / rate)}"
        room = width - 1 - len(head) - len(tail) - 2
        if room >= 10:
            filled = int(fraction * room)
            arrow = ">" if 0 < filled < room else ""
            bar = "[" + "=" * (filled - len(arrow)) + arrow + " " * (room - filled) + "]"
        else:
            bar = ""
        return (head + bar + tail)[:max(width - 1, 0)]

    def show(self) -> None:
        if self.closed or self.iteration is None:
            return
        text = self.render(shutil.get_terminal_size((80, 24)).columns)
        self.stream.write("\r" + text + " " * max(self._drawn - len(text), 0))
        self.stream.flush()
        self._drawn = len(text)
        self._last_draw = self.clock()

    def hide(self) -> None:
        if self._drawn:
            self.stream.write("\r" + " " * self._drawn + "\r")
            self.stream.flush()
            self._drawn = 0

    def close(self) -> None:
        self.hide()
        self.closed = True


def _duration(seconds: float) -> str:
    seconds = max(int(round(seconds)), 0)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class _TerminalHandler(logging.StreamHandler):
    """Writes glog lines to the stream, erasing the session's progress bar around each one."""

    def __init__(self, stream: IO[str], session: "LogSession"):
        super().__init__(stream)
        self.session = session

    def emit(self, record: logging.LogRecord) -> None:
        bar = self.session.bar
        if bar is not None:
            bar.hide()
        super().emit(record)
        if bar is not None:
            bar.show()


class LogSession:
    """The handlers of one command: glog lines to ``stream`` (and to ``log_file``), an optional
    progress bar on ``stream`` when it is a terminal. Use :func:`logging_session`."""

    def __init__(self, stream: IO[str], log_file: str | None = None):
        self.stream = stream
        self.log_file = log_file
        self.bar: ProgressBar | None = None
        formatter = GlogFormatter()
        self.handlers: list[logging.Handler] = [_TerminalHandler(stream, self)]
        if log_file:
            try:
                handle = open(log_file, "w", encoding="utf-8")
            except OSError as err:
                raise CaffeError(f"{log_file}: cannot write the log file: {err.strerror or err}") from None
            handle.write(glog_file_header())
            self.handlers.append(logging.StreamHandler(handle))
        for handler in self.handlers:
            handler.setFormatter(formatter)

    @property
    def is_terminal(self) -> bool:
        isatty = getattr(self.stream, "isatty", None)
        try:
            return bool(isatty and isatty())
        except ValueError:  # a closed stream
            return False

    def progress(self, total: int) -> ProgressBar | None:
        """A progress bar on the stream when it is a terminal (replacing any earlier one), else None."""
        self.close_progress()
        if self.is_terminal:
            self.bar = ProgressBar(self.stream, total)
        return self.bar

    def close_progress(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def fail(self, prefix: str, message: str) -> None:
        """Report the error that ends the command: ``<prefix>: error: <message>`` as a plain line on
        the stream (after erasing the bar), and as an ``E`` line in the log file."""
        self.close_progress()
        self.stream.write(f"{prefix}: error: {message}\n")
        self.stream.flush()
        record = log.makeRecord(log.name, logging.ERROR, __file__, 0, "%s", (message,), None)
        for handler in self.handlers[1:]:
            handler.handle(record)

    def _attach(self) -> None:
        self._saved = (log.level, list(log.handlers), warnings.showwarning)
        log.setLevel(logging.INFO)
        for handler in self.handlers:
            log.addHandler(handler)
        warnings.showwarning = self._show_warning

    def _detach(self) -> None:
        self.close_progress()
        level, _, showwarning = self._saved
        for handler in self.handlers:
            log.removeHandler(handler)
            handler.flush()
        for handler in self.handlers[1:]:
            handler.close()
        log.setLevel(level)
        warnings.showwarning = showwarning

    def _show_warning(self, message, category, filename, lineno, file=None, line=None) -> None:
        """``warnings.showwarning`` while the session is open: one ``W`` line at the warning's place."""
        record = log.makeRecord(log.name, logging.WARNING, filename, lineno, "%s: %s",
                                (category.__name__, message), None)
        log.handle(record)


@contextmanager
def logging_session(stream: IO[str] | None = None, log_file: str | os.PathLike | None = None) -> Iterator[LogSession]:
    """Send the ``torchcaffe`` logger's INFO and higher records, in glog's format, to ``stream``
    (default ``sys.stderr``) and, when given, to ``log_file`` (created or truncated, starting with
    glog's file header, never holding the progress bar). Everything is restored on exit."""
    session = LogSession(sys.stderr if stream is None else stream,
                         None if log_file is None else os.fspath(log_file))
    session._attach()
    try:
        yield session
    finally:
        session._detach()
