"""``make demo``: build LeNet from its prototxt and run forward and backward on random input.

Run ``python -m torchcaffe.demo [path/to/net.prototxt]``; without an argument it uses the LeNet
that ships with torchcaffe (``torchcaffe/models/lenet.prototxt``).
"""
from __future__ import annotations

import sys
import time
from importlib import resources

import numpy as np

import torchcaffe


def default_prototxt() -> str:
    return str(resources.files("torchcaffe") / "models" / "lenet.prototxt")


def fill_inputs(net: torchcaffe.Net, rng: np.random.Generator) -> None:
    """Random images in [0, 1) and random labels 0..9 (any integer-valued input is a label)."""
    for name in net.inputs:
        blob = net.blobs[name]
        if name == "label":
            blob.data[...] = rng.integers(0, 10, size=blob.shape)
        else:
            blob.data[...] = rng.random(blob.shape, dtype=np.float32)


def describe(net: torchcaffe.Net) -> None:
    width = max(len(name) for name in net.blobs) + 2
    print(f"{'blob':<{width}} {'shape':<20} {'|data| mean':>12} {'|diff| mean':>12}")
    for name, blob in net.blobs.items():
        print(f"{name:<{width}} {str(blob.shape):<20} {np.abs(blob.data).mean():>12.5f} "
              f"{np.abs(blob.diff).mean():>12.3e}")
    print(f"\n{'param':<{width}} {'shape':<20} {'|diff| mean':>12}")
    for layer, blobs in net.params.items():
        for i, blob in enumerate(blobs):
            print(f"{layer + '/' + str(i):<{width}} {str(blob.shape):<20} {np.abs(blob.diff).mean():>12.3e}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    prototxt = argv[0] if argv else default_prototxt()
    net = torchcaffe.Net(prototxt, torchcaffe.TRAIN)
    print(f"{net}\nlayers: " + ", ".join(f"{n} ({l.type})" for n, l in net.layer_dict.items()) + "\n")
    fill_inputs(net, np.random.default_rng(0))
    start = time.perf_counter()
    outputs = net.forward()
    net.backward()
    elapsed = time.perf_counter() - start
    describe(net)
    print("\noutputs: " + ", ".join(f"{k} = {float(np.asarray(v)):.5f}" for k, v in outputs.items()))
    print(f"forward + backward: {elapsed * 1000:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
