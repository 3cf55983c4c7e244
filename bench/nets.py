"""torchcaffe against hand-written PyTorch on six classic nets, on the CPU or a GPU.

    python bench/nets.py [--quick] [--runs N] [--threads T] [--nets LeNet,ResNet-50] [--no-memory]
                         [--device cuda] [--amp bf16|fp16]

For each net (prototxts from ``../shared/corpus``, random weights drawn once and shared):

* (a) torchcaffe: ``net(data=x)``, the plain plan;
* (b) native: the hand-written module of ``bench/native/`` holding the same weights; before any
  timing the outputs of (a), (b) and (c) are checked equal within 1e-4 relative (the classifier's
  logits, taken by a forward hook, and the softmax output);
* (c) torchcaffe's optimized mode (``torchcaffe.net.optimize``), inference only.

Forward runs under ``torch.no_grad()``; forward+backward back-propagates a fixed random gradient
from the output into every parameter (``zero_grad(set_to_none=True)`` first, on both sides).
Each measurement is the median of ``--runs`` rounds after one warm-up round; within a round the
variants run one after another (interleaved A/B/C), so that load from other processes hits them
alike, and a pass shorter than ``MIN_SAMPLE_SECONDS`` repeats within its sample.
``torch.set_num_threads`` is fixed (``--threads``, default: the number of CPUs).

``--device cuda`` runs everything on the GPU (each pass ends with ``torch.cuda.synchronize()``);
``--amp bf16|fp16`` times every variant under ``torch.autocast`` of that dtype (the equality check
before timing stays in float32, which is what it verifies: the same architecture and weights).

Peak memory on the CPU: each (net, variant, pass) runs in a fresh subprocess, which builds the model and its
input, resets the kernel's high-water mark of its resident set (``/proc/self/clear_refs``), runs
the pass and reads ``VmHWM`` from ``/proc/self/status``: the figure is that peak minus the resident
size just before the pass, i.e. what the pass itself needed (weights and the Python/torch runtime
excluded, being the same on both sides; the optimized mode's folded weights are made before, with
``refresh()``, as part of its model). The subprocess runs with glibc's mmap threshold fixed at
64 KiB (``MALLOC_MMAP_THRESHOLD_``): every tensor block then gets its own mapping, returned to the
OS when freed, so the high-water mark is the peak of live tensor bytes, the same in every run. (With
glibc's default sliding threshold, a freed block may stay in the heap and be reused or not, and the
same pass measured one of two levels from run to run.) On a GPU the probe reads the caching
allocator instead: ``torch.cuda.max_memory_allocated()`` over the pass, less what was allocated
before it.

Also printed: the per-layer Python overhead of the plain plan, LeNet at batch 1.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import torch  # noqa: E402

import torchcaffe  # noqa: E402
from native import (CaffeNet, GoogLeNet, LeNet, MobileNetV1, ResNet50, SqueezeNet11,  # noqa: E402
                    load_caffe_weights)
from torchcaffe.amp import AMP_MODES  # noqa: E402
from torchcaffe.net.optimize import optimize  # noqa: E402

CORPUS = Path(os.environ.get("TORCHCAFFE_SHARED", REPO.parent / "shared")) / "corpus"
TOLERANCE = 1e-4
VARIANTS = ("torchcaffe", "native", "optimized")


@dataclass(frozen=True)
class BenchNet:
    name: str
    prototxt: str  # relative to the corpus
    batch: int
    native: Callable
    classifier: str  # the Caffe layer whose output is compared before the softmax

    def image_shape(self, net) -> tuple[int, ...]:
        return tuple(net.blobs["data"].shape[1:])


NETS = (
    BenchNet("LeNet", "bvlc_mnist/lenet.prototxt", 64, LeNet, "ip2"),
    BenchNet("CaffeNet", "bvlc_reference_caffenet/deploy.prototxt", 10, CaffeNet, "fc8"),
    BenchNet("GoogLeNet", "bvlc_googlenet/deploy.prototxt", 10, GoogLeNet, "loss3/classifier"),
    BenchNet("ResNet-50", "resnet/ResNet-50-deploy.prototxt", 8, ResNet50, "fc1000"),
    BenchNet("MobileNet-v1", "mobilenet_v1/mobilenet_deploy.prototxt", 8, MobileNetV1, "fc7"),
    BenchNet("SqueezeNet-1.1", "squeezenet_v1.1/deploy.prototxt", 10, SqueezeNet11, "conv10"),
)


# -- building the three variants -------------------------------------------------------------------
def build_net(spec: BenchNet, batch: int, seed: int = 0) -> torchcaffe.Net:
    """The corpus deploy net at ``batch``, every blob drawn at random (He-scaled weights, BatchNorm
    statistics around mean 0 / variance 1 with a scale factor of 2, Scale near 1)."""
    net = torchcaffe.Net(str(CORPUS / spec.prototxt), torchcaffe.TEST)
    shape = list(net.blobs["data"].shape)
    net.blobs["data"].reshape(batch, *shape[1:])
    net.reshape()
    randomize_blobs(net, seed)
    return net


def randomize_blobs(net: torchcaffe.Net, seed: int) -> None:
    """Draw every parameter blob of ``net`` (see :func:`build_net`)."""
    rng = np.random.default_rng(seed)
    for layer in net.layers:
        blobs = layer.blobs
        if layer.type == "BatchNorm":
            mean, variance, factor = blobs
            mean.data[...] = 2 * rng.normal(0, 0.1, mean.shape)
            variance.data[...] = 2 * rng.uniform(0.5, 1.5, variance.shape)
            factor.data[...] = 2
        elif layer.type == "Scale":
            for blob in blobs:
                blob.data[...] = rng.uniform(0.5, 1.5, blob.shape)
        else:
            for blob in blobs:
                fan_in = blob.count // blob.shape[0] if len(blob.shape) > 1 else 0
                blob.data[...] = rng.normal(0, np.sqrt(2 / fan_in), blob.shape) if fan_in else \
                    rng.uniform(-0.1, 0.1, blob.shape)


def build_native(spec: BenchNet, net: torchcaffe.Net) -> torch.nn.Module:
    model = spec.native()
    load_caffe_weights(model, net)
    return model.eval()


def build_variants(spec: BenchNet, batch: int, device: str = "cpu") -> dict[str, Callable]:
    """The three callables ``f(x) -> output tensor``, sharing one set of weights, on ``device``."""
    net = build_net(spec, batch)
    native = build_native(spec, net).to(device)
    net.to(device)
    runner = optimize(net)
    return {"torchcaffe": lambda x: net(data=x)["prob"], "native": native,
            "optimized": lambda x: runner(data=x)["prob"],
            "_modules": (net, native, runner)}


def sample_input(spec: BenchNet, batch: int, net, device: str = "cpu") -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return torch.rand((batch,) + spec.image_shape(net), generator=generator).to(device)


# -- checking --------------------------------------------------------------------------------------
def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return float((got - expected).abs().max() / expected.abs().max().clamp_min(1e-30))


def check_equal(spec: BenchNet, variants: dict, x: torch.Tensor) -> dict[str, float]:
    """Run the three variants once, capturing the classifier's output too; every pair within
    ``TOLERANCE`` or an AssertionError."""
    net, native, _ = variants["_modules"]
    captured: dict[str, torch.Tensor] = {}
    modules = {"torchcaffe": net.layer_dict[spec.classifier], "native": native.caffe_modules()[spec.classifier]}
    with torch.no_grad():
        for name in VARIANTS:
            module = modules.get(name)
            hook = None
            if module is not None:
                hook = module.register_forward_hook(
                    lambda m, i, out, name=name: captured.__setitem__(name, out.clone()))
            captured[name + ":prob"] = variants[name](x).clone()
            if hook is not None:
                hook.remove()
    errors = {"logits native": relative_error(captured["native"], captured["torchcaffe"]),
              "prob native": relative_error(captured["native:prob"], captured["torchcaffe:prob"]),
              "prob optimized": relative_error(captured["optimized:prob"], captured["torchcaffe:prob"])}
    bad = {k: v for k, v in errors.items() if not v <= TOLERANCE}
    assert not bad, f"{spec.name}: outputs differ beyond {TOLERANCE} relative: {bad}"
    return errors


# -- timing ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Setting:
    """Where and how the passes run: the device, and the autocast dtype (``amp``) if any."""

    device: str = "cpu"
    amp: str | None = None

    def autocast(self):
        if self.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(torch.device(self.device).type, dtype=AMP_MODES[self.amp])

    def synchronize(self) -> None:
        if torch.device(self.device).type == "cuda":
            torch.cuda.synchronize(self.device)

    def describe(self) -> str:
        return self.device + (f", autocast {self.amp}" if self.amp else ", float32")



def forward_pass(f: Callable, x: torch.Tensor, setting: Setting = Setting()) -> Callable[[], None]:
    def run():
        with torch.no_grad(), setting.autocast():
            f(x)
        setting.synchronize()
    return run


def training_pass(f: Callable, module: torch.nn.Module, x: torch.Tensor, grad: torch.Tensor,
                  setting: Setting = Setting()) -> Callable[[], None]:
    def run():
        module.zero_grad(set_to_none=True)
        with setting.autocast():
            out = f(x)
        out.backward(grad.to(out.dtype))
        setting.synchronize()
    return run


#: Shortest timed sample: a faster pass is repeated within one sample (as ``timeit`` does), so
#: that the scheduler's and the timer's noise stays small against it.
MIN_SAMPLE_SECONDS = 0.05


def interleaved_medians(passes: dict[str, Callable[[], None]], runs: int) -> dict[str, float]:
    """One warm-up round (which also sets how many times a fast pass repeats per sample), then
    ``runs`` rounds running each pass's sample in turn: the median seconds per pass."""
    times: dict[str, list[float]] = {name: [] for name in passes}
    repeats = dict.fromkeys(passes, 1)
    for round_ in range(runs + 1):
        for name, run in passes.items():
            start = time.perf_counter()
            for _ in range(repeats[name]):
                run()
            elapsed = time.perf_counter() - start
            if round_:
                times[name].append(elapsed / repeats[name])
            else:
                repeats[name] = max(1, math.ceil(MIN_SAMPLE_SECONDS / max(elapsed, 1e-9)))
    return {name: statistics.median(values) for name, values in times.items()}


