"""`protonet extract-features`: blobs of a trained net -> databases of Datum
records, one record per image.

Mirrors: tools/extract_features.cpp (Caffe's argument order)::

    protonet extract-features WEIGHTS NET BLOB1[,BLOB2...] DB1[,DB2...] \\
        NUM_MINI_BATCHES [lmdb|leveldb] [CPU|GPU] [DEVICE_ID]

The net is built in the TEST phase from NET and its weights copied from
WEIGHTS (one file); each of NUM_MINI_BATCHES forwards appends, for every
blob named, one Datum per item of the batch to the matching new database:
`float_data` holds the item's values, channels / height / width are the
blob's legacy 4-D sizes (1 for a missing axis), and the key is the item's
running index written with 10 digits (Caffe's `format_int(i, 10)`), so the
records read back in extraction order.  Records are committed every 1000,
as Caffe does, with the same log lines.

NOTE(caffe): Caffe requires the db type; protonet defaults it to lmdb when
it is left out.  CPU/GPU and DEVICE_ID are accepted; protonet runs on the
CPU.
"""

import logging
import sys

from .. import caffelog
from .. import db as _db
from ..errors import ProtonetError
from ..proto import caffe_pb2

_SRC = "extract_features.cpp:"


def add_arguments(parser):
    parser.add_argument("weights", metavar="WEIGHTS",
                        help="pretrained .caffemodel")
    parser.add_argument("model", metavar="NET",
                        help="feature extraction net prototxt (with a data "
                        "layer)")
    parser.add_argument("blobs", metavar="BLOB1[,BLOB2...]",
                        help="comma-separated blob names to extract")
    parser.add_argument("dbs", metavar="DB1[,DB2...]",
                        help="comma-separated new databases, one per blob")
    parser.add_argument("num_mini_batches", metavar="NUM_MINI_BATCHES",
                        type=int, help="number of forward passes")
    parser.add_argument("db_type", metavar="DB_TYPE", nargs="?",
                        default="lmdb", help="lmdb or leveldb [lmdb]")
    parser.add_argument("mode", metavar="CPU|GPU", nargs="?", default="CPU",
                        help="accepted; protonet runs on the CPU")
    parser.add_argument("device_id", metavar="DEVICE_ID", nargs="?",
                        default=None, help="accepted and ignored")
    return parser


def _error(msg, line):
    caffelog.log(msg, _SRC + str(line), logging.ERROR)


def legacy_shape(blob, name):
    """Caffe's (channels, height, width) accessors of a blob of <= 4 axes."""
    shape = tuple(blob.shape)
    if len(shape) > 4:
        raise ProtonetError(f"blob '{name}' has {len(shape)} axes {shape}; "
                            "a Datum holds at most 4 (Caffe's legacy "
                            "channels/height/width accessors)")
    dims = shape + (1,) * (4 - len(shape))
    return dims[1], dims[2], dims[3]


def extract_features(net, blob_names, db_names, num_mini_batches,
                     db_type="lmdb"):
    """Run `num_mini_batches` forwards of `net`, writing every item of each
    named blob as a float Datum to the matching new database.

    Returns:
        the number of records written per database.
    """
    if len(blob_names) != len(db_names):
        raise ProtonetError(f"the number of blob names ({len(blob_names)}: "
                            f"{','.join(blob_names)}) and dataset names "
                            f"({len(db_names)}: {','.join(db_names)}) must "
                            "be equal")
    for name in blob_names:
        if name not in net.blobs:
            raise ProtonetError(f"Unknown feature blob name {name} in the "
                                f"network {getattr(net, 'source', '')} "
                                f"(blobs: {', '.join(net.blobs)})")
    backend = _db.check_backend(db_type, db_names[0] if db_names else "")
    writers = []
    try:
        for name in db_names:
            caffelog.info(f"Opening dataset {name}", _SRC + "125")
            writers.append(_db.open_writer(name, backend))
        _error("Extacting Features", 133)    # NOTE(caffe): Caffe's spelling
        counts = [0] * len(blob_names)
        for _ in range(num_mini_batches):
            net.forward()
            for i, name in enumerate(blob_names):
                _write_blob(net.blobs[name], name, writers[i], counts, i)
        for i, name in enumerate(blob_names):
            writers[i].close()
            _error(f"Extracted features of {counts[i]} query images for "
                   f"feature blob {name}", 177)
    finally:
        for w in writers:
            w.close()
    _error("Successfully extracted the features!", 182)
    return counts


def _write_blob(blob, name, writer, counts, i):
    channels, height, width = legacy_shape(blob, name)
    data = blob.data.reshape(blob.shape[0] if blob.shape else 1, -1)
    for row in data:
        datum = caffe_pb2.Datum(channels=channels, height=height,
                                width=width)
        datum.float_data.extend(row.astype("float32").tolist())
        writer.put(f"{counts[i]:010d}", datum)
        counts[i] += 1
        if counts[i] % 1000 == 0:
            _error(f"Extracted features of {counts[i]} query images for "
                   f"feature blob {name}", 166)


def run(args):
    from ..net import TEST, Net
    handler = caffelog.enable(sys.stderr)
    try:
        if args.mode == "GPU":
            caffelog.warning("GPU requested: protonet runs on the CPU",
                             _SRC + "52")
        else:
            _error("Using CPU", 62)
        if args.num_mini_batches < 0:
            raise ProtonetError("NUM_MINI_BATCHES must be >= 0, got "
                                f"{args.num_mini_batches}")
        _db.check_backend(args.db_type, args.dbs)
        net = Net(args.model, TEST)
        net.copy_from(args.weights)
        extract_features(net, args.blobs.split(","), args.dbs.split(","),
                         args.num_mini_batches, args.db_type)
        return 0
    finally:
        caffelog.disable(handler)
