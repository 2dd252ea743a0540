"""The training progress bar of `protonet train` on a terminal.

One line at the bottom of the terminal, redrawn in place::

    train [#########.........]  300/1000 12.3 it/s ETA 0:57 loss 0.0812
    test #0 [####..............]   20/100 40.1 it/s ETA 0:02

While it is shown, every glog line first erases it and then redraws it
below (see `caffelog`), so log lines never start in the middle of the bar.
During a test pass the line shows that pass's batches instead of sitting at
the training iteration.  The rate and ETA of training leave test passes
out.  Nothing is drawn when the stream is not a terminal (a log file, a
pipe, CI), so redirected logs hold glog lines only.
"""

import os
import shutil
import time

from . import caffelog


def wanted(stream):
    """Whether a bar should be drawn on `stream`: a terminal that is not
    TERM=dumb."""
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        return False
    return tty and os.environ.get("TERM", "") != "dumb"


def _clock(seconds):
    seconds = int(max(0, seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class ProgressBar:
    """A one-line bar for training iterations and test passes.

    Args:
        total: the last training iteration (the solver's max_iter).
        stream: a terminal stream (see `wanted`).
        start: the iteration training starts from; None: one before the
            first iteration reported (a resumed run restores its iteration
            only once solving starts).
        min_interval: seconds between redraws (a log line or the end
            always redraws).
    """

    WIDTH = 24

    def __init__(self, total, stream, start=None, min_interval=0.1,
                 clock=time.monotonic):
        self.total, self.stream = max(int(total), 1), stream
        self.clock, self.min_interval = clock, min_interval
        self.start = start
        self.it = start or 0
        self.loss = None
        self.test = None            # (net id, done, total, start time)
        self.train_time, self._since = 0.0, clock()
        self._drawn, self._last = False, 0.0

    # -- state ------------------------------------------------------------
    def update(self, it, loss=None):
        """Training reached iteration `it` with smoothed loss `loss`."""
        self.it = int(it)
        if self.start is None:
            self.start = max(self.it - 1, 0)
        if loss is not None:
            self.loss = float(loss)
        self._draw(force=self.it >= self.total)

    def begin_test(self, net_id, total):
        self._account()
        self.test = [net_id, 0, max(int(total), 1), self.clock()]
        self._draw(force=True)

    def test_step(self):
        """One more test batch is about to run."""
        if self.test is not None:
            self._draw()
            self.test[1] = min(self.test[1] + 1, self.test[2])

    def end_test(self):
        self.test = None
        self._since = self.clock()
        self._draw(force=True)

    def _account(self):
        now = self.clock()
        if self.test is None:
            self.train_time += now - self._since
        self._since = now

    # -- drawing ----------------------------------------------------------
    def text(self):
        """The bar's line as it would be drawn now."""
        if self.test is not None:
            net_id, done, total, t0 = self.test
            label, elapsed = f"test #{net_id}", self.clock() - t0
            rate = done / elapsed if elapsed > 0 else 0.0
        else:
            self._account()
            label, done, total = "train", self.it, self.total
            elapsed = self.train_time
            rate = (done - self.start) / elapsed \
                if elapsed > 0 and self.start is not None else 0.0
        frac = min(done / total, 1.0)
        filled = int(self.WIDTH * frac)
        width = len(str(total))
        line = (f"{label} [{'#' * filled}{'.' * (self.WIDTH - filled)}] "
                f"{done:>{width}}/{total}")
        if rate > 0:
            line += f" {rate:.3g} it/s ETA {_clock((total - done) / rate)}"
        if self.test is None and self.loss is not None:
            line += f" loss {caffelog.format_number(self.loss)}"
        return line

    def _draw(self, force=False):
        now = self.clock()
        if not force and now - self._last < self.min_interval:
            return
        self._last = now
        columns = shutil.get_terminal_size((80, 24)).columns
        # Never wrap: a wrapped line cannot be erased with a carriage return.
        self.stream.write("\r" + self.text()[:max(columns - 1, 10)] + "\x1b[K")
        self.stream.flush()
        self._drawn = True

    def clear(self):
        """Erase the bar's line (before a log line is written)."""
        if self._drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()

    def redraw(self):
        if self._drawn:
            self._draw(force=True)

    def close(self):
        """Leave the terminal as if the bar had never been there."""
        self.clear()
        self._drawn = False

    def __enter__(self):
        caffelog.set_status_line(self)
        return self

    def __exit__(self, *exc):
        caffelog.set_status_line(None)
        self.close()
