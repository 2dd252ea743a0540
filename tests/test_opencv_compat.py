"""Caffemodels written by protonet load in OpenCV's dnn module and agree.

OpenCV's Caffe importer (``cv2.dnn.readNetFromCaffe``) is an independent
reader of the .prototxt/.caffemodel formats: a net saved by protonet must
load there and give the same outputs (rtol 1e-4).  Skipped only when cv2
(opencv-python-headless < 5, in the [test] extra) is not importable.
"""

import numpy as np
import pytest

from protonet import Net

cv2 = pytest.importorskip("cv2")

LENET = """
name: "lenet_like"
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 2 dim: 1 dim: 28 dim: 28 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 20 kernel_size: 5
          weight_filler { type: "xavier" } bias_filler { type: "gaussian" std: 0.1 } } }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
        convolution_param { num_output: 50 kernel_size: 5
          weight_filler { type: "xavier" } bias_filler { type: "gaussian" std: 0.1 } } }
layer { name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "ip1" type: "InnerProduct" bottom: "pool2" top: "ip1"
        inner_product_param { num_output: 100
          weight_filler { type: "xavier" } bias_filler { type: "gaussian" std: 0.1 } } }
layer { name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
        inner_product_param { num_output: 10
          weight_filler { type: "xavier" } bias_filler { type: "gaussian" std: 0.1 } } }
layer { name: "prob" type: "Softmax" bottom: "ip2" top: "prob" }
"""

# CaffeNet's first stages in miniature: strided padded conv, ceil-mode
# pooling with a clipped last window, LRN across and within channels,
# grouped convolution, AVE pooling, dropout (identity at test), IP, softmax.
CONV_POOL_LRN = """
name: "conv_pool_lrn"
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 2 dim: 3 dim: 35 dim: 35 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 16 kernel_size: 5 stride: 2 pad: 1
          weight_filler { type: "gaussian" std: 0.1 }
          bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "norm1" type: "LRN" bottom: "pool1" top: "norm1"
        lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 } }
layer { name: "conv2" type: "Convolution" bottom: "norm1" top: "conv2"
        convolution_param { num_output: 24 kernel_size: 3 pad: 1 group: 2
          weight_filler { type: "gaussian" std: 0.1 }
          bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }
layer { name: "norm2" type: "LRN" bottom: "conv2" top: "norm2"
        lrn_param { local_size: 3 alpha: 0.001 beta: 0.75
                    norm_region: WITHIN_CHANNEL } }
layer { name: "pool2" type: "Pooling" bottom: "norm2" top: "pool2"
        pooling_param { pool: AVE kernel_size: 3 stride: 2 } }
layer { name: "fc" type: "InnerProduct" bottom: "pool2" top: "fc"
        inner_product_param { num_output: 32
          weight_filler { type: "gaussian" std: 0.05 }
          bias_filler { type: "constant" value: 0.05 } } }
layer { name: "drop" type: "Dropout" bottom: "fc" top: "fc" }
layer { name: "out" type: "InnerProduct" bottom: "fc" top: "out"
        inner_product_param { num_output: 10
          weight_filler { type: "gaussian" std: 0.05 } } }
layer { name: "prob" type: "Softmax" bottom: "out" top: "prob" }
"""

# ResNet's building block: conv (no bias) -> BatchNorm (global stats) ->
# Scale (bias) -> ReLU, a second branch, an Eltwise sum, global AVE pooling.
BN_SCALE = """
name: "bn_scale"
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 2 dim: 4 dim: 12 dim: 12 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 8 kernel_size: 3 pad: 1 bias_term: false
          weight_filler { type: "gaussian" std: 0.2 } } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1"
        batch_norm_param { use_global_stats: true } }
layer { name: "scale1" type: "Scale" bottom: "conv1" top: "conv1"
        scale_param { bias_term: true } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "conv2" type: "Convolution" bottom: "conv1" top: "conv2"
        convolution_param { num_output: 8 kernel_size: 1 bias_term: false
          weight_filler { type: "gaussian" std: 0.2 } } }
layer { name: "bn2" type: "BatchNorm" bottom: "conv2" top: "conv2"
        batch_norm_param { use_global_stats: true } }
layer { name: "scale2" type: "Scale" bottom: "conv2" top: "conv2"
        scale_param { bias_term: true } }
layer { name: "sum" type: "Eltwise" bottom: "conv1" bottom: "conv2" top: "sum" }
layer { name: "pool" type: "Pooling" bottom: "sum" top: "pool"
        pooling_param { pool: AVE global_pooling: true } }
layer { name: "fc" type: "InnerProduct" bottom: "pool" top: "fc"
        inner_product_param { num_output: 5
          weight_filler { type: "gaussian" std: 0.3 } } }
"""


def _randomise_batchnorm(net, rng):
    """Non-trivial statistics: mean, variance and Caffe's scale factor."""
    for layer in net.layers:
        if layer.type == "BatchNorm":
            mean, var, factor = layer.blobs
            C = mean.count
            factor.data[...] = 2.0      # stored sums; Caffe divides by it
            mean.data[...] = 2.0 * rng.standard_normal(C)
            var.data[...] = 2.0 * rng.uniform(0.5, 2.0, C)
        elif layer.type == "Scale":
            layer.blobs[0].data[...] = rng.uniform(0.5, 1.5, layer.blobs[0].shape)
            layer.blobs[1].data[...] = rng.standard_normal(layer.blobs[1].shape)


@pytest.mark.parametrize("text,output", [(LENET, "prob"),
                                         (CONV_POOL_LRN, "prob"),
                                         (BN_SCALE, "fc")],
                         ids=["lenet", "conv_pool_lrn", "batchnorm_scale"])
def test_caffemodel_loads_in_opencv_and_agrees(tmp_path, text, output):
    rng = np.random.default_rng(7)
    proto = tmp_path / "net.prototxt"
    proto.write_text(text)
    net = Net(str(proto))
    _randomise_batchnorm(net, rng)
    weights = tmp_path / "net.caffemodel"
    net.save(str(weights))

    x = rng.uniform(-1, 1, net.blobs["data"].shape).astype(np.float32)
    ours = net.forward(data=x)[output].copy()

    cv_net = cv2.dnn.readNetFromCaffe(str(proto), str(weights))
    cv_net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    cv_net.setInput(x)
    theirs = cv_net.forward(output)
    assert theirs.shape[0] == ours.shape[0]
    np.testing.assert_allclose(theirs.reshape(ours.shape), ours,
                               rtol=1e-4, atol=1e-6)
    # Sanity: the outputs are not trivially constant.
    assert np.ptp(ours) > 1e-3
