"""Helpers for running the real-world prototxt files of ``../shared/corpus``.

Database-reading layers cannot run without their databases, so they are replaced by ``Input``
stand-ins of the shape they would produce (the file itself is never edited): the image shape the
database holds comes from ``IMAGE_SHAPES``, cropped by the layer's ``transform_param.crop_size``,
and every further top is a label of shape ``(batch,)``. Batches are cut to ``BATCH`` to keep the
suite fast.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import torchcaffe
from torchcaffe.io.prototxt import read_net
from torchcaffe.proto import caffe_pb2

BATCH = 2
DATA_LAYERS = {"Data", "ImageData", "WindowData", "HDF5Data", "MemoryData"}
MNIST, CIFAR, IMAGENET = (1, 28, 28), (3, 32, 32), (3, 256, 256)

#: What each file's data layers read: (channels, height, width), or one shape per top for HDF5.
IMAGE_SHAPES = {
    "bvlc_alexnet/train_val.prototxt": IMAGENET,
    "bvlc_cifar10/cifar10_full_sigmoid_train_test_bn.prototxt": CIFAR,
    "bvlc_cifar10/cifar10_full_train_test.prototxt": CIFAR,
    "bvlc_cifar10/cifar10_quick_train_test.prototxt": CIFAR,
    "bvlc_feature_extraction/imagenet_val.prototxt": IMAGENET,
    "bvlc_finetune_pascal_detection/pascal_finetune_trainval_test.prototxt": IMAGENET,
    "bvlc_googlenet/train_val.prototxt": IMAGENET,
    "bvlc_hdf5_classification/nonlinear_auto_train.prototxt": [(4,), ()],
    "bvlc_hdf5_classification/nonlinear_train_val.prototxt": [(4,), ()],
    "bvlc_hdf5_classification/train_val.prototxt": [(4,), ()],
    "bvlc_legacy_v0/lenet_train.prototxt": MNIST,
    "bvlc_legacy_v1/caffenet_train_val.prototxt": IMAGENET,
    "bvlc_legacy_v1/lenet_train_test.prototxt": MNIST,
    "bvlc_legacy_v1/mnist_autoencoder.prototxt": MNIST,
    "bvlc_legacy_v1/mnist_siamese_train_test.prototxt": (2, 28, 28),
    "bvlc_mnist/lenet_train_test.prototxt": MNIST,
    "bvlc_mnist/mnist_autoencoder.prototxt": MNIST,
    "bvlc_reference_caffenet/train_val.prototxt": IMAGENET,
    "bvlc_siamese/mnist_siamese_train_test.prototxt": (2, 28, 28),
    "finetune_flickr_style/train_val.prototxt": IMAGENET,
    "squeezenet_v1.0/train_val.prototxt": IMAGENET,
}


@dataclass(frozen=True)
class CorpusNet:
    path: Path
    relative: str
    format: str
    layer_types: frozenset[str]
    non_bvlc_types: frozenset[str]

    @property
    def is_train_net(self) -> bool:
        return bool(self.layer_types & {"SoftmaxWithLoss", "SOFTMAX_LOSS", "softmax_loss", "EuclideanLoss",
                                        "EUCLIDEAN_LOSS", "ContrastiveLoss", "CONTRASTIVE_LOSS",
                                        "SigmoidCrossEntropyLoss"})


def corpus_nets(root: Path) -> list[CorpusNet]:
    """Every net prototxt listed in ``INDEX.tsv``."""
    with open(root / "INDEX.tsv", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    return [CorpusNet(root / r["local_path"], r["local_path"], r["format"],
                      frozenset(filter(None, r["layer_types"].split(","))),
                      frozenset(filter(None, r["non_bvlc_types"].split(","))))
            for r in rows if r["kind"] == "net"]


def with_data_standins(param: caffe_pb2.NetParameter, relative: str) -> caffe_pb2.NetParameter:
    """A copy of ``param`` whose database-reading layers are Input layers of their top shapes."""
    out = caffe_pb2.NetParameter()
    out.CopyFrom(param)
    for layer in out.layer:
        if layer.type in DATA_LAYERS:
            shapes = _standin_shapes(layer, IMAGE_SHAPES[relative])
            kept = caffe_pb2.LayerParameter(name=layer.name, type="Input", top=layer.top,
                                            include=layer.include, exclude=layer.exclude)
            for shape in shapes:
                kept.input_param.shape.add(dim=shape)
            layer.CopyFrom(kept)
    return out


def _standin_shapes(layer: caffe_pb2.LayerParameter, image) -> list[list[int]]:
    if isinstance(image, list):  # HDF5: one shape per top
        return [[BATCH, *shape] for shape in image]
    channels, height, width = image
    crop = layer.transform_param.crop_size
    data = [BATCH, channels, crop or height, crop or width]
    return [data] + [[BATCH]] * (len(layer.top) - 1)


def shrink_inputs(param: caffe_pb2.NetParameter) -> caffe_pb2.NetParameter:
    """Cut the batch of every Input layer to ``BATCH``."""
    out = caffe_pb2.NetParameter()
    out.CopyFrom(param)
    for layer in out.layer:
        if layer.type == "Input":
            for shape in layer.input_param.shape:
                if shape.dim:
                    shape.dim[0] = min(shape.dim[0], BATCH)
    return out


def build(net: CorpusNet, phase: int, stages=()) -> torchcaffe.Net:
    """The net with data stand-ins and small batches; BatchNorm statistics are set to a neutral
    mean 0 / variance 1 (fresh zero statistics blow random activations up by 1/sqrt(eps) a layer)."""
    param = read_net(net.path)
    if net.relative in IMAGE_SHAPES:
        param = with_data_standins(param, net.relative)
    built = torchcaffe.Net(shrink_inputs(param), phase, stages=list(stages))
    for layer in built.layers:
        if layer.type == "BatchNorm":
            mean, variance, factor = layer.blobs
            mean.data[...], variance.data[...], factor.data[...] = 0, 1, 1
    return built


def fill_inputs(net: torchcaffe.Net, rng: np.random.Generator) -> None:
    """Random images; labels (inputs of rank 1) are class indices valid for every classifier."""
    for name in net.inputs:
        blob = net.blobs[name]
        if len(blob.shape) == 1:
            blob.data[...] = rng.integers(0, 2, size=blob.shape)
        else:
            blob.data[...] = rng.random(blob.shape, dtype=np.float32)


def states_of(param: caffe_pb2.NetParameter, net: CorpusNet) -> list[tuple[int, tuple[str, ...]]]:
    """Every (phase, stages) the file's rules distinguish: each phase it names, with each stage its
    include rules ask for in that phase; a file without phase rules runs in the phase it is for."""
    rules = [rule for layer in param.layer for rule in list(layer.include) + list(layer.exclude)]
    phases = sorted({rule.phase for rule in rules if rule.HasField("phase")})
    if not phases:
        phases = [torchcaffe.TRAIN if net.is_train_net else torchcaffe.TEST]
    states = []
    for phase in phases:
        stages = sorted({s for layer in param.layer for rule in layer.include
                         if not rule.HasField("phase") or rule.phase == phase for s in rule.stage})
        states += [(phase, (stage,)) for stage in stages] or [(phase, ())]
    return states
