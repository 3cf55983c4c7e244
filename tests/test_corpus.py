"""Every real prototxt file of ``../shared/corpus`` builds and runs.

Each net listed in INDEX.tsv is read (V0/V1 files upgraded), built in every phase/stage its
rules distinguish, run forward on random weights and inputs (batches cut to ``corpus.BATCH``),
and — for training nets — backward. Database layers are replaced by Input stand-ins (see
``tests/corpus.py``); the Python layer modules of the upstream projects by stand-ins of the same
interface (``tests/corpus_python``). Files in ``corpus_exceptions.txt`` cannot run for a reason stated there;
they are strict xfails, so one that starts running must leave the list. The run ends with a line
``N/M corpus nets run``.
"""
from __future__ import annotations

import numpy as np
import pytest

import torchcaffe

from .conftest import REPO, requires_shared, shared_dir
from .corpus import build, corpus_nets, fill_inputs, read_corpus_net, states_of

ROOT = shared_dir("corpus")
PYTHON_STANDINS = REPO / "tests" / "corpus_python"  # the upstream projects' Python layer modules
NETS = corpus_nets(ROOT) if (ROOT / "INDEX.tsv").is_file() else []
EXCEPTIONS = dict(line.split("\t", 1) for line in (REPO / "tests" / "corpus_exceptions.txt").read_text().splitlines()
                  if line.strip() and not line.startswith("#"))


def run_state(net_file, phase: int, stages) -> None:
    net, kinds = build(net_file, phase, stages)
    fill_inputs(net, kinds, np.random.default_rng(0))
    outputs = net.forward()
    for name, value in outputs.items():
        assert np.isfinite(value).all(), f"{name} is not finite"
    if phase == torchcaffe.TRAIN and net_file.is_train_net:
        net.backward()
        grads = [np.abs(b.diff).sum() for blobs in net.params.values() for b in blobs]
        assert grads and np.isfinite(grads).all() and sum(grads) > 0, "backward gave no parameter diff"


def corpus_param(net_file):
    reason = EXCEPTIONS.get(net_file.relative)
    marks = [pytest.mark.xfail(strict=True, reason=reason.strip())] if reason else []
    return pytest.param(net_file, id=net_file.relative, marks=marks)


@requires_shared
@pytest.mark.parametrize("net_file", [corpus_param(n) for n in NETS])
def test_corpus_net_runs(net_file, monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(PYTHON_STANDINS))
    monkeypatch.chdir(tmp_path)  # files the nets write (MatWrite) land here
    param = read_corpus_net(net_file)
    if net_file.format in ("V0", "V1"):
        assert param.layer and not param.layers, "upgraded to V2 layers"
    for phase, stages in states_of(param, net_file):
        run_state(net_file, phase, stages)


@requires_shared
def test_corpus_index_and_exceptions_agree():
    assert len(NETS) > 60
    unknown = set(EXCEPTIONS) - {n.relative for n in NETS}
    assert not unknown, f"corpus_exceptions.txt names files that are not corpus nets: {sorted(unknown)}"
