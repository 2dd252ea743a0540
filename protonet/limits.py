"""Memory limits: refuse a net or a file that would need too much memory.

Two guards, both raising `ResourceError` before the memory is taken:

* every Blob allocation (`Blob.__init__` / `Blob.reshape` to a new element
  count) is checked against the limit *before* `np.zeros` runs, so a single
  absurd shape (an input dim of 1e9, a Tile/Reshape/DummyData to a huge shape,
  a 1e7-output InnerProduct) never reaches the allocator;
* every input is bounded before it is read (protonet.filecheck: file
  sizes; protonet.parse_budget: what a prototxt or binary proto expands to
  once parsed; HDF5 dataset shapes, Datum sizes, image sizes and resize
  targets through `check_bytes`);
* while a net is built, `NetBudget` adds up the bytes of every new top blob
  and parameter blob after each layer's setup (shape inference happens in
  setup/reshape), and refuses as soon as the sum passes the limit, naming the
  total and the layer that holds the most.

The limit is, in order of precedence: the `max_memory=` keyword of `Net`
(through `limit(...)`), the environment variable ``PROTONET_MAX_MEMORY``
("8G", "512M", "1.5T", "1000000" bytes; "0" or "none" disables the check),
else `DEFAULT_FRACTION` of the machine's physical memory (the smaller of
/proc/meminfo's MemTotal / `os.sysconf` and a cgroup memory limit).
"""

import contextlib
import contextvars
import math
import os
import re

from .errors import ResourceError

ENV_VAR = "PROTONET_MAX_MEMORY"
DEFAULT_FRACTION = 0.8
_UNITS = {"": 1, "B": 1, "K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30, "T": 2 ** 40,
          "P": 2 ** 50}
_override = contextvars.ContextVar("protonet_max_memory", default=None)
_physical = None


def parse_size(text, what=ENV_VAR):
    """Bytes from "8G", "512M", "1.5T", "123" (binary units; a trailing
    "B"/"iB" is allowed); None for "0", "none", "off", "unlimited"."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        if text < 0 or not math.isfinite(text):
            raise ResourceError(f"{what}: a memory limit must be a finite "
                                f"number >= 0, got {text!r}")
        return int(text) or None
    s = str(text).strip().upper()
    if s in ("0", "NONE", "OFF", "UNLIMITED", "INF"):
        return None
    m = re.fullmatch(r"([0-9]*\.?[0-9]+)\s*([KMGTP]?)(I?B)?", s)
    if not m:
        raise ResourceError(f"{what}: cannot read the memory limit {text!r}; "
                            "write e.g. 8G, 512M, 1.5T or a number of bytes "
                            "(0 or 'none' disables the check)")
    return int(float(m.group(1)) * _UNITS[m.group(2)]) or None


def physical_memory():
    """The machine's physical memory in bytes (capped by a cgroup limit)."""
    global _physical
    if _physical is None:
        total = None
        try:
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            try:
                with open("/proc/meminfo") as f:
                    for line in f:
                        if line.startswith("MemTotal:"):
                            total = int(line.split()[1]) * 1024
            except (OSError, ValueError, IndexError):
                pass
        for cg in ("/sys/fs/cgroup/memory.max",
                   "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
            try:
                with open(cg) as f:
                    v = f.read().strip()
                if v.isdigit() and (total is None or int(v) < total):
                    total = int(v)
            except OSError:
                pass
        _physical = total or 16 * 2 ** 30
    return _physical


def max_memory():
    """The limit in force, in bytes, or None for no limit."""
    value = _override.get()
    if value is not None:
        return value or None
    env = os.environ.get(ENV_VAR)
    if env is not None and env.strip():
        return parse_size(env)
    return int(physical_memory() * DEFAULT_FRACTION)


@contextlib.contextmanager
def limit(max_bytes):
    """Use `max_bytes` (int, "8G", or None = the default) as the limit inside
    the block; 0 / "none" disables the check."""
    if max_bytes is None:
        yield
        return
    token = _override.set(parse_size(max_bytes, "max_memory") or 0)
    try:
        yield
    finally:
        _override.reset(token)


def format_bytes(n):
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        if abs(n) < 1024 or unit == "EiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024.0
    return f"{n:.1f} EiB"


def how_to_raise():
    """The hint every ResourceError ends with."""
    return (f"raise the limit with {ENV_VAR}=<size> (e.g. 32G) or "
            "Net(..., max_memory=...)")


_how_to_raise = how_to_raise


def check_bytes(nbytes, what):
    """Refuse `nbytes` of memory that `what` (a sentence subject naming the
    file, dataset, record or image) would take, before it is taken."""
    cap = max_memory()
    if cap is not None and nbytes > cap:
        raise ResourceError(f"{what} needs {format_bytes(nbytes)}, more than "
                            f"the memory limit of {format_bytes(cap)}; "
                            f"{how_to_raise()}")


def check_allocation(shape, itemsize):
    """Refuse one array of `shape` before it is allocated (Blob's guard)."""
    nbytes = math.prod(shape) * itemsize
    if nbytes < (1 << 24):          # 16 MiB: never worth a look-up
        return
    cap = max_memory()
    if cap is not None and nbytes > cap:
        raise ResourceError(f"a blob of shape {tuple(shape)} needs "
                            f"{format_bytes(nbytes)}, more than the memory "
                            f"limit of {format_bytes(cap)}; {_how_to_raise()}")


class NetBudget:
    """Adds up the memory of a net as its layers are set up."""

    def __init__(self, net_name):
        self.net_name = net_name
        self.total = 0
        self.per_layer = {}
        self._seen = set()

    def add_layer(self, layer, tops):
        """Count the new tops and parameter blobs of `layer` (each array once);
        raise ResourceError when the net passes the limit."""
        nbytes = 0
        for blob in list(tops) + list(layer.blobs):
            arr = blob.data
            key = id(arr.base if arr.base is not None else arr)
            if key in self._seen:
                continue
            self._seen.add(key)
            nbytes += arr.nbytes
        self.per_layer[layer.name] = self.per_layer.get(layer.name, 0) + nbytes
        self.total += nbytes
        cap = max_memory()
        if cap is not None and self.total > cap:
            name, worst = max(self.per_layer.items(), key=lambda kv: kv[1])
            raise ResourceError(
                f"net '{self.net_name}' needs at least "
                f"{format_bytes(self.total)} for its blobs and parameters "
                f"(reached at layer '{layer.name}'), more than the memory "
                f"limit of {format_bytes(cap)}; the largest is layer '{name}' "
                f"with {format_bytes(worst)}; {_how_to_raise()}")
