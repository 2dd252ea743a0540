"""Net construction semantics: filtering, splits, in-place, sharing,
backward analysis, weights I/O, pycaffe-style forward/backward."""

import numpy as np
import pytest

import protonet
from protonet import io
from protonet.errors import LayerError, NetError, WeightsError
from protonet.layer import Layer, register
from protonet.net import Net
from protonet.netgraph import filter_net, insert_splits
from protonet.proto import caffe_pb2


@register("TestAffine")
class AffineForTestsLayer(Layer):
    """y = w * x + b with scalar-broadcast params of parameter_param.shape
    (default (1,)); a test-only layer so net tests need no real layers."""

    exact_num_bottom = 1
    exact_num_top = 1

    def setup(self, bottom, top):
        shape = tuple(self.param.parameter_param.shape.dim) or (1,)
        w = caffe_pb2.FillerParameter(type="constant", value=2.0)
        self.add_param_blob(shape, w)
        self.add_param_blob(shape, None)

    def reshape(self, bottom, top):
        top[0].reshape(bottom[0].shape)

    def forward(self, bottom, top):
        w, b = self.blobs[0].data.ravel()[0], self.blobs[1].data.ravel()[0]
        top[0].data[...] = w * bottom[0].data + b

    def backward(self, top, propagate_down, bottom):
        w = self.blobs[0].data.ravel()[0]
        dy = top[0].diff
        self.blobs[0].diff.ravel()[0] += np.sum(dy * bottom[0].data)
        self.blobs[1].diff.ravel()[0] += np.sum(dy)
        if propagate_down[0]:
            bottom[0].diff[...] = w * dy


@register("TestSumLoss")
class SumLossForTestsLayer(Layer):
    """loss = sum(x); a test-only loss layer."""

    exact_num_bottom = 1
    exact_num_top = 1
    is_loss = True

    def reshape(self, bottom, top):
        top[0].reshape(())

    def forward(self, bottom, top):
        top[0].data[...] = bottom[0].data.sum()

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = top[0].diff


def net_from(text, tmp_path, **kw):
    path = tmp_path / "net.prototxt"
    path.write_text(text)
    return Net(str(path), **kw)


INPUT = ('layer { name: "data" type: "Input" top: "data" '
         'input_param { shape { dim: 2 dim: 3 } } }\n')


def test_filter_by_phase_level_and_stage():
    p = io.parse_net_text(INPUT + """
    layer { name: "a" type: "Silence" bottom: "data" include { phase: TRAIN } }
    layer { name: "b" type: "Silence" bottom: "data" include { phase: TEST } }
    layer { name: "c" type: "Silence" bottom: "data" include { min_level: 2 } }
    layer { name: "d" type: "Silence" bottom: "data" include { stage: "deploy" } }
    layer { name: "e" type: "Silence" bottom: "data" exclude { not_stage: "x" } }
    """)
    p.state.phase = caffe_pb2.TEST
    p.state.level = 1
    p.state.stage.append("deploy")
    assert [l.name for l in filter_net(p).layer] == ["data", "b", "d"]
    p.state.level = 2
    assert [l.name for l in filter_net(p).layer] == ["data", "b", "c", "d"]


def test_include_and_exclude_together_is_an_error():
    p = io.parse_net_text(INPUT + 'layer { name: "a" type: "Silence" bottom: '
                          '"data" include { phase: TRAIN } exclude { phase: TEST } }')
    with pytest.raises(NetError, match="either include rules or exclude"):
        filter_net(p)


def test_split_naming_follows_caffe(tmp_path):
    net = net_from(INPUT + """
    layer { name: "f" type: "TestAffine" bottom: "data" top: "y" }
    layer { name: "relu" type: "TestAffine" bottom: "y" top: "y" }
    layer { name: "l1" type: "TestSumLoss" bottom: "y" top: "l1" }
    layer { name: "l2" type: "TestSumLoss" bottom: "y" top: "l2" }
    """, tmp_path)
    names = net.layer_names
    assert names[3] == "y_relu_0_split"
    assert net.bottom_names["l1"] == ["y_relu_0_split_0"]
    assert net.bottom_names["l2"] == ["y_relu_0_split_1"]
    # the in-place layer's top is the very same blob as its bottom
    li = names.index("relu")
    assert net.top_vecs[li][0] is net.bottom_vecs[li][0]


