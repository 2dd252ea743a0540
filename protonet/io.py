"""Reading and writing Caffe's files: prototxt, caffemodel, binaryproto.

Text files are parsed with protobuf's text format against `proto/caffe.proto`;
errors become `ParseError` naming `file:line:col`.  Binary files are parsed with
protobuf's wire format; a file that is not the expected message (truncated,
corrupted, another kind of file) becomes a `ParseError` naming the file.

Nets and solvers read here are passed through `protonet.upgrade`, so callers
always see the current (V2) format, exactly as Caffe's `ReadNetParamsFrom*`.
"""

import os
import tempfile

import numpy as np
from google.protobuf import message as _message
from google.protobuf import text_format

from .errors import ParseError
from .proto import caffe_pb2

# ---------------------------------------------------------------------------
# Generic text / binary helpers


def _read_bytes(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise ParseError("file not found", path) from None
    except IsADirectoryError:
        raise ParseError("is a directory, expected a file", path) from None
    except OSError as e:
        raise ParseError(f"cannot read: {e.strerror}", path) from None


def _decode_text(data, path):
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise ParseError(
            "not a text file (invalid UTF-8); is this a binary file such as a "
            ".caffemodel?", path, line) from None


def parse_text(text, message, path=None):
    """Merge prototxt `text` into `message` (a protobuf message) and return it.

    Raises:
        ParseError: with `path:line:col` of the first syntax or schema error.
    """
    try:
        text_format.Parse(text, message, allow_unknown_extension=False)
    except text_format.ParseError as e:
        line, col = e.GetLine(), e.GetColumn()
        msg = str(e)
        # protobuf prefixes "line:col : "; keep only the explanation.
        if " : " in msg and msg.split(" : ", 1)[0].replace(":", "").isdigit():
            msg = msg.split(" : ", 1)[1]
        if "Expected integer" in msg or "Expected double" in msg:
            msg += " (is this a template with an unfilled placeholder?)"
        raise ParseError(msg, path, line, col) from None
    except (ValueError, RecursionError) as e:  # e.g. nesting too deep
        raise ParseError(f"cannot parse: {e}", path) from None
    return message


def read_text(path, message):
    """Parse the prototxt file at `path` into `message`."""
    return parse_text(_decode_text(_read_bytes(path), path), message, str(path))


def format_text(message):
    """The prototxt form of `message` (as Caffe's WriteProtoToTextFile)."""
    return text_format.MessageToString(message)


def parse_binary(data, message, path=None, what=None):
    """Parse wire-format bytes into `message`; errors name the file."""
    try:
        message.ParseFromString(data)
    except (_message.DecodeError, RuntimeError, ValueError) as e:
        kind = what or type(message).__name__
        raise ParseError(
            f"not a valid {kind} (truncated, corrupted, or another kind of "
            f"file): {e}", path) from None
    return message


def atomic_write(path, data):
    """Write `data` (bytes) to `path` so that a crash leaves either the old
    file or the complete new one: temp file in the same folder, fsync, rename.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".",
                               suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:  # make the rename itself durable
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def write_text(path, message):
    atomic_write(path, format_text(message).encode("utf-8"))


def write_binary(path, message):
    atomic_write(path, message.SerializeToString())


# ---------------------------------------------------------------------------
# Nets and solvers


def _hint_wrong_kind(text, expected, path, err):
    """If `text` parses as the other kind of file, say so."""
    other = (caffe_pb2.SolverParameter() if expected == "net"
             else caffe_pb2.NetParameter())
    try:
        text_format.Parse(text, other)
    except Exception:
        raise err from None
    kind = "solver" if expected == "net" else "net"
    raise ParseError(f"this is a {kind} definition, expected a {expected} "
                     f"definition ({err})", path) from None


def parse_net_text(text, path=None, upgrade=True):
    """A NetParameter from prototxt text, upgraded to the current format."""
    try:
        net = parse_text(text, caffe_pb2.NetParameter(), path)
    except ParseError as err:
        _hint_wrong_kind(text, "net", path, err)
    if upgrade:
        from .upgrade import upgrade_net
        upgrade_net(net, path)
    return net


def read_net(path, upgrade=True):
    """A NetParameter from a .prototxt file, upgraded to the current format."""
    text = _decode_text(_read_bytes(path), str(path))
    return parse_net_text(text, str(path), upgrade)


def parse_solver_text(text, path=None, upgrade=True):
    try:
        solver = parse_text(text, caffe_pb2.SolverParameter(), path)
    except ParseError as err:
        _hint_wrong_kind(text, "solver", path, err)
    if upgrade:
        from .upgrade import upgrade_solver
        upgrade_solver(solver, path)
    return solver


def read_solver(path, upgrade=True):
    """A SolverParameter from a solver .prototxt, upgraded (solver_type -> type)."""
    text = _decode_text(_read_bytes(path), str(path))
    return parse_solver_text(text, str(path), upgrade)


def read_caffemodel(path, upgrade=True):
    """A NetParameter (with blobs) from a binary .caffemodel.

    V1 caffemodels (weights under `layers`) are upgraded to `layer`.
    """
    path = str(path)
    data = _read_bytes(path)
    if not data:
        raise ParseError("empty file, expected a binary NetParameter "
                         "(.caffemodel)", path)
    net = parse_binary(data, caffe_pb2.NetParameter(), path,
                       "binary NetParameter (.caffemodel)")
    if not net.layer and not net.layers:
        raise ParseError("no layers found; not a .caffemodel (NetParameter) "
                         "file", path)
    if upgrade:
        from .upgrade import upgrade_net
        upgrade_net(net, path)
    return net


def write_caffemodel(path, net_param):
    write_binary(path, net_param)


def read_solverstate(path):
    path = str(path)
    data = _read_bytes(path)
    return parse_binary(data, caffe_pb2.SolverState(), path,
                        "binary SolverState (.solverstate)")


# ---------------------------------------------------------------------------
# Blobs <-> arrays


def blob_shape(blob):
    """The shape stored in a BlobProto (new `shape`, else legacy 4-D)."""
    if blob.HasField("shape"):
        return tuple(int(d) for d in blob.shape.dim)
    if blob.HasField("num") or blob.HasField("channels") or \
            blob.HasField("height") or blob.HasField("width"):
        return (blob.num, blob.channels, blob.height, blob.width)
    n = len(blob.double_data) or len(blob.data)
    return (n,) if n else (0,)


def blob_to_array(blob, path=None, what="blob", dtype=np.float32):
    """The data of a BlobProto as an array of its shape.

    Raises:
        ParseError: the element count does not match the shape.
    """
    shape = blob_shape(blob)
    if len(blob.double_data):
        arr = np.asarray(blob.double_data, dtype=np.float64)
    else:
        arr = np.asarray(blob.data, dtype=np.float32)
    count = int(np.prod(shape, dtype=np.int64))
    if arr.size != count:
        raise ParseError(f"{what} declares shape {shape} ({count} values) but "
                         f"holds {arr.size} values", path)
    return arr.reshape(shape).astype(dtype, copy=False)


def blob_diff_to_array(blob, dtype=np.float32):
    shape = blob_shape(blob)
    src = blob.double_diff if len(blob.double_diff) else blob.diff
    arr = np.asarray(src, dtype=dtype)
    if arr.size != int(np.prod(shape, dtype=np.int64)):
        return None
    return arr.reshape(shape)


def array_to_blob(arr, blob=None, diff=None, legacy_shape=False):
    """Fill a BlobProto from an array (float32 data, as Caffe writes)."""
    blob = blob if blob is not None else caffe_pb2.BlobProto()
    arr = np.asarray(arr)
    if legacy_shape:
        if arr.ndim > 4:
            raise ValueError("legacy 4-D blob shape needs ndim <= 4")
        n, c, h, w = (1,) * (4 - arr.ndim) + arr.shape
        blob.num, blob.channels, blob.height, blob.width = n, c, h, w
    else:
        blob.shape.dim.extend(int(d) for d in arr.shape)
    blob.data.extend(arr.astype(np.float32, copy=False).ravel().tolist())
    if diff is not None:
        blob.diff.extend(np.asarray(diff, np.float32).ravel().tolist())
    return blob


def read_binaryproto(path):
    """A mean file (.binaryproto BlobProto) as a float32 array."""
    path = str(path)
    data = _read_bytes(path)
    if not data:
        raise ParseError("empty file, expected a BlobProto (.binaryproto)", path)
    blob = parse_binary(data, caffe_pb2.BlobProto(), path,
                        "BlobProto (.binaryproto)")
    return blob_to_array(blob, path, "BlobProto")


def write_binaryproto(path, arr):
    """Write an array as a BlobProto with Caffe's legacy 4-D shape fields
    (as compute_image_mean does), so old tools read it too."""
    arr = np.asarray(arr)
    write_binary(path, array_to_blob(arr, legacy_shape=arr.ndim <= 4))
