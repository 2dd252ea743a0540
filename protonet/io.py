"""Reading and writing Caffe's files: prototxt, caffemodel, binaryproto.

Text files are parsed with protobuf's text format against `proto/caffe.proto`;
errors become `ParseError` naming `file:line:col`.  Binary files are parsed with
protobuf's wire format; a file that is not the expected message (truncated,
corrupted, another kind of file) becomes a `ParseError` naming the file.

Nets and solvers read here are passed through `protonet.upgrade`, so callers
always see the current (V2) format, exactly as Caffe's `ReadNetParamsFrom*`.
"""

import math
import contextlib
import os
import tempfile

import numpy as np
from google.protobuf import message as _message
from google.protobuf import text_format

from .errors import ParseError
from .pbcompat import is_repeated
from .filecheck import read_file
from .parse_budget import TEXT_FACTOR, check_binary, check_text
from .proto import caffe_pb2

# ---------------------------------------------------------------------------
# Generic text / binary helpers


def _read_bytes(path, what="a file", factor=1):
    """The bytes of a regular file, refused (ParseError / ResourceError
    naming it) when it is a device, FIFO or directory, or when its size
    times `factor` passes the memory limit (protonet.filecheck)."""
    return read_file(path, what, ParseError, factor)


def _read_prototxt(path, what):
    """A text file's bytes, refused early when even its size shows that
    parsing it would pass the limit (parse_budget.TEXT_FACTOR)."""
    return _read_bytes(path, what, TEXT_FACTOR)


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
    check_text(text, path, f"{type(message).__name__} text")
    try:
        text_format.Parse(text, message, allow_unknown_extension=False)
    except text_format.ParseError as e:
        line, col = e.GetLine(), e.GetColumn()
        msg = str(e)
        # protobuf prefixes "line:col : "; keep only the explanation.
        if " : " in msg and msg.split(" : ", 1)[0].replace(":", "").isdigit():
            msg = msg.split(" : ", 1)[1]
        if any(k in msg for k in ("Expected integer", "Expected double",
                                  "Couldn't parse integer",
                                  "Couldn't parse float")):
            msg += " (is this a template with an unfilled placeholder?)"
        raise ParseError(msg, path, line, col) from None
    except (ValueError, RecursionError) as e:  # e.g. nesting too deep
        raise ParseError(f"cannot parse: {e}", path) from None
    return message


def read_text(path, message):
    """Parse the prototxt file at `path` into `message`."""
    data = _read_prototxt(path, "a prototxt file")
    return parse_text(_decode_text(data, path), message, str(path))


def format_text(message):
    """The prototxt form of `message` (as Caffe's WriteProtoToTextFile)."""
    return text_format.MessageToString(message)


# Leading bytes of files people hand us by mistake.
_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"\x89HDF\r\n\x1a\n", "an HDF5 file (use the .h5 loader)"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"PK\x03\x04", "a zip archive (a PyTorch / Keras checkpoint?)"),
    (b"\x93NUMPY", "a NumPy .npy file"),
)


def _sniff(data):
    """What `data` looks like when it is evidently not a protobuf message."""
    for magic, kind in _MAGIC:
        if data.startswith(magic):
            return kind
    head = data[:4096]
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if text.strip() and all(c.isprintable() or c.isspace() for c in text):
        return "a text file (a .prototxt?)"
    return None


def parse_binary(data, message, path=None, what=None):
    """Parse wire-format bytes into `message`; errors name the file."""
    kind = what or type(message).__name__
    other = _sniff(data)
    if other:
        raise ParseError(f"this is {other}, not a {kind}", path)
    check_binary(data, message, path, kind)
    try:
        message.ParseFromString(data)
        _check_strings(message)
    except (_message.DecodeError, RuntimeError, ValueError) as e:
        raise ParseError(
            f"not a valid {kind} (truncated, corrupted, or another kind of "
            f"file): {e}", path) from None
    return message


def _check_strings(message):
    """Refuse invalid UTF-8 in string fields now: the wire parser keeps it in
    proto2 strings as bytes, which trip a later use (UnicodeDecodeError).
    Blob data is skipped: it holds no strings."""
    for field, value in message.ListFields():
        if field.name in ("blobs", "history"):
            continue
        if field.type == field.TYPE_MESSAGE:
            for m in (value if is_repeated(field) else [value]):
                _check_strings(m)
        elif field.type == field.TYPE_STRING:
            for v in (value if is_repeated(field) else [value]):
                if isinstance(v, bytes):
                    raise ValueError(f"string field '{field.name}' holds "
                                     f"invalid UTF-8 {v[:40]!r}")


