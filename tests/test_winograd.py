"""Winograd F(2x2, 3x3) / F(4x4, 3x3) convolution forward: the transform
identity, agreement with direct convolution (float64 exact, float32 within
the golden tolerance), blocking, the weight cache and the Convolution
layer's dispatch."""

import numpy as np
import pytest

from protonet import winograd
from protonet.testing import make_layer
from protonet.winograd import Winograd3x3, _MATRICES


def direct_conv(x, w, pad):
    """Reference 3x3 stride-1 convolution in float64 (sum over the nine
    kernel offsets; test oracle only)."""
    x, w = x.astype(np.float64), w.astype(np.float64)
    ph, pw = pad
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    Ho, Wo = xp.shape[2] - 2, xp.shape[3] - 2
    out = np.zeros((x.shape[0], w.shape[0], Ho, Wo))
    for i in range(3):
        for j in range(3):
            out += np.einsum("mc,nchw->nmhw", w[:, :, i, j],
                             xp[:, :, i:i + Ho, j:j + Wo])
    return out


def golden_close(got, ref):
    """The golden tolerance: |got - ref| <= 1e-5 max|ref| + 1e-4 |ref|."""
    err = np.abs(got - ref)
    bound = 1e-5 * np.abs(ref).max() + 1e-4 * np.abs(ref)
    return bool(np.all(err <= bound)), float((err / bound).max())


def run(m, x, w, pad, dtype):
    out_shape = (x.shape[0], w.shape[0], x.shape[2] + 2 * pad[0] - 2,
                 x.shape[3] + 2 * pad[1] - 2)
    out = np.full(out_shape, np.nan, dtype)
    Winograd3x3(m, pad, dtype).forward(x.astype(dtype), w.astype(dtype), out)
    return out


@pytest.mark.parametrize("m", [2, 4])
def test_one_dimensional_identity(m):
    # y_i = sum_j g_j d_{i+j} == A^T [(G g) * (B^T d)], exactly in float64.
    BT, G, AT = (np.asarray(t) for t in _MATRICES[m])
    rng = np.random.default_rng(m)
    for _ in range(5):
        d, g = rng.standard_normal(m + 2), rng.standard_normal(3)
        y = np.array([d[i:i + 3] @ g for i in range(m)])
        np.testing.assert_allclose(AT @ ((G @ g) * (BT @ d)), y,
                                   rtol=0, atol=1e-13)


SHAPES = [  # N, C, M, H, W, pad
    (1, 1, 1, 3, 3, (0, 0)),
    (2, 3, 5, 7, 9, (1, 1)),
    (1, 4, 6, 8, 8, (0, 0)),
    (3, 2, 3, 5, 6, (1, 1)),
    (2, 8, 4, 13, 11, (1, 1)),
    (1, 5, 7, 10, 4, (2, 0)),
    (2, 6, 3, 1, 1, (1, 1)),
]


@pytest.mark.parametrize("m", [2, 4])
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_direct_convolution(m, shape):
    N, C, M, H, W, pad = shape
    rng = np.random.default_rng(sum(shape[:5]))
    x = rng.standard_normal((N, C, H, W))
    w = rng.standard_normal((M, C, 3, 3))
    ref = direct_conv(x, w, pad)
    out64 = run(m, x, w, pad, np.float64)
    assert out64.shape == ref.shape
    np.testing.assert_allclose(out64, ref, rtol=0,
                               atol=1e-12 * np.abs(ref).max())
    ok, worst = golden_close(run(m, x, w, pad, np.float32), ref)
    assert ok, f"float32 error {worst:.2f}x the golden tolerance"


@pytest.mark.parametrize("m", [2, 4])
def test_float32_many_channels_within_golden_tolerance(m):
    # 256 input channels, post-ReLU inputs, He-scaled weights (VGG-like).
    rng = np.random.default_rng(7)
    x = np.maximum(rng.standard_normal((2, 256, 15, 14)), 0)
    w = rng.standard_normal((32, 256, 3, 3)) * np.sqrt(2 / (9 * 256))
    ref = direct_conv(x, w, (1, 1))
    ok, worst = golden_close(run(m, x, w, (1, 1), np.float32), ref)
    # F(4x4) uses about a third of the tolerance, F(2x2) a few percent.
    assert ok and worst < 0.5, worst


