"""Common layers (Split, Silence, InnerProduct, Softmax, Eltwise, ArgMax,
Reduction, Parameter): shapes, hand-computed forwards, float64 gradients,
parameter-diff accumulation, errors, and their golden cases from real Caffe."""

import numpy as np
import pytest

from caffe_ref import run_case
from protonet.blob import Blob
from protonet.errors import LayerError
from protonet.layer import create_layer, v1_type_name
from protonet.testing import check_gradient, layer_param, make_layer, run_forward


def rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


def forward(text, bottoms, dtype=np.float64):
    layer, bottom, top = make_layer(text, bottoms, dtype=dtype)
    run_forward(layer, bottom, top)
    return layer, bottom, top


def assert_params_accumulate(text, bottoms):
    """Two backward passes with the same top diff give twice the param diff."""
    layer, bottom, top = forward(text, bottoms)
    for t in top:
        t.diff[...] = rand(*t.shape, seed=3)
    for b in layer.blobs:
        b.diff[...] = 0
    prop = [True] * len(bottom)
    layer.backward(top, prop, bottom)
    once = [b.diff.copy() for b in layer.blobs]
    layer.backward(top, prop, bottom)
    assert layer.blobs, "layer has no parameters"
    for b, d in zip(layer.blobs, once):
        assert np.abs(d).sum() > 0
        np.testing.assert_allclose(b.diff, 2 * d, rtol=1e-12)


GOLDEN = ["argmax", "argmax_axis", "argmax_topk_maxval", "eltwise_max",
          "eltwise_prod", "eltwise_prod_unstable", "eltwise_sum_coeff",
          "ip_axis1", "ip_axis2", "ip_nobias", "ip_transpose", "parameter",
          "reduction_asum", "reduction_mean", "reduction_sum",
          "reduction_sumsq", "silence", "softmax_axis", "softmax_axis1",
          "split_explicit"]


@pytest.mark.parametrize("case", GOLDEN)
def test_golden_case(case):
    run_case("layers", case)


@pytest.mark.parametrize("v1,v2", [
    ("INNER_PRODUCT", "InnerProduct"), ("SOFTMAX", "Softmax"),
    ("ELTWISE", "Eltwise"), ("ARGMAX", "ArgMax"), ("SPLIT", "Split"),
    ("SILENCE", "Silence")])
def test_v1_names(v1, v2):
    assert v1_type_name(v1) == v2


@pytest.mark.parametrize("text,bottoms", [
    ('type: "InnerProduct" inner_product_param { num_output: 3 '
     'weight_filler { type: "gaussian" } }', [(2, 4)]),
    ('type: "Softmax"', [(2, 4)]),
    ('type: "Eltwise" eltwise_param { operation: MAX }', [(2, 3), (2, 3)]),
    ('type: "Eltwise" eltwise_param { coeff: 2 coeff: -1 }', [(2, 3), (2, 3)]),
    ('type: "ArgMax" argmax_param { out_max_val: true }', [(2, 5)]),
    ('type: "Reduction" reduction_param { operation: MEAN axis: 1 }', [(2, 5)]),
])
def test_float32_stays_float32(text, bottoms):
    layer, bottom, top = forward(text + ' top: "y"',
                                 [rand(*s) for s in bottoms], np.float32)
    assert top[0].data.dtype == np.float32
    for b in layer.blobs:
        assert b.data.dtype == np.float32


# -- Split / Silence -----------------------------------------------------------
SPLIT = 'type: "Split" bottom: "x" top: "a" top: "b" top: "c"'


def test_split_shares_data_and_sums_diffs():
    x = rand(2, 3)
    layer, bottom, top = forward(SPLIT, [x])
    for t in top:
        assert t.shape == (2, 3)
        assert np.shares_memory(t.data, bottom[0].data)
    for k, t in enumerate(top):
        t.diff[...] = k + 1
    layer.backward(top, [True], bottom)
    np.testing.assert_array_equal(bottom[0].diff, np.full((2, 3), 6.0))


def test_split_reshares_after_bottom_reallocates():
    layer, bottom, top = forward(SPLIT, [rand(2, 3)])
    bottom[0].reshape(4, 5)             # a new array, as a producer's reshape
    bottom[0].data[...] = 7
    run_forward(layer, bottom, top)
    for t in top:
        assert t.shape == (4, 5)
        assert np.all(t.data == 7)


def test_split_gradient():
    check_gradient(SPLIT, [rand(3, 2)])


