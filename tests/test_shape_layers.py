"""Shape layers (Concat, Slice, Flatten, Reshape, Tile): shapes, forwards
against NumPy, no-copy views, float64 gradients, errors, and their golden
cases from real Caffe."""

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


GOLDEN = ["concat_axis", "concat_axis0", "flatten", "flatten_axes",
          "reshape_0_minus1", "reshape_axis", "slice_even", "slice_points",
          "tile"]


@pytest.mark.parametrize("case", GOLDEN)
def test_golden_case(case):
    run_case("layers", case)


@pytest.mark.parametrize("v1,v2", [("CONCAT", "Concat"), ("SLICE", "Slice"),
                                   ("FLATTEN", "Flatten")])
def test_v1_names(v1, v2):
    assert v1_type_name(v1) == v2


# -- Concat --------------------------------------------------------------------
def concat(n, params=""):
    bottoms = " ".join(f'bottom: "x{i}"' for i in range(n))
    return f'type: "Concat" {bottoms} top: "y" concat_param {{ {params} }}'


@pytest.mark.parametrize("shapes,params,axis", [
    ([(2, 2, 3), (2, 3, 3), (2, 1, 3)], "", 1),
    ([(1, 3), (2, 3)], "axis: 0", 0),
    ([(2, 3, 1), (2, 3, 2)], "axis: -1", 2),
    ([(2, 3, 1), (2, 3, 2)], "concat_dim: 2", 2),
])
def test_concat_forward(shapes, params, axis):
    xs = [rand(*s, seed=i) for i, s in enumerate(shapes)]
    _, _, top = forward(concat(len(xs), params), xs)
    np.testing.assert_array_equal(top[0].data, np.concatenate(xs, axis))


@pytest.mark.parametrize("shapes,params", [
    ([(2, 2, 3), (2, 3, 3), (2, 1, 3)], ""), ([(1, 3), (2, 3)], "axis: 0"),
    ([(2, 2), (2, 3)], "axis: -1")])
def test_concat_gradient(shapes, params):
    check_gradient(concat(len(shapes), params),
                   [rand(*s, seed=i) for i, s in enumerate(shapes)])


def test_concat_single_bottom_shares_data():
    layer, bottom, top = forward(concat(1), [rand(2, 3)])
    assert np.shares_memory(top[0].data, bottom[0].data)
    check_gradient(concat(1), [rand(2, 3)])


def test_concat_propagate_down_selects_bottoms():
    layer, bottom, top = forward(concat(2), [rand(2, 1), rand(2, 2)])
    top[0].diff[...] = [[1, 2, 3], [4, 5, 6]]
    bottom[0].diff[...] = 9
    layer.backward(top, [False, True], bottom)
    assert np.all(bottom[0].diff == 9)
    np.testing.assert_array_equal(bottom[1].diff, [[2, 3], [5, 6]])


def test_concat_errors():
    with pytest.raises(LayerError, match=r"except on axis 1: bottom 0 is "
                       r"\(2, 3\), bottom 1 is \(3, 3\)"):
        make_layer(concat(2), [np.zeros((2, 3)), np.zeros((3, 3))])
    with pytest.raises(LayerError, match=r"bottom 1 is \(2, 3, 1\)"):
        make_layer(concat(2), [np.zeros((2, 3)), np.zeros((2, 3, 1))])
    with pytest.raises(LayerError, match="either axis or concat_dim"):
        make_layer(concat(2, "axis: 1 concat_dim: 1"),
                   [np.zeros((2, 3)), np.zeros((2, 3))])
    with pytest.raises(LayerError, match="concat_param.axis 2 is out of range"):
        make_layer(concat(2, "axis: 2"), [np.zeros((2, 3)), np.zeros((2, 3))])


# -- Slice ---------------------------------------------------------------------
def slice_(n, params=""):
    tops = " ".join(f'top: "y{i}"' for i in range(n))
    return f'type: "Slice" bottom: "x" {tops} slice_param {{ {params} }}'


@pytest.mark.parametrize("shape,n,params,sections,axis", [
    ((2, 6, 3), 3, "axis: 1", 3, 1),
    ((2, 6, 2), 3, "slice_point: 1 slice_point: 4", [1, 4], 1),
    ((4, 3), 2, "axis: 0 slice_point: 3", [3], 0),
    ((2, 3, 4), 2, "axis: -1", 2, 2),
    ((2, 3, 4), 2, "slice_dim: 2", 2, 2),
])
def test_slice_forward(shape, n, params, sections, axis):
    x = rand(*shape)
    _, _, top = forward(slice_(n, params), [x])
    for t, ref in zip(top, np.split(x, sections, axis)):
        np.testing.assert_array_equal(t.data, ref)


@pytest.mark.parametrize("shape,n,params", [
    ((2, 6, 2), 3, ""), ((2, 6, 2), 3, "slice_point: 1 slice_point: 4"),
    ((4, 3), 2, "axis: 0 slice_point: 1"), ((2, 3), 1, "")])
