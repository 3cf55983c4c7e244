"""ResNet-50 training throughput: torchcaffe's SGD solver against a native PyTorch training loop.

    python bench/train_resnet50.py --device cuda [--batch 256] [--amp bf16|fp16|none]
                                   [--no-channels-last] [--iters 10] [--rounds 5]

The issue's GPU setting is the default on a GPU: batch 256, channels_last, ``--amp bf16``. On the
CPU the defaults are a smoke run's (batch 4, float32) and the figures mean little.

Both sides train the same network from the same weights on one fixed random batch:

* **torchcaffe**: ``ResNet-50-deploy.prototxt`` from ``../shared/corpus`` turned into a training net
  (an ``Input`` layer with data and label, BatchNorm computing batch statistics, the final
  ``Softmax`` replaced by ``SoftmaxWithLoss``), stepped by ``SGDSolver.step`` (Caffe's update:
  momentum 0.9, weight decay 1e-4, lr 0.01); channels_last through
  ``solver.net.to(memory_format=torch.channels_last)``, AMP through the solver's ``amp=``;
* **native**: ``bench/native/resnet50.py`` in train mode, ``F.cross_entropy`` and
  ``torch.optim.SGD`` with the same hyper-parameters, under ``torch.autocast`` (and a
  ``GradScaler`` for fp16), model and input in channels_last.

Before timing, the first loss of both is checked equal within 1e-4 relative (float32). Then
``--rounds`` rounds alternate ``--iters`` iterations of each side (after a warm-up round); a
side's figure is the median of its rounds' images per second. There is no "optimized" row: the
optimized mode (``Net(optimize=True)``) is inference-only, folding BatchNorm statistics that
training changes.
"""
from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from nets import AMP_MODES, CORPUS, Setting, device_model, randomize_blobs  # noqa: E402
from native import ResNet50, load_caffe_weights  # noqa: E402

import torchcaffe  # noqa: E402
from torchcaffe.io.prototxt import read_net  # noqa: E402
from torchcaffe.proto import caffe_pb2  # noqa: E402

PROTOTXT = "resnet/ResNet-50-deploy.prototxt"
BASE_LR, MOMENTUM, DECAY, MOVING_AVERAGE = 0.01, 0.9, 1e-4, 0.999
TOLERANCE = 1e-4


def training_net(batch: int) -> caffe_pb2.NetParameter:
    """The corpus deploy net as a TRAIN net taking ``data`` (batch, 3, 224, 224) and ``label``."""
    deploy = read_net(str(CORPUS / PROTOTXT))
    net = caffe_pb2.NetParameter(name=deploy.name)
    net.state.phase = caffe_pb2.TRAIN
    inputs = net.layer.add(name="data", type="Input", top=["data", "label"])
    inputs.input_param.shape.add(dim=[batch, 3, 224, 224])
    inputs.input_param.shape.add(dim=[batch])
    for layer in deploy.layer:
        if layer.type == "Input":  # the deploy net's own input (read_net upgrades input_dim to one)
            continue
        if layer.type == "Softmax":
            net.layer.add(name="loss", type="SoftmaxWithLoss", bottom=[layer.bottom[0], "label"], top=["loss"])
            continue
        copy = net.layer.add()
        copy.CopyFrom(layer)
        if copy.type == "BatchNorm":
            copy.batch_norm_param.ClearField("use_global_stats")  # TRAIN: batch statistics
    return net


def build_solver(batch: int, setting: Setting, channels_last: bool):
    param = caffe_pb2.SolverParameter(base_lr=BASE_LR, momentum=MOMENTUM, weight_decay=DECAY,
                                      lr_policy="fixed", max_iter=10**9, display=0, random_seed=1)
    param.net_param.CopyFrom(training_net(batch))
    solver = torchcaffe.SGDSolver(param, device=setting.device, amp=setting.amp)
    randomize_blobs(solver.net, seed=0)
    if channels_last:
        solver.net.to(memory_format=torch.channels_last)
    return solver


