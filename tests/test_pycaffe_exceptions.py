"""pycaffe's exception contract: the exception types (and, where pycaffe's
own tests match them, the messages) scripts written for pycaffe rely on."""

import numpy as np
import pytest

import protonet as caffe
from protonet import layers as L, params as P
from protonet.coord_map import coord_map_from_to, crop


def conv_pool_deconv(pool=2, dstride=2, dpad=0):
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[2, 1, 40, 40]))
    n.conv = L.Convolution(n.data, num_output=3, kernel_size=3)
    n.pool = L.Pooling(n.conv, pool=P.Pooling.MAX, kernel_size=pool,
                       stride=pool)
    n.deconv = L.Deconvolution(n.pool, num_output=3, kernel_size=2 * dstride,
                               stride=dstride, pad=dpad)
    return n


def test_crop_of_an_already_cropped_top_composes():
    n = conv_pool_deconv(pool=4, dstride=4)
    ax, a, b = coord_map_from_to(n.deconv, n.data)
    for offset in (0, 3):
        n.crop = L.Crop(n.deconv, n.data, axis=2, offset=offset)
        assert coord_map_from_to(n.crop, n.data) == (ax, a, b + offset)
    # The same through crop_param=..., and a crop written by crop().
    n.crop = L.Crop(n.deconv, n.data, crop_param=dict(axis=2, offset=[2]))
    assert coord_map_from_to(n.crop, n.data) == (ax, a, b + 2)
    n.aligned = crop(n.deconv, n.data)
    assert coord_map_from_to(n.aligned, n.data) == (ax, 1, 0)


def test_crop_writes_a_net_whose_crop_lines_up(tmp_path):
    n = conv_pool_deconv(pool=4, dstride=4)
    n.aligned = crop(n.deconv, n.data)
    layer = n.to_proto().layer[-1]
    assert (layer.crop_param.axis, list(layer.crop_param.offset)) == (2, [1])
    net = caffe.Net(n.to_proto(), caffe.TEST)
    assert net.blobs["aligned"].data.shape == (2, 3, 40, 40)


def test_negative_crop_and_scale_mismatch_are_assertion_errors():
    n = conv_pool_deconv(dpad=10)             # the deconv output is smaller
    with pytest.raises(AssertionError, match="cannot crop negative offset"):
        crop(n.deconv, n.data)
    n = conv_pool_deconv(pool=3, dstride=2)   # 3x down, 2x up
    with pytest.raises(AssertionError, match=r"scale mismatch on crop \(a = "):
        crop(n.deconv, n.data)
    with pytest.raises(caffe.ProtonetError):  # protonet's root class too
        crop(n.deconv, n.data)


def test_legacy_h_w_fields_are_an_assertion_error():
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 1, 8, 8]))
    n.conv = L.Convolution(n.data, num_output=1, kernel_h=3, kernel_w=3)
    with pytest.raises(AssertionError, match="legacy _h/_w"):
        coord_map_from_to(n.conv, n.data)


def test_unconnected_tops_are_a_runtime_error():
    n = conv_pool_deconv()
    n.ip = L.InnerProduct(n.deconv, num_output=2)
    with pytest.raises(RuntimeError, match="connected by spatial layers"):
        coord_map_from_to(n.ip, n.data)


def test_netspec_tuple_bottom_is_pycaffes_type_error():
    data = L.DummyData(ntop=2)
    with pytest.raises(TypeError) as info:
        L.Silence(data, ntop=0)
    assert str(info.value) == ("Silence input 0 is not a Top "
                               "(type is <class 'tuple'>)")
    with pytest.raises(TypeError, match=r"^ReLU input 1 is not a Top "
                       r"\(type is <class 'str'>\)$"):
        L.ReLU(data[0], "data")
    n = caffe.NetSpec()
    n.silence = L.Silence(*data, ntop=0)       # each element is a Top
    assert [layer.type for layer in n.to_proto().layer] == ["DummyData",
                                                            "Silence"]


def test_netspec_keys_vals_update_and_delete():
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 2]))
    n["ip"] = L.InnerProduct(n.data, num_output=3)
    assert n.keys() == ["data", "ip"] and n.vals() == [n.data, n.ip]
    n.update("ip", dict(num_output=5, bias_term=False))
    param = n.to_proto().layer[1].inner_product_param
    assert (param.num_output, param.bias_term) == (5, False)
    del n["ip"]
    assert n.keys() == ["data"]
    assert np.all(n.data.fn.params["shape"]["dim"] == [1, 2])
