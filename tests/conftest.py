"""Shared test fixtures: where ../shared lives (the conformance cases and the corpus)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TORCHCAFFE_SHARED", REPO.parent / "shared"))
SHARED_MISSING = f"{SHARED} is absent: the conformance cases and corpus live there (set TORCHCAFFE_SHARED)"


def shared_dir(*parts: str) -> Path:
    return SHARED.joinpath(*parts)


requires_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=SHARED_MISSING)


def pytest_terminal_summary(terminalreporter):
    """Print how many corpus nets ran (``N/M corpus nets run``)."""
    outcomes = {}
    for status in ("passed", "failed", "xfailed", "xpassed", "skipped"):
        for report in terminalreporter.stats.get(status, []):
            nodeid = getattr(report, "nodeid", "")
            if "test_corpus_net_runs[" in nodeid and getattr(report, "when", "call") in ("call", "setup"):
                outcomes[nodeid] = outcomes.get(nodeid) if status == "skipped" and nodeid in outcomes else status
    if outcomes:
        ran = sum(1 for status in outcomes.values() if status == "passed")
        terminalreporter.write_line(f"{ran}/{len(outcomes)} corpus nets run")
