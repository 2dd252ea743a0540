"""Caffe's DataTransformer: crop, mirror, mean subtraction and scale.

Mirrors: src/caffe/data_transformer.cpp (Transform, InferBlobShape,
InitRand, Rand) and the resize of src/caffe/util/io.cpp (ReadImageToCVMat).

For each item, in Caffe's order and with Caffe's numbers::

    do_mirror = mirror and Rand(2)                # in TRAIN and in TEST
    h_off, w_off = Rand(H - crop + 1), Rand(W - crop + 1)   # TRAIN
                 = (H - crop) // 2, (W - crop) // 2         # TEST
    top[c, h, w'] = (x[c, h_off + h, w_off + w] - mean[c, h_off + h, w_off + w])
                    * scale,   w' = crop - 1 - w if do_mirror else w

where `mean` is the mean file (shape C x H x W of the uncropped datum, so
cropped with the data) or the per-channel `mean_value`s.  The whole batch
is transformed with one gather and two vectorised operations.

Supported transform_param fields: scale, mirror, crop_size, mean_file,
mean_value, force_color, force_gray (for encoded images).  The SSD fork's
fields (resize_param, noise_param, distort_param, expand_param,
emit_constraint, crop_h, crop_w) raise UnsupportedError.
"""

import numpy as np

from . import rng as _rng
from .errors import DataError, LayerError, UnsupportedError

_FORK_FIELDS = ("resize_param", "noise_param", "emit_constraint",
                "distort_param", "expand_param", "crop_h", "crop_w")


class _Named:
    def __init__(self, type, name):
        self.type, self.name = type, name


