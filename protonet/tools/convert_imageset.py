"""`protonet convert-imageset`: images named in a list file -> LMDB/LevelDB.

Mirrors: tools/convert_imageset.cpp and ReadImageToDatum in
src/caffe/util/io.cpp.

    protonet convert-imageset [flags] ROOTFOLDER/ LISTFILE DB_NAME

LISTFILE lines are `subfolder/file.jpg label` (split at the last space);
ROOTFOLDER is prepended as is.  Keys are Caffe's `%08d_<filename>` with the
line's index (a skipped unreadable image leaves a gap, as in Caffe).
Raw datums hold uint8 C x H x W pixels in BGR order; with --encoded the
file's own bytes are stored when nothing needs re-encoding (same
extension, no resize, channels already as asked), otherwise the decoded
(and resized) image is re-encoded as --encode_type.
"""

import logging
import os
import sys

import numpy as np

from .. import caffelog
from .. import db as _db
from .. import rng as _rng
from ..errors import DataError, ProtonetError
from ..filecheck import read_file
from ..imageio import check_resize_target
from ..layers.db_data import read_image_list
from ..transform import resize


def add_arguments(parser):
    parser.add_argument("root_folder", metavar="ROOTFOLDER")
    parser.add_argument("list_file", metavar="LISTFILE")
    parser.add_argument("db_name", metavar="DB_NAME")
    parser.add_argument("--gray", action="store_true",
                        help="treat images as grayscale ones")
    parser.add_argument("--shuffle", action="store_true",
                        help="randomly shuffle the order of images and labels")
    parser.add_argument("--backend", default="lmdb",
                        help="the backend {lmdb, leveldb} for storing the result")
    parser.add_argument("--resize_width", type=int, default=0,
                        help="width images are resized to (0 = keep)")
    parser.add_argument("--resize_height", type=int, default=0,
                        help="height images are resized to (0 = keep)")
    parser.add_argument("--check_size", action="store_true",
                        help="check that all the datums have the same size")
    parser.add_argument("--encoded", action="store_true",
                        help="store encoded images in the datum")
    parser.add_argument("--encode_type", default="",
                        help="png, jpg, ... (default: the file's extension)")
    parser.add_argument("--seed", type=int, default=None,
                        help="random seed for --shuffle")
    return parser


def image_to_datum(path, label, height, width, is_color, encoding):
    """Caffe's ReadImageToDatum; None when the image cannot be read."""
    try:
        img = _db.decode_image(path, is_color, where=path)
    except (DataError, OSError) as e:
        caffelog.log(f"Could not open or find file {path} ({e})", "io.cpp:86",
                     logging.ERROR)
        return None
    if height > 0 and width > 0:
        img = resize(img, height, width)
    if encoding:
        ext = os.path.splitext(path)[1][1:].lower()
        same = ext == encoding or {ext, encoding} == {"jpg", "jpeg"}
        if (img.shape[0] == 3) == is_color and not height and not width \
                and same:
            # ReadFileToDatum: the file as is (a regular file, bounded)
            raw = read_file(path, "an image", DataError)
            return _db.caffe_pb2.Datum(data=raw, label=label, encoded=True)
        return _db.caffe_pb2.Datum(data=_db.encode_image(img, encoding),
                                   label=label, encoded=True)
    return _db.array_to_datum(img, label)


def run(args):
    try:
        return _convert(args)
    except ProtonetError as e:
        print(f"convert-imageset: {e}", file=sys.stderr)
        return 1


def _convert(args):
    from ..outpath import check_output_folder
    check_output_folder(args.db_name, "DB_NAME")    # before the work
    _db.check_backend(args.backend, args.db_name)
    lines = read_image_list(args.list_file, "convert_imageset")
    if args.shuffle:
        caffelog.info("Shuffling data", "convert_imageset.cpp:85")
        gen = (np.random.default_rng(args.seed) if args.seed is not None
               else _rng.generator())
        lines = [lines[i] for i in gen.permutation(len(lines))]
    caffelog.info(f"A total of {len(lines)} images.", "convert_imageset.cpp:89")
    encoded = args.encoded
    if args.encode_type and not encoded:
        caffelog.info("encode_type specified, assuming encoded=true.",
                      "convert_imageset.cpp:92")
        encoded = True
    h, w = max(0, args.resize_height), max(0, args.resize_width)
    if h and w:     # refused before any image is read
        check_resize_target(h, w, 1 if args.gray else 3, "convert-imageset")
    data_size = None
    count = 0
    with _db.open_writer(args.db_name, args.backend) as writer:
        for line_id, (name, label, n) in enumerate(lines):
            enc = args.encode_type.lower() if encoded else ""
            if encoded and not enc:
                dot = name.rfind(".")
                if dot < 0:
                    caffelog.warning(f"Failed to guess the encoding of "
                                     f"'{name}'", "convert_imageset.cpp:118")
                enc = name[dot + 1:].lower() if dot >= 0 else "png"
            datum = image_to_datum(args.root_folder + name, label, h, w,
                                   not args.gray, enc)
            if datum is None:
                continue
            if args.check_size and not datum.encoded:
                size = datum.channels * datum.height * datum.width
                if data_size is None:
                    data_size = size
                elif len(datum.data) != data_size:
                    raise DataError(f"{args.list_file}:{n}: {name}: incorrect "
                                    f"data field size {len(datum.data)}, "
                                    f"expected {data_size} (resize with "
                                    "--resize_height/--resize_width)")
            writer.put(f"{line_id:08d}_{name}", datum)
            count += 1
            if count % 1000 == 0:
                caffelog.info(f"Processed {count} files.",
                              "convert_imageset.cpp:143")
    if count % 1000 != 0:
        caffelog.info(f"Processed {count} files.", "convert_imageset.cpp:150")
    return 0
