"""protonet.classifier.Classifier and protonet.detector.Detector on a tiny
net written to tmp_path."""

import numpy as np
import pytest

import protonet
from protonet.classifier import Classifier
from protonet.detector import Detector
from protonet.errors import UnsupportedError
from protonet.netspec import NetSpec, layers as L

from PIL import Image


@pytest.fixture
def model(tmp_path):
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[3, 3, 4, 4]))
    n.ip = L.InnerProduct(n.data, num_output=5)
    n.prob = L.Softmax(n.ip)
    path = tmp_path / "deploy.prototxt"
    path.write_text(str(n.to_proto()))
    net = protonet.Net(str(path))
    rng = np.random.default_rng(0)
    net.params["ip"][0].data[...] = rng.standard_normal((5, 48))
    weights = tmp_path / "w.caffemodel"
    net.save(str(weights))
    return str(path), str(weights), net


def _reference(net, caffe_in):
    out = []
    for x in caffe_in:
        scores = net.params["ip"][0].data @ x.ravel() + net.params["ip"][1].data
        e = np.exp(scores - scores.max())
        out.append(e / e.sum())
    return np.array(out)


def test_predict_center_crop_matches_manual_preprocessing(model):
    path, weights, net = model
    mean = np.array([0.1, 0.2, 0.3])
    clf = Classifier(path, weights, image_dims=(6, 6), mean=mean,
                     raw_scale=2.0, channel_swap=(2, 1, 0))
    rng = np.random.default_rng(1)
    images = [rng.random((6, 6, 3)).astype(np.float32) for _ in range(4)]
    pred = clf.predict(images, oversample=False)
    assert pred.shape == (4, 5)
    crops = [im[1:5, 1:5].transpose(2, 0, 1)[[2, 1, 0]] * 2.0
             - mean[:, None, None] for im in images]
    np.testing.assert_allclose(pred, _reference(net, crops), rtol=1e-4,
                               atol=1e-6)


def test_predict_oversample_averages_ten_crops(model):
    path, weights, net = model
    clf = Classifier(path, weights, image_dims=(5, 5))
    im = np.random.default_rng(2).random((5, 5, 3)).astype(np.float32)
    pred = clf.predict([im], oversample=True)
    boxes = [(0, 0), (0, 1), (1, 0), (1, 1), (0, 0)]  # centre of 5 -> 0
    crops = [im[y:y + 4, x:x + 4] for y, x in boxes]
    crops += [c[:, ::-1] for c in crops]
    ref = _reference(net, [c.transpose(2, 0, 1) for c in crops]).mean(0)
    np.testing.assert_allclose(pred[0], ref, rtol=1e-4, atol=1e-6)


def test_forward_all_pads_the_last_chunk(model):
    path, weights, net = model
    x = np.random.default_rng(3).standard_normal((7, 3, 4, 4)).astype(np.float32)
    out = net.forward_all(data=x)["prob"]
    assert out.shape == (7, 5)
    np.testing.assert_allclose(out, _reference(net, x), rtol=1e-4, atol=1e-6)


def test_detector_windows_and_selective_search(model, tmp_path):
    path, weights, net = model
    img = (np.random.default_rng(4).random((10, 12, 3)) * 255).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "im.png")
    det = Detector(path, weights)
    assert tuple(det.crop_dims) == (4, 4, 3)
    windows = [np.array([0, 0, 4, 4]), np.array([2, 3, 6, 7])]
    out = det.detect_windows([(str(tmp_path / "im.png"), windows)])
    assert [d["filename"] for d in out] == [str(tmp_path / "im.png")] * 2
    crop = (img[2:6, 3:7] / 255.0).transpose(2, 0, 1)
    np.testing.assert_allclose(out[1]["prediction"], _reference(net, [crop])[0],
                               rtol=1e-4, atol=1e-6)
    padded = Detector(path, weights, mean=np.array([0.5, 0.5, 0.5]),
                      context_pad=1)
    assert padded.crop(img / 255.0, np.array([2, 3, 6, 7])).shape == (4, 4, 3)
    with pytest.raises(UnsupportedError, match="not shipped"):
        det.detect_selective_search([str(tmp_path / "im.png")])