@pytest.mark.parametrize("tiles", [1, 3, 7, 40])
def test_blocks_of_images_and_tile_rows(monkeypatch, tiles):
    # Small budgets force several images per block, a partial last block,
    # and bands of tile rows of one image (with a partial last band).
    monkeypatch.setattr(winograd, "TILES_PER_BLOCK", tiles)
    rng = np.random.default_rng(tiles)
    x = rng.standard_normal((5, 3, 11, 9))
    w = rng.standard_normal((4, 3, 3, 3))
    ref = direct_conv(x, w, (1, 1))
    np.testing.assert_allclose(run(4, x, w, (1, 1), np.float64), ref,
                               rtol=0, atol=1e-12 * np.abs(ref).max())


def test_weight_cache_follows_in_place_changes():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 4, 8, 8))
    w = rng.standard_normal((3, 4, 3, 3))
    op = Winograd3x3(4, (1, 1), np.float64)
    out = np.empty((2, 3, 8, 8))
    op.forward(x, w, out)
    np.testing.assert_allclose(out, direct_conv(x, w, (1, 1)), atol=1e-12)
    U = op.transformed_weights(w)
    w *= -2.0  # as a solver update would: same array, new values
    op.release()
    op.forward(x, w, out)
    np.testing.assert_allclose(out, direct_conv(x, w, (1, 1)), atol=1e-12)
    # The new transform is written over the old one: no new arrays a step.
    assert op.transformed_weights(w) is U
    # Weights of another shape get arrays of their own.
    w2 = rng.standard_normal((5, 4, 3, 3))
    out2 = np.empty((2, 5, 8, 8))
    op.forward(x, w2, out2)
    np.testing.assert_allclose(out2, direct_conv(x, w2, (1, 1)), atol=1e-12)
    assert op.transformed_weights(w2).shape == (36, 1, 5, 4)


def test_bad_tile_size():
    with pytest.raises(ValueError, match="2 or 4"):
        Winograd3x3(3, (1, 1), np.float32)


# -- the Convolution layer's dispatch -----------------------------------------
def conv_text(num_output, extra=""):
    return (f'name: "c" type: "Convolution" bottom: "x" top: "y" '
            f'convolution_param {{ num_output: {num_output} {extra} '
            f'weight_filler {{ type: "gaussian" std: 0.05 }} '
            f'bias_filler {{ type: "gaussian" std: 0.5 }} }}')


def assert_close_for(dtype, got, ref):
    """float64: exact to 1e-12 of max|ref|; float32: the golden tolerance."""
    if dtype == np.float64:
        np.testing.assert_allclose(got, ref, rtol=0,
                                   atol=1e-12 * np.abs(ref).max())
    else:
        ok, worst = golden_close(got, ref)
        assert ok, worst


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_layer_uses_winograd_and_matches_gemm_path(dtype):
    rng = np.random.default_rng(11)
    x = rng.standard_normal((4, 64, 17, 15))
    layer, bottom, top = make_layer(conv_text(72, "kernel_size: 3 pad: 1"),
                                    [x], dtype=dtype)
    layer.reshape(bottom, top)
    assert layer._use_wino
    layer.forward(bottom, top)
    got = top[0].data.copy()
    ref = direct_conv(x.astype(dtype), layer.blobs[0].data, (1, 1)) + \
        layer.blobs[1].data.astype(np.float64)[:, None, None]
    assert_close_for(dtype, got, ref)
    # The input gradient runs Winograd too (the flipped kernel, pad
    # 2 - pad); the weight gradient keeps the GEMM path.
    assert layer._use_wino_dx
    top[0].diff[...] = rng.standard_normal(top[0].shape)
    layer.backward(top, [True], bottom)
    dx, dW = bottom[0].diff.copy(), layer.blobs[0].diff.copy()
    layer._use_wino = layer._use_wino_dx = False
    layer.forward(bottom, top)
    ok, worst = golden_close(got, top[0].data.astype(np.float64))
    assert ok, worst
    layer.blobs[0].diff[...] = 0
    layer.backward(top, [True], bottom)
    assert_close_for(dtype, dx, bottom[0].diff.astype(np.float64))
    np.testing.assert_array_equal(dW, layer.blobs[0].diff)


