"""Caffe's layers, one module per family, all registered by type string in ``registry``.

The modules are imported here, explicitly, so that importing ``torchcaffe.layers`` registers
every type; no discovery magic.
"""
from . import (common, data, detection, forks, loss, misc, neuron, normalization, python,  # noqa: F401
               recurrent, shape, vision)  # (registration)
from .base import Layer, LayerSetup, Sample
from .registry import layer_class, layer_type_list, register_layer, registered_layers

__all__ = ["Layer", "LayerSetup", "Sample", "layer_class", "layer_type_list", "register_layer",
           "registered_layers"]
