"""`protonet summary net.prototxt`: per-layer shapes, memory, parameters and
multiply-adds (see protonet.summary)."""

from .. import io
from ..summary import format_table, summarize


def add_arguments(parser):
    parser.add_argument("model", help="net prototxt")
    parser.add_argument("--batch", type=int, default=1,
                        help="batch size for the whole-batch memory line [1]")


def run(args):
    print(format_table(summarize(io.read_net(args.model), args.batch)))
    return 0