@pytest.mark.parametrize("pad", [(0, 0), (1, 2), (2, 1)])
def test_layer_winograd_input_gradient_matches_direct(pad):
    """dx = correlation of dy with the flipped kernel, for every pad that
    keeps it a 3x3 stride-1 convolution (pad <= 2)."""
    rng = np.random.default_rng(13)
    x = rng.standard_normal((2, 64, 13, 14))
    layer, bottom, top = make_layer(
        conv_text(80, f"kernel_size: 3 pad_h: {pad[0]} pad_w: {pad[1]}"),
        [x])
    layer.reshape(bottom, top)
    assert layer._use_wino_dx
    layer.forward(bottom, top)
    dy = rng.standard_normal(top[0].shape)
    top[0].diff[...] = dy
    layer.backward(top, [True], bottom)
    W = layer.blobs[0].data
    flipped = W[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)
    ref = direct_conv(dy, flipped, (2 - pad[0], 2 - pad[1]))
    np.testing.assert_allclose(bottom[0].diff, ref, rtol=0,
                               atol=1e-12 * np.abs(ref).max())


def test_layer_winograd_after_release_and_reshape():
    rng = np.random.default_rng(5)
    layer, bottom, top = make_layer(conv_text(64, "kernel_size: 3 pad: 1"),
                                    [rng.standard_normal((1, 64, 32, 32))])
    for shape in [(1, 64, 32, 32), (3, 64, 20, 21)]:
        bottom[0].reshape(shape)
        bottom[0].data[...] = rng.standard_normal(shape)
        layer.reshape(bottom, top)
        assert layer._use_wino
        layer.forward(bottom, top)
        ref = direct_conv(bottom[0].data, layer.blobs[0].data, (1, 1)) + \
            layer.blobs[1].data[:, None, None]
        np.testing.assert_allclose(top[0].data, ref, rtol=0, atol=1e-10)
        layer.release_buffers()


@pytest.mark.parametrize("extra, channels, shape", [
    ("kernel_size: 3 pad: 1", 32, (2, 32, 16, 16)),            # few channels
    ("kernel_size: 3 pad: 1 stride: 2", 64, (2, 64, 16, 16)),
    ("kernel_size: 3 pad: 2 dilation: 2", 64, (2, 64, 16, 16)),
    ("kernel_size: 3 pad: 1 group: 2", 64, (2, 64, 16, 16)),
    ("kernel_size: 5 pad: 2", 64, (2, 64, 16, 16)),
    ("kernel_size: 3 pad: 1", 64, (1, 64, 7, 7)),              # 4 tiles
])
def test_layer_keeps_gemm_path(extra, channels, shape):
    layer, bottom, top = make_layer(conv_text(64, extra),
                                    [np.ones(shape)], dtype=np.float32)
    layer.reshape(bottom, top)
    assert not layer._use_wino


def test_deep_stack_float32_within_golden_tolerance():
    # Six 3x3 conv + ReLU layers (VGG-like widths): the float32 Winograd
    # net stays within the golden tolerance of the float64 one.
    rng = np.random.default_rng(2)
    widths = [64, 96, 128, 128, 96, 64]
    x64 = np.maximum(rng.standard_normal((4, 64, 16, 16)), 0)
    x32 = x64.astype(np.float32)
    c = 64
    for m in widths:
        w = rng.standard_normal((m, c, 3, 3)) * np.sqrt(2 / (9 * c))
        layer, bottom, top = make_layer(conv_text(m, "kernel_size: 3 pad: 1"),
                                        [x32], dtype=np.float32)
        layer.blobs[0].data[...] = w
        layer.blobs[1].data[...] = 0.01
        layer.reshape(bottom, top)
        assert layer._use_wino
        layer.forward(bottom, top)
        x32 = np.maximum(top[0].data, 0)
        x64 = np.maximum(direct_conv(x64, w, (1, 1)) + 0.01, 0)
        c = m
    ok, worst = golden_close(x32, x64)
    assert ok, worst



def test_grouped_layer_forward_and_input_gradient_match_gemm_path():
    """Groups of >= 64 channels (CaffeNet conv4/conv5) run Winograd per
    group, forward and input gradient."""
    rng = np.random.default_rng(15)
    x = rng.standard_normal((2, 128, 13, 13))
    layer, bottom, top = make_layer(
        conv_text(192, "kernel_size: 3 pad: 1 group: 2"), [x])
    layer.reshape(bottom, top)
    assert layer._use_wino and layer._use_wino_dx
    dy = rng.standard_normal(top[0].shape)
    results = []
    for wino in (True, False):
        layer._use_wino = layer._use_wino_dx = wino
        layer.forward(bottom, top)
        top[0].diff[...] = dy
        layer.backward(top, [True], bottom)
        results.append((top[0].data.copy(), bottom[0].diff.copy()))
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12 * np.abs(b).max())
