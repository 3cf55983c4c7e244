"""`torchcaffe train` on the LeNet solver against a hand-written PyTorch loop doing the same steps.

    python bench/train_lenet.py [--iters 300] [--repeats 3] [--threads 2]

Both train the demo's LeNet (``examples/digits``) on the scikit-learn digits, from the same LMDB
(written by this script with ``convert_imageset``), batch 64, for ``--iters`` iterations of
Caffe's SGD (momentum 0.9, weight decay 5e-4, ``inv`` policy, ``lr_mult: 2`` on biases), with no
test passes:

* **torchcaffe**: ``torchcaffe train --solver ...`` in this process (net construction, the Data
  layer with its prefetch thread, Caffe's solver, the log lines);
* **native**: an ``nn.Module`` LeNet written here, reading the LMDB with a cursor and decoding each
  ``Datum`` itself, and the same update written as Caffe states it.

The runs alternate (torchcaffe, native, torchcaffe, ...) and the medians of the wall times are
compared: ``ratio = torchcaffe / native`` (below 1: torchcaffe is faster).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import lmdb
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from torchcaffe import cli, demo  # noqa: E402
from torchcaffe.io.prototxt import read_net  # noqa: E402
from torchcaffe.proto import caffe_pb2  # noqa: E402

BATCH, SCALE = 64, 0.00390625
BASE_LR, MOMENTUM, DECAY, GAMMA, POWER = 0.01, 0.9, 0.0005, 0.0001, 0.75


def write_setup(folder: Path, iters: int) -> Path:
    """The digits LMDBs, the net with its sources there and a solver without test passes."""
    images, labels = demo.digit_images()
    lists = demo.write_image_lists(folder, images, labels)
    demo.make_databases(folder, lists)
    net = read_net(str(ROOT / demo.EXAMPLE / "train_test.prototxt"))
    for layer in net.layer:
        if layer.type == "Data":
            layer.data_param.source = str(folder / f"digits_{'train' if layer.include[0].phase == caffe_pb2.TRAIN else 'test'}_lmdb")
    from google.protobuf import text_format

    (folder / "net.prototxt").write_text(text_format.MessageToString(net))
    (folder / "solver.prototxt").write_text(
        f'net: "{folder / "net.prototxt"}" base_lr: {BASE_LR} momentum: {MOMENTUM} weight_decay: {DECAY} '
        f'lr_policy: "inv" gamma: {GAMMA} power: {POWER} display: 100 max_iter: {iters} '
        f'snapshot_after_train: false random_seed: 1701 solver_mode: CPU\n')
    return folder / "solver.prototxt"


def time_torchcaffe(solver: Path) -> float:
    with open(os.devnull, "w") as quiet, contextlib.redirect_stderr(quiet):  # the log goes to the file
        start = time.perf_counter()
        status = cli.main(["train", "--solver", str(solver), "--log_file", str(solver.with_suffix(".log"))])
        elapsed = time.perf_counter() - start
    assert status == 0, "torchcaffe train failed"
    return elapsed


class LeNet(nn.Module):
    """The demo's net, by hand."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 20, 5)
        self.conv2 = nn.Conv2d(20, 50, 5)
        self.ip1 = nn.Linear(800, 500)
        self.ip2 = nn.Linear(500, 10)
        for layer in (self.conv1, self.conv2, self.ip1, self.ip2):
            fan_in = layer.weight[0].numel()
            bound = (3.0 / fan_in) ** 0.5  # Caffe's xavier filler
            nn.init.uniform_(layer.weight, -bound, bound)
            nn.init.zeros_(layer.bias)

    def forward(self, x):
        x = F.max_pool2d(self.conv1(x), 2, 2)
        x = F.max_pool2d(self.conv2(x), 2, 2)
        return self.ip2(F.relu(self.ip1(x.flatten(1))))


def batches(env):
    """Endless (images, labels) batches from the LMDB, wrapping around as Caffe's Data layer does."""
    datum = caffe_pb2.Datum()
    with env.begin() as txn:
        cursor = txn.cursor()
        cursor.first()
        while True:
            images = np.empty((BATCH, 1, 28, 28), np.float32)
            labels = np.empty(BATCH, np.int64)
            for i in range(BATCH):
                datum.ParseFromString(cursor.value())
                images[i] = np.frombuffer(datum.data, np.uint8).reshape(1, 28, 28) * np.float32(SCALE)
                labels[i] = datum.label
                if not cursor.next():
                    cursor.first()
            yield torch.from_numpy(images), torch.from_numpy(labels)


def time_native(env, iters: int) -> float:
    start = time.perf_counter()
    torch.manual_seed(1701)
    model = LeNet()
    params = list(model.parameters())
    lr_mults = [2.0 if p.dim() == 1 else 1.0 for p in params]
    history = [torch.zeros_like(p) for p in params]
    data = batches(env)
    for it in range(iters):
        images, labels = next(data)
        for p in params:
            p.grad = None
        F.cross_entropy(model(images), labels).backward()
        rate = BASE_LR * (1 + GAMMA * it) ** -POWER
        with torch.no_grad():
            for p, mult, h in zip(params, lr_mults, history):
                g = p.grad.add(p, alpha=DECAY)           # decay added to the gradient
                h.mul_(MOMENTUM).add_(g, alpha=rate * mult)  # lr inside the momentum buffer
                p.sub_(h)
    return time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        solver = write_setup(Path(tmp), args.iters)
        # py-lmdb opens a path once per process, and torchcaffe keeps its handle for reuse: the
        # native loop reads a copy of the database
        source = shutil.copytree(Path(tmp) / "digits_train_lmdb", Path(tmp) / "native_lmdb")
        source = str(source)
        env = lmdb.open(source, readonly=True, lock=False)
        time_native(env, 5)  # warm-up of both paths
        time_torchcaffe(write_setup_short(solver))
        ours, native = [], []
        for _ in range(args.repeats):
            ours.append(time_torchcaffe(solver))
            native.append(time_native(env, args.iters))
    a, b = statistics.median(ours), statistics.median(native)
    print(f"LeNet on the digits, batch {BATCH}, {args.iters} iterations, {args.threads} threads, "
          f"median of {args.repeats} alternating runs")
    print(f"{'':<22}{'wall s':>9}{'iter/s':>9}")
    print(f"{'torchcaffe train':<22}{a:>9.2f}{args.iters / a:>9.1f}")
    print(f"{'hand-written PyTorch':<22}{b:>9.2f}{args.iters / b:>9.1f}")
    print(f"ratio torchcaffe / native: {a / b:.3f}")
    return 0


def write_setup_short(solver: Path) -> Path:
    """A 10-iteration copy of the solver (the warm-up run)."""
    short = solver.with_name("solver_warmup.prototxt")
    text = solver.read_text()
    short.write_text(text.replace(f"max_iter: {text.split('max_iter: ')[1].split()[0]}", "max_iter: 10"))
    return short


if __name__ == "__main__":
    sys.exit(main())
