"""Convolution, Deconvolution and Im2col: shapes, a naive loop oracle,
gradient checks, errors and the golden cases from real Caffe."""

import itertools

import numpy as np
import pytest

from caffe_ref import run_case
from protonet.errors import LayerError
from protonet import winograd
from protonet.layers import conv_products
from protonet.testing import check_gradient, make_layer


# -- naive oracles (loops; cs231n style) -------------------------------------------
def naive_conv(x, w, b, stride, pad, dilation, group):
    """Direct N-D convolution by loops over output positions and groups."""
    N, C = x.shape[:2]
    O, Cg = w.shape[:2]
    k = w.shape[2:]
    nd = len(k)
    xp = np.pad(x, [(0, 0), (0, 0)] + [(p, p) for p in pad])
    out = [(x.shape[2 + a] + 2 * pad[a] - dilation[a] * (k[a] - 1) - 1)
           // stride[a] + 1 for a in range(nd)]
    y = np.zeros((N, O) + tuple(out))
    Og = O // group
    for n, o in itertools.product(range(N), range(O)):
        g = o // Og
        for pos in np.ndindex(*out):
            sl = tuple(slice(pos[a] * stride[a],
                             pos[a] * stride[a] + dilation[a] * (k[a] - 1) + 1,
                             dilation[a]) for a in range(nd))
            patch = xp[(n, slice(g * Cg, (g + 1) * Cg)) + sl]
            y[(n, o) + pos] = np.sum(patch * w[o]) + (b[o] if b is not None else 0)
    return y


def naive_deconv(x, w, b, stride, pad, dilation, group):
    """Transposed convolution: every input pixel scatters a weighted kernel."""
    N, C = x.shape[:2]
    Og = w.shape[1]
    k = w.shape[2:]
    nd = len(k)
    full = [stride[a] * (x.shape[2 + a] - 1) + dilation[a] * (k[a] - 1) + 1
            for a in range(nd)]
    y = np.zeros((N, Og * group) + tuple(full))
    Cg = C // group
    for n, c in itertools.product(range(N), range(C)):
        g = c // Cg
        for pos in np.ndindex(*x.shape[2:]):
            sl = tuple(slice(pos[a] * stride[a],
                             pos[a] * stride[a] + dilation[a] * (k[a] - 1) + 1,
                             dilation[a]) for a in range(nd))
            y[(n, slice(g * Og, (g + 1) * Og)) + sl] += x[(n, c) + pos] * w[c]
    crop = tuple(slice(p, f - p) for p, f in zip(pad, full))
    y = y[(slice(None), slice(None)) + crop]
    if b is not None:
        y += b.reshape((1, -1) + (1,) * nd)
    return y


def conv_text(kind="Convolution", num_output=4, extra="", bias=True):
    return (f'top: "t" type: "{kind}" convolution_param {{ num_output: {num_output} '
            f'bias_term: {str(bias).lower()} {extra} '
            f'weight_filler {{ type: "gaussian" std: 0.5 }} '
            f'bias_filler {{ type: "gaussian" std: 0.5 }} }}')


def run(text, x, dtype=np.float64, **kw):
    layer, bottom, top = make_layer(text, [x], dtype=dtype, **kw)
    layer.forward(bottom, top)
    return layer, bottom, top


def forward_backward_twice(text, x, params, modulus=7):
    """Make the layer, load `params` (a list, filled from the layer when
    empty), forward, and backward twice (weight diffs accumulate) with a
    fixed top diff; returns (layer, (top, bottom diff, weight diff))."""
    layer, bottom, top = make_layer(text, [x])
    if not params:
        params.extend(b.data.copy() for b in layer.blobs)
    for blob, arr in zip(layer.blobs, params):
        blob.data[...] = arr
    layer.forward(bottom, top)
    top[0].diff[...] = np.arange(top[0].count).reshape(top[0].shape) % modulus
    bottom[0].diff[...] = np.nan  # every element must be assigned
    layer.backward(top, [True], bottom)
    layer.backward(top, [True], bottom)
    return layer, (top[0].data.copy(), bottom[0].diff.copy(),
                   layer.blobs[0].diff.copy())


GRID = [  # (C, H, W, num_output, kernel, stride, pad, dilation, group)
    (3, 6, 6, 4, (3, 3), (1, 1), (0, 0), (1, 1), 1),
    (3, 7, 7, 4, (3, 3), (2, 2), (1, 1), (1, 1), 1),
    (4, 9, 8, 6, (3, 2), (1, 2), (1, 0), (2, 1), 2),
    (6, 8, 8, 3, (1, 1), (1, 1), (0, 0), (1, 1), 3),
    (4, 5, 5, 4, (1, 1), (2, 2), (0, 0), (1, 1), 1),
    (2, 7, 9, 4, (4, 3), (3, 2), (2, 1), (1, 2), 2),
    (4, 5, 6, 8, (5, 6), (1, 1), (0, 0), (1, 1), 4),
]


def geometry(kernel, stride, pad, dilation):
    return (f"kernel_h: {kernel[0]} kernel_w: {kernel[1]} "
            f"stride_h: {stride[0]} stride_w: {stride[1]} "
            f"pad_h: {pad[0]} pad_w: {pad[1]} "
            f"dilation: {dilation[0]} dilation: {dilation[1]}")


# -- Convolution -----------------------------------------------------------------
@pytest.mark.parametrize("case", GRID)
def test_conv_matches_naive_oracle(case):
    C, H, W, O, k, s, p, d, g = case
    x = np.random.default_rng(0).standard_normal((2, C, H, W))
    layer, _, top = run(conv_text(num_output=O, extra=geometry(k, s, p, d)
                                  + f" group: {g}"), x)
    w, b = layer.blobs[0].data, layer.blobs[1].data
    assert w.shape == (O, C // g) + k and b.shape == (O,)
    np.testing.assert_allclose(top[0].data, naive_conv(x, w, b, s, p, d, g),
                               rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("case", GRID[:4])
def test_conv_gradient(case):
    C, H, W, O, k, s, p, d, g = case
    x = np.random.default_rng(1).standard_normal((2, C, H, W))
    check_gradient(conv_text(num_output=O, extra=geometry(k, s, p, d)
                             + f" group: {g}"), [x])


def test_conv_3d_matches_oracle_and_gradient():
    x = np.random.default_rng(2).standard_normal((2, 2, 4, 5, 5))
    text = conv_text(num_output=2, extra="kernel_size: 3 kernel_size: 2 "
                     "kernel_size: 3 pad: 1 stride: 1 stride: 2 stride: 1")
    layer, _, top = run(text, x)
    assert top[0].shape == (2, 2, 4, 3, 5)
    expect = naive_conv(x, layer.blobs[0].data, layer.blobs[1].data,
                        (1, 2, 1), (1, 1, 1), (1, 1, 1), 1)
    np.testing.assert_allclose(top[0].data, expect, rtol=1e-10, atol=1e-10)
    check_gradient(text, [x], max_checks=60)


def test_conv_hand_computed():
    x = np.arange(9.0).reshape(1, 1, 3, 3)
    text = ('top: "t" type: "Convolution" convolution_param { num_output: 1 '
            'kernel_size: 2 weight_filler { type: "constant" value: 1 } '
            'bias_filler { type: "constant" value: 0.5 } }')
    _, _, top = run(text, x)
    np.testing.assert_array_equal(top[0].data[0, 0],
                                  [[8.5, 12.5], [20.5, 24.5]])


@pytest.mark.parametrize("H,k,s,p,d,expected", [
    (7, 3, 2, 1, 1, 4), (6, 3, 2, 0, 1, 2), (5, 5, 1, 0, 1, 1),
    (9, 3, 1, 0, 3, 3), (8, 3, 3, 1, 1, 3), (1, 3, 1, 1, 1, 1)])
def test_conv_output_size_rounds_down(H, k, s, p, d, expected):
    x = np.zeros((1, 1, H, H))
    _, _, top = run(conv_text(num_output=2, extra=f"kernel_size: {k} stride: "
                              f"{s} pad: {p} dilation: {d}"), x)
    assert top[0].shape == (1, 2, expected, expected)
    assert expected == (H + 2 * p - (d * (k - 1) + 1)) // s + 1


def test_conv_nobias_axis_and_several_bottoms():
    rng = np.random.default_rng(3)
    x1, x2 = rng.standard_normal((2, 2, 3, 3, 5, 5))  # axis 2: lead (2, 3)
    text = conv_text(num_output=2, extra="kernel_size: 3 axis: 2", bias=False)
    text = text.replace('top: "t"', 'bottom: "a" bottom: "b" top: "c" top: "d"')
    layer, bottom, top = make_layer(text, [x1, x2], num_tops=2)
    assert len(layer.blobs) == 1 and top[1].shape == (2, 3, 2, 3, 3)
    layer.forward(bottom, top)
    w = layer.blobs[0].data
    for xi, ti in ((x1, top[0]), (x2, top[1])):
        expect = naive_conv(xi.reshape(6, 3, 5, 5), w, None, (1, 1), (0, 0),
                            (1, 1), 1)
        np.testing.assert_allclose(ti.data.reshape(6, 2, 3, 3), expect,
                                   rtol=1e-10, atol=1e-12)
    check_gradient(text, [x1, x2], num_tops=2, max_checks=50)


@pytest.mark.parametrize("kind", ["Convolution", "Deconvolution"])
def test_param_diffs_accumulate(kind):
    x = np.random.default_rng(4).standard_normal((2, 4, 5, 5))
    layer, bottom, top = run(conv_text(kind, 4, "kernel_size: 3 stride: 2 "
                                       "pad: 1 group: 2"), x)
    top[0].diff[...] = np.random.default_rng(5).standard_normal(top[0].shape)
    layer.backward(top, [True], bottom)
    first = [b.diff.copy() for b in layer.blobs]
    dx = bottom[0].diff.copy()
    layer.backward(top, [True], bottom)
    for blob, f in zip(layer.blobs, first):
        np.testing.assert_allclose(blob.diff, 2 * f, rtol=1e-12)
    np.testing.assert_allclose(bottom[0].diff, dx, rtol=1e-12)  # assigned


@pytest.mark.parametrize("kind,extra,out", [
    ("Convolution", "kernel_size: 3 pad: 1 group: 2", 7),
    ("Convolution", "kernel_size: 3 stride: 2 pad: 1", 4),
    ("Deconvolution", "kernel_size: 3 pad: 1 group: 2", 7),
])
def test_chunked_batch_matches_single_chunk(monkeypatch, kind, extra, out):
    """One chunk for the whole batch equals one image per chunk split into
    blocks of one output row (the budget-of-1-byte extreme)."""
    rng = np.random.default_rng(6)
    x = rng.standard_normal((5, 4, 7, 7)).astype(np.float32)
    text = conv_text(kind, num_output=6, extra=extra)
    dy = rng.standard_normal((5, 6, out, out)).astype(np.float32)
    results, params = [], None
    for budget in (1 << 30, 1):  # whole batch vs one image row per block
        monkeypatch.setattr(conv_products, "COL_BUFFER_BYTES", budget)
        layer, bottom, top = make_layer(text, [x], dtype=np.float32)
        if params is None:
            params = [b.data.copy() for b in layer.blobs]
        for blob, arr in zip(layer.blobs, params):
            blob.data[...] = arr
        layer.forward(bottom, top)
        top[0].diff[...] = dy
        layer.backward(top, [True], bottom)
        assert layer.chunk == (5 if budget > 1 else 1)
        assert layer._rows == (layer.col_shape[0] if budget > 1 else 1)
        assert top[0].data.dtype == np.float32
        assert bottom[0].diff.dtype == np.float32
        results.append((top[0].data.copy(), bottom[0].diff.copy(),
                        layer.blobs[0].diff.copy(), layer.blobs[1].diff.copy()))
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind,shape,extra", [
    ("Convolution", (3, 4, 7, 6), "kernel_size: 3 pad: 1 group: 2"),
    ("Convolution", (2, 4, 8, 7), "kernel_h: 5 kernel_w: 2 pad_h: 2 pad_w: 0 "
     "dilation: 2"),
    ("Convolution", (2, 2, 4, 5, 5), "kernel_size: 3 kernel_size: 2 "
     "kernel_size: 3 pad: 1 pad: 0 pad: 2"),
    ("Deconvolution", (2, 4, 5, 5), "kernel_size: 3 pad: 1 group: 2"),
])
def test_correlation_path_matches_col2im(monkeypatch, kind, shape, extra):
    """Stride-1 col -> img by correlation with the flipped kernel equals the
    GEMM + col2im path (conv input gradient, deconv forward)."""
    rng = np.random.default_rng(9)
    x = rng.standard_normal(shape)
    results = []
    for ratio, used in ((0.0, False), (1e9, True)):
        monkeypatch.setattr(conv_products, "CORR_MAX_RATIO", ratio)
        layer, bottom, top = make_layer(conv_text(kind, 4, extra), [x])
        assert layer._corr_ok is used
        if not results:
            params = [b.data.copy() for b in layer.blobs]
        for blob, arr in zip(layer.blobs, params):
            blob.data[...] = arr
        layer.forward(bottom, top)
        top[0].diff[...] = np.arange(top[0].count).reshape(top[0].shape) % 7
        layer.backward(top, [True], bottom)
        results.append((top[0].data.copy(), bottom[0].diff.copy(),
                        layer.blobs[0].diff.copy()))
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)


