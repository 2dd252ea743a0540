"""Pictures of a net: filters and activation maps as image grids.

`vis_square` is the grid of Caffe's classification notebook (each tile
normalised together, one pixel of padding), made to work on any layer:
`filters(net, "conv1")` shows a first-layer filter bank in colour, deeper
filters one input channel at a time; `activations(net, "conv1")` shows one
image's feature maps. They return float arrays in [0, 1] of shape (H, W) or
(H, W, 3); `png_bytes` encodes one as a PNG with no imaging library.
"""

import math
import struct
import zlib

import numpy as np

from .errors import ProtonetError


class VisError(ProtonetError):
    """A layer or blob that cannot be drawn as asked."""


def vis_square(data, padsize=1, padval=1.0):
    """Tile `data` of shape (n, h, w) or (n, h, w, 3) into a square grid.

    The values are scaled together to [0, 1] (a constant array becomes 0.5);
    tiles are separated by `padsize` pixels of `padval`.
    """
    data = np.asarray(data, dtype=np.float64)
    if data.ndim not in (3, 4) or (data.ndim == 4 and data.shape[-1] != 3):
        raise VisError(f"vis_square: expected (n, h, w) or (n, h, w, 3), "
                       f"got shape {data.shape}")
    finite = np.isfinite(data)
    data = np.where(finite, data, 0.0)
    lo, hi = (data[finite].min(), data[finite].max()) if finite.any() else (0, 0)
    data = (data - lo) / (hi - lo) if hi > lo else np.full_like(data, 0.5)
    n = int(math.ceil(math.sqrt(data.shape[0])))
    pad = [(0, n * n - data.shape[0]), (0, padsize), (0, padsize)] + \
        [(0, 0)] * (data.ndim - 3)
    data = np.pad(data, pad, mode="constant", constant_values=padval)
    tail = data.shape[3:]
    data = data.reshape((n, n) + data.shape[1:])
    data = data.transpose((0, 2, 1, 3) + tuple(range(4, data.ndim)))
    grid = data.reshape((n * data.shape[1], n * data.shape[3]) + tail)
    return grid[:grid.shape[0] - padsize, :grid.shape[1] - padsize]


def filters(net, layer, max_filters=64, channel=None):
    """The weights of `layer` (a convolution) as a grid.

    A 3-channel first layer is drawn in colour (BGR as Caffe stores it,
    shown as RGB); otherwise input channel `channel` (default 0) of each
    filter is drawn in grey. At most `max_filters` filters are shown.
    """
    if layer not in net.params:
        raise VisError(f"no layer '{layer}' with parameters (layers with "
                       f"parameters: {', '.join(net.params) or 'none'})")
    w = np.asarray(net.params[layer][0].data)
    if w.ndim != 4:
        raise VisError(f"layer '{layer}': filters are drawn from 4-D "
                       f"convolution weights, got shape {w.shape}")
    w = w[:max_filters]
    if w.shape[1] == 3 and channel is None:
        return vis_square(w[:, ::-1].transpose(0, 2, 3, 1))
    c = 0 if channel is None else channel
    if not 0 <= c < w.shape[1]:
        raise VisError(f"layer '{layer}': channel {c} out of range "
                       f"(weights have {w.shape[1]} input channels)")
    return vis_square(w[:, c])


def activations(net, blob, image=0, max_maps=64):
    """Feature maps of `blob` for batch item `image` as a grid."""
    if blob not in net.blobs:
        raise VisError(f"no blob '{blob}' (blobs: {', '.join(net.blobs)})")
    a = np.asarray(net.blobs[blob].data)
    if a.ndim != 4:
        raise VisError(f"blob '{blob}': activation maps need a 4-D blob "
                       f"(N, C, H, W), got shape {a.shape}")
    if not 0 <= image < a.shape[0]:
        raise VisError(f"blob '{blob}': image {image} out of range "
                       f"(batch of {a.shape[0]})")
    return vis_square(a[image, :max_maps])


def png_bytes(grid, scale=1):
    """Encode a grid in [0, 1], (H, W) grey or (H, W, 3) colour, as PNG.

    `scale` repeats each pixel (nearest neighbour) so small filters stay
    visible when shown.
    """
    g = np.clip(np.nan_to_num(np.asarray(grid, dtype=np.float64)), 0, 1)
    if scale > 1:
        g = g.repeat(scale, axis=0).repeat(scale, axis=1)
    pixels = np.round(g * 255).astype(np.uint8)
    colour = 2 if pixels.ndim == 3 else 0
    h, w = pixels.shape[:2]
    rows = pixels.reshape(h, -1)
    raw = np.concatenate([np.zeros((h, 1), np.uint8), rows], axis=1).tobytes()

    def chunk(kind, body):
        return (struct.pack(">I", len(body)) + kind + body +
                struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))
    header = struct.pack(">IIBBBBB", w, h, 8, colour, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) +
            chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))