def test_split_for_a_top_used_as_loss_and_as_bottom():
    p = io.parse_net_text(INPUT + """
    layer { name: "f" type: "TestAffine" bottom: "data" top: "y" loss_weight: 2 }
    layer { name: "l" type: "TestSumLoss" bottom: "y" top: "l" }
    """)
    s = insert_splits(p)
    split = [l for l in s.layer if l.type == "Split"][0]
    assert list(split.top) == ["y_f_0_split_0", "y_f_0_split_1"]
    assert list(split.loss_weight) == [2.0, 0.0]
    assert not [l for l in s.layer if l.name == "f"][0].loss_weight
    assert list([l for l in s.layer if l.name == "l"][0].bottom) == ["y_f_0_split_1"]


def test_unknown_bottom_names_layer_and_blob(tmp_path):
    with pytest.raises(NetError, match=r"layer 'f'.*unknown bottom blob 'nope'"):
        net_from(INPUT + 'layer { name: "f" type: "TestAffine" bottom: "nope" '
                 'top: "y" }', tmp_path)


def test_duplicate_top_is_an_error(tmp_path):
    with pytest.raises(NetError, match="'y' is produced by more than one"):
        net_from(INPUT + """
        layer { name: "f" type: "TestAffine" bottom: "data" top: "y" }
        layer { name: "g" type: "TestAffine" bottom: "data" top: "y" }""",
                 tmp_path)


def test_unknown_layer_type_lists_known_types(tmp_path):
    with pytest.raises(LayerError, match=r"Unknown layer type: 'Bogus' "
                       r"\(layer 'b'\); known types: .*Input.*Split"):
        net_from(INPUT + 'layer { name: "b" type: "Bogus" bottom: "data" }',
                 tmp_path)


def test_wrong_number_of_bottoms_names_layer(tmp_path):
    with pytest.raises(LayerError, match="TestAffine layer 'f': takes 1 bottom"):
        net_from(INPUT + 'layer { name: "f" type: "TestAffine" bottom: "data" '
                 'bottom: "data" top: "y" }', tmp_path)


SHARED = INPUT + """
layer { name: "f" type: "TestAffine" bottom: "data" top: "y"
        param { name: "w" lr_mult: 3 } param { name: "b" } }
layer { name: "g" type: "TestAffine" bottom: "y" top: "z"
        param { name: "w" } param { name: "b2" decay_mult: 0 } }
layer { name: "loss" type: "TestSumLoss" bottom: "z" top: "loss" }
"""


def test_param_sharing_shares_blobs_and_accumulates(tmp_path):
    net = net_from(SHARED, tmp_path)
    f, g = net.layer_dict["f"], net.layer_dict["g"]
    assert f.blobs[0] is g.blobs[0]
    assert f.blobs[1] is not g.blobs[1]
    assert len(net.learnable_params) == 3
    assert net.params_lr == [3.0, 1.0, 1.0]
    assert net.params_weight_decay == [1.0, 1.0, 0.0]
    assert net.param_owners == [-1, -1, 0, -1]
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    net.blobs["data"].data[...] = x
    loss = net.forward_from_to()
    assert loss == pytest.approx(np.sum(2 * (2 * x)))
    net.backward_from_to()
    # d/dw of sum(w*(w*x)) = 2*w*sum(x), from both uses of the shared w
    assert f.blobs[0].diff[0] == pytest.approx(2 * 2 * x.sum())


def test_param_sharing_shape_mismatch(tmp_path):
    with pytest.raises(NetError, match=r"cannot share param 'w'.*owner shape "
                       r"\(1,\), sharing shape \(2,\)"):
        net_from(INPUT + """
        layer { name: "f" type: "TestAffine" bottom: "data" top: "y"
                param { name: "w" } }
        layer { name: "g" type: "TestAffine" bottom: "y" top: "z"
                param { name: "w" } parameter_param { shape { dim: 2 } } }""",
                 tmp_path)


