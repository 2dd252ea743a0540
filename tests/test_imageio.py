"""protonet.imageio: pycaffe's caffe.io helpers."""

import numpy as np
import pytest
from PIL import Image

from protonet import imageio
from protonet.errors import ProtonetError


def test_transformer_preprocess_and_deprocess_round_trip():
    t = imageio.Transformer({"data": (1, 3, 4, 5)})
    t.set_transpose("data", (2, 0, 1))
    t.set_channel_swap("data", (2, 1, 0))
    t.set_raw_scale("data", 255)
    t.set_mean("data", np.array([10.0, 20.0, 30.0]))
    t.set_input_scale("data", 0.5)
    rng = np.random.default_rng(0)
    img = rng.random((4, 5, 3)).astype(np.float32)
    keep = img.copy()
    out = t.preprocess("data", img)
    assert out.shape == (3, 4, 5) and out.dtype == np.float32
    expected = (img.transpose(2, 0, 1)[[2, 1, 0]] * 255
                - np.array([10, 20, 30])[:, None, None]) * 0.5
    np.testing.assert_allclose(out, expected, rtol=1e-5)
    np.testing.assert_array_equal(img, keep)     # input untouched
    np.testing.assert_allclose(t.deprocess("data", out), img, atol=1e-5)


def test_preprocess_resizes_to_the_input_size():
    t = imageio.Transformer({"data": (1, 3, 6, 8)})
    t.set_transpose("data", (2, 0, 1))
    out = t.preprocess("data", np.random.default_rng(1).random((3, 4, 3)))
    assert out.shape == (3, 6, 8)


def test_transformer_checks_and_messages():
    t = imageio.Transformer({"data": (1, 3, 4, 4)})
    with pytest.raises(ProtonetError, match="is not one of the net inputs"):
        t.set_raw_scale("nope", 1)
    with pytest.raises(ProtonetError, match="Transpose order"):
        t.set_transpose("data", (1, 0))
    with pytest.raises(ProtonetError, match="Channel swap"):
        t.set_channel_swap("data", (1, 0))
    with pytest.raises(ValueError, match="Mean channels incompatible"):
        t.set_mean("data", np.zeros(4))
    with pytest.raises(ValueError, match="Mean shape incompatible"):
        t.set_mean("data", np.zeros((2, 5, 5)))      # channels differ
    with pytest.raises(ValueError, match="Mean shape invalid"):
        t.set_mean("data", np.zeros((1, 3, 4, 4)))
    t.set_mean("data", np.ones((3, 4, 4)))        # full mean image
    assert t.mean["data"].shape == (3, 4, 4)
    g = imageio.Transformer({"data": (1, 1, 4, 4)})
    g.set_mean("data", np.ones((4, 4)))          # (H, W) for one channel
    assert g.mean["data"].shape == (1, 4, 4)


def test_load_image_color_gray_alpha(tmp_path):
    rgb = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 10
    Image.fromarray(rgb).save(tmp_path / "c.png")
    img = imageio.load_image(str(tmp_path / "c.png"))
    assert img.dtype == np.float32 and img.shape == (2, 3, 3)
    np.testing.assert_allclose(img, rgb / 255.0, rtol=1e-6)
    gray = np.array([[0, 255], [51, 102]], dtype=np.uint8)
    Image.fromarray(gray).save(tmp_path / "g.png")
    assert imageio.load_image(str(tmp_path / "g.png")).shape == (2, 2, 3)
    g1 = imageio.load_image(str(tmp_path / "g.png"), color=False)
    assert g1.shape == (2, 2, 1)
    np.testing.assert_allclose(g1[..., 0], gray / 255.0, rtol=1e-6)
    rgba = np.zeros((2, 2, 4), np.uint8)
    Image.fromarray(rgba).save(tmp_path / "a.png")
    assert imageio.load_image(str(tmp_path / "a.png")).shape == (2, 2, 3)
    with pytest.raises(ProtonetError, match="cannot read image"):
        imageio.load_image(str(tmp_path / "missing.png"))


def test_resize_image_orders_and_constant():
    im = np.arange(16, dtype=np.float32).reshape(4, 4, 1)
    up = imageio.resize_image(im, (8, 8), interp_order=0)
    np.testing.assert_array_equal(up[::2, ::2], im)      # nearest: repeats
    half = imageio.resize_image(im, (2, 2))   # blurred, then bilinear
    assert half.shape == (2, 2, 1) and half[0, 0, 0] < half[1, 1, 0]
    const = imageio.resize_image(np.full((3, 3, 3), 0.25), (5, 7))
    assert const.shape == (5, 7, 3) and (const == 0.25).all()
    cubic = imageio.resize_image(im, (6, 6), interp_order=3)
    assert cubic.shape == (6, 6, 1) and cubic.dtype == np.float32
    with pytest.raises(ValueError, match="H x W x K"):
        imageio.resize_image(np.zeros((4, 4)), (2, 2))


def test_oversample_corners_center_and_mirrors():
    im = np.arange(5 * 6, dtype=np.float32).reshape(5, 6, 1)
    crops = imageio.oversample([im, im + 100], (3, 4))
    assert crops.shape == (20, 3, 4, 1)
    np.testing.assert_array_equal(crops[0], im[0:3, 0:4])
    np.testing.assert_array_equal(crops[1], im[0:3, 2:6])
    np.testing.assert_array_equal(crops[2], im[2:5, 0:4])
    np.testing.assert_array_equal(crops[3], im[2:5, 2:6])
    np.testing.assert_array_equal(crops[4], im[1:4, 1:5])     # centre
    np.testing.assert_array_equal(crops[5:10], crops[0:5, :, ::-1])
    np.testing.assert_array_equal(crops[10], im[0:3, 0:4] + 100)
    with pytest.raises(ValueError, match="larger than the image"):
        imageio.oversample([im], (6, 6))


def test_blobproto_and_datum_conversions():
    arr = np.arange(24, dtype=np.float32).reshape(1, 2, 3, 4)
    blob = imageio.array_to_blobproto(arr, diff=-arr)
    assert (blob.num, blob.channels, blob.height, blob.width) == (1, 2, 3, 4)
    np.testing.assert_array_equal(imageio.blobproto_to_array(blob), arr)
    np.testing.assert_array_equal(
        imageio.blobproto_to_array(blob, return_diff=True), -arr)
    with pytest.raises(ValueError, match="4-D"):
        imageio.array_to_blobproto(arr[0])
    s = imageio.arraylist_to_blobprotovector_str([arr, arr * 2])
    back = imageio.blobprotovector_str_to_arraylist(s)
    np.testing.assert_array_equal(back[1], arr * 2)
    u8 = np.arange(12, dtype=np.uint8).reshape(3, 2, 2)
    d = imageio.array_to_datum(u8, label=7)
    assert d.label == 7 and d.data == u8.tobytes()
    out = imageio.datum_to_array(d)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, u8)
    f = imageio.datum_to_array(imageio.array_to_datum(u8.astype(np.float32)))
    np.testing.assert_array_equal(f, u8)
    with pytest.raises(ValueError, match="3-D"):
        imageio.array_to_datum(u8[0])
