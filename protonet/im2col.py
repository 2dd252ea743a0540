"""im2col / col2im: the column kernels behind Convolution, Deconvolution and
Im2col.

Mirrors: src/caffe/util/im2col.cpp (``im2col_cpu``, ``col2im_cpu`` and their
``_nd`` versions).

Layout (Caffe's): for one image of shape (C, *S) with kernel k, the column
matrix has shape (C * prod(k), prod(out)); row ``(c, i_1, ..., i_d)`` (C-order)
holds the input value at spatial position ``o_j * stride_j - pad_j +
i_j * dilation_j`` for every output position ``o`` (again C-order), zero where
that position falls in the padding.  Output size rounds DOWN:
``out = (in + 2*pad - (dilation*(k-1)+1)) // stride + 1``.

Both functions work on a batch (nb, C, *S) at once, so one call feeds one
GEMM over a chunk of images:

* ``im2col`` copies a stride-tricks window view of the (zero-padded) input
  into a preallocated column buffer: one vectorised copy for any number of
  spatial axes.  The same path serves 2-D and N-D: measured here, a 2-D
  special case (one slice copy per kernel offset) was no faster (0.9-1.8x
  slower on batches of more than one image).
* ``col2im`` is its adjoint.  When windows do not overlap (stride >= dilated
  kernel extent on every axis) it is a single strided assignment; otherwise it
  sums one strided slice per kernel offset (prod(k) vectorised adds over the
  whole chunk), which is much faster than ``np.add.at``.
"""

import numpy as np
from numpy.lib.stride_tricks import as_strided


def conv_out_shape(in_shape, kernel, stride, pad, dilation):
    """Convolution output size per spatial axis (rounds down).

    Returns a tuple; an entry is < 1 when the dilated kernel is larger than
    the padded input (callers turn that into an error).
    """
    return tuple((i + 2 * p - (d * (k - 1) + 1)) // s + 1
                 for i, k, s, p, d in zip(in_shape, kernel, stride, pad,
                                          dilation))


def deconv_out_shape(in_shape, kernel, stride, pad, dilation):
    """Deconvolution output size: ``stride*(in-1) + dilation*(k-1)+1 - 2*pad``."""
    return tuple(s * (i - 1) + d * (k - 1) + 1 - 2 * p
                 for i, k, s, p, d in zip(in_shape, kernel, stride, pad,
                                          dilation))


def _window_view(xp, kernel, stride, dilation, out_shape):
    """A read/write view (nb, C, *kernel, *out) of a padded array ``xp``."""
    lead = xp.shape[:2]
    sp = xp.strides[2:]
    shape = lead + tuple(kernel) + tuple(out_shape)
    strides = xp.strides[:2] + tuple(d * s for d, s in zip(dilation, sp)) \
        + tuple(t * s for t, s in zip(stride, sp))
    return as_strided(xp, shape, strides, writeable=True)


def _interior(buf, pad, in_shape):
    return buf[(slice(None), slice(None))
               + tuple(slice(p, p + i) for p, i in zip(pad, in_shape))]


def pad_into(x, pad, buf):
    """Copy ``x`` (nb, C, *S) into the interior of ``buf[:nb]`` (whose border
    is zero) and return that padded view; ``x`` itself when no pad."""
    if not any(pad):
        return x
    xp = buf[:x.shape[0]]
    _interior(xp, pad, x.shape[2:])[...] = x
    return xp


def im2col(x, kernel, stride, pad, dilation, out_shape, cols, pad_buf=None):
    """Write the columns of a batch into ``cols``.

    Args:
        x: (nb, C, *S) input.
        kernel, stride, pad, dilation: one int per spatial axis.
        out_shape: the conv output size per spatial axis (``conv_out_shape``).
        cols: output buffer with nb * C * prod(kernel) * prod(out_shape)
            elements (any shape; e.g. (nb, C*prod(k), prod(out))).
        pad_buf: when any pad > 0, a buffer (>= nb, C, *(S + 2*pad)) whose
            border is zero (only its interior is written here).

    Returns:
        ``cols`` reshaped to (nb, C * prod(kernel), prod(out_shape)).
    """
    nb, C = x.shape[:2]
    if any(pad):
        xp = pad_buf[:nb]
        _interior(xp, pad, x.shape[2:])[...] = x
    else:
        xp = x
    view = _window_view(xp, kernel, stride, dilation, out_shape)
    np.copyto(cols.reshape(view.shape), view)
    return cols.reshape(nb, C * int(np.prod(kernel)), int(np.prod(out_shape)))


