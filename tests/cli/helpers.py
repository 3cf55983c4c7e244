"""Running the ``torchcaffe`` command in tests: in-process through ``main`` or as a subprocess."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import torchcaffe
from torchcaffe.cli import main

REPO = Path(torchcaffe.__file__).resolve().parents[1]

# glog's header and the message after it; extract_seconds.py reads the first two tokens.
GLOG_LINE = re.compile(r"[IWEF]\d{4} \d\d:\d\d:\d\d\.\d{6} +\d+ [^ :]+:\d+\] (?P<message>.*)\Z")
NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:e[-+]?\d+)?"


def run_main(capsys, *argv: str) -> tuple[int, list[str]]:
    """``main(argv)`` in this process: its exit status and its stderr lines."""
    capsys.readouterr()
    status = main(list(argv))
    return status, capsys.readouterr().err.splitlines()


def messages(lines: list[str]) -> list[str]:
    """The messages of the glog lines (multi-line messages' continuation lines are dropped)."""
    return [m["message"] for m in map(GLOG_LINE.match, lines) if m]


def assert_in_order(found: list[str], patterns: list[str]) -> None:
    """Each pattern fully matches a message, in order (other messages may come between)."""
    position = 0
    for pattern in patterns:
        regex = re.compile(pattern)
        while position < len(found) and not regex.fullmatch(found[position]):
            position += 1
        assert position < len(found), f"no message matching {pattern!r} after the earlier ones in:\n" + \
            "\n".join(found)
        position += 1


def subprocess_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def popen_torchcaffe(*argv: str, cwd) -> subprocess.Popen:
    """``python -m torchcaffe <argv>`` in ``cwd``, its stderr piped as text."""
    return subprocess.Popen([sys.executable, "-m", "torchcaffe", *argv], cwd=cwd, env=subprocess_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
