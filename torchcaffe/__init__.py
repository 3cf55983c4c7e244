"""torchcaffe: Caffe's nets, layers and solvers on PyTorch, reading unmodified Caffe files.

``import torchcaffe as caffe`` speaks pycaffe::

    net = caffe.Net("deploy.prototxt", caffe.TEST, weights="model.caffemodel")
    net.blobs["data"].data[...] = image
    out = net.forward()
"""
from .errors import CaffeError, NetError, ParseError, WeightsError
from .layers import layer_type_list, register_layer
from .layers.python import PythonLayer as Layer
from .layers.python import TorchLayer
from .net.net import TEST, TRAIN, Net, allow_tf32
from .solvers import (AdaDeltaSolver, AdaGradSolver, AdamSolver, NesterovSolver, RMSPropSolver, SGDSolver,
                      get_solver, renorm)

__version__ = "0.1.0"

__all__ = ["Net", "TRAIN", "TEST", "allow_tf32", "Layer", "TorchLayer", "register_layer", "layer_type_list", "CaffeError",
           "NetError", "ParseError", "WeightsError", "get_solver", "SGDSolver", "NesterovSolver", "AdaGradSolver",
           "RMSPropSolver", "AdaDeltaSolver", "AdamSolver", "renorm"]
