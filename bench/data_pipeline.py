"""Does the net ever wait on data? The data pipeline alone, and LeNet training with and without
loading ahead (Caffe's ``prefetch``), on LeNet-sized batches (64 x 1 x 28 x 28) from an LMDB
this script writes.

    python bench/data_pipeline.py [--images 2048] [--iters 60]

Printed, all measured in this run:

* the pipeline alone: images/s of the loader called directly (read + parse + transform), and
  of the Data layer's forward with prefetch (the batches come from the background thread);
* LeNet training steps (forward, backward, SGD update) fed by the Data layer with
  ``prefetch: 0`` (each batch loaded when the net asks) and ``prefetch: 4`` (Caffe's default):
  images/s, the share of the step spent in the data layer, how many batches were not ready
  when the net asked for them, and the ratios.

Runs in well under two minutes on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torchcaffe  # noqa: E402
from torchcaffe.data.datum import array_to_datum  # noqa: E402
from torchcaffe.data.db import create_database, imageset_key  # noqa: E402
from torchcaffe.io.prototxt import read_net  # noqa: E402

BATCH = 64

LENET_BODY = """
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" param { lr_mult: 1 } param { lr_mult: 2 }
        convolution_param { num_output: 20 kernel_size: 5 weight_filler { type: "xavier" } } }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2" param { lr_mult: 1 } param { lr_mult: 2 }
        convolution_param { num_output: 50 kernel_size: 5 weight_filler { type: "xavier" } } }
layer { name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "ip1" type: "InnerProduct" bottom: "pool2" top: "ip1" param { lr_mult: 1 } param { lr_mult: 2 }
        inner_product_param { num_output: 500 weight_filler { type: "xavier" } } }
layer { name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2" param { lr_mult: 1 } param { lr_mult: 2 }
        inner_product_param { num_output: 10 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }
"""


def write_lmdb(path: str, count: int) -> None:
    """``count`` random 1 x 28 x 28 uint8 digits-like Datums with labels 0..9."""
    rng = np.random.default_rng(0)
    with create_database(path, "lmdb") as db:
        for i in range(count):
            image = rng.integers(0, 256, (1, 28, 28), dtype=np.uint8)
            db.put(imageset_key(i, f"digit_{i}.png"), array_to_datum(image, int(i % 10)).SerializeToString())


def data_layer(source: str, prefetch: int) -> str:
    return (f'layer {{ name: "mnist" type: "Data" top: "data" top: "label" '
            f'data_param {{ source: "{source}" backend: LMDB batch_size: {BATCH} prefetch: {prefetch} }} '
            f'transform_param {{ scale: 0.00390625 }} }}')


def solver_text(source: str, prefetch: int) -> str:
    net = f'name: "LeNet" {data_layer(source, prefetch)} {LENET_BODY}'
    return (f"net_param {{ {net} }} base_lr: 0.01 momentum: 0.9 weight_decay: 0.0005 lr_policy: \"fixed\" "
            f"max_iter: 100000 display: 0 snapshot_after_train: false random_seed: 1")


def pipeline_alone(source: str, batches: int) -> tuple[float, float]:
    """images/s: the loader called directly, and the Data layer's forward with prefetch."""
    net = torchcaffe.Net(read_net(f'name: "d" {data_layer(source, 4)}'), torchcaffe.TRAIN)
    layer = net.layer_dict["mnist"]
    layer.loader()  # warm up
    start = time.perf_counter()
    for _ in range(batches):
        layer.loader()
    direct = batches * BATCH / (time.perf_counter() - start)
    layer()  # starts the thread
    time.sleep(0.2)
    start = time.perf_counter()
    for _ in range(batches):
        layer()
    through_layer = batches * BATCH / (time.perf_counter() - start)
    layer.close()
    return direct, through_layer


class DataWait:
    """Time spent inside the data layer's forward (waiting for or loading a batch)."""

    def __init__(self, layer):
        self.seconds = 0.0
        self._start = 0.0
        layer.register_forward_pre_hook(self._begin)
        layer.register_forward_hook(self._end)

    def _begin(self, module, args):
        self._start = time.perf_counter()

    def _end(self, module, args, out):
        self.seconds += time.perf_counter() - self._start


def training(source: str, prefetch: int, iters: int) -> dict:
    """SGD steps on LeNet: images/s, the share of step time spent in the data layer's forward,
    and (with prefetch) how many batches were not ready when the net asked and how long it waited."""
    solver = torchcaffe.SGDSolver(_solver_param(solver_text(source, prefetch)))
    layer = solver.net.layer_dict["mnist"]
    in_layer = DataWait(layer)
    solver.step(5)  # warm up: the first batches, torch's kernels
    time.sleep(0.2)  # let the prefetch thread fill its queue, as it does while Caffe sets up
    in_layer.seconds, waits, waited = 0.0, layer.batches.waits, layer.batches.wait_seconds
    start = time.perf_counter()
    solver.step(iters)
    elapsed = time.perf_counter() - start
    layer.close()
    return {"rate": iters * BATCH / elapsed, "in_layer": in_layer.seconds / elapsed,
            "waits": layer.batches.waits - waits, "waited": layer.batches.wait_seconds - waited}


def _solver_param(text: str):
    from google.protobuf import text_format

    from torchcaffe.proto import caffe_pb2
    return text_format.Parse(text, caffe_pb2.SolverParameter())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2048, help="records in the LMDB")
    parser.add_argument("--iters", type=int, default=60, help="training iterations per setting")
    args = parser.parse_args(argv)
    logging.getLogger("torchcaffe").setLevel(logging.WARNING)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as folder:
        source = os.path.join(folder, "digits_lmdb")
        start = time.perf_counter()
        write_lmdb(source, args.images)
        print(f"wrote {args.images} Datums of 1x28x28 to LMDB in {time.perf_counter() - start:.2f} s\n")

        direct, through = pipeline_alone(source, batches=args.images // BATCH)
        print("pipeline alone (batches of 64 x 1 x 28 x 28):")
        print(f"  loader, called directly        {direct:10.0f} images/s")
        print(f"  Data layer forward, prefetch 4 {through:10.0f} images/s")

        results = {p: training(source, p, args.iters) for p in (0, 4)}
        print(f"\nLeNet training (forward + backward + SGD update), {args.iters} iterations each:")
        for prefetch, r in results.items():
            print(f"  prefetch {prefetch}: {r['rate']:8.0f} images/s, {100 * r['in_layer']:5.1f}% of the time "
                  f"in the data layer's forward")
        without, with_prefetch = results[0], results[4]
        print("\nratios (same run):")
        print(f"  training with prefetch / without        {with_prefetch['rate'] / without['rate']:6.2f}x")
        print(f"  pipeline alone / training with prefetch {direct / with_prefetch['rate']:6.1f}x  "
              f"(>1: the loader outruns the net)")
        waits = with_prefetch["waits"]
        verdict = "never waited" if waits == 0 else f"waited for {waits} of {args.iters} batches"
        print(f"  with prefetch the net {verdict} on data ({1000 * with_prefetch['waited']:.1f} ms in all); "
              f"without, every batch is loaded while the net waits")
    return 0


if __name__ == "__main__":
    sys.exit(main())
