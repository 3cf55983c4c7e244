"""No code runs from data: weights, snapshots and means are parsed as protobuf/HDF5, never
unpickled; a Python layer can only name a torchcaffe layer class, and none at all when refused.

Each pickle payload here would create a marker file when unpickled (checked once, on purpose,
so the test cannot pass with a dud payload); every torchcaffe reader must refuse it with one of
our errors and leave the marker absent."""
from __future__ import annotations

import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import torchcaffe
from torchcaffe.errors import CaffeError, NetError, ParseError, WeightsError
from torchcaffe.io.binaryproto import read_blobproto
from torchcaffe.io.weights import read_weights
from torchcaffe.solvers.snapshot import SnapshotError, read_solverstate

PACKAGE = Path(torchcaffe.__file__).parent


class Payload:
    """Unpickling this runs ``os.system("touch <marker>")``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture
def marker(tmp_path) -> Path:
    return tmp_path / "payload-ran"


def _planted(tmp_path: Path, marker: Path, name: str, how: str) -> Path:
    path = tmp_path / name
    if how == "pickle":
        path.write_bytes(pickle.dumps(Payload(marker)))
    elif how == "torch":
        torch.save({"net": Payload(marker)}, path)
    else:  # a numpy file whose object array pickles the payload
        with open(path, "wb") as f:
            np.save(f, np.array([Payload(marker)], dtype=object), allow_pickle=True)
    return path


def test_the_payload_is_live(tmp_path, marker):
    pickle.loads(_planted(tmp_path, marker, "p.pkl", "pickle").read_bytes())
    assert marker.exists()


@pytest.mark.parametrize("how", ["pickle", "torch", "npy"])
@pytest.mark.parametrize("name, reader, error", [
    ("model.caffemodel", read_weights, WeightsError),
    ("model.caffemodel.h5", read_weights, WeightsError),
    ("state.solverstate", read_solverstate, SnapshotError),
    ("mean.binaryproto", read_blobproto, ParseError),
    ("mean.npy", read_blobproto, ParseError),
])
def test_pickled_payloads_are_refused_and_never_run(tmp_path, marker, how, name, reader, error):
    path = _planted(tmp_path, marker, name, how)
    with pytest.raises(error):
        reader(str(path))
    assert not marker.exists()


def test_net_copy_from_a_pickle_is_refused(tmp_path, marker):
    net = torchcaffe.Net(str(PACKAGE / "models" / "lenet.prototxt"), torchcaffe.TEST)
    with pytest.raises(WeightsError):
        net.copy_from(str(_planted(tmp_path, marker, "lenet.caffemodel", "torch")))
    assert not marker.exists()


PYTHON_LAYER = """layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ dim: 1 dim: 2 }} }} }}
layer {{ name: "evil" type: "Python" bottom: "data" top: "out"
        python_param {{ module: "{module}" layer: "{layer}" param_str: "touch {marker}" }} }}
"""


@pytest.mark.parametrize("module, layer", [("os", "system"), ("subprocess", "Popen"), ("builtins", "eval")])
def test_python_layer_naming_a_callable_is_refused(tmp_path, marker, module, layer):
    path = tmp_path / "net.prototxt"
    path.write_text(PYTHON_LAYER.format(module=module, layer=layer, marker=marker))
    with pytest.raises(NetError, match=rf"{module}\.{layer} is .* refusing to call it"):
        torchcaffe.Net(str(path))
    assert not marker.exists()


def test_python_layers_can_be_refused_altogether(tmp_path, marker):
    path = tmp_path / "net.prototxt"
    path.write_text(PYTHON_LAYER.format(module="torchcaffe.layers.python_examples", layer="ChannelL2Norm", marker=marker))
    with pytest.raises(NetError, match="allow_python_layers=False"):
        torchcaffe.Net(str(path), allow_python_layers=False)


def test_the_package_never_unpickles():
    """A guard on the source: no pickle, no torch.load without weights_only=True, no numpy load
    with allow_pickle. A new reader that needs one must come with its own refusal test."""
    offenders = []
    for source in PACKAGE.rglob("*.py"):
        text = source.read_text()
        for pattern in (r"\bimport pickle\b", r"\bpickle\.load", r"\bcPickle\b", r"allow_pickle\s*=\s*True",
                        r"\bshelve\b", r"\bmarshal\.loads?\b", r"yaml\.load\((?![^)]*SafeLoader)"):
            offenders += [f"{source.relative_to(PACKAGE)}: {pattern}" for _ in re.finditer(pattern, text)]
        for call in re.finditer(r"torch\.load\(([^)]*)\)", text):
            if "weights_only=True" not in call.group(1):
                offenders.append(f"{source.relative_to(PACKAGE)}: torch.load without weights_only=True")
    assert not offenders, offenders


def test_every_refusal_is_a_caffe_error():
    assert all(issubclass(e, CaffeError) for e in (WeightsError, SnapshotError, ParseError, NetError))
