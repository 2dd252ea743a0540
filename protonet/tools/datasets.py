"""`protonet dataset digits`: scikit-learn's handwritten digits, ready to train.

    protonet dataset digits [--out data/digits] [--size 28]
                            [--resize bilinear|nearest] [--formats lmdb,hdf5]

Writes, in OUT, 1200 training and 597 test images.  `--split shuffled` (the
default) takes them from a fixed permutation (seed 0) so both halves hold
every writer's style; `--split ordered` is the split of
tests/fixtures/caffe_ref/train (images 0..1199 train, 1200..1796 test),
whose test half comes from writers the training half never saw, and is
harder (an RBF SVM on the raw pixels gets 96.3% there):

- `digits_train_lmdb/`, `digits_test_lmdb/`: raw Datum records (1 x S x S
  uint8, pixel * 255 / 16 rounded, label 0..9), keys `%08d`; read them with
  a Data layer and `transform_param { scale: 0.00392156862 }` (1/255).
- `digits_train.h5`, `digits_test.h5`: datasets `data` (float32 N x 1 x S x
  S, pixel / 16 in [0, 1]) and `label` (float32 N), gzip; and the list files
  `train_h5.txt` / `test_h5.txt` naming them (absolute paths) for HDF5Data.

The 8 x 8 images are upscaled to S x S (`--size`, default 8 = as shipped)
by bilinear (OpenCV INTER_LINEAR) or nearest resize.  The data ship with
scikit-learn (`sklearn.datasets.load_digits`): nothing is downloaded.
"""

import os
import shutil
import sys

import numpy as np

from .. import db as _db
from ..errors import ProtonetError
from ..transform import resize

N_TRAIN = 1200
DATASETS = ("digits",)
SPLITS = ("shuffled", "ordered")
SPLIT_SEED = 0


def add_arguments(parser):
    parser.add_argument("name", choices=DATASETS, help="the data set")
    parser.add_argument("--out", default=os.path.join("data", "digits"),
                        help="output folder (default: data/digits)")
    parser.add_argument("--size", type=int, default=8,
                        help="image side after resizing (default 8 = native)")
    parser.add_argument("--resize", choices=("bilinear", "nearest"),
                        default="bilinear", help="resize method")
    parser.add_argument("--formats", default="lmdb,hdf5",
                        help="comma-separated: lmdb, hdf5 (default both)")
    parser.add_argument("--split", choices=SPLITS, default="shuffled",
                        help="shuffled (fixed permutation, seed 0; default) "
                        "or ordered (images 0..1199 train, as caffe_ref)")
    parser.add_argument("--force", action="store_true",
                        help="replace existing outputs")
    return parser


def load_digits(size=8, method="bilinear"):
    """The digits as float64 (N, 1, size, size) in [0, 1] and int labels."""
    try:
        from sklearn.datasets import load_digits as _load
    except ImportError:
        raise ProtonetError("the digits data set needs scikit-learn; install "
                            "it with `pip install scikit-learn` (or `pip "
                            "install protonet[datasets]`)") from None
    d = _load()
    images = d.images.astype(np.float64)[:, None] / 16.0
    if size != 8:
        if size <= 0:
            raise ProtonetError(f"--size must be positive, got {size}")
        # One resize call over the batch folded into the channel axis.
        images = resize(images[:, 0], size, size, method)[:, None]
    return images, d.target.astype(np.int64)


def split_indices(n, split="shuffled"):
    """(train, test) index arrays of the named split of n images."""
    if split not in SPLITS:
        raise ProtonetError(f"unknown split '{split}' (known: {', '.join(SPLITS)})")
    order = np.arange(n) if split == "ordered" else \
        np.random.default_rng(SPLIT_SEED).permutation(n)
    return order[:N_TRAIN], order[N_TRAIN:]


def write_digits(out, size=8, method="bilinear", formats=("lmdb", "hdf5"),
                 force=False, split="shuffled"):
    """Write the train/test split to `out`; returns the paths written."""
    images, labels = load_digits(size, method)
    os.makedirs(out, exist_ok=True)
    train, test = split_indices(len(labels), split)
    splits = {"train": train, "test": test}
    written = []
    for split, rows in splits.items():
        x, y = images[rows], labels[rows]
        if "lmdb" in formats:
            path = os.path.join(out, f"digits_{split}_lmdb")
            if force and os.path.exists(path):
                shutil.rmtree(path)
            pixels = np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)
            _db.write_datums(path, ((f"{i:08d}", _db.array_to_datum(p, lab))
                                    for i, (p, lab) in enumerate(zip(pixels, y))))
            written.append(path)
        if "hdf5" in formats:
            from ..hdf5 import require_h5py
            h5py = require_h5py("the HDF5 digits")
            path = os.path.join(out, f"digits_{split}.h5")
            if os.path.exists(path) and not force:
                raise ProtonetError(f"{path} already exists (use --force)")
            with h5py.File(path, "w") as f:
                f.create_dataset("data", data=x.astype(np.float32),
                                 compression="gzip")
                f.create_dataset("label", data=y.astype(np.float32),
                                 compression="gzip")
            listing = os.path.join(out, f"{split}_h5.txt")
            with open(listing, "w") as f:
                f.write(os.path.abspath(path) + "\n")
            written += [path, listing]
    return written


def run(args):
    formats = tuple(f.strip().lower() for f in args.formats.split(",") if f)
    bad = set(formats) - {"lmdb", "hdf5"}
    if bad:
        print(f"dataset: unknown format(s) {sorted(bad)} (lmdb, hdf5)",
              file=sys.stderr)
        return 2
    try:
        from ..outpath import check_output_folder
        check_output_folder(args.out, "--out")
        paths = write_digits(args.out, args.size, args.resize, formats,
                             args.force, args.split)
    except ProtonetError as e:
        print(f"dataset: {e}", file=sys.stderr)
        return 1
    print(f"digits ({args.size}x{args.size}, {args.split} split): "
          f"{N_TRAIN} train, 597 test images")
    for p in paths:
        print(f"  wrote {p}")
    return 0
