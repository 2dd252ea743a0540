"""How much memory a protobuf file takes once parsed, known before parsing.

A parsed message costs far more than its encoding when it holds many small
sub-messages: upb allocates every message at its full struct size (about
16 bytes plus 8 per declared field), so an empty `layer {}` costs 3 bytes
on the wire and about 720 bytes parsed (LayerParameter declares ~90
fields).  A 2.9 MB caffemodel of a million empty layers takes 760 MB.

Binary files: `wire_estimate` walks the wire format guided by caffe.proto's
descriptors, without building anything.  It counts, for every field
occurrence, what the parser would allocate: a sub-message its struct size
(descending into it), a string or unknown field its length, a packed
varint run 8 bytes per byte (each byte may end an int64), a non-packed
scalar 8 bytes.  Payloads (packed floats, strings) are skipped in one step,
so a real caffemodel costs a few thousand steps whatever its size.  The
walk stops and refuses as soon as the running total passes the limit.

Text files: every `{` or `<` may open a message, and the pure-Python
tokenizer and unescaping keep a few copies of the text (a 64 MiB string
field takes ~6x its size), so the estimate is TEXT_FACTOR x the text plus
the largest struct size per brace.
"""

from . import limits
from .errors import ResourceError

TEXT_FACTOR = 8
_MSG_BASE, _PER_FIELD = 16, 8
_sizes = {}


def struct_size(descriptor):
    """Estimated bytes of one parsed message of type `descriptor`."""
    size = _sizes.get(descriptor.full_name)
    if size is None:
        size = _sizes[descriptor.full_name] = \
            _MSG_BASE + _PER_FIELD * len(descriptor.fields)
    return size


def _largest_struct():
    from .proto import caffe_pb2
    return max(struct_size(d) for d in
               caffe_pb2.DESCRIPTOR.message_types_by_name.values())


def _refuse(path, kind, nbytes, cap, how):
    raise ResourceError(
        f"{path or '<string>'}: this {kind} would take at least "
        f"{limits.format_bytes(nbytes)} once parsed ({how}), more than the "
        f"memory limit of {limits.format_bytes(cap)}; {limits.how_to_raise()}")


def check_text(text, path=None, kind="prototxt"):
    """Refuse prototxt `text` whose parse would pass the memory limit."""
    cap = limits.max_memory()
    if cap is None:
        return
    n = len(text)
    braces = text.count("{") + text.count("<")
    need = n * TEXT_FACTOR + braces * _largest_struct()
    if need > cap:
        _refuse(path, kind, need, cap, f"{limits.format_bytes(n)} of text "
                f"with {braces} messages")


def _varint(data, i):
    """(value, next index) of the varint at `i`; (None, len) if cut."""
    value, shift, n = 0, 0, len(data)
    while i < n:
        b = data[i]
        value |= (b & 0x7F) << shift
        i += 1
        if b < 0x80:
            return value, i
        shift += 7
        if shift > 63:
            return None, n
    return None, n


# FieldDescriptor types whose packed form is a run of varints (int32/64,
# uint32/64, bool, enum, sint32/64): one byte may become one 8-byte value.
_VARINT_TYPES = frozenset((3, 4, 5, 8, 13, 14, 17, 18))


def wire_estimate(data, descriptor, cap=None):
    """Bytes the parser would allocate for `data` as a `descriptor` message
    (beyond the data itself).  Stops early once past `cap`; malformed data
    ends the walk (the parser then reports it)."""
    total = struct_size(descriptor)
    stack = [(0, len(data), descriptor)]
    while stack:
        i, end, desc = stack.pop()
        fields = desc.fields_by_number
        while i < end:
            tag, i = _varint(data, i)
            if tag is None:
                break
            wt, field = tag & 7, fields.get(tag >> 3)
            if wt == 0:
                _, i = _varint(data, i)
                total += 8
                continue
            if wt in (1, 5):
                i += 8 if wt == 1 else 4
                total += 8
                continue
            if wt != 2:
                break           # groups do not occur in caffe.proto
            length, i = _varint(data, i)
            if length is None or i + length > end:
                break
            if field is not None and field.message_type is not None:
                total += struct_size(field.message_type) + 8
                if not length:
                    continue
                stack.append((i + length, end, desc))
                end, desc, fields = i + length, field.message_type, \
                    field.message_type.fields_by_number
                if cap is not None and total > cap:
                    return total
                continue
            if field is not None and field.type in _VARINT_TYPES:
                total += 8 * length         # packed varints: 1 byte -> 8
            else:
                total += length + 32
            i += length
        if cap is not None and total > cap:
            return total
    return total


def check_binary(data, message, path=None, kind=None):
    """Refuse wire-format `data` whose parse into `message`'s type would,
    with the data itself, pass the memory limit."""
    cap = limits.max_memory()
    if cap is None:
        return
    kind = kind or type(message).__name__
    budget = cap - len(data)
    need = wire_estimate(data, message.DESCRIPTOR, budget) + len(data)
    if need > cap:
        _refuse(path, kind, need, cap, f"{limits.format_bytes(len(data))} "
                "on disk; many small messages expand once parsed")