def test_propagate_down_false_leaves_bottom_diff():
    x = np.random.default_rng(7).standard_normal((1, 2, 4, 4))
    layer, bottom, top = run(conv_text(num_output=2, extra="kernel_size: 3"), x)
    bottom[0].diff[...] = 7
    top[0].diff[...] = 1
    layer.backward(top, [False], bottom)
    assert np.all(bottom[0].diff == 7) and np.any(layer.blobs[0].diff != 0)


@pytest.mark.parametrize("extra,words", [
    ("kernel_size: 6", ["does not fit", "(1, 2, 5, 5)", "(6, 6)"]),
    ("kernel_size: 3 dilation: 3", ["does not fit", "(7, 7)"]),
    ("kernel_size: 3 group: 3", ["not divisible", "group 3"]),
    ("kernel_size: 3 kernel_size: 3 kernel_size: 3", ["once per spatial axis"]),
    ("kernel_size: 3 kernel_h: 3 kernel_w: 3", ["not both"]),
    ("kernel_h: 3", ["kernel_h and kernel_w"]),
    ("pad: 1", ["kernel_size", "required"]),
    ("kernel_size: 3 stride: 0", ["stride must be positive"]),
])
def test_conv_bad_parameters(extra, words):
    with pytest.raises(LayerError) as err:
        make_layer(conv_text(num_output=4, extra=extra).replace(
            'type:', 'name: "c1" type:', 1), [np.zeros((1, 2, 5, 5))])
    msg = str(err.value)
    assert "'c1'" in msg
    for w in words:
        assert w in msg