def test_slice_gradient(shape, n, params):
    check_gradient(slice_(n, params), [rand(*shape)])


def test_slice_single_top_shares_data():
    _, bottom, top = forward(slice_(1), [rand(2, 3)])
    assert np.shares_memory(top[0].data, bottom[0].data)


def test_slice_errors():
    with pytest.raises(LayerError, match="into 4 equal parts"):
        make_layer(slice_(4), [np.zeros((2, 6))])
    with pytest.raises(LayerError, match=r"must give len\(top\) - 1 = 2 points, got 1"):
        make_layer(slice_(3, "slice_point: 2"), [np.zeros((2, 6))])
    with pytest.raises(LayerError, match="must increase strictly"):
        make_layer(slice_(3, "slice_point: 4 slice_point: 2"), [np.zeros((2, 6))])
    with pytest.raises(LayerError, match="must increase strictly"):
        make_layer(slice_(2, "slice_point: 6"), [np.zeros((2, 6))])
    with pytest.raises(LayerError, match="either axis or slice_dim"):
        make_layer(slice_(2, "axis: 1 slice_dim: 1"), [np.zeros((2, 6))])


# -- Flatten -------------------------------------------------------------------
def flatten(params=""):
    return f'type: "Flatten" bottom: "x" top: "y" flatten_param {{ {params} }}'


@pytest.mark.parametrize("shape,params,top_shape", [
    ((2, 3, 2, 2), "", (2, 12)),
    ((2, 3, 4, 2), "axis: 2 end_axis: -1", (2, 3, 8)),
    ((2, 3, 4, 2), "axis: 1 end_axis: 2", (2, 12, 2)),
    ((2, 3, 4, 2), "axis: 0", (48,)),
    ((2, 3, 4, 2), "axis: -2 end_axis: -2", (2, 3, 4, 2)),
    ((5,), "axis: 0", (5,)),
])
def test_flatten_shapes(shape, params, top_shape):
    x = rand(*shape)
    _, bottom, top = forward(flatten(params), [x])
    assert top[0].shape == top_shape
    assert np.shares_memory(top[0].data, bottom[0].data)
    np.testing.assert_array_equal(top[0].data, x.reshape(top_shape))


def test_flatten_gradient():
    check_gradient(flatten("axis: 1 end_axis: 2"), [rand(2, 3, 2, 2)])


def test_flatten_errors():
    with pytest.raises(LayerError, match="end_axis .* comes before axis"):
        make_layer(flatten("axis: 2 end_axis: 1"), [np.zeros((2, 3, 4))])
    with pytest.raises(LayerError, match="flatten_param.axis 3 is out of range"):
        make_layer(flatten("axis: 3"), [np.zeros((2, 3, 4))])


def test_in_place_view_layers_are_rejected():
    for text in (flatten(), 'type: "Reshape" reshape_param { shape { dim: -1 } }'):
        layer = create_layer(layer_param(text + ' bottom: "x" top: "x"'))
        blob = Blob((2, 3))
        with pytest.raises(LayerError, match="does not allow in-place"):
            layer.set_up([blob], [blob])


# -- Reshape -------------------------------------------------------------------
def reshape(dims, extra=""):
    shape = " ".join(f"dim: {d}" for d in dims)
    return (f'type: "Reshape" bottom: "x" top: "y" '
            f'reshape_param {{ shape {{ {shape} }} {extra} }}')


@pytest.mark.parametrize("shape,dims,extra,top_shape", [
    ((2, 3, 4), [0, -1, 2], "", (2, 6, 2)),
    ((2, 3, 4), [-1], "", (24,)),
    ((2, 3, 4), [4, 0, 2], "", (4, 3, 2)),
    ((2, 3, 4, 5), [-1], "axis: 1 num_axes: 2", (2, 12, 5)),
    ((2, 3, 4), [1, 1], "axis: 0 num_axes: 0", (1, 1, 2, 3, 4)),
    ((2, 3, 4), [1, 1], "axis: -1 num_axes: 0", (2, 3, 4, 1, 1)),
    ((2, 3, 4), [2, 2], "axis: -2", (2, 3, 2, 2)),
    ((2, 3, 4), [0, 2, -1], "axis: 1", (2, 3, 2, 2)),
    ((2, 3, 4), [0, 0, 0], "", (2, 3, 4)),
    ((6,), [], "axis: 0 num_axes: 0", (6,)),
])
def test_reshape_shapes(shape, dims, extra, top_shape):
    x = rand(*shape)
    _, bottom, top = forward(reshape(dims, extra), [x])
    assert top[0].shape == top_shape
    assert np.shares_memory(top[0].data, bottom[0].data)
    np.testing.assert_array_equal(top[0].data.ravel(), x.ravel())


