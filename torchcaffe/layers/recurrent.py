"""Recurrent layers: RNN and LSTM over time-major sequences, and the LSTMUnit they are built from.

Caffe builds RNN and LSTM as an unrolled inner net of InnerProduct, Scale, Eltwise, TanH and
LSTMUnit layers. What a ``.caffemodel`` stores are that inner net's parameters, in the order
the inner net creates them; here the same blobs are ``nn.Parameter``s and a Python loop over the
(few) time steps replays the unrolled computation with batched torch ops.

Conventions shared by RNN and LSTM (Caffe's ``RecurrentLayer``):

* bottoms ``x`` (T, N, ...) time-major, ``cont`` (T, N) sequence-continuation indicators
  (0 at the first step of a sequence), an optional static input ``x_static`` (N, ...), then,
  with ``expose_hidden``, the initial states (RNN: ``h0``; LSTM: ``h0, c0``; each (1, N, H));
* tops: the sequence output (T, N, H), then, with ``expose_hidden``, the final states.
* ``cont_t`` multiplies ``h_{t-1}`` before the recurrent matmul (and gates ``c_{t-1}`` in the
  LSTM unit); it never receives a gradient.
* Without ``expose_hidden`` the final state of one forward is the initial state of the next
  (Caffe copies ``h_T`` into ``h_0`` before each forward); gradients never cross forward calls.
* With ``expose_hidden`` the initial-state bottoms receive no gradient and the final-state tops'
  diffs are ignored: Caffe shares only their data with the inner net.
"""
from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F

from .base import TEST, Layer, LayerSetup, Sample
from .registry import register_layer

BINARY = ("choice_int", 0, 1)  # sequence-continuation indicators
STATE = ("choice_int", -1, 0, 1)  # initial hidden states: Caffe passes no gradient to them


def lstm_unit(c_prev: torch.Tensor, gates: torch.Tensor, cont: torch.Tensor):
    """One LSTM step from gate pre-activations ``[i, f, o, g]`` (last axis, in that order).

    ``c = cont * sigmoid(f) * c_prev + sigmoid(i) * tanh(g)``, ``h = sigmoid(o) * tanh(c)``;
    ``cont`` broadcasts against ``c_prev``. Returns ``(c, h)``.
    """
    i, f, o, g = gates.chunk(4, dim=-1)
    c = cont * torch.sigmoid(f) * c_prev + torch.sigmoid(i) * torch.tanh(g)
    return c, torch.sigmoid(o) * torch.tanh(c)


