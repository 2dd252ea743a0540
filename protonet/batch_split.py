"""Layers run on slices of the batch, one slice per core.

Most of a net's time is spent in layers whose output for image n depends on
image n alone (convolution, pooling, LRN, neurons, ...).  Such a layer
declares it (``Layer.batch_separable``); the net then runs it as W clones
of the layer, one per worker thread (protonet/threads.py), each on its own
contiguous slice of the batch with single-threaded BLAS, instead of one
layer whose NumPy copies, padding and elementwise passes run on one core
while only its GEMMs use the others.  Consecutive separable layers form a
run that each worker takes its slice through without waiting for the
others.  Measured here (2 cores, OpenBLAS thread timeout 2^16, images/s
whole -> split): inference GoogLeNet batch 16 35 -> 40, CaffeNet 16
94 -> 109, CIFAR-10 quick 64 2480 -> 3510, ResNet-50 8 18.5 -> 19.5; a
CaffeNet training backward 376 -> 331 ms.

How it stays exact:

* the slices are views of the net's blobs (the batch is the first, slowest
  axis, so a slice is contiguous): clones read the bottoms' and write the
  tops' and bottom diffs' own memory, and ``net.blobs`` hold the same
  arrays as without splitting;
* a clone is built from the layer's own LayerParameter with its fillers
  removed (no random numbers are drawn), then its parameter blobs are made
  to read the layer's data before every call; clone 0 accumulates its
  parameter gradient into the layer's diff, the others into their own,
  which are added in afterwards (Caffe's accumulate-into-diff contract);
  what a layer derives from its weights (Winograd's transformed weights)
  it shares with its clones through ``share_cached_weights``;
* the layer itself still runs ``reshape`` on the whole batch (top shapes,
  errors), and a clone whose reshape gives a top other than its slice is an
  error, never a silent copy.

Layers that mix the batch (losses, training-mode BatchNorm, Dropout's
random masks, InnerProduct whose GEMM BLAS already spreads), small work
(fewer than MIN_ELEMENTS bottom + top elements) and batches of one run
whole, as before.  PROTONET_BATCH_SPLIT=0 turns splitting off.
"""

import weakref

from . import envvars, threads
from .blob import Blob
from .errors import NetError
from .layer import create_layer
from .pbcompat import is_repeated
from .proto import caffe_pb2

# Bottom + top elements of a run of layers from which it is split (a
# parallel region costs ~0.1 ms).
MIN_ELEMENTS = 1 << 17
# With memory="inference", every top of a run is alive until the run ends:
# a run ends once they take RUN_ACTIVATIONS times its largest top (about
# what the unsplit inference mode holds at once) or RUN_BYTES.
RUN_ACTIVATIONS = 3
RUN_BYTES = 64 << 20


def enabled():
    """Splitting is on unless PROTONET_BATCH_SPLIT is 0 (or false/no/off)."""
    return envvars.flag("PROTONET_BATCH_SPLIT", True)


def _strip_fillers(msg):
    """Clear every FillerParameter field of a message, recursively."""
    for field, value in msg.ListFields():
        if field.message_type is None:
            continue
        if field.message_type.name == "FillerParameter":
            msg.ClearField(field.name)
        elif is_repeated(field):
            for item in value:
                _strip_fillers(item)
        else:
            _strip_fillers(value)


def _run_full(held):
    """Whether a run whose tops take `held` (blob id -> bytes) is full."""
    total = sum(held.values())
    return total >= RUN_BYTES or bool(held) and \
        total >= RUN_ACTIVATIONS * max(held.values())


