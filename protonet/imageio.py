"""Image helpers of pycaffe's `caffe.io`: Transformer, image loading and
resizing, 10-crop oversampling, BlobProto / Datum <-> array conversion.

`import protonet.imageio as io` gives scripts written for `caffe.io` the same
functions.  Images are NumPy arrays H x W x K (channels last, RGB, float32
in [0, 1] as `load_image` returns them); nets want K x H x W, often BGR in
[0, 255] minus a mean: `Transformer.preprocess` does that conversion.

Mirrors: python/caffe/io.py
"""

import io as _pyio
import threading
import warnings

import numpy as np

from . import limits
from .errors import DataError, ProtonetError
from .filecheck import read_file
from .image_resize import resize_image  # noqa: F401  (caffe.io.resize_image)
from .proto import caffe_pb2

#: Bytes one decoded pixel may take on the way to a net: Pillow's RGBA
#: decode (4) plus a float32 RGB copy (12).  An image is refused before
#: decoding when width x height x this passes the memory limit.
BYTES_PER_PIXEL = 16
_OPEN_LOCK = threading.Lock()


# ---------------------------------------------------------------------------
# proto / datum / ndarray conversion


class BlobProtoShapeError(DataError, ValueError):
    """A BlobProto's values do not fill its shape (a ValueError, as numpy's
    reshape raises in pycaffe)."""


def blobproto_to_array(blob, return_diff=False):
    """The data (or the diff) of a BlobProto as an array.

    Blobs with the legacy num/channels/height/width fields come back 4-D, as
    in pycaffe; blobs with a `shape` field get that shape.
    """
    values = np.array(blob.diff if return_diff else blob.data)
    # NOTE(caffe): as pycaffe, any legacy field selects the 4-D shape; a
    # blob with neither form has shape () and so holds one scalar.
    if any(blob.HasField(f) for f in ("num", "channels", "height", "width")):
        shape = (blob.num, blob.channels, blob.height, blob.width)
    else:
        shape = tuple(int(d) for d in blob.shape.dim)
    if values.size != int(np.prod(shape, dtype=np.int64)):
        raise BlobProtoShapeError(f"BlobProto holds {values.size} "
                        f"{'diff' if return_diff else 'data'} values but its "
                        f"shape {shape} needs {int(np.prod(shape))}")
    return values.reshape(shape)


def array_to_blobproto(arr, diff=None):
    """A 4-D array (and optional diff of the same shape) as a BlobProto with
    the legacy num/channels/height/width shape fields."""
    arr = np.asarray(arr)
    if arr.ndim != 4:
        raise ValueError(f"Incorrect array shape: array_to_blobproto needs a "
                         f"4-D array (N, C, H, W), got shape {arr.shape}")
    blob = caffe_pb2.BlobProto()
    blob.num, blob.channels, blob.height, blob.width = arr.shape
    blob.data.extend(arr.astype(float).flat)
    if diff is not None:
        diff = np.asarray(diff)
        if diff.shape != arr.shape:
            raise ValueError(f"diff shape {diff.shape} differs from the data "
                             f"shape {arr.shape}")
        blob.diff.extend(diff.astype(float).flat)
    return blob


def arraylist_to_blobprotovector_str(arraylist):
    """A list of 4-D arrays serialized as a BlobProtoVector."""
    vec = caffe_pb2.BlobProtoVector()
    vec.blobs.extend([array_to_blobproto(arr) for arr in arraylist])
    return vec.SerializeToString()


# pycaffe's spelling (with its typo) kept for old scripts.
arraylist_to_blobprotovecor_str = arraylist_to_blobprotovector_str


def blobprotovector_str_to_arraylist(data):
    """A serialized BlobProtoVector as a list of arrays."""
    vec = caffe_pb2.BlobProtoVector()
    vec.ParseFromString(data)
    return [blobproto_to_array(blob) for blob in vec.blobs]


def array_to_datum(arr, label=None):
    """A 3-D array (C, H, W) as a Datum: uint8 arrays go to the `data` bytes,
    any other dtype to `float_data`."""
    arr = np.asarray(arr)
    if arr.ndim != 3:
        raise ValueError(f"Incorrect array shape: array_to_datum needs a 3-D "
                         f"array (C, H, W), got shape {arr.shape}")
    datum = caffe_pb2.Datum()
    datum.channels, datum.height, datum.width = arr.shape
    if arr.dtype == np.uint8:
        datum.data = arr.tobytes()
    else:
        datum.float_data.extend(arr.astype(float).flat)
    if label is not None:
        datum.label = int(label)
    return datum


