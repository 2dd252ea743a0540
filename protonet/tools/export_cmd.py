"""`protonet export NET.prototxt WEIGHTS.caffemodel OUT.onnx`: write the net
as an ONNX model (protonet.onnx_export), optionally checked against
protonet's own forward in onnxruntime (--check)."""

from __future__ import annotations

import numpy as np

from ..errors import ProtonetError


def add_arguments(parser):
    parser.add_argument("model", help="deploy net prototxt")
    parser.add_argument("weights", help=".caffemodel (or .h5) weights; '-' "
                        "keeps the prototxt's fillers")
    parser.add_argument("output", help="the .onnx file to write")
    parser.add_argument("--opset", type=int, default=None,
                        help="ONNX opset [17]")
    parser.add_argument("--batch", default=None,
                        help="batch size N, or 'dynamic' for a symbolic batch "
                        "axis [the prototxt's]")
    parser.add_argument("--input-shape", action="append", default=[],
                        metavar="[NAME:]D0,D1,...",
                        help="export at this input shape (repeat per input; "
                        "the name may be left out for a one-input net)")
    parser.add_argument("--outputs", default=None,
                        help="comma-separated blobs to export up to (cuts "
                        "off e.g. DetectionOutput) [the net's outputs]")
    parser.add_argument("--check", action="store_true",
                        help="run the model in onnxruntime on random input "
                        "(and --input files) and print the largest "
                        "difference from protonet per output")
    parser.add_argument("--input", action="append", default=[],
                        metavar="[NAME=]FILE.npy",
                        help="an input array for --check (repeatable)")
    parser.add_argument("--tol", type=float, default=None,
                        help="--check tolerance, relative to each output's "
                        "largest magnitude [1e-4]")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the --check random input [0]")


def _parse_shapes(specs, inputs):
    shapes = {}
    for spec in specs:
        name, _, dims = spec.rpartition(":")
        if not name:
            if len(inputs) != 1:
                raise ProtonetError(f"--input-shape {spec!r}: name the input "
                                    f"(the net has inputs {', '.join(inputs)})")
            name = inputs[0]
        try:
            shapes[name] = tuple(int(d) for d in dims.split(","))
        except ValueError:
            raise ProtonetError(f"--input-shape {spec!r}: expected "
                                "[NAME:]D0,D1,... with integer dims") from None
    return shapes


def _parse_batch(text):
    if text is None or text == "dynamic":
        return text
    try:
        return int(text)
    except ValueError:
        raise ProtonetError(f"--batch expects an integer or 'dynamic', got "
                            f"{text!r}") from None


def _load_inputs(specs, net):
    arrays = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = (net.inputs[0] if len(net.inputs) == 1 else None), spec
            if name is None:
                raise ProtonetError(f"--input {spec!r}: name the input "
                                    f"(inputs: {', '.join(net.inputs)})")
        if name not in net.inputs:
            raise ProtonetError(f"--input {spec!r}: '{name}' is not an input "
                                f"(inputs: {', '.join(net.inputs)})")
        try:
            arrays[name] = np.load(path, allow_pickle=False).astype(np.float32)
        except (OSError, ValueError) as e:
            raise ProtonetError(f"--input {path}: cannot read a .npy array: {e}") from e
    return arrays


def run(args):
    from .. import TEST, Net
    from ..onnx_export import DEFAULT_OPSET, export
    from ..onnx_export import check as chk

    weights = None if args.weights == "-" else args.weights
    net = Net(args.model, weights=weights, phase=TEST)
    batch = _parse_batch(args.batch)
    shapes = _parse_shapes(args.input_shape, net.inputs)
    outputs = [o for o in args.outputs.split(",") if o] if args.outputs else None
    model = export(net, args.output, outputs=outputs,
                   opset=args.opset or DEFAULT_OPSET, batch=batch,
                   input_shapes=shapes)
    print(f"wrote {args.output}: {len(model.graph.node)} nodes, inputs "
          f"{', '.join(i.name for i in model.graph.input)}, outputs "
          f"{', '.join(o.name for o in model.graph.output)}")
    if not args.check:
        return 0
    tol = chk.DEFAULT_TOL if args.tol is None else args.tol
    sess = chk.session(args.output)   # a path: also reads external weights
    run_shapes = {n: tuple(net.blobs[n].shape) for n in net.inputs}
    run_shapes.update(shapes)
    if isinstance(batch, int):
        run_shapes = {n: (batch,) + s[1:] for n, s in run_shapes.items()}
    sets = [("random input", chk.random_inputs(net, args.seed, run_shapes))]
    given = _load_inputs(args.input, net)
    if given:
        sets.append(("given input", {**sets[0][1], **given}))
    worst = 0.0
    for label, arrays in sets:
        rows = chk.compare(net, model, arrays, sess)
        print(chk.format_rows(rows, tol, label))
        worst = max([worst] + [r[2] for r in rows])
    if worst > tol:
        print(f"check FAILED: largest relative difference {worst:.3g} > {tol:g}")
        return 1
    print(f"check passed: largest relative difference {worst:.3g} <= {tol:g}")
    return 0
