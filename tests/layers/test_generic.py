"""The one generic layer test: every registered type, every sample in its table.

For each sample: top shapes match what the net inferred at construction; float64 gradcheck of
tops with respect to bottoms and parameters; ``propagate_down: false`` zeroes exactly that bottom's
diff; in place equals out of place; diffs scale linearly with ``loss_weight``. And no registered
type may lack samples.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from torchcaffe.layers import layer_class, registered_layers

from .harness import DEVICE, bottom_values, build, differentiable_bottoms, run, top_count

CASES = [(name, i, sample) for name, cls in sorted(registered_layers().items())
         for i, sample in enumerate(cls.samples)]


def cases_where(applies):
    """Parametrize over the samples a check applies to (the others are not generated at all)."""
    chosen = [c for c in CASES if applies(*c)]
    return pytest.mark.parametrize("type_name,index,sample", chosen, ids=[f"{n}-{i}" for n, i, _ in chosen])


def gradcheckable(name, index, sample):
    return sample.gradcheck and layer_class(name).differentiable


def has_differentiable_bottom(name, index, sample):
    return layer_class(name).differentiable and bool(differentiable_bottoms(sample))


def has_backward(name, index, sample):
    return layer_class(name).differentiable


def test_every_registered_type_has_samples():
    missing = sorted(name for name, cls in registered_layers().items()
                     if not cls.samples and not getattr(cls, "is_input", False))
    assert not missing, f"layer types without samples: {missing}"


@cases_where(lambda *case: True)
def test_top_shapes_match_inference(type_name, index, sample):
    net = build(type_name, sample)
    inferred = {name: net.blobs[name].shape for name in net.blobs}
    run(net, bottom_values(type_name, sample, index), backward=False)
    for name, blob in net.blobs.items():
        assert blob.shape == inferred[name], f"{name}: inferred {inferred[name]}, forward gave {blob.shape}"


@cases_where(gradcheckable)
def test_gradcheck_float64(type_name, index, sample):
    net = build(type_name, sample, force_backward=True).double()
    values = bottom_values(type_name, sample, index)
    grad_bottoms = set(differentiable_bottoms(sample))
    names = list(values)
    tensors = [torch.tensor(values[n], dtype=torch.float64, device=DEVICE, requires_grad=i in grad_bottoms)
               for i, n in enumerate(names)]
    params = {k: p for k, p in net.named_parameters() if p.requires_grad}
    param_names = list(params)

    def tops(*args):
        inputs = dict(zip(names, args[:len(names)]))
        state = dict(zip(param_names, args[len(names):]))
        torch.manual_seed(7)
        out = torch.func.functional_call(net, state, kwargs=inputs, tie_weights=False, strict=False)
        return tuple(t for t in out.values() if t.requires_grad)

    args = tensors + [p.detach().clone().requires_grad_() for p in params.values()]
    assert any(a.requires_grad for a in args), "a gradcheck sample needs a differentiable bottom or parameter"
    assert torch.autograd.gradcheck(tops, tuple(args), eps=1e-6, atol=1e-5, rtol=1e-3)


@cases_where(has_differentiable_bottom)
def test_propagate_down_masks_one_bottom(type_name, index, sample):
    grad_bottoms = differentiable_bottoms(sample)
    values = bottom_values(type_name, sample, index)
    n = len(sample.bottoms)
    weights = _loss_weights(type_name, sample)
    everything = [i in grad_bottoms for i in range(n)]
    full = run(build(type_name, sample, loss_weights=weights, propagate_down=everything, learnable=True), values)
    for masked in grad_bottoms:
        mask = [on and i != masked for i, on in enumerate(everything)]
        got = run(build(type_name, sample, loss_weights=weights, propagate_down=mask, learnable=True), values)
        for i in range(n):
            key = f"diff/b{i}"
            if i == masked:
                assert not got[key].any(), f"bottom {i} is masked but got a diff"
            else:
                np.testing.assert_allclose(got[key], full[key], rtol=1e-5, atol=1e-6, err_msg=key)


@cases_where(lambda name, index, sample: sample.inplace)
def test_inplace_equals_out_of_place(type_name, index, sample):
    values = bottom_values(type_name, sample, index)
    apart = run(build(type_name, sample, loss_weights=[1.0], force_backward=True), values)
    inplace = run(build(type_name, sample, inplace=True, loss_weights=[1.0], force_backward=True), values)
    np.testing.assert_allclose(inplace["data/b0"], apart["data/t0"], rtol=1e-6, atol=1e-7)
    if not getattr(layer_class(type_name), "inplace_exact_when_last", not hasattr(layer_class(type_name),
                                                                                  "caffe_inplace_backward")):
        return  # Caffe's in-place gradient differs by design: tests/layers/test_neuron.py checks it
    np.testing.assert_allclose(inplace["diff/b0"], apart["diff/b0"], rtol=1e-5, atol=1e-6)
    for key in (k for k in apart if k.startswith("pdiff/")):
        np.testing.assert_allclose(inplace[key], apart[key], rtol=1e-5, atol=1e-6, err_msg=key)


@cases_where(has_backward)
def test_loss_weight_scales_diffs(type_name, index, sample):
    grad_bottoms = differentiable_bottoms(sample)
    values = bottom_values(type_name, sample, index)
    base = _loss_weights(type_name, sample)
    one = run(build(type_name, sample, loss_weights=base, learnable=True), values)
    scaled = run(build(type_name, sample, loss_weights=[2.5 * w for w in base], learnable=True), values)
    keys = [k for k in one if k.startswith("pdiff/") or k in {f"diff/b{i}" for i in grad_bottoms}]
    assert keys, "nothing to compare"
    for key in keys:
        np.testing.assert_allclose(scaled[key], 2.5 * one[key], rtol=1e-4, atol=1e-6, err_msg=key)


@pytest.mark.parametrize("type_name", sorted({name for name, _, _ in CASES if layer_class(name).differentiable
                                              and 0 not in (layer_class(name).max_tops, layer_class(name).exact_tops)}))
def test_backward_samples_are_not_all_degenerate(type_name):
    """The masking and scaling tests prove something only if some sample has non-zero diffs."""
    for index, sample in enumerate(layer_class(type_name).samples):
        if not sample.gradcheck:
            continue
        got = run(build(type_name, sample, loss_weights=_loss_weights(type_name, sample), learnable=True),
                  bottom_values(type_name, sample, index))
        if any(v.any() for k, v in got.items() if k.startswith(("diff/b", "pdiff/under_test"))):
            return
    pytest.fail(f"no sample of {type_name} gives a non-zero bottom or parameter diff")


def _loss_weights(type_name: str, sample) -> list[float]:
    """Loss weight 1 on every top (loss layers: on the loss top only)."""
    count = top_count(type_name, sample)
    if layer_class(type_name).is_loss:
        return [1.0] + [0.0] * (count - 1)
    return [1.0] * count
