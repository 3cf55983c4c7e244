"""Nets the compat tests share: the small net of pycaffe's own tests, written as files."""
from __future__ import annotations

import numpy as np

SIMPLE_NET = """name: "testnet" force_backward: true
layer {{ type: "DummyData" name: "data" top: "data" top: "label"
  dummy_data_param {{ num: 5 channels: 2 height: 3 width: 4
                      num: 5 channels: 1 height: 1 width: 1
                      data_filler {{ type: "gaussian" std: 1 }}
                      data_filler {{ type: "constant" }} }} }}
layer {{ type: "Convolution" name: "conv" bottom: "data" top: "conv"
  convolution_param {{ num_output: 11 kernel_size: 2 pad: 3
                       weight_filler {{ type: "gaussian" std: 1 }}
                       bias_filler {{ type: "constant" value: 2 }} }}
  param {{ decay_mult: 1 }} param {{ decay_mult: 0 }} }}
layer {{ type: "InnerProduct" name: "ip" bottom: "conv" top: "ip"
  inner_product_param {{ num_output: {num_output}
                         weight_filler {{ type: "gaussian" std: 2.5 }}
                         bias_filler {{ type: "constant" value: -3 }} }} }}
layer {{ type: "SoftmaxWithLoss" name: "loss" bottom: "ip" bottom: "label" top: "loss" }}
"""


def simple_net_file(tmp_path, num_output: int = 12) -> str:
    """pycaffe's test net: DummyData -> Convolution -> InnerProduct -> SoftmaxWithLoss."""
    path = tmp_path / f"simple_{num_output}.prototxt"
    path.write_text(SIMPLE_NET.format(num_output=num_output))
    return str(path)


def fill_labels(net, num_output: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    net.blobs["label"].data[...] = rng.integers(0, num_output, size=net.blobs["label"].data.shape)