def datum_to_array(datum):
    """The (C, H, W) array of a Datum (uint8 for byte data, else float64, as
    pycaffe).  The label is `datum.label`."""
    shape = (datum.channels, datum.height, datum.width)
    if len(datum.data):
        arr = np.frombuffer(datum.data, dtype=np.uint8)
    else:
        arr = np.array(datum.float_data, dtype=float)
    if arr.size != int(np.prod(shape)):
        raise DataError(f"Datum holds {arr.size} values but declares "
                        f"channels x height x width = {shape}")
    return arr.reshape(shape).copy()


# ---------------------------------------------------------------------------
# Pre-processing


class Transformer:
    """Turns H x W x K images into a net's K x H x W input, and back.

    `preprocess` applies, in order: float32, resize to the input's H x W,
    transpose, channel swap, `*= raw_scale`, `-= mean`, `*= input_scale`;
    `deprocess` undoes them in reverse.

    Args:
        inputs: dict of input blob name -> its shape (N, K, H, W), e.g.
            `{'data': net.blobs['data'].data.shape}`.
    """

    def __init__(self, inputs):
        self.inputs = {k: tuple(int(d) for d in v) for k, v in inputs.items()}
        self.transpose = {}
        self.channel_swap = {}
        self.raw_scale = {}
        self.mean = {}
        self.input_scale = {}

    def _check_input(self, in_):
        if in_ not in self.inputs:
            raise ProtonetError(f"{in_} is not one of the net inputs: "
                                f"{sorted(self.inputs)}")

    def preprocess(self, in_, data):
        """An H' x W' x K image as the K x H x W array for input `in_`."""
        self._check_input(in_)
        # NOTE(caffe): pycaffe scales float32 input in place (astype with
        # copy=False); we copy so the caller's image is never modified.
        caffe_in = np.array(data, dtype=np.float32)
        in_dims = self.inputs[in_][2:]
        if caffe_in.shape[:2] != in_dims:
            caffe_in = resize_image(caffe_in, in_dims)
        transpose = self.transpose.get(in_)
        channel_swap = self.channel_swap.get(in_)
        raw_scale = self.raw_scale.get(in_)
        mean = self.mean.get(in_)
        input_scale = self.input_scale.get(in_)
        if transpose is not None:
            caffe_in = caffe_in.transpose(transpose)
        if channel_swap is not None:
            caffe_in = caffe_in[list(channel_swap), :, :]
        if raw_scale is not None:
            caffe_in *= raw_scale
        if mean is not None:
            caffe_in -= mean
        if input_scale is not None:
            caffe_in *= input_scale
        return caffe_in

    def deprocess(self, in_, data):
        """Invert `preprocess` (except the resize): K x H x W -> H x W x K."""
        self._check_input(in_)
        decaf_in = np.array(data, dtype=np.float32).squeeze()
        transpose = self.transpose.get(in_)
        channel_swap = self.channel_swap.get(in_)
        raw_scale = self.raw_scale.get(in_)
        mean = self.mean.get(in_)
        input_scale = self.input_scale.get(in_)
        if input_scale is not None:
            decaf_in /= input_scale
        if mean is not None:
            decaf_in += mean
        if raw_scale is not None:
            decaf_in /= raw_scale
        if channel_swap is not None:
            decaf_in = decaf_in[np.argsort(channel_swap), :, :]
        if transpose is not None:
            decaf_in = decaf_in.transpose(np.argsort(transpose))
        return decaf_in

    def set_transpose(self, in_, order):
        """Axis order from the image's H x W x K to the net's, e.g. (2, 0, 1)."""
        self._check_input(in_)
        if len(order) != len(self.inputs[in_]) - 1:
            raise ProtonetError(
                f"Transpose order needs to have the same number of dimensions "
                f"as the input: input '{in_}' has shape {self.inputs[in_]}, "
                f"so {len(self.inputs[in_]) - 1} axes, got order {tuple(order)}")
        self.transpose[in_] = tuple(order)

    def set_channel_swap(self, in_, order):
        """Channel order after the transpose, e.g. (2, 1, 0) for RGB -> BGR."""
        self._check_input(in_)
        if len(order) != self.inputs[in_][1]:
            raise ProtonetError(
                f"Channel swap needs to have the same number of dimensions as "
                f"the input channels: input '{in_}' has "
                f"{self.inputs[in_][1]} channels, got order {tuple(order)}")
        self.channel_swap[in_] = tuple(order)

    def set_raw_scale(self, in_, scale):
        """Multiply the raw image by `scale` (255 for [0, 1] -> [0, 255]);
        applied before the mean subtraction."""
        self._check_input(in_)
        self.raw_scale[in_] = scale

    def set_mean(self, in_, mean):
        """The mean to subtract: per channel (K,), or elementwise (K, H, W)
        or (H, W).

        An elementwise mean of another height and width (the 256 x 256
        ImageNet mean for a 227 x 227 input) is resized to the input's, as
        the fix to pycaffe's io.py that classify.py's defaults rely on does:
        scaled to [0, 1], `resize_image`d, scaled back.  (Upstream pycaffe
        raises ValueError there.)  The channel count must match.
        """
        self._check_input(in_)
        mean = np.asarray(mean)
        if mean.dtype.kind != "f":
            mean = mean.astype(np.float32)
        ms = mean.shape
        if mean.ndim == 1:
            if ms[0] != self.inputs[in_][1]:
                raise ValueError(
                    f"Mean channels incompatible with input: input '{in_}' "
                    f"has {self.inputs[in_][1]} channels, the mean has {ms[0]}")
            mean = mean[:, np.newaxis, np.newaxis]
        else:
            if len(ms) == 2:
                ms = (1,) + ms
            if len(ms) != 3:
                raise ValueError(f"Mean shape invalid: expected (K,), (H, W) "
                                 f"or (K, H, W), got {mean.shape}")
            if ms[0] != self.inputs[in_][1]:
                raise ValueError(
                    f"Mean shape incompatible with input shape: input "
                    f"'{in_}' is {self.inputs[in_][1:]} (K, H, W), the mean is "
                    f"{mean.shape}: the channel counts differ")
            mean = mean.reshape(ms)
            if ms != self.inputs[in_][1:]:
                mean = _resize_mean(mean, self.inputs[in_][2:])
        self.mean[in_] = mean.astype(np.float32)

    def set_input_scale(self, in_, scale):
        """Multiply the preprocessed input by `scale`, after the mean."""
        self._check_input(in_)
        self.input_scale[in_] = scale


