"""Per-sample results across batch compositions (InnerProduct,
Convolution): bit-identical run to run, and within the documented float
summation bound of each other across batch sizes (see README,
"Determinism")."""

import numpy as np
import pytest

import protonet

U = 2.0 ** -24      # float32 unit roundoff

NET = """
layer {{ name: "data" type: "Input" top: "data"
  input_param {{ shape {{ dim: {n} dim: 8 dim: 12 dim: 12 }} }} }}
layer {{ name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param {{ num_output: 16 kernel_size: 3 pad: 1
    weight_filler {{ type: "gaussian" std: 0.1 }}
    bias_filler {{ type: "gaussian" std: 0.1 }} }} }}
layer {{ name: "ip" type: "InnerProduct" bottom: "conv" top: "ip"
  inner_product_param {{ num_output: 300
    weight_filler {{ type: "gaussian" std: 0.05 }}
    bias_filler {{ type: "gaussian" std: 0.1 }} }} }}
"""


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    d = tmp_path_factory.mktemp("det")
    made = []
    for n in (10, 1):
        f = d / f"net{n}.prototxt"
        f.write_text(NET.format(n=n))
        protonet.set_random_seed(5)        # same weights in both
        made.append(protonet.Net(str(f), protonet.TEST))
    return made


def bound(W, b, x):
    """2 K u sum_k |w_k x_k| (+ the bias term): how far two summation
    orders of the same float32 dot product can be apart."""
    K = W.shape[1]
    return 2 * (K + 1) * U * (np.abs(W) @ np.abs(x) + np.abs(b))


def test_run_to_run_bit_identical(nets):
    net = nets[0]
    x = np.random.default_rng(1).standard_normal((10, 8, 12, 12)) \
        .astype(np.float32)
    net.blobs["data"].data[...] = x
    first = {k: net.forward()[k].copy() for k in ("ip",)}
    first["conv"] = net.blobs["conv"].data.copy()
    net.forward()
    np.testing.assert_array_equal(net.blobs["ip"].data, first["ip"])
    np.testing.assert_array_equal(net.blobs["conv"].data, first["conv"])


def test_batch_vs_single_within_the_summation_bound(nets):
    big, one = nets
    x = np.random.default_rng(2).standard_normal((10, 8, 12, 12)) \
        .astype(np.float32)
    big.blobs["data"].data[...] = x
    big.forward()
    W, b = (p.data.astype(np.float64) for p in big.params["ip"])
    Wc, bc = (p.data.astype(np.float64) for p in big.params["conv"])
    for i in range(10):
        one.blobs["data"].data[...] = x[i:i + 1]
        one.forward()
        # InnerProduct: every output within the bound of its dot product.
        feat = big.blobs["conv"].data[i].astype(np.float64).ravel()
        diff = np.abs(one.blobs["ip"].data[0].astype(np.float64) -
                      big.blobs["ip"].data[i])
        # the single image's input may itself differ within conv's bound
        slack = np.abs(W) @ np.abs(one.blobs["conv"].data[0].ravel() - feat)
        assert (diff <= bound(W, b, feat) + slack).all()
        # Convolution: bounded by the largest |w| |x| sum of any output.
        cdiff = np.abs(one.blobs["conv"].data[0] - big.blobs["conv"].data[i])
        K = Wc[0].size
        worst = 2 * (K + 1) * U * (np.abs(Wc).reshape(16, -1).sum(1).max()
                                   * np.abs(x[i]).max() + np.abs(bc).max())
        assert cdiff.max() <= worst