def test_param_sharing_permissive_by_count(tmp_path):
    net = net_from(INPUT + """
    layer { name: "f" type: "TestAffine" bottom: "data" top: "y"
            param { name: "w" } parameter_param { shape { dim: 1 dim: 1 } } }
    layer { name: "g" type: "TestAffine" bottom: "y" top: "z"
            param { name: "w" share_mode: PERMISSIVE }
            parameter_param { shape { dim: 1 } } }""", tmp_path)
    f, g = net.layer_dict["f"], net.layer_dict["g"]
    f.blobs[0].data[...] = 7
    assert g.blobs[0].data[0] == 7 and g.blobs[0].shape == (1,)


def test_shared_param_mismatched_lr_mult(tmp_path):
    with pytest.raises(NetError, match="mismatched lr_mult"):
        net_from(INPUT + """
        layer { name: "f" type: "TestAffine" bottom: "data" top: "y"
                param { name: "w" lr_mult: 1 } }
        layer { name: "g" type: "TestAffine" bottom: "y" top: "z"
                param { name: "w" lr_mult: 2 } }""", tmp_path)


def test_backward_analysis(tmp_path):
    net = net_from(INPUT + """
    layer { name: "frozen" type: "TestAffine" bottom: "data" top: "a"
            param { lr_mult: 0 } param { lr_mult: 0 } }
    layer { name: "f" type: "TestAffine" bottom: "a" top: "b" }
    layer { name: "side" type: "TestAffine" bottom: "b" top: "c" }
    layer { name: "loss" type: "TestSumLoss" bottom: "b" top: "loss" }
    """, tmp_path)
    need = dict(zip(net.layer_names, net.layer_need_backward))
    # frozen needs nothing (no learnable params, input needs no gradient);
    # side feeds no loss.
    assert need == {"data": False, "frozen": False, "b_f_0_split": True,
                    "f": True, "side": False, "loss": True}
    assert net.bottom_need_backward[net.layer_index("f")] == [False]


def test_force_backward_and_propagate_down(tmp_path):
    text = INPUT + """
    layer { name: "f" type: "TestAffine" bottom: "data" top: "b" }
    layer { name: "loss" type: "TestSumLoss" bottom: "b" top: "loss"
            propagate_down: false }
    """
    net = net_from("force_backward: true\n" + text, tmp_path)
    assert net.bottom_need_backward[net.layer_index("f")] == [True]
    # propagate_down: false is honoured even with force_backward off
    net2 = net_from(text, tmp_path)
    assert net2.bottom_need_backward[net2.layer_index("loss")] == [False]
    assert not net2.layer_need_backward[net2.layer_index("f")]


def test_legacy_input_fields_become_an_input_layer(tmp_path):
    net = net_from('input: "data" input_dim: 1 input_dim: 2 input_dim: 3 '
                   'input_dim: 4\nlayer { name: "f" type: "TestAffine" '
                   'bottom: "data" top: "y" }', tmp_path)
    assert net.inputs == ["data"] and net.outputs == ["y"]
    assert net.blobs["data"].shape == (1, 2, 3, 4)
    assert net.layers[0].type == "Input"


def test_pycaffe_forward_backward_with_keywords(tmp_path):
    net = net_from(INPUT + 'layer { name: "f" type: "TestAffine" bottom: '
                   '"data" top: "y" }', tmp_path)
    x = np.ones((2, 3), np.float32)
    out = net.forward(data=x)
    assert list(out) == ["y"] and np.all(out["y"] == 2)
    diffs = net.backward(y=np.ones((2, 3)))
    assert np.all(diffs["data"] == 0)  # no force_backward: input needs none
    with pytest.raises(NetError, match="'bogus' is not an input"):
        net.forward(bogus=x)
    with pytest.raises(NetError, match=r"expected shape \(2, 3\), got \(4,\)"):
        net.forward(data=np.ones(4))
    with pytest.raises(NetError, match="got batch of 5"):
        net.forward(data=np.ones((5, 3)))


