"""Pooling, SPP and Crop: Caffe's loop semantics as a naive oracle, ceil/clip
edge cases, gradient checks, errors and the golden cases from real Caffe."""

import itertools
import math

import numpy as np
import pytest

from caffe_ref import run_case
from protonet import rng
from protonet.errors import LayerError, UnsupportedError
from protonet.layers.vision import pooled_size
from protonet.proto import caffe_pb2
from protonet.testing import check_gradient, make_layer, run_forward


def naive_pool(x, pool, k, s, p, ceil=True):
    """pooling_layer.cpp's loops: returns (top, argmax mask)."""
    N, C, H, W = x.shape
    PH, PW = (pooled_size(H, k[0], s[0], p[0], ceil),
              pooled_size(W, k[1], s[1], p[1], ceil))
    y = np.zeros((N, C, PH, PW))
    mask = np.full((N, C, PH, PW), -1.0)
    for n, c, i, j in itertools.product(range(N), range(C), range(PH), range(PW)):
        hs, ws = i * s[0] - p[0], j * s[1] - p[1]
        he, we = min(hs + k[0], H + p[0]), min(ws + k[1], W + p[1])
        size = (he - hs) * (we - ws)
        hs, ws, he, we = max(hs, 0), max(ws, 0), min(he, H), min(we, W)
        if pool == "MAX":
            best = -np.inf
            for h in range(hs, he):
                for w in range(ws, we):
                    if x[n, c, h, w] > best:
                        best, mask[n, c, i, j] = x[n, c, h, w], h * W + w
            y[n, c, i, j] = best
        else:
            y[n, c, i, j] = x[n, c, hs:he, ws:we].sum() / size
    return y, mask


def pool_text(pool, extra="", tops=1):
    t = " ".join(f'top: "t{i}"' for i in range(tops))
    return f'{t} type: "Pooling" pooling_param {{ pool: {pool} {extra} }}'


def geom(k, s, p):
    return (f"kernel_h: {k[0]} kernel_w: {k[1]} stride_h: {s[0]} "
            f"stride_w: {s[1]} pad_h: {p[0]} pad_w: {p[1]}")


def distinct(shape, seed=0):
    """Values with gaps >= 0.1 between any two (no max ties or kinks)."""
    n = int(np.prod(shape))
    return np.random.default_rng(seed).permutation(n).reshape(shape) * 0.1 - n * 0.05


GRID = [  # (H, W, kernel, stride, pad)
    ((6, 6), (2, 2), (2, 2), (0, 0)), ((6, 6), (3, 3), (1, 1), (0, 0)),
    ((5, 5), (3, 3), (2, 2), (1, 1)), ((5, 5), (2, 2), (2, 2), (1, 1)),
    ((7, 7), (3, 3), (2, 2), (1, 1)), ((6, 7), (3, 2), (2, 1), (1, 0)),
    ((7, 8), (3, 3), (3, 2), (0, 1)), ((4, 9), (4, 3), (3, 3), (2, 1)),
    ((14, 13), (12, 12), (1, 1), (0, 0)),  # > 127 offsets: int32 argmax
]


@pytest.mark.parametrize("pool", ["MAX", "AVE"])
@pytest.mark.parametrize("ceil", [True, False])
@pytest.mark.parametrize("case", GRID)
def test_pool_matches_naive_oracle(case, ceil, pool):
    (H, W), k, s, p = case
    x = distinct((2, 3, H, W))
    mode = "" if ceil else " round_mode: FLOOR"
    tops = 2 if pool == "MAX" else 1
    layer, bottom, top = make_layer(pool_text(pool, geom(k, s, p) + mode, tops),
                                    [x])
    layer.forward(bottom, top)
    y, mask = naive_pool(x, pool, k, s, p, ceil)
    np.testing.assert_allclose(top[0].data, y, rtol=1e-12, atol=1e-12)
    if pool == "MAX":
        np.testing.assert_array_equal(top[1].data, mask)


@pytest.mark.parametrize("pool", ["MAX", "AVE"])
@pytest.mark.parametrize("case", GRID[2:6])
def test_pool_gradient(case, pool):
    (H, W), k, s, p = case
    check_gradient(pool_text(pool, geom(k, s, p)), [distinct((2, 2, H, W), 1)])


