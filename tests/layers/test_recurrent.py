"""RNN, LSTM and LSTMUnit against loop-by-loop numpy references of Caffe's unrolled nets.

Covers what the sample table cannot: the values themselves, Caffe's blob order, the hidden state
carried from one forward to the next, the gradients Caffe withholds (cont, exposed initial
states, exposed final states' diffs), and the configuration errors.
"""
from __future__ import annotations

import numpy as np
import pytest

from torchcaffe.errors import NetError
from torchcaffe.layers import Sample, layer_class

from .harness import bottom_values, build, run

RNG = np.random.default_rng(20240611)


def sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


# -- references: Caffe's unrolled nets, one step at a time ----------------------------------------
def ref_rnn(params, x, cont, static=None, h0=None):
    """Returns o (T, N, H) and h_T (N, H)."""
    if static is None:
        w_xh, b_h, w_hh, w_ho, b_o = params
    else:
        w_xh, b_h, w_s, w_hh, w_ho, b_o = params
    steps, n = cont.shape
    hidden = w_hh.shape[0]
    h = np.zeros((n, hidden)) if h0 is None else h0
    outs = []
    for t in range(steps):
        pre = (cont[t][:, None] * h) @ w_hh.T + x[t].reshape(n, -1) @ w_xh.T + b_h
        if static is not None:
            pre = pre + static.reshape(n, -1) @ w_s.T
        h = np.tanh(pre)
        outs.append(np.tanh(h @ w_ho.T + b_o))
    return np.stack(outs), h


def ref_unit(c_prev, gates, cont):
    d = c_prev.shape[-1]
    i, f, o, g = (gates[..., k * d:(k + 1) * d] for k in range(4))
    c = cont * sigmoid(f) * c_prev + sigmoid(i) * np.tanh(g)
    return c, sigmoid(o) * np.tanh(c)


def ref_lstm(params, x, cont, static=None, h0=None, c0=None):
    """Returns h (T, N, H), h_T and c_T (N, H)."""
    if static is None:
        w_xc, b_c, w_hc = params
    else:
        w_xc, b_c, w_s, w_hc = params
    steps, n = cont.shape
    hidden = w_hc.shape[1]
    h = np.zeros((n, hidden)) if h0 is None else h0
    c = np.zeros((n, hidden)) if c0 is None else c0
    outs = []
    for t in range(steps):
        gates = (cont[t][:, None] * h) @ w_hc.T + x[t].reshape(n, -1) @ w_xc.T + b_c
        if static is not None:
            gates = gates + static.reshape(n, -1) @ w_s.T
        c, h = ref_unit(c, gates, cont[t][:, None])
        outs.append(h)
    return np.stack(outs), h, c


FILLERS = "weight_filler { type: 'gaussian' std: 0.7 } bias_filler { type: 'gaussian' std: 0.4 }"


def recurrent(num_output, expose=False):
    return (f"recurrent_param {{ num_output: {num_output} {FILLERS}"
            f"{' expose_hidden: true' if expose else ''} }}")


def params_of(net):
    return [b.data.astype(np.float64) for b in net.params["under_test"]]


