"""How fast torchcaffe reads and writes a large ``.caffemodel``.

    python bench/load_caffemodel.py [--mb 500] [--baseline-mb 40]

Writes a synthetic VGG-16-shaped caffemodel of about ``--mb`` MB into a temporary directory with
``write_caffemodel``, then times (best of 3, file in the page cache):

* ``read_weights`` alone;
* ``read_weights`` + ``torch.from_numpy(blob).copy_()`` into preallocated parameters, once with
  the arrays as returned (views into the file buffer) and once with each array copied first,
  which is what returning copies would cost;
* the baseline, protobuf ``NetParameter.ParseFromString`` + ``np.array(blob.data)``, on a smaller
  file made of the net's first layers (at least ``--baseline-mb`` MB, to bound its memory), next
  to ``read_weights`` on the same file; the ratio compares MB/s;
* ``write_caffemodel`` (includes the fsync before the atomic rename).

The temporary directory is removed at the end, also on failure.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from torchcaffe.io.weights import read_weights, write_caffemodel  # noqa: E402
from torchcaffe.proto import caffe_pb2  # noqa: E402

MB = 1e6

# (name, type, weight shape) for VGG-16; fc6's input width is scaled to hit the target size.
_VGG16_CONVS = [
    ("conv1_1", 64, 3), ("conv1_2", 64, 64),
    ("conv2_1", 128, 64), ("conv2_2", 128, 128),
    ("conv3_1", 256, 128), ("conv3_2", 256, 256), ("conv3_3", 256, 256),
    ("conv4_1", 512, 256), ("conv4_2", 512, 512), ("conv4_3", 512, 512),
    ("conv5_1", 512, 512), ("conv5_2", 512, 512), ("conv5_3", 512, 512),
]


def vgg_like_layers(target_mb: float) -> list[tuple[str, str, list[tuple[int, ...]]]]:
    """Layer names, types and blob shapes of a VGG-16-like net of about ``target_mb`` MB.

    Full VGG-16 is 553 MB; below that, channel counts and the fc width shrink with the square
    root of the size, and fc6's input width always takes up the rest.
    """
    shrink = min(1.0, target_mb / 553.0) ** 0.5
    width = lambda n: max(1, int(n * shrink))  # noqa: E731
    layers = [(name, "Convolution", [(width(out), 3 if inp == 3 else width(inp), 3, 3), (width(out),)])
              for name, out, inp in _VGG16_CONVS]
    fc = width(4096)
    tail = [("fc7", "InnerProduct", [(fc, fc), (fc,)]), ("fc8", "InnerProduct", [(1000, fc), (1000,)])]
    fixed = sum(int(np.prod(s)) for _, _, shapes in layers + tail for s in shapes) + fc
    fc6_inputs = max(1, int((target_mb * MB / 4 - fixed) / fc))
    return layers + [("fc6", "InnerProduct", [(fc, fc6_inputs), (fc,)])] + tail


def first_layers(layers, target_mb: float):
    """The leading layers of ``layers`` that make up at least ``target_mb`` MB (the baseline slice)."""
    chosen, total = [], 0.0
    for layer in layers:
        if total >= target_mb:
            break
        chosen.append(layer)
        total += sum(4 * int(np.prod(s)) for s in layer[2]) / MB
    return chosen


def build_net(layers) -> tuple[caffe_pb2.NetParameter, list[list[np.ndarray]]]:
    """The NetParameter (no blobs) and random float32 blobs for ``layers``."""
    rng = np.random.default_rng(0)
    net = caffe_pb2.NetParameter(name="vgg_like")
    blobs = []
    bottom = "data"
    for name, type_, shapes in layers:
        layer = net.layer.add(name=name, type=type_, bottom=[bottom], top=[name])
        if type_ == "Convolution":
            layer.convolution_param.num_output = shapes[0][0]
            layer.convolution_param.kernel_size.append(3)
            layer.convolution_param.pad.append(1)
        else:
            layer.inner_product_param.num_output = shapes[0][0]
        layer.phase = caffe_pb2.TEST
        blobs.append([rng.standard_normal(s, dtype=np.float32) for s in shapes])
        bottom = name
    return net, blobs


def best_of(repeats: int, action) -> float:
    """The fastest of ``repeats`` timed calls, in seconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return min(times)


