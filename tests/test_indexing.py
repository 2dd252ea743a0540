"""Embed, Filter and BatchReindex layers (protonet/layers/indexing.py)."""

import numpy as np
import pytest

from caffe_ref import run_case
from protonet.errors import LayerError
from protonet.net import Net
from protonet.testing import check_gradient, make_layer


def rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


def run(layer, bottom, top, dy=None, prop=None):
    layer.reshape(bottom, top)
    layer.forward(bottom, top)
    if dy is not None:
        for t, d in zip(top, dy):
            t.diff[...] = d
        layer.backward(top, prop, bottom)


# == Embed ====================================================================
EMBED = ('type: "Embed" bottom: "idx" top: "y" embed_param { input_dim: 5 '
         'num_output: 3 %s }')
IDX = np.array([[0, 4, 2], [2, 2, 1]], float)


def test_embed_shapes():
    layer, _, top = make_layer(EMBED % "", [IDX])
    assert top[0].shape == (2, 3, 3)
    assert [b.shape for b in layer.blobs] == [(5, 3), (3,)]
    layer, _, top = make_layer(EMBED % "bias_term: false", [np.array([1.0])])
    assert top[0].shape == (1, 3) and len(layer.blobs) == 1


def test_embed_forward_by_hand():
    layer, bottom, top = make_layer(EMBED % "", [IDX])
    W = np.arange(15.0).reshape(5, 3)
    layer.blobs[0].data[...] = W
    layer.blobs[1].data[...] = [0.5, -1, 2]
    run(layer, bottom, top)
    np.testing.assert_allclose(top[0].data, W[IDX.astype(int)] + [0.5, -1, 2])


def test_embed_gradient_with_repeated_indices():
    params = [rand(5, 3, seed=1), rand(3, seed=2)]
    check_gradient(EMBED % "", [IDX], check_bottoms=[], params=params)


def test_embed_weight_diff_accumulates_repeats_and_passes():
    layer, bottom, top = make_layer(EMBED % "", [IDX])
    dy = rand(2, 3, 3, seed=3)
    run(layer, bottom, top, [dy], [False])
    np.testing.assert_allclose(layer.blobs[0].diff[2], dy[0, 2] + dy[1, 0] + dy[1, 1])
    np.testing.assert_allclose(layer.blobs[0].diff[3], 0)
    np.testing.assert_allclose(layer.blobs[1].diff, dy.sum(axis=(0, 1)))
    first = [b.diff.copy() for b in layer.blobs]
    layer.backward(top, [False], bottom)
    for b, d in zip(layer.blobs, first):
        np.testing.assert_allclose(b.diff, 2 * d)


@pytest.mark.parametrize("bad", [5.0, -1.0, 1.5])
def test_embed_rejects_bad_indices(bad):
    layer, bottom, top = make_layer(EMBED % "", [np.array([0.0, bad])])
    with pytest.raises(LayerError, match=r"integers in \[0, 5\).*got " + f"{bad:g}$"):
        run(layer, bottom, top)


def test_embed_rejects_gradient_to_indices_and_bad_params():
    layer, bottom, top = make_layer(EMBED % "", [IDX])
    with pytest.raises(LayerError, match=r"Embed layer.*bottom\[0\] \(the indices\)"):
        run(layer, bottom, top, [np.ones((2, 3, 3))], [True])
    with pytest.raises(LayerError, match="num_output must be positive"):
        make_layer('type: "Embed" bottom: "i" top: "y" embed_param { input_dim: 2 }',
                   [IDX])


def test_embed_in_force_backward_net_skips_the_index_bottom(tmp_path):
    path = tmp_path / "embed.prototxt"
    path.write_text("""name: "e" force_backward: true
        layer { name: "in" type: "Input" top: "idx"
                input_param { shape { dim: 2 dim: 3 } } }
        layer { name: "embed" type: "Embed" bottom: "idx" top: "y"
                embed_param { input_dim: 5 num_output: 3
                              weight_filler { type: "gaussian" } } }""")
    net = Net(str(path), dtype=np.float64)
    net.blobs["idx"].data[...] = IDX
    net.forward_from_to()
    net.blobs["y"].diff[...] = 1.0
    net.backward_from_to()
    assert net.layer_dict["embed"].blobs[0].diff[2].tolist() == [3.0] * 3


# == Filter ===================================================================
FILTER = 'type: "Filter" bottom: "a" bottom: "b" bottom: "sel" top: "ta" top: "tb"'
SEL = np.array([1.0, 0.0, 2.0, 0.0])