def _resize_mean(mean, dims):
    """A (K, H, W) mean resized to `dims` (h, w) through `resize_image`."""
    m_min, m_max = mean.min(), mean.max()
    if not m_max > m_min:
        return np.full(mean.shape[:1] + tuple(dims), m_min, mean.dtype)
    normal = (mean - m_min) / (m_max - m_min)
    resized = resize_image(normal.transpose((1, 2, 0)), dims)
    return resized.transpose((2, 0, 1)) * (m_max - m_min) + m_min


# ---------------------------------------------------------------------------
# Image IO


def open_image(src, where=None):
    """Open an image (a path or encoded bytes) with Pillow, reading only its
    header, and refuse it before decoding when it is too large.

    Two guards, both raising DataError / ResourceError naming `where` (the
    file, or the database record):

    * protonet's memory limit: width x height x BYTES_PER_PIXEL must fit;
    * Pillow's decompression-bomb guard (`PIL.Image.MAX_IMAGE_PIXELS`,
      89M pixels by default): its warning and its error both become a
      DataError; set `PIL.Image.MAX_IMAGE_PIXELS = None` to rely on the
      memory limit alone.

    A path must name a regular file (protonet.filecheck).  Returns the
    opened PIL image (use it as a context manager; call `load()` to decode).
    """
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - pillow is a dependency
        raise ProtonetError("reading images needs Pillow: pip install "
                            "pillow") from None
    if isinstance(src, (bytes, bytearray, memoryview)):
        where = where or "<image bytes>"
        data = bytes(src)
    else:
        data = read_file(src, "an image", DataError, who=where)
        where = where or str(src)
    # The bomb warning is raised as an error inside this block only; the
    # lock keeps two threads from swapping the warning filters at once.
    with _OPEN_LOCK, warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(_pyio.BytesIO(data))
        except (Image.DecompressionBombError,
                Image.DecompressionBombWarning) as e:
            raise DataError(f"{where}: refused as a decompression bomb: {e} "
                            "(raise PIL.Image.MAX_IMAGE_PIXELS if the image "
                            "is genuine)") from None
        except (OSError, ValueError, SyntaxError) as e:
            raise DataError(f"{where}: cannot decode image: {e}") from None
    w, h = img.size
    try:
        limits.check_bytes(w * h * BYTES_PER_PIXEL,
                           f"{where}: an image of {w} x {h} pixels")
    except ProtonetError:
        img.close()
        raise
    return img