def test_reshape_propagates_input_shape(tmp_path):
    net = net_from(INPUT + 'layer { name: "f" type: "TestAffine" bottom: '
                   '"data" top: "y" }', tmp_path)
    net.blobs["data"].reshape(5, 3)
    net.reshape()
    assert net.blobs["y"].shape == (5, 3)


def test_save_and_copy_from_round_trip(tmp_path):
    net = net_from(SHARED, tmp_path)
    net.layer_dict["g"].blobs[1].data[...] = 0.25
    path = str(tmp_path / "w.caffemodel")
    net.save(path)
    other = net_from(SHARED, tmp_path)
    other.copy_from(path)
    assert other.layer_dict["g"].blobs[1].data[0] == 0.25
    assert other.layer_dict["g"].blobs[0] is other.layer_dict["f"].blobs[0]


def test_copy_from_shape_mismatch_names_layer_and_shapes(tmp_path):
    net = net_from(INPUT + 'layer { name: "f" type: "TestAffine" bottom: '
                   '"data" top: "y" }', tmp_path)
    src = net.to_proto()
    src.layer[1].blobs[0].shape.dim[:] = [3]
    src.layer[1].blobs[0].data[:] = [1, 2, 3]
    with pytest.raises(WeightsError, match=r"layer 'f'.*weights file has "
                       r"\(3,\), net expects \(1,\)"):
        net.copy_from(src)


def test_copy_from_accepts_legacy_4d_shapes_and_ignores_unknown_layers(tmp_path):
    net = net_from(INPUT + 'layer { name: "f" type: "TestAffine" bottom: '
                   '"data" top: "y" }', tmp_path)
    src = caffe_pb2.NetParameter()
    lp = src.layer.add(name="f")
    for v in (5.0, 6.0):
        b = lp.blobs.add(num=1, channels=1, height=1, width=1)
        b.data.append(v)
    src.layer.add(name="not_in_net").blobs.add().data.append(1)
    net.copy_from(src)
    assert net.layer_dict["f"].blobs[0].data[0] == 5.0


def test_float64_net(tmp_path):
    net = net_from(INPUT + 'layer { name: "f" type: "TestAffine" bottom: '
                   '"data" top: "y" }', tmp_path, dtype=np.float64)
    assert net.blobs["y"].data.dtype == np.float64
    assert net.layer_dict["f"].blobs[0].data.dtype == np.float64


def test_positional_pycaffe_arguments(tmp_path):
    net = net_from(SHARED, tmp_path)
    path = str(tmp_path / "w.caffemodel")
    net.save(path)
    n2 = Net(str(tmp_path / "net.prototxt"), path, protonet.TRAIN)
    assert n2.phase == protonet.TRAIN
    n3 = Net(str(tmp_path / "net.prototxt"), protonet.TEST)
    assert n3.phase == protonet.TEST


def test_forward_all_and_forward_backward_all_chunk_and_pad(tmp_path):
    net = net_from(INPUT + 'layer { name: "f" type: "TestAffine" bottom: '
                   '"data" top: "y" }\nforce_backward: true', tmp_path)
    x = np.arange(15, dtype=np.float32).reshape(5, 3)  # batch is 2: 3 chunks
    out = net.forward_all(data=x)
    assert out["y"].shape == (5, 3) and np.allclose(out["y"], 2 * x)
    outs, diffs = net.forward_backward_all(data=x, y=np.ones((5, 3)))
    assert np.allclose(outs["y"], 2 * x) and np.allclose(diffs["data"], 2.0)
    with pytest.raises(NetError, match="'z' is neither an input"):
        net.forward_all(z=x)


def test_blob_loss_weights_is_a_dict(tmp_path):
    net = net_from(SHARED, tmp_path)
    assert net.blob_loss_weights == {"data": 0.0, "y": 0.0, "z": 0.0,
                                     "loss": 1.0}


