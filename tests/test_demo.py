"""``make demo`` end to end at a reduced iteration count, in a copy of examples/digits: digits ->
PNG lists -> convert_imageset LMDBs -> torchcaffe train (log, snapshots) -> accuracy -> plot."""
from __future__ import annotations

import shutil

from torchcaffe import demo
from torchcaffe.data.db import open_database
from torchcaffe.plot import parse_log

from .conftest import REPO


def test_demo_trains_on_the_digits(tmp_path, capsys):
    example = tmp_path / "examples" / "digits"
    example.mkdir(parents=True)
    for name in ("solver.prototxt", "train_test.prototxt"):
        shutil.copy(REPO / "examples" / "digits" / name, example / name)
    status = demo.main(["--workdir", str(tmp_path), "--max-iter", "120", "--min-accuracy", "0.85"])
    out = capsys.readouterr().out
    assert status == 0, out
    assert "test accuracy: " in out and "(3 batches, 360 images)" in out
    assert open_database(str(example / "data" / "digits_train_lmdb"), "lmdb").count() == 1797 - 360
    assert (example / "snapshots" / "lenet_digits_iter_120.caffemodel").is_file()
    assert (example / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    log = parse_log(example / "train.log")
    assert log.smoothed_loss.values[-1] < log.smoothed_loss.values[0]
