"""WindowData: R-CNN fine-tuning batches of warped object / background windows.

Mirrors: src/caffe/layers/window_data_layer.cpp (DataLayerSetUp, load_batch)
and include/caffe/layers/window_data_layer.hpp.

The window file lists, for every image::

    # image_index
    image_path
    channels
    height
    width
    num_windows
    class_index overlap x1 y1 x2 y2     (num_windows lines, inclusive pixels)

Tokens are whitespace separated (Caffe reads them with `>>`).  A window whose
overlap >= fg_threshold is foreground (its class must be > 0); one whose
overlap < bg_threshold is background (label forced to 0); others are dropped.

Each batch holds `batch_size - int(batch_size * fg_fraction)` background
windows followed by the foreground ones.  Per window, in that order, one
32-bit draw picks the window (`draw % len(windows)`) and, with mirror, a
second draw decides the flip (`draw % 2`).  The draws come from an MT19937
generator seeded with a 32-bit value taken from protonet's generator; MT19937
with that seed is Caffe's `boost::mt19937` (prefetch_rng_), so for the same
seed protonet picks the same windows, in the same order, with the same flips
as Caffe.  What differs: Caffe takes that seed from its global RNG
(`caffe_rng_rand()`), protonet from its own NumPy generator, so
`set_random_seed(s)` yields another (but fixed) seed than Caffe's
`Caffe::set_random_seed(s)`.
"""

import math
import os

import numpy as np

from .. import caffelog
from .. import db as _db
from .. import rng as _rng
from ..errors import DataError, LayerError
from ..layer import register
from ..transform import resize
from .db_data import _PrefetchingDataLayer, _check_batch_size


def _cround(x):
    """C's round(): halves away from zero (NumPy's round is half-to-even)."""
    return int(math.copysign(math.floor(abs(x) + 0.5), x))


class _Window:
    __slots__ = ("image", "label", "overlap", "x1", "y1", "x2", "y2", "line")

    def __init__(self, image, label, overlap, box, line):
        self.image, self.label, self.overlap = image, label, overlap
        self.x1, self.y1, self.x2, self.y2 = box
        self.line = line


def _tokens(path, who):
    try:
        with open(path) as f:
            text = f.read()
    except OSError as e:
        raise DataError(f"{who}: cannot open window file {path}: "
                        f"{e.strerror}") from None
    for n, line in enumerate(text.splitlines(), 1):
        for tok in line.split():
            yield tok, n


def read_window_file(path, root_folder="", who="WindowData"):
    """Parse a window file.

    Returns:
        (images, windows): images a list of (path, (channels, height, width),
        line); windows a list of `_Window` (all of them, unclassified).

    Raises:
        DataError: naming the file and line of the first malformed token, a
            truncated record or an out-of-order image index.
    """
    toks = _tokens(path, who)
    last = [0]

    def take(what, conv=str):
        try:
            tok, n = next(toks)
        except StopIteration:
            raise DataError(f"{who}: {path}:{last[0]}: file ends where "
                            f"{what} was expected") from None
        last[0] = n
        try:
            return conv(tok), n
        except ValueError:
            kind = {int: "an integer", float: "a number"}.get(conv, "")
            raise DataError(f"{who}: {path}:{n}: expected {what} ({kind}), "
                            f"found {tok!r}") from None

    images, windows = [], []
    for tok, n in toks:
        last[0] = n
        if tok != "#":
            raise DataError(f"{who}: {path}:{n}: expected '#' starting an "
                            f"image record, found {tok!r}")
        index, n = take("the image index", int)
        if index != len(images):
            raise DataError(f"{who}: {path}:{n}: image index {index} out of "
                            f"order (expected {len(images)}; Caffe indexes "
                            "images by their position in the file)")
        name, n = take("the image path")
        size = tuple(take(f"image {field}", int)[0]
                     for field in ("channels", "height", "width"))
        images.append((root_folder + name, size, n))
        count, n = take("num_windows", int)
        if count < 0:
            raise DataError(f"{who}: {path}:{n}: num_windows must be >= 0, "
                            f"got {count}")
        for _ in range(count):
            label, n = take("a window's class_index", int)
            overlap, _ = take("a window's overlap", float)
            box = tuple(take(f"window {c}", int)[0]
                        for c in ("x1", "y1", "x2", "y2"))
            if box[2] < box[0] or box[3] < box[1]:
                raise DataError(f"{who}: {path}:{n}: window (x1 y1 x2 y2) = "
                                f"{box} is empty (need x2 >= x1, y2 >= y1)")
            windows.append(_Window(index, label, overlap, box, n))
    if not images:
        raise DataError(f"{who}: window file {path} is empty")
    return images, windows


