"""`protonet compute-mean`: the mean image of an LMDB -> mean.binaryproto.

Mirrors: tools/compute_image_mean.cpp.

    protonet compute-mean [--backend lmdb|leveldb] INPUT_DB [OUTPUT_FILE]

Every datum (raw, float_data or encoded, decoded with its own channels) must
have the first datum's C x H x W.  NOTE(caffe): the sum is accumulated in
float32, datum by datum, then divided by the count in float32, so the file
matches Caffe's bit for bit; it is written as a BlobProto with the legacy
num/channels/height/width fields (1 x C x H x W).  The per-channel means
are logged (and printed) for use as `mean_value`.
"""

import sys

import numpy as np

from .. import caffelog
from .. import db as _db
from ..errors import DataError, ProtonetError
from ..io import write_binaryproto
from ..outpath import check_output_file, writing


def add_arguments(parser):
    parser.add_argument("input_db", metavar="INPUT_DB")
    parser.add_argument("output_file", metavar="OUTPUT_FILE", nargs="?",
                        default=None)
    parser.add_argument("--backend", default="lmdb",
                        help="the backend {lmdb, leveldb} of the input "
                        "database (also -backend lmdb, --backend=lmdb)")
    return parser


def compute_mean(path, backend=_db.LMDB):
    """The float32 mean (1, C, H, W) of every datum in the database at
    `path`."""
    total, shape, count = None, None, 0
    for key, datum in _db.read_datums(path, backend):
        arr = _db.datum_to_array(datum, path, key)
        if total is None:
            shape = arr.shape
            total = np.zeros(shape, np.float32)
            caffelog.info("Starting Iteration", "compute_image_mean.cpp:79")
        elif arr.shape != shape:
            field = "data" if datum.data else "float_data"
            raise DataError(f"{path}: record {key.decode('utf-8', 'replace')!r}"
                            f", field '{field}': incorrect data field size: "
                            f"shape {arr.shape}, expected {shape}")
        total += arr.astype(np.float32)
        count += 1
        if count % 10000 == 0:
            caffelog.info(f"Processed {count} files.",
                          "compute_image_mean.cpp:95")
    if total is None:
        raise DataError(f"{path}: the database holds no records")
    caffelog.info(f"Processed {count} files.", "compute_image_mean.cpp:101")
    return (total / np.float32(count)).astype(np.float32)[None]


def run(args):
    try:
        if args.output_file:        # before the work, not after it
            check_output_file(args.output_file, "OUTPUT_FILE")
        _db.check_backend(args.backend, args.input_db)
        mean = compute_mean(args.input_db, args.backend)
    except ProtonetError as e:
        print(f"compute-mean: {e}", file=sys.stderr)
        return 1
    if args.output_file:
        caffelog.info(f"Write to {args.output_file}",
                      "compute_image_mean.cpp:108")
        with writing(args.output_file, "OUTPUT_FILE"):
            write_binaryproto(args.output_file, mean)
    C = mean.shape[1]
    caffelog.info(f"Number of channels: {C}", "compute_image_mean.cpp:114")
    for c in range(C):
        value = float(np.mean(mean[0, c], dtype=np.float64))
        # NOTE(caffe): no space after the colon in Caffe's line
        caffelog.info(f"mean_value channel [{c}]:"
                      f"{caffelog.format_number(value)}",
                      "compute_image_mean.cpp:119")
        print(f"mean_value channel [{c}]: {value:g}")
    return 0
