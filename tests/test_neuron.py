"""Neuron layers (protonet/layers/neuron.py): hand-computed forwards and
backwards, float64 gradient checks, in-place equivalence, float32 vs float64,
Dropout's mask, parameter-diff accumulation and bad-input errors.  The Caffe
golden cases run in tests/test_golden_layers.py."""

import math

import numpy as np
import pytest

from protonet import rng
from protonet.blob import Blob
from protonet.errors import LayerError, UnsupportedError
from protonet.layer import create_layer, v1_type_name
from protonet.proto import caffe_pb2
from protonet.testing import check_gradient, layer_param

TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST


def run(text, x, in_place=False, phase=TEST, dtype=np.float64, top_diff=None,
        seed=0, params=None):
    """Set up, forward and (with top_diff) backward one layer on array x.

    Returns (layer, top data, bottom diff or None)."""
    layer = create_layer(layer_param(text, phase), dtype)
    x = np.asarray(x, dtype)
    bottom = Blob(x.shape, dtype)
    bottom.data[...] = x
    top = bottom if in_place else Blob((), dtype)
    layer.set_up([bottom], [top])
    if params is not None:
        for blob, p in zip(layer.blobs, params):
            blob.data[...] = p
    rng.set_random_seed(seed)
    layer.reshape([bottom], [top])
    layer.forward([bottom], [top])
    y = top.data.copy()
    dx = None
    if top_diff is not None:
        for blob in layer.blobs:
            blob.diff[...] = 0
        top.diff[...] = top_diff
        layer.backward([top], [True], [bottom])
        dx = bottom.diff.copy()
    return layer, y, dx


def away_from_zero(shape, seed=0, lo=0.2, hi=2.0):
    g = np.random.default_rng(seed)
    return g.uniform(lo, hi, shape) * g.choice([-1.0, 1.0], shape)


# (prototxt, input) pairs; inputs keep clear of every kink and domain edge.
SHAPE = (2, 3, 4, 5)
POS = np.random.default_rng(1).uniform(0.3, 2.0, SHAPE)
SIGNED = away_from_zero(SHAPE)
CLIP_IN = np.random.default_rng(2).choice([-1.5, -0.3, 0.2, 0.4, 1.2], SHAPE) + \
    np.random.default_rng(3).uniform(-0.05, 0.05, SHAPE)
CASES = {
    "relu": ('type: "ReLU"', SIGNED),
    "relu_leaky": ('type: "ReLU" relu_param { negative_slope: 0.2 }', SIGNED),
    "relu_steep": ('type: "ReLU" relu_param { negative_slope: 1.5 }', SIGNED),
    "relu_negative": ('type: "ReLU" relu_param { negative_slope: -0.5 }', SIGNED),
    "prelu": ('type: "PReLU"', SIGNED),
    "prelu_shared": ('type: "PReLU" prelu_param { channel_shared: true }', SIGNED),
    "elu": ('type: "ELU"', SIGNED),
    "elu_alpha": ('type: "ELU" elu_param { alpha: 0.5 }', SIGNED),
    "elu_negative": ('type: "ELU" elu_param { alpha: -0.7 }', SIGNED),
    "sigmoid": ('type: "Sigmoid"', SIGNED * 2),
    "tanh": ('type: "TanH"', SIGNED),
    "absval": ('type: "AbsVal"', SIGNED),
    "bnll": ('type: "BNLL"', SIGNED * 3),
    "power_square": ('type: "Power" power_param { power: 2 scale: 0.5 shift: 1 }',
                     SIGNED),
    "power_sqrt": ('type: "Power" power_param { power: 0.5 scale: 2 shift: 0.1 }',
                   POS),
    "power_noshift": ('type: "Power" power_param { power: 3 scale: 1.5 }', SIGNED),
    "power_general": ('type: "Power" power_param { power: -1.5 scale: 0.7 '
                      'shift: 0.4 }', POS),
    "power_linear": ('type: "Power" power_param { power: 1 scale: -2 shift: 3 }',
                     SIGNED),
    "power_const": ('type: "Power" power_param { power: 2 scale: 0 shift: 3 }',
                    SIGNED),
    "exp": ('type: "Exp"', SIGNED),
    "exp_base": ('type: "Exp" exp_param { base: 2 scale: 0.5 shift: 0.1 }', SIGNED),
    "log": ('type: "Log"', POS),
    "log_base": ('type: "Log" log_param { base: 10 scale: 2 shift: 1 }', POS),
    "clip": ('type: "Clip" clip_param { min: -1 max: 1 }', CLIP_IN),
    "swish": ('type: "Swish"', SIGNED * 2),
    "swish_beta": ('type: "Swish" swish_param { beta: 1.7 }', SIGNED * 2),
    "dropout_test": ('type: "Dropout" dropout_param { dropout_ratio: 0.3 }',
                     SIGNED),
}
TRAIN_CASES = {
    "dropout_train": ('type: "Dropout" dropout_param { dropout_ratio: 0.3 }',
                      SIGNED),
}
ALL = {**{k: (t, x, TEST) for k, (t, x) in CASES.items()},
       **{k: (t, x, TRAIN) for k, (t, x) in TRAIN_CASES.items()}}


