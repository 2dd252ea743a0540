"""Net(memory="inference"): activations released after their last use.

Outputs must be identical to the normal mode (within float32 rounding
where a 3x3 layer runs Winograd F(2x2) instead of F(4x4)) and the peak
memory of a forward (tracemalloc; NumPy reports its buffers to it) must be
lower.
"""

import tracemalloc

import numpy as np
import pytest

from protonet import Net
from protonet.errors import NetError, ProtonetError

# A mid-size net: convolutions with padding (scratch buffers), pooling with a
# padded buffer, an in-place ReLU, a split (two consumers), concat, LRN, IP.
NET = """
name: "mid"
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 4 dim: 3 dim: 48 dim: 48 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 32 kernel_size: 3 pad: 1
          weight_filler { type: "gaussian" std: 0.1 }
          bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "a" type: "Convolution" bottom: "pool1" top: "a"
        convolution_param { num_output: 16 kernel_size: 1
          weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "b" type: "Convolution" bottom: "pool1" top: "b"
        convolution_param { num_output: 16 kernel_size: 5 pad: 2
          weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "cat" type: "Concat" bottom: "a" bottom: "b" top: "cat" }
layer { name: "norm" type: "LRN" bottom: "cat" top: "norm" }
layer { name: "pool2" type: "Pooling" bottom: "norm" top: "pool2"
        pooling_param { pool: AVE kernel_size: 2 stride: 2 } }
layer { name: "fc" type: "InnerProduct" bottom: "pool2" top: "fc"
        inner_product_param { num_output: 10
          weight_filler { type: "gaussian" std: 0.01 } } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""


@pytest.fixture
def model(tmp_path):
    path = tmp_path / "mid.prototxt"
    path.write_text(NET)
    ref = Net(str(path))
    weights = tmp_path / "mid.caffemodel"
    ref.save(str(weights))
    x = np.random.default_rng(0).standard_normal((4, 3, 48, 48)) \
        .astype(np.float32)
    return str(path), str(weights), x


def _peak_forward(path, weights, x, memory):
    tracemalloc.start()
    try:
        net = Net(path, weights=weights, memory=memory)
        net.blobs["data"].data[...] = x
        tracemalloc.reset_peak()
        start = tracemalloc.get_traced_memory()[0]
        out = net.forward()["prob"].copy()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return net, out, peak - start, start


def test_outputs_identical_and_peak_lower(model):
    path, weights, x = model
    # Warm up first: the per-thread column buffers (_scratch in
    # protonet/layers/conv_products.py) outlive nets, and whichever measured
    # forward first allocated them would carry them (the suite's order
    # decided the outcome).
    _peak_forward(path, weights, x, None)
    _, ref, ref_peak, ref_loaded = _peak_forward(path, weights, x, None)
    net, out, peak, loaded = _peak_forward(path, weights, x, "inference")
    np.testing.assert_array_equal(out, ref)
    # Memory held after loading and during the forward, both lower (warm,
    # measured: 0.43 + 4.4 MB against 2.97 + 3.55 MB, 0.74).
    assert loaded < 0.2 * ref_loaded
    assert loaded + peak < 0.8 * (ref_loaded + ref_peak)
    # A second forward (buffers re-created) gives the same answer.
    np.testing.assert_array_equal(net.forward(data=x)["prob"], ref)


def test_released_blobs_and_kept_blobs(model):
    path, weights, x = model
    net = Net(path, weights=weights, memory="inference")
    out = net.forward(blobs=["pool1"], data=x)
    ref = Net(path, weights=weights)
    ref_out = ref.forward(blobs=["pool1"], data=x)
    np.testing.assert_array_equal(out["pool1"], ref_out["pool1"])
    # The input stays writable; an intermediate blob keeps its shape but
    # holds no memory.
    assert net.blobs["data"].data.flags.writeable
    conv1 = net.blobs["conv1"].data
    assert conv1.shape == (4, 32, 48, 48) and conv1.strides == (0,) * 4
    # The plan drops conv1 after pool1, its last reader.
    plan = net.release_plan()
    names = {net.layer_names[i]: [net.blob_names[b] for b in bids]
             for i, bids in plan.items()}
    assert "conv1" in names["pool1"]
    assert all("prob" not in v and "data" not in v for v in names.values())


def test_backward_refused_after_release_then_allowed(model):
    path, weights, x = model
    net = Net(path, weights=weights, memory="inference", phase=0)
    net.forward(data=x)
    with pytest.raises(NetError, match="released"):
        net.backward_from_to()
    net.forward_from_to(release=False)
    net.backward_from_to()  # every activation is back


def test_opt_in_release_on_a_normal_net(model):
    path, weights, x = model
    net = Net(path, weights=weights)
    ref = net.forward(data=x)["prob"].copy()
    net.forward_from_to(release=True)
    np.testing.assert_array_equal(net.blobs["prob"].data, ref)
    assert net.blobs["conv1"].data.strides == (0,) * 4


def test_bad_memory_mode(model):
    with pytest.raises(ProtonetError, match="inference"):
        Net(model[0], memory="low")


WINO_NET = """
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 1 dim: 64 dim: 15 dim: 15 } } }
layer { name: "c" type: "Convolution" bottom: "data" top: "c"
        convolution_param { num_output: 64 kernel_size: 3 pad: 1
          weight_filler { type: "gaussian" std: 0.05 } } }
"""


def test_winograd_layers_keep_smaller_transformed_weights(tmp_path):
    """memory="inference" runs a 3x3 layer whose F(4x4) transformed weights
    (36/9 of the kernel's) would outgrow Caffe's column buffer for it as
    F(2x2) (16/9), same answer; with a larger batch, F(4x4) again."""
    path = tmp_path / "w.prototxt"
    path.write_text(WINO_NET)
    weights = tmp_path / "w.caffemodel"
    Net(str(path)).save(str(weights))
    x = np.random.default_rng(1).standard_normal((1, 64, 15, 15)) \
        .astype(np.float32)
    outs, sizes = [], []
    for memory in (None, "inference"):
        net = Net(str(path), weights=str(weights), memory=memory)
        outs.append(net.forward(data=x)["c"].copy())
        layer = net.layers[1]
        assert layer._use_wino
        sizes.append(layer._wino.transformed_weights(
            layer.blobs[0].data).size / layer.blobs[0].count)
    assert sizes == [4.0, 16 / 9]
    np.testing.assert_allclose(outs[1], outs[0], rtol=1e-5,
                               atol=1e-5 * np.abs(outs[0]).max())
    # 64*64*9 weights: F(4x4) needs 4x that, 147456 floats; the column
    # buffer of one 15x15 image holds 64*9*225 = 129600 (F(2x2)), of two
    # 259200: F(4x4) fits.
    assert net.layers[1]._wino.m == 2
    net.blobs["data"].reshape((2, 64, 15, 15))
    net.forward(data=np.concatenate([x] * 2))
    assert net.layers[1]._wino.m == 4
