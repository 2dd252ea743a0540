"""protonet.coord_map: coordinate maps and FCN-style Crop layers."""

import numpy as np
import pytest

import protonet
from protonet.coord_map import coord_map_from_to, crop
from protonet.errors import ProtonetError
from protonet.netspec import NetSpec, layers as L, params as P


def fcn_like():
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 3, 20, 20]))
    n.conv1 = L.Convolution(n.data, num_output=4, kernel_size=3, pad=100)
    n.relu1 = L.ReLU(n.conv1, in_place=True)
    n.pool1 = L.Pooling(n.relu1, pool=P.Pooling.MAX, kernel_size=2, stride=2)
    n.score = L.Convolution(n.pool1, num_output=2, kernel_size=1)
    n.up = L.Deconvolution(n.score, convolution_param=dict(
        num_output=2, kernel_size=4, stride=2, bias_term=False))
    return n


def test_maps_compose_through_conv_pool_deconv():
    n = fcn_like()
    ax, a, b = coord_map_from_to(n.conv1, n.data)
    assert ax == 1 and a == 1 and b == -99        # pad 100, kernel 3
    ax, a, b = coord_map_from_to(n.pool1, n.data)
    assert a == 2                                  # pooled: coarser
    ax, a, b = coord_map_from_to(n.up, n.data)
    # deconv (2, 1.5) . 1x1 conv . pool (1/2, -0.25) . conv1 (1, 99)
    assert ax == 1 and a == 1 and b == -100


def test_crop_aligns_upsampled_scores_with_the_input():
    n = fcn_like()
    n.crop = crop(n.up, n.data)
    layer = n.to_proto().layer[-1]
    assert layer.type == "Crop" and list(layer.bottom) == ["up", "data"]
    ax, a, b = coord_map_from_to(n.up, n.data)
    assert layer.crop_param.axis == 2
    assert list(layer.crop_param.offset) == [100]
    net = protonet.Net(n.to_proto())
    assert net.blobs["crop"].shape == (1, 2, 20, 20)
    net.forward(data=np.zeros((1, 3, 20, 20), np.float32))


def test_crop_errors():
    n = fcn_like()
    with pytest.raises(ProtonetError, match="scale mismatch"):
        crop(n.pool1, n.data)
    m = NetSpec()
    m.a = L.Input(shape=dict(dim=[1, 1, 4, 4]))
    m.b = L.Input(shape=dict(dim=[1, 1, 4, 4]))
    with pytest.raises(ProtonetError, match="connected by spatial layers"):
        coord_map_from_to(m.a, m.b)
