"""caffe.io's resize_image and Transformer.set_mean behave as pycaffe's.

pycaffe resizes 1- and 3-channel images with scikit-image's resize on the
image scaled to [0, 1], other channel counts with scipy.ndimage.zoom; the
references below are those calls, made here directly.
"""

import sys

import numpy as np
import pytest
from scipy.ndimage import zoom
from skimage.transform import resize

import protonet as caffe
from protonet import imageio

SIZES = [((7, 9), (15, 20)),      # enlarge
         ((40, 33), (13, 9)),     # shrink (anti-aliased)
         ((64, 48), (227, 21)),   # enlarge one axis, shrink the other
         ((6, 6), (1, 12))]


def pycaffe_resize(im, dims, order=1):
    """python/caffe/io.py's resize_image, written out with the calls it
    makes."""
    if im.shape[-1] in (1, 3):
        lo, hi = im.min(), im.max()
        return (resize((im - lo) / (hi - lo), dims, order=order)
                * (hi - lo) + lo).astype(np.float32)
    scale = tuple(np.array(dims, dtype=float) / np.array(im.shape[:2]))
    return zoom(im, scale + (1,), order=order).astype(np.float32)


def image(shape, seed=0):
    return (np.random.default_rng(seed).random(shape) * 255).astype(np.float32)


@pytest.mark.parametrize("channels", [1, 3, 4])
@pytest.mark.parametrize("old, new", SIZES)
def test_resize_image_is_pycaffes_when_skimage_is_installed(channels, old, new):
    im = image(old + (channels,))
    for order in (0, 1, 3):
        np.testing.assert_array_equal(caffe.io.resize_image(im, new, order),
                                      pycaffe_resize(im, new, order))


@pytest.fixture
def without_skimage_or_scipy(monkeypatch):
    """Imports of scikit-image and scipy.ndimage fail, as when neither is
    installed (the references were imported above)."""
    for name in ("skimage", "skimage.transform", "scipy.ndimage"):
        monkeypatch.setitem(sys.modules, name, None)


@pytest.mark.parametrize("channels", [1, 3, 2])
@pytest.mark.parametrize("old, new", SIZES)
def test_numpy_resize_reproduces_skimage_and_zoom(channels, old, new,
                                                  without_skimage_or_scipy):
    im = image(old + (channels,), seed=channels)
    for order in (0, 1):
        got = imageio.resize_image(im, new, order)
        ref = pycaffe_resize(im, new, order)
        assert got.shape == ref.shape and got.dtype == np.float32
        # float32 rounding only: 255 * 2**-23 per operation.
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-4)


def test_border_when_enlarging_mirrors_like_skimage(without_skimage_or_scipy):
    """Enlarging 2 -> 4 pixels: the outer samples (source coordinate -0.25)
    mix in the mirrored neighbour (skimage's 'reflect'), not edge copies."""
    im = np.array([0.0, 1.0], np.float32).reshape(1, 2, 1)
    row = imageio.resize_image(im, (1, 4))[0, :, 0]
    np.testing.assert_allclose(row, [0.25, 0.25, 0.75, 0.75], atol=1e-7)


def test_orders_above_one_without_skimage_use_ndimage_like_skimage(
        monkeypatch):
    for name in ("skimage", "skimage.transform"):
        monkeypatch.setitem(sys.modules, name, None)
    im = image((20, 14, 3), seed=5)
    for new in ((9, 30), (33, 5)):
        np.testing.assert_allclose(imageio.resize_image(im, new, 3),
                                   pycaffe_resize(im, new, 3), atol=1e-4)


def test_orders_above_one_need_a_package(without_skimage_or_scipy):
    with pytest.raises(caffe.ProtonetError, match=r"protonet\[pycaffe\]"):
        imageio.resize_image(image((4, 4, 3)), (8, 8), interp_order=3)


# ---------------------------------------------------------------------------
# Transformer.set_mean with a mean of another size