def test_conv_hw_fields_need_2d_and_num_output():
    with pytest.raises(LayerError, match="2-D"):
        make_layer(conv_text(extra="kernel_h: 1 kernel_w: 1"),
                   [np.zeros((1, 2, 3, 3, 3))])
    with pytest.raises(LayerError, match="num_output"):
        make_layer('top: "t" type: "Convolution" '
                   'convolution_param { kernel_size: 1 }',
                   [np.zeros((1, 2, 3, 3))])


def test_conv_bottom_channel_change_rejected():
    layer, bottom, top = run(conv_text(extra="kernel_size: 1"),
                             np.zeros((1, 2, 3, 3)))
    bottom[0].reshape((1, 3, 3, 3))
    with pytest.raises(LayerError, match="3 channels"):
        layer.reshape(bottom, top)


# -- Deconvolution ----------------------------------------------------------------
DECONV_GRID = [  # (C, H, W, num_output, kernel, stride, pad, dilation, group)
    (3, 4, 4, 2, (4, 4), (2, 2), (1, 1), (1, 1), 1),
    (4, 3, 3, 4, (3, 3), (1, 1), (0, 0), (1, 1), 2),
    (2, 3, 4, 3, (3, 2), (2, 3), (1, 0), (2, 1), 1),
    (4, 3, 3, 6, (1, 1), (1, 1), (0, 0), (1, 1), 2),
]


