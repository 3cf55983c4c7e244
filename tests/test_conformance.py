"""Replay every net that the original Caffe ran (``../shared/conformance/cases``).

Each case is replayed through the public pycaffe-style API exactly as the cases' README says, and
every blob, diff, parameter and parameter diff is compared with ``numpy.allclose(rtol, atol)``
from its case.json. Cases listed in ``conformance_xfail.txt`` must fail (strict xfail): when one
starts passing, remove it from the list.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import torchcaffe

from .conftest import REPO, SHARED_MISSING, requires_shared, shared_dir

CASES_DIR = shared_dir("conformance", "cases")
CASES = sorted(p.name for p in CASES_DIR.iterdir() if (p / "case.json").is_file()) if CASES_DIR.is_dir() else []
XFAIL = {line.split("#")[0].strip() for line in (REPO / "tests" / "conformance_xfail.txt").read_text().splitlines()
         if line.split("#")[0].strip()}
PHASES = {"TRAIN": torchcaffe.TRAIN, "TEST": torchcaffe.TEST}


class Mismatch(AssertionError):
    pass


def compare(what: str, ours: np.ndarray, caffe: np.ndarray, case: dict) -> None:
    ours = np.asarray(ours)
    if ours.shape != caffe.shape:
        raise Mismatch(f"{what}: shape {ours.shape}, Caffe {caffe.shape}")
    if not np.allclose(ours, caffe, rtol=case["rtol"], atol=case["atol"]):
        err = np.abs(ours.astype(np.float64) - caffe)
        at = np.unravel_index(np.argmax(err), err.shape) if err.size else ()
        raise Mismatch(f"{what}: max |ours - caffe| = {err.max():.3g} at {at} "
                       f"(ours {ours[at]!r}, Caffe {caffe[at]!r})")


def compare_step(net, data, prefix: str, case: dict, kinds: tuple[str, ...]) -> None:
    for key in data.files:
        parts = key.split("/")
        if not key.startswith(prefix) or parts[1] not in kinds:
            continue
        kind = parts[1]
        if kind in ("out", "diff"):
            blob = net.blobs[parts[2]]
            compare(key, blob.data if kind == "out" else blob.diff, data[key], case)
        else:  # param/<layer>/<i>, pdiff/<layer>/<i>
            blob = net.params[parts[2]][int(parts[3])]
            compare(key, blob.data if kind == "param" else blob.diff, data[key], case)


def set_blob(net, name: str, value: np.ndarray, attr: str = "data") -> None:
    blob = net.blobs[name]
    if attr == "data" and blob.shape != value.shape:
        blob.reshape(*value.shape)
        net.reshape()
    getattr(blob, attr)[...] = value


def check_declared_blobs_present(case: dict, data, k: int) -> None:
    if case.get("compact"):
        return
    missing = [b for b in case["blobs"] if f"s{k}/out/{b}" not in data.files]
    assert not missing, f"case data lacks outputs for {missing}"


def replay(case_dir: Path, tmp_path: Path, device: str = "cpu") -> None:
    case = json.loads((case_dir / "case.json").read_text())
    data = np.load(case_dir / "data.npz")
    net_file = case_dir / (case.get("net_file") or "net.prototxt")
    phase = PHASES[case["phase"]]
    net = torchcaffe.Net(str(net_file), phase, level=case["level"], stages=case["stages"])
    if case.get("weights"):
        net.copy_from(str(case_dir / case["weights"]))
    net.to(device)
    for key in (k for k in data.files if k.startswith("init/")):
        _, layer, i = key.split("/")
        compare(key, net.params[layer][int(i)].data, data[key], case)
    for k in range(case["steps"]):
        check_declared_blobs_present(case, data, k)
        for name in case["inputs"]:
            if f"s{k}/in/{name}" in data.files:
                set_blob(net, name, data[f"s{k}/in/{name}"])
        net.forward()
        compare_step(net, data, f"s{k}/", case, ("out", "param"))
        if case["backward"]:
            net.clear_param_diffs()
            if not case["has_loss"]:
                for key in (f for f in data.files if f.startswith(f"s{k}/topdiff/")):
                    set_blob(net, key.split("/", 2)[2], data[key], "diff")
            net.backward()
            compare_step(net, data, f"s{k}/", case, ("diff", "pdiff"))
    if case.get("test_after"):
        weights = tmp_path / "trained.caffemodel"
        net.save(str(weights))
        test_net = torchcaffe.Net(str(net_file), torchcaffe.TEST, level=case["level"], stages=case["stages"],
                                  weights=str(weights)).to(device)
        for key in (f for f in data.files if f.startswith("test/in/")):
            set_blob(test_net, key.split("/", 2)[2], data[key])
        test_net.forward()
        for key in (f for f in data.files if f.startswith("test/out/")):
            compare(key, test_net.blobs[key.split("/", 2)[2]].data, data[key], case)


def test_cases_are_present():
    if not CASES_DIR.parent.parent.is_dir():
        pytest.skip(SHARED_MISSING)
    assert CASES, f"no cases found in {CASES_DIR}"
    unknown = XFAIL - set(CASES)
    assert not unknown, f"conformance_xfail.txt lists cases that do not exist: {sorted(unknown)}"


@requires_shared
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.xfail(strict=True, raises=Exception))
                                  if n in XFAIL else n for n in CASES])
def test_conformance_case(name, tmp_path):
    replay(CASES_DIR / name, tmp_path)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here: the GPU replay runs where one is")
@requires_shared
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.xfail(strict=True, raises=Exception))
                                  if n in XFAIL else n for n in CASES])
def test_conformance_case_on_cuda(name, tmp_path):
    """The same replay with the net on the GPU: numpy views are host mirrors kept coherent."""
    replay(CASES_DIR / name, tmp_path, device="cuda")


WITH_WEIGHTS = [n for n in CASES if json.loads((CASES_DIR / n / "case.json").read_text()).get("weights")]


@requires_shared
@pytest.mark.parametrize("name", WITH_WEIGHTS)
def test_save_writes_the_bytes_caffe_wrote(name, tmp_path):
    """``net.save`` right after loading a case reproduces Caffe's own ``Net.save`` file byte for
    byte: the same layers (Split layers included), the parameters Caffe adds at set-up, the blobs."""
    case_dir = CASES_DIR / name
    case = json.loads((case_dir / "case.json").read_text())
    net = torchcaffe.Net(str(case_dir / (case.get("net_file") or "net.prototxt")), PHASES[case["phase"]],
                         level=case["level"], stages=case["stages"])
    net.copy_from(str(case_dir / case["weights"]))
    net.save(str(tmp_path / "saved.caffemodel"))
    assert (tmp_path / "saved.caffemodel").read_bytes() == (case_dir / case["weights"]).read_bytes()