# -- gradients ---------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(ALL))
def test_gradient(name):
    text, x, phase = ALL[name]
    params = None
    if name.startswith("prelu"):
        shape = () if "shared" in name else (SHAPE[1],)
        params = [np.random.default_rng(4).uniform(-0.5, 0.8, shape)]
    check_gradient(text, [x], phase=phase, params=params, max_checks=60,
                   num_tops=1)


def test_bnll_gradient_beyond_threshold():
    # NOTE(caffe): exp(min(x, 50)) keeps the gradient finite and ~1 there.
    x = np.array([[40.0, 55.0, 80.0, -60.0, 1000.0]])
    _, y, dx = run('type: "BNLL"', x, top_diff=np.ones_like(x))
    np.testing.assert_allclose(y[0, :3], x[0, :3], rtol=1e-12)
    assert y[0, 4] == 1000.0 and 0 < y[0, 3] < 1e-25
    np.testing.assert_allclose(dx[0, [0, 1, 2, 4]], 1.0, rtol=1e-15)
    assert 0 < dx[0, 3] < 1e-25


# -- in place ----------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(ALL))
def test_in_place_matches_out_of_place(name):
    text, x, phase = ALL[name]
    dy = np.random.default_rng(5).standard_normal(x.shape)
    params = [np.full((SHAPE[1],) if "shared" not in name else (), -0.3)] \
        if name.startswith("prelu") else None
    ref = run(text, x, phase=phase, top_diff=dy, params=params)
    got = run(text, x, in_place=True, phase=phase, top_diff=dy, params=params)
    np.testing.assert_allclose(got[1], ref[1], rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(got[2], ref[2], rtol=1e-12, atol=1e-15)
    for a, b in zip(got[0].blobs, ref[0].blobs):
        np.testing.assert_allclose(a.diff, b.diff, rtol=1e-12)


# -- float32 -----------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(ALL))
def test_float32_matches_float64(name):
    text, x, phase = ALL[name]
    dy = np.random.default_rng(6).standard_normal(x.shape)
    lay32, y32, dx32 = run(text, x, phase=phase, dtype=np.float32, top_diff=dy)
    _, y64, dx64 = run(text, x, phase=phase, dtype=np.float64, top_diff=dy)
    assert y32.dtype == np.float32 and dx32.dtype == np.float32
    np.testing.assert_allclose(y32, y64, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dx32, dx64, rtol=1e-4, atol=1e-5)
    for blob in lay32.blobs:
        assert blob.data.dtype == np.float32 and blob.diff.dtype == np.float32


# -- shapes ------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(5,), (2, 3), (2, 3, 4, 5), (1, 2, 1, 1, 3),
                                   (0, 3, 2)])
@pytest.mark.parametrize("name", ["relu", "relu_leaky", "sigmoid", "tanh",
                                  "power_square", "dropout_test", "swish"])
def test_top_has_bottom_shape(name, shape):
    text = CASES[name][0]
    x = np.random.default_rng(0).standard_normal(shape)
    _, y, dx = run(text, x, top_diff=np.ones(shape))
    assert y.shape == shape and dx.shape == shape


@pytest.mark.parametrize("shape", [(4, 3), (0, 3, 2, 2), (2, 3, 1, 1, 2)])
def test_prelu_shapes(shape):
    layer, y, dx = run('type: "PReLU"', -np.ones(shape), top_diff=np.ones(shape))
    assert layer.blobs[0].shape == (3,)
    np.testing.assert_allclose(y, -0.25)
    np.testing.assert_allclose(dx, 0.25)
    np.testing.assert_allclose(layer.blobs[0].diff, -np.prod(shape) / 3)
    layer, _, _ = run('type: "PReLU" prelu_param { channel_shared: true }',
                      np.ones(shape))
    assert layer.blobs[0].shape == ()