@pytest.mark.parametrize("H,k,s,p,ceil,expected", [
    (5, 2, 2, 1, True, 3),    # ceil gives 4, whose window starts in the pad
    (7, 3, 2, 1, True, 4),    # last window reaches into the padding
    (6, 3, 2, 0, True, 3),    # ceil without pad: window hangs off the end
    (6, 3, 2, 0, False, 2),
    (5, 2, 2, 1, False, 3),
    (1, 2, 1, 1, True, 2),
])
def test_pooled_size_ceil_and_clip(H, k, s, p, ceil, expected):
    assert pooled_size(H, k, s, p, ceil) == expected
    rounding = math.ceil if ceil else math.floor
    raw = rounding((H + 2 * p - k) / s) + 1
    assert expected in (raw, raw - 1)


def test_max_hand_computed_and_first_max_tie():
    x = np.array([[[[1., 5., 2., 2.],
                    [5., 0., 2., 2.],
                    [3., 3., 9., 8.],
                    [3., 3., 7., 9.]]]])
    layer, bottom, top = make_layer(pool_text("MAX", "kernel_size: 2 stride: 2",
                                              tops=2), [x])
    layer.forward(bottom, top)
    np.testing.assert_array_equal(top[0].data[0, 0], [[5, 2], [3, 9]])
    np.testing.assert_array_equal(top[1].data[0, 0], [[1, 2], [8, 10]])
    top[0].diff[...] = 1
    layer.backward(top, [True], bottom)
    expect = np.zeros((4, 4))
    expect.flat[[1, 2, 8, 10]] = 1
    np.testing.assert_array_equal(bottom[0].diff[0, 0], expect)


def test_overlapping_max_windows_accumulate():
    x = np.array([[[[0., 1., 0.], [1., 9., 1.], [0., 1., 0.]]]])
    layer, bottom, top = make_layer(pool_text("MAX", "kernel_size: 2 stride: 1"),
                                    [x])
    layer.forward(bottom, top)
    top[0].diff[...] = [[1, 2], [3, 4]]
    layer.backward(top, [True], bottom)
    assert bottom[0].diff[0, 0, 1, 1] == 10 and bottom[0].diff.sum() == 10



def test_max_backward_allocates_no_index_sized_temporary():
    """The window offsets (int8) become flat bottom indices in the layer's
    own buffer: np.take on the int8 array would first copy it to a new intp
    array as large as the top (8 bytes an element) on every backward."""
    import tracemalloc
    x = np.random.default_rng(0).standard_normal((8, 16, 64, 64))
    layer, bottom, top = make_layer(pool_text("MAX", "kernel_size: 3 "
                                              "stride: 2"), [x],
                                    phase=caffe_pb2.TRAIN, dtype=np.float32)
    layer.forward(bottom, top)
    top[0].diff[...] = 1
    layer.backward(top, [True], bottom)  # makes the reused index buffers
    expect = bottom[0].diff.copy()
    tracemalloc.start()
    try:
        layer.forward(bottom, top)
        layer.backward(top, [True], bottom)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    index_bytes = top[0].count * np.dtype(np.intp).itemsize  # 1 MiB here
    assert peak < index_bytes // 4, (peak, index_bytes)
    np.testing.assert_array_equal(bottom[0].diff, expect)

def test_ave_pad_divisor_counts_padding_inside_h_plus_pad():
    x = np.ones((1, 1, 5, 5))
    layer, bottom, top = make_layer(pool_text("AVE", "kernel_size: 3 stride: 2 "
                                              "pad: 1"), [x])
    layer.forward(bottom, top)
    # corner window: 4 real cells of 9 -> 4/9; edge 6/9; middle 9/9
    np.testing.assert_allclose(top[0].data[0, 0], [[4 / 9, 6 / 9, 4 / 9],
                                                   [6 / 9, 1, 6 / 9],
                                                   [4 / 9, 6 / 9, 4 / 9]])


@pytest.mark.parametrize("pool", ["MAX", "AVE"])
def test_global_pooling(pool):
    x = distinct((2, 3, 4, 5), 2)
    text = pool_text(pool, "global_pooling: true")
    layer, bottom, top = make_layer(text, [x])
    layer.forward(bottom, top)
    assert top[0].shape == (2, 3, 1, 1)
    red = x.max(axis=(2, 3)) if pool == "MAX" else x.mean(axis=(2, 3))
    np.testing.assert_allclose(top[0].data[..., 0, 0], red, rtol=1e-12)
    check_gradient(text, [x])


