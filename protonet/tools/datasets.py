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

OUT also gets `digits.json`, the settings it was made with: the same
request again finds it and says the folder is up to date (exit 0); a
different one stops and names `--force`.  The dependencies (scikit-learn,
lmdb, h5py as the formats need) are checked before anything is written, and
the files are written to a temporary folder moved into place at the end.

The 8 x 8 images are upscaled to S x S (`--size`, default 8 = as shipped)
by bilinear (OpenCV INTER_LINEAR) or nearest resize.  The data ship with
scikit-learn (`sklearn.datasets.load_digits`): nothing is downloaded.
"""

import json
import os
import shutil
import sys
import tempfile

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
                        help="replace a data set made with other settings")
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


MANIFEST = "digits.json"


def _outputs(formats):
    """The names `write_digits` creates in OUT for `formats`."""
    names = []
    for split in ("train", "test"):
        if "lmdb" in formats:
            names.append(f"digits_{split}_lmdb")
        if "hdf5" in formats:
            names += [f"digits_{split}.h5", f"{split}_h5.txt"]
    return names


def check_dependencies(formats):
    """Import what the outputs need, before anything is written."""
    try:
        import sklearn.datasets  # noqa: F401
    except ImportError:
        raise ProtonetError("the digits data set needs scikit-learn; install "
                            "it with `pip install scikit-learn` (or `pip "
                            "install protonet[datasets]`)") from None
    if "lmdb" in formats:
        _db.require_lmdb()
    if "hdf5" in formats:
        from ..hdf5 import require_h5py
        require_h5py("the HDF5 digits")


def _settings(size, method, split, formats):
    return {"dataset": "digits", "size": int(size), "resize": method,
            "split": split, "formats": sorted(formats)}


def _describe(s):
    return (f"{s['size']}x{s['size']} {s['resize']}, {s['split']} split, "
            f"{','.join(s['formats'])}")


def status(out, size=8, method="bilinear", formats=("lmdb", "hdf5"),
           split="shuffled"):
    """'new' (nothing of ours in `out`), 'same' (the same request was
    written there, complete) or a message saying what differs."""
    want = _settings(size, method, split, formats)
    manifest = os.path.join(out, MANIFEST)
    ours = [n for n in _outputs(("lmdb", "hdf5"))
            if os.path.lexists(os.path.join(out, n))]
    if not os.path.exists(manifest):
        if not ours:
            return "new"
        return (f"{out} already holds digits files ({', '.join(ours)}) made "
                "by an older protonet or another request")
    try:
        with open(manifest) as f:
            have = json.load(f)
        have["formats"] = sorted(have["formats"])
    except (OSError, ValueError, KeyError, TypeError):
        return f"{out} holds an unreadable {MANIFEST}"
    same = {k: v for k, v in have.items() if k != "formats"} == \
        {k: v for k, v in want.items() if k != "formats"}
    if same:    # complete, or ours with a format or a file missing: write
        complete = set(want["formats"]) <= set(have["formats"]) and \
            all(os.path.exists(os.path.join(out, n))
                for n in _outputs(want["formats"]))
        return "same" if complete else "new"
    return (f"{out} already holds the digits as {_describe(have)}; asked "
            f"for {_describe(want)}")


def write_digits(out, size=8, method="bilinear", formats=("lmdb", "hdf5"),
                 force=False, split="shuffled"):
    """Write the train/test split to `out`; returns the paths written.

    Everything is written to a temporary folder next to `out` and moved
    into place at the end, so a failure leaves no partial data set.

    Raises:
        ProtonetError: a missing dependency (before anything is written),
            or `out` holding a different request and `force` not set.
    """
    check_dependencies(formats)
    if os.path.exists(out) and not os.path.isdir(out):
        raise ProtonetError(f"--out {out}: exists and is not a folder")
    state = status(out, size, method, formats, split)
    if state not in ("new", "same") and not force:
        raise ProtonetError(f"{state}; add --force to replace it (or choose "
                            "another --out)")
    images, labels = load_digits(size, method)
    try:
        _write_all(out, images, labels, formats, split,
                   _settings(size, method, split, formats))
    except OSError as e:
        where = e.filename or out
        raise ProtonetError(f"{out}: cannot write the digits: "
                            f"{e.strerror or e} ({where})") from None
    return [os.path.join(out, n) for n in _outputs(formats)]


def _write_all(out, images, labels, formats, split, settings):
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".digits-", dir=parent)
    try:
        mask = os.umask(0)      # mkdtemp's 0700 -> a folder's usual mode
        os.umask(mask)
        os.chmod(tmp, 0o777 & ~mask)
        _write_splits(tmp, out, images, labels, formats, split)
        with open(os.path.join(tmp, MANIFEST), "w") as f:
            json.dump(settings, f)
        _move_into(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write_splits(tmp, out, images, labels, formats, split):
    train, test = split_indices(len(labels), split)
    for name, rows in (("train", train), ("test", test)):
        x, y = images[rows], labels[rows]
        if "lmdb" in formats:
            pixels = np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)
            _db.write_datums(
                os.path.join(tmp, f"digits_{name}_lmdb"),
                ((f"{i:08d}", _db.array_to_datum(p, lab))
                 for i, (p, lab) in enumerate(zip(pixels, y))))
        if "hdf5" in formats:
            from ..hdf5 import require_h5py
            h5py = require_h5py("the HDF5 digits")
            h5 = f"digits_{name}.h5"
            with h5py.File(os.path.join(tmp, h5), "w") as f:
                f.create_dataset("data", data=x.astype(np.float32),
                                 compression="gzip")
                f.create_dataset("label", data=y.astype(np.float32),
                                 compression="gzip")
            # the list names the file where it will be, not the temporary
            with open(os.path.join(tmp, f"{name}_h5.txt"), "w") as f:
                f.write(os.path.abspath(os.path.join(out, h5)) + "\n")


def _move_into(tmp, out):
    """Rename the finished folder to `out`, or, when `out` exists (other
    files of the user's may live there), move each entry over its old one,
    the manifest last."""
    if not os.path.exists(out):
        os.rename(tmp, out)
        return
    names = sorted(os.listdir(tmp), key=lambda n: n == MANIFEST)
    old = os.path.join(out, MANIFEST)
    if os.path.exists(old):
        os.unlink(old)      # an interrupted move is never "up to date"
    for name in names:
        dest = os.path.join(out, name)
        if os.path.isdir(dest) and not os.path.islink(dest):
            shutil.rmtree(dest)
        elif os.path.lexists(dest):
            os.unlink(dest)
        os.rename(os.path.join(tmp, name), dest)


def run(args):
    formats = tuple(f.strip().lower() for f in args.formats.split(",") if f)
    bad = set(formats) - {"lmdb", "hdf5"}
    if bad:
        print(f"dataset: unknown format(s) {sorted(bad)} (lmdb, hdf5)",
              file=sys.stderr)
        return 2
    try:
        check_dependencies(formats)
        if not args.force and status(args.out, args.size, args.resize,
                                     formats, args.split) == "same":
            print(f"{args.out} is already up to date (digits "
                  f"{args.size}x{args.size}, {args.split} split, "
                  f"{','.join(formats)}); nothing to do (--force rewrites it)")
            return 0
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
