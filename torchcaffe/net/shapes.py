"""Top-shape inference at construction, the way Caffe's ``Reshape`` runs before any data flows.

A layer's forward is run on ``meta`` tensors (shapes without storage) with its own blobs swapped
for meta copies, so nothing is computed, allocated or mutated (BatchNorm's running sums stay
untouched). Layers whose top shapes depend on bottom *values* (Filter) or that use ops without a
meta kernel fall back to one real forward on zeros, with every buffer and the RNG state restored.
A layer may also define ``top_shapes(bottom_shapes)`` itself.
"""
from __future__ import annotations

from itertools import chain
from typing import Sequence

import torch
from torch.func import functional_call

from ..errors import CaffeError, NetError


def infer_top_shapes(layer, bottom_shapes: Sequence[torch.Size], dtype=torch.float32) -> list[torch.Size]:
    """The shapes of ``layer``'s tops for bottoms of ``bottom_shapes``."""
    custom = getattr(layer, "top_shapes", None)
    if custom is not None:
        return [torch.Size(s) for s in custom(list(bottom_shapes))]
    try:
        tops = _meta_forward(layer, bottom_shapes, dtype)
    except CaffeError:
        raise
    except Exception:  # no meta kernel, or a value-dependent shape: run it for real
        tops = _zeros_forward(layer, bottom_shapes, dtype)
    return [t.shape for t in _as_tuple(tops)]


def _meta_forward(layer, bottom_shapes, dtype):
    meta_state = {name: torch.empty_like(t, device="meta")
                  for name, t in chain(layer.named_parameters(remove_duplicate=False),
                                       layer.named_buffers(remove_duplicate=False))}
    bottoms = tuple(torch.empty(s, dtype=dtype, device="meta") for s in bottom_shapes)
    with torch.no_grad():
        return functional_call(layer, meta_state, bottoms, tie_weights=False)


def _zeros_forward(layer, bottom_shapes, dtype):
    saved = [(b, b.clone()) for b in layer.buffers()]
    rng = torch.random.get_rng_state()
    bottoms = tuple(torch.zeros(s, dtype=dtype) for s in bottom_shapes)
    try:
        with torch.no_grad():
            return layer(*bottoms)
    except CaffeError:
        raise
    except Exception as error:
        raise NetError(f"{layer.label}: cannot compute its tops for bottoms of shape "
                       f"{[tuple(s) for s in bottom_shapes]}: {error}") from error
    finally:
        torch.random.set_rng_state(rng)
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


def _as_tuple(tops):
    return tops if isinstance(tops, (tuple, list)) else (tops,)