@contextlib.contextmanager
def atomic_output(path):
    """Yield a temporary path next to `path`; when the block succeeds the
    file is synced and renamed over `path` (and the folder synced), so a
    crash leaves either the old file or the complete new one, never part.
    On an exception the temporary file is removed."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".",
                               suffix=".tmp", dir=folder)
    os.close(fd)
    # mkstemp creates 0600; give the file the mode open() would (0666 minus
    # the umask), so a server run as another user can read the model.
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
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


def _umask():
    """The process's umask, read without changing it where Linux shows it
    (setting and restoring it would leave other threads, e.g. the data
    readers, a moment with another umask)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path, data):
    """Write `data` (bytes) to `path` atomically and durably (see
    `atomic_output`).  An OS error (missing folder, full disk, ...) raises
    OutputError naming `path`."""
    from .outpath import writing
    with writing(path), atomic_output(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def write_text(path, message):
    atomic_write(path, format_text(message).encode("utf-8"))


def write_binary(path, message):
    """Serialise `message` to `path` atomically, without [text-only] fields
    (see protonet.upgrade.strip_text_only); `message` is not modified."""
    from .upgrade import has_text_only, strip_text_only
    if has_text_only(message):
        copy = type(message)()
        copy.CopyFrom(message)
        message = strip_text_only(copy)
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
    text = _decode_text(_read_prototxt(path, "a net prototxt"), str(path))
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
    text = _decode_text(_read_prototxt(path, "a solver prototxt"), str(path))
    return parse_solver_text(text, str(path), upgrade)


def read_caffemodel(path, upgrade=True):
    """A NetParameter (with blobs) from a binary .caffemodel.

    V1 caffemodels (weights under `layers`) are upgraded to `layer`.
    """
    path = str(path)
    data = _read_bytes(path, "a .caffemodel")
    if not data:
        raise ParseError("empty file, expected a binary NetParameter "
                         "(.caffemodel)", path)
    net = parse_binary(data, caffe_pb2.NetParameter(), path,
                       "binary NetParameter (.caffemodel)")
    if not net.layer and not net.layers:
        hint = ""
        state = caffe_pb2.SolverState()
        try:
            state.ParseFromString(data)
            if state.HasField("iter") or state.history:
                hint = " (it looks like a .solverstate)"
        except Exception:
            pass
        raise ParseError("no layers found; not a .caffemodel (NetParameter) "
                         f"file{hint}", path)
    if upgrade:
        from .upgrade import upgrade_net
        upgrade_net(net, path)
    return net


def write_caffemodel(path, net_param):
    write_binary(path, net_param)


def read_solverstate(path):
    """A SolverState from a binary .solverstate file."""
    path = str(path)
    data = _read_bytes(path, "a .solverstate")
    if not data:
        raise ParseError("empty file, expected a binary SolverState "
                         "(.solverstate)", path)
    state = parse_binary(data, caffe_pb2.SolverState(), path,
                         "binary SolverState (.solverstate)")
    if not state.HasField("iter") and not state.history:
        raise ParseError("no iteration and no history found; not a "
                         ".solverstate file", path)
    for field in ("iter", "current_step"):
        if getattr(state, field) < 0:     # would train -iter extra steps
            raise ParseError(f"'{field}' is {getattr(state, field)}, "
                             "expected >= 0", path)
    return state


# ---------------------------------------------------------------------------
# Blobs <-> arrays


def blob_shape(blob):
    """The shape stored in a BlobProto (new `shape`, else legacy 4-D)."""
    if blob.HasField("shape"):
        return tuple(int(d) for d in blob.shape.dim)
    if blob.HasField("num") or blob.HasField("channels") or \
            blob.HasField("height") or blob.HasField("width"):
        return (blob.num, blob.channels, blob.height, blob.width)
    # NOTE(caffe): a blob with neither `shape` nor legacy dims has zero axes
    # (Caffe writes 0-axis blobs, e.g. a shared PReLU slope, that way).
    return ()


def blob_to_array(blob, path=None, what="blob", dtype=np.float32):
    """The data of a BlobProto as an array of its shape.

    Raises:
        ParseError: the element count does not match the shape.
    """
    shape = blob_shape(blob)
    values = blob.double_data if len(blob.double_data) else blob.data
    # The declared shape is checked against the stored values BEFORE any
    # array is built, with Python ints (a forged shape cannot wrap around).
    count = math.prod(shape)
    if any(d < 0 for d in shape) or len(values) != count:
        raise ParseError(f"{what} declares shape {shape} ({count} values) but "
                         f"holds {len(values)} values", path)
    arr = _repeated_to_array(blob, "double_data" if len(blob.double_data)
                             else "data")
    return arr.reshape(shape).astype(dtype, copy=False)


def blob_diff_to_array(blob, dtype=np.float32):
    shape = blob_shape(blob)
    src = blob.double_diff if len(blob.double_diff) else blob.diff
    if any(d < 0 for d in shape) or len(src) != math.prod(shape):
        return None
    arr = _repeated_to_array(blob, "double_diff" if len(blob.double_diff)
                             else "diff")
    return arr.reshape(shape).astype(dtype, copy=False)


def _upb_runtime():
    try:
        from google.protobuf.internal import api_implementation
        return api_implementation.Type() == "upb"
    except (ImportError, AttributeError):
        return False


# The pure-Python runtime serialises slower than np.array reads its lists.
_UPB = _upb_runtime()


def _repeated_to_array(blob, field):
    """BlobProto `blob`'s repeated float (or double) `field` as a new array.

    protobuf >= 7 hands the repeated container to NumPy as an array (a copy
    in C, ~1 ns a value).  Older runtimes (4.21 to 6.x) have np.array iterate
    Python floats, ~90 ns a value (5 s for CaffeNet's weights): there the
    values are read from the blob's wire form, where the field is one
    packed run of little-endian values (caffe.proto declares it packed).
    """
    values = getattr(blob, field)
    dtype = np.float64 if field.startswith("double") else np.float32
    if hasattr(values, "__array__") or not len(values) or not _UPB:
        return np.array(values, dtype=dtype)
    wire = np.dtype(dtype).newbyteorder("<")
    number = blob.DESCRIPTOR.fields_by_name[field].number
    run = _length_delimited(blob.SerializeToString(), number)
    if run is None or len(run) != len(values) * wire.itemsize:
        return np.array(values, dtype=dtype)
    return np.frombuffer(run, dtype=wire).astype(dtype)


def _varint(raw, pos):
    value = shift = 0
    while True:
        byte = raw[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _length_delimited(raw, number):
    """The payload of top-level length-delimited field `number` in a
    serialised message (a memoryview), or None."""
    pos = 0
    while pos < len(raw):
        key, pos = _varint(raw, pos)
        wire = key & 7
        if wire == 0:
            _, pos = _varint(raw, pos)
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
        elif wire == 2:
            size, pos = _varint(raw, pos)
            if key >> 3 == number:
                return memoryview(raw)[pos:pos + size]
            pos += size
        else:
            return None
    return None


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
        if arr.ndim:  # Caffe writes no `shape` at all for a 0-axis blob
            blob.shape.dim.extend(int(d) for d in arr.shape)
    _extend_packed_floats(blob, 5, arr)
    if diff is not None:
        _extend_packed_floats(blob, 6, diff)
    return blob


def _extend_packed_floats(blob, number, values):
    """Append float32 `values` to the packed repeated float field `number` of
    `blob` by merging its wire form: 20x faster than `.extend(list)`."""
    raw = np.ascontiguousarray(values, dtype="<f4").tobytes()
    if not raw:
        return
    n, length = len(raw), bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        length.append(byte | (0x80 if n else 0))
        if not n:
            break
    blob.MergeFromString(bytes([(number << 3) | 2]) + bytes(length) + raw)


def read_binaryproto(path):
    """A mean file (.binaryproto BlobProto) as a float32 array."""
    path = str(path)
    data = _read_bytes(path, "a .binaryproto mean file")
    if not data:
        raise ParseError("empty file, expected a BlobProto (.binaryproto)", path)
    blob = parse_binary(data, caffe_pb2.BlobProto(), path,
                        "BlobProto (.binaryproto)")
    arr = blob_to_array(blob, path, "BlobProto")
    # a mean file or an Infogain matrix with NaN/Inf would silently poison
    # every input (or loss) it is applied to
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        raise ParseError(f"BlobProto holds {bad.size} non-finite value(s) "
                         f"(first at flat index {bad[0]}: "
                         f"{arr.flat[bad[0]]}); a corrupted file?", path)
    return arr


def write_binaryproto(path, arr):
    """Write an array as a BlobProto with Caffe's legacy 4-D shape fields
    (as compute_image_mean does), so old tools read it too."""
    arr = np.asarray(arr)
    write_binary(path, array_to_blob(arr, legacy_shape=arr.ndim <= 4))


# pycaffe's `caffe.io` image helpers, so `import protonet as caffe` scripts
# find them where they expect (`caffe.io.Transformer`, ...).
from .imageio import (  # noqa: E402,F401
    Transformer, array_to_blobproto, array_to_datum,
    arraylist_to_blobprotovecor_str, arraylist_to_blobprotovector_str,
    blobproto_to_array, blobprotovector_str_to_arraylist, datum_to_array,
    load_image, oversample, resize_image)
