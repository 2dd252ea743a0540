"""A net nobody refers to is freed at once (reference counting), not at the
next full garbage collection: Python starts one by counting objects, not
bytes, so a net caught in a reference cycle keeps its blobs (gigabytes for
a big net) while a long run builds the next ones."""

import gc
import weakref

import numpy as np

import protonet
from protonet.netspec import NetSpec, layers as L


def _net_text():
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[4, 3, 16, 16]))
    n.conv = L.Convolution(n.data, num_output=8, kernel_size=3,
                           weight_filler=dict(type="gaussian", std=0.1))
    n.relu = L.ReLU(n.conv, in_place=True)
    n.pool = L.Pooling(n.relu, kernel_size=2, stride=2)
    n.ip = L.InnerProduct(n.pool, num_output=5,
                          weight_filler=dict(type="gaussian", std=0.1))
    return str(n.to_proto())


def test_a_dropped_net_is_freed_without_the_garbage_collector(tmp_path):
    path = tmp_path / "net.prototxt"
    path.write_text("force_backward: true\n" + _net_text())
    enabled = gc.isenabled()
    gc.disable()
    try:
        net = protonet.Net(str(path), protonet.TEST)
        net.blobs["data"].data[...] = np.random.default_rng(0).standard_normal(
            net.blobs["data"].shape)
        net.forward()
        net.blobs["ip"].diff[...] = 1
        net.backward()
        alive = weakref.ref(net)
        del net
        assert alive() is None, "the net is only freed by a garbage collection"
    finally:
        if enabled:
            gc.enable()