def test_float32_stays_float32():
    x = distinct((2, 2, 5, 5)).astype(np.float32)
    for pool in ("MAX", "AVE"):
        layer, bottom, top = make_layer(pool_text(pool, "kernel_size: 3 stride: "
                                                  "2 pad: 1"), [x],
                                        dtype=np.float32)
        layer.forward(bottom, top)
        top[0].diff[...] = 1
        layer.backward(top, [True], bottom)
        assert top[0].data.dtype == bottom[0].diff.dtype == np.float32


def test_stochastic_test_phase_weighted_average_and_gradient():
    x = np.random.default_rng(3).uniform(0.5, 2.0, (2, 2, 4, 4))
    text = pool_text("STOCHASTIC", "kernel_size: 2 stride: 2")
    layer, bottom, top = make_layer(text, [x])
    layer.forward(bottom, top)
    w = x.reshape(2, 2, 2, 2, 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(
        2, 2, 2, 2, 4)
    np.testing.assert_allclose(top[0].data, (w * w).sum(-1) / w.sum(-1),
                               rtol=1e-12)
    check_gradient(text, [x])


def test_stochastic_train_samples_proportionally_and_routes_gradient():
    x = np.array([[[[1.0, 3.0]]]])
    text = pool_text("STOCHASTIC", "kernel_h: 1 kernel_w: 2")
    layer, bottom, top = make_layer(text, [x], phase=caffe_pb2.TRAIN)
    rng.set_random_seed(11)
    picks = []
    for _ in range(2000):
        layer.forward(bottom, top)
        picks.append(top[0].data[0, 0, 0, 0])
    assert set(picks) == {1.0, 3.0}
    assert abs(np.mean(np.array(picks) == 3.0) - 0.75) < 0.04
    top[0].diff[...] = 2.5
    layer.backward(top, [True], bottom)
    chosen = int(top[0].data[0, 0, 0, 0] == 3.0)
    expect = np.zeros(2)
    expect[chosen] = 2.5
    np.testing.assert_array_equal(bottom[0].diff[0, 0, 0], expect)
    big = np.random.default_rng(4).uniform(0.5, 2.0, (2, 2, 4, 4))
    check_gradient(pool_text("STOCHASTIC", "kernel_size: 2 stride: 1"), [big],
                   phase=caffe_pb2.TRAIN)


@pytest.mark.parametrize("text,bottom,err,words", [
    (pool_text("MAX", "kernel_size: 2 pad: 2"), (1, 1, 5, 5), LayerError,
     "smaller than the kernel"),
    (pool_text("MAX", "kernel_size: 2 kernel_h: 2 kernel_w: 2"), (1, 1, 5, 5),
     LayerError, "exactly one"),
    (pool_text("MAX", "kernel_h: 2"), (1, 1, 5, 5), LayerError, "kernel_w"),
    (pool_text("MAX", "global_pooling: true kernel_size: 2"), (1, 1, 5, 5),
     LayerError, "global_pooling"),
    (pool_text("MAX", "kernel_size: 2 pad: 1 pad_h: 1"), (1, 1, 5, 5),
     LayerError, "pad_h"),
    (pool_text("MAX", "kernel_size: 2"), (1, 5, 5), LayerError, "4 axes"),
    (pool_text("MAX", "kernel_size: 7"), (1, 1, 5, 5), LayerError,
     "leaves no output"),
    (pool_text("STOCHASTIC", "kernel_size: 3 pad: 1"), (1, 1, 5, 5),
     UnsupportedError, "pad"),
    (pool_text("AVE", "kernel_size: 2", tops=2), (1, 1, 5, 5), LayerError,
     "mask"),
])
def test_pool_bad_parameters(text, bottom, err, words):
    with pytest.raises(err, match=words) as info:
        make_layer('name: "p1" ' + text, [np.zeros(bottom)])
    assert "'p1'" in str(info.value)


# -- SPP ----------------------------------------------------------------------------
def spp_reference(x, height, pool):
    H, W = x.shape[2:]
    parts = []
    for level in range(height):
        bins = 2 ** level
        kh, kw = -(-H // bins), -(-W // bins)
        ph, pw = (kh * bins - H + 1) // 2, (kw * bins - W + 1) // 2
        y, _ = naive_pool(x, pool, (kh, kw), (kh, kw), (ph, pw))
        parts.append(y.reshape(len(x), -1))
    return np.concatenate(parts, axis=1)


@pytest.mark.parametrize("pool", ["MAX", "AVE"])
@pytest.mark.parametrize("shape,height", [((2, 2, 7, 5), 2), ((1, 3, 9, 12), 3)])
def test_spp_matches_levels_and_gradient(shape, height, pool):
    x = distinct(shape, 5)
    text = (f'top: "t" type: "SPP" spp_param {{ pyramid_height: {height} '
            f'pool: {pool} }}')
    layer, bottom, top = make_layer(text, [x])
    layer.forward(bottom, top)
    np.testing.assert_allclose(top[0].data, spp_reference(x, height, pool),
                               rtol=1e-12)
    check_gradient(text, [x], max_checks=120)


def test_spp_height_one_is_unflattened_global_pool():
    x = distinct((2, 3, 4, 6))
    layer, bottom, top = make_layer('top: "t" type: "SPP" spp_param { '
                                    'pyramid_height: 1 }', [x])
    layer.forward(bottom, top)
    assert top[0].shape == (2, 3, 1, 1)
    np.testing.assert_array_equal(top[0].data[..., 0, 0], x.max(axis=(2, 3)))


def test_spp_reshape_to_new_size():
    layer, bottom, top = make_layer('top: "t" type: "SPP" spp_param { '
                                    'pyramid_height: 2 pool: AVE }',
                                    [np.zeros((1, 2, 8, 8))])
    bottom[0].reshape((1, 2, 5, 9))
    bottom[0].data[...] = distinct((1, 2, 5, 9))
    layer.reshape(bottom, top)
    layer.forward(bottom, top)
    np.testing.assert_allclose(top[0].data, spp_reference(bottom[0].data, 2,
                                                          "AVE"), rtol=1e-12)


# -- Crop -----------------------------------------------------------------------------
CROP = 'top: "t" type: "Crop" crop_param { %s }'


def test_crop_forward_backward_per_axis_offsets():
    x = np.arange(2 * 3 * 7 * 7, dtype=float).reshape(2, 3, 7, 7)
    ref = np.zeros((2, 3, 4, 5))
    layer, bottom, top = make_layer(CROP % "axis: 2 offset: 1 offset: 2",
                                    [x, ref])
    layer.forward(bottom, top)
    np.testing.assert_array_equal(top[0].data, x[:, :, 1:5, 2:7])
    top[0].diff[...] = 1
    bottom[1].diff[...] = 5
    layer.backward(top, [True, True], bottom)
    expect = np.zeros_like(x)
    expect[:, :, 1:5, 2:7] = 1
    np.testing.assert_array_equal(bottom[0].diff, expect)
    assert np.all(bottom[1].diff == 5)  # the reference gets no gradient
    check_gradient(CROP % "axis: 2 offset: 1 offset: 2", [x, ref],
                   check_bottoms=[0])


def test_crop_single_offset_and_negative_axis():
    x = np.random.default_rng(6).standard_normal((2, 4, 6, 6))
    layer, bottom, top = make_layer(CROP % "axis: -3 offset: 1",
                                    [x, np.zeros((2, 2, 3, 4))])
    layer.forward(bottom, top)
    assert top[0].shape == (2, 2, 3, 4)
    np.testing.assert_array_equal(top[0].data, x[:, 1:3, 1:4, 1:5])
    _, _, top = make_layer(CROP % "axis: 1", [x, np.zeros((9, 3, 2, 2))])
    assert top[0].shape == (2, 3, 2, 2)  # default offset 0, axis 0 kept


@pytest.mark.parametrize("param,ref,words", [
    ("axis: 2 offset: 1 offset: 2 offset: 3", (2, 3, 4, 5), "one per cropped"),
    ("axis: 2 offset: 4", (2, 3, 4, 5), "cannot crop axis"),
    ("axis: 2", (2, 3, 4), "same number of axes"),
])
def test_crop_bad_parameters(param, ref, words):
    with pytest.raises(LayerError, match=words):
        make_layer(CROP % param, [np.zeros((2, 3, 7, 7)), np.zeros(ref)])


# -- golden data ----------------------------------------------------------------------
@pytest.mark.parametrize("case", [
    "pool_ave", "pool_ave_pad", "pool_ceil_clip", "pool_ceil_pad_ave",
    "pool_ceil_pad_max", "pool_global_ave", "pool_global_max", "pool_max",
    "pool_rect", "spp", "crop"])
def test_golden(case):
    run_case("layers", case)


def test_kernel_larger_than_bottom_is_clipped_as_in_caffe():
    """NOTE(caffe): openpose's deploy net pools a 1x1 map with a 2x2 kernel,
    stride 2; Caffe gives a 1x1 output over the clipped window."""
    x = np.array([[[[3.0]]]])
    for pool, want in (("MAX", 3.0), ("AVE", 3.0 / 1)):
        layer, bottom, top = make_layer(
            pool_text(pool, "kernel_size: 2 stride: 2"), [x])
        run_forward(layer, bottom, top)
        assert top[0].shape == (1, 1, 1, 1)
        assert top[0].data[0, 0, 0, 0] == want


@pytest.mark.parametrize("threads_", ["1", "2"])
@pytest.mark.parametrize("pool", ["MAX", "AVE"])
@pytest.mark.parametrize("case", [GRID[2], GRID[5], GRID[7]])
def test_blocks_of_planes_over_threads_match_oracle(monkeypatch, case, pool,
                                                    threads_):
    """Blocks of one (n, c) plane, spread over two threads, give the naive
    oracle's outputs, argmax and gradients (also with the last block
    smaller than the others: 3 x 5 planes in blocks of 2)."""
    from protonet.layers import vision
    (H, W), k, s, p = case
    monkeypatch.setenv("PROTONET_THREADS", threads_)
    for budget in (1, 2 * H * W * 8):
        monkeypatch.setattr(vision, "BLOCK_BYTES", budget)
        x = distinct((3, 5, H, W), 2)
        tops = 2 if pool == "MAX" else 1
        layer, bottom, top = make_layer(pool_text(pool, geom(k, s, p), tops),
                                        [x])
        layer.forward(bottom, top)
        assert len(layer._blocks) == (15 if budget == 1 else 8)
        y, mask = naive_pool(x, pool, k, s, p)
        np.testing.assert_allclose(top[0].data, y, rtol=1e-12, atol=1e-12)
        if pool == "MAX":
            np.testing.assert_array_equal(top[1].data, mask)
    check_gradient(pool_text(pool, geom(k, s, p)), [distinct((3, 5, H, W), 3)])


def test_forward_only_skips_the_argmax_and_net_refuses_backward(tmp_path):
    """A forward no backward follows (memory="inference") keeps no argmax;
    a backward after it is refused with the layer's name, even when no
    activation was released (a net of one layer)."""
    from protonet import Net
    from protonet.errors import NetError
    x = distinct((2, 3, 7, 7))
    layer, bottom, top = make_layer(pool_text("MAX", geom((3, 3), (2, 2),
                                                          (1, 1))), [x])
    layer.forward(bottom, top)
    y = top[0].data.copy()
    assert layer._idx is not None
    layer.forward_only = True
    layer.forward(bottom, top)
    assert layer._idx is None
    np.testing.assert_array_equal(top[0].data, y)
    path = tmp_path / "pool.prototxt"
    path.write_text('layer { name: "data" type: "Input" top: "data" '
                    'input_param { shape { dim: 2 dim: 3 dim: 7 dim: 7 } } }'
                    'layer { name: "pool" type: "Pooling" bottom: "data" '
                    'top: "pool" pooling_param { pool: MAX kernel_size: 3 '
                    'stride: 2 } }')
    net = Net(str(path), memory="inference", phase=caffe_pb2.TRAIN)
    net.force_backward = True
    net.layer_need_backward[1] = True
    net.bottom_need_backward[1] = [True]
    net.forward(data=x)
    with pytest.raises(NetError, match="kept nothing for backward.*pool"):
        net.backward_from_to()
    net.forward_from_to(release=False)
    net.backward_from_to()


def test_stochastic_test_phase_with_windows_cut_by_the_input_end():
    """5x5 input, 2x2 windows at stride 2: the last row and column of
    windows hold one input cell (Caffe clips them).  The padded copy used
    to be read before it was ever made (AttributeError '_xp')."""
    x = np.random.default_rng(4).uniform(0.5, 2.0, (1, 2, 5, 5))
    layer, bottom, top = make_layer(
        pool_text("STOCHASTIC", "kernel_size: 2 stride: 2"), [x])
    layer.forward(bottom, top)
    want = np.zeros((1, 2, 3, 3))
    for i in range(3):
        for j in range(3):
            w = x[:, :, 2 * i:2 * i + 2, 2 * j:2 * j + 2]
            want[:, :, i, j] = (w * w).sum((2, 3)) / w.sum((2, 3))
    np.testing.assert_allclose(top[0].data, want, rtol=1e-12)
