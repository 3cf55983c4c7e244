"""Helpers for layers' ``export_onnx`` hooks: emit one ONNX operator where tracing the layer's
torch ops would give a poor graph, or none.

``as_onnx_node("LRN", lambda: self.forward(x), x, size_i=5, alpha_f=1e-4, ...)`` gives the trace
the value torchcaffe computes (so later layers see real numbers) while the ONNX graph gets one
``LRN`` node of ``x``. The value is computed with tracing paused, so whatever ops compute it —
numpy included — never reach the exporter. Attribute names carry the TorchScript exporter's type
suffixes: ``_i`` int(s), ``_f`` float(s), ``_s`` string.
"""
from __future__ import annotations

from typing import Callable

import torch


class _AsOnnxNode(torch.autograd.Function):
    """Identity on ``value`` for torch; one ``op_type`` node of ``inputs`` for the ONNX exporter."""

    @staticmethod
    def forward(ctx, value, op_type, attributes, *inputs):
        return value.clone()

    @staticmethod
    def symbolic(g, value, op_type, attributes, *inputs):
        return g.op(op_type, *inputs, **dict(attributes))


def untraced(compute: Callable[[], torch.Tensor]) -> torch.Tensor:
    """``compute()`` with the TorchScript tracer paused: its ops are not recorded."""
    state = torch._C._get_tracing_state()
    torch._C._set_tracing_state(None)
    try:
        with torch.no_grad():
            return compute()
    finally:
        torch._C._set_tracing_state(state)


def as_onnx_node(op_type: str, value: Callable[[], torch.Tensor], *inputs: torch.Tensor, **attributes) -> torch.Tensor:
    """In the exported graph, the ONNX operator ``op_type`` applied to ``inputs`` with
    ``attributes``; for torch, ``value()`` (which that operator must reproduce: the exporter's
    check compares onnxruntime with torchcaffe)."""
    return _AsOnnxNode.apply(untraced(value), op_type, tuple(sorted(attributes.items())), *inputs)