def test_reshape_follows_new_bottom_shape():
    layer = create_layer(layer_param('type: "TanH"'), np.float64)
    b, t = Blob((2, 3), np.float64), Blob((), np.float64)
    layer.set_up([b], [t])
    b.reshape((4, 1, 5))
    b.data[...] = 0.5
    layer.reshape([b], [t])
    layer.forward([b], [t])
    assert t.shape == (4, 1, 5)
    np.testing.assert_allclose(t.data, math.tanh(0.5))


# -- hand-computed values ----------------------------------------------------
HAND = [
    ('type: "ReLU"', [-2, -0.5, 0, 1.5], [0, 0, 0, 1.5], [0, 0, 0, 1]),
    ('type: "ReLU" relu_param { negative_slope: 0.1 }', [-2, -0.5, 0, 1.5],
     [-0.2, -0.05, 0, 1.5], [0.1, 0.1, 0.1, 1]),
    ('type: "ReLU" relu_param { negative_slope: 2 }', [-2, 3],
     [-4, 3], [2, 1]),
    ('type: "ELU" elu_param { alpha: 2 }', [-1, 0, 2],
     [2 * (math.exp(-1) - 1), 0, 2], [2 * math.exp(-1), 2, 1]),
    ('type: "Sigmoid"', [0, math.log(3), -math.log(3)], [0.5, 0.75, 0.25],
     [0.25, 0.1875, 0.1875]),
    ('type: "TanH"', [0, math.log(2)], [0, 0.6], [1, 0.64]),
    ('type: "AbsVal"', [-3, 0, 2], [3, 0, 2], [-1, 0, 1]),
    ('type: "BNLL"', [0, math.log(3)], [math.log(2), math.log(4)], [0.5, 0.75]),
    ('type: "Power" power_param { power: 2 scale: 0.5 shift: 1 }', [2, -4],
     [4, 1], [2, -1]),
    ('type: "Power" power_param { power: 0 scale: 3 shift: 5 }', [2, -4],
     [1, 1], [0, 0]),
    ('type: "Power" power_param { power: 2 scale: 0 shift: 3 }', [2, -4],
     [9, 9], [0, 0]),
    ('type: "Power" power_param { power: 1 scale: 2 shift: 3 }', [2, -4],
     [7, -5], [2, 2]),
    ('type: "Power" power_param { power: 3 scale: 2 }', [1, -0.5],
     [8, -1], [24, 6]),
    ('type: "Power" power_param { power: 0.5 scale: 2 shift: 1 }', [4, 1.5],
     [3, 2], [1 / 3, 0.5]),
    ('type: "Exp"', [0, 1], [1, math.e], [1, math.e]),
    ('type: "Exp" exp_param { base: 2 shift: 1 }', [0, 2], [2, 8],
     [2 * math.log(2), 8 * math.log(2)]),
    ('type: "Exp" exp_param { scale: 2 shift: -1 }', [0.5, 1], [1, math.e],
     [2, 2 * math.e]),
    ('type: "Log"', [1, math.e], [0, 1], [1, 1 / math.e]),
    ('type: "Log" log_param { base: 10 scale: 2 shift: 1 }', [4.5, 49.5],
     [1, 2], [2 / (10 * math.log(10)), 2 / (100 * math.log(10))]),
    ('type: "Clip" clip_param { min: -1 max: 2 }', [-3, -1, 0.5, 2, 5],
     [-1, -1, 0.5, 2, 2], [0, 1, 1, 1, 0]),
    ('type: "Swish"', [0, math.log(3)], [0, 0.75 * math.log(3)],
     [0.5, 0.75 + 0.75 * 0.25 * math.log(3)]),
    ('type: "Swish" swish_param { beta: 2 }', [math.log(3) / 2],
     [0.75 * math.log(3) / 2], [0.75 + 2 * 0.75 * 0.25 * math.log(3) / 2]),
    ('type: "Dropout" dropout_param { dropout_ratio: 0.5 }', [1, -2], [1, -2],
     [1, 1]),
]


@pytest.mark.parametrize("text,x,want_y,want_dx", HAND,
                         ids=[h[0].split('"')[1] + str(i) for i, h in enumerate(HAND)])
