"""Caffe's in-place backward quirk for neuron layers.

When a neuron layer runs in place (``top == bottom``), Caffe's backward reads "its bottom data" and
"its top data" from the blob's memory *at backward time* — which holds the value the **last**
in-place layer of the chain wrote, not what this layer saw or produced. In
``conv -> ReLU (in place) -> Scale (in place)`` the ReLU's mask comes from Scale's output. And
layers whose backward needs the bottom (Power, Log, BNLL, Clip, Swish) get their own output in its
place even when they are the last writer.

We reproduce it: such a layer runs through :class:`CaffeInPlace`, whose backward evaluates the
layer's ``caffe_inplace_backward(x, final, top_diff)`` — Caffe's backward formula with the blob's
final value standing for both bottom and top data. Layers whose formula is exact when they are
the last writer (ReLU, Sigmoid, TanH, ELU, Exp) are only wrapped when a later in-place layer
overwrites the blob.
"""
from __future__ import annotations

import torch


class CaffeInPlace(torch.autograd.Function):
    """``y = layer(x)``, with the gradient Caffe computes for an in-place layer.

    ``finals[name]`` holds the blob's final value once the net's forward has written it; until
    then (a partial forward) the layer's own output stands in.
    """

    @staticmethod
    def forward(ctx, x, layer, finals, name):
        y = layer(x)
        ctx.layer, ctx.finals, ctx.name = layer, finals, name
        ctx.save_for_backward(x, y)
        return y

    @staticmethod
    def backward(ctx, grad):
        x, y = ctx.saved_tensors
        final = ctx.finals.get(ctx.name, y)
        return ctx.layer.caffe_inplace_backward(x, final, grad), None, None, None


def needs_inplace_quirk(layer, in_place: bool, last_writer: bool) -> bool:
    """Whether the node's gradient must follow Caffe's in-place rule instead of autograd's."""
    if not in_place or not hasattr(layer, "caffe_inplace_backward"):
        return False
    return not (last_writer and getattr(layer, "inplace_exact_when_last", False))
