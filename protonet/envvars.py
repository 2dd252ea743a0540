"""Environment variables protonet reads, parsed strictly: a value that is
not what the variable expects is an error naming the variable and the
value, never a silent default (`PROTONET_MPI_TIMEOUT=nan` would otherwise
turn the deadline off)."""

import math
import os

from .errors import ProtonetError


def number(name, default, kind=float, minimum=None, positive=False):
    """The environment variable `name` as a finite `kind` (float or int),
    `default` when unset or empty.

    Raises:
        ProtonetError: naming the variable, its value and what was expected.
    """
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    what = "number" if kind is float else "integer"
    try:
        value = kind(raw.strip())
    except ValueError:
        value = None
    if value is None or (kind is float and not math.isfinite(value)):
        raise ProtonetError(f"environment variable {name}={raw!r}: expected "
                            f"a finite {what}")
    if positive and value <= 0:
        raise ProtonetError(f"environment variable {name}={raw!r}: expected "
                            f"a {what} > 0")
    if minimum is not None and value < minimum:
        raise ProtonetError(f"environment variable {name}={raw!r}: expected "
                            f"a {what} >= {minimum}")
    return value


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def flag(name, default):
    """The environment variable `name` as a boolean (1/true/yes/on or
    0/false/no/off, any case), `default` when unset or empty."""
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    value = raw.strip().lower()
    if value not in _TRUE + _FALSE:
        raise ProtonetError(f"environment variable {name}={raw!r}: expected "
                            "1/true/yes/on or 0/false/no/off")
    return value in _TRUE
