"""BatchNorm, MVN and LRN layers (protonet/layers/normalization.py)."""

import numpy as np
import pytest

from caffe_ref import run_case
from protonet.blob import Blob
from protonet.errors import LayerError
from protonet.layer import create_layer
from protonet.net import Net
from protonet.proto import caffe_pb2
from protonet.testing import check_gradient, layer_param, make_layer

TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST


def rand(*shape, seed=0, scale=1.0):
    return scale * np.random.default_rng(seed).standard_normal(shape)


def run(layer, bottom, top, dy=None):
    layer.reshape(bottom, top)
    layer.forward(bottom, top)
    if dy is not None:
        top[0].diff[...] = dy
        layer.backward(top, [True] * len(bottom), bottom)


def in_place_equals(text, x, dy, phase=TEST, params=None):
    """Forward/backward in place give the same top and bottom diff."""
    ref, bottom, top = make_layer(text, [x], phase)
    lay = create_layer(layer_param(text, phase), np.float64)
    blob = Blob(x.shape, np.float64)
    blob.data[...] = x
    lay.set_up([blob], [blob])
    for layer in (ref, lay):
        for b, p in zip(layer.blobs, params or []):
            b.data[...] = p
    run(ref, bottom, top, dy)
    run(lay, [blob], [blob], dy)
    np.testing.assert_allclose(blob.data, top[0].data)
    np.testing.assert_allclose(blob.diff, bottom[0].diff)


# == BatchNorm ================================================================
BN = 'type: "BatchNorm" bottom: "x" top: "y" batch_norm_param { %s }'


@pytest.mark.parametrize("shape, C", [((4, 3, 2, 2), 3), ((6, 5), 5),
                                      ((2, 3, 2, 2, 2), 3), ((7,), 1)])
def test_batchnorm_shapes(shape, C):
    layer, _, top = make_layer(BN % "", [rand(*shape)], TRAIN)
    assert top[0].shape == shape
    assert [b.shape for b in layer.blobs] == [(C,), (C,), (1,)]
    assert all(not np.any(b.data) for b in layer.blobs)


def test_batchnorm_use_global_stats_defaults_to_phase():
    assert make_layer(BN % "", [rand(2, 3)], TEST)[0].use_global_stats
    assert not make_layer(BN % "", [rand(2, 3)], TRAIN)[0].use_global_stats
    assert make_layer(BN % "use_global_stats: true", [rand(2, 3)], TRAIN)[0] \
        .use_global_stats


def test_batchnorm_train_forward_and_running_sums_by_hand():
    x = np.array([[1.0], [2.0], [3.0], [4.0]])
    layer, bottom, top = make_layer(BN % "moving_average_fraction: 0.5 eps: 0.01",
                                    [x], TRAIN)
    run(layer, bottom, top)
    np.testing.assert_allclose(top[0].data, (x - 2.5) / np.sqrt(1.25 + 0.01))
    # Biased variance to normalise, m/(m-1) times it accumulated.
    np.testing.assert_allclose([b.data[0] for b in layer.blobs],
                               [2.5, 1.25 * 4 / 3, 1.0])
    run(layer, bottom, top)
    np.testing.assert_allclose([b.data[0] for b in layer.blobs],
                               [2.5 * 1.5, 1.25 * 4 / 3 * 1.5, 1.5])


@pytest.mark.parametrize("factor, mean, var", [(2.0, 1.0, 2.0), (0.0, 0.0, 0.0)])
def test_batchnorm_global_stats_forward_by_hand(factor, mean, var):
    x = rand(3, 1, 2)
    layer, bottom, top = make_layer(BN % "eps: 0.1", [x], TEST)
    for b, v in zip(layer.blobs, (2.0, 4.0, factor)):
        b.data[...] = v
    run(layer, bottom, top)
    # NOTE(caffe): a zero scale factor means zero mean and variance.
    np.testing.assert_allclose(top[0].data, (x - mean) / np.sqrt(var + 0.1))
    assert layer.blobs[2].data[0] == factor   # TEST forward changes nothing


@pytest.mark.parametrize("shape", [(4, 3, 2, 2), (6, 3), (3, 2, 5)])
def test_batchnorm_train_gradient(shape):
    check_gradient(BN % "", [rand(*shape)], phase=TRAIN, check_params=False)


def test_batchnorm_global_gradient():
    params = [rand(3, seed=1), np.abs(rand(3, seed=2)) + 0.5, np.array([1.5])]
    check_gradient(BN % "", [rand(4, 3, 2, 2)], phase=TEST, params=params,
                   check_params=False)


