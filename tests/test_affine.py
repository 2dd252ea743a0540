"""Scale and Bias layers (protonet/layers/affine.py)."""

import numpy as np
import pytest

from caffe_ref import run_case
from protonet.blob import Blob
from protonet.errors import LayerError
from protonet.layer import create_layer
from protonet.testing import check_gradient, layer_param, make_layer

X_SHAPE = (2, 3, 4, 5)


def rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


def scale_text(extra="", bottoms=("x",)):
    b = " ".join(f'bottom: "{n}"' for n in bottoms)
    return f'type: "Scale" {b} top: "y" scale_param {{ {extra} }}'


def bias_text(extra="", bottoms=("x",)):
    b = " ".join(f'bottom: "{n}"' for n in bottoms)
    return f'type: "Bias" {b} top: "y" bias_param {{ {extra} }}'


# -- shapes -------------------------------------------------------------------
@pytest.mark.parametrize("extra, shape", [
    ("", (3,)),
    ("axis: 1 num_axes: 2", (3, 4)),
    ("axis: 0 num_axes: -1", X_SHAPE),
    ("axis: -1", (5,)),
    ("num_axes: 0", ()),
    ("axis: 2 num_axes: -1", (4, 5)),
])
def test_learned_operand_shapes(extra, shape):
    for text in (scale_text(extra + " bias_term: true"), bias_text(extra)):
        layer, _, top = make_layer(text, [rand(*X_SHAPE)])
        assert top[0].shape == X_SHAPE
        for blob in layer.blobs:
            assert blob.shape == shape


def test_default_fillers_are_identity():
    layer, _, top = make_layer(scale_text("bias_term: true"), [rand(*X_SHAPE)])
    assert np.all(layer.blobs[0].data == 1) and np.all(layer.blobs[1].data == 0)
    layer, _, _ = make_layer(bias_text(), [rand(*X_SHAPE)])
    assert np.all(layer.blobs[0].data == 0)


def test_scale_two_bottoms_bias_shape_follows_second_bottom():
    layer, _, top = make_layer(scale_text("axis: 1 bias_term: true", ("x", "s")),
                               [rand(*X_SHAPE), rand(3, 4)])
    assert [b.shape for b in layer.blobs] == [(3, 4)]
    # A scalar second bottom makes a scalar bias.
    layer, _, _ = make_layer(scale_text("bias_term: true", ("x", "s")),
                             [rand(*X_SHAPE), np.array(2.0)])
    assert [b.shape for b in layer.blobs] == [()]


# -- forward ------------------------------------------------------------------
def test_scale_forward_by_hand():
    x = np.arange(8.0).reshape(1, 2, 2, 2)
    layer, bottom, top = make_layer(scale_text("bias_term: true"), [x])
    layer.blobs[0].data[...] = [2.0, -1.0]
    layer.blobs[1].data[...] = [0.5, 10.0]
    layer.forward(bottom, top)
    expected = np.array([[[[0.5, 2.5], [4.5, 6.5]],
                          [[6.0, 5.0], [4.0, 3.0]]]])
    np.testing.assert_allclose(top[0].data, expected)


def test_scale_scalar_bottom_and_bias_forward_by_hand():
    x = np.arange(6.0).reshape(2, 3)
    layer, bottom, top = make_layer(scale_text("", ("x", "s")), [x, np.array(3.0)])
    layer.forward(bottom, top)
    np.testing.assert_allclose(top[0].data, 3 * x)
    layer, bottom, top = make_layer(bias_text("axis: 0", ("x", "b")),
                                    [x, np.array([1.0, -1.0])])
    layer.forward(bottom, top)
    np.testing.assert_allclose(top[0].data, x + np.array([[1.0], [-1.0]]))


def test_float32_stays_float32():
    layer, bottom, top = make_layer(scale_text("bias_term: true"),
                                    [rand(*X_SHAPE)], dtype=np.float32)
    layer.forward(bottom, top)
    assert top[0].data.dtype == np.float32


# -- gradients ----------------------------------------------------------------
@pytest.mark.parametrize("extra", ["bias_term: true", "axis: 1 num_axes: 2",
                                   "num_axes: 0 bias_term: true",
                                   "axis: 0 num_axes: -1 bias_term: true"])
def test_scale_learned_gradient(extra):
    layer, _, _ = make_layer(scale_text(extra), [rand(*X_SHAPE)])
    params = [rand(*b.shape, seed=5 + k) for k, b in enumerate(layer.blobs)]
    check_gradient(scale_text(extra), [rand(*X_SHAPE)], params=params)


@pytest.mark.parametrize("s_shape, extra", [((3, 4), "axis: 1 bias_term: true"),
                                            ((), "bias_term: true"),
                                            ((5,), "axis: -1")])
def test_scale_two_bottom_gradient(s_shape, extra):
    check_gradient(scale_text(extra, ("x", "s")),
                   [rand(*X_SHAPE), rand(*s_shape, seed=1)])


