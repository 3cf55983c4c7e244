"""Caffe's glog line format, C++ number formatting, and the terminal-only progress bar."""
from __future__ import annotations

import datetime
import io
import logging
import re
import warnings

import pytest

from torchcaffe.logs import (GlogFormatter, ProgressBar, format_float, glog_file_header, log,
                             logging_session)

# The header glog puts before every message; tools/extra/extract_seconds.py reads month and day
# from the first token and the time from the second.
GLOG_LINE = re.compile(r"(?P<sev>[IWEF])(?P<month>\d\d)(?P<day>\d\d) (?P<time>\d\d:\d\d:\d\d\.\d{6}) +(?P<tid>\d+) "
                       r"(?P<file>[^ :]+):(?P<line>\d+)\] (?P<message>.*)\Z", re.DOTALL)


class Terminal(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def extract_datetime(line: str, year: int) -> datetime.datetime:
    """What extract_seconds.py does with a log line."""
    fields = line.strip().split()
    month, day = int(fields[0][1:3]), int(fields[0][3:])
    clock, micros = fields[1].rsplit(".", 1)
    hour, minute, second = (int(x) for x in clock.split(":"))
    return datetime.datetime(year, month, day, hour, minute, second, int(micros))


def make_record(message: str, level=logging.INFO, created: float | None = None) -> logging.LogRecord:
    record = log.makeRecord(log.name, level, "/x/solver.py", 218, "%s", (message,), None)
    if created is not None:
        record.created = created
    return record


def test_glog_line_format():
    created = datetime.datetime(2024, 3, 7, 9, 5, 2, 123456).timestamp()
    line = GlogFormatter().format(make_record("Iteration 100, lr = 0.01", created=created))
    found = GLOG_LINE.match(line)
    assert found, line
    assert line.startswith("I0307 09:05:02.123456 ")
    assert found["file"] == "solver.py" and found["line"] == "218" and found["message"] == "Iteration 100, lr = 0.01"
    assert len(re.match(r".{22}( *\d+) ", line).group(1)) >= 5, "the thread id is padded to width 5"
    assert extract_datetime(line, 2024) == datetime.datetime(2024, 3, 7, 9, 5, 2, 123456)


@pytest.mark.parametrize("level,letter", [(logging.INFO, "I"), (logging.WARNING, "W"), (logging.ERROR, "E"),
                                          (logging.CRITICAL, "F"), (logging.DEBUG, "I")])
def test_severity_letters(level, letter):
    assert GlogFormatter().format(make_record("x", level)).startswith(letter)


def test_multi_line_message_keeps_one_header():
    line = GlogFormatter().format(make_record("Initializing solver from parameters: \nbase_lr: 0.01\n"))
    first, *rest = line.split("\n")
    assert GLOG_LINE.match(first) and rest == ["base_lr: 0.01", ""]


@pytest.mark.parametrize("value,text", [(0.1, "0.1"), (41.279634, "41.2796"), (1e-05, "1e-05"), (0.0, "0"),
                                        (1234567.0, "1.23457e+06"), (2.0, "2"), (float("inf"), "inf"),
                                        (float("nan"), "nan"), (-0.5, "-0.5")])
def test_format_float_as_cxx_ostream(value, text):
    assert format_float(value) == text


def test_file_header_is_glogs():
    lines = glog_file_header(datetime.datetime(2024, 1, 2, 3, 4, 5).timestamp()).splitlines()
    assert lines[0] == "Log file created at: 2024/01/02 03:04:05"
    assert lines[1].startswith("Running on machine: ")
    assert lines[2] == "Log line format: [IWEF]mmdd hh:mm:ss.uuuuuu threadid file:line] msg"


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_progress_bar_text():
    clock = FakeClock()
    bar = ProgressBar(Terminal(), 100, clock=clock)
    bar.update(0, 2.5)
    clock.now = 10.0
    bar.update(20, 0.125)
    text = bar.render(100)
    assert text.startswith("Iteration 20/100 [")
    assert " 20%" in text and "loss 0.125" in text and "2 it/s" in text and "ETA 0:00:40" in text
    assert len(text) <= 99
    assert len(bar.render(30)) <= 29, "never wider than the terminal"


def test_progress_bar_draws_and_erases_in_place():
    stream, clock = Terminal(), FakeClock()
    bar = ProgressBar(stream, 10, clock=clock)
    bar.update(3, 1.0)
    drawn = stream.getvalue()
    assert drawn.startswith("\rIteration 3/10") and "\n" not in drawn
    bar.hide()
    assert stream.getvalue().endswith("\r") and "\n" not in stream.getvalue()
    clock.now = 0.01
    bar.update(4, 1.0)  # within the redraw interval: nothing drawn
    assert "Iteration 4/10" not in stream.getvalue()
    bar.update(10, 1.0)  # the last iteration is always drawn
    assert "Iteration 10/10" in stream.getvalue()


def test_no_progress_bar_off_a_terminal(tmp_path):
    stream = io.StringIO()
    with logging_session(stream, tmp_path / "run.log") as session:
        assert session.progress(10) is None
        log.info("Iteration 0, lr = 0.1")
    assert stream.getvalue().count("\n") == 1 and "\r" not in stream.getvalue()


def test_log_lines_erase_and_redraw_the_bar_but_the_file_never_sees_it(tmp_path):
    stream = Terminal()
    path = tmp_path / "run.log"
    with logging_session(stream, path) as session:
        bar = session.progress(5)
        bar.update(2, 0.5)
        log.info("Iteration 2 (1 iter/s, 2s/2 iters), loss = 0.5")
        bar.update(5, 0.25)
    shown = stream.getvalue()
    first, second = shown.split("\n", 1)
    start = re.search(r"I\d{4} \d\d:", first).start()
    bar_part, line = first[:start], first[start:]
    assert "Iteration 2/5" in bar_part and bar_part.endswith("\r"), "the bar is erased before the log line"
    assert GLOG_LINE.match(line) and line.endswith("loss = 0.5")
    assert second.startswith("\rIteration 2/5"), "and drawn again after it"
    assert "Iteration 5/5" in second and shown.endswith("\r"), "updated, then erased when the session ends"
    text = path.read_text()
    assert "\r" not in text and "Iteration 2/5" not in text
    body = text.splitlines()[3:]
    assert len(body) == 1 and GLOG_LINE.match(body[0]) and body[0].endswith("loss = 0.5")


def test_warnings_become_one_glog_line(tmp_path):
    stream = io.StringIO()
    with logging_session(stream):
        warnings.warn("something odd", UserWarning, stacklevel=1)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    found = GLOG_LINE.match(lines[0])
    assert found and found["sev"] == "W" and found["file"] == "test_logs.py"
    assert found["message"] == "UserWarning: something odd"


def test_session_restores_the_logger(tmp_path):
    before = (log.level, list(log.handlers), warnings.showwarning)
    with logging_session(io.StringIO(), tmp_path / "a.log"):
        assert log.level == logging.INFO and len(log.handlers) == len(before[1]) + 2
    assert (log.level, list(log.handlers), warnings.showwarning) == before


def test_unwritable_log_file_is_one_error(tmp_path):
    from torchcaffe.errors import CaffeError

    with pytest.raises(CaffeError, match="cannot write the log file"):
        with logging_session(io.StringIO(), tmp_path / "missing" / "run.log"):
            pass