@pytest.mark.parametrize("case", DECONV_GRID)
def test_deconv_matches_naive_oracle_and_gradient(case):
    C, H, W, O, k, s, p, d, g = case
    x = np.random.default_rng(8).standard_normal((2, C, H, W))
    text = conv_text("Deconvolution", O, geometry(k, s, p, d) + f" group: {g}")
    layer, _, top = run(text, x)
    w, b = layer.blobs[0].data, layer.blobs[1].data
    assert w.shape == (C, O // g) + k
    out = tuple(s_ * (i - 1) + d_ * (k_ - 1) + 1 - 2 * p_
                for i, k_, s_, p_, d_ in zip((H, W), k, s, p, d))
    assert top[0].shape == (2, O) + out
    np.testing.assert_allclose(top[0].data, naive_deconv(x, w, b, s, p, d, g),
                               rtol=1e-10, atol=1e-10)
    check_gradient(text, [x], max_checks=80)


# -- Im2col -----------------------------------------------------------------------
def naive_im2col(x, k, s, p, d):
    N, C, H, W = x.shape
    xp = np.pad(x, [(0, 0), (0, 0), (p[0], p[0]), (p[1], p[1])])
    oh = (H + 2 * p[0] - d[0] * (k[0] - 1) - 1) // s[0] + 1
    ow = (W + 2 * p[1] - d[1] * (k[1] - 1) - 1) // s[1] + 1
    out = np.zeros((N, C * k[0] * k[1], oh, ow))
    for n, c, i, j, y, z in itertools.product(range(N), range(C), range(k[0]),
                                              range(k[1]), range(oh), range(ow)):
        out[n, (c * k[0] + i) * k[1] + j, y, z] = \
            xp[n, c, y * s[0] + i * d[0], z * s[1] + j * d[1]]
    return out


@pytest.mark.parametrize("k,s,p,d", [((3, 3), (2, 2), (1, 1), (1, 1)),
                                     ((2, 3), (1, 2), (0, 1), (2, 1)),
                                     ((2, 2), (2, 2), (0, 0), (1, 1))])
def test_im2col_layout_and_gradient(k, s, p, d):
    x = np.random.default_rng(9).standard_normal((2, 2, 5, 6))
    text = 'top: "t" type: "Im2col" convolution_param { ' + geometry(k, s, p, d) + ' }'
    _, _, top = run(text, x)
    np.testing.assert_array_equal(top[0].data, naive_im2col(x, k, s, p, d))
    check_gradient(text, [x], max_checks=80)


def test_im2col_kernel_too_large():
    with pytest.raises(LayerError, match="does not fit"):
        make_layer('top: "t" type: "Im2col" convolution_param { kernel_size: 4 }',
                   [np.zeros((1, 1, 3, 3))])


# -- golden data --------------------------------------------------------------------
@pytest.mark.parametrize("case", [
    "conv_1x1", "conv_3d", "conv_basic", "conv_dilation", "conv_group",
    "conv_nobias", "conv_pad_stride", "conv_rect", "deconv_group",
    "deconv_stride_pad", "im2col"])
def test_golden(case):
    run_case("layers", case)


@pytest.mark.parametrize("shape,extra", [
    ((3, 4, 7, 6), "kernel_size: 3 pad: 1"),
    ((3, 4, 8, 7), "kernel_h: 5 kernel_w: 2 pad_h: 2 pad_w: 0 dilation: 2"),
    ((2, 3, 9, 9), "kernel_size: 3 stride: 2 pad: 1"),
    ((2, 2, 4, 5, 5), "kernel_size: 3 kernel_size: 2 kernel_size: 3 "
     "pad: 1 pad: 0 pad: 2"),
])
def test_channels_last_path_matches_classic(monkeypatch, shape, extra):
    """The channels-last columns (small images) give the same forward, input
    gradient and accumulated weight gradient as the classic im2col path."""
    rng = np.random.default_rng(10)
    x = rng.standard_normal(shape)
    results, params = [], []
    for min_channels, used in ((1 << 30, False), (1, True)):
        monkeypatch.setattr(conv_products, "NHWC_MIN_CHANNELS", min_channels)
        layer, out = forward_backward_twice(conv_text("Convolution", 5, extra),
                                            x, params)
        assert layer._nhwc is used
        results.append(out)
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind,shape,extra", [
    ("Convolution", (7, 4, 7, 6), "kernel_size: 3 pad: 1 group: 2"),
    ("Convolution", (5, 3, 9, 8), "kernel_h: 3 kernel_w: 2 stride: 2 pad: 1 "
     "dilation: 2"),
    ("Convolution", (3, 2, 4, 5, 5), "kernel_size: 3 kernel_size: 2 "
     "kernel_size: 3 pad: 1 pad: 0 pad: 2"),
    ("Deconvolution", (5, 4, 5, 5), "kernel_size: 3 stride: 2 pad: 1 "
     "group: 2"),
])
@pytest.mark.parametrize("threads_", ["1", "2"])
def test_side_by_side_weight_gradient_matches_per_chunk(
        monkeypatch, kind, shape, extra, threads_):
    """Small images' weight gradient with several images' columns side by
    side (a partial last group of them) equals the per-chunk products."""
    rng = np.random.default_rng(12)
    x = rng.standard_normal(shape)
    monkeypatch.setenv("PROTONET_THREADS", threads_)
    monkeypatch.setattr(conv_products, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(conv_products, "NHWC_MIN_CHANNELS", 1 << 30)
    results, params = [], []
    columns = 1  # first the per-chunk path, then two images side by side
    for side_by_side in (0, 2):
        monkeypatch.setattr(conv_products, "WGRAD_MIN_COLUMNS", columns)
        layer, out = forward_backward_twice(conv_text(kind, 4, extra), x,
                                            params, modulus=5)
        assert layer._wchunk == side_by_side
        results.append(out)
        columns = int(np.prod(layer.col_shape)) + 1
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind,shape,extra", [
    ("Convolution", (3, 4, 7, 6), "kernel_size: 3 pad: 1 group: 2"),  # corr
    ("Convolution", (3, 3, 9, 9), "kernel_size: 3 stride: 2 pad: 1"),  # col2im
    ("Convolution", (3, 4, 5, 5), "kernel_size: 1"),  # 1x1
    ("Convolution", (2, 2, 4, 5, 5), "kernel_size: 3 kernel_size: 2 "
     "kernel_size: 3 pad: 1 pad: 0 pad: 2"),  # 3-D
    ("Convolution", (3, 16, 6, 6), "kernel_size: 3 pad: 1 dilation: 1"),
    ("Deconvolution", (3, 4, 5, 5), "kernel_size: 3 stride: 2 pad: 1"),
])
@pytest.mark.parametrize("batch,budget", [(3, 1), (1, 1), (3, 1 << 30)])
def test_threaded_paths_match_serial(monkeypatch, kind, shape, extra, batch,
                                     budget):
    """Work spread over two threads (chunk by chunk, or row block by row
    block of one image) gives the serial forward, input gradient and
    accumulated weight gradient."""
    rng = np.random.default_rng(11)
    x = rng.standard_normal((batch,) + shape[1:])
    monkeypatch.setattr(conv_products, "COL_BUFFER_BYTES", budget)
    results, params = [], []
    for threads_, min_bytes, nhwc in (("1", 1 << 60, 1 << 30), ("2", 0, 1),
                                      ("2", 0, 1 << 30)):
        monkeypatch.setenv("PROTONET_THREADS", threads_)
        monkeypatch.setattr(conv_products, "PARALLEL_MIN_BYTES", min_bytes)
        monkeypatch.setattr(conv_products, "NHWC_MIN_CHANNELS", nhwc)
        layer, out = forward_backward_twice(conv_text(kind, 4, extra), x,
                                            params, modulus=5)
        assert layer._parallel is (min_bytes == 0 and not layer.is_1x1)
        results.append(out)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)