@pytest.mark.parametrize("in_place", [False, True])
def test_hand_computed(text, x, want_y, want_dx, in_place):
    x = np.array([x], np.float64)
    _, y, dx = run(text, x, in_place=in_place, top_diff=np.ones_like(x))
    # Parameters are float32 in the proto (0.1 is 0.100000001), hence 1e-7.
    np.testing.assert_allclose(y[0], want_y, rtol=1e-7, atol=1e-15)
    np.testing.assert_allclose(dx[0], want_dx, rtol=1e-7, atol=1e-15)


def test_backward_multiplies_the_top_diff():
    x = np.array([[-1.0, 2.0]])
    _, _, dx = run('type: "ReLU" relu_param { negative_slope: 0.5 }', x,
                   top_diff=np.array([[3.0, -4.0]]))
    np.testing.assert_allclose(dx, [[1.5, -4.0]])


def test_threshold_forward():
    x = np.array([[0.1, 0.2, 0.3, -5.0]], np.float32)
    _, y, _ = run('type: "Threshold" threshold_param { threshold: 0.2 }', x,
                  dtype=np.float32)
    np.testing.assert_array_equal(y, [[0, 0, 1, 0]])
    assert y.dtype == np.float32


def test_prelu_forward_per_channel():
    x = np.array([[[-4.0, 2.0], [-1.0, 3.0]]])             # N=1, C=2, W=2
    _, y, dx = run('type: "PReLU"', x, top_diff=np.ones_like(x),
                   params=[np.array([0.5, -1.0])])
    np.testing.assert_allclose(y, [[[-2.0, 2.0], [1.0, 3.0]]])
    np.testing.assert_allclose(dx, [[[0.5, 1.0], [-1.0, 1.0]]])


def test_prelu_filler_default_and_given():
    layer, _, _ = run('type: "PReLU"', np.ones((1, 4)))
    np.testing.assert_array_equal(layer.blobs[0].data, 0.25)
    layer, _, _ = run('type: "PReLU" prelu_param { filler { type: "constant" '
                      'value: -0.1 } }', np.ones((1, 4)))
    np.testing.assert_allclose(layer.blobs[0].data, -0.1)


@pytest.mark.parametrize("shared", [False, True])
def test_prelu_slope_diff_accumulates(shared):
    text = 'type: "PReLU"' + (' prelu_param { channel_shared: true }'
                              if shared else '')
    x = away_from_zero((2, 3, 2, 2), seed=7)
    dy = np.random.default_rng(8).standard_normal(x.shape)
    layer, _, _ = run(text, x, top_diff=dy)
    once = layer.blobs[0].diff.copy()
    expected = (dy * np.minimum(x, 0)).sum() if shared else \
        (dy * np.minimum(x, 0)).sum(axis=(0, 2, 3))
    np.testing.assert_allclose(once, expected, rtol=1e-12)
    bottom = Blob(x.shape, np.float64)
    bottom.data[...] = x
    top = Blob((), np.float64)
    layer.reshape([bottom], [top])
    layer.forward([bottom], [top])
    top.diff[...] = dy
    layer.backward([top], [True], [bottom])
    np.testing.assert_allclose(layer.blobs[0].diff, 2 * once, rtol=1e-12)


def test_propagate_down_false_leaves_bottom_diff_alone():
    x = away_from_zero((2, 3, 2), seed=9)
    layer = create_layer(layer_param('type: "PReLU"'), np.float64)
    b, t = Blob(x.shape, np.float64), Blob((), np.float64)
    b.data[...] = x
    layer.set_up([b], [t])
    layer.forward([b], [t])
    b.diff[...] = 7.0
    t.diff[...] = 1.0
    layer.backward([t], [False], [b])
    np.testing.assert_array_equal(b.diff, 7.0)
    assert np.any(layer.blobs[0].diff != 0)     # the slope still learns


# -- Dropout -----------------------------------------------------------------
DROPOUT = 'type: "Dropout" dropout_param { dropout_ratio: %g }'


@pytest.mark.parametrize("ratio", [0.3, 0.5, 0.9])
def test_dropout_train_mask_statistics_and_scaling(ratio):
    x = np.random.default_rng(10).uniform(0.5, 1.5, (50, 40, 100))
    dy = np.random.default_rng(11).standard_normal(x.shape)
    _, y, dx = run(DROPOUT % ratio, x, phase=TRAIN, dtype=np.float32,
                   top_diff=dy, seed=123)
    kept = y != 0
    # 200000 Bernoulli draws: the std of the kept fraction is <= 0.0012, so
    # 0.01 is over 8 sigma (and the seed is fixed anyway).
    assert abs(kept.mean() - (1 - ratio)) < 0.01
    # NOTE(caffe): scale = 1 / (1 - ratio) of the float32 ratio.
    scale = np.float32(1 / (1 - float(np.float32(ratio))))
    np.testing.assert_array_equal(y[kept], x.astype(np.float32)[kept] * scale)
    # Backward applies the same mask and scale.
    np.testing.assert_array_equal(dx != 0, kept)
    np.testing.assert_array_equal(dx[kept], dy.astype(np.float32)[kept] * scale)


