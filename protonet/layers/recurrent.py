"""Recurrent layers: RNN, LSTM and the single-step LSTMUnit.

Caffe builds RNN and LSTM by unrolling an internal net over the T time steps
(InnerProduct, Scale/Eltwise, TanH, LSTMUnit, Slice, Concat layers).  Here the
same math runs directly in NumPy: one GEMM over all time steps for the input
transform, a Python loop over T for the recurrence (whole batch per step), and
one GEMM per weight for the parameter gradients after the backward loop.  The
parameter blobs are exactly the blobs the unrolled net owns, in its order, so
Caffe's .caffemodel weights load unchanged.

Blob layout (time-major): x (T, N, ...), cont (T, N), x_static (N, ...),
hidden states (1, N, H).  `cont[t, n] = 0` starts a new sequence in stream n:
the previous hidden (and cell) state is multiplied by cont.

Mirrors: src/caffe/layers/recurrent_layer.cpp, rnn_layer.cpp, lstm_layer.cpp,
lstm_unit_layer.cpp.
"""

import numpy as np

from ..errors import LayerError
from ..layer import Layer, register


def _sigmoid(x):
    # Equal to 1 / (1 + exp(-x)) up to rounding, without overflow warnings.
    return np.tanh(x * 0.5) * 0.5 + 0.5


def _lstm_cell_forward(gates, c_prev, cont):
    """One LSTMUnit step on (N, 4H) pre-activations.

    Returns (acts, c, tanh_c) where acts = [i, f, o, g] concatenated on the
    last axis, f already multiplied by cont.
    """
    H = c_prev.shape[-1]
    acts = np.empty_like(gates)
    acts[:, :3 * H] = _sigmoid(gates[:, :3 * H])
    acts[:, 3 * H:] = np.tanh(gates[:, 3 * H:])
    # NOTE(caffe): cont scales the forget gate itself, f := cont * sigmoid(.).
    acts[:, H:2 * H] *= cont[:, None]
    i, f, g = acts[:, :H], acts[:, H:2 * H], acts[:, 3 * H:]
    c = f * c_prev + i * g
    return acts, c, np.tanh(c)


def _lstm_cell_backward(acts, c_prev, tanh_c, dc, dh):
    """Gradients of one LSTMUnit step; returns (dgates (N, 4H), dc_prev).

    NOTE(caffe): the forget-gate gradient uses f * (1 - f) with the
    cont-scaled f, which is the true derivative only for binary cont.
    """
    H = c_prev.shape[-1]
    i, f, o, g = (acts[:, k * H:(k + 1) * H] for k in range(4))
    dc = dc + dh * o * (1 - tanh_c * tanh_c)
    dgates = np.empty_like(acts)
    dgates[:, :H] = dc * g * i * (1 - i)
    dgates[:, H:2 * H] = dc * c_prev * f * (1 - f)
    dgates[:, 2 * H:3 * H] = dh * tanh_c * o * (1 - o)
    dgates[:, 3 * H:] = dc * i * (1 - g * g)
    return dgates, dc * f