@pytest.mark.parametrize("phase", [TRAIN, TEST])
def test_batchnorm_in_place(phase):
    params = [rand(3, seed=1), np.abs(rand(3, seed=2)) + 0.5, np.array([1.5])]
    in_place_equals(BN % "", rand(4, 3, 2), rand(4, 3, 2, seed=3), phase, params)


def test_batchnorm_statistics_get_lr_mult_zero_in_a_net(tmp_path):
    path = tmp_path / "bn.prototxt"
    path.write_text("""name: "bn" force_backward: true
        layer { name: "in" type: "Input" top: "x"
                input_param { shape { dim: 4 dim: 3 } } }
        layer { name: "bn" type: "BatchNorm" bottom: "x" top: "y"
                param { lr_mult: 0 } }""")
    net = Net(str(path), phase=TRAIN, dtype=np.float64)
    assert len(net.learnable_params) == 3
    assert net.params_lr == [0.0, 0.0, 0.0]
    assert len(net.layer_dict["bn"].param.param) == 3


def test_batchnorm_rejects_learned_statistics():
    with pytest.raises(LayerError, match="param 1 has lr_mult 1.*cannot be "
                                         "learned"):
        make_layer('type: "BatchNorm" bottom: "x" top: "y" param { lr_mult: 0 } '
                   'param { lr_mult: 1 }', [rand(2, 3)], TRAIN)


def test_batchnorm_rejects_channel_change():
    layer, bottom, top = make_layer(BN % "", [rand(2, 3, 2)], TRAIN)
    bottom[0].reshape((2, 4, 2))
    with pytest.raises(LayerError, match="4 channels.*set up for 3"):
        layer.reshape(bottom, top)


# == MVN ======================================================================
MVN = 'type: "MVN" bottom: "x" top: "y" mvn_param { %s }'


def test_mvn_forward_by_hand():
    x = np.array([1.0, 2.0, 3.0, 4.0, 0.0, 0.0, 2.0, 2.0]).reshape(1, 2, 2, 2)
    layer, bottom, top = make_layer(MVN % "eps: 0", [x])
    run(layer, bottom, top)
    expected = np.array([-1.5, -0.5, 0.5, 1.5, -1, -1, 1, 1]) / \
        np.array([np.sqrt(1.25)] * 4 + [1.0] * 4)
    np.testing.assert_allclose(top[0].data.ravel(), expected)
    layer, bottom, top = make_layer(MVN % "normalize_variance: false "
                                    "across_channels: true", [x])
    run(layer, bottom, top)
    np.testing.assert_allclose(top[0].data.ravel(), x.ravel() - 1.75)


def test_mvn_eps_is_added_to_the_std():
    x = np.array([0.0, 2.0]).reshape(1, 1, 1, 2)
    layer, bottom, top = make_layer(MVN % "eps: 0.5", [x])
    run(layer, bottom, top)
    np.testing.assert_allclose(top[0].data.ravel(), [-1 / 1.5, 1 / 1.5])


def test_mvn_top_takes_the_legacy_4d_shape():
    layer, _, top = make_layer(MVN % "across_channels: true", [rand(3, 4)])
    assert top[0].shape == (3, 4, 1, 1)
    with pytest.raises(LayerError, match="at most 4 axes.*\\(1, 2, 3, 4, 5\\)"):
        make_layer(MVN % "", [rand(1, 2, 3, 4, 5)])


@pytest.mark.parametrize("extra", ["", "across_channels: true",
                                   "normalize_variance: false",
                                   "normalize_variance: false across_channels: true"])
def test_mvn_gradient(extra):
    # eps is tiny by default, where Caffe's backward is exact.
    check_gradient(MVN % extra, [rand(2, 3, 3, 4)])


def test_mvn_backward_is_caffes_formula_for_large_eps():
    x, dy = rand(1, 2, 2, 3), rand(1, 2, 2, 3, seed=1)
    layer, bottom, top = make_layer(MVN % "eps: 0.3", [x])
    run(layer, bottom, top, dy)
    xs, d = x.reshape(2, 6), dy.reshape(2, 6)
    std = xs.std(axis=1, keepdims=True) + 0.3
    y = (xs - xs.mean(axis=1, keepdims=True)) / std
    expected = (d - d.mean(1, keepdims=True) - y * (d * y).mean(1, keepdims=True)) / std
    np.testing.assert_allclose(bottom[0].diff.reshape(2, 6), expected, rtol=1e-6)


