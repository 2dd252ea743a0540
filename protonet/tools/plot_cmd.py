"""`protonet plot`: curves from Caffe training logs, and parse_log.py's CSV.

    protonet plot train.log --out curves.html     # or .svg, .png (matplotlib)
    protonet plot a.log b.log --out compare.svg   # overlaid
    protonet plot train.log --csv out_dir         # parse_log.py's tables
"""

import os

from ..errors import ProtonetError


def add_arguments(p):
    p.add_argument("logs", nargs="+", metavar="LOG",
                   help="glog training logs (protonet's or Caffe's stderr)")
    p.add_argument("--out", "-out", default=None,
                   help="output file: .html, .svg (no dependency) or .png/.pdf "
                   "(matplotlib) [none]")
    p.add_argument("--csv", "-csv", default=None, metavar="DIR",
                   help="also write <log>.train and <log>.test into DIR, as "
                   "Caffe's tools/extra/parse_log.py does [off]")
    p.add_argument("--delimiter", default=",",
                   help="CSV column delimiter [%(default)s]")
    p.add_argument("--x", "-x", choices=["iteration", "seconds"],
                   default="iteration",
                   help="x axis of the curves [%(default)s]")


def run(args):
    from .. import caffelog
    from ..logparse import read_log, save_csv_files
    from ..plot import plot_logs
    if not args.out and not args.csv:
        raise ProtonetError("nothing to do: give --out FILE (.html, .svg, "
                            ".png) and/or --csv DIR")
    if args.csv:
        if not os.path.isdir(args.csv):
            raise ProtonetError(f"--csv {args.csv}: not an existing folder")
        for path in args.logs:
            log = read_log(path)
            for written in save_csv_files(path, args.csv, log.train, log.test,
                                          args.delimiter):
                caffelog.info(f"Wrote {written}", "parse_log.py:0")
    if args.out:
        plot_logs(args.logs, args.out, args.x)
        caffelog.info(f"Wrote {args.out}", "plot_training_log.py:0")
    return 0