def load_into_params(path: str, params: list[list[torch.Tensor]], copy_first: bool) -> None:
    """read_weights, then copy every blob into preallocated torch parameters."""
    for layer, targets in zip(read_weights(path), params):
        for blob, target in zip(layer.blobs, targets):
            array = blob.data.copy() if copy_first else blob.data
            target.copy_(torch.from_numpy(array))


def protobuf_baseline(path: str) -> None:
    """What loading costs when protobuf parses the message and numpy converts each float list."""
    net = caffe_pb2.NetParameter()
    with open(path, "rb") as f:
        net.ParseFromString(f.read())
    for layer in net.layer:
        for blob in layer.blobs:
            np.array(blob.data, dtype=np.float32).reshape(tuple(blob.shape.dim))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=float, default=500, help="size of the synthetic caffemodel (MB)")
    parser.add_argument("--baseline-mb", type=float, default=40,
                        help="size for the protobuf baseline (MB)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    temp_dir = tempfile.mkdtemp(prefix="torchcaffe_bench_")
    try:
        rows = run(args, temp_dir)
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)
    print_table(rows)


def run(args, temp_dir: str) -> list[tuple[str, float, float]]:
    """All timings as ``(what, megabytes, seconds)`` rows."""
    rows = []
    layers = vgg_like_layers(args.mb)
    net, blobs = build_net(layers)
    path = os.path.join(temp_dir, "big.caffemodel")
    write_seconds = best_of(args.repeats, lambda: write_caffemodel(path, net, blobs))
    size_mb = os.path.getsize(path) / MB
    rows.append(("write_caffemodel", size_mb, write_seconds))

    rows.append(("read_weights", size_mb, best_of(args.repeats, lambda: read_weights(path))))
    params = [[torch.empty(b.shape) for b in layer_blobs] for layer_blobs in blobs]
    del blobs
    rows.append(("read_weights + copy_ (views)", size_mb,
                 best_of(args.repeats, lambda: load_into_params(path, params, copy_first=False))))
    rows.append(("read_weights + copy_ (arrays copied)", size_mb,
                 best_of(args.repeats, lambda: load_into_params(path, params, copy_first=True))))
    check_loaded(path, params)
    del params

    small_net, small_blobs = build_net(first_layers(layers, args.baseline_mb))
    small_path = os.path.join(temp_dir, "small.caffemodel")
    write_caffemodel(small_path, small_net, small_blobs)
    small_mb = os.path.getsize(small_path) / MB
    rows.append(("read_weights (baseline size)", small_mb,
                 best_of(args.repeats, lambda: read_weights(small_path))))
    rows.append(("protobuf parse + np.array (baseline)", small_mb,
                 best_of(min(args.repeats, 2), lambda: protobuf_baseline(small_path))))
    return rows


def check_loaded(path: str, params: list[list[torch.Tensor]]) -> None:
    """The benchmark must have loaded the right numbers."""
    layers = read_weights(path)
    assert np.array_equal(layers[-1].blobs[0].data, params[-1][0].numpy())


def print_table(rows: list[tuple[str, float, float]]) -> None:
    """One line per timing, then the speed-up over protobuf."""
    print(f"{'what':40s} {'MB':>9s} {'seconds':>9s} {'MB/s':>9s}")
    for what, size_mb, seconds in rows:
        print(f"{what:40s} {size_mb:9.1f} {seconds:9.3f} {size_mb / seconds:9.0f}")
    speed = {what: size_mb / seconds for what, size_mb, seconds in rows}
    ratio = speed["read_weights"] / speed["protobuf parse + np.array (baseline)"]
    print(f"read_weights is {ratio:.0f}x faster than protobuf parse + np.array "
          f"(baseline measured at its size and scaled by MB/s)")


if __name__ == "__main__":
    main()
