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


def _outcomes(terminalreporter, test_name: str) -> dict[str, str]:
    """The outcome of each parametrization of ``test_name``, by its id."""
    outcomes = {}
    for status in ("passed", "failed", "xfailed", "xpassed", "skipped"):
        for report in terminalreporter.stats.get(status, []):
            nodeid = getattr(report, "nodeid", "")
            if f"{test_name}[" in nodeid and getattr(report, "when", "call") in ("call", "setup"):
                outcomes[nodeid] = outcomes.get(nodeid) if status == "skipped" and nodeid in outcomes else status
    return {nodeid.split("[", 1)[1][:-1]: status for nodeid, status in outcomes.items()}


def pytest_terminal_summary(terminalreporter):
    """Print how many corpus nets ran (``N/M corpus nets run``) and export (``N/M nets export``)."""
    ran = _outcomes(terminalreporter, "test_corpus_net_runs")
    if ran:
        terminalreporter.write_line(f"{sum(s == 'passed' for s in ran.values())}/{len(ran)} corpus nets run")
    exported = _outcomes(terminalreporter, "test_deploy_net_exports")
    if exported:
        from .export.test_export import CANNOT_EXPORT

        for exporter, name in (("onnx", "ONNX"), ("pytorch", "PyTorch source")):
            count = sum(status == "passed" and exporter not in CANNOT_EXPORT.get(net, {})
                        for net, status in exported.items())
            terminalreporter.write_line(f"{count}/{len(exported)} nets export to {name}")


@pytest.fixture(autouse=True)
def _caffe_mode_of_a_fresh_process():
    """pycaffe's process-wide settings (``set_mode_gpu``, ``set_solver_rank``...) do not leak from
    one test into the next."""
    from torchcaffe.compat import runtime

    initial = dict(runtime._STATE)
    yield
    runtime._STATE.clear()
    runtime._STATE.update(initial)
