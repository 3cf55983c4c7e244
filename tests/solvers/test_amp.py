"""Mixed precision in the solver (``Solver(..., amp=...)``, ``torchcaffe.amp``): bf16 autocast on
the CPU, fp16's refusal without CUDA, and the fp16 loss scaler's arithmetic (checked in float32
on the CPU: scaling is exact, overflow skips the update and backs off)."""
from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch

from torchcaffe.amp import AmpError, LossScaler, MixedPrecision
from torchcaffe.solvers import get_solver

from .helpers import write_setup

SOLVER = 'base_lr: 0.1 momentum: 0.9 weight_decay: 0.001 lr_policy: "fixed" max_iter: 30 display: 0'


@pytest.fixture
def solver_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return str(write_setup(tmp_path, SOLVER, rows=8))


def _weights(solver) -> dict[str, np.ndarray]:
    return {name: t.detach().numpy().copy() for name, t in solver.net.state_dict().items()}


def _mean_loss(solver, iterations: int) -> float:
    losses = []
    for _ in range(iterations):
        solver.step(1)
        losses.append(float(solver.smoothed_loss))
    return float(np.mean(losses))


def test_bf16_training_runs_in_bf16_learns_and_keeps_float32_weights(solver_path):
    solver = get_solver(solver_path, amp="bf16")
    seen = []
    solver.net.layer_dict["ip1"].register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    first = _mean_loss(solver, 5)
    last = _mean_loss(solver, 25)
    assert set(seen) == {torch.bfloat16}
    assert last < 0.5 * first
    assert all(t.dtype == torch.float32 for t in solver.net.state_dict().values())
    assert all(h.dtype == torch.float32 for h in solver.history)
    assert all(p.grad is None or p.grad.dtype == torch.float32 for p in solver.net.parameters())


def test_bf16_test_nets_run_under_autocast_too(solver_path, tmp_path):
    (tmp_path / "solver.prototxt").write_text((tmp_path / "solver.prototxt").read_text() +
                                              "test_iter: 2\ntest_interval: 100\n")
    solver = get_solver(solver_path, amp="bf16")
    seen = []
    solver.test_nets[0].layer_dict["ip1"].register_forward_hook(lambda m, i, output: seen.append(output.dtype))
    means = solver.test(0)
    assert seen == [torch.bfloat16] * 2 and len(means) == 2 and all(np.isfinite(means))


def test_fp16_on_the_cpu_is_a_clear_error(solver_path):
    with pytest.raises(AmpError, match="fp16 mixed precision needs a CUDA device.*--amp bf16"):
        get_solver(solver_path, amp="fp16")
    solver = get_solver(solver_path)
    with pytest.raises(AmpError, match="CUDA"):
        solver.amp = "fp16"
    with pytest.raises(AmpError, match="unknown mixed-precision mode 'int8'.*bf16, fp16"):
        solver.amp = "int8"
    assert solver.amp is None


def _scaling_only(scaler: LossScaler) -> MixedPrecision:
    """The fp16 machinery without autocast, so that it can be checked in float32 on the CPU."""
    amp = MixedPrecision("bf16", "cpu")
    amp.autocast = contextlib.nullcontext
    amp.scaler = scaler
    return amp


def test_loss_scaling_is_exact_and_grows_the_scale(solver_path):
    plain = get_solver(solver_path)
    scaled = get_solver(solver_path)
    scaler = LossScaler(init_scale=2.0 ** 10, growth_interval=2)
    scaled.amp = _scaling_only(scaler)
    diffs_seen = []
    scaled.add_callback(lambda: None, lambda: diffs_seen.append(scaled.net.params["ip1"][0].diff.copy()))
    plain.step(5)
    scaled.step(5)
    for name, value in _weights(plain).items():
        np.testing.assert_array_equal(_weights(scaled)[name], value, err_msg=name)
    assert scaler.scale == 2.0 ** 12 and scaler.skipped == 0
    # on_gradients_ready sees the scaled diffs: the update then sees them divided back
    assert np.abs(diffs_seen[0]).max() > 100 * np.abs(scaled.net.params["ip1"][0].diff).max()


def test_overflowing_gradients_skip_the_update_and_back_off(solver_path):
    solver = get_solver(solver_path)
    scaler = LossScaler(init_scale=2.0 ** 130)  # beyond float32: the seeds are inf
    solver.amp = _scaling_only(scaler)
    before = _weights(solver)
    learned = [name for name, _ in solver.net.named_parameters()]  # BatchNorm's statistics move in forward
    solver.step(2)
    assert solver.iter == 2 and scaler.skipped == 2 and scaler.scale == 2.0 ** 128
    for name in learned:
        np.testing.assert_array_equal(_weights(solver)[name], before[name], err_msg=name)
    assert all(float(h.abs().sum()) == 0 for h in solver.history)
    scaler.scale = 2.0 ** 8
    solver.step(1)
    assert scaler.skipped == 2
    assert not np.array_equal(_weights(solver)["layers.1.weight"], before["layers.1.weight"])


def test_channels_last_training_matches_contiguous_and_saves_the_same_bytes(solver_path, tmp_path):
    """``solver.net.to(memory_format=torch.channels_last)`` (what bench/train_resnet50.py uses):
    the 4-D weights change layout, the numbers do not (beyond the convolution's rounding), and a
    snapshot is the same file."""
    plain, fast = get_solver(solver_path), get_solver(solver_path)
    fast.net.save(str(tmp_path / "before_plain.caffemodel"))
    fast.net.to(memory_format=torch.channels_last)
    assert fast.net.params["conv1"][0].data.strides != plain.net.params["conv1"][0].data.strides
    fast.net.save(str(tmp_path / "before_fast.caffemodel"))
    assert (tmp_path / "before_plain.caffemodel").read_bytes() == (tmp_path / "before_fast.caffemodel").read_bytes()
    plain.step(10)
    fast.step(10)
    for name, value in _weights(plain).items():
        np.testing.assert_allclose(_weights(fast)[name], value, rtol=1e-4, atol=1e-6, err_msg=name)
    assert fast.history[0].is_contiguous(memory_format=torch.channels_last)  # follows its weight
    _, state = fast.snapshot()
    restored = get_solver(solver_path)
    restored.restore(state)
    for mine, theirs in zip(restored.history, fast.history):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=0)
