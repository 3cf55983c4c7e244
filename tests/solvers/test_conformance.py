"""Replay every solver trajectory that the original Caffe recorded (``../shared/conformance/solvers``).

As the cases' README says: build the solver from ``solver.prototxt`` inside the case folder (its
paths are relative), copy ``init.caffemodel`` into ``solver.net``, call ``step(1)`` ``iters``
times comparing the ``loss`` blob each time with ``loss/<k>``, then compare every parameter with
``final/<layer>/<i>`` using ``numpy.allclose(rtol, atol)`` from ``case.json``.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

import torchcaffe

from ..conftest import requires_shared, shared_dir

#: ``TORCHCAFFE_TEST_DEVICE=cuda`` replays the trajectories on a GPU (same tolerances).
DEVICE = os.environ.get("TORCHCAFFE_TEST_DEVICE", "cpu")
CASES_DIR = shared_dir("conformance", "solvers")
CASES = sorted(p.name for p in CASES_DIR.iterdir() if (p / "case.json").is_file()) if CASES_DIR.is_dir() else []


def _close(what: str, ours, caffe, case: dict) -> None:
    ours, caffe = np.asarray(ours), np.asarray(caffe)
    assert ours.shape == caffe.shape, f"{what}: shape {ours.shape}, Caffe {caffe.shape}"
    if not np.allclose(ours, caffe, rtol=case["rtol"], atol=case["atol"]):
        err = np.abs(ours.astype(np.float64) - caffe)
        raise AssertionError(f"{what}: max |ours - caffe| = {err.max():.3g} (rtol {case['rtol']}, atol {case['atol']})")


@requires_shared
def test_there_are_solver_cases():
    assert CASES, f"no solver cases under {CASES_DIR}"


@requires_shared
@pytest.mark.parametrize("name", CASES)
def test_solver_trajectory_matches_caffe(name, monkeypatch):
    folder = CASES_DIR / name
    case = json.loads((folder / "case.json").read_text())
    trajectory = np.load(folder / "trajectory.npz")
    monkeypatch.chdir(folder)
    solver = torchcaffe.get_solver("solver.prototxt", device=DEVICE)
    solver.net.copy_from("init.caffemodel")
    for k in range(case["iters"]):
        solver.step(1)
        _close(f"loss/{k}", solver.net.blobs["loss"].data, trajectory[f"loss/{k}"], case)
    assert solver.iter == case["iters"]
    finals = [key for key in trajectory.files if key.startswith("final/")]
    assert finals, "the case records no final parameters"
    for key in finals:
        _, layer, index = key.split("/")
        _close(key, solver.net.params[layer][int(index)].data, trajectory[key], case)