def test_lazy_diff_clear_reads_zero_and_hands_over_to_writers():
    b = protonet.Blob((3,))
    arr = b.diff
    arr[...] = 5
    b.clear_diff_lazily()
    assert (arr == 5).all()  # nothing written yet
    d, fresh = b.diff_for_write()
    assert d is arr and fresh  # the writer takes the clear over
    assert b.diff_for_write() == (arr, False)
    b.clear_diff_lazily()
    assert (b.diff == 0).all() and (arr == 0).all()  # a reader zeroes it
    assert b.diff_for_write()[1] is False
    b.clear_diff_lazily()
    b.diff = np.ones(3, np.float32)  # a new array is not pending a clear
    assert (b.diff == 1).all()
    b.clear_diff_lazily()
    b.reshape(4)  # new memory, zero-filled
    assert (b.diff == 0).all() and b.diff_for_write()[1] is False


LAZY_NET = INPUT + """
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "a"
        param { name: "w" } inner_product_param { num_output: 6
        weight_filler { type: "gaussian" } bias_filler { type: "gaussian" } } }
layer { name: "ip2" type: "InnerProduct" bottom: "a" top: "b"
        param { name: "w" share_mode: PERMISSIVE }
        inner_product_param { num_output: 3 bias_term: false } }
layer { name: "ip3" type: "InnerProduct" bottom: "b" top: "c"
        param { name: "u" } inner_product_param { num_output: 3
        weight_filler { type: "gaussian" } } }
layer { name: "ip4" type: "InnerProduct" bottom: "c" top: "d"
        param { name: "u" } inner_product_param { num_output: 3 } }
layer { name: "loss" type: "TestSumLoss" bottom: "d" top: "loss" }
"""


def test_lazy_param_diff_clear_matches_zeroing(tmp_path):
    # Reshaped (PERMISSIVE) and same-shape sharing, two backward passes
    # accumulating as with iter_size 2: the lazily cleared diffs (whose
    # memory holds garbage when the clear is called) give exactly the
    # gradients of diffs zeroed up front.
    net = net_from(LAZY_NET, tmp_path)
    assert net.layer_dict["ip2"].blobs[0] is not net.layer_dict["ip1"].blobs[0]
    assert net.layer_dict["ip3"].blobs[0] is net.layer_dict["ip4"].blobs[0]
    net.blobs["data"].data[...] = np.random.default_rng(0).standard_normal(
        (2, 3))

    def gradients(clear):
        for b in net.learnable_params:
            b.diff[...] = 1e3
        clear()
        for b in net.learnable_params:
            assert not b.diff.any()
        for b in net.learnable_params:
            b.diff[...] = 1e3
        clear()
        for _ in range(2):
            net.forward_from_to()
            net.backward_from_to()
        return [b.diff.copy() for b in net.learnable_params]

    def zero_all():
        for b in net.learnable_params:
            b.diff[...] = 0
    lazy = gradients(lambda: net.clear_param_diffs(lazy=True))
    eager = gradients(zero_all)
    assert len(lazy) == 5
    for g, ref in zip(lazy, eager):
        assert ref.any()
        np.testing.assert_array_equal(g, ref)


def test_lazy_clear_only_where_safe(tmp_path):
    net = net_from(LAZY_NET, tmp_path)
    w = net.layer_dict["ip1"].blobs[0]  # viewed by ip2's reshaped sharer
    u = net.layer_dict["ip3"].blobs[0]  # shared whole by ip4
    held_w, held_u = w.diff, u.diff
    held_w[...], held_u[...] = 7, 7
    net.clear_param_diffs(lazy=True)
    assert not held_w.any() and (held_u == 7).all()
    assert not u.diff.any() and not held_u.any()
    held_u[...] = 7
    net.clear_param_diffs()  # pycaffe's call: every array zeroed in place
    assert not held_u.any()
    held_u[...] = 7
    net.after_backward(lambda layer: None)
    net.clear_param_diffs(lazy=True)  # a hook might read held arrays
    assert not held_u.any()
