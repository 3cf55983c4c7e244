"""The fuzz targets (``fuzz/``) in the test suite: every seed and every saved failing input is
replayed, and each target gets a short, derandomized hypothesis run. The property: an input
loads, or is refused with a CaffeError, within the per-input deadline."""
from __future__ import annotations

import logging
import warnings

import pytest
from hypothesis import HealthCheck, given, settings

from fuzz.properties import check, inputs
from fuzz.targets import CORPUS, TARGETS, regressions, seeds

#: Generous for a shared 2-core machine; make fuzz uses FUZZ_DEADLINE (default 5 s).
DEADLINE = 20.0


@pytest.fixture(autouse=True)
def _quiet_readers():
    """The readers warn about what they repair (non-UTF-8 bytes...): expected here."""
    logger = logging.getLogger("torchcaffe")
    level = logger.level
    logger.setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
    logger.setLevel(level)


def _saved_inputs():
    for target in TARGETS:
        for path in regressions(target):
            yield pytest.param(target, path, id=f"{target}/{path.name}")


def test_every_target_has_seeds():
    assert sorted(p.name for p in CORPUS.iterdir() if p.is_dir()) == sorted(TARGETS)
    for target in TARGETS:
        assert seeds(target), f"fuzz/corpus/{target}/ is empty; run python -m fuzz.make_corpus"


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_seeds_load_or_are_refused_cleanly(target):
    kinds = [check(target, data, DEADLINE) for data in seeds(target)]
    if target != "net_spec":  # the seeds are real files: they must load
        assert kinds == ["ok"] * len(kinds), f"a seed of {target} does not load: {kinds}"


@pytest.mark.parametrize("target, path", list(_saved_inputs()))
def test_saved_failures_stay_fixed(target, path):
    check(target, path.read_bytes(), DEADLINE)


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_short_property_run(target):
    @settings(max_examples=150, deadline=None, database=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(inputs(target))
    def property_(data):
        check(target, data, DEADLINE)

    property_()
