"""protonet.upgrade: legacy V0/V1 nets and caffemodels, solvers, fork
spellings (mirrors src/caffe/util/upgrade_proto.cpp)."""

import numpy as np
import pytest

from protonet import io
from protonet.errors import UpgradeError
from protonet.proto import caffe_pb2
from protonet.upgrade import (UpgradeWarning, upgrade_caffemodel, upgrade_net,
                              upgrade_net_file, upgrade_solver_file)

V0_NET = '''
name: "v0"
input: "data"
input_dim: 1 input_dim: 3 input_dim: 8 input_dim: 8
layers { layer { name: "pad1" type: "padding" pad: 2 }
         bottom: "data" top: "pad1" }
layers { layer { name: "conv1" type: "conv" num_output: 4 kernelsize: 3
                 stride: 2 group: 1 biasterm: false blobs_lr: 1 blobs_lr: 2
                 weight_decay: 1 weight_decay: 0
                 weight_filler { type: "gaussian" std: 0.01 } }
         bottom: "pad1" top: "conv1" }
layers { layer { name: "pool1" type: "pool" pool: AVE kernelsize: 2 stride: 2 }
         bottom: "conv1" top: "pool1" }
layers { layer { name: "norm1" type: "lrn" local_size: 3 alpha: 0.1 beta: 0.5 }
         bottom: "pool1" top: "norm1" }
layers { layer { name: "fc" type: "innerproduct" num_output: 2 }
         bottom: "norm1" top: "fc" }
'''


def test_v0_net_upgrade():
    net = io.parse_net_text(V0_NET, "v0.prototxt")
    assert not net.layers and not net.input
    assert [l.type for l in net.layer] == [
        "Input", "Convolution", "Pooling", "LRN", "InnerProduct"]
    conv = net.layer[1]
    assert list(conv.bottom) == ["data"]  # the padding layer is folded away
    cp = conv.convolution_param
    assert (list(cp.pad), list(cp.kernel_size), list(cp.stride)) == \
        ([2], [3], [2])
    assert cp.num_output == 4 and not cp.bias_term
    assert cp.weight_filler.std == pytest.approx(0.01)
    assert [(p.lr_mult, p.decay_mult) for p in conv.param] == [(1, 1), (2, 0)]
    pool = net.layer[2].pooling_param
    assert (pool.pool, pool.kernel_size, pool.stride) == (pool.AVE, 2, 2)
    assert net.layer[3].lrn_param.local_size == 3
    assert list(net.layer[0].input_param.shape[0].dim) == [1, 3, 8, 8]


def test_v0_field_for_wrong_type_is_dropped_with_warning():
    text = ('layers { layer { name: "r" type: "relu" num_output: 3 } '
            'bottom: "x" top: "x" }')
    with pytest.warns(UpgradeWarning, match="num_output.*'relu'"):
        net = io.parse_net_text('input: "x" input_dim: 1 input_dim: 1 '
                                'input_dim: 1 input_dim: 1 ' + text)
    assert net.layer[1].type == "ReLU"


@pytest.mark.parametrize("text,words", [
    ('layers { layer { name: "q" type: "quux" } bottom: "x" top: "y" }',
     "unknown V0 layer type 'quux'"),
    ('layers { layer { name: "p" type: "padding" pad: 1 } bottom: "x" top: "p" }'
     ' layers { layer { name: "r" type: "relu" } bottom: "p" top: "r" }',
     "padding layer 'p' feeds a 'relu' layer"),
    ('layers { layer { name: "r" type: "relu" } bottom: "nope" top: "r" }',
     "unknown bottom blob 'nope'"),
])
def test_v0_errors_name_file_and_layer(text, words):
    with pytest.raises(UpgradeError, match=words) as err:
        io.parse_net_text('input: "x" input_dim: 1 input_dim: 1 input_dim: 1 '
                          'input_dim: 1 ' + text, "old.prototxt")
    assert "old.prototxt: layer '" in str(err.value)


V1_NET = '''
name: "v1"
layers { name: "data" type: DATA top: "data" top: "label"
         data_param { source: "db" batch_size: 4 scale: 0.5 mean_file: "m"
                      crop_size: 7 mirror: true }
         include { phase: TRAIN } }
layers { name: "ip" type: INNER_PRODUCT bottom: "data" top: "ip"
         blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0
         param: "w" param: "b" blob_share_mode: PERMISSIVE
         inner_product_param { num_output: 3 } }
layers { name: "loss" type: SOFTMAX_LOSS bottom: "ip" bottom: "label"
         top: "loss" loss_weight: 2 }
'''


def test_v1_net_upgrade():
    net = io.parse_net_text(V1_NET)
    data, ip, loss = net.layer
    assert (data.type, ip.type, loss.type) == ("Data", "InnerProduct",
                                              "SoftmaxWithLoss")
    assert data.include[0].phase == caffe_pb2.TRAIN
    t = data.transform_param
    assert (t.scale, t.mean_file, t.crop_size, t.mirror) == (0.5, "m", 7, True)
    assert not data.data_param.HasField("scale")
    assert data.data_param.batch_size == 4
    w, b = ip.param
    assert (w.name, w.lr_mult, w.decay_mult, w.share_mode) == \
        ("w", 1, 1, w.PERMISSIVE)
    assert (b.name, b.lr_mult, b.decay_mult) == ("b", 2, 0)
    assert ip.inner_product_param.num_output == 3
    assert list(loss.loss_weight) == [2]