def test_filter_shapes_and_forward_by_hand():
    a, b = np.arange(12.0).reshape(4, 3), rand(4, 2, 2)
    layer, bottom, top = make_layer(FILTER, [a, b, SEL])
    # NOTE(caffe): before the first forward the tops keep the whole batch.
    assert top[0].shape == (4, 3) and top[1].shape == (4, 2, 2)
    run(layer, bottom, top)
    assert top[0].shape == (2, 3) and top[1].shape == (2, 2, 2)
    np.testing.assert_array_equal(top[0].data, a[[0, 2]])
    np.testing.assert_array_equal(top[1].data, b[[0, 2]])


def test_filter_gradient():
    check_gradient(FILTER, [rand(4, 3), rand(4, 2, 2, seed=1), SEL],
                   check_bottoms=[0, 1])


def test_filter_backward_zeros_dropped_items():
    layer, bottom, top = make_layer(FILTER, [rand(4, 3), rand(4, 2), SEL])
    bottom[0].diff[...] = 7.0
    run(layer, bottom, top, [np.ones((2, 3)), np.ones((2, 2))], [True, False, False])
    np.testing.assert_array_equal(bottom[0].diff[:, 0], [1, 0, 1, 0])
    assert not np.any(bottom[1].diff)


def test_filter_keeps_nothing():
    layer, bottom, top = make_layer(FILTER,
                                    [rand(4, 3), rand(4, 2), np.zeros((4, 1))])
    run(layer, bottom, top, [np.ones((0, 3)), np.ones((0, 2))], [True, True, False])
    assert top[0].shape == (0, 3)
    assert not np.any(bottom[0].diff)


@pytest.mark.parametrize("sel, match", [(np.ones((4, 2)), "selector.*\\(4, 2\\)"),
                                        (np.ones(3), "bottom\\[0\\].*first dimension 3")])
def test_filter_shape_errors(sel, match):
    with pytest.raises(LayerError, match=match):
        make_layer(FILTER, [rand(4, 3), rand(4, 2), sel])


def test_filter_errors():
    with pytest.raises(LayerError, match="one top per filtered bottom"):
        make_layer('type: "Filter" bottom: "a" bottom: "s" top: "x" top: "y"',
                   [rand(4, 3), SEL])
    layer, bottom, top = make_layer(FILTER, [rand(4, 3), rand(4, 2), SEL])
    assert not layer.allow_force_backward(2) and layer.allow_force_backward(0)
    with pytest.raises(LayerError, match=r"bottom\[2\] \(the selector\)"):
        run(layer, bottom, top, [np.ones((2, 3)), np.ones((2, 2))], [True, True, True])


# == BatchReindex =============================================================
REINDEX = 'type: "BatchReindex" bottom: "x" bottom: "perm" top: "y"'
PERM = np.array([3.0, 0.0, 3.0, 1.0, 3.0])


def test_batch_reindex_shape_and_forward_by_hand():
    x = np.arange(24.0).reshape(4, 3, 2)
    layer, bottom, top = make_layer(REINDEX, [x, PERM])
    assert top[0].shape == (5, 3, 2)
    run(layer, bottom, top)
    np.testing.assert_array_equal(top[0].data, x[[3, 0, 3, 1, 3]])


def test_batch_reindex_gradient_with_repeats():
    check_gradient(REINDEX, [rand(4, 3, 2), PERM], check_bottoms=[0])


def test_batch_reindex_backward_accumulates_repeats():
    layer, bottom, top = make_layer(REINDEX, [rand(4, 2), PERM])
    dy = rand(5, 2, seed=1)
    bottom[0].diff[...] = 9.0
    run(layer, bottom, top, [dy], [True, False])
    np.testing.assert_allclose(bottom[0].diff,
                               [dy[1], dy[3], [0, 0], dy[0] + dy[2] + dy[4]])


def test_batch_reindex_errors():
    with pytest.raises(LayerError, match="must be 1-D.*\\(5, 1\\)"):
        make_layer(REINDEX, [rand(4, 2), PERM.reshape(5, 1)])
    for bad in (4.0, -1.0):
        layer, bottom, top = make_layer(REINDEX, [rand(4, 2), np.array([0.0, bad])])
        with pytest.raises(LayerError, match=r"outside the batch \[0, 4\)"):
            run(layer, bottom, top)
    layer, bottom, top = make_layer(REINDEX, [rand(4, 2), PERM])
    with pytest.raises(LayerError, match=r"BatchReindex.*bottom\[1\] \(the indices\)"):
        run(layer, bottom, top, [np.ones((5, 2))], [True, True])


# == golden data ==============================================================
@pytest.mark.parametrize("case", ["embed", "filter", "batch_reindex"])
def test_golden(case):
    run_case("layers", case)
