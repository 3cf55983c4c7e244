"""Hand-written PyTorch models of the benchmarked Caffe nets: the baseline of ``bench/nets.py``.

Each model is plain idiomatic PyTorch (``nn.Conv2d``, ``nn.BatchNorm2d`` with its affine part
standing for Caffe's BatchNorm + Scale pair, ``F.max_pool2d(ceil_mode=True)``, in-place ReLUs),
written from the architecture, not generated. ``caffe_modules()`` says which module holds the
blobs of which Caffe layer, so that :func:`load_caffe_weights` can give a model the very weights
of a torchcaffe net; ``bench/nets.py`` then checks both compute the same outputs before timing.
"""
from __future__ import annotations

import torch
from torch import nn

from .caffenet import CaffeNet
from .googlenet import GoogLeNet
from .lenet import LeNet
from .mobilenet import MobileNetV1
from .resnet50 import ResNet50
from .squeezenet import SqueezeNet11

__all__ = ["CaffeNet", "GoogLeNet", "LeNet", "MobileNetV1", "ResNet50", "SqueezeNet11", "load_caffe_weights"]


def load_caffe_weights(model: nn.Module, net) -> None:
    """Copy every parameter blob of the torchcaffe ``net`` into ``model``'s matching module.

    Convolution / InnerProduct blobs go to the weight and bias of a conv / linear module; a
    BatchNorm layer's running sums, divided by its scale factor, become the running mean and
    variance of an ``nn.BatchNorm2d``, and the Scale layer after it fills that module's affine part.
    """
    modules = model.caffe_modules()
    missing = [name for name in net.params if name not in modules]
    if missing:
        raise KeyError(f"{type(model).__name__} has no module for the Caffe layer(s) {missing}")
    with torch.no_grad():
        for name, layer in net.layer_dict.items():
            if name in net.params:
                _copy_layer(layer, modules[name])


def _copy_layer(layer, module: nn.Module) -> None:
    blobs = layer.caffe_blobs()
    if layer.type == "BatchNorm":
        mean, var = layer.stored_statistics()
        module.running_mean.copy_(mean)
        module.running_var.copy_(var)
        module.eps = layer.eps
    elif layer.type == "Scale":
        module.weight.copy_(blobs[0])
        module.bias.copy_(blobs[1])
    else:  # Convolution, InnerProduct: weight then (optional) bias
        module.weight.copy_(blobs[0].reshape(module.weight.shape))
        if len(blobs) > 1:
            module.bias.copy_(blobs[1])
