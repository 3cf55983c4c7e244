"""Data-parallel training (``torchcaffe.solvers.distributed``): two CPU processes with gloo train
exactly as one process with the doubled batch, and only rank 0 writes snapshots."""
from __future__ import annotations

import os
from pathlib import Path

import lmdb
import numpy as np
import pytest
import torch

from torchcaffe.data.datum import array_to_datum
from torchcaffe.solvers import get_solver
from torchcaffe.solvers.distributed import (DistributedError, RoundRobinShard, data_parallel, init_from_env,
                                            spawn)

RECORDS = 12  # not a multiple of the doubled batch: the source wraps around mid-batch

NET = """name: "dp"
layer {{ name: "data" type: "Data" top: "data" top: "label" include {{ phase: TRAIN }}
        data_param {{ source: "{source}" backend: LMDB batch_size: {batch} }} }}
layer {{ name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1"
        inner_product_param {{ num_output: 6 weight_filler {{ type: "gaussian" std: 0.3 }}
                              bias_filler {{ type: "uniform" min: -0.1 max: 0.1 }} }} }}
layer {{ name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }}
layer {{ name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
        inner_product_param {{ num_output: 3 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }}
"""

SOLVER = """net: "{net}"
type: "Nesterov" base_lr: 0.2 momentum: 0.9 weight_decay: 0.01 clip_gradients: 0.8
lr_policy: "step" gamma: 0.5 stepsize: 2 max_iter: 5 display: 1 iter_size: {iter_size}
snapshot: 2 snapshot_prefix: "snap" random_seed: 5 solver_mode: CPU
"""


def _write_source(folder: Path) -> Path:
    rng = np.random.default_rng(1)
    path = folder / "train_lmdb"
    env = lmdb.open(str(path), map_size=1 << 22)
    with env.begin(write=True) as txn:
        for i in range(RECORDS):
            datum = array_to_datum(rng.standard_normal((2, 2, 2)), int(rng.integers(0, 3)))
            txn.put(f"{i:08d}".encode(), datum.SerializeToString())
    env.close()
    return path


def _write_solver(folder: Path, batch: int, iter_size: int = 1) -> Path:
    net = folder / f"net_{batch}.prototxt"
    net.write_text(NET.format(source=folder / "train_lmdb", batch=batch))
    path = folder / f"solver_{batch}_{iter_size}.prototxt"
    path.write_text(SOLVER.format(net=net, iter_size=iter_size))
    return path


def _train(solver_path: Path, workdir: Path, parallel: bool):
    """Train in ``workdir`` (snapshots land there) in float64; the final parameters by name."""
    workdir.mkdir()
    os.chdir(workdir)
    solver = get_solver(str(solver_path))
    solver.net.double()
    if parallel:
        data_parallel(solver)
    solver.solve()
    return {name: tensor.detach().numpy().copy() for name, tensor in solver.net.state_dict().items()}


def _rank_worker(rank: int, world: int, folder: str, solver_name: str) -> None:
    init_from_env()
    torch.set_num_threads(1)
    params = _train(Path(folder) / solver_name, Path(folder) / f"rank{rank}", parallel=True)
    np.savez(Path(folder) / f"rank{rank}" / "final.npz", **params)


def test_two_gloo_ranks_equal_one_process_with_the_doubled_batch(tmp_path, monkeypatch):
    """iter_size 2: the diffs of two passes accumulate, are averaged over the ranks, then clipped,
    normalized and regularized, as one process's diffs of the doubled batch would be."""
    iter_size = 2
    monkeypatch.chdir(tmp_path)
    _write_source(tmp_path)
    parallel = _write_solver(tmp_path, batch=2, iter_size=iter_size)
    single = _write_solver(tmp_path, batch=4, iter_size=iter_size)

    spawn(_rank_worker, 2, (str(tmp_path), parallel.name))
    expected = _train(single, tmp_path / "single", parallel=False)

    ranks = [dict(np.load(tmp_path / f"rank{r}" / "final.npz")) for r in range(2)]
    assert set(ranks[0]) == set(expected)
    for name, value in expected.items():
        assert value.dtype == np.float64
        np.testing.assert_array_equal(ranks[0][name], ranks[1][name], err_msg=f"ranks differ in {name}")
        np.testing.assert_allclose(ranks[0][name], value, rtol=1e-12, atol=1e-14, err_msg=name)
    initial = get_solver(str(single)).net.state_dict()  # the same seed: the weights moved
    assert not np.allclose(initial["layers.1.weight"].numpy(), expected["layers.1.weight"])

    written = sorted(p.name for p in (tmp_path / "rank0").iterdir() if p.name.startswith("snap"))
    assert written == sorted(p.name for p in (tmp_path / "single").iterdir() if p.name.startswith("snap"))
    assert "snap_iter_4.caffemodel" in written and "snap_iter_5.solverstate" in written
    assert not [p for p in (tmp_path / "rank1").iterdir() if p.name.startswith("snap")]


class _Records:
    def __init__(self, n):
        self.items, self.position = list(range(n)), 0

    def peek(self):
        return self.items[self.position]

    def next(self):
        item = self.peek()
        self.position = (self.position + 1) % len(self.items)
        return item


def test_round_robin_shard_is_caffes_skip_rule():
    taken = [[RoundRobinShard(_Records(7), rank, 3) for rank in range(3)]]
    shards = taken[0]
    assert shards[1].peek() == 1
    got = [[shard.next() for _ in range(5)] for shard in shards]
    assert got == [[0, 3, 6, 2, 5], [1, 4, 0, 3, 6], [2, 5, 1, 4, 0]]
    assert shards[2].items == list(range(7))  # other attributes are the source's


def test_data_parallel_without_a_process_group_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _write_source(tmp_path)
    solver = get_solver(str(_write_solver(tmp_path, batch=2)))
    with pytest.raises(DistributedError, match="init_from_env"):
        data_parallel(solver)
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(DistributedError, match="torchrun"):
        init_from_env()
