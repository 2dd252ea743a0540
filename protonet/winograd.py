"""Winograd minimal filtering for 3x3, stride-1 convolutions (the forward,
and the input gradient as a correlation with the flipped kernel).

F(m x m, 3x3) computes an m x m output tile from an alpha x alpha input
tile (alpha = m + 2) with alpha^2 products per (output, input) channel pair
instead of 9 m^2 (Lavin & Gray, "Fast Algorithms for Convolutional Neural
Networks", 2016):

    Y = A^T [ (G g G^T) * (B^T d B) ] A          (* is elementwise)

Over channels the elementwise products become alpha^2 independent GEMMs:
``M[ij] = U[ij] @ V[ij]`` with U (alpha^2, Cout, Cin) the transformed
weights and V (alpha^2, Cin, tiles) the transformed input tiles, so the
multiply count drops 2.25x for F(2x2) and 4x for F(4x4).  With groups the
alpha^2 GEMMs are per group, (alpha^2, G) of them.

Layout: the input of a chunk of images is copied once, channel-major, into a
zero-padded buffer (C, nb, th*m + 2, tw*m + 2) (extra zero rows/columns
complete the last tiles).  Both data transforms are single GEMMs with a
Kronecker product (for a tile flattened row-major, vec(B^T d B) =
(B^T kron B^T) vec(d)): the overlapping tiles are gathered position-major,
(alpha^2, C * tiles), by one strided copy and multiplied by the
(alpha^2, alpha^2) input map; the GEMM results are multiplied by the
(m^2, alpha^2) output map and one copy interleaves the tile positions into
the output.  No Python loop runs over pixels, channels or kernel positions.
The batch is processed in blocks of about TILES_PER_BLOCK tiles (several
small images, or a band of tile rows of one large image).

Accuracy (float32, relative to max|out|, 512 input channels): F(2x2) about
5e-7 (like direct GEMM, 3e-7); F(4x4) about 3e-6, using the points 0, +-1,
1/2, -2 (the common 0, +-1, +-2 give 7e-6).  Both are well inside the golden
tolerance (atol 1e-5 of max|out|, rtol 1e-4); see tests/test_winograd.py.
"""

import threading
from functools import partial

import numpy as np
from numpy.lib.stride_tricks import as_strided

from . import threads

_TRANSFORM_LOCK = threading.Lock()  # see Winograd3x3.transformed_weights

# Transform matrices (B^T, G, A^T) per output tile size m.
_MATRICES = {
    2: ([[1, 0, -1, 0],
         [0, 1, 1, 0],
         [0, -1, 1, 0],
         [0, 1, 0, -1]],
        [[1, 0, 0],
         [.5, .5, .5],
         [.5, -.5, .5],
         [0, 0, 1]],
        [[1, 1, 1, 0],
         [0, 1, -1, -1]]),
    # Points 0, 1, -1, 1/2, -2 (and infinity): in float32 about 2.5x
    # more accurate than the common 0, +-1, +-2 (measured: 2.8e-6 against
    # 7e-6 of max|out| with 512 input channels).
    4: ([[1, -3 / 2, -2, 3 / 2, 1, 0],
         [0, -1, 1 / 2, 5 / 2, 1, 0],
         [0, 1, -5 / 2, 1 / 2, 1, 0],
         [0, -2, -1, 2, 1, 0],
         [0, 1 / 2, -1, -1 / 2, 1, 0],
         [0, 1, -3 / 2, -2, 3 / 2, 1]],
        [[1, 0, 0],
         [1 / 3, 1 / 3, 1 / 3],
         [-1 / 3, 1 / 3, -1 / 3],
         [-16 / 15, -8 / 15, -4 / 15],
         [1 / 15, -2 / 15, 4 / 15],
         [0, 0, 1]],
        [[1, 1, 1, 1, 1, 0],
         [0, 1, -1, 1 / 2, -2, 0],
         [0, 1, 1, 1 / 4, 4, 0],
         [0, 1, -1, 1 / 8, -8, 1]]),
}

# Tiles per block (images x tile rows).  What matters is the GEMMs' width,
# not V's bytes: measured here, ~256 tiles suits 64 to 512 channels (a byte
# budget had to grow with the channel count to keep the GEMMs efficient).
TILES_PER_BLOCK = 256


