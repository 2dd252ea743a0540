"""Reading protonet's resume sidecar (`<state>.protonet.json`) safely.

The sidecar holds what Caffe's solverstate does not: the generator state
and each data layer's read position.  It is untrusted input like any other
file, so before anything is applied it is

* read as a regular file bounded by the memory limit (x32: JSON numbers and
  lists become Python objects);
* parsed as UTF-8 JSON no deeper than MAX_DEPTH (deep nesting raised
  RecursionError);
* checked against the layout written by `Solver._write_sidecar`:
  {"format": 1, "iter": int >= 0, "rng": {"bit_generator": str, ...},
  "data": {net key: {layer name: {reader state}}}}.

Each reader state is then handed to its layer's `set_state`, which checks
its own fields; anything it raises becomes a SolverError naming the file
and the key (`data.train.mnist`).
"""

import json

from . import rng as _rng
from .errors import ProtonetError, SolverError
from .filecheck import read_file

FORMAT = 1
MAX_DEPTH = 16
_BAD_STATE = (KeyError, TypeError, ValueError, IndexError, OverflowError,
              AttributeError)


def _fail(path, key, message):
    raise SolverError(f"{path}: key '{key}': {message}" if key
                      else f"{path}: {message}")


def _type_name(value):
    return {dict: "an object", list: "a list", str: "a string",
            bool: "a boolean", type(None): "null"}.get(
        type(value), "a number")


def _depth(value, limit):
    """True when `value` nests deeper than `limit` (iteratively)."""
    stack = [(value, 1)]
    while stack:
        v, d = stack.pop()
        if d > limit:
            return True
        if isinstance(v, dict):
            stack.extend((x, d + 1) for x in v.values())
        elif isinstance(v, list):
            stack.extend((x, d + 1) for x in v)
    return False


def _expect(path, key, value, kind, name):
    if not isinstance(value, kind) or \
            (kind is int and isinstance(value, bool)):
        _fail(path, key, f"expected {name}, found {_type_name(value)} "
              f"{str(value)[:60]}")


def validate(side, path):
    """Raise SolverError naming `path` and the key unless `side` has the
    sidecar's layout."""
    _expect(path, "", side, dict, "a JSON object at the top level")
    if _depth(side, MAX_DEPTH):
        _fail(path, "", f"nested deeper than {MAX_DEPTH} levels")
    for key in ("format", "rng", "data"):
        if key not in side:
            _fail(path, key, "missing")
    _expect(path, "format", side["format"], int, "an integer")
    if side["format"] != FORMAT:
        _fail(path, "format", f"unknown sidecar format {side['format']}, "
              f"expected {FORMAT}")
    if "iter" in side:
        _expect(path, "iter", side["iter"], int, "an integer")
        if side["iter"] < 0:
            _fail(path, "iter", f"must be >= 0, found {side['iter']}")
    _expect(path, "rng", side["rng"], dict, "a generator state object")
    _expect(path, "rng.bit_generator", side["rng"].get("bit_generator"),
            str, "a string")
    if "plateau" in side:
        _expect(path, "plateau", side["plateau"], dict,
                "an lr_policy 'plateau' state object")
    _expect(path, "data", side["data"], dict, "an object of nets")
    for net_key, states in side["data"].items():
        _expect(path, f"data.{net_key}", states, dict,
                "an object of layer states")
        for name, state in states.items():
            _expect(path, f"data.{net_key}.{name}", state, dict,
                    "a reader state object")


def load_sidecar(path):
    """The validated sidecar at `path` (a dict)."""
    data = read_file(path, "a resume sidecar", SolverError, factor=32)
    try:
        side = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        _fail(path, "", f"not UTF-8 text (byte offset {e.start})")
    except RecursionError:
        _fail(path, "", "JSON nested too deeply")
    except ValueError as e:
        _fail(path, "", f"not valid JSON: {e}")
    validate(side, path)
    return side


def restore_sidecar(path, nets):
    """Load the sidecar at `path` and apply it to `nets` (see
    `apply_sidecar`)."""
    return apply_sidecar(load_sidecar(path), path, nets)


def apply_sidecar(side, path, nets):
    """Apply a loaded sidecar to `nets` ({"train": net, "test_0": ...}):
    the generator state, then each data layer's reader state."""
    try:
        _rng.set_state(side["rng"])
    except _BAD_STATE as e:
        _fail(path, "rng", f"not a valid generator state: {e}")
    for net_key, states in side["data"].items():
        net = nets.get(net_key)
        if net is None:
            continue
        for name, state in states.items():
            layer = net.layer_dict.get(name)
            if layer is None:
                continue
            key = f"data.{net_key}.{name}"
            try:
                layer.set_state(state)
            except ProtonetError as e:
                _fail(path, key, str(e))
            except _BAD_STATE as e:
                _fail(path, key, f"not a valid reader state for "
                      f"{layer.type} layer '{name}': "
                      f"{type(e).__name__}: {e}")
    return side
