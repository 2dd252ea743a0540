"""`protonet zoo`: the models that ship with protonet.

    protonet zoo                               # one line per model
    protonet zoo NAME --out DIR [--force]      # copy NAME into DIR, ready to train

`protonet zoo lenet_digits --out m` writes m/deploy.prototxt,
m/train_val.prototxt, m/solver.prototxt (its `net` and `snapshot_prefix`
pointing into m/) and m/README.md; then, from the same directory,
`protonet dataset digits --size 32 && protonet train --solver m/solver.prototxt`.
"""

import sys

from .. import zoo


def add_arguments(parser):
    parser.add_argument("name", nargs="?",
                        help="the model to write (without it: list the zoo)")
    parser.add_argument("--out", metavar="DIR",
                        help="folder to write the model into "
                        "(created if missing)")
    parser.add_argument("--force", action="store_true",
                        help="replace model files in --out whose content "
                        "differs [off: refuse]")
    return parser


def run(args):
    if args.name is None:
        if args.out:
            sys.stderr.write("protonet zoo: error: --out needs a model name "
                             "(protonet zoo NAME --out DIR); the zoo has: "
                             + ", ".join(zoo.names()) + "\n")
            return 2
        models = zoo.models()
        width = max(len(m.name) for m in models)
        for m in models:
            print(m.line(width))
        print(f"{len(models)} models in {zoo.root()}; copy one with "
              "`protonet zoo NAME --out DIR`")
        return 0
    folder = zoo.path(args.name)
    if not args.out:
        print(f"{args.name}: {folder}\n(write a copy to train with "
              f"`protonet zoo {args.name} --out DIR`)")
        return 0
    written, unchanged = zoo.write(args.name, args.out, force=args.force)
    for p in written:
        print(f"  wrote {p}")
    if unchanged:
        print(f"  {len(unchanged)} file(s) already up to date in {args.out}")
    solver = f"{args.out.rstrip('/')}/solver.prototxt"
    print(f"{args.name} -> {args.out}; train it from this directory with:\n"
          f"  protonet train --solver {solver}")
    return 0
