"""Fillers: the statistics Caffe's filler.hpp specifies (mean, variance,
range, fan-in/fan-out, variance_norm), bilinear exactly, and errors."""

import numpy as np
import pytest

import protonet
from protonet.errors import LayerError, UnsupportedError
from protonet.fillers import filler_values
from protonet.io import parse_text
from protonet.proto import caffe_pb2

SHAPE = (64, 40, 3, 3)      # fan_in 360, fan_out 576, 23040 values


def fp(text):
    return parse_text(text, caffe_pb2.FillerParameter())


def values(text, shape=SHAPE, seed=0):
    protonet.set_random_seed(seed)
    return filler_values(fp(text), shape)


def test_none_and_default_are_zero():
    assert not filler_values(None, (2, 3)).any()
    np.testing.assert_array_equal(values(""), 0)          # type defaults to constant
    np.testing.assert_array_equal(values('type: "constant" value: 2.5'), 2.5)


def test_uniform_range_mean_variance():
    v = values('type: "uniform" min: -1 max: 3')
    assert v.dtype == np.float32
    assert v.min() >= -1 and v.max() <= 3
    assert v.mean() == pytest.approx(1.0, abs=0.05)
    assert v.var() == pytest.approx(16 / 12, rel=0.05)


def test_gaussian_mean_std():
    v = values('type: "gaussian" mean: 0.5 std: 2')
    assert v.mean() == pytest.approx(0.5, abs=0.05)
    assert v.std() == pytest.approx(2.0, rel=0.03)


def test_sparse_gaussian_keeps_sparse_over_num_outputs():
    v = values('type: "gaussian" std: 1 sparse: 16')      # 16 / 64 kept
    assert (v != 0).mean() == pytest.approx(0.25, abs=0.02)


def test_positive_unitball_rows_sum_to_one():
    v = values('type: "positive_unitball"', shape=(5, 7, 2))
    assert (v >= 0).all()
    np.testing.assert_allclose(v.reshape(5, -1).sum(1), 1, rtol=1e-5)


@pytest.mark.parametrize("norm,n", [("FAN_IN", 360), ("FAN_OUT", 576),
                                    ("AVERAGE", (360 + 576) / 2)])
def test_xavier_uniform_with_variance_norm(norm, n):
    v = values(f'type: "xavier" variance_norm: {norm}')
    scale = np.sqrt(3.0 / n)
    assert np.abs(v).max() <= scale
    assert np.abs(v).max() == pytest.approx(scale, rel=0.01)
    assert v.var() == pytest.approx(1.0 / n, rel=0.05)
    assert abs(v.mean()) < 0.01 * scale


@pytest.mark.parametrize("norm,n", [("FAN_IN", 360), ("FAN_OUT", 576),
                                    ("AVERAGE", (360 + 576) / 2)])
def test_msra_gaussian_with_variance_norm(norm, n):
    v = values(f'type: "msra" variance_norm: {norm}')
    assert v.var() == pytest.approx(2.0 / n, rel=0.05)
    assert abs(v.mean()) < 0.02 * np.sqrt(2.0 / n)


def test_fans_of_a_2d_and_1d_blob():
    # InnerProduct weights (out, in): fan_in = in, fan_out = out.
    v = values('type: "xavier" variance_norm: FAN_OUT', shape=(100, 300))
    assert np.abs(v).max() <= np.sqrt(3.0 / 100)
    assert np.abs(v).max() > np.sqrt(3.0 / 300)
    v = values('type: "msra"', shape=(20000,))           # fan_in = 1
    assert v.var() == pytest.approx(2.0, rel=0.05)


@pytest.mark.parametrize("k", [2, 3, 4, 5])
def test_bilinear_exact(k):
    v = values('type: "bilinear"', shape=(2, 3, k, k))
    f = np.ceil(k / 2.0)
    c = (k - 1) / (2.0 * f)
    w = [1 - abs(i / f - c) for i in range(k)]
    want = np.outer(w, w)
    for n in range(2):
        for ch in range(3):
            np.testing.assert_allclose(v[n, ch], want, rtol=1e-6)


def test_bilinear_known_kernel_4():
    # The classic 2x upsampling kernel.
    row = np.array([0.25, 0.75, 0.75, 0.25])
    np.testing.assert_allclose(values('type: "bilinear"', shape=(1, 1, 4, 4))[0, 0],
                               np.outer(row, row), rtol=1e-6)


def test_seeded_fillers_are_reproducible():
    a = values('type: "gaussian" std: 1', seed=3)
    b = values('type: "gaussian" std: 1', seed=3)
    c = values('type: "gaussian" std: 1', seed=4)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("text,shape,err,words", [
    ('type: "bilinear"', (2, 3, 3), LayerError, "4-D"),
    ('type: "bilinear"', (1, 1, 3, 4), LayerError, "square"),
    ('type: "uniform" min: 2 max: 1', (3,), LayerError, "max"),
    ('type: "xavier" sparse: 3', (3, 3), UnsupportedError, "sparse"),
    ('type: "orthogonal"', (3, 3), UnsupportedError, "orthogonal"),
])
def test_filler_errors(text, shape, err, words):
    with pytest.raises(err, match=words):
        filler_values(fp(text), shape)
