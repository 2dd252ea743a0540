"""Background prefetching of data batches (Caffe's BasePrefetchingDataLayer).

Mirrors: src/caffe/layers/base_data_layer.cpp (InternalThreadEntry,
Forward_cpu) and include/caffe/util/blocking_queue.hpp.

A daemon thread calls `produce()` and puts its results into a bounded
queue of `depth` batches, so the next batch is read and transformed while
the net computes the current one.  Order is deterministic: one thread
produces the batches in sequence, and every random draw it makes comes from
generators it alone owns.  An exception raised by `produce()` is handed
over through the queue and re-raised by the next `next()` (and every later
one); a thread that died without handing anything over is detected instead
of waited for.  `close()` stops the thread; it is also called when the
owner is garbage-collected and at interpreter exit.
"""

import queue
import threading
import weakref

from .errors import DataError

_POLL = 0.1   # seconds between checks that the worker is still alive


def _worker(produce, q, stop):
    while not stop.is_set():
        try:
            item = (True, produce())
        except BaseException as e:   # handed to the main thread
            item = (False, e)
        while not stop.is_set():
            try:
                q.put(item, timeout=_POLL)
                break
            except queue.Full:
                continue
        if not item[0]:
            return


class Prefetcher:
    """Runs `produce()` ahead in a background thread.

    Args:
        produce: a callable returning the next batch; it must not refer to
            the owning layer (so the layer can be garbage-collected).
        depth: how many produced batches may wait in the queue (>= 1).
        name: the thread's name.
        owner: when given, `close()` runs once the owner is collected.
    """

    def __init__(self, produce, depth=4, name="protonet-prefetch", owner=None):
        self._queue = queue.Queue(maxsize=max(int(depth), 1))
        self._stop = threading.Event()
        self._error = None
        self._thread = threading.Thread(
            target=_worker, args=(produce, self._queue, self._stop),
            name=name, daemon=True)
        self._thread.start()
        # Runs at garbage collection of the owner and at exit.
        self._finalizer = weakref.finalize(owner if owner is not None else
                                           self, _shutdown, self._stop,
                                           self._queue, self._thread)

    def next(self):
        """The next batch; re-raises an exception of the worker."""
        if self._error is not None:
            raise self._error
        if self._stop.is_set():
            raise DataError("prefetcher is closed")
        while True:
            try:
                ok, item = self._queue.get(timeout=_POLL)
                break
            except queue.Empty:
                if not self._thread.is_alive():
                    try:
                        ok, item = self._queue.get_nowait()
                        break
                    except queue.Empty:
                        raise DataError("the prefetch thread stopped "
                                        "without producing a batch") from None
        if not ok:
            self._error = item
            raise item
        return item

    def close(self):
        """Stop the thread and drop the queued batches (idempotent)."""
        self._finalizer()

    @property
    def alive(self):
        return self._thread.is_alive()


def _shutdown(stop, q, thread):
    stop.set()
    try:
        while True:
            q.get_nowait()
    except queue.Empty:
        pass
    if thread is not threading.current_thread():
        thread.join(timeout=30)


class SyncFetcher:
    """Prefetcher's interface without a thread (`prefetch: 0`)."""

    def __init__(self, produce, *args, **kwargs):
        self._produce = produce

    def next(self):
        return self._produce()

    def close(self):
        pass

    alive = False


def make_fetcher(produce, depth, name="protonet-prefetch", owner=None):
    """A Prefetcher of `depth` batches, or a SyncFetcher when depth is 0."""
    if depth <= 0:
        return SyncFetcher(produce)
    return Prefetcher(produce, depth, name=name, owner=owner)