@pytest.mark.parametrize("extra", ["", "axis: 1 num_axes: 2", "num_axes: 0"])
def test_bias_learned_gradient(extra):
    layer, _, _ = make_layer(bias_text(extra), [rand(*X_SHAPE)])
    check_gradient(bias_text(extra), [rand(*X_SHAPE)],
                   params=[rand(*layer.blobs[0].shape, seed=3)])


@pytest.mark.parametrize("b_shape", [(3,), (3, 4), ()])
def test_bias_two_bottom_gradient(b_shape):
    check_gradient(bias_text("", ("x", "b")), [rand(*X_SHAPE), rand(*b_shape, seed=2)])


@pytest.mark.parametrize("text", [scale_text("bias_term: true"), bias_text()])
def test_param_diffs_accumulate(text):
    layer, bottom, top = make_layer(text, [rand(*X_SHAPE)])
    layer.forward(bottom, top)
    top[0].diff[...] = rand(*X_SHAPE, seed=9)
    layer.backward(top, [True], bottom)
    first = [b.diff.copy() for b in layer.blobs]
    layer.backward(top, [True], bottom)
    for b, d in zip(layer.blobs, first):
        assert np.any(d != 0)
        np.testing.assert_allclose(b.diff, 2 * d)


def test_second_bottom_diff_is_assigned_not_accumulated():
    layer, bottom, top = make_layer(scale_text("", ("x", "s")),
                                    [rand(*X_SHAPE), rand(3, seed=1)])
    layer.forward(bottom, top)
    top[0].diff[...] = 1.0
    layer.backward(top, [True, True], bottom)
    first = bottom[1].diff.copy()
    layer.backward(top, [True, True], bottom)
    np.testing.assert_allclose(bottom[1].diff, first)


def test_propagate_down_and_param_propagate_down_honoured():
    layer, bottom, top = make_layer(scale_text("", ("x", "s")),
                                    [rand(*X_SHAPE), rand(3, seed=1)])
    layer.forward(bottom, top)
    top[0].diff[...] = 1.0
    layer.backward(top, [False, False], bottom)
    assert not np.any(bottom[0].diff) and not np.any(bottom[1].diff)
    layer, bottom, top = make_layer(scale_text("bias_term: true"), [rand(*X_SHAPE)])
    layer.param_propagate_down = [False, True]
    layer.forward(bottom, top)
    top[0].diff[...] = 1.0
    layer.backward(top, [False], bottom)
    assert not np.any(layer.blobs[0].diff) and np.any(layer.blobs[1].diff)


@pytest.mark.parametrize("text", [scale_text("bias_term: true"), bias_text()])
def test_in_place_matches_out_of_place(text):
    x, dy = rand(*X_SHAPE), rand(*X_SHAPE, seed=4)
    ref, bottom, top = make_layer(text, [x])
    params = [rand(*b.shape, seed=7 + k) for k, b in enumerate(ref.blobs)]
    for b, p in zip(ref.blobs, params):
        b.data[...] = p
    ref.forward(bottom, top)
    top[0].diff[...] = dy
    ref.backward(top, [True], bottom)

    layer = create_layer(layer_param(text), np.float64)
    blob = Blob(X_SHAPE, np.float64)
    blob.data[...] = x
    layer.set_up([blob], [blob])
    for b, p in zip(layer.blobs, params):
        b.data[...] = p
    layer.forward([blob], [blob])
    np.testing.assert_allclose(blob.data, top[0].data)
    blob.diff[...] = dy
    layer.backward([blob], [True], [blob])
    np.testing.assert_allclose(blob.diff, bottom[0].diff)
    for b, r in zip(layer.blobs, ref.blobs):
        np.testing.assert_allclose(b.diff, r.diff)


# -- errors -------------------------------------------------------------------
@pytest.mark.parametrize("make_text", [scale_text, bias_text])
def test_mismatched_second_bottom_raises(make_text):
    with pytest.raises(LayerError, match=r"\(4,\).*does not match.*\(2, 3, 4, 5\)"):
        make_layer(make_text("", ("x", "s")), [rand(*X_SHAPE), rand(4)])


@pytest.mark.parametrize("make_text", [scale_text, bias_text])
def test_bad_num_axes_raises(make_text):
    with pytest.raises(LayerError, match="num_axes must be >= 0"):
        make_layer(make_text("num_axes: -2"), [rand(*X_SHAPE)])
    with pytest.raises(LayerError, match="extends past"):
        make_layer(make_text("axis: 2 num_axes: 3"), [rand(*X_SHAPE)])
    with pytest.raises(LayerError, match="axis 4 is out of range"):
        make_layer(make_text("axis: 4"), [rand(*X_SHAPE)])


def test_learned_scale_rejects_reshaped_bottom():
    layer, bottom, top = make_layer(scale_text(), [rand(*X_SHAPE)])
    bottom[0].reshape((2, 4, 4, 5))
    with pytest.raises(LayerError, match="scale of shape"):
        layer.reshape(bottom, top)


# -- golden data --------------------------------------------------------------
@pytest.mark.parametrize("case", ["bias_learned", "bias_two_bottom",
                                  "scale_axis_num_axes", "scale_learned_bias",
                                  "scale_scalar", "scale_two_bottom"])
def test_golden(case):
    run_case("layers", case)