class NativeTraining:
    """The hand-written loop: one ``step()`` is forward, loss, backward and ``optim.SGD``."""

    def __init__(self, net: torchcaffe.Net, setting: Setting, channels_last: bool):
        model = ResNet50()
        load_caffe_weights(model, net)
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.momentum = 1 - MOVING_AVERAGE
        self.model = model.to(setting.device).train()
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=BASE_LR, momentum=MOMENTUM,
                                         weight_decay=DECAY)
        self.scaler = torch.amp.GradScaler(torch.device(setting.device).type) if setting.amp == "fp16" else None
        self.setting = setting

    def loss(self, x: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        logits = self.model.logits(x)
        return F.cross_entropy(logits.float(), label)

    def step(self, x: torch.Tensor, label: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        with self.setting.autocast():
            loss = self.loss(x, label)
        if self.scaler is None:
            loss.backward()
            self.optimizer.step()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()


def check_first_loss(solver, native: NativeTraining, x: torch.Tensor, label: torch.Tensor) -> float:
    """Both losses on the first batch, in float32 (BatchNorm's running statistics move on both
    sides alike, as the first training iteration would move them)."""
    with torch.no_grad():
        ours = float(solver.net.forward()["loss"])
        theirs = float(native.loss(x, label))
    error = abs(ours - theirs) / abs(theirs)
    assert error <= TOLERANCE, f"first loss: torchcaffe {ours} against native {theirs} ({error:.1e} relative)"
    return error


def throughput(run, iters: int, batch: int, setting: Setting) -> float:
    setting.synchronize()
    start = time.perf_counter()
    run(iters)
    setting.synchronize()
    return iters * batch / (time.perf_counter() - start)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, help="default 256 on a GPU, 4 on the CPU")
    parser.add_argument("--amp", choices=sorted(AMP_MODES) + ["none"], help="default bf16 on a GPU, none on the CPU")
    parser.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    parser.add_argument("--iters", type=int, default=10, help="iterations per round and side")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    on_gpu = torch.device(args.device).type == "cuda"
    batch = args.batch or (256 if on_gpu else 4)
    amp = args.amp or ("bf16" if on_gpu else "none")
    setting = Setting(args.device, None if amp == "none" else amp)
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.getLogger("torchcaffe").setLevel(logging.WARNING)

    solver = build_solver(batch, setting, args.channels_last)
    native = NativeTraining(solver.net, setting, args.channels_last)
    generator = torch.Generator().manual_seed(2)
    x = torch.rand(batch, 3, 224, 224, generator=generator)
    label = torch.randint(0, 1000, (batch,), generator=generator)
    solver.net.blobs["data"].data[...] = x.numpy()
    solver.net.blobs["label"].data[...] = label.numpy()
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    x = x.to(args.device, memory_format=memory_format)
    label = label.to(args.device)
    error = check_first_loss(solver, native, x, label)

    def native_steps(iters: int) -> None:
        for _ in range(iters):
            native.step(x, label)
    sides = {"torchcaffe": solver.step, "native": native_steps}
    rates: dict[str, list[float]] = {name: [] for name in sides}
    for round_ in range(args.rounds + 1):
        for name, run in sides.items():
            rate = throughput(run, args.iters, batch, setting)
            if round_:  # round 0 warms up (cuDNN's algorithm search, the allocator's pools)
                rates[name].append(rate)
    medians = {name: statistics.median(values) for name, values in rates.items()}
    print(f"torch {torch.__version__}, {device_model(args.device)}, ResNet-50 training, batch {batch}, "
          f"{'channels_last' if args.channels_last else 'contiguous'}, "
          f"{'float32' if setting.amp is None else 'autocast ' + setting.amp}, "
          f"median of {args.rounds} rounds of {args.iters} iterations (first losses agree: {error:.1e})")
    print(f"torchcaffe {medians['torchcaffe']:.1f} images/s, native {medians['native']:.1f} images/s, "
          f"ratio {medians['torchcaffe'] / medians['native']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