class RecurrentLayer(Layer):
    """What RNN and LSTM share: bottom/top bookkeeping, input transforms, the carried state."""

    #: The recurrent states, in Caffe's bottom/top order (RNN: h; LSTM: h, c).
    state_names: ClassVar[tuple[str, ...]] = ()
    #: Rows of the input transforms per hidden unit (LSTM: 4 gates).
    gate_count: ClassVar[int] = 1
    #: Names of the input transform's blobs: weight, bias, static input's weight.
    input_blobs: ClassVar[tuple[str, str, str]] = ("", "", "")
    min_bottoms = 2
    min_tops = 1

    def check_arity(self, setup: LayerSetup) -> None:
        # Caffe's counts depend on expose_hidden: one more bottom and top per recurrent state.
        exposed = len(self.state_names) if setup.param.recurrent_param.expose_hidden else 0
        self.min_bottoms, self.max_bottoms = 2 + exposed, 3 + exposed
        self.exact_tops, self.min_tops, self.max_tops = 1 + exposed, None, None
        super().check_arity(setup)

    def allow_force_backward(self, bottom_index: int) -> bool:
        return bottom_index != 1  # the sequence indicators

    def __init__(self, setup: LayerSetup):
        super().__init__(setup)
        p = setup.param.recurrent_param
        if p.num_output <= 0:
            raise self.fail(f"recurrent_param num_output must be positive, got {p.num_output}; "
                            f"set it to the hidden state size")
        self.num_output = p.num_output
        self.expose_hidden = p.expose_hidden
        shapes = setup.bottom_shapes
        self.num_exposed = len(self.state_names) if self.expose_hidden else 0
        self.static_input = len(shapes) > 2 + self.num_exposed
        self.steps = shapes[0][0] if len(shapes[0]) else 0
        self._check_shapes(shapes)
        self._add_input_blobs(p, shapes)
        self._add_recurrent_blobs(p)
        self._state: tuple[torch.Tensor, ...] | None = None

    def _add_input_blobs(self, p, shapes) -> None:
        """The blobs Caffe's unrolled net creates first, for the input transform
        ``W x_t + b [+ W_static x_static]``: W (G*H, D), b (G*H), [W_static (G*H, S)], where G is
        ``gate_count``, D the size of x from axis 2 and S the size of x_static from axis 1."""
        weight, bias, static = self.input_blobs
        rows = self.gate_count * self.num_output
        self.add_blob(weight, (rows, math.prod(shapes[0][2:])), p.weight_filler)
        self.add_blob(bias, (rows,), p.bias_filler)
        if self.static_input:
            self.add_blob(static, (rows, math.prod(shapes[2][1:])), p.weight_filler)

    def _add_recurrent_blobs(self, p) -> None:
        """The blobs that follow the input transform's, in Caffe's order."""
        raise NotImplementedError

    # -- shapes ---------------------------------------------------------------------------------
    def _check_shapes(self, shapes) -> None:
        """Caffe's LayerSetUp/Reshape checks on the bottoms."""
        x, cont = shapes[0], shapes[1]
        if len(x) < 3:
            raise self.fail(f"bottom 0 (x) must be (T, N, ...) with at least 3 axes (the inner "
                            f"InnerProduct works from axis 2), got shape {tuple(x)}")
        if x[0] != self.steps:
            raise self.fail(f"the number of time steps changed from {self.steps} to {x[0]} "
                            f"(bottom 0 shape {tuple(x)}); Caffe fixes T when the layer is set up")
        if tuple(cont) != tuple(x[:2]):
            raise self.fail(f"bottom 1 (cont) must have shape (T, N) = {tuple(x[:2])} to match "
                            f"bottom 0, got {tuple(cont)}")
        n = x[1]
        if self.static_input:
            static = shapes[2]
            if len(static) < 2 or static[0] != n:
                raise self.fail(f"bottom 2 (x_static) must be (N, ...) with N = {n} and at least 2 "
                                f"axes, got shape {tuple(static)}")
        first = 2 + int(self.static_input)
        for j, name in enumerate(self.state_names[:self.num_exposed]):
            got = tuple(shapes[first + j])
            if got != (1, n, self.num_output):
                raise self.fail(f"bottom {first + j} ({name}0, expose_hidden) must have shape "
                                f"{(1, n, self.num_output)}, got {got}")

    def top_shapes(self, bottom_shapes):
        self._check_shapes(bottom_shapes)
        steps, n = bottom_shapes[0][:2]
        return [(steps, n, self.num_output)] + [(1, n, self.num_output)] * self.num_exposed

    # -- forward --------------------------------------------------------------------------------
    def forward(self, x, cont, *rest):
        self._check_shapes([b.shape for b in (x, cont, *rest)])
        cont = cont.detach()  # Caffe never back-propagates to the indicators
        static = rest[0] if self.static_input else None
        if self.expose_hidden:  # Caffe shares only the data of h0/c0: no gradient reaches them
            initial = tuple(b.detach()[0] for b in rest[int(self.static_input):])
        else:
            initial = self._carried_state(x)
        x_w, x_b = self.caffe_blobs()[:2]
        inputs = F.linear(x.flatten(2), x_w, x_b)  # every step at once: (T, N, G*H)
        if static is not None:
            inputs = inputs + F.linear(static.flatten(1), getattr(self, self.input_blobs[2]))
        top, final = self._unroll(inputs, cont, initial)
        if self.expose_hidden:  # their diffs are never read by Caffe: detach
            return (top, *(s.detach().unsqueeze(0) for s in final))
        if not x.is_meta:
            self._state = tuple(s.detach() for s in final)
        return top

    def _carried_state(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The last forward's final state (zeros at first, or when N changed)."""
        shape = (x.shape[1], self.num_output)
        if self._state is None or self._state[0].shape != shape:
            return tuple(x.new_zeros(shape) for _ in self.state_names)
        return tuple(s.to(device=x.device, dtype=x.dtype) for s in self._state)

    def reset(self) -> None:
        """Forget the carried hidden state (Caffe's ``RecurrentLayer::Reset``)."""
        self._state = None

    def _unroll(self, inputs, cont, initial):
        raise NotImplementedError


_FILLERS = "weight_filler { type: 'gaussian' std: 0.6 } bias_filler { type: 'gaussian' std: 0.3 }"


def recurrent_samples(state_count: int) -> tuple[Sample, ...]:
    """The sample table of a recurrent layer with ``state_count`` states (RNN: 1, LSTM: 2).

    With ``expose_hidden`` Caffe adds one bottom (initial state) and one top (final state) per
    recurrent state; the other samples use the carried state and are the same for every layer.
    """
    def param(num_output: int, expose_hidden: bool = False) -> str:
        exposed = " expose_hidden: true" if expose_hidden else ""
        return f"recurrent_param {{ num_output: {num_output}{exposed} {_FILLERS} }}"

    def exposed(num_output: int, x: tuple, static: tuple | None = None, note: str = "") -> Sample:
        steps, n = x[:2]
        statics = (static,) if static else ()
        bottoms = (x, (steps, n), *statics, *[(1, n, num_output)] * state_count)
        values = (None, BINARY, *[None] * len(statics), *[STATE] * state_count)
        return Sample(param(num_output, expose_hidden=True), bottoms=bottoms, values=values,
                      tops=1 + state_count, note=note)

    return (
        exposed(3, (4, 2, 3), note="expose_hidden: initial states in, final states out; resets mid-sequence"),
        exposed(2, (5, 1, 3), note="batch 1, odd sizes"),
        exposed(2, (3, 3, 2, 2), static=(3, 1, 2), note="static input (3-D), 4-D x, expose_hidden"),
        Sample(param(3), bottoms=((3, 2, 3), (3, 2)), values=(None, ("choice_int", 0)),
               note="every step starts a sequence: the carried state never matters"),
        Sample(param(3), bottoms=((4, 2, 3), (4, 2)), values=(None, BINARY), gradcheck=False,
               note="carried state: repeated forwards differ when cont_1 = 1, so no gradcheck"),
        Sample(param(3), bottoms=((3, 2, 2, 2), (3, 2), (2, 3)), values=(None, BINARY, None), gradcheck=False,
               note="static input, 4-D x, carried state"),
        Sample("recurrent_param { num_output: 2 }", bottoms=((2, 1, 3), (2, 1)), values=(None, BINARY),
               gradcheck=False, phase=TEST, note="default fillers (zeros), TEST phase"),
    )


@register_layer("RNN")
class RNN(RecurrentLayer):
    """Elman recurrent net with a tanh output layer, over time-major sequences.

    For t = 1..T, with ``h_0`` the carried (or exposed) initial state::

        h_t = tanh(W_hh (cont_t * h_{t-1}) + W_xh x_t + b_h [+ W_xh_static x_static])
        o_t = tanh(W_ho h_t + b_o)

    ``x_t`` is flattened from axis 2. The top is ``o``; with ``expose_hidden`` also ``h_T``.

    Parameters: ``recurrent_param { num_output (0, required > 0) weight_filler (constant 0)
    bias_filler (constant 0) debug_info (false, ignored) expose_hidden (false) }``.

    Blobs (Caffe's order): W_xh (H, D), b_h (H), [W_xh_static (H, S)], W_hh (H, H), W_ho (H, H),
    b_o (H).

    Shapes: x (T, N, ...), cont (T, N), [x_static (N, ...)], [h0 (1, N, H)]
    -> o (T, N, H), [hT (1, N, H)].

    Example::

        layer { name: "rnn" type: "RNN" bottom: "x" bottom: "cont" top: "o"
                recurrent_param { num_output: 16 weight_filler { type: "xavier" } } }

    Differs from torch: ``torch.nn.RNN`` returns ``h`` (not a tanh output layer on it), has two
    biases and no ``cont`` resets, and does not carry its state between calls.
    """

    state_names = ("h",)
    gate_count = 1
    max_bottoms = 4
    max_tops = 2
    input_blobs = ("W_xh", "b_h", "W_xh_static")

    samples = recurrent_samples(state_count=1)

    def _add_recurrent_blobs(self, p):
        h = self.num_output
        self.add_blob("W_hh", (h, h), p.weight_filler)
        self.add_blob("W_ho", (h, h), p.weight_filler)
        self.add_blob("b_o", (h,), p.bias_filler)

    def _unroll(self, inputs, cont, initial):
        (h,) = initial
        hidden = []
        for t in range(inputs.shape[0]):
            h = torch.tanh(F.linear(cont[t, :, None] * h, self.W_hh) + inputs[t])
            hidden.append(h)
        top = torch.tanh(F.linear(torch.stack(hidden), self.W_ho, self.b_o))
        return top, (h,)


@register_layer("LSTM")
class LSTM(RecurrentLayer):
    """Long short-term memory over time-major sequences (Caffe's gate order i, f, o, g).

    For t = 1..T, with ``h_0, c_0`` the carried (or exposed) initial state::

        [i', f', o', g'] = W_hc (cont_t * h_{t-1}) + W_xc x_t + b_c [+ W_xc_static x_static]
        c_t = cont_t * sigmoid(f') * c_{t-1} + sigmoid(i') * tanh(g')
        h_t = sigmoid(o') * tanh(c_t)

    ``x_t`` is flattened from axis 2. The top is ``h``; with ``expose_hidden`` also ``h_T, c_T``.

    Parameters: ``recurrent_param { num_output (0, required > 0) weight_filler (constant 0)
    bias_filler (constant 0) debug_info (false, ignored) expose_hidden (false) }``.

    Blobs (Caffe's order): W_xc (4H, D), b_c (4H), [W_xc_static (4H, S)], W_hc (4H, H); rows in
    gate blocks i, f, o, g.

    Shapes: x (T, N, ...), cont (T, N), [x_static (N, ...)], [h0 (1, N, H), c0 (1, N, H)]
    -> h (T, N, H), [hT (1, N, H), cT (1, N, H)].

    Example::

        layer { name: "lstm" type: "LSTM" bottom: "x" bottom: "cont" top: "h"
                recurrent_param { num_output: 32 weight_filler { type: "uniform" min: -0.08 max: 0.08 } } }

    Differs from torch: ``torch.nn.LSTM`` orders the gates i, f, g, o, has two biases
    (``bias_ih + bias_hh``), has no ``cont`` resets and does not carry its state between calls;
    mapping it exactly would cost more than the loop here.
    """

    state_names = ("h", "c")
    gate_count = 4
    max_bottoms = 5
    max_tops = 3
    input_blobs = ("W_xc", "b_c", "W_xc_static")

    samples = recurrent_samples(state_count=2)

    def _add_recurrent_blobs(self, p):
        self.add_blob("W_hc", (self.gate_count * self.num_output, self.num_output), p.weight_filler)

    def _unroll(self, inputs, cont, initial):
        h, c = initial
        hidden = []
        for t in range(inputs.shape[0]):
            keep = cont[t, :, None]
            c, h = lstm_unit(c, F.linear(keep * h, self.W_hc) + inputs[t], keep)
            hidden.append(h)
        return torch.stack(hidden), (h, c)


@register_layer("LSTMUnit")
class LSTMUnit(Layer):
    """One LSTM time step from gate pre-activations (the unit Caffe's LSTM unrolls into).

    With ``[i', f', o', g']`` the four D-wide blocks of ``x`` along axis 2::

        c = cont * sigmoid(f') * c_prev + sigmoid(i') * tanh(g')
        h = sigmoid(o') * tanh(c)

    No parameters. ``cont`` (bottom 2) gets no gradient, even under ``force_backward``.

    Shapes: c_prev (1, N, D), x (1, N, 4D), cont (1, N) -> c (1, N, D), h (1, N, D).

    Example::

        layer { name: "unit" type: "LSTMUnit" bottom: "c_prev" bottom: "gates" bottom: "cont"
                top: "c" top: "h" }

    Differs from torch: ``torch.nn.LSTMCell`` orders the gates i, f, g, o, applies its own weights
    and has no ``cont``.
    """

    exact_bottoms = 3
    exact_tops = 2
    samples = (
        Sample(bottoms=((1, 2, 3), (1, 2, 12), (1, 2)), values=(None, None, BINARY)),
        Sample(bottoms=((1, 1, 1), (1, 1, 4), (1, 1)), values=(None, None, ("choice_int", 1)), note="batch 1, D 1"),
        Sample(bottoms=((1, 5, 2), (1, 5, 8), (1, 5)), values=(None, None, BINARY), note="odd batch"),
        Sample(bottoms=((1, 3, 2), (1, 3, 8), (1, 3)), values=(None, None, ("choice_int", 0)), note="all reset"),
    )

    def __init__(self, setup: LayerSetup):
        super().__init__(setup)
        self.top_shapes(setup.bottom_shapes)

    def allow_force_backward(self, bottom_index: int) -> bool:
        return bottom_index != 2  # the sequence indicators

    def top_shapes(self, bottom_shapes):
        c_prev, gates, cont = (tuple(s) for s in bottom_shapes)
        if len(c_prev) != 3 or len(gates) != 3 or len(cont) != 2:
            raise self.fail(f"bottoms must be c_prev (1, N, D), x (1, N, 4D) and cont (1, N); got shapes "
                            f"{c_prev}, {gates}, {cont}")
        if c_prev[0] != 1 or gates[0] != 1 or cont[0] != 1:
            raise self.fail(f"every bottom must hold a single time step (axis 0 of size 1); got shapes "
                            f"{c_prev}, {gates}, {cont}")
        if not c_prev[1] == gates[1] == cont[1]:
            raise self.fail(f"bottoms disagree on N (axis 1): {c_prev}, {gates}, {cont}")
        if gates[2] != 4 * c_prev[2]:
            raise self.fail(f"bottom 1 (x) must have 4 * D = {4 * c_prev[2]} gate inputs on axis 2 "
                            f"(D = {c_prev[2]} from bottom 0), got {gates[2]}")
        return [c_prev, c_prev]

    def forward(self, c_prev, gates, cont):
        return lstm_unit(c_prev, gates, cont.detach()[..., None])
