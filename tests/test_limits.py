"""protonet.limits: nets and blobs that would need too much memory are refused
before the memory is taken, with the figure and the dominating layer."""

import numpy as np
import pytest

import protonet
from protonet import io, limits
from protonet.blob import Blob
from protonet.errors import ResourceError
from protonet.proto import caffe_pb2

MEDIUM = """name: "medium"
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 64 dim: 1024 } } }
layer { name: "big" type: "InnerProduct" bottom: "data" top: "big"
        inner_product_param { num_output: 4096 } }
layer { name: "small" type: "InnerProduct" bottom: "big" top: "small"
        inner_product_param { num_output: 16 } }
"""


def _net(text, **kw):
    return protonet.Net(io.parse_net_text(text), phase=protonet.TEST, **kw)


@pytest.mark.parametrize("text,expected", [
    ("8G", 8 * 2 ** 30), ("512M", 512 * 2 ** 20), ("1.5T", int(1.5 * 2 ** 40)),
    ("123", 123), ("4GiB", 4 * 2 ** 30), ("2gb", 2 * 2 ** 30), ("0", None),
    ("none", None), (1000, 1000),
])
def test_parse_size(text, expected):
    assert limits.parse_size(text) == expected


@pytest.mark.parametrize("bad", ["eight gigs", "8X", "-1G", "", float("nan")])
def test_parse_size_rejects_nonsense(bad):
    with pytest.raises(ResourceError, match="memory limit"):
        limits.parse_size(bad)


def test_default_limit_is_a_fraction_of_physical_memory(monkeypatch):
    monkeypatch.delenv(limits.ENV_VAR, raising=False)
    phys = limits.physical_memory()
    assert phys > 2 ** 28
    assert limits.max_memory() == int(phys * limits.DEFAULT_FRACTION)


def test_env_var_sets_the_limit(monkeypatch):
    # No single blob passes 17 MiB, but the net's sum (~17.3 MiB) does.
    monkeypatch.setenv(limits.ENV_VAR, "17M")
    with pytest.raises(ResourceError) as info:
        _net(MEDIUM)
    msg = str(info.value)
    # 16 MiB of IP weights dominate; the message gives figure, limit, layer.
    assert "net 'medium'" in msg and "17.0 MiB" in msg and "17.3 MiB" in msg
    assert "largest is layer 'big'" in msg and "PROTONET_MAX_MEMORY" in msg


def test_env_var_off_and_keyword_override(monkeypatch):
    monkeypatch.setenv(limits.ENV_VAR, "10M")
    net = _net(MEDIUM, max_memory="1G")       # the keyword wins
    assert net.blobs["big"].shape == (64, 4096)
    monkeypatch.setenv(limits.ENV_VAR, "none")
    _net(MEDIUM)
    with pytest.raises(ResourceError, match="largest is layer 'big'"):
        _net(MEDIUM, max_memory=17 * 2 ** 20)
    with pytest.raises(ResourceError, match=r"layer 'big': a blob of shape "
                       r"\(4096, 1024\) needs 16.0 MiB"):
        _net(MEDIUM, max_memory=4 * 2 ** 20)


def test_bad_env_var_is_a_resource_error(monkeypatch):
    monkeypatch.setenv(limits.ENV_VAR, "lots")
    with pytest.raises(ResourceError, match="PROTONET_MAX_MEMORY"):
        _net(MEDIUM)


def test_single_huge_blob_refused_before_allocation(monkeypatch):
    monkeypatch.setenv(limits.ENV_VAR, "1G")
    with pytest.raises(ResourceError, match=r"shape \(1000000, 1000000\)"):
        Blob((10 ** 6, 10 ** 6))
    b = Blob((2, 3))
    with pytest.raises(ResourceError, match="1G|1.0 GiB"):
        b.reshape(10 ** 5, 10 ** 5)
    assert b.shape == (2, 3)                  # unchanged after the refusal


def test_shape_product_does_not_wrap_around():
    b = Blob((1,))
    with pytest.raises(ResourceError):
        b.reshape(2 ** 32, 2 ** 32, 2 ** 32)   # wraps to 0 in int64


def test_input_reshaped_at_run_time_is_refused(monkeypatch):
    net = _net(MEDIUM)
    monkeypatch.setenv(limits.ENV_VAR, "1G")
    with pytest.raises(ResourceError, match="memory limit"):
        net.blobs["data"].reshape(10 ** 6, 1024)
        net.reshape()


@pytest.mark.parametrize("layer", [
    'layer { name: "t" type: "Tile" bottom: "data" top: "t" '
    'tile_param { axis: 0 tiles: 100000000 } }',
    'layer { name: "t" type: "Reshape" bottom: "data" top: "t" '
    'reshape_param { shape { dim: 0 dim: 0 } } } '
    'layer { name: "d" type: "DummyData" top: "d" dummy_data_param '
    '{ shape { dim: 100000 dim: 100000 } } }',
])
def test_huge_layer_outputs_refused(layer):
    with pytest.raises(ResourceError, match="layer '[td]'"):
        _net(MEDIUM + layer)


def test_caffemodel_blob_claiming_huge_shape(tmp_path):
    """The declared shape is checked against the stored values first."""
    net = caffe_pb2.NetParameter()
    lp = net.layer.add(name="big", type="InnerProduct")
    blob = lp.blobs.add()
    blob.shape.dim.extend([2 ** 40, 2 ** 40])
    blob.data.extend([1.0, 2.0])
    with pytest.raises(protonet.ProtonetError, match="declares shape"):
        io.blob_to_array(blob, "x", "layer 'big' param 0")
    assert io.blob_diff_to_array(blob) is None


def test_float64_counts_double():
    n32 = _net(MEDIUM, max_memory="64M")
    with pytest.raises(ResourceError):
        protonet.Net(io.parse_net_text(MEDIUM), phase=protonet.TEST,
                     dtype=np.float64, max_memory="24M")
    assert n32.params["big"][0].data.dtype == np.float32