class Winograd3x3:
    """Forward of a 3x3, stride-1, dilation-1, group-1 convolution.

    Holds the transformed weights (recomputed only when the weights change)
    and the scratch buffers of one layer.

    Args:
        m: output tile size, 2 (F(2x2, 3x3)) or 4 (F(4x4, 3x3)).
        pad: (pad_h, pad_w) zero padding of the input.
        dtype: the layer's dtype.
        adjoint: compute a convolution's input gradient instead: the
            correlation of the top diff with the kernel flipped on both
            spatial axes and its two channel axes swapped (weights are
            still given as the layer's (Cout, Cin/groups, 3, 3)).
        groups: grouped convolution (the GEMMs run per group).
        cache: a dict for the transformed weights, shared by every object
            given the same one (default: its own).
    """

    def __init__(self, m, pad, dtype, adjoint=False, groups=1, cache=None):
        if m not in _MATRICES:
            raise ValueError(f"Winograd tile size must be 2 or 4, got {m}")
        self.m, self.alpha = m, m + 2
        self.pad = tuple(pad)
        self.dtype = np.dtype(dtype)
        BT, G, AT = (np.asarray(t, np.float64) for t in _MATRICES[m])
        # Both data transforms are one GEMM with a Kronecker product: for a
        # tile d flattened row-major, vec(B^T d B) = (B^T x B^T) vec(d).
        self._in_map = np.kron(BT, BT).astype(self.dtype)
        self._out_map = np.kron(AT, AT).astype(self.dtype)
        # U[(i, j)] = sum_kl G[i, k] G[j, l] g[k, l]: one GEMM over (o, c).
        # In the layer's dtype: U's entries are 9-term sums, whose float32
        # rounding (a few ulps) is far below the float32 error of the
        # Winograd products themselves, and 5x faster than float64 (CaffeNet
        # conv3: 16 -> 3 ms, recomputed after every solver update).
        self._weight_map = np.kron(G, G).astype(self.dtype)  # (alpha^2, 9)
        self.adjoint, self.groups = adjoint, groups
        # The transformed weights and the weights they came from; a dict
        # that objects of the same transform may share (a layer's
        # batch-split clones, protonet/batch_split.py).
        self._cache = {} if cache is None else cache
        self.release()

    def release(self):
        """Drop the scratch buffers (kept: the transformed weights)."""
        self._bufs = {}

    def __repr__(self):
        return f"Winograd3x3(F({self.m}x{self.m}, 3x3), pad={self.pad})"

    def _buf(self, name, worker, shape, zero=False):
        # Keyed by shape too: a last, smaller block keeps its own buffers.
        buf = self._bufs.get((name, worker, shape))
        if buf is None:
            buf = self._bufs[name, worker, shape] = (
                np.zeros if zero else np.empty)(shape, self.dtype)
        return buf

    def transformed_weights(self, w):
        """U = G g G^T as (alpha^2, groups, Cout/groups, Cin/groups),
        one GEMM (G x G) @ taps in the layer's dtype, cached until `w`
        (Cout, Cin/groups, 3, 3) changes; for the adjoint, Cin and Cout
        exchanged, of the flipped kernel.

        After a solver update the new U is written over the old one (no
        new arrays each step).  The lock makes the check and the rewrite
        one step for the threads sharing the cache (batch-split clones):
        they run the same layer on the same weights, so none is still
        reading the old U when the weights have changed.  (One lock for
        all: the cache stays plain arrays, and the check is short.)
        """
        cache = self._cache
        with _TRANSFORM_LOCK:
            entry = cache.get("entry")
            if entry is not None and entry[0].shape == w.shape and \
                    np.array_equal(entry[0], w):
                return entry[1]
            G = self.groups
            g = w.reshape((G, -1) + w.shape[1:])  # (G, Cout/G, Cin/G, 3, 3)
            if self.adjoint:
                g = g[..., ::-1, ::-1].transpose(0, 2, 1, 3, 4)
            Mg, Cg = g.shape[1:3]
            shape = (self.alpha ** 2, G, Mg, Cg)
            if entry is None or entry[0].shape != w.shape \
                    or entry[0].dtype != w.dtype:
                entry = (np.empty_like(w), np.empty(shape, self.dtype),
                         np.empty((9, G, Mg, Cg), self.dtype))
            taps, U = entry[2], entry[1]
            taps[...] = np.moveaxis(g.reshape(G, Mg, Cg, 9), 3, 0)
            np.matmul(self._weight_map, taps.reshape(9, -1),
                      out=U.reshape(self.alpha ** 2, -1))
            entry[0][...] = w
            cache["entry"] = entry
            return U

    def forward(self, x, w, out, parallel=True):
        """out = conv(x, w) (no bias).

        Args:
            x: (N, C, H, W) input.
            w: (M, C/groups, 3, 3) weights ((C, M/groups, 3, 3) for the
                adjoint).
            out: (N, M, Ho, Wo) output, Ho = H + 2*pad_h - 2 (assigned).
            parallel: spread the blocks over threads (protonet/threads.py):
                chunk by chunk of images, or, for one chunk, band by band of
                tile rows of a padded copy made once.
        """
        N, C, H, W = x.shape
        M, Ho, Wo = out.shape[1:]
        m = self.m
        th, tw = -(-Ho // m), -(-Wo // m)
        U = self.transformed_weights(w)
        if th * tw <= TILES_PER_BLOCK:
            nb, rows = max(1, min(N, TILES_PER_BLOCK // (th * tw))), th
        else:
            nb, rows = 1, max(1, TILES_PER_BLOCK // tw)
        ph, pw = self.pad
        chunks = [slice(n0, min(n0 + nb, N)) for n0 in range(0, N, nb)]
        starts = range(0, th, rows)

        def padded(s, worker):
            # Interior rewritten each chunk; the zero border is never touched.
            xp = self._buf("pad", worker, (C, nb, th * m + 2, tw * m + 2),
                           zero=True)[:, :s.stop - s.start]
            xp[:, :, ph:ph + H, pw:pw + W] = x[s].transpose(1, 0, 2, 3)
            return xp

        def band(s, xp, r0, worker):
            r = min(rows, th - r0)
            Y = self._tiles(U, xp, r0, r, tw, worker)  # (M, k, r*m, tw*m)
            h = min(r * m, Ho - r0 * m)
            out[s, :, r0 * m:r0 * m + h] = Y[:, :, :h, :Wo].transpose(
                1, 0, 2, 3)

        if len(chunks) > 1 or len(starts) == 1:
            def task(s, worker):
                xp = padded(s, worker)
                for r0 in starts:
                    band(s, xp, r0, worker)
            threads.run([partial(task, s) for s in chunks], parallel)
        else:
            xp = padded(chunks[0], 0)
            threads.run([partial(band, chunks[0], xp, r0) for r0 in starts],
                        parallel)

    def _tiles(self, U, xp, r0, r, tw, worker):
        """Output of tile rows r0 .. r0+r-1 of a padded chunk, as
        (M, nb, r*m, tw*m)."""
        m, a = self.m, self.alpha
        C, nb = xp.shape[:2]
        G, M = U.shape[1], U.shape[1] * U.shape[2]
        T = nb * r * tw
        # Gather the (overlapping) input tiles position-major, (a, a, C, T),
        # with one strided copy; then V = (B^T x B^T) @ tiles is one GEMM.
        s = xp.strides
        tiles = as_strided(xp[:, :, r0 * m:], (a, a, C, nb, r, tw),
                           (s[2], s[3], s[0], s[1], m * s[2], m * s[3]))
        D = self._buf("D", worker, (a * a, C * T))
        np.copyto(D.reshape(tiles.shape), tiles)
        V = self._buf("V", worker, (a * a, C, T))
        np.matmul(self._in_map, D, out=V.reshape(a * a, C * T))
        Mt = self._buf("M", worker, (a * a, M, T))
        np.matmul(U, V.reshape(a * a, G, C // G, T),
                  out=Mt.reshape(a * a, G, M // G, T))
        # Y = (A^T x A^T) @ M, then one copy interleaves the tile positions.
        Yt = self._buf("Yt", worker, (m * m, M * T))
        np.matmul(self._out_map, Mt.reshape(a * a, M * T), out=Yt)
        Y = self._buf("Y", worker, (M, nb, r, m, tw, m))
        np.copyto(Y, Yt.reshape(m, m, M, nb, r, tw).transpose(
            2, 3, 4, 0, 5, 1))
        return Y.reshape(M, nb, r * m, tw * m)
