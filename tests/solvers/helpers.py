"""A small training setup written into a temporary folder: HDF5 data, a conv net, a solver."""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

NET = """name: "small"
layer { name: "data" type: "HDF5Data" top: "data" top: "label" include { phase: TRAIN }
        hdf5_data_param { source: "train_h5.txt" batch_size: 4 } }
layer { name: "data" type: "HDF5Data" top: "data" top: "label" include { phase: TEST }
        hdf5_data_param { source: "test_h5.txt" batch_size: 4 } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 3 kernel_size: 3 weight_filler { type: "xavier" } } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" }
layer { name: "sc1" type: "Scale" bottom: "conv1" top: "conv1" scale_param { bias_term: true } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "ip1" type: "InnerProduct" bottom: "conv1" top: "ip1"
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip1" bottom: "label" top: "loss" }
layer { name: "accuracy" type: "Accuracy" bottom: "ip1" bottom: "label" top: "accuracy" include { phase: TEST } }
"""


def write_setup(folder: Path, solver: str, net: str = NET, rows: int = 8) -> Path:
    """``train.prototxt``, ``solver.prototxt`` (``net: "train.prototxt"`` plus ``solver``) and the
    data (``rows`` rows of 1x5x5 in train.h5 and test.h5); returns the solver path."""
    rng = np.random.default_rng(0)
    for name in ("train", "test"):
        with h5py.File(folder / f"{name}.h5", "w") as h5:
            h5.create_dataset("data", data=rng.standard_normal((rows, 1, 5, 5)).astype(np.float32))
            h5.create_dataset("label", data=rng.integers(0, 3, rows).astype(np.float32))
        (folder / f"{name}_h5.txt").write_text(f"{name}.h5\n")
    (folder / "train.prototxt").write_text(net)
    path = folder / "solver.prototxt"
    path.write_text(f'net: "train.prototxt"\nrandom_seed: 7\nsolver_mode: CPU\n{solver}\n')
    return path