class _RecurrentLayer(Layer):
    """Shared plumbing of RNN and LSTM (Caffe's RecurrentLayer).

    Bottoms: x (T, N, ...), cont (T, N), optional x_static (N, ...), then with
    `expose_hidden` the initial states (1, N, H).  Tops: the output (T, N, H),
    then with `expose_hidden` the final states (1, N, H).

    NOTE(caffe): with `expose_hidden`, Caffe shares only the *data* of the
    state bottoms/tops with its unrolled net, so backward writes no diff into
    the initial-state bottoms and ignores the diffs of the final-state tops.
    Without it, the final states of one forward become the initial states of
    the next (masked by cont as usual); they start at zero and are layer state,
    not parameter blobs.
    """

    num_states = 1      # recurrent state blobs (h; or h and c)

    def __init__(self, param, dtype=np.float32):
        super().__init__(param, dtype)
        rp = param.recurrent_param
        self.expose_hidden = bool(rp.expose_hidden)
        exposed = self.num_states if self.expose_hidden else 0
        self.min_bottom = 2 + exposed
        self.max_bottom = 3 + exposed
        self.exact_num_top = 1 + exposed

    def allow_force_backward(self, bottom_index):
        return bottom_index != 1    # never into the sequence markers

    # -- setup / reshape --------------------------------------------------
    def setup(self, bottom, top):
        rp = self.param.recurrent_param
        self.H = int(rp.num_output)
        if self.H <= 0:
            raise LayerError(self, f"recurrent_param.num_output must be "
                             f"positive, got {rp.num_output}")
        x = bottom[0]
        if x.num_axes < 2:
            raise LayerError(self, f"bottom[0] must have at least 2 axes "
                             f"(T, N, ...), got shape {x.shape}")
        self.T = x.shape[0]
        self.static_input = len(bottom) > self.min_bottom
        self.state_offset = 3 if self.static_input else 2
        D = int(np.prod(x.shape[2:], dtype=np.int64))
        Ds = None
        if self.static_input:
            xs = bottom[2]
            if xs.num_axes < 1:
                raise LayerError(self, "x_static (bottom[2]) must have at "
                                 "least 1 axis (N, ...)")
            Ds = int(np.prod(xs.shape[1:], dtype=np.int64))
        self.make_params(D, Ds, rp.weight_filler, rp.bias_filler)
        self._N = None
        self._state = None

    def reshape(self, bottom, top):
        x, cont = bottom[0], bottom[1]
        if x.num_axes < 2:
            raise LayerError(self, f"bottom[0] must have at least 2 axes "
                             f"(T, N, ...), got shape {x.shape}")
        if x.shape[0] != self.T:
            raise LayerError(self, f"input number of timesteps changed: set "
                             f"up with T = {self.T}, got bottom[0] shape "
                             f"{x.shape}")
        T, N = x.shape[:2]
        if cont.shape != (T, N):
            raise LayerError(self, f"cont (bottom[1]) must have shape (T, N) "
                             f"= {(T, N)}, got {cont.shape}")
        D = int(np.prod(x.shape[2:], dtype=np.int64))
        if D != self.blobs[0].shape[1]:
            raise LayerError(self, f"bottom[0] has {D} features per time step "
                             f"(shape {x.shape}) but the weights expect "
                             f"{self.blobs[0].shape[1]}")
        if self.static_input:
            xs = bottom[2]
            Ds = self.blobs[2].shape[1]
            if xs.num_axes < 1 or xs.shape[0] != N or xs.count // max(N, 1) != Ds:
                raise LayerError(self, f"x_static (bottom[2]) must have N = {N} "
                                 f"rows of {Ds} features, got shape {xs.shape}")
        state_shape = (1, N, self.H)
        for k, b in enumerate(bottom[self.state_offset:]):
            if b.shape != state_shape:
                raise LayerError(self, f"bottom[{self.state_offset + k}] (initial "
                                 f"state) must have shape {state_shape}, got "
                                 f"{b.shape}")
        if N != self._N:
            # NOTE(caffe): a new batch size starts from a zero state.
            self._N = N
            self._state = [np.zeros((N, self.H), self.dtype)
                           for _ in range(self.num_states)]
        top[0].reshape((T, N, self.H))
        for t in top[1:]:
            t.reshape(state_shape)

    # -- forward / backward -----------------------------------------------
    def _initial_states(self, bottom):
        if self.expose_hidden:
            return [b.data[0] for b in bottom[self.state_offset:]]
        return self._state

    def _input_transform(self, bottom, W, b, W_static):
        """W x_t + b (+ W_static x_static) for all t at once: (T, N, G)."""
        T, N = bottom[0].shape[:2]
        x2 = bottom[0].data.reshape(T * N, -1)
        pre = (x2 @ W.data.T + b.data).reshape(T, N, -1)
        if W_static is not None:
            pre += (bottom[2].data.reshape(N, -1) @ W_static.data.T)[None]
        return pre

    def _finish_forward(self, top, final):
        if self.expose_hidden:
            for t, s in zip(top[1:], final):
                t.data[0] = s
        else:
            self._state = [s.copy() for s in final]

    def _input_backward(self, propagate_down, bottom, dpre, W, b, W_static):
        """Gradients through the input transform from dpre (T, N, G)."""
        T, N, G = dpre.shape
        d2 = dpre.reshape(T * N, G)
        x = bottom[0]
        pd = self.param_propagate_down
        if pd[0]:
            W.diff[...] += d2.T @ x.data.reshape(T * N, -1)
        if pd[1]:
            b.diff[...] += d2.sum(axis=0)
        if propagate_down[0]:
            x.diff[...] = (d2 @ W.data).reshape(x.shape)
        if W_static is not None:
            xs = bottom[2]
            dsum = dpre.sum(axis=0)
            if pd[2]:
                W_static.diff[...] += dsum.T @ xs.data.reshape(N, -1)
            if propagate_down[2]:
                xs.diff[...] = (dsum @ W_static.data).reshape(xs.shape)

    def _check_propagate(self, propagate_down):
        if propagate_down[1]:
            raise LayerError(self, "cannot backpropagate to the sequence "
                             "continuation markers (bottom[1], cont)")