class _WindowReader:
    """Samples, crops, warps and normalises batches of windows."""

    def __init__(self, who, source, p, transformer, batch_size, seed, dtype):
        self.who, self.source = who, source
        self.batch_size, self.dtype = batch_size, dtype
        self.crop = int(transformer.crop)
        self.mirror = transformer.mirror
        self.context_pad = int(p.context_pad)
        self.square = p.crop_mode == "square"
        self.scale = np.float32(p.scale) * np.float32(transformer.param.scale)
        self.mean, self.mean_values = transformer.mean, transformer.mean_values
        self.images, windows = read_window_file(source, p.root_folder, who)
        self.fg, self.bg = [], []
        hist = {0: 0}
        for w in windows:
            if w.overlap >= p.fg_threshold:
                if w.label <= 0:
                    raise DataError(f"{who}: {source}:{w.line}: foreground "
                                    f"window (overlap {w.overlap} >= "
                                    f"fg_threshold {p.fg_threshold}) needs a "
                                    f"class_index > 0, got {w.label}")
                self.fg.append(w)
                hist[w.label] = hist.get(w.label, 0) + 1
            elif w.overlap < p.bg_threshold:
                w.label, w.overlap = 0, 0.0
                self.bg.append(w)
                hist[0] += 1
        self.num_fg = int(np.float32(batch_size) * np.float32(p.fg_fraction))
        for n, kind, pool, field in (
                (batch_size - self.num_fg, "background", self.bg,
                 f"overlap < bg_threshold {p.bg_threshold}"),
                (self.num_fg, "foreground", self.fg,
                 f"overlap >= fg_threshold {p.fg_threshold}")):
            if n and not pool:
                raise DataError(f"{who}: {source} has no {kind} window "
                                f"({field}) but each batch samples {n}")
        self.channels = self.images[-1][1][0]
        if self.channels != 3:
            raise DataError(f"{who}: {source}:{self.images[-1][2]}: images "
                            "are decoded in color (3 channels) as Caffe does, "
                            f"but the window file says {self.channels}")
        self.cache = None
        if p.cache_images:
            self.cache = [self._read_bytes(i) for i in range(len(self.images))]
        else:
            for i in range(len(self.images)):
                self._check_exists(i)
        self._log(p, hist)
        # NOTE(caffe): MT19937 seeded with a 32-bit value is boost::mt19937.
        self.rng = np.random.RandomState(seed)

    def _log(self, p, hist):
        """Caffe's setup log lines."""
        src = "window_data_layer.cpp:"
        caffelog.info(
            f"Window data layer:\n  foreground (object) overlap threshold: "
            f"{p.fg_threshold:g}\n  background (non-object) overlap "
            f"threshold: {p.bg_threshold:g}\n  foreground sampling "
            f"fraction: {p.fg_fraction:g}\n  cache_images: "
            f"{int(p.cache_images)}\n  root_folder: {p.root_folder}",
            src + "52")
        caffelog.info(f"Number of images: {len(self.images)}", src + "156")
        for label in sorted(hist):
            caffelog.info(f"class {label} has {hist[label]} samples",
                          src + "160")
        caffelog.info(f"Amount of context padding: {p.context_pad}",
                      src + "164")
        caffelog.info(f"Crop mode: {p.crop_mode}", src + "167")

    def _where(self, i):
        path, _, line = self.images[i]
        return f"{self.source}:{line}: image {path}"

    def _check_exists(self, i):
        if not os.path.isfile(self.images[i][0]):
            raise DataError(f"{self.who}: {self._where(i)}: no such file")

    def _read_bytes(self, i):
        self._check_exists(i)
        with open(self.images[i][0], "rb") as f:
            return f.read()

    def _image(self, i):
        if self.cache is not None:
            src = self.cache[i]
        else:
            self._check_exists(i)   # the file may vanish after setup
            src = self.images[i][0]
        return _db.decode_image(src, True,
                                where=f"{self.who}: {self._where(i)}")

    def first_shape(self):
        return (self.channels, self.crop, self.crop)

    def _draws(self):
        per = 2 if self.mirror else 1
        raw = self.rng.randint(0, 2 ** 32, size=self.batch_size * per,
                               dtype=np.uint32).astype(np.int64)
        picks = raw[::per]
        flips = raw[1::2] % 2 == 1 if self.mirror else \
            np.zeros(self.batch_size, bool)
        return picks, flips

    def next_batch(self):
        out = np.zeros((self.batch_size, self.channels, self.crop, self.crop),
                       np.float32)
        labels = np.empty(self.batch_size, self.dtype)
        picks, flips = self._draws()
        n_bg = self.batch_size - self.num_fg
        for item in range(self.batch_size):
            pool = self.bg if item < n_bg else self.fg
            w = pool[int(picks[item]) % len(pool)]
            self._warp_into(out[item], w, bool(flips[item]))
            labels[item] = w.label
        return out.astype(self.dtype, copy=False), labels, self.get_state()

    def _geometry(self, w, rows, cols):
        """Caffe's clipped source box, warped size and padding of a window."""
        x1, y1, x2, y2 = w.x1, w.y1, w.x2, w.y2
        crop = self.crop
        size = (crop, crop)
        pads = (0, 0, 0, 0)
        if self.context_pad > 0 or self.square:
            f32 = np.float32
            context_scale = f32(crop) / f32(crop - 2 * self.context_pad)
            half_h = f32((y2 - y1 + 1) / 2.0)
            half_w = f32((x2 - x1 + 1) / 2.0)
            cx, cy = f32(x1) + half_w, f32(y1) + half_h
            if self.square:
                half_h = half_w = max(half_h, half_w)
            x1 = _cround(float(cx - half_w * context_scale))
            x2 = _cround(float(cx + half_w * context_scale))
            y1 = _cround(float(cy - half_h * context_scale))
            y2 = _cround(float(cy + half_h * context_scale))
            unclipped_h, unclipped_w = y2 - y1 + 1, x2 - x1 + 1
            px1, py1 = max(0, -x1), max(0, -y1)
            px2, py2 = max(0, x2 - cols + 1), max(0, y2 - rows + 1)
            x1, x2, y1, y2 = x1 + px1, x2 - px2, y1 + py1, y2 - py2
            sx = f32(crop) / f32(unclipped_w)
            sy = f32(crop) / f32(unclipped_h)
            size = (_cround(float(f32(y2 - y1 + 1) * sy)),
                    _cround(float(f32(x2 - x1 + 1) * sx)))
            pads = tuple(_cround(float(f32(v) * s)) for v, s in
                         ((px1, sx), (px2, sx), (py1, sy), (py2, sy)))
        return (x1, y1, x2, y2), size, pads

    def _warp_into(self, dst, w, flip):
        img = self._image(w.image)
        _, rows, cols = img.shape
        if not self.context_pad and not self.square and (
                w.x1 < 0 or w.y1 < 0 or w.x2 >= cols or w.y2 >= rows):
            raise DataError(f"{self.who}: {self.source}:{w.line}: window "
                            f"(x1 y1 x2 y2) = {(w.x1, w.y1, w.x2, w.y2)} "
                            f"lies outside image {self.images[w.image][0]} "
                            f"({cols} x {rows})")
        (x1, y1, x2, y2), (h, wd), (px1, px2, py1, _) = \
            self._geometry(w, rows, cols)
        crop = self.crop
        pad_h = py1
        # NOTE(caffe): a mirrored window mirrors its padding too.
        pad_w = px2 if flip else px1
        h, wd = min(h, crop - pad_h), min(wd, crop - pad_w)
        if h <= 0 or wd <= 0 or x2 < x1 or y2 < y1:
            raise DataError(f"{self.who}: {self.source}:{w.line}: window "
                            f"{(w.x1, w.y1, w.x2, w.y2)} leaves nothing of "
                            f"image {self.images[w.image][0]} ({cols} x "
                            f"{rows}) to warp")
        patch = resize(img[:, y1:y2 + 1, x1:x2 + 1], h, wd)
        if flip:
            patch = patch[:, :, ::-1]
        pix = patch.astype(np.float32)
        if self.mean is not None:
            off = (self.mean.shape[2] - crop) // 2
            pix = pix - self.mean[:, off + pad_h:off + pad_h + h,
                                  off + pad_w:off + pad_w + wd]
        elif self.mean_values is not None:
            mv = self.mean_values.astype(np.float32)
            pix = pix - (mv.reshape(-1, 1, 1) if len(mv) > 1 else mv[0])
        dst[:, pad_h:pad_h + h, pad_w:pad_w + wd] = pix * self.scale

    def get_state(self):
        state = self.rng.get_state(legacy=False)["state"]
        return {"key": state["key"].tolist(), "pos": int(state["pos"])}

    def set_state(self, state):
        key = np.asarray(state["key"], np.uint32)
        self.rng.set_state(("MT19937", key, int(state["pos"]), 0, 0.0))