class BatchSplitter:
    """Runs a net's batch-separable layers as per-worker clones."""

    def __init__(self, net):
        # A proxy, not a reference: the net owns its splitter, and a cycle
        # would keep a dropped net's blobs alive until a full garbage
        # collection (Python counts objects, not bytes, to start one).
        self.net = weakref.proxy(net)
        self._clones = {}  # layer index -> list of clone layers

    def active(self):
        return threads.workers() > 1 and enabled()

    def slices(self, i, bottom, top):
        """The batch slices layer `i` can run on, or None (run it whole).
        Call after the layer's own reshape (top shapes known)."""
        blobs = list(bottom) + list(top)
        if not bottom or any(b.num_axes == 0 for b in blobs):
            return None
        n = bottom[0].shape[0]
        if n < 2 or any(b.shape[0] != n for b in blobs):
            return None
        if not self.net.layers[i].batch_separable(bottom):
            return None
        return threads.split(n, threads.workers())

    def forward_run(self, start, end, release):
        """Reshape layers start.. while they can run split over the same
        slices, and run them so.  Returns (count, split): the layers
        start..start+count-1 ran split, or, when `split` is False, are
        reshaped but still to run whole (too little work, or count 0: layer
        `start` cannot split)."""
        if not self.active():
            return 0, False
        net = self.net
        run, slices, elements, held = [], None, 0, {}
        i = start
        while i <= end and not (release and _run_full(held)):
            bottom, top = net.bottom_vecs[i], net.top_vecs[i]
            if net._released:
                net._restore(net.top_ids[i])
            net.layers[i].reshape(bottom, top)
            s = self.slices(i, bottom, top)
            if s is None or (slices is not None and s != slices):
                break
            slices = s
            run.append(i)
            elements += sum(b.count for b in bottom + top)
            for t in top:
                held[id(t)] = t.data.nbytes
            i += 1
        if not run or elements < MIN_ELEMENTS:
            return len(run), False
        self.forward(run, slices, release)
        for i in run:
            net._split_at[i] = slices
        return len(run), True

    def backward_run(self, start, end):
        """Backward of the layers start, start-1, ... (down to `end`) whose
        forward ran split over the same slices; returns how many were
        consumed (0: layer `start` ran whole)."""
        net = self.net
        slices = net._split_at.get(start)
        if slices is None:
            return 0
        i = start
        while i >= end and net._split_at.get(i) == slices:
            i -= 1
        run = [j for j in range(start, i, -1) if net.layer_need_backward[j]]
        if run:
            self.backward(run, slices)
        return start - i

    def _views(self, blobs, s, diff, cache):
        """Views of `blobs` at slice `s`, one per distinct blob (in-place
        layers see the same view as bottom and top)."""
        out = []
        for b in blobs:
            v = cache.get(id(b))
            if v is None:
                v = cache[id(b)] = b.rows(s, diff)
            out.append(v)
        return out

    def _clone(self, i, k, bottom, top):
        clones = self._clones.setdefault(i, [])
        while len(clones) <= k:
            layer = self.net.layers[i]
            param = caffe_pb2.LayerParameter()
            param.CopyFrom(layer.param)
            _strip_fillers(param)
            clone = create_layer(param, layer.dtype)
            # Set up on standalone blobs of the slice's shapes: setup may
            # reshape its tops freely.
            clone.set_up([Blob(b.shape, b.dtype) for b in bottom],
                         [Blob(t.shape, t.dtype) for t in top])
            if self.net.memory == "inference" and hasattr(clone,
                                                          "prefer_memory"):
                clone.prefer_memory()
            if hasattr(clone, "share_cached_weights"):
                clone.share_cached_weights(layer)
            clones.append(clone)
        return clones[k]

    def _share(self, layer, clone, k):
        """Point the clone's parameters at the layer's data (and, for clone
        0, its diff) again: a solver or copy_from may have replaced them."""
        clone.param_propagate_down = list(layer.param_propagate_down)
        for cb, lb in zip(clone.blobs, layer.blobs):
            cb._data = lb.data
            if k == 0:
                cb._diff = lb.diff if lb.has_diff else None

    def _check_tops(self, layer, where, top_views):
        """The clone's reshape kept every top on its slice (a Split may
        re-point a view at the same memory; a new array is a bug)."""
        for v, (ptr, shape) in zip(top_views, where):
            if v.shape != shape or v._data.ctypes.data != ptr:
                raise NetError(f"{layer.type} layer '{layer.name}': its "
                               f"batch-split clone reshaped a top to "
                               f"{v.shape}, not its slice {shape}; the "
                               f"layer must not declare batch_separable")

    def _parts(self, run, slices, diff):
        """Per slice: [(layer index, clone, bottom views, top views)] over
        the layers of `run`; views of one blob are shared within a slice
        (in-place layers, and a top read by a later layer of the run)."""
        net = self.net
        parts = []
        for k, s in enumerate(slices):
            cache, seq = {}, []
            for i in run:
                bv = self._views(net.bottom_vecs[i], s, diff, cache)
                tv = self._views(net.top_vecs[i], s, diff, cache)
                clone = self._clone(i, k, bv, tv)
                self._share(net.layers[i], clone, k)
                seq.append((i, clone, bv, tv))
            parts.append(seq)
        return parts

    def forward(self, run, slices, release):
        """Forward of the consecutive layers `run`, each worker taking its
        slice of the batch through all of them (no barrier between layers:
        slice k of a top depends on slice k of the bottoms alone)."""
        def task(seq, worker):
            for _, clone, bv, tv in seq:
                where = [(t._data.ctypes.data, t.shape) for t in tv]
                clone.reshape(bv, tv)
                self._check_tops(clone, where, tv)
                clone.forward_only = release
                try:
                    clone.forward(bv, tv)
                finally:
                    clone.forward_only = False
                if release and hasattr(clone, "release_buffers"):
                    clone.release_buffers()
        threads.run([lambda w, seq=seq: task(seq, w)
                     for seq in self._parts(run, slices, False)])

    def backward(self, run, slices):
        """Backward of the layers `run` (in backward order) over the slices
        their forward ran on (the clones hold what forward kept for
        backward); the clones' parameter gradients are added into the
        layers'."""
        net = self.net
        # Diffs exist before the views are taken (a view of a missing diff
        # would be a private array).
        for i in run:
            for b in net.bottom_vecs[i] + net.top_vecs[i]:
                b.diff  # noqa: B018  (allocates)
            layer = net.layers[i]
            for j, b in enumerate(layer.blobs):
                if layer.param_propagate_down[j]:
                    b.diff  # noqa: B018
        parts = self._parts(run, slices, True)
        for seq in parts[1:]:
            for _, clone, _, _ in seq:
                for j, cb in enumerate(clone.blobs):
                    if clone.param_propagate_down[j]:
                        cb.diff[...] = 0

        def task(seq, worker):
            for i, clone, bv, tv in seq:
                clone.backward(tv, net.bottom_need_backward[i], bv)
        threads.run([lambda w, seq=seq: task(seq, w) for seq in parts])
        for seq in parts[1:]:
            for i, clone, _, _ in seq:
                for j, (cb, lb) in enumerate(zip(clone.blobs,
                                                 net.layers[i].blobs)):
                    if clone.param_propagate_down[j]:
                        lb.diff += cb.diff
