"""``make demo``: train LeNet on real handwritten digits, the Caffe way, with nothing to download.

The digits are the 1,797 8x8 images that ship inside scikit-learn (``load_digits``). The demo

1. writes them as PNG files with ``train.txt``/``test.txt`` image lists (360 test images, 1,437 training);
2. turns the lists into LMDB databases with ``convert_imageset`` (grey, resized to 28x28, the
   training list shuffled), as Caffe's ``convert_imageset`` tool would;
3. trains ``examples/digits/solver.prototxt`` through ``torchcaffe train`` (Caffe's log lines, a
   progress bar on a terminal, a test pass every ``test_interval`` iterations, snapshots);
4. reloads the final snapshot in a TEST net and measures its accuracy on the whole test set
   (the demo fails below ``--min-accuracy``, 0.95 by default);
5. plots the loss and accuracy curves from the log (``torchcaffe plot``) into a PNG.

Run ``python -m torchcaffe.demo [--max-iter N] [--workdir DIR]``. The prototxts name their
files relative to the repository root (as Caffe's ``examples/`` do), so the demo runs there;
everything it writes goes under ``examples/digits/`` (``data/``, ``snapshots/``, ``train.log``,
``curves.png``), which git ignores.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from google.protobuf import text_format

from . import TEST, Net, cli
from .data.image import encode_image
from .data.tools import convert_imageset
from .errors import CaffeError
from .io.files import atomic_output_file
from .io.prototxt import read_solver
from .plot import plot_log

EXAMPLE = Path("examples") / "digits"
TEST_IMAGES = 360  # 3 test batches of 120
SPLIT_SEED = 0


def repository_root() -> Path:
    """The checkout this module runs from (the folder holding ``examples/digits``)."""
    for folder in Path(__file__).resolve().parents:
        if (folder / EXAMPLE / "solver.prototxt").is_file():
            return folder
    raise SystemExit("torchcaffe demo: examples/digits/solver.prototxt not found; run the demo from a "
                     "checkout of torchcaffe (make demo)")


def digit_images() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as uint8 grey images (values 0..16 stretched to 0..255) and labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    return images, digits.target.astype(int)


def write_image_lists(folder: Path, images: np.ndarray, labels: np.ndarray) -> dict[str, Path]:
    """PNG files under ``folder/images`` and the ``<file> <label>`` lists of the two splits."""
    order = np.random.default_rng(SPLIT_SEED).permutation(len(images))
    n_test = TEST_IMAGES
    splits = {"test": order[:n_test], "train": order[n_test:]}
    (folder / "images").mkdir(parents=True, exist_ok=True)
    lists = {}
    for split, indices in splits.items():
        lines = []
        for i in sorted(indices):
            name = f"images/{i:04d}.png"
            (folder / name).write_bytes(encode_image(images[i], "png"))
            lines.append(f"{name} {labels[i]}\n")
        lists[split] = folder / f"{split}.txt"
        with atomic_output_file(str(lists[split]), CaffeError) as f:
            f.write("".join(lines).encode())
    return lists


def make_databases(data: Path, lists: dict[str, Path]) -> None:
    """``convert_imageset --gray --resize_height 28 --resize_width 28 [--shuffle]`` per split."""
    for split, listfile in lists.items():
        report = convert_imageset(f"{data}/", str(listfile), str(data / f"digits_{split}_lmdb"), gray=True,
                                  resize_height=28, resize_width=28, shuffle=split == "train", seed=SPLIT_SEED)
        print(f"  {split}: {report.written} images -> {data / f'digits_{split}_lmdb'}")


def solver_settings(solver_path: Path) -> tuple[str, str, int]:
    """The net, snapshot prefix and test_iter of the demo's solver."""
    param = read_solver(str(solver_path))
    return param.net, param.snapshot_prefix, param.test_iter[0]


def test_accuracy(net_path: str, weights: str, batches: int) -> float:
    """The mean ``accuracy`` output of the TEST net over ``batches`` batches (the whole test set)."""
    net = Net(net_path, TEST, weights=weights)
    return float(np.mean([float(net.forward()["accuracy"]) for _ in range(batches)]))


def run(max_iter: int | None, min_accuracy: float) -> int:
    solver_path = EXAMPLE / "solver.prototxt"
    net_path, prefix, test_iter = solver_settings(solver_path)
    data = EXAMPLE / "data"
    shutil.rmtree(data, ignore_errors=True)
    shutil.rmtree(Path(prefix).parent, ignore_errors=True)
    Path(prefix).parent.mkdir(parents=True)
    started = time.perf_counter()

    print("1. scikit-learn's digits -> PNG files and image lists")
    images, labels = digit_images()
    lists = write_image_lists(data, images, labels)
    print("2. convert_imageset -> LMDB")
    make_databases(data, lists)

    print(f"3. torchcaffe train --solver {solver_path}")
    log_path = EXAMPLE / "train.log"
    argv = ["train", "--solver", str(solver_path), "--log_file", str(log_path)]
    if max_iter is not None:
        argv = _with_max_iter(solver_path, max_iter, argv)
    status = cli.main(argv)
    if status != 0:
        return status
    iterations = read_solver(argv[2]).max_iter
    weights = f"{prefix}_iter_{iterations}.caffemodel"

    print("4. the snapshot on the whole test set")
    accuracy = test_accuracy(net_path, weights, test_iter)
    plot = plot_log(str(log_path), str(EXAMPLE / "curves.png"))
    elapsed = time.perf_counter() - started
    print(f"\ntest accuracy: {accuracy:.4f} ({test_iter} batches, {_count(lists['test'])} images)")
    print(f"snapshot:      {weights}")
    print(f"log:           {log_path}")
    print(f"curves:        {plot}")
    print(f"time:          {elapsed:.1f} s")
    if accuracy <= min_accuracy:
        print(f"torchcaffe demo: the test accuracy {accuracy:.4f} is not above {min_accuracy}", file=sys.stderr)
        return 1
    return 0


def _with_max_iter(solver_path: Path, max_iter: int, argv: list[str]) -> list[str]:
    """A copy of the solver with another ``max_iter`` (for quick runs), beside the original."""
    param = read_solver(str(solver_path))
    param.max_iter = max_iter
    copy = solver_path.with_name("solver_quick.prototxt")
    with atomic_output_file(str(copy), CaffeError) as f:
        f.write(text_format.MessageToString(param).encode())
    return ["train", "--solver", str(copy), *argv[3:]]


def _count(listfile: Path) -> int:
    return sum(1 for line in listfile.read_text().splitlines() if line.strip())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m torchcaffe.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--max-iter", type=int, default=None, help="train this many iterations (default: the solver's)")
    parser.add_argument("--min-accuracy", type=float, default=0.95, help="fail at or below this test accuracy")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="the checkout to run in (default: the one this module belongs to)")
    args = parser.parse_args(argv)
    root = args.workdir or repository_root()
    with _working_directory(root):
        return run(args.max_iter, args.min_accuracy)


@contextlib.contextmanager
def _working_directory(folder: Path):
    previous = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(previous)


if __name__ == "__main__":
    sys.exit(main())