def test_silence_zeroes_bottom_diffs():
    layer, bottom, top = forward('type: "Silence" bottom: "x" bottom: "y"',
                                 [rand(2, 3), rand(4)])
    assert top == []
    for b in bottom:
        b.diff[...] = 5
    layer.backward(top, [True, False], bottom)
    assert np.all(bottom[0].diff == 0) and np.all(bottom[1].diff == 5)


# -- InnerProduct --------------------------------------------------------------
def ip(num_output, extra=""):
    return ('type: "InnerProduct" bottom: "x" top: "y" inner_product_param { '
            f'num_output: {num_output} weight_filler {{ type: "gaussian" }} '
            f'bias_filler {{ type: "gaussian" }} {extra} }}')


@pytest.mark.parametrize("shape,extra,top_shape,wshape", [
    ((2, 3, 2, 2), "", (2, 5), (5, 12)),
    ((2, 3, 4), "axis: 2", (2, 3, 5), (5, 4)),
    ((2, 3, 4), "axis: -1", (2, 3, 5), (5, 4)),
    ((2, 3, 4), "axis: 0", (5,), (5, 24)),
    ((3, 6), "transpose: true", (3, 5), (6, 5)),
    ((3, 6), "bias_term: false", (3, 5), (5, 6)),
])
def test_inner_product_shapes(shape, extra, top_shape, wshape):
    layer, _, top = make_layer(ip(5, extra), [np.zeros(shape)])
    assert top[0].shape == top_shape
    assert layer.blobs[0].shape == wshape
    assert len(layer.blobs) == (1 if "bias_term" in extra else 2)
    if len(layer.blobs) == 2:
        assert layer.blobs[1].shape == (5,)


@pytest.mark.parametrize("transpose", [False, True])
def test_inner_product_forward_by_hand(transpose):
    x = np.array([[1.0, 2.0], [3.0, -1.0]])
    W = np.array([[1.0, 0.0], [2.0, 1.0], [0.5, -1.0]])     # (num_output, K)
    b = np.array([0.0, 1.0, -2.0])
    layer, bottom, top = make_layer(ip(3, f"transpose: {str(transpose).lower()}"),
                                    [x])
    layer.blobs[0].data[...] = W.T if transpose else W
    layer.blobs[1].data[...] = b
    run_forward(layer, bottom, top)
    np.testing.assert_allclose(top[0].data, [[1, 5, -3.5], [3, 6, 0.5]])


@pytest.mark.parametrize("shape,extra", [
    ((2, 3, 2), ""), ((2, 3, 4), "axis: 2"), ((3, 4), "transpose: true"),
    ((3, 4), "bias_term: false"), ((2, 2, 3), "axis: 0 transpose: true")])
def test_inner_product_gradient(shape, extra):
    check_gradient(ip(3, extra), [rand(*shape)])


@pytest.mark.parametrize("extra", ["", "transpose: true"])
def test_inner_product_param_diffs_accumulate(extra):
    assert_params_accumulate(ip(3, extra), [rand(2, 4)])


@pytest.mark.parametrize("extra", ["", "transpose: true"])
def test_inner_product_weight_gradient_in_blocks_over_threads(monkeypatch,
                                                              extra):
    # Blocks of 2 rows of dW, spread over two threads: the same dW += dy^T x
    # (accumulated onto what was there), gradients checked numerically too.
    from protonet import threads
    from protonet.layers import common
    monkeypatch.setenv("PROTONET_THREADS", "2")
    monkeypatch.setattr(common, "DW_BLOCK_BYTES", 2 * 7 * 8)
    monkeypatch.setattr(threads, "MIN_SPLIT_ELEMENTS", 0)
    layer, bottom, top = make_layer(ip(7, extra), [rand(3, 7)])
    layer.forward(bottom, top)
    top[0].diff[...] = rand(3, 7)
    before = rand(*layer.blobs[0].shape)
    layer.blobs[0].diff[...] = before
    layer.backward(top, [True], bottom)
    x, dy = bottom[0].data, top[0].diff
    want = before + (x.T @ dy if "transpose" in extra else dy.T @ x)
    np.testing.assert_allclose(layer.blobs[0].diff, want, rtol=1e-12)
    check_gradient(ip(7, extra), [rand(3, 7)])


def test_inner_product_reshape_checks_k():
    layer, bottom, top = make_layer(ip(3), [np.zeros((2, 4))])
    bottom[0].reshape(7, 4)             # a new batch size is fine
    layer.reshape(bottom, top)
    assert top[0].shape == (7, 3)
    bottom[0].reshape(2, 5)
    with pytest.raises(LayerError, match=r"InnerProduct layer 'innerproduct': "
                       r"bottom flattens to 5 features from axis 1 but the "
                       r"weights expect 4 \(bottom shape \(2, 5\)\)"):
        layer.reshape(bottom, top)