def time_net(spec: BenchNet, batch: int, runs: int, setting: Setting = Setting()) -> tuple[dict, dict]:
    variants = build_variants(spec, batch, setting.device)
    net, native, _ = variants["_modules"]
    x = sample_input(spec, batch, net, setting.device)
    errors = check_equal(spec, variants, x)
    grad = torch.rand_like(variants["native"](x).detach())
    forward = interleaved_medians({name: forward_pass(variants[name], x, setting) for name in VARIANTS}, runs)
    training = interleaved_medians({"torchcaffe": training_pass(variants["torchcaffe"], net, x, grad, setting),
                                    "native": training_pass(native, native, x, grad, setting)}, runs)
    return {"forward": forward, "training": training}, errors


# -- memory (one fresh subprocess per measurement) -------------------------------------------------
def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def measure_memory_here(spec: BenchNet, batch: int, variant: str, kind: str,
                        setting: Setting = Setting()) -> float:
    """Peak memory growth (MB) of one pass, in this (fresh) process: resident set on the CPU,
    the caching allocator's allocations on a GPU."""
    variants = build_variants(spec, batch, setting.device)
    net, native, runner = variants["_modules"]
    runner.refresh()  # the folded weights belong to the model, as native's weights do, not to the pass
    x = sample_input(spec, batch, net, setting.device)
    module = net if variant == "torchcaffe" else native
    with torch.no_grad():
        out_shape = variants["native"](x[:1]).shape[1:]
    grad = torch.rand(x.shape[0], *out_shape, device=setting.device)
    run = forward_pass(variants[variant], x, setting) if kind == "forward" else \
        training_pass(variants[variant], module, x, grad, setting)
    del variants
    if torch.device(setting.device).type == "cuda":
        setting.synchronize()
        before = torch.cuda.memory_allocated(setting.device)
        torch.cuda.reset_peak_memory_stats(setting.device)
        run()
        return (torch.cuda.max_memory_allocated(setting.device) - before) / 2**20
    before = _status_kb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current resident size
    run()
    return (_status_kb("VmHWM") - before) / 1024


