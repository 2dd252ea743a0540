"""RNN, LSTM and LSTMUnit: shapes, hand-computed and oracle forwards, gradient
checks, Caffe's cont / expose_hidden semantics, errors and golden cases."""

import math

import numpy as np
import pytest

from caffe_ref import run_case
from protonet.errors import LayerError
from protonet.testing import check_gradient, make_layer

FILLERS = ('weight_filler { type: "gaussian" std: 0.5 } '
           'bias_filler { type: "constant" value: 0.1 }')


def rnn_text(kind, H, expose=False, tops=None):
    tops = tops or (["o", "hT"] if kind == "RNN" else ["h", "hT", "cT"])
    if not expose:
        tops = tops[:1]
    return (f'type: "{kind}" ' + " ".join(f'top: "{t}"' for t in tops) +
            f' recurrent_param {{ num_output: {H} {FILLERS} '
            f'expose_hidden: {str(expose).lower()} }}')


def seq_inputs(T, N, feat, seed=0, first_cont=0.0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((T, N) + tuple(feat))
    cont = np.ones((T, N))
    cont[0] = first_cont
    if T > 2 and N > 1:
        cont[T // 2, 1] = 0          # a new sequence in stream 1 mid-batch
    return x, cont


def forward(layer, bottom, top):
    layer.reshape(bottom, top)
    layer.forward(bottom, top)


def sigmoid(v):
    return 1 / (1 + math.exp(-v))


# ---------------------------------------------------------------- oracles
def lstm_oracle(x, cont, W_xc, b_c, W_hc, h0, c0, xs=None, W_s=None):
    """Per-stream, per-step loop straight from the equations."""
    T, N = x.shape[:2]
    H = W_hc.shape[1]
    out = np.zeros((T, N, H))
    hT, cT = np.zeros((N, H)), np.zeros((N, H))
    for n in range(N):
        h, c = h0[n].copy(), c0[n].copy()
        for t in range(T):
            a = W_xc @ x[t, n].ravel() + b_c + W_hc @ (cont[t, n] * h)
            if W_s is not None:
                a = a + W_s @ xs[n].ravel()
            i, f, o = (1 / (1 + np.exp(-a[k * H:(k + 1) * H])) for k in range(3))
            g = np.tanh(a[3 * H:])
            c = cont[t, n] * f * c + i * g
            h = o * np.tanh(c)
            out[t, n] = h
        hT[n], cT[n] = h, c
    return out, hT, cT


def rnn_oracle(x, cont, W_xh, b_h, W_hh, W_ho, b_o, h0):
    T, N = x.shape[:2]
    out = np.zeros((T, N, W_ho.shape[0]))
    for n in range(N):
        h = h0[n].copy()
        for t in range(T):
            h = np.tanh(W_hh @ (cont[t, n] * h) + W_xh @ x[t, n].ravel() + b_h)
            out[t, n] = np.tanh(W_ho @ h + b_o)
    return out


# ----------------------------------------------------------------- shapes
@pytest.mark.parametrize("kind,G", [("RNN", 1), ("LSTM", 4)])
def test_shapes_and_param_blobs_in_caffe_order(kind, G):
    x, cont = seq_inputs(5, 3, (2, 3))
    xs = np.ones((3, 7))
    layer, _, top = make_layer(rnn_text(kind, 4), [x, cont, xs])
    assert top[0].shape == (5, 3, 4)
    shapes = [b.shape for b in layer.blobs]
    if kind == "RNN":    # W_xh, b_h, W_xh_static, W_hh, W_ho, b_o
        assert shapes == [(4, 6), (4,), (4, 7), (4, 4), (4, 4), (4,)]
        biases = [layer.blobs[1], layer.blobs[5]]
    else:                # W_xc, b_c, W_xc_static, W_hc
        assert shapes == [(16, 6), (16,), (16, 7), (16, 4)]
        biases = [layer.blobs[1]]
    for b in biases:
        np.testing.assert_array_equal(b.data, np.float32(0.1))
    assert np.std(layer.blobs[0].data) > 0.1


@pytest.mark.parametrize("kind,n_states", [("RNN", 1), ("LSTM", 2)])
def test_expose_hidden_shapes(kind, n_states):
    x, cont = seq_inputs(3, 2, (4,))
    states = [np.zeros((1, 2, 3))] * n_states
    layer, _, top = make_layer(rnn_text(kind, 3, expose=True), [x, cont, *states])
    assert [t.shape for t in top] == [(3, 2, 3)] + [(1, 2, 3)] * n_states
    assert len(layer.blobs) == (5 if kind == "RNN" else 3)


def test_batch_size_may_change_between_forwards():
    x, cont = seq_inputs(3, 2, (4,))
    layer, bottom, top = make_layer(rnn_text("LSTM", 3), [x, cont])
    bottom[0].reshape((3, 5, 4))
    bottom[1].reshape((3, 5))
    forward(layer, bottom, top)
    assert top[0].shape == (3, 5, 3)


def test_lstm_unit_shapes():
    layer, _, top = make_layer('type: "LSTMUnit" top: "c" top: "h"',
                               [np.zeros((1, 4, 5)), np.zeros((1, 4, 20)),
                                np.ones((1, 4))])
    assert [t.shape for t in top] == [(1, 4, 5), (1, 4, 5)]
    assert layer.blobs == []


# ---------------------------------------------------------------- forward
def test_rnn_forward_hand_computed():
    # H = D = N = 1; weights W_xh=0.5, b_h=0.1, W_hh=-0.3, W_ho=2, b_o=-0.2.
    x = np.array([1.0, -2.0, 0.5]).reshape(3, 1, 1)
    cont = np.array([[0.0], [1.0], [0.0]])
    params = [np.array([[0.5]]), np.array([0.1]), np.array([[-0.3]]),
              np.array([[2.0]]), np.array([-0.2])]
    layer, bottom, top = make_layer(rnn_text("RNN", 1), [x, cont])
    for b, p in zip(layer.blobs, params):
        b.data[...] = p
    forward(layer, bottom, top)
    h1 = math.tanh(0.5 * 1.0 + 0.1)
    h2 = math.tanh(-0.3 * h1 + 0.5 * -2.0 + 0.1)
    h3 = math.tanh(0.5 * 0.5 + 0.1)              # cont 0: h2 is dropped
    want = [math.tanh(2 * h - 0.2) for h in (h1, h2, h3)]
    np.testing.assert_allclose(top[0].data.ravel(), want, rtol=1e-12)


def test_lstm_forward_hand_computed():
    # H = D = N = 1; gate pre-activations a = w_x x + b + w_h h_prev.
    x = np.array([0.7, -1.1]).reshape(2, 1, 1)
    cont = np.array([[0.0], [1.0]])
    w_x = np.array([0.3, -0.4, 0.9, 1.2])          # i, f, o, g
    b = np.array([0.1, 0.2, -0.1, 0.05])
    w_h = np.array([0.5, 0.6, -0.7, 0.8])
    layer, bottom, top = make_layer(rnn_text("LSTM", 1), [x, cont])
    layer.blobs[0].data[...] = w_x[:, None]
    layer.blobs[1].data[...] = b
    layer.blobs[2].data[...] = w_h[:, None]
    forward(layer, bottom, top)
    h, c, want = 0.0, 0.0, []
    for t, xt in enumerate((0.7, -1.1)):
        a = w_x * xt + b + w_h * h * cont[t, 0]
        i, f, o, g = sigmoid(a[0]), sigmoid(a[1]), sigmoid(a[2]), math.tanh(a[3])
        c = cont[t, 0] * f * c + i * g
        h = o * math.tanh(c)
        want.append(h)
    np.testing.assert_allclose(top[0].data.ravel(), want, rtol=1e-12)


def test_lstm_matches_per_stream_oracle_with_static_input_and_exposed_state():
    x, cont = seq_inputs(4, 3, (2, 2), seed=3, first_cont=1.0)
    rng = np.random.default_rng(4)
    xs = rng.standard_normal((3, 5))
    h0, c0 = rng.standard_normal((2, 1, 3, 2))
    layer, bottom, top = make_layer(rnn_text("LSTM", 2, expose=True),
                                    [x, cont, xs, h0, c0])
    forward(layer, bottom, top)
    W_xc, b_c, W_s, W_hc = (b.data for b in layer.blobs)
    out, hT, cT = lstm_oracle(x, cont, W_xc, b_c, W_hc, h0[0], c0[0], xs, W_s)
    np.testing.assert_allclose(top[0].data, out, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(top[1].data[0], hT, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(top[2].data[0], cT, rtol=1e-10, atol=1e-12)


def test_rnn_matches_per_stream_oracle_with_exposed_state():
    x, cont = seq_inputs(4, 3, (3,), seed=5, first_cont=1.0)
    h0 = np.random.default_rng(6).standard_normal((1, 3, 2))
    layer, bottom, top = make_layer(rnn_text("RNN", 2, expose=True),
                                    [x, cont, h0])
    forward(layer, bottom, top)
    want = rnn_oracle(x, cont, *(b.data for b in layer.blobs), h0[0])
    np.testing.assert_allclose(top[0].data, want, rtol=1e-10, atol=1e-12)


def test_lstm_unit_forward_matches_equations_and_cont_zeroes_c_prev():
    rng = np.random.default_rng(7)
    c_prev = rng.standard_normal((1, 2, 3))
    x = rng.standard_normal((1, 2, 12))
    cont = np.array([[1.0, 0.0]])
    layer, bottom, top = make_layer('type: "LSTMUnit" top: "c" top: "h"',
                                    [c_prev, x, cont])
    forward(layer, bottom, top)
    a = x[0]
    i, f, o = (1 / (1 + np.exp(-a[:, k * 3:(k + 1) * 3])) for k in range(3))
    g = np.tanh(a[:, 9:])
    c = cont[0][:, None] * f * c_prev[0] + i * g
    np.testing.assert_allclose(top[0].data[0], c, rtol=1e-12)
    np.testing.assert_allclose(top[1].data[0], o * np.tanh(c), rtol=1e-12)
    np.testing.assert_allclose(top[0].data[0, 1], (i * g)[1], rtol=1e-12)


def test_float32_stays_float32():
    x, cont = seq_inputs(3, 2, (4,))
    for kind in ("RNN", "LSTM"):
        layer, bottom, top = make_layer(rnn_text(kind, 3), [x, cont],
                                        dtype=np.float32)
        forward(layer, bottom, top)
        top[0].diff[...] = 1
        layer.backward(top, [True, False], bottom)
        assert top[0].data.dtype == np.float32
        assert bottom[0].diff.dtype == np.float32
        assert all(b.diff.dtype == np.float32 for b in layer.blobs)


# ------------------------------------------------------ state across forwards
@pytest.mark.parametrize("kind,n_states", [("RNN", 1), ("LSTM", 2)])
def test_final_state_carries_to_next_forward(kind, n_states):
    x, cont = seq_inputs(3, 2, (4,), seed=8)
    layer, bottom, top = make_layer(rnn_text(kind, 3), [x, cont])
    forward(layer, bottom, top)
    first = top[0].data.copy()
    forward(layer, bottom, top)          # cont[0] = 0: the carry is masked
    np.testing.assert_array_equal(top[0].data, first)

    # Same weights, state exposed: feed the final states of a first pass.
    ex, ebottom, etop = make_layer(
        rnn_text(kind, 3, expose=True), [x, cont] + [np.zeros((1, 2, 3))] * n_states)
    for b, a in zip(ex.blobs, layer.blobs):
        b.data[...] = a.data
    forward(ex, ebottom, etop)
    np.testing.assert_allclose(etop[0].data, first, rtol=1e-12)
    for k in range(n_states):
        ebottom[2 + k].data[...] = etop[1 + k].data
    bottom[1].data[...] = 1              # continue every stream
    ebottom[1].data[...] = 1
    forward(layer, bottom, top)
    forward(ex, ebottom, etop)
    np.testing.assert_allclose(top[0].data, etop[0].data, rtol=1e-12)
    assert not np.allclose(top[0].data, first)


# -------------------------------------------------------------- gradients
@pytest.mark.parametrize("kind", ["RNN", "LSTM"])
@pytest.mark.parametrize("static", [False, True])
def test_gradient(kind, static):
    x, cont = seq_inputs(4, 3, (2, 2), seed=9)
    bottoms = [x, cont]
    if static:
        bottoms.append(np.random.default_rng(10).standard_normal((3, 3)))
    check = [0, 2] if static else [0]
    check_gradient(rnn_text(kind, 3), bottoms, check_bottoms=check)


def test_lstm_unit_gradient():
    rng = np.random.default_rng(11)
    bottoms = [rng.standard_normal((1, 3, 4)), rng.standard_normal((1, 3, 16)),
               np.array([[1.0, 0.0, 1.0]])]
    check_gradient('type: "LSTMUnit" top: "c" top: "h"', bottoms,
                   check_bottoms=[0, 1])


@pytest.mark.parametrize("kind,n_states", [("RNN", 1), ("LSTM", 2)])
def test_expose_hidden_gradient_ignores_state_diffs(kind, n_states):
    """Numeric gradient of <R, top[0]> w.r.t. x, x_static and every param; the
    final-state top diffs are ignored and the initial states get no diff."""
    x, cont = seq_inputs(3, 2, (3,), seed=12, first_cont=1.0)
    rng = np.random.default_rng(13)
    xs = rng.standard_normal((2, 2))
    states = [rng.standard_normal((1, 2, 2)) for _ in range(n_states)]
    layer, bottom, top = make_layer(rnn_text(kind, 2, expose=True),
                                    [x, cont, xs, *states])
    forward(layer, bottom, top)
    R = rng.standard_normal(top[0].shape)
    top[0].diff[...] = R
    for t in top[1:]:
        t.diff[...] = rng.standard_normal(t.shape)   # must not matter
    for b in bottom[3:]:
        b.diff[...] = 7.0
    layer.backward(top, [True, False, True] + [True] * n_states, bottom)
    for b in bottom[3:]:
        np.testing.assert_array_equal(b.diff, 7.0)

    def objective():
        forward(layer, bottom, top)
        return float(np.sum(top[0].data * R))

    for blob in [bottom[0], bottom[2], *layer.blobs]:
        analytic = blob.diff.copy()
        flat = blob.data.reshape(-1)
        for e in range(flat.size):
            orig = flat[e]
            flat[e] = orig + 1e-6
            fp = objective()
            flat[e] = orig - 1e-6
            fm = objective()
            flat[e] = orig
            np.testing.assert_allclose(analytic.reshape(-1)[e],
                                       (fp - fm) / 2e-6, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("kind", ["RNN", "LSTM"])
def test_param_diffs_accumulate_bottom_diffs_assigned(kind):
    x, cont = seq_inputs(3, 2, (4,), seed=14)
    layer, bottom, top = make_layer(rnn_text(kind, 3), [x, cont])
    forward(layer, bottom, top)
    top[0].diff[...] = np.random.default_rng(15).standard_normal(top[0].shape)
    for b in layer.blobs:
        b.diff[...] = 0
    layer.backward(top, [True, False], bottom)
    once = [b.diff.copy() for b in layer.blobs]
    dx = bottom[0].diff.copy()
    layer.backward(top, [True, False], bottom)
    for b, d in zip(layer.blobs, once):
        np.testing.assert_allclose(b.diff, 2 * d, rtol=1e-12)
        assert np.any(d != 0)
    np.testing.assert_allclose(bottom[0].diff, dx, rtol=1e-12)


def test_propagate_down_false_leaves_x_diff_alone():
    x, cont = seq_inputs(3, 2, (4,))
    layer, bottom, top = make_layer(rnn_text("LSTM", 3), [x, cont])
    forward(layer, bottom, top)
    top[0].diff[...] = 1
    bottom[0].diff[...] = 5
    layer.backward(top, [False, False], bottom)
    np.testing.assert_array_equal(bottom[0].diff, 5)
    assert np.any(layer.blobs[0].diff != 0)


# ----------------------------------------------------------------- errors
@pytest.mark.parametrize("kind", ["RNN", "LSTM"])
def test_no_backward_into_cont(kind):
    x, cont = seq_inputs(3, 2, (4,))
    layer, bottom, top = make_layer(rnn_text(kind, 3), [x, cont])
    assert not layer.allow_force_backward(1) and layer.allow_force_backward(0)
    with pytest.raises(LayerError, match="continuation"):
        layer.backward(top, [True, True], bottom)


def test_lstm_unit_no_backward_into_cont():
    layer, bottom, top = make_layer('type: "LSTMUnit" top: "c" top: "h"',
                                    [np.zeros((1, 2, 3)), np.zeros((1, 2, 12)),
                                     np.ones((1, 2))])
    assert not layer.allow_force_backward(2)
    with pytest.raises(LayerError, match="continuation"):
        layer.backward(top, [True, True, True], bottom)


@pytest.mark.parametrize("bottoms,words", [
    ([np.zeros((3, 2, 4)), np.zeros((3, 3))], "cont"),
    ([np.zeros((3, 2, 4)), np.zeros((3, 2, 1))], "cont"),
    ([np.zeros((3,)), np.zeros((3, 2))], "at least 2 axes"),
    ([np.zeros((3, 2, 4)), np.zeros((3, 2)), np.zeros((5, 2))], "x_static"),
])
def test_bad_bottoms(bottoms, words):
    with pytest.raises(LayerError, match=words):
        make_layer(rnn_text("LSTM", 3), bottoms)


def test_bad_hidden_state_shape_and_count():
    x, cont = seq_inputs(3, 2, (4,))
    with pytest.raises(LayerError, match=r"initial state.*\(1, 2, 3\)"):
        make_layer(rnn_text("LSTM", 3, expose=True),
                   [x, cont, np.zeros((1, 2, 3)), np.zeros((1, 2, 4))])
    with pytest.raises(LayerError, match="bottom"):
        make_layer(rnn_text("LSTM", 3, expose=True), [x, cont])


def test_num_output_must_be_positive():
    with pytest.raises(LayerError, match="num_output"):
        make_layer('type: "RNN" top: "o"', list(seq_inputs(3, 2, (4,))))


def test_timesteps_and_features_fixed_after_setup():
    x, cont = seq_inputs(3, 2, (4,))
    layer, bottom, top = make_layer(rnn_text("RNN", 3), [x, cont])
    bottom[0].reshape((4, 2, 4))
    bottom[1].reshape((4, 2))
    with pytest.raises(LayerError, match="timesteps"):
        layer.reshape(bottom, top)
    bottom[0].reshape((3, 2, 5))
    bottom[1].reshape((3, 2))
    with pytest.raises(LayerError, match="features"):
        layer.reshape(bottom, top)


def test_lstm_unit_bad_shapes():
    with pytest.raises(LayerError, match=r"4 \* H = 12"):
        make_layer('type: "LSTMUnit" top: "c" top: "h"',
                   [np.zeros((1, 2, 3)), np.zeros((1, 2, 10)), np.ones((1, 2))])
    with pytest.raises(LayerError, match=r"\(1, N\)"):
        make_layer('type: "LSTMUnit" top: "c" top: "h"',
                   [np.zeros((1, 2, 3)), np.zeros((1, 2, 12)), np.ones((2, 2))])


def test_debug_info_is_accepted():
    layer, _, top = make_layer(
        'type: "RNN" top: "o" recurrent_param { num_output: 2 debug_info: true }',
        list(seq_inputs(2, 1, (3,))))
    assert top[0].shape == (2, 1, 2)


# ----------------------------------------------------------------- golden
@pytest.mark.parametrize("case", ["rnn", "lstm", "lstm_expose_hidden",
                                  "lstm_unit"])
def test_golden(case):
    run_case("layers", case)