def test_inner_product_needs_num_output():
    with pytest.raises(LayerError, match="num_output must be positive"):
        make_layer('type: "InnerProduct" bottom: "x" top: "y"', [np.zeros((2, 3))])


# -- Softmax -------------------------------------------------------------------
def test_softmax_forward_by_hand():
    x = np.array([[0.0, np.log(3.0)], [1000.0, 1000.0]])
    _, _, top = forward('type: "Softmax" bottom: "x" top: "y"', [x])
    np.testing.assert_allclose(top[0].data, [[0.25, 0.75], [0.5, 0.5]])


@pytest.mark.parametrize("axis,shape", [(1, (2, 3, 2)), (2, (2, 3, 4)),
                                        (-1, (3, 4)), (0, (3, 2))])
def test_softmax_gradient(axis, shape):
    text = f'type: "Softmax" bottom: "x" top: "y" softmax_param {{ axis: {axis} }}'
    layer, _, top = forward(text, [rand(*shape)])
    np.testing.assert_allclose(top[0].data.sum(axis=axis), 1.0)
    check_gradient(text, [rand(*shape)])


def test_softmax_in_place():
    x = rand(2, 4)
    _, ref_bottom, ref_top = forward('type: "Softmax" bottom: "x" top: "y"', [x])
    ref_top[0].diff[...] = rand(2, 4, seed=1)
    layer = create_layer(layer_param('type: "Softmax" bottom: "x" top: "x"'),
                         np.float64)
    blob = Blob((2, 4), np.float64)
    blob.data[...] = x
    layer.set_up([blob], [blob])
    run_forward(layer, [blob], [blob])
    np.testing.assert_allclose(blob.data, ref_top[0].data)
    blob.diff[...] = ref_top[0].diff
    layer.backward([blob], [True], [blob])
    ref_layer = create_layer(layer_param('type: "Softmax" bottom: "x" top: "y"'),
                             np.float64)
    ref_layer.set_up(ref_bottom, ref_top)
    ref_layer.forward(ref_bottom, ref_top)
    ref_layer.backward(ref_top, [True], ref_bottom)
    np.testing.assert_allclose(blob.diff, ref_bottom[0].diff)


# -- Eltwise -------------------------------------------------------------------
def eltwise(n, params):
    bottoms = " ".join(f'bottom: "x{i}"' for i in range(n))
    return f'type: "Eltwise" {bottoms} top: "y" eltwise_param {{ {params} }}'


def test_eltwise_forward_by_hand():
    a, b, c = np.array([1.0, -2.0, 3.0]), np.array([2.0, 2.0, 0.5]), \
        np.array([0.0, 4.0, 1.0])
    _, _, t = forward(eltwise(3, "operation: PROD"), [a, b, c])
    np.testing.assert_allclose(t[0].data, [0, -16, 1.5])
    _, _, t = forward(eltwise(3, "operation: SUM coeff: 1 coeff: -0.5 coeff: 2"),
                      [a, b, c])
    np.testing.assert_allclose(t[0].data, [0, 5, 4.75])
    _, _, t = forward(eltwise(3, "operation: MAX"), [a, b, c])
    np.testing.assert_allclose(t[0].data, [2, 4, 3])


@pytest.mark.parametrize("shape", [(0,), (2, 0, 3), (0, 4)])
@pytest.mark.parametrize("op", ["SUM", "PROD", "MAX"])
def test_eltwise_on_empty_blobs(shape, op):
    # Found by the generated-nets fuzz test: SUM split an empty blob into
    # rows with reshape(len, -1), which NumPy cannot infer for size 0.
    x = np.zeros(shape)
    _, _, t = forward(eltwise(2, f"operation: {op}"), [x, x])
    assert t[0].data.shape == shape


def test_eltwise_max_ties_follow_caffe():
    # Ties between bottoms 0 and 1 go to bottom 1; later bottoms must be
    # strictly greater to win.
    a = np.array([1.0, 1.0, 5.0])
    b = np.array([1.0, 0.0, 5.0])
    c = np.array([1.0, 1.0, 2.0])
    layer, bottom, top = forward(eltwise(3, "operation: MAX"), [a, b, c])
    top[0].diff[...] = [10.0, 20.0, 30.0]
    layer.backward(top, [True] * 3, bottom)
    np.testing.assert_array_equal(bottom[0].diff, [0, 20, 0])
    np.testing.assert_array_equal(bottom[1].diff, [10, 0, 30])
    np.testing.assert_array_equal(bottom[2].diff, [0, 0, 0])