def test_mvn_in_place():
    in_place_equals(MVN % "", rand(2, 3, 2, 2), rand(2, 3, 2, 2, seed=1))


# == LRN ======================================================================
LRN = 'type: "LRN" bottom: "x" top: "y" lrn_param { %s }'


def naive_lrn(x, size, alpha, beta, k, within):
    """Loop oracle: Caffe's formulas element by element."""
    N, C, H, W = x.shape
    p = (size - 1) // 2
    y = np.empty_like(x)
    for n, c, h, w in np.ndindex(x.shape):
        if within:
            win = x[n, c, max(h - p, 0):h + p + 1, max(w - p, 0):w + p + 1]
            s = 1 + alpha / size ** 2 * np.sum(win ** 2)
        else:
            win = x[n, max(c - p, 0):c + p + 1, h, w]
            s = k + alpha / size * np.sum(win ** 2)
        y[n, c, h, w] = x[n, c, h, w] * s ** -beta
    return y


@pytest.mark.parametrize("extra, within", [
    ("local_size: 5 alpha: 0.0001 beta: 0.75", False),
    ("local_size: 3 alpha: 0.5 beta: 0.6 k: 2", False),
    ("local_size: 1 alpha: 0.5 beta: 0.6 k: 2", False),
    ("local_size: 9 alpha: 2 beta: 0.6 k: 2", False),
    ("norm_region: WITHIN_CHANNEL local_size: 3 alpha: 0.8 beta: 0.75", True),
    ("norm_region: WITHIN_CHANNEL local_size: 5 alpha: 0.8 beta: 0.75 k: 7", True),
])
def test_lrn_forward_matches_naive_oracle(extra, within):
    x = rand(2, 6, 4, 5, scale=3)
    layer, bottom, top = make_layer(LRN % extra, [x])
    run(layer, bottom, top)
    p = layer.param.lrn_param
    # NOTE(caffe): WITHIN_CHANNEL ignores k.
    np.testing.assert_allclose(
        top[0].data, naive_lrn(x, p.local_size, p.alpha, p.beta, p.k, within))


def test_lrn_forward_by_hand():
    x = np.array([1.0, 2.0, 3.0]).reshape(1, 3, 1, 1)
    layer, bottom, top = make_layer(LRN % "local_size: 3 alpha: 3 beta: 1 k: 1", [x])
    run(layer, bottom, top)
    # scale = 1 + 3/3 * (sum of squares of the neighbours): 6, 15, 14.
    np.testing.assert_allclose(top[0].data.ravel(), [1 / 6, 2 / 15, 3 / 14])


@pytest.mark.parametrize("extra", [
    "local_size: 5 alpha: 0.3 beta: 0.75",
    "local_size: 3 alpha: 0.5 beta: 0.6 k: 2",
    "norm_region: WITHIN_CHANNEL local_size: 3 alpha: 0.8 beta: 0.75",
    "norm_region: WITHIN_CHANNEL local_size: 5 alpha: 2 beta: 0.5",
])
def test_lrn_gradient(extra):
    check_gradient(LRN % extra, [rand(2, 4, 3, 4)])


@pytest.mark.parametrize("extra", ["local_size: 3 alpha: 0.5",
                                   "norm_region: WITHIN_CHANNEL alpha: 0.5"])
def test_lrn_in_place(extra):
    in_place_equals(LRN % extra, rand(2, 4, 3, 3), rand(2, 4, 3, 3, seed=1))


def test_lrn_float32_stays_float32():
    layer, bottom, top = make_layer(LRN % "", [rand(1, 3, 2, 2)], dtype=np.float32)
    run(layer, bottom, top, rand(1, 3, 2, 2))
    assert top[0].data.dtype == np.float32 and bottom[0].diff.dtype == np.float32


def test_lrn_errors():
    with pytest.raises(LayerError, match="local_size must be odd, got 4"):
        make_layer(LRN % "local_size: 4", [rand(1, 3, 2, 2)])
    with pytest.raises(LayerError, match="4-D bottom.*\\(2, 3\\)"):
        make_layer(LRN % "", [rand(2, 3)])


# == golden data ==============================================================
@pytest.mark.parametrize("case", ["batchnorm_test", "batchnorm_train",
                                  "batchnorm_train_2d", "mvn",
                                  "mvn_across_channels", "mvn_mean_only",
                                  "lrn_across_default", "lrn_across_k",
                                  "lrn_within"])
def test_golden(case):
    run_case("layers", case)
