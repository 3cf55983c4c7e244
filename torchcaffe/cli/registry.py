"""The verb registry of the ``torchcaffe`` command (Caffe's ``RegisterBrewFunction``)."""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Callable

from ..logs import LogSession

__all__ = ["Verb", "VERBS", "register_verb"]

Arguments = Callable[[argparse.ArgumentParser], None]
Run = Callable[[argparse.Namespace, LogSession], int]


@dataclass(frozen=True)
class Verb:
    """One verb: ``torchcaffe <name> <flags>``. ``add_arguments(parser)`` declares its flags;
    ``run(args, session)`` does the work and returns the exit status."""

    name: str
    summary: str
    add_arguments: Arguments
    run: Run


#: The registered verbs by name, in registration order (the order of the usage text).
VERBS: dict[str, Verb] = {}


def register_verb(name: str, summary: str, arguments: Arguments) -> Callable[[Run], Run]:
    """Decorator registering ``run`` as the verb ``name``; registering a name twice raises."""

    def decorate(run: Run) -> Run:
        if name in VERBS:
            raise ValueError(f"the verb {name!r} is registered twice ({VERBS[name].run.__module__} and "
                             f"{run.__module__})")
        VERBS[name] = Verb(name, summary, arguments, run)
        return run

    return decorate
