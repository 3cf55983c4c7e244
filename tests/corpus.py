"""Helpers for running the real-world prototxt files of ``../shared/corpus``.

Database-reading layers exist (``torchcaffe.layers.data``), but the databases, image lists and
window files these nets point at do not ship with the corpus, so the layers are replaced by
``Input`` stand-ins of the shapes they would produce (the file itself is never edited), and their
tops are filled with values of the right kind: images, class labels, segmentation maps, SSD
ground-truth rows (``tests/layers/test_data.py`` runs the real layers on files it writes). Batches are cut to ``BATCH`` to keep the suite fast, and ``${VAR}`` placeholders that an
upstream project fills in by script get the values that script would give (``VARIABLES``).
"""
from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import torchcaffe
from torchcaffe.io.prototxt import read_net
from torchcaffe.proto import caffe_pb2

BATCH = 2
NUM_GT = 3  # ground-truth boxes in an SSD stand-in label
DATA_LAYERS = {"Data", "ImageData", "WindowData", "HDF5Data", "MemoryData", "AnnotatedData", "ImageSegData",
               "ImageLabelmapData", "DenseImageData"}
MNIST, CIFAR, IMAGENET, VOC = (1, 28, 28), (3, 32, 32), (3, 256, 256), (3, 500, 500)

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
    "deeplab_largefov/test.prototxt": VOC,
    "deeplab_largefov/train.prototxt": VOC,
    "finetune_flickr_style/train_val.prototxt": IMAGENET,
    "hed/train_val.prototxt": (3, 96, 128),
    "mobilenet_ssd/MobileNetSSD_train.prototxt": VOC,
    "squeezenet_v1.0/train_val.prototxt": IMAGENET,
    "ssd300_vgg16/train.prototxt": VOC,
}

#: ``${VAR}`` values, as the upstream run scripts set them (DeepLab: run_pascal.sh).
VARIABLES = {"NUM_LABELS": "21", "NET_ID": "deeplab_largefov", "EXP": "voc12", "DATA_ROOT": "VOC2012",
             "TEST_SET": "val", "TRAIN_SET": "train_aug", "LIST_SUFFIX": "", "FEATURE_DIR": "features"}


@dataclass(frozen=True)
class CorpusNet:
    path: Path
    relative: str
    format: str
    layer_types: frozenset[str]
    non_bvlc_types: frozenset[str]

    @property
    def is_train_net(self) -> bool:
        return any("loss" in t.lower() for t in self.layer_types)