@register("RNN")
class RNNLayer(_RecurrentLayer):
    """Elman RNN with a tanh output layer.

    h_t = tanh(W_hh (cont_t h_{t-1}) + W_xh x_t + b_h [+ W_xh_static x_static])
    o_t = tanh(W_ho h_t + b_o)

    Parameter blobs (Caffe's unrolled-net order): W_xh (H, D), b_h (H),
    [W_xh_static (H, Ds)], W_hh (H, H), W_ho (H, H), b_o (H); weights use
    weight_filler, biases bias_filler.

    Shape:
        x (T, N, ...) with D = prod(x.shape[2:]); cont (T, N); x_static
        (N, ...); h0 (1, N, H) with expose_hidden.  Tops: o (T, N, H)
        [, hT (1, N, H)].

    recurrent_param: num_output (H), weight_filler, bias_filler, expose_hidden;
    debug_info is accepted and ignored.

    Mirrors: src/caffe/layers/rnn_layer.cpp (and recurrent_layer.cpp).
    """

    num_states = 1

    def make_params(self, D, Ds, wf, bf):
        H = self.H
        self.add_param_blob((H, D), wf)          # W_xh
        self.add_param_blob((H,), bf)            # b_h
        if Ds is not None:
            self.add_param_blob((H, Ds), wf)     # W_xh_static
        self.add_param_blob((H, H), wf)          # W_hh
        self.add_param_blob((H, H), wf)          # W_ho
        self.add_param_blob((H,), bf)            # b_o

    def _weights(self):
        s = 1 if self.static_input else 0
        W_static = self.blobs[2] if self.static_input else None
        return (self.blobs[0], self.blobs[1], W_static,
                self.blobs[2 + s], self.blobs[3 + s], self.blobs[4 + s])

    def forward(self, bottom, top):
        W_xh, b_h, W_s, W_hh, W_ho, b_o = self._weights()
        T, N = bottom[0].shape[:2]
        cont = bottom[1].data.astype(self.dtype, copy=False)
        pre = self._input_transform(bottom, W_xh, b_h, W_s)
        hs = np.empty((T + 1, N, self.H), self.dtype)      # h_0 .. h_T
        hs[0] = self._initial_states(bottom)[0]
        h_conted = np.empty((T, N, self.H), self.dtype)
        for t in range(T):
            np.multiply(hs[t], cont[t][:, None], out=h_conted[t])
            hs[t + 1] = np.tanh(pre[t] + h_conted[t] @ W_hh.data.T)
        top[0].data[...] = np.tanh(hs[1:] @ W_ho.data.T + b_o.data)
        self._cache = (cont, hs, h_conted)
        self._finish_forward(top, [hs[T]])

    def backward(self, top, propagate_down, bottom):
        self._check_propagate(propagate_down)
        W_xh, b_h, W_s, W_hh, W_ho, b_o = self._weights()
        cont, hs, h_conted = self._cache
        T, N, H = top[0].shape
        pd = self.param_propagate_down
        s = 1 if self.static_input else 0
        o = top[0].data
        do_pre = top[0].diff * (1 - o * o)
        if pd[3 + s]:
            W_ho.diff[...] += do_pre.reshape(-1, H).T @ hs[1:].reshape(-1, H)
        if pd[4 + s]:
            b_o.diff[...] += do_pre.reshape(-1, H).sum(axis=0)
        dh_out = do_pre @ W_ho.data
        dpre = np.empty((T, N, H), self.dtype)
        dh_next = np.zeros((N, H), self.dtype)
        for t in range(T - 1, -1, -1):
            h = hs[t + 1]
            dpre[t] = (dh_out[t] + dh_next) * (1 - h * h)
            dh_next = (dpre[t] @ W_hh.data) * cont[t][:, None]
        if pd[2 + s]:
            W_hh.diff[...] += dpre.reshape(-1, H).T @ h_conted.reshape(-1, H)
        self._input_backward(propagate_down, bottom, dpre, W_xh, b_h, W_s)


