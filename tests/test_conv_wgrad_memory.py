"""The weight gradient of a convolution whose weights outweigh an image's
columns (FCN-8s fc6: 7x7 over 512 channels to 4096, on 16x16 outputs) is one
GEMM per image written straight into its partial sum: no temporaries the
size of the weights, and the gradient is still the exact sum."""

import tracemalloc

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from protonet.testing import make_layer

# Columns 256 * 49 x 144 positions = 7.2 MB (over the 4 MB column budget, so
# the forward splits them into blocks of rows); weights 256 x 12544 = 12.8 MB.
TEXT = """name: "fc6" type: "Convolution" bottom: "x" top: "y"
convolution_param { num_output: 256 kernel_size: 7 bias_term: false
                    weight_filler { type: "gaussian" std: 0.01 } }"""


def test_big_weight_gradient_makes_no_weight_sized_temporaries():
    gen = np.random.default_rng(0)
    x = gen.standard_normal((1, 256, 18, 18)).astype(np.float32)
    layer, bottom, top = make_layer(TEXT, [x], dtype=np.float32)
    layer.reshape(bottom, top)
    layer.forward(bottom, top)
    dy = gen.standard_normal(top[0].shape).astype(np.float32)
    top[0].diff[...] = dy
    weights = layer.blobs[0].data.nbytes
    layer.backward(top, [False], bottom)  # makes the buffers it keeps
    layer.blobs[0].diff[...] = 0
    tracemalloc.start()
    try:
        layer.backward(top, [False], bottom)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < weights // 4, (peak, weights)
    # dW[m, c, i, j] = sum over output positions of dy * the input window.
    windows = sliding_window_view(x[0].astype(np.float64), (7, 7), axis=(1, 2))
    expected = np.einsum("myx,cyxij->mcij", dy[0].astype(np.float64), windows,
                         optimize=True)
    np.testing.assert_allclose(layer.blobs[0].diff, expected, rtol=1e-4,
                               atol=1e-4 * np.abs(expected).max())
