"""Protobuf runtime differences that protonet's own code meets.

protonet supports protobuf 4.21 through 7.x (see README, Install).  The
descriptor API moved under it: `FieldDescriptor.is_repeated` appeared in
protobuf 6.x, where `FieldDescriptor.label` was deprecated, and 7.x removed
`label`.  Everything that asks a descriptor whether a field is repeated goes
through `is_repeated` here.
"""


def is_repeated(field):
    """Whether a `FieldDescriptor` is a repeated field, on any protobuf runtime.

    Args:
        field: a `google.protobuf.descriptor.FieldDescriptor`.

    Returns:
        bool.
    """
    repeated = getattr(field, "is_repeated", None)
    if repeated is not None:
        return bool(repeated)
    return field.label == field.LABEL_REPEATED
