"""Soak test: train the digits demo (examples/digits, LeNet on scikit-learn's digits, LMDB data)
for many epochs with snapshots and test passes, and check that memory and file handles stay flat.

    python bench/soak.py [--epochs 30] [--rss-growth-mb 64] [--warmup 3]

Prints RSS (resident memory, from /proc/self/statm) and the number of open file descriptors
(/proc/self/fd) at the start, after the warm-up epochs and at the end; exits 1 when RSS grew by
more than ``--rss-growth-mb`` after the warm-up or when descriptors leaked. One epoch is
ceil(1437 / 64) = 23 iterations; every epoch snapshots and tests once. Linux only (/proc).
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRAIN_IMAGES = 1437
BATCH = 64


def rss_mb() -> float:
    """Resident memory of this process in MiB."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def make_solver(snapshot_dir: str, epochs: int):
    import torchcaffe
    from torchcaffe.io.prototxt import read_solver
    param = read_solver(str(ROOT / "examples/digits/solver.prototxt"))
    per_epoch = math.ceil(TRAIN_IMAGES / BATCH)
    param.max_iter = per_epoch * epochs
    param.snapshot = per_epoch
    param.test_interval = per_epoch
    param.display = 0
    param.snapshot_prefix = os.path.join(snapshot_dir, "soak")
    return torchcaffe.get_solver(param, source="soak"), per_epoch


def soak(epochs: int, warmup: int, on_epoch=None) -> list[tuple[int, float, int]]:
    """Train ``epochs`` epochs from the repository root; returns (epoch, RSS MiB, fds) after each,
    with epoch 0 the state before training."""
    logging.getLogger("torchcaffe").setLevel(logging.WARNING)
    cwd = os.getcwd()
    snapshot_dir = tempfile.mkdtemp(prefix="torchcaffe-soak-")
    os.chdir(ROOT)  # the demo's paths are relative to the repository root, as in Caffe
    try:
        solver, per_epoch = make_solver(snapshot_dir, epochs)
        samples = [(0, rss_mb(), open_fds())]
        for epoch in range(1, epochs + 1):
            solver.step(per_epoch)
            for old in sorted(Path(snapshot_dir).glob("soak_iter_*"))[:-4]:
                old.unlink()  # keep the disk use flat too
            samples.append((epoch, rss_mb(), open_fds()))
            if on_epoch:
                on_epoch(*samples[-1])
        return samples
    finally:
        os.chdir(cwd)
        shutil.rmtree(snapshot_dir, ignore_errors=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rss-growth-mb", type=float, default=64.0)
    args = parser.parse_args(argv)
    if not (ROOT / "examples/digits/data/digits_train_lmdb").exists():
        print("examples/digits/data is missing: run `make demo` first", file=sys.stderr)
        return 2
    start = time.perf_counter()
    samples = soak(args.epochs, args.warmup,
                   lambda e, r, f: print(f"epoch {e:3d}: RSS {r:8.1f} MiB, {f} open fds", flush=True))
    _, rss0, fds0 = samples[0]
    _, rss_w, fds_w = samples[min(args.warmup, len(samples) - 1)]
    _, rss_end, fds_end = samples[-1]
    print(f"\n{args.epochs} epochs ({args.epochs * math.ceil(TRAIN_IMAGES / BATCH)} iterations, a snapshot and "
          f"a test pass each epoch) in {time.perf_counter() - start:.0f} s")
    print(f"RSS: start {rss0:.1f} MiB, after warm-up {rss_w:.1f} MiB, end {rss_end:.1f} MiB "
          f"(growth after warm-up {rss_end - rss_w:+.1f} MiB, limit {args.rss_growth_mb:g})")
    print(f"open fds: start {fds0}, after warm-up {fds_w}, end {fds_end}")
    failed = rss_end - rss_w > args.rss_growth_mb or fds_end > fds_w
    print("FAIL" if failed else "OK")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