#: glibc's allocator with a fixed mmap threshold: each block of 64 KiB or more is mapped on its own
#: and unmapped when freed, so resident memory follows the live tensors exactly.
PROBE_ENVIRONMENT = {"MALLOC_MMAP_THRESHOLD_": "65536"}


def measure_memory(spec: BenchNet, batch: int, variant: str, kind: str, threads: int,
                   setting: Setting = Setting()) -> float:
    command = [sys.executable, __file__, "--memory-probe", spec.name, variant, kind, str(batch),
               "--threads", str(threads), "--device", setting.device] + (["--amp", setting.amp] if setting.amp else [])
    result = subprocess.run(command, capture_output=True, text=True, check=False,
                            env={**os.environ, **PROBE_ENVIRONMENT})
    if result.returncode != 0:
        raise RuntimeError(f"memory probe {spec.name}/{variant}/{kind} failed:\n{result.stderr[-2000:]}")
    return float(result.stdout.strip().splitlines()[-1])


# -- per-layer overhead ------------------------------------------------------------------------------
def lenet_overhead(rounds: int, setting: Setting = Setting()) -> dict[str, float]:
    """Plain torchcaffe against native LeNet at batch 1 (forward, no grad, one thread: at this size
    threads only add synchronisation): the difference per layer of the net, in microseconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _lenet_overhead(rounds, setting)
    finally:
        torch.set_num_threads(threads)


def _lenet_overhead(rounds: int, setting: Setting) -> dict[str, float]:
    spec = NETS[0]
    variants = build_variants(spec, 1, setting.device)
    net = variants["_modules"][0]
    x = sample_input(spec, 1, net, setting.device)
    repeat = 200

    def loop(f):
        def run():
            with torch.no_grad(), setting.autocast():
                for _ in range(repeat):
                    f(x)
            setting.synchronize()
        return run
    medians = interleaved_medians({name: loop(variants[name]) for name in ("torchcaffe", "native")}, rounds)
    tc, native = (medians[k] / repeat * 1e6 for k in ("torchcaffe", "native"))
    layers = len(net.layers)
    return {"torchcaffe_us": tc, "native_us": native, "layers": layers, "per_layer_us": (tc - native) / layers}


# -- the report --------------------------------------------------------------------------------------
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds, forward memory only (a smoke run)")
    parser.add_argument("--runs", type=int, default=None, help="timed rounds per pass (default 7, quick 3)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--nets", default="", help="comma-separated subset of: " + ", ".join(n.name for n in NETS))
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    parser.add_argument("--amp", choices=sorted(AMP_MODES), help="time under torch.autocast of this dtype")
    parser.add_argument("--memory-probe", nargs=4, metavar=("NET", "VARIANT", "PASS", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    setting = Setting(args.device, args.amp)
    by_name = {n.name: n for n in NETS}
    if args.memory_probe:
        name, variant, kind, batch = args.memory_probe
        print(f"{measure_memory_here(by_name[name], int(batch), variant, kind, setting):.1f}")
        return 0
    runs = args.runs or (3 if args.quick else 7)
    chosen = [by_name[n] for n in args.nets.split(",")] if args.nets else list(NETS)
    print(f"torch {torch.__version__}, {setting.describe()}, {args.threads} thread(s), median of {runs} "
          f"interleaved rounds, {device_model(setting.device)}")
    rows = []
    for spec in chosen:
        started = time.perf_counter()
        timings, errors = time_net(spec, spec.batch, runs, setting)
        memory = {}
        if not args.no_memory:
            kinds = ("forward",) if args.quick else ("forward", "training")
            for kind in kinds:
                for variant in VARIANTS if kind == "forward" else VARIANTS[:2]:
                    memory[(variant, kind)] = measure_memory(spec, spec.batch, variant, kind, args.threads, setting)
        rows.append((spec, timings, memory))
        worst = max(errors.values())
        print(f"  {spec.name}: outputs agree (worst relative difference {worst:.1e}); "
              f"{time.perf_counter() - started:.0f} s", flush=True)
    print()
    print_table(rows)
    overhead = lenet_overhead(5 if args.quick else 15, setting)
    print(f"\nPer-layer overhead, LeNet batch 1 forward (no grad, 1 thread): "
          f"torchcaffe {overhead['torchcaffe_us']:.0f} us, "
          f"native {overhead['native_us']:.0f} us, {overhead['layers']} layers -> "
          f"{overhead['per_layer_us']:.1f} us per layer")
    return 0


def print_table(rows) -> None:
    header = ("| net | batch | fwd tc ms | fwd native ms | fwd opt ms | tc/native fwd | opt/native fwd "
              "| fwd+bwd tc ms | fwd+bwd native ms | tc/native fwd+bwd "
              "| peak MB fwd tc/native/opt | peak MB fwd+bwd tc/native |")
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for spec, t, memory in rows:
        f, b = t["forward"], t["training"]
        mem_f = "/".join(f"{memory[(v, 'forward')]:.0f}" for v in VARIANTS) if memory else "-"
        trained = (VARIANTS[0], "training") in memory
        mem_b = "/".join(f"{memory[(v, 'training')]:.0f}" for v in VARIANTS[:2]) if trained else "-"
        print(f"| {spec.name} | {spec.batch} | {f['torchcaffe'] * 1e3:.1f} | {f['native'] * 1e3:.1f} | "
              f"{f['optimized'] * 1e3:.1f} | {f['torchcaffe'] / f['native']:.3f} | "
              f"{f['optimized'] / f['native']:.3f} | "
              f"{b['torchcaffe'] * 1e3:.1f} | {b['native'] * 1e3:.1f} | {b['torchcaffe'] / b['native']:.3f} | "
              f"{mem_f} | {mem_b} |")


def device_model(device: str) -> str:
    if torch.device(device).type == "cuda":
        return f"GPU: {torch.cuda.get_device_name(device)}, CUDA {torch.version.cuda}"
    return "CPU: " + cpu_model()


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip() + f" ({os.cpu_count()} CPUs)"
    except OSError:
        pass
    return f"unknown ({os.cpu_count()} CPUs)"


if __name__ == "__main__":
    sys.exit(main())
