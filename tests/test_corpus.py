"""Real prototxt files from model zoos and papers (``../shared/corpus``) build and run.

Each BVLC-only net (V0, V1 and V2 formats) is read, upgraded and built in every phase it has
rules for, run forward on random weights and inputs (batch cut to ``corpus.BATCH``), and — for
training nets — backward. Database layers are replaced by Input stand-ins (see ``tests/corpus.py``).
Nets that need fork layers (``non_bvlc_types`` in INDEX.tsv), Python layers or fork-only fields
are outside this test until those arrive.
"""
from __future__ import annotations

import numpy as np
import pytest

import torchcaffe
from torchcaffe.io.prototxt import read_net

from .conftest import requires_shared, shared_dir
from .corpus import build, corpus_nets, fill_inputs, states_of

ROOT = shared_dir("corpus")
NETS = corpus_nets(ROOT) if (ROOT / "INDEX.tsv").is_file() else []
#: BVLC-type nets that use a field our schema does not have yet (fork extensions).
FORK_FIELDS = {"resnext50/deploy_resnext50-32x4d.prototxt": "pooling_param.ceil_mode (DenseNet/ResNeXt forks)"}
BVLC_NETS = [n for n in NETS if not n.non_bvlc_types and "Python" not in n.layer_types
             and n.relative not in FORK_FIELDS]


def run_state(net_file, phase: int, stages) -> None:
    net = build(net_file, phase, stages)
    fill_inputs(net, np.random.default_rng(0))
    outputs = net.forward()
    for name, value in outputs.items():
        assert np.isfinite(value).all(), f"{name} is not finite"
    if phase == torchcaffe.TRAIN and net_file.is_train_net:
        net.backward()
        grads = [np.abs(b.diff).sum() for blobs in net.params.values() for b in blobs]
        assert grads and np.isfinite(grads).all() and sum(grads) > 0


@requires_shared
@pytest.mark.parametrize("net_file", [n for n in BVLC_NETS if n.format in ("V0", "V1")], ids=lambda n: n.relative)
def test_legacy_nets_upgrade_and_run(net_file):
    param = read_net(net_file.path)
    assert param.layer and not param.layers, "upgraded to V2 layers"
    for phase, stages in states_of(param, net_file):
        run_state(net_file, phase, stages)


@requires_shared
@pytest.mark.parametrize("net_file", [n for n in BVLC_NETS if n.format == "V2"], ids=lambda n: n.relative)
def test_bvlc_nets_build_and_run(net_file):
    for phase, stages in states_of(read_net(net_file.path), net_file):
        run_state(net_file, phase, stages)


@requires_shared
def test_corpus_index_is_read():
    assert len(NETS) > 60 and len(BVLC_NETS) > 40
