"""The ``torchcaffe`` command: Caffe's ``caffe`` tool (``tools/caffe.cpp``) with its verbs and flags.

    torchcaffe train --solver solver.prototxt [--weights a.caffemodel,b.caffemodel | --snapshot s.solverstate]
    torchcaffe test --model net.prototxt --weights net.caffemodel --iterations 100
    torchcaffe time --model net.prototxt --iterations 10
    torchcaffe device_query --gpu 0
    torchcaffe plot train.log --out curves.png

Flags are written as gflags accepts them: ``--flag value``, ``--flag=value``, ``-flag value``,
``-flag=value``. Log lines go to stderr in glog's format (``torchcaffe.logs``), and with
``--log_file FILE`` to that file too. A bad command line or bad input ends with one line
``torchcaffe <verb>: error: ...`` and exit status 1. See ``docs/cli.md``.

Adding a verb
    Verbs live in a small explicit registry (``registry.VERBS``, like Caffe's
    ``RegisterBrewFunction``); nothing is discovered. To add one:

    1. write ``torchcaffe/cli/<verb>.py`` with a function declaring the flags and the verb itself::

           def _arguments(parser):                     # an argparse parser for this verb
               parser.add_argument("--model", default="", metavar="FILE", help="...")

           @register_verb("my_verb", "one-line summary for the usage text", _arguments)
           def my_verb(args, session) -> int:        # args: the parsed flags; session: logs.LogSession
               log.info("...")                        # log through torchcaffe.logs.log
               return 0                               # the exit status

       raising ``CaffeError`` (or ``common.UsageError`` for a bad flag) for bad input;
    2. add one line ``from . import <verb>`` to the verb imports below;
    3. document it in ``docs/cli.md`` and test it under ``tests/cli/``.
"""
from __future__ import annotations

import difflib
import sys
from typing import Sequence

from .. import __version__
from ..errors import CaffeError
from ..logs import LogSession, logging_session
from .common import ArgumentParser, HelpShown, UsageError, gflags_to_argparse
from .registry import VERBS, Verb, register_verb

# The verbs, in the order of the usage text: one import line each (see "Adding a verb").
from . import train  # noqa: E402,F401
from . import test  # noqa: E402,F401
from . import device_query  # noqa: E402,F401
from . import time  # noqa: E402,F401
from . import plot  # noqa: E402,F401
from . import draw  # noqa: E402,F401
from . import gradcheck  # noqa: E402,F401
from . import tools  # noqa: E402,F401
from . import export  # noqa: E402,F401

__all__ = ["main", "VERBS", "register_verb", "UsageError"]

PROG = "torchcaffe"


def usage() -> str:
    """The top-level usage text (Caffe's "command line brew")."""
    width = max(len(name) for name in VERBS) + 4
    lines = [f"{PROG}: command line brew", f"usage: {PROG} <command> <args>", "", "commands:"]
    lines += [f"  {name:<{width}}{verb.summary}" for name, verb in VERBS.items()]
    lines += ["", f"Run '{PROG} <command> --help' for the flags of a command."]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``torchcaffe <verb> <flags>``; returns the exit status (0 success, 1 error, 130 interrupted)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "-help", "help"):
        (sys.stdout if argv else sys.stderr).write(usage())
        return 0 if argv else 1
    if argv[0] in ("--version", "-version"):
        sys.stdout.write(f"{PROG} version {__version__}\n")
        return 0
    verb = VERBS.get(argv[0])
    if verb is None:
        sys.stderr.write(usage())
        close = difflib.get_close_matches(argv[0], VERBS, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        sys.stderr.write(f"{PROG}: error: unknown command {argv[0]!r}; {hint}known commands: {', '.join(VERBS)}\n")
        return 1
    parser = _verb_parser(verb)
    try:
        args = parser.parse_args(gflags_to_argparse(argv[1:], parser.booleans))
    except UsageError as err:
        sys.stderr.write(err.usage)
        sys.stderr.write(f"{parser.prog}: error: {err}\n")
        return 1
    except HelpShown as shown:
        return shown.status
    try:
        with logging_session(log_file=args.log_file) as session:
            return _run(verb, args, session, parser)
    except CaffeError as err:  # the log file itself cannot be written
        sys.stderr.write(f"{parser.prog}: error: {err}\n")
        return 1


def _verb_parser(verb: Verb) -> ArgumentParser:
    parser = ArgumentParser(prog=f"{PROG} {verb.name}", description=verb.summary, allow_abbrev=False)
    verb.add_arguments(parser)
    parser.add_argument("--log_file", default=None, metavar="FILE",
                        help="also write the log lines to FILE (created or truncated; no progress bar)")
    return parser


def _run(verb: Verb, args, session: LogSession, parser: ArgumentParser) -> int:
    try:
        return verb.run(args, session)
    except UsageError as err:
        session.close_progress()
        session.stream.write(parser.format_usage())
        session.fail(parser.prog, str(err))
    except CaffeError as err:
        session.fail(parser.prog, str(err))
    except OSError as err:
        session.fail(parser.prog, _describe_os_error(err))
    except KeyboardInterrupt:
        session.fail(parser.prog, "interrupted")
        return 130
    return 1


def _describe_os_error(err: OSError) -> str:
    reason = err.strerror or str(err)
    return f"{err.filename}: {reason}" if err.filename else reason