def im2col_side_by_side(x, kernel, stride, pad, dilation, out_shape, cols,
                        pad_buf=None):
    """``im2col`` with the images inner: returns (C * prod(kernel), nb *
    prod(out_shape)), row ``(c, *i)`` holding every image's columns one
    after the other (one GEMM then sums over the positions of the whole
    batch).  Same arguments as ``im2col``."""
    nb, C = x.shape[:2]
    xp = pad_into(x, pad, pad_buf)
    view = _window_view(xp, kernel, stride, dilation, out_shape)
    dst = cols.reshape((C,) + tuple(kernel) + (nb,) + tuple(out_shape))
    np.copyto(dst, np.moveaxis(view, 0, len(kernel) + 1))
    return dst.reshape(C * int(np.prod(kernel)), -1)


def _overlaps(kernel, stride, dilation):
    # Windows of one channel touch a cell twice when the kernel taps overlap
    # across output positions (stride < extent) or within a window (never:
    # taps are distinct for dilation >= 1).
    return any(s < d * (k - 1) + 1 and k > 1
               for k, s, d in zip(kernel, stride, dilation))


def col2im(cols, kernel, stride, pad, dilation, out_shape, dx, pad_buf=None):
    """Sum columns back into images: the adjoint of ``im2col``; assigns ``dx``.

    Args:
        cols: (nb, C*prod(kernel), prod(out_shape)) (or any shape of that size).
        dx: (nb, C, *S) output, overwritten.
        pad_buf: when any pad > 0, a scratch buffer (>= nb, C, *(S + 2*pad)).
    """
    nb, C = dx.shape[:2]
    nd = len(kernel)
    if any(pad):
        buf = pad_buf[:nb]
    else:
        buf = dx
    view = _window_view(buf, kernel, stride, dilation, out_shape)
    src = cols.reshape(view.shape)
    buf[...] = 0  # cells no window reaches get no gradient
    if not _overlaps(kernel, stride, dilation):
        view[...] = src
    else:
        # One vectorised add per kernel offset, over the whole chunk.
        for offset in np.ndindex(*kernel):
            sl = (slice(None), slice(None)) + tuple(
                slice(i * d, i * d + (o - 1) * s + 1, s)
                for i, d, s, o in zip(offset, dilation, stride, out_shape))
            buf[sl] += src[(slice(None), slice(None)) + offset
                           + (slice(None),) * nd]
    if buf is not dx:
        dx[...] = _interior(buf, pad, dx.shape[2:])
    return dx


def im2col_nhwc(x, kernel, stride, pad, dilation, out_shape, cols, pad_buf):
    """Transposed columns, channels fastest: one row per output position.

    ``cols[(n, *o), (*i, c)] = x_pad[n, c, o*stride - pad + i*dilation]``, a
    (nb * prod(out_shape), prod(kernel) * C) matrix.  On small images with few
    output channels ``cols @ W'`` is a better GEMM shape than ``W @ cols``
    (CIFAR-10 conv2: 139 vs 113 GFLOP/s), and the copy reads runs of
    kernel_w * C contiguous values from the channels-last padded input.

    Args:
        x: (nb, C, *S) input.
        cols: output buffer with nb * C * prod(kernel) * prod(out_shape)
            elements.
        pad_buf: (>= nb, *(S + 2*pad), C) buffer whose border is zero.
    """
    nb, C = x.shape[:2]
    xp = pad_buf[:nb]
    xp[(slice(None),) + tuple(slice(p, p + i) for p, i in
                              zip(pad, x.shape[2:]))] = np.moveaxis(x, 1, -1)
    st = xp.strides
    view = as_strided(
        xp, (nb,) + tuple(out_shape) + tuple(kernel) + (C,),
        (st[0],) + tuple(s * t for s, t in zip(stride, st[1:-1]))
        + tuple(d * t for d, t in zip(dilation, st[1:-1])) + (st[-1],))
    np.copyto(cols.reshape(view.shape), view)
    return cols.reshape(nb * int(np.prod(out_shape)), -1)
