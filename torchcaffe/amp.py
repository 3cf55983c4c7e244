"""Mixed precision (``--amp bf16|fp16``): ``torch.autocast`` around a net's forward, and for fp16
the dynamic loss scaling of ``torch.amp.GradScaler``.

Caffe has no mixed precision; this is ours. What it means here:

* the net's parameters, the solver's histories and Caffe's whole update stay float32; only the
  forward runs under ``torch.autocast`` (convolutions and matrix products in the low precision,
  what autocast keeps in float32 in float32), and the backward follows the dtypes autocast chose;
* ``bf16`` has float32's range, so it needs no scaling; it runs on the CPU and on GPUs that
  support it;
* ``fp16`` needs CUDA (the CPU has no fast float16) and loss scaling: backward starts from the
  loss diffs multiplied by ``scale``; the parameter diffs are divided by it before Caffe's update
  (so clipping, ``iter_size`` normalization and regularization see true float32 gradients); an
  iteration whose diffs hold inf or NaN skips the update and halves ``scale``; after
  ``growth_interval`` good iterations in a row ``scale`` doubles. These are GradScaler's rules and
  defaults (initial scale 2**16). Scales are powers of two, so scaling and unscaling are exact.

While fp16 scaling is on, the blob diffs a pycaffe user reads in the middle of an iteration (and
those ``on_gradients_ready`` callbacks see) are the scaled ones; the scale is not part of Caffe's
solver state, so a resumed run starts again at the initial scale.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Sequence

import torch

from .errors import CaffeError
from .logs import format_float

__all__ = ["AMP_MODES", "AmpError", "MixedPrecision", "LossScaler", "mixed_precision", "autocast"]

log = logging.getLogger("torchcaffe")

#: ``--amp`` values and the dtype each computes in.
AMP_MODES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class AmpError(CaffeError):
    """A mixed-precision mode that is unknown or that the device cannot run."""


class MixedPrecision:
    """The autocast settings of one device, and the loss scaler when the mode needs one.

    ``MixedPrecision("bf16", torch.device("cpu"))``; ``with amp.autocast(): net.forward_loss()``.
    """

    def __init__(self, mode: str, device: torch.device | str):
        device = torch.device(device)
        if mode not in AMP_MODES:
            known = ", ".join(AMP_MODES)
            raise AmpError(f"unknown mixed-precision mode {mode!r} (--amp / amp=); known modes: {known}")
        if mode == "fp16" and device.type != "cuda":
            raise AmpError(f"fp16 mixed precision needs a CUDA device, but this runs on {device} "
                           f"(select a GPU with --gpu N), or use --amp bf16, which the CPU supports")
        if mode == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise AmpError(f"bf16 mixed precision: {torch.cuda.get_device_name(device)} does not support "
                           f"bfloat16; use --amp fp16")
        self.mode = mode
        self.dtype = AMP_MODES[mode]
        self.device_type = device.type
        self.scaler = LossScaler() if mode == "fp16" else None

    def autocast(self):
        """The ``torch.autocast`` context of this mode and device."""
        return torch.autocast(self.device_type, dtype=self.dtype)

    def __repr__(self) -> str:
        return f"<MixedPrecision {self.mode} on {self.device_type}>"


def mixed_precision(mode: str | MixedPrecision | None, device) -> MixedPrecision | None:
    """``mode`` (``None``, ``"bf16"``, ``"fp16"`` or a :class:`MixedPrecision`) for ``device``."""
    if mode is None or isinstance(mode, MixedPrecision):
        return mode
    return MixedPrecision(str(mode), device)


def autocast(amp: MixedPrecision | None):
    """``amp.autocast()``, or a context that changes nothing when ``amp`` is ``None``."""
    return amp.autocast() if amp is not None else contextlib.nullcontext()


class _ScaleGradient(torch.autograd.Function):
    """Identity forward; the gradient passing back is multiplied by the scaler's current scale."""

    @staticmethod
    def forward(ctx, tensor, scaler):
        ctx.scaler = scaler
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.scaler.scale, None


class LossScaler:
    """GradScaler's dynamic loss scaling, applied where backward starts: the tops whose diffs seed
    it (those with a loss weight that no other layer consumes) pass their gradient back multiplied
    by ``scale``.

    :meth:`install` hooks a net's loss layers; after backward, :meth:`unscale_` divides the diffs
    and says whether they are all finite; :meth:`update` then adapts the scale.
    """

    def __init__(self, init_scale: float = 2.0 ** 16, growth_factor: float = 2.0, backoff_factor: float = 0.5,
                 growth_interval: int = 2000):
        self.scale = float(init_scale)
        self.growth_factor = float(growth_factor)
        self.backoff_factor = float(backoff_factor)
        self.growth_interval = int(growth_interval)
        self.good_steps = 0
        self.skipped = 0
        self._hooked: dict[int, object] = {}

    def install(self, net) -> None:
        """Scale the gradient of every seed top of ``net`` (once per net)."""
        if id(net) in self._hooked:
            return
        from .net.graph import ANONYMOUS_TOP

        outputs = set(net.outputs)
        handles = []
        for node in net._graph.nodes:
            seeds = [j for j, (name, weight) in enumerate(zip(node.tops, node.loss_weights))
                     if weight and (name == ANONYMOUS_TOP or name in outputs)]
            if seeds:
                handles.append(node.layer.register_forward_hook(self._hook(seeds)))
        self._hooked[id(net)] = handles

    def _hook(self, indices: Sequence[int]):
        def scale_tops(module, inputs, output):
            if not torch.is_grad_enabled():
                return output
            tops = list(output) if isinstance(output, tuple) else [output]
            for j in indices:
                if j < len(tops) and tops[j].requires_grad:
                    tops[j] = _ScaleGradient.apply(tops[j], self)
            return tuple(tops) if isinstance(output, tuple) else tops[0]
        return scale_tops

    def unscale_(self, diffs: Sequence[torch.Tensor]) -> bool:
        """Divide ``diffs`` by the scale in place; True when every value is finite."""
        if not diffs:
            return True
        inverse = 1.0 / self.scale  # a power of two: exact
        finite = torch.stack([torch.isfinite(d).all() for d in diffs]).all()
        for d in diffs:
            d.mul_(inverse)
        return bool(finite)

    def update(self, finite: bool, iteration: int) -> None:
        """GradScaler's rule: back off (and count a skipped update) on inf/NaN, grow after
        ``growth_interval`` finite iterations in a row."""
        if not finite:
            self.skipped += 1
            self.good_steps = 0
            self.scale *= self.backoff_factor
            log.info("Iteration %d, fp16 gradients overflowed: update skipped, loss scale now %s",
                     iteration, format_float(self.scale))
            return
        self.good_steps += 1
        if self.good_steps >= self.growth_interval:
            self.scale *= self.growth_factor
            self.good_steps = 0