def test_threaded_winograd_matches_serial(monkeypatch):
    """Winograd forward over two threads: by chunks of images, and by bands
    of tile rows of one image."""
    rng = np.random.default_rng(12)
    x = rng.standard_normal((3, 64, 16, 16)).astype(np.float32)
    outs = []
    for threads_, min_bytes, batch in (("1", 1 << 60, 3), ("2", 0, 3),
                                       ("2", 0, 1)):
        monkeypatch.setenv("PROTONET_THREADS", threads_)
        monkeypatch.setattr(conv_products, "PARALLEL_MIN_BYTES", min_bytes)
        monkeypatch.setattr(winograd, "TILES_PER_BLOCK", 3)  # bands of rows
        layer, bottom, top = make_layer(
            conv_text("Convolution", 64, "kernel_size: 3 pad: 1"),
            [x[:batch]], dtype=np.float32)
        assert layer._use_wino
        if not outs:
            params = [b.data.copy() for b in layer.blobs]
        for blob, arr in zip(layer.blobs, params):
            blob.data[...] = arr
        layer.forward(bottom, top)
        outs.append(top[0].data.copy())
    np.testing.assert_allclose(outs[1], outs[0], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(outs[2], outs[0][:1], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind,shape,extra", [
    ("Convolution", (5, 6, 7, 6), "kernel_size: 1 group: 3"),
    ("Convolution", (5, 6, 12, 12), "kernel_size: 1"),  # stride 1, P > 128
    ("Convolution", (5, 4, 9, 8), "kernel_size: 1 stride: 2"),
    ("Convolution", (3, 4, 9, 8), "kernel_h: 1 kernel_w: 1 stride_h: 3 "
     "stride_w: 2"),
    ("Convolution", (2, 2, 5, 4, 6), "kernel_size: 1 stride: 2"),  # 3-D
    ("Deconvolution", (4, 4, 5, 5), "kernel_size: 1 stride: 2 group: 2"),
])
@pytest.mark.parametrize("budget", [1, 1 << 30])
def test_channel_major_1x1_matches_per_image_path(monkeypatch, kind, shape,
                                                  extra, budget):
    """1x1 kernels on few positions (one GEMM per chunk on channel-major
    copies; strided ones subsample instead of im2col) give the per-image
    path's forward, input gradient and accumulated weight gradient."""
    rng = np.random.default_rng(14)
    x = rng.standard_normal(shape)
    monkeypatch.setattr(conv_products, "COL_BUFFER_BYTES", budget)
    results, params = [], []
    for limit, used in ((0, False), (1 << 20, True)):
        monkeypatch.setattr(conv_products, "CHANNEL_MAJOR_MAX_POSITIONS", limit)
        monkeypatch.setattr(conv_products,
                            "CHANNEL_MAJOR_MAX_POSITIONS_STRIDE_1", limit)
        layer, out = forward_backward_twice(conv_text(kind, 6, extra), x,
                                            params)
        assert layer._cm is used
        if used:
            assert layer.chunk == (1 if budget == 1 else shape[0])
        results.append(out)
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("extra,hw,cm", [
    ("kernel_size: 1", (1, 127), True),   # stride 1, few positions
    ("kernel_size: 1", (8, 16), False),   # stride 1: in place from 128
    ("kernel_size: 1 stride: 2", (23, 23), True),  # strided: up to 1024
])
def test_channel_major_choice(extra, hw, cm):
    layer, bottom, top = make_layer(conv_text("Convolution", 4, extra),
                                    [np.zeros((2, 3) + hw)])
    assert layer._cm is cm
