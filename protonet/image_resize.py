"""pycaffe's `caffe.io.resize_image`, with or without scikit-image.

pycaffe resizes 1- and 3-channel images with scikit-image's
`skimage.transform.resize(im_std, new_dims, order=interp_order)` on the image
scaled to [0, 1], and any other channel count with
`scipy.ndimage.zoom(im, (sy, sx, 1), order=interp_order)`.  protonet calls
exactly those when the packages are installed (`pip install protonet[pycaffe]`),
so results are pycaffe's to the bit.  Without them it computes the same
thing in NumPy (interpolation orders 0 and 1, which is what pycaffe's
Classifier, Detector and Transformer use):

* scikit-image's resize (its defaults since 0.19): when any axis shrinks,
  a Gaussian blur of standard deviation (factor - 1) / 2 along each
  shrinking axis, truncated at 4 sigma; then sampling at the pixel centres,
  source coordinate (i + 0.5) * old / new - 0.5, with the image mirrored
  about its edge pixels (numpy's 'reflect' padding) where a coordinate leaves
  it; then the result clipped to the input's range.
* ndimage's zoom (its defaults): corner-aligned sampling, source coordinate
  i * (old - 1) / (new - 1).

Orders 2-5 are splines; without scikit-image they need SciPy.

Mirrors: python/caffe/io.py (resize_image).
"""

import numpy as np

from .errors import UnsupportedError


def resize_image(im, new_dims, interp_order=1):
    """Resize an H x W x K image to `new_dims` (height, width); float32.

    A constant 1- or 3-channel image stays constant (pycaffe's special case).
    """
    im = np.asarray(im)
    if im.ndim != 3:
        raise ValueError(f"resize_image expects an H x W x K array, got shape "
                         f"{im.shape}")
    new_dims = tuple(int(d) for d in new_dims)
    if len(new_dims) != 2 or min(new_dims) <= 0:
        raise ValueError(f"new_dims must be (height, width) > 0, got {new_dims}")
    if interp_order not in range(6):
        raise ValueError(f"interp_order must be 0..5, got {interp_order}")
    if im.shape[-1] in (1, 3):
        im_min, im_max = im.min(), im.max()
        if not im_max > im_min:
            return np.full(new_dims + (im.shape[-1],), im_min, np.float32)
        im_std = (im - im_min) / (im_max - im_min)
        resized = skimage_resize(im_std, new_dims, interp_order)
        resized = resized * (im_max - im_min) + im_min
    else:
        scale = tuple(np.array(new_dims, dtype=float) / np.array(im.shape[:2]))
        resized = ndimage_zoom(im, scale + (1,), interp_order)
    return resized.astype(np.float32)


def skimage_resize(image, new_dims, order):
    """`skimage.transform.resize(image, new_dims, order=order)`, computed
    by scikit-image when installed, else here."""
    try:
        from skimage.transform import resize
    except ImportError:
        return _resize_like_skimage(image, new_dims, order)
    return resize(image, new_dims, order=order)


def ndimage_zoom(image, factors, order):
    """`scipy.ndimage.zoom(image, factors, order=order)` with SciPy's
    defaults, computed by SciPy when installed, else here (orders 0, 1)."""
    try:
        from scipy.ndimage import zoom
    except ImportError:
        pass
    else:
        return zoom(image, factors, order=order)
    _need_scipy(order, "images with 2 or more than 3 channels")
    out = image.astype(np.float64)
    for axis, factor in enumerate(factors[:2]):
        old = out.shape[axis]
        new = int(round(old * factor))
        pos = np.arange(new) * ((old - 1) / (new - 1) if new > 1 else 1.0)
        out = _sample(out, axis, pos, order)
    return out.astype(image.dtype) if image.dtype.kind == "f" else out


def _need_scipy(order, what):
    if order > 1:
        raise UnsupportedError(None, f"resize_image with interp_order={order}"
                               f" needs scikit-image or SciPy for {what} "
                               "(pip install protonet[pycaffe]); orders 0 and "
                               "1 work without them")


def _mirror(pos, n):
    """Coordinates folded back into [0, n - 1] by mirroring about the edge
    pixels (ndimage's 'mirror' mode, numpy's 'reflect' padding)."""
    if n == 1:
        return np.zeros_like(pos)
    period = 2 * (n - 1)
    pos = np.abs(pos) % period
    return np.where(pos > n - 1, period - pos, pos)


def _sample(im, axis, pos, order):
    """`im` sampled along `axis` at coordinates `pos` (already inside the
    image): nearest for order 0, linear for order 1."""
    n = im.shape[axis]
    if order == 0:
        # ndimage rounds half-way coordinates up.
        return np.take(im, np.clip(np.floor(pos + 0.5).astype(np.int64),
                                   0, n - 1), axis=axis)
    lo = np.clip(np.floor(pos).astype(np.int64), 0, n - 1)
    hi = np.minimum(lo + 1, n - 1)
    shape = [1] * im.ndim
    shape[axis] = len(pos)
    frac = (pos - lo).reshape(shape)
    return np.take(im, lo, axis=axis) * (1 - frac) + \
        np.take(im, hi, axis=axis) * frac


def _gaussian_blur(im, axis, sigma):
    """ndimage.gaussian_filter1d(im, sigma, axis, mode='mirror',
    truncate=4.0)."""
    radius = int(4.0 * sigma + 0.5)
    taps = np.arange(-radius, radius + 1)
    weights = np.exp(-0.5 * (taps / sigma) ** 2)
    weights /= weights.sum()
    n = im.shape[axis]
    out = np.zeros_like(im)
    for tap, weight in zip(taps, weights):
        idx = _mirror(np.arange(n) + tap, n).astype(np.int64)
        out += weight * np.take(im, idx, axis=axis)
    return out


def _resize_like_skimage(image, new_dims, order):
    """skimage.transform.resize(image, new_dims, order) for float images,
    orders 0 and 1, in NumPy (orders 2-5 through SciPy's ndimage, as
    scikit-image does)."""
    old_dims = image.shape[:2]
    factors = np.divide(old_dims, new_dims)
    shrink = any(n < o for n, o in zip(new_dims, old_dims))
    if order > 1:
        return _resize_with_ndimage(image, new_dims, order, factors, shrink)
    out = image.astype(np.float64)
    if shrink:
        for axis, factor in enumerate(factors):
            sigma = max(0.0, (factor - 1) / 2)
            if sigma > 0:
                out = _gaussian_blur(out, axis, sigma)
    for axis, (old, new) in enumerate(zip(old_dims, new_dims)):
        pos = (np.arange(new) + 0.5) * (old / new) - 0.5
        out = _sample(out, axis, _mirror(pos, old), order)
    np.clip(out, image.min(), image.max(), out=out)
    return out.astype(image.dtype) if image.dtype.kind == "f" else out


def _resize_with_ndimage(image, new_dims, order, factors, shrink):
    try:
        from scipy.ndimage import gaussian_filter, zoom
    except ImportError:
        raise UnsupportedError(None, f"resize_image with interp_order={order}"
                               " needs scikit-image or SciPy (pip install "
                               "protonet[pycaffe]); orders 0 and 1 work "
                               "without them") from None
    out = image.astype(np.float64)
    if shrink:
        sigma = tuple(np.maximum(0, (factors - 1) / 2)) + (0.0,)
        out = gaussian_filter(out, sigma, mode="mirror")
    out = zoom(out, tuple(1 / factors) + (1.0,), order=order, mode="mirror",
               grid_mode=True)
    np.clip(out, image.min(), image.max(), out=out)
    return out.astype(image.dtype) if image.dtype.kind == "f" else out
