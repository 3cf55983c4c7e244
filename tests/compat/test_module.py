"""pycaffe's module-level API under `import torchcaffe as caffe`: layer_type_list (pycaffe's
test_layer_type_list.py), NCCL (test_nccl.py), mode, seeds, logging, Timer, and the names."""
from __future__ import annotations

import logging
import time

import pytest
import torch

import torchcaffe as caffe

PYCAFFE_NAMES = ["Net", "TRAIN", "TEST", "Layer", "Blob", "SGDSolver", "NesterovSolver", "AdaGradSolver",
                 "RMSPropSolver", "AdaDeltaSolver", "AdamSolver", "NCCL", "Timer", "Classifier", "Detector",
                 "get_solver", "layer_type_list", "set_mode_cpu", "set_mode_gpu", "set_device", "set_random_seed",
                 "init_log", "log", "solver_count", "set_solver_count", "solver_rank", "set_solver_rank",
                 "set_multiprocess", "has_nccl", "io", "net_spec", "draw", "layers", "params", "NetSpec", "to_proto"]


def test_every_pycaffe_name_is_there():
    missing = [name for name in PYCAFFE_NAMES if not hasattr(caffe, name)]
    assert missing == []
    assert caffe.Layer is caffe.layers.python.PythonLayer
    assert caffe.TRAIN == 0 and caffe.TEST == 1


def test_pycaffe_submodule_imports():
    import torchcaffe.coord_map
    import torchcaffe.draw
    import torchcaffe.io
    import torchcaffe.net_spec
    from torchcaffe import layers as L
    from torchcaffe.proto import caffe_pb2
    assert torchcaffe.draw.draw_net_to_file and torchcaffe.coord_map.crop and torchcaffe.net_spec.NetSpec
    assert torchcaffe.io.Transformer is caffe.io.Transformer and torchcaffe.io.weights  # both kinds of io
    assert L.Convolution(L.Input(shape=dict(dim=[1]))).fn.type_name == "Convolution"
    assert L.registry.layer_type_list  # the package's own modules stay reachable
    with pytest.raises(AttributeError):
        L.no_such_module
    assert caffe_pb2.NetParameter


def test_layer_type_list_is_sorted_and_complete():
    types = caffe.layer_type_list()
    assert types == sorted(types)
    assert {"Convolution", "Python", "SoftmaxWithLoss", "InnerProduct"} <= set(types)


def test_nccl_is_absent_and_says_what_to_use():
    assert caffe.has_nccl() is False
    with pytest.raises(RuntimeError, match="torchrun"):
        caffe.NCCL(None, b"uid")
    with pytest.raises(caffe.CaffeError, match="docs/distributed.md"):
        caffe.NCCL.new_uid()


def test_mode_device_and_solver_bookkeeping():
    from torchcaffe.compat.runtime import mode_device
    caffe.set_mode_cpu()
    assert mode_device() == torch.device("cpu")
    caffe.set_mode_gpu()  # without CUDA: a warning, and the CPU
    assert mode_device().type == ("cuda" if torch.cuda.is_available() else "cpu")
    caffe.set_mode_cpu()
    caffe.set_solver_count(4)
    caffe.set_solver_rank(2)
    caffe.set_multiprocess(True)
    assert (caffe.solver_count(), caffe.solver_rank()) == (4, 2)
    caffe.set_solver_count(1)
    caffe.set_solver_rank(0)
    caffe.set_multiprocess(False)


def test_set_random_seed_makes_fillers_repeat(tmp_path):
    from .helpers import simple_net_file
    path = simple_net_file(tmp_path, 3)
    caffe.set_random_seed(5)
    first = caffe.Net(path, caffe.TRAIN).params["conv"][0].data.copy()
    caffe.set_random_seed(5)
    assert (caffe.Net(path, caffe.TRAIN).params["conv"][0].data == first).all()


def test_init_log_and_log(capsys):
    logger = logging.getLogger("torchcaffe")
    saved = (list(logger.handlers), logger.level)
    try:
        caffe.init_log()
        caffe.log("hello from pycaffe")
        err = capsys.readouterr().err
        assert err.startswith("I") and "] hello from pycaffe" in err
        caffe.init_log(2)
        caffe.log("hidden")
        assert "hidden" not in capsys.readouterr().err
        with pytest.raises(caffe.CaffeError, match="init_log"):
            caffe.init_log(7)
    finally:
        logger.handlers[:], logger.level = saved


def test_timer_measures_milliseconds():
    timer = caffe.Timer()
    timer.start()
    time.sleep(0.02)
    timer.stop()
    assert 15 <= timer.ms < 1000
    timer.start()
    assert timer.ms >= 0  # reading a running timer stops it