class DataTransformer:
    """Applies a `TransformationParameter` to batches of (C, H, W) images.

    Args:
        param: caffe_pb2.TransformationParameter.
        phase: 0 = TRAIN (random crop), 1 = TEST (center crop).
        dtype: the output dtype (the layer's).
        layer: the owning layer, named in errors.

    The transformer owns its random generator, seeded from protonet's
    generator when random draws are needed (Caffe's InitRand), so a
    prefetch thread draws in a fixed order whatever the timing.
    """

    def __init__(self, param, phase, dtype=np.float32, layer=None):
        self.param, self.phase = param, phase
        # Only the names: a reference to the layer would keep it alive from
        # its prefetch thread.
        self.layer = (_Named(layer.type, layer.name) if layer is not None
                      else None)
        self.dtype = np.dtype(dtype)
        for field in _FORK_FIELDS:
            if param.HasField(field):
                raise UnsupportedError(layer, f"unsupported field "
                                       f"transform_param.{field}")
        if param.force_color and param.force_gray:
            raise LayerError(layer, "cannot set both force_color and "
                             "force_gray in transform_param")
        self.crop = int(param.crop_size)
        self.scale = self.dtype.type(param.scale)
        self.mirror = bool(param.mirror)
        self.mean = None
        self.mean_values = None
        if param.HasField("mean_file"):
            if len(param.mean_value):
                raise LayerError(layer, "cannot specify mean_file and "
                                 "mean_value at the same time")
            from .io import read_binaryproto
            mean = read_binaryproto(param.mean_file)
            if mean.ndim == 4 and mean.shape[0] == 1:
                mean = mean[0]
            if mean.ndim != 3:
                raise DataError(f"{param.mean_file}: a mean file holds a "
                                f"1 x C x H x W blob, got shape {mean.shape}")
            self.mean = mean.astype(self.dtype)
        elif len(param.mean_value):
            self.mean_values = np.asarray(param.mean_value, self.dtype)
        # NOTE(caffe): mirror is random in TEST too; crop is random in TRAIN.
        self.needs_rand = self.mirror or (phase == 0 and self.crop > 0)
        self.rng = None
        if self.needs_rand:
            seed = int(_rng.generator().integers(2 ** 63))
            self.rng = np.random.default_rng(seed)

    @property
    def color(self):
        """Channels to decode encoded images to: True, False or None."""
        if self.param.force_color:
            return True
        if self.param.force_gray:
            return False
        return None

    def _where(self, where):
        who = (f"{self.layer.type} layer '{self.layer.name}'"
               if self.layer is not None else "transform")
        return f"{who}: {where}: " if where else f"{who}: "

    def check(self, shape, where=""):
        """The transformed (C, H, W) of an input of `shape` (C, H, W)
        (Caffe's InferBlobShape); DataError if the crop does not fit or the
        mean does not match."""
        C, H, W = shape
        if self.crop and (H < self.crop or W < self.crop):
            raise DataError(f"{self._where(where)}crop_size {self.crop} is "
                            f"larger than the image ({H} x {W})")
        if self.mean is not None and self.mean.shape != tuple(shape):
            raise DataError(f"{self._where(where)}mean_file "
                            f"{self.param.mean_file} has shape (C, H, W) = "
                            f"{self.mean.shape} but the data is {tuple(shape)}")
        if self.mean_values is not None and len(self.mean_values) not in (1, C):
            raise DataError(f"{self._where(where)}specify either 1 mean_value "
                            f"or as many as channels ({C}), got "
                            f"{len(self.mean_values)}")
        if self.crop:
            return (C, self.crop, self.crop)
        return (C, H, W)

    def draw(self, n, shape):
        """The random choices for `n` items: (mirror, h_off, w_off) arrays."""
        _, H, W = shape
        mirror = np.zeros(n, bool)
        if self.mirror:
            mirror = self.rng.integers(2, size=n).astype(bool)
        if self.crop and self.phase == 0:
            h_off = self.rng.integers(H - self.crop + 1, size=n)
            w_off = self.rng.integers(W - self.crop + 1, size=n)
        else:
            h_off = np.full(n, (H - self.crop) // 2 if self.crop else 0)
            w_off = np.full(n, (W - self.crop) // 2 if self.crop else 0)
        return mirror, h_off, w_off

    def apply(self, x, where="", draws=None):
        """Transform a batch `x` (N, C, H, W) of uint8 or float pixels.

        Args:
            draws: (mirror, h_off, w_off) to use instead of new random draws.

        Returns:
            (N, C, h, w) array of `self.dtype`.
        """
        x = np.asarray(x)
        N = x.shape[0]
        C, h, w = self.check(x.shape[1:], where)
        mirror, h_off, w_off = draws if draws is not None else \
            self.draw(N, x.shape[1:])
        mean = self.mean
        if self.crop or mirror.any():
            ar_h, ar_w = np.arange(h), np.arange(w)
            rows = (h_off[:, None] + ar_h)[:, None, :, None]
            cols = w_off[:, None] + np.where(mirror[:, None], w - 1 - ar_w, ar_w)
            cols = cols[:, None, None, :]
            ch = np.arange(C)[None, :, None, None]
            out = x[np.arange(N)[:, None, None, None], ch, rows, cols]
            out = out.astype(self.dtype)
            if mean is not None:
                mean = mean[ch, rows, cols]      # cropped like the data
        else:
            out = x.astype(self.dtype)
        if mean is not None:
            out -= mean
        elif self.mean_values is not None:
            out -= self.mean_values.reshape(-1, 1, 1) if \
                len(self.mean_values) == C else self.mean_values[0]
        if self.scale != 1:
            out *= self.scale
        return out

    def get_state(self):
        return None if self.rng is None else self.rng.bit_generator.state

    def set_state(self, state):
        if self.rng is not None and state is not None:
            self.rng.bit_generator.state = state


def resize(img, height, width, method="bilinear"):
    """Resize a (C, H, W) image to (C, height, width).

    `bilinear` follows OpenCV's INTER_LINEAR (cv::resize's default, used by
    Caffe's ReadImageToCVMat): pixel centers aligned, source coordinate
    (d + 0.5) * H / height - 0.5 clamped to the image, no antialiasing;
    uint8 results are rounded to nearest.  `nearest` follows INTER_NEAREST
    (source index floor(d * H / height)).

    NOTE(caffe): OpenCV interpolates uint8 in 11-bit fixed point, so a
    pixel may differ from Caffe's by 1.
    """
    img = np.asarray(img)
    _, H, W = img.shape
    if (H, W) == (height, width):
        return img.copy()
    if method == "nearest":
        ys = np.minimum((np.arange(height) * (H / height)).astype(np.int64), H - 1)
        xs = np.minimum((np.arange(width) * (W / width)).astype(np.int64), W - 1)
        return img[:, ys][:, :, xs]
    if method != "bilinear":
        raise DataError(f"unknown resize method {method!r} (bilinear or "
                        "nearest)")

    def axis(n_out, n_in):
        f = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
        i0 = np.minimum(np.floor(f).astype(np.int64), n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, (f - i0).clip(0, 1)
    y0, y1, dy = axis(height, H)
    x0, x1, dx = axis(width, W)
    a = img.astype(np.float64)
    top = a[:, y0][:, :, x0] * (1 - dx) + a[:, y0][:, :, x1] * dx
    bot = a[:, y1][:, :, x0] * (1 - dx) + a[:, y1][:, :, x1] * dx
    out = top * (1 - dy)[:, None] + bot * dy[:, None]
    if img.dtype == np.uint8:
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return out.astype(img.dtype)