def corpus_nets(root: Path) -> list[CorpusNet]:
    """Every net prototxt listed in ``INDEX.tsv``."""
    with open(root / "INDEX.tsv", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    return [CorpusNet(root / r["local_path"], r["local_path"], r["format"],
                      frozenset(filter(None, r["layer_types"].split(","))),
                      frozenset(filter(None, r["non_bvlc_types"].split(","))))
            for r in rows if r["kind"] == "net"]


def substitute(text: str, variables: dict[str, str], where: Path) -> str:
    """Fill ``${NAME}`` placeholders; any left unknown is an error naming them."""
    unknown = sorted(set(re.findall(r"\$\{(\w+)\}", text)) - set(variables))
    if unknown:
        raise KeyError(f"{where}: no value for placeholder(s) {unknown}")
    return re.sub(r"\$\{(\w+)\}", lambda m: variables[m.group(1)], text)


def read_corpus_net(net: CorpusNet, variables: dict[str, str] | None = None) -> caffe_pb2.NetParameter:
    text = net.path.read_text()
    if "${" in text:
        return read_net(substitute(text, {**VARIABLES, **(variables or {})}, net.path))
    return read_net(net.path)


# -- data-layer stand-ins ------------------------------------------------------------------------
def with_data_standins(param: caffe_pb2.NetParameter, relative: str) -> tuple[caffe_pb2.NetParameter, dict]:
    """A copy of ``param`` whose database-reading layers are Input layers of their top shapes, and
    what each stand-in top should hold (``{top: kind}``)."""
    out = caffe_pb2.NetParameter()
    out.CopyFrom(param)
    kinds: dict[str, str] = {}
    for layer in out.layer:
        if layer.type in DATA_LAYERS:
            tops = _standin_tops(layer, IMAGE_SHAPES[relative])
            kept = caffe_pb2.LayerParameter(name=layer.name, type="Input", top=layer.top,
                                            include=layer.include, exclude=layer.exclude)
            for name, (shape, kind) in zip(layer.top, tops):
                kept.input_param.shape.add(dim=shape)
                kinds[name] = kind
            layer.CopyFrom(kept)
    return out, kinds


def _standin_tops(layer: caffe_pb2.LayerParameter, image) -> list[tuple[list[int], str]]:
    if isinstance(image, list):  # HDF5: one shape per top
        return [([BATCH, *shape], "image" if shape else "class") for shape in image]
    channels, height, width = image
    crop = layer.transform_param.crop_size
    resize = layer.transform_param.resize_param if layer.transform_param.HasField("resize_param") else None
    height, width = (resize.height, resize.width) if resize else (crop or height, crop or width)
    data = ([BATCH, channels, height, width], "image")
    if layer.type == "AnnotatedData":
        return [data, ([1, 1, NUM_GT, 8], "ssd_gt")]
    if layer.type in ("ImageSegData", "DenseImageData"):
        size = ([BATCH, 1, 1, 2], f"image_size {height} {width}")
        return [data, ([BATCH, 1, height, width], "segmentation"), size][:len(layer.top)]
    if layer.type == "ImageLabelmapData":
        return [data, ([BATCH, 1, height, width], "binary")]
    return [data] + [([BATCH], "class")] * (len(layer.top) - 1)


def shrink_inputs(param: caffe_pb2.NetParameter) -> caffe_pb2.NetParameter:
    """Cut the batch of every Input layer to ``BATCH``."""
    out = caffe_pb2.NetParameter()
    out.CopyFrom(param)
    for layer in out.layer:
        if layer.type == "Input":
            for shape in layer.input_param.shape:
                if len(shape.dim) > 1:
                    shape.dim[0] = min(shape.dim[0], BATCH)
    return out


def fill(kind: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Values of one kind for a stand-in top (or, by rank, for a deploy net's input)."""
    if kind == "class":
        return rng.integers(0, 2, size=shape)
    if kind == "binary":
        return rng.integers(0, 2, size=shape)
    if kind == "segmentation":  # classes 0..1, some pixels ignored (255, DeepLab's ignore label)
        return np.where(rng.random(shape) < 0.1, 255, rng.integers(0, 2, size=shape))
    if kind.startswith("image_size"):  # the real (height, width) of each image
        return np.broadcast_to(np.array([float(v) for v in kind.split()[1:]]), shape)
    if kind == "ssd_gt":  # rows [item, label, instance, xmin, ymin, xmax, ymax, difficult]
        rows = np.zeros(shape)
        corner = rng.uniform(0.05, 0.5, size=(NUM_GT, 2))
        size = rng.uniform(0.2, 0.45, size=(NUM_GT, 2))
        rows[0, 0, :, 0] = np.arange(NUM_GT) % BATCH
        rows[0, 0, :, 1] = rng.integers(1, 4, size=NUM_GT)
        rows[0, 0, :, 3:5], rows[0, 0, :, 5:7] = corner, corner + size
        return rows
    return rng.random(shape, dtype=np.float32)


def build(net: CorpusNet, phase: int, stages=()) -> tuple[torchcaffe.Net, dict]:
    """The net with data stand-ins and small batches; BatchNorm statistics are set to a neutral
    mean 0 / variance 1 (fresh zero statistics blow random activations up by 1/sqrt(eps) a layer)."""
    param, kinds = read_corpus_net(net), {}
    prepare_side_files(param)
    if net.relative in IMAGE_SHAPES:
        param, kinds = with_data_standins(param, net.relative)
    built = torchcaffe.Net(shrink_inputs(param), phase, stages=list(stages))
    randomize_unfilled_weights(built)
    for layer in built.layers:
        if layer.type == "BatchNorm":
            mean, variance, factor = layer.blobs
            mean.data[...], variance.data[...], factor.data[...] = 0, 1, 1
    return built, kinds


def prepare_side_files(param: caffe_pb2.NetParameter) -> None:
    """Create, under the current directory, what layers read or write besides blobs: a MatWrite
    layer's list of image ids and its output folder (DeepLab's test net)."""
    for layer in param.layer:
        if layer.type == "MatWrite":
            p = layer.mat_write_param
            if p.source:
                Path(p.source).parent.mkdir(parents=True, exist_ok=True)
                Path(p.source).write_text("".join(f"image_{i}\n" for i in range(BATCH)))
            Path(os.path.dirname(p.prefix) or ".").mkdir(parents=True, exist_ok=True)


def randomize_unfilled_weights(net: torchcaffe.Net, seed: int = 0) -> None:
    """Weights a file leaves to Caffe's default filler (constant 0) get He-scaled random values, so
    that a net meant to be initialised from a trained model still computes something non-trivial."""
    rng = np.random.default_rng(seed)
    for blobs in net.params.values():
        for blob in blobs:
            if len(blob.shape) > 1 and not blob.data.any():
                fan_in = blob.count // blob.shape[0]
                blob.data[...] = rng.normal(0, np.sqrt(2 / max(fan_in, 1)), blob.shape)


def fill_inputs(net: torchcaffe.Net, kinds: dict, rng: np.random.Generator) -> None:
    """Stand-in tops get values of their kind; a deploy net's rank-1 inputs are class labels, and
    R-CNN's ``im_info`` holds the image's height, width and scale."""
    for name in net.inputs:
        blob = net.blobs[name]
        if name == "im_info":
            height, width = net.blobs["data"].shape[2:]
            blob.data[...] = [height, width, 1.0]
            continue
        kind = kinds.get(name, "class" if len(blob.shape) == 1 else "image")
        blob.data[...] = fill(kind, blob.shape, rng)


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