def test_both_layer_and_layers_is_an_error():
    with pytest.raises(UpgradeError, match="both 'layer'"):
        io.parse_net_text('layer { name: "a" type: "ReLU" } '
                          'layers { name: "b" type: RELU }')


def test_v1_caffemodel_upgrade(tmp_path):
    old = caffe_pb2.NetParameter(name="old")
    v1 = old.layers.add(name="conv", type=caffe_pb2.V1LayerParameter.CONVOLUTION)
    w = np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2)
    io.array_to_blob(w, v1.blobs.add(), legacy_shape=True)
    io.array_to_blob(np.ones(2, np.float32), v1.blobs.add(), legacy_shape=True)
    v1.blobs_lr.extend([1, 2])
    src, dst = tmp_path / "v1.caffemodel", tmp_path / "v2.caffemodel"
    src.write_bytes(old.SerializeToString())
    upgrade_caffemodel(str(src), str(dst))
    raw = caffe_pb2.NetParameter.FromString(dst.read_bytes())
    assert not raw.layers and raw.layer[0].type == "Convolution"
    np.testing.assert_array_equal(io.blob_to_array(raw.layer[0].blobs[0]), w)
    assert [p.lr_mult for p in raw.layer[0].param] == [1, 2]


def test_upgrade_net_and_solver_files(tmp_path):
    src = tmp_path / "old.prototxt"
    src.write_text(V1_NET)
    out = tmp_path / "new.prototxt"
    upgrade_net_file(str(src), str(out))
    text = out.read_text()
    assert "layers {" not in text and 'type: "InnerProduct"' in text
    assert io.read_net(out, upgrade=False).layer[1].param[0].name == "w"

    solver = tmp_path / "solver.prototxt"
    solver.write_text('base_lr: 0.1 solver_type: ADAM net_param { ' + V1_NET +
                      ' }')
    out = tmp_path / "solver2.prototxt"
    upgrade_solver_file(str(solver), str(out))
    s = io.read_solver(out, upgrade=False)
    assert s.type == "Adam" and not s.HasField("solver_type")
    assert not s.net_param.layers and len(s.net_param.layer) == 3


def test_solver_type_conflict():
    with pytest.raises(UpgradeError, match="disagree"):
        io.parse_solver_text('solver_type: ADAM type: "SGD"')


def _layer(text):
    return io.parse_net_text("layer { " + text + " }").layer[0]


def test_fork_mappings():
    p = _layer('name: "p" type: "Pooling" pooling_param { ceil_mode: false '
               'bin_size: 1 pool: AVE }').pooling_param
    assert p.round_mode == p.FLOOR and p.global_pooling
    assert not p.HasField("ceil_mode") and not p.HasField("bin_size")
    c = _layer('name: "c" type: "Convolution" convolution_param { '
               'filter_stride: 4 }').convolution_param
    assert list(c.dilation) == [4] and not c.HasField("filter_stride")
    n = _layer('name: "n" type: "Normalize" norm_param { fix_scale: true }')
    assert (n.param[0].lr_mult, n.param[0].decay_mult) == (0, 0)
    u = _layer('name: "u" type: "Upsample" upsample_param { scale_h: 2 '
               'scale_w: 2 }').upsample_param
    assert u.scale == 2 and not u.HasField("scale_h")
    on = _layer('name: "l" type: "SoftmaxWithLoss" loss_param { '
                'weight_by_label_freqs: true class_weighting: 0.5 '
                'class_weighting: 2 }').loss_param
    assert list(on.class_weighting) == [0.5, 2]
    assert not on.HasField("weight_by_label_freqs")
    off = _layer('name: "l" type: "SoftmaxWithLoss" loss_param { '
                 'weight_by_label_freqs: false class_weighting: 3 }').loss_param
    assert not off.class_weighting


@pytest.mark.parametrize("text,words", [
    ('pooling_param { bin_size: 2 }', "bin_size 2"),
    ('convolution_param { filter_stride: 2 dilation: 2 }',
     "both filter_stride and dilation"),
    ('upsample_param { scale_h: 2 scale_w: 3 }', "scale_h 2 != scale_w 3"),
    ('loss_param { weight_by_label_freqs: true }', "no class_weighting"),
])
def test_fork_mapping_errors(text, words):
    with pytest.raises(UpgradeError, match=words) as err:
        io.parse_net_text('layer { name: "bad" type: "X" ' + text + ' }',
                          "f.prototxt")
    assert "f.prototxt: layer 'bad'" in str(err.value)


def test_upgrade_is_idempotent():
    net = io.parse_net_text(V0_NET)
    before = net.SerializeToString()
    assert upgrade_net(net) is False
    assert net.SerializeToString() == before