def cont_with_resets(steps, n):
    """Binary indicators with a reset in the middle of each stream and continuation elsewhere."""
    cont = np.ones((steps, n))
    cont[0] = 0
    cont[steps // 2, ::2] = 0
    return cont


# -- forward values ------------------------------------------------------------------------------
@pytest.mark.parametrize("static", [False, True])
@pytest.mark.parametrize("expose", [False, True])
def test_rnn_matches_reference(static, expose):
    steps, n, hidden = 4, 3, 3
    shapes = [(steps, n, 2, 2), (steps, n)] + [(n, 5)] * static + [(1, n, hidden)] * expose
    net = build("RNN", Sample(recurrent(hidden, expose), bottoms=shapes, tops=1 + expose))
    values = {f"b{i}": RNG.standard_normal(s) for i, s in enumerate(shapes)}
    values["b1"] = cont_with_resets(steps, n)
    values["b1"][0, 1] = 1  # stream 1 continues from h0 (or the zero initial state)
    out = run(net, values, backward=False)
    o, h_last = ref_rnn(params_of(net), values["b0"], values["b1"], values.get("b2") if static else None,
                        values[f"b{len(shapes) - 1}"][0] if expose else None)
    np.testing.assert_allclose(out["data/t0"], o, rtol=1e-5, atol=1e-6)
    if expose:
        np.testing.assert_allclose(out["data/t1"][0], h_last, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("static", [False, True])
@pytest.mark.parametrize("expose", [False, True])
def test_lstm_matches_reference(static, expose):
    steps, n, hidden = 4, 3, 2
    shapes = [(steps, n, 3), (steps, n)] + [(n, 2, 2)] * static + [(1, n, hidden)] * (2 * expose)
    net = build("LSTM", Sample(recurrent(hidden, expose), bottoms=shapes, tops=1 + 2 * expose))
    values = {f"b{i}": RNG.standard_normal(s) for i, s in enumerate(shapes)}
    values["b1"] = cont_with_resets(steps, n)
    values["b1"][0, 1] = 1
    out = run(net, values, backward=False)
    first = 2 + static
    h, h_last, c_last = ref_lstm(params_of(net), values["b0"], values["b1"], values.get("b2") if static else None,
                                 values[f"b{first}"][0] if expose else None,
                                 values[f"b{first + 1}"][0] if expose else None)
    np.testing.assert_allclose(out["data/t0"], h, rtol=1e-5, atol=1e-6)
    if expose:
        np.testing.assert_allclose(out["data/t1"][0], h_last, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(out["data/t2"][0], c_last, rtol=1e-5, atol=1e-6)


def test_lstm_unit_matches_reference_and_gates_c_prev_with_cont():
    n, d = 4, 3
    shapes = [(1, n, d), (1, n, 4 * d), (1, n)]
    net = build("LSTMUnit", Sample(bottoms=shapes))
    values = {"b0": RNG.standard_normal(shapes[0]), "b1": RNG.standard_normal(shapes[1]),
              "b2": np.array([[0.0, 1.0, 0.0, 1.0]])}
    out = run(net, values, backward=False)
    c, h = ref_unit(values["b0"], values["b1"], values["b2"][..., None])
    np.testing.assert_allclose(out["data/t0"], c, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["data/t1"], h, rtol=1e-5, atol=1e-6)
    # a reset stream forgets c_prev entirely
    i, g = values["b1"][0, 0, :d], values["b1"][0, 0, 3 * d:]
    np.testing.assert_allclose(out["data/t0"][0, 0], sigmoid(i) * np.tanh(g), rtol=1e-5, atol=1e-6)


# -- blobs -------------------------------------------------------------------------------------
def test_blob_order_and_shapes():
    rnn = build("RNN", Sample(recurrent(3), bottoms=((2, 4, 2, 3), (2, 4), (4, 5, 2))))
    assert [b.shape for b in rnn.params["under_test"]] == [(3, 6), (3,), (3, 10), (3, 3), (3, 3), (3,)]
    assert rnn.layer_dict["under_test"].blob_names == ["W_xh", "b_h", "W_xh_static", "W_hh", "W_ho", "b_o"]
    lstm = build("LSTM", Sample(recurrent(3), bottoms=((2, 4, 2, 3), (2, 4), (4, 5))))
    assert [b.shape for b in lstm.params["under_test"]] == [(12, 6), (12,), (12, 5), (12, 3)]
    plain = build("LSTM", Sample(recurrent(5), bottoms=((3, 2, 4), (3, 2))))
    assert [b.shape for b in plain.params["under_test"]] == [(20, 4), (20,), (20, 5)]


def test_fillers_apply_to_weights_and_biases():
    text = "recurrent_param { num_output: 2 weight_filler { type: 'constant' value: 0.5 } " \
           "bias_filler { type: 'constant' value: -0.25 } }"
    net = build("RNN", Sample(text, bottoms=((2, 1, 3), (2, 1), (1, 4))))
    for name, blob in zip(net.layer_dict["under_test"].blob_names, net.params["under_test"]):
        assert np.all(blob.data == (-0.25 if name.startswith("b_") else 0.5)), name
    zeros = build("LSTM", Sample("recurrent_param { num_output: 2 }", bottoms=((2, 1, 3), (2, 1))))
    assert not any(b.data.any() for b in zeros.params["under_test"])  # Caffe's default: constant 0


# -- the state carried between forwards ------------------------------------------------------------
@pytest.mark.parametrize("type_name", ["RNN", "LSTM"])
def test_final_state_is_next_initial_state(type_name):
    steps, n, hidden = 3, 2, 3
    net = build(type_name, Sample(recurrent(hidden), bottoms=((steps, n, 2), (steps, n))), force_backward=True)
    params = params_of(net)
    reference = ref_rnn if type_name == "RNN" else ref_lstm
    first = {"b0": RNG.standard_normal((steps, n, 2)), "b1": cont_with_resets(steps, n)}
    second = {"b0": RNG.standard_normal((steps, n, 2)), "b1": np.ones((steps, n))}
    out1 = run(net, first, backward=False)
    ref1 = reference(params, first["b0"], first["b1"])
    np.testing.assert_allclose(out1["data/t0"], ref1[0], rtol=1e-5, atol=1e-6)
    out2 = run(net, second, backward=False)
    ref2 = reference(params, second["b0"], second["b1"], None, *ref1[1:])
    np.testing.assert_allclose(out2["data/t0"], ref2[0], rtol=1e-5, atol=1e-6)
    # gradients stop at the carried state: the parameters' diffs are those of this forward alone
    top_diff = RNG.standard_normal(ref2[0].shape)
    net.clear_param_diffs()
    net.backward(t0=top_diff)

    def loss():
        return float((reference(params, second["b0"], second["b1"], None, *ref1[1:])[0] * top_diff).sum())

    for i, param in enumerate(params):
        np.testing.assert_allclose(net.params["under_test"][i].diff, numeric_grad(loss, param),
                                   rtol=1e-3, atol=1e-4, err_msg=f"param {i}")
    # Reset() forgets it
    net.layer_dict["under_test"].reset()
    out3 = run(net, second, backward=False)
    np.testing.assert_allclose(out3["data/t0"], reference(params, second["b0"], second["b1"])[0],
                               rtol=1e-5, atol=1e-6)


def test_carried_state_restarts_when_the_batch_changes():
    net = build("LSTM", Sample(recurrent(2), bottoms=((2, 3, 2), (2, 3))))
    run(net, {"b0": RNG.standard_normal((2, 3, 2)), "b1": np.ones((2, 3))}, backward=False)
    net.blobs["b0"].reshape(2, 1, 2)
    net.blobs["b1"].reshape(2, 1)
    net.reshape()
    values = {"b0": RNG.standard_normal((2, 1, 2)), "b1": np.ones((2, 1))}
    out = run(net, values, backward=False)
    np.testing.assert_allclose(out["data/t0"], ref_lstm(params_of(net), values["b0"], values["b1"])[0],
                               rtol=1e-5, atol=1e-6)


def test_number_of_steps_is_fixed():
    net = build("RNN", Sample(recurrent(2), bottoms=((3, 2, 2), (3, 2))))
    net.blobs["b0"].reshape(4, 2, 2)
    net.blobs["b1"].reshape(4, 2)
    with pytest.raises(NetError, match=r'"under_test" \(RNN\).*time steps changed from 3 to 4'):
        net.reshape()


# -- gradients: what Caffe passes back and what it withholds ----------------------------------------
def numeric_grad(loss, array, eps=1e-6):
    grad = np.zeros_like(array)
    for index in np.ndindex(array.shape):
        saved = array[index]
        array[index] = saved + eps
        up = loss()
        array[index] = saved - eps
        down = loss()
        array[index] = saved
        grad[index] = (up - down) / (2 * eps)
    return grad


@pytest.mark.parametrize("type_name", ["RNN", "LSTM"])
def test_exposed_gradients_follow_caffe(type_name):
    """x, x_static and the parameters get the exact gradient of sum(top0 * diff0); the initial
    states and cont get none; the final states' diffs are ignored (Caffe shares only data)."""
    steps, n, hidden = 3, 2, 2
    states = 1 if type_name == "RNN" else 2
    shapes = [(steps, n, 3), (steps, n), (n, 2)] + [(1, n, hidden)] * states
    net = build(type_name, Sample(recurrent(hidden, expose=True), bottoms=shapes, tops=1 + states),
                force_backward=True).double()
    values = {f"b{i}": RNG.standard_normal(s) for i, s in enumerate(shapes)}
    values["b1"] = cont_with_resets(steps, n)
    values["b1"][0] = 1  # h0 (and c0) matter to the forward
    for name, value in values.items():
        net.blobs[name].data[...] = value
    net.forward()
    top_diff = RNG.standard_normal((steps, n, hidden))
    state_diffs = {f"t{k}": RNG.standard_normal((1, n, hidden)) for k in range(1, 1 + states)}
    net.clear_param_diffs()
    net.backward(t0=top_diff, **state_diffs)

    params = params_of(net)
    reference = ref_rnn if type_name == "RNN" else ref_lstm
    initial = [values[f"b{3 + k}"][0] for k in range(states)]

    def loss():
        return float((reference(params, values["b0"], values["b1"], values["b2"], *initial)[0] * top_diff).sum())

    np.testing.assert_allclose(net.blobs["b0"].diff, numeric_grad(loss, values["b0"]), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(net.blobs["b2"].diff, numeric_grad(loss, values["b2"]), rtol=1e-4, atol=1e-7)
    for i, param in enumerate(params):
        np.testing.assert_allclose(net.params["under_test"][i].diff, numeric_grad(loss, param),
                                   rtol=1e-4, atol=1e-7, err_msg=f"param {i}")
    assert not net.blobs["b1"].diff.any(), "cont must get no diff"
    for k in range(states):
        assert not net.blobs[f"b{3 + k}"].diff.any(), "exposed initial states get no diff in Caffe"
        np.testing.assert_array_equal(net.blobs[f"t{1 + k}"].diff, state_diffs[f"t{1 + k}"])


def test_lstm_unit_cont_gets_no_gradient_even_when_forced():
    shapes = [(1, 2, 2), (1, 2, 8), (1, 2)]
    net = build("LSTMUnit", Sample(bottoms=shapes), force_backward=True)
    values = {"b0": RNG.standard_normal(shapes[0]), "b1": RNG.standard_normal(shapes[1]),
              "b2": np.array([[0.0, 1.0]])}
    net.forward(**values)
    net.backward(t0=np.ones((1, 2, 2)), t1=np.ones((1, 2, 2)))
    assert not net.blobs["b2"].diff.any()
    assert net.blobs["b0"].diff[0, 1].any() and not net.blobs["b0"].diff[0, 0].any()  # reset: no path
    layer = net.layer_dict["under_test"]
    assert [layer.allow_force_backward(i) for i in range(3)] == [True, True, False]


def test_recurrent_layers_refuse_to_force_cont():
    for type_name in ("RNN", "LSTM"):
        layer = build(type_name, Sample(recurrent(2), bottoms=((2, 1, 2), (2, 1)))).layer_dict["under_test"]
        assert not layer.allow_force_backward(1) and layer.allow_force_backward(0)


# -- the sample tables exercise resets in the middle of a sequence -----------------------------------
@pytest.mark.parametrize("type_name", ["RNN", "LSTM", "LSTMUnit"])
def test_samples_cover_resets_and_continuations(type_name):
    found_reset = found_continue = False
    cont_index = 2 if type_name == "LSTMUnit" else 1
    for index, sample in enumerate(layer_class(type_name).samples):
        cont = bottom_values(type_name, sample, index)[f"b{cont_index}"]
        assert set(np.unique(cont)) <= {0.0, 1.0}
        later = cont if type_name == "LSTMUnit" else cont[1:]
        if sample.gradcheck:
            found_reset |= bool((later == 0).any())
            found_continue |= bool((later == 1).any())
    assert found_reset and found_continue


# -- configuration errors ------------------------------------------------------------------------
@pytest.mark.parametrize("type_name,params,shapes,tops,match", [
    ("RNN", "recurrent_param { }", ((2, 1, 3), (2, 1)), 1, "num_output must be positive"),
    ("LSTM", recurrent(2), ((2, 3), (2, 1)), 1, "at least 3 axes"),
    ("LSTM", recurrent(2), ((2, 1, 3), (2, 2)), 1, r"bottom 1 \(cont\) must have shape \(T, N\)"),
    ("RNN", recurrent(2), ((2, 1, 3), (2, 1), (3, 4)), 1, r"bottom 2 \(x_static\)"),
    ("RNN", recurrent(2, expose=True), ((2, 1, 3), (2, 1), (1, 1, 3)), 2, r"h0, expose_hidden\) must have shape"),
    ("LSTM", recurrent(2, expose=True), ((2, 1, 3), (2, 1), (1, 1, 2)), 3, "at least 4 bottom"),
    ("LSTM", recurrent(2, expose=True), ((2, 1, 3), (2, 1), (1, 1, 2), (1, 1, 2)), 1, "exactly 3 top"),
    ("RNN", recurrent(2), ((2, 1, 3), (2, 1)), 2, "exactly 1 top"),
    ("LSTMUnit", "", ((1, 2, 3), (1, 2, 8), (1, 2)), 2, r"4 \* D = 12"),
    ("LSTMUnit", "", ((2, 2, 3), (2, 2, 12), (2, 2)), 2, "single time step"),
    ("LSTMUnit", "", ((1, 2, 3), (1, 3, 12), (1, 2)), 2, "disagree on N"),
])
def test_malformed_layers_are_refused(type_name, params, shapes, tops, match):
    with pytest.raises(NetError, match=match) as error:
        build(type_name, Sample(params, bottoms=shapes, tops=tops))
    assert f'"under_test" ({type_name})' in str(error.value)
