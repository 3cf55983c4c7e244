"""Loading ahead: order, determinism, errors raised in the caller's thread, clean shutdown, no hang."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from torchcaffe.data.errors import DataError
from torchcaffe.data.prefetch import BatchQueue
from torchcaffe.errors import NetError

from ..layers.harness import make_layer
from .fixtures import random_images, write_datums


class Counter:
    def __init__(self, fail_at=None, delay=0.0):
        self.count = 0
        self.fail_at = fail_at
        self.delay = delay
        self.threads = set()

    def __call__(self):
        self.threads.add(threading.get_ident())
        time.sleep(self.delay)
        if self.count == self.fail_at:
            raise ValueError("record 3 is broken")
        self.count += 1
        return self.count


@pytest.mark.parametrize("depth", [0, 1, 4])
def test_batches_come_in_load_order(depth):
    queue = BatchQueue(Counter(), depth, "loader")
    assert [queue.get() for _ in range(10)] == list(range(1, 11))
    queue.close()


def test_loads_ahead_up_to_depth_in_one_other_thread():
    loader = Counter()
    queue = BatchQueue(loader, 3, "loader")
    assert not queue.running and loader.count == 0, "nothing starts before the first get"
    assert queue.get() == 1
    deadline = time.monotonic() + 5
    while loader.count < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.1)
    assert loader.count == 4, "1 taken + 3 waiting, no more"
    assert loader.threads == {queue._thread.ident}
    queue.close()
    assert not queue.running


def test_depth_zero_loads_in_the_calling_thread():
    loader = Counter()
    queue = BatchQueue(loader, 0, "loader")
    queue.get()
    assert loader.threads == {threading.get_ident()} and not queue.running


@pytest.mark.parametrize("depth", [0, 2])
def test_errors_are_raised_in_the_caller_with_the_name(depth):
    queue = BatchQueue(Counter(fail_at=3), depth, 'layer "d" (Data)')
    assert [queue.get() for _ in range(3)] == [1, 2, 3]
    for _ in range(2):  # and again on the next call: no hang, no silent recovery
        with pytest.raises(DataError, match=r'layer "d" \(Data\): loading a batch failed: ValueError: record 3'):
            queue.get()
    queue.close()


def test_caffe_errors_pass_through_and_on_error_converts():
    def broken():
        raise DataError("db key 'k': broken")

    queue = BatchQueue(broken, 2, "x", on_error=lambda e: NetError(f"layer L: {e}"))
    with pytest.raises(NetError, match="layer L: db key 'k': broken") as info:
        queue.get()
    assert isinstance(info.value.__cause__, DataError)


def test_close_never_hangs_even_with_a_full_queue_or_a_slow_loader():
    for loader in (Counter(), Counter(delay=0.2)):
        queue = BatchQueue(loader, 2, "x")
        queue.get()
        start = time.monotonic()
        queue.close()
        assert time.monotonic() - start < 2 and not queue.running
        with pytest.raises(DataError, match="stopped"):
            queue.get()


def test_garbage_collected_queue_stops_its_thread():
    import gc

    queue = BatchQueue(Counter(), 2, "x")
    queue.get()
    thread = queue._thread
    del queue
    gc.collect()
    thread.join(timeout=2)
    assert not thread.is_alive()


def test_negative_depth():
    with pytest.raises(DataError, match="prefetch must be >= 0"):
        BatchQueue(Counter(), -1, "x")


def test_data_layer_order_is_deterministic_with_a_seed(tmp_path):
    source = write_datums(tmp_path / "db", random_images(9, (3, 8, 8)))
    params = (f"data_param {{ source: '{source}' backend: LMDB batch_size: 4 prefetch: {{}} }} "
              "transform_param { crop_size: 6 mirror: true }")

    def batches(seed, prefetch):
        layer = make_layer("Data", params.replace("{}", str(prefetch)), tops=2, seed=seed)
        out = [layer() for _ in range(6)]
        layer.close()
        return out

    reference = batches(3, 4)
    for seed, prefetch in ((3, 4), (3, 0), (3, 2)):
        for (data, label), (ref_data, ref_label) in zip(batches(seed, prefetch), reference):
            assert torch.equal(data, ref_data) and torch.equal(label, ref_label)
    other = batches(4, 4)
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(other, reference)), "another seed, other crops"
    labels = [b[1].tolist() for b in reference]
    assert labels[:3] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 0, 1, 2]]
    assert np.isfinite(reference[0][0].numpy()).all()


def test_waits_are_counted_only_when_no_batch_is_ready(caplog):
    queue = BatchQueue(Counter(delay=0.05), 2, "slow")
    with caplog.at_level("INFO", logger="torchcaffe"):
        queue.get()
    assert queue.waits == 1 and queue.wait_seconds > 0.03
    assert "slow: Data layer prefetch queue empty" in caplog.text
    time.sleep(0.4)  # the thread fills its two slots
    queue.get(), queue.get()
    assert queue.waits == 1, "both were ready"
    queue.close()