@register("LSTM")
class LSTMLayer(_RecurrentLayer):
    """Long short-term memory, gates in Caffe's order i, f, o, g.

    gates_t = W_xc x_t + b_c [+ W_xc_static x_static] + W_hc (cont_t h_{t-1})
    i, f, o = sigmoid(gates_t[i, f, o]);  g = tanh(gates_t[g])
    c_t = cont_t f * c_{t-1} + i * g;  h_t = o * tanh(c_t)

    Parameter blobs (Caffe's unrolled-net order): W_xc (4H, D), b_c (4H),
    [W_xc_static (4H, Ds)], W_hc (4H, H).

    Shape:
        x (T, N, ...) with D = prod(x.shape[2:]); cont (T, N); x_static
        (N, ...); h0, c0 (1, N, H) with expose_hidden.  Tops: h (T, N, H)
        [, hT (1, N, H), cT (1, N, H)].

    recurrent_param: num_output (H), weight_filler, bias_filler, expose_hidden;
    debug_info is accepted and ignored.

    Mirrors: src/caffe/layers/lstm_layer.cpp (and recurrent_layer.cpp,
    lstm_unit_layer.cpp).
    """

    num_states = 2

    def make_params(self, D, Ds, wf, bf):
        G = 4 * self.H
        self.add_param_blob((G, D), wf)          # W_xc
        self.add_param_blob((G,), bf)            # b_c
        if Ds is not None:
            self.add_param_blob((G, Ds), wf)     # W_xc_static
        self.add_param_blob((G, self.H), wf)     # W_hc

    def _weights(self):
        W_static = self.blobs[2] if self.static_input else None
        return self.blobs[0], self.blobs[1], W_static, self.blobs[-1]

    def forward(self, bottom, top):
        W_xc, b_c, W_s, W_hc = self._weights()
        T, N = bottom[0].shape[:2]
        H = self.H
        cont = bottom[1].data.astype(self.dtype, copy=False)
        pre = self._input_transform(bottom, W_xc, b_c, W_s)
        h0, c0 = self._initial_states(bottom)
        acts = np.empty((T, N, 4 * H), self.dtype)
        cs = np.empty((T + 1, N, H), self.dtype)           # c_0 .. c_T
        tanh_cs = np.empty((T, N, H), self.dtype)
        h_conted = np.empty((T, N, H), self.dtype)
        h = top[0].data
        cs[0] = c0
        h_prev = h0
        for t in range(T):
            np.multiply(h_prev, cont[t][:, None], out=h_conted[t])
            gates = pre[t] + h_conted[t] @ W_hc.data.T
            acts[t], cs[t + 1], tanh_cs[t] = _lstm_cell_forward(
                gates, cs[t], cont[t])
            h[t] = acts[t, :, 2 * H:3 * H] * tanh_cs[t]
            h_prev = h[t]
        self._cache = (cont, acts, cs, tanh_cs, h_conted)
        self._finish_forward(top, [h[T - 1], cs[T]])

    def backward(self, top, propagate_down, bottom):
        self._check_propagate(propagate_down)
        W_xc, b_c, W_s, W_hc = self._weights()
        cont, acts, cs, tanh_cs, h_conted = self._cache
        T, N, H = top[0].shape
        dtop = top[0].diff
        dgates = np.empty((T, N, 4 * H), self.dtype)
        dh_next = np.zeros((N, H), self.dtype)
        dc_next = np.zeros((N, H), self.dtype)   # the cT diff is ignored
        for t in range(T - 1, -1, -1):
            dgates[t], dc_next = _lstm_cell_backward(
                acts[t], cs[t], tanh_cs[t], dc_next, dtop[t] + dh_next)
            dh_next = (dgates[t] @ W_hc.data) * cont[t][:, None]
        if self.param_propagate_down[-1]:
            W_hc.diff[...] += dgates.reshape(-1, 4 * H).T @ \
                h_conted.reshape(-1, H)
        self._input_backward(propagate_down, bottom, dgates, W_xc, b_c, W_s)


