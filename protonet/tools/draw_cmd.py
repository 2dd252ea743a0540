"""`protonet draw net.prototxt out.{svg,png,dot}`, like Caffe's draw_net.py.

`.dot` output needs nothing; other formats need Graphviz's `dot` program (or
the graphviz / pydot package), and the error says so when it is missing.
"""

from .. import io
from ..draw import draw_net_to_file
from ..proto import caffe_pb2


def add_arguments(parser):
    parser.add_argument("model", help="net prototxt")
    parser.add_argument("output", help="output file (.svg, .png, .pdf, .dot)")
    parser.add_argument("--rankdir", default="LR", choices=["LR", "TB", "BT", "RL"],
                        help="graph direction [LR]")
    parser.add_argument("--phase", choices=["TRAIN", "TEST", "ALL"], default="ALL",
                        help="draw only the layers of this phase [ALL]")


def run(args):
    phase = None if args.phase == "ALL" else getattr(caffe_pb2, args.phase)
    draw_net_to_file(io.read_net(args.model), args.output, args.rankdir, phase)
    print(f"Drawing net to {args.output}")
    return 0