def test_dropout_mask_is_seeded_and_fresh_each_forward():
    x = np.ones((1000,))
    _, y1, _ = run(DROPOUT % 0.5, x, phase=TRAIN, seed=5)
    _, y2, _ = run(DROPOUT % 0.5, x, phase=TRAIN, seed=5)
    np.testing.assert_array_equal(y1, y2)
    layer = create_layer(layer_param(DROPOUT % 0.5, TRAIN), np.float64)
    b, t = Blob(x.shape, np.float64), Blob((), np.float64)
    b.data[...] = x
    layer.set_up([b], [t])
    rng.set_random_seed(5)
    layer.forward([b], [t])
    first = t.data.copy()
    layer.forward([b], [t])
    assert np.any(first != t.data)


def test_dropout_ratio_zero_keeps_everything():
    x = np.random.default_rng(12).standard_normal((3, 7))
    _, y, dx = run(DROPOUT % 0, x, phase=TRAIN, top_diff=np.ones_like(x))
    np.testing.assert_array_equal(y, x)
    np.testing.assert_array_equal(dx, 1.0)


def test_dropout_test_phase_is_identity():
    x = np.random.default_rng(13).standard_normal((3, 7))
    dy = np.random.default_rng(14).standard_normal((3, 7))
    _, y, dx = run(DROPOUT % 0.7, x, phase=TEST, top_diff=dy)
    np.testing.assert_array_equal(y, x)
    np.testing.assert_array_equal(dx, dy)


# -- registry ----------------------------------------------------------------
@pytest.mark.parametrize("v1,v2", [("RELU", "ReLU"), ("SIGMOID", "Sigmoid"),
                                   ("TANH", "TanH"), ("ABSVAL", "AbsVal"),
                                   ("BNLL", "BNLL"), ("POWER", "Power"),
                                   ("EXP", "Exp"), ("THRESHOLD", "Threshold"),
                                   ("DROPOUT", "Dropout")])
def test_v1_names(v1, v2):
    assert v1_type_name(v1) == v2


# -- errors ------------------------------------------------------------------
@pytest.mark.parametrize("text,words", [
    ('type: "Exp" exp_param { base: -2 }', "exp_param.base"),
    ('type: "Exp" exp_param { base: 0 }', "positive"),
    ('type: "Log" log_param { base: -3 }', "log_param.base"),
    ('type: "Log" log_param { base: 1 }', "not 1"),
    ('type: "Dropout" dropout_param { dropout_ratio: 1 }', "[0, 1)"),
    ('type: "Dropout" dropout_param { dropout_ratio: -0.1 }', "dropout_ratio"),
    ('type: "Clip" clip_param { min: 2 max: 1 }', "greater than"),
    ('type: "Clip"', "required"),
])
def test_bad_parameters(text, words):
    with pytest.raises(LayerError) as e:
        run(text, np.ones((2, 2)))
    assert words in str(e.value)
    assert "layer '" in str(e.value)


def test_prelu_needs_two_axes():
    with pytest.raises(LayerError, match="at least 2 axes"):
        run('type: "PReLU"', np.ones(4))


def test_prelu_channel_change_is_rejected():
    layer = create_layer(layer_param('type: "PReLU"'), np.float64)
    b, t = Blob((2, 3, 4), np.float64), Blob((), np.float64)
    layer.set_up([b], [t])
    b.reshape((2, 5, 4))
    with pytest.raises(LayerError, match="3 values but the bottom has 5"):
        layer.reshape([b], [t])


def test_threshold_has_no_backward():
    layer, _, _ = run('type: "Threshold"', np.ones((2, 2)))
    b = Blob((2, 2), np.float64)
    t = Blob((2, 2), np.float64)
    with pytest.raises(UnsupportedError, match="no backward"):
        layer.backward([t], [True], [b])


def test_neuron_layers_take_one_bottom_and_one_top():
    layer = create_layer(layer_param('type: "ReLU"'), np.float64)
    with pytest.raises(LayerError, match="bottom"):
        layer.set_up([Blob((2,)), Blob((2,))], [Blob(())])