def check_resize_target(height, width, channels, what):
    """Refuse a resize to `height` x `width` before any array is made: the
    bilinear resize keeps about three float64 arrays of the output size."""
    limits.check_bytes(int(height) * int(width) * int(channels) * 8 * 3,
                       f"{what}: resizing to {height} x {width} x {channels}")


def load_image(filename, color=True):
    """Load an image as float32 in [0, 1], H x W x 3 (RGB) or H x W x 1.

    Grayscale images are tiled to three channels when `color`; an alpha
    channel is dropped.  With `color=False` a color image is converted to
    intensity, as pycaffe's skimage.io.imread(..., as_gray=True) does.
    Integer images are divided by their dtype's maximum (skimage's
    img_as_float, which pycaffe uses).  Needs Pillow.
    """
    try:
        im = open_image(filename)
    except DataError as e:
        raise DataError(f"cannot read image {filename}: {e}") from None
    try:
        with im:
            if im.mode == "P":
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            elif im.mode in ("1", "CMYK", "YCbCr", "LAB", "HSV"):
                im = im.convert("L" if im.mode == "1" else "RGB")
            elif im.mode == "LA":
                im = im.convert("L")
            arr = np.asarray(im)
    except (OSError, ValueError, SyntaxError) as e:
        raise DataError(f"cannot read image {filename}: {e}") from None
    if arr.dtype == bool:
        img = arr.astype(np.float32)
    elif np.issubdtype(arr.dtype, np.integer):
        img = arr.astype(np.float32) / np.float32(np.iinfo(arr.dtype).max)
    else:
        img = arr.astype(np.float32)
    if img.ndim == 3 and not color:
        img = _as_gray(img)
    if img.ndim == 2:
        img = img[:, :, np.newaxis]
        if color:
            img = np.tile(img, (1, 1, 3))
    elif img.shape[2] == 4:
        img = img[:, :, :3]
    return img


def _as_gray(img):
    """A color image as one intensity plane, as pycaffe's
    `skimage.io.imread(filename, as_gray=True)`: RGBA is first composited
    on white, then Y = 0.2125 R + 0.7154 G + 0.0721 B."""
    rgb = img[..., :3].astype(np.float64)
    if img.shape[2] == 4:
        alpha = img[..., 3:4].astype(np.float64)
        rgb = np.clip((1 - alpha) + alpha * rgb, 0, 1)
    return (rgb @ np.array([0.2125, 0.7154, 0.0721])).astype(np.float32)


def _crop_boxes(im_shape, crop_dims):
    """(y0, x0, y1, x1) for the four corners and the centre."""
    h, w = im_shape[:2]
    ch, cw = crop_dims
    boxes = [(i, j, i + ch, j + cw) for i in (0, h - ch) for j in (0, w - cw)]
    cy, cx = h / 2.0, w / 2.0
    boxes.append((int(cy - ch / 2.0), int(cx - cw / 2.0),
                  int(cy - ch / 2.0) + ch, int(cx - cw / 2.0) + cw))
    return boxes


def oversample(images, crop_dims):
    """Ten crops per image: the four corners and the centre, then the same
    five mirrored left-right.

    Args:
        images: iterable of H x W x K arrays (all the same shape).
        crop_dims: (height, width) of the crops.

    Returns:
        float32 array (10 * N, height, width, K).
    """
    images = list(images)
    if not images:
        raise ValueError("oversample needs at least one image")
    im_shape = images[0].shape
    ch, cw = (int(d) for d in crop_dims)
    if ch > im_shape[0] or cw > im_shape[1]:
        raise ValueError(f"crop {ch}x{cw} is larger than the image "
                         f"{im_shape[0]}x{im_shape[1]}")
    boxes = _crop_boxes(im_shape, (ch, cw))
    crops = np.empty((10 * len(images), ch, cw, im_shape[-1]), np.float32)
    ix = 0
    for im in images:
        if im.shape != im_shape:
            raise ValueError(f"oversample: images differ in shape "
                             f"({im_shape} and {im.shape})")
        for y0, x0, y1, x1 in boxes:
            crops[ix] = im[y0:y1, x0:x1, :]
            ix += 1
        crops[ix:ix + 5] = crops[ix - 5:ix, :, ::-1, :]
        ix += 5
    return crops