@register("LSTMUnit")
class LSTMUnitLayer(Layer):
    """One LSTM step from precomputed gate inputs (no parameters).

    i, f, o = sigmoid(x[i, f, o]);  g = tanh(x[g])   (x split in 4 along H)
    c = cont f * c_prev + i * g;  h = o * tanh(c)

    Gradient (dc = dc_top + dh o (1 - tanh(c)^2)): dc_prev = dc cont f,
    dx_i = dc g i (1-i), dx_f = dc c_prev f (1-f), dx_o = dh tanh(c) o (1-o),
    dx_g = dc i (1-g^2); with f the cont-scaled gate (see NOTE(caffe) in
    `_lstm_cell_backward`).  No gradient into cont.

    Shape:
        bottoms c_prev (1, N, H), x (1, N, 4H), cont (1, N); tops c, h
        (1, N, H).

    Mirrors: src/caffe/layers/lstm_unit_layer.cpp.
    """

    exact_num_bottom = 3
    exact_num_top = 2

    def allow_force_backward(self, bottom_index):
        return bottom_index != 2

    def reshape(self, bottom, top):
        c_prev, x, cont = bottom
        N = c_prev.shape[1] if c_prev.num_axes == 3 else None
        for k, (b, want) in enumerate(zip(bottom, ("(1, N, H)", "(1, N, 4H)",
                                                    "(1, N)"))):
            axes = 2 if k == 2 else 3
            if b.num_axes != axes or b.shape[0] != 1 or b.shape[1] != N:
                raise LayerError(self, f"bottom[{k}] must be shaped {want} "
                                 f"(bottoms: c_prev, x, cont), got shapes "
                                 f"{[bb.shape for bb in bottom]}")
        H = c_prev.shape[2]
        if x.shape[2] != 4 * H:
            raise LayerError(self, f"x (bottom[1]) must hold 4 * H = {4 * H} "
                             f"gate inputs per stream (c_prev shape "
                             f"{c_prev.shape}), got shape {x.shape}")
        top[0].reshape(c_prev.shape)
        top[1].reshape(c_prev.shape)

    def forward(self, bottom, top):
        H = bottom[0].shape[2]
        cont = bottom[2].data[0].astype(self.dtype, copy=False)
        acts, c, tanh_c = _lstm_cell_forward(bottom[1].data[0],
                                             bottom[0].data[0], cont)
        self._cache = (acts, tanh_c)
        top[0].data[0] = c
        top[1].data[0] = acts[:, 2 * H:3 * H] * tanh_c

    def backward(self, top, propagate_down, bottom):
        if propagate_down[2]:
            raise LayerError(self, "cannot backpropagate to the sequence "
                             "continuation markers (bottom[2], cont)")
        if not (propagate_down[0] or propagate_down[1]):
            return
        acts, tanh_c = self._cache
        dgates, dc_prev = _lstm_cell_backward(
            acts, bottom[0].data[0], tanh_c, top[0].diff[0], top[1].diff[0])
        if propagate_down[0]:
            bottom[0].diff[0] = dc_prev
        if propagate_down[1]:
            bottom[1].diff[0] = dgates