@register("WindowData", v1="WINDOW_DATA")
class WindowDataLayer(_PrefetchingDataLayer):
    """Batches of warped windows for R-CNN fine-tuning (see module docstring).

    Tops: data (batch_size, 3, crop_size, crop_size), label (batch_size,).

    `window_data_param`: source (the window file), root_folder (prepended to
    every image path as is), batch_size, fg_threshold, bg_threshold,
    fg_fraction, context_pad (pixels of context kept around the window in
    the warped output), crop_mode ("warp" or "square": the box is made
    square around its center before the context is added), cache_images
    (read every image file once at setup; decoding still happens per batch,
    as in Caffe), scale (multiplies after the mean subtraction).
    `transform_param`: crop_size (required), mirror (random horizontal flip,
    in TRAIN and TEST), mean_file (its centre crop_size square, shifted by
    the padding, is subtracted) or mean_value.  `data_param.prefetch` sets
    the read-ahead.

    Each window is cut out of its image (clipped to the image once expanded
    by the context), resized with bilinear interpolation (OpenCV's
    INTER_LINEAR) to its share of crop_size x crop_size, and written at its
    padding offset into a zero batch; only the written pixels get the mean
    subtracted and the scale applied, as in Caffe.

    NOTE(caffe): Caffe reads `scale` from window_data_param only.
    protonet's upgrade moves window_data_param.scale (like mean_file,
    crop_size and mirror) into transform_param for every net, so the scale
    applied is window_data_param.scale * transform_param.scale.  It differs
    from Caffe only for a net that sets transform_param.scale on a
    WindowData layer, which Caffe ignores.

    Errors (DataError): a malformed window file (file and line), a missing or
    undecodable image (window file line and path, found at setup), a window
    outside its image, no foreground / background windows to sample.

    Mirrors: src/caffe/layers/window_data_layer.cpp.
    """

    exact_num_top = 2

    def make_reader(self):
        p = self.param.window_data_param
        tp = self.param.transform_param
        who = f"WindowData layer '{self.name}'"
        self.batch_size = _check_batch_size(self, p.batch_size,
                                            "window_data_param")
        if not p.source:
            raise LayerError(self, "window_data_param.source is required")
        if self.transformer.crop <= 0:
            raise LayerError(self, "transform_param.crop_size must be > 0 "
                             "(the size windows are warped to), got "
                             f"{self.transformer.crop}")
        if not 0 <= p.fg_fraction <= 1:
            raise LayerError(self, "window_data_param.fg_fraction must be in "
                             f"[0, 1], got {p.fg_fraction:g}")
        if p.crop_mode not in ("warp", "square"):
            raise LayerError(self, "window_data_param.crop_mode must be "
                             f"'warp' or 'square', got {p.crop_mode!r}")
        if 2 * p.context_pad >= self.transformer.crop:
            raise LayerError(self, f"context_pad {p.context_pad} leaves no "
                             f"room in crop_size {self.transformer.crop}")
        mean = self.transformer.mean
        if mean is not None:
            crop = self.transformer.crop
            C, H, W = mean.shape
            off = (W - crop) // 2
            if C != 3 or W < crop or H < off + crop:
                raise DataError(f"{who}: mean_file {tp.mean_file} has shape "
                                f"(C, H, W) = {mean.shape}; need 3 channels "
                                f"and at least {crop} x {crop}")
        if self.transformer.mean_values is not None and \
                len(self.transformer.mean_values) not in (1, 3):
            raise LayerError(self, "specify either 1 mean_value or as many "
                             "as channels (3), got "
                             f"{len(self.transformer.mean_values)}")
        # NOTE(caffe): drawn after the transformer's seed, as InitRand runs
        # before DataLayerSetUp.
        seed = int(_rng.generator().integers(2 ** 32))
        return _WindowReader(who, p.source, p, self.transformer,
                             self.batch_size, seed, self.dtype)
