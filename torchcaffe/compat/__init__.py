"""pycaffe's API on torchcaffe's objects: ``import torchcaffe as caffe`` re-exports all of it.

What pycaffe's ``caffe`` module holds, and where it lives here:

=========================================  ===================================================
``Net``, ``TRAIN``, ``TEST``, ``Blob``      :mod:`torchcaffe.net` (the pycaffe-only methods
                                            ``forward_all`` & co. are attached by
                                            :mod:`.pycaffe`)
``Layer`` (= ``torchcaffe.Layer``)          :class:`torchcaffe.layers.python.PythonLayer`
``SGDSolver`` ... ``AdamSolver``,           :mod:`torchcaffe.solvers`
``get_solver``
``layer_type_list``                         :mod:`torchcaffe.layers.registry`
``set_mode_cpu``/``gpu``, ``set_device``,   :mod:`.runtime`
``set_random_seed``, ``init_log``, ``log``,
``solver_count``/``rank`` & setters,
``set_multiprocess``, ``has_nccl``,
``NCCL``, ``Timer``
``io``, ``net_spec`` (``layers``,           :mod:`.io`, :mod:`.net_spec`, :mod:`.draw`,
``params``, ``NetSpec``, ``to_proto``),     :mod:`.coord_map`
``draw``, ``coord_map``
``Classifier``, ``Detector``                :mod:`.classifier`, :mod:`.detector`
=========================================  ===================================================
"""
from ..layers import layer_type_list
from ..layers.python import PythonLayer as Layer
from ..layers.python import TorchLayer
from ..net.blob import Blob
from ..net.net import TEST, TRAIN, Net
from ..solvers import (AdaDeltaSolver, AdaGradSolver, AdamSolver, NesterovSolver, RMSPropSolver, SGDSolver,
                       get_solver)
from . import pycaffe  # noqa: F401  (attaches forward_all & co. to Net)
from . import coord_map, draw, io, net_spec
from .classifier import Classifier
from .detector import Detector
from .net_spec import NetSpec, layers, params, to_proto
from .runtime import (NCCL, Timer, has_nccl, init_log, log_message, mode_device, set_device, set_mode_cpu,
                      set_mode_gpu, set_multiprocess, set_random_seed, set_solver_count, set_solver_rank,
                      solver_count, solver_rank)

log = log_message  # pycaffe's caffe.log(message)

__all__ = ["Net", "TRAIN", "TEST", "Blob", "Layer", "TorchLayer", "SGDSolver", "NesterovSolver", "AdaGradSolver",
           "RMSPropSolver", "AdaDeltaSolver", "AdamSolver", "get_solver", "layer_type_list", "set_mode_cpu",
           "set_mode_gpu", "set_device", "set_random_seed", "init_log", "log", "solver_count", "set_solver_count",
           "solver_rank", "set_solver_rank", "set_multiprocess", "has_nccl", "NCCL", "Timer", "Classifier",
           "Detector", "io", "net_spec", "draw", "coord_map", "layers", "params", "NetSpec", "to_proto",
           "mode_device"]
