"""Log lines in glog's format, as Caffe writes them.

Caffe logs through Google's glog: every line starts with
`<severity><mmdd> <hh:mm:ss.uuuuuu> <thread id> <file>:<line>] `, e.g.::

    I1126 14:00:00.123456 12345 solver.cpp:218] Iteration 100, loss = 0.1

Tools such as Caffe's tools/extra/parse_log.py read these prefixes, so the
solver and the CLI log through `log(...)` with Caffe's own file:line tags.

The lines go through the standard `logging` logger "protonet.caffe" at INFO
level; nothing is printed unless a handler is installed. `enable(stream)`
installs one that writes glog-formatted lines (the CLI does this, like
Caffe's tools which log to stderr).
"""

import datetime
import logging
import sys
import threading

LOGGER_NAME = "protonet.caffe"
logger = logging.getLogger(LOGGER_NAME)

_LEVEL_LETTER = {logging.DEBUG: "I", logging.INFO: "I", logging.WARNING: "W",
                 logging.ERROR: "E", logging.CRITICAL: "F"}


def format_prefix(level, src, when=None, tid=None):
    """glog's line prefix, e.g. 'I1126 14:00:00.123456 12345 solver.cpp:218] '."""
    when = when or datetime.datetime.now()
    tid = threading.get_native_id() if tid is None else tid
    return (f"{_LEVEL_LETTER.get(level, 'I')}{when:%m%d %H:%M:%S.%f} "
            f"{tid:>5} {src}] ")


def format_number(x):
    """A float as C++'s ostream prints it by default (6 significant digits,
    like printf's %g)."""
    x = float(x)
    if x != x:
        return "nan"
    if x in (float("inf"), float("-inf")):
        return "inf" if x > 0 else "-inf"
    return f"{x:g}"


class GlogFormatter(logging.Formatter):
    """Formats records as glog lines; `record.src` is Caffe's file:line."""

    def format(self, record):
        when = datetime.datetime.fromtimestamp(record.created)
        src = getattr(record, "src", None) or \
            f"{record.filename}:{record.lineno}"
        return format_prefix(record.levelno, src, when,
                             getattr(record, "thread_native", None)) + \
            record.getMessage()


def log(msg, src="solver.cpp:0", level=logging.INFO):
    """Log one line attributed to Caffe's `src` (e.g. 'solver.cpp:218')."""
    if logger.isEnabledFor(level):
        logger.log(level, msg, extra={"src": src,
                                      "thread_native": threading.get_native_id()})


def info(msg, src="solver.cpp:0"):
    log(msg, src, logging.INFO)


def warning(msg, src="solver.cpp:0"):
    log(msg, src, logging.WARNING)


_handler = None
_status = None     # a ProgressBar-like object drawn below the log lines


def set_status_line(status):
    """Register the terminal status line (`clear()` / `redraw()`) that
    every log line must erase first and redraw after (None: no line)."""
    global _status
    _status = status


class GlogHandler(logging.StreamHandler):
    """A stream handler that erases the status line around each record, so
    a line never starts glued to a progress bar."""

    def emit(self, record):
        status = _status
        if status is not None:
            status.clear()
        super().emit(record)
        if status is not None:
            status.redraw()


def enable(stream=None, level=logging.INFO):
    """Send the log lines to `stream` (default: sys.stderr) in glog format.

    Returns the handler (pass it to `disable` to remove it)."""
    global _handler
    handler = GlogHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(GlogFormatter())
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    _handler = handler
    return handler


def disable(handler=None):
    handler = handler or _handler
    if handler is not None:
        logger.removeHandler(handler)
