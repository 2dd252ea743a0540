"""A weights path with a comma in it is one path in pycaffe's Python API.

Caffe's fine-tuning example names its weight files with commas; only the
command line's `--weights a,b` is a comma-separated list (caffe.cpp's
CopyLayers), never `caffe.Net(model, weights, phase)` or `net.copy_from`.
"""

import numpy as np
import pytest

import protonet as caffe
from protonet.errors import ProtonetError

DEPLOY = """
name: "tiny"
input: "data"
input_shape { dim: 2 dim: 3 dim: 4 dim: 4 }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        inner_product_param { num_output: 5
                              weight_filler { type: "gaussian" std: 1 } } }
layer { name: "prob" type: "Softmax" bottom: "ip" top: "prob" }
"""


@pytest.fixture
def saved(tmp_path):
    """A deploy prototxt and weights saved under names holding commas."""
    model = tmp_path / "deploy.prototxt"
    model.write_text(DEPLOY)
    net = caffe.Net(str(model), caffe.TEST)
    rng = np.random.default_rng(0)
    for blob in net.params["ip"]:
        blob.data[...] = rng.standard_normal(blob.data.shape)
    weights = tmp_path / "w, v2.caffemodel"
    net.save(str(weights))
    h5 = tmp_path / "w,final.h5"
    net.save_hdf5(str(h5))
    return str(model), str(weights), str(h5), net.params["ip"][0].data.copy()


def test_net_constructor_forms_take_the_whole_path(saved):
    model, weights, h5, expected = saved
    for net in (caffe.Net(model, weights, caffe.TEST),
                caffe.Net(model, caffe.TEST, weights=weights),
                caffe.Net(model, weights=weights, phase=caffe.TEST),
                caffe.Net(model, h5, caffe.TEST)):
        np.testing.assert_array_equal(net.params["ip"][0].data, expected)


def test_copy_from_and_solver_net_take_the_whole_path(saved, tmp_path):
    model, weights, h5, expected = saved
    net = caffe.Net(model, caffe.TEST)
    net.copy_from(weights)
    np.testing.assert_array_equal(net.params["ip"][0].data, expected)
    net.params["ip"][0].data[...] = 0
    net.load_hdf5(h5)
    np.testing.assert_array_equal(net.params["ip"][0].data, expected)
    # The fine-tuning notebook's pattern: solver.net.copy_from(weights).
    train = tmp_path / "train.prototxt"
    train.write_text(DEPLOY + 'layer { name: "loss" type: "Reduction" bottom: "prob"'
                 ' top: "loss" loss_weight: 1 }\n')
    solver_file = tmp_path / "solver.prototxt"
    solver_file.write_text(f'net: "{train}" base_lr: 0.01 lr_policy: "fixed"'
                           ' max_iter: 1 snapshot_prefix: "s"')
    solver = caffe.SGDSolver(str(solver_file))
    solver.net.copy_from(weights)
    np.testing.assert_array_equal(solver.net.params["ip"][0].data, expected)


def test_classifier_and_detector_take_the_whole_path(saved):
    model, weights, _, expected = saved
    clf = caffe.Classifier(model, weights)
    det = caffe.Detector(model, weights)
    for net in (clf, det):
        np.testing.assert_array_equal(net.params["ip"][0].data, expected)


def test_a_missing_path_with_a_comma_is_named_whole(saved, tmp_path):
    model = saved[0]
    missing = str(tmp_path / "a,b.caffemodel")
    with pytest.raises(ProtonetError, match=r"a,b\.caffemodel"):
        caffe.Net(model, missing, caffe.TEST)