@pytest.mark.parametrize("n,params", [
    (2, "operation: PROD"), (3, "operation: PROD"),
    (3, "operation: PROD stable_prod_grad: false"),
    (3, "operation: SUM"), (3, "operation: SUM coeff: 1 coeff: -0.5 coeff: 2"),
    (2, "operation: MAX"), (3, "operation: MAX")])
def test_eltwise_gradient(n, params):
    # Values kept away from 0 (unstable PROD divides) and spaced so MAX has
    # no near-ties.
    gen = np.random.default_rng(4)
    vals = gen.permutation(np.arange(1, 2 * 3 * n + 1)).reshape(n, 2, 3) * 0.25
    signs = np.where(gen.random((n, 2, 3)) < 0.5, -1, 1)
    check_gradient(eltwise(n, params), list(vals * signs))


def test_eltwise_partial_propagate_down():
    layer, bottom, top = forward(eltwise(3, "operation: PROD"),
                                 [rand(4, seed=i) for i in range(3)])
    top[0].diff[...] = 1
    for b in bottom:
        b.diff[...] = 9
    layer.backward(top, [False, True, False], bottom)
    assert np.all(bottom[0].diff == 9) and np.all(bottom[2].diff == 9)
    np.testing.assert_allclose(bottom[1].diff, bottom[0].data * bottom[2].data)


def test_eltwise_errors():
    with pytest.raises(LayerError, match=r"bottom 0 is \(2, 3\), bottom 1 is \(3, 2\)"):
        make_layer(eltwise(2, "operation: SUM"), [np.zeros((2, 3)), np.zeros((3, 2))])
    with pytest.raises(LayerError, match="one coefficient per bottom"):
        make_layer(eltwise(2, "coeff: 1"), [np.zeros(2), np.zeros(2)])
    with pytest.raises(LayerError, match="only allowed with operation SUM"):
        make_layer(eltwise(2, "operation: PROD coeff: 1 coeff: 2"),
                   [np.zeros(2), np.zeros(2)])
    with pytest.raises(LayerError, match="at least 2 bottom"):
        make_layer(eltwise(1, "operation: SUM"), [np.zeros(2)])


# -- ArgMax --------------------------------------------------------------------
def argmax(params=""):
    return f'type: "ArgMax" bottom: "x" top: "y" argmax_param {{ {params} }}'


@pytest.mark.parametrize("shape,params,top_shape", [
    ((3, 5), "", (3, 1, 1)),
    ((2, 3, 2, 2), "top_k: 3", (2, 1, 3, 1)),
    ((3, 6), "top_k: 2 out_max_val: true", (3, 2, 2)),
    ((2, 4, 3), "axis: 1 top_k: 2", (2, 2, 3)),
    ((2, 4, 3), "axis: -1 out_max_val: true", (2, 4, 1)),
])
def test_argmax_shapes(shape, params, top_shape):
    _, _, top = make_layer(argmax(params), [np.zeros(shape)])
    assert top[0].shape == top_shape


def test_argmax_forward_by_hand():
    x = np.array([[0.1, 0.9, 0.3, 0.9], [5.0, -1.0, 2.0, 4.0]])
    _, _, top = forward(argmax("top_k: 2 out_max_val: true"), [x])
    # Equal values: the higher index ranks first (Caffe's pair comparison).
    np.testing.assert_allclose(top[0].data, [[[3, 1], [0.9, 0.9]],
                                             [[0, 3], [5.0, 4.0]]])
    _, _, top = forward(argmax("axis: 0"), [x])
    np.testing.assert_array_equal(top[0].data, [[1, 0, 1, 1]])
    _, _, top = forward(argmax("axis: 1 top_k: 2 out_max_val: true"), [x])
    np.testing.assert_allclose(top[0].data, [[0.9, 0.9], [5.0, 4.0]])


def test_argmax_matches_naive_oracle():
    x = np.round(rand(2, 5, 3, seed=7), 1)      # rounding makes ties
    _, _, top = forward(argmax("axis: 1 top_k: 3"), [x])
    for n in range(2):
        for w in range(3):
            ranked = sorted(((x[n, c, w], c) for c in range(5)), reverse=True)
            np.testing.assert_array_equal(top[0].data[n, :, w],
                                          [c for _, c in ranked[:3]])