def test_reshape_follows_new_bottom_shape_and_memory():
    layer, bottom, top = forward(reshape([0, -1]), [rand(2, 3, 4)])
    bottom[0].reshape(5, 2, 2)          # new count: the producer reallocated
    bottom[0].data[...] = 3
    run_forward(layer, bottom, top)
    assert top[0].shape == (5, 4)
    assert np.shares_memory(top[0].data, bottom[0].data)
    assert np.all(top[0].data == 3)


def test_reshape_gradient():
    check_gradient(reshape([0, -1, 2]), [rand(2, 3, 4)])


@pytest.mark.parametrize("shape,dims,extra,match", [
    ((2, 3, 4), [-1, -1], "", "at most one -1"),
    ((2, 3, 4), [-2, 12], "", "at most one -1"),
    ((2, 3, 4), [5, -1], "", r"not divisible by the product of the specified dims \(5\)"),
    ((2, 3, 4), [5, 5], "", r"has 25 elements but the bottom \(2, 3, 4\) has 24"),
    ((2, 3, 4), [0, 0], "axis: 2", "no axis 3 to copy"),
    ((2, 3, 4), [-1], "axis: 4", "reshape_param.axis 4 is out of range"),
    ((2, 3, 4), [-1], "axis: 2 num_axes: 2", "axis \\+ num_axes = 4 is out of range"),
    ((2, 3, 4), [-1], "num_axes: -2", "num_axes must be >= 0"),
])
def test_reshape_errors(shape, dims, extra, match):
    with pytest.raises(LayerError, match=match):
        make_layer(reshape(dims, extra), [np.zeros(shape)])


# -- Tile ----------------------------------------------------------------------
def tile(axis, tiles):
    return (f'type: "Tile" bottom: "x" top: "y" '
            f'tile_param {{ axis: {axis} tiles: {tiles} }}')


@pytest.mark.parametrize("shape,axis,tiles", [
    ((2, 3, 2), 1, 3), ((2, 3), 0, 2), ((2, 3), -1, 4), ((2, 3), 1, 1)])
def test_tile_forward(shape, axis, tiles):
    x = rand(*shape)
    _, _, top = forward(tile(axis, tiles), [x])
    reps = [1] * len(shape)
    reps[axis] = tiles
    np.testing.assert_array_equal(top[0].data, np.tile(x, reps))


@pytest.mark.parametrize("shape,axis,tiles", [((2, 3, 2), 1, 3), ((2, 3), 0, 2)])
def test_tile_gradient(shape, axis, tiles):
    check_gradient(tile(axis, tiles), [rand(*shape)])


def test_tile_errors():
    with pytest.raises(LayerError, match="tiles must be at least 1"):
        make_layer(tile(1, 0), [np.zeros((2, 3))])
    with pytest.raises(LayerError, match="tile_param.axis 2 is out of range"):
        make_layer(tile(2, 2), [np.zeros((2, 3))])


@pytest.mark.parametrize("text,shapes", [
    (concat(2), [(2, 1), (2, 2)]), (slice_(2), [(2, 4)]), (flatten(), [(2, 3, 2)]),
    (reshape([-1]), [(2, 3)]), (tile(1, 2), [(2, 3)])])
def test_float32_stays_float32(text, shapes):
    _, _, top = forward(text, [rand(*s) for s in shapes], np.float32)
    for t in top:
        assert t.data.dtype == np.float32


NET = """
name: "views"
force_backward: true
layer { name: "in" type: "Input" top: "x"
        input_param { shape { dim: 2 dim: 3 dim: 2 } } }
layer { name: "flat" type: "Flatten" bottom: "x" top: "f" }
layer { name: "ip" type: "InnerProduct" bottom: "f" top: "y"
        inner_product_param { num_output: 2 weight_filler { type: "gaussian" } } }
layer { name: "back" type: "Reshape" bottom: "y" top: "z"
        reshape_param { shape { dim: 0 dim: 1 dim: -1 } } }
"""


def test_views_follow_input_reshape_in_a_net(tmp_path):
    from protonet import Net
    path = tmp_path / "net.prototxt"
    path.write_text(NET)
    net = Net(str(path), phase=1)
    W = net.params["ip"][0].data
    for batch in (2, 5):
        x = rand(batch, 3, 2, seed=batch).astype(np.float32)
        net.blobs["x"].reshape(x.shape)
        out = net.forward(x=x)["z"]
        assert out.shape == (batch, 1, 2)
        np.testing.assert_allclose(out.reshape(batch, 2), x.reshape(batch, 6) @ W.T,
                                   rtol=1e-5, atol=1e-6)
        assert np.shares_memory(net.blobs["f"].data, net.blobs["x"].data)
        assert np.shares_memory(net.blobs["z"].data, net.blobs["y"].data)
        net.blobs["z"].diff[...] = 1
        net.backward_from_to()
        np.testing.assert_allclose(net.blobs["x"].diff.reshape(batch, 6),
                                   np.ones((batch, 2)) @ W, rtol=1e-5)
