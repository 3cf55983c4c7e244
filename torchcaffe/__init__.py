"""torchcaffe: Caffe's nets, layers and solvers on PyTorch, reading unmodified Caffe files.

``import torchcaffe as caffe`` speaks pycaffe::

    net = caffe.Net("deploy.prototxt", caffe.TEST, weights="model.caffemodel")
    net.blobs["data"].data[...] = image
    out = net.forward()

Everything pycaffe's ``caffe`` module holds is here (see :mod:`torchcaffe.compat`). Two of its
names are also names of our packages; both serve both purposes:

* ``torchcaffe.io`` is the package of file readers and also holds pycaffe's ``caffe.io``
  functions (``Transformer``, ``load_image``, ``resize_image``...);
* ``torchcaffe.layers`` is the package of layer implementations and also answers
  ``layers.<Type>(...)`` with net_spec's layer functions (``from torchcaffe import layers as
  L``), for every CamelCase name that is not one of its own attributes.

``import torchcaffe.draw`` (and ``.net_spec``, ``.coord_map``, ``.classifier``, ``.detector``,
``.pycaffe``), as pycaffe scripts write ``import caffe.draw``, gives the compat modules.
"""
import sys as _sys

from . import compat as _compat
from . import io as _io_package
from . import layers as _layers_package
from .compat import (NCCL, AdaDeltaSolver, AdaGradSolver, AdamSolver, Blob, Classifier, Detector, Layer,
                     NesterovSolver, NetSpec, RMSPropSolver, SGDSolver, Timer, TorchLayer, coord_map, draw,
                     get_solver, has_nccl, init_log, layer_type_list, log, net_spec, params, set_device,
                     set_mode_cpu, set_mode_gpu, set_multiprocess, set_random_seed, set_solver_count,
                     set_solver_rank, solver_count, solver_rank, to_proto)
from .errors import CaffeError, GradientCheckError, NetError, ParseError, WeightsError
from .gradcheck import GradientChecker
from .layers import register_layer
from .net.net import TEST, TRAIN, Net, allow_tf32
from .solvers import renorm

__version__ = "0.1.0"


def _install_pycaffe_names() -> None:
    """Give ``torchcaffe.io`` pycaffe's io functions and ``torchcaffe.layers`` net_spec's layer
    functions (see the module docstring), and register the compat modules under the names
    pycaffe scripts import."""
    for name in _compat.io.__all__:
        setattr(_io_package, name, getattr(_compat.io, name))

    def layer_function(name: str):
        if name[:1].isupper():
            return _compat.net_spec.layer_function(name)
        raise AttributeError(f"module 'torchcaffe.layers' has no attribute {name!r}")

    _layers_package.__getattr__ = layer_function
    for name in ("draw", "net_spec", "coord_map", "classifier", "detector", "pycaffe"):
        _sys.modules.setdefault(f"{__name__}.{name}", getattr(_compat, name))


_install_pycaffe_names()
io = _io_package
layers = _layers_package
classifier = _compat.classifier
detector = _compat.detector

__all__ = ["Net", "TRAIN", "TEST", "allow_tf32", "Layer", "TorchLayer", "register_layer", "layer_type_list",
           "CaffeError", "NetError", "ParseError", "WeightsError", "GradientCheckError", "GradientChecker",
           "get_solver", "SGDSolver", "NesterovSolver", "AdaGradSolver", "RMSPropSolver", "AdaDeltaSolver",
           "AdamSolver", "renorm", "Blob", "set_mode_cpu", "set_mode_gpu", "set_device", "set_random_seed",
           "init_log", "log", "solver_count", "set_solver_count", "solver_rank", "set_solver_rank",
           "set_multiprocess", "has_nccl", "NCCL", "Timer", "Classifier", "Detector", "io", "net_spec", "draw",
           "coord_map", "layers", "params", "NetSpec", "to_proto"]
