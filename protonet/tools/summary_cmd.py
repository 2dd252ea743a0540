"""`protonet summary net.prototxt`: per-layer shapes, memory, parameters and
multiply-adds (see protonet.summary).  A train_val net needs none of its
data files (see protonet.summary_inputs); `--input-shape data=1,3,227,227`
gives a shape its missing files would have given."""

from .. import io
from ..summary import format_table, summarize


def add_arguments(parser):
    parser.add_argument("model", help="net prototxt")
    parser.add_argument("--batch", type=int, default=1,
                        help="batch size for the whole-batch memory line")
    parser.add_argument("--input-shape", action="append", default=[],
                        metavar="[TOP=]N,C,H,W",
                        help="shape of a data layer's top when its database "
                        "or list file is not there (repeat per top; without "
                        "TOP: the first data top)")


def run(args):
    print(format_table(summarize(io.read_net(args.model), args.batch,
                                 args.input_shape)))
    return 0
