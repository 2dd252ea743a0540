"""How the convolution layers compute their three products.

The layers (protonet/layers/conv.py) hold Caffe's semantics: fields, shapes,
which blob is the image side.  This mixin holds how the products are
computed, chosen per shape at reshape (``_allocate``):

* ``_img_to_col``: col = W @ im2col(img)         (conv forward)
* ``_col_to_img``: img = col2im(W^T @ col)        (conv backward-data)
* ``_weight_grad``: dW += col @ im2col(img)^T     (conv backward-weight)

Each is im2col plus one (batched) GEMM per direction, over chunks of the
batch whose column buffer stays cache-sized (an image too large for it is
split into blocks of output rows).  Large images spread their chunks, or
one image's row blocks, over the cores (protonet/threads.py), each thread
running im2col and single-threaded GEMMs on its own part; small images keep
one thread and multi-threaded BLAS, with channels-last columns
(output-position-major GEMMs).  1x1 convolutions skip im2col: stride 1 and
many positions multiply the reshaped input directly, few positions (any
stride) run one GEMM per chunk on channel-major copies.  With stride 1 the
input gradient (Deconvolution's forward) is a correlation of the padded top
diff with the flipped kernel (im2col + GEMM): no col2im, whose prod(kernel)
strided adds cost as much as the GEMM on small images.  Groups are one
``np.matmul`` over (G, ...) stacks.  3x3 stride-1 convolutions with many
channels per group run their forward and their input gradient as Winograd
F(4x4, 3x3) (protonet/winograd.py); their weight gradient keeps the GEMM
path.  The weight gradient of small images puts several images' columns
side by side (one GEMM per group and chunk).
"""

import threading
from functools import partial

import numpy as np

from .. import threads
from ..im2col import (col2im, im2col, im2col_nhwc, im2col_side_by_side,
                      pad_into)
from ..winograd import Winograd3x3

# Column-buffer budget per chunk of the batch (bytes).  Measured here: 4 MiB
# beats both 1 MiB and one whole-batch buffer (5-15% on CIFAR-sized images).
COL_BUFFER_BYTES = 4 << 20
# Stride-1 col -> img runs as a correlation (im2col + GEMM) instead of GEMM +
# col2im when its column matrix is at most this many times col2im's.
CORR_MAX_RATIO = 2.0
# Channels-last columns for small images when the image side has at least
# this many channels (fewer make the copy's contiguous runs too short:
# CIFAR conv1, 3 channels, is 30% slower that way).
NHWC_MIN_CHANNELS = 16
# Convolution forward and input gradient by Winograd F(4x4, 3x3) (3x3,
# stride 1, no dilation) when both channel counts per group and the number
# of 4x4 output tiles reach these (measured: 1.2-2.6x the GEMM path on VGG-16's and GoogLeNet's
# 3x3 layers, batch 1 included; slower below 64 channels or on 7x7 images).
WINOGRAD_MIN_CHANNELS = 64
# 1x1 kernels without padding (any stride) whose output has fewer positions
# per image than this run as one GEMM per chunk on channel-major copies,
# (C, nb * P): per-image GEMMs with P = 49 or 196 (ResNet-50's res5/res4)
# reach a third of sgemm's rate, and a strided 1x1 through im2col a fifth.
# Stride 1 multiplies each image in place (no copies) from fewer positions
# on: measured with the batch split (one core's BLAS a clone), GoogLeNet's
# 1x1 layers on 28x28 and 14x14 images are faster so (inference, batch 16:
# 404-412 against 425-435 ms; batch 1 61 against 64 ms), ResNet-50 even.
CHANNEL_MAJOR_MAX_POSITIONS = 1024
CHANNEL_MAJOR_MAX_POSITIONS_STRIDE_1 = 128
# Per-image column bytes from which the batch's chunks (or an image's row
# blocks) are spread over threads, each with single-threaded BLAS
# (measured, 2 cores: CaffeNet training step 1150 -> 890 ms; CIFAR-10
# quick, 0.2-0.8 MB per image, was 1.35x slower that way).
PARALLEL_MIN_BYTES = 1 << 20
WINOGRAD_MIN_TILES = 16
# The weight gradient of small images (GEMM path, whole images per column
# block) puts the columns of several images side by side, (G, Kg, nb * P),
# so that one GEMM sums over at least this many output positions and writes
# its (Mg, Kg) product once per chunk (per-image GEMMs over CaffeNet conv4's
# 169 positions cost 18.7 ms for 8 images, 4 side by side 15.0), in at most
# WGRAD_BUFFER_BYTES of columns.
WGRAD_MIN_COLUMNS = 512
WGRAD_BUFFER_BYTES = 16 << 20

