"""NetSpec: pycaffe's way of writing nets in Python."""

import pytest

from protonet import io
from protonet.errors import ProtonetError
from protonet.netspec import NetSpec, layers as L, params as P, to_proto


def lenet_spec():
    n = NetSpec()
    n.data, n.label = L.Input(shape=[dict(dim=[2, 1, 28, 28]), dict(dim=[2])],
                              ntop=2)
    n.conv1 = L.Convolution(n.data, num_output=20, kernel_size=5,
                            weight_filler=dict(type="xavier"),
                            param=[dict(lr_mult=1), dict(lr_mult=2)])
    n.pool1 = L.Pooling(n.conv1, pool=P.Pooling.MAX, kernel_size=2, stride=2)
    n.relu1 = L.ReLU(n.pool1, in_place=True)
    n.loss = L.SoftmaxWithLoss(n.relu1, n.label, loss_weight=1)
    return n


def test_netspec_writes_names_params_and_in_place():
    net = lenet_spec().to_proto()
    assert [l.name for l in net.layer] == ["data", "conv1", "pool1", "relu1", "loss"]
    assert list(net.layer[0].top) == ["data", "label"]
    conv = net.layer[1]
    assert conv.convolution_param.num_output == 20
    assert list(conv.convolution_param.kernel_size) == [5]
    assert conv.convolution_param.weight_filler.type == "xavier"
    assert [p.lr_mult for p in conv.param] == [1, 2]
    assert net.layer[2].pooling_param.pool == P.Pooling.MAX
    assert list(net.layer[3].top) == ["pool1"]
    assert list(net.layer[4].bottom) == ["pool1", "label"]
    assert list(net.layer[4].loss_weight) == [1]


def test_netspec_round_trips_through_text():
    net = lenet_spec().to_proto()
    again = io.parse_net_text(io.format_text(net))
    assert again == net


def test_unnamed_tops_get_type_numbered_names():
    data = L.Input(shape=dict(dim=[1, 3]))
    net = to_proto(L.InnerProduct(L.InnerProduct(data, num_output=4),
                                  num_output=2))
    assert [l.name for l in net.layer] == ["Input1", "InnerProduct1",
                                           "InnerProduct2"]


def test_unknown_parameter_names_layer_and_field():
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 3]))
    n.ip = L.InnerProduct(n.data, num_outputs=3)
    with pytest.raises(ProtonetError, match="InnerProduct layer 'ip': "
                       "InnerProductParameter has no field 'num_outputs'"):
        n.to_proto()


def test_bottom_must_be_a_top():
    with pytest.raises(ProtonetError, match="ReLU input 0 is not a Top"):
        L.ReLU("data")