def pycaffe_resized_mean(mean, dims):
    """What the widely applied fix to pycaffe's set_mean computes."""
    lo, hi = mean.min(), mean.max()
    normal = (mean - lo) / (hi - lo)
    return pycaffe_resize(normal.transpose((1, 2, 0)), dims).transpose(
        (2, 0, 1)) * (hi - lo) + lo


def test_set_mean_resizes_a_mean_of_another_size():
    mean = np.random.default_rng(3).random((3, 32, 32)) * 40 + 100   # float64
    t = caffe.io.Transformer({"data": (1, 3, 27, 27)})
    t.set_mean("data", mean)
    assert t.mean["data"].shape == (3, 27, 27)
    np.testing.assert_allclose(t.mean["data"],
                               pycaffe_resized_mean(mean, (27, 27)),
                               rtol=1e-6)
    gray = caffe.io.Transformer({"data": (1, 1, 5, 5)})
    gray.set_mean("data", np.arange(64.0).reshape(8, 8))         # (H, W)
    assert gray.mean["data"].shape == (1, 5, 5)
    const = caffe.io.Transformer({"data": (1, 3, 4, 4)})
    const.set_mean("data", np.full((3, 8, 8), 7.0))
    np.testing.assert_array_equal(const.mean["data"], np.full((3, 4, 4), 7.0))
    with pytest.raises(ValueError, match="channel counts differ"):
        t.set_mean("data", np.zeros((1, 32, 32)))


DEPLOY = """
input: "data"
input_shape { dim: 1 dim: 3 dim: 27 dim: 27 }
layer { name: "pool" type: "Pooling" bottom: "data" top: "pool"
        pooling_param { pool: AVE global_pooling: true } }
layer { name: "ip" type: "InnerProduct" bottom: "pool" top: "ip"
        inner_product_param { num_output: 4 weight_filler { type: "xavier" } } }
layer { name: "prob" type: "Softmax" bottom: "ip" top: "prob" }
"""


def test_classifier_takes_an_imagenet_style_mean_file(tmp_path):
    """Classifier(mean=np.load(mean.npy)) with a 3 x 32 x 32 mean for a
    27 x 27 input, as classify.py's defaults pass ilsvrc_2012_mean.npy
    (3 x 256 x 256) for CaffeNet's 227 x 227."""
    model = tmp_path / "deploy.prototxt"
    model.write_text(DEPLOY)
    np.save(tmp_path / "mean.npy",
            np.random.default_rng(1).random((3, 32, 32)) * 255)
    clf = caffe.Classifier(str(model), None, image_dims=(32, 32),
                           mean=np.load(tmp_path / "mean.npy"),
                           raw_scale=255, channel_swap=(2, 1, 0))
    probs = clf.predict([image((40, 50, 3)) / 255], oversample=True)
    assert probs.shape == (1, 4)
    np.testing.assert_allclose(probs.sum(1), 1, rtol=1e-5)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L"])
def test_load_image_color_false_reads_intensity_like_skimage(tmp_path, mode):
    """pycaffe: img_as_float(skimage.io.imread(f, as_gray=not color))."""
    from PIL import Image
    import skimage.io
    from skimage import img_as_float
    pixels = (np.random.default_rng(2).random((5, 7, 4)) * 255).astype(np.uint8)
    pixels = {"RGB": pixels[..., :3], "RGBA": pixels, "L": pixels[..., 0]}[mode]
    path = str(tmp_path / "im.png")
    Image.fromarray(pixels, mode).save(path)
    got = caffe.io.load_image(path, color=False)
    ref = img_as_float(skimage.io.imread(path, as_gray=True)).astype(np.float32)
    assert got.shape == (5, 7, 1) and got.dtype == np.float32
    np.testing.assert_allclose(got[..., 0], ref, atol=1e-6)
    assert caffe.io.load_image(path).shape == (5, 7, 3)
