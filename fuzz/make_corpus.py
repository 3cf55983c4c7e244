"""Write the seed corpora ``fuzz/corpus/<target>/``: tiny real files made by torchcaffe's own
writers (which write what Caffe writes) and the prototxts the tests use.

    python -m fuzz.make_corpus        # rewrites the seeds; they are small and kept in git
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import cv2
import numpy as np

from fuzz.targets import CORPUS, HERE

ROOT = HERE.parent

TINY_NET = """name: "tiny"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 1 dim: 4 dim: 4 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 2 kernel_size: 3 weight_filler { type: "xavier" } } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "ip1" type: "InnerProduct" bottom: "conv1" top: "ip1" inner_product_param { num_output: 2 } }
layer { name: "prob" type: "Softmax" bottom: "ip1" top: "prob" }
"""

V1_NET = """name: "v1"
input: "data" input_dim: 1 input_dim: 1 input_dim: 4 input_dim: 4
layers { name: "conv1" type: CONVOLUTION bottom: "data" top: "conv1" blobs_lr: 1 blobs_lr: 2
         weight_decay: 1 weight_decay: 0 convolution_param { num_output: 2 kernel_size: 3 } }
layers { name: "relu1" type: RELU bottom: "conv1" top: "conv1" }
"""

V0_NET = """name: "v0"
input: "data" input_dim: 1 input_dim: 3 input_dim: 8 input_dim: 8
layers { layer { name: "pad1" type: "padding" pad: 1 } bottom: "data" top: "pad1" }
layers { layer { name: "conv1" type: "conv" num_output: 2 kernelsize: 3 } bottom: "pad1" top: "conv1" }
layers { layer { name: "data" type: "data" source: "db" batchsize: 2 scale: 0.5 meanfile: "m" cropsize: 4 } top: "d" top: "l" }
"""

SOLVER = """net: "train.prototxt"
test_iter: 1 test_interval: 10 base_lr: 0.01 momentum: 0.9 weight_decay: 0.0005
lr_policy: "step" gamma: 0.1 stepsize: 100 display: 10 max_iter: 100
snapshot: 50 snapshot_prefix: "snap/tiny" solver_mode: CPU solver_type: NESTEROV
"""


def _write(target: str, name: str, data: bytes) -> None:
    folder = CORPUS / target
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data)


def _prototxt_seeds() -> None:
    for name, text in (("tiny.prototxt", TINY_NET), ("v1.prototxt", V1_NET), ("v0.prototxt", V0_NET)):
        _write("prototxt", name, text.encode())
    _write("prototxt", "lenet.prototxt", (ROOT / "torchcaffe/models/lenet.prototxt").read_bytes())
    from torchcaffe.io.prototxt import read_net
    _write("prototxt", "tiny.binary", read_net(TINY_NET).SerializeToString())
    _write("solver_prototxt", "solver.prototxt", SOLVER.encode())
    _write("solver_prototxt", "inline.prototxt", f"net_param {{ {V1_NET.replace(chr(10), ' ')} }}\n"
                                                 f"base_lr: 0.1 lr_policy: \"fixed\"\n".encode())


def _weights_seeds(folder: Path) -> None:
    import torchcaffe
    net = torchcaffe.Net(_tiny_net_file(folder), torchcaffe.TEST)
    net.save(str(folder / "tiny.caffemodel"))
    net.save(str(folder / "tiny_diff.caffemodel"), write_diff=True)
    net.save_hdf5(str(folder / "tiny.caffemodel.h5"))
    _write("caffemodel", "tiny.caffemodel", (folder / "tiny.caffemodel").read_bytes())
    _write("caffemodel", "tiny_diff.caffemodel", (folder / "tiny_diff.caffemodel").read_bytes())
    _write("hdf5_weights", "tiny.caffemodel.h5", (folder / "tiny.caffemodel.h5").read_bytes())
    from torchcaffe.solvers.snapshot import SolverStateData, write_solverstate, write_solverstate_h5
    history = [np.arange(6, dtype=np.float32).reshape(2, 3), np.ones(2, np.float32)]
    state = SolverStateData(120, "snap/tiny_iter_120.caffemodel", 1, history)
    write_solverstate(str(folder / "s.solverstate"), state)
    write_solverstate_h5(str(folder / "s.solverstate.h5"), state)
    _write("solverstate", "tiny.solverstate", (folder / "s.solverstate").read_bytes())
    _write("solverstate", "tiny.solverstate.h5", (folder / "s.solverstate.h5").read_bytes())


def _tiny_net_file(folder: Path) -> str:
    path = folder / "tiny.prototxt"
    path.write_text(TINY_NET)
    return str(path)


def _binaryproto_seeds(folder: Path) -> None:
    from torchcaffe.io.binaryproto import write_blobproto, write_blobproto_vector
    write_blobproto(str(folder / "mean.binaryproto"), np.linspace(0, 1, 2 * 3 * 3, dtype=np.float32).reshape(1, 2, 3, 3))
    write_blobproto_vector(str(folder / "vec.binaryproto"), [np.ones((2, 2)), np.zeros(3, np.float64)])
    for name in ("mean.binaryproto", "vec.binaryproto"):
        _write("binaryproto", name, (folder / name).read_bytes())


def _datum_seeds() -> None:
    from torchcaffe.data.datum import array_to_datum, encoded_datum, image_to_datum
    from torchcaffe.proto import caffe_pb2
    image = (np.arange(4 * 5 * 3) % 251).astype(np.uint8).reshape(4, 5, 3)
    _write("datum", "raw.datum", image_to_datum(image, label=3).SerializeToString())
    _write("datum", "float.datum", array_to_datum(np.ones((1, 2, 2), np.float32), 1).SerializeToString())
    _write("datum", "png.datum", encoded_datum(cv2.imencode(".png", image)[1].tobytes(), 2).SerializeToString())
    _write("datum", "jpeg.datum", encoded_datum(cv2.imencode(".jpg", image)[1].tobytes(), 2).SerializeToString())
    annotated = caffe_pb2.AnnotatedDatum(datum=image_to_datum(image, 0), type=caffe_pb2.AnnotatedDatum.BBOX)
    group = annotated.annotation_group.add(group_label=1)
    group.annotation.add(instance_id=0, bbox=caffe_pb2.NormalizedBBox(xmin=0.1, ymin=0.1, xmax=0.5, ymax=0.6))
    _write("datum", "annotated.datum", annotated.SerializeToString())


def _net_spec_seeds() -> None:
    _write("net_spec", "empty", b"")
    _write("net_spec", "three_layers", bytes(range(0, 96, 3)))
    _write("net_spec", "ones", b"\x01" * 48)


def main() -> None:
    shutil.rmtree(CORPUS, ignore_errors=True)
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        _prototxt_seeds()
        _weights_seeds(folder)
        _binaryproto_seeds(folder)
        _datum_seeds()
        _net_spec_seeds()
    for target in sorted(p.name for p in CORPUS.iterdir()):
        files = list((CORPUS / target).iterdir())
        print(f"{target}: {len(files)} seeds, {sum(f.stat().st_size for f in files)} bytes")


if __name__ == "__main__":
    main()