# A weight gradient of at least this size that is also larger than one
# image's columns (FCN-8s fc6: 411 MB against 25 MB) is computed from whole
# images' columns: in row blocks every GEMM would write all of it again and
# each thread would keep a partial sum of it.  Smaller ones keep the row
# blocks, which the benchmarks tuned (CaffeNet conv3-5 are larger than their
# columns but only 1-4 MB).
WGRAD_WHOLE_COLUMNS_BYTES = 32 << 20
_SCRATCH = threading.local()


def _scratch(size, dtype):
    """A flat column buffer of `size` elements shared by every convolution
    layer of this thread.

    Layers run one at a time and keep nothing in it between calls, so one
    buffer (the largest any layer needs) serves a whole net: no per-layer
    copies in training, no re-allocation per layer in memory="inference".
    """
    pool = _SCRATCH.__dict__.setdefault("pool", {})
    buf = pool.get(dtype)
    if buf is None or buf.size < size:
        pool[dtype] = None  # free the old one before allocating
        buf = pool[dtype] = np.empty(size, dtype)
    return buf[:size]


class ConvProducts:
    """The products of _BaseConvolutionLayer (see the module docstring):
    a mixin over its geometry (num, group, img/col channels and shapes,
    kernel, stride, pad, dilation, blobs, dtype, reverse)."""

    def _setup_winograd(self):
        """Winograd F(4x4, 3x3) for the forward and input gradient of
        3x3 stride-1 layers with many channels per group."""
        self._wino = self._wino_dx = None
        self._wino_caches = {}  # (m, adjoint) -> transformed-weight cache
        self._low_memory = False
        if (not self.reverse and self.kernel == (3, 3)
                and self.stride == (1, 1) and self.dilation == (1, 1)
                and min(self.channels, self.num_output) // self.group
                >= WINOGRAD_MIN_CHANNELS):
            self._wino = Winograd3x3(4, self.pad, self.dtype,
                                     groups=self.group,
                                     cache=self._wino_cache(4, False))
            # The input gradient is a 3x3 correlation too (padded by
            # 2 - pad): Winograd as well, with the flipped kernel.
            if max(self.pad) <= 2:
                self._wino_dx = Winograd3x3(
                    4, tuple(2 - q for q in self.pad), self.dtype,
                    adjoint=True, groups=self.group,
                    cache=self._wino_cache(4, True))

    def _allocate(self):
        key = (self.num, self.img_shape, self.col_shape)
        if key == self._shape:
            return
        self._shape = key
        K = self.img_channels * int(np.prod(self.kernel))
        P = int(np.prod(self.col_shape))
        per_image = K * P * self.dtype.itemsize
        # 1x1 convolutions need no column buffer: one GEMM over the batch.
        self.chunk = self.num if self.is_1x1 else \
            max(1, min(self.num, COL_BUFFER_BYTES // max(per_image, 1)))
        # An image whose columns exceed the budget is split into blocks of
        # output rows (first spatial axis), so the columns stay in cache
        # between im2col and the GEMM (VGG-16 conv1_2: 128 -> 91 ms).
        self._rows = self._block_rows(K, self.col_shape)
        # Large images: the work is split over threads (protonet/threads.py),
        # each running im2col and single-threaded GEMMs on its own chunks or
        # row blocks.  Small ones, and 1x1 convolutions (GEMMs alone, which
        # BLAS spreads better: ResNet-50 res2b_branch2a 7.8 vs 14 ms), keep
        # one thread and multi-threaded BLAS.
        self._parallel = not self.is_1x1 and per_image >= PARALLEL_MIN_BYTES
        # 1x1 (any stride, no pad) on few output positions: channel-major.
        self._cm = (all(k == 1 for k in self.kernel) and not any(self.pad)
                    and P < (CHANNEL_MAJOR_MAX_POSITIONS_STRIDE_1
                             if self.is_1x1 else CHANNEL_MAJOR_MAX_POSITIONS))
        if self._cm:
            self.chunk = max(1, min(self.num, COL_BUFFER_BYTES // max(
                (self.img_channels + self.col_channels) * P
                * self.dtype.itemsize, 1)))
            self._parallel = False
        self._bufs = {}
        # col -> img by correlation with the flipped kernel (stride 1 only):
        # pad the col side by extent-1-pad and im2col it; no col2im adds.
        # Worth it when its column matrix is not much larger than col2im's.
        full = tuple(d * (k - 1) - q for k, d, q in zip(
            self.kernel, self.dilation, self.pad))
        corr_rows = self.col_channels * int(np.prod(self.kernel))
        self._corr_ok = (not self.is_1x1 and all(s == 1 for s in self.stride)
                         and all(f >= 0 for f in full)
                         and corr_rows * int(np.prod(self.img_shape))
                         <= CORR_MAX_RATIO * K * P)
        self._corr_pad_width = full
        self._corr_rows = self._block_rows(corr_rows, self.img_shape)
        # Small images (several per chunk), no groups: channels-last columns
        # (im2col_nhwc) and output-position-major GEMMs.
        self._nhwc = (not self.reverse and not self.is_1x1 and self.group == 1
                      and self.chunk > 1
                      and self.img_channels >= NHWC_MIN_CHANNELS)
        self._wchunk = 0 if self.is_1x1 or self._cm or self._nhwc or \
            P >= WGRAD_MIN_COLUMNS or self._rows < self.col_shape[0] else \
            max(1, min(self.num, -(-WGRAD_MIN_COLUMNS // P),
                       WGRAD_BUFFER_BYTES // max(per_image, 1)))
        self._choose_winograd()
        self._use_wino = self._wino is not None and self.num * int(np.prod(
            [-(-o // 4) for o in self.col_shape])) >= WINOGRAD_MIN_TILES
        self._use_wino_dx = self._wino_dx is not None and self.num * int(
            np.prod([-(-i // 4) for i in self.img_shape])) \
            >= WINOGRAD_MIN_TILES

    def _block_rows(self, K, out_shape):
        """Output rows per column block: all of them when one chunk of
        images fits COL_BUFFER_BYTES, else as many as fit (at least 1)."""
        row = K * int(np.prod(out_shape[1:])) * self.dtype.itemsize
        if self.chunk > 1 or row * out_shape[0] <= COL_BUFFER_BYTES:
            return out_shape[0]
        return max(1, COL_BUFFER_BYTES // max(row, 1))

    def release_buffers(self):
        """Drop the column and padding buffers until the next reshape (the
        net's ``memory="inference"`` mode calls this after forward)."""
        self._bufs = {}
        for wino in (self._wino, self._wino_dx):
            if wino is not None:
                wino.release()
        self._shape = None

    def prefer_memory(self):
        """Trade speed for memory (``Net(memory="inference")`` calls this).

        Winograd's transformed weights (kept across forwards) may take at
        most what Caffe's column buffer for this layer and batch would
        (C * 9 * output positions * batch): F(4x4) when its 36/9 of the 3x3
        weights fit, else F(2x2) (16/9).  Measured, VGG-16 at batch 1 (its
        512-channel layers take F(2x2)): peak 935 -> 775 MiB above the
        interpreter; GoogLeNet keeps F(4x4) everywhere.
        """
        self._low_memory = True
        self._shape = None  # choose at the next reshape

    def _choose_winograd(self):
        """F(4x4) unless prefer_memory() and its weights outgrow Caffe's
        column buffer (see there)."""
        if self._wino is None:
            return
        m = 4
        if self._low_memory:
            cols = self.channels * 9 * int(np.prod(self.col_shape)) * self.num
            if 4 * self.blobs[0].count > cols:
                m = 2
        if self._wino.m != m:
            self._wino = Winograd3x3(m, self.pad, self.dtype,
                                     groups=self.group,
                                     cache=self._wino_cache(m, False))

    def _wino_cache(self, m, adjoint):
        return self._wino_caches.setdefault((m, adjoint), {})

    def share_cached_weights(self, layer):
        """Use `layer`'s Winograd-transformed weights (this is its
        batch-split clone, on the same weights): one copy, computed once
        per weight change, instead of one per clone."""
        self._wino_caches = layer._wino_caches
        for wino in (self._wino, self._wino_dx):
            if wino is not None:
                wino._cache = self._wino_cache(wino.m, wino.adjoint)

    def _run(self, tasks):
        return threads.run(tasks, self._parallel)

    def _buf(self, name, worker, shape, zero=False):
        """This layer's scratch array `name` for one worker thread (see
        protonet/threads.py); zero-filled when made, when `zero`: padding
        buffers keep their zero border, only interiors are rewritten."""
        buf = self._bufs.get((name, worker))
        if buf is None or buf.shape != shape:
            buf = self._bufs[name, worker] = (np.zeros if zero else np.empty)(
                shape, self.dtype)
        return buf

    def _accumulators(self, shape):
        """Per-worker partial sums, made (and zeroed) on a worker's first
        use: ``get(worker)``, then ``total()`` (the dict of them)."""
        parts = {}

        def get(worker):
            acc = parts.get(worker)
            if acc is None:
                acc = parts[worker] = self._buf("acc", worker, shape)
                acc[...] = 0
            return acc
        return get, parts

    # -- views ---------------------------------------------------------------
    def _img(self, arr):
        return arr.reshape((self.num, self.img_channels) + self.img_shape)

    def _col(self, arr):
        return arr.reshape(self.num, self.group,
                           self.col_channels // self.group, -1)

    def _weights(self, arr):
        """(G, col_channels/G, img_channels/G * prod(kernel))."""
        return arr.reshape(self.group, self.col_channels // self.group, -1)

    def _chunks(self):
        return [slice(b0, min(b0 + self.chunk, self.num))
                for b0 in range(0, self.num, self.chunk)]

    def _parts(self):
        """Slices of the batch, one per worker (for work without columns)."""
        return threads.split(self.num, threads.workers()
                             if self._parallel else 1)

    def _for_blocks(self, x, kernel, stride, pad, out_shape, rows, pad_name,
                    fn):
        """Call ``fn(s, cols, flat, worker)`` for every chunk ``s`` of the
        batch and block of output rows: ``cols`` (nb, G, Kg, n) are the
        columns of ``x[s]`` (padded by ``pad``) at the flattened output
        positions ``flat``.

        The work is spread over the threads (protonet/threads.py) chunk by
        chunk, each padding its chunk into its own buffer; a batch of one
        chunk is padded once and spread block by block.  Every column
        matrix lives in the running thread's scratch (see _scratch).
        """
        nd, C = self.num_spatial, x.shape[1]
        inner = int(np.prod(out_shape[1:]))
        K = C * int(np.prod(kernel))
        chunks = self._chunks()
        starts = range(0, out_shape[0], rows)
        shape = (self.chunk, C) + tuple(i + 2 * q for i, q in
                                        zip(x.shape[2:], pad))

        def padded(s, worker):
            buf = self._buf(pad_name, worker, shape, zero=True) \
                if any(pad) else None
            return pad_into(x[s], pad, buf)

        def block(s, xp, r0, worker):
            nb, r = xp.shape[0], min(rows, out_shape[0] - r0)
            cols = im2col(xp[:, :, r0 * stride[0]:], kernel, stride,
                          (0,) * nd, self.dilation, (r,) + out_shape[1:],
                          _scratch(nb * K * r * inner, self.dtype))
            fn(s, cols.reshape(nb, self.group, -1, r * inner),
               slice(r0 * inner, (r0 + r) * inner), worker)

        if len(chunks) > 1 or len(starts) == 1:
            def task(s, worker):
                xp = padded(s, worker)
                for r0 in starts:
                    block(s, xp, r0, worker)
            self._run([partial(task, s) for s in chunks])
        else:
            xp = padded(chunks[0], 0)
            self._run([partial(block, chunks[0], xp, r0) for r0 in starts])

    # -- the three products ----------------------------------------------------
    def _img_to_col(self, img, col):
        """col = W @ im2col(img), chunk by chunk (col is written)."""
        if self._use_wino:
            return self._wino.forward(
                self._img(img), self.blobs[0].data,
                col.reshape((self.num, self.col_channels) + self.col_shape),
                self._parallel)
        if self._cm:
            return self._img_to_col_cm(img, col)
        if self._nhwc:
            return self._img_to_col_nhwc(img, col)
        W = self._weights(self.blobs[0].data)
        img, col = self._img(img), self._col(col)
        if self.is_1x1:
            P = col.shape[-1]
            self._run([partial(lambda s, w: np.matmul(
                W, img[s].reshape(-1, self.group, W.shape[2], P),
                out=col[s]), s) for s in self._parts()])
            return
        self._for_blocks(img, self.kernel, self.stride, self.pad,
                         self.col_shape, self._rows, "pad_in",
                         lambda s, cols, flat, w: np.matmul(
                             W, cols, out=col[s][..., flat]))

    def _col_to_img(self, col, img):
        """img = col2im(W^T @ col), chunk by chunk (img is assigned)."""
        if self._use_wino_dx:
            return self._wino_dx.forward(
                col.reshape((self.num, self.col_channels) + self.col_shape),
                self.blobs[0].data, self._img(img), self._parallel)
        if self._cm:
            return self._col_to_img_cm(col, img)
        if self._corr_ok:
            if self._nhwc:
                return self._col_to_img_nhwc(col, img)
            return self._col_to_img_corr(col, img)
        Wt = self._weights(self.blobs[0].data).transpose(0, 2, 1)
        img, col = self._img(img), self._col(col)
        if self.is_1x1:
            P = col.shape[-1]
            self._run([partial(lambda s, w: np.matmul(
                Wt, col[s], out=img[s].reshape(-1, self.group, Wt.shape[1],
                                               P)), s) for s in self._parts()])
            return
        K = self.img_channels * int(np.prod(self.kernel))
        P = int(np.prod(self.col_shape))
        shape = (self.chunk, self.img_channels) + tuple(
            i + 2 * q for i, q in zip(self.img_shape, self.pad))

        def task(s, worker):
            nb = s.stop - s.start
            cols = _scratch(nb * K * P, self.dtype).reshape(
                nb, self.group, -1, P)
            np.matmul(Wt, col[s], out=cols)
            col2im(cols, self.kernel, self.stride, self.pad, self.dilation,
                   self.col_shape, img[s],
                   self._buf("pad_acc", worker, shape) if any(self.pad)
                   else None)
        self._run([partial(task, s) for s in self._chunks()])

    def _col_to_img_corr(self, col, img):
        """Stride-1 ``_col_to_img`` as a correlation: img = Wf @ im2col(col
        padded by extent-1-pad), with Wf the kernel flipped on every spatial
        axis and its two channel axes swapped (per group)."""
        G, nd = self.group, self.num_spatial
        W = self.blobs[0].data.reshape(
            (G, self.col_channels // G, self.img_channels // G) + self.kernel)
        flip = W[(Ellipsis,) + (slice(None, None, -1),) * nd]
        Wf = np.ascontiguousarray(np.moveaxis(flip, 2, 1)).reshape(
            G, self.img_channels // G, -1)
        col = col.reshape((self.num, self.col_channels) + self.col_shape)
        out = self._img(img).reshape(self.num, G, self.img_channels // G, -1)
        self._for_blocks(col, self.kernel, (1,) * nd, self._corr_pad_width,
                         self.img_shape, self._corr_rows, "corr_pad",
                         lambda s, cols, flat, w: np.matmul(
                             Wf, cols, out=out[s][..., flat]))

    def _weight_grad(self, img, col):
        """blobs[0].diff += col @ im2col(img)^T, summed over the batch."""
        if self._cm:
            return self._weight_grad_cm(img, col)
        if self._nhwc:
            return self._weight_grad_nhwc(img, col)
        if self._wchunk:
            return self._weight_grad_side_by_side(img, col)
        dW = self._weights(self.blobs[0].diff)
        img, col = self._img(img), self._col(col)
        acc, parts = self._accumulators(dW.shape)
        whole = dW.nbytes >= WGRAD_WHOLE_COLUMNS_BYTES and \
            dW.size >= self.img_channels * int(np.prod(self.kernel) *
                                               np.prod(self.col_shape))
        rows = self.col_shape[0] if whole else self._rows

        def add(s, cols, flat, worker):
            dy, xt = col[s][..., flat], cols.transpose(0, 1, 3, 2)
            if len(dy) > 1:
                acc(worker)[...] += np.matmul(dy, xt).sum(axis=0)
            elif worker in parts:
                parts[worker] += np.matmul(dy[0], xt[0])
            else:
                # A worker's first product, of one image, is its partial
                # sum: written in place, no temporary of the weights' size.
                parts[worker] = self._buf("acc", worker, dW.shape)
                np.matmul(dy[0], xt[0], out=parts[worker])
        if self.is_1x1:
            self._run([partial(lambda s, w: add(s, img[s].reshape(
                -1, self.group, dW.shape[2], col.shape[-1]), slice(None), w),
                s) for s in self._parts()])
        else:
            self._for_blocks(img, self.kernel, self.stride, self.pad,
                             self.col_shape, rows, "pad_in", add)
        for a in parts.values():
            dW += a

    def _weight_grad_side_by_side(self, img, col):
        """``_weight_grad`` with the columns of ``_wchunk`` images side by
        side, (C * prod(kernel), nb, P), and the top diff's copied to match:
        one GEMM per group and chunk (see WGRAD_MIN_COLUMNS)."""
        G, nb = self.group, self._wchunk
        P = int(np.prod(self.col_shape))
        K = self.img_channels * int(np.prod(self.kernel))
        img, col = self._img(img), self._col(col)  # col: (num, G, Mg, P)
        Mg = col.shape[2]
        get, parts = self._accumulators((G, Mg, K // G))
        pad_shape = (nb, self.img_channels) + tuple(
            i + 2 * q for i, q in zip(self.img_shape, self.pad))

        def task(s, worker):
            n = s.stop - s.start
            cols = im2col_side_by_side(
                img[s], self.kernel, self.stride, self.pad, self.dilation,
                self.col_shape, _scratch(K * n * P, self.dtype),
                self._buf("pad_side", worker, pad_shape, zero=True)
                if any(self.pad) else None)
            dy = self._buf("dy_side", worker, (G * Mg * nb * P,))[
                :G * Mg * n * P].reshape(G, Mg, n, P)
            dy[...] = col[s].transpose(1, 2, 0, 3)
            out = self._buf("dw_side", worker, (G, Mg, K // G))
            np.matmul(dy.reshape(G, Mg, n * P),
                      cols.reshape(G, K // G, -1).transpose(0, 2, 1), out=out)
            get(worker)[...] += out
        self._run([partial(task, slice(b0, min(b0 + nb, self.num)))
                   for b0 in range(0, self.num, nb)])
        dW = self._weights(self.blobs[0].diff)
        for a in parts.values():
            dW += a

    # -- channels-last variants (small images, group 1, Convolution) ---------
    def _nhwc_cols(self, img, worker):
        """(nb * P, prod(kernel) * C) channels-last columns of a chunk."""
        nb = img.shape[0]
        pad_buf = self._buf("pad_nhwc", worker, (self.chunk,) + tuple(
            i + 2 * q for i, q in zip(self.img_shape, self.pad))
            + (self.img_channels,), zero=True)
        return im2col_nhwc(img, self.kernel, self.stride, self.pad,
                           self.dilation, self.col_shape,
                           _scratch(nb * self.img_channels * int(np.prod(
                               self.kernel)) * int(np.prod(self.col_shape)),
                               self.dtype), pad_buf)

    def _img_to_col_nhwc(self, img, col):
        """col = W @ im2col(img) as (cols_nhwc @ W'), W' the weight as
        (*kernel, C) x M, and one transposed copy into col."""
        M = self.col_channels
        Wp = np.moveaxis(self.blobs[0].data, 1, -1).reshape(M, -1).T
        img, col = self._img(img), col.reshape(self.num, M, -1)
        P = col.shape[-1]

        def task(s, worker):
            nb = s.stop - s.start
            out = self._buf("out", worker, (self.chunk * P, M))[:nb * P]
            np.matmul(self._nhwc_cols(img[s], worker), Wp, out=out)
            col[s] = out.reshape(nb, P, M).transpose(0, 2, 1)
        self._run([partial(task, s) for s in self._chunks()])

    def _weight_grad_nhwc(self, img, col):
        """dW += col @ im2col(img)^T as one GEMM per chunk over nb * P."""
        M = self.col_channels
        img, col = self._img(img), col.reshape(self.num, M, -1)
        P = col.shape[-1]
        acc, parts = self._accumulators((M, self.blobs[0].count // M))

        def task(s, worker):
            nb = s.stop - s.start
            d = self._buf("dyT", worker, (M, self.chunk * P))[:, :nb * P]
            d.reshape(M, nb, P)[...] = col[s].transpose(1, 0, 2)
            acc(worker)[...] += d @ self._nhwc_cols(img[s], worker)
        self._run([partial(task, s) for s in self._chunks()])
        dW = self.blobs[0].diff
        for a in parts.values():
            dW += np.moveaxis(a.reshape((M,) + self.kernel
                                        + (self.img_channels,)), -1, 1)

    def _col_to_img_nhwc(self, col, img):
        """Stride-1 input gradient as a channels-last correlation of the
        padded top diff with the flipped kernel."""
        M, C, nd = self.col_channels, self.img_channels, self.num_spatial
        W = self.blobs[0].data[(Ellipsis,) + (slice(None, None, -1),) * nd]
        Wq = np.moveaxis(W, 0, -1).reshape(C, -1).T  # (*kernel, M) x C
        col = col.reshape((self.num, M) + self.col_shape)
        img = self._img(img).reshape(self.num, C, -1)
        P = img.shape[-1]
        pad = self._corr_pad_width
        pad_shape = (self.chunk,) + tuple(
            c + 2 * q for c, q in zip(self.col_shape, pad)) + (M,)

        def task(s, worker):
            nb = s.stop - s.start
            cols = im2col_nhwc(col[s], self.kernel, (1,) * nd, pad,
                               self.dilation, self.img_shape,
                               _scratch(nb * P * Wq.shape[0], self.dtype),
                               self._buf("corr_pad_nhwc", worker, pad_shape,
                                         zero=True))
            out = self._buf("dx", worker, (self.chunk * P, C))[:nb * P]
            np.matmul(cols, Wq, out=out)
            img[s] = out.reshape(nb, P, C).transpose(0, 2, 1)
        self._run([partial(task, s) for s in self._chunks()])

    # -- channel-major 1x1 (few output positions, any stride, no pad) -------
    def _cm_sites(self, arr):
        """The img side at the output positions: every stride-th pixel."""
        return arr[(slice(None), slice(None))
                   + tuple(slice(None, None, t) for t in self.stride)]

    def _cm_buf(self, name, rows, s):
        """(G, rows/G, nb * P) view of a channel-major buffer for chunk s."""
        n = (s.stop - s.start) * int(np.prod(self.col_shape))
        buf = self._buf(name, 0, (rows, self.chunk * n // (s.stop - s.start)))
        return buf[:, :n].reshape(self.group, rows // self.group, n)

    def _cm_copy(self, name, arr, s):
        """Channel-major copy (G, rows/G, nb * P) of a chunk of `arr`
        ((num, rows, *col_shape) once subsampled)."""
        nb, rows = s.stop - s.start, arr.shape[1]
        buf = self._cm_buf(name, rows, s)
        buf.reshape((rows, nb) + self.col_shape)[...] = \
            np.moveaxis(arr[s], 1, 0)
        return buf

    def _cm_scatter(self, t, out, s):
        """out[s] = t, t being (G, rows/G, nb * P) channel-major."""
        nb = s.stop - s.start
        out[s] = np.moveaxis(t.reshape((-1, nb) + self.col_shape), 0, 1)

    def _cm_gemm(self, W, src, src_name, dst, dst_name):
        """dst[s] = W @ src[s] chunk by chunk, both sides as channel-major
        copies ((num, rows, *col_shape) arrays; W is (G, dst rows/G, src
        rows/G))."""
        for s in self._chunks():
            t = self._cm_copy(src_name, src, s)
            out = self._cm_buf(dst_name, dst.shape[1], s)
            np.matmul(W, t, out=out)
            self._cm_scatter(out, dst, s)

    def _img_to_col_cm(self, img, col):
        self._cm_gemm(self._weights(self.blobs[0].data),
                      self._cm_sites(self._img(img)), "cm_img",
                      col.reshape((self.num, self.col_channels)
                                  + self.col_shape), "cm_col")

    def _col_to_img_cm(self, col, img):
        img = self._img(img)
        if any(t > 1 for t in self.stride):
            img[...] = 0  # pixels no output reads get no gradient
        self._cm_gemm(self._weights(self.blobs[0].data).transpose(0, 2, 1),
                      col.reshape((self.num, self.col_channels)
                                  + self.col_shape), "cm_col",
                      self._cm_sites(img), "cm_img")

    def _weight_grad_cm(self, img, col):
        dW = self._weights(self.blobs[0].diff)
        x = self._cm_sites(self._img(img))
        col = col.reshape((self.num, self.col_channels) + self.col_shape)
        for s in self._chunks():
            dyt = self._cm_copy("cm_col", col, s)
            xt = self._cm_copy("cm_img", x, s)
            dW += np.matmul(dyt, xt.transpose(0, 2, 1))

    def _bias_forward(self, top):
        if self.bias_term:
            t = top.data.reshape(self.num, self.num_output, -1)
            b = self.blobs[1].data[:, None]

            def add(s):
                t[s] += b
            threads.over_rows(self.num, add, t.size)

    def _bias_backward(self, top):
        if self.bias_term and self.param_propagate_down[1]:
            d = top.diff.reshape(self.num, self.num_output, -1)
            self.blobs[1].diff += d.sum(axis=(0, 2), dtype=self.dtype)