def test_argmax_errors():
    with pytest.raises(LayerError, match=r"top_k \(6\) exceeds"):
        make_layer(argmax("top_k: 6"), [np.zeros((2, 5))])
    with pytest.raises(LayerError, match=r"top_k \(3\) exceeds the size of axis 1"):
        make_layer(argmax("axis: 1 top_k: 3"), [np.zeros((2, 2, 4))])
    with pytest.raises(LayerError, match="top_k must be at least 1"):
        make_layer(argmax("top_k: 0"), [np.zeros((2, 5))])
    layer, bottom, top = make_layer(argmax(), [np.zeros((2, 5))])
    with pytest.raises(LayerError, match="no backward"):
        layer.backward(top, [True], bottom)


# -- Reduction -----------------------------------------------------------------
def reduction(params):
    return f'type: "Reduction" bottom: "x" top: "y" reduction_param {{ {params} }}'


@pytest.mark.parametrize("op,ref", [
    ("SUM", lambda v: v.sum(-1)), ("ASUM", lambda v: np.abs(v).sum(-1)),
    ("SUMSQ", lambda v: (v * v).sum(-1)), ("MEAN", lambda v: v.mean(-1))])
@pytest.mark.parametrize("axis,top_shape", [(0, ()), (1, (2,)), (2, (2, 3)),
                                            (-1, (2, 3))])
def test_reduction_forward(op, ref, axis, top_shape):
    x = rand(2, 3, 4)
    _, _, top = forward(reduction(f"operation: {op} axis: {axis} coeff: -1.5"), [x])
    assert top[0].shape == top_shape
    flat = x.reshape(int(np.prod(top_shape)), -1)
    np.testing.assert_allclose(top[0].data, -1.5 * ref(flat).reshape(top_shape))


@pytest.mark.parametrize("op", ["SUM", "ASUM", "SUMSQ", "MEAN"])
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_reduction_gradient(op, axis):
    x = rand(2, 3, 2)
    x += np.where(x >= 0, 0.1, -0.1)            # away from |x|'s kink
    check_gradient(reduction(f"operation: {op} axis: {axis} coeff: 0.7"), [x])


def test_reduction_bad_axis():
    with pytest.raises(LayerError, match="reduction_param.axis 3 is out of range"):
        make_layer(reduction("axis: 3"), [np.zeros((2, 3, 4))])


# -- Parameter -----------------------------------------------------------------
PARAM = 'type: "Parameter" top: "p" parameter_param { shape { dim: 2 dim: 3 } }'


def test_parameter_shares_blob_after_forward():
    layer, _, top = make_layer(PARAM, [])
    assert top[0].shape == (2, 3) and layer.blobs[0].shape == (2, 3)
    layer.blobs[0].data[...] = rand(2, 3)
    # NOTE(caffe): before forward the top is a separate, zero blob.
    assert np.all(top[0].data == 0)
    run_forward(layer, [], top)
    assert np.shares_memory(top[0].data, layer.blobs[0].data)
    layer.blobs[0].data[0, 0] = 42.0
    assert top[0].data[0, 0] == 42.0


def test_parameter_gradient_and_accumulation():
    check_gradient(PARAM, [], params=[rand(2, 3)])
    assert_params_accumulate(PARAM, [])


def test_parameter_negative_dim():
    with pytest.raises(LayerError, match="negative dimension"):
        make_layer('type: "Parameter" top: "p" parameter_param { shape { dim: -2 } }', [])


def test_inner_product_empty_batch():
    layer, bottom, top = forward(ip(3), [np.zeros((0, 4))])
    assert top[0].shape == (0, 3)
    layer.backward(top, [True], bottom)
    assert bottom[0].diff.shape == (0, 4)


@pytest.mark.parametrize("params", ["operation: SUM coeff: 2 coeff: -1",
                                    "operation: MAX"])
def test_eltwise_in_place_sum_and_max(params):
    a, b = rand(2, 3, seed=1), rand(2, 3, seed=2)
    ref, ref_bottom, ref_top = forward(eltwise(2, params), [a, b])
    ref_top[0].diff[...] = rand(2, 3, seed=3)
    ref.backward(ref_top, [True, True], ref_bottom)
    layer = create_layer(layer_param(eltwise(2, params).replace('top: "y"',
                                                                 'top: "x0"')),
                         np.float64)
    x0, x1 = Blob((2, 3), np.float64), Blob((2, 3), np.float64)
    x0.data[...], x1.data[...] = a, b
    layer.set_up([x0, x1], [x0])
    run_forward(layer, [x0, x1], [x0])
    np.testing.assert_allclose(x0.data, ref_top[0].data)
    x0.diff[...] = ref_top[0].diff
    layer.backward([x0], [True, True], [x0, x1])
    np.testing.assert_allclose(x0.diff, ref_bottom[0].diff)
    np.testing.assert_allclose(x1.diff, ref_bottom[1].diff)
